"""What one step of a cluster node decides: the effects its parts return.

Owns: the ``Fx`` a step of ``zchannels.node.cluster.ClusterNode`` fills —
answers to clients, messages to other nodes (by node id), member events, and
the core's work not yet carried to routing and group replication. Nothing
here sends anything: the composer turns ``Fx`` into the shell's ``Effects``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .core import ClusterWork, Out
from .membership import MemberEvent
from .peer_wire import PeerMessage

#: ``Fx.peers`` target meaning "every other live member".
EVERYONE = "*"


@dataclass(slots=True)
class Fx:
    #: to clients of this node, or (virtual connections) of other nodes
    out: list[Out] = field(default_factory=list)
    #: to other nodes, by node id (``EVERYONE``: every other live member)
    peers: list[tuple[str, PeerMessage]] = field(default_factory=list)
    #: what the member table saw happen
    events: list[MemberEvent] = field(default_factory=list)
    #: what core steps left for routing and replication, not yet carried
    work: ClusterWork = field(default_factory=ClusterWork)
    #: (node, group): memberships of ``group`` this step handed to ``node``
    #: (group_sends go there too until its counts have caught up)
    moved: list[tuple[str, str]] = field(default_factory=list)
    #: (node, [(group, channel), ...]): memberships a handover from ``node``
    #: brought here, one entry per handover (the fanouts it passes on after
    #: it are for them); taken up before the frame's next message
    adopted: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)

    def has_work(self) -> bool:
        work = self.work
        return bool(
            work.relays
            or work.asks
            or work.held_acks
            or work.fanouts
            or work.gone_conns
            or work.gone_sessions
        )

    def take_work(self) -> ClusterWork | None:
        """The core's pending work, if any (a fresh, empty one in its place)."""
        if not self.has_work():
            return None
        work, self.work = self.work, ClusterWork()
        return work
