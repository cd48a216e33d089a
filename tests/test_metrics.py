"""What an operator scrapes: ``/metrics``, ``/healthz`` and ``/readyz``.

Real ``znode`` processes on loopback (``--metrics-endpoint 127.0.0.1:0``,
the ``lan`` preset as in ``tests/test_cluster.py``), read over HTTP with
urllib and parsed with prometheus_client's own parser, as Prometheus would.
Every wait is a condition polled with a deadline.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from channels.exceptions import ChannelFull
from conftest import Znode, eventually, wait_for
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from zchannels.node.metrics import FrameLatency, MemberEvents, NodeCollector, snapshot
from zchannels.node.readiness import Readiness

from zchannels.config import LayerConfig
from zchannels.errors import ConfigError
from zchannels.keys import write_key_file
from zchannels.layer import ZeroMQChannelLayer
from zchannels.protocol import MsgType, encode

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a member view must stay unchanged (``--ready-settle``): short,
#: so the tests are quick, long enough to be seen by polling.
SETTLE = 1.0
#: ``lan`` membership timings: a SIGKILLed node is dead everywhere in ~1.5 s
#: (bound 3 s, tests/test_cluster.py); the deadlines leave room for a busy machine.
WITHIN = 15.0

# No proxy, ever: these are loopback addresses (an http_proxy in the
# environment would otherwise be asked).
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

Labels = tuple[tuple[str, str], ...]


def get(node: Znode | str, path: str) -> tuple[int, str]:
    """Status and body of GET ``path`` on the node's metrics endpoint (or
    on the ``http://HOST:PORT`` given)."""
    base = node if isinstance(node, str) else node.ready["metrics"]
    url = f"{base}{path}"
    try:
        with _http.open(url, timeout=5) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


class Scrape:
    """One scrape of ``/metrics``, parsed: samples by name and labels."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: dict[tuple[str, Labels], float] = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in self.families.values()
            for s in f.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]


def scrape(node: Znode | str) -> Scrape:
    status, text = get(node, "/metrics")
    assert status == 200, text
    return Scrape(text)


def total(nodes: list[Znode], name: str, **labels: str) -> float:
    return sum(scrape(n)(name, **labels) for n in nodes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def member(znode: Callable[..., Znode], i: int, *extra: str) -> Znode:
    """Cluster member ``node-i`` with a metrics endpoint (lan timings)."""
    return znode(
        None,
        *("--preset", "lan", "--node-id", f"node-{i}", "--discovery", "none"),
        *("--metrics-endpoint", "127.0.0.1:0", "--ready-settle", str(SETTLE)),
        *extra,
    )


def ready(node: Znode) -> bool:
    return get(node, "/readyz")[0] == 200


def alive(node: Znode) -> float:
    return scrape(node)("znode_cluster_members", state="alive")


# -- health through start, join and death ----------------------------------------
def test_readyz_through_start_join_and_a_peers_death(znode: Callable[..., Znode]) -> None:
    port = free_port()
    seed = f"tcp://127.0.0.1:{port}"
    # node-1 starts first, its only seed not up yet: it serves, it has not joined
    n1 = member(znode, 1, "--peer-endpoint", "tcp://127.0.0.1:0", "--seed", seed)
    assert get(n1, "/healthz") == (200, "ok\n")
    code, why = get(n1, "/readyz")
    assert (code, why) == (503, "not joined: no other live member seen yet\n")
    assert scrape(n1)("znode_ready") == 0
    # node-0 (configured alone: no seed) comes up; node-1 joins through it
    n0 = member(znode, 0, "--peer-endpoint", seed)
    took = wait_for(lambda: ready(n1), WITHIN, "node-1 ready after joining")
    print(f"node-1 ready {took:.2f} s after its seed started (settle {SETTLE:g} s)")
    n2 = member(znode, 2, "--peer-endpoint", "tcp://127.0.0.1:0", "--seed", seed)
    nodes = [n0, n1, n2]
    wait_for(lambda: all(alive(n) == 3 and ready(n) for n in nodes), WITHIN, "three ready members")

    # a peer is SIGKILLed: each survivor's view changes (503, saying why),
    # then settles with the peer dead (200 again)
    n2.signal(signal.SIGKILL)
    killed = time.monotonic()
    survivors = [n0, n1]
    reasons: dict[int, str] = {}

    def unready() -> bool:
        for i, node in enumerate(survivors):
            code, why = get(node, "/readyz")
            if code == 503:
                reasons.setdefault(i, why)
        return len(reasons) == len(survivors)

    wait_for(unready, WITHIN, "both survivors to say not ready")
    assert all(why.startswith("member view changed") for why in reasons.values()), reasons

    def settled(node: Znode) -> bool:
        m = scrape(node)
        return (
            m("znode_cluster_members", state="dead") == 1
            and m("znode_cluster_members", state="alive") == 2
            and m("znode_ready") == 1
            and ready(node)
        )

    wait_for(lambda: all(settled(n) for n in survivors), WITHIN, "the survivors to settle")
    print(f"survivors ready again {time.monotonic() - killed:.2f} s after the kill")
    for node in survivors:
        m = scrape(node)
        assert m("znode_member_events_total", event="dead") >= 1
        assert m("znode_member_events_total", event="suspect") >= 1
        assert m("znode_member_events_total", event="joined") == 2
        assert get(node, "/healthz") == (200, "ok\n")

    # the last survivor of a cluster it joined stays ready (joined stays joined)
    n0.signal(signal.SIGKILL)
    wait_for(lambda: get(n1, "/readyz")[0] == 503, WITHIN, "node-1 to see node-0 go")
    wait_for(
        lambda: alive(n1) == 1 and ready(n1), WITHIN, "node-1 ready alone after its peers died"
    )


# -- metrics of a cluster under traffic -------------------------------------------
async def test_metrics_of_a_cluster_under_traffic(znode: Callable[..., Znode]) -> None:
    first = member(znode, 0, "--peer-endpoint", "tcp://127.0.0.1:0")
    seed = str(first.ready["peer"])
    nodes = [first] + [
        member(znode, i, "--peer-endpoint", "tcp://127.0.0.1:0", "--seed", seed) for i in (1, 2)
    ]
    await eventually(
        lambda: all(alive(n) == 3 and ready(n) for n in nodes), WITHIN, "a ready cluster"
    )
    before = [scrape(n) for n in nodes]
    assert all(b("znode_messages_enqueued_total") == 0 for b in before)
    layers = [ZeroMQChannelLayer(node=n.endpoint) for n in nodes]
    full = ZeroMQChannelLayer(node=nodes[0].endpoint, capacity=5)
    short = ZeroMQChannelLayer(node=nodes[1].endpoint, expiry=1)
    try:
        # one reader on each node, all three in one group
        channels = [await layer.new_channel() for layer in layers]
        for layer, channel in zip(layers, channels, strict=True):
            await layer.group_add("room", channel)
        sends, group_sends = 50, 20
        for i in range(sends):  # node-0 -> a channel of node-1 (relayed)
            await layers[0].send(channels[1], {"i": i})
        for i in range(group_sends):  # node-2 -> the group (3 members)
            await layers[2].group_send("room", {"g": i})
        got = [0, 0, 0]
        for k, (layer, channel) in enumerate(zip(layers, channels, strict=True)):
            want = group_sends + (sends if k == 1 else 0)
            for _ in range(want):
                await asyncio.wait_for(layer.receive(channel), 5)
                got[k] += 1
        # capacity: 8 sends to a channel of capacity 5 nobody reads
        refused = 0
        for i in range(8):
            try:
                await full.send("jobs", {"i": i})
            except ChannelFull:
                refused += 1
        assert refused == 3
        # expiry: 4 messages that nobody reads within their 1 s
        for i in range(4):
            await short.send("stale", {"i": i})
        await eventually(
            lambda: total(nodes, "znode_messages_dropped_total", reason="expired") == 4,
            WITHIN,
            "the 4 stale messages to be counted expired",
        )

        delivered = sum(got)
        enqueued = sends + 3 * group_sends + 5 + 4
        after = [scrape(n) for n in nodes]

        def summed(name: str, **labels: str) -> float:
            return sum(m(name, **labels) for m in after)

        assert delivered == sends + 3 * group_sends
        assert summed("znode_messages_enqueued_total") == enqueued
        assert summed("znode_messages_delivered_total") == delivered
        assert summed("znode_messages_dropped_total", reason="full") == refused
        assert summed("znode_messages_dropped_total", reason="expired") == 4
        for reason in ("dead_owner", "receiver_gone", "decode_error"):
            assert summed("znode_messages_dropped_total", reason=reason) == 0
        # node-1 owns its reader's channel: the 50 sends and its group copies
        assert after[1]("znode_messages_delivered_total") == sends + group_sends
        assert summed("znode_queued_messages") == 5  # the full channel's, unread
        # "jobs": a channel that holds nothing and that nobody waits on is forgotten
        assert summed("znode_channels") == 1
        for k, m in enumerate(after):
            assert m("znode_groups") == 1 and m("znode_group_members") == 1
            assert m("znode_sessions") == (2 if k in (0, 1) else 1)
            assert m("znode_connections") >= m("znode_sessions")
            assert m("znode_cluster_members", state="alive") == 3
            assert m("znode_ready") == 1
            assert m("znode_security_refusals_total", socket="client") == 0
            # peers talk: frames and bytes both ways
            for name in ("znode_peer_receive", "znode_peer_transmit"):
                frames, size = m(f"{name}_frames_total"), m(f"{name}_bytes_total")
                assert 0 < frames < size
            # every client frame timed, in seconds
            count = m("znode_request_duration_seconds_count")
            assert count > 0
            assert m("znode_request_duration_seconds_bucket", le="+Inf") == count
            assert 0 < m("znode_request_duration_seconds_sum") < count * 1.0
            info = m.families["znode_info"].samples[0].labels
            assert info["node_id"] == f"node-{k}" and info["cluster"] == "zchannels"
        # each node timed the frames of its clients' requests
        for b, m in zip(before, after, strict=True):
            name = "znode_request_duration_seconds_count"
            assert m(name) > b(name)
        assert after[0]("process_resident_memory_bytes") > 0
    finally:
        for layer in [*layers, full, short]:
            await layer.close()


async def test_refused_connections_are_counted(znode: Callable[..., Znode], tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    write_key_file(key)
    tcp = f"tcp://127.0.0.1:{free_port()}"
    node = znode(
        None, "--key-file", str(key), "--client-endpoint", tcp, "--metrics-endpoint", "[::1]:0"
    )
    assert node.ready["metrics"].startswith("http://[::1]:")
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(tcp)  # no key: the handshake fails
    raw.send(encode(MsgType.PING, 1))
    try:
        await eventually(
            lambda: scrape(node)("znode_security_refusals_total", socket="client") >= 1,
            WITHIN,
            "the keyless client to be counted",
        )
    finally:
        raw.close()


# -- loopback only unless the operator says otherwise -------------------------------
def znode_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zchannels.node", "run", "--preset", "test", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_metrics_endpoint_beyond_loopback_is_refused(
    znode: Callable[..., Znode], tmp_path: Path
) -> None:
    ipc = f"ipc://{tmp_path}/refused.sock"
    refused = znode_run("--client-endpoint", ipc, "--metrics-endpoint", "0.0.0.0:0")
    assert refused.returncode == 1 and refused.stdout == ""  # never said ready
    assert "beyond loopback" in refused.stderr and "--metrics-insecure" in refused.stderr
    misspelt = znode_run("--client-endpoint", ipc, "--metrics-endpoint", "9746")
    assert misspelt.returncode == 1 and "HOST:PORT" in misspelt.stderr
    # said so: served on every address (scraped here through loopback)
    node = znode(None, "--metrics-endpoint", "0.0.0.0:0", "--metrics-insecure")
    assert str(node.ready["metrics"]).startswith("http://0.0.0.0:")
    url = "http://127.0.0.1:" + str(node.ready["metrics"]).rsplit(":", 1)[1]
    assert get(url, "/healthz") == (200, "ok\n")
    wait_for(lambda: get(url, "/readyz")[0] == 200, WITHIN, "a lone node to be ready")
    assert get(url, "/nothing")[0] == 404


# -- a node the layer starts (CONFIG metrics_endpoint) -------------------------------
def test_the_shared_node_serves_metrics_of_config(tmp_path: Path) -> None:
    """CONFIG ``metrics_endpoint``: the site's shared node serves it."""
    port = free_port()
    script = (
        "import asyncio, json, sys\n"
        "from zchannels.layer import ZeroMQChannelLayer\n"
        f"layer = ZeroMQChannelLayer(scope={str(tmp_path)!r}, "
        f"metrics_endpoint='127.0.0.1:{port}')\n"
        "async def main():\n"
        "    for i in range(3):\n"
        "        await layer.send('work', {'i': i})\n"
        "    print(json.dumps({'sent': 3}), flush=True)\n"
        # until the test closes stdin (off the loop: the layer works meanwhile)
        "    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)\n"
        "    await layer.close()\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == '{"sent": 3}'
        node = f"http://127.0.0.1:{port}"
        wait_for(  # (a send returns before its node has it: reservations)
            lambda: scrape(node)("znode_messages_enqueued_total") == 3, WITHIN, "3 messages"
        )
        m = scrape(node)
        assert m("znode_queued_messages") == 3
        assert m("znode_sessions") == 1
        assert m.families["znode_info"].samples[0].labels["cluster"] == ""
        assert get(node, "/readyz")[0] in (200, 503)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(15)
        if proc.stdout is not None:
            proc.stdout.close()


def test_config_metrics_endpoint_is_checked() -> None:
    assert LayerConfig.build({"metrics_endpoint": "127.0.0.1:9746"}).metrics_endpoint
    assert LayerConfig.build({"node": "embedded", "metrics_endpoint": "localhost:0"})
    for options, says in [
        ({"metrics_endpoint": "0.0.0.0:9746"}, "beyond loopback"),
        ({"metrics_endpoint": "9746"}, "HOST:PORT"),
        ({"node": "ipc:///run/z.sock", "metrics_endpoint": "127.0.0.1:1"}, "--metrics-endpoint"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(says)) as caught:
            LayerConfig.build(options)
        assert caught.value.key == "metrics_endpoint"
    from zchannels.embedded import node_config

    cfg = node_config(LayerConfig.build({"node": "embedded", "metrics_endpoint": "[::1]:0"}))
    assert cfg.metrics_endpoint == "[::1]:0" and not cfg.metrics_insecure


# -- the pure parts ---------------------------------------------------------------
def test_the_readiness_rule() -> None:
    from zchannels.node.membership import EventKind

    alone = Readiness(settle=2.0, expects_peers=False, changed_at=10.0)
    assert alone.verdict(10.5, serving=True) is not None  # settling from its start
    assert alone.verdict(12.0, serving=True) is None
    assert alone.verdict(12.0, serving=False) == "not serving clients"
    member = Readiness(settle=2.0, expects_peers=True, changed_at=10.0)
    assert member.verdict(100.0, serving=True) == "not joined: no other live member seen yet"
    member.member_event(EventKind.JOINED, 100.0)
    assert member.verdict(101.0, serving=True) is not None
    assert member.verdict(102.0, serving=True) is None
    member.member_event(EventKind.REAPED, 103.0)  # forgetting the dead changes nothing
    assert member.verdict(103.0, serving=True) is None
    member.member_event(EventKind.SUSPECT, 104.0)
    assert member.verdict(105.0, serving=True) is not None
    member.member_event(EventKind.DEAD, 105.5)
    assert member.verdict(107.4, serving=True) is not None
    assert member.verdict(107.5, serving=True) is None  # alone now, but it had joined


def test_every_metric_is_in_the_readme_table() -> None:
    status = {
        "node_id": "n",
        "incarnation": "1",
        "sessions": 0,
        "connections": 0,
        "channels": 0,
        "queued": 0,
        "groups": 0,
        "group_entries": 0,
        "counters": {"enqueued": 0, "delivered": 0},
        "drops": {"full": 0},
    }
    snap = snapshot(status, MemberEvents(), FrameLatency(), ready=True)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(lambda: snap))
    names = [f.name for f in text_string_to_metric_families(generate_latest(registry).decode())]
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Operating zchannels") :]
    for name in names:
        documented = name + "_total" if f"`{name}_total`" in table else name
        assert f"`{documented}`" in table, f"{name} is not in README's metrics table"


def test_frame_latency_buckets_are_less_or_equal() -> None:
    latency = FrameLatency()
    for seconds in (0.00001, 0.000025, 0.00003, 5.0):
        latency.observe(seconds)
    assert latency.counts[0] == 2  # 10 µs and exactly 25 µs: le="2.5e-05"
    assert latency.counts[1] == 1
    assert latency.counts[-1] == 1  # above every bound: only in +Inf
    assert latency.sum == pytest.approx(5.000065)
