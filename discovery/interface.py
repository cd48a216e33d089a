"""The discovery interface: a source of "peer found" / "peer lost" events.

Owns: the shape of what any discovery mechanism (static seeds, mDNS, DNS) hands to
a node. Discovery only *finds* peers; liveness belongs to the node's failure
detector (a SIGKILLed host sends no goodbye, and mDNS TTLs are minutes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class PeerEvent:
    kind: Literal["found", "lost"]
    endpoint: str  # the peer's endpoint, e.g. "tcp://10.0.0.2:7701"
    node_id: str | None = None  # when the mechanism knows it
    via: str | None = None  # which source, when it is not obvious ("dns:NAME")


class Discovery(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def events(self) -> AsyncIterator[PeerEvent]: ...


class StaticPeers:
    """Peers given by configuration (``--seed``): found once, never lost."""

    def __init__(self, endpoints: list[str]) -> None:
        self._queue: asyncio.Queue[PeerEvent] = asyncio.Queue()
        for endpoint in endpoints:
            self._queue.put_nowait(PeerEvent("found", endpoint))

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def events(self) -> AsyncIterator[PeerEvent]:
        while True:
            yield await self._queue.get()
