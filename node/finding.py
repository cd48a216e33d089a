"""Finding peers: the node's side of ``zchannels.discovery``.

Owns: building the discovery sources a ``NodeConfig`` asks for (its static
``seeds``, plus each source of ``discovery``: mDNS, DNS names), running them
as one, and handing every peer found to the member table
(``discovered``: the shell passes it to the cluster node's member table),
which exchanges state with it. A peer reported
lost is only logged: whether a member is alive is the failure detector's
call (a SIGKILLed host sends no goodbye, a goodbye may come from a node that
is merely restarting, and a pod leaves its Service's DNS while it drains).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable

from zchannels.discovery import (
    CombinedDiscovery,
    Discovery,
    DnsDiscovery,
    MdnsDiscovery,
    StaticPeers,
    parse_sources,
)
from zchannels.discovery.announcement import endpoint_host_port

from zchannels.keys import Keyring
from zchannels.protocol import PROTOCOL_VERSION

from .config import DEFAULT_PEER_PORT, NodeConfig

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
    def __init__(
        self,
        config: NodeConfig,
        *,
        address: str,
        incarnation: int,
        keyring: Keyring | None,
        discovered: Callable[[str], None],
    ) -> None:
        self.config = config
        #: this node's peer address (announced; not taken for a peer)
        self.address = address
        self.incarnation = incarnation
        self.keyring = keyring
        self._discovered = discovered
        self.discovery: CombinedDiscovery | None = None
        self.mdns: MdnsDiscovery | None = None
        self.dns: list[DnsDiscovery] = []
        self._interfaces: list[str] | None = None  # where mDNS runs (None: everywhere)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        wants_mdns = "mdns" in parse_sources(self.config.discovery)
        if wants_mdns:
            combined = self._sources(with_mdns=True)
            try:
                await combined.start()
            except (OSError, ValueError) as exc:
                others = "seeds and DNS" if self.dns else "--seed"
                log.error("mDNS discovery unavailable (%s): finding peers by %s only", exc, others)
            else:
                where = ", ".join(self._interfaces or ()) or "every interface"
                log.info("mDNS: announcing %s on %s", self.address, where)
                self._run(combined)
                return
        combined = self._sources(with_mdns=False)
        await combined.start()
        self._run(combined)

    def _sources(self, with_mdns: bool) -> CombinedDiscovery:
        """Fresh, unstarted sources: seeds, each DNS name, and mDNS if asked."""
        config = self.config
        sources: list[Discovery] = [StaticPeers(list(config.seeds))]
        self.dns = [
            DnsDiscovery(
                source,
                default_port=DEFAULT_PEER_PORT,
                interval=config.dns_interval,
                own_endpoint=self.address,
            )
            for source in parse_sources(config.discovery)
            if source != "mdns"
        ]
        sources += self.dns
        self.mdns = None
        if with_mdns:
            self._interfaces = mdns_interfaces(config, self.address)
            self.mdns = MdnsDiscovery(
                cluster=config.cluster,
                node_id=config.node_id,
                incarnation=self.incarnation,
                peer_endpoint=self.address,
                interfaces=self._interfaces,
                protocol_version=PROTOCOL_VERSION,
                key_fingerprint=(
                    ",".join(k.fingerprint for k in self.keyring.keys)
                    if self.keyring is not None
                    else None
                ),
            )
            sources.append(self.mdns)
        return CombinedDiscovery(sources)

    def _run(self, discovery: CombinedDiscovery) -> None:
        for dns in self.dns:
            log.info("DNS: resolving %s every %g s", dns.source, dns.interval)
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
            source = event.node_id or event.via or "seed"
            if event.kind == "found":
                log.info("found peer %s (%s)", event.endpoint, source)
                self._discovered(event.endpoint)
            else:
                log.info(
                    "discovery lost peer %s (%s; liveness is up to the failure detector)",
                    event.endpoint,
                    source,
                )
