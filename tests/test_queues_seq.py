"""A channel's sequence numbers are unique on its node: a message given back
that this node did not hand over (an earlier owner did) or one a handover
prepends never shares its number with another message of the channel, so
each one in flight has its own entry and is released exactly once."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from zchannels.node.queues import Queues

R = b"r"


def _drain_all(q: Queues, conn: bytes, name: str) -> list[tuple[bytes, int]]:
    got = []
    for _c, _n, items in q.grant(conn, name, 100, 1.0):
        got += [(p, seq) for p, _t, seq in items]
    return got


def test_a_give_back_from_an_earlier_owner_never_shares_a_later_sends_number() -> None:
    """Simulation seed 76: the old owner handed two messages (its numbers 8
    and 9) before ``q0`` moved; the receiver gave them back to the new owner,
    whose own numbering was below 9. Kept as 9, the next send here was also
    numbered 9: both handed to one receiver made one flight entry, and one
    unit of capacity was never released."""
    old = Queues(first_seq=7)
    new = Queues(first_seq=7)
    old.grant(R, "q0", 10, 0.0)
    handed = [old.put("q0", b"a%d" % i, 100.0, 10, 0.0) for i in range(2)]
    wire = [item for _c, _n, items in handed for item in items]  # type: ignore[misc]
    assert [seq for *_, seq in wire] == [8, 9]
    old.take("q0", 0.5)
    new.grant(R, "q0", 1, 0.5)
    new.stop_granting(R)
    for item in wire:  # given back one by one, as an undeliverable DELIVER is
        new.give_back(R, "q0", [item], 0.5)
    new.put("q0", b"b", 100.0, 10, 0.6)
    assert new.held("q0") == 3
    got = _drain_all(new, R, "q0")
    assert [p for p, _ in got] == [b"a0", b"a1", b"b"]
    assert len({seq for _, seq in got}) == 3, "one number per message"
    new.consumed(R, "q0", max(seq for _, seq in got), 3, 0)
    assert new.held("q0") == 0


def test_a_run_given_back_that_an_earlier_owner_handed_out_keeps_its_order_in_front() -> None:
    """Simulation seed 1139 (18 ops, two clean leaves): n0 handed c4's
    sends 1-4 to its client, then left; the client gave them back through
    n0, which relayed them to the next owner n2. Every node's first life
    numbers from the same place, so 2 and 4 had numbers n2 had given (one
    to a send queued there meanwhile): renumbered above it, they were put
    after 3. Handed out before anything queued here, they go first, in
    their order, under numbers below every number of the channel."""
    q = Queues(first_seq=9)  # n2: its own send gets number 10
    q.put("c", b"c3-5", 100.0, 10, 0.0)
    assert q.channels["c"].items[0][0] == 10
    q.give_back(R, "c", [(b"c4-%d" % i, 50.0, 8 + i) for i in range(1, 5)], 0.0)
    got = _drain_all(q, R, "c")
    assert [p for p, _ in got] == [b"c4-1", b"c4-2", b"c4-3", b"c4-4", b"c3-5"]
    assert [seq for _, seq in got] == sorted({seq for _, seq in got}), "one number each, in order"
    assert q.held("c") == 5
    q.consumed(R, "c", max(seq for _, seq in got), 5, 0)
    assert q.held("c") == 0


def test_a_handover_prepended_never_shares_a_number_with_what_is_in_flight() -> None:
    q = Queues(first_seq=0)
    q.grant(R, "c", 2, 0.0)
    for i in range(3):
        q.put("c", b"n%d" % i, 100.0, 10, 0.0)  # 1, 2 handed; 3 queued
    # (a handover now would be stale: the channel was served, ``adopt``;
    # this node's own put placed at the front is numbered the same way)
    assert q.adopt("c", [(b"o0", 50.0, 1)], 0.0) == ([], 1)
    q.adopt("c", [(b"o0", 50.0, 1), (b"o1", 50.0, 2)], 0.0, handed_over=False)
    got = _drain_all(q, R, "c")
    flight = q.channels["c"].flight[R]
    assert len(flight) == 5 == q.held("c"), [seq for _, seq in got]
    q.consumed(R, "c", max(flight), 5, 0)
    assert q.held("c") == 0


ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 1)),
        st.tuples(st.just("grant"), st.integers(0, 1), st.integers(0, 1), st.integers(1, 4)),
        st.tuples(st.just("return"), st.integers(0, 1), st.integers(0, 1)),
        st.tuples(st.just("consume"), st.integers(0, 1), st.integers(0, 1), st.integers(1, 3)),
        st.tuples(st.just("move"), st.integers(0, 1)),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(ops)
def test_held_returns_to_zero_whatever_the_handovers(operations: list[tuple[Any, ...]]) -> None:
    """Two nodes (same first sequence number, as nodes of one generation
    have) pass channel ``c`` back and forth (``take`` then ``adopt``) while
    two receivers hold, give back and take what either handed them. Once
    every receiver has taken or given back everything and the channel is
    drained, no pool of either node holds a unit of capacity."""
    nodes = [Queues(first_seq=1000), Queues(first_seq=1000)]
    owner = 0
    conns = [b"c0", b"c1"]
    # what each receiver holds: (node that handed it, payload, seq)
    held: dict[bytes, list[tuple[int, bytes, int]]] = {c: [] for c in conns}
    sent = 0

    def got(node: int, deliveries: Any) -> None:
        for conn, _name, items in deliveries:
            held[conn] += [(node, p, seq) for p, _t, seq in items]

    for op in operations:
        q = nodes[owner]
        if op[0] == "put":
            r = q.put("c", b"%d" % sent, 100.0, 10_000, 0.0)
            sent += 1
            if r is not True and r is not False:
                got(owner, [r])
        elif op[0] == "grant":
            got(owner, q.grant(conns[op[1]], "c", op[3], 0.0))
        elif op[0] == "return":
            conn = conns[op[1]]
            items = [(p, 10.0, seq) for _n, p, seq in held[conn]]
            held[conn] = []
            if items:
                got(owner, q.give_back(conn, "c", items, 0.0, withdraw=bool(op[2])))
        elif op[0] == "consume":
            # reports go to the owner now (the one the receiver talks to)
            conn = conns[op[1]]
            took, held[conn] = held[conn][: op[3]], held[conn][op[3] :]
            if took:
                q.consumed(conn, "c", max(seq for *_, seq in took), len(took), 0)
        else:  # the channel moves to the other node
            other = nodes[1 - owner]
            items, credits = q.take("c", 0.0)
            got(1 - owner, other.adopt("c", items, 0.0)[0])
            for conn, credit in credits.items():
                got(1 - owner, other.grant(conn, "c", credit, 0.0))
            owner = 1 - owner
    # every receiver gives everything back, then takes the whole channel
    q = nodes[owner]
    for conn in conns:
        items = [(p, 10.0, seq) for _n, p, seq in held[conn]]
        held[conn] = []
        if items:
            got(owner, q.give_back(conn, "c", items, 0.0))
    for conn in conns:
        q.stop_granting(conn)
    got(owner, q.grant(conns[0], "c", 10_000, 0.0))
    took = held[conns[0]]
    if took:
        q.consumed(conns[0], "c", max(seq for *_, seq in took), len(took), 0)
    assert not q.channels.get("c") or not q.channels["c"].items
    assert {k: p.held for n in nodes for k, p in n.pools.items() if p.held} == {}
