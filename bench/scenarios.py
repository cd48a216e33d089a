"""The scenarios, written once against the Channels layer API.

Each scenario is two or three *roles* (coroutines taking the layer, a ``Peer`` -- or,
for the first role of a star-shaped scenario, a ``Hub`` -- for setup traffic, the
``Budget`` and the process's CPU ``Meter``). The runner puts the roles in separate
processes for layers that work across processes, or in tasks of one process for
in-process layers. The role that observes completion times it with
``time.perf_counter`` and returns the metrics; the others return ``{}``. Every role
marks the start and the end of its measured phase on the ``Meter`` (see cpu.py), and
the role that counts deliveries returns ``cpu.<key>.msgs``.

Fan-out latency is the one figure that spans processes: the producer takes
``perf_counter()`` just before ``group_send`` and each consumer process reports its own
``perf_counter()`` at its last member's delivery. On Linux ``perf_counter`` is
``CLOCK_MONOTONIC``, one clock for every process of the machine (the runner checks).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from statistics import median
from typing import Any, Literal

from channels.exceptions import ChannelFull

from bench.budget import FULL, Budget
from bench.control import Hub, Peer
from bench.cpu import Meter

Metrics = dict[str, float]
Role = Callable[[Any, Any, Budget, Meter], Coroutine[Any, Any, Metrics]]
"""(layer, ``Peer`` or -- first role of a hub scenario -- ``Hub``, budget, meter)."""

PAYLOAD = "x" * 64
"""Body text of every message: with the other fields, ~100 bytes of msgpack."""


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    kind: Literal["value", "cpu", "pooled_p99"] = "value"
    """``value``: median over runs of ``key``; ``cpu``: the ``cpu.<key>.client_us`` and
    ``.node_us`` medians in one cell; ``pooled_p99``: p99 of the ``series`` samples of
    every run pooled together."""
    series: str = ""
    """``pooled_p99`` only: the key of the per-event samples (``Meter.sample``)."""


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    names: str
    """Which channel names the scenario uses (shown in the table)."""
    roles: tuple[Role, ...]
    metrics: tuple[Metric, ...]
    hub: bool = False
    """The first role gets a ``Hub`` to all the others (a star) instead of one ``Peer``."""
    processes_only: bool = False
    """Meaningless in one process (its point is several consumer processes): layers that
    cannot cross processes skip it."""


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


async def pingpong_responder(layer: Any, peer: Peer, budget: Budget, meter: Meter) -> Metrics:
    inbox = await layer.new_channel()
    await peer.send(inbox)
    measuring = False
    while True:
        msg = await layer.receive(inbox)
        kind = msg["type"]
        if kind == "bench.stop":
            break
        if kind == "bench.ping" and not measuring:  # the first ping after the warm-up
            measuring = True
            meter.mark("pingpong")
        await layer.send(msg["reply"], {"type": "bench.pong", "seq": msg["seq"], "text": PAYLOAD})
    meter.mark("pingpong")
    await peer.send("bye")
    return {}


async def pingpong_pinger(layer: Any, peer: Peer, budget: Budget, meter: Meter) -> Metrics:
    target = await peer.recv()
    reply = await layer.new_channel()

    async def round_trip(seq: int, kind: str = "bench.ping") -> None:
        await layer.send(target, {"type": kind, "seq": seq, "reply": reply, "text": PAYLOAD})
        answer = await layer.receive(reply)
        if answer["seq"] != seq:
            raise BenchError(f"pong {answer['seq']} answered ping {seq}")

    seq = 0
    label("warming up")
    warm_end = time.perf_counter() + budget.warm_s
    while time.perf_counter() < warm_end:
        await round_trip(seq, "bench.warm")
        seq += 1

    latencies: list[float] = []
    meter.mark("pingpong")
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
    meter.mark("pingpong")

    await layer.send(target, {"type": "bench.stop", "seq": -1})
    await peer.recv()  # "bye": the responder got the stop before anything closes
    return pingpong_metrics(latencies, elapsed)


def pingpong_metrics(latencies: list[float], elapsed: float) -> Metrics:
    """The ping-pong figures from the measured round-trip times (also for bare pyzmq)."""
    latencies = sorted(latencies)
    return {
        "pingpong.rate": len(latencies) / elapsed,
        "pingpong.p50_ms": percentile(latencies, 0.50) * 1e3,
        "pingpong.p99_ms": percentile(latencies, 0.99) * 1e3,
        "cpu.pingpong.msgs": 2.0 * len(latencies),  # a ping and a pong per round trip
    }


# --- 2. one channel, producer -> consumer --------------------------------------------


async def throughput_consumer(layer: Any, peer: Peer, budget: Budget, meter: Meter) -> Metrics:
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


async def throughput_producer(layer: Any, peer: Peer, budget: Budget, meter: Meter) -> Metrics:
    channel = await peer.recv()
    retries = 0
    warm_end = time.perf_counter() + budget.warm_s
    # a pub/sub layer drops what is sent before the consumer's receive() subscribes
    while time.perf_counter() < warm_end or not peer.ready():
        retries += await send_retrying(layer, channel, {"type": "bench.warm", "text": PAYLOAD})
        await asyncio.sleep(0)  # an in-process consumer must get a turn to answer
    await peer.recv()  # "warm"
    meter.mark("throughput")
    await send_retrying(layer, channel, {"type": "bench.start"})
    box_end = time.perf_counter() + budget.box_s
    seq = 0
    while seq < budget.max_messages and time.perf_counter() < box_end:
        retries += await send_retrying(
            layer, channel, {"type": "bench.data", "seq": seq, "text": PAYLOAD}
        )
        seq += 1
    await send_retrying(layer, channel, {"type": "bench.end", "count": seq})
    await peer.recv()  # "done" (waiting costs no CPU; what the layer still flushes counts)
    meter.mark("throughput")
    return {"note.channel_full_retries": float(retries)} if retries else {}


# --- 3. many process-specific channels in one consumer ---------------------------------


async def many_consumer(layer: Any, peer: Peer, budget: Budget, meter: Meter) -> Metrics:
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
        meter.mark("many")
        start = time.perf_counter()
        await peer.send("go")
        counts = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        meter.mark("many")
    finally:
        await _cancel(tasks)
    await peer.send("done")
    return {"many.rate": sum(counts) / elapsed, "cpu.many.msgs": float(sum(counts))}


async def many_producer(layer: Any, peer: Peer, budget: Budget, meter: Meter) -> Metrics:
    channels: list[str] = await peer.recv()
    retries = 0
    for channel in channels:
        retries += await send_retrying(layer, channel, {"type": "bench.warm"})
    await peer.recv()  # "go"
    meter.mark("many")
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
    meter.mark("many")
    return {"note.channel_full_retries": float(retries)} if retries else {}


# --- 4. group_send fan-out, to one or to two consumer processes -------------------------


class _ShotTracker:
    """Counts deliveries of the current fan-out shot across all member tasks."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.shot = -1
        self.count = 0
        self.first_at = 0.0
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
        self.last_at = now
        if self.count == 1:
            self.first_at = now
        if self.count == self.size:
            self.done.set()


def fanout_key(consumers: int, size: int) -> str:
    """``fanout.<size>`` with one consumer process, ``fanout<n>.<size>`` with n."""
    return f"fanout{'' if consumers == 1 else consumers}.{size}"


async def fanout_producer(layer: Any, hub: Hub, budget: Budget, meter: Meter) -> Metrics:
    """The hub: for each group size, has the consumer processes join their share of the
    members, then fires the shots, one ``group_send`` each, timed from just before the
    call to the latest of the consumers' last deliveries.

    The consumers arm themselves for the next shot before they report the last one, so a
    shot costs the harness one pipe message per consumer (not a handshake) inside the
    CPU-measured phase. How many shots: ``fanout_shots``, fewer if the warm-up shot says
    they would take longer than ``fanout_box_s`` (never fewer than ``fanout_min_shots``).
    """
    consumers = len(hub.each)
    result: Metrics = {}
    apart: list[bool] = []

    async def shoot(group: str, shot: int) -> float:
        sent_at = time.perf_counter()
        await layer.group_send(
            group, {"type": "bench.fan", "shot": shot, "t0": sent_at, "text": PAYLOAD}
        )
        spans: list[tuple[float, float]] = await hub.recv_all()  # (first, last) each
        last_at = max(last for _, last in spans)  # the latest of the last deliveries
        # one consumer's first delivery after another's last: they took turns
        # on one core instead of working side by side
        apart.append(max(first for first, _ in spans) > min(last for _, last in spans))
        return (last_at - sent_at) * 1e3

    for size in budget.fanout_sizes:
        key = fanout_key(consumers, size)
        group = unique(f"bench-fan-{size}-")
        for i, peer in enumerate(hub.each):  # members split as evenly as they go
            await peer.send(("join", group, size // consumers + (i < size % consumers), key))
        await hub.recv_all()  # "joined": every member waits in receive(), armed for shot 0
        warm_ms = await shoot(group, 0)
        shots = int(budget.fanout_box_s * 1e3 / max(warm_ms, 1e-3))
        shots = max(budget.fanout_min_shots, min(budget.fanout_shots, shots))
        await hub.send(("shots", shots))
        meter.mark(key)
        apart.clear()
        latencies = [await shoot(group, shot) for shot in range(1, shots + 1)]
        meter.mark(key)
        await hub.send(("leave", 0))
        await hub.recv_all()  # "left"
        for latency in latencies:
            meter.sample(f"{key}.ms", latency)
        result[f"{key}.ms"] = median(latencies)
        if consumers > 1:
            result[f"note.{key}.apart"] = sum(apart) / len(apart)
        result[f"cpu.{key}.msgs"] = float(size * shots)
    await hub.send(("end", 0))
    return result


async def fanout_consumer(layer: Any, peer: Peer, budget: Budget, meter: Meter) -> Metrics:
    """Holds this process's share of each group's members and reports when the last of
    them got each shot."""
    while True:
        command = await peer.recv()
        if command[0] == "end":
            return {}
        _, group, share, key = command
        await _hold_share(layer, peer, meter, group, share, key)
        await peer.send("left")


async def _hold_share(
    layer: Any, peer: Peer, meter: Meter, group: str, share: int, key: str
) -> None:
    channels = [await layer.new_channel() for _ in range(share)]
    for channel in channels:
        await layer.group_add(group, channel)
    tracker = _ShotTracker(share)

    async def member(channel: str) -> None:
        while True:
            msg = await layer.receive(channel)
            tracker.hit(msg, time.perf_counter())

    async def report(shot: int) -> None:
        try:
            await _first_of(tracker.done.wait(), tasks)
        except asyncio.CancelledError:
            label(f"{key}, shot {shot}: {tracker.count} of {share} delivered")
            raise
        await peer.send((tracker.first_at, tracker.last_at))
        tracker.arm(shot + 1)  # before the next await: armed before the hub hears

    tasks = [asyncio.create_task(member(c)) for c in channels]
    try:
        tracker.arm(0)
        await asyncio.sleep(0)  # every member is waiting in receive() before shot 0
        await peer.send("joined")
        await report(0)
        meter.mark(key)  # before any await: shot 1 may already be on its way
        _, shots = await peer.recv()
        for shot in range(1, shots + 1):
            await report(shot)
        meter.mark(key)
        await peer.recv()  # "leave"
    finally:
        await _cancel(tasks)


# --- 5. group add / discard rate --------------------------------------------------------


async def group_ops(layer: Any, peer: Peer, budget: Budget, meter: Meter) -> Metrics:
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


async def probe(layer: Any, peer: Peer, budget: Budget, meter: Meter) -> Metrics:
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

CPU_LABEL = "CPU per delivered msg, client / node"


def _cpu(key: str) -> Metric:
    return Metric(f"cpu.{key}", CPU_LABEL, "µs", False, kind="cpu")


def _fanout_metrics(consumers: int) -> tuple[Metric, ...]:
    metrics: list[Metric] = []
    for n in FULL.fanout_sizes:
        key = fanout_key(consumers, n)
        metrics += [
            Metric(f"{key}.ms", f"{n} members: p50 to last delivery", "ms", False),
            Metric(
                f"{key}.p99_ms",
                f"{n} members: p99 to last delivery",
                "ms",
                False,
                kind="pooled_p99",
                series=f"{key}.ms",
            ),
            _cpu(key),
        ]
    return tuple(metrics)


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
                Metric("pingpong.p50_ms", "p50 latency", "ms", False),
                Metric("pingpong.p99_ms", "p99 latency", "ms", False),
                _cpu("pingpong"),
            ),
        ),
        Scenario(
            "throughput",
            "2. one channel",
            "one plain name `bench.tp.<id>`",
            (throughput_consumer, throughput_producer),
            (Metric("throughput.rate", "msg/s, in order", "/s", True), _cpu("throughput")),
        ),
        Scenario(
            "many",
            "3. many channels",
            f"{FULL.many_channels} `new_channel()`s in one consumer",
            (many_consumer, many_producer),
            (Metric("many.rate", "msg/s, round-robin", "/s", True), _cpu("many")),
        ),
        Scenario(
            "fanout",
            "4a. group_send fan-out, one consumer process",
            "members = `new_channel()`s of the consumer",
            (fanout_producer, fanout_consumer),
            _fanout_metrics(1),
            hub=True,
        ),
        Scenario(
            "fanout2",
            "4b. group_send fan-out, two consumer processes",
            "half the members in each consumer",
            (fanout_producer, fanout_consumer, fanout_consumer),
            _fanout_metrics(2),
            hub=True,
            processes_only=True,
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
