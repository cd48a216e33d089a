"""Channels across the cluster: who owns each name, and getting messages there.

Owns: the current ``Ownership`` (rebuilt whenever the live member set
changes), relaying client messages for channels another node owns
(``PEER_RELAY``) and passing the owner's answers back (``PEER_RELAY_BACK``),
handing queued messages, receivers' credit, send reservations
(``PEER_RESERVATIONS``) and memberships to a name's new owner when
ownership moves (``PEER_HANDOFF``, at every change and by a periodic
sweep), cluster-wide requests (``flush()``, group members:
``PEER_ASK``/``PEER_ANSWER``), and each node's load for ``znode status``
(``PEER_LOAD``). Decides nothing about a channel itself: the owner's
``NodeCore`` does, exactly as for its own clients.

How a relayed client looks to the owner: a *virtual connection* — a
connection id that no ZeroMQ peer can have (it starts with a NUL byte and is
longer than libzmq's generated ids; ids a client sets cannot start with NUL)
— standing for ``(origin node, client connection)``. The owner's core grants
it credit, delivers to it, gives its returns back, reserves send slots for it
and holds its memberships (as ``"origin/session"``) like any local client's;
this module turns its answers into ``PEER_RELAY_BACK`` frames. So receive,
cancellation (give-back, acknowledged credit withdrawal) and send
reservations behave across nodes exactly as on one node.

Failure: messages queued on a node that dies are lost (at-most-once) and
counted once, by the survivor in its oldest life (``lost_in_dead_nodes``,
from the dead node's last load report: ``_count_dead``); a relayed request
its owner never answers (it died) is answered after ``timeout`` (outcome
unknown); what a client of a node declared dead was handed waits for its
report (``_parked_flight``); a deliver that reaches a client that has gone
goes back to its owner.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from zchannels.names import valid_wire_channel
from zchannels.protocol import ErrorCode, Message, MsgType, split_batches

from .core import MAX_HOPS, ClusterWork, NodeCore, Out
from .effects import EVERYONE, Fx
from .membership import LIVE, EventKind, MemberEvent, MemberTable, State, suspicion_bounds
from .ownership import Ownership, tag_of
from .passed import Passed
from .peer_messages import (
    Answer,
    Ask,
    ClusterMessage,
    ConnGone,
    FanoutsSeen,
    HandedOver,
    HandedReservation,
    Handoff,
    HolderGone,
    Load,
    Relay,
    RelayBack,
    RelayLost,
    Reservations,
    aged,
)
from .peer_wire import consumption_report
from .queues import ConnId, Put, Stamp
from .sessions import Policy, Session

log = logging.getLogger("zchannels.node")

#: Requests answered by ACK or ERROR (their request id is field 0).
_ANSWERED = frozenset({MsgType.SEND, MsgType.GROUP_ADD, MsgType.GROUP_DISCARD, MsgType.RETURN})
_VCONN_MARK = b"\x00zr"
#: one group message for several channels of a client, as the owner sends it
#: (the client's node passes it on as one DELIVER per channel)
_MANY = frozenset({MsgType.DELIVER_MANY, MsgType.DELIVER_BUNDLE})
#: A member's incarnation starts at its start time in ms and grows by one per
#: refuted suspicion; relays carry the start value. One more than this above
#: it means a new start (a restart, at least a second later), not a refutation.
RESTART_GAP = 1000
#: Seconds an owner remembers what it counted lost as it forgot another
#: node's client (``Routing._not_again``): longer than any delivery already on
#: its way to it can take to bounce back, a frozen node's included.
GONE_MEMORY = 60.0
#: Most client connections gone while a node was declared dead here that it
#: is told of when it comes back in the same life, and most copies of reports
#: held for it (``Routing._for_return``)
MAX_GONE_UNHEARD = 10_000
#: Member events that say a node is live
LIVE_EVENTS = frozenset({EventKind.JOINED, EventKind.ALIVE, EventKind.UPDATED})
#: Most messages held from one node not yet in the member table
#: (``Routing._stranger``); beyond, they are dropped and counted.
MAX_STRANGER_HELD = 10_000
#: How fast (s/s) the estimate of a peer's clock offset may creep up, so it
#: follows clock drift (real drift is under 1e-4) and forgets a sample that
#: was unusually fast; bounded by ``_CREEP_SPAN`` seconds without a sample.
_CREEP = 1e-3
_CREEP_SPAN = 60.0
#: Seconds beyond ``fresh_within`` a send waiting on an owner declared dead
#: waits before it is answered: the owner's estimate of a relay's delay is
#: short of the truth by at most the fastest delay it saw from the origin
#: (and ``_CREEP``); a loopback or LAN hop is far below this.
RELAY_FRESH_MARGIN = 0.1
#: The number a dead life's count carries once its fence report gave the
#: exact loss: above every load report's number (``Routing._count_dead``).
EXACT = 1 << 62


def grants_of(messages: Iterable[Message]) -> tuple[Message, ...]:
    """The credit grants (``RECV``) among a relay's messages."""
    return tuple(m for m in messages if m[0] == MsgType.RECV)


def _seqs_of(items: dict[str, list[Any]]) -> dict[str, list[int]]:
    """Channel -> the sequence numbers of ``Undelivered`` items."""
    return {name: [item[2] for item in listed] for name, listed in items.items()}


def _same_life(a: int, b: int) -> bool:
    """Whether two incarnations of a node are one life (a refuted
    suspicion moves it by one; a new process by ``RESTART_GAP`` or more)."""
    return abs(a - b) < RESTART_GAP


def _names_life(lives: Iterable[tuple[str, int]], node: str, life: int) -> bool:
    """Whether ``lives`` names ``node``'s life ``life``."""
    return any(n == node and _same_life(e, life) for n, e in lives)


#: (origin node, its incarnation, the client's connection there)
_Client = tuple[str, int, ConnId]
#: (node, a client's connection there) -> channel -> numbers in flight to it
ClientFlights = dict[tuple[str, bytes], dict[str, set[int]]]


def gone_clients(msgs: Iterable[ClusterMessage]) -> set[_Client]:
    """The clients ``msgs`` say are gone (``ConnGone``)."""
    return {
        (msg.origin, msg.incarnation, conn)
        for msg in msgs
        if isinstance(msg, ConnGone)
        for conn in msg.conns
    }


#: deliveries a link carried to another node's client, for when that node
#: never takes the frame: (node, the client's connection there, channel ->
#: the items, each ``[payload, ttl, seq]``)
Undelivered = tuple[str, bytes, dict[str, list[Any]]]
#: what is parked, as the held record keeps it (``Routing.parked_carry``):
#: (client's node, its life, connection, ((channel, numbers), ...))
ParkedCarry = tuple[tuple[str, int, bytes, tuple[tuple[str, tuple[int, ...]], ...]], ...]
#: relays per client whose credit grants are remembered to know a copy
#: (``_credit_copy``)
_GRANTS_KEPT = 64


@dataclass(slots=True)
class _Virtual:
    origin: str
    incarnation: int
    conn: ConnId
    session: Session
    tag: str  # the client's session tag on its own node
    sent_at: float = 0.0  # the stamp of its latest relay (passed on with it)


def _wire_item(item: object) -> bool:
    """``[payload, ttl, seq]`` as a RETURN carries it (enough to read its seq)."""
    return isinstance(item, list) and len(item) == 3 and type(item[2]) is int


def tells_flight(msg: object) -> bool:
    """Whether a peer message tells its receiver what a client did with its
    flight there (consumption reports, give-backs): lost on a link whose
    receiver lives on, it is sent again as a ``RelayLost``."""
    if isinstance(msg, RelayLost):
        return True
    return isinstance(msg, Relay) and any(
        mtype == MsgType.CONSUMED or mtype == MsgType.RETURN for mtype, _ in msg.messages
    )


def _lost_of(msg: Relay | RelayLost) -> RelayLost | None:
    """What ``msg`` told its receiver of a client's flight, as a
    ``RelayLost`` (well-formed parts only: the rest the receiver refused)."""
    if isinstance(msg, RelayLost):
        return msg
    reports: list[tuple[str, int, int, int]] = []
    returned: list[tuple[str, tuple[int, ...]]] = []
    for mtype, fields in msg.messages:
        if mtype == MsgType.CONSUMED and len(fields) == 1 and isinstance(fields[0], list):
            reports.extend((r[0], r[1], r[2], r[3]) for r in fields[0] if consumption_report(r))
        elif mtype == MsgType.RETURN and len(fields) >= 4 and isinstance(fields[2], list):
            name = fields[1]
            seqs = tuple(item[2] for item in fields[2] if _wire_item(item))
            if type(name) is str and valid_wire_channel(name) and seqs:
                returned.append((name, seqs))
    if not reports and not returned:
        return None
    return RelayLost(msg.origin, msg.incarnation, msg.conn, tuple(reports), tuple(returned))


def _given_back(msg: Relay | RelayLost) -> int:
    """How many messages ``msg`` gave back (well-formed give-backs only)."""
    told = _lost_of(msg)
    return sum(len(seqs) for _, seqs in told.returned) if told is not None else 0


def _sender_of(msg: ClusterMessage) -> str | None:
    """The node a routing message came from (None: a load report, which
    is read only from live members)."""
    if isinstance(msg, Load):
        return None
    if isinstance(msg, RelayBack | Answer):
        return msg.source
    return msg.origin  # type: ignore[union-attr]


def _unpark(parked: dict[str, list[int]], name: str, numbers: list[int]) -> int:
    """Take ``numbers`` out of what is parked for channel ``name`` (the
    channel goes when nothing is left); returns how many were there."""
    kept = parked.get(name)
    if not kept:
        return 0
    gone = set(numbers)
    before = len(kept)
    kept[:] = [q for q in kept if q not in gone]
    if not kept:
        del parked[name]
    return before - len(kept)


def holder_of(origin: str, incarnation: int, tag: str) -> str:
    """Who holds a membership made by session ``tag`` of node ``origin`` (at
    ``incarnation``: a restarted node's old sessions are not its new ones)."""
    return f"{origin}@{incarnation}/{tag}"


@dataclass(slots=True)
class _ForReturn:
    """What a node declared dead here is told if it is back in the same
    life (``life``): copies of our clients' reports for it (``copies``,
    until ``copies_until``: ``Routing._send_relay``) and our client
    connections gone meanwhile (``gone``: ``ConnGone`` goes to live members
    only, ``Routing._conns_gone``)."""

    life: int
    copies: list[Relay] = field(default_factory=list)
    copies_until: float = 0.0
    gone: set[ConnId] = field(default_factory=set)
    #: deliveries it made to our clients that came after it was declared
    #: dead here, refused (``Routing._refuse_deliveries``): what it is told
    #: (counted there), and how many of them it sent on a link, thinking
    #: our node alive (not parked there: counted here if it is not back)
    refused: list[RelayLost] = field(default_factory=list)
    refused_linked: int = 0


@dataclass(slots=True)
class _Ask:
    conn: ConnId
    req: int
    kind: str
    waiting: set[str]
    deadline: float
    result: set[str] = field(default_factory=set)


class Routing:
    """Pure: every method takes ``now`` and fills the step's ``Fx``; it reads
    the member table, never drives it."""

    def __init__(
        self,
        core: NodeCore,
        table: MemberTable,
        *,
        timeout: float | None = None,
        load_interval: float = 1.0,
        sweep_delay: float = 1.0,
        fenced: tuple[int, int] | None = None,
        hold: float = 0.05,
        fresh_for: float = 0.6,
    ) -> None:
        self.core = core
        #: seconds a relayed send stays fresh (``fresh_within``)
        self.fresh_for = fresh_for
        #: seconds sends relayed straight here for a channel that just
        #: became this node's are held (``_hold``)
        self.hold = hold
        #: the ownership before the last change, and until when a send for
        #: a channel that moved here then is held
        self._before: tuple[Ownership, float] | None = None
        #: relays held (in arrival order), the channels they hold, and when
        #: they are taken up
        self._held_relays: list[Relay] = []
        self._relay_channels: set[str] = set()
        #: (origin, client connection) of each relay held: what follows
        #: from that client waits behind it
        self._relay_sources: set[tuple[str, bytes]] = set()
        self._relays_until = 0.0
        #: (our client's connection, channel) -> (owner, when): where its
        #: last send to that channel was relayed (``hold_local``)
        self._sent_to: dict[tuple[ConnId, str], tuple[str, float]] = {}
        #: our clients' frames held (``hold_local``), the connections they
        #: are of, and when they are taken up
        self._held_frames: list[tuple[ConnId, list[Message]]] = []
        self._held_conns: set[ConnId] = set()
        self._frames_until = 0.0
        #: (incarnation, messages lost) of the life this node ended in place
        #: before this one, reported in every load report
        self._fenced = fenced
        #: (incarnation, messages held) of the life of the process before
        #: this one, which died without a leave (``previous_crash``),
        #: reported in every load report
        self._crashed: tuple[int, int] | None = None
        #: deaths this node counts the loss of (``_counts_for``): node ->
        #: (its incarnation then, its last reported queue, when to presume
        #: it lost, that report's number), counted once it is known how that
        #: life ended (``_settle_death``)
        self._provisional: dict[str, tuple[int, int, float, int]] = {}
        #: (node, incarnation) of ended lives already counted: None when
        #: exactly (a fence report), else the estimate counted (its last
        #: reported queue)
        self._ended: dict[tuple[str, int], int | None] = {}
        self.table = table
        #: the configured answer bound of a relayed request (None: derived
        #: from failure detection, see ``answer_within``)
        self._timeout = timeout
        self.load_interval = load_interval
        self.sweep_delay = sweep_delay
        self.me = table.node_id
        self.incarnation = table.incarnation
        self.ownership = Ownership({self.me: core.settings.node_tag})
        self._live: tuple[str, ...] = (self.me,)
        #: tags of nodes that left cleanly and are not forgotten yet: their
        #: ``new_channel()`` names are kept by the live nodes meanwhile
        self._parked: tuple[str, ...] = ()
        #: (node, incarnation) of lives that left cleanly -> when the
        #: memberships their sessions held are dropped, unless made again
        #: by the sessions in the node's next life (a drain, then a restart)
        self._left_lives: dict[tuple[str, int], float] = {}
        #: this node's life before this process, which left cleanly (its
        #: note: ``life_note``), and until when the load reports say so
        #: (``previous_left``)
        self._previous_left: tuple[int, float] | None = None
        #: until when a count this node would make as the first survivor
        #: waits for one a peer that held it dead made (``_outranked``)
        self._held_dead_until = 0.0
        #: peer back from a death declared here -> until when it may still
        #: say it counted a death as the first survivor in its view
        #: (``_outranked``)
        self._back_from_dead: dict[str, float] = {}
        #: node -> the incarnation of its life this node last saw live (gone
        #: once it is seen to die or leave): a newer life whose predecessor
        #: is still here ended that one unseen (``_life_ended_unseen``)
        self._lives: dict[str, int] = {
            m.id: m.incarnation for m in table.members() if m.state in LIVE and m.id != self.me
        }
        #: other nodes' clients forgotten here -> (until when to remember,
        #: channel -> the sequence numbers it had been handed and that were
        #: counted lost, ``receiver_gone``, as it was forgotten)
        self._counted_gone: dict[_Client, tuple[float, dict[str, set[int]]]] = {}
        #: (origin node, client connection) -> (until when to remember,
        #: channel -> the numbers of what this node had handed that client
        #: and left in nobody's flight as it handed the channel on:
        #: ``handoff``, ``lost_at_exit``)
        self._handed_flight: dict[tuple[str, bytes], tuple[float, dict[str, set[int]]]] = {}
        #: what the life before this one (ended in place) had in flight to
        #: other nodes' clients, uncounted: (node, client connection) ->
        #: channel -> numbers, until (``ended_flight``, ``_count_unsent``)
        self._ended_flight: ClientFlights = {}
        self._ended_flight_until = 0.0
        #: what clients of a node declared dead had been handed (plain
        #: messages, channel -> seqs in order), not counted until known
        #: taken (their CONSUMED), given back (a RETURN: queued again) or
        #: lost (their node's life ended, the client went, or nothing was
        #: heard by the deadline): ``_parked_flight``
        self._parked_flight: dict[_Client, tuple[float, dict[str, list[int]]]] = {}
        #: the stamps of what is parked, by (channel, seq): put back with a
        #: give-back (``_park``); kept while the client has a parked flight
        self._parked_stamps: dict[_Client, dict[tuple[str, int], Stamp]] = {}
        #: per client, the credit grants of its last relays (``_credit_copy``)
        self._grants_seen: dict[_Client, dict[tuple[Any, ...], None]] = {}
        #: clients of nodes that left cleanly -> when they are forgotten:
        #: until then nothing more is delivered to them, and what they were
        #: handed may still come back (``_node_gone``)
        self._leaving: dict[_Client, float] = {}
        #: the last incarnation of ours a peer declared dead whose forgotten
        #: credit was granted again (``_declared_dead``)
        self._regranted_after = 0
        self._tags: dict[str, str] = {self.me: core.settings.node_tag}
        # owner side: virtual connections of clients on other nodes
        self._virtual: dict[ConnId, _Virtual] = {}
        self._vconn_of: dict[_Client, ConnId] = {}
        self._vconn_ids = itertools.count(1)
        # origin side
        #: (client conn, request id) -> (owner, deadline, type): relayed requests
        self._pending: dict[tuple[ConnId, int], tuple[str, float, MsgType, float]] = {}
        #: the earliest deadline of a pending send brought forward because
        #: its owner was declared dead or seen in a new life
        #: (``_answer_sooner``; the others are in ``_pending``'s order)
        self._pending_sooner = math.inf
        #: other nodes' clients' requests this node passed on to an owner
        #: (a second hop: views differed), by (virtual connection, request):
        #: (owner, when, type). The owner answers their origin directly, so
        #: nothing waits here, but if that owner is declared dead or seen in
        #: a new life this node answers for it (``_answer_sooner``): the
        #: origin's own view still names this node, and its answer bound
        #: would hold the channel up (issue 11 defect 3)
        self._passed_on: dict[tuple[ConnId, int], tuple[str, float, MsgType]] = {}
        #: which of ``_pending`` came from ``_passed_on`` (their client may be
        #: forgotten by the time they are due)
        self._passed_due: set[tuple[ConnId, int]] = set()
        self._relayed_conns: set[ConnId] = set()  # local conns with state elsewhere
        #: (our client's connection, channel) -> the node that last delivered
        #: to it (``report_to``)
        self._delivered_by: dict[tuple[ConnId, str], str] = {}
        #: nodes this node declared dead, until they are seen live again
        #: or gone for good (``report_to``)
        self._dead: set[str] = set()
        #: node declared dead here -> what it is told if it is back in that
        #: life (``_told_on_return``)
        self._for_return: dict[str, _ForReturn] = {}
        #: refusals told to a life back (``_told_on_return``), until its link
        #: says it took them or it ended (``relay_unheard``)
        #: (bounded: the oldest go first)
        self._refusals_told: dict[RelayLost, None] = {}
        #: this node has left (it lingers, passing on what still comes)
        self._has_left = False
        #: node not (yet) in the member table -> (until when, what it sent
        #: meanwhile, in order): taken up once it is a member (``_strangers``)
        self._strangers: dict[str, tuple[float, list[tuple[ClusterMessage, float]]]] = {}
        #: (client conn, channel) -> [owner, credit left there, the owner's
        #: incarnation then]: what our clients are owed by other nodes,
        #: re-granted if that owner dies, or is the owner in a later life
        #: (``_check_credit``)
        self._credit: dict[tuple[ConnId, str], list[Any]] = {}
        #: credit entries whose channel another node owns now, and since
        #: when (``_check_credit``); and (conn, channel, old owner) of those
        #: granted again, whose late handback is then not granted twice
        self._credit_stale: dict[tuple[ConnId, str], float] = {}
        #: clients forgotten when their node was declared dead -> (until
        #: when, tag, expiry, channel -> the credit they held here)
        self._forgot_credit: dict[_Client, tuple[float, str, float, dict[str, int]]] = {}
        #: the same for credit relayed from a life held dead or left here,
        #: not granted (``_credit_from_gone``)
        self._refused_credit: dict[_Client, tuple[float, str, float, dict[str, int]]] = {}
        #: nodes live again whose forgotten clients' credit is granted again
        #: at their next load report -> the incarnation they came back at
        self._restore_after_load: dict[str, int] = {}
        self._credit_given_up: set[tuple[ConnId, str, str]] = set()
        #: node back in a new life -> our clients' credit on channels it owns
        #: now, granted at its first load report (``_regrant``)
        self._credit_for_new_life: dict[str, dict[tuple[ConnId, str], int]] = {}
        self._next_credit_check = 0.0
        self._remote_holders: set[str] = set()  # local sessions holding memberships elsewhere
        self._asks: dict[int, _Ask] = {}
        self._ask_ids = itertools.count(1)
        #: node id -> its last load report (channels, queued, drops)
        self.loads: dict[str, dict[str, Any]] = {}
        self.counters: Counter[str] = Counter()
        self._next_load = 0.0
        #: losses with dead lives another survivor should count, kept in
        #: case it is dead too (``_count_dead``): node -> (lost, until, life,
        #: the number of the report that said it)
        self._count_later: dict[str, tuple[int, float, int, int]] = {}
        #: dead lives (node, incarnation) this node counted a loss of, as
        #: the first survivor, named in its load reports until then (peers
        #: of an older version drop what they kept for it: ``_count_dead``)
        self._counted: dict[tuple[str, int], float] = {}
        #: dead lives this node counted, as the first survivor -> (the
        #: number of the newest report of that life it knows, what it
        #: counted in all, until when it is named in its load reports as
        #: "tallied"): a survivor that holds a newer report sends it
        #: ("held"), and this node counts what that adds
        self._tallies: dict[tuple[str, int], tuple[int, int, float]] = {}
        self._counted_gen = 0
        #: dead lives another survivor said it counted -> (until when known,
        #: the number of the report it counted by, what it counted in all)
        self._counted_elsewhere: dict[tuple[str, int], tuple[float, int, int]] = {}
        #: the number of this life's last load report (``_report``)
        self._report_no = 0
        #: node live here -> (its life, report number, lost) of a report of
        #: it newer than its last one here, held by a peer that declared it
        #: dead (``_heard_held``): what this node counts if it declares that
        #: life dead too
        self._newer_reports: dict[str, tuple[int, int, int]] = {}
        #: lives (node, incarnation) a peer said left cleanly -> until when
        #: known: a death this node declared for one is not counted
        #: (``_left_elsewhere``)
        self._left_elsewhere: dict[tuple[str, int], float] = {}
        #: dead nodes whose life ended unseen (a new process) while a peer
        #: this node declared dead too is not settled yet (``_settle_death``)
        #: -> whether this node was the one to count it then
        self._deferred: dict[str, bool] = {}
        #: node -> the death of a life of it (its ``_provisional`` entry, and
        #: ``_deferred``'s) whose next life was declared dead before any
        #: report of it came: how it ended waits for that life's reports
        #: (``_settle_earlier_life``)
        self._earlier: dict[str, tuple[tuple[int, int, float, int], bool | None]] = {}
        #: more for the load report (the node's links: how far it took each)
        self.report_extra: Callable[[], dict[str, Any]] = dict
        #: when the last load report went, and the queues' sequence number then
        self._last_load = 0.0
        self._reported_seq: tuple[int, int, int] = (-1, 0, 0)
        self._ticked_at = 0.0
        #: how soon after messages were queued a report goes (at most)
        self._soon = load_interval / 20
        #: per origin node: (estimated clock offset: our now - its clock,
        #: when last updated): how late its relays arrive (``_lag``)
        self._offsets: dict[str, tuple[float, float]] = {}
        #: something may sit on a node that does not own it (a handover raced
        #: a view change, a relay ran out of hops): when to sweep it on
        self._sweep_at: float | None = None
        #: what goes before a handover of memberships: the last group_send
        #: fanout each had from each origin, the memberships split by it
        #: (``GroupReplication.fanouts_seen_split``)
        self.fanouts_seen: (
            Callable[
                [tuple[tuple[Any, ...], ...]],
                list[tuple[FanoutsSeen, tuple[tuple[Any, ...], ...]]],
            ]
            | None
        ) = None
        core.route = self.route
        core.report_to = self.report_to
        core.taken_here = self.taken_here
        #: what other nodes delivered to our clients through this node, and
        #: which of it this node answers for (``passed``)
        self.passed = Passed()
        self.refresh()

    # -- ownership -------------------------------------------------------------
    def report_to(self, conn: ConnId, channel: str) -> str | None:
        """Where a copy of ``conn``'s report of what it took of ``channel``
        goes as well as the report to the channel's owner: the node that
        last delivered to it, if this node declared it dead, or if it is
        live and the report goes to another owner (not one that left).
        That death may be a mistake (it was slow, or cut off: simulation
        seed 22, a 2-node split under 30% loss), and there what the client
        was handed waits to be counted lost unless reported taken
        (``_parked_flight``). The copy is for that node alone (``core``: it
        is not passed on, and says nothing of expiry, which the owner
        counts)."""
        source = self._delivered_by.get((conn, channel))
        if source is None:
            return None
        if source in self._dead:
            return source
        # A live one the report does not go to: it may have declared this
        # node dead, parking what it handed our client, which this node
        # cannot know yet (it hears of a death it refutes later, and not
        # from whom). Kill-free simulation seed 65, 8 ops: a 0.3 s lag got
        # this node declared dead by the owner as its 5 deliveries reached
        # the client, which took them; the reports went to the node that
        # owned the channel in this node's view, and the owner counted the
        # park lost when it lapsed. (Where nothing is parked the copy finds
        # no flight: an owner that hands a channel on forgets it.)
        # (a node that left handed its flight over, and is told nothing:
        # a copy to it kept it lingering, passing the copy on to the
        # owner, where it was applied to the flight a second time)
        member = self.table.member(source)
        if member is None or member.state not in LIVE or self.route(channel) == source:
            return None
        return source

    def adopt(self, conn: ConnId, channel: str, source: str, now: float) -> None:
        """``source`` handed ``channel`` on and gave our client ``conn``'s
        credit back: what the client holds of its deliveries is this node's
        to answer for (``passed``); counted now if the client is gone."""
        self._passed_lost(self.passed.adopt(conn, channel, source, now))

    def _passed_lost(self, lost: int) -> None:
        """What this node answered for of its clients' (``passed``) is lost."""
        if lost:
            self.counters["passed_lost"] += lost
            self.core.queues.counters.dropped_receiver_gone += lost

    def taken_here(self, conn: ConnId, channel: str, count: int) -> int:
        """Our client ``conn`` took or gave back the first ``count`` it held
        of ``channel``: how many of them this node answers for (``passed``:
        their owner handed the channel on while the client held them)."""
        if not self.passed.runs:
            return 0
        return self.passed.taken(conn, channel, count)

    def route(self, channel: str) -> str | None:
        """None: this node owns ``channel``; the owner's id; "" for nobody."""
        owner = self.ownership.owner(channel)
        if owner == self.me:
            return None
        return owner or ""

    @property
    def timeout(self) -> float:
        return self.answer_within()

    def answer_within(self) -> float:
        """Seconds within which a relayed request is answered: by its owner,
        or else by this node, which then answers that a send's outcome is
        unknown (``SendOutcomeUnknown``). Tied to
        failure detection: the longest suspicion of a cluster this size plus
        two probe rounds, so a dead owner is declared dead first (unless the
        operator set ``relay_timeout``)."""
        if self._timeout is not None:
            return self._timeout
        config = self.table.config
        _, high = suspicion_bounds(config, len(self._live))
        return high + 2 * config.probe_interval

    def fresh_within(self) -> float:
        """A relayed send older than this is refused by its owner: its origin
        may have stopped waiting and told its client the outcome is unknown,
        and the client's newer sends may have overtaken it (a quarter of the
        bound is left for the owner's answer to travel back), and never
        later than ``fresh_for`` (``NodeConfig.relay_fresh_for``): a send to
        an owner declared dead is answered once it is that old, so its
        channel serves again soon after the death."""
        return min(0.75 * self.answer_within(), self.fresh_for)

    def _answer_sooner(self, node: str, now: float, *, life_ended: bool) -> None:
        """What our clients wait on at ``node`` is answered sooner
        (``_unanswered``: a send's outcome is unknown, anything else is
        done): it was declared dead (it may only be frozen or cut off, and
        takes a send until it refuses it as late: ``fresh_within`` after it
        was sent plus ``RELAY_FRESH_MARGIN``), or that life ended (seen in a
        new life, which takes no frame for an earlier one: at once). The
        client's next send goes to the channel's new owner, a receiver's
        withdrawn credit is granted there, and the answer bound no longer
        holds the channel up (issue 11 defect 3)."""
        fresh = self.fresh_within() + RELAY_FRESH_MARGIN
        for key, (owner, deadline, mtype, sent) in self._pending.items():
            if owner != node:
                continue
            sooner = now if life_ended else max(now, sent + fresh)
            if sooner < deadline:
                self._pending[key] = (owner, sooner, mtype, sent)
                self._pending_sooner = min(self._pending_sooner, sooner)
        for key in [k for k, passed in self._passed_on.items() if passed[0] == node]:
            owner, sent, mtype = self._passed_on.pop(key)
            sooner = now if life_ended else max(now, sent + fresh)
            if key[0] in self._virtual and sooner < sent + self.timeout:
                # (answered to its origin, through ``send_back``)
                self._pending[key] = (owner, sooner, mtype, sent)
                self._passed_due.add(key)
                self._pending_sooner = min(self._pending_sooner, sooner)

    def _lag(self, origin: str, sent_at: float, now: float) -> float:
        """How late a frame ``origin`` stamped ``sent_at`` (its clock) is,
        beyond the fastest seen from it: the minimum of ``now - sent_at`` is
        our clock's offset plus the smallest delay, so what exceeds it is
        queueing (a freeze, a partition, a backlog). Never overestimated."""
        if origin == self.me:
            return now - sent_at
        sample = now - sent_at
        known = self._offsets.get(origin)
        if known is None:
            offset = sample
        else:
            offset, at = known
            offset = min(offset + _CREEP * min(now - at, _CREEP_SPAN), sample)
        self._offsets[origin] = (offset, now)
        return sample - offset

    def refresh(self) -> bool:
        """Rebuild ownership if the live set (or the parked tags) changed;
        True if it did."""
        live = tuple(self.table.live())
        if self.me not in live:  # leaving: keep serving as if alone
            live = tuple(sorted({*live, self.me}))
        parked = tuple(
            sorted(
                self._tag(m.id)
                for m in self.table.members()
                if m.state == State.LEFT and m.id != self.me
            )
        )
        if live == self._live and parked == self._parked:
            return False
        for node in live:
            self._tag(node)
        self.ownership = Ownership({n: self._tags[n] for n in live}, parked=parked)
        self._live, self._parked = live, parked
        return True

    def _tag(self, node: str) -> str:
        tag = self._tags.get(node)
        if tag is None:
            tag = self._tags[node] = tag_of(node)
        return tag

    def status(self) -> dict[str, Any]:
        return {
            "view": list(self._live),
            "nodes": {node: dict(load) for node, load in sorted(self.loads.items())},
            "routing_counters": dict(self.counters),
        }

    def load(self) -> dict[str, Any]:
        """What this node holds, as it reports it to the others."""
        core = self.core
        return {
            "channels": len(core.queues.channels),
            "queued": core.queues.queued(),
            "parked": self.parked_count(),
            "drops": core.drops(),
        }

    def _report(self, now: float) -> dict[str, Any]:
        """The load report sent to peers: ``load()``, stamped with our clock."""
        self._report_no += 1
        report: dict[str, Any] = {
            **self.load(),
            "at": now,
            "n": self._report_no,
            **self.report_extra(),
        }
        if self._fenced is not None:
            report["fenced"] = list(self._fenced)
        if self._crashed is not None:
            report["crashed"] = list(self._crashed)
        if self._counted:
            report["counted"] = [[n, life] for n, life in list(self._counted)[-32:]]
        if self._tallies:
            tallies = list(self._tallies.items())[-32:]
            report["tallied"] = [[n, life, no, total] for (n, life), (no, total, _) in tallies]
        held = self._held()
        if held:
            report["held"] = held[-32:]
        # (the lives heard to leave, here or from a peer: kept across a
        # fence, so a node that ended its life in place still says what its
        # earlier life heard: simulation seed 6's second shrink)
        lives = dict.fromkeys([*self._left_lives, *self._left_elsewhere])
        left = [[n, life] for n, life in lives if n != self.me]
        if self._has_left:  # (and this life: see the Load case of ``handle``)
            left.append([self.me, self.incarnation])
        if self._previous_left is not None:  # (and the process's before)
            if now < self._previous_left[1]:
                left.append([self.me, self._previous_left[0]])
            else:
                self._previous_left = None
        if left:
            report["left"] = left[-32:]
        return report

    def leave(self, now: float, fx: Fx) -> None:
        """Before the node leaves: hand everything it holds to the owners
        the others will compute without it (a clean shutdown loses nothing)."""
        self._has_left = True
        # What was parked for clients of an earlier life of a node in a
        # newer one now (``lives_on``): counted now, as before session 26.
        # Their reports may not reach this node any more, and a SIGKILL
        # while it lingers would leave them counted by nobody (simulation
        # seed 3100, 10 ops: the client had died; it was counted nowhere).
        for client in list(self._parked_flight):
            if self._known_incarnation(client[0]) >= client[1] + RESTART_GAP:
                self._count_parked(client, now)
        others = [n for n in self._live if n != self.me]
        if others:
            # (our own clients' names are parked with the others: they wait
            # for this node's next life, which takes them back)
            parked = tuple(sorted({*self._parked, self._tag(self.me)}))
            self.ownership = Ownership({n: self._tags[n] for n in others}, parked=parked)
            self._live, self._parked = tuple(others), parked
            self.handoff(now, fx, full=True)
            # Its load report now, after the handover (on the same links,
            # before the LEFT): a peer's acknowledgement of it says that peer
            # heard the leave, and with it what was handed to it; if none
            # comes, nobody is known to have heard it (``Links.give_up``).
            self._last_load, self._reported_seq = now, self._load_seq()
            fx.peers.append((EVERYONE, Load(self.me, self._report(now))))

    # -- the core's work ---------------------------------------------------------
    def after_core(self, work: ClusterWork, now: float, fx: Fx) -> None:
        """Relays, gone connections and sessions, cluster-wide requests."""
        if work.relays:
            self._relay(work.relays, now, fx)
        if work.gone_conns:
            self._conns_gone(work.gone_conns, now, fx)
        if work.gone_sessions:
            remote = [tag for tag in work.gone_sessions if tag in self._remote_holders]
            if remote:
                self._remote_holders.difference_update(remote)
                fx.peers.append((EVERYONE, HolderGone(self.me, self.incarnation, tuple(remote))))
        for conn, req, kind, arg, local in work.asks:
            self._ask(conn, req, kind, arg, local, now, fx)

    def _relay(
        self, relays: list[tuple[str, ConnId, Session, Message, int]], now: float, fx: Fx
    ) -> None:
        """Send client messages to their channels' owners, one message per
        (owner, client connection) run."""
        deadline = now + self.timeout
        batch: list[Message] = []
        key: tuple[str, ConnId] | None = None
        session: Session | None = None
        hops = 0
        if any(r[1].startswith(_VCONN_MARK) and r[1] not in self._virtual for r in relays):
            relays = self._forgotten(relays)
        for owner, conn, s, (mtype, fields), h in relays:
            if (owner, conn) != key or h != hops:
                if key is not None and session is not None:
                    self._send_relay(key[0], key[1], session, hops, batch, now, fx)
                key, session, hops, batch = (owner, conn), s, h, []
            batch.append((mtype, fields))
            virtual = self._virtual.get(conn)
            if virtual is not None and mtype in _ANSWERED and fields[0]:
                self._passed_on[(conn, fields[0])] = (owner, now, mtype)
            if virtual is None:  # a client of this node: remember what is pending
                self._relayed_conns.add(conn)
                if mtype == MsgType.SEND:
                    self._sent_to[(conn, fields[1])] = (owner, now)
                if mtype in _ANSWERED and fields[0]:
                    self._pending[(conn, fields[0])] = (owner, deadline, mtype, now)
                if mtype == MsgType.GROUP_ADD:
                    self._remote_holders.add(s.tag)
                elif mtype == MsgType.RECV:
                    owed = self._credit.setdefault((conn, fields[0]), [owner, 0, 0])
                    owed[0] = owner
                    owed[1] += fields[1]
                    owed[2] = self._known_incarnation(owner)
                elif mtype == MsgType.RETURN and fields[3]:  # credit withdrawn
                    self._credit.pop((conn, fields[1]), None)
        if key is not None and session is not None:
            self._send_relay(key[0], key[1], session, hops, batch, now, fx)

    def _forgotten(
        self, relays: list[tuple[str, ConnId, Session, Message, int]]
    ) -> list[tuple[str, ConnId, Session, Message, int]]:
        """Relays for another node's client forgotten in the same step (its
        node left or died, and the relays it had passed here were taken up
        just before): that client has no identity to pass them on with (a
        relay made for it as if it were this node's own carried its holder
        tag, which no peer decodes: the frame was refused on every try and
        its link stalled, simulation soak seed 138, plans/joined-node-pool-
        holds-capacity-after-reset.json). Dropped; reserved sends, which
        only this node counts (the link that brought them was acknowledged),
        are counted ``dead_owner``; give-backs are not (the owner counted
        that client's flight ``receiver_gone`` as it forgot it, and drops
        them as counted already when they come back)."""
        kept: list[tuple[str, ConnId, Session, Message, int]] = []
        lost = 0
        for relay in relays:
            conn, (mtype, fields) = relay[1], relay[3]
            if not conn.startswith(_VCONN_MARK) or conn in self._virtual:
                kept.append(relay)
            elif mtype == MsgType.SEND and not fields[0]:
                lost += 1
        self.counters["relays_for_forgotten_clients"] += len(relays) - len(kept)
        self.core.counters.dropped_dead_owner += lost
        return kept

    def _send_relay(
        self,
        owner: str,
        conn: ConnId,
        session: Session,
        hops: int,
        batch: list[Message],
        now: float,
        fx: Fx,
    ) -> None:
        virtual = self._virtual.get(conn)
        if virtual is not None:  # passing on another node's client: keep its origin
            origin, inc, client, tag, sent_at = (
                virtual.origin,
                virtual.incarnation,
                virtual.conn,
                virtual.tag,
                virtual.sent_at,  # (and its stamp: the origin's clock)
            )
        else:
            origin, inc, client, tag, sent_at = self.me, self.incarnation, conn, session.tag, now
        expiry = session.policy.expiry
        held = None
        copy = hops >= MAX_HOPS and all(m[0] == MsgType.CONSUMED for m in batch)
        if copy and virtual is None and owner in self._dead:
            # A copy of our client's report for a node declared dead here
            # (``report_to``): sent plain, on no link, a partition or packet
            # loss loses it, and what it settles stays in that node's flight
            # for good (plans/delivery-by-a-cut-off-owner-reported-to-the-
            # other.json: a stalled pool). Held until it is back in that life.
            # (no longer than its park there may last: after that it counted
            # what the copy would settle, and a late copy frees another)
            kept = self._kept_for(owner)
            if not kept.copies:
                kept.copies_until = now + self.presume_dead_after()
            held = kept.copies
        for chunk in split_batches(batch, CHUNK_BYTES):  # (a peer's frame size is bounded)
            relay = Relay(origin, inc, client, tag, expiry, hops, tuple(chunk), sent_at)
            if held is None:
                fx.peers.append((owner, relay))
            elif len(held) < MAX_GONE_UNHEARD:
                held.append(relay)

    def _conns_gone(self, conns: list[ConnId], now: float, fx: Fx) -> None:
        if self.passed.runs:  # (what their channels' owners handed on while they held it)
            self._passed_lost(self.passed.conn_gone(set(conns), now + GONE_MEMORY))
        gone = [c for c in conns if c in self._relayed_conns]
        for conn in conns:
            self._relayed_conns.discard(conn)
        if self._sent_to:
            ended_now = set(conns)
            for sent in [k for k in self._sent_to if k[0] in ended_now]:
                del self._sent_to[sent]
        if gone:
            ended = set(gone)
            for owed in [k for k in self._credit if k[0] in ended]:
                del self._credit[owed]
            for delivered in [k for k in self._delivered_by if k[0] in ended]:
                del self._delivered_by[delivered]
            self._credit_given_up = {g for g in self._credit_given_up if g[0] not in ended}
            for key in [k for k in self._pending if k[0] in ended]:
                del self._pending[key]
            fx.peers.append((EVERYONE, ConnGone(self.me, self.incarnation, tuple(gone))))
            for node in self._dead:
                # (it may only be slow or cut off, with our client's flight
                # or credit: simulation seed 244, a lagged owner kept a
                # delivery to a gone client in flight for good)
                kept = self._kept_for(node)
                if len(kept.gone) < MAX_GONE_UNHEARD:
                    kept.gone.update(gone)

    def _kept_for(self, node: str) -> _ForReturn:
        """What is kept for ``node``, declared dead here, in its life now."""
        kept = self._for_return.get(node)
        if kept is None:
            kept = self._for_return[node] = _ForReturn(self._known_incarnation(node))
        return kept

    def _told_on_return(self, event: MemberEvent, now: float, fx: Fx) -> None:
        """``event`` ends this node's holding ``event.node`` dead: if it is
        back in the same life, it is sent what was kept for it — the copies
        (while its park may last), then the client connections gone since
        (``ConnGone`` after them, on the same link); else that is dropped."""
        kept = self._for_return.pop(event.node, None)
        if kept is None:
            return
        if event.kind not in LIVE_EVENTS or not _same_life(kept.life, event.incarnation):
            self._count_refused(kept)
            return
        if now < kept.copies_until:
            fx.peers.extend((event.node, relay) for relay in kept.copies)
        fx.peers.extend((event.node, lost) for lost in kept.refused)
        self._refusals_told.update(dict.fromkeys(kept.refused))
        while len(self._refusals_told) > MAX_GONE_UNHEARD:
            del self._refusals_told[next(iter(self._refusals_told))]
        if kept.gone:
            fx.peers.append((event.node, ConnGone(self.me, self.incarnation, tuple(kept.gone))))

    # -- answers for virtual connections ---------------------------------------
    def is_virtual(self, conn: ConnId) -> bool:
        return conn in self._virtual

    @property
    def has_virtual(self) -> bool:
        return bool(self._virtual)

    def send_back(self, out: list[Out], fx: Fx, now: float) -> None:
        """Answers the core addressed to virtual connections: relay each run
        to the client's node.

        Deliveries to a client of a node this node thinks dead go out as
        plain frames (no link counts them if they are lost: ``links`` keeps
        only live peers' frames) and are parked at once, as a death parks
        what was in flight (``_forget_virtual``): its node took the relay
        that granted the credit, so it may be alive and take them (a report
        unparks them), or they are lost on the way (a partition) and counted
        ``receiver_gone`` when presumed lost. Left in flight, a handover
        of the channel dropped them uncounted (simulation seed 28)."""
        runs: dict[ConnId, list[Message]] = {}
        for conn, message in out:
            runs.setdefault(conn, []).append(message)
        for conn, messages in runs.items():
            virtual = self._virtual.get(conn)
            if virtual is None:
                continue
            for chunk in split_batches(messages, CHUNK_BYTES):
                stamps = self._stamps_of(conn, chunk)
                back = RelayBack(self.me, virtual.conn, tuple(chunk), stamps)
                fx.peers.append((virtual.origin, back))
            if any(m[0] == MsgType.DELIVER for m in messages) and self._thought_dead(virtual):
                self._park_unlinked(conn, virtual, now)

    def _stamps_of(
        self, conn: ConnId, messages: list[Message]
    ) -> tuple[tuple[str, int, str, int, int], ...]:
        """The stamps of what ``messages`` deliver to ``conn`` (in its flight
        here, with their stamps: ``Channel.stamps``, or, if the channel was
        handed over in the same step, as ``Queues.held_stamps`` kept them),
        for the client's node to refuse a delivery older than one another
        owner handed it (``Queues.from_elsewhere``). (Simulation seed
        6222's shrink: an owner that thawed delivered a producer's sends
        4-11 and handed the channel over in the same step; relayed without
        stamps, they passed the client's node after the new owner's 15-19.)"""
        out: list[tuple[str, int, str, int, int]] = []
        queues = self.core.queues
        channels = queues.channels
        for mtype, fields in messages:
            if mtype != MsgType.DELIVER:
                continue
            ch = channels.get(fields[0])
            stamps = ch.stamps if ch is not None else None
            if not stamps and (conn, fields[0]) not in queues.held_stamps:
                continue
            for item in fields[1]:
                stamp = stamps.get(item[2]) if stamps else None
                if stamp is None:
                    stamp = queues.stamp_handed(conn, fields[0], item[2], item[0])
                if stamp is not None:
                    out.append((fields[0], item[2], *stamp))
        return tuple(out)

    def _thought_dead(self, virtual: _Virtual) -> bool:
        """Whether this node has declared the life of ``virtual``'s node
        dead (frames to it then go out plain, on no link)."""
        member = self.table.member(virtual.origin)
        return (
            member is not None
            and member.state == State.DEAD
            and member.incarnation < virtual.incarnation + RESTART_GAP
        )

    def _park_unlinked(self, vconn: ConnId, virtual: _Virtual, now: float) -> None:
        client = (virtual.origin, virtual.incarnation, virtual.conn)
        self._park(client, vconn, now + self.presume_dead_after())

    def _park(self, client: _Client, vconn: ConnId, until: float, merge: bool = True) -> None:
        """Park what ``client`` (``vconn`` here) was handed of plain
        messages (``Queues.park_flight``), with what was parked for it
        before (``merge``; else in its place), and their stamps: a
        give-back puts them back with them (``_on_relay``), so a handover
        that meets them keeps each producer's order (simulation seed 9605:
        sends 1-6 given back to an owner that had parked them went after
        the producer's sends 7-14, handed over to it later, stamped)."""
        stamps = self._parked_stamps.setdefault(client, {})
        parked = self.core.queues.park_flight(vconn, stamps)
        if not parked:
            if not stamps:
                del self._parked_stamps[client]
            return
        entry = self._parked_flight.get(client) if merge else None
        if entry is not None:
            for name, seqs in parked.items():
                entry[1].setdefault(name, []).extend(seqs)
            until = max(until, entry[0])
            parked = entry[1]
        self._parked_flight[client] = (until, parked)

    def _virtual_for(self, client: _Client, tag: str, expiry: float) -> ConnId:
        vconn = self._vconn_of.get(client)
        if vconn is None:
            vconn = _VCONN_MARK + next(self._vconn_ids).to_bytes(8, "big")
            self._vconn_of[client] = vconn
            origin, inc, conn = client
            session = Session(holder_of(origin, inc, tag), 0, Policy(expiry), 0.0)
            self._virtual[vconn] = _Virtual(origin, inc, conn, session, tag)
        else:
            session = self._virtual[vconn].session
            if session.policy.expiry != expiry:
                session.policy = Policy(expiry)
        return vconn

    def _forget_virtual(
        self, client: _Client, now: float, fx: Fx, remember: bool = False, lives_on: bool = False
    ) -> None:
        """``remember``: its node was declared dead, which may be a mistake
        (it was slow, or cut off): the credit it held here is remembered,
        and granted again if the node comes back in the same life
        (``_restore_credit``). ``lives_on``: its node is in a newer life,
        which the client may have said hello to, keeping what it was
        handed (``Flow.rewelcomed``): its flight is parked, not counted, and
        its reports through the new life settle it (``_on_relay``; kill-free
        seed 6035, 6 ops: a consumer held 5 deliveries as its node left and
        restarted, and took them; counted ``receiver_gone`` as well)."""
        self._leaving.pop(client, None)
        self._grants_seen.pop(client, None)
        vconn = self._vconn_of.pop(client, None)
        if vconn is not None:
            self._answers_made(vconn, now, fx, send=remember)
            virtual = self._virtual.pop(vconn)
            if remember:
                credits = self.core.queues.credits_of(vconn)
                if credits:
                    expiry = virtual.session.policy.expiry
                    self._forgot_credit[client] = (now + GONE_MEMORY, virtual.tag, expiry, credits)
            if remember:
                # (in place of what was parked for it before, as always:
                # merged, seed 1069 of 300-1,299 overcounted 12)
                self._park(client, vconn, now + self.presume_dead_after(), merge=False)
            elif lives_on:
                self._park(client, vconn, now + self.presume_dead_after())
            counted = self.core.queues.flight_seqs(vconn)
            if counted:
                # (with what was counted for it before, as its parked
                # flight was: replaced, the give-backs of those that came
                # after were queued again and delivered, counted twice:
                # simulation seed 3791, 9 ops)
                before = self._counted_gone.get(client)
                if before is not None:
                    for name, seqs in before[1].items():
                        counted.setdefault(name, set()).update(seqs)
                self._counted_gone[client] = (now + GONE_MEMORY, counted)
            fx.out.extend(self.core.forget_conn(vconn, now))

    def _answers_made(self, vconn: ConnId, now: float, fx: Fx, send: bool) -> None:
        """What the core answered ``vconn`` earlier in this step, before its
        client was forgotten, leaves ``fx.out`` now: ``_finish`` would no
        longer know the connection, and the shell would bounce it as
        undeliverable, its deliveries given back as if an earlier owner had
        handed them: queued again, at the front and without their stamps,
        after they were counted (simulation seed 1752, 9 ops: a node thawed,
        delivered its held sends to a client of a node it declared dead in
        the same step, and they reached that client again, counted lost and
        in reverse order; seeds 5299, 8686, 9824). ``send``: its node was
        declared dead, which may be a mistake: they go to it as ``send_back``
        sends to a node thought dead (the flight is parked, and the client's
        reports unpark what it took). Otherwise its client is gone or its
        life ended: the flight is counted as it is dropped, and nothing is
        sent."""
        mine = [o for o in fx.out if o[0] == vconn]
        if not mine:
            return
        fx.out[:] = [o for o in fx.out if o[0] != vconn]
        if send:
            self.send_back(mine, fx, now)

    def _parked_news(
        self,
        client: _Client,
        messages: tuple[Message, ...],
        back: dict[str, list[int]],
        now_as: _Client | None = None,
    ) -> tuple[Message, ...]:
        """What a client whose flight is parked here says of it: reports of
        what it took (CONSUMED: the first ``count`` it was handed, up to
        ``upto``: the parked ones first, as they reached its node first;
        the rest of the count goes on, for what it was handed since) and
        give-backs (RETURN: their numbers go in ``back``, to be put back in
        the client's flight before the core takes the give-back:
        ``Queues.unpark``)."""
        parked = self._parked_flight[client][1]
        # (what it was handed since: under the life its node is in now,
        # ``now_as``, if that is a later one: ``_parked_as``)
        vconn = self._vconn_of.get(now_as or client)
        live = self.core.queues.flight_seqs(vconn) if vconn is not None else {}
        out: list[Message] = []
        for mtype, fields in messages:
            if mtype == MsgType.CONSUMED and len(fields) == 1 and isinstance(fields[0], list):
                reports = []
                for report in fields[0]:
                    if isinstance(report, list) and len(report) == 4:
                        name, upto, count, expired = report
                        seqs = parked.get(name) if isinstance(name, str) else None
                        ok = type(count) is int and type(upto) is int and type(expired) is int
                        if seqs and ok and 0 <= expired <= count:
                            # The ``count`` handed last up to ``upto``: what
                            # it took of the live flight (handed after every
                            # parked one) first, then the parked ones just
                            # before it. One handed before those that it
                            # never reports never reached it (sent plain
                            # into a partition): it stays parked, counted
                            # when the parked flight lapses. Taking the
                            # first parked ones instead freed, report by
                            # report, the one before the one it took, and
                            # the last it took stayed in flight for good
                            # (soak seed 638: a stalled pool).
                            # ``upto`` is the number of the newest it took,
                            # so a parked one of that number was taken, with
                            # the ``count - 1`` handed just before it (what
                            # it takes comes in the order handed); only if
                            # short, those handed after it with lower
                            # numbers (a give-back queued again goes out
                            # with its old number). Taking the last handed
                            # instead freed such a later one and left one it
                            # took to be counted lost (simulation seeds 336,
                            # 9 ops, and 8836, 14 ops).
                            if count > 0 and upto in seqs:
                                at = seqs.index(upto)
                                before = [i for i in range(at) if seqs[i] <= upto]
                                later = [i for i in range(at + 1, len(seqs)) if seqs[i] <= upto]
                                want = count - 1
                                pick = before[max(0, len(before) - want) :] if want > 0 else []
                                pick += later[: max(0, want - len(pick))]
                                for i in sorted((at, *pick), reverse=True):
                                    del seqs[i]
                                taken = 1 + len(pick)
                            else:
                                after = sum(1 for q in live.get(name, ()) if q <= upto)
                                upto_parked = [i for i, q in enumerate(seqs) if q <= upto]
                                taken = min(len(upto_parked), max(0, count - after))
                                if taken:
                                    end = upto_parked[-1] + 1
                                    del seqs[end - taken : end]
                            # (which were found expired is not said: the
                            # parked ones, first handed, take them first)
                            stale = min(expired, taken)
                            self.core.queues.counters.dropped_expired += stale
                            if taken == count:
                                continue  # (all of it parked here)
                            report = [name, upto, count - taken, expired - stale]
                    reports.append(report)
                out.append((mtype, (reports,)))
                continue
            out.append((mtype, fields))
            if mtype == MsgType.RETURN and len(fields) >= 4 and isinstance(fields[2], list):
                if isinstance(fields[1], str) and all(_wire_item(i) for i in fields[2]):
                    name, numbers = fields[1], [item[2] for item in fields[2]]
                    held = set(parked.get(name, ()))
                    if _unpark(parked, name, numbers):
                        back.setdefault(name, []).extend(q for q in numbers if q in held)
        for name in [n for n, seqs in parked.items() if not seqs]:
            del parked[name]
        if not parked:
            del self._parked_flight[client]
        return tuple(out)

    def relay_unheard(self, msg: Relay | RelayLost) -> None:
        """A frame carrying ``msg`` was never taken by the life it went to,
        which ended (it did not answer how far it took its link): a refusal
        told to it (``_refuse_deliveries``) is counted here, as if it had
        never come back."""
        if isinstance(msg, RelayLost) and msg in self._refusals_told:
            del self._refusals_told[msg]
            lost = sum(len(seqs) for _, seqs in msg.returned)
            self.core.counters.dropped_dead_owner += lost
            self.counters["refused_deliveries_lost"] += lost

    def takes_unheard(self, node: str, msg: Relay | RelayLost, fx: Fx) -> None:
        """A frame carrying ``msg`` to ``node`` was lost on a link given up,
        and ``node`` did not say it lives on: it never answered, or answered
        that it knows nothing of the link, as a new process at its address
        would, and as the same life does if no frame of the link reached it
        (a life that ended in place relayed its clients' reports of what
        they took into a partition: kill-free seed 116). What the client
        took is told again: the life that handed it applies it (its flight,
        or what it parked as it declared the client's node dead, which it
        would count lost); any other life skips reports of what it never
        handed (numbered below its own: ``_on_relay_lost``). Give-backs
        are not: only the life that took them may count them."""
        lost = _lost_of(msg)
        if lost is not None and lost.reports:
            self.counters["takes_told_again"] += 1
            fx.peers.append((node, replace(lost, returned=())))

    def relay_lost(self, node: str, msg: Relay | RelayLost, fx: Fx) -> None:
        """A frame carrying ``msg`` to ``node`` was lost on a link given up
        while ``node`` was thought dead, and ``node`` said it never took it
        (so it lives on, in the life the link went to: a new process could
        not have said). What it told of a client's flight there is sent
        again, or the capacity the client's takes freed stays held there
        for good, and what it gave back stays in flight (simulation seeds
        399 and 748: packet loss or a partition long enough for one node to
        declare another dead, healed into the same life)."""
        lost = _lost_of(msg)
        if lost is not None:
            self.counters["relays_lost_told_again"] += 1
            fx.peers.append((node, lost))

    def _stranger(self, node: str, msg: ClusterMessage, now: float) -> None:
        """``node`` is not in the member table, yet it knows this node: it
        joined, or came back in a new life, and its gossip has not reached
        us (a healed partition: its relays and handovers go as soon as it
        sees us). What it sends is held, in order, until it is a member
        (``on_member_event``), for at most the answer bound; then dropped,
        and what only it would have counted is counted here (simulation
        seed 468: a receive's credit, granted as the partition healed by a
        node the new owner had never heard of, was dropped and the channel
        stalled for good)."""
        entry = self._strangers.get(node)
        if entry is None:
            entry = self._strangers[node] = (now + self.answer_within(), [])
        held = entry[1]
        if len(held) >= MAX_STRANGER_HELD:
            self._drop_strangers([(msg, now)])
            return
        held.append((msg, now))

    def _drop_strangers(self, held: list[tuple[ClusterMessage, float]]) -> None:
        """Messages from a node that never became a member: dropped; what
        they carried that nobody else counts (reserved sends, give-backs,
        handed-over items: their senders' links did not carry them, so
        count nothing) is counted ``dead_owner`` here."""
        self.counters["from_strangers"] += len(held)
        lost = 0
        for msg, _arrived in held:
            if isinstance(msg, Handoff):
                lost += sum(len(items) for _, items in msg.channels)
            elif isinstance(msg, Relay | RelayLost):
                lost += _given_back(msg)
                if isinstance(msg, Relay):
                    lost += sum(1 for t, f in msg.messages if t == MsgType.SEND and not f[0])
        self.core.counters.dropped_dead_owner += lost

    def _take_strangers(self, node: str, now: float, fx: Fx) -> None:
        """``node`` is a member now: what it sent before is taken up, in
        order, its times left aged by how long it was held (a handover's
        items are as old as they were: simulation seed 46, a keeper's
        handback held 1 s, merged by deadline after newer sends)."""
        entry = self._strangers.pop(node, None)
        if entry is not None:
            self.counters["from_strangers_held"] += len(entry[1])
            for msg, arrived in entry[1]:
                self.handle(aged(msg, now - arrived) or msg, now, fx)

    def _on_relay_lost(self, msg: RelayLost) -> None:
        """What a client did with its flight here, told again after a link
        lost it (``relay_lost``): its takes release capacity (the first in
        flight: later reports released the oldest in their place), and what
        it gave back is counted lost, not queued again (newer messages of
        the channel may have gone out since): exactly once, as it leaves
        the flight here, or the parked flight, or was handed by an earlier
        owner; not what was counted as the client was forgotten. (From a
        node not yet a member it waits: ``handle``.)"""
        client = (msg.origin, msg.incarnation, msg.conn)
        conn: ConnId | None
        if msg.origin == self.me:
            known = msg.incarnation == self.incarnation
            conn = msg.conn if known and msg.conn in self.core.sessions.by_conn else None
        else:
            # (a later life of its node that serves no such client yet
            # tells what the client took of an earlier one's deliveries:
            # ``reports_unheard``; a give-back told again is of the life
            # that relays it, which serves it: 10,000 seed 2301, a stall
            # when it was taken for the earlier life's too)
            if client not in self._vconn_of and client not in self._parked_flight:
                client = self._parked_as(*client) or self._known_as(*client)
            conn = self._vconn_of.get(client)
        queues = self.core.queues
        entry = self._parked_flight.get(client)
        parked = entry[1] if entry is not None else {}
        for name, upto, count, expired in msg.reports:
            if queues.before_flush(name, upto):
                continue  # (the flush took what it names)
            if upto < queues.first_seq:
                # (of what an earlier life of this node handed: told again
                # to whoever answers at its address, ``takes_unheard``; it
                # settles only what that life parked, if its held record
                # left it here: ``inherit_parked``)
                kept = parked.get(name, [])
                earlier = [q for q in kept if q < queues.first_seq][:count]
                for q in earlier:
                    kept.remove(q)
                queues.counters.dropped_expired += min(expired, len(earlier))
                continue
            seqs = parked.get(name)
            if seqs:
                taken = min(count, len(seqs))
                del seqs[:taken]
                stale = min(expired, taken)
                queues.counters.dropped_expired += stale
                count, expired = count - taken, expired - stale
            if conn is not None and count > 0:
                queues.consumed_late(conn, name, count, expired)
        counted = self._counted_gone.get(client)
        lost = 0
        for name, numbers in msg.returned:
            skip = counted[1].get(name, set()) if counted is not None else set()
            fresh = [q for q in numbers if q not in skip]
            if parked.get(name):
                _unpark(parked, name, fresh)
            if conn is not None:
                queues.drop_flight(conn, name, fresh)
            lost += len(fresh)
        for name in [n for n, seqs in parked.items() if not seqs]:
            del parked[name]
        if entry is not None and not parked:
            del self._parked_flight[client]
        if lost:
            self.core.counters.dropped_dead_owner += lost
            self.counters["returns_lost_on_links"] += lost

    def never_delivered(
        self,
        notes: list[Undelivered],
        now: float,
        fx: Fx | None = None,
        answered: list[bool] | None = None,
    ) -> None:
        """Deliveries to other nodes' clients that those nodes never took
        (their links ended first: ``links``): those parked here are lost,
        and counted now; what was not parked was counted already, unless it
        is still in the flight of a client this node serves (``fx``: not
        as the process ends): that client's node is alive in a newer life
        than the link's, which this node's routing heard of (a relay) before
        its member table and links did, so the frame went to the life
        before, which ended and did not take it (simulation seed 5799 without
        kills: a delivery to a client of a node that had ended its life in
        place, never taken, and the channel's pool held it for good). Those
        go back to the queue where their numbers say, their credit with
        them, and are delivered again (on the link to the newer life once
        this node knows it).

        ``answered``: for each note, whether the peer said how far it took
        the link (else that is presumed). One it said it never took, of
        a channel this node no longer holds in that client's flight
        (parked, in flight, or counted as the client was forgotten), went
        to a handover: a handover leaves flight behind (``Queues.take``),
        for the client's node to answer for once the credit comes back
        with it, and that came in the same lost frames. Nobody holds them:
        counted lost here (``dead_owner``; simulation seed 7403, 7 ops
        without kills: an owner handed the channel to a node that joined
        while its 4 deliveries and the credit were on a link that a reset
        broke)."""
        for index, (node, conn, items) in enumerate(notes):
            seqs = _seqs_of(items)
            if fx is not None and answered is not None and answered[index]:
                self._count_unsent(node, conn, seqs)
            for client in [c for c in self._parked_flight if c[0] == node and c[2] == conn]:
                parked = self._parked_flight[client][1]
                lost = sum(_unpark(parked, name, numbers) for name, numbers in seqs.items())
                if lost:
                    self.core.queues.counters.dropped_receiver_gone += lost
                    self.counters["parked_flight_lost"] += lost
                if not parked:
                    del self._parked_flight[client]
            if fx is not None:
                self._deliver_again(node, conn, items, now, fx)

    def _parked_or_counted(self, node: str, conn: bytes) -> dict[str, set[int]]:
        """Channel -> the numbers of what ``node``'s client ``conn`` was
        handed here that is parked, or was counted as it was forgotten."""
        out: dict[str, set[int]] = {}
        for book in (self._parked_flight, self._counted_gone):
            for client, (_, numbers) in book.items():
                if client[0] == node and client[2] == conn:
                    for name, seqs in numbers.items():
                        out.setdefault(name, set()).update(seqs)
        return out

    def _count_unsent(self, node: str, conn: bytes, seqs: dict[str, list[int]]) -> None:
        """``never_delivered``'s count of deliveries no flight here holds."""
        held = self._parked_or_counted(node, conn)
        queues = self.core.queues
        for (origin, _inc, client_conn), vconn in self._vconn_of.items():
            if origin == node and client_conn == conn:
                for name, in_flight in queues.flight_seqs(vconn).items():
                    held.setdefault(name, set()).update(in_flight)
        lost = 0
        for name, numbers in seqs.items():
            if queues.before_flush(name, max(numbers, default=0)):
                continue  # (a flush took them)
            # (numbered below this life's first: an earlier life of this
            # node handed them, which ended in place; counted here if it
            # had them in flight, not parked: its count has what it parked,
            # simulation seed 190, and not what it had in flight, seed 5404)
            skip = held.get(name, set())
            ended = self._ended_flight.get((node, conn), {}).get(name, set())
            for q in numbers:
                if q >= queues.first_seq:
                    lost += q not in skip
                elif q in ended:
                    ended.discard(q)
                    lost += 1
        if lost:
            self.core.counters.dropped_dead_owner += lost
            self.counters["unsent_after_handover"] += lost

    def _deliver_again(
        self, node: str, conn: bytes, items: dict[str, list[Any]], now: float, fx: Fx
    ) -> None:
        """``never_delivered``'s give-back: the items still in the flight of
        ``node``'s client ``conn`` here go back to their queues."""
        queues = self.core.queues
        for (origin, _inc, client_conn), vconn in list(self._vconn_of.items()):
            if origin != node or client_conn != conn:
                continue
            in_flight = queues.flight_seqs(vconn)
            for name, listed in items.items():
                held = in_flight.get(name, ())
                back = [item for item in listed if item[2] in held]
                if not back:
                    continue
                self.counters["deliveries_given_back_unsent"] += len(back)
                deliveries = queues.give_back(vconn, name, back, now, withdraw=False)
                deliveries += queues.grant(vconn, name, len(back), now)
                self.core.deliver(deliveries, fx.out)

    def lost_at_exit(self, notes: list[Undelivered], now: float) -> int:
        """This process ends (``ClusterNode.gone``): deliveries to other
        nodes' clients whose frames those nodes never took (a leave into a
        partition) are lost with it. Those parked are counted as
        ``never_delivered`` counts them; the rest were in flight, which
        nothing else counts (a load report counts what is queued, and a
        handover leaves flight behind: ``Queues.take``): counted
        ``dead_owner`` now, but not what was counted when their client was
        forgotten, nor what is no longer in its flight here: the client
        reported it taken or gave it back, so its node took the frame, and
        only the acknowledgement was lost (kill-free simulation seed 744, 7
        ops: an owner left while 30 % packet loss took its link's
        acknowledgements; the client had taken all 6 deliveries, and they
        were counted lost as the process ended). Returns how many messages
        that was."""
        before = self.core.queues.counters.dropped_receiver_gone
        queues = self.core.queues
        lost = 0
        for node, conn, items in notes:
            seqs = _seqs_of(items)
            known = self._parked_or_counted(node, conn)
            flying: dict[str, set[int]] = {}
            for (origin, _inc, client_conn), vconn in self._vconn_of.items():
                if origin == node and client_conn == conn:
                    for name, in_flight in queues.flight_seqs(vconn).items():
                        flying.setdefault(name, set()).update(in_flight)
            # (and what a handover left in nobody's flight: a leave hands
            # every channel on first; seed 263, plans/leave-into-partition-
            # delivery-in-flight.json)
            handed_on = self._handed_flight.get((node, conn))
            for name, numbers in handed_on[1].items() if handed_on is not None else ():
                flying.setdefault(name, set()).update(numbers)
            for name, handed in seqs.items():
                skip = known.get(name, set())
                here = flying.get(name, set())
                lost += sum(1 for q in handed if q in here and q not in skip)
        self.never_delivered(notes, now)
        self.core.counters.dropped_dead_owner += lost
        self.counters["undelivered_at_exit"] += lost
        return lost + self.core.queues.counters.dropped_receiver_gone - before

    def _remember_handed(self, vconn: ConnId, name: str, seqs: set[int], now: float) -> None:
        """``handoff`` left what this node had handed ``vconn``'s client of
        ``name`` (``seqs``) in nobody's flight here: if a frame of it is
        never taken, it is still this node's to count at its exit
        (``lost_at_exit``)."""
        virtual = self._virtual[vconn]
        key = (virtual.origin, virtual.conn)
        entry = self._handed_flight.get(key)
        book = entry[1] if entry is not None else {}
        book.setdefault(name, set()).update(seqs)
        self._handed_flight[key] = (now + GONE_MEMORY, book)

    def _count_parked(self, client: _Client, now: float) -> None:
        """``client``'s parked flight is lost (counted ``receiver_gone``)."""
        entry = self._parked_flight.pop(client, None)
        if entry is None:
            return
        lost = sum(len(seqs) for seqs in entry[1].values())
        self.core.queues.counters.dropped_receiver_gone += lost
        self.counters["parked_flight_lost"] += lost
        counted = self._counted_gone.setdefault(client, (now + GONE_MEMORY, {}))[1]
        for name, seqs in entry[1].items():
            counted.setdefault(name, set()).update(seqs)

    def count_parked_at_exit(self, now: float) -> int:
        """This process ends: every parked flight is counted lost
        (``receiver_gone``), as its lapse would have. Returns how many."""
        lost = self.parked_count()
        for client in list(self._parked_flight):
            self._count_parked(client, now)
        return lost

    def gone_flight(self, msgs: Iterable[ClusterMessage]) -> int:
        """What this life handed the clients ``msgs`` say are gone
        (``ConnGone``) and still holds in their flight: for a life ending in
        place with those messages unread (``ClusterNode._fence``), lost, and
        its to count (their nodes told it, and count nothing)."""
        held = list(msgs)
        # (what their nodes gave back before saying so is counted with the
        # give-backs the life held: ``ClusterNode._fence``)
        back: dict[_Client, set[tuple[str, int]]] = {}
        for msg in held:
            if isinstance(msg, Relay):
                for mtype, fields in msg.messages:
                    if mtype == MsgType.RETURN and all(_wire_item(i) for i in fields[2]):
                        given = back.setdefault((msg.origin, msg.incarnation, msg.conn), set())
                        given.update((fields[1], item[2]) for item in fields[2])
        lost = 0
        clients = gone_clients(held)
        for client in clients:
            vconn = self._vconn_of.get(client)
            if vconn is None:
                continue
            returned = back.get(client, set())
            for name, in_flight in self.core.queues.flight_seqs(vconn).items():
                lost += sum(1 for q in in_flight if (name, q) not in returned)
        return lost

    def flight_to_others(self, gone: set[_Client]) -> ClientFlights:
        """What this life has in flight to other nodes' clients, by (node,
        client connection), but those in ``gone``: for a life ending in
        place, which counts none of it (the client may take it; its node
        answers for it then, ``Passed.source_seen``)."""
        out: ClientFlights = {}
        queues = self.core.queues
        for client, vconn in self._vconn_of.items():
            if client in gone:
                continue
            flight = queues.flight_seqs(vconn)
            if flight:
                mine = out.setdefault((client[0], client[2]), {})
                for name, seqs in flight.items():
                    mine.setdefault(name, set()).update(seqs)
        return out

    def ended_flight(self, flight: ClientFlights, now: float) -> None:
        """The life before this one ended in place with ``flight`` to other
        nodes' clients (``flight_to_others``): if a frame that carried some
        of it is found never taken (``never_delivered``), no client has it
        and no count does: counted then."""
        self._ended_flight = flight
        self._ended_flight_until = now + GONE_MEMORY

    def told_ended_life(self, msgs: list[ClusterMessage]) -> int:
        """``ConnGone`` that came for the life before this one, which ended
        in place before it read them (``links`` refused them): what that
        life had in flight to those clients (``ended_flight``) no client
        holds, and no count has (their nodes told that life, and count
        nothing; it counted only the ``ConnGone`` it held unread,
        ``gone_flight``). Counted here, ``receiver_gone``, once: a copy finds
        nothing left. Simulation seed 7980, 8 ops: a consumer of another
        node died holding 4 deliveries of this frozen owner, whose thaw
        refuted its death, so its peer sent the ``ConnGone``, but it ended
        the life in the same step. (A ``RelayLost`` for that life is its
        sender's to count, if it counts it at all: a refusal,
        ``relay_unheard``.)"""
        gone = 0
        for origin, _inc, conn in gone_clients(msgs):
            flight = self._ended_flight.pop((origin, conn), None)
            if flight:
                gone += sum(len(seqs) for seqs in flight.values())
        if gone:
            self.core.queues.counters.dropped_receiver_gone += gone
            self.counters["gone_to_ended_life"] += gone
        return gone

    def settle_parked_held(self, msgs: Iterable[ClusterMessage]) -> None:
        """For a life ending in place (``ClusterNode._fence``), before it
        counts what it parked: what the clients of those parks said in the
        relays it held unread. A report of a take settles the deliveries it
        names (taken, not lost); a give-back takes them out of the park
        (the fence counts held give-backs lost once, as ``returned``).
        Kill-free simulation seed 6966 (27 ops): a frozen owner had parked 4
        deliveries for a client of a node it held dead, and held that
        client's report of taking all 4 when it ended its life: counted
        lost, and taken."""
        for msg in msgs:
            if isinstance(msg, Relay) and self._parked_flight:
                client = (msg.origin, msg.incarnation, msg.conn)
                parked_as = self._parked_as(*client)
                if parked_as is not None:
                    self._parked_news(parked_as, msg.messages, {}, client)

    def parked_carry(self) -> ParkedCarry:
        """What is parked here, for the held record (``ClusterNode.
        held_record``): per client of another node, the numbers of what this
        life handed it of each channel."""
        return tuple(
            (node, inc, conn, tuple((name, tuple(seqs)) for name, seqs in sorted(parked.items())))
            for (node, inc, conn), (_, parked) in sorted(self._parked_flight.items())
            if any(parked.values())
        )

    def inherit_parked(self, parked: ParkedCarry, now: float) -> int:
        """The process before this one, SIGKILLed, had parked ``parked``
        (its held record): they wait here as they waited there, settled by
        what the clients' nodes say they took (their reports told again to
        whoever answers at this address, ``takes_unheard``, or a copy of a
        report, ``report_to``) and counted lost (``receiver_gone``) if the
        park lapses. Counted whole with the record, what a client took was
        counted lost and taken (seed 518's shrink, 6 ops: a partition cut an
        owner off from the client it had handed 4 deliveries, and it was
        killed; the client took them; 7 of the 26 failing seeds of 0..999
        had a park at a kill, and 3 of them pass since). Returns how
        many."""
        until = now + self.presume_dead_after()
        inherited = 0
        for node, inc, conn, channels in parked:
            entry = self._parked_flight.get((node, inc, conn))
            book = entry[1] if entry is not None else {}
            for name, seqs in channels:
                book.setdefault(name, []).extend(seqs)
                inherited += len(seqs)
            if book:
                self._parked_flight[(node, inc, conn)] = (until, book)
        return inherited

    def parked_count(self) -> int:
        """Messages parked (for a fence: lost with this life)."""
        return sum(len(s) for _, parked in self._parked_flight.values() for s in parked.values())

    def _stale_returns(self, msg: Relay) -> int:
        """Messages a receiver gave back in a relay from an earlier life of
        its node, refused here, that no node counts unless this one does:
        the life that relayed them counts nothing it passed on to an owner
        (a give-back is not its to count), and this node had not handed
        them to that client (what it had was counted as it forgot the
        client: ``_not_again`` leaves those out). Simulation seed 148: a
        receiver gave back to its node as the node left, the relay reached
        the next owner frozen, which thawed knowing the node's next life.
        Not queued again instead: by now newer messages may have gone out."""
        client = (msg.origin, msg.incarnation, msg.conn)
        if client in self._counted_gone:
            msg = replace(msg, messages=self._not_again(client, msg.messages))
        return _given_back(msg)

    def _not_again(self, client: _Client, messages: tuple[Message, ...]) -> tuple[Message, ...]:
        """What ``client`` gives back that was counted lost as it was
        forgotten here (deliveries on their way to it then, bouncing off it
        now) is dropped, not queued again: counted, it must not be delivered
        too. What was handed to it by another owner (before a handover)
        was counted nowhere and goes back as usual."""
        counted = self._counted_gone[client][1]
        out: list[Message] = []
        for mtype, fields in messages:
            # (a malformed one goes on as it is: the core refuses and counts it)
            ok = mtype == MsgType.RETURN and len(fields) >= 4 and isinstance(fields[2], list)
            seqs = counted.get(fields[1]) if ok and isinstance(fields[1], str) else None
            if seqs and all(_wire_item(i) for i in fields[2]):
                req, channel, items, withdraw = fields[:4]
                index = [i for i, item in enumerate(items) if item[2] not in seqs]
                kept = [items[i] for i in index]
                for item in items:
                    seqs.discard(item[2])
                self.counters["returns_counted_already"] += len(items) - len(kept)
                given = fields[4] if len(fields) > 4 else ()
                fields = (req, channel, kept, withdraw)
                if given:
                    # (the stamps of what is kept, by their new places)
                    place = {old: new for new, old in enumerate(index)}
                    stamps = tuple((place[s[0]], *s[1:]) for s in given if s[0] in place)
                    if stamps:
                        fields = (*fields, stamps)
            out.append((mtype, fields))
        return tuple(out)

    # -- peer messages -----------------------------------------------------------
    def handle(self, msg: ClusterMessage, now: float, fx: Fx, linked: bool = False) -> None:
        """One of routing's peer messages (already checked by the codec);
        ``linked``: it came on a link (its sender thought this node's life
        alive when it sent it)."""
        sender = _sender_of(msg)
        if sender is not None and not self._member(sender):
            self._stranger(sender, msg, now)
            return
        match msg:
            case Relay():
                self._on_relay(msg, now, fx)
            case RelayLost():
                self._on_relay_lost(msg)
            case RelayBack():
                self._on_relay_back(msg, now, fx, linked)
            case ConnGone():
                for conn in msg.conns:
                    self._count_parked((msg.origin, msg.incarnation, conn), now)
                    self._forget_virtual((msg.origin, msg.incarnation, conn), now, fx)
            case HolderGone():
                for tag in msg.sessions:
                    self.core.groups.drop_holder(holder_of(msg.origin, msg.incarnation, tag))
            case Handoff():
                self._on_handoff(msg, now, fx)
            case Reservations():
                self._on_reservations(msg, now)
            case Ask():
                self._on_ask(msg, now, fx)
            case Answer():
                self._on_answer(msg, fx)
            case Load():
                if msg.origin in self._live and msg.origin != self.me:
                    load = dict(msg.load)
                    at = load.pop("at", None)
                    if isinstance(at, float):
                        self._lag(msg.origin, at, now)  # (a clock sample every second)
                    fenced = load.pop("fenced", None)
                    crashed = load.pop("crashed", None)
                    counted = load.pop("counted", ())
                    if "tallied" in load:  # (its "counted" is for older peers)
                        for node, life, no, total in load.pop("tallied"):
                            self._counted_by_other(node, life, now, no, total)
                    else:
                        for node, life in counted:
                            self._counted_by_other(node, life, now)
                    for node, life, no, lost in load.pop("held", ()):
                        self._heard_held(node, life, no, lost, now)
                    for node, life in load.pop("left", ()):
                        self._left_elsewhere_said(node, life, now)
                    if msg.origin in self._earlier:
                        self._heard_after_earlier(msg.origin, now)
                    self._settle_death(msg.origin, fenced or crashed, now)
                    self._settle_deferred(now)
                    if msg.origin in self._credit_for_new_life:
                        self._regrant(msg.origin, now, fx)
                    back = self._restore_after_load.pop(msg.origin, None)
                    if back is not None:
                        ended = fenced[0] if fenced is not None else None
                        self._restore_credit(msg.origin, back, ended, now, fx)
                    self.loads[msg.origin] = load
                elif msg.origin != self.me:
                    # A life declared dead here that left (its report after
                    # its handover says so): its LEFT was lost (a partition),
                    # its frames, sent again, came. It counts, as it ends,
                    # what peers did not acknowledge; what they did, they
                    # took (simulation seed 19's shrink, plans/leave-into-
                    # partition-report-after-handover-says-it-left.json).
                    for node, life in msg.load.get("left", ()):
                        if node == msg.origin:
                            self._left_elsewhere_said(node, life, now)

    def _credit_copy(self, msg: Relay) -> bool:
        """Whether ``msg`` is a copy of credit grants taken already: a node
        that sent a client's credit plain to this node before it heard this
        node's hello sends it again on the link once it has
        (``ClusterNode._credit_again``), as it was. The grants of each
        client's last relays are remembered (``_GRANTS_KEPT``), until the
        client is forgotten here (``_forget_virtual``: after that, its
        credit here is gone, and a copy grants it again)."""
        if msg.hops != 1:  # (only a client's own grant, straight from its node, is copied)
            return False
        grants = grants_of(msg.messages)
        if not grants:
            return False
        seen = self._grants_seen.setdefault((msg.origin, msg.incarnation, msg.conn), {})
        key = (msg.sent_at, grants)
        if key in seen:
            if len(grants) == len(msg.messages):
                self.counters["credit_copies_dropped"] += 1
                return True
            return False
        seen[key] = None
        if len(seen) > _GRANTS_KEPT:
            del seen[next(iter(seen))]
        return False

    def _hold(self, msg: Relay, now: float) -> bool:
        """Whether a relay that came straight from its origin waits (then
        it is kept, and taken up ``hold`` after the change, in order): it
        sends to a channel that became this node's ``hold`` ago or less
        (or one whose sends wait already, behind them). A send the same
        client made just before may have reached the previous owner after
        it handed the channel here, and be passed on (two hops): queued
        after this one, it would break the client's order (simulation
        plans/drain-relays-passed-on-overtaken, rolling seed 1111; seen in
        a loaded real rolling restart too). Passed-on relays are not held.
        All of them are taken up, in order, ``hold`` after the change."""
        if msg.hops != 1 or msg.origin == self.me:  # (1: straight from the origin)
            return False
        source = (msg.origin, msg.conn)
        if source in self._relay_sources:
            # (behind a relay of the same client held here: its reports,
            # give-backs and credit keep their order with its sends; a
            # report taken before an earlier one releases the wrong
            # message: rolling seed 941)
            self._held_relays.append(msg)
            return True
        sends = {f[1] for m, f in msg.messages if m == MsgType.SEND}
        if not sends:
            return False
        behind = bool(self._held_relays) and not sends.isdisjoint(self._relay_channels)
        if not behind:  # (else it waits behind the relays held for those channels)
            before = self._before
            if before is None or now >= before[1]:
                return False
            moved = {c for c in sends if before[0].owner(c) != self.me and self.route(c) is None}
            if not moved:
                return False
            self._relay_channels |= moved
            self._relays_until = max(self._relays_until, before[1])
        self._held_relays.append(msg)
        self._relay_sources.add(source)
        return True

    def hold_local(self, conn: ConnId, messages: list[Message], now: float) -> bool:
        """Whether a frame of our own client waits (then it is kept, and
        taken up ``hold`` later, in order, with what follows it from that
        client): it sends to a channel that became this node's ``hold`` ago
        or less, and that client's previous send to it was relayed to
        another node just before, which may pass it back here (two hops):
        queued first, this one would overtake it. (``_hold`` does the same
        for sends relayed here straight from other nodes.)"""
        if conn in self._held_conns:
            self._held_frames.append((conn, messages))
            return True
        before = self._before
        if before is None or now >= before[1] or not self._sent_to:
            return False
        for mtype, fields in messages:
            if mtype != MsgType.SEND:
                continue
            sent = self._sent_to.get((conn, fields[1]))
            if (
                sent is not None
                and sent[0] != self.me
                and now - sent[1] < 2 * self.hold
                and self.route(fields[1]) is None
            ):
                self._held_frames.append((conn, messages))
                self._held_conns.add(conn)
                self._frames_until = max(self._frames_until, now + self.hold)
                return True
        return False

    def held_client_frames(self) -> list[tuple[ConnId, list[Message]]]:
        """Our clients' frames held (``hold_local``), not taken up yet."""
        return self._held_frames

    def _take_held_frames(self, now: float, fx: Fx) -> None:
        frames, self._held_frames = self._held_frames, []
        self._held_conns = set()
        self.counters["client_frames_held"] += len(frames)
        for conn, messages in frames:
            fx.out.extend(self.core.handle(conn, messages, now, fx.work))

    def held_relays(self) -> list[Relay]:
        """Relays held (``_hold``), in arrival order (a fence counts them)."""
        return list(self._held_relays)

    def _take_held(self, now: float, fx: Fx) -> None:
        held, self._held_relays = self._held_relays, []
        self._relay_channels = set()
        self._relay_sources = set()
        self.counters["relays_held"] += len(held)
        for msg in held:
            self._on_relay(msg, now, fx, held=True)

    def _on_relay(self, msg: Relay, now: float, fx: Fx, held: bool = False) -> None:
        origin, inc, conn = msg.origin, msg.incarnation, msg.conn
        if not self._member(origin):
            self.counters["from_strangers"] += 1  # not a member: nothing to serve
            return
        if not held and self._hold(msg, now):
            return  # (taken up at the routing's tick, in order)
        if inc < self._known_incarnation(origin) - RESTART_GAP:
            self.counters["stale_relay"] += 1  # from a node's earlier life
            self.core.counters.dropped_dead_owner += self._stale_returns(msg)
            # (and its reserved sends: its link took the frame, so the life
            # that relayed them counts nothing; its requests it answered, or
            # its clients' next life did: outcome unknown. Simulation plan
            # group-send-to-a-membership-held-at-two-nodes-as-its-owner-came-
            # back-taken-twice, on the held record's code: a leaver's last
            # relay of 4 reserved sends reached n4 after its next life had)
            self._refuse_sends(msg.messages, "stale_sends_refused")
            return
        if self._credit_copy(msg):
            return
        messages = msg.messages
        if self._lag(origin, msg.sent_at, now) > self.fresh_within():
            # The origin has stopped waiting for these sends (or soon will):
            # it answers its client and counts them lost; taking them now
            # would deliver a message counted lost, after newer ones.
            messages = self._refuse_sends(messages, "late_sends_refused")
        if self._held_dead(origin, inc):
            messages = self._refuse_sends(messages, "sends_from_dead_refused")
        if origin == self.me:
            # Our own client's messages came back to us (a handover, or hops
            # while views differed): handle them as its, on its connection.
            session = self.core.sessions.by_conn.get(conn)
            if inc != self.incarnation or session is None:
                self.counters["relay_for_gone_client"] += 1
                return
            # Answered from here now (or relayed anew, which waits anew): no
            # longer wait for the node they went to, else at its deadline
            # we answer a second time and count a delivered send as lost.
            for mtype, fields in messages:
                if mtype in _ANSWERED and fields[0]:
                    self._pending.pop((conn, fields[0]), None)
            fx.out.extend(self.core.handle_relayed(conn, session, messages, msg.hops, now, fx.work))
            return
        if self._has_left and msg.hops >= MAX_HOPS:
            # Credit granted here to keep whatever this node's view (sent
            # before its leave was heard): this node will own nothing again,
            # and credit kept here ends with its process. It goes back
            # through the client's node, which grants it where the channel
            # lives (simulation seed 957: kept by a node that lingered after
            # its leave, the receive waited for good on the node's next life,
            # where the channel's messages were queued).
            back = grants_of(messages)
            if back:
                self.counters["credit_handed_back_after_leave"] += len(back)
                fx.peers.append((origin, RelayBack(self.me, conn, back)))
                messages = tuple(m for m in messages if m[0] != MsgType.RECV)
        if self._held_gone(origin, inc):
            messages = self._credit_from_gone((origin, inc, conn), msg, messages, now)
            if not messages:
                return
        unparked: dict[str, list[int]] = {}
        parked_as = self._parked_as(origin, inc, conn) if self._parked_flight else None
        if parked_as is not None:
            messages = self._parked_news(parked_as, messages, unparked, (origin, inc, conn))
        if (origin, inc, conn) in self._counted_gone:
            messages = self._not_again((origin, inc, conn), messages)
        vconn = self._virtual_for((origin, inc, conn), msg.tag, msg.expiry)
        for name, numbers in unparked.items():
            # A give-back of what this node handed the client and parked:
            # its own messages, put back where their numbers say (taken by
            # the core there only if the channel is still this node's).
            if self.route(name) is None:
                stamps = self._parked_stamps.get(parked_as or (origin, inc, conn), {})
                self.core.queues.unpark(vconn, name, numbers, stamps)
        virtual = self._virtual[vconn]
        virtual.sent_at = msg.sent_at
        fx.out.extend(
            self.core.handle_relayed(vconn, virtual.session, messages, msg.hops, now, fx.work)
        )
        if msg.hops >= MAX_HOPS:
            self._sweep_soon(now)  # kept here whoever owns it: check once views settle

    def _known_as(self, origin: str, inc: int, conn: ConnId) -> _Client:
        """``origin``'s client ``conn`` as this node serves it: in life
        ``inc``, or else the latest earlier life it serves it in."""
        if (origin, inc, conn) in self._vconn_of:
            return (origin, inc, conn)
        earlier = [c for c in self._vconn_of if c[0] == origin and c[2] == conn and c[1] < inc]
        return max(earlier, default=(origin, inc, conn))

    def reports_unheard(self, conn: ConnId, messages: list[Message], fx: Fx) -> None:
        """Consumption reports of a connection this life does not know: a
        client that took, while this node was down, what the life before
        passed on to it, and reported it into the socket that life never
        read again (this life reads it before the client's hello, and the
        client does not report it again: ``Flow.rewelcomed``). They name the
        owners' numbers: told to each owner (``RelayLost``), they settle what
        it parked for that client as its node's life ended (``lives_on``;
        simulation plans/report-of-deliveries-taken-while-its-node-was-
        down-lost-before-hello.json)."""
        by_owner: dict[str, list[tuple[str, int, int, int]]] = {}
        for mtype, fields in messages:
            if mtype == MsgType.HELLO:
                break  # (what follows is the new session's)
            if mtype != MsgType.CONSUMED or len(fields) != 1 or not isinstance(fields[0], list):
                continue
            for r in fields[0]:
                if consumption_report(r):
                    owner = self.route(r[0])
                    if owner:
                        by_owner.setdefault(owner, []).append((r[0], r[1], r[2], r[3]))
        for owner, reports in by_owner.items():
            self.counters["reports_of_unknown_passed_on"] += len(reports)
            fx.peers.append((owner, RelayLost(self.me, self.incarnation, conn, tuple(reports), ())))

    def _parked_as(self, origin: str, inc: int, conn: ConnId) -> _Client | None:
        """Under which life the flight of ``origin``'s client ``conn`` is
        parked here: its own, or an earlier life of its node (the client
        said hello to the next one, keeping what it held: ``lives_on``)."""
        if (origin, inc, conn) in self._parked_flight:
            return (origin, inc, conn)
        for client in self._parked_flight:
            if client[0] == origin and client[2] == conn and client[1] + RESTART_GAP <= inc:
                return client
        return None

    def _held_dead(self, origin: str, inc: int) -> bool:
        """Whether this node holds ``origin``'s life ``inc`` dead."""
        member = self.table.member(origin)
        return member is not None and member.state == State.DEAD and member.incarnation >= inc

    def _refuse_sends(self, messages: tuple[Message, ...], counter: str) -> tuple[Message, ...]:
        """``messages`` without their sends, counted under ``counter``:
        too late (``fresh_within``), or from a life of a node this node
        holds dead, which holds this node dead too or soon will (the two
        were cut off from each other) and serves the channels it gave this
        one in its own view (``sends_from_dead_refused``: a send it relayed
        before it declared this node dead and that reached this node
        afterwards was taken here after its client's newer sends were
        served there; simulation seeds 6236 and 2661 of the 10,000: sends
        2-4 delivered by the client's node as the channel's owner in its
        view, send 1, relayed to this node 0.3 s before over a lagging link,
        delivered after them). Either way the origin answers its client
        that the outcome is unknown (by the answer bound at the latest); a
        reserved send (request 0) has no answer to wait for, its origin
        counts nothing, so it is counted here (``dead_owner``), once."""
        refused = [m for m in messages if m[0] == MsgType.SEND]
        if not refused:
            return messages
        self.counters[counter] += len(refused)
        self.core.counters.dropped_dead_owner += sum(1 for m in refused if not m[1][0])
        return tuple(m for m in messages if m[0] != MsgType.SEND)

    def _held_gone(self, origin: str, inc: int) -> bool:
        """Whether this node holds ``origin``'s life ``inc`` dead or left
        (its clients there were forgotten as it heard)."""
        member = self.table.member(origin)
        return (
            member is not None
            and member.state in (State.DEAD, State.LEFT)
            and member.incarnation >= inc
        )

    def _credit_from_gone(
        self, client: _Client, msg: Relay, messages: tuple[Message, ...], now: float
    ) -> tuple[Message, ...]:
        """A receiver's credit relayed from a life of its node that this
        node holds dead or left is not granted: that life's clients were
        forgotten here as the death was heard, and a connection made for it
        now would never be (10,000 soak seed 4054: a RECV of a node's
        earlier life reached a node that held it dead after four hops, the
        channel's group copies went to that node's address, where the next
        life, whose client had reconnected under the same connection id and
        held its own copy, handed them on: a group message taken twice).
        Kept as a forgotten client's credit is, and granted if that life is
        back after all (a refuted death, ``_restore_credit``): what is
        refused may be the very grant its node made anew as it heard of the
        death (``_declared_dead``), arriving before its refutation (kill-free
        seed 11)."""
        kept: list[Message] = []
        refused: dict[str, int] = {}
        for mtype, fields in messages:
            if mtype == MsgType.RECV and fields[1] > 0:  # (well-formed: ``decode_peer``)
                refused[fields[0]] = refused.get(fields[0], 0) + fields[1]
            else:
                kept.append((mtype, fields))
        if not refused:
            return messages
        self.counters["credit_from_gone_life"] += len(refused)
        before = self._refused_credit.get(client)
        credits = dict(before[3]) if before is not None else {}
        for channel, credit in refused.items():
            credits[channel] = credits.get(channel, 0) + credit
        self._refused_credit[client] = (now + GONE_MEMORY, msg.tag, msg.expiry, credits)
        return tuple(kept)

    def _on_relay_back(self, msg: RelayBack, now: float, fx: Fx, linked: bool = False) -> None:
        source, conn = msg.source, msg.conn
        # (one group message for several channels travels as one; credit and
        # give-backs are per channel)
        messages = [
            (MsgType.DELIVER, (channel, [fields[1]])) if mtype in _MANY else (mtype, fields)
            for mtype, fields in msg.messages
            for channel in (fields[0] if mtype in _MANY else [None])
        ]
        if source in self._dead:
            messages = self._refuse_deliveries(source, conn, messages, linked)
        regrant: list[tuple[str, int]] = []
        for mtype, fields in messages:
            if mtype in (MsgType.ACK, MsgType.ERROR):
                self._pending.pop((conn, fields[0]), None)
            elif mtype == MsgType.DELIVER:
                self._delivered_by[(conn, fields[0])] = source
                owed = self._credit.get((conn, fields[0]))
                if owed is not None:
                    if owed[0] != source:  # (the channel may have moved there)
                        owed[0], owed[2] = source, self._known_incarnation(source)
                    owed[1] = max(0, owed[1] - len(fields[1]))
            elif mtype == MsgType.RECV:  # credit handed back: the channel moved
                regrant.append((fields[0], fields[1]))
        refused: dict[str, list[int]] = {}
        if msg.stamps:
            messages = self._in_order(msg, messages, refused, now)
        fx.out.extend((conn, m) for m in messages if m[0] != MsgType.RECV)
        passed = self.passed
        if conn in self.core.sessions.by_conn:
            life = self._known_incarnation(source)
            for mtype, fields in messages:
                if mtype == MsgType.DELIVER:
                    passed.passed(conn, fields[0], source, len(fields[1]), life)
        for channel, _ in regrant:
            # (it handed the channel on: what our client holds of its
            # deliveries is ours to answer for, ``passed``)
            self.adopt(conn, channel, source, now)
        if refused:
            self._refuse_older(source, conn, refused, now, fx)
        if regrant:
            self._grant_again(conn, source, regrant, now, fx)

    def _in_order(
        self, msg: RelayBack, messages: list[Message], refused: dict[str, list[int]], now: float
    ) -> list[Message]:
        """``messages`` without the deliveries our client must not take,
        each older than a message of the same producer another owner of
        the channel handed it (``Queues.from_elsewhere``); their numbers go
        in ``refused``."""
        stamps = {(name, seq): (producer, life, n) for name, seq, producer, life, n in msg.stamps}
        queues = self.core.queues
        out: list[Message] = []
        for mtype, fields in messages:
            if mtype == MsgType.DELIVER:
                name, items = fields[0], fields[1]
                kept = []
                for item in items:
                    stamp = stamps.get((name, item[2]))
                    if stamp is None or queues.from_elsewhere(
                        msg.conn, name, msg.source, stamp, item[2], now, item[0]
                    ):
                        kept.append(item)
                    else:
                        refused.setdefault(name, []).append(item[2])
                if not kept:
                    continue
                if len(kept) < len(items):
                    fields = (name, kept, *fields[2:])
            out.append((mtype, fields))
        return out

    def _refuse_older(
        self, source: str, conn: ConnId, refused: dict[str, list[int]], now: float, fx: Fx
    ) -> None:
        """Deliveries from ``source`` refused as older than what another
        owner handed our client (``_in_order``): ``source`` drops them from
        its flight and counts them lost, once (``RelayLost``: as a
        give-back told again, ``dead_owner``), and the credit they took is
        granted again where the channel lives now, as if our client had
        taken them (it never knew of them)."""
        count = sum(len(seqs) for seqs in refused.values())
        self.counters["deliveries_refused_out_of_order"] += count
        log.info("refused %d deliveries from %s: older than ones our client took", count, source)
        returned = tuple((name, tuple(seqs)) for name, seqs in refused.items())
        fx.peers.append((source, RelayLost(self.me, self.incarnation, conn, (), returned)))
        session = self.core.sessions.by_conn.get(conn)
        if session is None:
            return
        relays: list[tuple[str, ConnId, Session, Message, int]] = []
        for name, seqs in refused.items():
            self._grant_at(self.route(name), conn, session, name, len(seqs), now, fx, relays)
        if relays:
            self._relay(relays, now, fx)

    def _refuse_deliveries(
        self, source: str, conn: ConnId, messages: list[Message], linked: bool
    ) -> list[Message]:
        """Deliveries from ``source`` after this node declared its life dead
        are not handed to our client: its channels have other owners here
        since, and our client's credit was granted to them
        (``_regrant``), so the client may have taken newer messages of the
        same producers from there (the real-process fault test, seed 6: a
        delivery made the instant its owner froze, held in that process's
        ZeroMQ pipe for the 3 s of the freeze, reached the client after 48
        newer messages of its producer). Each is lost, counted once:
        ``source`` is told (``RelayLost``: it drops them from its flight and
        counts them ``dead_owner``, or not again if it counted them as it
        parked them) when it is back in the same life; if its life ended
        instead (a fence, a restart, a leave, forgotten), those it sent on a
        link are counted here (it held them in its flight to a live node,
        which no end of its life counts), and those it sent plain (it had
        declared our node dead: parked there) are counted by it. If this
        node's life ends first (a fence, an exit), nothing is counted here:
        the owner, alive in that life, counts them as it learns our life
        ended (what it handed our client, in its flight or parked, is
        counted ``receiver_gone`` then), and it is alive in by far most
        cases: a delivery comes after its owner was declared dead when the
        declaration was a mistake (a partition, a loss, a freeze). Counting
        them here too counted them twice (simulation seed 145 without
        kills, shrunk to 7 ops: a leave during a partition; seed 209).
        (If its life had ended unseen before ours, they are counted by
        nobody: not seen in 1,600 schedules.)"""
        kept_messages: list[Message] = []
        refused: dict[str, list[int]] = {}
        for mtype, fields in messages:
            if mtype != MsgType.DELIVER:
                kept_messages.append((mtype, fields))
                continue
            refused.setdefault(fields[0], []).extend(item[2] for item in fields[1])
        if refused:
            count = sum(len(seqs) for seqs in refused.values())
            self.counters["deliveries_refused_from_dead"] += count
            log.info(
                "refused %d deliveries from %s, declared dead here (lost, counted once)",
                count,
                source,
            )
            if linked:
                kept = self._kept_for(source)
                returned = tuple((name, tuple(seqs)) for name, seqs in refused.items())
                lost = RelayLost(self.me, self.incarnation, conn, (), returned)
                if len(kept.refused) < MAX_GONE_UNHEARD:
                    kept.refused.append(lost)
                    kept.refused_linked += count
                else:  # (too many to keep: counted here now)
                    self.core.counters.dropped_dead_owner += count
                    self.counters["refused_deliveries_lost"] += count
        return kept_messages

    def _count_refused(self, kept: _ForReturn) -> None:
        """The life that made deliveries refused here ended without coming
        back (``_refuse_deliveries``): those it sent on a link are counted."""
        if kept.refused_linked:
            self.core.counters.dropped_dead_owner += kept.refused_linked
            self.counters["refused_deliveries_lost"] += kept.refused_linked
            kept.refused_linked = 0

    def _grant_again(
        self, conn: ConnId, source: str, grants: list[tuple[str, int]], now: float, fx: Fx
    ) -> None:
        """Credit a channel's old owner (``source``) gave back for our client
        ``conn`` (it handed the channel on, after every delivery it had sent
        us): grant it where the channel lives now. A view that still names
        ``source`` is behind (its leave is on the way): the owner is then the
        one without it."""
        session = self.core.sessions.by_conn.get(conn)
        relays: list[tuple[str, ConnId, Session, Message, int]] = []
        without: Ownership | None = None
        for channel, credit in grants:
            if credit <= 0:
                # (a hand-back of none, for what our client held of its
                # deliveries: ``passed``; what is owed elsewhere stays)
                owed = self._credit.get((conn, channel))
                if owed is not None and owed[0] == source:
                    del self._credit[(conn, channel)]
                    self._credit_stale.pop((conn, channel), None)
                continue
            if (conn, channel, source) in self._credit_given_up:
                # granted again already (``_check_credit``): this handback
                # came late, and is not granted twice
                self._credit_given_up.discard((conn, channel, source))
                continue
            self._credit.pop((conn, channel), None)
            self._credit_stale.pop((conn, channel), None)
            if session is None or credit <= 0:
                continue
            owner = self.route(channel)
            if owner == source:
                if without is None:
                    others = {n: self._tags[n] for n in self._live if n != source}
                    without = Ownership(others, parked=self._parked)
                found = without.owner(channel)
                owner = None if found == self.me else (found or "")
            self._grant_at(owner, conn, session, channel, credit, now, fx, relays)
        if relays:
            self._relay(relays, now, fx)

    def _grant_at(
        self,
        owner: str | None,
        conn: ConnId,
        session: Session,
        channel: str,
        credit: int,
        now: float,
        fx: Fx,
        relays: list[tuple[str, ConnId, Session, Message, int]],
    ) -> None:
        """Our client's credit on ``channel`` granted where the channel lives:
        here (``owner`` None), or relayed to ``owner`` (MAX_HOPS: the new owner
        keeps it even if it has not yet seen the change itself); "" (nobody):
        none."""
        if owner is None:
            fx.out.extend(
                (c, (MsgType.DELIVER, (ch, items)))
                for c, ch, items in self.core.queues.grant(conn, channel, credit, now)
            )
        elif owner:
            relays.append((owner, conn, session, (MsgType.RECV, (channel, credit)), MAX_HOPS))

    def _check_credit(self, now: float, fx: Fx) -> None:
        """Credit our clients hold at a node that no longer owns the channel
        comes back through us when that node hands the channel on
        (``_grant_again``). A handback lost with a connection (a reset, a
        partition) would leave the receive waiting forever, the messages
        queued at the new owner (seen: seed 124). So credit still recorded
        at a node that has not owned its channel for ``answer_within`` is
        granted again where the channel lives (once; a handback that comes
        after that is not granted twice)."""
        grace = self.answer_within()
        relays: list[tuple[str, ConnId, Session, Message, int]] = []
        for key in [k for k in self._credit_stale if k not in self._credit]:
            del self._credit_stale[key]  # (granted again meanwhile, or gone)
        for key, owed in list(self._credit.items()):
            owner = self.route(key[1])
            if owner == "" or (owner or self.me) == owed[0]:
                self._credit_stale.pop(key, None)
                if owner and 0 < owed[2] <= self._known_incarnation(owner) - RESTART_GAP:
                    # Recorded at an earlier life of the owner, which the
                    # new one never had: it left, and the channel's
                    # handback (its credit through us) was lost, or came
                    # back to it before the credit did (10,000-schedule
                    # soak, seed 8076: a receive waiting for good on the
                    # queue of the leaver's next life). Granted there at
                    # its next load report (``_regrant``).
                    del self._credit[key]
                    if owed[1] > 0:
                        self.counters["credit_regranted_new_life"] += 1
                        later = self._credit_for_new_life.setdefault(owner, {})
                        later[key] = later.get(key, 0) + owed[1]
                continue
            since = self._credit_stale.setdefault(key, now)
            session = self.core.sessions.by_conn.get(key[0])
            if now - since < grace or session is None:
                continue
            del self._credit[key]
            del self._credit_stale[key]
            if owed[1] > 0:
                self._credit_given_up.add((key[0], key[1], owed[0]))
                self.counters["credit_regranted_stale"] += 1
                self._grant_at(owner, key[0], session, key[1], owed[1], now, fx, relays)
        if relays:
            self._relay(relays, now, fx)

    def give_back(self, conn: ConnId, messages: list[Message], now: float, fx: Fx) -> None:
        """Deliveries of other nodes' channels that could not reach ``conn``
        (it has gone): back to each channel's owner, then the owners forget it.
        (An owner that had forgotten it already drops what it counted lost
        then: ``_counted_gone``.)"""
        owners: dict[str, list[Message]] = {}
        queues = self.core.queues
        for mtype, fields in messages:
            if mtype != MsgType.DELIVER:
                continue
            owner = self.route(fields[0])
            if owner:
                back: tuple[Any, ...] = (0, fields[0], fields[1], 1)
                # (with the stamps of what it gives back, as the deliveries
                # brought them: ``Queues.give_back``)
                stamps = queues.stamps_given_back(conn, fields[0], fields[1])
                if stamps:
                    back = (*back, stamps)
                owners.setdefault(owner, []).append((MsgType.RETURN, back))
        session = self.core.sessions.by_conn.get(conn)
        tag = session.tag if session is not None else "gone"
        for owner, returns in owners.items():
            for chunk in split_batches(returns, CHUNK_BYTES):
                relay = Relay(self.me, self.incarnation, conn, tag, 60.0, 1, tuple(chunk), now)
                fx.peers.append((owner, relay))
            # (after the returns: the owner forgets this client for good)
            fx.peers.append((owner, ConnGone(self.me, self.incarnation, (conn,))))

    def _on_handoff(self, msg: Handoff, now: float, fx: Fx) -> None:
        if not self._member(msg.origin):
            self.counters["from_strangers"] += 1
            return
        for _group, _channel, holder, _ttl, _capacity in msg.members:
            # (a membership of one of our own earlier lives' sessions, kept
            # while this node restarted: parked until they make it again)
            node, _, rest = holder.partition("@")
            inc = rest.split("/", 1)[0]
            if node == self.me and inc.isdigit() and int(inc) != self.incarnation:
                self._park_life(node, int(inc), now)
        out, added = self.core.adopt(msg.channels, msg.members, now)
        fx.out.extend(out)
        if added:
            fx.adopted.append((msg.origin, added))
        self._sweep_soon(now)  # (views may differ: pass on what is not ours)

    def _on_reservations(self, msg: Reservations, now: float) -> None:
        """Send reservations a pool's previous owner granted: held here for
        the same clients (as our own client, or as the virtual connection
        its relays will arrive on), so their reserved sends fit here."""
        if not self._member(msg.origin):
            self.counters["from_strangers"] += 1
            return
        queues = self.core.queues
        for key, origin, inc, conn, tag, expiry, slots, ttl in msg.entries:
            if origin == self.me:
                if inc != self.incarnation or conn not in self.core.sessions.by_conn:
                    continue  # a client of an earlier life, or gone
                holder = conn
            elif not self._member(origin) or inc < self._known_incarnation(origin) - RESTART_GAP:
                continue  # its relays would not be taken either
            else:
                holder = self._virtual_for((origin, inc, conn), tag, expiry)
            queues.adopt_reservation(holder, key, slots, ttl, now)
            self.counters["reservations_adopted"] += 1

    def _on_ask(self, msg: Ask, now: float, fx: Fx) -> None:
        if not self._member(msg.origin):
            self.counters["from_strangers"] += 1
            return
        result: list[str] = []
        if msg.kind == "flush":
            fx.out.extend(self.core.clear(msg.arg))
        else:
            result = self.core.groups.members(msg.arg, now)
        fx.peers.append((msg.origin, Answer(msg.qid, self.me, tuple(result))))

    def _on_answer(self, msg: Answer, fx: Fx) -> None:
        ask = self._asks.get(msg.qid)
        if ask is None:
            return
        ask.waiting.discard(msg.source)
        ask.result.update(msg.result)
        if not ask.waiting:
            self._answer(msg.qid, fx)

    # -- cluster-wide requests -----------------------------------------------------
    def _ask(
        self, conn: ConnId, req: int, kind: str, arg: str, local: list[str], now: float, fx: Fx
    ) -> None:
        qid = next(self._ask_ids)
        peers = {n for n in self._live if n != self.me}
        self._asks[qid] = _Ask(conn, req, kind, peers, now + self.timeout, set(local))
        for peer in sorted(peers):
            fx.peers.append((peer, Ask(qid, self.me, kind, arg)))
        if not peers:
            self._answer(qid, fx)

    def _answer(self, qid: int, fx: Fx) -> None:
        ask = self._asks.pop(qid)
        reply: Message = (
            (MsgType.ACK, (ask.req, 1))
            if ask.kind == "flush"
            else (MsgType.GROUP_INFO_REPLY, (ask.req, sorted(ask.result)))
        )
        fx.out.append((ask.conn, reply))

    # -- membership changes ----------------------------------------------------------
    def _member(self, node: str) -> bool:
        """Whether ``node`` is a member, live or not in our view: a node we
        think dead that sends is alive, and what it sends (a receiver's
        credit, a handover) is taken, not lost, while the views catch up
        (a healed partition: its frames can arrive before its refutation)."""
        return node in self._live or self.table.member(node) is not None

    def _known_incarnation(self, node: str) -> int:
        member = self.table.member(node)
        return member.incarnation if member is not None else 0

    def on_member_event(self, event: MemberEvent, now: float, fx: Fx) -> None:
        if event.node == self.me:
            if event.kind == EventKind.DECLARED_DEAD and event.incarnation >= self.incarnation:
                self._declared_dead(event.incarnation, now, fx)
            elif event.kind == EventKind.REFUTED and event.claim == State.DEAD:
                # (peers held this node dead: ``_outranked``)
                self._held_dead_until = now + self.answer_within()
            return
        previous = self.ownership
        changed = self.refresh()
        if changed:
            if len(previous.members) == 1:
                # (alone until now: a new life joining, whose names come back
                # to it from the nodes that kept them, which pass on what
                # they get meanwhile: every name it owns moved here;
                # rolling seed 927)
                previous = Ownership({})
            self._before = (previous, now + self.hold)
        if changed and self._sweep_at is not None:
            self._sweep_soon(now)  # the views move: wait for them to settle
        if event.kind == EventKind.DEAD:
            self._dead.add(event.node)
            self._answer_sooner(event.node, now, life_ended=False)
        else:
            if event.node in self._dead and self._tallies:
                # (back: what this node counted meanwhile, first in its view,
                # goes to it in a report soon, before it counts the same as
                # the first in its own: ``_outranked``, seed 100)
                self._counted_gen += 1
            if event.node in self._dead and event.kind in (EventKind.ALIVE, EventKind.UPDATED):
                # Back from a death declared here: it may have held this
                # node dead as well (each cut off from the other, or behind
                # packet loss), this node hearing of it only later, or never
                # (it refuted nothing it did not hear), and counted what
                # died meanwhile as the first survivor in its view: this
                # node counts only after its report could say so, as after
                # refuting its own death (``_outranked``; kill-free
                # simulation seed 469, 9 ops: 30 % loss on n0, n0 and n1
                # each declared the other dead, and both counted n2's 7,
                # frozen and ending its life in place)
                self._back_from_dead[event.node] = now + self.answer_within()
            self._dead.discard(event.node)
        if event.kind != EventKind.DEAD:
            self._told_on_return(event, now, fx)
        if event.kind in (EventKind.DEAD, EventKind.LEFT):
            self._lives.pop(event.node, None)
            self._node_gone(event.node, event.kind == EventKind.DEAD, event.incarnation, now, fx)
        elif event.kind == EventKind.REAPED:
            self._settle_death(event.node, None, now, presumed=True)
            self._passed_lost(self.passed.source_ended(event.node))
        new_life = False
        if event.kind in (EventKind.JOINED, EventKind.ALIVE, EventKind.UPDATED):
            # (what a life declared dead here handed our clients: its again,
            # or, that life ended, this node's: ``Passed.source_seen``)
            self._passed_lost(self.passed.source_seen(event.node, event.incarnation, _same_life))
            before = self._lives.get(event.node)
            new_life = before is None or event.incarnation >= before + RESTART_GAP
            self._lives[event.node] = event.incarnation
            if any(c[0] == event.node for c in (*self._forgot_credit, *self._refused_credit)):
                # (granted at its next load report, unless that says it
                # ended the life: a node that did not run ends it in place)
                self._restore_after_load[event.node] = event.incarnation
            if before is not None and event.incarnation >= before + RESTART_GAP:
                self._life_ended_unseen(event.node, before, now, fx)
            if new_life and before is not None:
                self._answer_sooner(event.node, now, life_ended=True)
            # A restarted node: its earlier life's clients are gone (unless
            # that life left cleanly: they come back to this one and make
            # their memberships again). (A node that refuted a suspicion is
            # still in the same life.)
            self._forget_clients(event.node, now, fx, below=event.incarnation - RESTART_GAP)
        if changed:
            self.handoff(now, fx, full=True)
        if new_life:
            # (after the handover, on the same link: it arrives last)
            fx.peers.append((event.node, HandedOver(self.me, event.incarnation)))
        if event.node in self._strangers and self._member(event.node):
            self._take_strangers(event.node, now, fx)

    def _restore_credit(
        self, node: str, incarnation: int, ended: int | None, now: float, fx: Fx
    ) -> None:
        """``node`` is live again in the life whose clients this node forgot
        when it declared it dead (a refuted death: it was slow or cut off),
        and its first load report since does not say it ended that life
        (``ended``: the life it says it ended in place, a node that did not
        run does).
        Its clients still wait on the credit they had granted here, and its
        node may never have heard of the death (it refuted a suspicion
        first), so it will not grant it again: grant it again here, for the
        channels this node still owns (the others' credit is granted again
        by the client's node, ``_check_credit``). Unless the client's node
        has granted anew meanwhile (it heard of the death:
        ``_declared_dead``). Credit refused from that life while it was held
        dead here (``_refused_credit``) was never granted: it is, whatever
        the client's node did since."""
        for book in (self._forgot_credit, self._refused_credit):
            for client in [k for k in book if k[0] == node]:
                _, tag, expiry, credits = book.pop(client)
                if not client[1] <= incarnation < client[1] + RESTART_GAP:
                    continue  # (another life's)
                if ended is not None and _same_life(ended, client[1]):
                    continue  # (it ended that life in place: its clients went with it)
                if book is self._forgot_credit and client in self._vconn_of:
                    continue  # (its node granted anew)
                vconn = self._virtual_for(client, tag, expiry)
                for channel, credit in credits.items():
                    if self.route(channel) is None:
                        self.counters["credit_restored"] += 1
                        fx.out.extend(
                            (c, (MsgType.DELIVER, (ch, items)))
                            for c, ch, items in self.core.queues.grant(vconn, channel, credit, now)
                        )

    def _declared_dead(self, incarnation: int, now: float, fx: Fx) -> None:
        """A peer declared this node dead at ``incarnation`` of this life
        (this node was slow, or cut off, and refutes it): every node that
        took the death forgot our clients there, and with them the credit
        their receives had granted, so those receives would wait forever.
        Grant it again where each channel lives (once per incarnation
        declared dead; a node that had not forgotten only holds more credit
        for a while)."""
        if incarnation <= self._regranted_after:
            return
        self._regranted_after = incarnation
        for node in {owed[0] for owed in self._credit.values()}:
            self._regrant(node, now, fx)

    def _life_ended_unseen(self, node: str, life: int, now: float, fx: Fx) -> None:
        """``node`` is back in a new life while its life ``life`` was never
        seen to die or leave here: a restart faster than failure detection
        (kill -9 and a supervisor), or a leave whose last frames (LEFT, the
        handover) were lost with its connections. That life ended as a death
        does: what it held is counted lost once it is known how it ended
        (the new life's first load report: exactly, if it ended that life in
        place, else its last reported queue), and the credit our clients held
        there is granted again (else a receive waits forever on a channel the
        new life queues for). The new life's clients, which may already have
        registered here, stay."""
        self._node_gone(node, True, life, now, fx, below=life + 1)

    def _forget_clients(
        self,
        node: str,
        now: float,
        fx: Fx,
        below: int | None = None,
        died: bool = False,
        left: bool = False,
    ) -> None:
        """Forget ``node``'s clients (those of incarnations before ``below``):
        their credit here and the memberships they hold (``died``: declared
        dead, their credit is remembered). ``left``: the node left cleanly,
        and what its clients were handed may still be on its way back
        here: a drained client gives back what reached it after it had
        withdrawn its credit, and its node relays that before it leaves,
        but the LEAVE can reach us first (through another node's gossip;
        seen in rolling restarts under load: 2-6 messages counted
        ``receiver_gone`` and their give-back dropped as counted already).
        So their credit goes now (nothing more is delivered to them), and
        the rest when the node's last relays are surely in
        (``answer_within``): what is still handed out then is counted."""
        for client in [k for k in self._vconn_of if k[0] == node]:
            if below is not None and client[1] >= below:
                continue
            if left:
                self.core.queues.stop_granting(self._vconn_of[client])
                self._leaving.setdefault(client, now + self.answer_within())
            else:
                self._forget_virtual(client, now, fx, remember=died, lives_on=below is not None)
        for book in (self._forgot_credit, self._refused_credit):
            for client in [k for k in book if k[0] == node]:
                if below is not None and client[1] < below:
                    del book[client]  # (that life is over)
        for holder in self.core.groups.holders(node + "@"):
            inc = holder[len(node) + 1 :].split("/", 1)[0]
            if inc.isdigit() and self._parked_life(node, int(inc)) is not None:
                continue  # (dropped when that life's park ends: ``tick``)
            if below is None or not inc.isdigit() or int(inc) < below:
                self.core.groups.drop_holder(holder)

    def _parked_life(self, node: str, incarnation: int) -> tuple[str, int] | None:
        """The parked life a holder of ``node`` at ``incarnation`` belongs to:
        a life's holders carry the incarnation it started with, its LEFT the
        one it had reached (each refuted suspicion adds one, less than
        ``RESTART_GAP`` in a life)."""
        for life in self._left_lives:
            if life[0] == node and life[1] - RESTART_GAP < incarnation <= life[1]:
                return life
        return None

    def _park_life(self, node: str, incarnation: int, now: float) -> None:
        """The memberships held by sessions of ``node``'s life
        ``incarnation``, which left cleanly, stay for ``dead_keep`` (as long
        as its names are parked): its clients make them again in its next
        life, which replaces them; those not made again are dropped then."""
        self._left_lives.setdefault((node, incarnation), now + self.table.config.dead_keep)

    def _node_gone(
        self, node: str, died: bool, incarnation: int, now: float, fx: Fx, below: int | None = None
    ) -> None:
        """``node``'s life ``incarnation`` ended (``below``: the incarnation
        its next life started with, whose clients stay)."""
        if died:  # (a leave hands back the credit, perhaps after its LEFT)
            self.passed.forget_source(node, incarnation)
        # (a node that left cleanly handed its queues over first)
        load = self.loads.pop(node, {})
        lost = int(load.get("queued", 0)) + int(load.get("parked", 0))
        no = int(load.get("n", 0))
        newer = self._newer_reports.pop(node, None)
        if newer is not None and _same_life(newer[0], incarnation) and newer[1] > no:
            _, no, lost = newer
        if died:  # (every survivor: which one counts is decided at the count)
            self._settle_earlier_life(node, incarnation, now, heard=bool(load))
            until = now + self.presume_dead_after()
            self._provisional[node] = (incarnation, lost, until, no)
        if not died:
            self._park_life(node, incarnation, now)
            # (a LEFT after this node declared that life dead: gossip from a
            # peer that heard it)
            self._left_elsewhere_said(node, incarnation, now)
        self._forget_clients(node, now, fx, below=below, died=died, left=not died)
        # (its handbacks will not come now)
        self._credit_given_up = {g for g in self._credit_given_up if g[2] != node}
        if died:
            self._regrant(node, now, fx, new_life=below is not None)
        else:
            self._undefer(node)
        # Requests relayed to it stay pending until their deadline: a node
        # declared dead may be only frozen, and takes a send it gets before
        # then (``fresh_within``); after it, this node answers (outcome unknown).
        for qid, ask in list(self._asks.items()):
            ask.waiting.discard(node)
            if not ask.waiting:
                self._answer(qid, fx)

    def presume_lost_after(self) -> float:
        """Three times the answer bound: the least ``presume_dead_after``
        may be, however short the member table remembers the dead."""
        return 3 * self.answer_within()

    def presume_dead_after(self) -> float:
        """Seconds after a death that what the node held is counted lost
        (its last reported queue) if nothing better was heard: as long as
        the member table remembers the dead (``dead_keep``, "long enough to
        reconnect after a partition of this length"). A node cut off by a
        partition shorter than that comes back in the same life, holding
        what it held (its clients may even have taken it meanwhile): counted
        at ``presume_lost_after`` (3x the answer bound, 1.8 s in the
        simulation), a partition of 2.5 s counted the queue its node
        delivered after the heal (simulation seed 56). A frozen node that
        wakes meanwhile ends its life itself and reports exactly what it
        dropped; a killed one restarted is counted at its new life's first
        report. What its clients were handed here (``_parked_flight``) waits
        as long: until 2026-12-06 it was counted at ``presume_lost_after``,
        and a client cut off for 2.5 s whose reports of what it took came
        after the heal had them counted lost as well (simulation seed 91, no
        kill: plans/delivery-to-a-client-cut-off-2-5-s-settled-by-its-
        reports-after-the-heal.json)."""
        return max(self.presume_lost_after(), self.table.config.dead_keep)

    def _settle_death(
        self, node: str, fenced: list[int] | None, now: float, *, presumed: bool = False
    ) -> None:
        """Count what died with ``node``'s life once it is known how that life
        ended: it came back having ended it in place (``fenced``: exactly
        what it dropped), it came back as a new process (its last reported
        queue), it was not heard of for ``presume_dead_after`` (the same),
        or it came back in the same life, nothing dropped (a partition
        healed, a refuted mistake: nothing was lost)."""
        if fenced is not None:
            life, lost = fenced
            for (n, e), estimate in list(self._ended.items()):
                if n == node and life <= e < life + RESTART_GAP:
                    if estimate is not None:
                        # The estimate (its last reported queue) was counted
                        # before this report came: the exact number is known
                        # now, and what it adds (reserved sends and
                        # handovers its links took while it was stalled,
                        # give-backs) is counted once (seed 197). Less than
                        # the estimate: counted already, counters never go
                        # back.
                        self._ended[(n, e)] = None
                        self._count_dead(node, e, lost, now, no=EXACT)
                    return  # (counted: by this report before, or by the estimate)
            self._ended[(node, life)] = None
            provisional = self._provisional.get(node)
            if provisional is not None and life <= provisional[0] < life + RESTART_GAP:
                del self._provisional[node]
                self._count_dead(node, provisional[0], lost, now, no=EXACT)
            elif provisional is None:
                # (it ended a life nobody declared dead)
                self._count_dead(node, life, lost, now, no=EXACT)
            return
        provisional = self._provisional.get(node)
        if provisional is None:
            return
        if self._left(node, provisional[0]):
            del self._provisional[node]  # (it left: see ``_left_elsewhere_said``)
            return
        same_life = self._known_incarnation(node) < provisional[0] + RESTART_GAP
        if not presumed and not same_life and self._unsettled_besides(node):
            # Back as a new process: that life ended, but maybe by a leave
            # a peer heard, which this node, cut off from it too, declared
            # dead as well: its next load report says so. Settled when no
            # such peer is left unsettled (or when presumed lost), by the
            # survivor that would have counted it now: the peer, back in
            # the same life, was cut off, and its estimate is older (seed
            # 207 shrunk: a killed node's 6 queued, unknown to the peer
            # that was cut off, which counted 0 as the first).
            self._deferred.setdefault(node, self._counts_for(node))
            return
        first = self._deferred.pop(node, None)
        if presumed and same_life and node in self._live:
            # (seen back in that life, its next load report not in yet: it
            # holds what it had; a fence after it reports itself)
            del self._provisional[node]
        elif presumed or not same_life:
            del self._provisional[node]
            # (a fence report coming late counts what it adds to this)
            self._ended[(node, provisional[0])] = provisional[1]
            self._count_dead(node, provisional[0], provisional[1], now, first, provisional[3])
        elif node in self._live:
            del self._provisional[node]  # back in the same life, holding it all

    def previous_left(self, life: int, now: float) -> None:
        """This node's life ``life``, of the process before this one, left
        cleanly and counted itself what no peer acknowledged (its note,
        ``life_note``): the load reports say so (``left``) for as long as a
        peer may hold that life's death unsettled (``presume_dead_after``),
        so a peer that never heard the leave does not count its last
        reported queue as well (kill-free simulation seeds 858 and 3176: a
        node left alone in a partition or behind 60 % packet loss; it
        counted what it could not hand over, and the peers, declaring it
        dead, counted its last report)."""
        if life < self.incarnation:
            self._previous_left = (life, now + self.presume_dead_after())

    def previous_crash(self, life: int, held: int) -> None:
        """This node's life ``life``, of the process before this one, died
        holding ``held`` messages (``ClusterNode.previous_crash``): its load
        reports say so (``crashed``), and the survivor that counts that life
        counts this, as it counts a life ended in place (``fenced``). Only
        the count: a fenced life's clients keep what it handed them, and
        their nodes' owners wait for their reports (``_restore_credit``); a
        crashed life's do not (simulation seed 116's shrink, 6 ops: told
        ``fenced``, an owner counted 6 deliveries a client of the crashed
        life had taken)."""
        if life < self.incarnation:
            self._crashed = (life, held)

    def carry_counts(self, old: Routing) -> None:
        """This node ended its life in place (a fence): what it knew of
        other nodes' dead lives is not its life's, and goes on to the next
        (their last load reports, the counts not settled yet). Else a node
        frozen while another died would drop the only count of it
        (simulation plans/lost-then-delivered.json)."""
        self.loads.update({n: load for n, load in old.loads.items() if n != self.me})
        # (what its clients hold of other nodes' deliveries stays with them,
        # and the owners' hand-backs may come after: ``ClusterNode._fence``)
        self.passed = old.passed
        self._provisional.update(old._provisional)
        self._count_later.update(old._count_later)
        self._ended |= old._ended
        self._counted.update(old._counted)
        self._tallies.update(old._tallies)
        self._counted_elsewhere.update(old._counted_elsewhere)
        self._left_elsewhere.update(old._left_elsewhere)
        self._deferred.update(old._deferred)
        self._previous_left = old._previous_left
        self._earlier.update(old._earlier)

    def _count_dead(
        self,
        node: str,
        life: int,
        lost: int,
        now: float,
        first: bool | None = None,
        no: int = EXACT,
    ) -> None:
        """What died with ``node``'s life, ``lost`` by its report number
        ``no`` (``EXACT``: its fence report), is counted by one survivor: the
        live one in its oldest life (``_counts_for``). If that is another
        node, this one keeps the
        count for ``answer_within``: the other may be dead too, not yet
        declared (simulation seed 68: two nodes killed a second apart; the
        survivor left waited for the first dead one to count the second),
        and if this node becomes the first meanwhile, it counts. Unless the
        first said it counted that life (``tallied`` in its load reports,
        sent soon after it counts) by a report as new as this one: then it
        was only slow or cut off, or died after counting (simulation seed
        27: the first survivor counted a killed node's queue and was killed
        and restarted 0.26 s later, and the keeper, first then, counted it
        again). ``first``: whether this node was the one when the count was
        held back (``_settle_death``).

        The count is of the newest report of that life any survivor holds,
        not of the first survivor's: the survivors' reports of a life differ
        when one was frozen or cut off from it (simulation seed 266, plans/
        leaver-alone-in-partition-counted-from-the-newest-report.json: n0
        left alone in a partition, leaving its last reported queue, 7, to
        its peers; n3 held that report, n2, first, the one from before its
        freeze, of none, and nobody counted the 7). So every survivor says
        which report of a dead life it holds (``held`` in its load reports,
        soon after it declares the death or keeps a count), the first counts
        what a newer one adds to what it counted (counters never go back: a
        newer report of fewer adds nothing), and says by which report it
        counted; a survivor keeps its count until the first's covers it."""
        said_no, said = self._said(node, life)
        if first is None:
            first = self._counts_for(node) and not self._outranked(node, now)
        if not first:
            if no <= said_no or (said_no >= 0 and lost <= said):
                return  # (the survivor that counted says so)
            kept = self._count_later.get(node)
            if kept is None or not _same_life(kept[2], life) or kept[3] < no:
                # (a count of none too: first later, this node counts by the
                # newest report its peers hold of that life)
                self._count_later[node] = (lost, now + self.answer_within(), life, no)
                if lost:
                    self._counted_gen += 1  # (the first hears soon which report it holds)
            return
        kept = self._count_later.get(node)
        if kept is not None and _same_life(kept[2], life):
            del self._count_later[node]
            if kept[3] > no:  # (a newer report was given to it meanwhile)
                lost, no = kept[0], kept[3]
        tally = self._tally_of(node, life)
        if tally is not None:
            said_no, said = max(said_no, tally[0]), max(said, tally[1])
        if no <= said_no:
            return  # (counted by a report as new)
        key = (node, life) if tally is None else tally[2]
        self._tallies[key] = (no, max(said, lost), now + GONE_MEMORY)
        if lost > said:  # (counting nothing, it says so in its next report)
            self._counted_gen += 1
            self.counters["lost_in_dead_nodes"] += lost - said
            self._counted[key] = now + GONE_MEMORY
            log.warning("node %s died with %d queued messages (lost)", node, lost - said)

    def _tally_of(self, node: str, life: int) -> tuple[int, int, tuple[str, int]] | None:
        """(the report number, what was counted in all, the key) of what this
        node counted for ``node``'s life ``life``."""
        for (n, e), (no, total, _) in self._tallies.items():
            if n == node and _same_life(e, life):
                return no, total, (n, e)
        return None

    def _said(self, node: str, life: int) -> tuple[int, int]:
        """(the newest report number, the most counted) by which peers said
        they counted ``node``'s life ``life``; (-1, 0) if none did."""
        said_no, said = -1, 0
        for (n, e), (_, no, total) in self._counted_elsewhere.items():
            if n == node and _same_life(e, life):
                said_no, said = max(said_no, no), max(said, total)
        return said_no, said

    def _held(self) -> list[list[Any]]:
        """Which report of each dead life this node holds and has not
        counted (``held`` in its load reports): [node, life, report number,
        lost], for the first survivor to count the newest
        (``_count_dead``)."""
        held = [[n, p[0], p[3], p[1]] for n, p in self._provisional.items()]
        held += [[n, k[2], k[3], k[0]] for n, k in self._count_later.items()]
        held += [[n, p[0], p[3], p[1]] for n, (p, _) in self._earlier.items()]
        return held

    def _heard_held(self, node: str, life: int, no: int, lost: int, now: float) -> None:
        """A peer holds ``node``'s life ``life``'s report number ``no``,
        which said ``lost`` (``held``): newer than the one this node holds
        for a death not settled yet, it takes its place; newer than the one
        it counted by as the first survivor, it counts what it adds."""
        if node == self.me:
            return
        provisional = self._provisional.get(node)
        if provisional is not None and _same_life(provisional[0], life):
            if no > provisional[3]:
                self._provisional[node] = (provisional[0], lost, provisional[2], no)
        kept = self._count_later.get(node)
        if kept is not None and _same_life(kept[2], life) and no > kept[3]:
            self._count_later[node] = (lost, kept[1], kept[2], no)
        waiting = self._earlier.get(node)
        if waiting is not None and _same_life(waiting[0][0], life) and no > waiting[0][3]:
            earlier = waiting[0]
            self._earlier[node] = ((earlier[0], lost, earlier[2], no), waiting[1])
        tally = self._tally_of(node, life)
        if tally is not None and no > tally[0]:
            self._count_dead(node, tally[2][1], lost, now, first=True, no=no)
        seen = self._lives.get(node)
        if seen is not None and _same_life(seen, life):
            # (live here, in that life: this node may declare it dead too)
            newer = self._newer_reports.get(
                node, (life, int(self.loads.get(node, {}).get("n", 0)), 0)
            )
            if no > newer[1] or not _same_life(newer[0], life):
                self._newer_reports[node] = (life, no, lost)

    def _settle_earlier_life(self, node: str, life: int, now: float, heard: bool = True) -> None:
        """``node``'s life ``life`` is declared dead while the death of an
        earlier life of it is not settled here (this node was frozen
        through both, or the earlier one's next life died before its first
        report came): that life ended, and is counted as one seen to end
        unseen is, by its last reported queue, before its count gives way
        to the next life's (one per node); unless no report of ``life``
        came (``heard``): it would say whether the earlier one left, and
        the earlier one waits for it (``_earlier``). Before, it was dropped, and a
        newer report of it a peer held counted by nobody (simulation
        plans/lost-then-delivered.json, which passed only because its first
        survivor, ending its own life in place, counted the first life's
        report under the second life's name)."""
        provisional = self._provisional.get(node)
        if provisional is None or _same_life(provisional[0], life):
            return
        del self._provisional[node]
        first = self._deferred.pop(node, None)
        if not heard:
            # No report of the next life came: it would have said whether
            # that life left (``previous_left``). It waits, for that life's
            # reports once it is back, or for the earlier one's presumption
            # (kill-free simulation seed 1272, 6 ops: a node that left
            # behind 60 % loss came back into the same loss, and was
            # declared dead before any report of its next life came: its
            # peers counted the life that left by its last report).
            self._earlier[node] = (provisional, first)
            return
        self._count_earlier(node, provisional, first, now)

    def _count_earlier(
        self, node: str, provisional: tuple[int, int, float, int], first: bool | None, now: float
    ) -> None:
        """Count an earlier life's death as ``_settle_earlier_life`` does."""
        if not self._left(node, provisional[0]):
            self._ended[(node, provisional[0])] = provisional[1]
            self._count_dead(node, provisional[0], provisional[1], now, first, provisional[3])

    def _heard_after_earlier(self, node: str, now: float, presumed: bool = False) -> None:
        """A report of ``node`` came after its ``left`` were taken (or the
        earlier life's presumption ran out): an earlier life waiting for
        one (``_earlier``) that it did not say left is counted."""
        waiting = self._earlier.get(node)
        if waiting is None or (presumed and waiting[0][2] > now):
            return
        del self._earlier[node]
        self._count_earlier(node, waiting[0], waiting[1], now)

    def _counted_by_other(
        self, node: str, life: int, now: float, no: int = EXACT, total: int = 1 << 62
    ) -> None:
        """A peer says (its load report) it counted what died with ``node``'s
        life ``life``, ``total`` in all by that life's report number ``no``
        (a peer of an older version says neither: all of it): what this node
        kept for it is dropped if that covers it."""
        if node == self.me:
            return
        key = (node, life)
        _, said_no, said = self._counted_elsewhere.get(key, (0.0, -1, 0))
        self._counted_elsewhere[key] = (now + GONE_MEMORY, max(said_no, no), max(said, total))
        said_no, said = self._said(node, life)
        kept = self._count_later.get(node)
        if kept is not None and _same_life(kept[2], life):
            if kept[3] <= said_no or kept[0] <= said:
                del self._count_later[node]

    def _drop_kept(self, node: str, life: int) -> None:
        """Drop the count this node kept for ``node``'s life ``life`` (it
        ended by a leave)."""
        kept = self._count_later.get(node)
        if kept is not None and _same_life(kept[2], life):
            del self._count_later[node]

    def _left(self, node: str, life: int) -> bool:
        return _names_life(self._left_elsewhere, node, life)

    def _left_elsewhere_said(self, node: str, life: int, now: float) -> None:
        """A peer says (its load report) ``node``'s life ``life`` left
        cleanly: it heard the LEFT, which did not reach this node (a
        partition), so this node declared that life dead. Nothing died with
        it: what it handed to peers that heard the leave was taken, and
        what it handed to peers cut off from it, it counted itself as it
        ended (``ClusterNode.gone``). Its last reported queue is not
        counted here (simulation seed 37, ``plans/leave-into-partition-
        handoff``: n1, cut off from n0 and n2, declared both dead and
        counted n2's last reported queue when n2's next life came, while n0
        had heard n2 leave and n2 had counted the handover that never
        reached n1)."""
        if node == self.me:
            return
        self._left_elsewhere.setdefault((node, life), now + GONE_MEMORY)
        waiting = self._earlier.get(node)
        if waiting is not None and _same_life(waiting[0][0], life):
            del self._earlier[node]
        provisional = self._provisional.get(node)
        if provisional is not None and _same_life(provisional[0], life):
            del self._provisional[node]
            self._deferred.pop(node, None)
        self._drop_kept(node, life)

    def _unsettled_besides(self, node: str) -> bool:
        """Whether a peer other than ``node`` was declared dead here and is not
        settled, nor back as a new process (which knows nothing of its
        earlier life's peers)."""
        return any(n != node and n not in self._deferred for n in self._provisional)

    def _settle_deferred(self, now: float) -> None:
        """Settle the deaths held back while a peer declared dead too was not
        settled (``_settle_death``), once none is."""
        for node in list(self._deferred):
            if node not in self._provisional:
                self._deferred.pop(node, None)
            elif not self._unsettled_besides(node):
                self._settle_death(node, None, now)

    def _outranked(self, node: str, now: float) -> bool:
        """Whether a peer that may be alive would count what died with
        ``node`` before this node: one this node declared dead, its death
        not settled yet, or one it only heard was dead (it never declared it
        itself: a life that started later), in an older life; or one of its
        seeds it never heard of. Cut off by a partition that is healing, that
        peer counts in its own view, where this node is the dead one
        (simulation seed 6, shrunk: n1 cut off alone, n0 frozen, ending its
        life in place as the partition healed, and n1 and n2, each the only
        survivor in its view, both counted n0's report,
        plans/partition-healing-as-a-frozen-owner-ends-its-life-counted-once
        .json; and n2's next life, which had heard from n0 only that n1 was
        dead, and n1, plans/new-life-told-a-peer-is-dead-keeps-a-count.json).
        This node then keeps the count for ``answer_within``, as one that is
        not first does: the peer's load report says it counted, or the
        count is this node's.

        So too for ``answer_within`` after this node refuted its own death
        (``_held_dead_until``): a peer that held it dead counted in its own
        view, where it came first, and this node may hear the death only
        after it sees that peer live again (kill-free simulation seed 100,
        6 ops: n1 cut off alone, n0 frozen and declared dead, ending its
        life in place as it thawed; n2 counted n0's fence report at once,
        and n1, which heard it after the heal and after it saw n2 live, as
        well). And for ``answer_within`` after a peer (not ``node``) this
        node declared dead is back (``_back_from_dead``): it may have held
        this node dead as well, which this node hears of later, if at all
        (kill-free seed 469)."""
        if self.table.unreached() or now < self._held_dead_until:
            return True
        if self._back_from_dead:
            for peer, until in list(self._back_from_dead.items()):
                if until <= now:
                    del self._back_from_dead[peer]
                elif peer != node:
                    return True
        mine = (self._known_incarnation(self.me), self.me)
        for member in self.table.members():
            if member.id in (node, self.me) or member.state != State.DEAD:
                continue
            if member.id in self._dead and member.id not in self._provisional:
                continue  # (declared dead here, and settled)
            if (member.incarnation, member.id) < mine:
                return True
        return False

    def _counts_for(self, node: str) -> bool:
        """Whether this node counts what died with ``node``: one survivor
        does, so a loss is counted once, not on every survivor: the one in
        its oldest life (then the first by id). A node that has just
        restarted has no load report of the dead one's yet (simulation seed
        68: two nodes killed and restarted a second apart, the first back
        counted nothing for the second, and the one that knew waited for
        it)."""
        survivors = [n for n in self._live if n != node]
        if not survivors:
            return False
        first = min(survivors, key=lambda n: (self._known_incarnation(n), n))
        return first == self.me

    def _regrant(self, node: str, now: float, fx: Fx, new_life: bool = False) -> None:
        """Credit our clients held at ``node``, which died with it: grant it
        to the channels' new owners, so waiting receives are served again.
        (A node that leaves cleanly hands its receivers' credit over itself.)
        Credit for channels ``node`` owns again in a new life (``new_life``)
        waits for that life's first load report: granted at once it goes before
        the new life speaks links, as a plain frame no link sends again, and a
        connection reset then loses it for good, the credit recorded at the
        owner that never got it (plans/kill-restart-reset-stalls.json)."""
        relays: list[tuple[str, ConnId, Session, Message, int]] = []
        self._undefer(node)
        for (conn, channel), owed in list(self._credit.items()):
            if owed[0] != node:
                continue
            session = self.core.sessions.by_conn.get(conn)
            if session is None or owed[1] <= 0:
                del self._credit[(conn, channel)]
                continue
            owner = self.route(channel)
            if owner == "":  # nobody owns it (yet): kept for a later view
                continue
            del self._credit[(conn, channel)]  # (re-counted as it is relayed)
            if owner == node and new_life:
                self._credit_for_new_life.setdefault(node, {})[(conn, channel)] = owed[1]
                continue
            self._grant_at(owner, conn, session, channel, owed[1], now, fx, relays)
        if relays:
            self.counters["credit_regranted"] += len(relays)
            self._relay(relays, now, fx)

    def _undefer(self, node: str) -> None:
        """Credit waiting for ``node``'s first load report recorded at it
        again (its life ended before: ``_regrant``, or ``_check_credit`` for a
        node that left)."""
        for key, credit in self._credit_for_new_life.pop(node, {}).items():
            owed = self._credit.setdefault(key, [node, 0, self._known_incarnation(node)])
            if owed[0] == node:
                owed[1] += credit

    def _unanswered(self, key: tuple[ConnId, int], mtype: MsgType) -> Out:
        """The answer for a relayed request whose owner never answered: for a
        send, that its outcome is unknown (the owner may have taken it and be
        frozen, cut off or dead; or the relay was lost): the client's send()
        raises ``SendOutcomeUnknown``, and nothing is counted (counted lost, a
        send the owner had taken would be a drop that was delivered);
        anything else is done."""
        if mtype == MsgType.SEND:
            self.counters["unanswered_sends"] += 1
            detail = (
                f"the channel's owner did not answer in {self.answer_within():.1f} s "
                "(frozen, cut off or dead): the message may or may not have been taken"
            )
            return (key[0], (MsgType.ERROR, (key[1], ErrorCode.OUTCOME_UNKNOWN, detail)))
        return (key[0], (MsgType.ACK, (key[1], 1)))

    def handoff(self, now: float, fx: Fx, full: bool = False) -> None:
        """Give every queue (and receivers' credit) this node holds for a
        name another live node owns to that owner; ``full``: memberships too
        (they only move when ownership does)."""
        core = self.core
        channels: dict[str, list[tuple[str, list[Any]]]] = {}
        members: dict[str, list[tuple[str, str, str, float, int]]] = {}
        grants: list[tuple[str, ConnId, Session, Message, int]] = []
        back: dict[ConnId, list[Message]] = {}
        # (where each pool's reservations go is read before its channels
        # are taken: a pool's names may live apart, see ``_pool_owners``)
        pools = self._pool_owners()
        for name in list(core.queues.channels):
            owner = self.route(name)
            if owner is None:
                continue
            ch = core.queues.channels.get(name)
            holding = {c: len(f) for c, f in ch.flight.items() if f} if ch is not None else {}
            holding_seqs = (
                {c: set(f) for c, f in ch.flight.items() if f and c in self._virtual}
                if ch is not None and holding
                else {}
            )
            items, credits = core.queues.take(name, now)
            for conn, count in holding.items():
                # What a receiver holds of it stays counted nowhere here
                # (``Queues.take``): our own client's is ours to answer for
                # (``passed``); another node's client's, its node's, told
                # by the credit handed back to it below (even none).
                if conn not in self._virtual:
                    self.passed.adopt_local(conn, name, self.me, count)
                else:
                    if conn not in credits:
                        credits[conn] = 0
                    self._remember_handed(conn, name, holding_seqs[conn], now)
            if not owner:  # nobody owns it any more
                core.counters.dropped_dead_owner += len(items)
                continue
            if items:
                channels.setdefault(owner, []).append((name, [list(i) for i in items]))
            for conn, credit in credits.items():
                virtual = self._virtual.get(conn)
                if virtual is not None:
                    # Another node's client: its credit goes back through
                    # its node, behind our deliveries still on the way there
                    # (one ordered link), which grants it to the new owner:
                    # sent straight to the new owner, the new owner's
                    # deliveries could overtake ours (an inversion).
                    back.setdefault(conn, []).append((MsgType.RECV, (name, credit)))
                    continue
                session = self._session_of(conn)
                if session is not None and credit > 0:
                    # (MAX_HOPS: the new owner keeps it, whatever its view yet)
                    grant = (MsgType.RECV, (name, credit))
                    grants.append((owner, conn, session, grant, MAX_HOPS))
        reserved = self._hand_reservations(pools, channels, grants, now, fx)
        if full:
            for group, held in list(core.groups.groups.items()):
                for channel, m in list(held.items()):
                    owner = self.route(channel)
                    if not owner:
                        continue
                    holder = m.holder
                    if "/" not in holder:  # a session of this node
                        self._remote_holders.add(holder)
                        holder = holder_of(self.me, self.incarnation, holder)
                    ttl = m.expires_at - now
                    if ttl > 0:
                        members.setdefault(owner, []).append(
                            (group, channel, holder, ttl, m.capacity)
                        )
                    core.groups.discard(group, channel)
        for owner in sorted(reserved):  # (before the queues they belong to)
            fx.peers.append((owner, Reservations(self.me, tuple(reserved[owner]))))
        for owner in sorted({*channels, *members}):
            entries = channels.get(owner, [])
            self.counters["handed_off"] += sum(len(c[1]) for c in entries)
            pieces = _handoff_pieces(entries)
            moved = tuple(members.get(owner, []))
            # (memberships go with the first piece, each set that had the
            # same group_sends just after what says which: the receiver
            # must not give those again, ``GroupReplication``)
            seen = self.fanouts_seen(moved) if moved and self.fanouts_seen else []
            first = seen[0][1] if seen else moved
            if seen:
                fx.peers.append((owner, seen[0][0]))
            for i, piece in enumerate(pieces or [[]]):
                fx.peers.append((owner, Handoff(self.me, tuple(piece), first if i == 0 else ())))
            for more_seen, more_members in seen[1:]:
                fx.peers.append((owner, more_seen))
                fx.peers.append((owner, Handoff(self.me, (), more_members)))
            fx.moved.extend((owner, group) for group in sorted({m[0] for m in moved}))
        if grants:  # after the messages, on the same pipe: they arrive first
            self._relay(grants, now, fx)
        for conn, credit_back in back.items():
            virtual = self._virtual[conn]
            fx.peers.append((virtual.origin, RelayBack(self.me, virtual.conn, tuple(credit_back))))

    def _pool_owners(self) -> dict[str, set[str]]:
        """Pools with send reservations or puts waiting for them that this
        node no longer owns -> the nodes that own them now: the owner of the
        pool's name and of each of its channels (the channels of a ``!``
        pool whose node has left are hashed one by one meanwhile, so its
        holder's sends may reach any of them; each is given the whole
        reservation: too many reserved slots only make a put wait for a
        revocation, too few would refuse a reserved send). An empty set:
        nobody owns it. A pool one of whose channels stays here stays."""
        moving: dict[str, set[str]] = {}
        for key, pool in self.core.queues.pools.items():
            if not pool.reserved and not pool.waiting:
                continue
            owners = {self.route(key), *(self.route(name) for name in pool.names)}
            if None not in owners:
                moving[key] = {o for o in owners if o}
        return moving

    def _hand_reservations(
        self,
        pools: dict[str, set[str]],
        channels: dict[str, list[tuple[str, list[Any]]]],
        grants: list[tuple[str, ConnId, Session, Message, int]],
        now: float,
        fx: Fx,
    ) -> dict[str, list[HandedReservation]]:
        """The send reservations of pools that moved, for their new owners
        (holders named as ``(node, incarnation, connection)``, as relays name
        them), and the puts that waited for them: an acknowledged send is
        sent on to the new owner, which decides it with the queue and the
        reservations in hand (so ``ChannelFull`` stays exact); a reserved
        send, a group_send's copies or a send of a client that has gone go
        with the queue (behind its messages: their order is kept), as the
        messages a reservation promised room for."""
        core = self.core
        out: dict[str, list[HandedReservation]] = {}
        for key, owners in pools.items():
            held, waiting = core.queues.take_reservations(key, now)
            for conn, slots, ttl in held:
                holder = self._holder(conn)
                if holder is None:
                    continue
                for owner in owners:
                    out.setdefault(owner, []).append((key, *holder, slots, ttl))
            for put in waiting:
                self._move_put(put, channels, grants, now, fx)
        return out

    def _holder(self, conn: ConnId) -> tuple[str, int, bytes, str, float] | None:
        """How other nodes name the client on ``conn``: (its node, that
        node's incarnation, its connection there, its session tag, its
        expiry); None for one of our clients that has moved away (it
        dropped its reservations when told we drain) or gone."""
        virtual = self._virtual.get(conn)
        if virtual is not None:
            expiry = virtual.session.policy.expiry
            return (virtual.origin, virtual.incarnation, virtual.conn, virtual.tag, expiry)
        session = self.core.sessions.by_conn.get(conn)
        if session is None or conn in self.core.moved:
            return None
        return (self.me, self.incarnation, conn, session.tag, session.policy.expiry)

    def _move_put(
        self,
        put: Put,
        channels: dict[str, list[tuple[str, list[Any]]]],
        grants: list[tuple[str, ConnId, Session, Message, int]],
        now: float,
        fx: Fx,
    ) -> None:
        """A put that waited here for reservations, when they move (see
        ``_hand_reservations``)."""
        token = put.token
        if isinstance(token, tuple) and token[1] and len(put.names) == 1:
            conn, req, channel = token
            session = self._session_of(conn)
            owner = self.route(channel)
            if session is not None and owner:
                fields = (req, channel, put.payload, put.capacity)
                send = (MsgType.SEND, fields if put.stamp is None else (*fields, put.stamp))
                grants.append((owner, conn, session, send, MAX_HOPS))
                return
        ttl = put.deadline - now
        item = [put.payload, ttl, 0] if put.stamp is None else [put.payload, ttl, 0, put.stamp]
        for name in put.names:
            owner = self.route(name)
            if owner is None:  # (a bundle's channel not made yet, which stays here)
                out, _added = self.core.adopt(((name, [item]),), (), now, handed_over=False)
                fx.out.extend(out)
                continue
            if not owner:  # nobody owns it any more
                self.core.counters.dropped_dead_owner += 1
                continue
            entries = channels.setdefault(owner, [])
            items = next((i for n, i in entries if n == name), None)
            if items is None:
                items = []
                entries.append((name, items))
            items.append(item)
        if isinstance(token, tuple) and token[1] and self._session_of(token[0]) is not None:
            fx.out.append((token[0], (MsgType.ACK, (token[1], 0))))  # (taken, or nobody owns it)

    def _sweep_soon(self, now: float) -> None:
        """Hand over strays once the views have been still for ``sweep_delay``
        (sooner, a node not yet told of a death could be handed them)."""
        self._sweep_at = now + self.sweep_delay

    def _session_of(self, conn: ConnId) -> Session | None:
        virtual = self._virtual.get(conn)
        if virtual is not None:
            return virtual.session
        return self.core.sessions.by_conn.get(conn)

    # -- timers ----------------------------------------------------------------------
    def next_deadline(self) -> float:
        deadline = self._next_load
        for until, _ in self._strangers.values():
            deadline = min(deadline, until)
        if self._held_relays:
            deadline = min(deadline, self._relays_until)
        if self._held_frames:
            deadline = min(deadline, self._frames_until)
        for _, until, _, _ in self._count_later.values():
            if until > self._ticked_at:  # (one past is kept for a peer's word)
                deadline = min(deadline, until)
        for until, _ in self._parked_flight.values():
            deadline = min(deadline, until)
        if self._load_seq() != self._reported_seq:
            # (after this tick, even if the messages came after its report)
            deadline = min(deadline, max(self._last_load, self._ticked_at) + self._soon)
        for provisional in self._provisional.values():
            deadline = min(deadline, provisional[2])
        for provisional, _ in self._earlier.values():
            deadline = min(deadline, provisional[2])
        if self._sweep_at is not None:
            deadline = min(deadline, self._sweep_at)
        # (every deadline is "when made + the bound then", and dicts keep
        # insertion order: the first entry left is about the earliest; the
        # node ticks often enough for the rest)
        if self._pending:
            deadline = min(deadline, next(iter(self._pending.values()))[1], self._pending_sooner)
        if self._asks:
            deadline = min(deadline, next(iter(self._asks.values())).deadline)
        if self._left_lives:
            deadline = min(deadline, min(self._left_lives.values()))
        if self._leaving:
            deadline = min(deadline, next(iter(self._leaving.values())))
        return deadline

    def waiting(self) -> bool:
        """Whether relayed requests wait for their owners' answers here."""
        return bool(self._pending)

    def _load_seq(self) -> tuple[int, int, int]:
        """What moves a load report sooner: the queues, what is parked, and
        the dead lives this node counted (the others keep a count for it)."""
        return (self.core.queues.seq, self.parked_count(), self._counted_gen)

    def tick(self, now: float, fx: Fx) -> None:
        """Timeouts, load reports, the stray sweep, held relays."""
        if self.passed.gone:
            self.passed.expire(now)
        for node in [n for n, (until, _) in self._strangers.items() if now >= until]:
            self._drop_strangers(self._strangers.pop(node)[1])
        if self._held_relays and now >= self._relays_until:
            self._take_held(now, fx)
        if self._held_frames and now >= self._frames_until:
            self._take_held_frames(now, fx)
        if len(self._sent_to) > 10_000:  # (only the last 2 * hold matter)
            old = [k for k, (_, at) in self._sent_to.items() if now - at >= 2 * self.hold]
            for sent in old:
                del self._sent_to[sent]
        late = [key for key, (_, deadline, _, _) in self._pending.items() if deadline <= now]
        while self._passed_on:  # (in the order passed on: the oldest first)
            key, (_, passed, _) = next(iter(self._passed_on.items()))
            if passed + self.timeout > now:
                break
            del self._passed_on[key]  # (its origin has answered by now)
        if self._pending_sooner <= now:
            self._pending_sooner = math.inf
            for _, deadline, _, _ in self._pending.values():
                if deadline > now:  # (one brought forward, or one in order)
                    self._pending_sooner = min(self._pending_sooner, deadline)
        if late:
            log.warning("%d relayed requests unanswered (owner died?)", len(late))
            for key in late:
                _, _, mtype, _ = self._pending.pop(key)
                if key in self._passed_due:
                    self._passed_due.discard(key)
                    if key[0] not in self._virtual:
                        continue  # (passed on for a client forgotten since)
                fx.out.append(self._unanswered(key, mtype))
        for qid in [q for q, a in self._asks.items() if a.deadline <= now]:
            log.warning(
                "cluster-wide %s: no answer from %s",
                self._asks[qid].kind,
                ", ".join(sorted(self._asks[qid].waiting)),
            )
            self._answer(qid, fx)
        # (a report soon after messages were queued, not only every
        # load_interval: what a SIGKILL takes with this node is counted from
        # its last report, so a fresher one counts closer to the truth)
        seq = self._load_seq()
        self._ticked_at = now
        if now >= self._next_load or (
            seq != self._reported_seq and now >= self._last_load + self._soon
        ):
            self._next_load = now + self.load_interval
            self._last_load, self._reported_seq = now, seq
            fx.peers.append((EVERYONE, Load(self.me, self._report(now))))
            for client in [c for c, (until, _) in self._counted_gone.items() if until <= now]:
                del self._counted_gone[client]
            for handed in [k for k, (until, _) in self._handed_flight.items() if until <= now]:
                del self._handed_flight[handed]
            if self._ended_flight and self._ended_flight_until <= now:
                self._ended_flight = {}
        for client, (until, _) in list(self._parked_flight.items()):
            # (nothing heard by then, or its node is in a new life: lost)
            if until <= now:
                self._count_parked(client, now)
        for client in [c for c in self._parked_stamps if c not in self._parked_flight]:
            del self._parked_stamps[client]
        for book in (self._forgot_credit, self._refused_credit):
            for client in [c for c, f in book.items() if f[0] <= now]:
                del book[client]
        if self._sweep_at is not None and now >= self._sweep_at:
            self._sweep_at = None
            self.handoff(now, fx, full=True)  # what a race left here goes to its owner
        if self._credit and now >= self._next_credit_check:
            self._next_credit_check = now + self.load_interval
            self._check_credit(now, fx)
        for node in [n for n, p in self._provisional.items() if p[2] <= now]:
            self._settle_death(node, None, now, presumed=True)
        for node in list(self._earlier):
            self._heard_after_earlier(node, now, presumed=True)
        if self._deferred:
            self._settle_deferred(now)
        for node, (lost, until, dead_life, no) in list(self._count_later.items()):
            if self._counts_for(node):
                if until > now and self._outranked(node, now):
                    continue  # (the peer before this one may be alive and count)
                self._count_dead(node, dead_life, lost, now, first=True, no=no)
            elif until + GONE_MEMORY <= now:
                # (the first survivor, told of it, says when it counted it:
                # until then this node keeps it, in case that survivor dies
                # first, or ends the life's count by an older report)
                del self._count_later[node]
        for counted in (self._counted, self._left_elsewhere):
            for ended in [k for k, until in counted.items() if until <= now]:
                del counted[ended]
        for said in [k for k, (until, _, _) in self._counted_elsewhere.items() if until <= now]:
            del self._counted_elsewhere[said]
        for tally in [k for k, (_, _, until) in self._tallies.items() if until <= now]:
            del self._tallies[tally]
        for client in [c for c, until in self._leaving.items() if until <= now]:
            # (what its client still holds is parked: the client keeps it
            # across its node's restart, takes it, and reports it through
            # the next life, ``reports_unheard``; counted if the park lapses.
            # Kill-free simulation seed 402, 7 ops: a consumer's node left
            # while it held a delivery, counted receiver_gone here; the
            # client took it and said so to the next life)
            self._forget_virtual(client, now, fx, lives_on=True)
        for life in [life for life, until in self._left_lives.items() if until <= now]:
            node = life[0]
            for holder in self.core.groups.holders(node + "@"):
                inc = holder[len(node) + 1 :].split("/", 1)[0]
                if inc.isdigit() and self._parked_life(node, int(inc)) == life:
                    self.core.groups.drop_holder(holder)
            del self._left_lives[life]


#: Bytes of user payload put in one handed-over frame: far under
#: a peer's frame limit (``max_frame_size``, 8 MiB by default), whatever the
#: batch; one message bigger than this still travels alone.
CHUNK_BYTES = 1024 * 1024


def _handoff_pieces(
    entries: list[tuple[str, list[Any]]],
) -> list[list[tuple[str, list[Any]]]]:
    """``[[channel, items], ...]`` cut into frames of about ``CHUNK_BYTES``.
    The receiver puts each handed-over piece of a channel *before* what it
    holds, so a channel cut in several pieces sends its last piece first."""
    flat: list[tuple[str, list[Any]]] = []
    for channel, items in entries:
        pieces: list[list[Any]] = [[]]
        size = 0
        for item in items:
            if pieces[-1] and size + len(item[0]) > CHUNK_BYTES:
                pieces.append([])
                size = 0
            pieces[-1].append(item)
            size += len(item[0]) + 24
        flat += [(channel, piece) for piece in reversed(pieces)]
    frames: list[list[tuple[str, list[Any]]]] = []
    size = CHUNK_BYTES + 1
    for entry in flat:
        approx = 64 + sum(len(item[0]) + 24 for item in entry[1])
        if size + approx > CHUNK_BYTES:
            frames.append([])
            size = 0
        frames[-1].append(entry)
        size += approx
    return frames
