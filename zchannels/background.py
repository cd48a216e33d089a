"""The process's background event loop.

Owns: one daemon thread per process running an asyncio loop, for work no
caller's loop can be trusted with — renewing client leases (a busy or idle
caller loop must not let a lease lapse), re-asserting memberships after a node
restart, finishing the close of connections whose loops were closed by hand,
watching the site's shared node (``zchannels.shared``) — and, in
``zchannels.embedded``, the embedded node. Fork-safe: a forked child
starts its own thread on first use (the parent's is not running there).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any


class Background:
    """A daemon thread running an event loop."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="zchannels-background", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


_lock = threading.Lock()
_background: Background | None = None


def background() -> Background:
    """This process's background loop (started on first use, and again in
    a forked child)."""
    global _background
    with _lock:
        if _background is None or _background.pid != os.getpid():
            _background = Background()
        return _background
