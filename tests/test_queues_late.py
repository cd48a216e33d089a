"""What a client did with its flight, told again after a peer link lost it
(``RelayLost``): the capacity its takes freed is released even though the
reports that came after it released the oldest messages in its place, and
what it gave back leaves the flight (the caller counts it lost). Simulation
seeds 399 and 748: without it a pool held capacity for good."""

from __future__ import annotations

from zchannels.node.queues import Queues

V = b"\x00zr-virtual"


def _handed(q: Queues, n: int) -> list[int]:
    seqs = []
    for i in range(n):
        result = q.put("s0", b"m%d" % i, 100.0, 10, 0.0)
        assert result is not True and result is not False
        seqs += [seq for _c, _n, items in [result] for *_, seq in items]  # type: ignore[misc]
    return seqs


def test_a_report_told_again_releases_what_later_reports_left_in_its_place() -> None:
    q = Queues(first_seq=0)
    q.grant(V, "s0", 10, 0.0)
    s = _handed(q, 4)
    assert q.held("s0") == 4
    # The reports of the first two were lost; those of the next two each
    # released the oldest in flight (the first two) in their place.
    q.consumed(V, "s0", s[2], 1, 0)
    q.consumed(V, "s0", s[3], 1, 0)
    assert sorted(q.channels["s0"].flight[V]) == s[2:], "the two taken last stay held"
    q.consumed(V, "s0", s[0], 1, 0)  # told again as it was: releases nothing
    assert q.held("s0") == 2
    q.consumed_late(V, "s0", 2, 0)
    assert q.held("s0") == 0
    assert "s0" not in q.channels or not q.channels["s0"].flight


def test_a_report_from_before_a_flush_is_known_as_such() -> None:
    q = Queues(first_seq=0)
    q.grant(V, "s0", 10, 0.0)
    s = _handed(q, 2)
    q.clear("")
    assert q.before_flush("s0", s[1])
    later = _handed(q, 1)
    assert not q.before_flush("s0", later[0])


def test_a_give_back_a_link_lost_leaves_the_flight_once() -> None:
    q = Queues(first_seq=0)
    q.grant(V, "s0", 10, 0.0)
    s = _handed(q, 3)
    assert q.drop_flight(V, "s0", [s[1], s[2], 999]) == 2
    assert q.held("s0") == 1
    assert q.drop_flight(V, "s0", [s[1]]) == 0, "already out"
    assert q.drop_flight(V, "nothing", [s[0]]) == 0
    assert q.queued() == 0, "never queued again"
