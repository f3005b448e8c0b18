"""Spec validation: good specs parse; bad ones are rejected naming the field."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mesh.errors import SpecError
from mesh.spec import load_spec_file, parse_cpu, parse_memory, parse_spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fraud" / "isvc.yaml"


def _doc() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_example_spec_parses_and_resolves_relative_storage() -> None:
    spec = load_spec_file(str(EXAMPLE))
    assert spec.name == "fraud"
    assert (spec.min_replicas, spec.max_replicas) == (1, 3)
    assert spec.storage_uri == str(ROOT / "examples" / "fraud" / "model")
    assert spec.resources.cpu_millis == 1000 and spec.resources.memory_bytes == 1 << 30


@pytest.mark.parametrize("path,value,field", [
    (("apiVersion",), "v1", "apiVersion"),
    (("kind",), "Deployment", "kind"),
    (("metadata", "name"), "Bad Name!", "metadata.name"),
    (("spec", "predictor", "minReplicas"), -1, "spec.predictor.minReplicas"),
    (("spec", "predictor", "minReplicas"), "two", "spec.predictor.minReplicas"),
    (("spec", "predictor", "maxReplicas"), 0, "spec.predictor.maxReplicas"),
    (("spec", "predictor", "replicas"), 3, "spec.predictor.replicas"),
    (("spec", "predictor", "model", "modelFormat", "name"), "onnx", "spec.predictor.model.modelFormat.name"),
    (("spec", "predictor", "model", "storageUri"), "s3://bucket/m", "spec.predictor.model.storageUri"),
    (("spec", "predictor", "model", "storageUri"), "file://does/not/exist", "spec.predictor.model.storageUri"),
    (("spec", "predictor", "resources", "limits", "cpu"), "lots", "spec.predictor.resources.limits.cpu"),
    (("spec", "predictor", "resources", "limits", "memory"), "1 GB", "spec.predictor.resources.limits.memory"),
    (("spec", "predictor", "resources", "limits", "tpu"), 1, "spec.predictor.resources.limits.tpu"),
    (("spec", "predictor", "batching"), {"maxBatchSize": 0}, "spec.predictor.batching.maxBatchSize"),
    (("spec", "extra"), {}, "spec.extra"),
])
def test_invalid_field_is_named(path: tuple[str, ...], value: object, field: str) -> None:
    doc = _doc()
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(SpecError) as info:
        parse_spec(doc, base_dir=str(EXAMPLE.parent))
    assert info.value.path == field
    assert str(info.value).startswith(field + ":")


def test_max_below_min_is_rejected() -> None:
    doc = _doc()
    doc["spec"]["predictor"].update(minReplicas=4, maxReplicas=2)
    with pytest.raises(SpecError, match=r"spec.predictor.maxReplicas: must be >= minReplicas \(4\)"):
        parse_spec(doc, base_dir=str(EXAMPLE.parent))


def test_not_yaml_is_rejected() -> None:
    with pytest.raises(SpecError, match="document"):
        parse_spec("a: [unclosed", base_dir=".")


@pytest.mark.parametrize("text,millis", [("1", 1000), (2, 2000), ("500m", 500), ("0.25", 250)])
def test_cpu_quantities(text: object, millis: int) -> None:
    assert parse_cpu(text) == millis


@pytest.mark.parametrize("text,size", [("1Gi", 1 << 30), ("512Mi", 512 << 20), ("1G", 10**9), (1024, 1024)])
def test_memory_quantities(text: object, size: int) -> None:
    assert parse_memory(text) == size


def test_meshctl_apply_rejects_bad_spec_with_field(tmp_path: Path) -> None:
    doc = _doc()
    doc["spec"]["predictor"]["minReplicas"] = "many"
    doc["spec"]["predictor"]["model"]["storageUri"] = f"file://{EXAMPLE.parent / 'model'}"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    r = subprocess.run([sys.executable, "-m", "mesh.cli", "--control", "127.0.0.1:1", "apply", "-f", str(bad)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert "spec.predictor.minReplicas: must be an integer" in r.stderr
