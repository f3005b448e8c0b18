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
    "Resources", "BatchingSpec", "ModelSpec", "NodeInfo", "Replica", "Placement",
    "ReplicaStatus", "KEYS", "to_json", "from_json",
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

    @property
    def version(self) -> str:
        """Artifact version: a short digest of the storage URI, so a scale or
        resource change does not reload a model but a new artifact does."""
        return hashlib.sha1(self.storage_uri.encode()).hexdigest()[:10]


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


class KEYS:
    """Store key layout (see DESIGN.md, 'State')."""
    NODES = "mesh/nodes/"
    MODELS = "mesh/models/"
    PLACEMENTS = "mesh/placements/"
    STATUS = "mesh/status/"
    LOAD = "mesh/load/"
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
        return ModelSpec(**data)
    if cls is NodeInfo:
        data = dict(data)
        data["capacity"] = Resources(**data.get("capacity", {}))
        return NodeInfo(**data)
    if cls is Placement:
        return Placement(data["model"], data["generation"],
                         tuple(Replica(**r) for r in data.get("replicas", ())),
                         tuple(data.get("unplaced", ())))
    return cls(**data)
