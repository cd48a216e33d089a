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
from dataclasses import replace
from typing import Any

from zchannels.node.config import NodeConfig, lan_address
from zchannels.node.server import NodeServer

from .config import LayerConfig
from .errors import ConfigError


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


def endpoint(config: LayerConfig) -> str:
    """The embedded node's endpoint, starting the node on first call. The
    first layer to start it decides whether it joins a cluster (a process
    has one embedded node)."""
    global _node
    bg = background()
    with _lock:
        if _node is None:
            node = NodeServer(node_config(config))
            bg.submit(node.start()).result(timeout=30)
            _node = node
        elif config.cluster is not None and (
            _node.config.peer_endpoint is None or _node.config.cluster != config.cluster
        ):
            where = (
                f"in cluster {_node.config.cluster!r}"
                if _node.config.peer_endpoint is not None
                else "in no cluster"
            )
            raise ConfigError(
                f"this process's embedded node is already running {where}, "
                f"not in {config.cluster!r} (a process has one embedded node)"
            )
        endpoint: str = _node.endpoints[0]
        return endpoint


def node_config(config: LayerConfig) -> NodeConfig:
    """The embedded node's configuration, from the layer's CONFIG."""
    base = NodeConfig(
        node_id=f"{socket.gethostname()}-{os.getpid()}",
        client_endpoints=(f"inproc://zchannels-embedded-{os.getpid()}",),
    )
    if config.cluster is None:
        return base
    peer = config.peer_endpoint or f"tcp://{lan_address()}:0"
    return replace(
        base,
        cluster=config.cluster,
        peer_endpoint=peer,
        seeds=config.seeds,
        discovery=config.discovery or "none",
        interfaces=config.interfaces,
        key_files=config.key_file,
        insecure=config.insecure,
    )


def node() -> NodeServer | None:
    """The embedded node of this process, if one was started."""
    return _node if _pid == os.getpid() else None
