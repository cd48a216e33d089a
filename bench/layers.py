"""Which layers and anchors are benchmarked, and how each is built and closed.

A ``LayerSpec`` is plain, picklable data: the worker process that runs a role gets
the spec and builds the layer itself (``backend(**config)``, the way Django does).
The external processes some layers need (redis-server, the znode sidecar, the relay of
the relay floor) are started by services.py; their addresses are filled into the specs
here, and the runner fills in the pid of that process (``node_pid``) before each
measurement so the roles can read its CPU time.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Literal

CAPACITY = 1_000_000
"""Per-channel capacity for every layer that takes one: the producer runs ahead of the
consumer in the throughput scenarios, and the default (100) would turn that into a
``ChannelFull`` retry loop that measures the back-off, not the layer."""


@dataclass(frozen=True)
class LayerSpec:
    key: str
    label: str
    kind: Literal["channels", "pyzmq", "relay"]
    backend: str = ""
    """Dotted path of the layer class (``kind == "channels"`` only)."""
    config: dict[str, Any] = field(default_factory=dict)
    single_process: bool = False
    """True: the layer cannot connect two processes, so both roles run as tasks of one."""
    close: str = "close"
    """Name of the coroutine method that releases the layer's connections."""
    needs: Literal["redis", "znode", "relay", None] = None
    node_pid: int = 0
    """The process that carries this layer's messages besides the roles' own (0: none)."""


def specs(redis_port: int, znode_endpoint: str, relay_endpoint: str) -> list[LayerSpec]:
    """All layers in table order; anchors first, zchannels last."""
    hosts = [("127.0.0.1", redis_port)]
    return [
        LayerSpec(
            "inmemory",
            "InMemory (1 process)",
            "channels",
            "channels.layers.InMemoryChannelLayer",
            {"capacity": CAPACITY},
            single_process=True,
        ),
        LayerSpec(
            "redis-core",
            "channels_redis core",
            "channels",
            "channels_redis.core.RedisChannelLayer",
            {"hosts": hosts, "capacity": CAPACITY},
            close="close_pools",
            needs="redis",
        ),
        LayerSpec(
            "redis-pubsub",
            "channels_redis pubsub",
            "channels",
            "channels_redis.pubsub.RedisPubSubChannelLayer",
            {"hosts": hosts},
            close="flush",  # the pub/sub layer's flush() is also its close
            needs="redis",
        ),
        LayerSpec("pyzmq", "bare pyzmq (ipc)", "pyzmq"),
        LayerSpec(
            "relay-floor",
            "relay floor (bare pyzmq, 4 hops)",
            "relay",
            config={"endpoint": relay_endpoint},
            needs="relay",
        ),
        LayerSpec(
            "zch-embedded",
            "zchannels embedded (1 process)",
            "channels",
            "zchannels.layer.ZeroMQChannelLayer",
            # (CONFIG {} would be the site's shared node, another process)
            {"capacity": CAPACITY, "node": "embedded"},
            single_process=True,
        ),
        LayerSpec(
            "zch-sidecar",
            "zchannels sidecar",
            "channels",
            "zchannels.layer.ZeroMQChannelLayer",
            {"node": znode_endpoint, "capacity": CAPACITY},
            needs="znode",
        ),
    ]


REDIS_LAYERS = ("redis-core", "redis-pubsub")
LAYER_KEYS = (
    "inmemory",
    "redis-core",
    "redis-pubsub",
    "pyzmq",
    "relay-floor",
    "zch-embedded",
    "zch-sidecar",
)


def build(spec: LayerSpec) -> Any:
    """The layer object for ``spec``: None for bare pyzmq, the endpoint for the relay."""
    if spec.kind == "pyzmq":
        return None
    if spec.kind == "relay":
        return spec.config["endpoint"]
    module, _, name = spec.backend.rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec.config)


async def close(spec: LayerSpec, layer: Any) -> None:
    method = getattr(layer, spec.close, None) if spec.kind == "channels" else None
    if method is None:
        return
    result = method()
    if inspect.isawaitable(result):
        await result
