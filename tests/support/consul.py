"""A real ``consul agent -dev`` for tests, on free loopback ports.

The binary comes from ``scripts/build_consul.sh`` (built from the Go module proxy on
first use, then cached). Every port the agent opens is chosen here, so several agents
(parallel test sessions) can run side by side. ``-dev`` keeps all state in memory:
``restart()`` comes back on the same ports with an empty store, like a lost server.

Use the session-scoped fixture in a test module with::

    from support.consul import consul_agent  # noqa: F401  (pytest fixture)
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["ConsulAgent", "consul_agent", "consul_binary"]

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_consul.sh"
# A cold build (module download + compile) takes a few minutes on 2 cores.
BUILD_TIMEOUT_S = 1800.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0

_binary: str | None = None


def consul_binary() -> str:
    """Path of the pinned Consul binary, building it on first use (cached on disk)."""
    global _binary
    if _binary is None:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=BUILD_TIMEOUT_S, check=False)
        path = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        if proc.returncode != 0 or not path or not os.access(path, os.X_OK):
            raise RuntimeError(
                f"{BUILD_SCRIPT} failed (exit {proc.returncode}); last output:\n"
                + "\n".join(proc.stderr.splitlines()[-30:]))
        _binary = path
    return _binary


def _free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free for both TCP and UDP (serf and DNS use both)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.bind(("127.0.0.1", 0))
            held.append(tcp)
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                udp.close()
                continue
            held.append(udp)
            ports.append(port)
        return ports
    finally:
        for s in held:
            s.close()


class ConsulAgent:
    """One ``consul agent -dev`` process bound to 127.0.0.1."""

    def __init__(self, binary: str | None = None, workdir: str | Path | None = None) -> None:
        self.binary = binary or consul_binary()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="mesh-consul-"))
        self.log_path = self.workdir / "consul.log"
        (self.http_port, self.dns_port, self.serf_lan_port, self.serf_wan_port,
         self.server_port, self.grpc_port) = _free_ports(6)
        self.node_name = f"mesh-test-{self.http_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_addr(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return f"consul://{self.http_addr}"

    def command(self) -> list[str]:
        return [
            self.binary, "agent", "-dev",
            "-bind", "127.0.0.1", "-client", "127.0.0.1",
            "-node", self.node_name,
            "-http-port", str(self.http_port),
            "-dns-port", str(self.dns_port),
            "-serf-lan-port", str(self.serf_lan_port),
            "-serf-wan-port", str(self.serf_wan_port),
            "-server-port", str(self.server_port),
            "-grpc-port", str(self.grpc_port),
            # -dev also opens gRPC-TLS on 8503; off, so agents do not collide.
            "-hcl", "ports { grpc_tls = -1 }",
            "-hcl", "disable_update_check = true",
            "-log-level", "info",
        ]

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> ConsulAgent:
        if self.running:
            return self
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== starting: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, start_new_session=True)
        try:
            self._wait_ready()
        except Exception:
            self.kill()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; by PID only."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            self.proc = None
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the agent vanishes without leaving."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)
        self.proc = None

    def restart(self) -> ConsulAgent:
        """Stop and start on the same ports; a -dev agent comes back empty."""
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> ConsulAgent:  # noqa: PYI034  (Self needs 3.11; not subclassed)
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- readiness -------------------------------------------------------------
    def _get_json(self, path: str) -> object:
        with urllib.request.urlopen(f"http://{self.http_addr}{path}", timeout=2) as resp:
            return json.loads(resp.read() or b"null")

    def _ready(self) -> bool:
        with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
            if not self._get_json("/v1/status/leader"):
                return False
            # Sessions need the node (with serfHealth) in the catalog, which
            # happens a moment after the leader is elected.
            checks = self._get_json(f"/v1/health/node/{self.node_name}")
            return isinstance(checks, list) and any(
                c.get("CheckID") == "serfHealth" and c.get("Status") == "passing" for c in checks)
        return False

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"consul agent exited with {self.proc.returncode} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}")
            if self._ready():
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"consul agent on {self.http_addr} has no leader after {START_TIMEOUT_S:.0f}s; "
            f"log {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"


@pytest.fixture(scope="session")
def consul_agent() -> Iterator[ConsulAgent]:
    """A started ``consul agent -dev`` shared by the whole test session."""
    agent = ConsulAgent().start()
    try:
        yield agent
    finally:
        agent.stop()
