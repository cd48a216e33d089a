"""How nodes find peers. Installed as ``zchannels.discovery``.

- ``interface``: the ``Discovery`` protocol and ``PeerEvent``; ``StaticPeers``
  (seeds given by configuration).
- ``mdns``: ``MdnsDiscovery``, peers on the LAN by mDNS/DNS-SD (python-zeroconf).
- ``announcement``: the TXT record format and the rules that judge peers' records.
- ``dns``: ``DnsDiscovery``, peers listed by a DNS name (A/AAAA or SRV),
  re-resolved periodically; ``dns_watch``: what changed between two
  resolutions (pure).
- ``sources``: the ``--discovery`` spellings (``mdns``, ``none``,
  ``dns:NAME[:PORT]``, ``dns-srv:NAME``), parsed (pure).
- ``combined``: ``CombinedDiscovery``, several sources as one (seeds, mDNS, DNS).

Discovery only finds peers; the node's failure detector decides who is alive.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .announcement import SERVICE_TYPE, Announcement, instance_label
    from .combined import CombinedDiscovery
    from .dns import DnsDiscovery
    from .interface import Discovery, PeerEvent, StaticPeers
    from .mdns import MdnsDiscovery
    from .sources import DnsName, DnsSrv, Source, parse_source, parse_sources

#: Where each name lives: loaded on first use, so that importing a pure part
#: (``sources``, ``dns_watch``, ``announcement``) loads neither zeroconf nor
#: asyncio (the node's decision modules import ``sources`` through its config).
_WHERE = {
    "SERVICE_TYPE": "announcement",
    "Announcement": "announcement",
    "instance_label": "announcement",
    "CombinedDiscovery": "combined",
    "DnsDiscovery": "dns",
    "Discovery": "interface",
    "PeerEvent": "interface",
    "StaticPeers": "interface",
    "MdnsDiscovery": "mdns",
    "DnsName": "sources",
    "DnsSrv": "sources",
    "Source": "sources",
    "parse_source": "sources",
    "parse_sources": "sources",
}


def __getattr__(name: str) -> object:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{where}"), name)


__all__ = [
    "SERVICE_TYPE",
    "Announcement",
    "CombinedDiscovery",
    "Discovery",
    "DnsDiscovery",
    "DnsName",
    "DnsSrv",
    "MdnsDiscovery",
    "PeerEvent",
    "Source",
    "StaticPeers",
    "instance_label",
    "parse_source",
    "parse_sources",
]
