"""Channel queues of one node: FIFO, capacity, expiry, and receive credit.

Owns: the messages waiting on each channel this node holds, and which client
connections have asked for them (credit). Decides which queued message goes to
which connection. Does not own: sockets, sessions, names or policy (the caller
passes capacity and deadlines in).

Delivery is credit-based: a connection grants ``n`` credits on a channel
(``RECV``), and the node hands it up to ``n`` messages, oldest first, as they
arrive. Connections with credit on one channel are served round-robin, so two
worker processes on one channel share it. Pure: every method takes ``now``
(monotonic seconds) and returns what to send; nothing here blocks or does I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from zchannels.names import namespace

ConnId = bytes
#: (payload, deadline): deadline is monotonic seconds on this node's clock
Item = tuple[bytes, float]
#: (connection, channel, [(payload, ttl_remaining_s), ...])
Delivery = tuple[ConnId, str, list[tuple[bytes, float]]]

#: Largest credit one connection may hold on one channel; a client asking for
#: more is clamped, so one RECV cannot make the node buffer unboundedly.
MAX_CREDIT = 10_000


@dataclass(slots=True)
class Channel:
    items: deque[Item] = field(default_factory=deque)
    #: connection -> remaining credit; dict order is the round-robin order
    credits: dict[ConnId, int] = field(default_factory=dict)


@dataclass(slots=True)
class QueueCounters:
    enqueued: int = 0
    delivered: int = 0
    dropped_full: int = 0
    dropped_expired: int = 0


class Queues:
    def __init__(self) -> None:
        self.channels: dict[str, Channel] = {}
        self._credit_index: dict[ConnId, set[str]] = {}
        self.counters = QueueCounters()

    # -- queries ---------------------------------------------------------
    def queued(self) -> int:
        return sum(len(ch.items) for ch in self.channels.values())

    def length(self, name: str) -> int:
        ch = self.channels.get(name)
        return len(ch.items) if ch else 0

    # -- sending ---------------------------------------------------------
    def put(
        self, name: str, payload: bytes, deadline: float, capacity: int, now: float
    ) -> Delivery | bool:
        """Queue or hand over one message.

        Returns a ``Delivery`` when a connection with credit took it at once,
        ``True`` when it was queued, ``False`` when the channel is full.
        """
        ch = self.channels.get(name)
        if ch is None:
            ch = self.channels[name] = Channel()
        elif len(ch.items) >= capacity:
            self._purge(ch, now)
            if len(ch.items) >= capacity:
                self.counters.dropped_full += 1
                return False
        self.counters.enqueued += 1
        if ch.credits and not ch.items:
            conn = self._take_credit(name, ch)
            self.counters.delivered += 1
            self._maybe_delete(name, ch)
            return (conn, name, [(payload, deadline - now)])
        ch.items.append((payload, deadline))
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
        self._credit_index.setdefault(conn, set()).add(name)
        out = self._drain(name, ch, now)
        self._maybe_delete(name, ch)
        return out

    def give_back(
        self, conn: ConnId, name: str, items: list[tuple[bytes, float]], now: float
    ) -> list[Delivery]:
        """Withdraw ``conn``'s credit on ``name`` and put ``items`` (payload,
        ttl) back at the head of the queue, in order, for other receivers."""
        ch = self.channels.get(name)
        if ch is None:
            ch = self.channels[name] = Channel()
        self._forget_credit(conn, name, ch)
        for payload, ttl in reversed(items):
            if ttl > 0:
                ch.items.appendleft((payload, now + ttl))
            else:
                self.counters.dropped_expired += 1
        out = self._drain(name, ch, now)
        self._maybe_delete(name, ch)
        return out

    def drop_conn(self, conn: ConnId) -> None:
        """A connection went away: forget all its credit."""
        for name in self._credit_index.pop(conn, ()):
            ch = self.channels.get(name)
            if ch is not None:
                ch.credits.pop(conn, None)
                self._maybe_delete(name, ch)

    def drop_channel(self, name: str) -> int:
        """Remove a channel and its messages; returns how many were dropped."""
        ch = self.channels.pop(name, None)
        if ch is None:
            return 0
        for conn in ch.credits:
            names = self._credit_index.get(conn)
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
        """Drop expired messages everywhere and forget empty channels."""
        for name, ch in list(self.channels.items()):
            self._purge(ch, now)
            self._maybe_delete(name, ch)

    # -- internals -------------------------------------------------------
    def _drain(self, name: str, ch: Channel, now: float) -> list[Delivery]:
        batches: dict[ConnId, list[tuple[bytes, float]]] = {}
        while ch.items and ch.credits:
            payload, deadline = ch.items.popleft()
            if deadline <= now:
                self.counters.dropped_expired += 1
                continue
            conn = self._take_credit(name, ch)
            batches.setdefault(conn, []).append((payload, deadline - now))
            self.counters.delivered += 1
        return [(conn, name, items) for conn, items in batches.items()]

    def _take_credit(self, name: str, ch: Channel) -> ConnId:
        # Round-robin: take the first connection, move it to the back.
        conn = next(iter(ch.credits))
        left = ch.credits.pop(conn) - 1
        if left > 0:
            ch.credits[conn] = left
        else:
            names = self._credit_index.get(conn)
            if names is not None:
                names.discard(name)
        return conn

    def _forget_credit(self, conn: ConnId, name: str, ch: Channel) -> None:
        ch.credits.pop(conn, None)
        names = self._credit_index.get(conn)
        if names is not None:
            names.discard(name)

    def _purge(self, ch: Channel, now: float) -> None:
        if not ch.items:
            return
        # Deadlines are not monotonic along the queue (senders may use
        # different expiries), so test every item.
        live = deque(item for item in ch.items if item[1] > now)
        self.counters.dropped_expired += len(ch.items) - len(live)
        ch.items = live

    def _maybe_delete(self, name: str, ch: Channel) -> None:
        if not ch.items and not ch.credits:
            self.channels.pop(name, None)
