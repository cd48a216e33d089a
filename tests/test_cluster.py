"""Several ``znode`` processes on loopback form one cluster (static seeds).

Each test starts real nodes with ``--peer-endpoint tcp://127.0.0.1:0`` and
the ``lan`` preset, joins them through the first one, and reads each node's
member table through its client endpoint (what ``znode status --json``
shows). Timing figures are measured and printed; the bounds are the issue's.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from channels.exceptions import ChannelFull
from conftest import Znode, eventually, wait_for
from zchannels.node.cli import query

from zchannels.layer import ZeroMQChannelLayer
from zchannels.protocol import MsgType

#: Seconds between two checks of an invariant that must hold all along.
SAMPLE = 0.1


def status(node: Znode) -> dict[str, Any]:
    result: dict[str, Any] = query(node.endpoint, MsgType.STATUS, timeout=2.0)
    return result


def states(node: Znode) -> dict[str, str]:
    return {m["id"]: m["state"] for m in status(node)["members"]}


def start_cluster(znode: Callable[..., Znode], n: int, *extra: str) -> list[Znode]:
    def start(i: int, seed: str | None) -> Znode:
        args = ["--preset", "lan", "--node-id", f"node-{i}"]
        args += ["--peer-endpoint", "tcp://127.0.0.1:0", "--discovery", "none", *extra]
        if seed is not None:
            args += ["--seed", seed]
        return znode(None, *args)

    first = start(0, None)
    seed = str(first.ready["peer"])
    return [first] + [start(i, seed) for i in range(1, n)]


def converged(nodes: list[Znode], alive: set[str]) -> bool:
    for node in nodes:
        table = states(node)
        if {k for k, v in table.items() if v == "alive"} != alive:
            return False
    return True


@pytest.mark.parametrize("n", [3, 5])
def test_nodes_join_through_one_seed(znode: Callable[..., Znode], n: int) -> None:
    nodes = start_cluster(znode, n)
    ids = {f"node-{i}" for i in range(n)}
    took = wait_for(lambda: converged(nodes, ids), 10, f"{n} nodes to agree")
    print(f"{n} nodes: one member table {took:.3f} s after the last start")
    for m in status(nodes[-1])["members"]:
        assert set(m) >= {"id", "state", "incarnation", "address"}
        assert m["address"].startswith("tcp://127.0.0.1:")
        assert m["incarnation"] > 0


@pytest.mark.parametrize("n", [3, 5])
def test_sigkilled_node_is_declared_dead_within_3_s(znode: Callable[..., Znode], n: int) -> None:
    nodes = start_cluster(znode, n)
    ids = {f"node-{i}" for i in range(n)}
    wait_for(lambda: converged(nodes, ids), 10, "the cluster to form")
    victim, others = nodes[-1], nodes[:-1]
    victim.signal(signal.SIGKILL)
    start = time.monotonic()
    took = wait_for(
        lambda: all(states(o).get(f"node-{n - 1}") == "dead" for o in others),
        10,
        "every node to declare the killed one dead",
    )
    print(f"{n} nodes: SIGKILLed node dead on every other node after {took:.2f} s")
    assert time.monotonic() - start < 3.0, f"detection took {took:.2f} s (bound 3 s)"
    for o in others:  # nobody else was hurt
        assert {k for k, v in states(o).items() if v == "alive"} == ids - {f"node-{n - 1}"}


@pytest.mark.parametrize("n", [3, 5])
def test_sigtermed_node_is_gone_within_half_a_second(znode: Callable[..., Znode], n: int) -> None:
    nodes = start_cluster(znode, n)
    ids = {f"node-{i}" for i in range(n)}
    wait_for(lambda: converged(nodes, ids), 10, "the cluster to form")
    leaver, others = nodes[1], [nodes[0], *nodes[2:]]
    leaver.signal(signal.SIGTERM)
    took = wait_for(
        lambda: all(states(o).get("node-1") == "left" for o in others),
        5,
        "every node to see the leaver gone",
    )
    print(f"{n} nodes: SIGTERMed node gone everywhere after {took:.3f} s")
    assert took < 0.5, f"leaving took {took:.3f} s (bound 0.5 s)"
    assert leaver.wait(5) == 0


def test_a_node_that_left_says_so_through_its_next_life(znode: Callable[..., Znode]) -> None:
    """A SIGTERMed node leaves, counts what no peer acknowledged, and notes
    in its ``--state-dir`` that its life left; the next ``znode run`` of
    that node on that directory takes the note (once) and tells its peers
    (``previous_life_left``), so a peer that never heard the leave does not
    count that life's queue as well (tests/test_routing.py, the simulation).
    A SIGKILLed node leaves no note."""
    nodes = start_cluster(znode, 2)
    wait_for(lambda: converged(nodes, {"node-0", "node-1"}), 10, "the cluster to form")
    leaver = nodes[1]
    assert leaver.state_dir is not None
    [life] = [m["incarnation"] for m in status(leaver)["members"] if m["id"] == "node-1"]
    leaver.signal(signal.SIGTERM)
    assert leaver.wait(5) == 0
    path = os.path.join(leaver.state_dir, "node-1.life.json")
    with open(path) as f:
        note = json.load(f)
    assert (note["node"], note["life"], note["how"]) == ("node-1", life, "left")
    args = ["--preset", "lan", "--node-id", "node-1", "--peer-endpoint", "tcp://127.0.0.1:0"]
    args += ["--discovery", "none", "--seed", str(nodes[0].ready["peer"])]
    again = znode(leaver.endpoint, *args)
    assert not os.path.exists(path), "taken once"
    assert status(again)["peer_counters"]["previous_life_left"] == 1
    wait_for(lambda: converged([nodes[0], again], {"node-0", "node-1"}), 10, "its return")
    again.signal(signal.SIGKILL)
    again.wait(5)
    assert not os.path.exists(path)


def test_another_cluster_is_refused(znode: Callable[..., Znode]) -> None:
    nodes = start_cluster(znode, 2)
    wait_for(lambda: converged(nodes, {"node-0", "node-1"}), 10, "the cluster to form")
    seed = str(nodes[0].ready["peer"])
    stranger = znode(
        None,
        *("--preset", "lan", "--node-id", "stranger", "--cluster", "other"),
        *("--peer-endpoint", "tcp://127.0.0.1:0", "--discovery", "none", "--seed", seed),
    )
    # The stranger asks to join (retried every second); give it three tries.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        assert "stranger" not in states(nodes[0])
        assert "stranger" not in states(nodes[1])
        assert set(states(stranger)) == {"stranger"}
        time.sleep(SAMPLE)  # sampling an invariant, not waiting for a condition


@pytest.mark.slow
def test_busy_cores_do_not_make_false_deaths(znode: Callable[..., Znode]) -> None:
    """Both cores saturated by other work for 30 s: no live node is declared
    dead (a suspicion refuted in time is fine)."""
    nodes = start_cluster(znode, 3)
    ids = {"node-0", "node-1", "node-2"}
    wait_for(lambda: converged(nodes, ids), 10, "the cluster to form")
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    suspicions = 0
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            for node in nodes:
                table = states(node)
                assert "dead" not in table.values(), f"false death under load: {table}"
                suspicions += list(table.values()).count("suspect")
            time.sleep(SAMPLE)  # sampling an invariant
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    print(f"30 s with every core busy: no death; {suspicions} suspect samples, all refuted")
    wait_for(lambda: converged(nodes, ids), 10, "all alive after the load")


def test_garbage_on_the_peer_socket_is_counted_and_harmless(znode: Callable[..., Znode]) -> None:
    import random

    import zmq

    nodes = start_cluster(znode, 2)
    ids = {"node-0", "node-1"}
    wait_for(lambda: converged(nodes, ids), 10, "the cluster to form")
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(str(nodes[0].ready["peer"]))
    rng = random.Random(1)
    frames = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64))) for _ in range(300)]
    frames += [b"\x01\x01\x90", b"\x01\x15\x95\x01\xa1a\xa1b\xa1c\x91\x95\x01\x02\x03\x04\x05"]
    for frame in frames:
        sock.send(frame)
    sock.close()
    took = wait_for(
        lambda: status(nodes[0]).get("peer_counters", {}).get("decode_errors", 0) >= len(frames),
        10,
        "every garbage frame to be counted",
    )
    print(f"{len(frames)} garbage peer frames counted in {took:.2f} s")
    assert converged(nodes, ids)


# -- groups across nodes -------------------------------------------------------
async def test_group_send_reaches_members_on_every_node(znode: Callable[..., Znode]) -> None:
    nodes = start_cluster(znode, 3)
    ids = {f"node-{i}" for i in range(3)}
    wait_for(lambda: converged(nodes, ids), 10, "the cluster to form")
    layers = [ZeroMQChannelLayer(node=n.endpoint) for n in nodes]
    try:
        members = [(layer, await layer.new_channel()) for layer in layers[1:]]
        for layer, channel in members:
            await layer.group_add("blog", channel)
        await layers[0].group_send("blog", {"post": 1})
        for layer, channel in members:
            assert await asyncio.wait_for(layer.receive(channel), 5) == {"post": 1}
        # a group_add that has returned is seen by a group_send on another node
        for i in range(30):
            channel = await layers[2].new_channel()
            await layers[2].group_add(f"fresh-{i}", channel)
            await layers[0].group_send(f"fresh-{i}", {"i": i})
            got = await asyncio.wait_for(layers[2].receive(channel), 5)
            assert got == {"i": i}, f"group_add {i} was not visible on return"
        # every node agrees on the sizes
        sizes = [status(n)["group_sizes"].get("asgi|blog") for n in nodes]
        assert sizes == [2, 2, 2], sizes
        # a dead node's members vanish from every other node's view
        nodes[2].signal(signal.SIGKILL)
        took = await eventually(
            lambda: all(status(n)["group_sizes"].get("asgi|blog") == 1 for n in nodes[:2]),
            10,
            "the dead node's members to vanish",
        )
        print(f"dead node's group members gone from the others after {took:.2f} s")
        assert took < 3.0
        await layers[1].group_send("blog", {"post": 2})
        assert await asyncio.wait_for(members[0][0].receive(members[0][1]), 5) == {"post": 2}
    finally:
        for layer in layers[:2]:
            await layer.close()


async def test_a_node_that_joins_later_learns_the_groups(znode: Callable[..., Znode]) -> None:
    nodes = start_cluster(znode, 2)
    wait_for(lambda: converged(nodes, {"node-0", "node-1"}), 10, "the cluster to form")
    member_layer = ZeroMQChannelLayer(node=nodes[1].endpoint)
    late_layer: ZeroMQChannelLayer | None = None
    try:
        channel = await member_layer.new_channel()
        await member_layer.group_add("room", channel)
        late = znode(
            None,
            *("--preset", "lan", "--node-id", "node-late", "--discovery", "none"),
            *("--peer-endpoint", "tcp://127.0.0.1:0"),
            *("--seed", str(nodes[0].ready["peer"])),
        )
        took = await eventually(
            lambda: status(late).get("group_sizes", {}).get("asgi|room") == 1,
            5,
            "the late node to learn the group by anti-entropy",
        )
        print(f"a node joining later knew the group's members after {took:.3f} s")
        late_layer = ZeroMQChannelLayer(node=late.endpoint)
        await late_layer.group_send("room", {"hello": "from the late node"})
        got = await asyncio.wait_for(member_layer.receive(channel), 5)
        assert got == {"hello": "from the late node"}
    finally:
        await member_layer.close()
        if late_layer is not None:
            await late_layer.close()


# -- channels of another node ----------------------------------------------------
async def test_send_to_a_process_channel_on_another_node(znode: Callable[..., Znode]) -> None:
    nodes = start_cluster(znode, 2)
    wait_for(lambda: converged(nodes, {"node-0", "node-1"}), 10, "the cluster to form")
    a = ZeroMQChannelLayer(node=nodes[0].endpoint, capacity=3)
    b = ZeroMQChannelLayer(node=nodes[1].endpoint)
    try:
        mine, theirs = await a.new_channel(), await b.new_channel()
        # ping-pong across nodes, in order
        start = time.monotonic()
        for i in range(200):
            await a.send(theirs, {"i": i})
            assert await asyncio.wait_for(b.receive(theirs), 5) == {"i": i}
            await b.send(mine, {"i": i})
            assert await asyncio.wait_for(a.receive(mine), 5) == {"i": i}
        took = time.monotonic() - start
        print(f"200 cross-node round trips in {took:.2f} s ({200 / took:.0f}/s)")
        # the owner's capacity answers the sender: ChannelFull crosses nodes
        # (on a channel nobody receives yet, so nothing is prefetched)
        idle = await b.new_channel()
        for i in range(3):
            await a.send(idle, {"fill": i})
        with pytest.raises(ChannelFull):
            await a.send(idle, {"fill": 3})
        assert [await b.receive(idle) for _ in range(3)] == [{"fill": i} for i in range(3)]
    finally:
        await a.close()
        await b.close()
