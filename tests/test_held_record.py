"""The held record: what a node's process keeps where a SIGKILL leaves it
(``zchannels.node.held_record``), and how the next process takes it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from zchannels.node.cluster import ClusterNode
from zchannels.node.config import NodeConfig
from zchannels.node.held_record import (
    SIZE,
    SLOT,
    BadHeldRecord,
    HeldRecord,
    RecordFile,
    decode,
    encode_slot,
    record_path,
    take_record,
)


def test_the_newer_whole_slot_is_the_record() -> None:
    a, b = HeldRecord(1000, 3, 10.0), HeldRecord(1000, 7, 11.0)
    assert decode(encode_slot(2, a) + encode_slot(3, b)) == b
    assert decode(encode_slot(5, a) + encode_slot(4, b)) == a


def test_a_torn_slot_leaves_the_other() -> None:
    """A kill in the middle of a write tears one slot: the other, older by
    one write, is the record."""
    old, new = HeldRecord(1000, 3, 10.0), HeldRecord(1000, 9, 11.0)
    torn = bytearray(encode_slot(3, new))
    torn[20] ^= 0xFF  # (the held count half written)
    assert decode(encode_slot(2, old) + bytes(torn)) == old


@pytest.mark.parametrize(
    "data",
    [b"", b"\0" * SIZE, b"x" * SIZE, encode_slot(1, HeldRecord(1, 1, 1.0))[:-1]],
    ids=["empty", "zeros", "garbage", "short"],
)
def test_no_whole_slot_is_a_typed_error(data: bytes) -> None:
    with pytest.raises(BadHeldRecord):
        decode(data)


def test_a_record_file_keeps_each_change_and_refreshes_its_clock(tmp_path: Path) -> None:
    path = record_path(str(tmp_path), "node/1")
    assert os.path.basename(path) == "node_1.held"
    f = RecordFile(path)
    f.write(1000, 4, 100.0)
    assert decode(Path(path).read_bytes()) == HeldRecord(1000, 4, 100.0)
    f.write(1000, 4, 100.5)  # (unchanged, and fresh: not written)
    assert decode(Path(path).read_bytes()).at == 100.0
    f.write(1000, 4, 101.0)  # (unchanged, a second old: its clock again)
    assert decode(Path(path).read_bytes()) == HeldRecord(1000, 4, 101.0)
    f.write(1000, 0, 101.1)
    assert decode(Path(path).read_bytes()) == HeldRecord(1000, 0, 101.1)
    f.remove()
    assert not os.path.exists(path)
    f.write(1000, 9, 102.0)  # (closed: nothing)
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
        "for held in range(1, 500):\n"
        "    f.write(1000, held, 1.0 + held)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, path], timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert decode(Path(path).read_bytes()) == HeldRecord(1000, 499, 500.0)


def test_the_next_process_takes_the_record_once_and_only_while_fresh(tmp_path: Path) -> None:
    state = str(tmp_path)
    assert take_record(state, "n1", time.time(), 30.0) is None  # (none: a first start)
    f = RecordFile(record_path(state, "n1"))
    f.write(1000, 6, 500.0)
    f.close()
    assert take_record(state, "n1", 510.0, 30.0) == HeldRecord(1000, 6, 500.0)
    assert take_record(state, "n1", 510.0, 30.0) is None  # (taken once)
    for now in (531.0, 499.0):  # (its peers forgot that life; a clock gone back)
        f = RecordFile(record_path(state, "n1"))
        f.write(1000, 6, 500.0)
        f.close()
        assert take_record(state, "n1", now, 30.0) is None
        assert not os.path.exists(record_path(state, "n1"))
    Path(record_path(state, "n1")).write_bytes(b"x" * SLOT.size)
    assert take_record(state, "n1", 510.0, 30.0) is None  # (malformed: logged, unused)


def test_the_node_says_what_it_holds_and_what_its_last_life_held() -> None:
    """The pure half: ``held_record`` is what a load report would count,
    now; ``previous_crash`` puts an earlier life's record in the reports."""
    config = NodeConfig.test(
        node_id="n1",
        client_endpoints=("inproc://t",),
        peer_endpoint="tcp://10.0.0.1:7701",
        discovery=("none",),
        cluster="t",
    )
    node = ClusterNode(config, address="tcp://10.0.0.1:7701", incarnation=5, rng=random.Random(1))
    node.start(0.0)
    assert node.routing is not None
    assert node.held_record() == (node.incarnation, 0)
    for i in range(3):
        node.core.queues.put("c", b"%d" % i, 60.0, 100, 0.0)
    assert node.held_record() == (node.incarnation, 3)
    node.previous_crash(4000, 6, 0.0)
    assert node.routing._report(0.1)["crashed"] == [4000, 6]
    assert node.counters["previous_life_crashed"] == 1
    node.previous_crash(node.incarnation + 1, 6, 0.0)  # (not an earlier life: ignored)
    assert node.routing._report(0.2)["crashed"] == [4000, 6]
