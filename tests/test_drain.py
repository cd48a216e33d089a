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
from pathlib import Path
from typing import Any

import zmq
from conftest import Znode, eventually, wait_for

from zchannels.errors import NodeUnavailable
from zchannels.layer import ZeroMQChannelLayer
from zchannels.protocol import Message, MsgType, decode, encode

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


class ScriptedNode:
    """A bare ROUTER on the node's endpoint, answering what a test tells it
    to: the order in which a node's frames reach a process's connections is
    the test's to choose."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        #: every message read, with its sender
        self.heard: list[tuple[bytes, Message]] = []
        #: read, not taken by ``next`` yet
        self.unread: list[tuple[bytes, Message]] = []

    def hellos(self) -> list[bytes]:
        return [i for i, m in self.heard if m[0] == MsgType.HELLO]

    def next(self, wanted: Callable[[bytes, Message], bool], within: float = STEP) -> bytes:
        """The first message ``wanted`` says is the one (read before and not
        taken yet, or read now); its sender."""
        for n, (ident, message) in enumerate(self.unread):
            if wanted(ident, message):
                del self.unread[n]
                return ident
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.sock.poll(10):
                ident, frame = self.sock.recv_multipart()
                for message in decode(frame):
                    self.heard.append((ident, message))
                    self.unread.append((ident, message))
                for n, (i, message) in enumerate(self.unread):
                    if wanted(i, message):
                        del self.unread[n]
                        return i
        raise TimeoutError("the scripted node did not hear what it waited for")

    def say(self, ident: bytes, mtype: MsgType, *fields: Any) -> None:
        self.sock.send_multipart([ident, encode(mtype, *fields)])

    def welcome(self, ident: bytes, incarnation: str) -> None:
        self.say(ident, MsgType.WELCOME, "node", "nodetag", incarnation, 30.0, 1 << 20)


async def test_a_held_send_is_answered_whichever_connection_the_next_node_welcomes_first(
    tmp_path: Path,
) -> None:
    """A process has two connections (this loop's and the keeper's). After a
    drain, the restarted node welcomes both; the first to be welcomed tells
    the other of the restart. When this loop's connection had read its own
    WELCOME before that news came (the keeper's thread was welcomed first,
    this loop was busy: seen in rolling restarts under load), it said HELLO
    once more; the second WELCOME looked like a lost session, and the sends
    it had released to the new node failed with ``SendOutcomeUnknown``
    though the node took them (and what it had been delivered since was
    forgotten, then counted ``receiver_gone``)."""
    endpoint = f"ipc://{tmp_path}/scripted.sock"
    node = ScriptedNode(endpoint)
    layer = ZeroMQChannelLayer(node=endpoint, request_timeout=STEP)
    try:

        def hello(_ident: bytes, m: Message) -> bool:
            return m[0] == MsgType.HELLO

        first = asyncio.ensure_future(layer.send("work", {"n": 1}))
        for _ in range(2):  # this loop's connection and the keeper's
            node.welcome(await asyncio.to_thread(node.next, hello), "1")
        main = layer.client.connection()
        mine = next(i for i in node.hellos() if i.endswith(b"/0"))
        keeper = next(i for i in node.hellos() if i != mine)

        req: list[int] = []

        def send_from(ident: bytes) -> Callable[[bytes, Message], bool]:
            def wanted(i: bytes, m: Message) -> bool:
                if i == ident and m[0] == MsgType.SEND:
                    req.append(m[1][0])
                    return True
                return False

            return wanted

        await asyncio.to_thread(node.next, send_from(mine))
        node.say(mine, MsgType.ACK, req.pop(), 0)
        await asyncio.wait_for(first, STEP)

        # the drain: both connections say MOVING, and this loop's holds a send
        for ident in (mine, keeper):
            node.say(ident, MsgType.DRAIN, "1")
        moved: set[bytes] = set()

        def moving(i: bytes, m: Message) -> bool:
            if m[0] == MsgType.MOVING:
                moved.add(i)
            return moved == {mine, keeper}

        await asyncio.to_thread(node.next, moving)
        held = asyncio.ensure_future(layer.send("work", {"n": 2}))
        await eventually(lambda: main._held, STEP, "the send to be held")

        # the next node: both connections find it (their pings are answered
        # RESET) and say HELLO again ...
        def found(ident: bytes) -> None:
            node.next(lambda i, m: i == ident and m[0] == MsgType.PING)
            node.say(ident, MsgType.RESET, "2")

        node.heard.clear()
        node.unread.clear()
        for ident in (mine, keeper):
            await asyncio.to_thread(found, ident)
        while len(set(node.hellos())) < 2:
            await asyncio.to_thread(node.next, hello)
        # ... and both are welcomed; the keeper's thread reads its WELCOME
        # first (this loop is busy meanwhile) and tells this loop's
        # connection of the restart, which has read its own by the time
        # the news comes.
        for ident in (mine, keeper):
            node.welcome(ident, "2")
        loop = asyncio.get_running_loop()

        def told() -> bool:  # the keeper's news waits in this (busy) loop
            ready = getattr(loop, "_ready", ())
            return any(getattr(h, "_callback", None) == main.rehello for h in ready)

        wait_for(told, STEP, "the keeper to tell this loop's connection of the restart")
        main._on_readable()  # this loop reads its WELCOME before the news
        node.heard.clear()
        node.unread.clear()
        await asyncio.to_thread(node.next, send_from(mine))  # the held send, released
        try:  # a HELLO said again is answered, as any node would
            node.welcome(await asyncio.to_thread(node.next, hello, 0.5), "2")
            await asyncio.wait({held}, timeout=STEP)  # (the welcome fails it)
        except TimeoutError:
            pass
        node.say(mine, MsgType.ACK, req.pop(), 0)
        await asyncio.wait_for(held, STEP)  # taken, and said so
        assert node.hellos() == [], "a connection welcomed by the next node said HELLO again"
    finally:
        await asyncio.wait_for(layer.close(), STEP)
        node.sock.close()
