"""The embedded node: a node running on the process's background loop.

Owns: the node a layer starts when its CONFIG says ``node="embedded"`` (or
names a ``cluster``): a node of this process's own, shared with no other
process (``CONFIG = {}`` uses the site's shared node, ``zchannels.shared``). It runs on
the process's background loop (``zchannels.background``), and is a full
``NodeServer`` bound to an ``inproc://`` endpoint: the layer talks to it exactly as to a ``znode``
sidecar, over the same protocol, through ZeroMQ's in-process transport.
Fork-safe: a forked child starts its own node on first use. Imported only
when a layer needs an embedded node: a sidecar's clients never load the node.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import replace

from zchannels.discovery.sources import listen_port, parse_sources
from zchannels.node.config import DEFAULT_PEER_PORT, NodeConfig, lan_address
from zchannels.node.server import NodeServer

from .background import background
from .config import LayerConfig
from .errors import ConfigError

_lock = threading.Lock()
_pid = -1
_node: NodeServer | None = None


def endpoint(config: LayerConfig) -> str:
    """The embedded node's endpoint, starting the node on first call. The
    first layer to start it decides whether it joins a cluster (a process
    has one embedded node)."""
    global _node, _pid
    bg = background()
    with _lock:
        if _pid != os.getpid():  # forked: the parent's node does not run here
            _pid, _node = os.getpid(), None
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
        elif config.metrics_endpoint not in (None, _node.config.metrics_endpoint):
            raise ConfigError(
                f"this process's embedded node is already running, serving metrics on "
                f"{_node.config.metrics_endpoint!r}, not {config.metrics_endpoint!r} "
                "(a process has one embedded node)",
                key="metrics_endpoint",
            )
        endpoint: str = _node.endpoints[0]
        return endpoint


def node_config(config: LayerConfig) -> NodeConfig:
    """The embedded node's configuration, from the layer's CONFIG."""
    base = NodeConfig(
        node_id=f"{socket.gethostname()}-{os.getpid()}",
        client_endpoints=(f"inproc://zchannels-embedded-{os.getpid()}",),
        metrics_endpoint=config.metrics_endpoint,
    )
    if config.cluster is None:
        return base
    # Found by DNS, a node listens on a port known in advance (dns:NAME:PORT's);
    # otherwise any free port (mDNS announces it, seeds name theirs).
    port = listen_port(parse_sources(config.discovery), DEFAULT_PEER_PORT) or 0
    peer = config.peer_endpoint or f"tcp://{lan_address()}:{port}"
    return replace(
        base,
        cluster=config.cluster,
        peer_endpoint=peer,
        seeds=config.seeds,
        discovery=config.discovery or ("none",),
        interfaces=config.interfaces,
        key_files=config.key_file,
        insecure=config.insecure,
    )


def node() -> NodeServer | None:
    """The embedded node of this process, if one was started."""
    return _node if _pid == os.getpid() else None
