"""The floor of any sidecar design: bare pyzmq through a do-nothing relay.

Ping-pong between two processes A and B (asyncio, drain-style reads, 100-byte
messages, no encoding) on ipc://

- directly, DEALER -> ROUTER (two hops per round trip, like "bare pyzmq"), and
- through a third process that only forwards frames (four hops, like any sidecar or
  broker: A -> relay -> B -> relay -> A), with no decoding, no queues, no logic at all.

Whatever a sidecar does per message comes on top of the second figure, so it bounds
what zchannels' sidecar ping-pong can reach on the machine.

``bench/run`` measures the relayed figure in the same run as every layer's ping-pong
(the "relay floor" column): services.py starts the relay (``python -m bench.relay_floor
relay ENDPOINT``) and the harness runs ``ROLES`` as A and B. ``python -m
bench.relay_floor`` on its own measures both figures, 5 interleaved runs of 5,000 round
trips each.

The same relay is the floor of ``group_send`` fan-out (scenarios 4a and 4b):
``FloorLayer`` is the least a layer can do for it through one relay, and the scenarios'
own producer and consumer roles run on it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from typing import Any, cast

import msgpack
import zmq

from bench.budget import Budget
from bench.control import Peer
from bench.cpu import Meter
from bench.scenarios import (
    BenchError,
    Metrics,
    Role,
    fanout_consumer,
    fanout_producer,
    pingpong_metrics,
)

ROUNDS = 5
ROUND_TRIPS = 5000
HELLO = b"hello"
"""A frame the relay sends back to its sender: once answered, the relay can route to it."""
STOP = b"stop"
FAN = b"F"
"""A group message for the fan-out floor: ``F group NUL payload``, sent by the relay to
every dealer that subscribed to the group."""
SUBSCRIBE = b"S"
"""``S group``: the sender holds members of the group (the relay echoes it back)."""
WARM = b"w" + b"x" * 99
PING = b"p" + b"x" * 99


def relay(endpoint: str) -> None:
    """Forward every frame from A to B and back (answer HELLO to its sender); nothing else."""

    async def run() -> None:
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a new A or B takes over its id at once
        sock.bind(endpoint)
        loop = asyncio.get_running_loop()

        #: group -> the dealers that hold members of it (the fan-out floor)
        subscribers: dict[bytes, list[bytes]] = {}

        def readable() -> None:
            while cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                ident, msg = sock.recv_multipart(zmq.NOBLOCK)
                kind = msg[:1]
                if kind == FAN:  # FAN group NUL payload: the frame as it is, to each
                    group = msg[1 : msg.index(b"\0")]
                    for dealer in subscribers.get(group, ()):
                        sock.send_multipart([dealer, msg], zmq.NOBLOCK)
                elif kind == SUBSCRIBE:  # SUBSCRIBE group: answered (group_add returns)
                    group = msg[1:]
                    dealers = subscribers.setdefault(group, [])
                    if ident not in dealers:
                        dealers.append(ident)
                    sock.send_multipart([ident, msg], zmq.NOBLOCK)
                elif msg == HELLO:
                    sock.send_multipart([ident, msg], zmq.NOBLOCK)
                else:
                    sock.send_multipart([b"B" if ident == b"A" else b"A", msg], zmq.NOBLOCK)

        loop.add_reader(sock.fileno(), readable)
        await asyncio.Event().wait()

    asyncio.run(run())


class _Dealer:
    """A DEALER read drain-style: the loop wakes on the socket's fd, then every queued
    frame is read without blocking (the fd is edge-triggered: read EVENTS after a send)."""

    def __init__(self, ident: bytes, endpoint: str) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, ident)
        self.sock.connect(endpoint)
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.sock.fileno(), self.readable)

    def readable(self) -> None:
        while cast(int, self.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            self.inbox.put_nowait(self.sock.recv(zmq.NOBLOCK))

    def send(self, data: bytes) -> None:
        self.sock.send(data)
        self.readable()

    async def recv(self) -> bytes:
        return await self.inbox.get()

    async def hello(self) -> None:
        self.send(HELLO)
        if await self.recv() != HELLO:
            raise BenchError("the relay did not answer hello")

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close(linger=0)
        self.ctx.term()


# --- in bench/run: A and B of the relay-floor ping-pong (the layer is the endpoint) ----


async def pingpong_responder(endpoint: str, peer: Peer, budget: Budget, meter: Meter) -> Metrics:
    b = _Dealer(b"B", endpoint)
    try:
        await b.hello()
        await peer.send("ready")
        measuring = False
        while True:
            msg = await b.recv()
            if msg == STOP:
                break
            if not measuring and msg == PING:
                measuring = True
                meter.mark("pingpong")
            b.send(msg)
        meter.mark("pingpong")
        await peer.send("bye")
    finally:
        b.close()
    return {}


async def pingpong_pinger(endpoint: str, peer: Peer, budget: Budget, meter: Meter) -> Metrics:
    await peer.recv()  # "ready": B is routable
    a = _Dealer(b"A", endpoint)
    try:
        await a.hello()

        async def round_trip(payload: bytes) -> None:
            a.send(payload)
            if await a.recv() != payload:
                raise BenchError("the pong is not the ping")

        warm_end = time.perf_counter() + budget.warm_s
        while time.perf_counter() < warm_end:
            await round_trip(WARM)
        latencies: list[float] = []
        meter.mark("pingpong")
        start = time.perf_counter()
        box_end = start + budget.box_s
        while len(latencies) < budget.max_messages:
            t0 = time.perf_counter()
            if t0 >= box_end:
                break
            await round_trip(PING)
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        meter.mark("pingpong")
        a.send(STOP)
        await peer.recv()  # "bye"
    finally:
        a.close()
    return pingpong_metrics(latencies, elapsed)


# --- in bench/run: the fan-out floor (scenarios 4a and 4b through the relay) ------------


class FloorLayer:
    """The least a channel layer's ``group_send`` through one relay can do, with the
    calls scenarios 4a and 4b make (``new_channel``, ``group_add``, ``group_send``,
    ``receive``), so the same roles run on it: a ``group_send`` is one frame to the
    relay (not awaited: no answer), the relay sends it as it is to each process that
    holds members of the group (one frame per process, as zchannels' node and
    redis' PUBLISH do), and a process decodes it once (msgpack) and wakes each member's
    ``receive()`` with the same dict (a real layer gives each its own copy). No
    capacity, no credit, no reports, no sessions, no names checked: what is left is
    the two hops, one decode, and one future per member set and its task woken."""

    def __init__(self, endpoint: str) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.ident = b"f" + os.urandom(8).hex().encode()
        self.sock.setsockopt(zmq.ROUTING_ID, self.ident)
        self.sock.connect(endpoint)
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.sock.fileno(), self._readable)
        self._names = itertools.count()
        self._groups: dict[bytes, list[str]] = {}
        self._queued: dict[str, deque[Any]] = {}
        self._waiters: dict[str, asyncio.Future[Any]] = {}
        #: answers the relay echoes (HELLO, SUBSCRIBE), in the order asked
        self._echoes: deque[asyncio.Future[bytes]] = deque()

    def _readable(self) -> None:
        sock = self.sock
        while cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            frame = sock.recv(zmq.NOBLOCK)
            if frame[:1] != FAN:
                self._echoes.popleft().set_result(frame)
                continue
            cut = frame.index(b"\0")
            members = self._groups.get(frame[1:cut])
            if not members:
                continue
            message = msgpack.unpackb(frame[cut + 1 :])
            waiters, queued = self._waiters, self._queued
            for channel in members:
                waiter = waiters.pop(channel, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message)
                else:
                    queued.setdefault(channel, deque()).append(message)

    def _send(self, frame: bytes) -> None:
        self.sock.send(frame, zmq.NOBLOCK)
        self._readable()  # (the fd is edge-triggered: a send can consume its edge)

    async def _ask(self, frame: bytes) -> bytes:
        answer: asyncio.Future[bytes] = self.loop.create_future()
        self._echoes.append(answer)
        self._send(frame)
        return await answer

    async def start(self) -> None:
        if await self._ask(HELLO) != HELLO:
            raise BenchError("the relay did not answer hello")

    async def new_channel(self, prefix: str = "specific.") -> str:
        return f"{prefix}{self.ident.decode()}!{next(self._names)}"

    async def group_add(self, group: str, channel: str) -> None:
        members = self._groups.setdefault(group.encode(), [])
        if channel not in members:
            members.append(channel)
        if len(members) == 1:
            await self._ask(SUBSCRIBE + group.encode())

    async def group_discard(self, group: str, channel: str) -> None:
        members = self._groups.get(group.encode(), [])
        if channel in members:
            members.remove(channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self._send(FAN + group.encode() + b"\0" + msgpack.packb(message))

    async def receive(self, channel: str) -> Any:
        queued = self._queued.get(channel)
        if queued:
            return queued.popleft()
        waiter: asyncio.Future[Any] = self.loop.create_future()
        self._waiters[channel] = waiter
        try:
            return await waiter
        finally:
            if self._waiters.get(channel) is waiter:
                del self._waiters[channel]

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close(linger=0)
        self.ctx.term()


def _on_floor(role: Role) -> Role:
    """``role`` (written against the Channels API) run on a ``FloorLayer``."""

    async def run(endpoint: str, peer: Any, budget: Budget, meter: Meter) -> Metrics:
        layer = FloorLayer(endpoint)
        try:
            await layer.start()
            return await role(layer, peer, budget, meter)
        finally:
            layer.close()

    run.__name__ = role.__name__
    return run


ROLES: dict[str, tuple[Role, ...]] = {
    "pingpong": (pingpong_responder, pingpong_pinger),
    "fanout": (_on_floor(fanout_producer), _on_floor(fanout_consumer)),
    "fanout2": tuple(_on_floor(r) for r in (fanout_producer, fanout_consumer, fanout_consumer)),
}


# --- python -m bench.relay_floor: direct vs relayed, on its own --------------------------


async def endpoint_role(role: str, endpoint: str, direct: bool) -> None:
    if direct and role == "B":  # B is the ROUTER side of a direct pair: echo forever
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
        sock.bind(endpoint)

        def echo() -> None:
            while cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                ident, msg = sock.recv_multipart(zmq.NOBLOCK)
                sock.send_multipart([ident, msg], zmq.NOBLOCK)

        asyncio.get_running_loop().add_reader(sock.fileno(), echo)
        print("ready", flush=True)
        await asyncio.Event().wait()
    dealer = _Dealer(role.encode(), endpoint)
    if not direct:
        await dealer.hello()
    if role == "B":
        print("ready", flush=True)
        while True:
            dealer.send(await dealer.recv())
    for _ in range(200):  # warm-up
        dealer.send(PING)
        await dealer.recv()
    start = time.perf_counter()
    for _ in range(ROUND_TRIPS):
        dealer.send(PING)
        await dealer.recv()
    print(ROUND_TRIPS / (time.perf_counter() - start), flush=True)


def measure(direct: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        endpoint = f"ipc://{tmp}/floor.sock"
        me = [sys.executable, "-m", "bench.relay_floor"]
        helpers: list[subprocess.Popen[Any]] = []
        try:
            if not direct:
                helpers.append(subprocess.Popen([*me, "relay", endpoint]))
                time.sleep(0.3)  # bound before B and A say hello
            b = subprocess.Popen(
                [*me, "B", endpoint, str(direct)], stdout=subprocess.PIPE, text=True
            )
            helpers.append(b)
            assert b.stdout is not None
            b.stdout.readline()
            out = subprocess.run(
                [*me, "A", endpoint, str(direct)],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
            return float(out.strip())
        finally:
            for proc in helpers:
                proc.kill()
                proc.wait()


def main() -> None:
    direct, relayed = [], []
    for _ in range(ROUNDS):  # interleaved
        direct.append(measure(True))
        relayed.append(measure(False))
    print(f"bare pyzmq, direct (2 hops):      {statistics.median(direct):,.0f} round trips/s")
    print(f"bare pyzmq, via a relay (4 hops): {statistics.median(relayed):,.0f} round trips/s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "relay":
        relay(sys.argv[2])
    elif len(sys.argv) > 1:
        asyncio.run(endpoint_role(sys.argv[1], sys.argv[2], sys.argv[3] == "True"))
    else:
        main()
