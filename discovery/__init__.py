"""How nodes find peers. Installed as ``zchannels.discovery``.

- ``interface``: the ``Discovery`` protocol and ``PeerEvent``; ``StaticPeers``
  (seeds given by configuration).
- ``mdns``: ``MdnsDiscovery``, peers on the LAN by mDNS/DNS-SD (python-zeroconf).
- ``announcement``: the TXT record format and the rules that judge peers' records.
- ``combined``: ``CombinedDiscovery``, several sources as one (seeds + mDNS).

Discovery only finds peers; the node's failure detector decides who is alive.
"""

from .announcement import SERVICE_TYPE, Announcement, instance_label
from .combined import CombinedDiscovery
from .interface import Discovery, PeerEvent, StaticPeers
from .mdns import MdnsDiscovery

__all__ = [
    "SERVICE_TYPE",
    "Announcement",
    "CombinedDiscovery",
    "Discovery",
    "MdnsDiscovery",
    "PeerEvent",
    "StaticPeers",
    "instance_label",
]
