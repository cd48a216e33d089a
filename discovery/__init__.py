"""How nodes find peers. Installed as ``zchannels.discovery``.

Only the interface exists yet: the cluster (static seeds) and mDNS
(python-zeroconf) implement it in later work.
"""

from .interface import Discovery, PeerEvent, StaticPeers

__all__ = ["Discovery", "PeerEvent", "StaticPeers"]
