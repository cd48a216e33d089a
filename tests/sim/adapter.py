"""The node API the simulation drives, and a single-node stand-in for it.

Owns: ``Effects`` as the simulation reads them, ``NodeLike`` (what a node
must offer: the pure ``ClusterNode`` API of ``zchannels.node.cluster``), and
``SingleNode``, that API around one ``NodeCore`` (a node in no cluster: no
peers, every channel its own), used where no multi-node ``ClusterNode`` is
available or asked for. Does not own any decision: ``SingleNode`` only calls
``NodeCore`` and says when it wants its next tick.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from zchannels.node.config import NodeConfig
from zchannels.node.core import CoreSettings, NodeCore

from zchannels.protocol import Message


@dataclass(slots=True)
class Effects:
    #: (client connection id, message) to this node's clients
    clients: list[tuple[bytes, Message]] = field(default_factory=list)
    #: (peer address, one encoded peer frame) to other nodes
    peers: list[tuple[str, bytes]] = field(default_factory=list)
    #: member events, for the trace
    events: list[Any] = field(default_factory=list)


class EffectsLike(Protocol):
    clients: list[tuple[bytes, Message]]
    peers: list[tuple[str, bytes]]
    events: list[Any]


class NodeLike(Protocol):
    def start(self, now: float) -> EffectsLike: ...
    def discovered(self, address: str, now: float) -> EffectsLike: ...
    def client(self, conn: bytes, messages: list[Message], now: float) -> EffectsLike: ...
    def undeliverable(self, conn: bytes, messages: list[Message], now: float) -> EffectsLike: ...
    def peer(self, frame: bytes, now: float) -> EffectsLike: ...
    def tick(self, now: float) -> EffectsLike: ...
    def next_deadline(self) -> float: ...
    def leave(self, now: float) -> EffectsLike: ...
    def status(self) -> dict[str, Any]: ...
    def drops(self) -> dict[str, int]: ...


class SingleNode:
    """The ``ClusterNode`` API around one ``NodeCore``, as ``node/server.py``
    drives it without a cluster: client frames to ``handle``, a tick every
    ``tick_interval`` (leases; the core sweeps by ``sweep_interval``)."""

    def __init__(
        self, config: NodeConfig, *, address: str, incarnation: int, rng: random.Random
    ) -> None:
        self.config = config
        self.address = address
        self.incarnation = incarnation
        self.core = NodeCore(
            CoreSettings(
                node_id=config.node_id,
                node_tag=config.node_tag,
                incarnation=str(incarnation),
                lease=config.client_lease,
                max_frame=config.max_frame_size,
                sweep_interval=config.sweep_interval,
                # above any earlier incarnation's (the server uses wall-clock µs)
                first_seq=incarnation * 1_000_000,
                max_client_channels=config.max_client_channels,
                max_client_group_entries=config.max_client_group_entries,
            )
        )
        self._deadline = 0.0

    def start(self, now: float) -> Effects:
        self._deadline = now + self.config.tick_interval
        return Effects()

    def discovered(self, address: str, now: float) -> Effects:
        return Effects()

    def client(self, conn: bytes, messages: list[Message], now: float) -> Effects:
        return Effects(clients=self.core.handle(conn, messages, now))

    def undeliverable(self, conn: bytes, messages: list[Message], now: float) -> Effects:
        return Effects(clients=self.core.undeliverable(conn, messages, now))

    def peer(self, frame: bytes, now: float) -> Effects:
        self.core.decode_error("no_cluster")
        return Effects()

    def tick(self, now: float) -> Effects:
        self._deadline = now + self.config.tick_interval
        return Effects(clients=self.core.tick(now))

    def next_deadline(self) -> float:
        return self._deadline

    def leave(self, now: float) -> Effects:
        return Effects()

    def status(self) -> dict[str, Any]:
        status = self.core.status()
        status["members"] = [{"id": self.config.node_id, "state": "alive", "address": ""}]
        return status

    def drops(self) -> dict[str, int]:
        return self.core.drops()
