"""The layer's configuration: Django's ``CONFIG`` dict as a frozen dataclass.

Owns: the option names (channels_redis' own where they mean the same thing),
their defaults and validation, and the delivery policy a session sends to its
node. Unknown keys are an error that lists the valid names.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError
from .names import PREFIX_RE

#: What a channel_capacity key may be: a glob string or a compiled regex.
CapacityKey = str | re.Pattern[str]


@dataclass(frozen=True, slots=True)
class LayerConfig:
    #: Seconds a message may wait in a queue before it is dropped (channels_redis).
    expiry: float = 60.0
    #: Seconds a group membership lives unless re-added (channels_redis).
    group_expiry: float = 86400.0
    #: Messages a channel may hold before ``send`` raises ChannelFull (channels_redis).
    capacity: int = 100
    #: Per-channel capacities: ``{glob or compiled regex: capacity}``, first match wins.
    channel_capacity: tuple[tuple[re.Pattern[str], int], ...] = ()
    #: Namespace: layers with different prefixes share nothing on one node.
    prefix: str = "asgi"
    #: Largest encoded message in bytes; bigger ones raise MessageTooLarge at
    #: send time. 2 MiB: the spec asks that 1 MB pass, with room for framing.
    max_message_size: int = 2 * 1024 * 1024
    #: The node to use: ``None``: the node every process of this site on
    #: this host shares, started on demand (``zchannels.shared``);
    #: ``"embedded"``: a node inside this process, of its own;
    #: ``"ipc:///path"`` or ``"tcp://127.0.0.1:PORT"``: a ``znode``.
    node: str | None = None
    #: With ``node=None``: the name of the processes that share a node. None:
    #: derived from ``DJANGO_SETTINGS_MODULE`` and the settings file's
    #: directory (else the working directory), so two projects on one host
    #: never share by accident.
    scope: str | None = None
    #: Seconds a request waits for the node before NodeUnavailable is raised.
    request_timeout: float = 30.0
    #: Embedded node only: the cluster to join as a member (one node per
    #: process; for sites without a ``znode`` sidecar). None: a node of its own.
    cluster: str | None = None
    #: Embedded cluster member: how peers are found besides ``seeds``:
    #: ``"mdns"`` or None (seeds only).
    discovery: str | None = None
    #: Embedded cluster member: peer endpoints to join through (``tcp://HOST:PORT``).
    seeds: tuple[str, ...] = ()
    #: Embedded cluster member: where peers reach this process's node;
    #: default ``tcp://<LAN address>:0`` (a free port, announced by mDNS).
    peer_endpoint: str | None = None
    #: Embedded cluster member: IP addresses mDNS announces on (default:
    #: the peer endpoint's address).
    interfaces: tuple[str, ...] = ()
    #: The cluster key file (``znode keygen``): a ``tcp://`` node with a key
    #: admits only its holders (a layer uses the first file given). An
    #: embedded cluster member takes a list during a rollover, as
    #: ``znode --key-file`` does.
    key_file: tuple[str, ...] = ()
    #: Embedded cluster member: allow serving peers without a key
    #: (``znode --insecure``; anyone on the network can read and inject).
    insecure: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> LayerConfig:
        valid = sorted(f.name for f in fields(cls))
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(
                f"unknown CONFIG key(s) {', '.join(unknown)} for "
                f"zchannels.layer.ZeroMQChannelLayer; valid keys: {', '.join(valid)}"
            )
        opts = dict(options)
        if isinstance(opts.get("key_file"), str):
            opts["key_file"] = [opts["key_file"]]
        for name in ("seeds", "interfaces", "key_file"):
            if name in opts:
                value = opts[name]
                if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"CONFIG {name} must be a list of strings, got {value!r}")
                opts[name] = tuple(value)
        patterns = _compile_capacities(opts.pop("channel_capacity", None) or {})
        cfg = cls(channel_capacity=patterns, **opts)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        def positive(name: str, value: Any, integer: bool = False) -> None:
            # bool is an int, but True is no capacity
            ok = isinstance(value, int) if integer else isinstance(value, int | float)
            if isinstance(value, bool) or not ok or value <= 0:
                raise ConfigError(f"CONFIG {name} must be a positive number, got {value!r}")

        positive("expiry", self.expiry)
        positive("group_expiry", self.group_expiry)
        positive("capacity", self.capacity, integer=True)
        positive("max_message_size", self.max_message_size, integer=True)
        positive("request_timeout", self.request_timeout)
        if not isinstance(self.prefix, str) or not PREFIX_RE.fullmatch(self.prefix):
            raise ConfigError(
                f"CONFIG prefix must be up to 50 of A-Z a-z 0-9 _ . -, got {self.prefix!r}"
            )
        if self.node not in (None, "embedded") and not (
            isinstance(self.node, str) and self.node.split("://", 1)[0] in ("ipc", "tcp")
        ):
            raise ConfigError(
                "CONFIG node must be 'ipc:///path', 'tcp://host:port' or 'embedded', "
                f"got {self.node!r}"
            )
        if self.scope is not None and not (isinstance(self.scope, str) and self.scope):
            raise ConfigError(f"CONFIG scope must be a non-empty string, got {self.scope!r}")
        if self.scope is not None and (self.node is not None or self.cluster is not None):
            raise ConfigError(
                "CONFIG scope names the shared node of CONFIG without node or cluster"
            )

        if self.discovery not in (None, "mdns"):
            raise ConfigError(f"CONFIG discovery must be 'mdns' or None, got {self.discovery!r}")
        joins = self.cluster is not None or self.discovery is not None or self.seeds
        if joins and self.node not in (None, "embedded"):
            raise ConfigError(
                "CONFIG cluster, discovery and seeds are for the embedded node; with "
                f"node={self.node!r} the znode joins the cluster (znode run --cluster NAME)"
            )
        if (self.discovery is not None or self.seeds) and self.cluster is None:
            raise ConfigError("CONFIG discovery and seeds need a cluster name (CONFIG cluster)")
        if self.cluster is not None and not (isinstance(self.cluster, str) and self.cluster):
            raise ConfigError(f"CONFIG cluster must be a non-empty string, got {self.cluster!r}")

    def capacity_for(self, channel: str) -> int:
        """channels_redis' rule: the first matching pattern, else ``capacity``."""
        for pattern, capacity in self.channel_capacity:
            if pattern.match(channel):
                return capacity
        return self.capacity

    def wire_policy(self) -> list[Any]:
        """The policy a session sends in HELLO: ``[expiry]``. Capacities go
        with each send (the node never runs the layer's patterns)."""
        return [float(self.expiry)]


def _compile_capacities(raw: Any) -> tuple[tuple[re.Pattern[str], int], ...]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"CONFIG channel_capacity must be a dict, got {type(raw).__name__}")
    out = []
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"CONFIG channel_capacity[{key!r}] must be a positive int")
        if isinstance(key, re.Pattern):
            out.append((key, value))
        elif isinstance(key, str):
            out.append((re.compile(fnmatch.translate(key)), value))
        else:
            raise ConfigError(f"CONFIG channel_capacity key {key!r} is not a glob or regex")
    return tuple(out)
