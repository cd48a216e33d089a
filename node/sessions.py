"""Client sessions: one per client process, held on a lease.

Owns: which client processes this node serves, their connections (one per
event loop of the process), their lease, and the delivery policy they sent in
HELLO (expiry, capacity, per-pattern capacities). Does not own: the queues and
memberships a session holds (``NodeCore`` drops those when a session dies).

A session lives as long as its process keeps talking: any frame from any of its
connections renews the lease (the process's keeper pings every lease/3). When a
process dies (crash, SIGKILL) nothing renews it, and ``expired`` reports it.

Also owns the tally of each connection's reserved sends (``reserved``): a
send on a reservation (SEND with req 0) is never answered, so one that a
SIGKILLed node never read from its socket is known lost only by comparing
what the client says it sent (its HELLO to the next process) with what the
node read (kept in the held record across the kill).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from zchannels.protocol import FEATURE_BUNDLE_REPORTS

ConnId = bytes


class PolicyError(ValueError):
    """A HELLO carried a policy this node cannot use."""


@dataclass(frozen=True, slots=True)
class Policy:
    """How a session's messages are kept: the layer's ``expiry``.

    Capacities travel with each SEND and GROUP_ADD instead: the layer matches
    its ``channel_capacity`` patterns itself, so the node never runs a regex
    a client sent (one catastrophic pattern would stall every client).
    """

    expiry: float = 60.0
    #: the client reports group messages' consumption per bundle
    #: (``FEATURE_BUNDLE_REPORTS``): it is sent DELIVER_BUNDLE, not DELIVER_MANY
    bundle_reports: bool = False

    @classmethod
    def from_wire(cls, raw: list[Any]) -> Policy:
        """Parse ``[expiry_s, features, ...]`` (``features`` may be absent:
        an older client; later fields are ignored: room to grow)."""
        if not raw:
            raise PolicyError("empty policy")
        expiry = raw[0]
        if not valid_duration(expiry):
            raise PolicyError(f"bad expiry {expiry!r}")
        features = raw[1] if len(raw) > 1 else 0
        if type(features) is not int:
            raise PolicyError(f"bad features {features!r}")
        return cls(float(expiry), bool(features & FEATURE_BUNDLE_REPORTS))


def hello_reserved(raw: list[Any]) -> int | None:
    """The third field of a HELLO's policy list: how many reserved sends
    (SEND with req 0) the connection has made in all, up to this HELLO.
    None if it is not a count: from an older client, which does not say,
    or sends something else there (the capacity patterns of an early
    version), ignored as later fields are."""
    total = raw[2] if len(raw) > 2 else None
    return total if type(total) is int and total >= 0 else None


def valid_duration(value: object) -> bool:
    """A usable number of seconds: finite, positive, under ~30 years."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value < 1e9
    )


@dataclass(slots=True)
class Session:
    tag: str
    pid: int
    policy: Policy
    last_seen: float
    conns: set[ConnId] = field(default_factory=set)
    #: channels this session made exist (by sending or receiving), for the
    #: per-client bound; pruned of names that have gone when it fills up
    created: set[str] = field(default_factory=set)


class Sessions:
    def __init__(self, lease: float) -> None:
        self.lease = lease
        self.by_tag: dict[str, Session] = {}
        self.by_conn: dict[ConnId, Session] = {}
        #: bumped whenever a session comes or goes (what depends on which
        #: processes are alive is cached against it)
        self.version = 0
        #: connection -> the reserved sends its client has made in all, as far
        #: as this node knows: what its last HELLO said, plus each one read
        #: since (``reserved_read``). A HELLO that says more names sends
        #: no life of this node ever read: lost (``reserved_hello``).
        self.reserved: dict[ConnId, int] = {}
        #: of ``reserved``, the connections taken from the previous life's
        #: record (``inherit``) that have not said HELLO here yet; kept
        #: until ``_inherited_until``, a lease after (their processes have
        #: died if they have not come back by then)
        self._inherited: set[ConnId] = set()
        self._inherited_until = 0.0
        #: connection -> what the previous life had handed it and not heard
        #: taken nor given back (its record's flights): lost if the
        #: connection does not come back (its process died before that life
        #: noticed), counted by ``prune_inherited``; a connection that comes
        #: back keeps and takes what it holds
        self._inherited_flight: dict[ConnId, int] = {}

    def __len__(self) -> int:
        return len(self.by_tag)

    def hello(self, conn: ConnId, tag: str, pid: int, policy: Policy, now: float) -> Session:
        session = self.by_tag.get(tag)
        if session is None:
            session = self.by_tag[tag] = Session(tag, pid, policy, now)
            self.version += 1
        else:
            session.policy = policy
            session.last_seen = now
        old = self.by_conn.get(conn)
        if old is not None and old is not session:
            old.conns.discard(conn)
        session.conns.add(conn)
        self.by_conn[conn] = session
        return session

    def touch(self, conn: ConnId, now: float) -> Session | None:
        session = self.by_conn.get(conn)
        if session is not None:
            session.last_seen = now
        return session

    def close_conn(self, conn: ConnId) -> None:
        session = self.by_conn.pop(conn, None)
        if session is not None:
            session.conns.discard(conn)
        self.reserved.pop(conn, None)

    # -- reserved sends ---------------------------------------------------
    def reserved_read(self, conn: ConnId) -> None:
        """A reserved send from ``conn`` was read (whatever became of it)."""
        if conn in self.reserved:
            self.reserved[conn] += 1

    def reserved_hello(self, conn: ConnId, total: int | None) -> int:
        """``conn`` said HELLO, having made ``total`` reserved sends in all
        (None: its client does not say). Returns how many of them no life of
        this node read: the ones still in a killed process's socket, and,
        in this life, any a broken TCP connection lost in flight. (Frames of
        one connection arrive in order, so every send made before the HELLO
        was read before it, or never.) Zero when this node knows nothing of
        the connection: its first HELLO, or one after its record was lost."""
        self._inherited.discard(conn)
        self._inherited_flight.pop(conn, None)
        known = self.reserved.pop(conn, None)
        if total is None:
            return 0
        self.reserved[conn] = total
        if known is None:
            return 0
        return max(0, total - known)

    def reserved_carry(self) -> tuple[tuple[ConnId, int], ...]:
        """The tally, for the held record (``inherit`` takes it back)."""
        return tuple(self.reserved.items())

    def inherit(
        self,
        tally: tuple[tuple[ConnId, int], ...],
        flights: tuple[tuple[ConnId, int], ...],
        now: float,
    ) -> None:
        """The previous life's tally (``reserved_carry``) and its clients'
        flights (``Queues.flying``), from its held record: its clients' next
        HELLOs are compared with the tally; the flights of those that do not
        come back in a lease are lost (``prune_inherited``)."""
        for conn, total in tally:
            if conn not in self.reserved:
                self.reserved[conn] = total
                self._inherited.add(conn)
        for conn, count in flights:
            if conn not in self.by_conn and count > 0:
                self._inherited_flight[conn] = self._inherited_flight.get(conn, 0) + count
        self._inherited_until = now + self.lease

    def inherits_flight(self) -> bool:
        """Whether the previous life's flights are still kept (for a lease)."""
        return bool(self._inherited_flight)

    def settle_inherited(self, conn: ConnId, count: int) -> int:
        """``conn``, unknown here (before its HELLO), reported taken or gave
        back ``count`` messages: of the previous life's flight to it, they
        are settled, not left for ``prune_inherited`` to count lost. Returns
        how many of them were of that flight (a give-back's are lost: this
        life never handed them, and the client forgets them); 0 for a
        connection with none (its session lapsed here and its flight was
        counted then, or it comes from no life this one knows)."""
        left = self._inherited_flight.get(conn, 0)
        taken = min(left, count)
        if taken:
            if left > taken:
                self._inherited_flight[conn] = left - taken
            else:
                del self._inherited_flight[conn]
        return taken

    def prune_inherited(self, now: float) -> int:
        """A lease after ``inherit``: forget the inherited connections that
        never came back. Returns how many messages they had in flight (lost
        with their processes; none of them said HELLO to take them)."""
        if now < self._inherited_until or not (self._inherited or self._inherited_flight):
            return 0
        for conn in self._inherited:
            self.reserved.pop(conn, None)
        self._inherited.clear()
        lost = sum(self._inherited_flight.values())
        self._inherited_flight.clear()
        return lost

    def expired(self, now: float) -> list[Session]:
        return [s for s in self.by_tag.values() if now - s.last_seen > self.lease]

    def remove(self, tag: str) -> Session | None:
        session = self.by_tag.pop(tag, None)
        if session is not None:
            self.version += 1
            for conn in session.conns:
                self.by_conn.pop(conn, None)
                self.reserved.pop(conn, None)
        return session
