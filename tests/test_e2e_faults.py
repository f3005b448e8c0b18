"""Fault tests on the real embedded mesh: kill tritonserver, stop the mesh."""
from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient

from support.mesh import EmbeddedMesh

pytestmark = pytest.mark.e2e


def _infer_ok(url: str, fraud_reference) -> bool:  # type: ignore[no-untyped-def]
    client = grpcclient.InferenceServerClient(url)
    x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
    inp = grpcclient.InferInput("features", [2, 16], "FP32")
    inp.set_data_from_numpy(x)
    try:
        out = client.infer("fraud", [inp], client_timeout=10).as_numpy("score")
    except Exception:  # noqa: BLE001  (any failure means: not back yet)
        return False
    np.testing.assert_allclose(out, fraud_reference(x), rtol=1e-5)
    return True


def test_kill_tritonserver_agent_restarts_and_reloads(embedded_mesh, fraud_reference) -> None:
    assert _infer_ok(embedded_mesh.grpc_url, fraud_reference)
    before = embedded_mesh.tritonserver_pids()
    assert len(before) == 1, before
    agent_pid = embedded_mesh.proc.pid
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 120
    recovered = False
    while time.monotonic() < deadline:
        now = embedded_mesh.tritonserver_pids()
        if now and now != before and _infer_ok(embedded_mesh.grpc_url, fraud_reference):
            recovered = True
            break
        time.sleep(0.5)
    assert recovered, f"fraud did not serve again within 120s:\n{embedded_mesh.log_tail()}"
    assert embedded_mesh.proc.pid == agent_pid and embedded_mesh.proc.poll() is None  # agent untouched
    # All three models come back, not only the one we probed.
    while True:
        r = embedded_mesh.meshctl("get", "models", "--json")
        assert r.returncode == 0, r.stderr
        states = {m["name"]: [rep.get("state") for rep in m.get("replicas", [])] for m in json.loads(r.stdout)}
        if all(s == ["ready"] for s in states.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert states == {"fraud": ["ready"], "half-double": ["ready"], "text-stats": ["ready"]}


def test_meshctl_up_sigterm_leaves_no_process(tmp_path, models_dir) -> None:
    mesh = EmbeddedMesh(tmp_path / "m")
    mesh.start()
    try:
        from support.mesh import write_spec
        mesh.apply(write_spec(tmp_path / "h.yaml", "half-double", models_dir / "half_double"))
        children = mesh.descendants()
        assert mesh.tritonserver_pids(), "expected a tritonserver child"
    finally:
        code = mesh.stop()
    assert code == 0, mesh.log_tail()
    time.sleep(0.5)
    alive = [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"processes left behind: {alive}"
