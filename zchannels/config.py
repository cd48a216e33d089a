"""The layer's configuration: Django's ``CONFIG`` dict as a frozen dataclass.

Owns: the option names (channels_redis' own where they mean the same thing),
their defaults and validation, and the delivery policy a session sends to its
node. Unknown keys are an error that lists the valid names; the channels_redis
keys that mean nothing here are accepted with one warning each that says what
replaces them (``CHANNELS_REDIS_ONLY``), so a channels_redis CONFIG works as is.
"""

from __future__ import annotations

import fnmatch
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import ChannelsRedisOptionWarning, ConfigError
from .names import PREFIX_RE
from .protocol import FEATURE_BUNDLE_REPORTS

#: What a channel_capacity key may be: a glob string or a compiled regex.
CapacityKey = str | re.Pattern[str]

_DELETE = " Delete the key (README: Moving from channels_redis)."

#: The keyword arguments of channels_redis 4.x's RedisChannelLayer and
#: RedisPubSubChannelLayer (with RedisPubSubLoopLayer's, which it passes on)
#: that have no meaning here, and what replaces each. The names they share
#: with zchannels (expiry, group_expiry, capacity, channel_capacity, prefix)
#: mean what they meant there and are fields of LayerConfig.
CHANNELS_REDIS_ONLY: Mapping[str, str] = {
    "hosts": (
        "zchannels has no server to connect to: without 'node' the processes of the "
        "site on a host share one node they start themselves; "
        "'node': 'ipc:///run/zchannels/znode.sock' shares one znode "
        "sidecar between the processes of a host; a znode cluster (znode run --cluster "
        "NAME) spreads channels over hosts, which replaces sharding over Redis hosts."
    ),
    "symmetric_encryption_keys": (
        "the layer does not encrypt messages itself: the cluster key encrypts and "
        "authenticates them on the wire (CurveZMQ): 'znode keygen PATH', then "
        "'znode run --key-file PATH' on every node and CONFIG 'key_file' for a tcp:// "
        "node. ipc:// and the embedded node never leave the host, and nodes hold "
        "messages in memory only, never at rest."
    ),
    "random_prefix_length": (
        "it kept equal messages apart in a Redis sorted set; a node queues each "
        "message once whatever its bytes, so nothing replaces it."
    ),
    "serializer_format": (
        "every message is serialized with msgpack, with uuid.UUID, datetime, date, "
        "time, timedelta and decimal.Decimal as extension types (zchannels.codec); "
        "JSON and serializers registered with channels_redis are not used."
    ),
    "on_disconnect": (
        "no message is sent to consumers when the node connection drops: a process "
        "reconnects to a restarted znode by itself and re-registers its receives and "
        "group memberships; messages queued in the node when it died are lost (a send "
        "waiting for its answer then raises SendOutcomeUnknown)."
    ),
    "on_reconnect": (
        "no message is sent to consumers when the node connection returns: a process "
        "reconnects to a restarted znode by itself and re-registers its receives and "
        "group memberships; layer.counters['node_restarts'] counts the restarts seen."
    ),
}


def ignored_option_message(key: str) -> str:
    """The warning for a channels_redis-only key (one text per key, so
    Python's default filter shows it once per process)."""
    return f"CONFIG {key!r} (channels_redis) is ignored: {CHANNELS_REDIS_ONLY[key]}{_DELETE}"


def option_names() -> list[str]:
    """The CONFIG keys zchannels uses, sorted."""
    return sorted(f.name for f in fields(LayerConfig))


def unknown_options(options: Mapping[str, Any]) -> list[str]:
    """Keys neither zchannels nor channels_redis knows, sorted."""
    known = set(option_names()) | set(CHANNELS_REDIS_ONLY)
    return sorted(str(k) for k in options if k not in known)


def unknown_keys_message(unknown: list[str]) -> str:
    return (
        f"unknown CONFIG key(s) {', '.join(unknown)} for "
        f"zchannels.layer.ZeroMQChannelLayer; valid keys: {', '.join(option_names())} "
        f"(accepted and ignored, from channels_redis: {', '.join(CHANNELS_REDIS_ONLY)})"
    )


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
    #: Embedded cluster member: how peers are found besides ``seeds``, as
    #: ``znode --discovery`` spells it: ``"mdns"``, ``"dns:NAME[:PORT]"``,
    #: ``"dns-srv:NAME"``, ``"none"``, or a list of them. None or empty:
    #: seeds only. Stored as a tuple.
    discovery: tuple[str, ...] = ()
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
    #: The node this process starts (the shared node, or the embedded one)
    #: serves ``/metrics``, ``/healthz`` and ``/readyz`` on this loopback
    #: ``HOST:PORT`` (``znode run --metrics-endpoint``). None: not served. A
    #: ``znode`` sidecar is given its own flag instead.
    metrics_endpoint: str | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> LayerConfig:
        """What the layer calls with Django's CONFIG: unknown keys raise,
        channels_redis-only keys warn (ChannelsRedisOptionWarning) and are
        dropped, the rest is validated."""
        unknown = unknown_options(options)
        if unknown:
            raise ConfigError(unknown_keys_message(unknown), key=unknown[0])
        for key in CHANNELS_REDIS_ONLY:
            if key in options:
                warnings.warn(ignored_option_message(key), ChannelsRedisOptionWarning, stacklevel=2)
        return cls.build({k: v for k, v in options.items() if k not in CHANNELS_REDIS_ONLY})

    @classmethod
    def build(cls, options: Mapping[str, Any]) -> LayerConfig:
        """A validated config from zchannels' own keys only; no warnings (the
        system check calls it, and reports the other keys itself)."""
        opts = dict(options)
        for name in ("key_file", "discovery"):  # one string or a list of them
            if isinstance(opts.get(name), str | os.PathLike):
                opts[name] = [opts[name]]
        if isinstance(opts.get("key_file"), list | tuple):  # BASE_DIR / "cluster.key"
            opts["key_file"] = [
                os.fspath(p) if isinstance(p, os.PathLike) else p for p in opts["key_file"]
            ]
        if "discovery" in opts and opts["discovery"] is None:
            opts["discovery"] = []
        for name in ("seeds", "interfaces", "key_file", "discovery"):
            if name in opts:
                value = opts[name]
                if (
                    isinstance(value, str)
                    or not isinstance(value, list | tuple)
                    or not all(isinstance(v, str) for v in value)
                ):
                    raise ConfigError(
                        f"CONFIG {name} must be a list of strings, got {value!r}", key=name
                    )
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
                raise ConfigError(
                    f"CONFIG {name} must be a positive {'int' if integer else 'number'}, "
                    f"got {value!r}",
                    key=name,
                )

        positive("expiry", self.expiry)
        positive("group_expiry", self.group_expiry)
        positive("capacity", self.capacity, integer=True)
        positive("max_message_size", self.max_message_size, integer=True)
        positive("request_timeout", self.request_timeout)
        if not isinstance(self.prefix, str) or not PREFIX_RE.fullmatch(self.prefix):
            raise ConfigError(
                f"CONFIG prefix must be up to 50 of A-Z a-z 0-9 _ . -, got {self.prefix!r}",
                key="prefix",
            )
        if self.node not in (None, "embedded") and not (
            isinstance(self.node, str) and self.node.split("://", 1)[0] in ("ipc", "tcp")
        ):
            raise ConfigError(
                "CONFIG node must be 'ipc:///path', 'tcp://host:port' or 'embedded', "
                f"got {self.node!r}",
                key="node",
            )
        if self.scope is not None and not (isinstance(self.scope, str) and self.scope):
            raise ConfigError(
                f"CONFIG scope must be a non-empty string, got {self.scope!r}", key="scope"
            )
        if self.scope is not None and (self.node is not None or self.cluster is not None):
            raise ConfigError(
                "CONFIG scope names the shared node of CONFIG without node or cluster",
                key="scope",
            )

        if self.discovery:
            # Imported here: only a cluster member needs it (and then loads
            # the node anyway); other layers do not pay for discovery's imports.
            from zchannels.discovery.sources import parse_sources

            try:
                parse_sources(self.discovery)
            except ValueError as exc:
                raise ConfigError(f"CONFIG {exc}", key="discovery") from None
        joins = self.cluster is not None or self.discovery or self.seeds
        if joins and self.node not in (None, "embedded"):
            raise ConfigError(
                "CONFIG cluster, discovery and seeds are for the embedded node; with "
                f"node={self.node!r} the znode joins the cluster (znode run --cluster NAME)",
                key="cluster",
            )
        if (self.discovery or self.seeds) and self.cluster is None:
            raise ConfigError(
                "CONFIG discovery and seeds need a cluster name (CONFIG cluster)", key="cluster"
            )
        if self.cluster is not None and not (isinstance(self.cluster, str) and self.cluster):
            raise ConfigError(
                f"CONFIG cluster must be a non-empty string, got {self.cluster!r}", key="cluster"
            )
        if self.peer_endpoint is not None and not (
            isinstance(self.peer_endpoint, str) and self.peer_endpoint.startswith("tcp://")
        ):
            raise ConfigError(
                f"CONFIG peer_endpoint must be 'tcp://HOST:PORT', got {self.peer_endpoint!r}",
                key="peer_endpoint",
            )
        if self.metrics_endpoint is not None:
            self._validate_metrics_endpoint(self.metrics_endpoint)
        if not isinstance(self.insecure, bool):
            # "false" is a true value: never guess about a security switch
            raise ConfigError(
                f"CONFIG insecure must be True or False, got {self.insecure!r}", key="insecure"
            )

    def _validate_metrics_endpoint(self, spec: Any) -> None:
        if self.node not in (None, "embedded"):
            raise ConfigError(
                f"CONFIG metrics_endpoint is for a node the layer starts; with node="
                f"{self.node!r} give the znode --metrics-endpoint HOST:PORT",
                key="metrics_endpoint",
            )
        # Imported here: only a layer that serves metrics loads the node's HTTP side.
        from zchannels.node.http_endpoint import exposed

        try:
            beyond = exposed(spec)
        except ValueError as exc:
            raise ConfigError(f"CONFIG {exc}", key="metrics_endpoint") from None
        if beyond:
            raise ConfigError(
                f"CONFIG metrics_endpoint {spec!r} is beyond loopback: a node the layer "
                "starts serves metrics on loopback only (run a znode with "
                "--metrics-insecure to serve them further)",
                key="metrics_endpoint",
            )

    def capacity_for(self, channel: str) -> int:
        """channels_redis' rule: the first matching pattern, else ``capacity``."""
        for pattern, capacity in self.channel_capacity:
            if pattern.match(channel):
                return capacity
        return self.capacity

    def wire_policy(self) -> list[Any]:
        """The policy a session sends in HELLO: ``[expiry, features]`` (each
        connection appends its reserved-send count: ``Connection._hello``).
        Capacities go with each send (the node never runs the layer's
        patterns)."""
        return [float(self.expiry), FEATURE_BUNDLE_REPORTS]


def _compile_capacities(raw: Any) -> tuple[tuple[re.Pattern[str], int], ...]:
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"CONFIG channel_capacity must be a dict, got {type(raw).__name__}",
            key="channel_capacity",
        )
    out = []
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"CONFIG channel_capacity[{key!r}] must be a positive int, got {value!r}",
                key="channel_capacity",
            )
        if isinstance(key, re.Pattern):
            out.append((key, value))
        elif isinstance(key, str):
            out.append((re.compile(fnmatch.translate(key)), value))
        else:
            raise ConfigError(
                f"CONFIG channel_capacity key {key!r} is not a glob or regex",
                key="channel_capacity",
            )
    return tuple(out)
