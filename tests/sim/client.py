"""A simulated client process: the client protocol as ``zchannels.connection``
and ``zchannels.client`` speak it, with no socket, thread or clock.

Owns: one process's session with its node (HELLO/WELCOME, epochs, RESET and
UNKNOWN_SESSION, the lease ping every lease/3, memberships re-asserted after
a node restart, a drain: DRAIN, give everything back, MOVING once answered,
hold new requests and ping until a node welcomes it), its requests in
flight (request ids, ACK/ERROR, the request timeout, SENDs never repeated
after a restart but counted lost), its
producers (one send at a time, as a coroutine awaiting ``send()`` would;
reserved sends go without waiting) and consumers (``receive()`` in a loop,
cancellable while waiting or just woken). The receive accounting (credit,
prefetch, RETURN when idle, CONSUMED reports, reservations) is the real
``zchannels.flow.Flow``. Everything observable goes to the ``History``.

The world calls ``on_frame``, ``on_timer`` and the workload methods with
``now``, then ``flush(now)`` to take the frame to send. Timers are asked of
the world through ``Port.timer``.

What differs from the real shell, on purpose: one connection per process
(the real layer has one per event loop; they behave alike towards the node);
a woken receiver runs ``resume_delay`` later (an event-loop iteration, so a
cancel can land between wake and take, as ``Connection.abandon`` handles).
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from zchannels.flow import Flow
from zchannels.protocol import FEATURE_BUNDLE_REPORTS, ErrorCode, Message, MsgType

from .check import History, MsgKey

#: as zchannels.connection
REPORT_DELAY = 0.001
SWEEP_INTERVAL = 0.25
MOVING_PING = 0.05
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
#: A membership's lifetime (the layer's default ``group_expiry``, 1 day).
GROUP_EXPIRY = 86400.0


class Port(Protocol):
    """What a client needs from the world."""

    def timer(self, cid: str, at: float, what: str, arg: str) -> None: ...


def payload_of(producer: str, seq: int) -> bytes:
    """A numbered message, encoded as the layer encodes a plain dict."""
    packed: bytes = msgpack.packb({"p": producer, "s": seq}, use_bin_type=True)
    return packed


def key_of(payload: bytes) -> MsgKey | None:
    try:
        body = msgpack.unpackb(payload, raw=False)
    except Exception:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("p"), str):
        return None
    seq = body.get("s")
    return (body["p"], seq) if isinstance(seq, int) else None


@dataclass(slots=True)
class Pending:
    message: Message
    epoch: int
    sent_at: float
    kind: str
    key: MsgKey | None = None  # the message of a SEND or GROUP_SEND
    #: the client's node was frozen, dead or restarted while this waited:
    #: the answer-time bound does not apply
    exempt: bool = False
    #: made while the node drained: held here, not sent (it goes to the
    #: next node after its WELCOME)
    held: bool = False
    #: when a held request went out (the answer-time bound counts from then)
    asked_at: float | None = None


@dataclass(slots=True)
class Job:
    kind: str  # "send" or "group_send"
    target: str  # wire channel or group
    capacity: int
    gap: float  # seconds to wait after it before the next job


@dataclass(slots=True)
class Consumer:
    channel: str
    #: "idle" (not in receive()), "waiting", "woken" (a resume is due),
    #: "processing" (took one; the next receive() is due)
    state: str = "idle"
    #: keep receiving (False: stopped by a cancel with no restart)
    active: bool = True
    proc: float = 0.0  # seconds of work per message taken
    generation: int = 0


@dataclass(slots=True)
class Counters:
    lost_in_node_restart: int = 0  # as zchannels.client's counter of that name
    unexpected_type: int = 0


class SimClient:
    def __init__(
        self,
        port: Port,
        history: History,
        cid: str,
        node: str,
        rng: random.Random,
        *,
        session: str,
        expiry: float,
        request_timeout: float,
        now: float,
    ) -> None:
        self.port = port
        self.history = history
        self.cid = cid
        self.node = node  # the address of the node this process talks to
        self.rng = rng
        self.session = session
        self.conn = f"{session}/0".encode()
        self.expiry = expiry
        self.request_timeout = request_timeout
        self.pid = 1000 + int.from_bytes(session.encode()[:2], "big")
        self.dead = False
        self.died_at = float("inf")
        self._req = itertools.count(1)
        self.flow = Flow(self._req)
        self.pending: dict[int, Pending] = {}
        #: withdrawal (RETURN withdraw=1) request id -> (sent at, exempt)
        self.withdraw_sent: dict[int, list[Any]] = {}
        self.epoch = 0
        self.hello_outstanding = False
        self.hello_at = 0.0
        self.hello_exempt = False
        self.incarnation: str | None = None
        self.node_tag: str | None = None
        self.lease = 3.0
        self.memberships: dict[tuple[str, str], int] = {}  # (group, channel) -> capacity
        self.counters = Counters()
        self.consumers: dict[str, Consumer] = {}
        self.jobs: deque[Job] = deque()
        self.producing = False  # a job is in flight or its gap runs
        self.seq = itertools.count(1)
        self.names = itertools.count()
        self.out: list[Message] = []
        self.report_due = False
        #: the client's node is frozen or down now (set by the world, for the
        #: answer-time bound only: the client itself cannot know)
        self.node_down = False
        #: messages this process took, and how many of them the node was
        #: told of (CONSUMED handled while it still knew the connection)
        self.taken = 0
        self.reported = 0
        self.gone_seen = False
        #: the node drains (DRAIN): requests wait in ``held`` for the next
        #: WELCOME; ``moved``: MOVING was sent (as zchannels.connection)
        self.moving = False
        self.moved = False
        self.held: list[Message] = []
        self._moving_gen = 0
        #: DRAINs this process was told (each moved it once), and the
        #: requests and posts it held meanwhile
        self.drains = 0
        self.held_total = 0
        self._hello(now)
        port.timer(cid, now + SWEEP_INTERVAL, "sweep", "")

    # -- the world's view ----------------------------------------------------
    def new_channel(self) -> str | None:
        """A name new_channel() would make (None before WELCOME)."""
        if self.node_tag is None:
            return None
        from zchannels.names import specific_name

        return specific_name("specific", self.node_tag, self.session, next(self.names))

    def exempt_all(self) -> None:
        for p in self.pending.values():
            p.exempt = True
        for w in self.withdraw_sent.values():
            w[1] = True
        self.hello_exempt = True

    def overdue(self, now: float, bound: float) -> list[str]:
        """Requests unanswered for longer than ``bound`` that the bound covers."""
        late = [
            f"{self.cid} {p.kind} req {req} sent {p.sent_at:.4f}"
            for req, p in self.pending.items()
            if not p.exempt
            and not p.held
            and now - (p.sent_at if p.asked_at is None else p.asked_at) > bound
        ]
        late += [
            f"{self.cid} withdrawal req {req} sent {w[0]:.4f}"
            for req, w in self.withdraw_sent.items()
            if not w[1] and now - w[0] > bound
        ]
        if self.hello_outstanding and not self.hello_exempt and now - self.hello_at > bound:
            late.append(f"{self.cid} HELLO sent {self.hello_at:.4f}")
        return late

    def idle(self) -> bool:
        """Nothing in flight or waiting to be sent."""
        return (
            not self.pending
            and not self.withdraw_sent
            and not self.jobs
            and not self.producing
            and not self.hello_outstanding
            and not self.moving
            and not self.held
        )

    # -- sending frames ------------------------------------------------------
    def _queue(self, message: Message) -> None:
        if self.flow.unreported:
            self.out.extend(self.flow.report())
        if message[0] == MsgType.RETURN and message[1][3]:
            self.withdraw_sent[message[1][0]] = [self._now, self.node_down]
        self.out.append(message)

    def _queue_all(self, messages: list[Message]) -> None:
        for m in messages:
            self._queue(m)

    def flush(self, now: float) -> list[Message]:
        """The frame this step sends (empty: nothing)."""
        if self.dead:
            self.out.clear()
            return []
        if self.out:
            if self.flow.unreported:
                self.out.extend(self.flow.report())
            out, self.out = self.out, []
            return out
        if self.flow.unreported and not self.report_due:
            self.report_due = True
            self.port.timer(self.cid, now + REPORT_DELAY, "report", "")
        return []

    _now = 0.0

    def _request(
        self,
        mtype: MsgType,
        fields: tuple[Any, ...],
        kind: str,
        now: float,
        key: MsgKey | None = None,
    ) -> int:
        req = next(self._req)
        message: Message = (mtype, (req, *fields))
        held = self.moving
        self.pending[req] = Pending(message, self.epoch, now, kind, key, self.node_down, held)
        if held:
            self.held.append(message)
            self.held_total += 1
        else:
            self._queue(message)
        return req

    def _post(self, message: Message) -> None:
        """A message that wants no answer (connection.post): held while moving."""
        if self.moving:
            self.held.append(message)
            self.held_total += 1
        else:
            self._queue(message)

    def _hello(self, now: float) -> None:
        self.epoch += 1
        self.hello_outstanding = True
        self.hello_at = now
        self.hello_exempt = self.node_down
        policy = [float(self.expiry), FEATURE_BUNDLE_REPORTS, self.flow.reserved_sent()]
        self._queue((MsgType.HELLO, (self.session, self.pid, policy)))

    # -- workload ------------------------------------------------------------
    def enqueue(self, job: Job, now: float) -> None:
        self.jobs.append(job)
        if not self.producing:
            self._next_job(now)

    def _next_job(self, now: float) -> None:
        self._now = now
        if self.dead or self.producing or not self.jobs or self.incarnation is None:
            return  # (a send before WELCOME waits for it, as layer.send does)
        job = self.jobs.popleft()
        self.producing = True
        key = (self.cid, next(self.seq))
        payload = payload_of(*key)
        if job.kind == "send":
            self.history.sent(key, "send", job.target, now)
            if self.flow.use_reservation(job.target, now):
                self._queue((MsgType.SEND, (0, job.target, payload, job.capacity)))
                self.history.outcome(key, "accepted", now)
                self._job_done(job, now)
                return
            mark = self.flow.mark(job.target)
            req = self._request(MsgType.SEND, (job.target, payload, job.capacity), "send", now, key)
            self.pending[req].kind = f"send/{mark}"
        else:
            self.history.sent(key, "group", job.target, now)
            self._request(MsgType.GROUP_SEND, (job.target, payload), "group_send", now, key)
        self._job = job

    _job: Job | None = None

    def _job_done(self, job: Job, now: float) -> None:
        self.port.timer(self.cid, now + job.gap, "produce", "")

    def group_add(self, group: str, channel: str, capacity: int, now: float) -> None:
        self._now = now
        if self.dead:
            return
        self.memberships[(group, channel)] = capacity
        self._request(MsgType.GROUP_ADD, (group, channel, GROUP_EXPIRY, capacity), "group_add", now)
        self.history.group_added(group, channel, now)

    def group_discard(self, group: str, channel: str, now: float) -> None:
        self._now = now
        if self.dead:
            return
        self.memberships.pop((group, channel), None)
        self.history.group_discarded(group, channel, now)
        self._post((MsgType.GROUP_DISCARD, (0, group, channel)))

    def consume(self, channel: str, proc: float, now: float) -> None:
        """Start receiving ``channel`` in a loop (if not already)."""
        self._now = now
        if self.dead:
            return
        c = self.consumers.get(channel)
        if c is None:
            c = self.consumers[channel] = Consumer(channel, proc=proc)
        c.active = True
        c.proc = proc
        if c.state == "idle":
            self._receive(c, now)

    def cancel(self, channel: str, restart_after: float | None, now: float) -> None:
        """Cancel the receive() running on ``channel``; start another after
        ``restart_after`` seconds (None: stop)."""
        self._now = now
        c = self.consumers.get(channel)
        if self.dead or c is None:
            return
        if c.state in ("waiting", "woken"):
            state = self.flow.channels.get(channel)
            if c.state == "waiting" and state is not None:
                state.waiting -= 1
            # (woken: Connection.abandon wakes another waiter in its place;
            # this process has one receiver per channel)
            c.generation += 1
            c.state = "idle"
            self.flow.leave(channel, now)
        elif c.state == "processing":
            c.generation += 1
            c.state = "idle"
        c.active = restart_after is not None
        if restart_after is not None:
            self.port.timer(self.cid, now + restart_after, "recv", f"{c.generation}|{channel}")

    def die(self, now: float) -> None:
        self.dead = True
        self.died_at = now
        for p in self.pending.values():
            if p.key is not None:
                self.history.outcome(p.key, "unknown", now)
        self.pending.clear()
        self.withdraw_sent.clear()
        self.jobs.clear()
        self.held.clear()
        self.moving = False
        self.hello_outstanding = False

    # -- receiving (Connection.receive_step) -------------------------------------
    def _receive(self, c: Consumer, now: float) -> None:
        flow = self.flow
        channel = c.channel
        state = flow.enter(channel)
        while state.buffer:
            payload = flow.take(channel, now)
            if payload is not None:
                self.history.delivered(self.cid, channel, payload, now)
                self.taken += 1
                if flow.wants_credit(state):
                    self._queue_all(flow.replenish(channel))
                flow.leave(channel, now)
                c.state = "processing"
                c.generation += 1
                self.port.timer(self.cid, now + c.proc, "recv", f"{c.generation}|{channel}")
                return
        c.state = "waiting"
        state.waiting += 1
        if flow.wants_credit(state):
            self._queue_all(flow.replenish(channel))

    def _wake(self, channel: str, n: int, now: float) -> None:
        c = self.consumers.get(channel)
        state = self.flow.channels.get(channel)
        if n > 0 and c is not None and c.state == "waiting" and state and state.buffer:
            state.waiting -= 1
            c.state = "woken"
            c.generation += 1
            delay = self.rng.choice((0.0, 0.00005, 0.0002))
            self.port.timer(self.cid, now + delay, "recv", f"{c.generation}|{channel}")

    # -- what arrives --------------------------------------------------------
    def on_timer(self, what: str, arg: str, now: float) -> None:
        self._now = now
        if self.dead:
            return
        if what == "recv":
            gen, _, channel = arg.partition("|")
            c = self.consumers.get(channel)
            if c is None or c.generation != int(gen):
                return
            if c.state == "woken":
                # back in the receive() loop: the buffer is looked at again
                state = self.flow.channels[channel]
                c.state = "idle"
                state.users -= 1  # (_receive enters again)
                self._receive(c, now)
            elif c.state in ("processing", "idle") and c.active:
                c.state = "idle"
                self._receive(c, now)
        elif what == "produce":
            self.producing = False
            self._next_job(now)
        elif what == "report":
            self.report_due = False
            if self.flow.unreported and not self.out:
                self.out.extend(self.flow.report())
        elif what == "sweep":
            self._queue_all(self.flow.sweep(now))
            for req, p in list(self.pending.items()):
                if now - p.sent_at > self.request_timeout:
                    del self.pending[req]
                    self._resolve_failed(p, "timeout", now)
            if self.moving:
                self._check_moved(now)
            self.port.timer(self.cid, now + SWEEP_INTERVAL, "sweep", "")
        elif what == "mping":
            if self.moving and int(arg) == self._moving_gen:
                self._queue((MsgType.PING, ()))
                self.port.timer(self.cid, now + MOVING_PING, "mping", arg)
        elif what == "ping":
            if self.incarnation is not None:
                self._queue((MsgType.PING, ()))
                self.port.timer(self.cid, now + self.lease / 3, "ping", "")
        elif what == "reassert":
            for (group, channel), capacity in list(self.memberships.items()):
                self._request(
                    MsgType.GROUP_ADD,
                    (group, channel, GROUP_EXPIRY, capacity),
                    "group_add",
                    now,
                )

    def on_frame(self, messages: list[Message], now: float) -> None:
        self._now = now
        if self.dead:
            return
        for mtype, f in messages:
            self._dispatch(mtype, f, now)

    def _dispatch(self, mtype: MsgType, f: tuple[Any, ...], now: float) -> None:
        flow = self.flow
        if mtype == MsgType.DELIVER:
            wake, out = flow.deliver(f[0], f[1], now)
            if wake:
                self._wake(f[0], wake, now)
            self._queue_all(out)
        elif mtype == MsgType.DELIVER_MANY or mtype == MsgType.DELIVER_BUNDLE:
            wakes, out = flow.deliver_many(f[0], f[1], now, mtype == MsgType.DELIVER_BUNDLE)
            for channel in wakes:
                self._wake(channel, 1, now)
            self._queue_all(out)
        elif mtype == MsgType.ACK and f[0] in flow.withdrawals:
            self.withdraw_sent.pop(f[0], None)
            self._queue_all(flow.withdrawal_acked(f[0]))
            if self.moving:
                self._check_moved(now)
        elif mtype in (MsgType.ACK, MsgType.STATUS_REPLY, MsgType.GROUP_INFO_REPLY):
            p = self.pending.pop(f[0], None)
            if p is not None:
                self._resolve_ok(p, f[1], now)
            if self.moving:
                self._check_moved(now)
        elif mtype == MsgType.REVOKE:
            self._queue_all(flow.revoke(f[0]))
        elif mtype == MsgType.FLUSHED:
            self._queue_all(flow.flushed(f[0]))
        elif mtype == MsgType.ERROR:
            self._on_error(f[0], f[1], f[2], now)
            if self.moving:
                self._check_moved(now)
        elif mtype == MsgType.WELCOME:
            self._on_welcome(f[1], f[2], float(f[3]), now)
        elif mtype == MsgType.DRAIN:
            self._on_drain(now)
        elif mtype in (MsgType.RESET, MsgType.PONG):
            if mtype == MsgType.RESET or f[0] != self.incarnation:
                self._rehello(now)
        else:
            self.counters.unexpected_type += 1

    # -- the node drains (connection._on_drain, _check_moved, _end_moving) ----
    def _on_drain(self, now: float) -> None:
        """Give back what was prefetched and every credit, hold new requests,
        say MOVING once nothing of ours is unanswered, then ping until a
        node (the restarted one) welcomes us."""
        self.hello_outstanding = False  # (a HELLO answered with DRAIN)
        if self.moving:
            return
        self.moving, self.moved = True, False
        self.drains += 1
        self._queue_all(self.flow.drain(now))
        self._check_moved(now)

    def _check_moved(self, now: float) -> None:
        if not self.moving or self.moved or self.flow.withdrawals:
            return
        if any(not p.held for p in self.pending.values()):
            return
        self.moved = True
        self._queue((MsgType.MOVING, ()))
        self._moving_gen += 1
        self.on_timer("mping", str(self._moving_gen), now)  # (pings at once)

    def _end_moving(self, now: float) -> None:
        self.moving = self.moved = False
        self._moving_gen += 1
        for p in self.pending.values():
            if p.held:
                p.held = False
                p.epoch = self.epoch
                p.asked_at = now

    def _rehello(self, now: float) -> None:
        if not self.hello_outstanding:
            self._hello(now)

    def _on_welcome(self, node_tag: str, incarnation: str, lease: float, now: float) -> None:
        self.hello_outstanding = False
        held: list[Message] = []
        if self.moving:
            self._end_moving(now)
            held, self.held = self.held, []
        previous, self.incarnation = self.incarnation, incarnation
        lost = self.epoch > 1  # (one connection: it always finds out itself)
        first = self.node_tag is None
        self.node_tag, self.lease = node_tag, lease
        if first:
            self.port.timer(self.cid, now + lease / 3, "ping", "")
        if (previous is not None and previous != incarnation) or lost:
            self.port.timer(self.cid, now + 0.0001, "reassert", "")
        if self.epoch == 1:
            self._queue_all(held)
            self._next_job(now)
            return
        if incarnation == previous:
            self.flow.forget_prefetched()
        regrants = self.flow.rewelcomed()
        for req, p in list(self.pending.items()):
            if p.epoch >= self.epoch:
                continue
            if p.message[0] in _IDEMPOTENT:
                p.epoch = self.epoch
                self._queue(p.message)
            else:
                # at-most-once: the old node may have taken it (and relayed
                # it to its owner): SendOutcomeUnknown, as the layer raises
                del self.pending[req]
                self._resolve_failed(p, "its node restarted: outcome unknown", now)
        self.withdraw_sent.clear()  # (rewelcomed() forgot the withdrawals)
        self._queue_all(regrants)
        self._queue_all(held)
        for c in self.consumers.values():
            # a receiver waiting with no credit (rewelcomed re-grants only
            # what was granted; a waiter on a drained channel asks anew)
            state = self.flow.channels.get(c.channel)
            if c.state == "waiting" and state is not None and self.flow.wants_credit(state):
                self._queue_all(self.flow.replenish(c.channel))
        self._next_job(now)

    def _on_error(self, req: int, code: int, detail: str, now: float) -> None:
        if code == ErrorCode.UNKNOWN_SESSION:
            self._rehello(now)  # (a reserved send, req 0, is lost: its node counted it)
            p = self.pending.get(req)
            if p is not None:
                p.epoch = self.epoch
                self._queue(p.message)
            return
        p = self.pending.pop(req, None)
        if p is None:
            return
        if code == ErrorCode.CHANNEL_FULL and p.key is not None:
            self.history.outcome(p.key, "refused", now)
            self._after_request(p, now)
        else:
            self._resolve_failed(p, f"error {code} {detail}", now)

    def _resolve_ok(self, p: Pending, result: Any, now: float) -> None:
        if p.kind.startswith("send/") and p.key is not None:
            self.history.outcome(p.key, "accepted", now)
            if isinstance(result, int) and result > 0:
                channel = p.message[1][1]
                self.flow.reserved(channel, result, int(p.kind[5:]), now)
        elif p.kind == "group_send" and p.key is not None:
            self.history.outcome(p.key, "accepted", now, reached=int(result))
        elif p.kind == "group_add":
            self.history.group_add_acked(p.message[1][1], p.message[1][2], now)
        self._after_request(p, now)

    def _resolve_failed(self, p: Pending, why: str, now: float) -> None:
        if p.key is not None:
            self.history.outcome(p.key, "unknown", now)
        self.history.note(f"{self.cid} {p.kind} failed: {why}")
        self._after_request(p, now)

    def _after_request(self, p: Pending, now: float) -> None:
        if p.key is not None and self._job is not None:
            job, self._job = self._job, None
            self._job_done(job, now)
