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

from .announcement import SERVICE_TYPE, Announcement, instance_label
from .combined import CombinedDiscovery
from .dns import DnsDiscovery
from .interface import Discovery, PeerEvent, StaticPeers
from .mdns import MdnsDiscovery
from .sources import DnsName, DnsSrv, Source, parse_source, parse_sources

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
