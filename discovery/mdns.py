"""Finding peers on the LAN by multicast DNS (RFC 6762) service discovery (RFC 6763).

Owns: the zeroconf shell. ``MdnsDiscovery`` registers this node's service
(``SERVICE_TYPE``, TXT as in ``announcement.py``), browses for the others, and
feeds what it sees to ``PeerBook``, whose verdicts become ``PeerEvent``s and
log lines. It decides nothing itself.

Why python-zeroconf: it is the well-kept pure-Python mDNS/DNS-SD
implementation (Home Assistant's discovery runs on it; typed, with an asyncio
API, optional Cython speed-ups, no system daemon such as Avahi needed).

What mDNS cannot do: tell that a peer died. A host that is SIGKILLed or loses
power sends no goodbye, and its records live for their TTL (minutes), so
"lost" comes only from a goodbye or an expiry, late or never. Liveness is the
failure detector's job; discovery only finds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from .announcement import SERVICE_TYPE, Announcement, PeerBook, endpoint_host_port, instance_label
from .interface import PeerEvent

log = logging.getLogger("zchannels.discovery")

#: Milliseconds to wait for a newly seen service's SRV/TXT/A records. They
#: normally come in the same packet as the announcement (a few ms); a service
#: that cannot be resolved in this time is skipped until it changes again.
RESOLVE_TIMEOUT_MS = 3000


class MdnsDiscovery:
    """Announce this node and report the peers of its cluster, by mDNS.

    ``interfaces``: IP addresses to listen and announce on; None lets
    zeroconf use every interface. ``peer_endpoint`` is what peers are told
    to connect to, so it names a concrete address, never a wildcard.
    """

    def __init__(
        self,
        *,
        cluster: str,
        node_id: str,
        incarnation: int,
        peer_endpoint: str,
        interfaces: list[str] | None = None,
        protocol_version: int,
        key_fingerprint: str | None = None,
    ) -> None:
        host, port = endpoint_host_port(peer_endpoint)
        self.announcement = Announcement(
            cluster=cluster,
            node_id=node_id,
            incarnation=incarnation,
            protocol_version=protocol_version,
            endpoint=peer_endpoint,
            key_fingerprint=key_fingerprint,
        )
        self.interfaces = list(interfaces) if interfaces is not None else None
        label = instance_label(node_id, incarnation)
        #: This node's DNS-SD service instance name.
        self.service_name = f"{label}.{SERVICE_TYPE}"
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            self.service_name,
            port=port,
            properties=self.announcement.to_txt(),
            server=f"{label}.local.",
            parsed_addresses=_announced_addresses(host, self.interfaces),
        )
        self._book = PeerBook(self.announcement)
        self._queue: asyncio.Queue[PeerEvent | None] = asyncio.Queue()
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._announcing: Awaitable[Any] | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._stopped = False

    async def start(self) -> None:
        if self._zc is not None or self._stopped:
            raise RuntimeError("MdnsDiscovery starts once")
        if self.interfaces is not None:  # zeroconf picks the IP version from them
            self._zc = AsyncZeroconf(interfaces=self.interfaces)
        else:
            v6 = any(":" in address for address in self._info.parsed_addresses())
            version = IPVersion.All if v6 else IPVersion.V4Only
            self._zc = AsyncZeroconf(interfaces=InterfaceChoice.All, ip_version=version)
        try:
            # Instance names are unique per node start (``instance_label``), so
            # probing for a conflict (RFC 6762 section 8.1: ~1.2 s) is skipped.
            self._announcing = await self._zc.async_register_service(
                self._info, cooperating_responders=True
            )
            self._browser = AsyncServiceBrowser(
                self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_change]
            )
        except BaseException:
            zc, self._zc = self._zc, None
            await zc.async_close()
            raise

    async def stop(self) -> None:
        """Say goodbye (awaited: peers see this node leave) and close."""
        if self._stopped:
            return
        self._stopped = True
        zc, self._zc = self._zc, None
        try:
            if self._browser is not None:
                await self._browser.async_cancel()
            resolving = list(self._resolving.values())
            for task in resolving:
                task.cancel()
            await asyncio.gather(*resolving, return_exceptions=True)
            if zc is not None:
                await self._say_goodbye(zc)
        finally:
            self._queue.put_nowait(None)

    async def _say_goodbye(self, zc: AsyncZeroconf) -> None:
        try:
            if self._announcing is not None:
                # A hello repeated after the goodbye would bring this node
                # back into peers' caches: stop repeating it first.
                announcing = asyncio.ensure_future(self._announcing)
                announcing.cancel()
                await asyncio.gather(announcing, return_exceptions=True)
            goodbye = await zc.async_unregister_service(self._info)
            await goodbye  # without this await the goodbye is never sent
        finally:
            await zc.async_close()

    async def events(self) -> AsyncIterator[PeerEvent]:
        """Found and lost peers, in order, until ``stop()``."""
        while (event := await self._queue.get()) is not None:
            yield event

    @property
    def peers(self) -> dict[str, Announcement]:
        """The peers reported found and not lost, by service name."""
        return self._book.peers

    # -- zeroconf callbacks (on the event loop) ---------------------------------
    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        previous = self._resolving.pop(name, None)
        if previous is not None:
            previous.cancel()
        if self._stopped:
            return
        if state_change is ServiceStateChange.Removed:
            self._apply(name, self._book.gone(name).events, None)
            return
        task = asyncio.create_task(self._resolve(zeroconf, service_type, name))
        self._resolving[name] = task

    async def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> None:
        try:
            info = AsyncServiceInfo(service_type, name)
            if not await info.async_request(zeroconf, RESOLVE_TIMEOUT_MS):
                log.debug("mDNS: %s did not resolve; skipped until it changes", name)
                return
        except Exception:  # a failed lookup must not end discovery
            log.warning("mDNS: resolving %s failed", name, exc_info=True)
            return
        else:
            verdict = self._book.seen(name, info.properties)
            self._apply(name, verdict.events, verdict.ignored)
        finally:
            if self._resolving.get(name) is asyncio.current_task():
                del self._resolving[name]

    def _apply(self, name: str, events: tuple[PeerEvent, ...], ignored: str | None) -> None:
        if ignored is not None:
            log.info("mDNS: ignoring %s: %s", name, ignored)
        for event in events:
            log.debug("mDNS: %s %s (%s)", event.kind, event.endpoint, event.node_id)
            self._queue.put_nowait(event)


def _announced_addresses(host: str, interfaces: list[str] | None) -> list[str]:
    """The A/AAAA records: DNS-SD needs some, and peers read ``ep`` instead.
    The endpoint's own address when it is an IP literal, else the interfaces."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and not address.is_unspecified:
        return [str(address)]
    if interfaces:
        return list(interfaces)
    raise ValueError(
        f"cannot announce peer endpoint host {host!r}: give an IP address"
        " in the endpoint or the interfaces to announce on"
    )
