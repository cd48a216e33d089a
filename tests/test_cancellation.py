"""A cancelled ``receive()`` loses no message, and an idle one never gives up.

Consumers cancel receives all the time: ``asyncio.wait_for`` timeouts,
``await_many_dispatch`` tearing down on disconnect, task groups. Each storm
below sends messages while receives are cancelled at random moments, then
checks that every message arrived exactly once (and in order, where one
logical consumer reads the channel).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from zchannels.layer import ZeroMQChannelLayer

N = 2000
#: A storm takes well under a second; past this it has stalled (seconds).
STORM_LIMIT = 15.0
#: wait_for timeouts used to cancel receives: 0 cancels before the receive
#: ever runs, the others at assorted points while it waits.
TIMEOUTS = [0, 0, 0.0001, 0.0003, 0.001, 0.002, 0.005]


@pytest.fixture
async def storm_layer() -> AsyncIterator[ZeroMQChannelLayer]:
    """A layer whose capacity holds a whole storm, so the sender never has
    to wait for the consumer."""
    lay = ZeroMQChannelLayer(prefix="storm", capacity=N + 100)
    await lay.flush()
    yield lay
    await lay.flush()
    await lay.close()


async def send_all(lay: ZeroMQChannelLayer, channel: str, rng: random.Random) -> None:
    for i in range(N):
        await lay.send(channel, {"i": i})
        if rng.random() < 0.05:
            await asyncio.sleep(rng.choice([0, 0.0005, 0.002]))


def missing_from(got: list[int]) -> str:
    missing = sorted(set(range(N)) - set(got))
    return f"{len(got)} of {N} received, {len(missing)} missing, first {missing[:10]}"


async def storm(got: Callable[[], list[int]], *work: Awaitable[Any]) -> float:
    """Run ``work`` to completion within STORM_LIMIT; the seconds it took.
    A stall fails with what was received so far."""
    start = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.gather(*work), STORM_LIMIT)
    except TimeoutError:
        pytest.fail(f"storm stalled after {STORM_LIMIT:g} s: {missing_from(got())}")
    return time.monotonic() - start


async def assert_drained(lay: ZeroMQChannelLayer, channel: str) -> None:
    """Nothing is left (no duplicate waiting): a marker sent now comes next."""
    await lay.send(channel, {"marker": True})
    got = await asyncio.wait_for(lay.receive(channel), 5)
    assert got == {"marker": True}, f"left over after the storm: {got!r}"


def check_exactly_once(got: list[int]) -> None:
    dupes = len(got) - len(set(got))
    assert dupes == 0, f"{dupes} messages delivered twice"
    assert sorted(got) == list(range(N)), missing_from(got)


def check_exactly_once_in_order(got: list[int]) -> None:
    check_exactly_once(got)
    disorder = [(a, b) for a, b in itertools.pairwise(got) if b < a]
    assert got == list(range(N)), f"out of order at {disorder[:5]}: {got[:12]}..."


def our_own_cancellation() -> bool:
    """True when the CancelledError is for the running task (the storm's
    deadline), not for the receive task it awaited."""
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


async def test_wait_for_storm_single_consumer(storm_layer: ZeroMQChannelLayer) -> None:
    rng = random.Random(20240601)
    got: list[int] = []
    timeouts = 0

    async def consume() -> None:
        nonlocal timeouts
        while len(got) < N:
            try:
                message = await asyncio.wait_for(
                    storm_layer.receive("storm.a"), rng.choice(TIMEOUTS)
                )
            except TimeoutError:
                timeouts += 1
                continue
            got.append(message["i"])

    took = await storm(lambda: got, send_all(storm_layer, "storm.a", rng), consume())
    print(f"{N} messages, {timeouts} cancelled receives, {took:.2f} s")
    check_exactly_once_in_order(got)
    assert timeouts > 100, f"only {timeouts} receives were cancelled: no storm"
    await assert_drained(storm_layer, "storm.a")


async def test_task_cancel_storm_single_consumer(storm_layer: ZeroMQChannelLayer) -> None:
    """``task.cancel()`` after 0-5 loop iterations: before the receive starts,
    while it waits, just after a message woke it, after it returned."""
    rng = random.Random(7)
    got: list[int] = []
    cancelled = 0

    async def consume() -> None:
        nonlocal cancelled
        while len(got) < N:
            task = asyncio.create_task(storm_layer.receive("storm.b"))
            for _ in range(rng.randrange(6)):
                await asyncio.sleep(0)
            task.cancel()
            try:
                message = await task
            except asyncio.CancelledError:
                if our_own_cancellation():
                    raise
                cancelled += 1
                continue
            got.append(message["i"])

    took = await storm(lambda: got, send_all(storm_layer, "storm.b", rng), consume())
    print(f"{N} messages, {cancelled} cancelled receives, {took:.2f} s")
    check_exactly_once_in_order(got)
    assert cancelled > 100, f"only {cancelled} receives were cancelled: no storm"
    await assert_drained(storm_layer, "storm.b")


async def test_cancel_storm_after_sending_everything(storm_layer: ZeroMQChannelLayer) -> None:
    """All messages queued first, then each receive is cancelled 0-9 loop
    iterations after it starts: before its credit reaches the node, while a
    delivery is in flight, between the wake-up and the return."""
    rng = random.Random(99)
    for i in range(N):
        await storm_layer.send("storm.c", {"i": i})
    got: list[int] = []
    cancelled = 0

    async def consume() -> None:
        nonlocal cancelled
        while len(got) < N:
            task = asyncio.create_task(storm_layer.receive("storm.c"))
            for _ in range(rng.randrange(10)):
                await asyncio.sleep(0)
            task.cancel()
            try:
                message = await task
            except asyncio.CancelledError:
                if our_own_cancellation():
                    raise
                cancelled += 1
                continue
            got.append(message["i"])

    took = await storm(lambda: got, consume())
    print(f"{N} messages, {cancelled} cancelled receives, {took:.2f} s")
    check_exactly_once_in_order(got)
    assert cancelled > 100, f"only {cancelled} receives were cancelled: no storm"
    await assert_drained(storm_layer, "storm.c")


async def test_cancel_storm_concurrent_consumers(storm_layer: ZeroMQChannelLayer) -> None:
    """Three consumers on this loop and one on another thread's loop, all
    cancelling: each message reaches exactly one of them. (No order is
    asserted: with two connections on one channel, what one gives back may
    reach the other after newer messages; several consumers are not one
    logical consumer.)"""
    rng = random.Random(3)
    per_consumer: dict[str, list[int]] = {f"main{k}": [] for k in range(3)}
    per_consumer["thread"] = []
    done = threading.Event()
    cancelled = 0

    def everything() -> list[int]:
        return [i for seen in list(per_consumer.values()) for i in list(seen)]

    async def consume(name: str, seed: int) -> None:
        nonlocal cancelled
        local_rng = random.Random(seed)
        out = per_consumer[name]
        while not done.is_set():
            try:
                message = await asyncio.wait_for(
                    storm_layer.receive("storm.d"), local_rng.choice([*TIMEOUTS, 0.02])
                )
            except TimeoutError:
                cancelled += 1
                continue
            out.append(message["i"])
            if sum(len(v) for v in per_consumer.values()) >= N:
                done.set()

    thread_errors: list[BaseException] = []
    main_loop = asyncio.get_running_loop()
    thread_finished = asyncio.Event()

    def other_loop() -> None:
        try:
            asyncio.run(asyncio.wait_for(consume("thread", 42), STORM_LIMIT + 5))
        except BaseException as exc:
            thread_errors.append(exc)
        finally:
            main_loop.call_soon_threadsafe(thread_finished.set)

    thread = threading.Thread(target=other_loop)
    thread.start()
    try:
        took = await storm(
            everything,
            send_all(storm_layer, "storm.d", rng),
            *(consume(f"main{k}", k) for k in range(3)),
        )
    finally:
        done.set()
        await asyncio.wait_for(thread_finished.wait(), 10)
        thread.join(5)
    assert not thread_errors, thread_errors
    shares = {k: len(v) for k, v in per_consumer.items()}
    print(f"{N} messages, shares {shares}, {cancelled} cancelled receives, {took:.2f} s")
    check_exactly_once(everything())
    await assert_drained(storm_layer, "storm.d")


async def test_cancel_swept_across_delivery(storm_layer: ZeroMQChannelLayer) -> None:
    """A receive waits; another client sends; the receive is cancelled k loop
    iterations later, for every k from 0 to 29, so some cancellations land
    before the message arrives, some between its arrival and the receive
    resuming, some after. Whatever happened, the message is received once."""
    other = ZeroMQChannelLayer(prefix="storm", capacity=N + 100, request_timeout=29.0)
    try:
        for k in range(30):
            task = asyncio.create_task(storm_layer.receive("storm.e"))
            await storm_layer.group_channels("sync")  # a round trip: the receive waits
            assert not task.done()
            sending = asyncio.create_task(other.send("storm.e", {"k": k}))
            for _ in range(k):
                await asyncio.sleep(0)
            task.cancel()
            try:
                message: dict[str, Any] = await task
            except asyncio.CancelledError:
                message = await asyncio.wait_for(storm_layer.receive("storm.e"), 5)
            await asyncio.wait_for(sending, 5)
            assert message == {"k": k}
    finally:
        await other.close()
    await assert_drained(storm_layer, "storm.e")


@pytest.mark.slow
async def test_idle_receive_does_not_give_up(layer: ZeroMQChannelLayer) -> None:
    task = asyncio.create_task(layer.receive("idle.ch"))
    start = time.monotonic()
    done, _ = await asyncio.wait({task}, timeout=10.6)
    idle = time.monotonic() - start
    if done:
        outcome = task.exception() or task.result()
        pytest.fail(f"receive() ended after {idle:.2f} s idle: {outcome!r}")
    print(f"receive() still pending after {idle:.2f} s idle")
    assert idle >= 10.5
    await layer.send("idle.ch", {"after": "idle"})
    got = await asyncio.wait_for(task, 5)
    assert got == {"after": "idle"}, f"after {idle:.2f} s idle"
