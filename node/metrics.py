"""What ``/metrics`` says: a node's counters and state as Prometheus metrics.

Owns: the metric names, types, labels and help texts (README, "Operating
zchannels", lists the same in one table), the ``Snapshot`` they are read
from, the per-frame latency histogram and the count of member events. Does
not own: the counters themselves (``NodeCore.status()``, what ``znode status
--json`` shows, is the source), serving HTTP or reading the node from
another thread (``zchannels.node.http_endpoint``), the readiness rule
(``zchannels.node.readiness``).

The node's event loop takes a ``Snapshot`` (plain numbers, nothing shared);
the HTTP thread turns it into metric families (``NodeCollector``). Names
follow Prometheus' conventions: prefix ``znode_``, base units (seconds,
bytes), ``_total`` on counters, one metric with a label where the values
are parts of one whole (drops by ``reason``, members by ``state``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .membership import EventKind, MemberEvent, State

#: Upper bounds (seconds) of the request latency buckets: a client frame
#: takes tens of microseconds on a quiet node (docs/benchmarks.md), a
#: group_send to thousands of members milliseconds.
LATENCY_BOUNDS = (
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)

#: Peer counters of ``PeerMesh.counters`` exported, and their metric names.
_PEER_COUNTERS = {
    "received_frames": ("znode_peer_receive_frames", "Frames received from other nodes."),
    "received_bytes": ("znode_peer_receive_bytes", "Bytes of frames received from other nodes."),
    "sent_frames": ("znode_peer_transmit_frames", "Frames sent to other nodes."),
    "sent_bytes": ("znode_peer_transmit_bytes", "Bytes of frames sent to other nodes."),
    "dropped_sends": (
        "znode_peer_transmit_dropped_frames",
        "Frames to other nodes dropped unsent (the peer's queue was full, or too many peers).",
    ),
}
#: Gauges of ``NodeCore.status()`` exported, and their metric names.
_GAUGES = {
    "queued": ("znode_queued_messages", "Messages waiting in this node's channels."),
    "channels": ("znode_channels", "Channels this node holds (owns, in a cluster)."),
    "sessions": ("znode_sessions", "Client processes with a live session on this node."),
    "connections": ("znode_connections", "Client connections of those sessions."),
    "groups": ("znode_groups", "Groups with members on this node."),
    "group_entries": (
        "znode_group_members",
        "Group memberships held on this node (one per group and channel).",
    ),
}


class FrameLatency:
    """A histogram of the seconds the node takes per client frame: bucket
    counts and a sum, nothing else (``observe`` runs for every frame, so it
    is a bisect and two additions; prometheus_client's ``Histogram`` takes a
    lock and costs several times more)."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        #: one count per bound of ``LATENCY_BOUNDS``, then one above them all
        self.counts = [0] * (len(LATENCY_BOUNDS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # the first bound >= seconds: Prometheus buckets are "less or equal"
        self.counts[bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.sum += seconds


@dataclass(slots=True)
class MemberEvents:
    """Member events seen, by kind (``NodeServer.member_listeners``): the failure
    detector's suspicions, deaths and refutations among them."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EventKind, 0))

    def __call__(self, event: MemberEvent) -> None:
        self.counts[event.kind] += 1


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A node's figures at one instant: plain values, taken on its loop."""

    #: node_id, cluster ("" outside one), incarnation
    info: Mapping[str, str]
    #: keys of ``_GAUGES``
    gauges: Mapping[str, int]
    enqueued: int
    delivered: int
    #: messages (and malformed frames) dropped, by reason (``znode status``'s ``drops``)
    drops: Mapping[str, int]
    #: cluster members by state, this node included
    members: Mapping[str, int]
    member_events: Mapping[str, int]
    #: keys of ``_PEER_COUNTERS``
    peer: Mapping[str, int]
    #: connections refused for want of the cluster key, by socket (client, peer)
    refused: Mapping[str, int]
    latency_counts: tuple[int, ...]
    latency_sum: float
    ready: bool


def snapshot(
    status: Mapping[str, Any],
    events: MemberEvents,
    latency: FrameLatency,
    ready: bool,
) -> Snapshot:
    """A ``Snapshot`` from ``NodeCore.status()`` and the node's own counts."""
    members = dict.fromkeys((str(s) for s in State), 0)
    for member in status.get("members", ()):
        members[member["state"]] = members.get(member["state"], 0) + 1
    peer = status.get("peer_counters", {})
    return Snapshot(
        info={
            "node_id": str(status["node_id"]),
            "cluster": str(status.get("cluster") or ""),
            "incarnation": str(status["incarnation"]),
        },
        gauges={key: int(status[key]) for key in _GAUGES},
        enqueued=int(status["counters"]["enqueued"]),
        delivered=int(status["counters"]["delivered"]),
        drops=dict(status["drops"]),
        members=members,
        member_events={str(kind): n for kind, n in events.counts.items()},
        peer={key: int(peer.get(key, 0)) for key in _PEER_COUNTERS},
        refused=dict(status.get("security", {}).get("refused", {})),
        latency_counts=tuple(latency.counts),
        latency_sum=latency.sum,
        ready=ready,
    )


def families(snap: Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot."""
    info = GaugeMetricFamily(
        "znode_info",
        "This node: its id, cluster and incarnation (always 1).",
        labels=list(snap.info),
    )
    info.add_metric(list(snap.info.values()), 1)
    yield info
    yield GaugeMetricFamily(
        "znode_ready", "1 when /readyz answers 200, else 0.", value=int(snap.ready)
    )
    yield CounterMetricFamily(
        "znode_messages_enqueued",
        "Messages accepted onto channels this node owns (one per channel a send or "
        "group_send reached; queued, or handed straight to a waiting receiver).",
        value=snap.enqueued,
    )
    yield CounterMetricFamily(
        "znode_messages_delivered",
        "Messages handed to a receiving client process.",
        value=snap.delivered,
    )
    dropped = CounterMetricFamily(
        "znode_messages_dropped",
        "Messages dropped, by reason (as znode status' drops; decode_error counts frames).",
        labels=["reason"],
    )
    for reason, n in sorted(snap.drops.items()):
        dropped.add_metric([reason], n)
    yield dropped
    for key, (name, help_text) in _GAUGES.items():
        yield GaugeMetricFamily(name, help_text, value=snap.gauges[key])
    members = GaugeMetricFamily(
        "znode_cluster_members",
        "Members of the cluster as this node sees them (itself included), by state.",
        labels=["state"],
    )
    for state, n in snap.members.items():
        members.add_metric([state], n)
    yield members
    events = CounterMetricFamily(
        "znode_member_events",
        "Member events this node saw, by event: the failure detector's suspect, dead and "
        "refuted (this node, suspected, answered), and joined, alive, left, updated, reaped, "
        "refused.",
        labels=["event"],
    )
    for event, n in snap.member_events.items():
        events.add_metric([event], n)
    yield events
    for key, (name, help_text) in _PEER_COUNTERS.items():
        yield CounterMetricFamily(name, help_text, value=snap.peer[key])
    refused = CounterMetricFamily(
        "znode_security_refusals",
        "Connections refused for want of the cluster key, by socket (client, peer).",
        labels=["socket"],
    )
    for socket in ("client", "peer"):
        refused.add_metric([socket], snap.refused.get(socket, 0))
    yield refused
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip((*LATENCY_BOUNDS, float("inf")), snap.latency_counts, strict=True):
        running += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    yield HistogramMetricFamily(
        "znode_request_duration_seconds",
        "Seconds the node took to handle one client frame (decode, decide, send the answers).",
        buckets=buckets,
        sum_value=snap.latency_sum,
    )


class NodeCollector(Collector):
    """A prometheus_client collector over the node: each scrape asks
    ``fetch`` for a fresh ``Snapshot`` (which may raise: the scrape fails)."""

    def __init__(self, fetch: Callable[[], Snapshot]) -> None:
        self._fetch = fetch

    def collect(self) -> Iterator[Metric]:
        yield from families(self._fetch())
