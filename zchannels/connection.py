"""One connection to the node per event loop: the layer's I/O shell.

Owns: a DEALER socket used only from its event loop's thread, requests in
flight and their answers, and the futures of receivers waiting. Does not own:
the receive accounting (``zchannels.flow``), the session, memberships or the
keeper (``zchannels.client``, which it knows only as an ``Owner``), nor
encoding of user messages (``zchannels.layer``).

Reading is drain style (one wake-up reads every frame ready, see NOTES.md),
writing is batched (everything queued in one loop iteration goes out in one
frame).

Receiving is credit based; what the connection owes and is owed (prefetched
messages, credit, consumption reports, reservations) is decided by the pure
``zchannels.flow.Flow``; this shell holds the waiting receivers' futures and
carries the flow's messages out. A message is taken only by a receiver that is
running, never handed to a waiter that might be cancelled before it resumes,
so a cancelled ``receive()`` loses nothing.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import time
import weakref
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol, cast

import zmq

from .config import LayerConfig
from .errors import (
    ChannelFull,
    LimitExceeded,
    NodeUnavailable,
    ProtocolError,
    SendOutcomeUnknown,
)
from .flow import REPLENISH_AT, Flow
from .keys import ClusterKey
from .names import local_part
from .protocol import (
    BATCH_BYTES,
    DecodeError,
    ErrorCode,
    Message,
    MsgType,
    decode,
    encode_many,
    split_batches,
)


class Owner(Protocol):
    """What a connection needs from the process's session that owns it
    (``zchannels.client.Client``): named here so the two modules do not
    import each other."""

    ctx: zmq.Context[zmq.Socket[bytes]]
    session: str
    pid: int
    config: LayerConfig
    endpoint: str
    key: ClusterKey | None
    counters: collections.Counter[str]
    max_frame: int | None

    def on_welcome(
        self,
        by: Connection,
        node_tag: str,
        incarnation: str,
        lease: float,
        max_frame: int,
        lost: bool,
    ) -> None: ...

    def forget(self, conn: Connection) -> None: ...


log = logging.getLogger("zchannels.layer")

# Plain ints: pyzmq's enum members cost a microsecond per use on the hot path.
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)

#: Seconds: a message queued within this long of the last write waits for
#: the end of the loop iteration and goes out batched with the others; one
#: queued after a quiet spell goes out at once.
BATCH_AFTER = 0.0002
#: Seconds a consumption report may wait for a message of this connection to
#: ride along before it goes alone. Short: until the node has it, what the
#: receive took still counts against capacity for senders in other
#: processes. Not zero: a report of its own, every receive, would cost an
#: event-loop iteration and a frame per message (ping-pong lost a third).
REPORT_DELAY = 0.001
#: Bytes a frame from the node must have for the connection to yield its
#: core once (``os.sched_yield``) before decoding it and waking its
#: receivers (a group_send's frame to 500 members of a process is 18 KB,
#: 36 bytes a member: the threshold is ~28 members; at 4 KiB, 100 members
#: over two processes still took turns in ~43% of shots, ~31% at 1 KiB,
#: and ping-pong's frames stay below it). The node hands a
#: group_send to each consumer process at once, through its libzmq I/O
#: thread, which wakes each consumer's own I/O thread on the node's core;
#: the first consumer's main thread then ran its burst there (2 ms for 500
#: members) while the second consumer's I/O thread waited behind it, the
#: other core idle (``perf sched``: 2.06 ms of scheduling delay), so the
#: consumers took turns instead of working side by side in half of the
#: 1,000-member shots (docs/benchmarks.md). The yield lets a task waiting
#: on this core run first (microseconds; nothing when none waits).
YIELD_FRAME_BYTES = 1024
_yield = getattr(os, "sched_yield", None)
#: Seconds between housekeeping passes (idle returns, request timeouts).
SWEEP_INTERVAL = 0.25
#: Seconds ``close()`` waits for the node to confirm BYE (ipc loses a tail
#: sent right before close: libzmq #4660).
CLOSE_TIMEOUT = 1.0
#: Seconds between two pings while the node drains: the next node (a
#: restarted one on the same endpoint) answers the first ping it reads with
#: RESET, and the connection registers with it at once.
MOVING_PING = 0.05
#: Seconds a connection's first HELLO may go unanswered before it pings
#: (every as many seconds) to find out whether it was lost: written to a
#: node that then died without reading it (kill -9 of a stopped node, the
#: supervisor's restart). Answered in milliseconds otherwise.
HELLO_CHECK = 0.5

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
    #: made while the node drained: not sent yet (it goes to the next node)
    held: bool = False


class Connection:
    def __init__(self, client: Owner, loop: asyncio.AbstractEventLoop, index: int) -> None:
        self._client = client
        # Weak: the client keeps connections per loop in a WeakKeyDictionary,
        # and a strong reference from here would keep every loop alive.
        self._loopref = weakref.ref(loop)
        sock = client.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, f"{client.session}/{index}".encode())
        sock.setsockopt(zmq.LINGER, 500)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        # A restarted node is found again quickly: over ipc, within 0.1 s of
        # binding (a failed local connect costs one syscall; libzmq doubles
        # the interval up to the maximum between tries).
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        local = client.endpoint.startswith("ipc://")
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 100 if local else 1000)
        if client.key is not None and client.endpoint.startswith("tcp://"):
            # A keyed node serves tcp:// clients over CurveZMQ only.
            sock.setsockopt(zmq.CURVE_SERVERKEY, client.key.public)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, client.key.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, client.key.secret)
        sock.connect(client.endpoint)
        self._sock: zmq.Socket[bytes] = sock
        self._fd = sock.fileno()
        self.closed = False
        #: closing on the background loop, its own loop closed without us
        self._orphaned = False
        self._pending: dict[int, _Pending] = {}
        #: set while closing: resolved when every withdrawal is acknowledged
        self._drained: asyncio.Future[None] | None = None
        self._req = itertools.count(1)
        #: the receive/credit/reservation accounting (pure)
        self.flow = Flow(self._req)
        #: channel -> receivers waiting for a delivery
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}
        self._out: list[Message] = []
        self._flush_scheduled = False
        self._report_timer: asyncio.TimerHandle | None = None
        self._flushed_at = 0.0
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._epoch = 0
        self._hello_outstanding = False
        self._hello_told = False
        #: the node said RESET to a frame since our last HELLO
        self._reset_after_hello = False
        self._hello_timer: asyncio.TimerHandle | None = None
        self.incarnation: str | None = None
        #: the node drains (DRAIN): requests wait in ``_held`` for the next
        #: WELCOME; ``_moved``: MOVING was sent
        self._moving = False
        self._moved = False
        self._held: list[Message] = []
        self._moving_timer: asyncio.TimerHandle | None = None
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
        held = self._moving
        self._pending[req] = _Pending(future, message, self._epoch, time.monotonic(), held)
        if held:
            self._held.append(message)
        else:
            self._queue(message)
        self._arm_sweep()
        try:
            return await future
        finally:
            self._forget_request(req)

    def _forget_request(self, req: int) -> None:
        """A request is answered, failed or cancelled: one still held (the
        node drains) is not sent at all, so its failure means "not done"."""
        pending = self._pending.pop(req, None)
        if pending is not None and pending.held:
            self._held.remove(pending.message)

    def post(self, mtype: MsgType, *fields: Any) -> None:
        """Send a message that wants no answer."""
        if self.closed:
            raise NodeUnavailable("connection is closed")
        if self._moving:
            self._held.append((mtype, fields))
        else:
            self._queue((mtype, fields))

    def send_reserved(self, channel: str, payload: bytes, capacity: int) -> bool:
        """Send one message without waiting for the node, if a reservation
        for ``channel`` lasts (the hot path: no coroutine, no round trip)."""
        if self.closed or not self.flow.use_reservation(channel, time.monotonic()):
            return False
        self._queue((MsgType.SEND, (0, channel, payload, capacity)))
        return True

    async def send(self, channel: str, payload: bytes, capacity: int) -> None:
        """Send one message as a request; the answer may reserve slots for
        the next ones (``send_reserved``)."""
        mark = self.flow.mark(channel)
        reserved = await self.request(MsgType.SEND, channel, payload, capacity)
        if reserved > 0:
            self.flow.reserved(channel, reserved, mark, time.monotonic())
            self._arm_sweep()

    def ping(self) -> None:
        self._queue((MsgType.PING, ()))

    # -- receiving --------------------------------------------------------
    def receive_step(
        self, channel: str, waited: asyncio.Future[None] | None
    ) -> bytes | asyncio.Future[None]:
        """One step of a ``receive()`` of ``channel`` (a wire name): the next
        prefetched message, taken, or the future of a waiter to await. Once
        it is done the receive steps again, passing it as ``waited``; if the
        await is cancelled it calls ``abandon`` instead. (The hot path of
        every consumer: a group_send to 1,000 members runs it 2,000 times,
        so it reads the clock once, looks nothing up twice, and the layer's
        ``receive()`` awaits the future itself: no coroutine in between.)"""
        flow = self.flow
        state = flow.channels.get(channel)
        if state is None:
            state = flow.enter(channel)
        elif waited is None:
            state.users += 1  # (``flow.enter``, inline)
        waiter: asyncio.Future[None] | None = None
        try:
            if state.buffer:
                now = time.monotonic()
                payload = flow.take_from(state, channel, now)
                if payload is not None:
                    if state.credit + len(state.buffer) <= REPLENISH_AT:  # (``wants_credit``)
                        self._queue_all(flow.replenish(channel))
                    if self._report_timer is None:
                        self._report_soon()
                    if not self.closed:  # (last: a failure above leaves once, below)
                        state.users -= 1  # (``flow.leave``, inline)
                        state.active_at = now
                    return payload
            loop = self._loopref()
            if loop is None:  # pragma: no cover - only if used after its loop died
                loop = self._loop()
            waiter = loop.create_future()
            waiters = self._waiters.get(channel)
            if waiters is None:
                waiters = self._waiters[channel] = deque()
            waiters.append(waiter)
            state.waiting += 1
            if state.credit + len(state.buffer) <= REPLENISH_AT:
                self._queue_all(flow.replenish(channel))
            if self._report_timer is None and (flow.consumed or flow.bundles_taken):
                self._report_soon()
            if self._sweep_handle is None:
                self._arm_sweep()
            return waiter
        except BaseException:
            # (the receive() fails here: it holds the channel no longer, and
            # a waiter it registered is nobody's)
            if waiter is not None:
                self.abandon(channel, waiter)
            elif not self.closed:
                flow.leave(channel, time.monotonic())
            raise

    def abandon(self, channel: str, waiter: asyncio.Future[None]) -> None:
        """A receive() waiting on ``waiter`` was cancelled (or its connection
        closed): it takes nothing. If it had been woken for a message, another
        receiver is woken in its place."""
        waiters = self._waiters.get(channel)
        state = self.flow.channels.get(channel)
        try:
            if waiters is None:
                raise ValueError(channel)
            waiters.remove(waiter)
            if state is not None:
                state.waiting -= 1
        except ValueError:
            self._wake(channel, 1)
        if not self.closed:
            self.flow.leave(channel, time.monotonic())

    def _wake(self, channel: str, n: int) -> None:
        waiters = self._waiters.get(channel)
        state = self.flow.channels.get(channel)
        while n > 0 and waiters and state is not None and state.buffer:
            waiter = waiters.popleft()
            state.waiting -= 1
            if not waiter.done():
                waiter.set_result(None)
                n -= 1

    def _report_soon(self) -> None:
        """Consumption goes out with the next message of this connection, or
        after ``REPORT_DELAY``, whichever comes first."""
        if self.flow.unreported and self._report_timer is None and not self.closed:
            self._report_timer = self._loop().call_later(REPORT_DELAY, self._flush_reports)

    def _flush_reports(self) -> None:
        self._report_timer = None
        if self.flow.unreported and not self._flush_scheduled:
            self._flush()

    # -- node restarts ----------------------------------------------------
    def rehello(self, told: bool = False, restarted_as: str | None = None) -> None:
        """Our session is unknown to the node (restart, lapsed lease): say
        HELLO again; ``_on_welcome`` then restores credit and requests.
        ``told``: another connection of this process found out first;
        ``restarted_as``: it found a restart, and was welcomed by this
        incarnation.

        A connection that has found the same restart by itself and been
        welcomed by that node already (the two connections of a process are
        welcomed in either order: this loop's may read its WELCOME before
        the other's news arrives) says nothing: a second HELLO would make
        its second WELCOME look like a lost session, failing the requests
        it sent after the first (``SendOutcomeUnknown``) and forgetting
        what it was delivered since (which the node then counts lost when
        the connection closes). Seen in rolling restarts under load."""
        if restarted_as is not None and restarted_as == self.incarnation:
            return
        if not self._hello_outstanding and not self.closed:
            self._hello(told)

    def _hello(self, told: bool = False, again: bool = False) -> None:
        """Say HELLO; ``again``: the same HELLO once more (the last went to
        a node that died unread), in the same epoch: what was sent after
        it is judged by the welcome as it would have been."""
        if not again:
            self._epoch += 1
        self._hello_outstanding = True
        self._hello_told = told
        self._reset_after_hello = False
        client = self._client
        policy = [*client.config.wire_policy(), self.flow.reserved_sent()]
        self._queue((MsgType.HELLO, (client.session, client.pid, policy)))
        if self._hello_timer is None and self._epoch == 1:
            self._hello_timer = self._loop().call_later(HELLO_CHECK, self._check_hello)

    def _check_hello(self) -> None:
        """The first HELLO of this connection unanswered for ``HELLO_CHECK``:
        if a node has meanwhile answered a ping of ours as from a stranger
        (RESET), the HELLO went to a node that died unread: HELLO was this
        connection's first frame, and a node reads a connection's frames in
        order (one that is joining holds them all, unanswered). Say it
        again. Otherwise ping, so a node that does not know us says so.
        (Until welcomed, only this finds a lost HELLO: the keeper's pings
        need a welcome. A HELLO said again after a restart has frames sent
        before it whose RESETs prove nothing, and is not checked: the
        keeper's pings and its RESETs find that restart.)"""
        self._hello_timer = None
        if not self._hello_outstanding or self.closed or self._epoch != 1:
            return
        if self._reset_after_hello:
            log.warning(
                "node at %s never answered our HELLO (it died unread): saying it again",
                self._client.endpoint,
            )
            self._client.counters["hellos_lost"] += 1
            # (the same epoch: nothing was sent before it)
            self._hello(self._hello_told, again=True)
            return
        self.ping()
        self._hello_timer = self._loop().call_later(HELLO_CHECK, self._check_hello)

    # -- the node drains ----------------------------------------------------
    def _on_drain(self, incarnation: str) -> None:
        """The node is going away (a drain: SIGTERM, ``znode drain``): give
        back what was prefetched and every credit, hold new requests, say
        MOVING once nothing of ours is unanswered, then ping until another
        node (the restarted one) welcomes us: the held requests go to it."""
        self._hello_outstanding = False  # (a HELLO answered with DRAIN)
        if self._moving:
            return
        self._moving, self._moved = True, False
        log.info("node at %s drains: holding requests for the next node", self._client.endpoint)
        self._client.counters["node_drains"] += 1
        self._queue_all(self.flow.drain(time.monotonic()))
        self._check_moved()

    def _check_moved(self) -> None:
        """MOVING goes once every withdrawal is acknowledged and every request
        sent before the drain is answered: the node then knows this connection
        is quiet, and has answered everything it asked."""
        if not self._moving or self._moved or self.closed or self.flow.withdrawals:
            return
        if any(not p.held for p in self._pending.values()):
            return
        self._moved = True
        self._queue((MsgType.MOVING, ()))
        self._ping_while_moving()

    def _ping_while_moving(self) -> None:
        self._moving_timer = None
        if not self._moving or self.closed:
            return
        self.ping()
        self._moving_timer = self._loop().call_later(MOVING_PING, self._ping_while_moving)

    def _end_moving(self) -> None:
        """A node welcomed us after a drain: the held requests are sent now
        (after the HELLO, so the node knows our session)."""
        self._moving = self._moved = False
        if self._moving_timer is not None:
            self._moving_timer.cancel()
            self._moving_timer = None
        for pending in self._pending.values():
            if pending.held:
                pending.held = False
                pending.epoch = self._epoch

    def _on_welcome(
        self, node_id: str, node_tag: str, incarnation: str, lease: float, max_frame: int
    ) -> None:
        if not self._hello_outstanding and incarnation == self.incarnation:
            # A second answer to a HELLO said twice (``_check_hello`` took
            # it for lost, and the node was only slow): already welcomed.
            return
        self._hello_outstanding = False
        held: list[Message] = []
        if self._moving:
            self._end_moving()
            held, self._held = self._held, []
        previous, self.incarnation = self.incarnation, incarnation
        # A HELLO this connection had to say again, on its own finding, to
        # the node it knew: the node lost this whole process's session. Tell
        # the process. (A node of another incarnation is a restart, which
        # the process may have heard of already through another connection:
        # not a lost session, and nothing prefetched must be forgotten.)
        lost = self._epoch > 1 and not self._hello_told and previous == incarnation
        self._client.on_welcome(self, node_tag, incarnation, float(lease), max_frame, lost)
        if not self._welcomed.done():
            self._welcomed.set_result(None)
        if self._epoch == 1:
            self._queue_all(held)
            return
        # Everything the node knew of this connection is gone. Requests sent
        # before this HELLO and still unanswered went to a node that died.
        if incarnation == previous:
            # Same node, session dropped (lease lapsed): it counted what it
            # had handed us as lost.
            self.flow.forget_prefetched()
        regrants = self.flow.rewelcomed()
        for req, pending in list(self._pending.items()):
            if pending.epoch >= self._epoch or pending.future.done():
                continue
            if pending.message[0] in _IDEMPOTENT:
                pending.epoch = self._epoch
                self._queue(pending.message)
            else:
                # at-most-once: never send twice what the old node may have
                # delivered; whether it did, nobody can tell (it may have
                # relayed it to the channel's owner before it died)
                self._pending.pop(req, None)
                pending.future.set_exception(
                    SendOutcomeUnknown(
                        f"the node at {self._client.endpoint} restarted (or dropped this "
                        "process's session) before it answered: the message may or may not "
                        "have been taken"
                    )
                )
        self._queue_all(regrants)
        self._queue_all(held)

    # -- socket I/O -------------------------------------------------------
    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loopref()
        if loop is None:  # pragma: no cover - only if used after its loop died
            raise RuntimeError("zchannels connection used after its event loop was closed")
        return loop

    def _queue_all(self, messages: list[Message]) -> None:
        for message in messages:
            self._queue(message)

    def _queue(self, message: Message) -> None:
        """Send ``message``: at once when traffic is sparse (latency), else
        with everything else queued in this loop iteration (throughput).
        Consumption not yet reported goes first, so the node has it before
        anything this connection sends next (a send after a receive finds
        the room that receive made)."""
        flow = self.flow
        if flow.consumed or flow.bundles_taken:
            self._out.extend(flow.report())
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
        if self.flow.unreported:
            self._out.extend(self.flow.report())
        # (a report timer still armed stays: it fires with nothing to report,
        # or with what was taken since, sooner than a new one would; arming
        # and cancelling one per message cost every receive-then-send a
        # timer)
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
            if len(frame) >= YIELD_FRAME_BYTES and _yield is not None:
                _yield()  # (before a burst of work: YIELD_FRAME_BYTES)
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
            wake, out = self.flow.deliver(f[0], f[1], time.monotonic())
            if wake:
                self._wake(f[0], wake)
            self._queue_all(out)
        elif mtype == MsgType.DELIVER_MANY or mtype == MsgType.DELIVER_BUNDLE:
            wakes, out = self.flow.deliver_many(
                f[0], f[1], time.monotonic(), mtype == MsgType.DELIVER_BUNDLE
            )
            waiters_of = self._waiters.get
            states = self.flow.channels
            for channel in wakes:
                # (``_wake`` of one, unrolled: once per member of a group_send)
                waiters = waiters_of(channel)
                if waiters:
                    state = states[channel]
                    while waiters:
                        waiter = waiters.popleft()
                        state.waiting -= 1
                        if not waiter.done():
                            waiter.set_result(None)
                            break
            if out:
                self._queue_all(out)
        elif mtype == MsgType.ACK and f[0] in self.flow.withdrawals:
            self._queue_all(self.flow.withdrawal_acked(f[0]))
            if not self.flow.withdrawals and self._drained is not None:
                if not self._drained.done():
                    self._drained.set_result(None)
            if self._moving:
                self._check_moved()
        elif mtype in (MsgType.ACK, MsgType.STATUS_REPLY, MsgType.GROUP_INFO_REPLY):
            pending = self._pending.pop(f[0], None)
            if pending is not None and not pending.future.done():
                pending.future.set_result(f[1])
            if self._moving:
                self._check_moved()
        elif mtype == MsgType.REVOKE:
            self._queue_all(self.flow.revoke(f[0]))
        elif mtype == MsgType.FLUSHED:
            self._queue_all(self.flow.flushed(f[0]))
        elif mtype == MsgType.ERROR:
            self._on_error(*f)
            if self._moving:
                self._check_moved()
        elif mtype == MsgType.WELCOME:
            self._on_welcome(*f)
        elif mtype == MsgType.DRAIN:
            self._on_drain(*f)
        elif mtype == MsgType.RESET:
            if self._hello_outstanding:
                self._reset_after_hello = True
            else:
                self.rehello()
        elif mtype == MsgType.PONG:
            if f[0] != self.incarnation:
                self.rehello()
        else:
            self._client.counters["unexpected_type"] += 1

    def _on_error(self, req: int, code: int, detail: str) -> None:
        if code == ErrorCode.UNKNOWN_SESSION:
            # The node did not process it: HELLO again, then send it again.
            # (A reserved send, req 0, has no copy kept: it is lost, and the
            # node that refused it counted it, ``dead_owner``: once.)
            self.rehello()
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
        elif code == ErrorCode.OUTCOME_UNKNOWN:
            pending.future.set_exception(SendOutcomeUnknown(detail))
        else:
            pending.future.set_exception(ProtocolError(f"node refused request: {detail}"))

    # -- housekeeping -----------------------------------------------------
    def _arm_sweep(self) -> None:
        if self._sweep_handle is None and not self.closed:
            self._sweep_handle = self._loop().call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        self._sweep_handle = None
        if self.closed:
            return
        now = time.monotonic()
        self._queue_all(self.flow.sweep(now))
        for channel in [c for c, w in self._waiters.items() if not w]:
            del self._waiters[channel]
        timeout = self._client.config.request_timeout
        for req, pending in list(self._pending.items()):
            if now - pending.sent_at > timeout and not pending.future.done():
                self._forget_request(req)
                pending.future.set_exception(
                    NodeUnavailable(
                        f"no answer from the node at {self._client.endpoint} in {timeout:g} s"
                    )
                )
        if self._moving:
            self._check_moved()
        if self.flow.channels or self._pending or self.flow.reservations or self.flow.bundles:
            self._arm_sweep()

    # -- closing ----------------------------------------------------------
    async def _until_loop_closes(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if not self._orphaned:
                await self.aclose()

    def _give_back_all(self) -> None:
        """Every receiver here stops; what was prefetched goes back."""
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not self._orphaned:
                    waiter.cancel()
        self._waiters.clear()
        for state in self.flow.channels.values():
            state.waiting = 0
        self._queue_all(self.flow.give_back_all(time.monotonic()))

    async def aclose(self, final: bool = False) -> None:
        """Give back every prefetched message, wait until the node has them
        back (deliveries crossing the withdrawal go back too), say BYE, close
        the socket. ``final``: this process's session ends with this
        connection."""
        if self.closed:
            return
        self._give_back_all()
        try:
            if self.flow.withdrawals:
                self._drained = self._loop().create_future()
                await asyncio.wait_for(asyncio.shield(self._drained), CLOSE_TIMEOUT)
            if not self._moving:  # (a draining node forgets us anyway)
                await asyncio.wait_for(self.request(MsgType.BYE, int(final)), CLOSE_TIMEOUT)
        except (TimeoutError, NodeUnavailable, ProtocolError, asyncio.CancelledError):
            pass
        self.close_now()

    def orphan(self, background: asyncio.AbstractEventLoop) -> None:
        """This connection's loop was closed without closing it (by hand,
        without asyncio.run): finish closing on ``background`` — give back
        what it prefetched, in order, and say BYE — so nothing is lost and
        no other loop is touched. Called with the old loop closed, so no
        thread uses the socket any more."""
        if self.closed or self._orphaned:
            return
        self._orphaned = True
        self._finalizer.detach()  # the socket is ours to close, not the GC's
        # The sentinel would try to run on the dead loop when collected: end it.
        try:
            self._sentinel.aclose().send(None)
        except (StopIteration, RuntimeError):
            pass
        for pending in self._pending.values():
            pending.future = background.create_future()  # nobody awaits it now
        self._sweep_handle = None
        self._flush_scheduled = False
        self._report_timer = None
        self._moving_timer = None
        self._hello_timer = None
        self._loopref = weakref.ref(background)

        def start() -> None:
            background.add_reader(self._fd, self._on_readable)
            background.create_task(self.aclose())

        background.call_soon_threadsafe(start)

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
        if self._moving_timer is not None:
            self._moving_timer.cancel()
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self._report_timer is not None:
            self._report_timer.cancel()
            self._report_timer = None
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(NodeUnavailable("connection closed"))
        self._pending.clear()
        if self._orphaned:
            _close_socket(self._sock)
        else:
            self._finalizer()
        self._client.forget(self)


def _close_socket(sock: zmq.Socket[bytes]) -> None:
    if not sock.closed:
        sock.close()
