"""The receive/credit/capacity accounting, explored over arbitrary interleavings.

Two pure halves meet here with nothing in between but two ordered pipes per
connection: a process's ``Flow`` (zchannels.flow) for each of two connections
and the node's ``Queues`` (zchannels.node.queues). Hypothesis drives sends,
receives that start, take, or are cancelled, idle sweeps, consumption
reports, flushes, closes, a fork (a connection abandoned with whatever it
held) and every possible ordering of the messages in flight, then checks what
the Channels spec and our contract promise:

- no message is delivered twice, none is lost silently: every accepted
  message is taken by a receive, flushed, or counted as lost;
- a lone receiver takes messages in send order;
- capacity is exact: once everything in flight has arrived, the channel
  counts exactly the messages no receive() has taken, so a send is refused
  if and only if ``capacity`` of them are held.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from zchannels.node.queues import Queues

from zchannels.flow import IDLE_RETURN, Flow
from zchannels.protocol import Message, MsgType

CH = "ch"
CAPACITY = 4


@dataclass
class Conn:
    cid: bytes
    flow: Flow = field(default_factory=Flow)
    to_node: deque[Message] = field(default_factory=deque)
    to_client: deque[Message] = field(default_factory=deque)
    receiving: bool = False  # a receive() is in progress (waiting or woken)
    taken: list[int] = field(default_factory=list)
    closing: bool = False
    gone: bool = False  # closed (after BYE) or abandoned by a fork


class World:
    def __init__(self) -> None:
        self.node = Queues()
        self.conns = [Conn(b"c0"), Conn(b"c1")]
        self.now = 0.0
        self.sent = itertools.count()
        self.accepted: list[int] = []
        self.refused = 0
        self.flushed: set[int] = set()
        self.taken_unreported = 0  # by connections that died before reporting

    # -- what users do --------------------------------------------------
    def send(self) -> None:
        n = next(self.sent)
        result = self.node.put(CH, b"%d" % n, self.now + 1e6, CAPACITY, self.now)
        if result is False:
            self.refused += 1
            return
        self.accepted.append(n)
        if result is not True:
            self._deliver([result])  # type: ignore[list-item]

    def start(self, c: Conn) -> None:
        if c.gone or c.closing or c.receiving:
            return
        c.receiving = True
        c.flow.enter(CH).waiting += 1
        c.to_node.extend(c.flow.replenish(CH))

    def take(self, c: Conn) -> None:
        if not c.receiving:
            return
        state = c.flow.channels[CH]
        payload = c.flow.take(CH, self.now)
        if payload is None:
            return
        state.waiting -= 1
        c.taken.append(int(payload))
        c.receiving = False
        c.to_node.extend(c.flow.leave(CH, self.now, cancelled=False))
        c.to_node.extend(c.flow.replenish(CH))

    def cancel(self, c: Conn) -> None:
        if not c.receiving:
            return
        c.flow.channels[CH].waiting -= 1
        c.receiving = False
        c.to_node.extend(c.flow.leave(CH, self.now, cancelled=True))

    def sweep(self, c: Conn) -> None:
        if c.gone:
            return
        self.now += IDLE_RETURN * 2
        c.to_node.extend(c.flow.sweep(self.now))

    def report(self, c: Conn) -> None:
        if not c.gone:
            c.to_node.extend(c.flow.report())

    def flush(self) -> None:
        queued = {int(item[1]) for ch in self.node.channels.values() for item in ch.items}
        in_flight = {
            seq for ch in self.node.channels.values() for f in ch.flight.values() for seq in f
        }
        self.flushed |= queued | self._payloads_of(in_flight)
        for cid in self.node.clear(""):
            self._conn(cid).to_client.append((MsgType.FLUSHED, ("",)))

    def close(self, c: Conn) -> None:
        if c.gone or c.closing:
            return
        if c.receiving:
            self.cancel(c)
        c.closing = True
        c.to_node.extend(c.flow.give_back_all(self.now))
        self._maybe_bye(c)

    def drain(self, c: Conn) -> None:
        """The node drains (DRAIN): the connection gives everything back and
        holds; receives wait on."""
        if c.gone or c.closing:
            return
        c.to_node.extend(c.flow.drain(self.now))

    def welcome(self, c: Conn) -> None:
        """A node welcomes a connection that has moved (every withdrawal
        acknowledged: it said MOVING). The queues stand for the next node,
        which was handed everything the drained one held."""
        if c.gone or not c.flow.moving or c.flow.withdrawals:
            return
        c.to_node.extend(c.flow.rewelcomed())

    def fork(self, c: Conn) -> None:
        """The process forked and this connection's process image died with
        what it held: the node must count it, never lose it silently."""
        if c.gone:
            return
        # taken by a receive() that returned, not yet reported: the node
        # counts them lost too (the process died with them, in its hands)
        self.taken_unreported += sum(r[1] for r in c.flow.consumed.values()) + sum(
            r[2] for m in c.to_node if m[0] == MsgType.CONSUMED for r in m[1][0]
        )
        c.gone = True
        c.receiving = False
        c.to_client.clear()
        c.to_node.clear()
        self.node.drop_conn(c.cid, self.now)

    # -- the network ----------------------------------------------------
    def to_node(self, c: Conn) -> None:
        if not c.to_node:
            return
        mtype, f = c.to_node.popleft()
        q = self.node
        if mtype == MsgType.RECV:
            self._deliver(q.grant(c.cid, f[0], f[1], self.now))
        elif mtype == MsgType.RETURN:
            req, channel, items, withdraw = f
            self._deliver(
                q.give_back(c.cid, channel, [tuple(i) for i in items], self.now, bool(withdraw))
            )
            if withdraw:
                c.to_client.append((MsgType.ACK, (req, 1)))
        elif mtype == MsgType.CONSUMED:
            for report in f[0]:
                q.consumed(c.cid, *report)
        elif mtype == MsgType.BYE:
            q.drop_conn(c.cid, self.now)
            c.gone = True
        else:  # pragma: no cover - the model sends nothing else
            raise AssertionError(mtype)

    def to_client(self, c: Conn) -> None:
        if not c.to_client or c.gone:
            return
        mtype, f = c.to_client.popleft()
        flow = c.flow
        if mtype == MsgType.DELIVER:
            _wake, out = flow.deliver(f[0], f[1], self.now)
            c.to_node.extend(out)
        elif mtype == MsgType.ACK:
            c.to_node.extend(flow.withdrawal_acked(f[0]))
        elif mtype == MsgType.FLUSHED:
            flow.flushed(f[0])
        if c.closing:
            self._maybe_bye(c)

    def _maybe_bye(self, c: Conn) -> None:
        # as Connection.aclose: BYE once every withdrawal is acknowledged
        if c.closing and not c.flow.withdrawals and not any(m[0] == MsgType.BYE for m in c.to_node):
            c.to_node.extend(c.flow.report())
            c.to_node.append((MsgType.BYE, (0, 1)))

    def _deliver(self, deliveries: list[Any]) -> None:
        for cid, channel, items in deliveries:
            self._conn(cid).to_client.append((MsgType.DELIVER, (channel, [list(i) for i in items])))

    def _conn(self, cid: bytes) -> Conn:
        return next(c for c in self.conns if c.cid == cid)

    def _payloads_of(self, seqs: set[int]) -> set[int]:
        """Payloads (message numbers) the node handed out under ``seqs``."""
        found: set[int] = set()
        for c in self.conns:
            for m in c.to_client:
                if m[0] == MsgType.DELIVER:
                    found |= {int(p) for p, _t, s in m[1][1] if s in seqs}
            state = c.flow.channels.get(CH)
            if state is not None:
                found |= {int(p) for p, _d, s in state.buffer if s in seqs}
            for m in c.to_node:
                if m[0] == MsgType.RETURN:
                    found |= {int(p) for p, _t, s in m[1][2] if s in seqs}
        return found

    # -- quiescence -----------------------------------------------------
    def settle(self) -> None:
        """Every receive is cancelled and every message in flight arrives."""
        for c in self.conns:
            self.cancel(c)
        for _ in range(200):
            moved = False
            for c in self.conns:
                self.report(c)
                while c.to_node or (c.to_client and not c.gone):
                    self.to_client(c)
                    self.to_node(c)
                    moved = True
                if not c.gone:
                    self.now += IDLE_RETURN * 2
                    c.to_node.extend(c.flow.sweep(self.now))
                    moved = moved or bool(c.to_node)
            if not moved:
                return
        raise AssertionError("the model never settled")


def held_by_clients(world: World) -> list[int]:
    out = []
    for c in world.conns:
        state = c.flow.channels.get(CH)
        if state is not None and not c.gone:
            out += [int(p) for p, _d, _s in state.buffer]
    return out


# Common steps often, the ones that end a connection (close, fork) or wipe
# the channel (flush) rarely, so most runs keep both connections busy.
OPS = [
    *["send"] * 4,
    *["start", "take", "cancel", "report"] * 2,
    *["to_node", "to_client"] * 6,
    "sweep",
    "drain",
    "welcome",
    "flush",
    "close",
    "fork",
]
step = st.tuples(st.sampled_from(OPS), st.integers(0, 1))


def run(ops: list[tuple[str, int]]) -> World:
    world = World()
    for op, i in ops:
        c = world.conns[i]
        if op == "send":
            world.send()
        elif op in ("flush",):
            world.flush()
        else:
            getattr(world, op)(c)
    return world


@settings(max_examples=400, deadline=None)
@given(st.lists(step, max_size=120))
def test_no_loss_no_duplicate_fifo_exact_capacity(ops: list[tuple[str, int]]) -> None:
    world = run(ops)
    world.settle()
    node = world.node
    taken = [n for c in world.conns for n in c.taken]
    assert len(taken) == len(set(taken)), "a message was taken twice"
    receivers = [c for c in world.conns if c.taken]
    if len(receivers) == 1:  # (competing consumers share no order)
        assert receivers[0].taken == sorted(receivers[0].taken), "taken out of send order"
    queued = [int(item[1]) for ch in node.channels.values() for item in ch.items]
    lost = node.counters.dropped_receiver_gone
    accounted = set(taken) | set(queued) | world.flushed
    missing = set(world.accepted) - accounted
    # whatever is not accounted for was held by a connection that went away,
    # and the node counted exactly that many
    assert len(missing) + world.taken_unreported == lost, f"{len(missing)} missing, {lost} lost"
    assert set(taken) <= set(world.accepted)
    # exact capacity, at rest: the node counts what no receive() has taken
    assert node.held(CH) == len(queued) + len(held_by_clients(world))
    free = CAPACITY - node.held(CH)
    for _ in range(free):
        before = len(world.accepted)
        world.send()
        assert len(world.accepted) == before + 1, "refused a send with room"
    before = len(world.accepted)
    world.send()
    assert len(world.accepted) == before, "accepted a send past capacity"


def test_a_receive_then_a_send_find_the_room_it_made() -> None:
    """Issue 10, defect 1, in the pure model: capacity 4, fill it, one
    receive takes one (the rest is prefetched), one send fits, the next is
    refused — prefetched messages count until taken."""
    world = World()
    c = world.conns[0]
    for _ in range(CAPACITY):
        world.send()
    world.send()
    assert world.refused == 1
    world.start(c)
    for _ in range(4):
        world.to_node(c)
        world.to_client(c)
    assert len(c.flow.channels[CH].buffer) == CAPACITY, "all prefetched"
    world.take(c)
    world.report(c)  # (the shell sends it before the next message)
    world.to_node(c)
    world.to_node(c)
    world.send()
    assert world.refused == 1
    world.send()
    assert world.refused == 2, "a send past capacity was accepted"


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=80), st.integers(0, 1))
def test_a_drained_connection_holds_nothing_once_its_withdrawals_are_acknowledged(
    ops: list[tuple[str, int]], i: int
) -> None:
    """Issue 13, graceful drain: after DRAIN, once the node has acknowledged
    every withdrawal (when the connection says MOVING), the connection holds
    no message and no credit, the node has nothing in flight to it, and
    nothing it is sent from then on is taken in or granted until a WELCOME."""
    world = run(ops)
    c = world.conns[i]
    if c.gone or c.closing:
        return
    world.drain(c)
    for _ in range(500):  # the pipes carry everything in flight, both ways
        if not (c.to_node or c.to_client):
            break
        world.to_client(c)
        world.to_node(c)
    assert not c.flow.withdrawals
    state = c.flow.channels.get(CH)
    assert state is None or (not state.buffer and state.credit == 0)
    assert c.cid not in world.node.channels[CH].flight if CH in world.node.channels else True
    assert CH not in world.node.channels or c.cid not in world.node.channels[CH].credits
    # a receive that starts now grants nothing until a node welcomes it
    world.start(c)
    assert not [m for m in c.to_node if m[0] == MsgType.RECV]
    world.welcome(c)
    if c.receiving:
        assert [m for m in c.to_node if m[0] == MsgType.RECV], "no credit after the welcome"


def test_a_group_message_to_a_moving_connection_goes_back_and_wakes_nobody() -> None:
    """``deliver_many`` takes a fast path for members with a receiver
    waiting; a connection whose node drains (``moving``) must still give
    every copy back, as ``deliver`` does for one channel."""
    flow = Flow()
    channels = ["asgi|specific.n.s!1", "asgi|specific.n.s!2"]
    for channel in channels:
        state = flow.enter(channel)
        state.waiting = 1  # a receive() waits on it
        flow.replenish(channel)
    wakes, _ = flow.deliver_many(channels, [b"m1", 60.0, 1], 0.0)
    assert wakes == [(channels[0], 1), (channels[1], 1)]
    for channel in channels:
        assert flow.take(channel, 0.1) == b"m1"
    flow.drain(0.2)
    for req in list(flow.withdrawals):  # the node has every withdrawal
        flow.withdrawal_acked(req)
    assert flow.moving and not flow.draining
    wakes, out = flow.deliver_many(channels, [b"m2", 60.0, 2], 0.3)
    assert wakes == []
    returned = [m for m in out if m[0] == MsgType.RETURN]
    assert sorted(m[1][1] for m in returned) == channels
    assert all(m[1][2] == [[b"m2", 60.0, 2]] for m in returned)
    assert all(not flow.channels[c].buffer for c in channels if c in flow.channels)
