"""Run the fastpath decoder fuzzer for a bounded time (env MESH_FUZZ_SECONDS, default 60).

Uses atheris when installed, else the fuzzer's built-in random-mutation driver.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FUZZER = Path(__file__).resolve().parent / "fuzz" / "fuzz_decoders.py"


def test_fuzz_decoders(tmp_path: Path) -> None:
    seconds = int(os.environ.get("MESH_FUZZ_SECONDS", "60"))
    proc = subprocess.run(
        [sys.executable, str(FUZZER), f"-max_total_time={seconds}", "-rss_limit_mb=2048"],
        check=False,  # the exit status is asserted below, with the fuzzer's output
        cwd=tmp_path,  # libFuzzer writes crash-* files into the working directory
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, f"fuzzer found a problem (exit {proc.returncode}):\n{tail}"
