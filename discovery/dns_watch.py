"""What a DNS name's resolutions mean for discovery, without I/O.

Owns: the result of one resolution (``Answer``: the endpoints a name lists,
or why the lookup failed), turning looked-up records into peer endpoints
(``endpoint``, ``srv_endpoints``), and ``NameWatch``: what changed between two
resolutions of one name, as ``PeerEvent``s and log lines for the shell
(``dns.DnsDiscovery``) to emit.

The rules:

- an endpoint that appears is "found" (the member table exchanges state
  with it); one that disappears is "lost", which the node only logs: a pod
  leaves a headless Service while it shuts down, a record may be dropped
  by mistake, and liveness is the failure detector's call, as with mDNS;
- a *failed* lookup (timeout, SERVFAIL, no resolver) changes nothing: it is
  not the name listing no one. It is logged when it starts failing and when
  it resolves again, not at every retry;
- a name that does not exist, or has no records of the type asked, lists no
  one (a Kubernetes headless Service with no ready pod answers NXDOMAIN);
- this node's own endpoint, which the name usually lists too, is skipped.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .interface import PeerEvent


@dataclass(frozen=True, slots=True)
class Answer:
    """One resolution of a name: the endpoints it lists, or why it failed
    (``error`` set: nothing is known, ``endpoints`` is empty)."""

    endpoints: frozenset[str] = frozenset()
    error: str | None = None

    @classmethod
    def failed(cls, error: str) -> Answer:
        return cls(error=error)


@dataclass(frozen=True, slots=True)
class Change:
    """What one resolution changed: events for the node, lines for the log."""

    events: tuple[PeerEvent, ...] = ()
    log: tuple[tuple[int, str], ...] = ()  # (logging level, message)


def endpoint(address: str, port: int) -> str:
    """A peer endpoint as ZeroMQ (and the member table) spells it: IPv6 in
    brackets, in its compressed form."""
    ip = ipaddress.ip_address(address)
    host = f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
    return f"tcp://{host}:{port}"


def srv_endpoints(
    records: Iterable[tuple[str, int]], addresses: Mapping[str, Iterable[str]]
) -> frozenset[str]:
    """Endpoints from SRV records ``(target, port)`` and the addresses their
    targets resolved to. Every record is a peer, whatever its priority and
    weight (those choose *one* server to use; we want every node). A target
    of "." means "no such service here" (RFC 2782) and is skipped, as is a
    target without addresses."""
    found = set()
    for target, port in records:
        if target in (".", ""):
            continue
        for address in addresses.get(target, ()):
            found.add(endpoint(address, port))
    return frozenset(found)


class NameWatch:
    """The endpoints one name listed at its last successful resolution."""

    def __init__(self, label: str, own_endpoint: str | None = None) -> None:
        self.label = label  # "dns:NAME" or "dns-srv:NAME", for events and the log
        self.own_endpoint = own_endpoint
        #: None until the first successful resolution
        self.listed: frozenset[str] | None = None
        self._failing: str | None = None  # the error being reported, if any

    def resolved(self, answer: Answer) -> Change:
        if answer.error is not None:
            if answer.error == self._failing:
                return Change()
            self._failing = answer.error
            kept = len(self.listed or ())
            return Change(
                log=(
                    (
                        logging.WARNING,
                        f"{self.label}: lookup failed ({answer.error}); retrying, "
                        f"keeping the {kept} peer(s) it listed",
                    ),
                )
            )
        notes: list[tuple[int, str]] = []
        if self._failing is not None:
            self._failing = None
            notes.append((logging.INFO, f"{self.label}: resolves again"))
        now = frozenset(e for e in answer.endpoints if e != self.own_endpoint)
        before = self.listed if self.listed is not None else frozenset()
        if self.listed is None and not now:
            notes.append((logging.INFO, f"{self.label}: lists no peer yet"))
        self.listed = now
        events = tuple(PeerEvent("found", e, via=self.label) for e in sorted(now - before)) + tuple(
            PeerEvent("lost", e, via=self.label) for e in sorted(before - now)
        )
        return Change(events, tuple(notes))
