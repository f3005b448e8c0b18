"""State types kept in the store, with their JSON encodings.

Vocabulary: a *spec* is what the user asked for; a *placement* is the
scheduler's answer (which *replicas* run on which *nodes*); a *status* is what a
node agent reports about one replica; a *load report* is what a gateway saw.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Resources", "BatchingSpec", "AutoscalingSpec", "ModelSpec", "NodeInfo", "Replica", "Placement",
    "ReplicaStatus", "ModelLoad", "LoadReport", "AutoscaleDecision", "KEYS", "to_json", "from_json",
]


@dataclass(frozen=True)
class Resources:
    cpu_millis: int = 0
    memory_bytes: int = 0
    gpu_count: int = 0
    gpu_memory_bytes: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu_millis + other.cpu_millis, self.memory_bytes + other.memory_bytes,
                         self.gpu_count + other.gpu_count, self.gpu_memory_bytes + other.gpu_memory_bytes)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu_millis - other.cpu_millis, self.memory_bytes - other.memory_bytes,
                         self.gpu_count - other.gpu_count, self.gpu_memory_bytes - other.gpu_memory_bytes)

    def fits_in(self, free: Resources) -> bool:
        return (self.cpu_millis <= free.cpu_millis and self.memory_bytes <= free.memory_bytes
                and self.gpu_count <= free.gpu_count and self.gpu_memory_bytes <= free.gpu_memory_bytes)

    def shortfall(self, free: Resources) -> list[str]:
        """Names of the resources that do not fit, for operator-facing reasons."""
        out = []
        if self.cpu_millis > free.cpu_millis:
            out.append(f"cpu {self.cpu_millis}m > free {free.cpu_millis}m")
        if self.memory_bytes > free.memory_bytes:
            out.append(f"memory {self.memory_bytes >> 20}Mi > free {free.memory_bytes >> 20}Mi")
        if self.gpu_count > free.gpu_count:
            out.append(f"gpus {self.gpu_count} > free {free.gpu_count}")
        if self.gpu_memory_bytes > free.gpu_memory_bytes:
            out.append(f"gpu memory {self.gpu_memory_bytes >> 20}Mi > free {free.gpu_memory_bytes >> 20}Mi")
        return out


@dataclass(frozen=True)
class BatchingSpec:
    """Gateway-side dynamic batching (opt-in)."""
    max_batch_size: int = 0
    max_queue_delay_us: int = 0


@dataclass(frozen=True)
class AutoscalingSpec:
    """KServe-style concurrency autoscaling (Knative's KPA semantics, simplified)."""
    metric: str = "concurrency"     # in-flight requests per replica
    target: float = 4.0             # per replica
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0     # short window that reacts to bursts
    panic_threshold: float = 2.0    # panic when the short-window load is this many times capacity
    scale_down_delay_s: float = 30.0
    idle_timeout_s: float = 60.0    # with minReplicas 0: no traffic this long -> zero replicas


@dataclass(frozen=True)
class ModelSpec:
    name: str
    storage_uri: str            # absolute local path of the Triton model directory
    min_replicas: int = 1
    max_replicas: int = 1
    resources: Resources = field(default_factory=Resources)
    model_format: str = "triton"
    batching: BatchingSpec | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    generation: int = 0         # bumped by the scheduler on every apply
    model_version: str = ""     # the user's label for the artifact (spec.predictor.model.version)
    autoscaling: AutoscalingSpec = field(default_factory=lambda: AutoscalingSpec())
    canary_traffic_percent: int | None = None   # None: rolling update; N: canary gets N% until promoted
    priority: int = 0           # higher may evict lower-priority replicas above their minReplicas
    unload_when_idle: bool = False  # opt-in: may be unloaded (LRU) when GPU memory is short

    @property
    def version(self) -> str:
        """Artifact version: a short digest of the storage URI and the user's version
        label, so a scale or resource change does not reload a model but a new artifact does."""
        return hashlib.sha1(f"{self.storage_uri}\0{self.model_version}".encode()).hexdigest()[:10]


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    address: str                # Triton gRPC host:port
    http_address: str           # Triton HTTP host:port
    capacity: Resources
    labels: dict[str, str] = field(default_factory=dict)
    cordoned: bool = False
    agent_address: str = ""     # node agent control API host:port
    draining: bool = False      # cordoned, and its replicas move elsewhere


@dataclass(frozen=True)
class Replica:
    replica_id: str
    node: str
    version: str
    role: str = "serving"       # serving | canary | draining


@dataclass(frozen=True)
class Placement:
    model: str
    generation: int
    replicas: tuple[Replica, ...] = ()
    unplaced: tuple[str, ...] = ()   # one reason per replica that could not be placed


@dataclass(frozen=True)
class ReplicaStatus:
    node: str
    model: str
    version: str
    state: str                  # loading | ready | failed | unloading
    error: str = ""
    updated_at: float = 0.0


@dataclass(frozen=True)
class ModelLoad:
    """What one gateway saw of one model over its last report interval."""
    in_flight: float = 0.0        # average requests in flight
    peak_in_flight: int = 0
    held: int = 0                 # requests waiting for a first replica (scale from zero)
    requests: int = 0             # requests finished in the interval
    last_request_at: float = 0.0  # wall clock, seconds


@dataclass(frozen=True)
class LoadReport:
    gateway: str
    at: float                     # wall clock of the report
    interval_s: float
    models: dict[str, ModelLoad] = field(default_factory=dict)


@dataclass(frozen=True)
class AutoscaleDecision:
    """The autoscaler's latest answer for a model, kept for operators."""
    model: str
    desired: int
    reason: str
    at: float
    panic: bool = False


class KEYS:
    """Store key layout (see DESIGN.md, 'State')."""
    NODES = "mesh/nodes/"
    MODELS = "mesh/models/"
    PLACEMENTS = "mesh/placements/"
    STATUS = "mesh/status/"
    LOAD = "mesh/load/"
    AUTOSCALE = "mesh/autoscale/"     # AutoscaleDecision per model
    ROLLOUTS = "mesh/rollouts/"       # rollout state per model
    LEADER = "mesh/leader/scheduler"
    CLUSTER = "mesh/cluster"          # marker: its absence means the store lost our state
    SERVICE = "mesh-node"

    @staticmethod
    def node(node_id: str) -> str:
        return f"mesh/nodes/{node_id}"

    @staticmethod
    def model(name: str) -> str:
        return f"mesh/models/{name}"

    @staticmethod
    def placement(name: str) -> str:
        return f"mesh/placements/{name}"

    @staticmethod
    def status(node_id: str, model: str) -> str:
        return f"mesh/status/{node_id}/{model}"

    @staticmethod
    def load(gateway: str) -> str:
        return f"mesh/load/{gateway}"

    @staticmethod
    def autoscale(model: str) -> str:
        return f"mesh/autoscale/{model}"

    @staticmethod
    def rollout(model: str) -> str:
        return f"mesh/rollouts/{model}"


def to_json(obj: Any) -> bytes:
    return json.dumps(asdict(obj), sort_keys=True, separators=(",", ":")).encode()


def from_json(cls: type, raw: bytes) -> Any:
    data = json.loads(raw)
    return _build(cls, data)


def _build(cls: type, data: dict[str, Any]) -> Any:
    if cls is ModelSpec:
        data = dict(data)
        data["resources"] = Resources(**data.get("resources", {}))
        if data.get("batching"):
            data["batching"] = BatchingSpec(**data["batching"])
        if data.get("autoscaling"):
            data["autoscaling"] = AutoscalingSpec(**data["autoscaling"])
        return ModelSpec(**data)
    if cls is NodeInfo:
        data = dict(data)
        data["capacity"] = Resources(**data.get("capacity", {}))
        return NodeInfo(**data)
    if cls is LoadReport:
        return LoadReport(data["gateway"], data["at"], data["interval_s"],
                          {m: ModelLoad(**v) for m, v in data.get("models", {}).items()})
    if cls is Placement:
        return Placement(data["model"], data["generation"],
                         tuple(Replica(**r) for r in data.get("replicas", ())),
                         tuple(data.get("unplaced", ())))
    return cls(**data)
