"""FIFO per producer where a channel's queues meet: a handover merged with
what its new owner queued meanwhile never puts one producer's message
after a later one of the same producer, whatever the deadlines say.

A message's ``Stamp`` (producer, life, n) is given by the producer's node
as the send enters the cluster; deadlines are measured where each message
was queued (or when a frame was made), so a message delayed on the way
reads as newer than it is (simulation seed 125: a relay delayed on a lossy
link; seed 46: a handback delayed in transit)."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from zchannels.node.cluster import ClusterNode
from zchannels.node.config import NodeConfig
from zchannels.node.peer_messages import Handoff, aged
from zchannels.node.queues import (
    GAVE_BACK_KEPT,
    HANDED_MEMORY,
    Queues,
    Stamp,
    in_producer_order,
)

from zchannels.protocol import MsgType

R = b"r"
P = "n0/abcdefghij"  # a producer: its node and its session tag
LIFE = 1_000_000


def _taken(q: Queues, name: str = "c") -> list[bytes]:
    """Everything ``name`` holds, in the order a receiver is handed it."""
    got: list[bytes] = []
    for _c, _n, items in q.grant(R, name, 1000, 1.0):
        got += [payload for payload, _ttl, _seq in items]
    return got


def test_a_relay_delayed_on_the_way_goes_before_its_producers_next_send() -> None:
    """Seed 125's shape: send 4 was relayed to one keeper and arrived late
    (queued there 0.6 s after it was sent), send 5 was queued at another;
    the second hands its queue to the first. By deadline 5 goes first;
    by the producer's numbering 4 does."""
    owner = Queues()
    owner.put("c", b"4", 60.6, 100, 0.6, stamp=(P, LIFE, 4))
    handed = [[b"5", 60.0 - 0.7, 9, (P, LIFE, 5)]]  # queued at 0.0, handed at 0.7
    owner.adopt("c", handed, 0.7)
    assert _taken(owner) == [b"4", b"5"]


def test_a_handback_delayed_in_transit_goes_before_newer_sends_of_its_producer() -> None:
    """Seed 46's shrink: a keeper's handback of a producer's sends made in
    its node's earlier life reaches the node's next life 1 s after it was
    framed, behind 7 newer sends: by its TTLs (measured when it was framed)
    it is newer than all of them; by the producer's numbering (a new life
    numbers above the old) it is older."""
    owner = Queues()
    for n in range(1, 8):
        owner.put(
            "c", b"new%d" % n, 61.0 + n * 0.01, 100, 1.0 + n * 0.01, stamp=(P, LIFE + 1001, n)
        )
    handback = [[b"old%d" % n, 60.0, n, (P, LIFE, n)] for n in range(1, 4)]
    owner.adopt("c", handback, 2.0)  # framed at 1.0 with 60 s left: read as 62.0
    assert _taken(owner) == [b"old1", b"old2", b"old3", *(b"new%d" % n for n in range(1, 8))]


def test_other_producers_keep_the_deadline_order() -> None:
    """Only one producer's messages are reordered among themselves: another
    producer's, and messages with no stamp (an older node's), keep the
    places the deadline merge gave them (seed 290: two keepers' handbacks
    merged by deadline)."""
    owner = Queues()
    owner.put("c", b"q-a", 60.2, 100, 0.2, stamp=("n1/other", LIFE, 1))
    owner.put("c", b"q-p2", 60.4, 100, 0.4, stamp=(P, LIFE, 2))
    owner.put("c", b"q-none", 60.5, 100, 0.5)
    handed = [
        [b"h-b", 60.3 - 0.6, 2, ("n1/other", LIFE, 2)],
        [b"h-p1", 60.45 - 0.6, 1, (P, LIFE, 1)],  # delayed: its deadline says after p2
    ]
    owner.adopt("c", handed, 0.6)
    # by deadline: q-a 60.2, h-b 60.3, q-p2 60.4, h-p1 60.45, q-none 60.5;
    # P's two swap places, nothing else moves
    assert _taken(owner) == [b"q-a", b"h-b", b"h-p1", b"q-p2", b"q-none"]


def test_a_handover_older_by_deadline_is_still_put_first() -> None:
    """The usual case is unchanged: a handover older than everything queued
    here goes to the front, in its order."""
    owner = Queues()
    owner.put("c", b"3", 61.0, 100, 1.0, stamp=(P, LIFE, 3))
    owner.adopt("c", [[b"1", 59.0, 1, (P, LIFE, 1)], [b"2", 59.5, 2, (P, LIFE, 2)]], 1.0)
    assert _taken(owner) == [b"1", b"2", b"3"]


def test_a_send_that_reaches_its_owner_after_its_producers_next_goes_before_it() -> None:
    """A relay passed on by the channel's previous owner (two hops) can
    reach the owner after the producer's next send, relayed straight to it
    (a pass-on slower than ``relay_hold``): if that one is still queued,
    the late one goes before it, and what follows is numbered anew."""
    owner = Queues()
    owner.put("c", b"p2", 60.1, 100, 0.1, stamp=(P, LIFE, 2))
    owner.put("c", b"other", 60.15, 100, 0.15, stamp=("n1/other", LIFE, 1))
    owner.put("c", b"p1", 60.2, 100, 0.2, stamp=(P, LIFE, 1))
    owner.put("c", b"p3", 60.3, 100, 0.3, stamp=(P, LIFE, 3))
    seqs = [item[0] for item in owner.channels["c"].items]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert owner.counters.put_in_order == 1
    assert _taken(owner) == [b"p1", b"p2", b"other", b"p3"]


def test_a_late_send_after_its_producers_next_was_taken_goes_last() -> None:
    """Once the later one was handed out, nothing can be put before it: the
    late send is queued last, as before."""
    owner = Queues()
    owner.put("c", b"p2", 60.1, 100, 0.1, stamp=(P, LIFE, 2))
    assert owner.grant(R, "c", 1, 0.1), "p2 handed out"
    owner.put("c", b"q", 60.15, 100, 0.15, stamp=("n1/other", LIFE, 1))
    owner.put("c", b"p1", 60.2, 100, 0.2, stamp=(P, LIFE, 1))
    assert owner.counters.put_in_order == 0
    assert _taken(owner) == [b"q", b"p1"]


def test_stamps_survive_a_give_back_and_a_handover() -> None:
    """A message handed to a receiver and given back is queued again with
    its stamp, and a handover carries it on."""
    old, new = Queues(), Queues()
    old.put("c", b"2", 60.0, 100, 0.0, stamp=(P, LIFE, 2))
    [(_conn, _name, items)] = old.grant(R, "c", 1, 0.1)
    old.give_back(R, "c", items, 0.2)
    handed, _credit = old.take("c", 0.3)
    assert [item[3] for item in handed] == [(P, LIFE, 2)]  # type: ignore[misc]
    new.put("c", b"1", 59.0, 100, 0.3, stamp=(P, LIFE, 1))  # its deadline says older
    new.adopt("c", [list(item) for item in handed], 0.4)
    assert _taken(new) == [b"1", b"2"]


def test_a_handover_ages_with_its_stamps() -> None:
    """A link frame sent again is made anew with its TTLs aged
    (``peer_messages.aged``): the stamps stay."""
    msg = Handoff("n1", (("c", [[b"x", 5.0, 7, (P, LIFE, 3)], [b"y", 5.0, 8]]),), ())
    again = aged(msg, 1.5)
    assert isinstance(again, Handoff)
    assert again.channels == (("c", [[b"x", 3.5, 7, (P, LIFE, 3)], [b"y", 3.5, 8]]),)


stamps = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 3), st.integers(0, 5)),
)


@given(st.lists(st.tuples(st.integers(0, 99), stamps)))
def test_in_producer_order_only_permutes_each_producers_places(
    messages: list[tuple[int, Stamp | None]],
) -> None:
    out = in_producer_order(messages)
    assert sorted(out, key=repr) == sorted(messages, key=repr), "a permutation"
    for i, (before, after) in enumerate(zip(messages, out, strict=True)):
        # each place keeps a message of the producer that had it
        if before[1] is None:
            assert after == before
        else:
            assert after[1] is not None and after[1][0] == before[1][0], i
    for producer in "abc":
        mine = [(s[1], s[2]) for _, s in out if s is not None and s[0] == producer]
        assert mine == sorted(mine)


# -- any interleaving of sends, handovers and give-backs ----------------------
#: ("send", node, producer, deadline skew s), ("hand", from, to, TTL skew s),
#: ("bounce", node): a receiver is handed what is queued and gives it back,
#: ("restart", producer): its node starts a new life (numbers from 1 again,
#: in a higher life)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 2), st.integers(0, 2), st.floats(-5.0, 5.0)),
        st.tuples(st.just("hand"), st.integers(0, 2), st.integers(0, 2), st.floats(-5.0, 5.0)),
        st.tuples(st.just("bounce"), st.integers(0, 2)),
        st.tuples(st.just("restart"), st.integers(0, 2)),
        st.tuples(st.just("late"), st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.just("arrive"), st.integers(0, 2)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_any_merge_of_queues_keeps_each_producers_order(operations: list[tuple[Any, ...]]) -> None:
    """Several producers send to one channel kept by several nodes; queues
    are handed between them (with their TTLs skewed, as a frame delayed in
    transit or a deadline measured late makes them), and receivers give
    back what they were handed. Whatever is delivered in the end (a
    handover after the channel was served is dropped as stale, and
    counted), each producer's messages come in the order it sent them."""
    nodes = [Queues(first_seq=1000 * i) for i in range(3)]
    lives = [LIFE] * 3
    counts = [0] * 3
    now = 0.0
    sent = 0
    stale = 0
    on_way: list[tuple[int, bytes, Stamp]] = []
    for op in operations:
        now += 0.01
        if op[0] == "send":
            _, node, producer, skew = op
            counts[producer] += 1
            stamp = (f"n{producer}/p", lives[producer], counts[producer])
            payload = b"%d:%d:%d" % (producer, lives[producer], counts[producer])
            nodes[node].put("c", payload, now + 60.0 + skew, 10_000, now, stamp=stamp)
            sent += 1
        elif op[0] == "hand":
            _, src, dst, skew = op
            if src == dst:
                continue
            items, _credit = nodes[src].take("c", now)
            skewed = [[item[0], item[1] + skew, *item[2:]] for item in items]
            _out, dropped = nodes[dst].adopt("c", skewed, now)
            stale += dropped
        elif op[0] == "bounce":
            q = nodes[op[1]]
            handed = [item for _c, _n, items in q.grant(R, "c", 1000, now) for item in items]
            q.give_back(R, "c", handed, now)  # (and its credit withdrawn)
        elif op[0] == "late":
            # a send numbered now, on its way to node ``op[1]`` (a relay
            # passed on, a lossy link): it arrives at an "arrive" or the end
            _, node, producer = op
            counts[producer] += 1
            stamp = (f"n{producer}/p", lives[producer], counts[producer])
            payload = b"%d:%d:%d" % (producer, lives[producer], counts[producer])
            on_way.append((node, payload, stamp))
        elif op[0] == "arrive":
            for node, payload, stamp in [w for w in on_way if w[0] == op[1]]:
                nodes[node].put("c", payload, now + 60.0, 10_000, now, stamp=stamp)
                sent += 1
            on_way = [w for w in on_way if w[0] != op[1]]
        else:
            lives[op[1]] += 1001
            counts[op[1]] = 0
    for node, payload, stamp in on_way:
        nodes[node].put("c", payload, now + 60.0, 10_000, now, stamp=stamp)
        sent += 1
    for src in (1, 2):
        items, _credit = nodes[src].take("c", now)
        _out, dropped = nodes[0].adopt("c", [list(i) for i in items], now)
        stale += dropped
    got = _taken(nodes[0])
    assert len(got) + stale == sent, "each message delivered or counted stale"
    for producer in range(3):
        mine = [
            tuple(int(x) for x in payload.split(b":")[1:])
            for payload in got
            if payload.startswith(b"%d:" % producer)
        ]
        assert mine == sorted(mine), (producer, mine)


def test_a_delivery_older_than_one_another_owner_handed_is_refused() -> None:
    """Seed 31's shape (kill-free faults): the client's node, its link to
    the owner lagging, took the channel and delivered its client's sends
    2-8 itself; the owner's delivery of send 1, made before them, reached
    it after. It is refused; one of the owner's own later sends is not."""
    q = Queues()
    q.put("c", b"2", 60.0, 100, 0.0, stamp=(P, LIFE, 2))
    assert _taken(q) == [b"2"]  # handed here ("" : this node)
    assert not q.from_elsewhere(R, "c", "n2", (P, LIFE, 1), 1, 1.0)
    assert q.from_elsewhere(R, "c", "n2", (P, LIFE, 3), 3, 1.0)
    assert q.from_elsewhere(R, "c", "n2", (P, LIFE, 3), 3, 1.0), "the same one again is not older"
    # another producer, and another connection, are not held to it
    assert q.from_elsewhere(R, "c", "n2", ("n1/other", LIFE, 1), 4, 1.0)
    assert q.from_elsewhere(b"s", "c", "n2", (P, LIFE, 1), 1, 1.0)


def test_an_owners_delivery_older_than_one_it_handed_before_is_refused_too() -> None:
    """Seed 3217 (10 ops): a client's sends 7-14, relayed while its node
    held the channel's owner dead, waited on a link cut off by a partition
    and reached the owner, passed on by the node they went to, after the
    owner had delivered the client's sends 15-17: one owner's deliveries to
    a connection are not always in its producers' order either. Such a
    send is numbered after the newer one; one the owner hands again where
    its number says (another receiver gave it back: competing consumers,
    rolling restart seeds 46 and 99) is numbered before, and passes."""
    q = Queues()
    assert q.from_elsewhere(R, "c", "n2", (P, LIFE, 17), 3, 1.0)
    assert not q.from_elsewhere(R, "c", "n2", (P, LIFE, 7), 4, 1.0)
    assert q.from_elsewhere(R, "c", "n2", (P, LIFE, 16), 2, 1.0), "handed again before 17"
    assert not q.from_elsewhere(R, "c", "n1", (P, LIFE, 16), 2, 1.0), "another owner's is refused"
    assert q.from_elsewhere(R, "c", "n2", (P, LIFE + 1, 1), 5, 1.0), "its node's next life is newer"


def test_a_parked_run_given_back_keeps_its_stamps_before_a_newer_handover() -> None:
    """Seed 9605 (12 ops): an owner parked sends 1-6 it had handed a client
    of a node it declared dead, and the channel went with them; the client
    gave them back, and a handover of the producer's sends 7-14 (from the
    node that had owned the channel in the other's view) met them. Given
    back as if an earlier owner had handed them (no stamps, new numbers)
    they went after 7-14. Unparked into the client's next connection with
    their stamps, the merge keeps the producer's order."""
    q = Queues()
    for n in (1, 2, 3):
        q.put("c", b"%d" % n, 60.0, 100, 0.0, stamp=(P, LIFE, n))
    [(_, _, items)] = q.grant(R, "c", 3, 0.0)
    stamps: dict[tuple[str, int], Stamp] = {}
    parked = q.park_flight(R, stamps)
    q.drop_conn(R, 0.0)  # (its node declared dead: forgotten here)
    assert "c" not in q.channels
    again = b"r-again"  # (the same client, relayed again)
    q.unpark(again, "c", parked["c"], stamps)
    q.give_back(again, "c", [[p, ttl, seq] for p, ttl, seq in items], 1.0)
    q.adopt("c", [[b"4", 60.0, 1, (P, LIFE, 4)], [b"5", 60.0, 2, (P, LIFE, 5)]], 1.0)
    assert _taken(q) == [b"1", b"2", b"3", b"4", b"5"]
    assert q.counters.dropped_receiver_gone == 0


def test_what_a_client_gave_back_comes_again_from_a_new_owner() -> None:
    """A receiver gives back what an owner handed it (a cancelled receive)
    and the channel's next owner hands it again: older than what the first
    owner handed, and not refused."""
    q = Queues()
    for n in (5, 6, 7):
        q.put("c", b"%d" % n, 60.0, 100, 0.0, stamp=(P, LIFE, n))
    assert _taken(q) == [b"5", b"6", b"7"]
    q.forget_handed(R, "c", [1, 2, 3], 1.0)
    assert q.from_elsewhere(R, "c", "n2", (P, LIFE, 6), 6, 1.0)
    assert q.from_elsewhere(R, "c", "n2", (P, LIFE, 7), 7, 1.0)


def test_what_a_client_gave_back_is_refused_after_a_newer_one_of_the_same_owner() -> None:
    """Seed 6596 (23 ops): a cancel gave back sends 9-15 (the owner's
    numbers 13-19); the client received again and took send 22 (27) from
    the same owner before its give-back reached it; 9-15 came back after
    it, where their numbers say. Refused: the client took 22 first. What
    another receiver gave back, handed again where its number says, is not
    (competing consumers)."""
    q = Queues()
    q.forget_handed(R, "c", [13, 14], 1.0)
    assert q.from_elsewhere(R, "c", "n2", (P, LIFE, 22), 27, 1.0)
    assert not q.from_elsewhere(R, "c", "n2", (P, LIFE, 9), 13, 1.0)
    assert q.from_elsewhere(R, "c", "n2", (P, LIFE, 21), 20, 1.0), "another receiver's give-back"


def test_a_client_that_gives_back_without_pause_keeps_only_the_newest_numbers() -> None:
    """A consumer that cancels every receive gives back a run each time and
    never pauses ``HANDED_MEMORY`` long: what is kept of its give-backs is
    bounded (the newest ``GAVE_BACK_KEPT``), and the newest still refuse an
    older send handed again after a newer one."""
    q = Queues()
    for start in range(0, 5 * GAVE_BACK_KEPT, 10):
        q.forget_handed(R, "c", range(start, start + 10), 1.0 + start / 1000)
    kept = q.gave_back[(R, "c")]
    assert len(kept) == GAVE_BACK_KEPT
    assert min(kept) == 4 * GAVE_BACK_KEPT
    newest = 5 * GAVE_BACK_KEPT - 1
    assert q.from_elsewhere(R, "c", "n2", (P, LIFE, 22), newest + 1, 9.0)
    assert not q.from_elsewhere(R, "c", "n2", (P, LIFE, 9), newest, 9.0)


def test_what_a_connection_was_handed_is_forgotten_in_time() -> None:
    q = Queues()
    assert q.from_elsewhere(R, "c", "n2", (P, LIFE, 5), 5, 1.0)
    q.expire(1.0 + HANDED_MEMORY)
    assert not q.handed_to
    assert q.from_elsewhere(R, "c", "n1", (P, LIFE, 4), 4, 2.0 + HANDED_MEMORY)


def test_a_cancelled_receive_that_gives_nothing_back_keeps_what_its_client_was_handed() -> None:
    """Seed 4173 (6 ops): a client took its producer's sends 2-7, handed
    here; its receive was cancelled (a RETURN with no items, withdrawing
    its credit) and it received again; send 1, held by a lossy owner the
    producer's node had declared dead, came 1.5 s later. The empty RETURN
    had forgotten what the client was handed, and send 1 went through.
    Only a RETURN that gives something back forgets (``ClusterNode``)."""
    node = ClusterNode(
        NodeConfig.test(
            node_id="a",
            client_endpoints=("inproc://t",),
            peer_endpoint="tcp://10.0.0.1:7701",
            discovery=("none",),
            cluster="t",
        ),
        address="tcp://10.0.0.1:7701",
        incarnation=1_000_001,
        rng=random.Random(1),
    )
    node.start(0.0)
    now = 3 * node.config.join_timeout  # (alone: it serves)
    node.tick(now)
    node.client(R, [(MsgType.HELLO, ("procsessab", 7, [60.0])), (MsgType.RECV, ("c", 10))], now)
    queues = node.core.queues
    queues.put("c", b"7", 60.0, 100, now, stamp=(P, LIFE, 7))  # handed at once
    node.client(R, [(MsgType.RETURN, (1, "c", [], 1)), (MsgType.RECV, ("c", 10))], now)
    assert not queues.from_elsewhere(R, "c", "n2", (P, LIFE, 1), 1, now)
    [seq] = queues.flight_seqs(R)["c"]
    node.client(R, [(MsgType.RETURN, (2, "c", [[b"7", 60.0, seq]], 1))], now)
    assert queues.from_elsewhere(R, "c", "n2", (P, LIFE, 1), 1, now), "given back: forgotten"
