"""Channel queues of one node: FIFO, capacity, expiry, receive credit and
send reservations.

Owns: the messages waiting on each channel this node holds, which client
connections have asked for them (receive credit), and which have been promised
room in them (send reservations). Decides which queued message goes to which
connection and whether a send fits. Does not own: sockets, sessions, names or
policy (the caller passes capacity and deadlines in).

Receive credit: a connection grants ``n`` credits on a channel (``RECV``) and
the node hands it up to ``n`` messages, oldest first, as they arrive.
Connections with credit on one channel are served round-robin, so worker
processes on one channel share it.

Send reservations: when an acknowledged send finds plenty of room, the node
reserves a few more slots for that connection and says so in the ACK. The
connection may then send that many messages without waiting for answers
(``SEND`` with request id 0); reserved slots count against capacity for
everyone else, so ``ChannelFull`` stays exact. Reservations lapse after
``RESERVATION_TTL``; the client stops using them after half of it.

Pure: every method takes ``now`` (monotonic seconds) and returns what to send.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from zchannels.names import namespace
from zchannels.protocol import RESERVATION_TTL

ConnId = bytes
#: (seq, payload, deadline): seq orders messages (node-wide, increasing);
#: deadline is monotonic seconds on this node's clock
Item = tuple[int, bytes, float]
#: (payload, ttl_remaining_s, seq): one message as it travels in DELIVER/RETURN
WireItem = tuple[bytes, float, int]
#: (connection, channel, [wire items...])
Delivery = tuple[ConnId, str, list[WireItem]]

#: Largest credit one connection may hold on one channel; a client asking for
#: more is clamped, so one RECV cannot make the node buffer unboundedly.
MAX_CREDIT = 10_000
#: Most slots reserved for one connection on one channel at a time: enough
#: to pipeline a burst, few enough that other senders still find room.
MAX_RESERVATION = 64


@dataclass(slots=True)
class Channel:
    items: deque[Item] = field(default_factory=deque)
    #: connection -> remaining credit; dict order is the round-robin order
    credits: dict[ConnId, int] = field(default_factory=dict)
    #: connection -> [slots left, expires_at]
    reserved: dict[ConnId, list[float]] = field(default_factory=dict)

    def reserved_total(self, now: float, exclude: ConnId | None = None) -> int:
        total = 0
        for conn, (left, expires_at) in list(self.reserved.items()):
            if expires_at <= now:
                del self.reserved[conn]
            elif conn != exclude:
                total += int(left)
        return total


@dataclass(slots=True)
class QueueCounters:
    enqueued: int = 0
    delivered: int = 0
    dropped_full: int = 0
    dropped_expired: int = 0


class Queues:
    def __init__(self, first_seq: int = 0) -> None:
        self.channels: dict[str, Channel] = {}
        # Sequence numbers let messages given back by a receiver rejoin the
        # queue in send order, however returns and deliveries interleave.
        self._seq = first_seq
        #: connection -> channels where it holds credit or a reservation
        self._by_conn: dict[ConnId, set[str]] = {}
        self.counters = QueueCounters()

    # -- queries ---------------------------------------------------------
    def queued(self) -> int:
        return sum(len(ch.items) for ch in self.channels.values())

    def length(self, name: str) -> int:
        ch = self.channels.get(name)
        return len(ch.items) if ch else 0

    # -- sending ---------------------------------------------------------
    def put(
        self,
        name: str,
        payload: bytes,
        deadline: float,
        capacity: int,
        now: float,
        sender: ConnId | None = None,
    ) -> Delivery | bool:
        """Queue or hand over one message; ``sender`` uses its reservation.

        Returns a ``Delivery`` when a connection with credit took it at once,
        ``True`` when it was queued, ``False`` when the channel is full.
        """
        ch = self.channels.get(name)
        if ch is None:
            ch = self.channels[name] = Channel()
        if not self._use_reservation(ch, sender, now):
            used = len(ch.items) + (ch.reserved_total(now) if ch.reserved else 0)
            if used >= capacity:
                self._purge(ch, now)
                if len(ch.items) + ch.reserved_total(now) >= capacity:
                    self.counters.dropped_full += 1
                    self._maybe_delete(name, ch)
                    return False
        self.counters.enqueued += 1
        self._seq += 1
        if ch.credits and not ch.items:
            conn = self._take_credit(name, ch)
            self.counters.delivered += 1
            self._maybe_delete(name, ch)
            return (conn, name, [(payload, deadline - now, self._seq)])
        ch.items.append((self._seq, payload, deadline))
        return True

    def reserve(self, conn: ConnId, name: str, capacity: int, now: float) -> int:
        """Reserve slots on ``name`` for ``conn`` if there is plenty of room:
        at most half of what is free, at most ``MAX_RESERVATION``. Returns
        how many ``conn`` now holds."""
        ch = self.channels.get(name)
        if ch is None:
            ch = self.channels[name] = Channel()
        held = ch.reserved.get(conn)
        if held is not None and held[1] > now and held[0] >= MAX_RESERVATION // 2:
            return int(held[0])
        free = capacity - len(ch.items) - ch.reserved_total(now, exclude=conn)
        grant = min(MAX_RESERVATION, free // 2)
        if grant <= 0:
            ch.reserved.pop(conn, None)
            self._unindex(conn, name, ch)
            self._maybe_delete(name, ch)
            return 0
        ch.reserved[conn] = [grant, now + RESERVATION_TTL]
        self._by_conn.setdefault(conn, set()).add(name)
        return grant

    def _use_reservation(self, ch: Channel, sender: ConnId | None, now: float) -> bool:
        if sender is None:
            return False
        held = ch.reserved.get(sender)
        if held is None or held[1] <= now or held[0] < 1:
            return False
        held[0] -= 1
        return True

    # -- receiving -------------------------------------------------------
    def grant(self, conn: ConnId, name: str, credit: int, now: float) -> list[Delivery]:
        """Add ``credit`` for ``conn`` on ``name``; deliver what is waiting."""
        if credit <= 0:
            return []
        ch = self.channels.get(name)
        if ch is None:
            ch = self.channels[name] = Channel()
        ch.credits[conn] = min(MAX_CREDIT, ch.credits.get(conn, 0) + credit)
        self._by_conn.setdefault(conn, set()).add(name)
        out = self._drain(name, ch, now)
        self._maybe_delete(name, ch)
        return out

    def give_back(
        self, conn: ConnId, name: str, items: list[WireItem], now: float, withdraw: bool = True
    ) -> list[Delivery]:
        """Put ``items`` back in the queue where their sequence numbers say,
        for other receivers; ``withdraw``: also drop ``conn``'s credit."""
        ch = self.channels.get(name)
        if ch is None:
            ch = self.channels[name] = Channel()
        if withdraw:
            ch.credits.pop(conn, None)
            self._unindex(conn, name, ch)
        back = sorted((seq, payload, now + ttl) for payload, ttl, seq in items if ttl > 0)
        self.counters.dropped_expired += len(items) - len(back)
        if back:
            if not ch.items or back[-1][0] < ch.items[0][0]:
                ch.items.extendleft(reversed(back))  # the usual case: all older
            else:
                ch.items = deque(heapq.merge(back, ch.items))
        out = self._drain(name, ch, now)
        self._maybe_delete(name, ch)
        return out

    def take(self, name: str, now: float) -> tuple[list[WireItem], dict[ConnId, int]]:
        """Remove a channel to hand it to another node: its live messages
        (oldest first, as wire items) and the credit receivers hold on it.
        Reservations on it lapse (their holders fall back to acknowledged sends)."""
        ch = self.channels.pop(name, None)
        if ch is None:
            return [], {}
        items = [(payload, deadline - now, seq) for seq, payload, deadline in ch.items]
        live = [item for item in items if item[1] > 0]
        self.counters.dropped_expired += len(items) - len(live)
        for conn in {*ch.credits, *ch.reserved}:
            names = self._by_conn.get(conn)
            if names is not None:
                names.discard(name)
                if not names:
                    del self._by_conn[conn]
        return live, dict(ch.credits)

    def adopt(self, name: str, items: list[WireItem], now: float) -> list[Delivery]:
        """Messages handed over by the channel's previous owner: older than
        anything sent here since, so they go to the front, in their order,
        renumbered into this node's sequence."""
        live = [(payload, now + ttl) for payload, ttl, _ in items if ttl > 0]
        self.counters.dropped_expired += len(items) - len(live)
        if not live:
            return []
        ch = self.channels.get(name)
        if ch is None:
            ch = self.channels[name] = Channel()
        self.counters.enqueued += len(live)
        if ch.items:
            first = ch.items[0][0] - len(live)
        else:
            first = self._seq + 1
            self._seq += len(live)
        ch.items.extendleft(
            reversed([(first + i, payload, deadline) for i, (payload, deadline) in enumerate(live)])
        )
        out = self._drain(name, ch, now)
        self._maybe_delete(name, ch)
        return out

    def drop_conn(self, conn: ConnId) -> None:
        """A connection went away: forget its credit and reservations."""
        for name in self._by_conn.pop(conn, ()):
            ch = self.channels.get(name)
            if ch is not None:
                ch.credits.pop(conn, None)
                ch.reserved.pop(conn, None)
                self._maybe_delete(name, ch)

    def drop_channel(self, name: str) -> int:
        """Remove a channel and its messages; returns how many were dropped."""
        ch = self.channels.pop(name, None)
        if ch is None:
            return 0
        for conn in {*ch.credits, *ch.reserved}:
            names = self._by_conn.get(conn)
            if names is not None:
                names.discard(name)
        return len(ch.items)

    def clear(self, prefix: str) -> int:
        """Drop every queued message of namespace ``prefix`` (``flush``);
        waiting receivers keep waiting."""
        dropped = 0
        for name, ch in list(self.channels.items()):
            if namespace(name) != prefix:
                continue
            dropped += len(ch.items)
            ch.items.clear()
            self._maybe_delete(name, ch)
        return dropped

    def expire(self, now: float) -> None:
        """Drop expired messages and reservations; forget empty channels."""
        for name, ch in list(self.channels.items()):
            self._purge(ch, now)
            if ch.reserved:
                ch.reserved_total(now)
            self._maybe_delete(name, ch)

    # -- internals -------------------------------------------------------
    def _drain(self, name: str, ch: Channel, now: float) -> list[Delivery]:
        batches: dict[ConnId, list[WireItem]] = {}
        while ch.items and ch.credits:
            seq, payload, deadline = ch.items.popleft()
            if deadline <= now:
                self.counters.dropped_expired += 1
                continue
            conn = self._take_credit(name, ch)
            batches.setdefault(conn, []).append((payload, deadline - now, seq))
            self.counters.delivered += 1
        return [(conn, name, items) for conn, items in batches.items()]

    def _take_credit(self, name: str, ch: Channel) -> ConnId:
        # Round-robin: take the first connection, move it to the back.
        conn = next(iter(ch.credits))
        left = ch.credits.pop(conn) - 1
        if left > 0:
            ch.credits[conn] = left
        else:
            self._unindex(conn, name, ch)
        return conn

    def _unindex(self, conn: ConnId, name: str, ch: Channel) -> None:
        if conn in ch.credits or conn in ch.reserved:
            return
        names = self._by_conn.get(conn)
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_conn[conn]

    def _purge(self, ch: Channel, now: float) -> None:
        if not ch.items:
            return
        # Deadlines are not monotonic along the queue (senders may use
        # different expiries), so test every item.
        live = deque(item for item in ch.items if item[2] > now)
        self.counters.dropped_expired += len(ch.items) - len(live)
        ch.items = live

    def _maybe_delete(self, name: str, ch: Channel) -> None:
        if not ch.items and not ch.credits and not ch.reserved:
            self.channels.pop(name, None)
