"""Cluster membership and failure detection: the member table, sans I/O.

Owns: which nodes are in the cluster and what this node believes of each
(alive / suspect / dead / left, at which incarnation, at which address); the
failure detector that produces those beliefs (probes, indirect probes,
suspicion timers, refutation); the gossip that spreads them (piggybacked,
retransmit-limited); joining through seeds (full-state push-pull) and leaving.
Does not own: sockets, clocks, the wire encoding (the messages here are plain
frozen dataclasses of str/int/float/tuples; the codec maps them onto frames),
logging, or what the rest of the node does when a member comes or goes (it
reads the returned ``MemberEvent``s).

Every entry point takes ``now`` (monotonic seconds) and returns ``Effects``:
the messages to send as ``(address, message)`` and the events that happened.
Randomness comes from the ``random.Random`` the caller passes in, so a
many-node cluster runs deterministically in a simulation (``tests/simnet.py``).
The shell calls ``tick(now)`` no later than ``next_deadline()``.

The protocol is SWIM (Das, Gupta, Motivala, "SWIM: Scalable Weakly-consistent
Infection-style Process Group Membership Protocol", DSN 2002) with the
Lifeguard refinements (Dadgar, Phillips, Currey, "Lifeguard: Local Health
Awareness for More Accurate Failure Detection", 2018), shaped after
hashicorp/memberlist (state.go, suspicion.go, queue.go, awareness.go):

- Probing: every ``probe_interval`` the node pings the next member of a
  shuffled round-robin list (SWIM §4.3: every member is probed within one
  round, yet the order is random). No ack within ``probe_timeout`` → it asks
  ``indirect_checks`` other members to ping the target for it (PING-REQ);
  no ack by the end of the interval → the target is SUSPECT.
- Suspicion (SWIM §4.2, Lifeguard §IV-B "LHA-Suspicion"): a suspect member is
  declared DEAD when its timer runs out. The timer starts at ``max`` and
  shrinks towards ``min`` as independent members confirm the suspicion
  (``suspicion_timeout``), so a truly dead node goes fast while a lone
  prober's mistake leaves plenty of time to refute.
- Refutation: a member that hears it is suspected (or declared dead) at its
  current incarnation bumps its incarnation and gossips ALIVE, which beats the
  suspicion everywhere. Lifeguard's "buddy system": a message to a member we
  hold suspect or dead carries that belief first, so it learns at once.
- Local health (Lifeguard §IV-A "LHA-Probe"): a score in ``[0,
  awareness_max]`` that rises when this node's own probes fail without the
  expected NACKs from the intermediaries (the fault is likely ours), when it
  has to refute, and when its own event loop stalls; it falls with every
  successful probe. Probe interval and timeout are multiplied by
  ``1 + score``: a busy or lossy node slows down instead of accusing others.
- Gossip (SWIM §4.1): updates ride on every ping/ack and on a periodic gossip
  message to ``gossip_nodes`` random members; each is sent at most
  ``retransmit_mult * ceil(log10(N + 1))`` times, fewest-sent first
  (memberlist's TransmitLimitedQueue).
- Push-pull: joining is a full-state exchange with a seed; the same exchange
  runs with a random member every ``push_pull_interval`` (anti-entropy) and
  with a random dead member every ``reconnect_interval`` (so both sides of a
  healed partition find each other, as Serf's reconnect does), and with a
  configured seed at whose address no member is known (beyond memberlist: a
  node that joined through seeds that then all restarted while it was cut
  off would otherwise never meet their next lives).
- Beyond memberlist, three direct messages where gossip's retransmit limit
  leaves a small chance of a long wait (each found by the simulation): a
  node whose join is answered announces itself to every member at once; a
  ping from a node we have never heard of starts a push-pull with it; a
  node that receives a negative claim about itself older than its
  incarnation (the sender missed the refutation) tells the sender directly.

Merge rule (the invariant every node applies): each update is a claim
``(node, incarnation, state)``; claims are ordered by incarnation, then by
state rank ``alive < suspect < dead < left``, and a node keeps the greatest
claim it has seen. The order is total, so applying the same set of updates
in any order gives the same table (a property test checks it). Consequences:
a higher incarnation wins; refutation (incarnation + 1, alive) beats the
suspicion; a stale alive never resurrects a dead member; ``left`` is final
for that incarnation. One incarnation of a node has one address. Exceptions,
as in memberlist: claims about this node itself are never applied but
refuted; a ``dead`` learned by push-pull (old, second-hand state) is applied
as ``suspect`` so the member gets its chance to refute, and dead/left
entries of unknown nodes are not taken from push-pull (a tombstone must not
be copied back and forth forever).

Incarnations: a restarted node must never be taken for its old self, so the
caller starts it at ``first_incarnation(wall_clock)`` (milliseconds since the
epoch), above anything its previous run used as long as that run refuted
fewer times than it lived milliseconds. Dead and left members are remembered
for ``dead_keep`` seconds, long past the life of any gossip about them, then
forgotten (``REAPED``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from zchannels.protocol import PROTOCOL_VERSION

# -- configuration -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """Timing of the failure detector and gossip. Durations are float seconds.

    The ``lan`` preset's budget for a SIGKILLed node (simulated figures in
    ``tests/test_membership.py``): first probe of it within about one
    ``probe_interval``, the probe fails one interval later, the suspicion runs
    ``min`` (1.0 s up to 10 nodes, confirmations from the other probers
    arrive within it) to ``max`` (2.0 s) and the DEAD spreads in a few
    ``gossip_interval``s: under 3 s on every node. A merely busy host has at
    least ``min`` (1.0 s) to answer the suspicion it is sent directly.
    """

    #: Seconds between two probes (times (1 + health score)). Sets how soon a dead
    #: node is noticed: 0.2 s lets every member be probed by someone several
    #: times a second, for ~10 small messages/s per node.
    probe_interval: float = 0.2
    #: Seconds to wait for a direct ack before asking others (times (1 + score)).
    #: Loopback/LAN round trips are well under 1 ms, but a Python node's event
    #: loop may lag tens of ms; the rest of the interval (0.12 s) is left for
    #: the indirect probes and their NACKs (sent at 0.8 * this).
    probe_timeout: float = 0.08
    #: Members asked to ping the target when the direct ping went unanswered
    #: (SWIM's k). 3, as memberlist: a lossy link between two nodes alone
    #: does not get a healthy node suspected.
    indirect_checks: int = 3
    #: Suspicion ``min`` = this * max(1, log10(N)) * ``probe_interval``
    #: (memberlist's SuspicionMult). 5 → 1.0 s up to 10 nodes: the time a
    #: suspected node has to refute once others agree it is unreachable.
    suspicion_mult: float = 5.0
    #: Suspicion ``max`` = this * ``min``: the timeout while no other member
    #: confirms the suspicion. 2 keeps a lone-prober mistake refutable for
    #: 2 s while a real failure is still declared within the 3 s target.
    suspicion_max_mult: float = 2.0
    #: Independent confirmations that bring the timer down to ``min``
    #: (Lifeguard's K; capped at N - 2, the members that could confirm).
    suspicion_confirmations: int = 3
    #: Seconds between gossip rounds (updates not yet spread enough, sent to
    #: ``gossip_nodes`` random members). 0.1 s: a DEAD or LEFT reaches 20
    #: nodes in a few rounds, well inside the detection budget.
    gossip_interval: float = 0.1
    #: Members each gossip round goes to (memberlist: 3).
    gossip_nodes: int = 3
    #: Most updates carried by one ping, ack or gossip message. Frames go
    #: over TCP, so this only bounds message size: 32 updates ~ 2 KB.
    max_piggyback: int = 32
    #: Each update is sent at most ``retransmit_mult * ceil(log10(N + 1))``
    #: times (memberlist's RetransmitMult, same default 4): enough that every
    #: member hears it with high probability, however large N.
    retransmit_mult: int = 4
    #: Seconds between full-state exchanges with a random member
    #: (anti-entropy: repairs anything gossip missed). Cheap at ~100 nodes.
    push_pull_interval: float = 10.0
    #: Seconds between full-state exchanges with a random dead member, so a
    #: healed partition (each side holds the other dead) merges again.
    reconnect_interval: float = 1.0
    #: Seconds between retries of the seeds while this node knows no other
    #: live member (the first node up, or one cut off from all).
    join_retry_interval: float = 1.0
    #: Seconds dead and left members are remembered before being forgotten:
    #: far longer than any gossip about them lives (a few seconds), so stale
    #: gossip cannot bring them back, and long enough to reconnect after a
    #: partition of this length.
    dead_keep: float = 30.0
    #: Highest local health score (Lifeguard): timeouts grow up to
    #: (1 + this) times. 8, as memberlist.
    awareness_max: int = 8
    #: A gap longer than this between two ``tick`` calls means this process
    #: was stalled (CPU starved, suspended): its running probes and suspicion
    #: timers are pushed back by the gap and its health score rises, so it
    #: does not accuse others of its own lateness. Must exceed the shell's
    #: tick period; ``next_deadline`` is never further than half of it.
    stall_threshold: float = 0.5

    def __post_init__(self) -> None:
        for name in (
            "probe_interval",
            "probe_timeout",
            "suspicion_mult",
            "suspicion_max_mult",
            "gossip_interval",
            "push_pull_interval",
            "reconnect_interval",
            "join_retry_interval",
            "dead_keep",
            "stall_threshold",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        for name in ("gossip_nodes", "max_piggyback", "retransmit_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        for name in ("indirect_checks", "suspicion_confirmations", "awareness_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)!r}")
        if self.probe_timeout >= self.probe_interval:
            raise ValueError("probe_timeout must be shorter than probe_interval")
        if self.suspicion_max_mult < 1:
            raise ValueError("suspicion_max_mult must be at least 1")

    @property
    def nack_timeout(self) -> float:
        """Seconds an intermediary waits for the target before sending a NACK:
        80% of the probe timeout, so the NACK reaches the prober within its
        indirect window (Lifeguard §IV-A)."""
        return 0.8 * self.probe_timeout

    @classmethod
    def lan(cls, **overrides: Any) -> MembershipConfig:
        """A LAN or one host: a killed node is dead everywhere within 3 s."""
        return replace(cls(), **overrides)

    @classmethod
    def local(cls, **overrides: Any) -> MembershipConfig:
        """Several processes on one loopback host in tests: everything about
        twice as fast as ``lan`` (dead within ~1.5 s)."""
        base = cls(
            probe_interval=0.1,
            probe_timeout=0.04,
            gossip_interval=0.05,
            push_pull_interval=5.0,
            reconnect_interval=0.5,
            join_retry_interval=0.5,
            dead_keep=15.0,
            stall_threshold=0.3,
        )
        return replace(base, **overrides)

    @classmethod
    def test(cls, **overrides: Any) -> MembershipConfig:
        """In-process tests and the simulation: four times as fast as ``lan``.
        Too tight for real processes on a loaded machine."""
        base = cls(
            probe_interval=0.05,
            probe_timeout=0.02,
            gossip_interval=0.025,
            push_pull_interval=2.0,
            reconnect_interval=0.25,
            join_retry_interval=0.25,
            dead_keep=5.0,
            stall_threshold=0.15,
        )
        return replace(base, **overrides)


def first_incarnation(wall_clock: float) -> int:
    """The incarnation a node starts with: its start time in milliseconds
    since the epoch (``time.time()``), so each start is above the last."""
    return int(wall_clock * 1000)


def suspicion_bounds(config: MembershipConfig, n: int) -> tuple[float, float]:
    """(min, max) suspicion timeout in a cluster of ``n`` live members; grows
    with log10(n) as gossip takes longer to reach everyone (memberlist)."""
    scale = max(1.0, math.log10(max(1, n)))
    low = config.suspicion_mult * scale * config.probe_interval
    return low, low * config.suspicion_max_mult


def suspicion_timeout(confirmations: int, k: int, low: float, high: float) -> float:
    """Lifeguard's suspicion timeout after ``confirmations`` independent
    confirmations out of the ``k`` wanted: from ``high`` down to ``low`` on a
    log scale, so the first confirmations count the most."""
    if k < 1:
        return low
    frac = math.log(confirmations + 1) / math.log(k + 1)
    return max(low, high - frac * (high - low))


# -- what travels between nodes ------------------------------------------------


class State(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


#: Tie-break between claims of one incarnation (see the merge rule above).
RANK = {State.ALIVE: 0, State.SUSPECT: 1, State.DEAD: 2, State.LEFT: 3}
#: States in which a member takes part in the cluster (owns names, is probed).
LIVE = (State.ALIVE, State.SUSPECT)


@dataclass(frozen=True, slots=True)
class Update:
    """One claim about one member: the unit of gossip and of push-pull."""

    node: str  # the member's node id
    address: str  # its peer endpoint, e.g. "tcp://10.0.0.2:7701"
    incarnation: int
    state: State
    source: str  # node id of who made the claim (counts suspicion confirmations)

    @property
    def key(self) -> tuple[int, int]:
        return (self.incarnation, RANK[self.state])


@dataclass(frozen=True, slots=True)
class Ping:
    """Are you there? Answered by ``Ack`` to ``source_address``."""

    seq: int  # the sender's probe number, echoed in the Ack
    source: str
    source_address: str
    target: str  # node id meant: a different node at a reused address ignores it
    gossip: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ping ``target`` for me (SWIM's indirect probe); answered by an ``Ack``
    relayed from the target, or a ``Nack`` if the target stays silent."""

    seq: int
    source: str
    source_address: str
    target: str
    target_address: str
    gossip: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    source: str  # the node that was pinged (also when relayed)
    gossip: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    """The intermediary of a PingReq is alive but heard nothing from the
    target (Lifeguard): tells the prober its own link is fine."""

    seq: int
    source: str


@dataclass(frozen=True, slots=True)
class Gossip:
    """Updates alone: periodic gossip, direct suspicion/refutation, leave."""

    source: str
    gossip: tuple[Update, ...]


@dataclass(frozen=True, slots=True)
class Sync:
    """Full state (push-pull). ``reply`` asks the receiver for its own. A
    node of another cluster or protocol version answers ``Refuse``."""

    cluster: str
    version: int
    source: str
    source_address: str
    reply: bool
    members: tuple[Update, ...]


@dataclass(frozen=True, slots=True)
class Refuse:
    """Why a Sync was refused, for the refused node's log."""

    cluster: str
    version: int
    source: str
    reason: str


Message = Ping | PingReq | Ack | Nack | Gossip | Sync | Refuse


# -- what the caller gets back -------------------------------------------------


class EventKind(StrEnum):
    JOINED = "joined"  # a member not known before (state alive or suspect)
    ALIVE = "alive"  # alive again: a suspect refuted, a dead one came back
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"
    UPDATED = "updated"  # still alive, new incarnation (restarted, or refuted)
    REAPED = "reaped"  # a dead or left member forgotten after ``dead_keep``
    REFUTED = "refuted"  # this node was suspected and answered (``reason``: by whom)
    #: a member says this node is dead or left (``incarnation``: the one it
    #: was declared dead at), refuted or not (an old claim is not refuted
    #: again, but tells a node that stalled what happened meanwhile)
    DECLARED_DEAD = "declared_dead"
    REFUSED = "refused"  # another cluster, version or a duplicate id (``reason``)


@dataclass(frozen=True, slots=True)
class MemberEvent:
    kind: EventKind
    node: str
    address: str
    incarnation: int
    reason: str = ""
    #: REFUTED: what was claimed about this node (suspect, dead, left)
    claim: State | None = None


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    state: State
    incarnation: int
    address: str


@dataclass(slots=True)
class Effects:
    messages: list[tuple[str, Message]] = field(default_factory=list)
    events: list[MemberEvent] = field(default_factory=list)


# -- internal state ------------------------------------------------------------


@dataclass(slots=True)
class _Suspicion:
    start: float
    k: int  # confirmations wanted
    low: float
    high: float
    #: who has claimed the suspicion; the first is not a confirmation
    sources: set[str]

    def deadline(self) -> float:
        return self.start + suspicion_timeout(len(self.sources) - 1, self.k, self.low, self.high)

    def confirm(self, source: str) -> bool:
        """True when ``source`` is a new, still useful confirmation."""
        if len(self.sources) - 1 >= self.k or source in self.sources:
            return False
        self.sources.add(source)
        return True


@dataclass(slots=True)
class _Entry:
    address: str
    incarnation: int
    state: State
    since: float  # when this node last changed state here
    suspicion: _Suspicion | None = None

    def update(self, node: str, source: str) -> Update:
        return Update(node, self.address, self.incarnation, self.state, source)


@dataclass(slots=True)
class _Probe:
    target: str
    incarnation: int
    seq: int
    direct_deadline: float
    deadline: float
    indirect: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    """A ping this node sends for another's PingReq."""

    reply_to: str
    seq: int  # the prober's sequence number
    target: str
    nack_at: float


class _Broadcasts:
    """Updates waiting to be gossiped, each at most ``limit`` times; a newer
    update about a node replaces the older one (memberlist's
    TransmitLimitedQueue). Fewest-sent go first, newest first among those."""

    def __init__(self) -> None:
        #: node id -> [update, times sent, serial]
        self._items: dict[str, list[Any]] = {}
        self._serial = 0

    def put(self, update: Update) -> None:
        self._serial += 1
        self._items[update.node] = [update, 0, self._serial]

    def take(self, count: int, limit: int, skip: str | None = None) -> list[Update]:
        if count <= 0 or not self._items:
            return []
        chosen = sorted(
            (it for node, it in self._items.items() if node != skip),
            key=lambda it: (it[1], -it[2]),
        )[:count]
        for it in chosen:
            it[1] += 1
            if it[1] >= limit:
                del self._items[it[0].node]
        return [it[0] for it in chosen]


# -- the member table ----------------------------------------------------------


class MemberTable:
    """This node's view of the cluster and its failure detector (SWIM)."""

    def __init__(
        self,
        config: MembershipConfig,
        *,
        node_id: str,
        address: str,
        incarnation: int,
        cluster: str,
        rng: random.Random,
        version: int = PROTOCOL_VERSION,
        seeds: Iterable[str] = (),
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.address = address
        self.incarnation = incarnation
        self.cluster = cluster
        self.version = version
        self._rng = rng
        self._table: dict[str, _Entry] = {}  # every member but this node
        self._left = False
        self._queue = _Broadcasts()
        #: Lifeguard local health score, 0 = healthy
        self.awareness = 0
        self._seq = 0
        self._probe: _Probe | None = None
        self._order: list[str] = []  # probe round-robin order
        self._order_pos = 0
        self._relays: dict[int, _Relay] = {}
        self._seeds: tuple[str, ...] = ()
        #: the seeds an operator configured (``--seed``): watched for good,
        #: not only while this node is alone (``_call_lost_seed``)
        self._configured = tuple(s for s in dict.fromkeys(seeds) if s != address)
        self._last_tick: float | None = None
        self._next_probe = 0.0
        self._next_gossip = 0.0
        self._next_push_pull = 0.0
        self._next_reconnect = 0.0
        #: when a lost seed is next called, and the wait after that call
        #: (doubling up to ``push_pull_interval`` while seeds stay lost)
        self._next_seed_call = 0.0
        self._seed_wait = config.reconnect_interval
        self._next_join = 0.0

    # -- queries ----------------------------------------------------------
    @property
    def left(self) -> bool:
        return self._left

    def members(self) -> list[Member]:
        """This node first, then every other member by id (dead and left
        ones too, until they are reaped)."""
        me = State.LEFT if self._left else State.ALIVE
        out = [Member(self.node_id, me, self.incarnation, self.address)]
        for node in sorted(self._table):
            e = self._table[node]
            out.append(Member(node, e.state, e.incarnation, e.address))
        return out

    def unreached(self) -> list[str]:
        """Seeds at no member's address (never heard of, or reaped): a
        node may live there that this one does not know of."""
        known = {self.address, *(e.address for e in self._table.values())}
        return [seed for seed in self._seeds if seed not in known]

    def member(self, node_id: str) -> Member | None:
        if node_id == self.node_id:
            return self.members()[0]
        e = self._table.get(node_id)
        return None if e is None else Member(node_id, e.state, e.incarnation, e.address)

    def live(self) -> list[str]:
        """Ids of the members taking part (alive or suspect), this node
        included: SWIM treats a suspect as a member until declared dead."""
        ids = [n for n, e in self._table.items() if e.state in LIVE]
        if not self._left:
            ids.append(self.node_id)
        return sorted(ids)

    def next_deadline(self) -> float:
        """When ``tick`` must next be called (monotonic seconds)."""
        if self._left:
            return math.inf
        if self._last_tick is None:
            return 0.0
        times = [
            self._last_tick + self.config.stall_threshold / 2,
            self._next_gossip,
            self._next_push_pull,
        ]
        probe = self._probe
        if probe is None:
            times.append(self._next_probe)
        else:
            times.append(probe.deadline if probe.indirect else probe.direct_deadline)
        times.extend(r.nack_at for r in self._relays.values())
        has_dead = False
        for e in self._table.values():
            if e.suspicion is not None:
                times.append(e.suspicion.deadline())
            elif e.state not in LIVE:
                has_dead = has_dead or e.state == State.DEAD
                times.append(e.since + self.config.dead_keep)
        if has_dead:
            times.append(self._next_reconnect)
        if self._configured:
            # (a scan for lost seeds waits for the tick: when none is lost,
            # ``_call_lost_seed`` puts this a reconnect_interval ahead)
            times.append(self._next_seed_call)
        if self._seeds and self._alone():
            times.append(self._next_join)
        return min(times)

    # -- entry points -----------------------------------------------------
    def join(self, seeds: Iterable[str], now: float) -> Effects:
        """Exchange full state with every seed; any one answering is enough,
        the rest of the cluster is learned from it. Retried every
        ``join_retry_interval`` while no other live member is known."""
        fx = Effects()
        self._seeds = tuple(s for s in dict.fromkeys(seeds) if s != self.address)
        # announce ourselves by gossip as well, not only through the seed
        self._queue.put(self._me())
        self._join_seeds(now, fx)
        return fx

    def discovered(self, address: str, now: float) -> Effects:
        """Discovery (mDNS, a seed list) found a peer at ``address``: exchange
        full state with it unless it is already a live member. It also
        becomes a seed, so it is retried while this node knows nobody."""
        fx = Effects()
        if self._left or address == self.address:
            return fx
        if any(e.address == address and e.state in LIVE for e in self._table.values()):
            return fx
        if address not in self._seeds:
            self._seeds = (*self._seeds, address)
        fx.messages.append((address, self._sync(reply=True)))
        return fx

    def renew(self, incarnation: int) -> Effects:
        """This node starts a new life in place (it was declared dead and
        dropped what it held, ``zchannels.node.cluster``): take
        ``incarnation`` (above the old one by more than a refutation) and say
        so to every live member at once, and by gossip."""
        fx = Effects()
        if self._left or incarnation <= self.incarnation:
            return fx
        self.incarnation = incarnation
        me = self._me()
        self._queue.put(me)
        for e in self._table.values():
            if e.state in LIVE:
                fx.messages.append((e.address, Gossip(self.node_id, (me,))))
        return fx

    def leave(self, now: float) -> Effects:
        """Announce a clean departure to every live member at once; they mark
        this node ``left`` on receipt and gossip it on. After this the table
        is inert: the shell sends these messages and stops."""
        fx = Effects()
        if self._left:
            return fx
        self._left = True
        bye = (Update(self.node_id, self.address, self.incarnation, State.LEFT, self.node_id),)
        for e in self._table.values():
            if e.state in LIVE:
                fx.messages.append((e.address, Gossip(self.node_id, bye)))
        return fx

    def handle(self, msg: Message, now: float) -> Effects:
        """A message from a peer."""
        fx = Effects()
        if self._left:
            return fx
        match msg:
            case Ping():
                self._on_ping(msg, now, fx)
            case PingReq():
                self._on_ping_req(msg, now, fx)
            case Ack():
                self._on_ack(msg, now, fx)
            case Nack():
                probe = self._probe
                if probe is not None and probe.seq == msg.seq:
                    probe.nacks += 1
            case Gossip():
                self._merge(msg.gossip, msg.source, now, fx)
            case Sync():
                self._on_sync(msg, now, fx)
            case Refuse():
                fx.events.append(MemberEvent(EventKind.REFUSED, msg.source, "", 0, msg.reason))
        return fx

    def tick(self, now: float) -> Effects:
        """Timers: probes, suspicion, gossip, push-pull, reconnect, reaping."""
        fx = Effects()
        if self._left:
            return fx
        cfg = self.config
        if self._last_tick is None:
            # spread the periodic work so nodes started together do not
            # act in step
            self._next_probe = now + self._rng.uniform(0, cfg.probe_interval)
            self._next_gossip = now + self._rng.uniform(0, cfg.gossip_interval)
            self._next_push_pull = now + self._rng.uniform(0.5, 1.0) * cfg.push_pull_interval
            self._next_reconnect = now + self._rng.uniform(0.5, 1.0) * cfg.reconnect_interval
        elif now - self._last_tick > cfg.stall_threshold:
            self._stalled(now - self._last_tick)
        self._last_tick = now

        self._tick_probe(now, fx)
        for seq, relay in list(self._relays.items()):
            if now >= relay.nack_at:
                del self._relays[seq]
                fx.messages.append((relay.reply_to, Nack(relay.seq, self.node_id)))
        for node, e in list(self._table.items()):
            if e.suspicion is not None and now >= e.suspicion.deadline():
                # Suspicion ran out (SWIM §4.2): declare it dead, and tell it
                # directly in case it is alive after all and can refute.
                dead = Update(node, e.address, e.incarnation, State.DEAD, self.node_id)
                self._apply(dead, now, fx)
                fx.messages.append((e.address, Gossip(self.node_id, (dead,))))
            elif e.state not in LIVE and now >= e.since + cfg.dead_keep:
                del self._table[node]
                fx.events.append(MemberEvent(EventKind.REAPED, node, e.address, e.incarnation))
        if now >= self._next_gossip:
            self._next_gossip = now + cfg.gossip_interval
            self._gossip(fx)
        if now >= self._next_push_pull:
            self._next_push_pull = now + cfg.push_pull_interval
            peers = [e.address for e in self._table.values() if e.state == State.ALIVE]
            if peers:
                fx.messages.append((self._rng.choice(peers), self._sync(reply=True)))
        if now >= self._next_reconnect:
            self._next_reconnect = now + cfg.reconnect_interval
            gone = [e.address for e in self._table.values() if e.state == State.DEAD]
            if gone:
                fx.messages.append((self._rng.choice(gone), self._sync(reply=True)))
        self._call_lost_seed(now, fx)
        if self._seeds and now >= self._next_join and self._alone():
            self._join_seeds(now, fx)
        return fx

    # -- probing ----------------------------------------------------------
    def _scaled(self, seconds: float) -> float:
        return seconds * (1 + self.awareness)

    def _health(self, delta: int) -> None:
        self.awareness = min(self.config.awareness_max, max(0, self.awareness + delta))

    def _tick_probe(self, now: float, fx: Effects) -> None:
        probe = self._probe
        if probe is not None:
            target = self._table.get(probe.target)
            if not probe.indirect and now >= probe.direct_deadline:
                probe.indirect = True
                if target is not None:
                    helpers = [
                        n
                        for n, e in self._table.items()
                        if e.state == State.ALIVE and n != probe.target
                    ]
                    helpers = self._rng.sample(
                        helpers, min(len(helpers), self.config.indirect_checks)
                    )
                    probe.expected_nacks = len(helpers)
                    for n in helpers:
                        req = PingReq(
                            probe.seq,
                            self.node_id,
                            self.address,
                            probe.target,
                            target.address,
                            self._piggyback(n),
                        )
                        fx.messages.append((self._table[n].address, req))
            if now < probe.deadline:
                return
            # No ack, direct or relayed. Lifeguard: NACKs missing from the
            # intermediaries mean our own network or process is the likely
            # culprit; with no intermediary, count the failure itself.
            self._probe = None
            if probe.expected_nacks:
                self._health(probe.expected_nacks - probe.nacks)
            else:
                self._health(1)
            if (
                target is not None
                and target.state in LIVE
                and target.incarnation == probe.incarnation
            ):
                claim = Update(
                    probe.target, target.address, target.incarnation, State.SUSPECT, self.node_id
                )
                self._apply(claim, now, fx)
        if now < self._next_probe:
            return
        node = self._next_target()
        interval = self._scaled(self.config.probe_interval)
        self._next_probe = now + interval
        if node is None:
            return
        e = self._table[node]
        self._seq += 1
        self._probe = _Probe(
            node,
            e.incarnation,
            self._seq,
            now + self._scaled(self.config.probe_timeout),
            now + interval,
        )
        ping = Ping(self._seq, self.node_id, self.address, node, self._piggyback(node))
        fx.messages.append((e.address, ping))

    def _next_target(self) -> str | None:
        """The next live member in a round-robin order reshuffled at every
        round (SWIM §4.3)."""
        for _ in range(2):
            while self._order_pos < len(self._order):
                node = self._order[self._order_pos]
                self._order_pos += 1
                e = self._table.get(node)
                if e is not None and e.state in LIVE:
                    return node
            self._order = [n for n, e in self._table.items() if e.state in LIVE]
            self._rng.shuffle(self._order)
            self._order_pos = 0
        return None

    def _stalled(self, gap: float) -> None:
        """This process did not run for ``gap`` seconds: what looks like a
        timeout is our own lateness, so give every running timer the time back
        and count it against our health (Lifeguard's local health idea)."""
        self._health(1)
        if self._probe is not None:
            self._probe.direct_deadline += gap
            self._probe.deadline += gap
        for e in self._table.values():
            if e.suspicion is not None:
                e.suspicion.start += gap

    def _from_stranger(self, source: str, address: str, fx: Effects) -> None:
        """A member we have never heard of pings us: the gossip of its join
        missed us. One push-pull repairs that (and refuses it if it is of
        another cluster) rather than waiting for anti-entropy."""
        if source not in self._table and source != self.node_id:
            fx.messages.append((address, self._sync(reply=True)))

    def _on_ping(self, msg: Ping, now: float, fx: Effects) -> None:
        self._merge(msg.gossip, msg.source, now, fx)
        self._from_stranger(msg.source, msg.source_address, fx)
        if msg.target != self.node_id:
            return  # meant for another node that used this address
        ack = Ack(msg.seq, self.node_id, self._piggyback(msg.source))
        fx.messages.append((msg.source_address, ack))

    def _on_ping_req(self, msg: PingReq, now: float, fx: Effects) -> None:
        self._merge(msg.gossip, msg.source, now, fx)
        self._from_stranger(msg.source, msg.source_address, fx)
        self._seq += 1
        self._relays[self._seq] = _Relay(
            msg.source_address, msg.seq, msg.target, now + self.config.nack_timeout
        )
        ping = Ping(self._seq, self.node_id, self.address, msg.target, self._piggyback(msg.target))
        fx.messages.append((msg.target_address, ping))

    def _on_ack(self, msg: Ack, now: float, fx: Effects) -> None:
        self._merge(msg.gossip, msg.source, now, fx)
        relay = self._relays.pop(msg.seq, None)
        if relay is not None:
            if relay.target == msg.source:
                fx.messages.append((relay.reply_to, Ack(relay.seq, msg.source)))
            return
        probe = self._probe
        if probe is not None and probe.seq == msg.seq and probe.target == msg.source:
            self._probe = None
            self._health(-1)

    # -- gossip -----------------------------------------------------------
    def _live_count(self) -> int:
        """Live members, this node included: N in the timing formulas."""
        return 1 + sum(1 for e in self._table.values() if e.state in LIVE)

    def _limit(self) -> int:
        n = self._live_count()
        return self.config.retransmit_mult * math.ceil(math.log10(n + 1))

    def _piggyback(self, to: str) -> tuple[Update, ...]:
        """Updates to carry in a message to ``to``: first what we believe of
        it if that is suspect or dead (Lifeguard's buddy system: it learns at
        once and can refute), then the least-sent queued updates."""
        items: list[Update] = []
        e = self._table.get(to)
        if e is not None and e.state in (State.SUSPECT, State.DEAD):
            items.append(e.update(to, self.node_id))
        # (queued news about the recipient itself would waste a transmit)
        count = self.config.max_piggyback - len(items)
        items.extend(self._queue.take(count, self._limit(), skip=to))
        return tuple(items)

    def _gossip(self, fx: Effects) -> None:
        # Dead members are gossiped to as well (memberlist's "gossip to the
        # dead"): if one is alive after all, it learns and refutes.
        targets = [n for n, e in self._table.items() if e.state != State.LEFT]
        if not targets:
            return
        for node in self._rng.sample(targets, min(len(targets), self.config.gossip_nodes)):
            items = self._piggyback(node)
            if items:
                fx.messages.append((self._table[node].address, Gossip(self.node_id, items)))

    def _merge(self, updates: Iterable[Update], sender: str, now: float, fx: Effects) -> None:
        for u in updates:
            if u.node == self.node_id:
                self._about_me(u, sender, fx)
            else:
                self._apply(u, now, fx)

    def _apply(self, u: Update, now: float, fx: Effects, push_pull: bool = False) -> None:
        """The merge rule (module docstring): keep the greatest claim about
        another member."""
        e = self._table.get(u.node)
        if e is None:
            if push_pull and u.state not in LIVE:
                return
            e = self._table[u.node] = _Entry(u.address, u.incarnation, u.state, now)
            if u.state in LIVE:
                # a new member is probed within this round, at a random place
                self._order.insert(self._rng.randint(self._order_pos, len(self._order)), u.node)
                fx.events.append(MemberEvent(EventKind.JOINED, u.node, u.address, u.incarnation))
                if u.state == State.SUSPECT:
                    self._suspect(e, u, now, fx)
            self._queue.put(u)
            return
        if push_pull and u.state == State.DEAD:
            # second-hand and possibly old: suspect it, so it can refute
            u = replace(u, state=State.SUSPECT)
        if u.key < (e.incarnation, RANK[e.state]):
            return
        if u.key == (e.incarnation, RANK[e.state]):
            if e.suspicion is not None and u.state == State.SUSPECT:
                if e.suspicion.confirm(u.source):
                    self._queue.put(u)  # spread the confirmation too
            return
        before, before_inc, before_addr = e.state, e.incarnation, e.address
        e.address, e.incarnation, e.state = u.address, u.incarnation, u.state
        e.suspicion = None
        if before != u.state:
            e.since = now
        self._queue.put(u)
        if u.state == State.SUSPECT:
            self._suspect(e, u, now, fx)
        if before != u.state:
            fx.events.append(MemberEvent(EventKind(u.state), u.node, u.address, u.incarnation))
            if u.state in LIVE and before not in LIVE:
                self._order.insert(self._rng.randint(self._order_pos, len(self._order)), u.node)
        elif u.state == State.ALIVE and (before_inc, before_addr) != (u.incarnation, u.address):
            fx.events.append(MemberEvent(EventKind.UPDATED, u.node, u.address, u.incarnation))

    def _suspect(self, e: _Entry, u: Update, now: float, fx: Effects) -> None:
        """Start the suspicion timer (Lifeguard: K confirmations wanted, at
        most the N - 2 members other than us and the suspect)."""
        n = self._live_count()
        k = min(self.config.suspicion_confirmations, max(0, n - 2))
        low, high = suspicion_bounds(self.config, n)
        e.suspicion = _Suspicion(now, k, low, high, {u.source})
        if u.source == self.node_id:
            # our own suspicion: tell the suspect directly so it can refute
            fx.messages.append((e.address, Gossip(self.node_id, (u,))))

    def _about_me(self, u: Update, sender: str, fx: Effects) -> None:
        """Refutation (SWIM §4.2): a claim that we are suspect, dead or left
        at our incarnation or later, or alive at a later one (an older run of
        this id), is answered by a higher incarnation, gossiped as ALIVE.

        A negative claim older than our incarnation means ``sender`` missed
        the refutation (its retransmits are spent): tell it directly, or it
        declares us dead when its timer runs out."""
        if u.state in (State.DEAD, State.LEFT) and not self._left:
            fx.events.append(
                MemberEvent(
                    EventKind.DECLARED_DEAD,
                    self.node_id,
                    self.address,
                    u.incarnation,
                    f"{u.source} said {u.state} at incarnation {u.incarnation}",
                    u.state,
                )
            )
        if u.incarnation < self.incarnation or (
            u.incarnation == self.incarnation and u.state == State.ALIVE
        ):
            if u.state != State.ALIVE:
                self._tell_alive(sender, fx)
            return
        self.incarnation = u.incarnation + 1
        self._health(1)  # being suspected hints that we are the slow one
        alive = self._me()
        self._queue.put(alive)
        fx.events.append(
            MemberEvent(
                EventKind.REFUTED,
                self.node_id,
                self.address,
                self.incarnation,
                f"{u.source} said {u.state} at incarnation {u.incarnation}",
                u.state,
            )
        )
        self._tell_alive(u.source, fx)
        if sender != u.source:
            self._tell_alive(sender, fx)

    def _tell_alive(self, node: str, fx: Effects) -> None:
        e = self._table.get(node)
        if e is not None and e.state in LIVE:
            fx.messages.append((e.address, Gossip(self.node_id, (self._me(),))))

    def _me(self) -> Update:
        return Update(self.node_id, self.address, self.incarnation, State.ALIVE, self.node_id)

    # -- push-pull --------------------------------------------------------
    def _alone(self) -> bool:
        return not any(e.state in LIVE for e in self._table.values())

    def _call_lost_seed(self, now: float, fx: Effects) -> None:
        """Exchange full state with a configured seed at whose address no
        member is known (reaped, never heard of) or only one that left.
        Joining retries the seeds only while this node is alone; a node that
        joined through the seeds and is not alone (other nodes joined through
        them too) would otherwise never hear of the seeds' next lives when
        every seed restarted while it was cut off: two clusters for good,
        each whole in its own view (the simulation's seed 6642: the seeds
        met again by their own seed lists, which name neither of the two
        nodes that had joined through them). One seed per call, the first
        ``reconnect_interval`` after a seed is lost, then twice as long
        each time up to ``push_pull_interval`` (a seed removed for good but
        still configured costs every node one message per push-pull
        interval)."""
        lost = self._lost_seeds()
        if not lost:
            self._seed_wait = self.config.reconnect_interval
            self._next_seed_call = now + self._seed_wait
            return
        if now < self._next_seed_call:
            return
        fx.messages.append((self._rng.choice(lost), self._sync(reply=True)))
        self._next_seed_call = now + self._seed_wait
        self._seed_wait = min(2 * self._seed_wait, self.config.push_pull_interval)

    def _lost_seeds(self) -> list[str]:
        if not self._configured or self._alone():
            return []  # (alone, every seed is retried: ``_join_seeds``)
        known = {e.address for e in self._table.values() if e.state != State.LEFT}
        return [seed for seed in self._configured if seed not in known]

    def _join_seeds(self, now: float, fx: Effects) -> None:
        self._next_join = now + self.config.join_retry_interval
        sync = self._sync(reply=True)
        for seed in self._seeds:
            fx.messages.append((seed, sync))

    def _sync(self, reply: bool) -> Sync:
        me = self._me()
        state = [me] + [e.update(n, self.node_id) for n, e in self._table.items()]
        return Sync(self.cluster, self.version, self.node_id, self.address, reply, tuple(state))

    def _on_sync(self, msg: Sync, now: float, fx: Effects) -> None:
        theirs = ours = ""
        if msg.cluster != self.cluster:
            theirs = f"is in cluster {msg.cluster!r}, not {self.cluster!r}"
            ours = f"is in cluster {self.cluster!r}, not {msg.cluster!r}"
        elif msg.version != self.version:
            theirs = f"speaks protocol version {msg.version}, not {self.version}"
            ours = f"speaks protocol version {self.version}, not {msg.version}"
        elif msg.source == self.node_id:
            if msg.source_address == self.address:
                return  # our own join reached us (we are one of our seeds)
            theirs = f"uses node id {msg.source!r}, already taken by {self.address}"
            ours = f"already uses node id {self.node_id!r}"
        if theirs:
            reason = f"{msg.source} at {msg.source_address} {theirs}"
            fx.events.append(
                MemberEvent(EventKind.REFUSED, msg.source, msg.source_address, 0, reason)
            )
            if msg.reply:  # never answer a refusal with a refusal
                why = f"{self.node_id} at {self.address} {ours}"
                fx.messages.append(
                    (msg.source_address, Refuse(self.cluster, self.version, self.node_id, why))
                )
            return
        was_alone = self._alone()
        refuted = len(fx.events)
        for u in msg.members:
            if u.node == self.node_id:
                self._about_me(u, msg.source, fx)
            else:
                self._apply(u, now, fx, push_pull=True)
        refuted = any(e.kind == EventKind.REFUTED for e in fx.events[refuted:])
        if was_alone and not msg.reply and not self._alone():
            # Our join was answered: announce ourselves to every member at
            # once (N small messages, once per join) instead of trusting
            # gossip alone, whose retransmit limit leaves a small chance that
            # some member hears of us only at the next push-pull; channel
            # ownership must move within 1 s of a join (cluster issue).
            hello = Gossip(self.node_id, (self._me(),))
            for e in self._table.values():
                if e.state in LIVE and e.address != msg.source_address:
                    fx.messages.append((e.address, hello))
        if msg.reply or refuted:
            # (an answer that held a stale death of ours gets our refutation
            # back at once, not at the next gossip round: a healed partition
            # converges in one exchange)
            fx.messages.append((msg.source_address, self._sync(reply=False)))
