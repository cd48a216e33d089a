"""The held record: what a node's process keeps where a SIGKILL leaves it
(``zchannels.node.held_record``), and how the next process takes it."""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import msgpack
import pytest
from zchannels.node.cluster import ClusterNode
from zchannels.node.config import NodeConfig
from zchannels.node.held_record import (
    HEAD,
    SIZE,
    SLOT_SIZE,
    BadHeldRecord,
    HeldRecord,
    RecordFile,
    decode,
    encode_slot,
    record_path,
    take_record,
)
from zchannels.node.life_note import LifeNote
from zchannels.node.links import LinkCarry
from zchannels.node.peer_messages import LinkProbe, LinkState
from zchannels.node.peer_wire import decode_peer

from zchannels.protocol import Message, MsgType

LINKS = LinkCarry(
    (("n2", 1000, 3, 2000, 1, ((4, 2), (5, 1))), ("n3", 1000, 1, 3000, 0, ((9, 7),))),
    (("n2", 2000, 1, 12),),
)


def slots(a: bytes, b: bytes) -> bytes:
    """A file's bytes: two slots, each written from its start."""
    return a.ljust(SLOT_SIZE, b"\0") + b.ljust(SLOT_SIZE, b"\0")


def test_the_newer_whole_slot_is_the_record() -> None:
    a, b = HeldRecord(1000, 3, 10.0, LINKS), HeldRecord(1000, 7, 11.0)
    assert decode(slots(encode_slot(2, a), encode_slot(3, b))) == b
    assert decode(slots(encode_slot(5, a), encode_slot(4, b))) == a
    assert decode(slots(encode_slot(5, a), encode_slot(4, b))).links.units() == 10


def test_a_torn_slot_leaves_the_other() -> None:
    """A kill in the middle of a write tears one slot: the other, older by
    one write, is the record."""
    old, new = HeldRecord(1000, 3, 10.0), HeldRecord(1000, 9, 11.0, LINKS)
    for at in (20, HEAD.size + 5):  # (the held count; the links' part)
        torn = bytearray(encode_slot(3, new))
        torn[at] ^= 0xFF
        assert decode(slots(encode_slot(2, old), bytes(torn))) == old


@pytest.mark.parametrize(
    "data",
    [b"", b"\0" * SIZE, b"x" * SIZE, encode_slot(1, HeldRecord(1, 1, 1.0, LINKS))[:-1]],
    ids=["empty", "zeros", "garbage", "short"],
)
def test_no_whole_slot_is_a_typed_error(data: bytes) -> None:
    with pytest.raises(BadHeldRecord):
        decode(data)


@pytest.mark.parametrize(
    "part",
    [
        b"\xc1",  # (not msgpack)
        msgpack.packb([[], [], -1]),  # (a negative count)
        msgpack.packb([[["n2", 1, 1, 1, 0, [4]]], [], 0]),  # (a frame without its units)
        msgpack.packb([[[7, 1, 1, 1, 0, []]], [], 0]),  # (a node id that is a number)
        msgpack.packb([[], [["n2", 1, 1]], 0]),  # (a link in short of a field)
        msgpack.packb([[], [], 0, [b"s/0"]]),  # (a connection without its total)
        msgpack.packb([[], [], 0, ["s/0", 3]]),  # (a connection id that is text)
        msgpack.packb([[], [], 0, [b"s/0", -3]]),  # (a negative total)
        msgpack.packb([[], [], 0, [], [b"s/0"]]),  # (flights without a count)
        msgpack.packb([[], [], 0, [], [], 1]),  # (parks that are not a list)
        msgpack.packb([[], [], 0, [], [], [["n2", 1, "s/0", []]]]),  # (a text connection)
        msgpack.packb([[], [], 0, [], [], [["n2", 1, b"s/0", [["c", [-1]]]]]]),  # (a number)
        msgpack.packb([[], [], 0, [], [], [["n2", 1, b"s/0", [["c"]]]]]),  # (no numbers)
        msgpack.packb([[], [], 0, [], [], [], 1]),  # (a field no version wrote)
    ],
    ids=[
        "not-msgpack",
        "negative",
        "odd-frames",
        "node-id",
        "short-link",
        "odd-tally",
        "text-conn",
        "negative-total",
        "odd-flights",
        "parks-not-a-list",
        "park-text-conn",
        "park-negative",
        "park-short",
        "seven-fields",
    ],
)
def test_a_whole_slot_whose_links_part_is_not_one_is_a_typed_error(part: bytes) -> None:
    """A links' part whole by its CRC that no version wrote (a bug, or a
    file written by hand) is refused as a whole record is, not half used."""
    head = struct.pack("<4sB3xQqqdI", b"zchr", 2, 1, 1000, 3, 10.0, len(part))
    slot = head + struct.pack("<I", zlib.crc32(part, zlib.crc32(head))) + part
    with pytest.raises(BadHeldRecord):
        decode(slots(slot, b""))


def test_a_links_part_with_no_room_in_a_slot_is_kept_as_one_count() -> None:
    frames = tuple((seq, 1) for seq in range(1, SLOT_SIZE))
    tally = ((b"s/0", 7),)
    big = HeldRecord(1000, 3, 10.0, LinkCarry((("n2", 1000, 1, 2000, 0, frames),)), tally)
    kept = decode(slots(encode_slot(1, big), b""))
    assert kept.links == LinkCarry(lump=SLOT_SIZE - 1) and kept.held == 3
    assert kept.conns == tally
    # (a tally with no room either is left out: those clients' unread
    # reserved sends go uncounted, nothing else is lost)
    huge = HeldRecord(1000, 3, 10.0, big.links, tuple((b"%08d/0" % i, i) for i in range(9000)))
    kept = decode(slots(encode_slot(1, huge), b""))
    assert kept.links == LinkCarry(lump=SLOT_SIZE - 1) and kept.conns == ()


def test_the_parks_travel_whole_and_a_record_of_session_30_has_none() -> None:
    parked = (("n2", 1000, b"s/0", (("c", (5, 6)), ("d", (9,)))), ("n3", 2000, b"t/1", ()))
    record = HeldRecord(1000, 4, 10.0, LINKS, ((b"s/0", 2),), ((b"s/0", 1),), parked)
    assert decode(slots(encode_slot(1, record), b"")) == record
    older = msgpack.packb([[], [], 0, [b"s/0", 2], [b"s/0", 1]])
    head = struct.pack("<4sB3xQqqdI", b"zchr", 2, 1, 1000, 3, 10.0, len(older))
    slot = head + struct.pack("<I", zlib.crc32(older, zlib.crc32(head))) + older
    assert decode(slots(slot, b"")).parked == ()


def test_a_version_1_record_is_read_after_an_upgrade() -> None:
    """Session 28's layout: two 48-byte slots, no links' part."""
    body = struct.pack("<4sB3xQqqd", b"zchr", 1, 4, 1000, 6, 500.0)
    slot = struct.pack("<40sI4x", body, zlib.crc32(body))
    assert decode(slot + bytes(48)) == HeldRecord(1000, 6, 500.0)


def test_a_record_file_keeps_each_change_and_refreshes_its_clock(tmp_path: Path) -> None:
    path = record_path(str(tmp_path), "node/1")
    assert os.path.basename(path) == "node_1.held"
    f = RecordFile(path)
    f.write((1000, 4, LINKS, (), ()), 100.0)
    assert decode(Path(path).read_bytes()) == HeldRecord(1000, 4, 100.0, LINKS)
    f.write((1000, 4, LINKS, (), ()), 100.5)  # (unchanged, and fresh: not written)
    assert decode(Path(path).read_bytes()).at == 100.0
    f.write((1000, 4, LINKS, (), ()), 101.0)  # (unchanged, a second old: its clock again)
    assert decode(Path(path).read_bytes()) == HeldRecord(1000, 4, 101.0, LINKS)
    f.write((1000, 4, LinkCarry(), (), ()), 101.1)  # (its links' part changed)
    assert decode(Path(path).read_bytes()) == HeldRecord(1000, 4, 101.1)
    f.write((1000, 0, LinkCarry(), (), ()), 101.2)
    assert decode(Path(path).read_bytes()) == HeldRecord(1000, 0, 101.2)
    f.remove()
    assert not os.path.exists(path)
    f.write((1000, 9, LINKS, (), ()), 102.0)  # (closed: nothing)
    assert not os.path.exists(path)


def test_what_a_sigkilled_process_wrote_is_in_the_file(tmp_path: Path) -> None:
    """The reason for a mapped file: its pages are the kernel's. A process
    writes its record and is SIGKILLed with no flush, close or exit
    handler; the record is whole in the file."""
    path = record_path(str(tmp_path), "n1")
    code = (
        "import os, signal, sys\n"
        "from zchannels.node.held_record import RecordFile\n"
        "f = RecordFile(sys.argv[1])\n"
        "from zchannels.node.links import LinkCarry\n"
        "for held in range(1, 500):\n"
        '    links = LinkCarry((("n2", 1000, 1, 7, 0, ((held, 1),)),))\n'
        '    f.write((1000, held, links, ((b"s/0", held),), ((b"s/0", 2),)), 1.0 + held)\n'
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, path], timeout=30)
    assert proc.returncode == -signal.SIGKILL
    kept = decode(Path(path).read_bytes())
    assert (kept.life, kept.held, kept.at, kept.links.out[0][5]) == (1000, 499, 500.0, ((499, 1),))
    assert kept.conns == ((b"s/0", 499),) and kept.flights == ((b"s/0", 2),)


def test_the_next_process_takes_the_record_once_and_only_while_fresh(tmp_path: Path) -> None:
    state = str(tmp_path)
    assert take_record(state, "n1", time.time(), 30.0) is None  # (none: a first start)
    f = RecordFile(record_path(state, "n1"))
    f.write((1000, 6, LINKS, (), ()), 500.0)
    f.close()
    assert take_record(state, "n1", 510.0, 30.0) == HeldRecord(1000, 6, 500.0, LINKS)
    assert take_record(state, "n1", 510.0, 30.0) is None  # (taken once)
    for now in (531.0, 499.0):  # (its peers forgot that life; a clock gone back)
        f = RecordFile(record_path(state, "n1"))
        f.write((1000, 6, LINKS, (), ()), 500.0)
        f.close()
        assert take_record(state, "n1", now, 30.0) is None
        assert not os.path.exists(record_path(state, "n1"))
    Path(record_path(state, "n1")).write_bytes(b"x" * SLOT_SIZE)
    assert take_record(state, "n1", 510.0, 30.0) is None  # (malformed: logged, unused)


def started_node(incarnation: int) -> ClusterNode:
    """A pure clustered node n1, started alone."""
    config = NodeConfig.test(
        node_id="n1",
        client_endpoints=("inproc://t",),
        peer_endpoint="tcp://10.0.0.1:7701",
        discovery=("none",),
        cluster="t",
    )
    node = ClusterNode(
        config, address="tcp://10.0.0.1:7701", incarnation=incarnation, rng=random.Random(1)
    )
    node.start(0.0)
    return node


def test_the_node_says_what_it_holds_and_what_its_last_life_held() -> None:
    """The pure half: ``held_record`` is what a load report would count,
    now; ``previous_crash`` counts an earlier life's record here and says
    in the reports that it did."""
    node = started_node(5)
    assert node.routing is not None
    assert node.held_record() == (node.incarnation, 0, LinkCarry(), (), (), ())
    for i in range(3):
        node.core.queues.put("c", b"%d" % i, 60.0, 100, 0.0)
    assert node.held_record() == (node.incarnation, 3, LinkCarry(), (), (), ())
    dead_owner = node.drops()["dead_owner"]
    node.previous_crash(4000, 6, LinkCarry(lump=2), 0.0)  # (2 units too many to list)
    # (counted here, once: the survivors are told it crashed, with none to count)
    assert node.drops()["dead_owner"] == dead_owner + 8
    assert node.routing._report(0.1)["crashed"] == [4000, 0]
    assert node.counters["previous_life_crashed"] == 1
    assert node.counters["previous_life_lost"] == 8
    node.previous_crash(node.incarnation + 1, 6, LinkCarry(), 0.0)  # (not an earlier life)
    assert node.routing._report(0.2)["crashed"] == [4000, 0]
    assert node.drops()["dead_owner"] == dead_owner + 8


def test_the_next_process_answers_probes_of_a_life_that_left_as_it_would_have() -> None:
    """A life that left keeps in its note how far it took each peer's link
    (``life_note``); its next process answers a peer's probe of them with
    that, not "I do not know" (-1), so the peer counts only what it never
    took (simulation seed 705)."""
    node = started_node(9000)
    probe = [LinkProbe("n2", 7000, 3)]
    node.links.take(probe, 0.1)
    assert [decode_peer(f) for _, f in node.links.replies()] == [[LinkState("n1", 7000, 3, -1)]]
    node.previous_life(LifeNote("n1", 4000, 0.0, (("n2", 7000, 3, 12),)), 0.2)
    node.links.take(probe, 0.3)
    assert [decode_peer(f) for _, f in node.links.replies()] == [[LinkState("n1", 7000, 3, 11)]]


def test_the_record_carries_the_clients_reserved_send_tally_to_the_next_process() -> None:
    """The pure half, end to end: a client of the killed life made 9
    reserved sends; that life read 3 (its record says so), the next process
    read 2 before the client's HELLO (refused: counted as it read them), and
    its HELLO says 9: the 4 no life read are counted there, once."""
    tag, conn = "abcdefghij", b"abcdefghij/0"

    def hello(total: int) -> list[Message]:
        return [(MsgType.HELLO, (tag, 1, [60.0, 0, total]))]

    send: Message = (MsgType.SEND, (0, "c", b"x", 1000))
    node = started_node(5000)
    node.client(conn, hello(0), 0.1)
    node.client(conn, [send] * 3, 0.2)
    kept = node.held_record()
    assert kept is not None and kept[3] == ((conn, 3),)
    record = decode(slots(encode_slot(1, HeldRecord(kept[0], kept[1], 0.0, *kept[2:])), b""))
    following = started_node(6000)
    following.previous_crash(record.life, record.held, record.links, 1.0, record.conns)
    dead_owner = following.drops()["dead_owner"]  # (the 3 queued: the held count)
    assert dead_owner == 3
    following.client(conn, [send] * 2, 1.1)
    following.client(conn, hello(9), 1.2)
    following.client(conn, hello(9), 1.3)
    assert following.drops()["dead_owner"] == dead_owner + 2 + 4
    assert following.core.counters.reserved_unread == 4


def test_what_a_client_that_died_unnoticed_had_in_flight_is_counted_by_the_next_process() -> None:
    """Simulation seed 100: a client process died with 5 messages handed
    to it; its node was SIGKILLed before its lease lapsed, so no life
    counted them. The record lists each connection's flight; the next
    process counts the flights of connections that do not come back in a
    lease (``receiver_gone``), and not those of one that does (it keeps
    and takes what it holds)."""
    dead, alive = b"deaddeadde/0", b"livelivel0/0"
    node = started_node(5000)
    for conn in (dead, alive):
        tag = conn.decode()[:10]
        node.client(conn, [(MsgType.HELLO, (tag, 1, [60.0, 0, 0]))], 0.1)
        node.client(conn, [(MsgType.RECV, (f"c.{tag}", 10))], 0.2)
        for i in range(3 if conn == dead else 2):
            node.client(conn, [(MsgType.SEND, (i + 1, f"c.{tag}", b"x", 100))], 0.3)
    kept = node.held_record()
    assert kept is not None and dict(kept[4]) == {dead: 3, alive: 2}
    record = decode(slots(encode_slot(1, HeldRecord(kept[0], kept[1], 0.0, *kept[2:])), b""))
    following = started_node(6000)
    following.previous_crash(
        record.life, record.held, record.links, 1.0, record.conns, record.flights
    )
    following.client(alive, [(MsgType.HELLO, ("livelivel0", 1, [60.0, 0, 0]))], 1.05)
    gone = following.drops()["receiver_gone"]
    lease = following.core.sessions.lease
    counted = []
    for step in range(1, int(3 * lease / 0.05)):  # (a live node steps often)
        now = 1.05 + step * 0.05
        following.client(alive, [(MsgType.PING, ())], now)
        following.tick(now)
        counted.append((now, following.drops()["receiver_gone"] - gone))
    assert {n for _, n in counted} == {0, 3}, "counted once"
    first = next(now for now, n in counted if n)
    assert 1.0 + lease <= first < 1.0 + lease + 0.5
    assert following.core.counters.flight_unclaimed == 3
