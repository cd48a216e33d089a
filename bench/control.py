"""The side line between the roles of a scenario (never the measured path).

Roles exchange setup data (channel names, "ready", "done") through a ``Peer``: a
``multiprocessing`` pipe when the roles run in separate processes, a pair of asyncio
queues when they are tasks of one process. A scenario of more than two roles is a
star: its first role holds a ``Hub`` (one peer per other role), each other role one
``Peer`` to the hub. Waits are bounded by the deadline that wraps the whole role (see
runner.py), so a ``recv`` here needs none of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, Protocol


class Peer(Protocol):
    async def send(self, obj: Any) -> None: ...

    async def recv(self) -> Any: ...

    def ready(self) -> bool:
        """True when ``recv`` would return at once."""
        ...


class PipePeer:
    """One end of a duplex ``multiprocessing.Pipe``, read without blocking the loop."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def send(self, obj: Any) -> None:
        self._conn.send(obj)  # setup messages are small: the pipe buffer takes them at once

    def ready(self) -> bool:
        return self._conn.poll()

    async def recv(self) -> Any:
        if self._conn.poll():
            return self._conn.recv()
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        fd = self._conn.fileno()
        loop.add_reader(fd, readable.set)
        try:
            while not self._conn.poll():
                await readable.wait()
                readable.clear()
        finally:
            loop.remove_reader(fd)
        return self._conn.recv()


class QueuePeer:
    def __init__(self, inbox: asyncio.Queue[Any], outbox: asyncio.Queue[Any]) -> None:
        self._inbox = inbox
        self._outbox = outbox

    async def send(self, obj: Any) -> None:
        self._outbox.put_nowait(obj)

    def ready(self) -> bool:
        return not self._inbox.empty()

    async def recv(self) -> Any:
        return await self._inbox.get()


class Hub:
    """The first role's end of a star: one peer per other role, in role order."""

    def __init__(self, peers: Sequence[Peer]) -> None:
        self.each = list(peers)

    async def send(self, obj: Any) -> None:
        """The same object to every other role."""
        for peer in self.each:
            await peer.send(obj)

    async def recv_all(self) -> list[Any]:
        """One object from every other role, in role order."""
        return [await peer.recv() for peer in self.each]


def queue_peers() -> tuple[QueuePeer, QueuePeer]:
    """Two connected in-process peers (for roles that run as tasks of one loop)."""
    a_to_b: asyncio.Queue[Any] = asyncio.Queue()
    b_to_a: asyncio.Queue[Any] = asyncio.Queue()
    return QueuePeer(b_to_a, a_to_b), QueuePeer(a_to_b, b_to_a)
