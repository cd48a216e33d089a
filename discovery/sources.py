"""The discovery spellings: what ``--discovery`` (and a layer's ``CONFIG
["discovery"]``) may say, parsed into values. Pure: no I/O, no imports of the
mechanisms, so the layer's configuration can validate a spelling without
loading zeroconf or dnspython.

- ``mdns``: announce and browse on the LAN (``MdnsDiscovery``);
- ``none``: no discovery besides static seeds (alone, never with another);
- ``dns:NAME[:PORT]``: every A/AAAA record of NAME is a peer on PORT
  (default: the node's default peer port);
- ``dns-srv:NAME``: every SRV record of NAME is a peer at its target and port.

Does not own: finding (``mdns``, ``dns``), or which port a node listens on
(the node's configuration; ``listen_port`` only says what a spelling implies).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

#: A DNS name as these spellings accept it: labels of letters, digits, "-"
#: and "_" (SRV owner names such as ``_zchannels._tcp.example``), optionally
#: ending with "." (absolute: no search domains). Deliberately stricter than
#: DNS itself: anything else in a spelling is far more likely a typo.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_NAME = re.compile(rf"(?=.{{1,253}}\.?$)(?:{_LABEL}\.)*{_LABEL}\.?")

SPELLINGS = "mdns, none, dns:NAME[:PORT] or dns-srv:NAME"


@dataclass(frozen=True, slots=True)
class DnsName:
    """``dns:NAME[:PORT]``: NAME's A/AAAA records, each a peer on ``port``
    (None: the node's default peer port)."""

    name: str
    port: int | None = None

    def __str__(self) -> str:
        return f"dns:{self.name}" + (f":{self.port}" if self.port is not None else "")


@dataclass(frozen=True, slots=True)
class DnsSrv:
    """``dns-srv:NAME``: NAME's SRV records give every peer's host and port."""

    name: str

    def __str__(self) -> str:
        return f"dns-srv:{self.name}"


Source = Literal["mdns"] | DnsName | DnsSrv


def parse_source(spec: str) -> Source | None:
    """One spelling; None for ``none``. ``ValueError`` says what is accepted."""
    if not isinstance(spec, str):
        raise ValueError(f"discovery must be a string ({SPELLINGS}), got {spec!r}")
    if spec in ("mdns", "none"):
        return None if spec == "none" else "mdns"
    kind, sep, rest = spec.partition(":")
    if sep and kind == "dns":
        name, port = rest, None
        head, colon, tail = rest.rpartition(":")
        if colon:
            if not (tail.isascii() and tail.isdigit() and 0 < int(tail) < 65536):
                raise ValueError(f"discovery {spec!r}: the port must be 1-65535, got {tail!r}")
            name, port = head, int(tail)
        return DnsName(_checked_name(spec, name), port)
    if sep and kind == "dns-srv":
        return DnsSrv(_checked_name(spec, rest))
    raise ValueError(f"unknown discovery {spec!r}: expected {SPELLINGS}")


def parse_sources(specs: Iterable[str]) -> tuple[Source, ...]:
    """Several spellings (``--discovery`` repeated): each source once, in
    order; ``none`` only alone. An empty list means what ``none`` means."""
    specs = list(specs)
    parsed = [parse_source(spec) for spec in specs]
    if None in parsed and len(specs) > 1:
        raise ValueError(
            f"discovery 'none' cannot be combined with other sources, got {', '.join(specs)}"
        )
    return tuple(dict.fromkeys(p for p in parsed if p is not None))


def listen_port(sources: Iterable[Source], default: int) -> int | None:
    """The peer port that the DNS sources imply this node listens on: a peer
    found by DNS is reached on a port known in advance (``dns:``'s PORT, else
    ``default``). None when no source is DNS (any port will do: mDNS
    announces it, seeds name it)."""
    dns = [s for s in sources if isinstance(s, DnsName | DnsSrv)]
    for source in dns:
        if isinstance(source, DnsName) and source.port is not None:
            return source.port
    return default if dns else None


def _checked_name(spec: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"discovery {spec!r}: {name!r} is not a DNS name")
    return name
