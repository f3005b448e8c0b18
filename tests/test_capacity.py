"""Host capacity detection: CPU and memory always; GPUs through NVML where present."""
from __future__ import annotations

import os

import psutil
import pytest

from node_agent.capacity import detect_capacity


def _nvml_gpus() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001  (no driver / no library: a CPU host)
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


def test_cpu_and_memory_detected_and_overridable() -> None:
    cap = detect_capacity()
    assert cap.cpu_millis == (os.cpu_count() or 1) * 1000
    assert cap.memory_bytes == psutil.virtual_memory().total
    assert detect_capacity(cpu_millis=1500, memory_bytes=1 << 30).cpu_millis == 1500


@pytest.mark.skipif(_nvml_gpus() == 0, reason="needs an NVIDIA GPU and driver (NVML)")
def test_gpus_detected_through_nvml() -> None:
    import pynvml

    cap = detect_capacity()
    pynvml.nvmlInit()
    try:
        n = pynvml.nvmlDeviceGetCount()
        total = sum(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).total for i in range(n))
    finally:
        pynvml.nvmlShutdown()
    assert cap.gpu_count == n > 0
    assert cap.gpu_memory_bytes == total


def test_no_gpu_host_registers_none() -> None:
    if _nvml_gpus():
        pytest.skip("this host has GPUs")  # the NVML test above covers it
    cap = detect_capacity()
    assert (cap.gpu_count, cap.gpu_memory_bytes) == (0, 0)
