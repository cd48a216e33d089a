"""Finding peers: the node's side of ``zchannels.discovery``.

Owns: building the discovery sources a ``NodeConfig`` asks for (its static
``seeds``, plus mDNS unless ``discovery`` is "none"), running them, and
handing every peer found to the member table (``PeerMesh.discovered``), which
exchanges state with it. A peer reported lost is only logged: whether a
member is alive is the failure detector's call (a SIGKILLed host sends no
goodbye, and a goodbye may come from a node that is merely restarting).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging

from zchannels.discovery import CombinedDiscovery, MdnsDiscovery, StaticPeers
from zchannels.discovery.announcement import endpoint_host_port

from zchannels.protocol import PROTOCOL_VERSION

from .config import NodeConfig
from .peers import PeerMesh

log = logging.getLogger("zchannels.node")


def mdns_interfaces(config: NodeConfig, peer_address: str) -> list[str] | None:
    """The interfaces mDNS runs on: ``--interface`` when given, else the
    peer endpoint's own address, else (a wildcard endpoint) every interface."""
    if config.interfaces:
        return list(config.interfaces)
    host, _ = endpoint_host_port(peer_address)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return None if address.is_unspecified else [str(address)]


class PeerFinder:
    def __init__(self, config: NodeConfig, mesh: PeerMesh) -> None:
        self.config = config
        self.mesh = mesh
        self.discovery: CombinedDiscovery | None = None
        self.mdns: MdnsDiscovery | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        seeds = StaticPeers(list(self.config.seeds))
        if self.config.discovery == "mdns":
            interfaces = mdns_interfaces(self.config, self.mesh.address)
            mdns = MdnsDiscovery(
                cluster=self.config.cluster,
                node_id=self.config.node_id,
                incarnation=self.mesh.incarnation,
                peer_endpoint=self.mesh.address,
                interfaces=interfaces,
                protocol_version=PROTOCOL_VERSION,
                key_fingerprint=(
                    ",".join(k.fingerprint for k in self.mesh.keyring.keys)
                    if self.mesh.keyring is not None
                    else None
                ),
            )
            combined = CombinedDiscovery([seeds, mdns])
            try:
                await combined.start()
            except (OSError, ValueError) as exc:
                log.error("mDNS discovery unavailable (%s): finding peers by --seed only", exc)
                seeds = StaticPeers(list(self.config.seeds))
            else:
                where = ", ".join(interfaces) if interfaces else "every interface"
                log.info("mDNS: announcing %s on %s", self.mesh.address, where)
                self.mdns = mdns
                self._run(combined)
                return
        combined = CombinedDiscovery([seeds])
        await combined.start()
        self._run(combined)

    def _run(self, discovery: CombinedDiscovery) -> None:
        self.discovery = discovery
        self._task = asyncio.create_task(self._pump(discovery), name="znode-discovery")

    async def stop(self) -> None:
        """Stop finding; mDNS says goodbye (before the node leaves the cluster)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.discovery is not None:
            await self.discovery.stop()
            self.discovery = None

    async def _pump(self, discovery: CombinedDiscovery) -> None:
        async for event in discovery.events():
            if event.kind == "found":
                log.info("found peer %s (%s)", event.endpoint, event.node_id or "seed")
                self.mesh.discovered(event.endpoint)
            else:
                log.info(
                    "discovery lost peer %s (liveness is up to the failure detector)",
                    event.endpoint,
                )
