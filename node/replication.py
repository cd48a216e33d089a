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

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zchannels.protocol import MsgType, encode

from .core import NodeCore, Out
from .group_replica import Delta, GroupReplica, Slice
from .membership import EventKind, MemberEvent
from .peers import PeerMesh

log = logging.getLogger("zchannels.node")


@dataclass(slots=True)
class _Waiting:
    peers: set[str]  # live peers that have not acknowledged yet
    acks: list[tuple[bytes, int]]  # (client connection, request id) to answer
    deadline: float


class GroupReplication:
    def __init__(
        self,
        mesh: PeerMesh,
        core: NodeCore,
        send: Callable[[list[Out]], None],
        *,
        ack_timeout: float = 0.5,
        anti_entropy_interval: float = 1.0,
    ) -> None:
        self.mesh = mesh
        self.core = core
        self._send_out = send
        self.ack_timeout = ack_timeout
        self.anti_entropy_interval = anti_entropy_interval
        self.replica: GroupReplica | None = None
        self._ack_ids = itertools.count(1)
        self._waiting: dict[int, _Waiting] = {}
        self._task: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self._next_digest = 0.0
        self.ack_timeouts = 0

    def start(self) -> None:
        table = self.mesh.table
        if table is None:
            raise RuntimeError("start the peer mesh first")
        self.replica = GroupReplica(self.mesh.node_id, table.incarnation)
        self.core.clustered = True
        self.core.groups.track_changes = True
        self.mesh.listeners.append(self._on_member_event)
        self.mesh.handlers.update(
            {
                MsgType.GROUP_DELTA: self._on_delta,
                MsgType.GROUP_DELTA_ACK: self._on_delta_ack,
                MsgType.GROUP_DIGEST: self._on_digest,
                MsgType.GROUP_SLICE: self._on_slice,
                MsgType.GROUP_FANOUT: self._on_fanout,
            }
        )
        self._task = asyncio.create_task(self._anti_entropy(), name="znode-groups")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._release(list(self._waiting))

    def status(self) -> dict[str, Any]:
        replica = self.replica
        return {
            "group_sizes": replica.groups() if replica is not None else {},
            "group_ack_timeouts": self.ack_timeouts,
        }

    # -- after every core step ---------------------------------------------
    def after_core(self) -> None:
        """Push what the core changed; route its group_sends; hold answers."""
        replica, core = self.replica, self.core
        if replica is None:
            return
        changed = core.groups.take_changed()
        held, core.held_acks = core.held_acks, []
        fanouts, core.fanouts = core.fanouts, []
        if changed:
            peers = self.mesh.live_peers()
            deltas = [
                d
                for d in (replica.set_local(g, core.groups.count(g)) for g in sorted(changed))
                if d is not None
            ]
            # (a group added and discarded in one batch changes no count)
            ack_id = next(self._ack_ids) if held and peers and deltas else 0
            for delta in deltas:
                self._broadcast(delta, ack_id, peers)
            if ack_id:
                self._waiting[ack_id] = _Waiting(
                    set(peers), [(c, r) for c, r, _ in held], time.monotonic() + self.ack_timeout
                )
                held = []
        if held:  # nothing to wait for: no peers, or no count changed
            self._send_out([(c, (MsgType.ACK, (r, 1))) for c, r, _ in held])
        for group, payload, ttl in fanouts:
            frame = encode(MsgType.GROUP_FANOUT, group, payload, ttl)
            for node in replica.nodes_for(group):
                if node != self.mesh.node_id:
                    self.mesh.send_to(node, frame)

    def _broadcast(self, delta: Delta, ack_id: int, peers: list[str]) -> None:
        frame = encode(
            MsgType.GROUP_DELTA,
            delta.origin,
            delta.incarnation,
            delta.version,
            delta.group,
            delta.count,
            ack_id,
        )
        for peer in peers:
            self.mesh.send_to(peer, frame)

    # -- peer messages -----------------------------------------------------
    def _live_member(self, node: str) -> bool:
        """Only members' replicated state is taken (a stranger's frames are
        counted and dropped)."""
        if node != self.mesh.node_id and node in self.mesh.live_peers():
            return True
        self.mesh.counters["from_strangers"] += 1
        return False

    def _on_delta(self, f: tuple[Any, ...], _now: float) -> None:
        origin, incarnation, version, group, count, ack_id = f
        if not self._live_member(origin):
            return
        if self.replica is not None and count >= 0:
            self.replica.apply(Delta(origin, incarnation, version, group, count))
        if ack_id:
            self.mesh.send_to(origin, encode(MsgType.GROUP_DELTA_ACK, self.mesh.node_id, ack_id))

    def _on_delta_ack(self, f: tuple[Any, ...], _now: float) -> None:
        source, ack_id = f
        waiting = self._waiting.get(ack_id)
        if waiting is not None:
            waiting.peers.discard(source)
            if not waiting.peers:
                self._release([ack_id])

    def _on_digest(self, f: tuple[Any, ...], _now: float) -> None:
        source, entries = f
        replica = self.replica
        if replica is None:
            return
        digest: dict[str, tuple[int, int]] = {}
        for entry in entries[:10_000]:
            if (
                isinstance(entry, list)
                and len(entry) == 3
                and isinstance(entry[0], str)
                and all(isinstance(x, int) for x in entry[1:])
            ):
                digest[entry[0]] = (entry[1], entry[2])
        for s in replica.missing(digest):
            counts = [[g, c] for g, c in s.counts]
            self.mesh.send_to(
                source, encode(MsgType.GROUP_SLICE, s.origin, s.incarnation, s.version, counts)
            )
        # If the peer knows more than we do, ask for it with our own digest.
        mine = replica.digest()
        if any(mine.get(o, (-1, -1)) < v for o, v in digest.items()):
            self._send_digest(source)

    def _on_slice(self, f: tuple[Any, ...], _now: float) -> None:
        origin, incarnation, version, counts = f
        if self.replica is None or not self._live_member(origin):
            return
        pairs = []
        for item in counts[:1_000_000]:
            if (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], str)
                and isinstance(item[1], int)
            ):
                pairs.append((item[0], item[1]))
        self.replica.apply_slice(Slice(origin, incarnation, version, tuple(sorted(pairs))))

    def _on_fanout(self, f: tuple[Any, ...], now: float) -> None:
        group, payload, ttl = f
        self._send_out(self.core.fanout_from_peer(group, payload, float(ttl), now))

    # -- membership --------------------------------------------------------
    def _on_member_event(self, event: MemberEvent) -> None:
        replica = self.replica
        if replica is None or event.node == self.mesh.node_id:
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
                    self._release([ack_id])
        elif event.kind in (EventKind.JOINED, EventKind.ALIVE, EventKind.UPDATED):
            # A new or returning node (one declared dead in a partition comes
            # back with the same replica incarnation): take its slice again,
            # and exchange digests at once.
            replica.forget_dropped(event.node)
            self._send_digest(event.node)

    # -- timers ------------------------------------------------------------
    async def _anti_entropy(self) -> None:
        while True:
            await asyncio.sleep(min(self.anti_entropy_interval, self.ack_timeout / 2))
            now = time.monotonic()
            late = [a for a, w in self._waiting.items() if w.deadline <= now]
            if late:
                self.ack_timeouts += len(late)
                log.warning(
                    "group_add: peers did not acknowledge in %.2f s; answering anyway "
                    "(anti-entropy will carry the change)",
                    self.ack_timeout,
                )
                self._release(late)
            if now >= self._next_digest:
                self._next_digest = now + self.anti_entropy_interval
                peers = self.mesh.live_peers()
                if peers:
                    self._send_digest(self._rng.choice(peers))

    def _send_digest(self, node: str) -> None:
        if self.replica is None:
            return
        entries = [[o, inc, ver] for o, (inc, ver) in self.replica.digest().items()]
        self.mesh.send_to(node, encode(MsgType.GROUP_DIGEST, self.mesh.node_id, entries))

    def _release(self, ack_ids: list[int]) -> None:
        out: list[Out] = []
        for ack_id in ack_ids:
            waiting = self._waiting.pop(ack_id, None)
            if waiting is not None:
                out += [(conn, (MsgType.ACK, (req, 1))) for conn, req in waiting.acks]
        if out:
            self._send_out(out)
