"""Run the real embedded mesh (`meshctl up`) in a subprocess for end-to-end tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from mesh.netutil import free_port

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "tests" / "models"


@dataclass
class EmbeddedMesh:
    work: Path
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    control_port: int = field(default_factory=free_port)
    store: str | None = None          # e.g. consul://127.0.0.1:8500; default: in-memory
    proc: subprocess.Popen | None = None

    @property
    def control(self) -> str:
        return f"127.0.0.1:{self.control_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 90.0) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = open(self.work / "meshctl-up.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mesh.cli", "--control", self.control, "up",
             "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
             "--metrics-port", str(self.metrics_port), "--node-id", "node-a",
             "--work-dir", str(self.work / "node"), *(["--store", self.store] if self.store else [])],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"meshctl up exited with {self.proc.returncode}:\n{self.log_tail()}")
            if b"mesh is up" in (self.work / "meshctl-up.log").read_bytes():
                return
            time.sleep(0.2)
        raise TimeoutError(f"meshctl up not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        return "\n".join((self.work / "meshctl-up.log").read_text(errors="replace").splitlines()[-n:])

    def meshctl(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mesh.cli", "--control", self.control, *args],
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)

    def apply(self, spec: Path) -> None:
        r = self.meshctl("apply", "-f", str(spec), "--wait", "--timeout", "120")
        assert r.returncode == 0, f"apply {spec} failed: {r.stdout}\n{r.stderr}\n{self.log_tail()}"

    def tritonserver_pids(self) -> list[int]:
        assert self.proc is not None
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [p.pid for p in kids if p.name() == "tritonserver"]

    def descendants(self) -> list[int]:
        assert self.proc is not None
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in self.descendants():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            return self.proc.wait()


def write_spec(path: Path, name: str, model_dir: Path, min_replicas: int = 1, max_replicas: int = 1,
               extra: str = "") -> Path:
    """A minimal InferenceService spec. ``extra``: more YAML fields of ``spec.predictor``
    (e.g. ``"batching: {maxBatchSize: 16}"``), written at the predictor's indentation."""
    extra = textwrap.indent(textwrap.dedent(extra).strip("\n"), "    ") + "\n" if extra.strip() else ""
    path.write_text(f"""apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: {name}}}
spec:
  predictor:
    minReplicas: {min_replicas}
    maxReplicas: {max_replicas}
    model:
      modelFormat: {{name: triton}}
      storageUri: file://{model_dir}
    resources: {{limits: {{cpu: 100m, memory: 256Mi}}}}
{extra}""")
    return path


def fraud_version(dest: Path, seed: int) -> Path:
    """A copy of the fraud model whose weights come from another seed: a new version
    whose answers can be told apart from the original's."""
    import shutil

    src = ROOT / "examples" / "fraud" / "model"
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
    code = (dest / "1" / "model.py").read_text()
    (dest / "1" / "model.py").write_text(code.replace("SEED = 20261125", f"SEED = {seed}"))
    return dest


def fraud_forward(seed: int):  # type: ignore[no-untyped-def]
    """The fraud model's numpy forward pass with the weights of ``seed``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fraud_model_ref", ROOT / "examples" / "fraud" / "model" / "1" / "model.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    params = mod.weights(seed)
    return lambda x: mod.forward(x, params)
