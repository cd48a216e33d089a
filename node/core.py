"""The node's decisions: sans-I/O, one method per thing that can happen.

Owns: what a node does with each client message and each tick — queue,
deliver, refuse, expire, forget a dead client — composed from ``Queues``,
``Groups`` and ``Sessions``. Every method takes ``now`` (monotonic seconds)
and returns the messages to send as ``[(connection, message), ...]``; the
asyncio shell (``zchannels.node.server``) does the sending. Does not own:
sockets, clocks, encoding, logging.

Design (STYLE.md §1): the same core runs under the real shell and in unit
tests with a fake clock, so leases, expiry and delivery order are tested
deterministically in microseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from zchannels.names import (
    SESSION_TAG_LEN,
    owner_of,
    pool_of,
    valid_wire_channel,
    valid_wire_group,
)
from zchannels.protocol import ErrorCode, Message, MsgType

from .groups import Groups
from .queues import MAX_CREDIT, ConnId, Deferred, Delivery, Outcome, Queues, Stamp
from .sessions import Policy, PolicyError, Session, Sessions, hello_reserved, valid_duration

Out = tuple[ConnId, Message]

#: Largest capacity a client may ask for one channel (messages).
MAX_CAPACITY = 10_000_000
#: Most nodes a relayed message passes through before the last one keeps it
#: (members' views of who owns what differ for milliseconds after a change).
MAX_HOPS = 4
#: connections whose sessions ``undeliverable`` remembers (``NodeCore._gone``)
_GONE_KEPT = 256
#: Client messages a node relays to a channel's owner.
RELAYED = frozenset(
    {
        MsgType.SEND,
        MsgType.RECV,
        MsgType.RETURN,
        MsgType.GROUP_ADD,
        MsgType.GROUP_DISCARD,
        MsgType.CONSUMED,
        MsgType.REVOKED,
    }
)


@dataclass(slots=True)
class NodeCounters:
    """Why messages and frames were dropped, for operators (``znode status``)."""

    dropped_dead_owner: int = 0  # sent to a channel whose process or node is gone
    group_skipped_full: int = 0  # of the "full" drops: group_send members skipped
    bad_requests: int = 0  # well-formed frames with nonsensical content
    unexpected_type: int = 0  # node-to-client types sent to the node
    sessions_expired: int = 0  # client processes whose lease lapsed
    sessions_closed: int = 0  # client processes that closed cleanly
    undeliverable: int = 0  # deliveries to a connection that had gone (requeued)
    limited: int = 0  # requests refused by a per-client bound (LIMIT)
    slow_clients: int = 0  # clients cut off for not reading their replies
    #: of the "dead_owner" drops: handed over after the channel was served
    #: here (older than what was delivered: ``Queues.adopt``)
    handed_over_stale: int = 0
    #: of the "dead_owner" drops: reserved sends a client made that no life
    #: of this node read (in a SIGKILLed process's socket:
    #: ``Sessions.reserved_hello``)
    reserved_unread: int = 0
    #: of the "receiver_gone" drops: what a SIGKILLed life had handed its
    #: clients whose processes never came back (``Sessions.prune_inherited``)
    flight_unclaimed: int = 0
    #: of the "dead_owner" drops: what a previous life of this node had
    #: handed a client, given back to this one before its HELLO
    returned_to_next_life: int = 0


@dataclass(slots=True)
class ClusterWork:
    """What one core step leaves for the rest of the cluster node (routing
    and group replication), beside the answers to its clients. The composer
    (``zchannels.node.cluster``) makes one per step, passes it in, and hands
    it on; a core outside a cluster is given none."""

    #: client messages for channels another node owns: (owner, conn,
    #: session, message, hops)
    relays: list[tuple[str, ConnId, Session, Message, int]] = field(default_factory=list)
    #: cluster-wide requests (flush, group members) the other nodes must
    #: answer before the client is: (conn, req, kind, arg, local result)
    asks: list[tuple[ConnId, int, str, str, list[str]]] = field(default_factory=list)
    #: group_add answers that wait until the peers have the change
    held_acks: list[tuple[ConnId, int, str]] = field(default_factory=list)
    #: group_sends for the other nodes with members: (group, payload, ttl,
    #: the groups' version when it reached this node's own members)
    fanouts: list[tuple[str, bytes, float, int]] = field(default_factory=list)
    #: connections and client sessions that went away
    gone_conns: list[ConnId] = field(default_factory=list)
    gone_sessions: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CoreSettings:
    node_id: str
    node_tag: str
    incarnation: str
    lease: float  # client session lease, seconds
    max_frame: int  # largest frame the shell accepts, bytes
    sweep_interval: float = 1.0  # how often expired messages/memberships are swept
    #: first message sequence number: a restarted node starts above its old
    #: self (time-based), so messages given back to it sort as older
    first_seq: int = 0
    #: per-client bounds: channels one session may make exist, and group
    #: memberships it may hold (a runaway or hostile client cannot exhaust
    #: the node's memory)
    max_client_channels: int = 100_000
    max_client_group_entries: int = 100_000


class NodeCore:
    def __init__(self, settings: CoreSettings) -> None:
        self.settings = settings
        self.queues = Queues(settings.first_seq)
        self.groups = Groups()
        self.sessions = Sessions(settings.lease)
        self.counters = NodeCounters()
        self._next_sweep = 0.0
        #: group -> (groups version, sessions version, valid until, plan, dead)
        self._plans: dict[str, tuple[int, int, float, list[tuple[list[str], int]], int]] = {}
        #: Where a channel lives (given by the cluster node): None when this
        #: node owns it, the owner's id when another node does, "" when no
        #: live node does (a new_channel() name of a dead node).
        self.route: Callable[[str], str | None] | None = None
        #: Where a client's report of what it took of a channel goes as
        #: well as to where the channel lives: a node this node thinks dead
        #: that handed it those messages (``Routing.report_to``), or None.
        self.report_to: Callable[[ConnId, str], str | None] | None = None
        #: Of the first ``count`` messages of a channel a client of this
        #: node took or gave back, how many this node answers for (an owner
        #: handed the channel on while the client held them:
        #: ``Routing.taken_here``, ``passed``): not reported on.
        self.taken_here: Callable[[ConnId, str, int], int] | None = None
        #: during one step in a cluster: what it leaves for the cluster
        self._work: ClusterWork | None = None
        #: connections found gone (``undeliverable``), newest last: their sessions
        self._gone: dict[ConnId, Session] = {}
        #: connections dropped here, newest last: what each was handed and
        #: had not given back, counted lost as it was dropped
        #: (``receiver_gone``); a delivery to it that bounces afterwards is
        #: not given back as well (``undeliverable``)
        self._counted_flight: dict[ConnId, dict[str, set[int]]] = {}
        self._hops = 0  # while handling relayed messages: how far they came
        #: this life's count of its clients' sends, and the life (its first
        #: incarnation): a send's ``Stamp`` (in a cluster only)
        self._sent = 0
        self._life = int(settings.incarnation) if settings.incarnation.isdigit() else 0
        #: in a cluster: members of a group held here for an earlier life of
        #: a node live again in a newer one (its own group_send skips them:
        #: ``GroupReplication.superseded_here``)
        self.superseded: Callable[[str], set[str]] | None = None
        #: more status from the cluster node (its member table), if any
        self.extra_status: Callable[[], dict[str, Any]] | None = None
        #: malformed frames dropped by the shell, by reason ("version", ...)
        self.decode_errors: dict[str, int] = {}
        #: a drain (``begin_drain``): clients are told DRAIN, and ``moved``
        #: holds the connections that have said MOVING
        self.draining = False
        self.moved: set[ConnId] = set()
        #: a client asked this node to drain and stop (``STOP``, ``znode drain``)
        self.stop_requested = False
        #: until when sessions this node does not know yet may still come
        #: back (its previous life's clients, after a restart): their
        #: process-specific channels are kept, not dropped as dead
        self._grace_until: float | None = None
        #: this life serves (``start``): before, what is handed over is
        #: kept whoever it is for (its processes have not come back yet)
        self._started = False
        #: sessions that ended here during the grace (gone for good)
        self._ended: set[str] = set()
        self._handlers: dict[
            MsgType, Callable[[ConnId, Session | None, tuple[Any, ...], float, list[Out]], None]
        ] = {
            MsgType.HELLO: self._hello,
            MsgType.PING: self._ping,
            MsgType.SEND: self._send,
            MsgType.RECV: self._recv,
            MsgType.RETURN: self._return,
            MsgType.GROUP_ADD: self._group_add,
            MsgType.GROUP_DISCARD: self._group_discard,
            MsgType.GROUP_SEND: self._group_send,
            MsgType.FLUSH: self._flush,
            MsgType.BYE: self._bye,
            MsgType.STATUS: self._status,
            MsgType.GROUP_INFO: self._group_info,
            MsgType.CONSUMED: self._consumed,
            MsgType.CONSUMED_BUNDLES: self._consumed_bundles,
            MsgType.REVOKED: self._revoked,
            MsgType.MOVING: self._moving,
            MsgType.STOP: self._stop,
        }

    # -- entry points ----------------------------------------------------
    def handle(
        self, conn: ConnId, messages: list[Message], now: float, work: ClusterWork | None = None
    ) -> list[Out]:
        """Messages that arrived in one frame from ``conn``; in a cluster,
        what is for other nodes is left in ``work``."""
        out: list[Out] = []
        self._work = work
        try:
            for mtype, fields in messages:
                handler = self._handlers.get(mtype)
                if handler is None:
                    self.counters.unexpected_type += 1
                    continue
                if mtype == MsgType.SEND and not fields[0]:
                    self.sessions.reserved_read(conn)
                session = self.sessions.touch(conn, now)
                handler(conn, session, fields, now, out)
        finally:
            self._work = None
        return out

    def handle_relayed(
        self,
        conn: ConnId,
        session: Session,
        messages: tuple[Message, ...],
        hops: int,
        now: float,
        work: ClusterWork,
    ) -> list[Out]:
        """Client messages another node relayed here (this node owns their
        channels); ``conn`` stands for the client there, ``session`` for its
        session (holder ``"node@incarnation/tag"``). Answers go to ``conn``."""
        out: list[Out] = []
        self._hops, self._work = hops, work
        try:
            for mtype, fields in messages:
                if mtype in RELAYED:
                    self._handlers[mtype](conn, session, fields, now, out)
                else:
                    self.counters.bad_requests += 1
        finally:
            self._hops, self._work = 0, None
        return out

    def start(self, now: float) -> None:
        """This life begins: for one lease, a process-specific channel of a
        session not (yet) registered here is kept (its process may be
        reconnecting after this node's restart), not dropped as dead."""
        self._grace_until = now + self.settings.lease
        self._started = True

    def begin_drain(self) -> list[Out]:
        """Tell every client this node is going away (``DRAIN``): each gives
        back what it holds and says ``MOVING``; ``drained()`` says when all
        have. A client that says HELLO meanwhile is told the same."""
        self.draining = True
        drain: Message = (MsgType.DRAIN, (self.settings.incarnation,))
        return [(conn, drain) for conn in self.sessions.by_conn if conn not in self.moved]

    def drained(self) -> bool:
        """Every connection of a client has said MOVING (or gone)."""
        return self.draining and all(conn in self.moved for conn in self.sessions.by_conn)

    def tick(self, now: float, work: ClusterWork | None = None) -> list[Out]:
        """Periodic work: lapsed leases, expired messages and memberships."""
        out: list[Out] = []
        self._work = work
        try:
            if self._grace_until is not None and now >= self._grace_until:
                self._grace_until = None
                self._ended.clear()
                self._drop_unclaimed()
            for session in self.sessions.expired(now):
                self._drop_session(session.tag, now, out)
                self.counters.sessions_expired += 1
            unclaimed = self.sessions.prune_inherited(now)
            if unclaimed:
                self.queues.counters.dropped_receiver_gone += unclaimed
                self.counters.flight_unclaimed += unclaimed
            if now >= self._next_sweep:
                self._next_sweep = now + self.settings.sweep_interval
                self._outcome(self.queues.expire(now), out)
                self.groups.expire(now)
        finally:
            self._work = None
        return out

    def next_deadline(self) -> float:
        """When ``tick`` next has work (the expiry sweep; leases are checked
        at every tick the cluster node makes)."""
        if self._grace_until is not None:
            return min(self._next_sweep, self._grace_until)
        return self._next_sweep

    def undeliverable(
        self, conn: ConnId, messages: list[Message], now: float, work: ClusterWork | None = None
    ) -> list[Out]:
        """The shell could not send ``messages`` to ``conn`` (it is gone):
        forget the connection and put its deliveries back, in order."""
        out: list[Out] = []
        # (what was counted lost as the connection was dropped before its
        # deliveries bounced, its session lapsing in the same step, is not
        # queued again: simulation seed 2785, a stalled channel of a dead
        # process holding a message counted lost)
        counted = self._counted_flight.get(conn, {})
        for mtype, fields in reversed(messages):
            if mtype == MsgType.DELIVER:
                channel, items = fields
                self.counters.undeliverable += len(items)
                skip = counted.get(channel)
                if skip:
                    items = [item for item in items if item[2] not in skip]
                self._returned_here(conn, channel, items, work)
                self.deliver(self.queues.give_back(conn, channel, items, now), out)
            elif mtype == MsgType.DELIVER_MANY or mtype == MsgType.DELIVER_BUNDLE:
                channels, item = fields
                self.counters.undeliverable += len(channels)
                for channel in channels:
                    if item[2] not in counted.get(channel, ()):
                        self.deliver(self.queues.give_back(conn, channel, [item], now), out)
        self._drop_conn(conn, now, out)
        session = self.sessions.by_conn.get(conn)
        if session is not None:
            # (deliveries still on their way to it bounce later: whose they
            # were is still told, ``_returned_here``)
            self._gone[conn] = session
            while len(self._gone) > _GONE_KEPT:
                del self._gone[next(iter(self._gone))]
        self.sessions.close_conn(conn)
        if work is not None:
            work.gone_conns.append(conn)
        return out

    def forget_conn(self, conn: ConnId, now: float) -> list[Out]:
        """A connection of another node's client is gone (its node said so,
        died or restarted): what it held lapses."""
        out: list[Out] = []
        self._outcome(self.queues.drop_conn(conn, now), out)
        return out

    def decode_error(self, reason: str) -> None:
        self.decode_errors[reason] = self.decode_errors.get(reason, 0) + 1

    def drops(self) -> dict[str, int]:
        """Messages and frames dropped, by reason (``znode status``)."""
        q = self.queues.counters
        return {
            "full": q.dropped_full,
            "expired": q.dropped_expired,
            "dead_owner": self.counters.dropped_dead_owner,
            "receiver_gone": q.dropped_receiver_gone,
            "decode_error": sum(self.decode_errors.values()),
        }

    def status(self) -> dict[str, Any]:
        q = self.queues.counters
        return {
            "node_id": self.settings.node_id,
            "incarnation": self.settings.incarnation,
            "sessions": len(self.sessions),
            "connections": len(self.sessions.by_conn),
            "channels": len(self.queues.channels),
            "queued": self.queues.queued(),
            # (handed to receivers, here or through peers, not reported taken yet)
            "in_flight": sum(self.queues.flying.values()),
            "groups": len(self.groups.groups),
            "group_entries": len(self.groups),
            "counters": {
                "enqueued": q.enqueued,
                "delivered": q.delivered,
                "dropped_full": q.dropped_full,
                "dropped_expired": q.dropped_expired,
                "dropped_receiver_gone": q.dropped_receiver_gone,
                "put_in_order": q.put_in_order,
                "group_expired": self.groups.expired,
                "decode_errors": sum(self.decode_errors.values()),
                **asdict(self.counters),
            },
            "decode_errors": dict(self.decode_errors),
            "drops": self.drops(),
            **(self.extra_status() if self.extra_status is not None else {}),
        }

    # -- handlers --------------------------------------------------------
    def _hello(
        self, conn: ConnId, _s: Session | None, f: tuple[Any, ...], now: float, out: list[Out]
    ) -> None:
        tag, pid, raw_policy = f
        try:
            if len(tag) != SESSION_TAG_LEN or not tag.isalnum():
                raise PolicyError(f"bad session tag {tag[:40]!r}")
            policy = Policy.from_wire(raw_policy)
        except PolicyError as exc:
            self.counters.bad_requests += 1
            out.append((conn, (MsgType.ERROR, (0, ErrorCode.BAD_REQUEST, str(exc)))))
            return
        self._counted_flight.pop(conn, None)  # (a connection id said hello anew)
        self.sessions.hello(conn, tag, pid, policy, now)
        unread = self.sessions.reserved_hello(conn, hello_reserved(raw_policy))
        if unread:
            self.counters.dropped_dead_owner += unread
            self.counters.reserved_unread += unread
        s = self.settings
        if self.draining:  # (registered, so its pings are answered, not RESET)
            out.append((conn, (MsgType.DRAIN, (s.incarnation,))))
            return
        out.append(
            (conn, (MsgType.WELCOME, (s.node_id, s.node_tag, s.incarnation, s.lease, s.max_frame)))
        )

    def _ping(
        self, conn: ConnId, session: Session | None, _f: tuple[Any, ...], _n: float, out: list[Out]
    ) -> None:
        mtype = MsgType.PONG if session is not None else MsgType.RESET
        out.append((conn, (mtype, (self.settings.incarnation,))))

    def _send(
        self, conn: ConnId, session: Session | None, f: tuple[Any, ...], now: float, out: list[Out]
    ) -> None:
        req, channel, payload, capacity = f[:4]
        # Where the send stands among its producer's (``Stamp``): given here,
        # where it enters the cluster, or carried by the relay that brought it
        # (a fifth field, inside the node and on the wire within
        # ``PEER_RELAY_STAMPED``; an older node's relay has none).
        stamp: Stamp | None = f[4] if len(f) > 4 else None
        if stamp is None and not self._hops and self.route is not None and session is not None:
            self._sent += 1
            stamp = (f"{self.settings.node_id}/{session.tag}", self._life, self._sent)
            f = (req, channel, payload, capacity, stamp)
        if session is None:
            if not req:
                # A reserved send (the layer keeps no copy) from a process
                # this node forgot (its lease lapsed, it died): refused and
                # lost, so counted here, the one place that knows.
                self.counters.dropped_dead_owner += 1
            return self._unknown(conn, req, out)
        if not valid_wire_channel(channel):
            return self._bad(conn, req, f"invalid channel name {channel[:120]!r}", out)
        if not 0 < capacity <= MAX_CAPACITY:
            return self._bad(conn, req, f"bad capacity {capacity}", out)
        if self._relay(conn, session, MsgType.SEND, f, channel, out):
            return None
        if not self._owner_alive(channel, now):
            self.counters.dropped_dead_owner += 1
            if req:
                out.append((conn, (MsgType.ACK, (req, 0))))
            return None
        if not self._may_create(session, channel):
            return self._limit(conn, req, f"this client made {len(session.created)} channels", out)
        expiry = session.policy.expiry
        result = self.queues.put(
            channel,
            payload,
            now + expiry,
            capacity,
            now,
            sender=conn,
            token=(conn, req, channel),
            stamp=stamp,
        )
        if result is False:
            if req:
                out.append((conn, (MsgType.ERROR, (req, ErrorCode.CHANNEL_FULL, channel))))
            return None
        if isinstance(result, Deferred):  # answered once reservations are given up
            self._revoke(result, out)
            return None
        if result is not True:
            self.deliver([result], out)
        if req:
            reserved = self.queues.reserve(conn, channel, capacity, now)
            out.append((conn, (MsgType.ACK, (req, reserved))))
        return None

    def _recv(
        self, conn: ConnId, session: Session | None, f: tuple[Any, ...], now: float, out: list[Out]
    ) -> None:
        channel, credit = f
        if session is None:
            out.append((conn, (MsgType.RESET, (self.settings.incarnation,))))
            return
        if not valid_wire_channel(channel) or credit < 0:
            self.counters.bad_requests += 1
            return
        if self._relay(conn, session, MsgType.RECV, f, channel, out):
            return
        if not self._may_create(session, channel):
            self.counters.limited += 1
            return
        self.deliver(self.queues.grant(conn, channel, credit, now), out)

    def _return(
        self, conn: ConnId, session: Session | None, f: tuple[Any, ...], now: float, out: list[Out]
    ) -> None:
        req, channel, items, withdraw = f[:4]
        if session is None:
            # (its items are lost: the node they came from is gone, or the
            # lease lapsed; at-most-once. Counted here if the previous life
            # of this node handed them, by its record or note: else they
            # were counted as that session was dropped)
            lost = self.sessions.settle_inherited(conn, len(items))
            if lost:
                self.counters.dropped_dead_owner += lost
                self.counters.returned_to_next_life += lost
            out.append((conn, (MsgType.RESET, (self.settings.incarnation,))))
            return
        if not valid_wire_channel(channel) or len(items) > MAX_CREDIT or not wire_items(items):
            self.counters.bad_requests += 1
            return
        if not self._hops and self.taken_here is not None:
            self.taken_here(conn, channel, len(items))  # (queued again where it goes)
        # The stamps of what it gives back (``queues.Stamp``), as ``(index in
        # items, producer, life, n)``: a fifth field, inside the node and on
        # the wire within ``PEER_RELAY_STAMPED``, added by the client's node
        # (``ClusterNode``: what it handed or passed on to its client), so
        # that the owner, which may not have handed them, puts them back
        # where their producers' order says
        stamps: tuple[tuple[int, str, int, int], ...] = f[4] if len(f) > 4 else ()
        if self._relay(conn, session, MsgType.RETURN, f, channel, out):
            return
        if self._hops < MAX_HOPS:
            self._returned_here(conn, channel, items, self._work)
        each: list[Stamp | None] | None = None
        if stamps:
            each = [None] * len(items)
            for i, producer, life, n in stamps:
                if 0 <= i < len(items):
                    each[i] = (producer, life, n)
        self.deliver(self.queues.give_back(conn, channel, items, now, bool(withdraw), each), out)
        if withdraw:
            out.append((conn, (MsgType.ACK, (req, 1))))

    def _returned_here(
        self, conn: ConnId, channel: str, items: list[Any], work: ClusterWork | None
    ) -> None:
        """``conn`` gives back here, to this node's queue of ``channel``,
        messages another node handed it (not in this node's flight): that
        node, if ``report_to`` names it (declared dead here: its flight to
        ``conn`` is parked there if it lives), is told they are no longer
        its, as if taken (a copy of a report), so it does not count them
        lost as well (simulation seed 188 without kills: a 0.3 s lag, a
        client gone, its deliveries given back by its node as owner in its
        view, handed back later and delivered, and counted lost by the
        owner that had parked them)."""
        if self.report_to is None or work is None:
            return
        also = self.report_to(conn, channel)
        session = self.sessions.by_conn.get(conn) or self._gone.get(conn)
        if not also or session is None:
            return
        ch = self.queues.channels.get(channel)
        flight = ch.flight.get(conn, {}) if ch is not None else {}
        seqs = [item[2] for item in items if item[2] not in flight]
        if seqs:
            copy = (MsgType.CONSUMED, ([[channel, max(seqs), len(seqs), 0]],))
            work.relays.append((also, conn, session, copy, MAX_HOPS))

    def _handed_here(self, conn: ConnId, channel: str, seq: int) -> bool:
        """Whether this node's own flight to ``conn`` holds ``seq`` of
        ``channel``: a report of it is this node's, and no copy of it goes
        to another node that delivered to ``conn`` before (its numbers
        are its own, and may be the same: simulation seed 388, a copy of
        a report of this node's deliveries freed another node's parked
        ones, which never arrived)."""
        ch = self.queues.channels.get(channel)
        return ch is not None and seq in ch.flight.get(conn, ())

    def _consumed(
        self, conn: ConnId, session: Session | None, f: tuple[Any, ...], _n: float, out: list[Out]
    ) -> None:
        (reports,) = f
        if session is None:
            # (taken by a client of the previous life: not lost with it;
            # simulation seed 265, 12 reports of a client that died as its
            # node left, read by the next life)
            if self.sessions.inherits_flight():
                self.sessions.settle_inherited(conn, reported_in([(MsgType.CONSUMED, f)]))
            return
        consumed = self.queues.consumed
        known = self.queues.channels
        local = self.route is None or self._hops >= MAX_HOPS
        for report in reports[:MAX_CREDIT]:
            # (exact type checks: the hot path of every receive, once per
            # member of a group_send; bool is not int here. A channel this
            # node holds was checked when it was made.)
            if type(report) is not list or len(report) != 4:
                self.counters.bad_requests += 1
                continue
            channel, upto, count, expired = report
            if (
                type(upto) is not int
                or type(count) is not int
                or type(expired) is not int
                or not 0 <= expired <= count
                or type(channel) is not str
                or (channel not in known and not valid_wire_channel(channel))
            ):
                self.counters.bad_requests += 1
                continue
            if not self._hops and self.taken_here is not None:
                adopted = self.taken_here(conn, channel, count)
                if adopted:
                    # (released here; which were found expired is not
                    # said: the adopted ones, handed first, take them first)
                    stale = min(expired, adopted)
                    self.queues.counters.dropped_expired += stale
                    count, expired = count - adopted, expired - stale
                    if not count:
                        continue
                    report = [channel, upto, count, expired]
            if not local and not (self._hops and self._handed_here(conn, channel, upto)):
                # (a report passed on to this node of what this node handed
                # is its own, whoever owns the channel in its view: passed
                # on again to the owner it sees, it went round between two
                # nodes whose views differed until its hops ran out, and the
                # flight here was never released; kill-free simulation seed
                # 777, 7 ops: a node that left while a partition cut a peer
                # off from its LEFT, which served its client's channel in the
                # meantime)
                also = self.report_to(conn, channel) if self.report_to is not None else None
                if also and self._work is not None and not self._handed_here(conn, channel, upto):
                    # (MAX_HOPS: taken there, never passed on to the owner,
                    # which has the report itself; expiry is the owner's to
                    # count, once)
                    copy = (MsgType.CONSUMED, ([[channel, upto, count, 0]],))
                    self._work.relays.append((also, conn, session, copy, MAX_HOPS))
                if self._relay(conn, session, MsgType.CONSUMED, ([report],), channel, out):
                    if not self._hops and self.queues.held_stamps:
                        # (the stamps of what it took, kept for a give-back,
                        # are not needed any more: ``Queues.held_stamps``)
                        self.queues.took(conn, channel, count)
                    continue
            consumed(conn, channel, upto, count, expired)

    def _consumed_bundles(
        self, conn: ConnId, session: Session | None, f: tuple[Any, ...], _n: float, out: list[Out]
    ) -> None:
        (bundles,) = f
        if session is None:
            if self.sessions.inherits_flight():
                self.sessions.settle_inherited(conn, reported_in([(MsgType.CONSUMED_BUNDLES, f)]))
            return
        # (only ever for a DELIVER_BUNDLE this node's queues sent this
        # connection: never relayed, and a bundle this node no longer holds
        # has no copy left to release)
        consumed = self.queues.consumed_bundle
        for entry in bundles[:MAX_CREDIT]:
            # [seq, start, end, start, end, ...]: exact type checks, bool is
            # not int; positions past a delivery's end select nothing
            if (
                type(entry) is not list
                or len(entry) % 2 != 1
                or not all(type(x) is int and x >= 0 for x in entry)
            ):
                self.counters.bad_requests += 1
                continue
            if consumed(conn, entry[0], entry[1:]) < 0:
                self.counters.bad_requests += 1  # (it named copies twice: cut short)

    def _revoked(
        self, conn: ConnId, session: Session | None, f: tuple[Any, ...], now: float, out: list[Out]
    ) -> None:
        (channel,) = f
        if session is None or not valid_wire_channel(channel):
            if session is not None:
                self.counters.bad_requests += 1
            return
        if self._relay(conn, session, MsgType.REVOKED, f, channel, out):
            return
        self._outcome(self.queues.revoked(conn, channel, now), out)

    def _group_add(
        self, conn: ConnId, session: Session | None, f: tuple[Any, ...], now: float, out: list[Out]
    ) -> None:
        req, group, channel, expiry, capacity = f
        if session is None:
            return self._unknown(conn, req, out)
        if not valid_wire_group(group) or not valid_wire_channel(channel):
            return self._bad(conn, req, "invalid group or channel name", out)
        if not valid_duration(expiry) or not 0 < capacity <= MAX_CAPACITY:
            return self._bad(conn, req, f"bad expiry {expiry!r} or capacity {capacity!r}", out)
        if self._relay(conn, session, MsgType.GROUP_ADD, f, channel, out):
            return None
        held = self.groups.held_by(session.tag)
        if held >= self.settings.max_client_group_entries and channel not in self.groups.groups.get(
            group, {}
        ):
            return self._limit(conn, req, f"this client holds {held} group memberships", out)
        new = self.groups.add(group, channel, session.tag, now + expiry, capacity)
        if new and self._work is not None:
            self._work.held_acks.append((conn, req, group))
        else:
            out.append((conn, (MsgType.ACK, (req, 1))))
        return None

    def _group_discard(
        self, conn: ConnId, session: Session | None, f: tuple[Any, ...], _n: float, out: list[Out]
    ) -> None:
        req, group, channel = f
        if session is None:
            return self._unknown(conn, req, out)
        if not valid_wire_group(group) or not valid_wire_channel(channel):
            return self._bad(conn, req, "invalid group or channel name", out)
        if self._relay(conn, session, MsgType.GROUP_DISCARD, f, channel, out):
            return None
        self.groups.discard(group, channel)
        if req:
            out.append((conn, (MsgType.ACK, (req, 1))))
        return None

    def _group_send(
        self, conn: ConnId, session: Session | None, f: tuple[Any, ...], now: float, out: list[Out]
    ) -> None:
        req, group, payload = f
        if session is None:
            return self._unknown(conn, req, out)
        if not valid_wire_group(group):
            return self._bad(conn, req, "invalid group name", out)
        only = None
        if self.superseded is not None and self.groups.has_node_memberships():
            skip = self.superseded(group)
            if skip:
                only = [c for c in self.groups.members(group, now) if c not in skip]
        reached = self._fan_out(group, payload, session.policy.expiry, now, out, only)
        if self._work is not None:
            self._work.fanouts.append((group, payload, session.policy.expiry, self.groups.version))
        out.append((conn, (MsgType.ACK, (req, reached))))
        return None

    def fanout_from_peer(
        self,
        group: str,
        payload: bytes,
        ttl: float,
        now: float,
        only: Collection[str] | None = None,
    ) -> list[Out]:
        """Another node's group_send, for this node's members of ``group``
        (``only``: for those of them, a fanout passed on after a handover)."""
        out: list[Out] = []
        if valid_wire_group(group) and valid_duration(ttl):
            self._fan_out(group, payload, ttl, now, out, only)
        else:
            self.counters.bad_requests += 1
        return out

    def _fan_out(
        self,
        group: str,
        payload: bytes,
        ttl: float,
        now: float,
        out: list[Out],
        only: Collection[str] | None = None,
    ) -> int:
        deadline = now + ttl
        reached = 0
        pools, dead = self._plan(group, now, only)
        self.counters.dropped_dead_owner += dead
        deliveries: list[Delivery] = []
        queues = self.queues
        for names, capacity in pools:
            delivered, placed, deferred = queues.put_many(names, payload, deadline, capacity, now)
            if deferred is not None:
                self._revoke(deferred, out)
                reached += len(names)
                continue
            if placed == 0:
                self.counters.group_skipped_full += len(names)
            reached += placed
            deliveries.extend(delivered)
        self.deliver(deliveries, out)
        return reached

    def _plan(
        self, group: str, now: float, only: Collection[str] | None = None
    ) -> tuple[list[tuple[list[str], int]], int]:
        """A group_send's plan: the live members (of ``only``, if given)
        grouped by capacity pool (the process-specific channels of one
        process get one bundle), and how many members are dead owners'
        (dropped, counted). Cached until the groups or the sessions change
        or a member's expiry comes (not for ``only``: rare, and small)."""
        cached = self._plans.get(group)
        if (
            only is None
            and cached is not None
            and cached[0] == self.groups.version
            and cached[1] == self.sessions.version
            and now < cached[2]
        ):
            return cached[3], cached[4]
        by_pool: dict[str, tuple[list[str], int]] = {}
        dead = 0
        until = float("inf")
        for channel, membership in self.groups.live(group, now):
            if only is not None and channel not in only:
                continue
            until = min(until, membership.expires_at)
            if not self._owner_alive(channel, now):
                dead += 1
                continue
            key = pool_of(channel)
            entry = by_pool.get(key)
            if entry is None:
                by_pool[key] = ([channel], membership.capacity)
            else:
                entry[0].append(channel)
        pools = list(by_pool.values())
        if self._grace_until is not None:  # (who counts as alive changes then)
            until = min(until, self._grace_until)
        if only is not None:
            return pools, dead
        if len(self._plans) > 10_000:
            self._plans.clear()
        self._plans[group] = (self.groups.version, self.sessions.version, until, pools, dead)
        return pools, dead

    def _flush(
        self, conn: ConnId, session: Session | None, f: tuple[Any, ...], _n: float, out: list[Out]
    ) -> None:
        req, prefix = f
        if session is None:
            return self._unknown(conn, req, out)
        out.extend(self.clear(prefix))
        if self._work is not None:  # answered once every live node has cleared too
            self._work.asks.append((conn, req, "flush", prefix, []))
        else:
            out.append((conn, (MsgType.ACK, (req, 1))))
        return None

    def clear(self, prefix: str) -> list[Out]:
        """flush() of namespace ``prefix`` on this node: queues, what was
        prefetched (its receivers are told to drop it) and groups."""
        told = self.queues.clear(prefix)
        self.groups.clear(prefix)
        return [(conn, (MsgType.FLUSHED, (prefix,))) for conn in told]

    def _bye(
        self, conn: ConnId, _s: Session | None, f: tuple[Any, ...], now: float, out: list[Out]
    ) -> None:
        req, final = f
        self._drop_conn(conn, now, out)
        if self._work is not None:
            self._work.gone_conns.append(conn)
        session = self.sessions.by_conn.get(conn)
        self.sessions.close_conn(conn)
        if final and session is not None:
            # The process closed its layer: it is gone, cleanly.
            self._drop_session(session.tag, now, out)
            self.counters.sessions_closed += 1
        out.append((conn, (MsgType.ACK, (req, 1))))

    def _moving(
        self, conn: ConnId, _s: Session | None, _f: tuple[Any, ...], _n: float, _o: list[Out]
    ) -> None:
        self.moved.add(conn)

    def _stop(
        self, conn: ConnId, _s: Session | None, f: tuple[Any, ...], _n: float, out: list[Out]
    ) -> None:
        self.stop_requested = True
        out.append((conn, (MsgType.ACK, (f[0], len(self.sessions)))))

    def _status(
        self, conn: ConnId, _s: Session | None, f: tuple[Any, ...], _n: float, out: list[Out]
    ) -> None:
        out.append((conn, (MsgType.STATUS_REPLY, (f[0], self.status()))))

    def _group_info(
        self, conn: ConnId, _s: Session | None, f: tuple[Any, ...], now: float, out: list[Out]
    ) -> None:
        req, group = f
        members = self.groups.members(group, now)
        if self._work is not None:  # the other nodes hold the rest of the group
            self._work.asks.append((conn, req, "members", group, members))
        else:
            out.append((conn, (MsgType.GROUP_INFO_REPLY, (req, members))))

    # -- helpers ---------------------------------------------------------
    def _relay(
        self,
        conn: ConnId,
        session: Session,
        mtype: MsgType,
        f: tuple[Any, ...],
        channel: str,
        out: list[Out],
    ) -> bool:
        """In a cluster: leave a message for ``channel``'s owner if that is
        another node (True), or say this node handles it (False)."""
        route = self.route
        if route is None or self._hops >= MAX_HOPS:
            return False
        where = route(channel)
        if where is None:
            return False
        if where:
            if self._work is None:
                raise RuntimeError("a cluster step without its ClusterWork")
            self._work.relays.append((where, conn, session, (mtype, f), self._hops + 1))
            return True
        # No live node owns it: a new_channel() name of a node that is gone.
        if mtype == MsgType.SEND:
            self.counters.dropped_dead_owner += 1
        if mtype != MsgType.RECV and f[0]:
            out.append((conn, (MsgType.ACK, (f[0], 0))))
        return True

    def adopt(
        self,
        channels: tuple[tuple[str, list[Any]], ...],
        members: tuple[tuple[str, str, str, float, int], ...],
        now: float,
        handed_over: bool = True,
    ) -> tuple[list[Out], list[tuple[str, str]]]:
        """Channels and memberships another node handed over (this node owns
        them now; the peer codec checked their shape); and the (group,
        channel) memberships that were not here before. Messages handed over
        after this node served the channel are stale (``Queues.adopt``):
        counted ``dead_owner``. ``handed_over`` False: this node's own puts."""
        out: list[Out] = []
        for name, items in channels:
            if self._started and not self._owner_alive(name, now):
                # (a name of this node's whose process is gone for good: a
                # handback late enough, a link's frame sent again after a
                # break, comes after its grace; queued, it would wait for
                # nobody until it expired)
                self.counters.dropped_dead_owner += len(items)
                continue
            deliveries, stale = self.queues.adopt(name, items, now, handed_over)
            if stale:
                self.counters.dropped_dead_owner += stale
                self.counters.handed_over_stale += stale
            self.deliver(deliveries, out)
        me = f"{self.settings.node_id}@{self.settings.incarnation}/"
        added: list[tuple[str, str]] = []
        for group, channel, holder, ttl, capacity in members:
            if holder.startswith(me):  # held by a session of this node
                holder = holder[len(me) :]
                if holder not in self.sessions.by_tag:
                    continue  # that process is gone already
            if self.groups.add(group, channel, holder, now + ttl, capacity):
                added.append((group, channel))
        return out, added

    def _owner_alive(self, channel: str, now: float) -> bool:
        """False for a ``new_channel()`` name whose process is known to be gone."""
        owner = owner_of(channel)
        if owner is None:
            return True
        node_tag, session_tag = owner
        if node_tag != self.settings.node_tag:
            # In a cluster this node holds another node's names only while it
            # stands in for a node that left (routing says it owns them).
            return self.route is not None
        if session_tag in self.sessions.by_tag:
            return True
        grace = self._grace_until
        return grace is not None and now < grace and session_tag not in self._ended

    def _drop_unclaimed(self) -> None:
        """The grace after this node's start is over: process-specific
        channels of sessions that did not come back are dead (counted)."""
        for name in list(self.queues.channels):
            owner = owner_of(name)
            if owner is None or owner[0] != self.settings.node_tag:
                continue
            if owner[1] not in self.sessions.by_tag:
                self.counters.dropped_dead_owner += self.queues.drop_channel(name)

    def _drop_session(self, tag: str, now: float, out: list[Out]) -> None:
        session = self.sessions.remove(tag)
        if session is None:
            return
        if self._grace_until is not None:
            self._ended.add(tag)
        work = self._work
        for conn in session.conns:
            self._drop_conn(conn, now, out)
            if work is not None:
                work.gone_conns.append(conn)
        if work is not None:
            work.gone_sessions.append(tag)
        self.groups.drop_holder(tag)
        marker = f".{self.settings.node_tag}.{tag}!"
        for name in [n for n in self.queues.channels if marker in n]:
            self.counters.dropped_dead_owner += self.queues.drop_channel(name)

    def _drop_conn(self, conn: ConnId, now: float, out: list[Out]) -> None:
        """A client connection of this node is gone: what it was handed is
        counted lost (``Queues.drop_conn``), and remembered as such."""
        counted = self.queues.flight_seqs(conn)
        if counted:
            self._counted_flight[conn] = counted
            while len(self._counted_flight) > _GONE_KEPT:
                del self._counted_flight[next(iter(self._counted_flight))]
        self._outcome(self.queues.drop_conn(conn, now), out)

    def _revoke(self, deferred: Deferred, out: list[Out]) -> None:
        for holder in deferred.revokes:
            out.append((holder, (MsgType.REVOKE, (deferred.name,))))

    def _outcome(self, outcome: Outcome, out: list[Out]) -> None:
        """Deliveries, answers to deferred sends and revocations decided by
        the queues after the fact."""
        self.deliver(outcome.deliveries, out)
        for token, placed in outcome.resolved:
            if isinstance(token, tuple):  # (conn, req, channel) of a send
                conn, req, channel = token
                if not req:
                    continue
                if placed:
                    out.append((conn, (MsgType.ACK, (req, 0))))
                else:
                    out.append((conn, (MsgType.ERROR, (req, ErrorCode.CHANNEL_FULL, channel))))
        for holder, channel in outcome.revokes:
            out.append((holder, (MsgType.REVOKE, (channel,))))

    def deliver(self, deliveries: list[Delivery], out: list[Out]) -> None:
        """``deliveries`` (the queues' decisions) as the messages that carry
        them, appended to ``out`` (routing's give-backs use it too)."""
        for conn, channel, items in deliveries:
            if isinstance(channel, list):
                # (a client that reports per bundle is told so: DELIVER_BUNDLE)
                session = self.sessions.by_conn.get(conn)
                if session is not None and session.policy.bundle_reports:
                    out.append((conn, (MsgType.DELIVER_BUNDLE, (channel, list(items[0])))))
                else:
                    out.append((conn, (MsgType.DELIVER_MANY, (channel, list(items[0])))))
            else:
                out.append((conn, (MsgType.DELIVER, (channel, items))))

    def _may_create(self, session: Session, channel: str) -> bool:
        """Whether ``session`` may use ``channel`` (a new channel counts
        against its bound; existing ones are free)."""
        if channel in self.queues.channels:
            return True
        created = session.created
        if len(created) >= self.settings.max_client_channels:
            created.intersection_update(self.queues.channels)  # forget gone ones
            if len(created) >= self.settings.max_client_channels:
                return False
        created.add(channel)
        return True

    def _limit(self, conn: ConnId, req: int, detail: str, out: list[Out]) -> None:
        self.counters.limited += 1
        if req:
            out.append((conn, (MsgType.ERROR, (req, ErrorCode.LIMIT, detail))))

    def _unknown(self, conn: ConnId, req: int, out: list[Out]) -> None:
        out.append((conn, (MsgType.ERROR, (req, ErrorCode.UNKNOWN_SESSION, ""))))

    def _bad(self, conn: ConnId, req: int, detail: str, out: list[Out]) -> None:
        self.counters.bad_requests += 1
        out.append((conn, (MsgType.ERROR, (req, ErrorCode.BAD_REQUEST, detail))))


def reported_in(messages: Iterable[Message]) -> int:
    """How many messages a client reports taken in ``messages`` (CONSUMED
    counts, CONSUMED_BUNDLES copies; malformed entries count nothing)."""
    taken = 0
    for mtype, fields in messages:
        if mtype == MsgType.CONSUMED and len(fields) == 1 and type(fields[0]) is list:
            for r in fields[0]:
                if type(r) is list and len(r) == 4 and type(r[2]) is int and r[2] > 0:
                    taken += r[2]
        elif mtype == MsgType.CONSUMED_BUNDLES and len(fields) == 1 and type(fields[0]) is list:
            for e in fields[0]:
                if type(e) is list and all(type(x) is int for x in e):
                    taken += sum(max(0, e[i + 1] - e[i]) for i in range(1, len(e) - 1, 2))
    return taken


def wire_items(items: list[Any]) -> bool:
    """``items`` are ``[payload, ttl_s, seq]`` lists, as DELIVER carries them."""
    return all(
        isinstance(it, list)
        and len(it) == 3
        and isinstance(it[0], bytes)
        and isinstance(it[1], int | float)
        and not isinstance(it[1], bool)
        and isinstance(it[2], int)
        for it in items
    )
