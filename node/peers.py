"""The node's peer mesh: sockets to other nodes, and the member table's clock.

Owns: the ROUTER other nodes send to (``--peer-endpoint``), one DEALER per
peer address we send to, decoding peer frames, and calling the pure
``MemberTable`` (``zchannels.node.membership``) on every message and at every
deadline it asks for. Decides nothing about membership itself.

Peer traffic is datagram-like: SWIM tolerates loss, so a send that would
block (peer gone, its queue full) is dropped and counted, never waited for.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import zmq
from zmq.utils.monitor import parse_monitor_message

from zchannels.keys import Keyring
from zchannels.protocol import DecodeError, MsgType, decode, encode

from .membership import (
    LIVE,
    Effects,
    EventKind,
    MemberEvent,
    MembershipConfig,
    MemberTable,
)
from .peer_wire import from_wire, to_wire
from .security import HandshakeWatch, admission, connect_with, serve_with

log = logging.getLogger("zchannels.node")

_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
#: The member table's own message types (others go to ``handlers``).
_PEER_TYPES = frozenset(
    {
        MsgType.PEER_PING,
        MsgType.PEER_PING_REQ,
        MsgType.PEER_ACK,
        MsgType.PEER_NACK,
        MsgType.PEER_GOSSIP,
        MsgType.PEER_SYNC,
        MsgType.PEER_REFUSE,
    }
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
        cluster: str,
        config: MembershipConfig,
        context: zmq.Context[zmq.Socket[bytes]],
        max_frame: int,
        incarnation: int,
        keyring: Keyring | None = None,
    ) -> None:
        self.node_id = node_id
        self.endpoint = endpoint
        self.cluster = cluster
        self.config = config
        self._ctx = context
        self._max_frame = max_frame
        self.incarnation = incarnation
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
        self.table: MemberTable | None = None
        self._router: zmq.Socket[bytes] | None = None
        self._dealers: dict[str, zmq.Socket[bytes]] = {}
        self._spares: dict[str, zmq.Socket[bytes]] = {}  # see _send_spare
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.counters: Counter[str] = Counter()
        #: other peer message types and who handles them (group replication)
        self.handlers: dict[MsgType, Callable[[tuple[Any, ...], float], None]] = {}
        #: called with every member event (joined, dead, left, ...)
        self.listeners: list[Callable[[MemberEvent], None]] = []
        #: called after each run of peer frames has been handled (the node
        #: carries out what the handlers left for other nodes)
        self.after_frames: Callable[[], None] | None = None

    @property
    def address(self) -> str:
        return self.table.address if self.table is not None else self.endpoint

    async def start(self) -> None:
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
        address = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.table = MemberTable(
            self.config,
            node_id=self.node_id,
            address=address,
            incarnation=self.incarnation,
            cluster=self.cluster,
            rng=random.Random(),
        )
        self._loop.add_reader(router.fileno(), self._on_readable)
        # Seeds come through discovery (``zchannels.node.finding``), like mDNS peers.
        self._apply(self.table.join((), time.monotonic()))
        self._tick()
        log.info("node %s in cluster %r, peers on %s", self.node_id, self.cluster, address)

    async def stop(self) -> None:
        """Say we leave (peers drop us at once), then close every socket;
        nothing is sent (or connected) after that."""
        if self._timer is not None:
            self._timer.cancel()
        if self.table is not None:
            self._apply(self.table.leave(time.monotonic()))
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

    def status(self) -> dict[str, Any]:
        members = self.table.members() if self.table is not None else []
        return {
            "cluster": self.cluster,
            "members": [
                {
                    "id": m.id,
                    "state": str(m.state),
                    "incarnation": m.incarnation,
                    "address": m.address,
                }
                for m in members
            ],
            "peer_counters": dict(self.counters),
        }

    # -- I/O --------------------------------------------------------------
    def _on_readable(self) -> None:
        sock, table = self._router, self.table
        if sock is None or table is None:
            return
        now = time.monotonic()
        for _ in range(1024):
            if not cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
                break
            frames = sock.recv_multipart(_NOBLOCK)
            self.counters["received_frames"] += 1
            self.counters["received_bytes"] += len(frames[-1])
            if len(frames) != 2:
                self.counters["decode_errors"] += 1
                continue
            try:
                messages = decode(frames[1], self._max_frame)
                for mtype, fields in messages:
                    if mtype in _PEER_TYPES:
                        self._apply(table.handle(from_wire(mtype, fields), now))
                    elif mtype in self.handlers:
                        self.handlers[mtype](fields, now)
                    else:
                        raise DecodeError("type", f"{mtype.name} on the peer socket")
            except DecodeError as exc:
                self.counters["decode_errors"] += 1
                log.debug("dropped a peer frame: %s", exc)
            except Exception:  # a bug must cost one frame, never the peer socket
                self.counters["handler_errors"] += 1
                log.exception("error handling a peer frame (dropped)")
        else:
            if self._loop is not None:
                self._loop.call_soon(self._on_readable)
        if self.after_frames is not None:
            self.after_frames()
        self._rearm()

    def _apply(self, fx: Effects) -> None:
        for address, msg in fx.messages:
            frame = encode(*_flat(to_wire(msg)))
            self._send(address, frame)
            self._send_spare(address, frame)
        for event in fx.events:
            for listener in self.listeners:
                listener(event)
            if event.kind == EventKind.REAPED:
                self._drop_dealer(event.address)
            level = (
                logging.WARNING
                if event.kind in (EventKind.DEAD, EventKind.REFUSED)
                else logging.INFO
            )
            log.log(
                level,
                "member %s %s (%s)%s",
                event.node,
                event.kind.value,
                event.address,
                f": {event.reason}" if event.reason else "",
            )

    def discovered(self, endpoint: str) -> None:
        """Discovery (a seed, mDNS) found a peer at ``endpoint``."""
        if len(self._dealers) >= _MAX_DEALERS:  # announcements are cheap to forge
            self.counters["discoveries_refused"] += 1
            return
        if self.table is not None:
            self._apply(self.table.discovered(endpoint, time.monotonic()))
            self._rearm()

    def send_to(self, node_id: str, frame: bytes) -> bool:
        """Send to a member by id; False if it is not a live member."""
        if self.table is None:
            return False
        member = self.table.member(node_id)
        if member is None or member.state not in LIVE or node_id == self.node_id or self._closed:
            return False
        self._send(member.address, frame)
        return True

    def live_peers(self) -> list[str]:
        """Ids of the other live (alive or suspect) members."""
        if self.table is None:
            return []
        return [n for n in self.table.live() if n != self.node_id]

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

    # -- the member table's clock ------------------------------------------
    def _tick(self) -> None:
        self._timer = None
        if self.table is None:
            return
        self._apply(self.table.tick(time.monotonic()))
        self._rearm()

    def _rearm(self) -> None:
        if self.table is None or self._loop is None:
            return
        deadline = self.table.next_deadline()
        if self._timer is not None:
            if self._timer.when() <= deadline:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._tick)


def _flat(message: tuple[MsgType, tuple[Any, ...]]) -> tuple[Any, ...]:
    mtype, fields = message
    return (mtype, *fields)
