"""A node drained and restarted in place, seen from one process (issue 13, item 5).

A sidecar ``znode``, one process with a layer on it, and what an operator
does for an upgrade: ``znode drain`` (or SIGTERM), then the same
``znode run`` again. While the node is gone the process's calls wait
(held, not lost, not failed); what it had prefetched was given back first;
once the next node is up they complete, and nothing the process sent or was
sent is lost, duplicated or reordered. (The cluster version, with traffic
from every node and ``new_channel()`` names kept by the other nodes while
one is away, is tests/test_rolling_restart.py.)
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable

from conftest import Znode, eventually

from zchannels.errors import NodeUnavailable
from zchannels.layer import ZeroMQChannelLayer

#: Seconds any step here may take (a start of ``znode`` is well under 2 s).
STEP = 10.0


def drain(endpoint: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zchannels.node", "drain", "--node", endpoint, "--timeout", "10"],
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_a_drained_node_s_clients_hold_their_calls_until_the_next_node(
    znode: Callable[..., Znode],
) -> None:
    node = znode()
    layer = ZeroMQChannelLayer(node=node.endpoint, capacity=1000)
    try:
        channel = await layer.new_channel()
        for i in range(10):
            await layer.send("work", {"i": i})
        # one receive prefetches a window of them; the rest wait on the node
        assert (await asyncio.wait_for(layer.receive("work"), STEP))["i"] == 0

        # (in a thread: this process's event loop must run to move)
        done = await asyncio.to_thread(drain, node.endpoint)
        assert done.returncode == 0, done.stderr
        assert "drains (1 client processes)" in done.stdout
        assert node.proc is not None
        assert await asyncio.to_thread(node.proc.wait, STEP) == 0
        drained_at = time.monotonic()
        assert layer.counters["node_drains"] >= 1

        # the node is gone: calls made now wait for the next one
        sends = asyncio.gather(*(layer.send("work", {"i": i}) for i in range(10, 20)))
        to_self = asyncio.create_task(layer.send(channel, {"hello": "again"}))
        await asyncio.sleep(0)
        assert not sends.done() and not to_self.done()

        again = znode(node.endpoint)  # the same endpoint: the restart
        await asyncio.wait_for(sends, STEP)
        await asyncio.wait_for(to_self, STEP)
        took = time.monotonic() - drained_at
        print(f"held calls completed {took:.2f} s after the drain (node restarted in between)")

        # what the first node held was lost with it (a node alone has no
        # peer to hand it to): 1-9 were given back to it and are gone,
        # counted by it; everything sent after the drain arrives, in order
        got = [(await asyncio.wait_for(layer.receive("work"), STEP))["i"] for _ in range(10)]
        assert got == list(range(10, 20))
        assert await asyncio.wait_for(layer.receive(channel), STEP) == {"hello": "again"}
        assert layer.counters.get("lost_in_node_restart", 0) == 0

        async def registered() -> bool:
            return bool((await layer.node_status())["sessions"] >= 1)

        await eventually(registered, STEP, "the process registered with the next node")
        assert again.proc is not None and again.proc.poll() is None
    finally:
        await layer.close()


async def test_a_held_call_that_fails_or_is_cancelled_is_never_sent(
    znode: Callable[..., Znode],
) -> None:
    """While the node is gone, a call that times out (``NodeUnavailable``) or
    is cancelled was not sent, and is not sent later: its failure means
    "not done", not "maybe"."""
    node = znode()
    layer = ZeroMQChannelLayer(node=node.endpoint, request_timeout=1.0)
    try:
        await layer.send("late", {"warm": True})
        assert await asyncio.wait_for(layer.receive("late"), STEP) == {"warm": True}
        done = await asyncio.to_thread(drain, node.endpoint)
        assert done.returncode == 0, done.stderr
        try:
            await layer.send("late", {"timed": "out"})
        except NodeUnavailable:
            pass
        else:
            raise AssertionError("a send held past request_timeout returned")
        try:
            await asyncio.wait_for(layer.send("late", {"cancelled": True}), 0.05)
        except TimeoutError:
            pass
        znode(node.endpoint)
        await asyncio.wait_for(layer.send("late", {"after": "restart"}), STEP)
        assert await asyncio.wait_for(layer.receive("late"), STEP) == {"after": "restart"}
        try:
            extra = await asyncio.wait_for(layer.receive("late"), 0.5)
        except TimeoutError:
            extra = None
        assert extra is None, f"a failed or cancelled held send was delivered: {extra}"
    finally:
        await layer.close()
