"""What this host offers: CPU, memory and (through NVML, when present) GPUs."""
from __future__ import annotations

import logging
import os

import psutil

from mesh.types import Resources

__all__ = ["detect_capacity"]

log = logging.getLogger(__name__)


def detect_capacity(cpu_millis: int | None = None, memory_bytes: int | None = None) -> Resources:
    gpus, gpu_mem = _gpus()
    return Resources(
        cpu_millis=cpu_millis if cpu_millis is not None else (os.cpu_count() or 1) * 1000,
        memory_bytes=memory_bytes if memory_bytes is not None else psutil.virtual_memory().total,
        gpu_count=gpus,
        gpu_memory_bytes=gpu_mem,
    )


def _gpus() -> tuple[int, int]:
    try:
        import pynvml  # from nvidia-ml-py
    except ImportError:
        return 0, 0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0, 0  # no driver: a CPU host
    try:
        count = pynvml.nvmlDeviceGetCount()
        total = sum(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).total
                    for i in range(count))
        return count, int(total)
    except pynvml.NVMLError as exc:
        log.warning("NVML is present but failed to list GPUs (%s); registering none", exc)
        return 0, 0
    finally:
        pynvml.nvmlShutdown()
