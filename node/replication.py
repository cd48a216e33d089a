"""Groups across the cluster: replicating member counts, routing group_send.

Owns: pushing this node's per-group member counts to every peer when they
change (``GROUP_DELTA``), holding a ``group_add``'s answer until the live peers
have acknowledged the change (bounded by ``ack_timeout``, then it falls back to
anti-entropy and says so in the log), periodic anti-entropy (``GROUP_DIGEST`` /
``GROUP_SLICE``, so a lost delta or a healed partition converges), forgetting
a dead node's slice, and sending each ``group_send`` as one frame to each
other node that has members (``GROUP_FANOUT``). The replicated state itself
is the pure ``GroupReplica``; memberships stay with the node that holds them.

Design: Phoenix.Tracker / Erlang ``pg`` — each node is the only writer of its
own entries, and only counts travel, so a group_send costs one frame per
interested node, never one per member.
"""

from __future__ import annotations

import itertools
import logging
import random
from dataclasses import dataclass
from typing import Any

from zchannels.protocol import MsgType

from .core import ClusterWork, NodeCore, Out
from .effects import Fx
from .group_replica import Delta, GroupReplica, Slice
from .membership import EventKind, MemberEvent, MemberTable
from .peer_messages import (
    ClusterMessage,
    GroupDelta,
    GroupDeltaAck,
    GroupDigest,
    GroupFanout,
    GroupSlice,
)

log = logging.getLogger("zchannels.node")


@dataclass(slots=True)
class _Waiting:
    peers: set[str]  # live peers that have not acknowledged yet
    acks: list[tuple[bytes, int]]  # (client connection, request id) to answer
    deadline: float


class GroupReplication:
    """Pure: every method takes ``now`` and fills the step's ``Fx``; the
    random peer of anti-entropy comes from the injected ``rng``."""

    def __init__(
        self,
        core: NodeCore,
        table: MemberTable,
        rng: random.Random,
        *,
        ack_timeout: float = 0.5,
        anti_entropy_interval: float = 1.0,
    ) -> None:
        self.core = core
        self.table = table
        self.me = table.node_id
        self.ack_timeout = ack_timeout
        self.anti_entropy_interval = anti_entropy_interval
        self.replica = GroupReplica(self.me, table.incarnation)
        self._ack_ids = itertools.count(1)
        self._waiting: dict[int, _Waiting] = {}
        self._rng = rng
        self._next_digest = 0.0
        #: until when every group_send goes to every live peer: this node's
        #: counts of the others are not known yet (it has just started)
        self._broadcast_until = 0.0
        #: group -> {node: until when its group_sends go there too}: it was
        #: just handed memberships, and its counts have not caught up yet
        self._forward: dict[str, dict[str, float]] = {}
        self._fanout_seq = itertools.count(1)
        #: fanout id -> when first seen (a copy passed on by the node that
        #: handed memberships away may come after the one sent here directly)
        self._seen: dict[tuple[str, int, int], float] = {}
        #: fanouts dropped as second copies
        self.fanout_duplicates = 0
        self.ack_timeouts = 0
        #: messages from nodes that are not live members (dropped)
        self.from_strangers = 0
        core.groups.track_changes = True

    def live_peers(self) -> list[str]:
        return [n for n in self.table.live() if n != self.me]

    def catch_up_window(self) -> float:
        """Seconds within which counts converge: two anti-entropy rounds."""
        return 2 * self.anti_entropy_interval + self.ack_timeout

    def started(self, now: float) -> None:
        """This life begins: until the digests have come, a group_send goes
        to every live peer (one that has no member reaches nobody there)."""
        self._broadcast_until = now + self.catch_up_window()

    def moved(self, moves: list[tuple[str, str]], now: float) -> None:
        """Memberships of these groups were handed to these nodes: send
        their group_sends there too until the receivers' counts are known."""
        until = now + self.catch_up_window()
        for node, group in moves:
            self._forward.setdefault(group, {})[node] = until

    def _targets(self, group: str, now: float) -> list[str]:
        """Where a group_send made here goes: the nodes the counts say have
        members, every live peer just after a start, and where memberships
        were just handed."""
        nodes = set(self.replica.nodes_for(group))
        if now < self._broadcast_until:
            nodes.update(self.live_peers())
        nodes.update(self._forwarding(group, now))
        nodes.discard(self.me)
        return sorted(nodes)

    def _forwarding(self, group: str, now: float) -> list[str]:
        """Nodes this one handed memberships of ``group`` to lately."""
        forward = self._forward.get(group)
        if forward is None:
            return []
        for node, until in list(forward.items()):
            if until <= now:
                del forward[node]
        if not forward:
            del self._forward[group]
        return list(forward)

    def _first_copy(self, key: tuple[str, int, int], now: float) -> bool:
        """Whether fanout ``key`` is new here (ids are kept two windows)."""
        if key in self._seen:
            return False
        horizon = now - 2 * self.catch_up_window()
        while self._seen:
            oldest = next(iter(self._seen))
            if self._seen[oldest] > horizon:
                break
            del self._seen[oldest]
        self._seen[key] = now
        return True

    def leave(self, fx: Fx) -> None:
        """The node stops: answer every group_add still waiting."""
        self._release(list(self._waiting), fx)

    def status(self) -> dict[str, Any]:
        return {
            "group_sizes": self.replica.groups(),
            "group_ack_timeouts": self.ack_timeouts,
            "group_fanout_duplicates": self.fanout_duplicates,
        }

    # -- the core's work ---------------------------------------------------
    def after_core(self, work: ClusterWork, now: float, fx: Fx) -> None:
        """Push what the core changed; route its group_sends; hold answers."""
        replica, core = self.replica, self.core
        changed = core.groups.take_changed()
        held = work.held_acks
        if changed:
            peers = self.live_peers()
            deltas = [
                d
                for d in (replica.set_local(g, core.groups.count(g)) for g in sorted(changed))
                if d is not None
            ]
            # (a group added and discarded in one batch changes no count)
            ack_id = next(self._ack_ids) if held and peers and deltas else 0
            for delta in deltas:
                msg = GroupDelta(
                    delta.origin, delta.incarnation, delta.version, delta.group, delta.count, ack_id
                )
                fx.peers.extend((peer, msg) for peer in peers)
            if ack_id:
                self._waiting[ack_id] = _Waiting(
                    set(peers), [(c, r) for c, r, _ in held], now + self.ack_timeout
                )
                held = []
        if held:  # nothing to wait for: no peers, or no count changed
            fx.out.extend((c, (MsgType.ACK, (r, 1))) for c, r, _ in held)
        for group, payload, ttl in work.fanouts:
            fanout = GroupFanout(
                self.me, self.replica.incarnation, next(self._fanout_seq), group, payload, ttl
            )
            self._first_copy((fanout.origin, fanout.incarnation, fanout.seq), now)
            for node in self._targets(group, now):
                fx.peers.append((node, fanout))

    # -- peer messages -----------------------------------------------------
    def _live_member(self, node: str) -> bool:
        """Only members' replicated state is taken (a stranger's messages
        are counted and dropped)."""
        if node != self.me and node in self.table.live():
            return True
        self.from_strangers += 1
        return False

    def handle(self, msg: ClusterMessage, now: float, fx: Fx) -> None:
        """One of replication's peer messages (already checked by the codec)."""
        match msg:
            case GroupDelta():
                if not self._live_member(msg.origin):
                    return
                self.replica.apply(
                    Delta(msg.origin, msg.incarnation, msg.version, msg.group, msg.count)
                )
                if msg.ack:
                    fx.peers.append((msg.origin, GroupDeltaAck(self.me, msg.ack)))
            case GroupDeltaAck():
                waiting = self._waiting.get(msg.ack)
                if waiting is not None:
                    waiting.peers.discard(msg.source)
                    if not waiting.peers:
                        self._release([msg.ack], fx)
            case GroupDigest():
                self._on_digest(msg, fx)
            case GroupSlice():
                if self._live_member(msg.origin):
                    self.replica.apply_slice(
                        Slice(msg.origin, msg.incarnation, msg.version, msg.counts)
                    )
            case GroupFanout():
                if not self._first_copy((msg.origin, msg.incarnation, msg.seq), now):
                    self.fanout_duplicates += 1
                    return
                fx.out.extend(self.core.fanout_from_peer(msg.group, msg.payload, msg.ttl, now))
                # (its sender's counts may be older than our handover)
                for node in self._forwarding(msg.group, now):
                    if node != msg.origin:
                        fx.peers.append((node, msg))

    def _on_digest(self, msg: GroupDigest, fx: Fx) -> None:
        replica = self.replica
        digest = {origin: (inc, ver) for origin, inc, ver in msg.entries}
        for s in replica.missing(digest):
            fx.peers.append((msg.source, GroupSlice(s.origin, s.incarnation, s.version, s.counts)))
        # If the peer knows more than we do, ask for it with our own digest.
        mine = replica.digest()
        if any(mine.get(o, (-1, -1)) < v for o, v in digest.items()):
            self._send_digest(msg.source, fx)

    # -- membership --------------------------------------------------------
    def on_member_event(self, event: MemberEvent, fx: Fx) -> None:
        replica = self.replica
        if event.node == self.me:
            return
        if event.kind == EventKind.REAPED:
            replica.forget_dropped(event.node)
        elif event.kind in (EventKind.DEAD, EventKind.LEFT):
            gone = replica.drop_origin(event.node, incarnation=event.incarnation)
            if gone:
                log.info("node %s gone: its members of %d groups dropped", event.node, len(gone))
            for ack_id, waiting in list(self._waiting.items()):
                waiting.peers.discard(event.node)
                if not waiting.peers:
                    self._release([ack_id], fx)
        elif event.kind in (EventKind.JOINED, EventKind.ALIVE, EventKind.UPDATED):
            # A new or returning node (one declared dead in a partition comes
            # back with the same replica incarnation): take its slice again,
            # and exchange digests at once.
            replica.forget_dropped(event.node)
            self._send_digest(event.node, fx)

    # -- timers ------------------------------------------------------------
    def next_deadline(self) -> float:
        deadline = self._next_digest
        if self._waiting:
            deadline = min(deadline, min(w.deadline for w in self._waiting.values()))
        return deadline

    def tick(self, now: float, fx: Fx) -> None:
        late = [a for a, w in self._waiting.items() if w.deadline <= now]
        if late:
            self.ack_timeouts += len(late)
            log.warning(
                "group_add: peers did not acknowledge in %.2f s; answering anyway "
                "(anti-entropy will carry the change)",
                self.ack_timeout,
            )
            self._release(late, fx)
        if now >= self._next_digest:
            self._next_digest = now + self.anti_entropy_interval
            peers = self.live_peers()
            if peers:
                self._send_digest(self._rng.choice(peers), fx)

    def _send_digest(self, node: str, fx: Fx) -> None:
        entries = tuple((o, inc, ver) for o, (inc, ver) in self.replica.digest().items())
        fx.peers.append((node, GroupDigest(self.me, entries)))

    def _release(self, ack_ids: list[int], fx: Fx) -> None:
        out: list[Out] = []
        for ack_id in ack_ids:
            waiting = self._waiting.pop(ack_id, None)
            if waiting is not None:
                out += [(conn, (MsgType.ACK, (req, 1))) for conn, req in waiting.acks]
        fx.out.extend(out)
