"""Keys, bind policy and per-client bounds: nobody gets in without the cluster key.

Real ``znode`` processes on loopback. A keyed node serves its peer socket and
its tcp:// client endpoints with CurveZMQ and admits only holders of a key of
its keyring (ZAP); what it refuses is counted in ``status.security.refused``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import Znode, eventually, wait_for
from test_cluster import status
from zchannels.node.cli import query
from zchannels.node.security import check_bind_policy, loopback_only

from zchannels.errors import LimitExceeded
from zchannels.keys import ClusterKey, KeyFileError, read_key_file, write_key_file
from zchannels.layer import ZeroMQChannelLayer
from zchannels.protocol import MsgType, encode

ZNODE = [sys.executable, "-m", "zchannels.node"]
#: Seconds between two checks of an invariant that must hold all along.
SAMPLE = 0.05
#: Seconds a refused connection is given to (not) get anything through.
REFUSAL_WINDOW = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def keyed_node(znode: Callable[..., Znode], node_id: str, keys: list[Path], *extra: str) -> Znode:
    args = ["--preset", "lan", "--node-id", node_id, "--discovery", "none"]
    args += ["--peer-endpoint", "tcp://127.0.0.1:0"]
    for key in keys:
        args += ["--key-file", str(key)]
    return znode(None, *args, *extra)


def alive(node: Znode) -> set[str]:
    return {m["id"] for m in status(node)["members"] if m["state"] == "alive"}


# -- key files ------------------------------------------------------------------
def test_keygen_writes_an_owner_only_key_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    made = subprocess.run([*ZNODE, "keygen", str(path)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = read_key_file(path)
    assert key.fingerprint in made.stderr and key.secret.decode() not in made.stderr
    again = subprocess.run([*ZNODE, "keygen", str(path)], capture_output=True, text=True)
    assert again.returncode == 1 and "not overwriting" in again.stderr
    assert read_key_file(path) == key


def test_a_key_file_others_can_read_or_a_broken_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_key_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_key_file(path)
    bad = tmp_path / "bad"
    bad.write_text('{"zchannels_cluster_key": 1, "public": "x", "secret": "y"}')
    os.chmod(bad, 0o600)
    with pytest.raises(KeyFileError, match="malformed"):
        read_key_file(bad)
    other = ClusterKey.generate()
    mixed = tmp_path / "mixed"
    stranger = ClusterKey.generate().secret.decode()
    fields = {"zchannels_cluster_key": 1, "public": other.public.decode(), "secret": stranger}
    mixed.write_text(json.dumps(fields))
    os.chmod(mixed, 0o600)
    with pytest.raises(KeyFileError, match="does not match"):
        read_key_file(mixed)
    assert "secret" not in repr(other) and other.secret.decode() not in repr(other)


# -- safe by default --------------------------------------------------------------
def test_bind_policy_rules() -> None:
    assert loopback_only("ipc:///tmp/x.sock") and loopback_only("inproc://x")
    assert loopback_only("tcp://127.0.0.1:1") and loopback_only("tcp://[::1]:1")
    assert not loopback_only("tcp://0.0.0.0:1") and not loopback_only("tcp://*:1")
    assert not loopback_only("tcp://10.0.0.5:7701") and not loopback_only("tcp://web-1:7701")
    check_bind_policy(["tcp://0.0.0.0:1"], keyed=True, insecure=False)  # keyed: fine
    with pytest.raises(ValueError, match="znode keygen"):
        check_bind_policy(["ipc:///x", "tcp://0.0.0.0:1"], keyed=False, insecure=False)


def test_a_node_without_a_key_refuses_to_serve_the_network(tmp_path: Path) -> None:
    port = free_port()
    cmd = [*ZNODE, "run", "--client-endpoint", f"ipc://{tmp_path}/n.sock", "--node-id", "n"]
    refused = subprocess.run(
        [*cmd, "--peer-endpoint", f"tcp://0.0.0.0:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 1
    assert "without a cluster key" in refused.stderr and "znode keygen" in refused.stderr
    assert refused.stdout == ""  # never said ready
    # --insecure: it starts, and says so loudly
    proc = subprocess.Popen(
        [*cmd, "--peer-endpoint", f"tcp://0.0.0.0:{port}", "--insecure", "--discovery", "none"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and '"ready": true' in proc.stdout.readline()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "INSECURE" in err


def test_the_ipc_socket_is_owner_only(znode: Callable[..., Znode]) -> None:
    node = znode()
    path = node.endpoint[len("ipc://") :]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


# -- keyed clusters ---------------------------------------------------------------
async def test_a_keyed_cluster_works_and_refuses_keyless_and_wrong_key_peers(
    znode: Callable[..., Znode], tmp_path: Path
) -> None:
    key, wrong = tmp_path / "cluster.key", tmp_path / "other.key"
    write_key_file(key)
    write_key_file(wrong)
    first = keyed_node(znode, "k0", [key])
    seed = str(first.ready["peer"])
    nodes = [first, *(keyed_node(znode, f"k{i}", [key], "--seed", seed) for i in (1, 2))]
    wait_for(lambda: all(alive(n) == {"k0", "k1", "k2"} for n in nodes), 10, "keyed cluster")
    # end to end across keyed nodes
    a, b = ZeroMQChannelLayer(node=nodes[0].endpoint), ZeroMQChannelLayer(node=nodes[2].endpoint)
    try:
        channel = await b.new_channel()
        await b.group_add("room", channel)
        await a.group_send("room", {"hello": 1})
        assert await asyncio.wait_for(b.receive(channel), 5) == {"hello": 1}
    finally:
        await a.close()
        await b.close()
    # a node without a key, and one with another key, try to join through k0
    keyless = znode(
        None,
        *("--preset", "lan", "--node-id", "intruder", "--discovery", "none"),
        *("--peer-endpoint", "tcp://127.0.0.1:0", "--seed", seed),
    )
    other = keyed_node(znode, "stranger", [wrong], "--seed", seed)
    took = await eventually(
        lambda: status(first)["security"]["refused"].get("peer", 0) >= 2,
        10,
        "k0 to refuse both",
    )
    print(f"keyless and wrong-key peers refused and counted after {took:.2f} s")
    end = time.monotonic() + REFUSAL_WINDOW
    while time.monotonic() < end:  # and nothing of theirs got in
        for node in nodes:
            assert alive(node) == {"k0", "k1", "k2"}
        assert alive(keyless) == {"intruder"} and alive(other) == {"stranger"}
        await asyncio.sleep(SAMPLE)
    sec = status(first)["security"]
    assert sec["keyed"] and len(sec["fingerprints"]) == 1


async def test_a_keyed_tcp_endpoint_refuses_a_keyless_client(
    znode: Callable[..., Znode], tmp_path: Path
) -> None:
    key = tmp_path / "cluster.key"
    write_key_file(key)
    port = free_port()
    tcp = f"tcp://127.0.0.1:{port}"
    node = znode(None, "--key-file", str(key), "--client-endpoint", tcp)
    ipc = node.endpoint
    # a holder of the key is served over tcp
    keyed = ZeroMQChannelLayer(node=tcp, key_file=str(key))
    plain = ZeroMQChannelLayer(node=ipc)
    try:
        channel = await plain.new_channel()
        await keyed.send(channel, {"via": "curve"})
        assert await asyncio.wait_for(plain.receive(channel), 5) == {"via": "curve"}
        # a raw keyless DEALER: its SEND completes no handshake, delivers nothing
        ctx = zmq.Context.instance()
        raw = ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(tcp)
        raw.send(encode(MsgType.SEND, 1, f"asgi|{channel}", b"\x81\xa1x\x01", 10))
        took = await eventually(
            lambda: status(node)["security"]["refused"].get("client", 0) >= 1,
            5,
            "the keyless client to be refused",
        )
        print(f"keyless tcp client refused and counted after {took:.3f} s")
        assert raw.poll(int(REFUSAL_WINDOW * 1000)) == 0, "the node answered a keyless client"
        raw.close()
        await plain.send(channel, {"marker": True})
        assert await asyncio.wait_for(plain.receive(channel), 5) == {"marker": True}
    finally:
        await keyed.close()
        await plain.close()


async def test_a_cluster_rolls_over_to_a_new_key(
    znode: Callable[..., Znode], tmp_path: Path
) -> None:
    old, new = tmp_path / "old.key", tmp_path / "new.key"
    write_key_file(old)
    write_key_file(new)
    # mid-rollover: some nodes serve the old key, some the new, all hold both
    first = keyed_node(znode, "r0", [old, new])
    seed = str(first.ready["peer"])
    nodes = [
        first,
        keyed_node(znode, "r1", [new, old], "--seed", seed),
        keyed_node(znode, "r2", [new, old], "--seed", seed),
    ]
    ids = {"r0", "r1", "r2"}
    took = await eventually(
        lambda: all(alive(n) == ids for n in nodes), 15, "one cluster across the rollover"
    )
    print(f"nodes serving two different keys formed one cluster in {took:.2f} s")
    a, b = ZeroMQChannelLayer(node=nodes[1].endpoint), ZeroMQChannelLayer(node=nodes[0].endpoint)
    try:
        channel = await b.new_channel()
        await b.group_add("g", channel)
        await a.group_send("g", {"rolled": True})
        assert await asyncio.wait_for(b.receive(channel), 5) == {"rolled": True}
    finally:
        await a.close()
        await b.close()
    fingerprints = [status(n)["security"]["fingerprints"] for n in nodes]
    assert fingerprints[0] == list(reversed(fingerprints[1]))


# -- per-client bounds --------------------------------------------------------------
async def test_per_client_bounds_on_channels_and_group_entries(
    znode: Callable[..., Znode],
) -> None:
    node = znode(None, "--max-client-channels", "20", "--max-client-group-entries", "10")
    greedy = ZeroMQChannelLayer(node=node.endpoint)
    # (another CONFIG: another client session, as another process would have)
    other = ZeroMQChannelLayer(node=node.endpoint, expiry=61)
    try:
        for i in range(20):
            await greedy.send(f"c{i}", {"i": i})
        with pytest.raises(LimitExceeded):
            await greedy.send("c20", {"i": 20})
        await greedy.send("c3", {"again": True})  # an existing channel is fine
        for i in range(10):
            await greedy.group_add(f"g{i}", "c0")
        with pytest.raises(LimitExceeded):
            await greedy.group_add("g10", "c0")
        # another process is not held back by the greedy one
        await other.send("fresh", {"ok": True})
        await other.group_add("g10", "fresh")
        assert await asyncio.wait_for(other.receive("fresh"), 5) == {"ok": True}
        # room again once its channels are gone (emptied, and the send slots
        # reserved for it on them lapsed)
        await greedy.flush()

        async def room_again() -> bool:
            try:
                await greedy.send("c20", {"i": 20})
            except LimitExceeded:
                return False
            return True

        took = await eventually(room_again, 10, "room for a new channel")
        print(f"a new channel allowed again {took:.2f} s after the old ones were emptied")
        counters: dict[str, Any] = query(node.endpoint, MsgType.STATUS)["counters"]
        assert counters["limited"] >= 2
    finally:
        await greedy.close()
        await other.close()


async def test_a_client_that_never_reads_its_replies_is_cut_off(
    znode: Callable[..., Znode],
) -> None:
    node = znode()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)  # and reads nothing: the node's queue to it fills
    sock.connect(node.endpoint)
    try:
        sock.send(encode(MsgType.HELLO, "greedy0000", 1, [60.0]))
        for _ in range(150_000):  # a request each, never reading the answers
            sock.send(encode(MsgType.PING))
        took = await eventually(
            lambda: status(node)["counters"]["slow_clients"] >= 1,
            30,
            "the node to cut off the non-reader",
        )
        print(f"a client never reading its replies was dropped {took:.2f} s after its flood")
        # the node serves everyone else on
        layer = ZeroMQChannelLayer(node=node.endpoint)
        try:
            channel = await layer.new_channel()
            await layer.send(channel, {"ok": True})
            assert await asyncio.wait_for(layer.receive(channel), 5) == {"ok": True}
        finally:
            await layer.close()
    finally:
        sock.close(0)
