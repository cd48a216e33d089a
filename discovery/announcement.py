"""What a node announces over mDNS, and how it judges what others announce.

Owns: the TXT record format (a wire contract: keys and value encodings below
are what other nodes parse), the DNS-SD instance name, and ``PeerBook``, the
pure rules that turn "this service appeared / changed / went away" into
``PeerEvent``s or a reason to ignore it. No sockets and no zeroconf here:
``mdns.py`` feeds these rules from the network.

The TXT keys (RFC 6763 section 6: short keys, one ``key=value`` string each):

- ``cluster``: the cluster's name; nodes of another cluster are ignored.
- ``node``: the node id (``NodeConfig.node_id``).
- ``inc``: the node's incarnation, a decimal integer; a higher one is a
  later start of the same node.
- ``ver``: the peer protocol version, a decimal integer; another version is
  ignored (the two could not talk).
- ``ep``: the peer endpoint, ``tcp://HOST:PORT``: what the node connects to.
  (The SRV/A records exist because DNS-SD requires them; ``ep`` is the truth.)
- ``fp``: the cluster key's fingerprint (a hash of its public half, never the
  key), present only when the cluster has a key; during a key rollover, the
  fingerprints of every key the node holds, comma-separated. A peer sharing
  no fingerprint with us (or with none when we have one, or the reverse)
  holds another key and could not join.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .interface import PeerEvent

#: The DNS-SD service type every node registers and browses (RFC 6763 section 7).
SERVICE_TYPE = "_zchannels._tcp.local."

#: Longest DNS label in bytes (RFC 1035 section 2.3.4).
MAX_LABEL = 63

_ENDPOINT = re.compile(r"tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):(?P<port>\d{1,5})")
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True, slots=True)
class Announcement:
    """One node's TXT record, parsed."""

    cluster: str
    node_id: str
    incarnation: int
    protocol_version: int
    endpoint: str
    key_fingerprint: str | None = None

    def __post_init__(self) -> None:
        if not self.cluster or not self.node_id:
            raise ValueError("cluster and node id must not be empty")
        if self.incarnation < 0 or self.protocol_version < 0:
            raise ValueError("incarnation and protocol version must not be negative")
        endpoint_host_port(self.endpoint)

    def to_txt(self) -> dict[str, str]:
        txt = {
            "cluster": self.cluster,
            "node": self.node_id,
            "inc": str(self.incarnation),
            "ver": str(self.protocol_version),
            "ep": self.endpoint,
        }
        if self.key_fingerprint is not None:
            txt["fp"] = self.key_fingerprint
        return txt

    @classmethod
    def from_txt(cls, txt: Mapping[bytes, bytes | None]) -> Announcement:
        """Parse a TXT record as zeroconf hands it over; ``ValueError`` says
        what is wrong with a malformed one."""

        def text(key: str, required: bool = True) -> str | None:
            raw = txt.get(key.encode())
            if raw is None:
                if required:
                    raise ValueError(f"TXT key {key!r} missing")
                return None
            try:
                return raw.decode()
            except UnicodeDecodeError:
                raise ValueError(f"TXT key {key!r} is not UTF-8") from None

        def number(key: str) -> int:
            value = text(key) or ""
            if not value.isascii() or not value.isdigit():
                raise ValueError(f"TXT key {key!r} is not a decimal number: {value!r}")
            return int(value)

        return cls(
            cluster=text("cluster") or "",
            node_id=text("node") or "",
            incarnation=number("inc"),
            protocol_version=number("ver"),
            endpoint=text("ep") or "",
            key_fingerprint=text("fp", required=False),
        )


def endpoint_host_port(endpoint: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` -> (HOST, PORT), brackets of an IPv6 host removed.
    ``ValueError`` for anything else: a peer endpoint names one host."""
    match = _ENDPOINT.fullmatch(endpoint)
    port = int(match["port"]) if match else 0
    if match is None or not 0 < port < 65536:
        raise ValueError(f"peer endpoint must be tcp://HOST:PORT, got {endpoint!r}")
    return match["host"].strip("[]"), port


def instance_label(node_id: str, incarnation: int) -> str:
    """The DNS-SD instance label of one start of one node: ``{node}-{inc}``.

    Unique per node start, which is what lets registration skip probing
    (``cooperating_responders``; RFC 6762 section 8 probes only to detect a
    name another host already holds). It doubles as the SRV target host
    name, so it keeps to letters, digits and hyphens in at most 63 bytes; when
    sanitising or shortening changed the id, a hash of the real id keeps two
    ids from meeting on one label. The TXT ``node`` key carries the real id.
    """
    suffix = f"-{incarnation}"
    base = _NOT_LABEL.sub("-", node_id.lower()).strip("-")
    base = re.sub("-{2,}", "-", base)
    room = MAX_LABEL - len(suffix)
    if not base or base != node_id or len(base) > room:
        digest = hashlib.sha256(node_id.encode()).hexdigest()[:6]
        base = f"{base[: room - len(digest) - 1].strip('-')}-{digest}".lstrip("-")
    return base + suffix


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one observation of a service means: events to hand to the node,
    and, the first time a service is ignored for a reason, that reason (the
    shell logs it once)."""

    events: tuple[PeerEvent, ...] = ()
    ignored: str | None = None


class PeerBook:
    """The peers this node has reported found, keyed by service name.

    At most one start (incarnation) of each node id is reported at a time: a
    record of an earlier start lingers for its TTL when that start died
    without a goodbye (SIGKILL, power loss), so a later incarnation replaces
    it ("lost" for the old endpoint, then "found"), and an earlier one seen
    after a later one is ignored as stale.
    """

    def __init__(self, me: Announcement) -> None:
        self.me = me
        self._found: dict[str, Announcement] = {}  # service name -> reported peer
        self._by_node: dict[str, str] = {}  # node id -> its reported service name
        self._ignored: dict[str, str] = {}  # service name -> reason already given

    @property
    def peers(self) -> dict[str, Announcement]:
        return dict(self._found)

    def mismatch(self, theirs: Announcement) -> str | None:
        """Why a well-formed announcement is not a peer of ours, or None."""
        me = self.me
        if theirs.cluster != me.cluster:
            return f"cluster {theirs.cluster!r} (ours is {me.cluster!r})"
        if theirs.protocol_version != me.protocol_version:
            return f"protocol version {theirs.protocol_version} (ours is {me.protocol_version})"
        if not _same_keys(theirs.key_fingerprint, me.key_fingerprint):
            return (
                f"cluster key fingerprint {theirs.key_fingerprint or 'none'}"
                f" (ours is {me.key_fingerprint or 'none'})"
            )
        if theirs.node_id == me.node_id:
            return f"our own node id {me.node_id!r} (an earlier start of ours, or a duplicate id)"
        return None

    def seen(self, name: str, txt: Mapping[bytes, bytes | None]) -> Verdict:
        """A service was added or updated and resolved to this TXT record."""
        try:
            theirs = Announcement.from_txt(txt)
        except ValueError as exc:
            return self._ignore(name, f"malformed TXT record: {exc}")
        if theirs == self.me:
            return Verdict()  # our own registration, seen by our own browser
        reason = self.mismatch(theirs)
        if reason is not None:
            return self._ignore(name, reason)
        before = self._found.get(name)
        if before is not None and (before.node_id, before.endpoint) == (
            theirs.node_id,
            theirs.endpoint,
        ):
            self._found[name] = theirs  # same peer at the same endpoint: nothing new
            return Verdict()
        lost = self._drop(name)  # it changed its id or endpoint: report it anew
        holder = self._by_node.get(theirs.node_id)
        if holder is not None:
            current = self._found[holder]
            if theirs.incarnation <= current.incarnation:
                stale = self._ignore(
                    name,
                    f"stale incarnation {theirs.incarnation} of node {theirs.node_id!r}"
                    f" (incarnation {current.incarnation} is known)",
                )
                return Verdict(lost, stale.ignored)
            lost += self._drop(holder)
        self._ignored.pop(name, None)
        self._found[name] = theirs
        self._by_node[theirs.node_id] = name
        return Verdict((*lost, PeerEvent("found", theirs.endpoint, theirs.node_id)))

    def gone(self, name: str) -> Verdict:
        """A service said goodbye or its records expired."""
        self._ignored.pop(name, None)
        return Verdict(self._drop(name))

    def _drop(self, name: str) -> tuple[PeerEvent, ...]:
        peer = self._found.pop(name, None)
        if peer is None:
            return ()
        if self._by_node.get(peer.node_id) == name:
            del self._by_node[peer.node_id]
        return (PeerEvent("lost", peer.endpoint, peer.node_id),)

    def _ignore(self, name: str, reason: str) -> Verdict:
        first = self._ignored.get(name) != reason
        self._ignored[name] = reason
        return Verdict(self._drop(name), reason if first else None)


def _same_keys(theirs: str | None, ours: str | None) -> bool:
    """Whether two ``fp`` values name a common cluster key. During a key
    rollover a node announces the fingerprints of every key it holds,
    comma-separated: nodes match while they share one."""
    if theirs is None or ours is None:
        return theirs == ours
    return bool(set(theirs.split(",")) & set(ours.split(",")))
