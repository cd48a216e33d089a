"""Finding peers by resolving a DNS name that lists them, again and again.

Owns: the shell around ``dns_watch``. ``DnsDiscovery`` resolves one name
(``dns:NAME[:PORT]``: A/AAAA records; ``dns-srv:NAME``: SRV records) at
start and then every ``interval`` seconds, feeds each ``Answer`` to a
``NameWatch`` and emits what it returns. ``SystemLookups`` does the
lookups, never on the event loop's thread. It decides nothing itself.

This is how clusters in containers and clouds find each other, where mDNS
does not pass (most overlay and cloud networks): a Kubernetes headless
Service or a Docker Compose service name resolves to every pod or container
behind it (Elixir's dns_cluster, libcluster's ``Kubernetes.DNS``/``DNSSRV``
and Akka's bootstrap do the same). Re-resolving is what finds a node
started after this one (or while the name listed no one); a node that leaves
the name is only logged, as an mDNS goodbye is: liveness is the failure
detector's.

Lookups:

- A/AAAA through the system resolver (``getaddrinfo``, in the loop's thread
  executor): the name resolves exactly as for every other program of the
  host or container (``/etc/hosts``, search domains and ``ndots`` of
  ``/etc/resolv.conf``, nsswitch), so ``dns:web`` means what ``getent hosts
  web`` shows. glibc bounds a lookup by the resolver's own timeouts, and the
  next one starts only after it returned.
- SRV through dnspython's asyncio resolver (``getaddrinfo`` cannot ask for
  SRV records): it reads the same ``/etc/resolv.conf`` (search domains
  included), never blocks the loop, and each lookup is bounded by
  ``LOOKUP_TIMEOUT``. The targets' addresses then come from the system
  resolver, as for ``dns:``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import Protocol

from .dns_watch import Answer, NameWatch, endpoint, srv_endpoints
from .interface import PeerEvent
from .sources import DnsName, DnsSrv

log = logging.getLogger("zchannels.discovery")

#: Seconds one SRV lookup may take (dnspython's ``lifetime``: all servers
#: and retries included); dnspython's own default, far above a LAN or
#: cluster DNS round trip, so only a broken server reaches it.
LOOKUP_TIMEOUT = 5.0

#: getaddrinfo errors that are an answer, not a failure: the name does not
#: exist, or has no address records (glibc's EAI_NODATA; not on every OS).
_NO_SUCH_NAME = frozenset(
    code
    for code in (
        socket.EAI_NONAME,
        getattr(socket, "EAI_NODATA", None),
        getattr(socket, "EAI_ADDRFAMILY", None),
    )
    if code is not None
)


class LookupFailed(Exception):
    """A lookup that tells nothing (timeout, server failure, no resolver)."""


class Lookups(Protocol):
    """The two lookups DNS discovery needs. A name that does not exist or
    has no records of the type returns ``[]``; a failure raises
    ``LookupFailed``."""

    async def addresses(self, name: str) -> list[str]: ...

    async def srv(self, name: str) -> list[tuple[str, int]]: ...


class SystemLookups:
    """A/AAAA by the system resolver, SRV by dnspython (see the module doc)."""

    async def addresses(self, name: str) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno in _NO_SUCH_NAME:
                return []
            raise LookupFailed(exc.strerror or str(exc)) from None
        families = (socket.AF_INET, socket.AF_INET6)
        return list(dict.fromkeys(str(info[4][0]) for info in infos if info[0] in families))

    async def srv(self, name: str) -> list[tuple[str, int]]:
        import dns.asyncresolver
        import dns.exception
        import dns.resolver

        try:
            # Made per lookup: it reads /etc/resolv.conf, which is cheap
            # next to the lookup and picks up a changed resolver.
            resolver = dns.asyncresolver.Resolver()
            answer = await resolver.resolve(name, "SRV", search=True, lifetime=LOOKUP_TIMEOUT)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise LookupFailed(str(exc) or type(exc).__name__) from None
        return [(rr.target.to_text(), int(rr.port)) for rr in answer]


class DnsDiscovery:
    """Report the peers one DNS name lists: found as they appear, lost (for
    the log) as they vanish. ``own_endpoint``, this node's, is never reported.
    ``interval``: seconds from the start of one resolution to the next."""

    def __init__(
        self,
        source: DnsName | DnsSrv,
        *,
        default_port: int,
        interval: float,
        own_endpoint: str | None = None,
        lookups: Lookups | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        self.source = source
        self.port = (
            source.port if isinstance(source, DnsName) and source.port is not None else default_port
        )
        self.interval = interval
        self.lookups: Lookups = lookups or SystemLookups()
        self.watch = NameWatch(str(source), own_endpoint)
        #: resolutions completed (failed ones included)
        self.resolutions = 0
        self._queue: asyncio.Queue[PeerEvent | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        if self._task is not None or self._stopped:
            raise RuntimeError("DnsDiscovery starts once")
        self._task = asyncio.create_task(self._run(), name=f"znode-{self.source}")

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._queue.put_nowait(None)

    async def events(self) -> AsyncIterator[PeerEvent]:
        """Found and lost peers, in order, until ``stop()``."""
        while (event := await self._queue.get()) is not None:
            yield event

    async def resolve(self) -> Answer:
        """One resolution of the name, as an ``Answer`` (never raises)."""
        try:
            if isinstance(self.source, DnsName):
                found = await self.lookups.addresses(self.source.name)
                return Answer(frozenset(endpoint(a, self.port) for a in found))
            records = await self.lookups.srv(self.source.name)
            targets = {target for target, _ in records if target not in (".", "")}
            addresses = {target: await self.lookups.addresses(target) for target in sorted(targets)}
            return Answer(srv_endpoints(records, addresses))
        except LookupFailed as exc:
            return Answer.failed(str(exc))
        except Exception as exc:  # a bug or a strange answer must not end discovery
            log.warning("%s: lookup raised", self.source, exc_info=True)
            return Answer.failed(f"{type(exc).__name__}: {exc}")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            change = self.watch.resolved(await self.resolve())
            self.resolutions += 1
            for level, message in change.log:
                log.log(level, "%s", message)
            for event in change.events:
                log.debug("%s: %s %s", self.source, event.kind, event.endpoint)
                self._queue.put_nowait(event)
            await asyncio.sleep(max(0.0, started + self.interval - loop.time()))
