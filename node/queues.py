"""Channel queues of one node: FIFO, exact capacity, expiry, receive credit,
send reservations.

Owns: the messages waiting on each channel this node holds, the messages it
has handed to receiving connections and not yet heard were taken ("in
flight"), which connections have asked for messages (receive credit), and
which have been promised room (send reservations). Decides which queued
message goes to which connection and whether a send fits. Does not own:
sockets, sessions, names' owners or policy (the caller passes capacity and
deadlines in).

Capacity is exact (the Channels spec, "Capacity"): a put is refused exactly
when the channel holds ``capacity`` messages not yet returned by a
``receive()`` — queued here, in flight, or prefetched by a process, which
says when it took them (``consumed``). Capacity is counted per *pool*: a
plain name is its own pool; every process-specific name ``x!local`` shares
the pool ``x!`` with the other names of its process, as the spec asks. A
group_send that reaches several names of one pool is one *bundle*: it takes
one unit of the pool until every copy has been taken (channels_redis sends
such a group message as one entry per process).

Receive credit: a connection grants ``n`` credits on a channel (``RECV``) and
the node hands it up to ``n`` messages, oldest first, as they arrive.
Connections with credit on one channel are served round-robin.

Send reservations: when an acknowledged send finds plenty of room, the node
reserves a few slots of the pool for that connection (said in the ACK); the
connection may then send that many without waiting (``SEND`` with request id
0). A reserved slot is not a message, so it must never make anyone else's
put fail: a put that fits only if reservations yield is *deferred*, the
holders are asked to give their reservations up (``REVOKE``), and once each
has answered (``REVOKED``, after any reserved sends it had made: one ordered
pipe), lapsed or gone, the deferred puts are decided in arrival order. So
``ChannelFull`` is exact and reserved sends always fit. When the pool's
owner changes, its reservations and the puts waiting for them move to the
new owner (``take_reservations``, ``adopt_reservation``), so a holder's
next reserved sends fit there too.

FIFO per producer where queues meet: in a cluster a message carries its
``Stamp`` (which producer sent it, and where it stands among that
producer's sends), given by the producer's node. When a handover meets
what was queued here since (``adopt``), no producer's messages are
reordered by it, whatever their deadlines say (``in_producer_order``).
Where two nodes owned a channel at once (their views differed: a
partition, a lagging or lossy link, a restart), each may deliver some of
one producer's sends; every delivery to a client passes through its node,
which refuses one older than a message of the same producer another owner
(or the same owner) handed that client (``from_elsewhere``).

Pure: every method takes ``now`` (monotonic seconds) and returns what to do.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, TypeVar

from zchannels.names import namespace, pool_of
from zchannels.protocol import RESERVATION_TTL

ConnId = bytes
#: (payload, ttl_remaining_s, seq): one message as it travels in DELIVER/RETURN
WireItem = tuple[bytes, float, int]
#: Who sent a message, and where it stands among that producer's sends:
#: (producer, life, n). The producer is ``"node/session tag"`` (a client
#: process, as its node names it); ``life`` the incarnation its node's life
#: started at, ``n`` that life's count of its clients' sends. Assigned where
#: the send enters the cluster (``NodeCore``, at the producer's node) and
#: carried with the message through relays, handovers and give-backs to its
#: owner: two messages of one producer compare by ``(life, n)``, which grows
#: with every send across the node's restarts and fences (a new life starts
#: at a higher incarnation). Messages of different producers do not compare.
Stamp = tuple[str, int, int]
#: A queued message as it is handed to the channel's next owner: a
#: ``WireItem``, and its stamp if it has one (``PEER_HANDOFF_STAMPED``).
HandedItem = tuple[bytes, float, int] | tuple[bytes, float, int, Stamp]
#: (connection, channel, [wire items...]), or for one group message to
#: several channels of one connection (a bundle): (connection, [channels],
#: [wire item]) — the payload travels once (``DELIVER_MANY``)
Delivery = tuple[ConnId, str | list[str], list[WireItem]]

#: Largest credit one connection may hold on one channel; a client asking for
#: more is clamped, so one RECV cannot make the node buffer unboundedly.
MAX_CREDIT = 10_000
#: Most slots reserved for one connection on one pool at a time: enough to
#: pipeline a burst, few enough that other senders rarely meet them.
MAX_RESERVATION = 64
#: Seconds what a connection was handed of each producer (``handed_to``)
#: is kept after it last changed: longer than a delivery can be on its way
#: (one held in a frozen or cut-off owner's pipe included).
HANDED_MEMORY = 120.0
#: Numbers of what a connection gave back on a channel kept at most
#: (``Queues.gave_back``): the newest
GAVE_BACK_KEPT = 1024


class Bundle:
    """One group message's copies on several channels of one pool: one unit
    of the pool's capacity until the last copy is taken or dropped.
    ``handed``: connection -> the channels it was handed a copy on at once,
    in the order of the delivery (``DELIVER_BUNDLE``), so a report of those
    copies can name them by position (``consumed_bundle``)."""

    __slots__ = ("handed", "left", "pool", "seq")

    def __init__(self, left: int, pool: Pool, seq: int) -> None:
        self.left = left
        self.pool = pool
        self.seq = seq
        self.handed: dict[ConnId, list[str]] | None = None


#: (seq, payload, deadline, bundle or None, stamp or None): deadline is
#: monotonic seconds
Item = tuple[int, bytes, float, Bundle | None, Stamp | None]


@dataclass(slots=True)
class Put:
    """A put waiting for reservations to be given up. ``token`` is the
    caller's (who to answer); ``names`` one channel, or a bundle's."""

    names: list[str]
    payload: bytes
    deadline: float
    capacity: int
    token: Hashable
    stamp: Stamp | None = None


class Deferred:
    """A put that waits for ``revokes`` (holders asked to give up their
    reservation on ``name``); its outcome comes later as a ``Resolved``."""

    __slots__ = ("name", "revokes")

    def __init__(self, name: str, revokes: list[ConnId]) -> None:
        self.name = name
        self.revokes = revokes


#: (token, outcome): outcome True queued or handed over, False full
Resolved = tuple[Hashable, bool]


#: Above every sequence number (``consumed_late``).
_ANY_SEQ = 1 << 80


@dataclass(slots=True)
class Pool:
    #: capacity units taken: queued and in-flight messages (a bundle once)
    held: int = 0
    #: connection -> [slots left, expires_at]
    reserved: dict[ConnId, list[float]] = field(default_factory=dict)
    #: holders asked to give up their reservation, not yet answered
    revoking: set[ConnId] = field(default_factory=set)
    #: puts waiting for ``revoking`` to empty, in arrival order
    waiting: deque[Put] = field(default_factory=deque)
    #: channels of this pool that exist now
    names: set[str] = field(default_factory=set)
    #: no queued message of this pool expires before this (monotonic): a
    #: full pool is scanned for expired messages only once one may be
    earliest: float = float("inf")

    def reserved_total(self, now: float, exclude: ConnId | None = None) -> int:
        total = 0
        for conn, (left, expires_at) in list(self.reserved.items()):
            if expires_at <= now or left < 1:
                del self.reserved[conn]
            elif conn != exclude:
                total += int(left)
        return total


@dataclass(slots=True)
class Channel:
    pool: Pool
    items: deque[Item] = field(default_factory=deque)
    #: connection -> remaining credit; dict order is the round-robin order
    credits: dict[ConnId, int] = field(default_factory=dict)
    #: connection -> {seq: bundle or None}: handed over, not yet taken
    flight: dict[ConnId, dict[int, Bundle | None]] = field(default_factory=dict)
    #: this node has handed one of its messages to a receiver since it got
    #: the channel (``adopt``: a handover that comes after that is stale)
    served: bool = False
    #: queued messages numbered below this were given back here by a
    #: receiver an earlier owner handed them to (``give_back``): older than
    #: what was queued here, at the front, in the order they came back
    front: int | None = None
    #: seq -> stamp of the stamped messages in flight (a give-back queues
    #: them again with it: ``give_back``); only those still in a flight
    stamps: dict[int, Stamp] = field(default_factory=dict)
    #: producer -> the latest (life, n) queued here since the queue was last
    #: empty (perhaps taken since): a put below it is put in order (``_insert``)
    newest: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(slots=True)
class QueueCounters:
    enqueued: int = 0
    delivered: int = 0
    dropped_full: int = 0
    dropped_expired: int = 0
    #: in flight to a connection that went away without giving them back
    dropped_receiver_gone: int = 0
    #: puts queued before a later message of their producer (``_insert``)
    put_in_order: int = 0


@dataclass(slots=True)
class Outcome:
    """What a put, a revoke answer or a tick decided besides deliveries."""

    deliveries: list[Delivery] = field(default_factory=list)
    resolved: list[Resolved] = field(default_factory=list)
    #: (holder, channel): ask the holder to give its reservation up
    revokes: list[tuple[ConnId, str]] = field(default_factory=list)

    def extend(self, other: Outcome) -> None:
        self.deliveries.extend(other.deliveries)
        self.resolved.extend(other.resolved)
        self.revokes.extend(other.revokes)


class Queues:
    def __init__(self, first_seq: int = 0) -> None:
        self.channels: dict[str, Channel] = {}
        self.pools: dict[str, Pool] = {}
        #: messages queued in all channels (``queued``), kept as they come
        #: and go: read after every step of a clustered node (its held
        #: record), so never a sum over the channels
        self._queued = 0
        # Sequence numbers let messages given back by a receiver rejoin the
        # queue in send order, however returns and deliveries interleave.
        self._seq = first_seq
        #: below every sequence number of this life (an earlier life's are)
        self.first_seq = first_seq
        #: namespace -> the last sequence number a flush() removed: anything
        #: given back at or below it was flushed and is not put back
        self.flushed: dict[str, int] = {}
        #: connection -> channels where it holds credit or messages in flight
        self._by_conn: dict[ConnId, set[str]] = {}
        #: connection -> how many messages it has in flight here, over all
        #: channels (kept as flights change: the held record lists it at
        #: every step, and summing the flights would cost a step per channel)
        self.flying: dict[ConnId, int] = {}
        #: connection -> pools where it holds a reservation
        self._reserving: dict[ConnId, set[str]] = {}
        #: seq -> a bundle handed to some connection as one delivery, until
        #: its last copy is taken or dropped (``consumed_bundle`` finds it)
        self.bundles: dict[int, Bundle] = {}
        #: (connection, channel) -> producer -> (who handed it: "" for this
        #: node, else the owner whose delivery this node passed on to its
        #: client; life, n; the number its hander gave it): the newest of
        #: that producer's messages the connection was handed there
        #: (``from_elsewhere``); forgotten as it gives messages back
        #: (``forget_handed``), or ``HANDED_MEMORY`` after its last change
        self.handed_to: dict[tuple[ConnId, str], dict[str, tuple[str, int, int, int]]] = {}
        self._handed_until: dict[tuple[ConnId, str], float] = {}
        #: (connection, channel) -> the numbers of what it gave back there
        #: (``forget_handed``), kept as ``handed_to`` is
        self.gave_back: dict[tuple[ConnId, str], set[int]] = {}
        #: (connection, channel) -> the stamps of what it gave back there,
        #: when its node knew them all (``forget_handed``), kept as
        #: ``gave_back`` is
        self.gave_back_stamps: dict[tuple[ConnId, str], set[Stamp]] = {}
        #: (connection, channel) -> seq -> [(payload, stamp)...] of each
        #: stamped message the connection was handed there (by this node,
        #: or passed on from another owner: seq is its hander's number, and
        #: two owners' numbers may be the same: told apart by payload), in
        #: the order handed, until it is reported taken (``consumed``,
        #: ``took``) or given back (``stamps_given_back``: a give-back this
        #: node relays to another owner carries them, ``give_back``); at
        #: most ``MAX_CREDIT`` numbers each, forgotten as ``handed_to`` is
        self.held_stamps: dict[tuple[ConnId, str], dict[int, list[tuple[bytes, Stamp]]]] = {}
        self.counters = QueueCounters()

    # -- queries ---------------------------------------------------------
    def queued(self) -> int:
        return self._queued

    def queued_counted(self) -> int:
        """``queued`` counted channel by channel (the simulation checks the
        two agree after every step)."""
        return sum(len(ch.items) for ch in self.channels.values())

    def flying_counted(self) -> dict[ConnId, int]:
        """``flying`` counted channel by channel (checked as ``queued``)."""
        out: dict[ConnId, int] = {}
        for ch in self.channels.values():
            for conn, flight in ch.flight.items():
                if flight:
                    out[conn] = out.get(conn, 0) + len(flight)
        return out

    def length(self, name: str) -> int:
        ch = self.channels.get(name)
        return len(ch.items) if ch else 0

    def held(self, name: str) -> int:
        """Capacity units ``name``'s pool holds (queued and in flight)."""
        pool = self.pools.get(pool_of(name))
        return pool.held if pool else 0

    @property
    def seq(self) -> int:
        return self._seq

    # -- sending ---------------------------------------------------------
    def put(
        self,
        name: str,
        payload: bytes,
        deadline: float,
        capacity: int,
        now: float,
        sender: ConnId | None = None,
        token: Hashable = None,
        stamp: Stamp | None = None,
    ) -> Delivery | Deferred | bool:
        """Queue or hand over one message; ``sender`` uses its reservation.

        Returns a ``Delivery`` when a connection with credit took it at once,
        ``True`` when it was queued, ``False`` when the pool is full, and a
        ``Deferred`` when it waits for reservations to be given up (its
        outcome comes later, with ``token``). ``stamp``: the message's
        place among its producer's sends, if it has one (see ``Stamp``)."""
        ch = self._channel(name)
        pool = ch.pool
        if not self._use_reservation(pool, sender, now):
            verdict = self._fits(pool, capacity, now)
            if verdict is False:
                self.counters.dropped_full += 1
                self._maybe_delete(name, ch)
                return False
            if verdict is not True:
                pool.waiting.append(Put([name], payload, deadline, capacity, token, stamp))
                return Deferred(name, verdict)
        return self._place(name, ch, payload, deadline, now, None, stamp)

    def put_many(
        self,
        names: list[str],
        payload: bytes,
        deadline: float,
        capacity: int,
        now: float,
        token: Hashable = None,
    ) -> tuple[list[Delivery], int, Deferred | None]:
        """One group message for several channels of ONE pool (a bundle:
        one unit of capacity). Returns deliveries, how many channels got it
        (0 when full: each is counted as a drop) and a ``Deferred``."""
        if len(names) == 1:
            result = self.put(names[0], payload, deadline, capacity, now, token=token)
            if result is False:
                return [], 0, None
            if isinstance(result, Deferred):
                return [], 0, result
            return ([result] if result is not True else []), 1, None
        pool = self._pool(pool_of(names[0]))
        verdict = self._fits(pool, capacity, now)
        if verdict is False:
            self.counters.dropped_full += len(names)
            self._maybe_delete_pool(pool_of(names[0]), pool)
            return [], 0, None
        if verdict is not True:
            pool.waiting.append(Put(list(names), payload, deadline, capacity, token))
            return [], 0, Deferred(names[0], verdict)
        return self._place_bundle(names, payload, deadline, now), len(names), None

    def _fits(self, pool: Pool, capacity: int, now: float) -> bool | list[ConnId]:
        """True: room now; False: full; else the holders to ask for their
        reservations (room exists only if they give it up)."""
        if pool.revoking:
            return []  # wait behind the puts already waiting (FIFO)
        if pool.held >= capacity:
            self._purge_pool(pool, now)
            if pool.held >= capacity:
                return False
        if not pool.reserved or pool.held + pool.reserved_total(now) < capacity:
            return True
        holders = list(pool.reserved)
        pool.revoking.update(holders)
        return holders

    def _place(
        self,
        name: str,
        ch: Channel,
        payload: bytes,
        deadline: float,
        now: float,
        bundle: Bundle | None,
        stamp: Stamp | None = None,
    ) -> Delivery | bool:
        self.counters.enqueued += 1
        self._seq += 1
        if bundle is None:
            ch.pool.held += 1
        if ch.credits and not ch.items:
            conn = self._take_credit(name, ch)
            self._fly(conn, name, ch, self._seq, bundle)
            if stamp is not None:
                ch.stamps[self._seq] = stamp
                self._handed(conn, name, "", stamp, self._seq, now, payload)
            return (conn, name, [(payload, deadline - now, self._seq)])
        if deadline < ch.pool.earliest:
            ch.pool.earliest = deadline
        self._queued += 1  # (appended, or inserted: one more either way)
        if stamp is not None:
            newest = ch.newest
            if not ch.items:
                newest.clear()
            order = (stamp[1], stamp[2])
            mark = newest.get(stamp[0])
            if mark is not None and order < mark and self._insert(ch, payload, deadline, stamp):
                return True
            _mark(ch, stamp)
        ch.items.append((self._seq, payload, deadline, bundle, stamp))
        return True

    def _insert(self, ch: Channel, payload: bytes, deadline: float, stamp: Stamp) -> bool:
        """Queue message number ``self._seq`` before the first queued message
        of its producer with a later stamp (a send that reached this owner
        after its producer's next one: a relay passed on by a node that was
        its owner a moment before, slower than ``relay_hold``); what follows
        is numbered anew above it. False if none is queued (it goes last) or
        a group message's copy follows (numbered as its bundle: left as is)."""
        order = (stamp[1], stamp[2])
        items = list(ch.items)
        at = next(
            (
                i
                for i, (*_, other) in enumerate(items)
                if other is not None and other[0] == stamp[0] and (other[1], other[2]) > order
            ),
            None,
        )
        if at is None:
            return False
        tail = items[at:]
        if any(item[3] is not None for item in tail):
            return False
        first = self._seq
        self._seq += len(tail)
        ch.items = deque(items[:at])
        ch.items.append((first, payload, deadline, None, stamp))
        ch.items.extend(
            (first + 1 + k, p, d, None, s) for k, (_seq, p, d, _b, s) in enumerate(tail)
        )
        self.counters.put_in_order += 1
        return True

    def _place_bundle(
        self, names: list[str], payload: bytes, deadline: float, now: float
    ) -> list[Delivery]:
        pool = self._pool(pool_of(names[0]))
        pool.held += 1
        self._seq += 1
        seq = self._seq
        bundle = Bundle(len(names), pool, seq)
        self.counters.enqueued += len(names)
        by_conn: dict[ConnId, list[str]] = {}
        channels = self.channels
        indexed = self._by_conn
        handed = 0
        # the connection the last member went to, and its list (usually
        # one connection takes them all: no lookup per member)
        last: ConnId | None = None
        last_got: list[str] = []
        # (``_take_credit`` and ``_fly`` inline: this runs once per member)
        for name in names:
            ch = channels.get(name)
            if ch is None:
                ch = self._channel(name)
            credits = ch.credits
            if credits and not ch.items:
                if len(credits) == 1:  # (round-robin of one: keep its place)
                    conn = next(iter(credits))
                    left = credits[conn] - 1
                    if left > 0:
                        credits[conn] = left
                    else:
                        del credits[conn]
                else:
                    conn = next(iter(credits))  # round-robin, as _take_credit
                    left = credits.pop(conn) - 1
                    if left > 0:
                        credits[conn] = left
                flight = ch.flight.get(conn)
                if flight is None:
                    flight = ch.flight[conn] = {}
                    if left <= 0:  # (with credit left, it is indexed already)
                        names_of = indexed.get(conn)
                        if names_of is None:
                            indexed[conn] = {name}
                        else:
                            names_of.add(name)
                flight[seq] = bundle
                self.flying[conn] = self.flying.get(conn, 0) + 1
                ch.served = True
                handed += 1
                if conn is last or conn == last:
                    last_got.append(name)
                else:
                    got = by_conn.get(conn)
                    if got is None:
                        got = by_conn[conn] = [name]
                    else:
                        got.append(name)
                    last, last_got = conn, got
            else:
                ch.items.append((seq, payload, deadline, bundle, None))
                self._queued += 1
                if deadline < pool.earliest:
                    pool.earliest = deadline
        self.counters.delivered += handed
        item = [(payload, deadline - now, seq)]
        out: list[Delivery] = []
        for conn, got in by_conn.items():
            if len(got) == 1:
                out.append((conn, got[0], item))
            else:
                out.append((conn, got, item))
                if bundle.handed is None:
                    bundle.handed = {}
                    self.bundles[seq] = bundle
                bundle.handed[conn] = got
        return out

    def reserve(self, conn: ConnId, name: str, capacity: int, now: float) -> int:
        """Reserve slots of ``name``'s pool for ``conn`` if there is plenty of
        room: at most half of what is free, at most ``MAX_RESERVATION``.
        Returns how many ``conn`` now holds."""
        key = pool_of(name)
        pool = self._pool(key)
        held = pool.reserved.get(conn)
        if held is not None and held[1] > now and held[0] >= MAX_RESERVATION // 2:
            return int(held[0])
        free = capacity - pool.held - pool.reserved_total(now, exclude=conn)
        grant = min(MAX_RESERVATION, free // 2)
        if grant <= 0 or pool.revoking or pool.waiting:
            if pool.reserved.pop(conn, None) is not None:
                self._unreserve(conn, key)
            self._maybe_delete_pool(key, pool)
            return 0
        pool.reserved[conn] = [grant, now + RESERVATION_TTL]
        self._reserving.setdefault(conn, set()).add(key)
        return grant

    def take_reservations(
        self, key: str, now: float
    ) -> tuple[list[tuple[ConnId, int, float]], list[Put]]:
        """Remove pool ``key``'s send reservations and the puts that wait
        for them, to hand them to the pool's new owner: (holder, slots
        left, seconds left) of each live reservation, and the waiting puts
        in arrival order (the caller moves them on; holders asked to give
        their reservation up answer the new owner, which forgets it then)."""
        pool = self.pools.get(key)
        if pool is None:
            return [], []
        held = [
            (conn, int(left), expires_at - now)
            for conn, (left, expires_at) in pool.reserved.items()
            if expires_at > now and left >= 1
        ]
        for conn in pool.reserved:
            self._unreserve(conn, key)
        pool.reserved.clear()
        pool.revoking.clear()
        waiting = list(pool.waiting)
        pool.waiting.clear()
        self._maybe_delete_pool(key, pool)
        return held, waiting

    def adopt_reservation(self, conn: ConnId, key: str, slots: int, ttl: float, now: float) -> None:
        """A reservation pool ``key``'s previous owner granted ``conn`` and
        handed over (``take_reservations``): its holder's next reserved sends
        arrive here and must fit. One already held here (granted since) is
        kept if larger: a holder never has more than the larger of the two
        left (its last ACK replaced its count), so a reserved send always
        fits; the other direction would refuse one."""
        if slots < 1 or ttl <= 0:
            return
        slots = min(slots, MAX_RESERVATION)
        expires_at = now + min(ttl, RESERVATION_TTL)
        pool = self._pool(key)
        held = pool.reserved.get(conn)
        if held is None or held[1] <= now:
            pool.reserved[conn] = [slots, expires_at]
        else:
            held[0] = max(held[0], slots)
            held[1] = max(held[1], expires_at)
        self._reserving.setdefault(conn, set()).add(key)

    def revoked(self, conn: ConnId, name: str, now: float) -> Outcome:
        """``conn`` gave up its reservation on ``name``'s pool (every send it
        made with it has arrived): decide the puts that waited for it."""
        key = pool_of(name)
        pool = self.pools.get(key)
        if pool is None:
            return Outcome()
        if pool.reserved.pop(conn, None) is not None:
            self._unreserve(conn, key)
        pool.revoking.discard(conn)
        return self._settle(key, pool, now)

    def _use_reservation(self, pool: Pool, sender: ConnId | None, now: float) -> bool:
        if sender is None or not pool.reserved:
            return False
        held = pool.reserved.get(sender)
        if held is None or held[1] <= now or held[0] < 1:
            return False
        held[0] -= 1
        return True

    def _settle(self, key: str, pool: Pool, now: float) -> Outcome:
        """Decide waiting puts once no holder is still being asked."""
        out = Outcome()
        while pool.waiting and not pool.revoking:
            put = pool.waiting.popleft()
            verdict = self._fits(pool, put.capacity, now)
            if verdict is False:
                self.counters.dropped_full += len(put.names)
                out.resolved.append((put.token, False))
            elif verdict is True:
                if put.deadline <= now:
                    self.counters.enqueued += len(put.names)
                    self.counters.dropped_expired += len(put.names)
                elif len(put.names) == 1:
                    delivery = self._place(
                        put.names[0],
                        self._channel(put.names[0]),
                        put.payload,
                        put.deadline,
                        now,
                        None,
                        put.stamp,
                    )
                    if delivery is not True and delivery is not False:
                        out.deliveries.append(delivery)
                else:
                    out.deliveries.extend(
                        self._place_bundle(put.names, put.payload, put.deadline, now)
                    )
                out.resolved.append((put.token, True))
            else:
                pool.waiting.appendleft(put)  # new holders are asked: wait again
                out.revokes.extend((holder, put.names[0]) for holder in verdict)
                break
        for name in list(pool.names):
            ch = self.channels.get(name)
            if ch is not None:
                self._maybe_delete(name, ch)
        return out

    # -- receiving -------------------------------------------------------
    def grant(self, conn: ConnId, name: str, credit: int, now: float) -> list[Delivery]:
        """Add ``credit`` for ``conn`` on ``name``; deliver what is waiting."""
        if credit <= 0:
            return []
        ch = self._channel(name)
        ch.credits[conn] = min(MAX_CREDIT, ch.credits.get(conn, 0) + credit)
        self._by_conn.setdefault(conn, set()).add(name)
        out = self._drain(name, ch, now)
        self._maybe_delete(name, ch)
        return out

    def consumed(self, conn: ConnId, name: str, upto: int, count: int, expired: int) -> None:
        """``conn`` took the first ``count`` messages of ``name`` it was
        handed (in the order it was handed them; ``expired`` of them were
        found expired in the process), none with a sequence number above
        ``upto`` (so a report that crossed a flush takes nothing newer).
        (Runs once per member a group_send reached: ``_release`` inline.)"""
        ch = self.channels.get(name)
        if ch is None:
            return
        flight = ch.flight.get(conn)
        if flight:
            pool = ch.pool
            # the first ``count`` handed over (a group_send member's report: one)
            seqs = (next(iter(flight)),) if count == 1 else list(flight)[: max(0, count)]
            stamps = ch.stamps
            held = self.held_stamps.get((conn, name)) if stamps else None
            before = len(flight)
            for seq in seqs:
                if seq > upto:
                    break
                bundle = flight.pop(seq)
                if stamps:
                    stamp = stamps.pop(seq, None)
                    if held and stamp is not None:
                        _unhold(held, seq, stamp=stamp)
                if bundle is None:
                    pool.held -= 1
                else:
                    bundle.left -= 1
                    if bundle.left == 0:
                        bundle.pool.held -= 1
                        if bundle.handed is not None:
                            self.bundles.pop(bundle.seq, None)
            if held is not None and not held:
                del self.held_stamps[(conn, name)]
            self._landed(conn, before - len(flight))
            if not flight:
                del ch.flight[conn]
                self._unindex(conn, name, ch)
        if expired > 0:
            self.counters.dropped_expired += expired
        if not ch.items and not ch.credits and not ch.flight:
            self._maybe_delete(name, ch)

    def before_flush(self, name: str, seq: int) -> bool:
        """Whether message ``seq`` of ``name`` was sent before the last
        flush of its namespace (which removed it)."""
        return seq <= self.flushed.get(namespace(name), -1)

    def consumed_late(self, conn: ConnId, name: str, count: int, expired: int) -> None:
        """A consumption report a link lost, brought again (``routing``,
        ``RelayLost``): ``conn`` took ``count`` more of ``name`` than its
        reports so far said. Those that came after this one released the
        first messages in flight in its place (a report takes the first it
        names, in the order they were handed), so it releases the first
        ``count`` still there, whatever their numbers."""
        self.consumed(conn, name, _ANY_SEQ, count, expired)

    def drop_flight(self, conn: ConnId, name: str, seqs: Iterable[int]) -> int:
        """Messages of ``name`` handed to ``conn`` that are lost on their way
        back (``routing``: a give-back a link lost) no longer take room;
        how many of ``seqs`` were in its flight here (the caller counts)."""
        ch = self.channels.get(name)
        flight = ch.flight.get(conn) if ch is not None else None
        if ch is None or not flight:
            return 0
        dropped = 0
        for seq in seqs:
            if seq in flight:
                self._release(ch.pool, flight.pop(seq))
                ch.stamps.pop(seq, None)
                dropped += 1
        self._landed(conn, dropped)
        if not flight:
            del ch.flight[conn]
            self._unindex(conn, name, ch)
        if not ch.items and not ch.credits and not ch.flight:
            self._maybe_delete(name, ch)
        return dropped

    def consumed_bundle(self, conn: ConnId, seq: int, runs: list[int]) -> int:
        """``conn`` took the copies of bundle ``seq`` it was handed at once
        on the channels at positions ``[runs[0], runs[1])``, ``[runs[2],
        runs[3])`` ... of that delivery (``DELIVER_BUNDLE``). Each copy is
        released by its sequence number, so runs that repeat, or name a copy
        given back, flushed or dropped since, release nothing. Returns how
        many copies were released, or -1 if the runs named more positions
        than the delivery had (what came before is applied; the rest is
        not looked at). (The tight loop of a group_send's
        reports: one dict lookup and one pop per member, no decode.)"""
        bundle = self.bundles.get(seq)
        names = bundle.handed.get(conn) if bundle is not None and bundle.handed else None
        if bundle is None or names is None:
            return 0  # every copy is taken or dropped already
        get = self.channels.get
        taken = 0
        cut = False
        budget = len(names)
        for i in range(0, len(runs) - 1, 2):
            picked = names[runs[i] : runs[i + 1]]
            budget -= len(picked)
            if budget < 0:
                # More positions than the delivery had: a client names each
                # copy once, so this report repeats itself. Stop (the work
                # a report costs stays within its bundle's size).
                cut = True
                break
            for name in picked:
                ch = get(name)
                if ch is None:
                    continue
                flight = ch.flight.get(conn)
                if flight is None or flight.get(seq) is not bundle:
                    continue
                del flight[seq]
                self._landed(conn, 1)
                taken += 1
                if not flight:
                    del ch.flight[conn]
                    if conn not in ch.credits:  # (else it stays indexed)
                        self._unindex(conn, name, ch)
                        if not ch.items and not ch.credits:
                            self._maybe_delete(name, ch)
        if taken:
            bundle.left -= taken
            if bundle.left == 0:
                bundle.pool.held -= 1
                del self.bundles[seq]
        return -1 if cut else taken

    def give_back(
        self,
        conn: ConnId,
        name: str,
        items: list[WireItem],
        now: float,
        withdraw: bool = True,
        stamps: Sequence[Stamp | None] | None = None,
    ) -> list[Delivery]:
        """Put ``items`` back in the queue where their sequence numbers say,
        for other receivers; ``withdraw``: also drop ``conn``'s credit. An
        item not in ``conn``'s flight here (an earlier owner of the channel
        handed it, or its room was released) takes room again and goes to
        the front, older than anything queued here, under new numbers below
        every number of the channel, in the order its numbers said: it was
        handed to a receiver before what is queued here was (an earlier
        owner hands its queue on in order, after what it handed out). (Its
        own number was kept where no message of the channel had it and made
        new above where one did: every node's first life numbers from the
        same place, and a lingering node's relayed give-back of c4's sends
        1-4 was split around a send queued here, 2 and 4 after 3:
        simulation seed 1139.)

        ``stamps``: the stamp of each item (or None), as the receiver's
        node knew them (it passed the deliveries on: a relayed RETURN
        carries them, ``FEATURE_RETURN_STAMPS``). An item whose stamp is not
        the one this node's flight holds under its number is another
        owner's message numbered the same (every node's first life numbers
        from the same place: simulation seed 489, sends 1-4 of a producer
        two owners handed one client under the same numbers, given back
        in one RETURN, were taken for one owner's and went back with its
        stamps). With any stamp given back, each producer's queued messages
        are put in the order of their stamps, in the places they hold
        (``in_producer_order``): a run an earlier owner handed out goes to
        the front, and may hold a producer's newer sends than one queued
        here (simulation seed 5978: sends 25-30, served by the receiver's
        node while it held the owner dead, given back to the owner, and
        then send 24, which the owner had handed: 25-30 were delivered
        first)."""
        ch = self._channel(name)
        if withdraw:
            ch.credits.pop(conn, None)
        flight = ch.flight.get(conn, {})
        flushed = self.flushed.get(namespace(name), -1)
        back: list[Item] = []
        #: re-admitted items, numbered anew at the front: (seq, payload, deadline, stamp)
        older: list[tuple[int, bytes, float, Stamp | None]] = []
        in_flight = ch.stamps
        held = self.held_stamps.get((conn, name))
        stamped = False
        for i, (payload, ttl, seq) in enumerate(items):
            stamp = None
            given = stamps[i] if stamps else None
            if held:
                _unhold(held, seq, payload=payload)
            mine = in_flight.get(seq) if in_flight and given is not None else None
            if seq in flight and (mine is None or mine == given):
                # (handed since any flush: ``clear`` empties the flights)
                bundle = flight.pop(seq)
                self._landed(conn, 1)
                if in_flight:
                    stamp = in_flight.pop(seq, None)
                if stamp is None:
                    stamp = given
            elif seq <= flushed:
                continue  # flushed since it was handed over
            else:
                # handed over by an earlier owner of the channel, or released
                # already: it takes room here again
                bundle = None
                ch.pool.held += 1
                if ttl > 0:
                    stamp = given
                    if stamp is not None:
                        _mark(ch, stamp)
                        stamped = True
                    older.append((seq, payload, now + ttl, stamp))
                    continue
            if stamp is not None:
                _mark(ch, stamp)
                stamped = True
            if ttl <= 0:
                self.counters.dropped_expired += 1
                self._release(ch.pool, bundle)
            else:
                back.append((seq, payload, now + ttl, bundle, stamp))
        before = len(ch.items)
        if older:
            older.sort(key=lambda item: item[0])  # (in the order their numbers said)
            # after what was re-admitted before (still queued at the front,
            # numbered below ``front``): given back one by one, a run keeps
            # its order (simulation seed 76)
            run = [(payload, deadline, stamp) for _, payload, deadline, _, stamp in self._front(ch)]
            run += [(payload, deadline, stamp) for _old, payload, deadline, stamp in older]
            # (``flight`` is one of ``ch.flight``'s, or empty)
            below = [min(f) for f in ch.flight.values() if f]
            if ch.items:
                below.append(ch.items[0][0])
            if back:
                below.append(min(item[0] for item in back))
            first = self._first_of(len(run), below)
            ch.front = first + len(run)
            back.extend(
                (first + i, payload, deadline, None, stamp)
                for i, (payload, deadline, stamp) in enumerate(run)
            )
        if not flight:
            ch.flight.pop(conn, None)
        self._unindex(conn, name, ch)
        if back:
            ch.pool.earliest = min(ch.pool.earliest, min(item[2] for item in back))
            back.sort(key=_seq_of)
            if not ch.items or back[-1][0] < ch.items[0][0]:
                ch.items.extendleft(reversed(back))  # the usual case: all older
            else:
                ch.items = deque(heapq.merge(back, ch.items, key=_seq_of))
            if stamped:
                _in_order(ch)
        self._queued += len(ch.items) - before
        if held is not None and not held:
            self.held_stamps.pop((conn, name), None)
        out = self._drain(name, ch, now)
        self._maybe_delete(name, ch)
        return out

    def _first_of(self, count: int, below: list[int]) -> int:
        """The first of ``count`` consecutive numbers for messages that go
        to a channel's front: under every number in ``below``, or, if it is
        empty, the next of this node's sequence."""
        if below:
            return min(below) - count
        first = self._seq + 1
        self._seq += count
        return first

    @staticmethod
    def _front(ch: Channel) -> list[Item]:
        """Take out what ``give_back`` re-admitted and is still queued at
        the front (numbered below ``ch.front``)."""
        out: list[Item] = []
        if ch.front is not None:
            while ch.items and ch.items[0][0] < ch.front:
                out.append(ch.items.popleft())
        return out

    def take(self, name: str, now: float) -> tuple[list[HandedItem], dict[ConnId, int]]:
        """Remove a channel to hand it to another node: its live messages
        (oldest first, as wire items, each with its stamp if it has one) and
        the credit receivers hold on it. What is in flight stays counted
        nowhere: its receivers' reports go to the new owner, which does not
        know these messages (capacity may be loose by that much while
        ownership moves)."""
        ch = self.channels.get(name)
        if ch is None:
            return [], {}
        items: list[HandedItem] = [
            (payload, deadline - now, seq)
            if stamp is None
            else (payload, deadline - now, seq, stamp)
            for seq, payload, deadline, _, stamp in ch.items
        ]
        live = [item for item in items if item[1] > 0]
        self.counters.dropped_expired += len(items) - len(live)
        credits = dict(ch.credits)
        self._remove(name, ch)
        return live, credits

    def adopt(
        self, name: str, items: list[Any], now: float, handed_over: bool = True
    ) -> tuple[list[Delivery], int]:
        """Messages handed over by the channel's previous owner (``[payload,
        ttl, seq]``, or ``[payload, ttl, seq, stamp]``): older than anything
        sent here since, so they go to the front, in their order, renumbered
        into this node's sequence — unless that would put a producer's
        message after a later one of the same producer (below). Returns the
        deliveries and how many messages were stale: handed over after this
        node had handed one of the channel's messages to a receiver
        (``Channel.served``), they are older than that one (a producer's node
        sends to the keeper until it hears of the new owner, then here), so
        delivered now they would come after it; they are dropped, for the
        caller to count (simulation seed 46: a restarted node declared the
        keeper of its clients' names dead and served them; the keeper, alive
        behind a lossy link, handed them back 0.8 s later). ``handed_over``
        False: a put of this node's own, not a handover (never stale)."""
        live = [
            (item[0], now + item[1], _stamp_of(item[3]) if len(item) > 3 else None)
            for item in items
            if item[1] > 0
        ]
        self.counters.dropped_expired += len(items) - len(live)
        if not live:
            return [], 0
        ch = self.channels.get(name)
        if ch is not None and ch.served and handed_over:
            return [], len(live)
        ch = self._channel(name)
        self.counters.enqueued += len(live)
        ch.pool.held += len(live)
        live = in_producer_order(live)
        before = len(ch.items)
        if (
            ch.items
            and (live[-1][1] > ch.items[0][2] or _inverts(live, ch.items))
            and all(item[3] is None for item in ch.items)
        ):
            # Some queued here are older than what is handed over (by
            # deadline: one expiry, so send order; or by a producer's own
            # numbering, ``Stamp``): two nodes kept the channel, each having
            # declared the other dead, and their handbacks hold one
            # producer's sends interleaved (simulation seed 290: prepended,
            # a later send was taken first; a producer's node may have sent
            # to one, then the other, then back), or a relay delayed on a
            # lossy link was queued at one keeper after the producer's next
            # send was queued at the other (seed 125). Merged by deadline,
            # handed-over first on a tie, then each producer's messages put
            # in the order of their stamps in the places they took (a
            # deadline measured where a message was queued, or when a frame
            # was made, is late by as long as the message waited on the way:
            # a handback delayed in transit by TCP resending under loss,
            # seed 46's shrink, read as newer than 7 later sends), and
            # renumbered in order. (Bundled copies are never reordered: they
            # are numbered as their bundle; prepended as before.)
            queued = [(payload, deadline, stamp) for _, payload, deadline, _, stamp in ch.items]
            merged = in_producer_order(list(heapq.merge(live, queued, key=itemgetter(1))))
            ch.items = deque()
            for payload, deadline, stamp in merged:
                self._seq += 1
                ch.items.append((self._seq, payload, deadline, None, stamp))
        else:
            # below every number of the channel, in flight too: a number
            # twice would be one flight entry
            below = [ch.items[0][0], *(min(f) for f in ch.flight.values() if f)] if ch.items else []
            first = self._first_of(len(live), below)
            ch.items.extendleft(
                reversed(
                    [
                        (first + i, payload, deadline, None, stamp)
                        for i, (payload, deadline, stamp) in enumerate(live)
                    ]
                )
            )
        self._queued += len(ch.items) - before
        ch.pool.earliest = min(ch.pool.earliest, min(item[1] for item in live))
        for _payload, _deadline, stamp in live:
            if stamp is not None:
                _mark(ch, stamp)
        out = self._drain(name, ch, now)
        self._maybe_delete(name, ch)
        return out, 0

    def from_elsewhere(
        self,
        conn: ConnId,
        name: str,
        source: str,
        stamp: Stamp,
        seq: int,
        now: float,
        payload: bytes | None = None,
    ) -> bool:
        """Whether ``source``'s delivery of ``stamp``'s message on ``name``
        to ``conn``, a client of this node, may be passed on: not if
        ``conn`` was handed a later message of the same producer there by
        anyone (this node, another owner, or ``source`` itself). Two nodes
        owned the channel at once, each in its own view, and each delivered
        some of the producer's sends: the older, taken after the newer,
        breaks FIFO per producer. (Simulation seed 31 without kills: a node whose
        outgoing link lagged declared the owner dead and delivered its
        client's sends 2-8 itself; the owner had delivered send 1 at once,
        and its frame reached the client's node 0.5 s later. Seed 119: a
        node cut off and lagging held sends 1-8 its peers had declared it
        dead with, and delivered them once back, after the client's node
        had served sends 9-14.) The caller refuses it; its owner counts it
        lost. A delivery that passes is noted. One owner's deliveries are
        not always in order either: a relay held on a link cut off reaches
        the owner, passed on by the node it went to, after the owner
        delivered its producer's newer sends (seed 3217: sends 7-14 after
        15-17). Told apart by the owner's number (``seq``): such a send is
        numbered after the newer one, as it reached the owner after it;
        what an owner hands again where its number says (a give-back of
        another receiver, on a channel with competing consumers: rolling
        restart seeds 46 and 99 counted one each, refused) is numbered
        before, unless ``conn`` itself gave it back and took the newer one
        since (seed 6596: a cancel gave back sends 9-15, the client
        received again and took send 22 from the same owner, and 9-15 came
        back after it). (A delivery of this node's own after a newer one
        passed on is not checked.)"""
        key = (conn, name)
        handed = self.handed_to.get(key)
        mark = handed.get(stamp[0]) if handed is not None else None
        if (
            mark is not None
            and (stamp[1], stamp[2]) < mark[1:3]
            and (
                mark[0] != source
                or seq > mark[3]
                or seq in self.gave_back.get(key, ())
                or stamp in self.gave_back_stamps.get(key, ())
            )
        ):
            return False
        self._handed(conn, name, source, stamp, seq, now, payload)
        return True

    def forget_handed(
        self,
        conn: ConnId,
        name: str,
        seqs: Iterable[int],
        now: float,
        stamps: Sequence[Stamp | None] | None = None,
    ) -> None:
        """``conn`` gives back ``seqs`` of ``name`` (what it holds there):
        what comes again, from whichever owner has the channel by then, is
        not refused as older than what it gave back (``from_elsewhere``).
        Their numbers are kept: one of them handed again after a newer
        message, by the owner that handed it before, is. ``stamps``: of
        each message given back, if this node knew them all
        (``stamps_given_back``): then a producer whose newest message
        handed to ``conn`` is not among them keeps its mark (``conn`` took
        it, or holds it: what it gives back of that producer, handed again
        after it, breaks the producer's order; simulation seed 6222: a
        give-back of sends 4-11 this node took up late, after it had passed
        on the owner's sends 15-36, forgot them, and 4-11, handed again,
        went through), and the stamps are kept too (one of them handed
        again is known by its stamp, whatever its new number)."""
        key = (conn, name)
        handed = self.handed_to.get(key)
        known = stamps is not None and all(s is not None for s in stamps)
        if handed is not None and known and stamps:
            given = {s for s in stamps if s is not None}
            producers = {s[0] for s in given}
            for producer, mark in list(handed.items()):
                if producer not in producers or (producer, mark[1], mark[2]) in given:
                    del handed[producer]
            if not handed:
                del self.handed_to[key]
            back = self.gave_back_stamps.setdefault(key, set())
            back.update(given)
            if len(back) > GAVE_BACK_KEPT:
                for stamp in sorted(back, key=itemgetter(1, 2))[: len(back) - GAVE_BACK_KEPT]:
                    back.discard(stamp)
        else:
            self.handed_to.pop(key, None)
        gave = self.gave_back.setdefault(key, set())
        gave.update(seqs)
        if len(gave) > GAVE_BACK_KEPT:
            # (the oldest go: a client that gives back often, and never
            # pauses ``HANDED_MEMORY`` long, would grow it for good)
            for seq in sorted(gave)[: len(gave) - GAVE_BACK_KEPT]:
                gave.discard(seq)
        self._handed_until[key] = now + HANDED_MEMORY

    def _handed(
        self,
        conn: ConnId,
        name: str,
        source: str,
        stamp: Stamp,
        seq: int,
        now: float,
        payload: bytes | None = None,
    ) -> None:
        """``stamp``'s message, numbered ``seq``, was handed to ``conn`` on
        ``name`` by ``source`` ("": this node; ``handed_to``); with its
        ``payload``, its stamp is kept for a give-back (``held_stamps``)."""
        key = (conn, name)
        handed = self.handed_to.get(key)
        if handed is None:
            handed = self.handed_to[key] = {}
        mark = handed.get(stamp[0])
        if mark is None or (stamp[1], stamp[2]) > mark[1:3]:
            handed[stamp[0]] = (source, stamp[1], stamp[2], seq)
        self._handed_until[key] = now + HANDED_MEMORY
        if payload is None:
            return
        held = self.held_stamps.get(key)
        if held is None:
            held = self.held_stamps[key] = {}
        entries = held.get(seq)
        if entries is None:
            held[seq] = [(payload, stamp)]
            if len(held) > MAX_CREDIT:
                del held[next(iter(held))]
        else:
            entries.append((payload, stamp))

    def stamps_given_back(
        self, conn: ConnId, name: str, items: list[WireItem]
    ) -> tuple[tuple[int, str, int, int], ...]:
        """The stamps of what ``conn`` gives back on ``name`` (``items``, as
        its RETURN carries them), as ``(index in items, producer, life,
        n)``, forgotten here: a give-back this node passes on to the
        channel's owner carries them (an owner that did not hand them has
        no other way to put them where their producer's order says, nor to
        tell them from its own messages of the same numbers:
        ``give_back``)."""
        held = self.held_stamps.get((conn, name))
        if not held:
            return ()
        out = []
        for i, (payload, _ttl, seq) in enumerate(items):
            stamp = _unhold(held, seq, payload=payload)
            if stamp is not None:
                out.append((i, *stamp))
        if not held:
            del self.held_stamps[(conn, name)]
        return tuple(out)

    def stamp_handed(self, conn: ConnId, name: str, seq: int, payload: bytes) -> Stamp | None:
        """The stamp of message ``seq`` (with ``payload``) handed to
        ``conn`` on ``name``, if it is still known (``held_stamps``): its
        channel may have gone since, handed over in the same step."""
        entries = self.held_stamps.get((conn, name), {}).get(seq)
        for p, stamp in entries or ():
            if p == payload:
                return stamp
        return None

    def took(self, conn: ConnId, name: str, count: int) -> None:
        """``conn`` reports it took ``count`` more of ``name`` (a report this
        node passes on to the channel's owner): the stamps of the first
        ``count`` it was handed there are no longer needed."""
        held = self.held_stamps.get((conn, name))
        if not held:
            return
        for _ in range(count):
            if not held:
                break
            _unhold(held, next(iter(held)))
        if not held:
            del self.held_stamps[(conn, name)]

    def credits_of(self, conn: ConnId) -> dict[str, int]:
        """Channel -> the receive credit ``conn`` holds there."""
        out: dict[str, int] = {}
        for name in self._by_conn.get(conn, ()):
            ch = self.channels.get(name)
            credit = ch.credits.get(conn) if ch is not None else None
            if credit:
                out[name] = credit
        return out

    def flight_seqs(self, conn: ConnId) -> dict[str, set[int]]:
        """Channel -> the sequence numbers ``conn`` was handed and has not
        reported taken nor given back (what ``drop_conn`` counts lost)."""
        out: dict[str, set[int]] = {}
        for name in self._by_conn.get(conn, ()):
            ch = self.channels.get(name)
            flight = ch.flight.get(conn) if ch is not None else None
            if flight:
                out[name] = set(flight)
        return out

    def park_flight(
        self, conn: ConnId, stamps: dict[tuple[str, int], Stamp] | None = None
    ) -> dict[str, list[int]]:
        """Take out, uncounted, what ``conn`` was handed of plain messages
        (not group copies), in the order it was handed them: its node was
        declared dead, which may be a mistake, and whether the client took
        them is learned later (``routing``). Their room is released (a
        give-back takes it again: ``unpark``); ``drop_conn`` counts the
        rest. Their stamps go to ``stamps``, by (channel, seq)."""
        out: dict[str, list[int]] = {}
        for name in self._by_conn.get(conn, ()):
            ch = self.channels.get(name)
            flight = ch.flight.get(conn) if ch is not None else None
            if not flight or ch is None:
                continue
            seqs = [seq for seq, bundle in flight.items() if bundle is None]
            self._landed(conn, len(seqs))
            for seq in seqs:
                del flight[seq]
                stamp = ch.stamps.pop(seq, None)
                if stamp is not None and stamps is not None:
                    stamps[(name, seq)] = stamp
                ch.pool.held -= 1
            if seqs:
                out[name] = seqs
        return out

    def unpark(
        self,
        conn: ConnId,
        name: str,
        seqs: Iterable[int],
        stamps: Mapping[tuple[str, int], Stamp] | None = None,
    ) -> None:
        """``conn`` gives back messages of ``name`` this node handed it and
        parked (``park_flight``): they go back in its flight, taking room
        again, so ``give_back`` puts them where their numbers say, as this
        node's own. Not in its flight, they went to the front under new
        numbers, as a run an earlier owner handed out does, before older
        messages given back earlier (simulation seed 7081, 8 ops: a
        cancelled receive gave back sends 3-5, queued again, then send 6,
        handed before its node was declared dead and parked: delivered 6,
        3, 4, 5). ``stamps``: theirs, as ``park_flight`` gave them."""
        flushed = self.flushed.get(namespace(name), -1)
        # (what was flushed since it was handed is skipped: ``give_back`` too)
        seqs = [seq for seq in seqs if seq > flushed]
        if not seqs:
            return
        ch = self._channel(name)  # (gone once its last message was parked)
        for seq in seqs:
            flight = ch.flight.get(conn)
            if flight is None:
                flight = ch.flight[conn] = {}
                self._by_conn.setdefault(conn, set()).add(name)
            if seq not in flight:
                flight[seq] = None
                self.flying[conn] = self.flying.get(conn, 0) + 1
                ch.pool.held += 1
                stamp = stamps.get((name, seq)) if stamps else None
                if stamp is not None:
                    ch.stamps[seq] = stamp

    def stop_granting(self, conn: ConnId) -> None:
        """Forget ``conn``'s credit: nothing more is delivered to it. What
        it was handed stays in flight (it may still give it back or report
        it taken) until ``drop_conn``."""
        for name in self._by_conn.get(conn, ()):
            ch = self.channels.get(name)
            if ch is not None:
                ch.credits.pop(conn, None)

    def drop_conn(self, conn: ConnId, now: float) -> Outcome:
        """A connection went away: forget its credit and reservations; what
        it was handed and did not give back is lost (counted)."""
        for name in self._by_conn.pop(conn, ()):
            if self.held_stamps:
                self.held_stamps.pop((conn, name), None)
            ch = self.channels.get(name)
            if ch is None:
                continue
            ch.credits.pop(conn, None)
            flight = ch.flight.pop(conn, None)
            if flight:
                self._landed(conn, len(flight))
                self.counters.dropped_receiver_gone += len(flight)
                for bundle in flight.values():
                    self._release(ch.pool, bundle)
                if ch.stamps:
                    for seq in flight:
                        ch.stamps.pop(seq, None)
            self._maybe_delete(name, ch)
        out = Outcome()
        for key in self._reserving.pop(conn, ()):
            pool = self.pools.get(key)
            if pool is None:
                continue
            pool.reserved.pop(conn, None)
            if conn in pool.revoking:
                pool.revoking.discard(conn)
                out.extend(self._settle(key, pool, now))
            self._maybe_delete_pool(key, pool)
        return out

    def drop_channel(self, name: str) -> int:
        """Remove a channel and its messages (queued and in flight); returns
        how many messages were dropped."""
        ch = self.channels.get(name)
        if ch is None:
            return 0
        dropped = len(ch.items) + sum(len(f) for f in ch.flight.values())
        self._remove(name, ch)
        return dropped

    def clear(self, prefix: str) -> set[ConnId]:
        """Drop every queued and in-flight message of namespace ``prefix``
        (``flush``); waiting receivers keep waiting. Returns the connections
        that were handed messages of it (they drop what they prefetched)."""
        self.flushed[prefix] = self._seq
        told: set[ConnId] = set()
        for name, ch in list(self.channels.items()):
            if namespace(name) != prefix:
                continue
            for item in ch.items:
                self._release(ch.pool, item[3])
            self._queued -= len(ch.items)
            ch.items.clear()
            for conn, flight in ch.flight.items():
                told.add(conn)
                for bundle in flight.values():
                    self._release(ch.pool, bundle)
            for conn in list(ch.flight):
                self._landed(conn, len(ch.flight.pop(conn)))
                self._unindex(conn, name, ch)
            ch.stamps.clear()
            ch.newest.clear()
            self._maybe_delete(name, ch)
        return told

    def expire(self, now: float) -> Outcome:
        """Drop expired messages; lapsed reservations release their puts."""
        out = Outcome()
        for key, pool in list(self.pools.items()):
            if pool.reserved:
                holders = list(pool.reserved)
                pool.reserved_total(now)
                for conn in holders:
                    if conn not in pool.reserved:
                        self._unreserve(conn, key)
            if pool.revoking:
                lapsed = {c for c in pool.revoking if c not in pool.reserved}
                if lapsed:
                    pool.revoking -= lapsed
                    out.extend(self._settle(key, pool, now))
            self._purge_pool(pool, now)
            # (a pool only a handed-over reservation made, for names that
            # live elsewhere, goes once that lapses)
            self._maybe_delete_pool(key, pool)
        for name, ch in list(self.channels.items()):
            self._maybe_delete(name, ch)
        for handed in [k for k, until in self._handed_until.items() if until <= now]:
            del self._handed_until[handed]
            self.handed_to.pop(handed, None)
            self.gave_back.pop(handed, None)
            self.gave_back_stamps.pop(handed, None)
            self.held_stamps.pop(handed, None)
        return out

    # -- internals -------------------------------------------------------
    def _channel(self, name: str) -> Channel:
        ch = self.channels.get(name)
        if ch is None:
            key = pool_of(name)
            pool = self._pool(key)
            ch = self.channels[name] = Channel(pool)
            pool.names.add(name)
        return ch

    def _pool(self, key: str) -> Pool:
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool()
        return pool

    def _fly(self, conn: ConnId, name: str, ch: Channel, seq: int, bundle: Bundle | None) -> None:
        # (``_place_bundle`` has this and ``_take_credit`` inline: keep them in step)
        flight = ch.flight.get(conn)
        if flight is None:
            flight = ch.flight[conn] = {}
            self._by_conn.setdefault(conn, set()).add(name)
        flight[seq] = bundle
        self.flying[conn] = self.flying.get(conn, 0) + 1
        ch.served = True
        self.counters.delivered += 1

    def _landed(self, conn: ConnId, n: int) -> None:
        """``n`` of ``conn``'s messages left its flight (``flying``)."""
        if n:
            left = self.flying.get(conn, 0) - n
            if left > 0:
                self.flying[conn] = left
            else:
                self.flying.pop(conn, None)

    def _release(self, pool: Pool, bundle: Bundle | None) -> None:
        """One message (or one copy of a bundle) no longer takes room.
        (``consumed`` and ``consumed_bundle`` have this inline: keep them
        in step.)"""
        if bundle is None:
            pool.held -= 1
        else:
            bundle.left -= 1
            if bundle.left == 0:
                bundle.pool.held -= 1
                if bundle.handed is not None:
                    self.bundles.pop(bundle.seq, None)

    def _drain(self, name: str, ch: Channel, now: float) -> list[Delivery]:
        batches: dict[ConnId, list[WireItem]] = {}
        while ch.items and ch.credits:
            seq, payload, deadline, bundle, stamp = ch.items.popleft()
            self._queued -= 1
            if deadline <= now:
                self.counters.dropped_expired += 1
                self._release(ch.pool, bundle)
                continue
            conn = self._take_credit(name, ch)
            self._fly(conn, name, ch, seq, bundle)
            if stamp is not None:
                ch.stamps[seq] = stamp
                self._handed(conn, name, "", stamp, seq, now, payload)
            batches.setdefault(conn, []).append((payload, deadline - now, seq))
        if ch.newest and not ch.items:
            ch.newest.clear()  # (nothing queued to put a late send before)
        return [(conn, name, items) for conn, items in batches.items()]

    def _take_credit(self, name: str, ch: Channel) -> ConnId:
        # Round-robin: take the first connection, move it to the back.
        conn = next(iter(ch.credits))
        left = ch.credits.pop(conn) - 1
        if left > 0:
            ch.credits[conn] = left
        return conn

    def _unindex(self, conn: ConnId, name: str, ch: Channel) -> None:
        if conn in ch.credits or conn in ch.flight:
            return
        names = self._by_conn.get(conn)
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_conn[conn]

    def _unreserve(self, conn: ConnId, key: str) -> None:
        keys = self._reserving.get(conn)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._reserving[conn]

    def _purge_pool(self, pool: Pool, now: float) -> None:
        if now < pool.earliest:
            return  # nothing queued has expired yet
        earliest = float("inf")
        for name in list(pool.names):
            ch = self.channels.get(name)
            if ch is None or not ch.items:
                continue
            # Deadlines are not monotonic along the queue (senders may use
            # different expiries), so test every item.
            live: deque[Item] = deque()
            for item in ch.items:
                if item[2] > now:
                    live.append(item)
                    if item[2] < earliest:
                        earliest = item[2]
                else:
                    self.counters.dropped_expired += 1
                    self._release(pool, item[3])
            self._queued -= len(ch.items) - len(live)
            ch.items = live
        pool.earliest = earliest

    def _remove(self, name: str, ch: Channel) -> None:
        for item in ch.items:
            self._release(ch.pool, item[3])
        for flight in ch.flight.values():
            for bundle in flight.values():
                self._release(ch.pool, bundle)
        conns = {*ch.credits, *ch.flight}
        for conn, flight in ch.flight.items():
            self._landed(conn, len(flight))
        self._queued -= len(ch.items)
        ch.items.clear()
        ch.credits.clear()
        ch.flight.clear()
        ch.stamps.clear()
        ch.newest.clear()
        for conn in conns:
            self._unindex(conn, name, ch)
        del self.channels[name]
        key = pool_of(name)
        ch.pool.names.discard(name)
        self._maybe_delete_pool(key, ch.pool)

    def _maybe_delete(self, name: str, ch: Channel) -> None:
        if not ch.items and not ch.credits and not ch.flight:
            if self.channels.pop(name, None) is not None:
                ch.pool.names.discard(name)
                self._maybe_delete_pool(pool_of(name), ch.pool)

    def _maybe_delete_pool(self, key: str, pool: Pool) -> None:
        if (
            not pool.names
            and pool.held == 0
            and not pool.reserved
            and not pool.revoking
            and not pool.waiting
        ):
            self.pools.pop(key, None)


def _seq_of(item: Item) -> int:
    return item[0]


def _mark(ch: Channel, stamp: Stamp) -> None:
    """``stamp``'s message is queued on ``ch`` (``Channel.newest``)."""
    order = (stamp[1], stamp[2])
    if order > ch.newest.get(stamp[0], (-1, -1)):
        ch.newest[stamp[0]] = order


def _unhold(
    held: dict[int, list[tuple[bytes, Stamp]]],
    seq: int,
    payload: bytes | None = None,
    stamp: Stamp | None = None,
) -> Stamp | None:
    """Take out of ``held`` (``Queues.held_stamps``) the entry of message
    ``seq`` with that payload (or stamp); its stamp, if it was there."""
    entries = held.get(seq)
    if not entries:
        return None
    for j, (p, s) in enumerate(entries):
        if (payload is None or p == payload) and (stamp is None or s == stamp):
            del entries[j]
            if not entries:
                del held[seq]
            return s
    return None


def _in_order(ch: Channel) -> None:
    """Each producer's queued messages of ``ch`` in the order of their
    stamps, in the places they hold; the numbers stay where they were
    (the queue is in their order)."""
    items = list(ch.items)
    ordered = in_producer_order(items)
    if ordered is not items:
        ch.items = deque((items[i][0], *item[1:]) for i, item in enumerate(ordered))


def _stamp_of(raw: Any) -> Stamp | None:
    """A handed-over item's stamp (a list off the wire, checked there)."""
    return (raw[0], raw[1], raw[2]) if raw else None


_M = TypeVar("_M", bound=tuple[Any, ...])


def in_producer_order(messages: list[_M]) -> list[_M]:
    """``messages`` with each producer's in the order of their stamps
    (each message's last field, a ``Stamp`` or None), in the places that producer's
    messages held: the rest of the order is kept, and no two messages of
    one producer are reversed. Messages without a stamp keep their place.
    (The invariant a merge of queues must keep: FIFO per producer, what
    the Channels spec asks of a channel.)"""
    places: dict[str, list[int]] = {}
    for i, message in enumerate(messages):
        stamp = message[-1]
        if stamp is not None:
            places.setdefault(stamp[0], []).append(i)
    out = messages
    for where in places.values():
        if len(where) < 2:
            continue
        mine = [messages[i] for i in where]
        ordered = sorted(mine, key=lambda m: (m[-1][1], m[-1][2]))
        if ordered != mine:
            if out is messages:
                out = list(messages)
            for i, message in zip(where, ordered, strict=True):
                out[i] = message
    return out


def _inverts(handed: list[tuple[bytes, float, Stamp | None]], queued: Iterable[Item]) -> bool:
    """Whether putting ``handed`` before ``queued`` would put a producer's
    message after a later one of the same producer."""
    newest: dict[str, tuple[int, int]] = {}
    for _payload, _deadline, stamp in handed:
        if stamp is not None:
            order = (stamp[1], stamp[2])
            if order > newest.get(stamp[0], (-1, -1)):
                newest[stamp[0]] = order
    if not newest:
        return False
    for item in queued:
        stamp = item[4]
        if stamp is not None:
            mark = newest.get(stamp[0])
            if mark is not None and (stamp[1], stamp[2]) < mark:
                return True
    return False
