"""The five scenarios, written once against the Channels layer API.

Each scenario is one or two *roles* (coroutines taking the layer, a ``Peer`` for
setup traffic and the ``Budget``). The runner puts the roles in two processes for
layers that work across processes, or in two tasks of one process for in-process
layers. The role that observes completion times it with ``time.perf_counter`` and
returns the metrics; the other returns ``{}``.

Fan-out latency is the one figure that spans processes: the producer stamps
``perf_counter()`` into the message and the consumer subtracts it from its own
``perf_counter()`` at the last delivery. On Linux ``perf_counter`` is
``CLOCK_MONOTONIC``, one clock for every process of the machine (the runner checks).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from statistics import median
from typing import Any

from channels.exceptions import ChannelFull

from bench.budget import FULL, Budget
from bench.control import Peer

Metrics = dict[str, float]
Role = Callable[[Any, Peer, Budget], Coroutine[Any, Any, Metrics]]

PAYLOAD = "x" * 64
"""Body text of every message: with the other fields, ~100 bytes of msgpack."""


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    primary: bool = True
    """A primary metric is one the '≥2x the best channels_redis layer' target applies to."""


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    names: str
    """Which channel names the scenario uses (shown in the table)."""
    roles: tuple[Role, ...]
    metrics: tuple[Metric, ...]


class BenchError(Exception):
    """A layer did something the scenario can detect as wrong (lost, extra or reordered message)."""


async def send_retrying(layer: Any, channel: str, message: dict[str, Any]) -> int:
    """``layer.send``, retried on ``ChannelFull``; returns how many retries it took."""
    retries = 0
    while True:
        try:
            await layer.send(channel, message)
            return retries
        except ChannelFull:
            retries += 1
            await asyncio.sleep(0.001)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list, q in [0, 1]."""
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def label(progress: str) -> None:
    """Put ``progress`` into the current task's name: a timeout report quotes it."""
    task = asyncio.current_task()
    if task is not None:
        task.set_name(f"{task.get_name().split('[', 1)[0]}[{progress}]")


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


# --- 1. ping-pong -------------------------------------------------------------------


async def pingpong_responder(layer: Any, peer: Peer, budget: Budget) -> Metrics:
    inbox = await layer.new_channel()
    await peer.send(inbox)
    while True:
        msg = await layer.receive(inbox)
        if msg["type"] == "bench.stop":
            break
        await layer.send(msg["reply"], {"type": "bench.pong", "seq": msg["seq"], "text": PAYLOAD})
    await peer.send("bye")
    return {}


async def pingpong_pinger(layer: Any, peer: Peer, budget: Budget) -> Metrics:
    target = await peer.recv()
    reply = await layer.new_channel()

    async def round_trip(seq: int) -> None:
        await layer.send(
            target, {"type": "bench.ping", "seq": seq, "reply": reply, "text": PAYLOAD}
        )
        answer = await layer.receive(reply)
        if answer["seq"] != seq:
            raise BenchError(f"pong {answer['seq']} answered ping {seq}")

    seq = 0
    label("warming up")
    warm_end = time.perf_counter() + budget.warm_s
    while time.perf_counter() < warm_end:
        await round_trip(seq)
        seq += 1

    latencies: list[float] = []
    start = time.perf_counter()
    box_end = start + budget.box_s
    label("measuring")
    while len(latencies) < budget.max_messages:
        t0 = time.perf_counter()
        if t0 >= box_end:
            break
        await round_trip(seq)
        latencies.append(time.perf_counter() - t0)
        seq += 1
    elapsed = time.perf_counter() - start

    await layer.send(target, {"type": "bench.stop", "seq": -1})
    await peer.recv()  # "bye": the responder got the stop before anything closes
    latencies.sort()
    return {
        "pingpong.rate": len(latencies) / elapsed,
        "pingpong.p50_ms": percentile(latencies, 0.50) * 1e3,
        "pingpong.p99_ms": percentile(latencies, 0.99) * 1e3,
    }


# --- 2. one channel, producer -> consumer --------------------------------------------


async def throughput_consumer(layer: Any, peer: Peer, budget: Budget) -> Metrics:
    channel = unique("bench.tp.")
    await peer.send(channel)
    expected = 0
    start = 0.0
    warm = False
    while True:
        try:
            msg = await layer.receive(channel)
        except asyncio.CancelledError:
            label(f"{expected} in order so far, started={start > 0}")
            raise
        kind = msg["type"]
        if kind == "bench.data":
            if msg["seq"] != expected:
                raise BenchError(f"expected seq {expected}, got {msg['seq']}")
            expected += 1
        elif kind == "bench.warm":
            if not warm:  # the producer warms up until it hears that messages get through
                warm = True
                await peer.send("warm")
        elif kind == "bench.start":
            start = time.perf_counter()
        elif kind == "bench.end":
            elapsed = time.perf_counter() - start
            if msg["count"] != expected:
                raise BenchError(f"producer sent {msg['count']} messages, {expected} arrived")
            break
    await peer.send("done")
    return {"throughput.rate": expected / elapsed}


async def throughput_producer(layer: Any, peer: Peer, budget: Budget) -> Metrics:
    channel = await peer.recv()
    retries = 0
    warm_end = time.perf_counter() + budget.warm_s
    # a pub/sub layer drops what is sent before the consumer's receive() subscribes
    while time.perf_counter() < warm_end or not peer.ready():
        retries += await send_retrying(layer, channel, {"type": "bench.warm", "text": PAYLOAD})
        await asyncio.sleep(0)  # an in-process consumer must get a turn to answer
    await peer.recv()  # "warm"
    await send_retrying(layer, channel, {"type": "bench.start"})
    box_end = time.perf_counter() + budget.box_s
    seq = 0
    while seq < budget.max_messages and time.perf_counter() < box_end:
        retries += await send_retrying(
            layer, channel, {"type": "bench.data", "seq": seq, "text": PAYLOAD}
        )
        seq += 1
    await send_retrying(layer, channel, {"type": "bench.end", "count": seq})
    await peer.recv()  # "done"
    return {"note.channel_full_retries": float(retries)} if retries else {}


# --- 3. many process-specific channels in one consumer ---------------------------------


async def many_consumer(layer: Any, peer: Peer, budget: Budget) -> Metrics:
    channels = [await layer.new_channel() for _ in range(budget.many_channels)]
    warmed = asyncio.Event()
    warm_left = len(channels)

    async def drain(channel: str) -> int:
        nonlocal warm_left
        expected = 0
        while True:
            msg = await layer.receive(channel)
            kind = msg["type"]
            if kind == "bench.data":
                if msg["seq"] != expected:
                    raise BenchError(f"{channel}: expected seq {expected}, got {msg['seq']}")
                expected += 1
            elif kind == "bench.warm":
                warm_left -= 1
                if warm_left == 0:
                    warmed.set()
            elif kind == "bench.end":
                if msg["count"] != expected:
                    raise BenchError(f"{channel}: {msg['count']} sent, {expected} arrived")
                return expected

    tasks = [asyncio.create_task(drain(c)) for c in channels]
    try:
        await peer.send(channels)
        await _first_of(warmed.wait(), tasks)
        start = time.perf_counter()
        await peer.send("go")
        counts = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    finally:
        await _cancel(tasks)
    await peer.send("done")
    return {"many.rate": sum(counts) / elapsed}


async def many_producer(layer: Any, peer: Peer, budget: Budget) -> Metrics:
    channels: list[str] = await peer.recv()
    retries = 0
    for channel in channels:
        retries += await send_retrying(layer, channel, {"type": "bench.warm"})
    await peer.recv()  # "go"
    counts = [0] * len(channels)
    box_end = time.perf_counter() + budget.box_s
    sent = 0
    while sent < budget.max_messages and time.perf_counter() < box_end:
        i = sent % len(channels)
        retries += await send_retrying(
            layer, channels[i], {"type": "bench.data", "seq": counts[i], "text": PAYLOAD}
        )
        counts[i] += 1
        sent += 1
    for channel, count in zip(channels, counts, strict=True):
        retries += await send_retrying(layer, channel, {"type": "bench.end", "count": count})
    await peer.recv()  # "done"
    return {"note.channel_full_retries": float(retries)} if retries else {}


# --- 4. group_send fan-out ------------------------------------------------------------


class _ShotTracker:
    """Counts deliveries of the current fan-out shot across all member tasks."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.shot = -1
        self.count = 0
        self.sent_at = 0.0
        self.last_at = 0.0
        self.done = asyncio.Event()

    def arm(self, shot: int) -> None:
        self.shot, self.count = shot, 0
        self.done.clear()

    def hit(self, msg: dict[str, Any], now: float) -> None:
        if msg["shot"] != self.shot:
            raise BenchError(f"message of shot {msg['shot']} arrived during shot {self.shot}")
        self.count += 1
        if self.count > self.size:
            raise BenchError(f"shot {self.shot}: more deliveries than the {self.size} members")
        self.sent_at, self.last_at = msg["t0"], now
        if self.count == self.size:
            self.done.set()


async def fanout_consumer(layer: Any, peer: Peer, budget: Budget) -> Metrics:
    result: Metrics = {}
    for size in budget.fanout_sizes:
        group = unique(f"bench-fan-{size}-")
        channels = [await layer.new_channel() for _ in range(size)]
        for channel in channels:
            await layer.group_add(group, channel)
        tracker = _ShotTracker(size)

        async def member(channel: str, tracker: _ShotTracker = tracker) -> None:
            while True:
                msg = await layer.receive(channel)
                tracker.hit(msg, time.perf_counter())

        tasks = [asyncio.create_task(member(c)) for c in channels]
        latencies: list[float] = []
        try:
            await asyncio.sleep(0)  # every member is waiting in receive() before shot 0
            for shot in range(budget.fanout_shots + 1):
                tracker.arm(shot)
                await peer.send(("shoot", group, shot))
                try:
                    await _first_of(tracker.done.wait(), tasks)
                except asyncio.CancelledError:
                    label(f"{size} members, shot {shot}: {tracker.count} delivered")
                    raise
                if shot:  # shot 0 warms up
                    latencies.append((tracker.last_at - tracker.sent_at) * 1e3)
        finally:
            await _cancel(tasks)
        result[f"fanout.{size}.ms"] = median(latencies)
    await peer.send(("end", "", 0))
    return result


async def fanout_producer(layer: Any, peer: Peer, budget: Budget) -> Metrics:
    while True:
        command, group, shot = await peer.recv()
        if command == "end":
            return {}
        sent_at = time.perf_counter()
        await layer.group_send(
            group, {"type": "bench.fan", "shot": shot, "t0": sent_at, "text": PAYLOAD}
        )


# --- 5. group add / discard rate --------------------------------------------------------


async def group_ops(layer: Any, peer: Peer, budget: Budget) -> Metrics:
    group = unique("bench-ops-")
    channels = [await layer.new_channel() for _ in range(budget.group_ops)]
    added = 0
    start = time.perf_counter()
    box_end = start + budget.box_s
    for channel in channels:
        if time.perf_counter() >= box_end:
            break
        await layer.group_add(group, channel)
        added += 1
    add_elapsed = time.perf_counter() - start
    start = time.perf_counter()
    for channel in channels[:added]:
        await layer.group_discard(group, channel)
    discard_elapsed = time.perf_counter() - start
    return {
        "groups.add_rate": added / add_elapsed,
        "groups.discard_rate": added / discard_elapsed,
        "note.memberships": float(added),
    }


# --- smoke probe ------------------------------------------------------------------------


async def probe(layer: Any, peer: Peer, budget: Budget) -> Metrics:
    """Every API the scenarios use, once, in one process: decides whether a layer runs."""
    own = await layer.new_channel()
    await layer.send(own, {"type": "probe.own"})
    if (await layer.receive(own))["type"] != "probe.own":
        raise BenchError("new_channel(): wrong message back")
    plain = unique("bench.probe.")
    receiving = asyncio.create_task(layer.receive(plain))
    while not receiving.done():  # pub/sub layers drop what is sent before receive() subscribes
        await layer.send(plain, {"type": "probe.plain"})
        await asyncio.wait([receiving], timeout=0.1)
    if receiving.result()["type"] != "probe.plain":
        raise BenchError("plain channel: wrong message back")
    group = unique("bench-probe-")
    await layer.group_add(group, own)
    await layer.group_send(group, {"type": "probe.group"})
    if (await layer.receive(own))["type"] != "probe.group":
        raise BenchError("group_send: wrong message back")
    await layer.group_discard(group, own)
    return {}


# --- helpers ------------------------------------------------------------------------------


async def _first_of(waiting: Awaitable[Any], workers: list[asyncio.Task[Any]]) -> None:
    """Wait for ``waiting``, but raise at once if a worker task fails first."""
    waiter = asyncio.ensure_future(waiting)
    pending = {waiter, *workers}
    try:
        while not waiter.done():
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not waiter:
                    task.result()  # raises the worker's error
    finally:
        waiter.cancel()


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --- the catalogue --------------------------------------------------------------------------

SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario(
            "pingpong",
            "1. ping-pong",
            "X, Y = `new_channel()`",
            (pingpong_responder, pingpong_pinger),
            (
                Metric("pingpong.rate", "round trips/s", "/s", True),
                Metric("pingpong.p50_ms", "p50 latency", "ms", False, primary=False),
                Metric("pingpong.p99_ms", "p99 latency", "ms", False, primary=False),
            ),
        ),
        Scenario(
            "throughput",
            "2. one channel",
            "one plain name `bench.tp.<id>`",
            (throughput_consumer, throughput_producer),
            (Metric("throughput.rate", "msg/s, in order", "/s", True),),
        ),
        Scenario(
            "many",
            "3. many channels",
            "100 `new_channel()`s in one consumer",
            (many_consumer, many_producer),
            (Metric("many.rate", "msg/s, round-robin", "/s", True),),
        ),
        Scenario(
            "fanout",
            "4. group_send fan-out",
            "members = `new_channel()`s of the consumer",
            (fanout_consumer, fanout_producer),
            tuple(
                Metric(f"fanout.{n}.ms", f"{n} members, ms to last delivery", "ms", False)
                for n in FULL.fanout_sizes
            ),
        ),
        Scenario(
            "groups",
            "5. group add/discard",
            "`new_channel()` names, one group",
            (group_ops,),
            (
                Metric("groups.add_rate", "group_add ops/s", "/s", True),
                Metric("groups.discard_rate", "group_discard ops/s", "/s", True),
            ),
        ),
    )
}

PROBE = Scenario("probe", "probe", "", (probe,), ())
