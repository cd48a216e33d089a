"""Channels across a cluster: every name has one owner node, and any node serves it.

Real ``znode`` processes on loopback (``lan`` preset) joined by seeds, with
layers connected to different nodes. Which node owns a plain name is computed
here with the same rendezvous hashing the nodes use, so each test can pick
names owned by the node it wants. Figures are measured and printed.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import statistics
import sys
import time
from collections.abc import Callable

import pytest
from conftest import Znode, eventually, wait_for
from test_cluster import converged, start_cluster, status
from zchannels.node.ownership import Ownership

from zchannels.layer import ZeroMQChannelLayer

#: wait_for timeouts used to cancel receives (as in test_cancellation)
TIMEOUTS = [0, 0, 0.0001, 0.0003, 0.001, 0.002, 0.005]


def names_owned_by(owner: str, members: list[str], count: int, stem: str = "work") -> list[str]:
    """``count`` plain channel names that ``owner`` owns among ``members``."""
    ownership = Ownership.from_ids(members)
    out = []
    for i in itertools.count():
        name = f"{stem}.{i}"
        if ownership.owner(f"asgi|{name}") == owner:
            out.append(name)
            if len(out) == count:
                return out
    raise AssertionError("unreachable")


def cluster(znode: Callable[..., Znode], n: int) -> list[Znode]:
    nodes = start_cluster(znode, n)
    wait_for(lambda: converged(nodes, {f"node-{i}" for i in range(n)}), 10, "the cluster to form")
    return nodes


IDS3 = ["node-0", "node-1", "node-2"]


async def test_a_plain_channel_is_held_by_its_owner_and_served_everywhere(
    znode: Callable[..., Znode],
) -> None:
    nodes = cluster(znode, 3)
    [name] = names_owned_by("node-1", IDS3, 1)
    sender = ZeroMQChannelLayer(node=nodes[0].endpoint, capacity=1000)
    far = ZeroMQChannelLayer(node=nodes[2].endpoint)
    near = ZeroMQChannelLayer(node=nodes[0].endpoint)
    try:
        for i in range(50):
            await sender.send(name, {"i": i})
        # (sends under a reservation are not acknowledged: wait for them)
        await eventually(lambda: status(nodes[1])["queued"] == 50, 5, "50 queued on the owner")
        held = [status(n)["queued"] for n in nodes]
        assert held == [0, 50, 0], f"queued per node: {held}"
        # a consumer on a third node takes them, in order
        got = [(await asyncio.wait_for(far.receive(name), 5))["i"] for _ in range(50)]
        assert got == list(range(50))
        # competing consumers on two nodes share one channel: each message once
        n = 400
        taken: list[tuple[str, int]] = []

        async def consume(layer: ZeroMQChannelLayer, who: str) -> None:
            while len(taken) < n:
                try:
                    message = await asyncio.wait_for(layer.receive(name), 0.2)
                except TimeoutError:
                    continue
                taken.append((who, message["i"]))

        async def produce() -> None:
            for i in range(n):
                await sender.send(name, {"i": i})

        await asyncio.wait_for(
            asyncio.gather(produce(), consume(far, "far"), consume(near, "near")), 30
        )
        numbers = [i for _, i in taken]
        assert sorted(numbers) == list(range(n)), "lost or duplicated messages"
        by = {who: sum(1 for w, _ in taken if w == who) for who in ("far", "near")}
        print(f"{n} messages shared by consumers on two other nodes: {by}")
    finally:
        for layer in (sender, far, near):
            await layer.close()


async def test_cancellation_storm_on_a_channel_owned_elsewhere(
    znode: Callable[..., Znode],
) -> None:
    nodes = cluster(znode, 3)
    [name] = names_owned_by("node-1", IDS3, 1, stem="storm")
    n = 1000
    sender = ZeroMQChannelLayer(node=nodes[0].endpoint, capacity=n + 100)
    consumer = ZeroMQChannelLayer(node=nodes[2].endpoint)
    rng = random.Random(20261124)
    got: list[int] = []
    cancelled = 0

    async def produce() -> None:
        for i in range(n):
            await sender.send(name, {"i": i})
            if rng.random() < 0.05:
                await asyncio.sleep(rng.choice(TIMEOUTS))

    async def consume() -> None:
        nonlocal cancelled
        while len(got) < n:
            try:
                message = await asyncio.wait_for(consumer.receive(name), rng.choice(TIMEOUTS))
            except TimeoutError:
                cancelled += 1
                continue
            got.append(message["i"])

    try:
        start = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.gather(produce(), consume()), 60)
        except TimeoutError:
            held = {
                node.endpoint: {
                    k: status(node).get(k) for k in ("queued", "channels", "drops", "sessions")
                }
                for node in nodes
            }
            drops = await consumer.drops()
            pytest.fail(
                f"stalled after 60 s: received {len(got)} of {n} (last {got[-3:]}), "
                f"{cancelled} cancelled receives, client drops {drops}; nodes: {held}"
            )
        took = time.monotonic() - start
        print(f"{n} messages across nodes, {cancelled} cancelled receives, {took:.2f} s")
        assert got == list(range(n)), "lost, duplicated or reordered messages"
        assert cancelled > 50, f"only {cancelled} receives were cancelled: no storm"
        # nothing left behind: a marker comes next
        await sender.send(name, {"marker": True})
        assert await asyncio.wait_for(consumer.receive(name), 5) == {"marker": True}
    finally:
        await sender.close()
        await consumer.close()


async def test_ownership_moves_when_a_node_joins_and_queues_follow(
    znode: Callable[..., Znode],
) -> None:
    nodes = cluster(znode, 2)
    names = [f"q.{i}" for i in range(40)]
    after = Ownership.from_ids(IDS3)
    moving = [n for n in names if after.owner(f"asgi|{n}") == "node-2"]
    assert moving, "no name would move: pick more names"
    per_name = 10
    sender = ZeroMQChannelLayer(node=nodes[0].endpoint, capacity=1000)
    reader: ZeroMQChannelLayer | None = None
    try:
        for i in range(per_name):
            for name in names:
                await sender.send(name, {"name": name, "i": i})
        await eventually(
            lambda: sum(status(n)["queued"] for n in nodes) == per_name * len(names), 5, "sends"
        )
        assert sum(status(n)["queued"] for n in nodes) == per_name * len(names)
        # a third node joins: the names it now owns move to it
        late = znode(
            None,
            *("--preset", "lan", "--node-id", "node-2", "--discovery", "none"),
            *("--peer-endpoint", "tcp://127.0.0.1:0"),
            *("--seed", str(nodes[0].ready["peer"])),
        )
        everyone = [*nodes, late]
        took = wait_for(
            lambda: all(status(n).get("view") == IDS3 for n in everyone),
            5,
            "every node to compute ownership over the three members",
        )
        print(f"ownership converged on every node {took:.3f} s after the join")
        assert took < 1.0, f"ownership took {took:.3f} s to converge (bound 1 s)"
        moved = wait_for(
            lambda: status(late)["queued"] == per_name * len(moving),
            5,
            "the moved names' messages to reach their new owner",
        )
        print(
            f"{len(moving)} of {len(names)} names moved; their messages arrived {moved:.3f} s later"
        )
        assert sum(status(n)["queued"] for n in everyone) == per_name * len(names)
        # every name, read through any node: in order, none lost, none twice
        reader = ZeroMQChannelLayer(node=nodes[1].endpoint)
        for name in names:
            got = [await asyncio.wait_for(reader.receive(name), 5) for _ in range(per_name)]
            assert got == [{"name": name, "i": i} for i in range(per_name)], name
        assert sum(status(n)["queued"] for n in everyone) == 0, "duplicates left behind"
    finally:
        await sender.close()
        if reader is not None:
            await reader.close()


async def test_sends_during_a_join_lose_nothing(znode: Callable[..., Znode]) -> None:
    nodes = cluster(znode, 2)
    names = [f"live.{i}" for i in range(12)]
    # (expiry: sending 24,000 and reading them back takes close to the
    # default 60 s on a slow machine, and what expires is not what this
    # test is about)
    sender = ZeroMQChannelLayer(node=nodes[0].endpoint, capacity=10_000, expiry=600)
    reader = ZeroMQChannelLayer(node=nodes[1].endpoint, expiry=600)
    sent = 0
    joined = asyncio.Event()

    async def produce() -> None:
        nonlocal sent
        while not joined.is_set() or sent < 2000:
            for name in names:
                await sender.send(name, {"i": sent})
            sent += 1
            await asyncio.sleep(0)

    try:
        task = asyncio.create_task(produce())
        await eventually(lambda: sent > 200, 10, "sends to be under way")
        late = znode(
            None,
            *("--preset", "lan", "--node-id", "node-2", "--discovery", "none"),
            *("--peer-endpoint", "tcp://127.0.0.1:0"),
            *("--seed", str(nodes[0].ready["peer"])),
        )
        await eventually(
            lambda: all(status(n).get("view") == IDS3 for n in [*nodes, late]), 5, "the join"
        )
        joined.set()
        await asyncio.wait_for(task, 60)
        inversions = 0
        for name in names:
            got = []
            for _ in range(sent):
                try:
                    got.append((await asyncio.wait_for(reader.receive(name), 5))["i"])
                except TimeoutError:
                    seen = {n.ready["peer"]: status(n) for n in [*nodes, late]}
                    raise AssertionError(
                        f"{name}: {len(got)} of {sent} received, then nothing for 5 s; "
                        + "; ".join(
                            f"{s.get('node_id')}: queued {s.get('queued')} drops "
                            f"{s.get('drops')} routing {s.get('routing_counters')}"
                            for s in seen.values()
                        )
                    ) from None
            assert sorted(got) == list(range(sent)), f"{name}: lost or duplicated messages"
            inversions += sum(1 for a, b in itertools.pairwise(got) if b < a)
        print(
            f"{sent * len(names)} messages sent to {len(names)} names across a join: "
            f"none lost or duplicated, {inversions} order inversions"
        )
    finally:
        await sender.close()
        await reader.close()


async def test_group_add_of_a_channel_owned_elsewhere_lives_on_its_owner(
    znode: Callable[..., Znode],
) -> None:
    nodes = cluster(znode, 3)
    [name] = names_owned_by("node-1", IDS3, 1, stem="jobs")
    adder = ZeroMQChannelLayer(node=nodes[0].endpoint)
    poster = ZeroMQChannelLayer(node=nodes[2].endpoint)
    try:
        await adder.group_add("workers", name)
        entries = [status(n)["group_entries"] for n in nodes]
        assert entries == [0, 1, 0], f"membership held on {entries}"
        await poster.group_send("workers", {"job": 1})
        assert await asyncio.wait_for(adder.receive(name), 5) == {"job": 1}
        assert await poster.group_channels("workers") == [name]
        # the adder's process ends: its membership on the owner goes with it
        await adder.close()
        took = await eventually(
            lambda: all(status(n)["group_sizes"].get("asgi|workers", 0) == 0 for n in nodes),
            5,
            "the closed process's membership to vanish",
        )
        print(f"membership held on another node gone {took:.3f} s after its process closed")
    finally:
        await adder.close()
        await poster.close()


async def test_flush_clears_every_node_before_it_returns(znode: Callable[..., Znode]) -> None:
    nodes = cluster(znode, 3)
    layers = [ZeroMQChannelLayer(node=n.endpoint) for n in nodes]
    try:
        for owner in IDS3:
            for name in names_owned_by(owner, IDS3, 3, stem="f"):
                await layers[0].send(name, {"x": 1})
        for layer in layers:
            await layer.group_add("everyone", await layer.new_channel())
        assert all(status(n)["queued"] > 0 for n in nodes)
        assert all(status(n)["group_entries"] == 1 for n in nodes)
        await layers[0].flush()
        after = [(status(n)["queued"], status(n)["group_entries"]) for n in nodes]
        assert after == [(0, 0)] * 3, f"(queued, group entries) per node after flush: {after}"
    finally:
        for layer in layers:
            await layer.close()


async def test_group_add_waits_for_acknowledgements_not_timeouts(
    znode: Callable[..., Znode],
) -> None:
    """A group_add returns once the live peers acknowledged it: never by its
    ack timeout (that would mean a lost acknowledgement), and it is then
    visible everywhere. (Its speed is a benchmark's business: bench/run.)"""
    nodes = cluster(znode, 3)
    layer = ZeroMQChannelLayer(node=nodes[0].endpoint)
    try:
        channel = await layer.new_channel()
        for i in range(50):  # warm up the connections
            await layer.group_add(f"warm-{i}", channel)
        took = []
        for i in range(1000):
            start = time.perf_counter()
            await layer.group_add(f"lat-{i}", channel)
            took.append(time.perf_counter() - start)
        took.sort()
        p50, p99 = statistics.median(took), took[int(len(took) * 0.99)]
        print(f"group_add in a 3-node cluster: p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")
        assert status(nodes[0])["group_ack_timeouts"] == 0, "an acknowledgement was lost"
        # and each one was visible on the other nodes on return
        sizes = status(nodes[2])["group_sizes"]
        assert all(sizes.get(f"asgi|lat-{i}") == 1 for i in range(1000))
    finally:
        await layer.close()


async def test_status_shows_what_each_node_owns_and_drops_by_reason(
    znode: Callable[..., Znode],
) -> None:
    nodes = cluster(znode, 3)
    layer = ZeroMQChannelLayer(node=nodes[0].endpoint, capacity=5)
    try:
        doomed = names_owned_by("node-2", IDS3, 2, stem="doomed")
        for name in doomed:
            for i in range(5):
                await layer.send(name, {"i": i})
        with pytest.raises(Exception, match="full"):
            await layer.send(doomed[0], {"i": 5})

        def loads_known() -> bool:
            report = status(nodes[0])
            members = {m["id"]: m for m in report["members"]}
            return members["node-2"]["queued"] == 10 and members["node-2"]["channels"] == 2

        await eventually(loads_known, 5, "node-0 to know what node-2 holds")
        report = status(nodes[0])
        assert set(report["drops"]) == {
            "full",
            "expired",
            "dead_owner",
            "receiver_gone",
            "decode_error",
        }
        assert report["nodes"]["node-2"]["drops"]["full"] >= 1
        assert await layer.drops() == report["drops"]
        # node-2 dies with 10 queued messages: one survivor counts them lost,
        # once it has not come back for as long as the member table
        # remembers the dead (dead_keep, 30 s on lan: a partition that short
        # heals into the same life, nothing lost; a frozen node that wakes
        # ends its life itself and reports exactly what it dropped)
        nodes[2].signal(signal.SIGKILL)
        took = await eventually(
            lambda: sum(status(n)["drops"]["dead_owner"] for n in nodes[:2]) >= 10,
            45,
            "a survivor to count the dead node's messages",
        )
        counted = [status(n)["drops"]["dead_owner"] for n in nodes[:2]]
        assert sorted(counted) == [0, 10], f"counted once, by one survivor: {counted}"
        print(f"10 messages lost with a dead node counted by a survivor after {took:.2f} s")
        # its names have new owners: sends work again
        await layer.send(doomed[0], {"after": True})
        reader = ZeroMQChannelLayer(node=nodes[1].endpoint)
        try:
            assert await asyncio.wait_for(reader.receive(doomed[0]), 5) == {"after": True}
        finally:
            await reader.close()
    finally:
        await layer.close()


async def test_a_node_that_leaves_cleanly_hands_its_queues_over(
    znode: Callable[..., Znode],
) -> None:
    nodes = cluster(znode, 3)
    names = names_owned_by("node-2", IDS3, 8, stem="handover")
    sender = ZeroMQChannelLayer(node=nodes[0].endpoint)
    reader = ZeroMQChannelLayer(node=nodes[1].endpoint)
    try:
        for i in range(10):
            for name in names:
                await sender.send(name, {"i": i})
        await eventually(lambda: status(nodes[2])["queued"] == 80, 5, "80 queued on node-2")
        nodes[2].signal(signal.SIGTERM)
        assert nodes[2].wait(5) == 0
        for name in names:
            got = [(await asyncio.wait_for(reader.receive(name), 5))["i"] for _ in range(10)]
            assert got == list(range(10)), name
        assert all(status(n)["drops"]["dead_owner"] == 0 for n in nodes[:2])
    finally:
        await sender.close()
        await reader.close()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "left"])
async def test_a_receive_waiting_at_an_owner_that_goes_is_served_by_the_next(
    znode: Callable[..., Znode], how: signal.Signals
) -> None:
    nodes = cluster(znode, 3)
    names = names_owned_by("node-2", IDS3, 4, stem="waiting")
    readers = [ZeroMQChannelLayer(node=n.endpoint) for n in nodes[:2]]
    sender = ZeroMQChannelLayer(node=nodes[0].endpoint)
    try:
        # receives on node-0 and node-1 wait (their credit held at node-2)
        waiting = {
            name: asyncio.create_task(readers[i % 2].receive(name)) for i, name in enumerate(names)
        }
        await eventually(
            lambda: status(nodes[2])["channels"] == len(names), 5, "the waits held at node-2"
        )
        nodes[2].signal(how)
        gone = time.monotonic()
        await eventually(
            lambda: all(status(n).get("view") == ["node-0", "node-1"] for n in nodes[:2]),
            10,
            "node-2 gone from the views",
        )
        for name in names:
            await sender.send(name, {"after": name})
        for name, task in waiting.items():
            assert await asyncio.wait_for(task, 10) == {"after": name}
        print(f"waiting receives served by the new owners {time.monotonic() - gone:.2f} s after")
    finally:
        for layer in [*readers, sender]:
            await layer.close()


async def test_a_sigkilled_node_restarted_has_its_loss_counted_exactly(
    znode: Callable[..., Znode],
) -> None:
    """A SIGKILLed owner counts nothing as it dies. One survivor counted
    what it held by its last load report, up to a report interval old:
    sends accepted since were not counted. The owner keeps a held record
    after every step (``--state-dir``, a mapped file a SIGKILL leaves
    whole); its next process counts what its last life held, exactly, and
    tells the survivors, which count nothing (docs/cluster.md)."""
    nodes = cluster(znode, 3)
    names = names_owned_by("node-2", IDS3, 6, stem="crash")
    layer = ZeroMQChannelLayer(node=nodes[0].endpoint, capacity=100)
    local = ZeroMQChannelLayer(node=nodes[2].endpoint, capacity=100)

    def lost_in_dead_nodes() -> list[int]:
        return [status(n)["routing_counters"].get("lost_in_dead_nodes", 0) for n in nodes[:2]]

    try:
        for name in names[:3]:
            for i in range(4):
                await layer.send(name, {"i": i})

        def reported(node: Znode, queued: int, incarnation: int | None = None) -> bool:
            members = {m["id"]: m for m in status(node)["members"]}
            member = members["node-2"]
            # (a refuted suspicion adds one to a life's incarnation)
            return member["queued"] == queued and (
                incarnation is None or incarnation <= member["incarnation"] < incarnation + 1000
            )

        await eventually(lambda: reported(nodes[0], 12), 5, "node-0 to hear node-2 hold 12")
        # Accepted after that report (each a first send to its channel: a
        # request node-2 answered, never a reserved send still in a socket)
        for name in names[3:]:
            await local.send(name, {"i": "late"})
        nodes[2].signal(signal.SIGKILL)
        nodes[2].wait(5)
        args = ["--preset", "lan", "--node-id", "node-2", "--peer-endpoint", "tcp://127.0.0.1:0"]
        args += ["--discovery", "none", "--seed", str(nodes[0].ready["peer"])]
        again = znode(nodes[2].endpoint, *args)
        restarted = status(again)
        assert restarted["peer_counters"]["previous_life_crashed"] == 1
        assert restarted["peer_counters"]["previous_life_lost"] == 15
        assert restarted["drops"]["dead_owner"] == 15
        life = int(restarted["incarnation"])
        # (the survivors heard the next life's load report, which says so)
        took = await eventually(
            lambda: all(reported(n, 0, life) for n in nodes[:2]),
            20,
            "both survivors to hear node-2's next life report",
        )
        wait_for(lambda: converged([*nodes[:2], again], set(IDS3)), 10, "node-2 back")
        counted = lost_in_dead_nodes()
        assert counted == [0, 0], f"counted by node-2's next process, not again: {counted}"
        print(f"15 lost in a SIGKILL (3 after the last report); peers told in {took:.2f} s")
    finally:
        await layer.close()
        await local.close()


async def test_reserved_sends_a_sigkilled_node_never_read_are_counted_by_its_next_process(
    znode: Callable[..., Znode],
) -> None:
    """What a user of reservations sees: ``send()`` returns at once, with no
    answer from the node. Sends made while the node is frozen wait unread in
    its socket, and a SIGKILL loses them; no node ever read them. Each HELLO
    says how many sends the connection made on reservations, and the held
    record says how many the killed life read, so its next process counts
    the difference, exactly once (``reserved_unread``, under ``dead_owner``).
    (Real-process soak seeds 4 and 13 left such sends uncounted.)"""
    nodes = cluster(znode, 3)
    name = names_owned_by("node-2", IDS3, 1, stem="unread")[0]
    layer = ZeroMQChannelLayer(node=nodes[2].endpoint, capacity=100)
    try:
        await layer.send(name, {"i": 0})  # (a request: its ACK reserves slots)
        nodes[2].signal(signal.SIGSTOP)
        began = time.monotonic()
        for i in range(1, 6):
            # (on a reservation: no answer awaited, so a frozen node cannot
            # hold it up; a request would wait for request_timeout)
            await asyncio.wait_for(layer.send(name, {"i": i}), 1.0)
        assert time.monotonic() - began < 1.0
        nodes[2].signal(signal.SIGKILL)
        nodes[2].wait(5)
        args = ["--preset", "lan", "--node-id", "node-2", "--peer-endpoint", "tcp://127.0.0.1:0"]
        args += ["--discovery", "none", "--seed", str(nodes[0].ready["peer"])]
        again = znode(nodes[2].endpoint, *args)

        took = await eventually(
            lambda: status(again)["drops"]["dead_owner"] >= 6,
            15,
            "the client to come back to node-2's next process",
        )
        restarted = status(again)
        # 1 queued (the held record), 5 never read: unread in the killed
        # socket, or read by the next process before the client's HELLO
        # (refused: the session was unknown) and counted there as it read them
        assert restarted["peer_counters"]["previous_life_lost"] == 1
        assert restarted["drops"]["dead_owner"] == 6, restarted["drops"]
        unread = restarted["counters"]["reserved_unread"]
        assert 0 <= unread <= 5
        await layer.send(name, {"i": "after"})
        assert await asyncio.wait_for(layer.receive(name), 5) == {"i": "after"}
        assert status(again)["drops"]["dead_owner"] == 6  # (counted once)
        print(f"6 lost (5 reserved, {unread} of them unread at the kill); counted in {took:.2f} s")
    finally:
        await layer.close()


#: A client process that takes one message of a channel and then idles (its
#: receive prefetches more: they are in its flight until it dies)
TAKE_ONE = """
import asyncio, sys
from zchannels.layer import ZeroMQChannelLayer

async def main():
    layer = ZeroMQChannelLayer(node=sys.argv[1], capacity=100)
    message = await layer.receive(sys.argv[2])
    print("took", message["i"], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_clients_flight_is_counted_when_it_and_its_node_die_together(
    znode: Callable[..., Znode],
) -> None:
    """A client process dies holding prefetched messages, and its node is
    SIGKILLed before the client's lease lapses: that node never counted
    them. Its held record lists each connection's flight; its next process
    counts the flight of a connection that does not come back in a lease
    (``receiver_gone``), exactly (simulation seed 100)."""
    nodes = cluster(znode, 3)
    name = names_owned_by("node-2", IDS3, 1, stem="flight")[0]
    layer = ZeroMQChannelLayer(node=nodes[2].endpoint, capacity=100)
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", TAKE_ONE, nodes[2].endpoint, name, stdout=asyncio.subprocess.PIPE
    )
    try:
        for i in range(10):
            await layer.send(name, {"i": i})
        assert client.stdout is not None
        line = await asyncio.wait_for(client.stdout.readline(), 20)
        assert line.split() == [b"took", b"0"], line

        def settled() -> dict[str, int] | None:
            s = status(nodes[2])
            handed = s["counters"]["delivered"]
            # (its one take reported: the rest of what it was handed is in flight)
            return s if handed > 1 and s["in_flight"] == handed - 1 else None

        await eventually(settled, 10, "the client's take reported")
        before = status(nodes[2])
        flight, queued = before["in_flight"], before["queued"]
        assert flight + queued == 9, before
        client.kill()
        nodes[2].signal(signal.SIGKILL)
        nodes[2].wait(5)
        await asyncio.wait_for(client.wait(), 5)
        args = ["--preset", "lan", "--node-id", "node-2", "--peer-endpoint", "tcp://127.0.0.1:0"]
        args += ["--discovery", "none", "--seed", str(nodes[0].ready["peer"])]
        again = znode(nodes[2].endpoint, *args)
        assert status(again)["peer_counters"]["previous_life_lost"] == queued
        took = await eventually(
            lambda: status(again)["drops"]["receiver_gone"] >= flight,
            15,
            "the next process to count the dead client's flight",
        )
        drops = status(again)["drops"]
        assert drops["receiver_gone"] == flight, drops
        assert status(again)["counters"]["flight_unclaimed"] == flight
        print(f"{flight} in a dead client's flight, {queued} queued: counted in {took:.2f} s")
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
        await layer.close()
