"""A distributed mesh of separate real processes on one machine, for tests:
a Consul agent, schedulers, a gateway and node agents (each with its tritonserver)."""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from mesh.netutil import free_port
from support.consul import ConsulAgent
from support.mesh import ROOT


@dataclass
class Proc:
    name: str
    args: list[str]
    log_path: Path
    port: int = 0
    popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen([sys.executable, "-m", *self.args], stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=ROOT)
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.popen.pid).children(recursive=True) if self.popen else []
        except psutil.NoSuchProcess:
            return []

    def kill9(self) -> None:
        """SIGKILL the process and its children (a host dying), by PID."""
        kids = self.children()
        assert self.popen is not None
        self.popen.kill()
        for k in kids:
            try:
                k.kill()
            except psutil.NoSuchProcess:
                pass
        self.popen.wait(10)

    def stop(self) -> None:
        if not self.alive:
            return
        assert self.popen is not None
        kids = self.children()
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.kill9()
        for k in kids:
            try:
                k.kill()
            except psutil.NoSuchProcess:
                pass

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@dataclass
class Cluster:
    work: Path
    consul: ConsulAgent = field(init=False)
    schedulers: list[Proc] = field(default_factory=list)
    gateways: list[Proc] = field(default_factory=list)
    agents: dict[str, Proc] = field(default_factory=dict)
    gateway_grpc: int = 0
    gateway_http: int = 0

    def start(self, n_schedulers: int = 2, nodes: tuple[str, ...] = ("node-a", "node-b", "node-c")) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "consul").mkdir(exist_ok=True)
        self.consul = ConsulAgent(workdir=self.work / "consul").start()
        for i in range(n_schedulers):
            self.add_scheduler(f"sched-{i}")
        self.gateway_grpc, self.gateway_http = free_port(), free_port()
        self.add_gateway()
        for node in nodes:
            self.add_agent(node)
        self.wait_nodes(len(nodes))

    def add_gateway(self) -> Proc:
        p = Proc("gateway", ["gateway.cli", "--store", self.consul.url, "--grpc-port", str(self.gateway_grpc),
                             "--http-port", str(self.gateway_http), "--metrics-port", str(free_port())],
                 self.work / "gateway.log").start()
        self.gateways.append(p)
        return p

    def add_scheduler(self, ident: str) -> Proc:
        port = free_port()
        p = Proc(ident, ["scheduler.cli", "--store", self.consul.url, "--port", str(port), "--id", ident,
                         "--lock-ttl", "10", "--lock-delay", "1"], self.work / f"{ident}.log", port).start()
        self.schedulers.append(p)
        return p

    def add_agent(self, node: str) -> Proc:
        port = free_port()
        p = Proc(node, ["node_agent.cli", "run", "--store", self.consul.url, "--node-id", node, "--port", str(port),
                        "--work-dir", str(self.work / node), "--cpu", "2", "--memory", "4Gi", "--ttl", "10"],
                 self.work / f"{node}.log", port).start()
        self.agents[node] = p
        return p

    @property
    def control(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.schedulers if s.alive)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.gateway_grpc}"

    def meshctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mesh.cli", "--control", self.control, *args],
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)

    def node_agent_cli(self, node: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "node_agent.cli", *args, "--agent",
                               f"127.0.0.1:{self.agents[node].port}"],
                              capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)

    def models(self) -> dict[str, dict]:
        r = self.meshctl("get", "models", "--json")
        assert r.returncode == 0, r.stderr
        return {m["name"]: m for m in json.loads(r.stdout)}

    def nodes(self) -> dict[str, dict]:
        r = self.meshctl("get", "nodes", "--json")
        assert r.returncode == 0, r.stderr
        return {n["node_id"]: n for n in json.loads(r.stdout)}

    def wait_nodes(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                healthy = [n for n in self.nodes().values() if n.get("healthy")]
            except AssertionError:
                healthy = []
            if len(healthy) >= count:
                return
            time.sleep(0.5)
        raise TimeoutError(f"{count} healthy nodes not registered in {timeout}s:\n" + self.tails())

    def ready_nodes(self, model: str) -> list[str]:
        m = self.models().get(model, {})
        return sorted(r["node"] for r in m.get("replicas", []) if r.get("state") == "ready")

    def kv(self, key: str) -> tuple[str | None, bytes | None]:
        """(session, value) of a Consul key, read straight from Consul's HTTP API."""
        try:
            with urllib.request.urlopen(f"http://{self.consul.http_addr}/v1/kv/{key}", timeout=5) as resp:
                doc = json.loads(resp.read())[0]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None, None
            raise
        return doc.get("Session"), base64.b64decode(doc["Value"]) if doc.get("Value") else b""

    def tails(self) -> str:
        procs = [*self.schedulers, *self.gateways, *self.agents.values()]
        return "\n".join(f"--- {p.name} ---\n{p.log_tail(15)}" for p in procs)

    def stop(self) -> None:
        for p in [*self.gateways, *self.agents.values(), *self.schedulers]:
            p.stop()
        if hasattr(self, "consul"):
            self.consul.stop()


class Load:
    """Constant inference load from client threads, bounded in time; counts failures."""

    def __init__(self, url: str, model: str, threads: int = 2, max_seconds: float = 300) -> None:
        self.url, self.model, self.threads, self.max_seconds = url, model, threads, max_seconds
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _run(self) -> None:
        import numpy as np
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.url)
        x = np.ones((1, 16), dtype=np.float32)
        inp = grpcclient.InferInput("features", [1, 16], "FP32")
        inp.set_data_from_numpy(x)
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                client.infer(self.model, [inp], client_timeout=30)
                with self._lock:
                    self.ok += 1
            except Exception as exc:  # noqa: BLE001  (every failure is recorded and asserted on)
                with self._lock:
                    self.failures.append(str(exc))
            time.sleep(0.002)

    def __enter__(self) -> Load:
        for _ in range(self.threads):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(60)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")
