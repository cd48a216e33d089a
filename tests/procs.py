"""Client processes for multi-process tests, and the handle tests drive them by.

Run as a script (``python -m tests.procs ROLE --node ENDPOINT ...``, from the
repository root) it is one client process of a ``znode``:

- ``consumer``: a layer on ``--node``; receives on ``--channel`` or on a fresh
  ``new_channel()``, joins every ``--group``, prints
  ``{"event": "ready", "channel": ..., "pid": ...}``, then one
  ``{"event": "message", "message": ...}`` per message received. On SIGTERM it
  closes its layer, prints ``{"event": "closed"}`` and exits 0.
- ``sender``: sends ``--count`` messages ``{"i": i, "tag": ..., "pid": ...}`` to
  ``--channel`` (``send``) or ``--group`` (``group_send``), prints
  ``{"event": "sent", "count": n, "full": k}``, closes its layer and exits 0
  (a send refused ``ChannelFull`` waits 10 ms and is made again: ``k``
  times in all).
- ``flood``: no layer: a raw DEALER that sends malformed frames to the node as
  fast as the node reads them (it waits for a STATUS answer every
  ``FLOOD_WINDOW`` frames). Prints ``{"event": "flooding"}`` once the first
  thousand went out; on SIGTERM it stops, makes sure the node has read
  everything (a STATUS request answered after the garbage), prints
  ``{"event": "stopped", "sent": n}`` and exits 0.

Every line on stdout is one JSON object; tests wait for lines with deadlines
(``ClientProcess``), never for fixed times. Diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


#: Seconds between two looks for a child's next output line (while waiting
#: for it with a deadline).
LINE_POLL = 0.002


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


# -- roles (run in the child) --------------------------------------------------
def _layer(args: argparse.Namespace) -> Any:
    """The layer on ``--node``; ``--node embedded:CLUSTER:KEYFILE``: on this
    process's own embedded node, a member of CLUSTER (found by mDNS, keyed);
    ``--node shared:SCOPE``: on the shared node of scope SCOPE (CONFIG
    ``{"scope": SCOPE}``, the default's node under a name of its own)."""
    from zchannels.layer import ZeroMQChannelLayer

    if args.node.startswith("shared:"):
        return ZeroMQChannelLayer(scope=args.node[len("shared:") :])
    if args.node.startswith("embedded:"):
        _, cluster, key_file = args.node.split(":", 2)
        return ZeroMQChannelLayer(cluster=cluster, discovery="mdns", key_file=key_file)
    return ZeroMQChannelLayer(node=args.node)


async def consumer(args: argparse.Namespace) -> int:
    layer = _layer(args)
    channel = args.channel or await layer.new_channel()
    for group in args.group:
        await layer.group_add(group, channel)

    async def receive_forever() -> None:
        while True:
            message = await layer.receive(channel)
            emit("message", message=message)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    receiving = asyncio.create_task(receive_forever())
    emit("ready", channel=channel, pid=os.getpid())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if receiving.done():
        stopping.cancel()
        receiving.result()  # it can only end by failing: raise that
    receiving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await receiving
    await layer.close()
    emit("closed")
    return 0


async def sender(args: argparse.Namespace) -> int:
    if (args.channel is None) == (not args.group):
        raise SystemExit("sender: give exactly one of --channel or --group")
    from zchannels.errors import ChannelFull

    layer = _layer(args)
    full = 0
    for i in range(args.count):
        message = {"i": i, "tag": args.tag, "pid": os.getpid()}
        if args.channel is not None:
            while True:
                try:
                    await layer.send(args.channel, message)
                    break
                except ChannelFull:
                    # (backpressure, as the contract says: consumers slower
                    # than this loop, as on a loaded CI host; a producer
                    # waits and sends again, and the message is not lost)
                    full += 1
                    await asyncio.sleep(0.01)
        else:
            await layer.group_send(args.group[0], message)
    emit("sent", count=args.count, full=full)
    await layer.close()
    return 0


def garbage_frames(rng: random.Random) -> list[bytes]:
    """One of each kind of malformed frame (each one a decode error)."""
    import msgpack

    from zchannels.protocol import PROTOCOL_VERSION, MsgType, encode

    v = bytes((PROTOCOL_VERSION,))
    return [
        b"",
        v,
        bytes((PROTOCOL_VERSION + 1, MsgType.PING)) + msgpack.packb([]),
        v + bytes((200,)) + msgpack.packb([]),
        v + bytes((MsgType.PING,)) + b"\xc1",
        v + bytes((MsgType.PING,)) + msgpack.packb({"not": "an array"}),
        encode(MsgType.SEND, "req", "channel", b"payload", 1),
        v + bytes((MsgType.BATCH,)) + msgpack.packb([[MsgType.BATCH, []]]),
        # an unknown type, so random bytes can never make a valid message
        v + bytes((200,)) + rng.randbytes(rng.randrange(0, 200)),
    ]


#: Garbage frames the flooder sends before it waits for the node to have
#: read them: a flood at the node's own pace, the worst a single socket
#: can do. (The node's receive queue is unbounded, RCVHWM 0, so a flooder
#: that never waited could pile up more than the node reads in the test's
#: time on a loaded machine: seen once in CI, "stopped" not within 20 s.)
FLOOD_WINDOW = 5000


def flood(args: argparse.Namespace) -> int:
    import zmq

    from zchannels.protocol import MsgType, decode, encode

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rng = random.Random(args.seed)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args.node)
    sent = 0
    announced = False
    probes = itertools.count(1)

    def caught_up(within: float) -> bool:
        """A STATUS request after the garbage, answered: the node reads one
        connection in order, so it has read every frame before it."""
        probe = next(probes)
        sock.send(encode(MsgType.STATUS, probe))
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not sock.poll(100):
                continue
            for mtype, fields in decode(sock.recv()):
                if mtype == MsgType.STATUS_REPLY and fields[0] == probe:
                    return True
        return False

    unread = 0
    try:
        while not stop.is_set():
            for frame in garbage_frames(rng):
                sock.send(frame)
                sent += 1
                unread += 1
            if not announced and sent >= 1000:
                emit("flooding")
                announced = True
            if unread >= FLOOD_WINDOW:
                if not caught_up(30):
                    print("flood: the node stopped answering STATUS", file=sys.stderr)
                    return 1
                unread = 0
        if caught_up(30):
            emit("stopped", sent=sent)
            return 0
        print("flood: the node never answered STATUS", file=sys.stderr)
        return 1
    finally:
        sock.close(0)
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.procs")
    parser.add_argument("role", choices=("consumer", "sender", "flood"))
    parser.add_argument("--node", required=True, metavar="ENDPOINT")
    parser.add_argument("--channel")
    parser.add_argument("--group", action="append", default=[])
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--tag", default="")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.role == "consumer":
        return asyncio.run(consumer(args))
    if args.role == "sender":
        return asyncio.run(sender(args))
    return flood(args)


# -- the handle (used by tests) ------------------------------------------------
class ClientProcess:
    """A child running one role; its stdout lines, awaited with deadlines.

    ``close()`` kills it if it still runs and reaps it; fixtures call it, so
    a failing test leaves no process behind.
    """

    def __init__(
        self,
        role: str,
        node: str,
        *args: str,
        launch: Callable[..., subprocess.Popen[str]] = subprocess.Popen,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``launch``: how to start it (``Host.run`` starts it on a LAN host);
        ``argv``: another program printing JSON lines instead of a role."""
        self.role = role
        self.proc = launch(
            argv or [sys.executable, "-m", "tests.procs", role, "--node", node, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        #: every line read so far, in order
        self.lines: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(
            target=self._read, name=f"procs-{role}-{self.proc.pid}", daemon=True
        )
        self._reader.start()

    def __repr__(self) -> str:
        return f"<{self.role} pid {self.proc.pid}>"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                item = json.loads(line)
            except ValueError:
                item = {"event": "unparsable", "line": line}
            self._lines.put(item)
        self._lines.put(None)

    async def next_line(self, within: float) -> dict[str, Any] | None:
        """The next line, or None if none came in ``within`` seconds.
        Raises AssertionError if the process ended first."""
        deadline = time.monotonic() + within
        while True:
            try:
                item = self._lines.get_nowait()
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return None
                await asyncio.sleep(LINE_POLL)
                continue
            if item is None:
                self._lines.put(None)  # stay at EOF for later callers
                code = self.proc.wait(5)
                raise AssertionError(f"{self!r} exited with {code}; it printed {self.lines}")
            self.lines.append(item)
            return item

    async def expect(
        self, what: str, match: Callable[[dict[str, Any]], bool], within: float
    ) -> dict[str, Any]:
        """Read lines until one matches; fail after ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            item = await self.next_line(max(0.0, deadline - time.monotonic()))
            if item is None:
                raise AssertionError(
                    f"{self!r}: no {what} within {within:g} s; last lines {self.lines[-5:]}"
                )
            if match(item):
                return item

    async def event(self, name: str, within: float) -> dict[str, Any]:
        return await self.expect(f"{name!r} event", lambda e: e.get("event") == name, within)

    async def messages(
        self,
        n: int,
        within: float,
        keep: Callable[[dict[str, Any]], bool] = lambda m: True,
    ) -> list[dict[str, Any]]:
        """The next ``n`` received messages for which ``keep`` is true."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + within
        while len(got) < n:
            item = await self.next_line(max(0.0, deadline - time.monotonic()))
            if item is None:
                raise AssertionError(
                    f"{self!r}: {len(got)} of {n} messages within {within:g} s: {got[-5:]}"
                )
            if item.get("event") == "message" and keep(item["message"]):
                got.append(item["message"])
        return got

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, seconds: float) -> int:
        return self.proc.wait(seconds)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


async def drain(
    procs: Iterable[ClientProcess], n: int, within: float
) -> dict[ClientProcess, list[dict[str, Any]]]:
    """Messages received by ``procs`` together until there are ``n`` in all."""
    procs = list(procs)
    got: dict[ClientProcess, list[dict[str, Any]]] = {p: [] for p in procs}
    deadline = time.monotonic() + within
    while sum(len(v) for v in got.values()) < n:
        if time.monotonic() > deadline:
            counts = {repr(p): len(v) for p, v in got.items()}
            raise AssertionError(f"{counts} of {n} messages within {within:g} s")
        for p in procs:
            item = await p.next_line(0.0)
            if item is None:
                await asyncio.sleep(LINE_POLL)
            elif item.get("event") == "message":
                got[p].append(item["message"])
    return got


if __name__ == "__main__":
    sys.exit(main())
