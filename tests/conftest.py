"""Shared fixtures. End-to-end fixtures start real processes (tritonserver via
`meshctl up`, a real Consul agent); nothing is faked."""
from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.mesh import MODELS, ROOT, EmbeddedMesh, write_spec


@pytest.fixture(scope="session")
def embedded_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedMesh]:
    """`meshctl up` with fraud, text_stats and half_double deployed."""
    work = tmp_path_factory.mktemp("mesh")
    mesh = EmbeddedMesh(work)
    mesh.start()
    try:
        mesh.apply(ROOT / "examples" / "fraud" / "isvc.yaml")
        mesh.apply(write_spec(work / "text.yaml", "text-stats", MODELS / "text_stats"))
        mesh.apply(write_spec(work / "half.yaml", "half-double", MODELS / "half_double"))
        yield mesh
    finally:
        mesh.stop()


@pytest.fixture(scope="session")
def fraud_reference():  # type: ignore[no-untyped-def]
    """The fraud model's own numpy forward pass, loaded from its model.py."""
    path = ROOT / "examples" / "fraud" / "model" / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("fraud_model", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    params = mod.weights()
    return lambda x: mod.forward(x, params)


@pytest.fixture
def models_dir() -> Path:
    return MODELS
