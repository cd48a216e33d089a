"""The process's background event loop, and the embedded node that runs on it.

Owns: one daemon thread per process running an asyncio loop, shared by the
embedded node (when the layer's CONFIG names no ``node``) and by the keepers
that renew client leases. The embedded node is a full ``NodeServer`` bound to
an ``inproc://`` endpoint: the layer talks to it exactly as to a ``znode``
sidecar, over the same protocol, through ZeroMQ's in-process transport.
Fork-safe: a forked child starts its own thread and node on first use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import threading
from collections.abc import Coroutine
from typing import Any

from zchannels.node.config import NodeConfig
from zchannels.node.server import NodeServer


class Background:
    """A daemon thread running an event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="zchannels-background", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


_lock = threading.Lock()
_pid = -1
_background: Background | None = None
_node: NodeServer | None = None


def background() -> Background:
    global _background, _pid, _node
    with _lock:
        if _background is None or _pid != os.getpid():
            _pid = os.getpid()
            _background = Background()
            _node = None
        return _background


def endpoint() -> str:
    """The embedded node's endpoint, starting the node on first call."""
    global _node
    bg = background()
    with _lock:
        if _node is None:
            config = NodeConfig(
                node_id=f"{socket.gethostname()}-{os.getpid()}",
                client_endpoints=(f"inproc://zchannels-embedded-{os.getpid()}",),
            )
            node = NodeServer(config)
            bg.submit(node.start()).result(timeout=10)
            _node = node
        endpoint: str = _node.endpoints[0]
        return endpoint


def node() -> NodeServer | None:
    """The embedded node of this process, if one was started."""
    return _node if _pid == os.getpid() else None
