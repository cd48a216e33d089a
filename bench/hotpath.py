"""Where the time of one message goes, in-process (``python -m bench.hotpath``).

No sockets and no second process: each figure times one piece of the delivery
path on its own, so it says where the time of a ``bench/run`` figure goes and
how far from its floor each piece is:

- the node, per message: a client frame decoded, handled by the core, the
  answer encoded (what a sidecar adds to every hop; the relay floor does none
  of it);
- the node, per ``group_send`` to 1,000 members of one process (one bundle),
  and the consumption reports that come back: one ``CONSUMED_BUNDLES`` entry,
  and for comparison what a client that reports per member sends (one
  ``CONSUMED`` frame, a report per member);
- the consumer, per ``group_send`` to 1,000 members of one process: the
  deliveries fed straight into a connection until the last of 1,000
  ``receive()``s returns, against the floor of any asyncio consumer — 1,000
  futures set and 1,000 tasks woken — and ``asyncio.Queue`` (what channels_redis
  pubsub's consumer uses per channel).

Medians of several repetitions; the machine's load moves every figure, the
ratios less.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

import msgpack
from zchannels.node.core import CoreSettings, NodeCore

from zchannels.layer import ZeroMQChannelLayer
from zchannels.protocol import FEATURE_BUNDLE_REPORTS, MsgType, decode, encode, encode_many

MEMBERS = 1000
PAYLOAD = msgpack.packb({"type": "bench.data", "seq": 1, "t0": 1.0, "text": "x" * 64})


def _median_us(run: Callable[[], None], count: int, reps: int = 5) -> float:
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(count):
            run()
        samples.append((time.perf_counter() - start) / count * 1e6)
    return statistics.median(samples)


def node_per_message() -> float:
    """µs: a [CONSUMED, SEND] frame from A decoded and handled, B's DELIVER
    encoded (one hop of ping-pong, after the first)."""
    core = NodeCore(CoreSettings("n1", "abcdef", "inc1", 3.0, 1 << 20))
    a, b = b"aaaaaaaaaa/0", b"bbbbbbbbbb/0"
    core.handle(a, [(MsgType.HELLO, ("aaaaaaaaaa", 1, [60.0]))], 0.0)
    core.handle(b, [(MsgType.HELLO, ("bbbbbbbbbb", 1, [60.0]))], 0.0)
    x = "asgi|specific.abcdef.bbbbbbbbbb!1"
    y = "asgi|specific.abcdef.aaaaaaaaaa!1"
    core.handle(b, [(MsgType.RECV, (x, 32))], 0.0)
    core.handle(a, [(MsgType.RECV, (y, 32))], 0.0)
    core.handle(a, [(MsgType.SEND, (1, x, PAYLOAD, 100))], 0.0)  # (a reservation)

    frame = encode_many(
        [(MsgType.CONSUMED, ([[y, 1 << 60, 1, 0]],)), (MsgType.SEND, (0, x, PAYLOAD, 100))]
    )
    taken = [(MsgType.CONSUMED, ([[x, 1 << 60, 1, 0]],))]

    def hop() -> None:
        for _conn, (mtype, fields) in core.handle(a, decode(frame, 1 << 20), 1.0):
            encode(mtype, *fields)
        core.handle(b, taken, 1.0)  # (B's report, which rides B's next frame)

    def hops() -> None:
        core.handle(b, [(MsgType.RECV, (x, 1000))], 1.0)  # credit, as a window would
        for _ in range(1000):
            hop()

    return _median_us(hops, 5) / 1000


def _group_of_one_process(
    features: int = FEATURE_BUNDLE_REPORTS,
) -> tuple[NodeCore, bytes, bytes, list[str]]:
    """A core with two processes: ``a`` holds MEMBERS channels in group
    ``asgi|g``, each with credit; ``b`` sends to it. ``features``: what
    ``a`` says in HELLO (0: a client that reports per member)."""
    core = NodeCore(CoreSettings("n1", "abcdef", "inc1", 3.0, 1 << 20))
    a, b = b"aaaaaaaaaa/0", b"bbbbbbbbbb/0"
    core.handle(a, [(MsgType.HELLO, ("aaaaaaaaaa", 1, [60.0, features]))], 0.0)
    core.handle(b, [(MsgType.HELLO, ("bbbbbbbbbb", 1, [60.0]))], 0.0)
    names = [f"asgi|specific.abcdef.aaaaaaaaaa!{i}" for i in range(MEMBERS)]
    for i, name in enumerate(names):
        core.handle(a, [(MsgType.GROUP_ADD, (i + 1, "asgi|g", name, 1e6, 100))], 0.0)
        core.handle(a, [(MsgType.RECV, (name, 1 << 20))], 0.0)
    return core, a, b, names


def node_fanout() -> float:
    """µs: one group_send to MEMBERS channels of one process, with credit,
    its frame encoded (the consumption reports of the members, applied
    between shots, not counted: ``node_reports``)."""
    core, a, b, names = _group_of_one_process()
    shot = iter(range(1, 1 << 30))
    samples = []
    for _ in range(25):
        start = time.perf_counter()
        out = core.handle(b, [(MsgType.GROUP_SEND, (next(shot), "asgi|g", PAYLOAD))], 1.0)
        encode_many([m for conn, m in out if conn == a])
        samples.append((time.perf_counter() - start) * 1e6)
        seq = core.queues.seq
        core.handle(a, [(MsgType.CONSUMED_BUNDLES, ([[seq, 0, len(names)]],))], 1.0)
    return statistics.median(samples[5:])


def node_reports(per_member: bool = False) -> float:
    """µs: the receiving process's consumption reports after a group_send to
    MEMBERS of its channels, decoded and applied: one ``CONSUMED_BUNDLES``
    entry (every member took it), or with ``per_member`` one ``CONSUMED``
    report per member (what a client that does not report per bundle sends)."""
    core, a, b, names = _group_of_one_process(0 if per_member else FEATURE_BUNDLE_REPORTS)
    per_channel = encode_many([(MsgType.CONSUMED, ([[n, 1 << 60, 1, 0] for n in names],))])
    shot = iter(range(1, 1 << 30))
    samples = []
    for _ in range(25):
        core.handle(b, [(MsgType.GROUP_SEND, (next(shot), "asgi|g", PAYLOAD))], 1.0)
        if per_member:
            frame = per_channel
        else:
            frame = encode(MsgType.CONSUMED_BUNDLES, [[core.queues.seq, 0, len(names)]])
        start = time.perf_counter()
        core.handle(a, decode(frame, 1 << 22), 1.0)
        samples.append((time.perf_counter() - start) * 1e6)
    assert core.queues.held(names[0]) == 0, "the reports released every copy"
    return statistics.median(samples[5:])


async def consumer_fanout() -> tuple[float, float, float]:
    """ms for MEMBERS receivers of one process: zchannels (deliveries fed into
    the connection), bare futures, asyncio.Queue."""
    layer = ZeroMQChannelLayer(node="ipc:///nonexistent/zchannels-hotpath.sock")
    client = layer.client
    conn = client.connection()
    names = [f"specific.abcdef.{client.session}!{i}" for i in range(MEMBERS)]
    wires = [f"asgi|{n}" for n in names]
    count = 0
    done = asyncio.Event()

    def hit() -> None:
        nonlocal count
        count += 1
        if count == MEMBERS:
            done.set()

    async def member(channel: str) -> None:
        while True:
            await layer.receive(channel)
            hit()

    async def timed(fire: Callable[[int], None], reps: int = 15) -> float:
        nonlocal count
        samples = []
        for rep in range(reps):
            count = 0
            done.clear()
            start = time.perf_counter()
            fire(rep)
            await done.wait()
            samples.append((time.perf_counter() - start) * 1e3)
            await asyncio.sleep(0.002)
        return statistics.median(samples[3:])

    tasks = [asyncio.create_task(member(c)) for c in names]
    await asyncio.sleep(0.05)
    ours = await timed(
        lambda rep: conn._dispatch(MsgType.DELIVER_BUNDLE, (wires, [PAYLOAD, 60.0, rep + 1]))
    )
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[None]] = []

    async def waiter(i: int) -> None:
        while True:
            futures[i] = loop.create_future()
            await futures[i]
            hit()

    futures = [loop.create_future() for _ in range(MEMBERS)]
    tasks = [asyncio.create_task(waiter(i)) for i in range(MEMBERS)]
    await asyncio.sleep(0.01)
    bare = await timed(lambda rep: [f.set_result(None) for f in list(futures)] and None)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    queues: list[asyncio.Queue[bytes]] = [asyncio.Queue() for _ in range(MEMBERS)]

    async def getter(q: asyncio.Queue[bytes]) -> None:
        while True:
            msgpack.unpackb(await q.get())
            hit()

    tasks = [asyncio.create_task(getter(q)) for q in queues]
    await asyncio.sleep(0.01)
    queue = await timed(lambda rep: [q.put_nowait(PAYLOAD) for q in queues] and None)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await layer.close()
    return ours, bare, queue


def main() -> None:
    print(f"node, per message (decode, core, encode):         {node_per_message():7.1f} µs")
    print(f"node, group_send to {MEMBERS:,} members of a process:   {node_fanout() / 1e3:7.2f} ms")
    print(f"node, their consumption reports (per bundle):      {node_reports() / 1e3:7.2f} ms")
    print(f"  (per member, a client without bundle reports):    {node_reports(True) / 1e3:7.2f} ms")
    ours, bare, queue = asyncio.run(consumer_fanout())
    print(f"consumer, {MEMBERS:,} receive()s of one group message:  {ours:7.2f} ms")
    print(f"  floor: {MEMBERS:,} futures set, tasks woken:         {bare:7.2f} ms")
    print(f"  asyncio.Queue per channel + msgpack (pubsub's way): {queue:7.2f} ms")


if __name__ == "__main__":
    main()
