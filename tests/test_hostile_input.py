"""Malformed, nonsensical and oversized input sent straight at a ``znode``.

A raw pyzmq DEALER (no layer, no session unless it says HELLO) sends frames
the protocol does not allow. The node must drop each one, count it (``znode
status --json``: ``counters.decode_errors``, ``decode_errors`` by reason,
``counters.bad_requests``) and go on: after every case a well-behaved layer
client still does a send/receive round trip. Every node here is a real
``znode run --preset test`` process with ``--max-frame-size 65536``.

The raw socket learns that the node has read everything it sent by asking for
STATUS last: a node reads one connection in order, so the answer comes after
every frame before it was handled.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
import zmq
from channels.exceptions import MessageTooLarge
from conftest import POLL
from procs import ClientProcess

from zchannels.layer import ZeroMQChannelLayer
from zchannels.names import wire_name
from zchannels.protocol import PROTOCOL_VERSION, ErrorCode, MsgType, decode, encode

MAX_FRAME = 65536
#: Seconds any single expected thing may take.
STEP = 5.0
V = bytes((PROTOCOL_VERSION,))
#: Types no version of the protocol will have soon (the enum is append-only).
UNKNOWN_TYPES = (200, 255)


def frame(mtype: int, body: Any) -> bytes:
    """A frame with a valid header and ``body`` packed as it is."""
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return V + bytes((mtype,)) + packed


def wire(name: str) -> str:
    return wire_name("asgi", name)


def znode_status(endpoint: str) -> dict[str, Any]:
    """What ``znode status --json`` says (the operator's view)."""
    result = subprocess.run(
        [sys.executable, "-m", "zchannels.node", "status", "--node", endpoint, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, f"znode status failed: {result.stderr}"
    status: dict[str, Any] = json.loads(result.stdout)
    return status


@dataclass
class Target:
    """A znode, a well-behaved layer on it, and raw sockets aimed at it."""

    endpoint: str
    layer: ZeroMQChannelLayer
    ctx: zmq.Context[zmq.Socket[bytes]] = field(default_factory=zmq.Context)
    sockets: list[zmq.Socket[bytes]] = field(default_factory=list)
    _req: int = 1_000_000

    def raw(self) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.connect(self.endpoint)
        self.sockets.append(sock)
        return sock

    def next_req(self) -> int:
        self._req += 1
        return self._req

    async def sync(self, sock: zmq.Socket[bytes], within: float = STEP) -> list[Any]:
        """Ask for STATUS last and wait for the answer: the node has then
        handled everything ``sock`` sent before. Returns every other message
        the node sent ``sock`` meanwhile, in order."""
        req = self.next_req()
        sock.send(encode(MsgType.STATUS, req))
        replies: list[Any] = []
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not sock.poll(0):
                await asyncio.sleep(POLL)
                continue
            for mtype, fields in decode(sock.recv()):
                if mtype == MsgType.STATUS_REPLY and fields[0] == req:
                    return replies
                replies.append((mtype, fields))
        raise AssertionError(f"the node did not answer STATUS in {within:g} s")

    async def hello(self, sock: zmq.Socket[bytes]) -> None:
        """Open a session on ``sock`` as a layer would."""
        tag = "hostile" + "".join(random.choices("abcdefghij", k=3))
        sock.send(encode(MsgType.HELLO, tag, 4242, [60.0]))
        replies = await self.sync(sock)
        assert [m for m, _ in replies] == [MsgType.WELCOME], replies

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(0)
        self.ctx.term()


async def roundtrip(layer: ZeroMQChannelLayer, n: int = 1) -> None:
    """The well-behaved client still works: what it sends comes back."""
    channel = f"check.{random.getrandbits(32):x}"
    for i in range(n):
        message = {"i": i, "text": "still here"}
        await asyncio.wait_for(layer.send(channel, message), STEP)
        assert await asyncio.wait_for(layer.receive(channel), STEP) == message


@pytest.fixture
async def target(znode: Callable[..., Any]) -> AsyncIterator[Target]:
    # A long lease: these tests are about input, not leases, and a raw
    # socket that never pings keeps its session through the test.
    node = znode(None, "--max-frame-size", str(MAX_FRAME), "--client-lease", "60")
    layer = ZeroMQChannelLayer(node=node.endpoint, request_timeout=STEP)
    t = Target(node.endpoint, layer)
    try:
        await roundtrip(layer)
        yield t
    finally:
        t.close()
        await layer.close()


# -- frames that do not decode ------------------------------------------------
DECODE_CASES = [
    pytest.param([b""], {"truncated": 1}, id="empty"),
    pytest.param([V], {"truncated": 1}, id="one-byte"),
    pytest.param(
        [
            bytes((0, MsgType.PING)) + msgpack.packb([]),
            bytes((PROTOCOL_VERSION + 1, MsgType.PING)) + msgpack.packb([]),
            bytes((255, MsgType.PING)) + msgpack.packb([]),
            b"GET / HTTP/1.1\r\nHost: znode\r\n\r\n",
        ],
        {"version": 4},
        id="wrong-version",
    ),
    pytest.param(
        [frame(t, []) for t in UNKNOWN_TYPES] + [frame(UNKNOWN_TYPES[0], [1, "x", b"y"])],
        {"type": 3},
        id="unknown-type",
    ),
    pytest.param(
        [
            V + bytes((MsgType.PING,)),  # header, no body
            V + bytes((MsgType.PING,)) + b"\xc1",  # a byte msgpack never uses
            V + bytes((MsgType.SEND,)) + b"\x93\x01",  # array cut short
            frame(MsgType.PING, []) + b"\x00",  # trailing bytes
            V + bytes((MsgType.SEND,)) + b"\x93\x01\xa1c\xc6\xff\xff\xff\xff",  # bin32 cut
        ],
        {"msgpack": 5},
        id="msgpack-garbage",
    ),
    pytest.param(
        [
            V + bytes((MsgType.PING,)) + b"\xdd\xff\xff\xff\xff",  # array of 2^32-1
            V + bytes((MsgType.PING,)) + b"\xdf\xff\xff\xff\xff",  # map of 2^32-1
            V + bytes((MsgType.SEND,)) + b"\x93\x01\xa1c\xdb\xff\xff\xff\xff",  # str 4 GiB
            V + bytes((MsgType.PING,)) + b"\x91" * 60_000,  # nested 60,000 deep
        ],
        {"msgpack": 4},
        id="allocation-bombs",
    ),
    pytest.param(
        [frame(MsgType.PING, body) for body in ({"a": 1}, 7, None, b"bytes", "text")],
        {"shape": 5},
        id="body-not-an-array",
    ),
    pytest.param(
        [
            encode(MsgType.PING, 1),
            encode(MsgType.SEND, 1, "asgi|c"),
            encode(MsgType.SEND, 1, "asgi|c", b"x", 9, 9),
            encode(MsgType.HELLO),
            encode(MsgType.STATUS),
        ],
        {"shape": 5},
        id="wrong-field-count",
    ),
    pytest.param(
        [
            encode(MsgType.SEND, "1", "asgi|c", b"x", 1),
            encode(MsgType.SEND, 1, "asgi|c", "text, not bytes", 1),
            encode(MsgType.SEND, True, "asgi|c", b"x", 1),
            encode(MsgType.SEND, 1, b"asgi|c", b"x", 1),
            encode(MsgType.RECV, "asgi|c", 1.5),
            encode(MsgType.GROUP_ADD, 1, "asgi|g", "asgi|c", "10", 1),
            encode(MsgType.HELLO, "abcdefghij", "pid", []),
            encode(MsgType.STATUS, None),
        ],
        {"field": 8},
        id="wrong-field-types",
    ),
    pytest.param(
        [
            # Valid requests around a nested BATCH: the whole frame is
            # dropped, so the STATUS in it is never answered.
            frame(MsgType.BATCH, [[MsgType.STATUS, 7], [MsgType.BATCH, [[MsgType.STATUS, 8]]]]),
            frame(MsgType.BATCH, [[MsgType.BATCH]]),
        ],
        {"shape": 2},
        id="nested-batch",
    ),
    pytest.param(
        [
            frame(MsgType.BATCH, [5]),
            frame(MsgType.BATCH, [[]]),
            frame(MsgType.BATCH, [["PING"]]),
            frame(MsgType.BATCH, {"a": [MsgType.PING]}),
            frame(MsgType.BATCH, [[MsgType.STATUS, 9], [MsgType.SEND, 1]]),
            frame(MsgType.BATCH, [[MsgType.STATUS, 10], [UNKNOWN_TYPES[0]]]),
        ],
        {"shape": 5, "type": 1},
        id="bad-batch-items",
    ),
    pytest.param([[b"two", b"parts"], [b"", b"", b""]], {"shape": 2}, id="multipart"),
]


@pytest.mark.parametrize(("frames", "reasons"), DECODE_CASES)
async def test_malformed_frames_are_dropped_and_counted(
    target: Target, frames: list[bytes | list[bytes]], reasons: dict[str, int]
) -> None:
    raw = target.raw()
    for f in frames:
        if isinstance(f, list):
            raw.send_multipart(f)
        else:
            raw.send(f)
    replies = await target.sync(raw)
    assert replies == [], "the node answered a frame it should have dropped"
    status = znode_status(target.endpoint)
    assert status["decode_errors"] == reasons
    assert status["counters"]["decode_errors"] == sum(reasons.values())
    assert status["counters"]["bad_requests"] == 0
    assert status["sessions"] == 1  # the layer's; nothing above opened one
    await roundtrip(target.layer)


async def test_random_bytes_are_dropped_and_counted(target: Target) -> None:
    rng = random.Random(20240611)
    frames = [rng.randbytes(rng.randrange(0, 300)) for _ in range(300)]
    # and as many with a valid version byte, so they get past the first check
    frames += [V + rng.randbytes(rng.randrange(1, 300)) for _ in range(300)]
    raw = target.raw()
    for f in frames:
        raw.send(f)
    replies = await target.sync(raw)
    status = znode_status(target.endpoint)
    by_reason = status["decode_errors"]
    print(f"600 random frames dropped as {dict(sorted(by_reason.items()))}")
    assert replies == []
    assert sum(by_reason.values()) == status["counters"]["decode_errors"] == len(frames)
    assert set(by_reason) <= {"truncated", "version", "type", "msgpack", "shape", "field"}
    await roundtrip(target.layer)


async def test_node_to_client_types_sent_to_the_node_are_counted(target: Target) -> None:
    raw = target.raw()
    frames = [
        encode(MsgType.WELCOME, "node", "abcdef", "inc", 1.0, 1000),
        encode(MsgType.PONG, "inc"),
        encode(MsgType.ACK, 1, 1),
        encode(MsgType.ERROR, 1, ErrorCode.BAD_REQUEST, "no"),
        encode(MsgType.DELIVER, wire("c"), [[b"\x80", 1.0]]),
        encode(MsgType.RESET, "inc"),
        encode(MsgType.STATUS_REPLY, 1, {}),
        encode(MsgType.GROUP_INFO_REPLY, 1, []),
    ]
    for f in frames:
        raw.send(f)
    assert await target.sync(raw) == []
    status = znode_status(target.endpoint)
    assert status["counters"]["unexpected_type"] == len(frames)
    assert status["counters"]["decode_errors"] == 0
    assert status["queued"] == 0  # the DELIVER put nothing anywhere
    await roundtrip(target.layer)


# -- well-formed frames with nonsense in them ----------------------------------
async def test_hello_with_nonsense_is_refused(target: Target) -> None:
    raw = target.raw()
    hellos = [
        ("short", [60.0]),
        ("!!!!!!!!!!", [60.0]),
        ("a" * 11, [60.0]),
        ("a" * 10_000, [60.0]),
        ("abcdefghij", [0.0]),
        ("abcdefghij", [-1.0]),
        ("abcdefghij", [math.nan]),
        ("abcdefghij", [math.inf]),
        ("abcdefghij", [True]),
        ("abcdefghij", ["60"]),
        ("abcdefghij", [1e300]),
        ("abcdefghij", []),
    ]
    for tag, policy in hellos:
        raw.send(encode(MsgType.HELLO, tag, 1, policy))
    raw.send(encode(MsgType.SEND, 77, wire("c"), b"\x80", 100))  # no session was opened
    replies = await target.sync(raw)
    refusals = [f for m, f in replies if m == MsgType.ERROR and f[0] == 0]
    assert len(refusals) == len(hellos), replies
    assert {f[1] for f in refusals} == {ErrorCode.BAD_REQUEST}
    assert (MsgType.ERROR, (77, ErrorCode.UNKNOWN_SESSION, "")) in [
        (m, tuple(f)) for m, f in replies
    ]
    assert not [m for m, _ in replies if m == MsgType.WELCOME]
    status = znode_status(target.endpoint)
    assert status["counters"]["bad_requests"] == len(hellos)
    assert status["sessions"] == 1
    assert status["queued"] == 0
    await roundtrip(target.layer)


async def test_invalid_names_are_refused_with_bad_request(target: Target) -> None:
    raw = target.raw()
    await target.hello(raw)
    bad_channels = [
        "",
        "|",
        "asgi|",
        "asgi|has space",
        "asgi|" + "x" * 150,
        "asgi|ünïcödé",
        "a|b|c",
        "bad prefix|chan",
    ]
    requests: list[tuple[int, bytes]] = []
    for name in bad_channels:
        req = target.next_req()
        requests.append((req, encode(MsgType.SEND, req, name, b"\x80", 100)))
    for group, channel in [("bad group", wire("c")), (wire("g"), "bad channel"), ("", "")]:
        req = target.next_req()
        requests.append((req, encode(MsgType.GROUP_ADD, req, group, channel, 60.0, 100)))
        req = target.next_req()
        requests.append((req, encode(MsgType.GROUP_DISCARD, req, group, channel)))
    req = target.next_req()
    requests.append((req, encode(MsgType.GROUP_SEND, req, "no spaces allowed", b"\x80")))
    for _, f in requests:
        raw.send(f)
    replies = await target.sync(raw)
    answers = {f[0]: (m, f[1]) for m, f in replies if m in (MsgType.ERROR, MsgType.ACK)}
    for req, _ in requests:
        assert answers.get(req) == (MsgType.ERROR, ErrorCode.BAD_REQUEST), (req, replies)
    status = znode_status(target.endpoint)
    assert status["counters"]["bad_requests"] == len(requests)
    assert status["counters"]["enqueued"] == 1  # the fixture's round trip, nothing more
    assert status["queued"] == 0
    assert status["groups"] == 0
    await roundtrip(target.layer)


async def test_negative_and_huge_credit(target: Target) -> None:
    raw = target.raw()
    await target.hello(raw)
    raw.send(encode(MsgType.RECV, wire("credit.neg"), -1))
    raw.send(encode(MsgType.RECV, wire("credit.neg"), -(2**63)))
    raw.send(encode(MsgType.RECV, wire("credit.huge"), 2**64 - 1))
    assert await target.sync(raw) == []
    status = znode_status(target.endpoint)
    assert status["counters"]["bad_requests"] == 2

    # Negative credit granted nothing: a message waits for a real receiver.
    await target.layer.send("credit.neg", {"neg": True})
    assert await asyncio.wait_for(target.layer.receive("credit.neg"), STEP) == {"neg": True}
    # Huge credit is just a lot of credit: the raw socket gets what is sent.
    sent = [{"huge": i} for i in range(5)]
    for message in sent:
        await target.layer.send("credit.huge", message)
    got: list[Any] = []
    deadline = time.monotonic() + STEP
    while len(got) < len(sent) and time.monotonic() < deadline:
        for mtype, fields in await target.sync(raw):
            if mtype == MsgType.DELIVER and fields[0] == wire("credit.huge"):
                got += [msgpack.unpackb(item[0]) for item in fields[1]]
    assert got == sent
    await roundtrip(target.layer)


async def test_group_add_with_nonsense_expiry(target: Target) -> None:
    raw = target.raw()
    await target.hello(raw)
    expiries = {"nan": math.nan, "inf": math.inf, "neg": -5.0, "huge": 1e308, "zero": 0}
    reqs = {}
    for name, expiry in expiries.items():
        reqs[name] = req = target.next_req()
        raw.send(encode(MsgType.GROUP_ADD, req, wire("odd"), wire(f"member.{name}"), expiry, 100))
    replies = await target.sync(raw)
    answered = {f[0] for m, f in replies if m in (MsgType.ACK, MsgType.ERROR)}
    assert answered == set(reqs.values()), "a GROUP_ADD went unanswered"
    members = await target.layer.group_channels("odd")
    # A membership whose lifetime is already over is no member.
    assert "member.neg" not in members
    assert "member.zero" not in members
    await target.layer.group_send("odd", {"to": "whoever is left"})
    await roundtrip(target.layer)


async def test_catastrophic_capacity_pattern_cannot_freeze_the_node(target: Target) -> None:
    """channel_capacity patterns run in the layer, never on the node: a HELLO
    carrying one (an older policy shape, extra fields ignored) followed by a
    send whose name would make it backtrack exponentially leaves the node
    serving everyone else."""
    raw = target.raw()
    raw.send(encode(MsgType.HELLO, "redosredos", 1, [60.0, 100, [["(a|a)*b", 5]]]))
    replies = await target.sync(raw)
    assert [m for m, _ in replies] == [MsgType.WELCOME]
    raw.send(encode(MsgType.SEND, 0, wire("a" * 60), b"\x80", 5))
    start = time.monotonic()
    try:
        await asyncio.wait_for(roundtrip(target.layer), 3.0)
    except TimeoutError:
        pytest.fail(
            "the node stopped serving everyone after one session's capacity pattern "
            "backtracked on a channel name"
        )
    print(f"round trip after the pathological pattern: {time.monotonic() - start:.3f} s")


# -- frame size ------------------------------------------------------------------
def send_frame_of_size(size: int, channel: str) -> tuple[bytes, dict[str, Any]]:
    """A SEND frame of exactly ``size`` bytes whose payload is a valid layer
    message, and that message."""
    pad = size
    while True:
        message = {"pad": "x" * pad}
        f = encode(MsgType.SEND, 1, channel, msgpack.packb(message, use_bin_type=True), 100)
        if len(f) == size:
            return f, message
        pad -= len(f) - size


async def test_frame_of_exactly_max_frame_size_is_accepted(target: Target) -> None:
    raw = target.raw()
    await target.hello(raw)
    f, message = send_frame_of_size(MAX_FRAME, wire("at.limit"))
    assert len(f) == MAX_FRAME
    raw.send(f)
    replies = await target.sync(raw)
    assert [m for m, _ in replies] == [MsgType.ACK], replies
    assert await asyncio.wait_for(target.layer.receive("at.limit"), STEP) == message


async def test_oversized_frame_is_dropped_and_counted(target: Target) -> None:
    raw = target.raw()
    await target.hello(raw)
    before = znode_status(target.endpoint)
    f, _ = send_frame_of_size(MAX_FRAME + 1, wire("over.limit"))
    raw.send(f)
    # The sender is cut off and reconnects by itself: it is answered again.
    deadline = time.monotonic() + STEP
    while True:
        try:
            await target.sync(raw, within=0.2)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    await roundtrip(target.layer)
    status = znode_status(target.endpoint)
    assert status["queued"] == 0
    # nothing of the oversized frame got in; the round trip's message did
    assert status["counters"]["enqueued"] == before["counters"]["enqueued"] + 1
    # "dropped, counted, logged" (DESIGN.md, Faults and bad input)
    assert status["counters"]["decode_errors"] == 1, status["decode_errors"]
    assert status["decode_errors"] == {"oversized": 1}


async def test_layer_refuses_a_message_too_large_for_the_node(target: Target) -> None:
    with pytest.raises(MessageTooLarge):
        await target.layer.send("too.big", {"pad": "x" * MAX_FRAME})
    await roundtrip(target.layer)


async def test_fresh_layers_first_message_too_large_for_the_node_raises(target: Target) -> None:
    """The very first call of a new process is a send bigger than the node
    takes: it must raise MessageTooLarge, not vanish."""
    fresh = ZeroMQChannelLayer(node=target.endpoint, request_timeout=STEP - 1)
    try:
        with pytest.raises(MessageTooLarge):
            await asyncio.wait_for(fresh.send("too.big", {"pad": "x" * MAX_FRAME}), 2 * STEP)
        await roundtrip(fresh)
    finally:
        await fresh.close()


async def test_messages_under_the_limit_sent_in_a_row_all_arrive(target: Target) -> None:
    """Each message fits the node's frame limit; a layer that packs several
    into one frame must not make a frame the node cuts off."""
    sent = [{"i": i, "pad": "x" * (MAX_FRAME // 3)} for i in range(6)]
    for message in sent:
        await target.layer.send("in.a.row", message)
    got = []
    for _ in sent:
        got.append(await asyncio.wait_for(target.layer.receive("in.a.row"), STEP))
    assert [m["i"] for m in got] == [m["i"] for m in sent]


# -- a flood ---------------------------------------------------------------------
@pytest.fixture
def flooder(target: Target) -> Iterator[ClientProcess]:
    proc = ClientProcess("flood", target.endpoint, "--seed", "7")
    try:
        yield proc
    finally:
        proc.close()


async def test_garbage_flood_does_not_starve_a_legit_client(
    target: Target, flooder: ClientProcess
) -> None:
    await flooder.event("flooding", STEP * 4)
    before = znode_status(target.endpoint)["counters"]["decode_errors"]
    assert before > 0

    layer = target.layer
    n = 1000
    latencies = []
    start = time.monotonic()
    for i in range(n):
        t0 = time.monotonic()
        await asyncio.wait_for(layer.send("flood.rt", {"i": i}), STEP)
        got = await asyncio.wait_for(layer.receive("flood.rt"), STEP)
        latencies.append(time.monotonic() - t0)
        assert got == {"i": i}
    took = time.monotonic() - start
    during = znode_status(target.endpoint)["counters"]["decode_errors"]

    flooder.signal(signal.SIGTERM)
    stopped = await flooder.event("stopped", STEP * 4)
    assert flooder.wait(STEP) == 0
    status = znode_status(target.endpoint)
    latencies.sort()
    print(
        f"{n} round trips under a garbage flood in {took:.2f} s ({n / took:.0f}/s), "
        f"p50 {latencies[n // 2] * 1000:.2f} ms, p99 {latencies[n * 99 // 100] * 1000:.2f} ms; "
        f"{during - before} garbage frames dropped meanwhile, {stopped['sent']} in all"
    )
    assert during > before, "the flood stopped reaching the node"
    # Every garbage frame was read and counted; none did anything else.
    assert status["counters"]["decode_errors"] == stopped["sent"]
    assert status["counters"]["bad_requests"] == 0
    assert Counter(status["decode_errors"]).total() == stopped["sent"]
    await roundtrip(layer)
