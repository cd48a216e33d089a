"""Where one ``group_send``'s time goes across processes
(``python -m bench.fanout_timeline [MEMBERS] [SHOTS]``).

Scenario 4b of ``bench/run`` (two consumer processes, half the members each,
the next shot fired as soon as both consumers have their last member's
delivery), through a znode sidecar of this tree that records when it handles
each frame and how long each frame it sends takes to hand to libzmq, with
the consumers recording when their connection reads the delivery, when it has
woken every receiver, and their first and last deliveries. Every time is
``perf_counter`` (one clock for all processes on Linux) from the producer's
stamp just before ``group_send``; the medians over the shots (the first three
left out) are printed. Nothing here is part of the layer: the recording is
monkeypatched into the processes it starts.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

CONSUMERS = 2
TEXT = "x" * 64


def traced_node(endpoint: str, trace: str) -> int:
    """A znode whose client frames in and out are timed (``node`` role)."""
    from zchannels.node import server
    from zchannels.node.cli import main

    log: list[tuple[str, float, float]] = []
    on_frames, send = server.NodeServer._on_frames, server.NodeServer.send

    def timed_on_frames(self: Any, frames: list[bytes]) -> None:
        start = time.perf_counter()
        on_frames(self, frames)
        # (a group_send travels alone: type byte 13 of a one-message frame)
        kind = "group_send" if len(frames) == 2 and frames[1][1:2] == b"\x0d" else "in"
        log.append((kind, start, time.perf_counter()))

    def timed_send(self: Any, out: list[Any]) -> None:
        start = time.perf_counter()
        send(self, out)
        log.append(("out", start, time.perf_counter()))

    server.NodeServer._on_frames = timed_on_frames  # type: ignore[method-assign]
    server.NodeServer.send = timed_send  # type: ignore[method-assign]
    send_to = getattr(server, "_send_to", None)
    if send_to is not None:

        def timed_send_to(sock: Any, ident: bytes, frame: bytes) -> None:
            start = time.perf_counter()
            send_to(sock, ident, frame)
            log.append(("frame", start, time.perf_counter()))

        server._send_to = timed_send_to
    else:  # (a tree whose shell still calls send_multipart)
        import zmq

        send_multipart = zmq.Socket.send_multipart

        def timed_send_multipart(sock: Any, parts: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = send_multipart(sock, parts, *args, **kwargs)
            log.append(("frame", start, time.perf_counter()))
            return result

        zmq.Socket.send_multipart = timed_send_multipart  # type: ignore[method-assign]
    atexit.register(lambda: Path(trace).write_text(json.dumps(log)))
    return main(["run", "--client-endpoint", endpoint])


def consumer(endpoint: str, group: str, share: int, shots: int, out: Queue[Any]) -> None:
    from zchannels import connection

    reads: list[tuple[float, float]] = []
    on_readable = connection.Connection._on_readable

    def timed_on_readable(self: Any) -> None:
        start = time.perf_counter()
        on_readable(self)
        reads.append((start, time.perf_counter()))

    connection.Connection._on_readable = timed_on_readable  # type: ignore[method-assign]
    from zchannels.layer import ZeroMQChannelLayer

    async def run() -> None:
        layer = ZeroMQChannelLayer(node=endpoint, capacity=1_000_000)
        channels = [await layer.new_channel() for _ in range(share)]
        for channel in channels:
            await layer.group_add(group, channel)
        got: dict[int, list[float]] = {}  # shot -> [first, last, count]
        done = asyncio.Event()

        async def member(channel: str) -> None:
            while True:
                message = await layer.receive(channel)
                now = time.perf_counter()
                entry = got.setdefault(message["shot"], [now, now, 0])
                entry[1] = now
                entry[2] += 1
                if entry[2] == share:
                    out.put(("shot", message["shot"]))
                    if len(got) == shots:
                        done.set()

        tasks = [asyncio.create_task(member(c)) for c in channels]
        await asyncio.sleep(0.05)
        out.put(("ready", 0))
        await asyncio.wait_for(done.wait(), 60)
        out.put(("result", ([got[i][:2] for i in range(shots)], reads)))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await layer.close()

    asyncio.run(run())


def producer(endpoint: str, group: str, shots: int, go: Queue[Any], out: Queue[Any]) -> None:
    from zchannels.layer import ZeroMQChannelLayer

    async def run() -> None:
        layer = ZeroMQChannelLayer(node=endpoint, capacity=1_000_000)
        await layer.group_send(group + "-warm", {"type": "x"})  # connected and welcomed
        out.put("ready")
        stamps = []
        for shot in range(shots):
            go.get()
            stamp = time.perf_counter()
            await layer.group_send(
                group, {"type": "bench.fan", "shot": shot, "t0": stamp, "text": TEXT}
            )
            stamps.append(stamp)
        out.put(stamps)
        await layer.close()

    asyncio.run(run())


def timeline(members: int, shots: int) -> dict[str, float]:
    """Medians in ms from the producer's stamp, by what happened."""
    with tempfile.TemporaryDirectory() as tmp:
        endpoint, trace = f"ipc://{tmp}/znode.sock", f"{tmp}/trace.json"
        node = subprocess.Popen(
            [sys.executable, "-m", "bench.fanout_timeline", "node", endpoint, trace],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while not os.path.exists(f"{tmp}/znode.sock"):
                time.sleep(0.05)
            ctx = mp.get_context("fork")
            group = f"fan{os.getpid()}"
            outs: list[Queue[Any]] = [ctx.Queue() for _ in range(CONSUMERS)]
            workers = [
                ctx.Process(target=consumer, args=(endpoint, group, members // CONSUMERS, shots, q))
                for q in outs
            ]
            for worker in workers:
                worker.start()
            for q in outs:
                q.get(timeout=30)  # ready
            go: Queue[Any] = ctx.Queue()
            stamps_q: Queue[Any] = ctx.Queue()
            shooter = ctx.Process(target=producer, args=(endpoint, group, shots, go, stamps_q))
            shooter.start()
            stamps_q.get(timeout=30)  # ready
            for _ in range(shots):  # the next shot once every consumer has the last
                go.put(1)
                for q in outs:
                    q.get(timeout=30)
            stamps: list[float] = stamps_q.get(timeout=30)
            results = [q.get(timeout=60)[1] for q in outs]
            for process in (*workers, shooter):
                process.join(30)
        finally:
            node.terminate()
            node.wait(30)
        log = json.loads(Path(trace).read_text())
    rows: dict[str, list[float]] = {}

    def add(key: str, seconds: float) -> None:
        rows.setdefault(key, []).append(seconds * 1e3)

    for shot, stamp in enumerate(stamps[3:], start=3):
        handled = next((e for e in log if e[0] == "group_send" and e[1] >= stamp), None)
        if handled is not None:
            add("node: group_send frame handled from", handled[1] - stamp)
            frames = [e for e in log if e[0] == "frame" and e[1] >= handled[1]][: CONSUMERS + 1]
            for i, frame in enumerate(frames):
                add(f"node: frame {i + 1} handed to libzmq at", frame[1] - stamp)
                add(f"node: frame {i + 1} took (ms)", frame[2] - frame[1])
        for i, (deliveries, reads) in enumerate(results):
            first, last = deliveries[shot]
            read = next((r for r in reads if r[0] >= stamp), None)
            if read is not None:
                add(f"consumer {i}: frame read at", read[0] - stamp)
                add(f"consumer {i}: every receiver woken at", read[1] - stamp)
            add(f"consumer {i}: first delivery at", first - stamp)
            add(f"consumer {i}: last delivery at", last - stamp)
        add("LAST delivery at", max(r[0][shot][1] for r in results) - stamp)
    return {key: statistics.median(values) for key, values in rows.items()}


def main() -> None:
    if sys.argv[1:2] == ["node"]:
        sys.exit(traced_node(sys.argv[2], sys.argv[3]))
    members = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    shots = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    load = os.getloadavg()[0]
    print(f"group_send to {members} members over {CONSUMERS} consumer processes, {shots} shots")
    print(f"(1-minute load average {load:.2f}); medians, ms from the producer's stamp:")
    for key, value in timeline(members, shots).items():
        print(f"  {key:42s} {value:8.3f}")


if __name__ == "__main__":
    main()
