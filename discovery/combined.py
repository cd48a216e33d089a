"""Several discovery sources seen as one (static seeds and mDNS, say).

Owns: merging event streams. An endpoint is reported "found" when the first
source finds it and "lost" when the last source that had found it loses it:
a seed that mDNS also sees is not lost when its mDNS record goes away, and
it is not reported twice. ``EndpointMerge`` holds that rule, without I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from .interface import Discovery, PeerEvent


class EndpointMerge:
    """Which source holds which endpoint; says which events pass through."""

    def __init__(self, sources: int) -> None:
        self._held: list[set[str]] = [set() for _ in range(sources)]

    def apply(self, source: int, event: PeerEvent) -> PeerEvent | None:
        held = self._held[source]
        others = any(event.endpoint in h for i, h in enumerate(self._held) if i != source)
        if event.kind == "found":
            if event.endpoint in held:
                return None
            held.add(event.endpoint)
        else:
            if event.endpoint not in held:
                return None
            held.discard(event.endpoint)
        return None if others else event


class CombinedDiscovery:
    """One ``Discovery`` made of several: started and stopped together, their
    events merged (``EndpointMerge``). ``events()`` ends when every source's
    events have ended; an error in a source's events is raised from it."""

    def __init__(self, sources: Sequence[Discovery]) -> None:
        self.sources = list(sources)
        self._merge = EndpointMerge(len(self.sources))
        self._queue: asyncio.Queue[PeerEvent | BaseException | None] = asyncio.Queue()
        self._pumps: list[asyncio.Task[None]] = []
        self._live = 0  # pumps still running; the last one to end ends events()

    async def start(self) -> None:
        started: list[Discovery] = []
        try:
            for source in self.sources:
                await source.start()
                started.append(source)
        except BaseException:
            for source in reversed(started):
                with contextlib.suppress(Exception):
                    await source.stop()
            raise
        self._live = len(self.sources)
        self._pumps = [
            asyncio.create_task(self._pump(i, source)) for i, source in enumerate(self.sources)
        ]

    async def stop(self) -> None:
        """Stop every source (all of them, even when one fails; the first
        failure is raised after), then end ``events()``."""
        results = await asyncio.gather(
            *(source.stop() for source in self.sources), return_exceptions=True
        )
        if not self._pumps:  # never started: nothing else will end events()
            self._queue.put_nowait(None)
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def events(self) -> AsyncIterator[PeerEvent]:
        while (item := await self._queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def _pump(self, index: int, source: Discovery) -> None:
        events = source.events()
        try:
            async for event in events:
                merged = self._merge.apply(index, event)
                if merged is not None:
                    self._queue.put_nowait(merged)
        except Exception as exc:
            self._queue.put_nowait(exc)
        finally:
            if isinstance(events, AsyncGenerator):
                await events.aclose()  # now, not whenever it is collected
            self._live -= 1
            if self._live == 0:
                self._queue.put_nowait(None)
