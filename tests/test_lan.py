"""A real LAN: hosts are network namespaces on a bridge (``tests/netns.py``).

Each host runs a real ``znode run --cluster NAME`` with no seeds: the nodes
find each other by mDNS on the LAN, serve peers on their LAN address (port
7701) and clients on an ipc socket (reachable from the test process, which
reads ``znode status`` through it). Client processes run on their hosts too.
Every figure is measured and printed; the bounds are issue 4's. Needs root
and iproute2: without them the tests fail and say so (``NetnsUnavailable``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import eventually, wait_for
from netns import Host, Lan, lan_for_test
from procs import ClientProcess
from zchannels.node.cli import query

from zchannels.keys import write_key_file
from zchannels.protocol import MsgType

pytestmark = pytest.mark.slow

#: Seconds between two checks of an invariant that must hold all along.
SAMPLE = 0.1
#: How long a host stays cut off in the partition test, and how long the
#: lossy link lasts (issue 4).
PARTITION_SECONDS = 10.0
LOSS_SECONDS = 30.0
#: The tests folder: the LAN site (``lan_site``) is imported from here.
TESTS_DIR = Path(__file__).resolve().parent
#: Seconds a node may take to print its ready line.
START_LIMIT = 20.0


class LanNode:
    """A ``znode`` on one LAN host."""

    def __init__(self, host: Host, cluster: str, sockets: Path) -> None:
        self.host = host
        self.cluster = cluster
        #: every cluster of these tests is keyed (a node refuses to serve the
        #: LAN without a key); one key file per cluster name
        self.key_file = cluster_key(sockets, cluster)
        self.id = host.name
        self.endpoint = f"ipc://{sockets}/{host.name}.sock"
        self.proc: subprocess.Popen[str] | None = None
        self.started_at = 0.0

    def start(self) -> LanNode:
        self.proc = self.host.run(
            [
                sys.executable,
                *("-m", "zchannels.node", "run", "--preset", "lan"),
                *("--cluster", self.cluster, "--node-id", self.id),
                *("--client-endpoint", self.endpoint, "--log-level", "WARNING"),
                *("--key-file", str(self.key_file)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = _first_line(self.proc, START_LIMIT)
        assert ready.get("ready") is True, ready
        assert ready["peer"] == f"tcp://{self.host.ip}:7701", ready
        self.started_at = time.monotonic()
        return self

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = query(self.endpoint, MsgType.STATUS, timeout=2.0)
        return result

    def states(self) -> dict[str, str]:
        return {m["id"]: m["state"] for m in self.status()["members"]}

    def alive(self) -> set[str]:
        return {k for k, v in self.states().items() if v == "alive"}

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)


def cluster_key(folder: Path, cluster: str) -> Path:
    """The key file of ``cluster`` in ``folder``, made on first use."""
    path = folder / f"{cluster}.key"
    if not path.exists():
        write_key_file(path)
    return path


def _first_line(proc: subprocess.Popen[str], limit: float) -> dict[str, Any]:
    """The process's first stdout line as JSON, within ``limit`` seconds."""
    line: list[str] = []
    reader = threading.Thread(
        target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""), daemon=True
    )
    reader.start()
    reader.join(limit)
    if not line or not line[0]:
        proc.kill()
        pytest.fail(f"znode printed no ready line within {limit:g} s (exit {proc.poll()})")
    parsed: dict[str, Any] = json.loads(line[0])
    return parsed


@pytest.fixture
def lan3() -> Iterator[Lan]:
    with lan_for_test(3, "zlan") as built:
        yield built


@pytest.fixture
def sockets(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def clients() -> Iterator[list[ClientProcess]]:
    started: list[ClientProcess] = []
    yield started
    for proc in started:
        proc.close()


def start_nodes(lan: Lan, sockets: Path, cluster: str = "lan-test") -> list[LanNode]:
    return [LanNode(host, cluster, sockets).start() for host in lan.hosts]


def agreed(nodes: list[LanNode], alive: set[str]) -> bool:
    return all(n.alive() == alive for n in nodes)


def client(clients: list[ClientProcess], node: LanNode, role: str, *args: str) -> ClientProcess:
    proc = ClientProcess(role, node.endpoint, *args, launch=node.host.run)
    clients.append(proc)
    return proc


def test_three_hosts_find_each_other_with_no_seeds(lan3: Lan, sockets: Path) -> None:
    nodes = start_nodes(lan3, sockets)
    last_start = nodes[-1].started_at
    ids = {n.id for n in nodes}
    wait_for(lambda: agreed(nodes, ids), 10, "one member table on every host")
    took = time.monotonic() - last_start
    print(f"3 hosts, no seeds: one member table {took:.3f} s after the last start")
    assert took < 3.0, f"discovery took {took:.2f} s (bound 3 s)"
    for node in nodes:
        addresses = {m["id"]: m["address"] for m in node.status()["members"]}
        assert addresses == {n.id: f"tcp://{n.host.ip}:7701" for n in nodes}


async def test_messages_reach_processes_on_other_hosts(
    lan3: Lan, sockets: Path, clients: list[ClientProcess]
) -> None:
    nodes = start_nodes(lan3, sockets)
    wait_for(lambda: agreed(nodes, {n.id for n in nodes}), 10, "the cluster to form")
    readers = [client(clients, n, "consumer", "--group", "blog") for n in nodes[1:]]
    channels = [(await r.event("ready", 20))["channel"] for r in readers]
    await eventually(
        lambda: nodes[0].status()["group_sizes"].get("asgi|blog") == 2, 5, "the group on h1"
    )
    for channel in channels:  # a channel message to each reader's process channel
        sender = client(clients, nodes[0], "sender", "--channel", channel, "--tag", "direct")
        await sender.event("sent", 20)
    poster = client(clients, nodes[0], "sender", "--group", "blog", "--tag", "post", "--count", "3")
    await poster.event("sent", 20)
    for reader in readers:
        got = await reader.messages(4, 10)
        assert [m["tag"] for m in got] == ["direct", "post", "post", "post"]
        assert [m["i"] for m in got[1:]] == [0, 1, 2]


async def test_a_killed_host_is_declared_dead_and_rejoins_by_itself(
    lan3: Lan, sockets: Path, clients: list[ClientProcess]
) -> None:
    nodes = start_nodes(lan3, sockets)
    ids = {n.id for n in nodes}
    wait_for(lambda: agreed(nodes, ids), 10, "the cluster to form")
    readers = [client(clients, n, "consumer", "--group", "room") for n in nodes]
    for reader in readers:
        await reader.event("ready", 20)
    await eventually(
        lambda: all(n.status()["group_sizes"].get("asgi|room") == 3 for n in nodes[:2]),
        5,
        "the room's three members on every host",
    )
    # every process on h3 is SIGKILLed: no goodbye, no leave
    victim = nodes[2]
    readers[2].signal(signal.SIGKILL)
    victim.kill()
    killed = time.monotonic()
    took = await eventually(
        lambda: all(n.states().get("h3") == "dead" for n in nodes[:2]), 10, "h3 declared dead"
    )
    print(f"SIGKILLed host declared dead on the other hosts after {took:.2f} s")
    assert time.monotonic() - killed < 3.0, f"detection took {took:.2f} s (bound 3 s)"
    await eventually(
        lambda: all(n.status()["group_sizes"].get("asgi|room") == 2 for n in nodes[:2]),
        1,
        "h3's members gone everywhere",
    )
    # h3 comes back: nobody tells it where the others are
    restarted = victim.start()
    took = await eventually(
        lambda: agreed(nodes, ids), 10, "the restarted h3 back in every member table"
    )
    print(f"restarted host rejoined by itself {took:.3f} s after it started")
    assert restarted.alive() == ids


async def test_a_partitioned_host_keeps_serving_and_converges_after_healing(
    lan3: Lan, sockets: Path, clients: list[ClientProcess]
) -> None:
    nodes = start_nodes(lan3, sockets)
    ids = {n.id for n in nodes}
    wait_for(lambda: agreed(nodes, ids), 10, "the cluster to form")
    readers = [client(clients, n, "consumer", "--group", "news") for n in nodes]
    for reader in readers:
        await reader.event("ready", 20)
    await eventually(
        lambda: all(n.status()["group_sizes"].get("asgi|news") == 3 for n in nodes),
        5,
        "three members everywhere",
    )
    h3 = lan3.hosts[2]
    h3.link_down()
    cut = time.monotonic()
    await eventually(
        lambda: nodes[0].alive() == {"h1", "h2"} and nodes[2].alive() == {"h3"},
        10,
        "both sides to see the other gone",
    )
    # both sides keep serving their own members while cut off
    rounds = 0
    while time.monotonic() - cut < PARTITION_SECONDS:
        for poster, local in ((nodes[0], readers[:2]), (nodes[2], readers[2:])):
            tag = f"cut-{rounds}-{poster.id}"
            sent = client(clients, poster, "sender", "--group", "news", "--tag", tag)
            await sent.event("sent", 20)
            for reader in local:
                await reader.expect(tag, lambda e, t=tag: e.get("message", {}).get("tag") == t, 5)
        rounds += 1
    h3.link_up()
    healed = time.monotonic()

    last: list[object] = []

    def converged() -> bool:
        tables = [n.states() for n in nodes]
        sizes = [n.status()["group_sizes"] for n in nodes]
        last[:] = [tables, sizes]
        alive = [{k for k, v in t.items() if v == "alive"} for t in tables]
        return all(a == ids for a in alive) and all(s == sizes[0] for s in sizes)

    members = await eventually(
        lambda: all(n.alive() == ids for n in nodes), 15, "member tables to converge"
    )
    print(f"after healing: member tables converged after {members:.2f} s")
    try:
        took = members + await eventually(converged, 15, "group tables to converge")
    except pytest.fail.Exception:
        pytest.fail(f"no convergence after healing; last seen (states, group sizes): {last}")
    print(
        f"partition of {PARTITION_SECONDS:g} s ({rounds} rounds of group_sends served on each "
        f"side); tables converged {took:.2f} s after the link came back"
    )
    assert time.monotonic() - healed < 5.0, f"convergence took {took:.2f} s (bound 5 s)"
    assert nodes[0].status()["group_sizes"]["asgi|news"] == 3


async def test_packet_loss_makes_no_false_death_and_groups_converge(
    lan3: Lan, sockets: Path, clients: list[ClientProcess]
) -> None:
    nodes = start_nodes(lan3, sockets)
    ids = {n.id for n in nodes}
    wait_for(lambda: agreed(nodes, ids), 10, "the cluster to form")
    lan3.hosts[2].set_loss(20)
    start = time.monotonic()
    deaths: list[str] = []
    suspect_samples = 0
    joined = 0
    converge_times: list[float] = []
    while time.monotonic() - start < LOSS_SECONDS:
        for node in nodes:
            for member, state in node.states().items():
                if state in ("dead", "left"):
                    deaths.append(f"{node.id} saw {member} {state}")
                elif state == "suspect":
                    suspect_samples += 1
        if time.monotonic() - start > joined * 5:  # a group change on the lossy host
            joined += 1
            reader = client(clients, nodes[2], "consumer", "--group", f"lossy-{joined}")
            await reader.event("ready", 20)
            converge_times.append(
                await eventually(
                    lambda j=joined: all(
                        n.status()["group_sizes"].get(f"asgi|lossy-{j}") == 1 for n in nodes
                    ),
                    10,
                    f"group lossy-{joined} to reach every host",
                )
            )
        await asyncio.sleep(SAMPLE)
    print(
        f"{LOSS_SECONDS:g} s at 20% loss on h3: {len(deaths)} samples with a false death, "
        f"{suspect_samples} with a suspect (all refuted); "
        f"{joined} group changes converged in {', '.join(f'{t:.2f}' for t in converge_times)} s"
    )
    assert not deaths, deaths[:5]


def test_two_clusters_on_one_lan_stay_apart(sockets: Path) -> None:
    with lan_for_test(4, "zsep") as lan4:
        a = [LanNode(h, "blue", sockets).start() for h in lan4.hosts[:2]]
        b = [LanNode(h, "green", sockets).start() for h in lan4.hosts[2:]]
        wait_for(lambda: agreed(a, {"h1", "h2"}) and agreed(b, {"h3", "h4"}), 10, "two clusters")
        # and they stay apart: mDNS keeps showing each the other's services
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            assert {m["id"] for n in a for m in n.status()["members"]} == {"h1", "h2"}
            assert {m["id"] for n in b for m in n.status()["members"]} == {"h3", "h4"}
            time.sleep(SAMPLE)


async def test_an_embedded_node_joins_the_cluster_by_itself(
    lan3: Lan, sockets: Path, clients: list[ClientProcess]
) -> None:
    # h1 and h2 run znode; on h3 a process runs its own embedded node
    # (CONFIG {"cluster": "lan-test", "discovery": "mdns"}), no sidecar
    nodes = [LanNode(h, "lan-test", sockets).start() for h in lan3.hosts[:2]]
    wait_for(lambda: agreed(nodes, {"h1", "h2"}), 10, "the two znodes to meet")
    embedded = f"embedded:lan-test:{cluster_key(sockets, 'lan-test')}"
    member = ClientProcess("consumer", embedded, "--group", "blog", launch=lan3.hosts[2].run)
    clients.append(member)
    channel = (await member.event("ready", 20))["channel"]
    took = await eventually(
        lambda: all(len(n.alive()) == 3 for n in nodes), 5, "the embedded node to join"
    )
    print(f"embedded node of a process on h3 in every member table {took:.3f} s after ready")
    await eventually(
        lambda: all(n.status()["group_sizes"].get("asgi|blog") == 1 for n in nodes),
        5,
        "its membership on every node",
    )
    poster = client(clients, nodes[0], "sender", "--group", "blog", "--tag", "post")
    await poster.event("sent", 20)
    direct = client(clients, nodes[1], "sender", "--channel", channel, "--tag", "direct")
    await direct.event("sent", 20)
    got = await member.messages(2, 10)
    assert sorted(m["tag"] for m in got) == ["direct", "post"]


async def test_a_post_reaches_websocket_readers_of_django_sites_on_other_hosts(
    lan3: Lan, sockets: Path, clients: list[ClientProcess]
) -> None:
    # a real Django/Channels site served by Daphne on h2 and h3, each on its
    # host's znode; WebSocket readers on h2 and h3; the post comes from h1
    nodes = start_nodes(lan3, sockets)
    wait_for(lambda: agreed(nodes, {n.id for n in nodes}), 10, "the cluster to form")
    tests_dir = str(TESTS_DIR)
    readers = []
    for node in nodes[1:]:
        env = {**os.environ, "PYTHONPATH": tests_dir, "ZCHANNELS_NODE": node.endpoint}
        site = [sys.executable, "-m", "daphne", "-b", node.host.ip, "-p", "8000"]
        node.host.run(
            [*site, "lan_site.asgi:application"],
            cwd=tests_dir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"ws://{node.host.ip}:8000/ws/blog/"
        reader = ClientProcess(
            "reader",
            node.endpoint,
            launch=node.host.run,
            argv=[sys.executable, "-m", "lan_site.reader", url],
            env=env,
        )
        clients.append(reader)
        readers.append(reader)
    for reader in readers:
        await reader.event("ready", 30)
    await eventually(
        lambda: nodes[0].status()["group_sizes"].get("asgi|blog") == 2, 5, "two readers"
    )
    env = {**os.environ, "PYTHONPATH": tests_dir}
    started = time.monotonic()
    post = ClientProcess(
        "post",
        nodes[0].endpoint,
        launch=nodes[0].host.run,
        argv=[sys.executable, "-m", "lan_site.post", "--node", nodes[0].endpoint, "hello"],
        env=env,
    )
    clients.append(post)
    for reader in readers:
        assert await reader.messages(1, 10) == [{"text": "hello"}]
    took = time.monotonic() - started
    print(f"post from h1 on the WebSocket of readers on h2 and h3 {took:.3f} s after launch")
