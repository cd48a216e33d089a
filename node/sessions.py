"""Client sessions: one per client process, held on a lease.

Owns: which client processes this node serves, their connections (one per
event loop of the process), their lease, and the delivery policy they sent in
HELLO (expiry, capacity, per-pattern capacities). Does not own: the queues and
memberships a session holds (``NodeCore`` drops those when a session dies).

A session lives as long as its process keeps talking: any frame from any of its
connections renews the lease (the process's keeper pings every lease/3). When a
process dies (crash, SIGKILL) nothing renews it, and ``expired`` reports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

ConnId = bytes


class PolicyError(ValueError):
    """A HELLO carried a policy this node cannot use."""


@dataclass(frozen=True, slots=True)
class Policy:
    """How a session's messages are kept: the layer's expiry and capacities."""

    expiry: float = 60.0
    capacity: int = 100
    patterns: tuple[tuple[re.Pattern[str], int], ...] = ()

    def capacity_for(self, channel: str) -> int:
        for pattern, capacity in self.patterns:
            if pattern.match(channel):
                return capacity
        return self.capacity

    @classmethod
    def from_wire(cls, raw: list[Any]) -> Policy:
        """Parse ``[expiry_s, capacity, [[regex, capacity], ...]]``."""
        try:
            expiry, capacity, patterns = raw
            if not isinstance(expiry, int | float) or isinstance(expiry, bool) or expiry <= 0:
                raise PolicyError(f"bad expiry {expiry!r}")
            if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
                raise PolicyError(f"bad capacity {capacity!r}")
            if not isinstance(patterns, list) or len(patterns) > 1000:
                raise PolicyError("bad channel_capacity list")
            compiled = []
            for regex, cap in patterns:
                if not isinstance(regex, str) or not isinstance(cap, int) or cap < 1:
                    raise PolicyError(f"bad channel_capacity entry {regex!r}: {cap!r}")
                compiled.append((re.compile(regex), cap))
        except (TypeError, ValueError, re.error) as exc:
            raise PolicyError(str(exc)) from None
        return cls(float(expiry), capacity, tuple(compiled))


@dataclass(slots=True)
class Session:
    tag: str
    pid: int
    policy: Policy
    last_seen: float
    conns: set[ConnId] = field(default_factory=set)


class Sessions:
    def __init__(self, lease: float) -> None:
        self.lease = lease
        self.by_tag: dict[str, Session] = {}
        self.by_conn: dict[ConnId, Session] = {}

    def __len__(self) -> int:
        return len(self.by_tag)

    def hello(self, conn: ConnId, tag: str, pid: int, policy: Policy, now: float) -> Session:
        session = self.by_tag.get(tag)
        if session is None:
            session = self.by_tag[tag] = Session(tag, pid, policy, now)
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

    def expired(self, now: float) -> list[Session]:
        return [s for s in self.by_tag.values() if now - s.last_seen > self.lease]

    def remove(self, tag: str) -> Session | None:
        session = self.by_tag.pop(tag, None)
        if session is not None:
            for conn in session.conns:
                self.by_conn.pop(conn, None)
        return session
