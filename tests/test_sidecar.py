"""Several OS processes through one real ``znode`` sidecar.

Client processes are ``python -m tests.procs`` children (consumers, senders)
on ipc; the test process holds a layer of its own on the same node to look at
groups and status. Covers: delivery across processes (one receiver, two
workers sharing a channel, an idle receiver, a sender that exits at once),
group broadcast across processes, leases (an idle process keeps its own, a
SIGKILLed process's memberships vanish within seconds, a SIGSTOPped one
recovers after SIGCONT, a clean exit leaves no session behind), ``znode``
stopping cleanly on SIGTERM, clients recovering by themselves from a
``znode`` SIGKILL + restart, and ``znode status``.

Timing tests print what they measured (run with ``-s`` to see it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from conftest import eventually
from procs import ClientProcess, drain

from zchannels.errors import NodeUnavailable, SendOutcomeUnknown
from zchannels.flow import IDLE_RETURN
from zchannels.layer import ZeroMQChannelLayer

#: Seconds a client process gets to start and say it is ready.
START = 20.0
#: Seconds any single expected thing may take.
STEP = 10.0
#: The test preset's client lease (``NodeConfig.test``).
LEASE = 0.9
#: What "within a few seconds" means with that lease.
GONE_WITHIN = 3.0
#: Seconds between two checks of an invariant that must hold all along.
SAMPLE = 0.05

Spawn = Callable[..., ClientProcess]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """``spawn(role, endpoint, *args)``: a client process, killed and reaped
    at the end of the test whatever happened."""
    started: list[ClientProcess] = []

    def start(role: str, endpoint: str, *args: str) -> ClientProcess:
        proc = ClientProcess(role, endpoint, *args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


@pytest.fixture
async def node_and_layer(
    znode: Callable[..., Any],
) -> AsyncIterator[tuple[Any, ZeroMQChannelLayer]]:
    """A fresh ``znode`` and this process's own layer on it."""
    node = znode()
    layer = ZeroMQChannelLayer(node=node.endpoint, request_timeout=STEP)
    yield node, layer
    await layer.close()


async def probe_until_received(
    layer: ZeroMQChannelLayer, proc: ClientProcess, channel: str, what: str
) -> int:
    """Send ``{"probe": n}`` to ``channel`` every 0.2 s until ``proc`` prints
    a message (at most 50 probes, so the channel never fills); returns how
    many probes it took."""
    for n in range(50):
        await layer.send(channel, {"probe": n})
        if await proc.next_line(0.2) is not None:
            return n + 1
    pytest.fail(f"timed out after 50 probes (10 s) waiting for {what}")


def socket_file_exists(endpoint: str) -> bool:
    assert endpoint.startswith("ipc://")
    return os.path.exists(endpoint[len("ipc://") :])


def znode_status(endpoint: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zchannels.node", "status", "--node", endpoint, *extra],
        capture_output=True,
        text=True,
        timeout=30,
    )


# -- delivery across processes -------------------------------------------------
async def test_send_from_one_process_is_received_by_another(
    node_and_layer: tuple[Any, ZeroMQChannelLayer], spawn: Spawn
) -> None:
    node, _ = node_and_layer
    b = spawn("consumer", node.endpoint)
    channel = (await b.event("ready", START))["channel"]
    a = spawn("sender", node.endpoint, "--channel", channel, "--count", "100", "--tag", "a")
    got = await b.messages(100, STEP)
    assert [m["i"] for m in got] == list(range(100)), "not every message, or not in order"
    assert {m["tag"] for m in got} == {"a"}
    assert {m["pid"] for m in got} == {a.proc.pid}
    await a.event("sent", STEP)
    assert a.wait(STEP) == 0


async def test_last_messages_of_an_exiting_sender_are_not_lost(
    node_and_layer: tuple[Any, ZeroMQChannelLayer], spawn: Spawn
) -> None:
    """A sender that sends and exits at once (a management command, a
    Celery task) must not lose its tail on the way out."""
    node, _ = node_and_layer
    b = spawn("consumer", node.endpoint)
    channel = (await b.event("ready", START))["channel"]
    for run in range(5):
        a = spawn("sender", node.endpoint, "--channel", channel, "--count", "20", "--tag", f"{run}")
        assert a.wait(START) == 0
        got = await b.messages(20, STEP)
        assert [(m["tag"], m["i"]) for m in got] == [(f"{run}", i) for i in range(20)]


async def test_workers_in_two_processes_share_a_channel_each_message_once(
    node_and_layer: tuple[Any, ZeroMQChannelLayer], spawn: Spawn
) -> None:
    node, _ = node_and_layer
    b = spawn("consumer", node.endpoint, "--channel", "jobs")
    c = spawn("consumer", node.endpoint, "--channel", "jobs")
    await b.event("ready", START)
    await c.event("ready", START)
    spawn("sender", node.endpoint, "--channel", "jobs", "--count", "300", "--tag", "job")
    got = await drain([b, c], 300, STEP)
    every = sorted(m["i"] for ms in got.values() for m in ms)
    assert every == list(range(300)), "a job was lost or handed out twice"
    for proc, ms in got.items():
        seq = [m["i"] for m in ms]
        assert seq == sorted(seq), f"{proc!r} got jobs out of order: {seq}"
    print(f"jobs split {len(got[b])} / {len(got[c])}")


async def test_group_send_from_one_process_reaches_members_in_two_others(
    node_and_layer: tuple[Any, ZeroMQChannelLayer], spawn: Spawn
) -> None:
    node, layer = node_and_layer
    b = spawn("consumer", node.endpoint, "--group", "room")
    c = spawn("consumer", node.endpoint, "--group", "room")
    b_ch = (await b.event("ready", START))["channel"]
    c_ch = (await c.event("ready", START))["channel"]
    assert await layer.group_channels("room") == sorted([b_ch, c_ch])
    a = spawn("sender", node.endpoint, "--group", "room", "--count", "50", "--tag", "room")
    for member in (b, c):
        got = await member.messages(50, STEP)
        assert [m["i"] for m in got] == list(range(50)), f"{member!r} missed a broadcast"
        assert {m["pid"] for m in got} == {a.proc.pid}
    assert a.wait(STEP) == 0


async def test_idle_consumer_gets_messages_that_arrive_together(
    node_and_layer: tuple[Any, ZeroMQChannelLayer], spawn: Spawn
) -> None:
    """Consumers are idle most of their lives; the first messages after a
    pause often arrive in one frame (here: two sends in one loop iteration)."""
    node, layer = node_and_layer
    b = spawn("consumer", node.endpoint)
    channel = (await b.event("ready", START))["channel"]
    for burst in range(3):
        # The condition under test is elapsed idle time: the consumer has
        # been waiting in receive() for longer than IDLE_RETURN.
        await asyncio.sleep(2 * IDLE_RETURN)
        await asyncio.gather(
            layer.send(channel, {"burst": burst, "k": 0}),
            layer.send(channel, {"burst": burst, "k": 1}),
        )
        got = await b.messages(2, STEP)
        assert got == [{"burst": burst, "k": 0}, {"burst": burst, "k": 1}]


# -- leases --------------------------------------------------------------------
async def test_idle_process_keeps_its_session_and_groups(
    node_and_layer: tuple[Any, ZeroMQChannelLayer], spawn: Spawn
) -> None:
    """A live process that does nothing keeps its lease (its keeper pings),
    so its memberships stay. Watched for four leases."""
    node, layer = node_and_layer
    b = spawn("consumer", node.endpoint, "--group", "room")
    b_ch = (await b.event("ready", START))["channel"]
    start = await layer.node_status()
    until = time.monotonic() + 4 * LEASE
    while time.monotonic() < until:
        members = await layer.group_channels("room")
        assert members == [b_ch], (
            f"an idle live process lost its membership after "
            f"{time.monotonic() - until + 4 * LEASE:.2f} s"
        )
        await asyncio.sleep(SAMPLE)  # sampling an invariant
    end = await layer.node_status()
    assert end["counters"]["sessions_expired"] == start["counters"]["sessions_expired"]
    assert end["sessions"] == start["sessions"]


async def test_killed_process_leaves_its_groups_within_seconds(
    node_and_layer: tuple[Any, ZeroMQChannelLayer], spawn: Spawn
) -> None:
    node, layer = node_and_layer
    b = spawn("consumer", node.endpoint, "--group", "room", "--group", "lobby")
    c = spawn("consumer", node.endpoint, "--group", "room")
    b_ch = (await b.event("ready", START))["channel"]
    c_ch = (await c.event("ready", START))["channel"]
    assert await layer.group_channels("room") == sorted([b_ch, c_ch])
    before = await layer.node_status()
    assert before["sessions"] == 3  # this process, b, c

    b.signal(signal.SIGKILL)
    b.wait(STEP)
    killed_at = time.monotonic()

    async def b_gone() -> bool:
        return b_ch not in await layer.group_channels("room")

    await eventually(b_gone, 10, "the killed process to leave its group")
    took = time.monotonic() - killed_at
    print(f"SIGKILLed process left its groups after {took:.2f} s (lease {LEASE} s)")
    assert took < GONE_WITHIN
    assert await layer.group_channels("lobby") == []
    assert await layer.group_channels("room") == [c_ch]
    after = await layer.node_status()
    assert after["sessions"] == 2
    assert after["group_entries"] == 1
    assert after["counters"]["sessions_expired"] == before["counters"]["sessions_expired"] + 1
    # The survivor is untouched.
    await layer.group_send("room", {"i": 0, "after": "kill"})
    assert await c.messages(1, STEP) == [{"i": 0, "after": "kill"}]


async def test_paused_process_recovers_after_its_lease_lapsed(
    node_and_layer: tuple[Any, ZeroMQChannelLayer], spawn: Spawn
) -> None:
    """A process frozen past its lease (SIGSTOP: a debugger, a swapped-out
    VM) is dropped like a dead one; once it runs again it must not stay
    deaf: the node told it RESET ("HELLO again"), and it re-registers."""
    node, layer = node_and_layer
    b = spawn("consumer", node.endpoint, "--group", "room")
    b_ch = (await b.event("ready", START))["channel"]
    b.signal(signal.SIGSTOP)
    try:

        async def dropped() -> bool:
            return await layer.group_channels("room") == []

        took = await eventually(dropped, 10, "the paused process's lease to lapse")
        print(f"paused process dropped after {took:.2f} s")
    finally:
        b.signal(signal.SIGCONT)
    resumed = time.monotonic()

    await probe_until_received(layer, b, b_ch, "the resumed process to receive again")
    t_deliver = time.monotonic() - resumed

    async def member_again() -> bool:
        return await layer.group_channels("room") == [b_ch]

    await eventually(member_again, 10, "the resumed process's membership to come back")
    t_groups = time.monotonic() - resumed
    print(f"resumed process receives after {t_deliver:.2f} s, a member after {t_groups:.2f} s")


async def test_cleanly_closed_process_leaves_no_session_after_lease(
    node_and_layer: tuple[Any, ZeroMQChannelLayer], spawn: Spawn
) -> None:
    node, layer = node_and_layer
    baseline = await layer.node_status()
    b = spawn("consumer", node.endpoint, "--group", "room")
    b_ch = (await b.event("ready", START))["channel"]
    during = await layer.node_status()
    assert during["sessions"] == baseline["sessions"] + 1
    assert await layer.group_channels("room") == [b_ch]

    b.signal(signal.SIGTERM)
    await b.event("closed", STEP)
    assert b.wait(STEP) == 0
    closed_at = time.monotonic()

    async def no_trace() -> bool:
        return bool((await layer.node_status())["sessions"] == baseline["sessions"])

    await eventually(no_trace, 10, "the closed process's session to go")
    took = time.monotonic() - closed_at
    print(f"cleanly closed process's session gone after {took:.2f} s (lease {LEASE} s)")
    assert took < GONE_WITHIN
    assert await layer.group_channels("room") == []
    # Sends to its channel are dropped as sent to a dead owner, not queued.
    status = await layer.node_status()
    await layer.send(b_ch, {"late": True})
    after = await layer.node_status()
    assert after["queued"] == status["queued"]
    assert after["counters"]["dropped_dead_owner"] == status["counters"]["dropped_dead_owner"] + 1


# -- the znode process ---------------------------------------------------------
async def test_znode_sigterm_exits_zero_and_removes_its_socket(
    znode: Callable[..., Any], spawn: Spawn
) -> None:
    node = znode()
    assert socket_file_exists(node.endpoint)
    b = spawn("consumer", node.endpoint, "--group", "room")
    await b.event("ready", START)
    start = time.monotonic()
    node.signal(signal.SIGTERM)
    code = node.wait(STEP)
    took = time.monotonic() - start
    print(f"znode stopped {took * 1000:.0f} ms after SIGTERM with a client connected")
    assert code == 0
    assert not socket_file_exists(node.endpoint), "znode left its ipc socket file behind"


async def test_clients_recover_by_themselves_from_a_znode_restart(
    node_and_layer: tuple[Any, ZeroMQChannelLayer], spawn: Spawn, znode: Callable[..., Any]
) -> None:
    node, layer = node_and_layer
    b = spawn("consumer", node.endpoint, "--group", "room")
    c = spawn("consumer", node.endpoint, "--group", "room", "--group", "lobby")
    b_ch = (await b.event("ready", START))["channel"]
    c_ch = (await c.event("ready", START))["channel"]
    await layer.send(b_ch, {"phase": "before"})
    assert await b.messages(1, STEP) == [{"phase": "before"}]
    old = await layer.node_status()

    node.signal(signal.SIGKILL)
    node.wait(STEP)
    node2 = znode(node.endpoint)  # a new incarnation on the same endpoint
    restarted = time.monotonic()

    # b and c were waiting in receive() all along; their processes must
    # notice the new node and re-assert their memberships on their own.
    async def reasserted() -> bool:
        room = await layer.group_channels("room")
        lobby = await layer.group_channels("lobby")
        return room == sorted([b_ch, c_ch]) and lobby == [c_ch]

    await eventually(reasserted, 10, "memberships to be re-asserted on the new node")
    t_groups = time.monotonic() - restarted

    # A message sent to a process whose session the new node does not know
    # yet is dropped (dead owner); probe until one lands.
    probes = await probe_until_received(layer, b, b_ch, "the consumer to receive again")
    t_deliver = time.monotonic() - restarted
    print(
        f"after znode SIGKILL + restart: memberships back in {t_groups:.2f} s, "
        f"first delivery in {t_deliver:.2f} s ({probes} probes)"
    )
    assert t_groups < GONE_WITHIN
    assert t_deliver < GONE_WITHIN

    status = await layer.node_status()
    assert status["incarnation"] != old["incarnation"]
    assert status["sessions"] == 3  # every client process has a session again

    def not_probe(m: dict[str, Any]) -> bool:
        return "probe" not in m

    a = spawn("sender", node2.endpoint, "--channel", b_ch, "--count", "30", "--tag", "after")
    got = await b.messages(30, STEP, not_probe)
    assert [(m["tag"], m["i"]) for m in got] == [("after", i) for i in range(30)]
    assert a.wait(STEP) == 0

    await layer.group_send("room", {"group": "after"})
    await layer.group_send("lobby", {"group": "lobby-after"})
    assert await b.messages(1, STEP, not_probe) == [{"group": "after"}]
    assert await c.messages(2, STEP) == [{"group": "after"}, {"group": "lobby-after"}]


async def test_a_send_waiting_when_its_znode_dies_raises_outcome_unknown(
    node_and_layer: tuple[Any, ZeroMQChannelLayer], znode: Callable[..., Any]
) -> None:
    """kill -9 of the sidecar while a send waits for its answer, and a
    supervisor's restart: the old node may have queued it (and, in a
    cluster, relayed it on) before it died, so the send can neither be sent
    again nor be said lost. It raises ``SendOutcomeUnknown`` (a
    ``NodeUnavailable``) once the new node welcomes the process, and is
    counted nowhere; the layer serves on."""
    node, layer = node_and_layer
    await layer.send("before", {"n": 0})  # (connected, welcomed)
    node.signal(signal.SIGSTOP)  # the node reads nothing more
    waiting = asyncio.ensure_future(layer.send("during", {"n": 1}))
    await asyncio.sleep(0)  # (the frame is written)
    assert not waiting.done()
    node.signal(signal.SIGKILL)
    node.wait(STEP)
    znode(node.endpoint)  # a new incarnation on the same endpoint
    restarted = time.monotonic()
    with pytest.raises(SendOutcomeUnknown, match=r"restarted .* before it answered"):
        await asyncio.wait_for(waiting, STEP)
    took = time.monotonic() - restarted
    print(f"the waiting send raised SendOutcomeUnknown {took:.2f} s after the restart")
    assert issubclass(SendOutcomeUnknown, NodeUnavailable) and not SendOutcomeUnknown.retriable
    assert layer.counters.get("lost_in_node_restart", 0) == 0, "nothing is counted"
    await layer.send("after", {"n": 2})
    assert await asyncio.wait_for(layer.receive("after"), STEP) == {"n": 2}


async def test_znode_status_json_has_the_documented_fields(
    znode: Callable[..., Any], spawn: Spawn
) -> None:
    node = znode(None, "--node-id", "sidecar-status")
    layer = ZeroMQChannelLayer(node=node.endpoint, request_timeout=STEP)
    try:
        b = spawn("consumer", node.endpoint, "--group", "room", "--group", "lobby")
        await b.event("ready", START)
        for i in range(3):
            await layer.send("parked", {"i": i})  # nobody receives these
        mine = await layer.node_status()

        result = znode_status(node.endpoint, "--json")
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        assert status["node_id"] == "sidecar-status"
        assert isinstance(status["incarnation"], str) and status["incarnation"]
        assert status["incarnation"] == mine["incarnation"]
        assert status["sessions"] == 2  # this process and b
        assert 2 <= status["connections"] <= 4  # one per event loop of each process
        assert status["channels"] >= 1
        assert status["queued"] == 3
        assert status["groups"] == 2
        assert status["group_entries"] == 2
        counters = status["counters"]
        documented = {
            "enqueued",
            "delivered",
            "dropped_full",
            "dropped_expired",
            "group_expired",
            "decode_errors",
            "dropped_dead_owner",
            "group_skipped_full",
            "bad_requests",
            "unexpected_type",
            "sessions_expired",
            "undeliverable",
        }
        assert documented <= set(counters), f"missing counters {documented - set(counters)}"
        assert all(isinstance(v, int) and not isinstance(v, bool) for v in counters.values())
        assert counters["enqueued"] >= 3
        assert counters["decode_errors"] == 0
        assert status["decode_errors"] == {}

        text = znode_status(node.endpoint)
        assert text.returncode == 0, text.stderr
        assert "sidecar-status" in text.stdout
        for key in ("sessions", "queued", "group_entries", "enqueued"):
            assert key in text.stdout
    finally:
        await layer.close()


def test_znode_status_of_a_dead_endpoint_fails_quickly(tmp_path: Any) -> None:
    start = time.monotonic()
    result = znode_status(f"ipc://{tmp_path}/nobody.sock", "--json", "--timeout", "0.5")
    took = time.monotonic() - start
    assert result.returncode == 1
    assert "no answer" in result.stderr
    assert result.stdout == ""
    assert took < 10


async def test_a_hello_written_to_a_node_that_dies_unread_is_said_again(
    tmp_path: Path, znode: Callable[..., Any]
) -> None:
    """The HELLO of each of a process's connections (this loop's and the
    keeper's) is read by a node that then dies without answering (kill -9
    right after the read; played here by a bare ROUTER socket), and a
    supervisor starts the next node on the endpoint. That node never hears
    the HELLO, so each connection must find out for itself and say it
    again; the send waiting for its welcome then goes to the new node. Before,
    both connections waited for a WELCOME forever: the send hung until
    ``request_timeout``, and the process never noticed the restart (seen 6
    times in 12 under kill -9 of a frozen sidecar)."""
    endpoint = f"ipc://{tmp_path}/dies-unread.sock"
    ctx = zmq.asyncio.Context.instance()
    dying = ctx.socket(zmq.ROUTER)
    dying.bind(endpoint)
    layer = ZeroMQChannelLayer(node=endpoint, request_timeout=STEP)
    try:
        waiting = asyncio.ensure_future(layer.send("first", {"n": 1}))
        hellos: set[bytes] = set()  # connections whose HELLO the dying node read
        deadline = time.monotonic() + STEP
        while len(hellos) < 2:
            assert time.monotonic() < deadline, f"only {hellos} said HELLO"
            if await dying.poll(100):
                ident, *_ = await dying.recv_multipart()
                hellos.add(ident)
        dying.close(linger=0)
        assert not waiting.done()
        znode(endpoint)
        restarted = time.monotonic()
        await asyncio.wait_for(waiting, STEP)
        took = time.monotonic() - restarted
        print(f"the lost HELLOs were said again; the send went {took:.2f} s after the restart")
        # (each connection finds it out for itself, or hears of the restart
        # from the other once that one is welcomed)
        assert layer.counters.get("hellos_lost", 0) >= 1, layer.counters
        assert await asyncio.wait_for(layer.receive("first"), STEP) == {"n": 1}
        await layer.send("after", {"n": 2})
        assert await asyncio.wait_for(layer.receive("after"), STEP) == {"n": 2}
    finally:
        await layer.close()
