"""The workload processes of a fault run: producers and consumers.

Run as ``python -m tests.faults.workload ROLE SPEC_JSON`` from the repository
root; each is one client process of one ``znode`` (a layer with CONFIG
``{"node": ENDPOINT, ...}``) and writes what it did, as it does it, to its own
log file: one JSON object per line, written with one ``write()`` each (the
file is line-buffered), so the log of a SIGKILLed process is whole up to the
kill. Times are ``time.monotonic()``: one clock for every process of the host.

- ``producer``: one task per target (each hashed channel, and the group),
  sending a numbered stream ``{"p": producer, "s": seq}`` (``"g": 1`` for the
  group) at ``rate`` per second, each send awaited before the next (so the
  stream's order is the producer's order). Logs every send: ``{"k": "send",
  "ch", "s", "t0", "t1", "r"}`` where ``r`` is ``"ok"``, ``"ChannelFull"`` or the
  exception's class name. Stops on SIGTERM (each stream finishes the send it
  is in), closes its layer and exits.
- ``consumer``: makes a ``new_channel()``, adds it to the group, then receives
  on it and on its hashed channels, one task per channel; with ``cancel``
  every receive is ``asyncio.wait_for(layer.receive(ch), t)`` with a small
  random ``t`` (a cancellation storm). Logs ``{"k": "ready", "member", "t"}``
  once the ``group_add`` returned, then ``{"k": "r", "ch", "p", "s", "t"}`` per
  message (with ``"g": 1`` for a group message; ``{"k": "m", "ch", "m", "t"}``
  for the harness's markers). On SIGTERM it stops receiving, closes its layer
  (which gives back what it prefetched) and exits.

Both log ``{"k": "counters", "t", "c"}`` (the layer's client-side counters,
``layer.counters``) every ``COUNTERS_EVERY`` s and at exit, and
``{"k": "exit", "t", "drops"}`` (``layer.drops()``: their node's drop counters,
when it answers) last.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any

#: Seconds between two dumps of the client-side counters.
COUNTERS_EVERY = 0.5
#: ``wait_for`` timeouts of a cancelling consumer's receives (as in
#: tests/test_cancellation.py: many cancel before the message is there).
CANCEL_TIMEOUTS = (0.0, 0.0001, 0.0003, 0.001, 0.002, 0.005, 0.02, 0.05)


class Log:
    """A JSON-lines log, one ``write()`` per record."""

    def __init__(self, path: str) -> None:
        self._file: IO[str] = open(path, "a", buffering=1, encoding="utf-8")

    def __call__(self, kind: str, **fields: Any) -> None:
        self._file.write(json.dumps({"k": kind, **fields}, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._file.close()


def _layer(spec: dict[str, Any]) -> Any:
    from zchannels.layer import ZeroMQChannelLayer

    return ZeroMQChannelLayer(
        node=spec["node"],
        capacity=spec.get("capacity", 100),
        request_timeout=spec.get("request_timeout", 30.0),
    )


async def _dump_counters(layer: Any, log: Log, stop: asyncio.Event) -> None:
    while not stop.is_set():
        log("counters", t=time.monotonic(), c=layer.counters)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), COUNTERS_EVERY)


async def _finish(layer: Any, log: Log) -> None:
    """The last records: counters, the node's drops (if it answers), exit."""
    drops: dict[str, int] | None = None
    with contextlib.suppress(Exception):
        drops = await asyncio.wait_for(layer.drops(), 2.0)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(layer.close(), 5.0)
    log("counters", t=time.monotonic(), c=layer.counters)
    log("exit", t=time.monotonic(), drops=drops)


def _stop_on_sigterm() -> asyncio.Event:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    return stop


async def producer(spec: dict[str, Any]) -> int:
    from channels.exceptions import ChannelFull

    log = Log(spec["log"])
    layer = _layer(spec)
    me: str = spec["id"]
    rng = random.Random(spec["seed"])
    stop = _stop_on_sigterm()

    async def stream(target: str, rate: float, send: Callable[[int], Awaitable[None]]) -> None:
        interval = 1.0 / rate
        # (streams start out of step, so their sends do not come in bursts)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(0, interval))
        seq = 0
        while not stop.is_set():
            seq += 1
            t0 = time.monotonic()
            try:
                await send(seq)
                result = "ok"
            except ChannelFull:
                result = "ChannelFull"
            except Exception as exc:
                result = type(exc).__name__
            t1 = time.monotonic()
            log("send", ch=target, s=seq, t0=t0, t1=t1, r=result)
            pause = max(0.0, interval * rng.uniform(0.5, 1.5) - (t1 - t0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)

    def to_channel(channel: str) -> Callable[[int], Awaitable[None]]:
        return lambda seq: layer.send(channel, {"p": me, "s": seq})

    def to_group(group: str) -> Callable[[int], Awaitable[None]]:
        return lambda seq: layer.group_send(group, {"p": me, "s": seq, "g": 1})

    tasks = [
        asyncio.create_task(stream(ch, spec["rate"], to_channel(ch))) for ch in spec["channels"]
    ]
    if spec["group_rate"] > 0:
        group = spec["group"]
        tasks.append(asyncio.create_task(stream("#" + group, spec["group_rate"], to_group(group))))
    counters = asyncio.create_task(_dump_counters(layer, log, stop))
    log("ready", t=time.monotonic())
    await asyncio.gather(*tasks)
    await counters
    await _finish(layer, log)
    log.close()
    return 0


async def consumer(spec: dict[str, Any]) -> int:
    log = Log(spec["log"])
    layer = _layer(spec)
    rng = random.Random(spec["seed"])
    stop = _stop_on_sigterm()
    member: str = await layer.new_channel()
    await layer.group_add(spec["group"], member)
    log("ready", t=time.monotonic(), member=member)
    cancelled = 0

    async def receive_on(channel: str) -> None:
        nonlocal cancelled
        while True:
            try:
                if spec["cancel"]:
                    message = await asyncio.wait_for(
                        layer.receive(channel), rng.choice(CANCEL_TIMEOUTS)
                    )
                else:
                    message = await layer.receive(channel)
            except TimeoutError:
                cancelled += 1
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # recorded; the checker reports them
                log("error", t=time.monotonic(), ch=channel, e=repr(exc))
                await asyncio.sleep(0.05)
                continue
            now = time.monotonic()
            if "m" in message:
                log("m", ch=channel, m=message["m"], t=now)
            else:
                g = {"g": 1} if message.get("g") else {}
                log("r", ch=channel, p=message.get("p"), s=message.get("s"), t=now, **g)

    tasks = [asyncio.create_task(receive_on(ch)) for ch in [*spec["channels"], member]]
    counters = asyncio.create_task(_dump_counters(layer, log, stop))
    await stop.wait()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await counters
    log("cancelled", t=time.monotonic(), n=cancelled)
    await _finish(layer, log)
    log.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("producer", "consumer"):
        print("usage: python -m tests.faults.workload producer|consumer SPEC_JSON", file=sys.stderr)
        return 2
    spec = json.loads(args[1])
    role = producer if args[0] == "producer" else consumer
    return asyncio.run(role(spec))


if __name__ == "__main__":
    sys.exit(main())
