"""Parse and validate InferenceService specs (KServe v1beta1 subset).

Every rejection names the field path, e.g. ``spec.predictor.minReplicas: must be
an integer >= 0, got -1``.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import yaml

from mesh.errors import SpecError
from mesh.types import AutoscalingSpec, BatchingSpec, ModelSpec, Resources

__all__ = ["parse_spec", "load_spec_file", "parse_cpu", "parse_memory", "MAX_REPLICAS"]

MAX_REPLICAS = 1000
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$")
_MEM_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
              "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_MEM_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(k|M|G|T|Ki|Mi|Gi|Ti)?$")
GPU_KEY = "nvidia.com/gpu"
GPU_MEMORY_KEY = "mesh.dev/gpu-memory"


def load_spec_file(path: str) -> ModelSpec:
    """Read a YAML/JSON spec file; relative storage paths resolve against its folder."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise SpecError("file", f"cannot read {path}: {exc.strerror}") from exc
    return parse_spec(text, base_dir=os.path.dirname(os.path.abspath(path)))


def parse_spec(doc: str | Mapping[str, Any], base_dir: str | None = None) -> ModelSpec:
    if isinstance(doc, str):
        try:
            doc = yaml.safe_load(doc)
        except yaml.YAMLError as exc:
            raise SpecError("document", f"not valid YAML/JSON: {exc}") from exc
    root = _mapping(doc, "document")
    _only(root, "", {"apiVersion", "kind", "metadata", "spec"})
    api = root.get("apiVersion")
    if api != "serving.kserve.io/v1beta1":
        raise SpecError("apiVersion", f"must be serving.kserve.io/v1beta1, got {api!r}")
    if root.get("kind") != "InferenceService":
        raise SpecError("kind", f"must be InferenceService, got {root.get('kind')!r}")
    meta = _mapping(root.get("metadata"), "metadata")
    _only(meta, "metadata", {"name", "namespace", "labels", "annotations"})
    name = meta.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SpecError("metadata.name", f"must be a lowercase DNS-style name (a-z, 0-9, '-', '_', '.'), got {name!r}")
    spec = _mapping(root.get("spec"), "spec")
    _only(spec, "spec", {"predictor"})
    pred = _mapping(spec.get("predictor"), "spec.predictor")
    _only(pred, "spec.predictor", {"minReplicas", "maxReplicas", "model", "resources", "nodeSelector", "batching",
                                   "scaleMetric", "scaleTarget", "scaleDownDelaySeconds", "idleTimeoutSeconds",
                                   "stableWindowSeconds", "panicWindowSeconds", "panicThreshold",
                                   "canaryTrafficPercent", "priority", "unloadWhenIdle"})
    p = "spec.predictor"
    min_r = _int(pred.get("minReplicas", 1), f"{p}.minReplicas", 0, MAX_REPLICAS)
    max_r = _int(pred.get("maxReplicas", max(min_r, 1)), f"{p}.maxReplicas", 1, MAX_REPLICAS)
    if max_r < min_r:
        raise SpecError(f"{p}.maxReplicas", f"must be >= minReplicas ({min_r}), got {max_r}")
    model = _mapping(pred.get("model"), f"{p}.model")
    _only(model, f"{p}.model", {"modelFormat", "storageUri", "runtime", "version"})
    model_version = model.get("version", "")
    if not isinstance(model_version, (str, int)) or isinstance(model_version, bool):
        raise SpecError(f"{p}.model.version", f"must be a string, got {model_version!r}")
    fmt = _mapping(model.get("modelFormat"), f"{p}.model.modelFormat")
    _only(fmt, f"{p}.model.modelFormat", {"name", "version"})
    if fmt.get("name") != "triton":
        raise SpecError(f"{p}.model.modelFormat.name",
                        f"only 'triton' (a Triton model directory) is supported, got {fmt.get('name')!r}")
    storage = _storage_path(model.get("storageUri"), f"{p}.model.storageUri", base_dir)
    return ModelSpec(
        name=name, storage_uri=storage, min_replicas=min_r, max_replicas=max_r,
        resources=_resources(pred.get("resources", {}), f"{p}.resources"),
        batching=_batching(pred.get("batching"), f"{p}.batching"),
        node_selector=_selector(pred.get("nodeSelector", {}), f"{p}.nodeSelector"),
        model_version=str(model_version),
        autoscaling=_autoscaling(pred, p),
        canary_traffic_percent=(None if pred.get("canaryTrafficPercent") is None
                                else _int(pred["canaryTrafficPercent"], f"{p}.canaryTrafficPercent", 0, 100)),
        priority=_int(pred.get("priority", 0), f"{p}.priority", -1000, 1000),
        unload_when_idle=_bool(pred.get("unloadWhenIdle", False), f"{p}.unloadWhenIdle"),
    )


def parse_cpu(value: Any, path: str = "cpu") -> int:
    """CPU quantity -> millicores: 1, "1", "0.5", "500m"."""
    if isinstance(value, bool):
        raise SpecError(path, f"must be a CPU quantity like 1, 0.5 or 500m, got {value!r}")
    text = str(value).strip()
    try:
        millis = int(text[:-1]) if text.endswith("m") else round(float(text) * 1000)
    except ValueError:
        raise SpecError(path, f"must be a CPU quantity like 1, 0.5 or 500m, got {value!r}") from None
    if millis < 0:
        raise SpecError(path, f"must not be negative, got {value!r}")
    return millis


def parse_memory(value: Any, path: str = "memory") -> int:
    """Memory quantity -> bytes: 1Gi, 512Mi, 1G, 1048576."""
    m = _MEM_RE.match(str(value).strip()) if not isinstance(value, bool) else None
    if not m:
        raise SpecError(path, f"must be a memory quantity like 512Mi, 1Gi or 1G, got {value!r}")
    return int(float(m.group(1)) * _MEM_UNITS[m.group(2) or ""])


def _storage_path(uri: Any, path: str, base_dir: str | None) -> str:
    if not isinstance(uri, str) or not uri:
        raise SpecError(path, "is required: a local path or file:// URI of a Triton model directory")
    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0]
        raise SpecError(path, f"scheme {scheme}:// is not supported; use a local path or file://")
    local = unquote(uri[len("file://"):]) if uri.startswith("file://") else uri
    if not os.path.isabs(local):
        if base_dir is None:
            raise SpecError(path, f"relative path {local!r} needs the spec file's folder; pass an absolute path")
        local = os.path.join(base_dir, local)
    local = os.path.normpath(local)
    if base_dir is not None:  # only the client side can see the path; servers trust it
        if not os.path.isdir(local):
            raise SpecError(path, f"{local} is not a directory")
        if not os.path.isfile(os.path.join(local, "config.pbtxt")):
            raise SpecError(path, f"{local} has no config.pbtxt: not a Triton model directory")
    return local


def _resources(raw: Any, path: str) -> Resources:
    res = _mapping(raw, path)
    _only(res, path, {"limits", "requests"})
    # Requests default to limits, as in Kubernetes; placement reserves requests.
    limits = _mapping(res.get("limits", {}), f"{path}.limits")
    requests = _mapping(res.get("requests", {}), f"{path}.requests")
    merged, where = {**limits, **requests}, f"{path}.{'requests' if requests else 'limits'}"
    _only(merged, where, {"cpu", "memory", GPU_KEY, GPU_MEMORY_KEY})
    return Resources(
        cpu_millis=parse_cpu(merged.get("cpu", 0), f"{where}.cpu"),
        memory_bytes=parse_memory(merged.get("memory", 0), f"{where}.memory"),
        gpu_count=_int(merged.get(GPU_KEY, 0), f"{where}.{GPU_KEY}", 0, 64),
        gpu_memory_bytes=parse_memory(merged.get(GPU_MEMORY_KEY, 0), f"{where}.{GPU_MEMORY_KEY}"),
    )


def _batching(raw: Any, path: str) -> BatchingSpec | None:
    if raw is None:
        return None
    b = _mapping(raw, path)
    _only(b, path, {"maxBatchSize", "maxQueueDelayMicroseconds"})
    return BatchingSpec(
        max_batch_size=_int(b.get("maxBatchSize", 8), f"{path}.maxBatchSize", 1, 4096),
        max_queue_delay_us=_int(b.get("maxQueueDelayMicroseconds", 500), f"{path}.maxQueueDelayMicroseconds", 0, 10_000_000),
    )


def _autoscaling(pred: Mapping[str, Any], p: str) -> AutoscalingSpec:
    metric = pred.get("scaleMetric", "concurrency")
    if metric != "concurrency":
        raise SpecError(f"{p}.scaleMetric", f"only 'concurrency' (in-flight requests per replica) is supported, "
                                            f"got {metric!r}")
    d = AutoscalingSpec()
    return AutoscalingSpec(
        metric=metric,
        target=_number(pred.get("scaleTarget", d.target), f"{p}.scaleTarget", 0.01, 1e6),
        stable_window_s=_number(pred.get("stableWindowSeconds", d.stable_window_s), f"{p}.stableWindowSeconds", 1, 3600),
        panic_window_s=_number(pred.get("panicWindowSeconds", d.panic_window_s), f"{p}.panicWindowSeconds", 0.5, 3600),
        panic_threshold=_number(pred.get("panicThreshold", d.panic_threshold), f"{p}.panicThreshold", 1.0, 100),
        scale_down_delay_s=_number(pred.get("scaleDownDelaySeconds", d.scale_down_delay_s),
                                   f"{p}.scaleDownDelaySeconds", 0, 86400),
        idle_timeout_s=_number(pred.get("idleTimeoutSeconds", d.idle_timeout_s), f"{p}.idleTimeoutSeconds", 0, 86400),
    )


def _number(value: Any, path: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise SpecError(path, f"must be between {lo:g} and {hi:g}, got {value}")
    return float(value)


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(path, f"must be true or false, got {value!r}")
    return value


def _selector(raw: Any, path: str) -> dict[str, str]:
    sel = _mapping(raw, path)
    for k, v in sel.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise SpecError(f"{path}.{k}", f"labels must be strings, got {v!r}")
    return dict(sel)


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(path, f"must be a mapping, got {type(value).__name__}")
    return value


def _only(m: Mapping[str, Any], path: str, allowed: set[str]) -> None:
    for key in m:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise SpecError(where, f"unknown field; allowed here: {', '.join(sorted(allowed))}")


def _int(value: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise SpecError(path, f"must be between {lo} and {hi}, got {value}")
    return value
