"""The node's peer sockets: frames to and from other nodes, nothing more.

Owns: the ROUTER other nodes send to (``--peer-endpoint``), one DEALER per
peer address we send to (and a spare one for the member table's messages),
CurveZMQ and the key rollover's handshake watch, and handing every frame that
arrives to ``on_frame``. Decides nothing and decodes nothing: the pure
``ClusterNode`` (``zchannels.node.cluster``) does.

Peer traffic is datagram-like: SWIM tolerates loss, so a send that would
block (peer gone, its queue full) is dropped and counted, never waited for.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import zmq
from zmq.utils.monitor import parse_monitor_message

from zchannels.keys import Keyring
from zchannels.protocol import MsgType

from .security import HandshakeWatch, admission, connect_with, serve_with

log = logging.getLogger("zchannels.node")

_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
#: The member table's message types: they also travel on the spare connection.
_SWIM_TYPES = frozenset(
    int(t)
    for t in (
        MsgType.PEER_PING,
        MsgType.PEER_PING_REQ,
        MsgType.PEER_ACK,
        MsgType.PEER_NACK,
        MsgType.PEER_GOSSIP,
        MsgType.PEER_SYNC,
        MsgType.PEER_REFUSE,
    )
)
#: Most peer addresses with a socket at once: members plus what discovery
#: announced (a forged flood of announcements must not exhaust sockets).
_MAX_DEALERS = 256
#: What a peer connection's monitor reports during a key rollover.
_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_DISCONNECTED
)
#: Milliseconds between ZMTP heartbeats on a connection to a peer (the
#: connection is dropped after three without an answer).
_HEARTBEAT_MS = 1000
#: Frames queued to one peer before further ones are dropped (and counted):
#: SWIM tolerates loss, but relayed client messages ride the same pipe, so
#: the bound is a burst's worth, not a handful.
_PEER_HWM = 10_000


class PeerMesh:
    def __init__(
        self,
        *,
        node_id: str,
        endpoint: str,
        context: zmq.Context[zmq.Socket[bytes]],
        max_frame: int,
        on_frame: Callable[[bytes], None],
        after_frames: Callable[[], None],
        keyring: Keyring | None = None,
    ) -> None:
        self.node_id = node_id
        self.endpoint = endpoint
        self._ctx = context
        self._max_frame = max_frame
        #: called with every frame that arrives, then ``after_frames`` once
        #: per run of frames read together
        self._on_frame = on_frame
        self._after_frames = after_frames
        #: the cluster keys: peers talk CurveZMQ and only key holders get in
        self.keyring = keyring
        #: during a key rollover: which of our keys each peer address serves
        #: (tried in turn when a handshake fails)
        self._key_index: dict[str, int] = {}
        self._monitors: dict[str, zmq.Socket[bytes]] = {}
        self._handshaken: set[str] = set()
        #: refused connections to the peer socket (with a key)
        self.watch: HandshakeWatch | None = None
        self._closed = False
        self._router: zmq.Socket[bytes] | None = None
        self._dealers: dict[str, zmq.Socket[bytes]] = {}
        self._spares: dict[str, zmq.Socket[bytes]] = {}  # see _send_spare
        self._loop: asyncio.AbstractEventLoop | None = None
        self.counters: Counter[str] = Counter()
        #: the bound peer endpoint (port 0 resolved), once started
        self.address = endpoint

    def start(self) -> str:
        """Bind the peer socket; returns the address peers reach it on."""
        self._loop = asyncio.get_running_loop()
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.MAXMSGSIZE, self._max_frame)
        if self.keyring is not None:
            domain = f"peers:{self.node_id}"
            admission(self._ctx).allow(domain, self.keyring.publics)
            serve_with(router, self.keyring, domain)
            self.watch = HandshakeWatch(router, self._loop, "peer")
        router.bind(self.endpoint)
        self._router = router
        self.address = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._loop.add_reader(router.fileno(), self._on_readable)
        # (frames may already wait: the edge-triggered FD would not say so)
        self._loop.call_soon(self._on_readable)
        return self.address

    def close(self) -> None:
        """Close every socket (after the last frames were sent); nothing is
        sent or connected after this."""
        self._closed = True
        if self._router is not None and self._loop is not None:
            self._loop.remove_reader(self._router.fileno())
            self._router.close(0)
            self._router = None
        for address in list(self._monitors):
            self._unwatch(address)
        if self.watch is not None:
            self.watch.close()
        for sock in [*self._dealers.values(), *self._spares.values()]:
            sock.close(200)  # ms: let the LEFT notices go out
        self._dealers.clear()
        self._spares.clear()

    # -- I/O --------------------------------------------------------------
    def _on_readable(self) -> None:
        sock = self._router
        if sock is None:
            return
        for _ in range(1024):
            if not cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
                break
            frames = sock.recv_multipart(_NOBLOCK)
            self.counters["received_frames"] += 1
            self.counters["received_bytes"] += len(frames[-1])
            if len(frames) != 2:
                self.counters["bad_frames"] += 1
                continue
            self._on_frame(frames[1])
        else:
            if self._loop is not None:
                self._loop.call_soon(self._on_readable)
        self._after_frames()

    def send(self, address: str, frame: bytes) -> None:
        """One frame to a peer address (the member table's also on the spare
        connection); a send that would block is dropped and counted."""
        self._send(address, frame)
        if len(frame) > 1 and frame[1] in _SWIM_TYPES:
            self._send_spare(address, frame)

    def forget(self, address: str) -> None:
        """A member was reaped: close its sockets."""
        self._drop_dealer(address)

    def may_discover(self) -> bool:
        """Whether one more peer address may get a socket (announcements are
        cheap to forge: a flood of them must not exhaust sockets)."""
        if len(self._dealers) >= _MAX_DEALERS:
            self.counters["discoveries_refused"] += 1
            return False
        return True

    def status(self) -> dict[str, Any]:
        return {"peer_counters": dict(self.counters)}

    def _dealer(self, address: str, watch: bool = True) -> zmq.Socket[bytes]:
        """A DEALER connected to a peer address (raises ZMQError for a bad one)."""
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, _PEER_HWM)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        # A cable pulled mid-connection leaves TCP retransmitting with
        # exponential backoff (seconds apart after a 10 s partition);
        # ZMTP heartbeats drop such a connection after 3 s of silence and
        # reconnect instead, and a connect attempt gives up after a
        # second to try afresh, so a healed partition is crossed within
        # ~1 s. (Not sooner: on a lossy link TCP stalls for 1.4 s after
        # three losses of one segment, and reconnecting then would only
        # add a SYN timeout to the stall.)
        sock.setsockopt(zmq.HEARTBEAT_IVL, _HEARTBEAT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * _HEARTBEAT_MS)
        sock.setsockopt(zmq.CONNECT_TIMEOUT, 1000)
        if self.keyring is not None:
            keys = self.keyring.keys
            key = keys[self._key_index.get(address, 0)]
            connect_with(sock, key, key)  # (a peer admits the key it serves)
            if len(keys) > 1 and watch:
                self._watch(address, sock)
        try:
            sock.connect(address)
        except zmq.ZMQError:
            sock.close(0)
            self._unwatch(address)
            raise
        return sock

    def _send_spare(self, address: str, frame: bytes) -> None:
        """Member-table messages also travel on a second connection to the
        peer: on a lossy link TCP stalls a stream for seconds after a segment
        is lost a few times in a row (retransmission backoff), and SWIM would
        take that stall for a death; two independent streams rarely stall at
        once. Duplicates are harmless to SWIM (every message is idempotent)."""
        if self._closed or address not in self._dealers:
            return
        sock = self._spares.get(address)
        if sock is None:
            try:
                sock = self._spares[address] = self._dealer(address, watch=False)
            except zmq.ZMQError:
                return
        try:
            sock.send(frame, _NOBLOCK)
        except zmq.Again:
            self.counters["dropped_sends"] += 1
            return
        self.counters["sent_frames"] += 1
        self.counters["sent_bytes"] += len(frame)

    def _send(self, address: str, frame: bytes) -> None:
        if self._closed:
            return
        sock = self._dealers.get(address)
        if sock is None:
            if len(self._dealers) >= _MAX_DEALERS:
                self.counters["dropped_sends"] += 1
                return
            try:
                sock = self._dealer(address)
            except zmq.ZMQError as exc:
                self.counters["bad_addresses"] += 1
                log.warning("cannot connect to peer address %r: %s", address[:80], exc)
                return
            self._dealers[address] = sock
        try:
            sock.send(frame, _NOBLOCK)
        except zmq.Again:
            self.counters["dropped_sends"] += 1
            return
        self.counters["sent_frames"] += 1
        self.counters["sent_bytes"] += len(frame)

    # -- key rollover: find which of our keys a peer serves --------------------
    def _watch(self, address: str, sock: zmq.Socket[bytes]) -> None:
        monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        self._monitors[address] = monitor
        if self._loop is not None:
            self._loop.add_reader(monitor.fileno(), self._on_monitor, address)
            # (the FD is edge-triggered: it signals only once EVENTS was read)
            self._loop.call_soon(self._on_monitor, address)

    def _unwatch(self, address: str) -> None:
        monitor = self._monitors.pop(address, None)
        if monitor is not None:
            if self._loop is not None:
                self._loop.remove_reader(monitor.fileno())
            monitor.close(0)

    def _on_monitor(self, address: str) -> None:
        monitor = self._monitors.get(address)
        failed = False
        while monitor is not None and cast(int, monitor.getsockopt(_EVENTS)) & _POLLIN:
            event = parse_monitor_message(monitor.recv_multipart(_NOBLOCK))["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshaken.add(address)
            elif event == zmq.EVENT_DISCONNECTED and address in self._handshaken:
                # it may come back serving another key (a node restarted
                # during a rollover): its next handshake decides afresh
                self._handshaken.discard(address)
            elif address not in self._handshaken:
                failed = True  # refused before any handshake: the wrong server key
        if failed and self.keyring is not None:
            index = (self._key_index.get(address, 0) + 1) % len(self.keyring.keys)
            self._key_index[address] = index
            self.counters["key_fallbacks"] += 1
            log.info("peer %s: handshake failed; trying key %d of our keyring", address, index)
            if self._loop is not None:  # (not from inside the monitor's own callback)
                self._loop.call_soon(self._drop_dealer, address)

    def _drop_dealer(self, address: str) -> None:
        self._unwatch(address)
        self._handshaken.discard(address)
        for sockets in (self._dealers, self._spares):
            sock = sockets.pop(address, None)
            if sock is not None:
                sock.close(0)
