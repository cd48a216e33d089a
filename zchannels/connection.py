"""One connection to the node per event loop: the layer's I/O shell.

Owns: a DEALER socket used only from its event loop's thread, requests in
flight and their answers, and per-channel receive state (messages the node has
handed over, receivers waiting, credit granted). Does not own: the session,
memberships or the keeper (``zchannels.client``), nor encoding of user
messages (``zchannels.layer``).

Reading is drain style (one wake-up reads every frame ready, see NOTES.md),
writing is batched (everything queued in one loop iteration goes out in one
frame).

Receiving is credit based. A receiver grants the node credit for a channel and
the node pushes up to that many messages; they wait in ``RecvState.buffer``
until a ``receive()`` takes one. A message is taken only by a receiver that is
running, never handed to a waiter that might be cancelled before it resumes,
so a cancelled ``receive()`` loses nothing. Messages that nobody here takes
for a while are given back to the node (``RETURN``), in order, for any other
receiver; so is everything when the connection closes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import weakref
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import zmq

from .errors import ChannelFull, LimitExceeded, NodeUnavailable, ProtocolError
from .names import local_part
from .protocol import (
    BATCH_BYTES,
    RESERVATION_TTL,
    DecodeError,
    ErrorCode,
    Message,
    MsgType,
    decode,
    encode_many,
    split_batches,
)

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("zchannels.layer")

# Plain ints: pyzmq's enum members cost a microsecond per use on the hot path.
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)

#: Credit kept granted per channel while it is being received. A window lets
#: the node push the next messages while the consumer handles this one
#: (without it, every message costs a round trip). Prefetched messages are
#: out of the node's queue, so a channel may briefly hold capacity + window.
RECEIVE_WINDOW = 32
#: Seconds prefetched messages may sit with nobody receiving before they are
#: given back to the node for other receivers.
IDLE_RETURN = 0.25
#: Seconds: a message queued within this long of the last write waits for
#: the end of the loop iteration and goes out batched with the others; one
#: queued after a quiet spell goes out at once.
BATCH_AFTER = 0.0002
#: Seconds between housekeeping passes (idle returns, request timeouts).
SWEEP_INTERVAL = 0.25
#: Seconds ``close()`` waits for the node to confirm BYE (ipc loses a tail
#: sent right before close: libzmq #4660).
CLOSE_TIMEOUT = 1.0

# Requests that may be sent again after the node restarted without answering:
# repeating them changes nothing. SEND and GROUP_SEND are not: at-most-once.
_IDEMPOTENT = frozenset(
    {
        MsgType.GROUP_ADD,
        MsgType.GROUP_DISCARD,
        MsgType.FLUSH,
        MsgType.STATUS,
        MsgType.GROUP_INFO,
        MsgType.BYE,
    }
)


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[Any]
    message: Message
    epoch: int  # which HELLO this request was sent after
    sent_at: float


@dataclass(slots=True)
class RecvState:
    #: (payload, local deadline, node seq): handed over, not yet taken
    buffer: deque[tuple[bytes, float, int]] = field(default_factory=deque)
    #: receivers waiting for something to land in ``buffer``
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    #: credit granted to the node and not yet used
    credit: int = 0
    #: when a receiver last left (monotonic)
    active_at: float = 0.0
    #: receive() calls using this state right now (waiting or just woken)
    users: int = 0


class Connection:
    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop, index: int) -> None:
        self._client = client
        # Weak: the client keeps connections per loop in a WeakKeyDictionary,
        # and a strong reference from here would keep every loop alive.
        self._loopref = weakref.ref(loop)
        sock = client.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, f"{client.session}/{index}".encode())
        sock.setsockopt(zmq.LINGER, 500)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        # A restarted node is found again quickly.
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if client.key is not None and client.endpoint.startswith("tcp://"):
            # A keyed node serves tcp:// clients over CurveZMQ only.
            sock.setsockopt(zmq.CURVE_SERVERKEY, client.key.public)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, client.key.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, client.key.secret)
        sock.connect(client.endpoint)
        self._sock: zmq.Socket[bytes] = sock
        self._fd = sock.fileno()
        self.closed = False
        self._pending: dict[int, _Pending] = {}
        self._req = itertools.count(1)
        self._recv: dict[str, RecvState] = {}
        #: RETURN request id -> channel, until the node's ACK
        self._withdrawals: dict[int, str] = {}
        #: channel -> credit withdrawals not yet acknowledged
        self._draining: dict[str, int] = {}
        #: channel -> [slots the node reserved for us, use until (monotonic)]
        self._reservations: dict[str, list[float]] = {}
        self._out: list[Message] = []
        self._flush_scheduled = False
        self._flushed_at = 0.0
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._epoch = 0
        self._hello_outstanding = False
        self._hello_told = False
        self.incarnation: str | None = None
        self._welcomed = loop.create_future()
        loop.add_reader(self._fd, self._on_readable)
        self._hello()
        # Close with the loop: asyncio.run() (and so async_to_sync) finalizes
        # async generators before closing its loop; this one closes us.
        self._sentinel = self._until_loop_closes()
        try:
            self._sentinel.__anext__().send(None)
        except StopIteration:
            pass
        # Fallback for loops closed without shutdown_asyncgens().
        self._finalizer = weakref.finalize(loop, _close_socket, sock)

    # -- requests ---------------------------------------------------------
    async def ready(self) -> None:
        """Wait until the node has welcomed this connection."""
        if not self._welcomed.done():
            timeout = self._client.config.request_timeout
            try:
                await asyncio.wait_for(asyncio.shield(self._welcomed), timeout)
            except TimeoutError:
                raise NodeUnavailable(
                    f"no answer from the node at {self._client.endpoint} in {timeout:g} s"
                ) from None
        self._welcomed.result()  # raises if the node refused us

    async def request(self, mtype: MsgType, *fields: Any) -> Any:
        if self.closed:
            raise NodeUnavailable("connection is closed")
        req = next(self._req)
        loop = self._loop()
        future: asyncio.Future[Any] = loop.create_future()
        message: Message = (mtype, (req, *fields))
        self._pending[req] = _Pending(future, message, self._epoch, time.monotonic())
        self._queue(message)
        self._arm_sweep()
        try:
            return await future
        finally:
            self._pending.pop(req, None)

    def post(self, mtype: MsgType, *fields: Any) -> None:
        """Send a message that wants no answer."""
        if self.closed:
            raise NodeUnavailable("connection is closed")
        self._queue((mtype, fields))

    def send_reserved(self, channel: str, payload: bytes, capacity: int) -> bool:
        """Send one message without waiting for the node, if a reservation
        for ``channel`` lasts (the hot path: no coroutine, no round trip)."""
        reservation = self._reservations.get(channel)
        if reservation is None:
            return False
        if reservation[0] > 0 and reservation[1] > time.monotonic():
            reservation[0] -= 1
            self._queue((MsgType.SEND, (0, channel, payload, capacity)))
            return True
        del self._reservations[channel]
        return False

    async def send(self, channel: str, payload: bytes, capacity: int) -> None:
        """Send one message as a request; the answer may reserve slots for
        the next ones (``send_reserved``)."""
        reserved = await self.request(MsgType.SEND, channel, payload, capacity)
        if reserved > 0:
            self._reservations[channel] = [reserved, time.monotonic() + RESERVATION_TTL / 2]
            self._arm_sweep()

    def ping(self) -> None:
        self._queue((MsgType.PING, ()))

    # -- receiving --------------------------------------------------------
    async def receive(self, channel: str) -> bytes:
        """Take the next message of ``channel`` (a wire name)."""
        state = self._recv.get(channel)
        if state is None:
            state = self._recv[channel] = RecvState()
        # While any receive() uses this state it stays the channel's state:
        # a receiver woken for a message must find it where it was.
        state.users += 1
        cancelled = False
        try:
            loop = self._loop()
            while True:
                payload = self._take(state, time.monotonic()) if state.buffer else None
                if payload is not None:
                    self._replenish(channel, state)
                    return payload
                waiter: asyncio.Future[None] = loop.create_future()
                state.waiters.append(waiter)
                self._replenish(channel, state)
                self._arm_sweep()
                try:
                    await waiter
                except asyncio.CancelledError:
                    cancelled = True
                    try:
                        state.waiters.remove(waiter)
                    except ValueError:
                        # It was woken for a message it will now not take:
                        # wake another receiver in its place.
                        self._wake(state, 1)
                    raise
        finally:
            state.users -= 1
            state.active_at = time.monotonic()
            if cancelled and state.users == 0:
                # Nobody here wants this channel now: other receivers may.
                self._give_back(channel, state)

    def _take(self, state: RecvState, now: float) -> bytes | None:
        buffer = state.buffer
        while buffer:
            payload, deadline, _seq = buffer.popleft()
            if deadline > now:
                return payload
            self._client.counters["expired_in_client"] += 1
        return None

    def _replenish(self, channel: str, state: RecvState) -> None:
        if channel in self._draining:
            # New credit now would let the node deliver newer messages ahead
            # of the ones still coming back to it; grant once drained.
            return
        have = state.credit + len(state.buffer)
        if have <= RECEIVE_WINDOW // 2:
            grant = RECEIVE_WINDOW - have
            state.credit += grant
            self._queue((MsgType.RECV, (channel, grant)))

    def _wake(self, state: RecvState, n: int) -> None:
        while n > 0 and state.waiters and state.buffer:
            waiter = state.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                n -= 1

    def _give_back(self, channel: str, state: RecvState) -> None:
        """Return what nobody here is taking to the node, withdraw credit.
        The node puts it back in order (by sequence number)."""
        now = time.monotonic()
        items = [[p, deadline - now, seq] for p, deadline, seq in state.buffer if deadline > now]
        state.buffer.clear()
        if state.credit or items:
            # Deliveries already on their way used the credit withdrawn here:
            # until the node's ACK says they have all arrived, whatever
            # arrives for this channel goes back too (see _on_deliver).
            req = next(self._req)
            self._withdrawals[req] = channel
            self._draining[channel] = self._draining.get(channel, 0) + 1
            self._queue((MsgType.RETURN, (req, channel, items, 1)))
        state.credit = 0
        if state.users == 0 and self._recv.get(channel) is state:
            del self._recv[channel]

    def _give_back_all(self) -> None:
        for channel, state in list(self._recv.items()):
            for waiter in state.waiters:
                waiter.cancel()
            state.waiters.clear()
            self._give_back(channel, state)

    # -- node restarts ----------------------------------------------------
    def rehello(self, told: bool = False) -> None:
        """Our session is unknown to the node (restart, lapsed lease): say
        HELLO again; ``_on_welcome`` then restores credit and requests.
        ``told``: another connection of this process found out first."""
        if not self._hello_outstanding and not self.closed:
            self._hello(told)

    def _hello(self, told: bool = False) -> None:
        self._epoch += 1
        self._hello_outstanding = True
        self._hello_told = told
        client = self._client
        self._queue(
            (MsgType.HELLO, (client.session, client.pid, client.config.wire_policy())),
        )

    def _on_welcome(
        self, node_id: str, node_tag: str, incarnation: str, lease: float, max_frame: int
    ) -> None:
        self._hello_outstanding = False
        self.incarnation = incarnation
        # A HELLO this connection had to say again, on its own finding: the
        # node lost this whole process's session. Tell the process.
        lost = self._epoch > 1 and not self._hello_told
        self._client.on_welcome(self, node_tag, incarnation, float(lease), max_frame, lost)
        if not self._welcomed.done():
            self._welcomed.set_result(None)
        if self._epoch == 1:
            return
        self._reservations.clear()
        # A new node sends nothing against withdrawn credit: stop draining.
        self._withdrawals.clear()
        self._draining.clear()
        # Everything the node knew of this connection is gone. Requests sent
        # before this HELLO and still unanswered went to a node that died.
        for req, pending in list(self._pending.items()):
            if pending.epoch >= self._epoch or pending.future.done():
                continue
            if pending.message[0] in _IDEMPOTENT:
                pending.epoch = self._epoch
                self._queue(pending.message)
            else:
                # at-most-once: never send twice what the old node may have delivered
                self._client.counters["lost_in_node_restart"] += 1
                pending.future.set_result(0)
                self._pending.pop(req, None)
        for channel, state in self._recv.items():
            if state.credit:
                self._queue((MsgType.RECV, (channel, state.credit)))
            elif state.waiters:
                self._replenish(channel, state)

    # -- socket I/O -------------------------------------------------------
    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loopref()
        if loop is None:  # pragma: no cover - only if used after its loop died
            raise RuntimeError("zchannels connection used after its event loop was closed")
        return loop

    def _queue(self, message: Message) -> None:
        """Send ``message``: at once when traffic is sparse (latency), else
        with everything else queued in this loop iteration (throughput)."""
        self._out.append(message)
        if self._flush_scheduled:
            return
        if time.monotonic() - self._flushed_at > BATCH_AFTER:
            self._flush()
        else:
            self._flush_scheduled = True
            self._loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed or not self._out:
            return
        self._flushed_at = time.monotonic()
        out, self._out = self._out, []
        limit = BATCH_BYTES
        if self._client.max_frame is not None:
            limit = min(limit, self._client.max_frame - 4096)
        for chunk in split_batches(out, limit):
            self._sock.send(encode_many(chunk), _NOBLOCK)
        # Sending can consume the FD's edge for frames that arrived meanwhile.
        if cast(int, self._sock.getsockopt(_EVENTS)) & _POLLIN:
            self._loop().call_soon(self._on_readable)

    def _on_readable(self) -> None:
        sock = self._sock
        while not self.closed and cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
            frame = sock.recv(_NOBLOCK)
            try:
                messages = decode(frame)
            except DecodeError as exc:
                self._client.counters["decode_errors"] += 1
                log.warning("dropped a malformed frame from the node: %s", exc)
                continue
            for mtype, fields in messages:
                try:
                    self._dispatch(mtype, fields)
                except (TypeError, ValueError, IndexError) as exc:
                    self._client.counters["decode_errors"] += 1
                    log.warning("dropped a nonsensical %s from the node: %r", mtype.name, exc)

    def _dispatch(self, mtype: MsgType, f: tuple[Any, ...]) -> None:
        if mtype == MsgType.DELIVER:
            self._on_deliver(f[0], f[1])
        elif mtype == MsgType.ACK and f[0] in self._withdrawals:
            channel = self._withdrawals.pop(f[0])
            left = self._draining.get(channel, 1) - 1
            if left > 0:
                self._draining[channel] = left
            else:
                self._draining.pop(channel, None)
                state = self._recv.get(channel)
                if state is not None and state.waiters:
                    self._replenish(channel, state)
        elif mtype in (MsgType.ACK, MsgType.STATUS_REPLY, MsgType.GROUP_INFO_REPLY):
            pending = self._pending.pop(f[0], None)
            if pending is not None and not pending.future.done():
                pending.future.set_result(f[1])
        elif mtype == MsgType.ERROR:
            self._on_error(*f)
        elif mtype == MsgType.WELCOME:
            self._on_welcome(*f)
        elif mtype in (MsgType.RESET, MsgType.PONG):
            if mtype == MsgType.RESET or f[0] != self.incarnation:
                self.rehello()
        else:
            self._client.counters["unexpected_type"] += 1

    def _on_error(self, req: int, code: int, detail: str) -> None:
        if code == ErrorCode.UNKNOWN_SESSION:
            # The node did not process it: HELLO again, then send it again.
            # (A reserved send, req 0, has no copy kept: it is lost.)
            self.rehello()
            if req == 0:
                self._client.counters["lost_in_node_restart"] += 1
            pending = self._pending.get(req)
            if pending is not None:
                pending.epoch = self._epoch
                self._queue(pending.message)
            return
        pending = self._pending.pop(req, None)
        if pending is None:
            if req == 0:  # our HELLO was refused
                error = ProtocolError(f"node refused this client: {detail}")
                log.error("%s", error)
                if not self._welcomed.done():
                    self._welcomed.set_exception(error)
            return
        if pending.future.done():
            return
        if code == ErrorCode.CHANNEL_FULL:
            pending.future.set_exception(ChannelFull(local_part(detail)))
        elif code == ErrorCode.LIMIT:
            pending.future.set_exception(LimitExceeded(detail))
        else:
            pending.future.set_exception(ProtocolError(f"node refused request: {detail}"))

    def _on_deliver(self, channel: str, items: list[list[Any]]) -> None:
        state = self._recv.get(channel)
        if state is None or self._draining.get(channel):
            # Sent against credit we have withdrawn: it goes back, and the
            # node merges it in by sequence number, so order holds.
            self._queue((MsgType.RETURN, (0, channel, items, 0)))
            return
        now = time.monotonic()
        state.credit = max(0, state.credit - len(items))
        for payload, ttl, seq in items:
            state.buffer.append((payload, now + ttl, seq))
        if state.waiters:
            self._wake(state, len(items))
        elif state.users == 0 and now - state.active_at > IDLE_RETURN:
            self._give_back(channel, state)

    # -- housekeeping -----------------------------------------------------
    def _arm_sweep(self) -> None:
        if self._sweep_handle is None and not self.closed:
            self._sweep_handle = self._loop().call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        self._sweep_handle = None
        if self.closed:
            return
        now = time.monotonic()
        for channel, state in list(self._recv.items()):
            if state.users == 0 and now - state.active_at > IDLE_RETURN:
                self._give_back(channel, state)
        for channel, reservation in list(self._reservations.items()):
            if reservation[1] <= now:
                del self._reservations[channel]
        timeout = self._client.config.request_timeout
        for req, pending in list(self._pending.items()):
            if now - pending.sent_at > timeout and not pending.future.done():
                self._pending.pop(req, None)
                pending.future.set_exception(
                    NodeUnavailable(
                        f"no answer from the node at {self._client.endpoint} in {timeout:g} s"
                    )
                )
        if self._recv or self._pending or self._reservations:
            self._arm_sweep()

    # -- closing ----------------------------------------------------------
    async def _until_loop_closes(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await self.aclose()

    async def aclose(self, final: bool = False) -> None:
        """Give back every prefetched message, say BYE, close the socket.
        ``final``: this process's session ends with this connection."""
        if self.closed:
            return
        self._give_back_all()
        try:
            await asyncio.wait_for(self.request(MsgType.BYE, int(final)), CLOSE_TIMEOUT)
        except (TimeoutError, NodeUnavailable, ProtocolError, asyncio.CancelledError):
            pass
        self.close_now()

    def close_now(self) -> None:
        """Close at once (from this connection's loop): prefetched messages
        are given back, unanswered requests fail with NodeUnavailable."""
        if self.closed:
            return
        self._give_back_all()
        if self.incarnation is not None:
            # Unacknowledged (ipc may lose it: libzmq #4660); the lease is the backstop.
            self._queue((MsgType.BYE, (0, 0)))
        self._flush()
        self.closed = True
        loop = self._loopref()
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._fd)
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(NodeUnavailable("connection closed"))
        self._pending.clear()
        self._finalizer()
        self._client.forget(self)


def _close_socket(sock: zmq.Socket[bytes]) -> None:
    if not sock.closed:
        sock.close()
