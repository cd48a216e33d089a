"""The bare-pyzmq anchor: what one ``await`` per message costs with no layer at all.

DEALER (producer / pinger) -> ROUTER (consumer / responder) over ``ipc://`` in a
temporary directory (the transport a ``znode`` sidecar serves its clients on), msgpack
bodies shaped like the layer scenarios' messages, ``zmq.asyncio`` with one ``await``
per send and per receive. Same roles, budget and time box as scenarios.py; only
ping-pong and one-channel throughput have a bare-pyzmq meaning.

A DEALER closing right after its last send can lose the tail over ipc (libzmq #4660),
so the sending side waits for the receiving side's "done"/"bye" before it closes.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from bench.budget import Budget
from bench.control import Peer
from bench.cpu import Meter
from bench.scenarios import PAYLOAD, BenchError, Metrics, Role, pingpong_metrics

packb = msgpack.packb
unpackb = msgpack.unpackb


@asynccontextmanager
async def _router() -> AsyncIterator[tuple[zmq.asyncio.Socket, str]]:
    directory = tempfile.mkdtemp(prefix="bench-zmq-")
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.ROUTER)
    endpoint = f"ipc://{directory}/router.sock"
    sock.bind(endpoint)
    try:
        yield sock, endpoint
    finally:
        sock.close(linger=0)
        ctx.term()
        shutil.rmtree(directory, ignore_errors=True)


@asynccontextmanager
async def _dealer(endpoint: str) -> AsyncIterator[zmq.asyncio.Socket]:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=1000)
        ctx.term()


async def pingpong_responder(_: Any, peer: Peer, budget: Budget, meter: Meter) -> Metrics:
    async with _router() as (sock, endpoint):
        await peer.send(endpoint)
        measuring = False
        while True:
            ident, body = await sock.recv_multipart()
            msg = unpackb(body)
            kind = msg["type"]
            if kind == "bench.stop":
                break
            if kind == "bench.ping" and not measuring:
                measuring = True
                meter.mark("pingpong")
            reply = {"type": "bench.pong", "seq": msg["seq"], "text": PAYLOAD}
            await sock.send_multipart([ident, packb(reply)])
        meter.mark("pingpong")
        await peer.send("bye")
    return {}


async def pingpong_pinger(_: Any, peer: Peer, budget: Budget, meter: Meter) -> Metrics:
    endpoint = await peer.recv()
    async with _dealer(endpoint) as sock:

        async def round_trip(seq: int, kind: str = "bench.ping") -> None:
            await sock.send(packb({"type": kind, "seq": seq, "text": PAYLOAD}))
            answer = unpackb(await sock.recv())
            if answer["seq"] != seq:
                raise BenchError(f"pong {answer['seq']} answered ping {seq}")

        seq = 0
        warm_end = time.perf_counter() + budget.warm_s
        while time.perf_counter() < warm_end:
            await round_trip(seq, "bench.warm")
            seq += 1
        latencies: list[float] = []
        meter.mark("pingpong")
        start = time.perf_counter()
        box_end = start + budget.box_s
        while len(latencies) < budget.max_messages:
            t0 = time.perf_counter()
            if t0 >= box_end:
                break
            await round_trip(seq)
            latencies.append(time.perf_counter() - t0)
            seq += 1
        elapsed = time.perf_counter() - start
        meter.mark("pingpong")
        await sock.send(packb({"type": "bench.stop", "seq": -1}))
        await peer.recv()  # "bye"
    return pingpong_metrics(latencies, elapsed)


async def throughput_consumer(_: Any, peer: Peer, budget: Budget, meter: Meter) -> Metrics:
    async with _router() as (sock, endpoint):
        await peer.send(endpoint)
        expected = 0
        start = 0.0
        while True:
            _ident, body = await sock.recv_multipart()
            msg = unpackb(body)
            kind = msg["type"]
            if kind == "bench.data":
                if msg["seq"] != expected:
                    raise BenchError(f"expected seq {expected}, got {msg['seq']}")
                expected += 1
            elif kind == "bench.start":
                meter.mark("throughput")
                start = time.perf_counter()
            elif kind == "bench.end":
                elapsed = time.perf_counter() - start
                meter.mark("throughput")
                if msg["count"] != expected:
                    raise BenchError(f"producer sent {msg['count']} messages, {expected} arrived")
                break
        await peer.send("done")
    return {"throughput.rate": expected / elapsed, "cpu.throughput.msgs": float(expected)}


async def throughput_producer(_: Any, peer: Peer, budget: Budget, meter: Meter) -> Metrics:
    endpoint = await peer.recv()
    async with _dealer(endpoint) as sock:
        warm_end = time.perf_counter() + budget.warm_s
        while time.perf_counter() < warm_end:
            await sock.send(packb({"type": "bench.warm", "text": PAYLOAD}))
        meter.mark("throughput")
        await sock.send(packb({"type": "bench.start"}))
        box_end = time.perf_counter() + budget.box_s
        seq = 0
        while seq < budget.max_messages and time.perf_counter() < box_end:
            await sock.send(packb({"type": "bench.data", "seq": seq, "text": PAYLOAD}))
            seq += 1
        await sock.send(packb({"type": "bench.end", "count": seq}))
        await peer.recv()  # "done"
        meter.mark("throughput")
    return {}


ROLES: dict[str, tuple[Role, ...]] = {
    "pingpong": (pingpong_responder, pingpong_pinger),
    "throughput": (throughput_consumer, throughput_producer),
}
