"""Run and supervise one real ``tritonserver`` process.

The binary and its Python backend come from the ``nvidia-pytriton`` wheel on
CPU hosts (``--triton-bin`` points at another build, e.g. NGC's, on GPU hosts).
Two settings make the wheel's build work: ``LD_LIBRARY_PATH`` must hold the
wheel's bundled libraries, and the Python backend stub takes its interpreter
prefix from the first ``python3`` on ``PATH``, so this interpreter's ``bin/``
goes first (otherwise every Python model fails with "No module named numpy").
"""
from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from mesh.netutil import free_port

__all__ = ["TritonConfig", "TritonProcess", "TritonNotFound", "find_pytriton"]

log = logging.getLogger(__name__)


class TritonNotFound(RuntimeError):
    pass


def find_pytriton() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFound("nvidia-pytriton is not installed; `pip install .` installs it, "
                             "or pass --triton-bin with a tritonserver build")
    return Path(list(spec.submodule_search_locations)[0])


@dataclass(frozen=True)
class TritonConfig:
    work_dir: Path                 # holds model_repository/, backends/, triton.log
    host: str = "127.0.0.1"
    http_port: int = 0             # 0: pick a free port
    grpc_port: int = 0
    metrics_port: int = 0
    triton_bin: str | None = None  # default: the one inside nvidia-pytriton
    backend_dir: str | None = None
    extra_args: tuple[str, ...] = ()
    restart_backoff_s: tuple[float, float] = (0.5, 30.0)


class TritonProcess:
    """Starts tritonserver, restarts it with backoff when it dies, and tells the
    owner (``on_restart``) so it can reload what was loaded."""

    def __init__(self, cfg: TritonConfig, on_restart: Callable[[], Awaitable[None]] | None = None) -> None:
        self.cfg = cfg
        self.on_restart = on_restart
        self.http_port = cfg.http_port or free_port(cfg.host)
        self.grpc_port = cfg.grpc_port or free_port(cfg.host)
        self.metrics_port = cfg.metrics_port or free_port(cfg.host)
        self.repository = cfg.work_dir / "model_repository"
        self.log_path = cfg.work_dir / "triton.log"
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._http: aiohttp.ClientSession | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    @property
    def grpc_address(self) -> str:
        return f"{self.cfg.host}:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        return f"{self.cfg.host}:{self.http_port}"

    # -- lifecycle ---------------------------------------------------------
    async def start(self, ready_timeout: float = 60.0) -> None:
        self.repository.mkdir(parents=True, exist_ok=True)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        await self._spawn()
        await self.wait_ready(ready_timeout)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def stop(self, grace: float = 10.0) -> None:
        self._stopping = True
        if self._supervisor:
            self._supervisor.cancel()
            try:
                await self._supervisor
            except asyncio.CancelledError:
                pass
        proc = self._proc
        if proc and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except asyncio.TimeoutError:
                log.warning("tritonserver pid %d ignored SIGTERM for %.0fs; killing it", proc.pid, grace)
                proc.kill()
                await proc.wait()
        if self._http:
            await self._http.close()

    async def ready(self) -> bool:
        assert self._http is not None
        try:
            async with self._http.get(f"http://{self.http_address}/v2/health/ready") as resp:
                return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.returncode is not None:
                raise RuntimeError(f"tritonserver exited with code {self._proc.returncode} while starting; "
                                   f"last log lines:\n{self.log_tail()}")
            if await self.ready():
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f}s; last log lines:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- internals ---------------------------------------------------------
    def _command_and_env(self) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        # The backend stub finds its Python through PATH: ours first.
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        if self.cfg.triton_bin:
            binary, backend_dir = self.cfg.triton_bin, self.cfg.backend_dir
        else:
            root = find_pytriton()
            binary = str(root / "tritonserver" / "bin" / "tritonserver")
            backend_dir = self.cfg.backend_dir or str(self._pytriton_backends(root))
            libs = root.parent / "nvidia_pytriton.libs"
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (str(libs), str(root / "tritonserver" / "external_libs"),
                            env.get("LD_LIBRARY_PATH", "")) if p)
        args = [
            binary,
            f"--model-repository={self.repository}",
            "--model-control-mode=explicit",
            f"--http-address={self.cfg.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.cfg.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.cfg.host}", f"--metrics-port={self.metrics_port}",
            "--exit-on-error=false",
            "--strict-readiness=false",  # server readiness must not depend on a loading model
            "--log-verbose=0",
        ]
        if backend_dir:
            args.append(f"--backend-directory={backend_dir}")
        return args + list(self.cfg.extra_args), env

    def _pytriton_backends(self, root: Path) -> Path:
        """A backend dir holding python/ plus the stub built for this Python."""
        dest = self.cfg.work_dir / "backends"
        py = dest / "python"
        stub = root / "tritonserver" / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"
        if not stub.exists():
            raise TritonNotFound(f"nvidia-pytriton has no Python backend stub for Python "
                                 f"{sys.version_info.major}.{sys.version_info.minor} (looked in {stub.parent})")
        if not (py / "triton_python_backend_stub").exists():
            py.mkdir(parents=True, exist_ok=True)
            for f in (root / "tritonserver" / "backends" / "python").iterdir():
                if f.is_file():
                    shutil.copy2(f, py / f.name)
            shutil.copy2(stub, py / "triton_python_backend_stub")
        return dest

    async def _spawn(self) -> None:
        args, env = self._command_and_env()
        self.cfg.work_dir.mkdir(parents=True, exist_ok=True)
        # SIGKILL tritonserver if the agent dies, so no orphan outlives it. This goes
        # through setpriv (util-linux), not a preexec_fn: running Python between fork
        # and exec in a process with gRPC threads can abort the child.
        setpriv = shutil.which("setpriv")
        if setpriv:
            args = [setpriv, "--pdeathsig", "KILL", "--", *args]
        logf = open(self.log_path, "ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *args, env=env, stdout=logf, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL)
        finally:
            logf.close()
        log.info("started tritonserver pid %d (grpc %s, http %s), log %s",
                 self._proc.pid, self.grpc_address, self.http_address, self.log_path)

    async def _supervise(self) -> None:
        lo, hi = self.cfg.restart_backoff_s
        delay = lo
        while not self._stopping:
            assert self._proc is not None
            code = await self._proc.wait()
            if self._stopping:
                return
            log.error("tritonserver pid %d exited with code %s; restarting in %.1fs. Last log lines:\n%s",
                      self._proc.pid, code, delay, self.log_tail(5))
            await asyncio.sleep(delay)
            started = time.monotonic()
            try:
                await self._spawn()
                await self.wait_ready(60.0)
            except (RuntimeError, TimeoutError, OSError) as exc:
                log.error("tritonserver restart failed: %s", exc)
                delay = min(hi, delay * 2)
                continue
            self.restarts += 1
            # A run that stayed up resets the backoff; a crash loop grows it.
            delay = lo if time.monotonic() - started > hi else min(hi, delay * 2)
            if self.on_restart is not None:
                try:
                    await self.on_restart()
                except Exception:  # the agent's reconcile loop retries anyway
                    log.exception("reload after tritonserver restart failed")
