"""Where a ping-pong round trip's CPU goes, per thread (``python -m bench.pingpong_split
[ROUND_TRIPS] [RUNS]``).

Ping-pong through a znode sidecar of this tree and through the relay floor
(``bench.relay_floor``: the same two processes and one relay in between, doing
nothing), alternately, ``RUNS`` times each: the round trips per second and the
pinger's CPU per round trip, for the whole process and for its main thread
(the rest is libzmq's I/O thread and, for zchannels, the client's keeper).
Both pingers make the same system calls per round trip (``strace -c -f -p``
on a pinger, the node and the relay: the same counts of epoll_wait, poll,
read, write, sendto and recvfrom per message); what the main thread spends
beyond the floor's is Python (``perf record -t`` on the pinger's main thread:
about two thirds of its samples in the interpreter). Nothing here is part of
the layer or of ``bench/run``.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.queues import Queue
from typing import Any

WARM = 300


def _zch(endpoint: str, role: str, peer: Queue[Any], out: Queue[Any], trips: int) -> None:
    from zchannels.layer import ZeroMQChannelLayer

    async def run() -> None:
        layer = ZeroMQChannelLayer(node=endpoint, capacity=1_000_000)
        me = await layer.new_channel()
        if role == "pong":
            peer.put(me)
            while True:
                message = await layer.receive(me)
                if message.get("stop"):
                    break
                await layer.send(message["reply"], {"n": message["n"]})
        else:
            other = peer.get(timeout=30)
            for i in range(WARM):
                await layer.send(other, {"n": i, "reply": me})
                await layer.receive(me)
            out.put(await _timed(trips, lambda i: _zch_trip(layer, other, me, i)))
            await layer.send(other, {"stop": True})
        await layer.close()

    asyncio.run(run())


async def _zch_trip(layer: Any, other: str, me: str, i: int) -> None:
    await layer.send(other, {"n": i, "reply": me})
    await layer.receive(me)


def _floor(endpoint: str, role: str, peer: Queue[Any], out: Queue[Any], trips: int) -> None:
    from bench.relay_floor import STOP, _Dealer

    async def run() -> None:
        dealer = _Dealer(b"B" if role == "pong" else b"A", endpoint)
        await dealer.hello()
        if role == "pong":
            peer.put("ready")
            while (message := await dealer.recv()) != STOP:
                dealer.send(message)
        else:
            peer.get(timeout=30)

            async def trip(_i: int) -> None:
                dealer.send(b"x" * 100)
                await dealer.recv()

            for i in range(WARM):
                await trip(i)
            out.put(await _timed(trips, trip))
            dealer.send(STOP)
        dealer.close()

    asyncio.run(run())


async def _timed(trips: int, trip: Any) -> tuple[float, float, float]:
    """Round trips/s, process CPU µs and main-thread CPU µs per round trip."""
    start, cpu, main = time.perf_counter(), time.process_time(), time.thread_time()
    for i in range(trips):
        await trip(i)
    elapsed = time.perf_counter() - start
    return (
        trips / elapsed,
        (time.process_time() - cpu) / trips * 1e6,
        (time.thread_time() - main) / trips * 1e6,
    )


def _run(kind: str, endpoint: str, trips: int) -> tuple[float, float, float]:
    ctx = mp.get_context("fork")
    peer: Queue[Any] = ctx.Queue()
    out: Queue[Any] = ctx.Queue()
    target = _zch if kind == "zchannels" else _floor
    pong = ctx.Process(target=target, args=(endpoint, "pong", peer, out, trips))
    ping = ctx.Process(target=target, args=(endpoint, "ping", peer, out, trips))
    pong.start()
    ping.start()
    result: tuple[float, float, float] = out.get(timeout=120)
    for process in (ping, pong):
        process.join(30)
    return result


def main() -> None:
    trips = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with tempfile.TemporaryDirectory() as tmp:
        node_ep, relay_ep = f"ipc://{tmp}/znode.sock", f"ipc://{tmp}/relay.sock"
        servers = [
            subprocess.Popen(
                [sys.executable, "-m", "zchannels.node", "run", "--client-endpoint", node_ep],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            subprocess.Popen(
                [sys.executable, "-m", "bench.relay_floor", "relay", relay_ep],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        ]
        try:
            for path in (f"{tmp}/znode.sock", f"{tmp}/relay.sock"):
                deadline = time.monotonic() + 15
                while not os.path.exists(path) and time.monotonic() < deadline:
                    time.sleep(0.05)
            rows: dict[str, list[tuple[float, float, float]]] = {"zchannels": [], "floor": []}
            for _ in range(runs):  # interleaved
                rows["zchannels"].append(_run("zchannels", node_ep, trips))
                rows["floor"].append(_run("floor", relay_ep, trips))
        finally:
            for server in servers:
                server.terminate()
                server.wait(30)
    print(f"ping-pong, {trips} round trips x {runs} interleaved runs (medians);")
    print(f"1-minute load average {os.getloadavg()[0]:.2f}")
    print(f"{'':28s} {'round trips/s':>14s} {'pinger CPU µs':>14s} {'main thread µs':>15s}")
    for kind, label in (("zchannels", "zchannels sidecar"), ("floor", "relay floor")):
        rate, cpu, main_cpu = (statistics.median(r[i] for r in rows[kind]) for i in range(3))
        print(f"{label:28s} {rate:14,.0f} {cpu:14.1f} {main_cpu:15.1f}")


if __name__ == "__main__":
    main()
