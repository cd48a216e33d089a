"""Groups across the cluster: replicating member counts, routing group_send.

Owns: pushing this node's per-group member counts to every peer when they
change (``GROUP_DELTA``), holding a ``group_add``'s answer until the live peers
have acknowledged the change (bounded by ``ack_timeout``, then it falls back to
anti-entropy and says so in the log), periodic anti-entropy (``GROUP_DIGEST`` /
``GROUP_SLICE``, so a lost delta or a healed partition converges), forgetting
a dead node's slice, and sending each ``group_send`` as one frame to each
other node that has members (``GROUP_FANOUT``), following memberships that
move: a node that has just handed a group's memberships away passes that
group's fanouts on (``GROUP_FANOUT_PASSED``), and the receiver applies each
fanout once per membership (below). The replicated state itself is the pure
``GroupReplica``; memberships stay with the node that holds them.

Fanouts and handovers race: a fanout can reach the new holder directly
before the handover of the memberships does, and the copy the old holder
passes on comes after it (one ordered link). A passed-on copy is exactly
what the old holder could not apply itself (it came after its handover), so
the receiver applies it to the memberships that node's handovers brought
*after* the receiver applied its own copy (all of them, if it had none);
each application records the groups' version it happened at, and each
handover the version it left.

Design: Phoenix.Tracker / Erlang ``pg`` — each node is the only writer of its
own entries, and only counts travel, so a group_send costs one frame per
interested node, never one per member.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from zchannels.protocol import MsgType

from .core import ClusterWork, NodeCore, Out
from .effects import Fx
from .group_replica import Delta, GroupReplica, Slice
from .membership import LIVE, EventKind, MemberEvent, MemberTable
from .peer_messages import (
    ClusterMessage,
    FanoutsSeen,
    GroupDelta,
    GroupDeltaAck,
    GroupDigest,
    GroupFanout,
    GroupFanoutPassed,
    GroupSlice,
)
from .routing import RESTART_GAP

log = logging.getLogger("zchannels.node")


@dataclass(slots=True)
class _Waiting:
    peers: set[str]  # live peers that have not acknowledged yet
    acks: list[tuple[bytes, int]]  # (client connection, request id) to answer
    deadline: float


@dataclass(slots=True)
class _Seen:
    """A fanout this node has applied."""

    at: float  # when first seen
    version: int  # the groups' version when it reached this node's members
    #: channels a passed-on copy reached since (each gets it once)
    caught_up: set[str]


@dataclass(slots=True)
class _HandedIn:
    """Memberships one handover brought here (that were not here)."""

    at: float
    source: str  # the node that handed them
    version: int  # the groups' version once they were added
    groups: dict[str, set[str]]  # group -> channels
    #: origin -> (incarnation, seq): the last fanout of each origin its
    #: source had taken as it handed them (they had every one up to it)
    upto: dict[str, tuple[int, int]]


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
        #: fanout id -> when and at which version it reached this node's
        #: members (a copy passed on by the node that handed memberships
        #: away may come after the one sent here directly)
        self._seen: dict[tuple[str, int, int], _Seen] = {}
        #: handovers of memberships taken here, oldest first (both are
        #: kept two catch-up windows: a node passes fanouts on for one)
        self._handed_in: list[_HandedIn] = []
        #: origin -> (incarnation, seq): the last fanout taken from it here
        #: (``FanoutsSeen``, sent before a handover of memberships)
        self._taken: dict[str, tuple[int, int]] = {}
        #: source -> its ``FanoutsSeen``, for the handover that follows it
        self._seen_before: dict[str, dict[str, tuple[int, int]]] = {}
        #: fanouts dropped as second copies (they had reached every member)
        self.fanout_duplicates = 0
        #: memberships a fanout skipped because the handover that brought
        #: them came from a node that had given them that fanout already
        self.fanouts_had = 0
        #: passed-on copies applied to memberships a handover brought after
        #: this node's own copy (or a copy before) had been applied
        self.fanouts_caught_up = 0
        self.ack_timeouts = 0
        #: messages from nodes that are not live members (dropped)
        self.from_strangers = 0
        core.groups.track_changes = True
        core.superseded = self.superseded_here

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

    def adopted(self, handovers: list[tuple[str, list[tuple[str, str]]]], now: float) -> None:
        """Handovers from these nodes have just added these (group, channel)
        memberships here (the fanouts they pass on after are for them)."""
        self._forget(now)
        version = self.core.groups.version
        for source, added in handovers:
            groups: dict[str, set[str]] = {}
            for group, channel in added:
                groups.setdefault(group, set()).add(channel)
            upto = self._seen_before.pop(source, {})
            self._handed_in.append(_HandedIn(now, source, version, groups, upto))

    def fanouts_seen(self, moved: Iterable[tuple[Any, ...]] = ()) -> FanoutsSeen:
        """What goes just before a handover of ``moved`` memberships
        (``routing``; (group, channel, ...) each), if all of them had the
        same fanouts: see ``fanouts_seen_split``."""
        return self.fanouts_seen_split(tuple(moved))[0][0]

    def fanouts_seen_split(
        self, moved: tuple[tuple[Any, ...], ...]
    ) -> list[tuple[FanoutsSeen, tuple[tuple[Any, ...], ...]]]:
        """``moved`` memberships (``routing``'s handover; (group, channel,
        ...) each) split by the fanouts they had, each part with what goes
        just before its handover: the last fanout of each origin taken here,
        or, for memberships that came here by a handover that said its
        source had a later one, that one (their copies came with them and go
        on with them: soak seed 5000, a membership handed on and back whose
        FanoutsSeen had lost what the first handover said, so the fanouts
        passed on after it reached the member twice, plans/fanouts-a-
        handover-brought-handed-on-once.json; soak seed 5608, one handed on
        together with one this node held all along, which had not had them,
        plans/fanouts-a-handover-brought-handed-on-with-others-once.json).
        One part (possibly empty) at least, in the order of ``moved``."""
        parts: dict[tuple[tuple[str, int, int], ...], list[tuple[Any, ...]]] = {}
        for member in moved or ((),):
            taken = dict(self._taken)
            if member:
                group, channel = member[0], member[1]
                for handed in self._handed_in:
                    if channel in handed.groups.get(group, ()):
                        for origin, last in handed.upto.items():
                            if last > taken.get(origin, (-1, -1)):
                                taken[origin] = last
            upto = tuple(sorted((o, inc, seq) for o, (inc, seq) in taken.items()))
            part = parts.setdefault(upto, [])
            if member:
                part.append(member)
        return [(FanoutsSeen(self.me, upto), tuple(part)) for upto, part in parts.items()]

    def _had_it(self, key: tuple[str, int, int], group: str) -> set[str]:
        """Members of ``group`` that handovers brought here from nodes that
        had taken fanout ``key`` before they handed them: it reached them
        there (it was queued with them), and must not reach them again."""
        origin, incarnation, seq = key
        had: set[str] = set()
        for handed in self._handed_in:
            taken = handed.upto.get(origin)
            if taken is not None and taken[0] == incarnation and taken[1] >= seq:
                had |= handed.groups.get(group, set())
        return had

    def _took(self, key: tuple[str, int, int]) -> None:
        origin, incarnation, seq = key
        last = self._taken.get(origin)
        if last is None or (incarnation, seq) > last:
            self._taken[origin] = (incarnation, seq)

    def _remember(self, key: tuple[str, int, int], version: int, now: float) -> None:
        """Fanout ``key`` has reached this node's members at ``version``."""
        self._forget(now)
        self._seen[key] = _Seen(now, version, set())

    def _forget(self, now: float) -> None:
        """Ids and handovers older than two catch-up windows."""
        horizon = now - 2 * self.catch_up_window()
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            if seen[oldest].at > horizon:
                break
            del seen[oldest]
        handed = self._handed_in
        if handed and handed[0].at <= horizon:
            self._handed_in = [h for h in handed if h.at > horizon]

    def _missed(self, seen: _Seen, source: str, group: str) -> set[str]:
        """The members of ``group`` that ``source``'s handovers brought
        after ``seen`` reached this node's members (and no copy since)."""
        missed: set[str] = set()
        for handed in reversed(self._handed_in):
            if handed.version <= seen.version:
                break
            if handed.source == source:
                missed |= handed.groups.get(group, set())
        missed -= seen.caught_up
        return missed

    def leave(self, fx: Fx) -> None:
        """The node stops: answer every group_add still waiting."""
        self._release(list(self._waiting), fx)

    def status(self) -> dict[str, Any]:
        return {
            "group_sizes": self.replica.groups(),
            "group_ack_timeouts": self.ack_timeouts,
            "group_fanout_duplicates": self.fanout_duplicates,
            "group_fanouts_caught_up": self.fanouts_caught_up,
            "group_fanouts_had": self.fanouts_had,
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
        for group, payload, ttl, version in work.fanouts:
            fanout = GroupFanout(
                self.me, self.replica.incarnation, next(self._fanout_seq), group, payload, ttl
            )
            self._remember((fanout.origin, fanout.incarnation, fanout.seq), version, now)
            self._took((fanout.origin, fanout.incarnation, fanout.seq))
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
            case GroupFanout() | GroupFanoutPassed():
                self._on_fanout(msg, now, fx)
            case FanoutsSeen():
                # (taken from any member, as its handover is: ``routing``)
                if msg.source != self.me and self.table.member(msg.source) is not None:
                    self._seen_before[msg.source] = {o: (i, s) for o, i, s in msg.upto}
                else:
                    self.from_strangers += 1

    def _on_fanout(self, msg: GroupFanout | GroupFanoutPassed, now: float, fx: Fx) -> None:
        """A group_send made on another node: for this node's members, each
        reached once (see the module's docstring)."""
        key = (msg.origin, msg.incarnation, msg.seq)
        core = self.core
        seen = self._seen.get(key)
        if isinstance(msg, GroupFanout):
            # (straight from its origin: that link brings its fanouts in
            # order, so every earlier one sent here came before; a copy
            # passed on by a third node says nothing of those)
            self._took(key)
        if seen is None:
            # (not to memberships handed here by a node that had it: they
            # got it there, queued with them; seen in rolling restarts: a
            # group_send as a node came back reached it from its origin, and
            # with a membership another node handed back, twice)
            had = self._had_it(key, msg.group) if self._handed_in else set()
            had |= self._superseded(msg)
            if core.groups.has_node_memberships():
                had |= self.superseded_here(msg.group)
            only = None
            if had:
                self.fanouts_had += 1
                only = [c for c in core.groups.members(msg.group, now) if c not in had]
            fx.out.extend(core.fanout_from_peer(msg.group, msg.payload, msg.ttl, now, only=only))
            self._remember(key, core.groups.version, now)
            self._seen[key].caught_up |= had
            # Its sender's counts may be older than our handover: pass it on
            # to where we handed the group's memberships (its origin too: a
            # fanout applied there before our handover arrived missed them).
            passed = GroupFanoutPassed(self.me, *key, msg.group, msg.payload, msg.ttl)
            fx.peers.extend((node, passed) for node in self._forwarding(msg.group, now))
            return
        missed = (
            # (not those whose handover said its source had it: its copy
            # came with them; soak seed 5608, plans/fanout-passed-back-to-
            # its-origin-after-handovers-that-had-it.json)
            self._missed(seen, msg.source, msg.group)
            - self._superseded(msg)
            - self._had_it(key, msg.group)
            if isinstance(msg, GroupFanoutPassed)
            else set()
        )
        if not missed:  # (a second copy: it reached every member here)
            self.fanout_duplicates += 1
            return
        # Passed on by a node that could not apply it to what it had just
        # handed here, after our copy had been applied without those. (Not
        # passed on further: what this node had when its copy came got it.)
        seen.caught_up |= missed
        self.fanouts_caught_up += 1
        fx.out.extend(core.fanout_from_peer(msg.group, msg.payload, msg.ttl, now, only=missed))

    def superseded_here(self, group: str) -> set[str]:
        """Members of ``group`` held here for sessions of an earlier life of
        a node the member table has live in a newer one: this node's own
        group_send skips them, as ``_superseded`` does a peer's. Its fanout
        reaches that node's new life, where its clients make their
        memberships again; a copy queued here as well reached the same
        channel twice once this node handed it back (soak seed 3040: a
        group_send held while this node was frozen, taken up as it thawed
        and saw the new life, plans/group-send-after-a-restart-not-also-
        queued-for-the-earlier-life.json). A third node's fanout skips them
        too: its origin sends it to that node's new life as soon as its
        counts show the memberships made again there, and this node's copy
        went back with the channel to the one its process had taken already
        (10,000 seed 7642: c5's node restarted, c5 made its membership again
        there, c1's group_send reached both the new life and the keeper of
        the old membership in the same millisecond, and the keeper's handback
        brought the second copy into c5's queue: plans/group-send-to-a-
        membership-held-at-two-nodes-as-its-owner-came-back-taken-twice.json)."""
        out: set[str] = set()
        for member in self.table.members():
            if member.state in LIVE and member.id != self.me:
                out |= self._held_for_earlier_lives(member.id, member.incarnation, group)
        return out

    def _superseded(self, msg: GroupFanout | GroupFanoutPassed) -> set[str]:
        """Members of ``msg.group`` held here for sessions of an earlier
        life of the fanout's own origin: kept while that node was away (a
        leave, a restart), to be handed back. Its new life, which sent this
        fanout, applied it to the memberships its clients made again there,
        so a copy queued here for the old one reaches the same channel twice
        once it is handed back (simulation seed 724, a 1 s partition after
        the restart kept this node from seeing the new life for 1.7 s:
        plans/group-copy-handed-back-after-partition-delivered-twice.json;
        seed 1033, the same through a copy passed on after a handover:
        plans/group-copy-passed-on-for-an-earlier-life-delivered-twice.json).
        A client that has not made its membership again yet misses this
        group message: at most once, as a group_send is."""
        return self._held_for_earlier_lives(msg.origin, msg.incarnation, msg.group)

    def _held_for_earlier_lives(self, node: str, incarnation: int, group: str) -> set[str]:
        """Members of ``group`` held here for sessions of lives of ``node``
        earlier than ``incarnation`` (by more than a refutation)."""
        groups = self.core.groups
        out: set[str] = set()
        if not groups.has_node(node):
            return out
        prefix = node + "@"
        for holder in groups.holders(prefix):
            life = holder[len(prefix) :].split("/", 1)[0]
            if life.isdigit() and incarnation >= int(life) + RESTART_GAP:
                out.update(c for g, c in groups.held(holder) if g == group)
        return out

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
        self._forget(now)
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
