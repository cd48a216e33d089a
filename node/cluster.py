"""One whole node, sans I/O: the core, the member table, routing and group
replication, composed in one visible place.

Owns: feeding each event (a client frame, a peer frame, a timer, discovery,
leaving) to the part it is for, then carrying each part's output to the
next — the core's work to group replication and routing, member events to
both, answers for other nodes' clients back to them — and turning what is
left into ``Effects`` for the shell: messages to this node's clients, frames
to peer addresses, member events to log. Every method takes ``now``
(monotonic seconds); the one ``random.Random`` is injected; nothing here
reads a clock, touches a socket or runs a task. The asyncio/pyzmq shell
(``zchannels.node.server``) moves frames and calls ``tick`` at
``next_deadline()``; the simulation (``tests/sim``) does the same with a
simulated network and clock.

Without a peer endpoint the node is alone: only the core runs.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from zchannels.protocol import DecodeError, Message, MsgType

from .config import NodeConfig
from .core import ClusterWork, CoreSettings, NodeCore, Out, reported_in, wire_items
from .effects import EVERYONE, Fx
from .life_note import LifeNote
from .links import DROPPED, HELD, LinkCarry, Links, LinkSettings
from .membership import (
    LIVE,
    Ack,
    EventKind,
    Gossip,
    Member,
    MemberEvent,
    MemberTable,
    Nack,
    Ping,
    PingReq,
    Refuse,
    Sync,
    suspicion_bounds,
)
from .membership import Effects as TableEffects
from .peer_messages import (
    REPLICATION_MESSAGES,
    ROUTING_MESSAGES,
    ConnGone,
    FanoutsSeen,
    HandedOver,
    Handoff,
    LinkAck,
    LinkSeq,
    Load,
    Relay,
    RelayBack,
    RelayLost,
    Reservations,
)
from .peer_wire import decode_peer, encode_peer, salvage_link_frame
from .queues import ConnId, Stamp
from .readiness import expects_peers
from .replication import GroupReplication
from .routing import (
    GONE_MEMORY,
    RESTART_GAP,
    ClientFlights,
    ParkedCarry,
    Routing,
    Undelivered,
    gone_clients,
    grants_of,
    tells_flight,
)

log = logging.getLogger("zchannels.node")

_TABLE = (Ping, PingReq, Ack, Nack, Gossip, Sync, Refuse)
#: a node that left lingers at most this many answer bounds while a peer
#: that has not acknowledged what only it counts is still heard from
LINGER_BOUNDS = 5
#: relays of credit kept per peer that never said hello (``_credit_again``)
_PLAIN_CREDIT_KEPT = 256
#: what a joined node takes while it waits for its peers' ``HandedOver``: the
#: handovers themselves (everything else waits, with its clients' frames)
_HANDED = (Handoff, Reservations, FanoutsSeen)
#: a client's reports of what it took (``_report_takes``)
_REPORTS = (MsgType.CONSUMED, MsgType.CONSUMED_BUNDLES)


@dataclass(slots=True)
class Effects:
    """What the shell must do after one step."""

    #: to this node's clients: (connection id, client-protocol message)
    clients: list[Out] = field(default_factory=list)
    #: to other nodes: (peer address, one encoded frame), in order
    peers: list[tuple[str, bytes]] = field(default_factory=list)
    #: what the member table saw happen (for the log; REAPED: forget the address)
    events: list[MemberEvent] = field(default_factory=list)


@dataclass(slots=True)
class _Held:
    """Something given to the node during a doubt (``ClusterNode._doubting``)."""

    kind: str  # "client" (a frame), "undeliverable", "peer" (a cluster message)
    conn: ConnId = b""
    messages: list[Message] = field(default_factory=list)
    peer: Any = None
    linked: bool = False  # (the peer message came on a link: ``Routing.handle``)


def _units(msg: object) -> int:
    """Messages in a cluster message that only its sender counts lost if
    the receiver never takes them (``links``): reserved sends (request 0:
    no answer to wait for) and handed-over items. (A request is answered by
    its origin's timeout; a delivery or a give-back stays in its owner's
    flight until the client is forgotten, and is counted then.)"""
    if isinstance(msg, Relay):
        return sum(1 for mtype, fields in msg.messages if mtype == MsgType.SEND and not fields[0])
    if isinstance(msg, Handoff):
        return sum(len(items) for _, items in msg.channels)
    return 0


def _delivered(msg: object) -> int:
    """Messages an owner delivers to another node's client in ``msg``:
    they are in its flight until the client takes them (or is forgotten,
    and they are counted), so a SIGKILL of the owner leaves nobody to count
    those the client's node never took (``Links.carry``; simulation seed
    299: 4 deliveries in frames still in a lagging owner's pipe as it was
    killed)."""
    if not isinstance(msg, RelayBack):
        return 0
    n = 0
    for mtype, fields in msg.messages:
        if mtype == MsgType.DELIVER:
            n += len(fields[1])
        elif mtype in (MsgType.DELIVER_MANY, MsgType.DELIVER_BUNDLE):
            n += len(fields[0])
    return n


def _returned(msg: object) -> int:
    """Messages a receiver gave back in a relayed ``RETURN`` (its node
    counts on this one to queue them again)."""
    if not isinstance(msg, Relay):
        return 0
    return sum(len(fields[2]) for mtype, fields in msg.messages if mtype == MsgType.RETURN)


def _handed_back(msgs: list[object]) -> int:
    """Deliveries to our clients, among peer messages held for a life that
    ends in place, whose owner handed the channel on and gave their credit
    back in them too: it counts them nowhere after that (``Queues.take``),
    our clients never got them, and the node that would have answered for
    them (``passed``) is this life (simulation seed 262 without kills, 7
    ops: a delivery and its owner's hand-back held by a frozen node that
    ended its life at its thaw). Those whose owner kept them (no hand-back)
    it parked as it declared this life dead, and counts itself."""
    delivered: dict[tuple[str, bytes, str], int] = {}
    moved = _credit_handed_back(msgs)
    for msg in msgs:
        if not isinstance(msg, RelayBack):
            continue
        for mtype, fields in msg.messages:
            if mtype == MsgType.DELIVER:
                key = (msg.source, msg.conn, fields[0])
                delivered[key] = delivered.get(key, 0) + len(fields[1])
            elif mtype in (MsgType.DELIVER_MANY, MsgType.DELIVER_BUNDLE):
                for channel in fields[0]:
                    key = (msg.source, msg.conn, channel)
                    delivered[key] = delivered.get(key, 0) + 1
    return sum(n for key, n in delivered.items() if key in moved)


def _credit_handed_back(msgs: Iterable[object]) -> set[tuple[str, bytes, str]]:
    """(owner, our client's connection, channel) of each credit an owner
    handed back among ``msgs`` (a ``RECV`` in a ``RelayBack``: it handed
    the channel on)."""
    return {
        (msg.source, msg.conn, fields[0])
        for msg in msgs
        if isinstance(msg, RelayBack)
        for mtype, fields in msg.messages
        if mtype == MsgType.RECV
    }


def _unread_deliveries(msgs: list[object]) -> dict[tuple[str, bytes], dict[str, list[int]]]:
    """Deliveries to our clients, among peer messages held for a life that
    ends in place, whose owner kept their credit (``_handed_back`` counts
    the others): (owner, our client's connection) -> channel -> their
    numbers. Plain deliveries only (group copies carry no owner number)."""
    unread: dict[tuple[str, bytes], dict[str, list[int]]] = {}
    moved = _credit_handed_back(msgs)
    for msg in msgs:
        if not isinstance(msg, RelayBack):
            continue
        for mtype, fields in msg.messages:
            if mtype == MsgType.DELIVER and (msg.source, msg.conn, fields[0]) not in moved:
                seqs = [i[2] for i in fields[1] if isinstance(i, list) and type(i[-1]) is int]
                if seqs:
                    mine = unread.setdefault((msg.source, msg.conn), {})
                    mine.setdefault(fields[0], []).extend(seqs)
    return unread


class _Unheard(NamedTuple):
    """A message that told ``node`` what a client did with its flight there
    (for ``Routing.relay_lost``, if ``node`` says it never took it)."""

    node: str
    msg: Relay | RelayLost


def _note(node: str, msg: object) -> Undelivered | _Unheard | None:
    """What a delivery to another node's client was, for routing if that
    node never takes the frame (``links``: its client was never handed it):
    (node, the client's connection there, channel -> the items, each
    ``[payload, ttl, seq]``); or what a message told of a client's flight
    at ``node`` (``_Unheard``)."""
    if isinstance(msg, Relay | RelayLost):
        return _Unheard(node, msg) if tells_flight(msg) else None
    if not isinstance(msg, RelayBack):
        return None
    items: dict[str, list[Any]] = {}
    for mtype, fields in msg.messages:
        if mtype == MsgType.DELIVER:
            items.setdefault(fields[0], []).extend(fields[1])
    return (node, msg.conn, items) if items else None


class ClusterNode:
    def __init__(
        self,
        config: NodeConfig,
        *,
        address: str,
        incarnation: int,
        rng: random.Random,
    ) -> None:
        """``address``: where peers reach this node (its bound peer
        endpoint); ``incarnation``: this start's number, above every earlier
        start's (the shell uses the start time in ms).

        The life's incarnation is that number times ``RESTART_GAP``: peers
        tell a new life from a refuted suspicion (one more each) by a jump
        of ``RESTART_GAP`` or more, and a start number merely above the last
        one (a restart within a second of the last start, as a supervisor
        does after kill -9; in the simulation two restarts 18 ms apart,
        seed 91) was taken for the old life refuting: its links, its death
        and its clients' credit were never seen to end, and deliveries sent
        on the old life's link were dropped by the new one uncounted. It
        also seeds the message sequence numbers, so a restarted node's
        messages sort after what it handed out before."""
        incarnation *= RESTART_GAP
        self.config = config
        self.incarnation = incarnation
        self._rng = rng
        self.counters: Counter[str] = Counter()
        self._next_core_tick = 0.0
        #: more status from the shell (security, socket counters), if any
        self.shell_status: Callable[[], dict[str, Any]] | None = None
        self.table: MemberTable | None = None
        if config.peer_endpoint is not None:
            self.table = MemberTable(
                config.membership,
                node_id=config.node_id,
                address=address,
                incarnation=incarnation,
                cluster=config.cluster,
                rng=rng,
                seeds=config.seeds,
            )
        #: the cluster messages' sequence numbers, acknowledgements and
        #: retransmissions, per peer life (kept across a fence: what arrives
        #: for the old life is still taken once)
        self.links = Links(
            config.node_id,
            incarnation,
            LinkSettings(
                ack_delay=config.link_ack_delay,
                retransmit=config.link_retransmit,
                hello_interval=config.load_interval,
            ),
        )
        self._build(incarnation, fenced=None)
        #: when this node last took a step (a gap means it did not run)
        self._last_step: float | None = None
        #: after a gap: until when it holds everything but the member
        #: table's messages, to learn whether it was declared dead meanwhile
        self._doubt_until: float | None = None
        #: the hold is a start's, until this node has joined (``start``)
        self._joining = False
        self._held: list[_Held] = []
        #: once joined: until when its clients' frames and its peers' relays
        #: stay held while the live peers hand over what it owns, and the
        #: peers that said they have (``HandedOver``)
        self._handover_until: float | None = None
        self._join_by = 0.0
        #: peer -> (its life then, relays of our clients' credit sent plain to
        #: it before it ever said hello here: ``_credit_again``)
        self._plain_credit: dict[str, tuple[int, list[Relay]]] = {}
        #: ``ConnGone`` for a peer waiting for what a link lost telling it
        #: of the same clients (``_gone_after_limbo``)
        self._gone_waiting: list[tuple[str, ConnGone]] = []
        #: when this node left (``leave``): its linger is measured from then
        self._left_at: float | None = None
        #: its last load reports: (when sent, ``queued`` + ``parked``), for
        #: the count as it ends (``gone``)
        self._reports: deque[tuple[float, int]] = deque(maxlen=8)
        self._handed_over: set[str] = set()
        self._doubt_incarnation = incarnation
        #: member events seen during the doubt, for routing and replication
        self._held_events: list[MemberEvent] = []
        #: lives this node ended in place (``_fence``), and what their cores
        #: and routing had counted as dropped
        self.fences = 0
        self._past_drops: Counter[str] = Counter()
        #: what a life ended in place (a fence) had handed its own clients
        #: and not seen taken: conn -> channel -> sequence numbers. A client
        #: that gives some back before it registers again gives them to a
        #: life that has no session for it (refused, RESET): they are
        #: counted then (``_count_old_flight``); what it takes is delivered.
        self._old_flight: dict[ConnId, dict[str, set[int]]] = {}
        #: when what is left of ``_old_flight`` is counted lost: a lease after
        #: the fence, its clients that never registered again are gone
        self._old_flight_until = 0.0
        #: the clients of a life ended in place that held what other nodes
        #: had handed them (``Routing.passed``, carried to the next life):
        #: what it answers for of theirs is counted with ``_old_flight``
        self._old_passed: set[ConnId] = set()
        #: the last fence: (when, what it dropped), until the process ends
        #: (``_fence_unheard``)
        self._last_fence: tuple[float, int] | None = None

    def _build(self, incarnation: int, fenced: tuple[int, int] | None) -> None:
        """A fresh core, routing and group replication for a life that
        starts at ``incarnation`` (the start, or a fence)."""
        config = self.config
        self.core = NodeCore(
            CoreSettings(
                node_id=config.node_id,
                node_tag=config.node_tag,
                incarnation=str(incarnation),
                lease=config.client_lease,
                max_frame=config.max_frame_size,
                sweep_interval=config.sweep_interval,
                first_seq=incarnation * 1000,
                max_client_channels=config.max_client_channels,
                max_client_group_entries=config.max_client_group_entries,
            )
        )
        self.routing: Routing | None = None
        self.replication: GroupReplication | None = None
        if self.table is not None:
            self.replication = GroupReplication(
                self.core,
                self.table,
                self._rng,
                ack_timeout=config.group_ack_timeout,
                anti_entropy_interval=config.anti_entropy_interval,
            )
            self.routing = Routing(
                self.core,
                self.table,
                timeout=config.relay_timeout,
                fresh_for=config.relay_fresh_for,
                load_interval=config.load_interval,
                sweep_delay=config.stray_sweep_delay,
                fenced=fenced,
                hold=config.relay_hold,
            )
            self.routing.report_extra = lambda: {"links": self.links.report()}
            self.routing.fanouts_seen = self.replication.fanouts_seen_split
        self.core.extra_status = self._extra_status

    def _cluster(self) -> tuple[MemberTable, Routing, GroupReplication]:
        """The cluster's parts, for steps only a node in a cluster takes."""
        table, routing, replication = self.table, self.routing, self.replication
        if table is None or routing is None or replication is None:
            raise RuntimeError("a cluster step on a node that is in no cluster")
        return table, routing, replication

    @property
    def node_id(self) -> str:
        return self.config.node_id

    @property
    def clustered(self) -> bool:
        return self.table is not None

    def bind(self, address: str) -> None:
        """The shell bound the peer socket: peers reach this node at
        ``address`` (a port 0 endpoint resolved). Before ``start``."""
        if self.table is not None:
            self.table.address = address

    # -- events ------------------------------------------------------------
    def start(self, now: float) -> Effects:
        """This node starts. A cluster member that expects peers holds its
        clients' requests and peers' relays (not the member table's
        messages) until it has joined, or ``join_timeout``: before, it would
        own every channel alone."""
        self.core.start(now)
        table = self.table
        if table is None or self.replication is None:
            return Effects()
        self.replication.started(now)
        fx = Fx()
        config = self.config
        if expects_peers(config.seeds, config.discovery, {table.address}):
            self._joining = True
            self._last_step = now
            self._doubt_until = now + config.join_timeout
            self._join_by = now + config.join_timeout
            self._doubt_incarnation = table.incarnation
        self._table(table.join((), now), now, fx)
        return self._finish(fx, now)

    def _joined(self, now: float, fx: Fx) -> None:
        """A starting node holds what it is given until it has joined: once
        another member is live, it takes up the handovers it was sent, and
        goes on holding everything else (its clients' frames, its peers'
        relays) until every live peer has handed over what this node owns
        (``HandedOver``), or until ``join_timeout`` after its start; then it
        takes up what it held, in order. What the peers hand back (its
        clients' names kept while it was away, the channels it owns again)
        is older than anything sent to it directly now, and must be queued
        first (seen: messages a client sent as its node left, handed back
        after its newer ones were delivered by the node's next life).

        One deadline for both waits, not ``join_timeout`` each: a node
        restarted onto a lossy link joined 1.4 s after its start and then
        waited 2 s more for a handover, and a client's send made just after
        the start went unanswered for 3.4 s, beyond the answer bound
        (simulation seed 1486, shrunk to 7 ops:
        plans/send-to-a-node-restarted-onto-a-lossy-link-answered-in-time.json).
        A handover that comes later is merged in producer order
        (``Queues.adopt``)."""
        if self._joining and self._doubt_until is not None and len(self._cluster()[0].live()) > 1:
            self._doubt_until = None
            self._handover_until = max(now, self._join_by)
            self._release(now, fx, only=_HANDED)
        if self._handover_until is not None:
            self._check_handed_over(now, fx)

    def _check_handed_over(self, now: float, fx: Fx) -> None:
        handover_until = self._handover_until
        if handover_until is None:
            return
        peers = {n for n in self._cluster()[0].live() if n != self.node_id}
        waiting = peers - self._handed_over
        if waiting and now < handover_until:
            return
        if waiting:
            self.counters["handover_timeouts"] += 1
            log.warning(
                "peers %s did not say they handed over within %g s: serving anyway",
                ", ".join(sorted(waiting)),
                self.config.join_timeout,
            )
        self._serve(now, fx)

    def _serve(self, now: float, fx: Fx) -> None:
        """The join is over: serve, taking up what was held, in order."""
        self._joining = False
        self._handover_until = None
        self._handed_over.clear()
        # (its clients' names are kept for a lease from now, when it serves
        # them, not from its start: the join may have taken longer)
        self.core.start(now)
        self._release(now, fx)

    def _on_handed_over(self, msg: HandedOver) -> None:
        """A peer has handed over what this node owns (one of this life's
        incarnations; an earlier life's is stale)."""
        if self._joining and msg.incarnation >= self.incarnation:
            self._handed_over.add(msg.origin)

    def discovered(self, address: str, now: float) -> Effects:
        """Discovery (a seed, mDNS, DNS) found a peer at ``address``."""
        fx = Fx()
        if self.table is not None:
            self._table(self.table.discovered(address, now), now, fx)
        return self._finish(fx, now)

    def client(self, conn: ConnId, messages: list[Message], now: float) -> Effects:
        """One decoded frame from a client of this node."""
        if self.table is None:  # alone: the core's answers are everything
            return Effects(self.core.handle(conn, messages, now))
        fx = Fx()
        if self._doubting(now, fx) or self._handover_until is not None:
            self._held.append(_Held("client", conn, messages))
        else:
            self._client(conn, messages, now, fx)
        return self._finish(fx, now)

    def _client(self, conn: ConnId, messages: list[Message], now: float, fx: Fx) -> None:
        if self.routing is not None and conn not in self.core.sessions.by_conn:
            self.routing.reports_unheard(conn, messages, fx)
        if conn in self._old_passed:
            self._old_give_backs(conn, messages)
        if conn in self._old_flight:
            self.core.counters.dropped_dead_owner += self._count_old_flight(
                conn, messages, MsgType.RETURN
            )
        if (conn in self._old_flight or conn in self._old_passed) and any(
            m[0] == MsgType.HELLO for m in messages
        ):
            # (registered again: what it holds is its to take)
            self._old_flight.pop(conn, None)
            self._old_passed.discard(conn)
        stamped: list[Message] | None = None
        for i, (mtype, fields) in enumerate(messages):
            if mtype == MsgType.RETURN and len(fields) == 4 and isinstance(fields[1], str):
                # (what comes again is not refused as older than what it
                # gives back: ``Queues.from_elsewhere``; a RETURN with no
                # items, a cancelled receive withdrawing its credit, gives
                # nothing back, and forgetting there let an owner's older
                # delivery through after the client took a newer one:
                # simulation seed 4173)
                if fields[2] and isinstance(fields[2], list):
                    items = fields[2]
                    seqs = [
                        item[2]
                        for item in items
                        if isinstance(item, list) and len(item) == 3 and type(item[2]) is int
                    ]
                    queues = self.core.queues
                    # The stamps of what it gives back, as this node handed
                    # or passed it on: they go with the RETURN (a fifth
                    # field) to the owner, which may not have handed them
                    # (``Queues.give_back``)
                    stamps = (
                        queues.stamps_given_back(conn, fields[1], items)
                        if wire_items(items)
                        else ()
                    )
                    each: list[Stamp | None] = [None] * len(items)
                    for at, producer, life, n in stamps:
                        each[at] = (producer, life, n)
                    queues.forget_handed(conn, fields[1], seqs, now, each)
                    if stamps:
                        if stamped is None:
                            stamped = list(messages)
                        stamped[i] = (mtype, (*fields, stamps))
        if stamped is not None:
            messages = stamped
        routing = self.routing
        if routing is not None and routing.hold_local(conn, messages, now):
            return  # (taken up at the routing's tick, in order)
        fx.out.extend(self.core.handle(conn, messages, now, fx.work))

    def _old_give_backs(self, conn: ConnId, messages: list[Message]) -> None:
        """What a client of a life this node ended in place gave back to that
        life, read by the next one before the client registered again (its
        session is unknown here, and the client does not give it back
        again: ``Flow.rewelcomed`` forgets it): of the deliveries other
        nodes made to it (``Routing.passed``, carried across the fence),
        the oldest it held go, as ``_count_old_flight`` takes this node's
        own. Else they stayed as held, and the client's next report of a
        delivery was taken for one of them, never reaching the owner that
        made it: a pool held its capacity for good (10,000 seed 7987,
        13 ops). Those adopted here (their owner handed the channel on) are
        lost, counted once (``dead_owner``); the others are in their
        owner's flight for the ended life, which it counts."""
        routing = self.routing
        if routing is None or self.core.sessions.by_conn.get(conn) is not None:
            return
        flight = self._old_flight.get(conn, {})
        lost = 0
        for kind, fields in messages:
            if kind == MsgType.HELLO:
                break
            if kind != MsgType.RETURN or len(fields) < 3 or not isinstance(fields[1], str):
                continue
            channel, items = fields[1], fields[2]
            if not isinstance(items, list):
                continue
            own = flight.get(channel, set())
            elsewhere = sum(
                1
                for item in items
                if not (isinstance(item, list) and len(item) == 3 and item[2] in own)
            )
            lost += routing.passed.taken(conn, channel, elsewhere)
        if lost:
            self.counters["old_passed_given_back_lost"] += lost
            self.core.counters.dropped_dead_owner += lost

    def _count_old_flight(self, conn: ConnId, messages: list[Message], mtype: MsgType) -> int:
        """How many items of ``messages`` (``mtype``: RETURN from the client,
        DELIVER that failed to reach it) a life this node ended in place had
        handed ``conn`` (each once). A RETURN from a client that registered
        again (its HELLO first) goes to its new session: not counted."""
        flight = self._old_flight.get(conn)
        if flight is None:
            return 0
        if mtype == MsgType.RETURN and self.core.sessions.by_conn.get(conn) is not None:
            del self._old_flight[conn]  # (registered again)
            return 0
        count = 0
        for message in messages:
            kind, fields = message
            if kind == MsgType.HELLO and mtype == MsgType.RETURN:
                del self._old_flight[conn]  # (registered again)
                return count
            if kind != mtype:
                continue
            channel, items = (fields[1], fields[2]) if kind == MsgType.RETURN else fields[:2]
            seqs = flight.get(channel) if isinstance(channel, str) else None
            if not seqs or not isinstance(items, list):
                continue
            for item in items:
                seq = item[2] if isinstance(item, list) and len(item) == 3 else None
                if seq in seqs:
                    seqs.discard(seq)
                    count += 1
        return count

    def _hand_backs_for_past_life(self, msgs: list[Any], now: float) -> None:
        """An owner's hand-back of our client's credit that came for the life
        this node ended in place (refused: ``links``): that owner forgot
        what it had handed our client, which the client still holds, so it
        is ours to answer for (``Routing.passed``, carried across the fence;
        idempotent, so a copy the old life took already changes nothing).
        Kill-free simulation seed 116, 9 ops: the hand-back reached a frozen
        node in the instant it ended its life, and the consumer was dead."""
        routing = self.routing
        if routing is None:
            return
        for msg in msgs:
            if isinstance(msg, RelayBack):
                for mtype, fields in msg.messages:
                    if mtype == MsgType.RECV:
                        routing.adopt(msg.conn, fields[0], msg.source, now)

    def _old_flight_lost(self, now: float) -> None:
        """A lease after a fence: the clients that had not registered again
        with the next life are gone (a live one says HELLO at once, when
        the next life answers its first frame), and what the ended life
        had handed them is lost, counted once (kill-free simulation seed
        116, 12 ops: a consumer died holding 7 deliveries of its own
        process-specific channel, its node froze before it noticed and
        ended its life at its thaw; nobody counted the 7. Seed 116 again,
        9 ops: a delivery whose owner handed the channel on, adopted here,
        its consumer dead the same way)."""
        lost = sum(len(seqs) for flight in self._old_flight.values() for seqs in flight.values())
        if self._old_passed and self.routing is not None:
            lost += self.routing.passed.conn_gone(self._old_passed, now + GONE_MEMORY)
        self._old_flight.clear()
        self._old_passed.clear()
        if lost:
            self.counters["old_flight_lost"] += lost
            self.core.queues.counters.dropped_receiver_gone += lost

    def undeliverable(self, conn: ConnId, messages: list[Message], now: float) -> Effects:
        """A send to ``conn`` failed (it is gone): what it was given goes back."""
        if self.table is None:
            return Effects(self.core.undeliverable(conn, messages, now))
        fx = Fx()
        if self._doubting(now, fx) or self._handover_until is not None:
            self._held.append(_Held("undeliverable", conn, messages))
        else:
            self._undeliverable(conn, messages, now, fx)
        return self._finish(fx, now)

    def _undeliverable(self, conn: ConnId, messages: list[Message], now: float, fx: Fx) -> None:
        _, routing, _ = self._cluster()
        channels = self.core.queues.channels
        for mtype, fields in messages:
            if mtype == MsgType.DELIVER:  # (queued again: not held by it)
                # Only what other nodes delivered through this one is in
                # its runs: this node's own deliveries are in its flight,
                # and trimming them took an adopted run's message off
                # instead (kill-free seed 957, 9 ops: a client died holding
                # 2 deliveries of an owner that then left, handing the
                # channel here; this node's first delivery to it bounced,
                # and 1 of the 2 was counted)
                ch = channels.get(fields[0])
                own = ch.flight.get(conn, {}) if ch is not None else {}
                passed = sum(1 for item in fields[1] if item[2] not in own)
                if passed:
                    routing.passed.trim(conn, fields[0], passed)
        remote: list[Message] = []  # deliveries of channels other nodes own
        local: list[Message] = []
        for message in messages:
            mtype, fields = message
            owned_elsewhere = mtype == MsgType.DELIVER and routing.route(fields[0])
            (remote if owned_elsewhere else local).append(message)
        routing.give_back(conn, remote, now, fx)
        fx.out.extend(self.core.undeliverable(conn, local, now, fx.work))

    def peer(self, frame: bytes, now: float) -> Effects:
        """One frame from another node; a malformed one is counted and dropped."""
        fx = Fx()
        try:
            messages = decode_peer(frame, self.config.max_frame_size)
        except DecodeError as exc:
            salvaged = salvage_link_frame(frame, self.config.max_frame_size)
            if salvaged is None:
                self.counters["decode_errors"] += 1
                log.debug("dropped a peer frame: %s", exc)
                return Effects()
            # A link frame with malformed messages: taken without them (each
            # counted and logged), so its link goes on.
            messages, bad = salvaged
            self.counters["decode_errors"] += len(bad)
            log.warning("took a link frame without %d malformed messages: %s", len(bad), bad[0])
        table = self.table
        if table is None:
            self.counters["decode_errors"] += 1  # (a node alone has no peer socket)
            return Effects()
        doubting = self._doubting(now, fx)
        linked = isinstance(messages[0], LinkSeq) if messages else False
        taken = self.links.take(messages, now)
        if self.links.for_past_life:
            self._hand_backs_for_past_life(self.links.for_past_life, now)
            if self.routing is not None:
                self.routing.told_ended_life(
                    [m for m in self.links.for_past_life if isinstance(m, ConnGone)]
                )
            self.links.for_past_life = []
        for msg in taken:
            if isinstance(msg, _TABLE):
                self._table(table.handle(msg, now), now, fx)
            elif isinstance(msg, HandedOver):
                self._on_handed_over(msg)
            elif self._doubt_until is not None and doubting:
                self._held.append(_Held("peer", peer=msg, linked=linked))
            elif self._handover_until is not None and not isinstance(msg, _HANDED):
                self._held.append(_Held("peer", peer=msg, linked=linked))
            else:
                self._peer(msg, now, fx, linked)
        if self._joining:
            self._joined(now, fx)
        effects = self._finish(fx, now)
        for node, frame in self.links.replies():  # (answers to link probes)
            member = table.member(node)
            if member is not None and node != self.node_id:
                effects.peers.append((member.address, frame))
        return effects

    def _peer(self, msg: Any, now: float, fx: Fx, linked: bool = False) -> None:
        _, routing, replication = self._cluster()
        if isinstance(msg, Load) and "links" in msg.load:
            self.links.reported(msg.origin, msg.load["links"])
        if isinstance(msg, ROUTING_MESSAGES):
            routing.handle(msg, now, fx, linked)
            if fx.adopted:  # (at once: the frame's next message may be a fanout for them)
                replication.adopted(fx.adopted, now)
                fx.adopted = []
        elif isinstance(msg, REPLICATION_MESSAGES):
            replication.handle(msg, now, fx)

    def bad_peer_frame(self) -> None:
        """The shell got a peer frame it could not even split (counted)."""
        self.counters["decode_errors"] += 1

    def tick(self, now: float) -> Effects:
        """Every timer that is due: leases and expiry, the member table's
        probes, routing's timeouts and reports, anti-entropy."""
        fx = Fx()
        table, routing, replication = self.table, self.routing, self.replication
        if table is None or routing is None or replication is None:
            if now >= self._next_core_tick:
                self._next_core_tick = now + self.config.tick_interval
                fx.out.extend(self.core.tick(now))
            return Effects(fx.out)
        doubting = self._doubting(now, fx)
        self._table(table.tick(now), now, fx)
        if self._joining:
            self._joined(now, fx)
            doubting = self._doubt_until is not None
        if doubting:
            return self._finish(fx, now)
        if now >= self._next_core_tick:
            self._next_core_tick = now + self.config.tick_interval
            fx.out.extend(self.core.tick(now, fx.work))
            if (self._old_flight or self._old_passed) and now >= self._old_flight_until:
                self._old_flight_lost(now)
        routing.tick(now, fx)
        replication.tick(now, fx)
        effects = self._finish(fx, now)
        effects.peers.extend(self._link_frames(now, table))
        return effects

    def _link_frames(self, now: float, table: MemberTable) -> list[tuple[str, bytes]]:
        """The links' acknowledgements, frames sent again and hellos,
        addressed."""
        members = {m.id: m for m in table.members()}
        live = [n for n in table.live() if n != self.node_id]
        frames = []
        for node, frame in self.links.tick(now, members, live):
            member = members.get(node)
            if member is not None and node != self.node_id:
                frames.append((member.address, frame))
        return frames

    # -- after a stall: was this node declared dead meanwhile? ----------------
    def _fence_gap(self) -> float:
        """A step this long after the last means this node did not run (a
        freeze, SIGSTOP, a starved CPU) for longer than the quickest its
        peers could have declared it dead (a probe's timeout plus the
        shortest suspicion), with a margin."""
        table, _, _ = self._cluster()
        config = table.config
        low, _ = suspicion_bounds(config, len(table.live()))
        return 0.8 * (config.probe_timeout + low)

    def _doubting(self, now: float, fx: Fx) -> bool:
        """Whether this node holds what it is given (not the member table's
        messages) while it learns if it was declared dead during a stall:
        its peers told it so directly when they did, and those messages wait
        in its socket, so ``doubt_time`` is enough to read them. Ends by
        ``_fence`` (it was: everything it held is gone) or by taking up what
        it held, in order (it was not)."""
        last, self._last_step = self._last_step, now
        if self._doubt_until is None:
            if last is None or now - last <= self._fence_gap():
                return False
            self._doubt_until = now + self._doubt_time()
            # (a death declared at this incarnation or later happened while
            # this node did not run)
            self._doubt_incarnation = self._cluster()[0].incarnation
            self.counters["stalls"] += 1
            log.warning(
                "this node did not run for %.2f s: holding client and cluster "
                "messages until it knows whether its peers declared it dead",
                now - last,
            )
            return True
        if now < self._doubt_until:
            return True
        if self._joining:
            if self._handover_until is None:
                log.info("no peer answered within %g s: serving alone", self.config.join_timeout)
            self._joining = False
            self._handover_until = None
            self._handed_over.clear()
        self._doubt_until = None
        self._release(now, fx)
        return False

    def _doubt_time(self) -> float:
        config = self._cluster()[0].config
        return 2 * config.probe_interval + config.probe_timeout

    def _release(self, now: float, fx: Fx, only: tuple[type, ...] | None = None) -> None:
        """Take up, in order, what was held during the doubt (``only``: the
        peer messages of these types; the rest stays held, in order)."""
        held, self._held = self._held, []
        if only is not None:
            self._held = [i for i in held if not (i.kind == "peer" and isinstance(i.peer, only))]
            held = [i for i in held if i.kind == "peer" and isinstance(i.peer, only)]
        for item in held:
            if item.kind == "client":
                self._client(item.conn, item.messages, now, fx)
            elif item.kind == "undeliverable":
                self._undeliverable(item.conn, item.messages, now, fx)
            else:
                self._peer(item.peer, now, fx, item.linked)
        events, self._held_events = self._held_events, []
        for event in events:
            self._member_event(event, now, fx)

    def _fence(self, now: float, fx: Fx, claim: str) -> None:
        """This node was declared dead while it did not run: its peers took
        over its channels, counted what it held as lost and forgot its
        clients' memberships. So it ends this life in place: everything it
        held is dropped (reported once, in its load reports, to the survivor
        that counts it), and it comes back as a new life (an incarnation
        more than a refutation above), which its clients see as a restart:
        they register again and re-assert their memberships."""
        table, _, _ = self._cluster()
        held = [item.peer for item in self._held if item.kind == "peer"]
        # Lost with this life: what it queued, and what receivers gave back
        # to it while it was stalled (their nodes count on it to requeue
        # them; sends relayed to it are counted by their origins instead).
        returned = sum(_returned(msg) for msg in held)
        # (and what peers' links brought that only they would count, had
        # this life not taken it: reserved sends, handed-over items)
        taken = sum(_units(msg) for msg in held)
        parked = 0
        # (and what it handed clients its peers said are gone while it
        # stalled: told it, they count nothing; it would have counted it
        # as it read that, and the next life drops those messages unread.
        # Simulation seed 7980, 8 ops: a consumer of another node died
        # holding 4 deliveries of this frozen owner; nobody counted them)
        gone_flight = 0
        flight: ClientFlights = {}
        if self.routing is not None:
            # (and relays its routing held: ``Routing._hold``)
            taken += sum(_units(relay) for relay in self.routing.held_relays())
            # (what the parks' clients said in the relays it held: seed 6966)
            self.routing.settle_parked_held(held)
            parked = self.routing.parked_count()
            gone_flight = self.routing.gone_flight(held)
            # (the rest of its flight to other nodes' clients: counted by
            # the next life if a frame of it is found never taken)
            flight = self.routing.flight_to_others(gone_clients(held))
        if gone_flight:
            self.core.queues.counters.dropped_receiver_gone += gone_flight
            self.counters["gone_flight_at_fence"] += gone_flight
        self._report_takes(now, fx)
        # What this life had handed its own clients stays with them (they
        # may take it); what comes back to it is counted as it comes
        # (``_count_old_flight``): deliveries that failed (held here, dropped
        # with this life) now, give-backs as the next life reads them.
        queues = self.core.queues
        old_flight: dict[ConnId, dict[str, set[int]]] = {}
        for conn in self.core.sessions.by_conn:
            seqs = queues.flight_seqs(conn)
            if seqs:
                old_flight[conn] = seqs
        self._old_flight = old_flight
        self._old_flight_until = now + self.core.settings.lease
        if self.routing is not None:  # (and what it answered for: ``passed``)
            sessions = self.core.sessions.by_conn
            self._hand_backs_for_past_life(held, now)
            self._old_passed = {conn for conn, _ in self.routing.passed.runs if conn in sessions}
        bounced = sum(
            self._count_old_flight(item.conn, item.messages, MsgType.DELIVER)
            for item in self._held
            if item.kind == "undeliverable"
        )
        handed_back = _handed_back(held)
        if handed_back:
            self.counters["handed_back_held_lost"] += handed_back
        # (the rest: their owners' to count, told as a link's lost
        # give-backs are, below)
        unread = _unread_deliveries(held)
        lost = queues.queued() + returned + taken + parked + bounced + handed_back
        old = self.incarnation
        new = max(table.incarnation, old) + RESTART_GAP + 1
        log.warning(
            "declared dead while stalled (%s): ending this life in place with %d "
            "queued messages lost; back as incarnation %d",
            claim,
            lost,
            new,
        )
        self.fences += 1
        self._last_fence = (now, lost)
        # (the drops this life counted stay counted: counters never go back)
        past = self.core.drops()
        if self.routing is not None:
            rc = self.routing.counters
            past["dead_owner"] += rc["lost_in_dead_nodes"]
        self._past_drops.update(past)
        self.incarnation = new
        self.links.new_life(new, now)
        # (the table first: the new life's routing and replication take
        # their incarnation from it)
        renewed = table.renew(new)
        before = self.routing
        self._build(new, fenced=(old, lost))
        if before is not None and self.routing is not None:
            self.routing.carry_counts(before)
            self.routing.ended_flight(flight, now)
        for (owner, conn), numbered in unread.items():
            # Deliveries to our clients this life held unread: dropped with
            # it, never handed to them. The owner kept their credit, and
            # parks or holds them in its flight: told that the client gave
            # them back and that was lost, it counts them once, as it counts
            # a give-back a link lost (``RelayLost``; kill-free simulation
            # seeds 4113 and 7466). If no life of the owner takes it (it
            # left, or ended its life in place too) nobody counts them:
            # counted here then, the owner counted them as well whenever it
            # had parked them (CI seed 81; 18 seeds of the 10,000), and the
            # owner's next life counting them counted a refusal twice (seed
            # 3158). Seed 1009 (7 ops, a known failing plan): the client's
            # node and the owner froze and ended their lives at the same
            # thaw.
            back = tuple((name, tuple(numbers)) for name, numbers in numbered.items())
            fx.peers.append((owner, RelayLost(self.node_id, old, conn, (), back)))
            self.counters["unread_deliveries_told"] += sum(len(n) for n in numbered.values())
        self.core.start(now)
        if self.replication is not None:
            self.replication.started(now)
        # What arrived for the old life: its clients' frames go to the new
        # one (unknown sessions: they register again); peers' messages for
        # the old life are dropped (their senders count what they lose).
        self._held = [item for item in self._held if item.kind == "client"]
        self._held_events = []
        for address, msg in renewed.messages:
            fx.peers.append((address, msg))
        self._doubt_until = None
        self._release(now, fx)

    def _report_takes(self, now: float, fx: Fx) -> None:
        """Before a life ends in place (``_fence``): what its clients
        reported taking while it stalled goes on as it would have, to the
        owners that handed it to them through this node. A take is a fact
        the owner needs whatever becomes of this life: it parked those
        deliveries as it declared this node dead, and counts them lost
        unless it hears they were taken (kill-free seed 116: a consumer took
        6 messages from a remote owner while its node was frozen; its
        reports, dropped with the life, left the owner to count all 6).
        The rest of the held frames goes to the next life, as before."""
        routing, sessions = self.routing, self.core.sessions.by_conn
        if routing is None:
            return
        for item in self._held:
            if item.kind == "client" and item.conn in sessions:
                reports = [m for m in item.messages if m[0] in _REPORTS]
                if reports:
                    self.counters["takes_reported_at_fence"] += len(reports)
                    fx.out.extend(self.core.handle(item.conn, reports, now, fx.work))
                    # (told: the next life, which reads the rest, does not
                    # pass them on again as an unknown connection's,
                    # ``Routing.reports_unheard``; kill-free seed 148's
                    # shrink, 6 ops: told twice, they released two more)
                    item.messages = [m for m in item.messages if m[0] not in _REPORTS]
        work = fx.take_work()
        if work is not None:
            routing.after_core(work, now, fx)

    def next_deadline(self) -> float:
        if self._doubt_until is not None and self.table is not None:
            # (only the member table runs while in doubt)
            return min(self._doubt_until, self.table.next_deadline())
        deadline = self._next_core_tick
        if self._handover_until is not None:
            deadline = min(deadline, self._handover_until)
        if self.table is not None and self.routing is not None and self.replication is not None:
            deadline = min(
                deadline,
                self.table.next_deadline(),
                self.routing.next_deadline(),
                self.replication.next_deadline(),
                self.links.next_deadline(),
            )
        return deadline

    def drain(self, now: float) -> Effects:
        """A graceful drain begins (SIGTERM, ``znode drain``): every client
        is told ``DRAIN``; each gives back what it holds, has its requests
        answered and says ``MOVING`` (``drained``). Then the shell leaves."""
        return Effects(self.core.begin_drain())

    def drained(self) -> bool:
        return self.core.drained()

    def passing_on(self) -> bool:
        """After a leave: requests passed on to their owners still wait for
        an answer here, or frames for their acknowledgement (the shell
        lingers until they have one: a frame still on its way when the
        process exits is lost with its connection)."""
        return (self.routing is not None and self.routing.waiting()) or self.links.sending()

    def gone(self, now: float) -> int:
        """The process ends after its leave, once it stopped lingering (the
        shell's ``stop``): what its links still held that a peer not heard
        from since never acknowledged (a handover, a reserved send
        relayed into a partition) is lost with it, and counted
        ``dead_owner`` now (``Links.give_up``).
        Deliveries to other nodes' clients among them are counted by
        routing (``Routing.lost_at_exit``). And what is still queued here:
        the leave handed everything over, but a handover that came while
        it lingered (a peer leaving too, its view not yet told of this
        leave) was taken, acknowledged by the link (its sender counts
        nothing) and queued, to be passed on at the stray sweep, after the
        process ends (simulation seed 78: two messages n2 handed to n0 as
        n2 left, gone with n0's process; no peer counts a node that left).
        Returns how many messages that was (the shell logs it)."""
        bound = self.routing.answer_within() if self.routing is not None else float("inf")
        lost = self._fence_unheard()
        reports = self._reports
        if lost:  # (its peers hold only the earlier life's reports: that one's)
            at = self._last_fence[0] if self._last_fence is not None else now
            reports = deque(r for r in reports if r[0] > at)
        # (with a note for the next life, ``life_note``, no peer counts this
        # life: nothing is left to them, and it counts all it could not
        # hand over; without one, alone since its leave, its peers count
        # its last report, and what that covers is left to them)
        noted = self.config.state_dir is not None
        lost += self.links.give_up(now, None if noted else self._left_at, reports, bound)
        # (what told a peer of a client's flight there is not told again:
        # this process ends)
        notes = [n for n, _ in self.links.lost_notes() if not isinstance(n, _Unheard)]
        if notes and self.routing is not None:
            lost += self.routing.lost_at_exit(notes, now)
        left_at = self._left_at
        ends_parked = left_at is not None and (noted or self.links.heard_since(left_at))
        if self.routing is not None and ends_parked:
            # What it parked (handed to a client of a node it declared dead,
            # waiting for its report) ends with it: counted now, as the
            # park's lapse would have. (Alone since its leave and with no
            # note, its peers count its last report, parked included.)
            # Simulation seed 229 without kills: an owner that left while a
            # frozen node's client held its deliveries; nobody counted them.
            lost += self.routing.count_parked_at_exit(now)
        # What peers handed this life that it still held, never taken up
        # (it left while it joined, or in a doubt): handed-over items and
        # reserved sends, which its links acknowledged, so their senders
        # count nothing (as ``_fence`` counts them). (Simulation seed 70: a
        # node that left before it had joined said LEFT to nobody; a peer
        # that then saw its join handed it a channel's queue, held until
        # the process ended.) Give-backs are not among them: what this
        # node had delivered is counted as its client is forgotten.
        held = sum(_units(item.peer) for item in self._held if item.kind == "peer")
        if self.routing is not None:
            held += sum(_units(relay) for relay in self.routing.held_relays())
        self._held = [item for item in self._held if item.kind != "peer"]
        if held:
            self.core.counters.dropped_dead_owner += held
            lost += held
        queues = self.core.queues
        queued = queues.queued()
        if queued:
            for name in list(queues.channels):
                queues.drop_channel(name)  # (in flight: not counted here)
            self.core.counters.dropped_dead_owner += queued
            lost += queued
        return lost

    def life_note(self, at: float) -> LifeNote | None:
        """After ``gone``: the note the shell leaves in ``state_dir`` for
        the next process (``life_note.LifeNote``; ``at``: the wall clock),
        if this life left (a clean stop); None otherwise."""
        if self._left_at is None or self.table is None:
            return None
        into = self.links.carry().into
        return LifeNote(self.config.node_id, self.incarnation, at, into, *self._client_tallies())

    def _client_tallies(
        self,
    ) -> tuple[tuple[tuple[ConnId, int], ...], tuple[tuple[ConnId, int], ...]]:
        """What the next process needs of this life's own clients (a held
        record, a note): their reserved-send tally, and what each connection
        holds that this node answers for: its flight here (``Queues.flying``,
        this node's own clients only), and what it holds of channels whose
        owner handed them on (``Passed.adopted``: this node's own, handed on
        at a leave or a handover, and other owners')."""
        reserved = self.core.sessions.reserved_carry()
        by_conn = self.core.sessions.by_conn
        flying = self.core.queues.flying
        routing = self.routing
        adopted = routing.passed.adopted if routing is not None else {}
        held_frames = routing.held_client_frames() if routing is not None else []
        if not adopted and not self._held and not held_frames:
            # (the usual step: at every one, so no dict is built)
            if not flying:
                return reserved, ()
            return reserved, tuple([(c, n) for c, n in flying.items() if c in by_conn])
        held: dict[ConnId, int] = {}
        for tally in (flying, adopted):
            for conn, n in tally.items():
                if conn in by_conn:
                    held[conn] = held.get(conn, 0) + n
        # What a client reported taken in a frame held here (a doubt, a
        # hold), not taken up yet: taken, not lost with this life
        # (simulation seed 265: 12 reports of a client that died as its
        # node left, held as it left)
        frames = [(i.conn, i.messages) for i in self._held if i.kind == "client"]
        for conn, messages in [*frames, *held_frames]:
            if conn in held:
                held[conn] = max(0, held[conn] - reported_in(messages))
        return reserved, tuple((c, n) for c, n in held.items() if n)

    def previous_life(self, note: LifeNote, now: float) -> None:
        """The shell found ``note`` (``life_note``) from the process before
        this one: its load reports say that life left
        (``Routing.previous_left``), and this life answers the peers'
        probes of that life's links in as it would have (``Links.restore``:
        a peer's limbo then counts only what that life never took; the
        rest it handed over or delivered before it left. Simulation seed
        705: a killed owner's next process asked about 5 deliveries its
        peer had taken before it left, the peer's next process said "I do
        not know", and they were counted lost). Its clients' tallies are
        taken as from a held record (``Sessions.inherit``): a life that
        left without a drain leaves its clients holding what it handed them
        (simulation seed 351: a client gave back 4 to the next life before
        its HELLO, and nobody counted them)."""
        if note.node == self.config.node_id and self.routing is not None:
            self.routing.previous_left(note.life, now)
            if note.life < self.incarnation:
                self.links.restore(LinkCarry((), note.links_in), now)
                self.core.sessions.inherit(note.conns, note.flights, now)
            self.counters["previous_life_left"] += 1

    def held_record(
        self,
    ) -> (
        tuple[
            int,
            int,
            LinkCarry,
            tuple[tuple[ConnId, int], ...],
            tuple[tuple[ConnId, int], ...],
            ParkedCarry,
        ]
        | None
    ):
        """What this life holds now, for the shell to keep where a SIGKILL
        leaves it (``held_record.RecordFile``): (this life's incarnation,
        the messages it would lose if it died now, its links' part). The
        messages: queued here and parked for other nodes' clients, as a
        load report counts them, and held for a peer's new life, never
        framed (``Links.held_units``). The links' part (``Links.carry``):
        the frames no peer acknowledged that carry what only this node
        counts, which the next process asks the peers about, counting only
        what they never took; and how far this life took each peer's link,
        so the next process answers their probes as this life would. None
        without a cluster (nobody would count them).

        Counted whole instead (session 28), a frame the peer took whose
        acknowledgement the kill cut off was counted here and queued there
        (simulation seed 27: 6 reserved sends, counted lost and delivered);
        and a peer's limbo counted what this life took after its last load
        report and queued (the new process answered "I do not know", -1).

        Last, its clients' reserved-send tally (``Sessions.reserved_carry``):
        how many sends on reservations each connection had made, as far as
        this life read, so the next process counts, as each comes back, the
        ones still unread in this process's socket (``reserved_unread``).
        And how many messages each of its clients' connections has in flight
        (``Queues.flying``): the next process counts those of connections
        that never come back (``flight_unclaimed``: a client that died just
        before this life was killed, which it had not noticed; simulation
        seed 100, 5 messages counted by no one). And what it parked for
        other nodes' clients (``Routing.parked_carry``): the next process
        parks it too, and counts only what their reports do not settle."""
        if self.routing is None:
            return None
        held = self.core.queues.queued() + self.routing.parked_count()
        return (
            self.incarnation,
            held + self.links.held_units(),
            self.links.carry(),
            *self._client_tallies(),
            self.routing.parked_carry(),
        )

    def previous_crash(
        self,
        life: int,
        held: int,
        carry: LinkCarry,
        now: float,
        conns: tuple[tuple[ConnId, int], ...] = (),
        flights: tuple[tuple[ConnId, int], ...] = (),
        parked: ParkedCarry = (),
    ) -> None:
        """The shell found the held record (``held_record``) of the process
        before this one, which did not leave cleanly (no life note): that
        life died holding ``held`` messages, exactly, at its last step.

        This process counts them (``dead_owner``; ``previous_life_lost``),
        and its load reports say that life crashed, counted here
        (``crashed``, with 0 left for a survivor to count). Only one process
        takes the record, so the count is made once whatever the survivors
        see. Counted by the first survivor (session 28), a survivor that
        lagged behind a partition, never hearing that another had counted,
        counted it too once it held that one dead (simulation seed 50: 32
        queued, counted by n0 and by n1). A survivor that counted that
        life's last load report before this report reached it (none should:
        the record is used only within ``dead_keep`` of its last write, and
        survivors wait that long) adds nothing now: counters never go back.
        A survivor of an older version counts what ``crashed`` says: 0.

        What its links carried that no peer acknowledged waits in this
        life's limbo (``Links.restore``), counted as peers say they never
        took it. Its clients' reserved-send tally (``conns``) is compared
        with what each says in its next HELLO, and what they had in flight
        (``flights``) is counted for those that do not come back
        (``Sessions.inherit``). What it had parked for other nodes' clients
        (``parked``, which ``held`` counts too) waits here as it waited
        there (``Routing.inherit_parked``)."""
        if self.routing is not None and life < self.incarnation:
            lost = held + carry.lump - self.routing.inherit_parked(parked, now)
            self.core.counters.dropped_dead_owner += lost
            self.counters["previous_life_lost"] += lost
            self.routing.previous_crash(life, 0)
            self.links.restore(carry, now)
            self.core.sessions.inherit(conns, flights, now)
            self.counters["previous_life_crashed"] += 1

    def _fence_unheard(self) -> int:
        """As the process ends: what the last fence dropped beyond what its
        peers count for the earlier life, if no peer was heard from since
        the fence. The exact number goes out only in this life's load
        reports (``Routing._settle_death``); a peer that never took one
        counts that life by the newest report of it it holds, and nobody
        else ever learns the rest (kill-free seed 105, shrunk to 6 ops,
        ``plans/fenced-life-left-alone-in-partition-counts-beyond-its-
        last-report.json``: the owner of 7 relayed sends froze after a
        report of 3, was declared dead, thawed cut off from both peers,
        ended its life in place and left; its peers counted 3, and 4 were
        lost with nobody to count them). The peers hold the newest report
        sent before the last peer was heard from (as ``Links.give_up``
        reads it); counted here, beyond it, once: counters never go back,
        so a report above the exact number is counted as it is."""
        if self._last_fence is None:
            return 0
        at, lost = self._last_fence
        if self.links.heard_since(at):
            return 0  # (a peer heard from since took its reports, or will)
        last = self.links.last_heard()
        held = [n for t, n in self._reports if t < at and last is not None and t <= last]
        beyond = max(0, lost - (held[-1] if held else 0))
        if beyond:
            self.core.counters.dropped_dead_owner += beyond
            self.counters["fence_counted_at_exit"] += beyond
        return beyond

    def busy_with(self) -> str:
        """What a leaving node still waits for (for the log)."""
        waiting = self.routing is not None and self.routing.waiting()
        unacked = self.links.status()["unacked"]
        asks = "relayed requests wait for answers" if waiting else "no relayed request waits"
        return f"{asks}, {unacked} frames unacknowledged"

    def linger_limit(self) -> float:
        """Seconds after its leave that a node that left passes on what peers
        still send, at most (the shell asks again as it lingers: it grows).
        The answer bound; or longer while a frame carrying what only this
        node would count lost (a reserved send its client made while it
        lingered, a handover) waits for its acknowledgement, until the
        bound has passed since that frame was sent (at most twice the bound
        in all). Ended sooner, the process counted as lost, as it ended
        (``gone``), reserved sends relayed a few milliseconds before that
        their owner took (its acknowledgement was on its way: seed 36), or
        took just before a lag held its acknowledgement back (seed 59; a
        freeze shorter than the bound alike): a peer not heard from for the
        whole bound after a frame is cut off, frozen or dead, as failure
        detection decides (one frozen longer, which took the frame first,
        was counted here too, seed 18, until peers acknowledged a leaver's
        frames at once: ``Links.left``)."""
        if self.routing is None:
            return 0.0
        bound = self.routing.answer_within()
        young = self.links.youngest_counted()
        if self._left_at is None or young is None:
            return bound
        limit = min(2 * bound, max(bound, young + bound - self._left_at))
        heard = self.links.heard_waiting()
        if heard is not None:
            # A peer still heard from that has not acknowledged is reachable:
            # the frame waits a retransmission (packet loss) or its
            # acknowledgement a lag, so the node lingers on while it is
            # heard, at most LINGER_BOUNDS bounds (simulation seed 155
            # without kills: a handover into 30% loss, the peer heard once
            # since, the frame taken for delivered at exit and lost; seed
            # 173 without kills: reserved sends its client made as it
            # lingered, the same way).
            limit = max(limit, min(LINGER_BOUNDS * bound, heard + bound - self._left_at))
        return limit

    def leave(self, now: float) -> Effects:
        """A clean stop: answer waiting group_adds, hand everything held to
        the owners the others will compute without this node, say LEFT."""
        fx = Fx()
        if self.table is not None and self.routing is not None and self.replication is not None:
            if self._handover_until is not None and self._doubt_until is None:
                # Leaving before its peers had all handed over: what it held
                # meanwhile is taken up first, so the leave hands it on (a
                # receiver's credit held here ended with the process, and the
                # receive waited for good: simulation seed 988).
                self._serve(now, fx)
            self._left_at = now
            self.replication.leave(fx)
            self.routing.leave(now, fx)
            self.links.hurry(self.linger_limit())
            effects = self._finish(fx, now)
            fx = Fx()
            self._table(self.table.leave(now), now, fx)
            more = self._finish(fx, now)
            effects.peers.extend(more.peers)
            return effects
        return Effects()

    # -- composition -------------------------------------------------------
    def _table(self, table_fx: TableEffects, now: float, fx: Fx) -> None:
        """The member table's messages go out as they are; its events go to
        group replication, then routing (in that order: routing's handover
        reads the group tables replication has just trimmed)."""
        for address, msg in table_fx.messages:
            fx.peers.append((address, msg))
        for event in table_fx.events:
            if self._doubt_until is not None:
                if (
                    event.kind == EventKind.DECLARED_DEAD
                    and event.incarnation >= self._doubt_incarnation
                ):
                    self._fence(now, fx, event.reason)
                    continue
                self._held_events.append(event)  # (taken up with the rest)
                continue
            self._member_event(event, now, fx)

    def _member_event(self, event: MemberEvent, now: float, fx: Fx) -> None:
        fx.events.append(event)
        if event.kind in (EventKind.LEFT, EventKind.JOINED, EventKind.ALIVE):
            self.links.left(event.node, event.kind == EventKind.LEFT)
        if event.kind in (EventKind.JOINED, EventKind.ALIVE, EventKind.UPDATED):
            # (before routing's handover: the peer may sequence what follows)
            fx.peers.append((event.node, self.links.hello()))
        routing, replication = self.routing, self.replication
        if replication is not None:
            replication.on_member_event(event, fx)
        if routing is not None:
            routing.on_member_event(event, now, fx)

    def _finish(self, fx: Fx, now: float) -> Effects:
        """Carry the core's work until none is left, send answers for other
        nodes' clients back through them, and address every peer message."""
        routing, replication, table = self.routing, self.replication, self.table
        if routing is None or replication is None or table is None:
            return Effects(fx.out)
        while True:
            if fx.moved:  # (before the step's group_sends are addressed)
                replication.moved(fx.moved, now)
                fx.moved = []
            # (at least once: group counts may have changed without core work)
            work = fx.take_work() or ClusterWork()
            replication.after_core(work, now, fx)
            routing.after_core(work, now, fx)
            if not fx.has_work() and not fx.moved:
                break
        notes = self.links.lost_notes()
        if notes:
            delivered, said = [], []
            for note, answered in notes:
                if not isinstance(note, _Unheard):
                    delivered.append(note)
                    said.append(answered)
                elif answered:  # (it lives on: a new process could not say)
                    routing.relay_lost(note.node, note.msg, fx)
                else:
                    routing.relay_unheard(note.msg)
                    routing.takes_unheard(note.node, note.msg, fx)
            routing.never_delivered(delivered, now, fx, said)
        if self._gone_waiting:
            waiting, self._gone_waiting = self._gone_waiting, []
            for node, gone in waiting:  # (after what the limbo told: in order)
                if self._limbo_tells(node, gone):
                    self._gone_waiting.append((node, gone))
                else:
                    fx.peers.append((node, gone))
        out = fx.out
        if routing.has_virtual:
            virtual = [o for o in out if routing.is_virtual(o[0])]
            if virtual:
                routing.send_back(virtual, fx, now)
                out = [o for o in out if not routing.is_virtual(o[0])]
        if self._plain_credit:
            self._credit_again(fx, now)
        return Effects(out, self._address(fx.peers, table, now), fx.events)

    def _credit_again(self, fx: Fx, now: float) -> None:
        """Credit our clients granted that went plain to a peer this node had
        never heard a hello from (``_address``) is granted again on the link
        once that peer says one: a plain frame is on no link, and one lost
        (a partition, a reset) left the receive waiting for good (soak seeds
        1741 and 5060: a node that ended its life in place relayed its
        client's credit to an owner that had joined while it was frozen,
        into a partition; 6193: a node restarted into a partition served
        at its join deadline, before the heal). Only a client's own grant
        relayed straight from here (``hops`` 1), not credit this node moves
        itself (``MAX_HOPS``: after a handover, at every join, to the new
        node before its hello, where the first one arrives: copied there
        too, every timing moved and the soak seeds 300-1,299 failed 179
        against 172). The copy is the relay as it was (its ``sent_at`` too):
        a peer that took the first drops it (``Routing._credit_copy``)."""
        for node in [n for n in self._plain_credit if self.links.speaks(n)]:
            life, relays = self._plain_credit.pop(node)
            member = self.table.member(node) if self.table is not None else None
            if member is None or member.incarnation >= life + RESTART_GAP:
                continue  # (a new life of that node: it never had the first)
            for relay in relays:
                if relay.incarnation == self.incarnation:
                    fx.peers.append((node, relay))
                    self.counters["credit_granted_again"] += 1

    def _address(
        self, peers: list[tuple[str, Any]], table: MemberTable, now: float
    ) -> list[tuple[str, bytes]]:
        """(node id or address, message) -> (address, frame); messages to
        nodes that are not members are counted and dropped."""
        frames: list[tuple[str, bytes]] = []
        if self.links.holding():  # (before anything new for the same peers)
            frames.extend(self.links.release(table.member, now))
        live: list[str] | None = None
        me = table.node_id
        for target, msg in peers:
            if isinstance(msg, Load) and msg.origin == me:
                # (what its peers count for it if they take it for dead)
                load = msg.load
                self._reports.append((now, int(load.get("queued", 0)) + int(load.get("parked", 0))))
            if isinstance(msg, _TABLE):  # the member table addresses its own
                frames.append((target, encode_peer(msg)))
                continue
            plain: bytes | None = None
            linked = not isinstance(msg, LinkAck)  # (a link's own: never sequenced)
            if target == EVERYONE:
                if live is None:
                    live = [n for n in table.live() if n != me]
                targets = live
            else:
                targets = [target]
            for node in targets:
                # (a member this node thinks dead still gets what is
                # addressed to it: if it sent us something it is alive, and
                # the views are catching up; if it is dead the frame is lost
                # as it would have been a moment earlier; but not what only
                # this node would count lost, which is counted instead:
                # ``Links.frame``, ``DROPPED``)
                member = table.member(node)
                if member is None or node == me:
                    self.counters["unsent"] += 1
                    continue
                if isinstance(msg, ConnGone) and self._gone_after_limbo(node, msg):
                    continue
                units = _units(msg)
                frame = (
                    self.links.frame(
                        member,
                        msg,
                        now,
                        units,
                        _note(node, msg),
                        isinstance(msg, Handoff),
                        units + _delivered(msg),
                    )
                    if linked
                    else None
                )
                if linked:  # (a new link: its predecessor in limbo is asked first)
                    frames.extend((member.address, probe) for probe in self.links.first())
                if frame is HELD or frame is DROPPED:  # (held for a new life; dead here)
                    continue
                if frame is None:
                    # (as that life reads it: a peer not heard yet, or of an
                    # older version, is sent no stamps, ``Links.readable``)
                    readable = self.links.readable(member, msg)
                    if readable is not msg:
                        frame = encode_peer(readable)
                    else:
                        if plain is None:
                            plain = encode_peer(msg)
                        frame = plain
                    if isinstance(msg, Relay) and msg.hops == 1 and not self.links.speaks(node):
                        self._remember_plain_credit(member, msg)
                frames.append((member.address, frame))
        return frames

    def _gone_after_limbo(self, node: str, msg: ConnGone) -> bool:
        """Whether ``msg`` waits (``_gone_waiting``, sent at the step its
        wait ends): a link to ``node`` ended with a frame that told what
        one of those clients did with its flight there (a take, a
        give-back) in limbo. Told first, if ``node`` never took it
        (``Routing.relay_lost``); else ``node``, told the client is gone,
        counts its whole flight lost and then hears it took some (kill-free
        simulation seed 1679, 8 ops: a report of a take lost in a reset,
        told again after the ``ConnGone``, and counted as taken and lost)."""
        if not self._limbo_tells(node, msg):
            return False
        self._gone_waiting.append((node, msg))
        self.counters["conn_gone_after_limbo"] += 1
        return True

    def _limbo_tells(self, node: str, msg: ConnGone) -> bool:
        """Whether a frame in limbo for ``node`` told of a client ``msg``
        says is gone (``_gone_after_limbo``)."""
        mine = {(self.node_id, conn) for conn in msg.conns}
        return any(
            isinstance(note, _Unheard) and (note.msg.origin, note.msg.conn) in mine
            for note in self.links.limbo_notes(node)
        )

    def _remember_plain_credit(self, member: Member, relay: Relay) -> None:
        """A relay of our client's credit sent plain to ``member``, which
        never said hello here: kept (its credit alone) for
        ``_credit_again``, with that member's life."""
        grants = grants_of(relay.messages)
        if grants:
            life, kept = self._plain_credit.get(member.id, (member.incarnation, []))
            if member.incarnation >= life + RESTART_GAP:  # (a new life: those went to the old)
                life, kept = member.incarnation, []
            if len(kept) < _PLAIN_CREDIT_KEPT:
                kept.append(dataclasses.replace(relay, messages=grants))
            self._plain_credit[member.id] = (life, kept)

    # -- status ------------------------------------------------------------
    def drops(self) -> dict[str, int]:
        """Messages and frames dropped, by reason: the core's, plus what the
        cluster lost (queued on dead nodes) and
        malformed peer frames."""
        drops = self.core.drops()
        if self.routing is not None:
            rc = self.routing.counters
            drops["dead_owner"] += rc["lost_in_dead_nodes"] + self.links.lost_units
            drops["decode_error"] += self.counters["decode_errors"]
        for reason, count in self._past_drops.items():
            drops[reason] = drops.get(reason, 0) + count
        return drops

    def status(self) -> dict[str, Any]:
        return self.core.status()

    def _extra_status(self) -> dict[str, Any]:
        shell = self.shell_status() if self.shell_status is not None else {}
        table, routing, replication = self.table, self.routing, self.replication
        if table is None or routing is None or replication is None:
            alone = {
                "id": self.node_id,
                "state": "alive",
                "incarnation": self.incarnation,
                "address": "",
            }
            return {"cluster": None, "members": [alone], **shell}
        mine = {**routing.load(), "drops": self.drops()}
        nodes = {**routing.loads, self.node_id: mine}
        members = []
        for m in table.members():
            load = nodes.get(m.id, {}) if m.state in LIVE else {}
            members.append(
                {
                    "id": m.id,
                    "state": str(m.state),
                    "incarnation": m.incarnation,
                    "address": m.address,
                    "channels": load.get("channels"),
                    "queued": load.get("queued"),
                }
            )
        peer_counters = dict(self.counters)
        peer_counters.update(self.links.counters)  # (link_retransmits, link_gaps, ...)
        peer_counters["from_strangers"] = (
            peer_counters.get("from_strangers", 0) + replication.from_strangers
        )
        for key, value in shell.pop("peer_counters", {}).items():
            peer_counters[key] = peer_counters.get(key, 0) + value
        return {
            "cluster": table.cluster,
            "members": members,
            "peer_counters": peer_counters,
            **replication.status(),
            **routing.status(),
            "nodes": {n: nodes[n] for n in sorted(nodes)},
            "drops": mine["drops"],
            **shell,
        }
