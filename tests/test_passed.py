"""``node.passed``: what a client's node answers for once the owner of a
channel handed it on while the client held its deliveries.

Written from what a client does with what it holds: it takes the oldest
first and reports it, gives back the rest, or dies; and from what the
owner does as it moves the channel: its deliveries reach the client's node
before the credit it hands back."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from zchannels.node.cluster import _delivered, _handed_back
from zchannels.node.passed import Passed
from zchannels.node.peer_messages import Relay, RelayBack

from zchannels.protocol import MsgType

C, D = b"conn-c", b"conn-d"


def test_what_a_moved_owner_handed_is_lost_here_when_the_client_dies() -> None:
    p = Passed()
    p.passed(C, "q", "n0", 6)
    assert p.taken(C, "q", 5) == 0  # (n0 still answers for them: its flight)
    assert p.adopt(C, "q", "n0", now=1.0) == 0
    assert p.conn_gone({C}, until=2.0) == 1


def test_a_report_takes_the_adopted_first_and_the_rest_is_the_new_owners() -> None:
    p = Passed()
    p.passed(C, "q", "n0", 3)
    p.adopt(C, "q", "n0", now=1.0)
    p.passed(C, "q", "n1", 4)  # (the new owner's, after the credit came back)
    assert p.taken(C, "q", 2) == 2
    assert p.taken(C, "q", 3) == 1  # one adopted left, then two of n1's
    assert p.conn_gone({C}, until=2.0) == 0  # (n1's two: n1 counts them)


def test_a_give_back_releases_what_was_adopted_without_counting_it() -> None:
    p = Passed()
    p.passed(C, "q", "n0", 4)
    p.adopt(C, "q", "n0", now=1.0)
    p.taken(C, "q", 1)
    p.taken(C, "q", 3)  # (a RETURN of the 3 it still held: queued again)
    assert p.conn_gone({C}, until=2.0) == 0
    assert p.runs == {}


def test_credit_back_after_the_client_was_known_gone_counts_then() -> None:
    p = Passed()
    p.passed(C, "q", "n0", 2)
    p.passed(C, "q", "n2", 1)
    assert p.conn_gone({C}, until=5.0) == 0  # (n0 and n2 still hold them)
    assert p.adopt(C, "q", "n0", now=1.0) == 2
    assert p.adopt(C, "q", "n0", now=1.1) == 0  # (once)
    p.expire(5.0)
    assert p.adopt(C, "q", "n2", now=5.0) == 0 and p.gone == {}


def test_what_bounced_is_not_held() -> None:
    p = Passed()
    p.passed(C, "q", "n0", 5)
    p.trim(C, "q", 3)  # (the last three never reached it: queued again)
    p.adopt(C, "q", "n0", now=1.0)
    assert p.conn_gone({C}, until=2.0) == 2


def test_a_dead_owners_runs_keep_their_place_but_are_not_adopted() -> None:
    p = Passed()
    p.passed(C, "q", "n0", 2)
    p.passed(C, "q", "n1", 2)
    p.forget_source("n0", 1000)  # (declared dead here: it settles them itself)
    p.adopt(C, "q", "n0", now=1.0)
    p.adopt(C, "q", "n1", now=1.0)
    # the client takes 3: n0's two (nobody's now), then one of n1's
    assert p.taken(C, "q", 3) == 1
    assert p.conn_gone({C}, until=2.0) == 1


def test_own_clients_flight_at_a_handover_comes_before_the_next_owners() -> None:
    p = Passed()
    p.adopt_local(D, "q", "me", 2)
    p.passed(D, "q", "n1", 3)
    assert p.taken(D, "q", 1) == 1
    assert p.conn_gone({D}, until=2.0) == 1


def test_channels_and_connections_are_apart() -> None:
    p = Passed()
    p.passed(C, "q", "n0", 2)
    p.passed(C, "r", "n0", 2)
    p.passed(D, "q", "n0", 2)
    p.adopt(C, "q", "n0", now=1.0)
    assert p.taken(C, "r", 2) == 0
    assert p.conn_gone({D}, until=2.0) == 0
    assert p.conn_gone({C}, until=2.0) == 2


def test_a_fence_counts_held_deliveries_whose_owner_handed_their_credit_back() -> None:
    """What a life ending in place drops of its peers' messages: a
    delivery whose owner gave the credit back in them too is counted by
    nobody else; one whose owner kept the channel, the owner counts."""

    def deliver(channel: str, n: int) -> tuple[MsgType, tuple[object, ...]]:
        return (MsgType.DELIVER, (channel, [[b"m", 60.0, i] for i in range(n)]))

    held = [
        RelayBack("n0", C, (deliver("q", 2), deliver("r", 1))),
        RelayBack("n0", C, ((MsgType.RECV, ("q", 5)),)),  # (q moved on; r stays n0's)
        RelayBack("n1", C, (deliver("q", 4),)),  # (another owner's, kept by it)
        RelayBack("n0", D, (deliver("q", 3),)),  # (another client: no hand-back)
    ]
    assert _handed_back(held) == 2
    assert _handed_back([]) == 0


def _same_life(a: int, b: int) -> bool:
    return abs(a - b) < 1000


def test_an_owner_back_in_the_same_life_holds_its_deliveries_again() -> None:
    """A death refuted: the owner still has its flight, so a handover adopts
    the runs here as before the death, and a client that dies after that
    costs this node nothing it does not answer for."""
    p = Passed()
    p.passed(C, "q", "n0", 2, life=1000)
    p.forget_source("n0", 1000)
    assert p.source_seen("n0", 1001, _same_life) == 0  # (a refutation: +1)
    p.adopt(C, "q", "n0", now=1.0)
    assert p.conn_gone({C}, until=2.0) == 2


def test_an_owner_back_as_a_new_life_leaves_its_deliveries_to_this_node() -> None:
    """The life that delivered ended (in place, or its process did): no
    count of it has what it had handed other nodes' clients, so they are
    this node's: taken, they are released here; held by a client that dies,
    they are counted here, once."""
    p = Passed()
    p.passed(C, "q", "n0", 3, life=1000)
    p.passed(D, "q", "n0", 2, life=1000)
    p.forget_source("n0", 1000)
    assert p.source_seen("n0", 3001, _same_life) == 0  # (both clients live)
    assert p.taken(C, "q", 1) == 1  # (released here: its owner is gone)
    assert p.conn_gone({C}, until=2.0) == 2
    assert p.conn_gone({D}, until=2.0) == 2
    assert p.source_seen("n0", 3001, _same_life) == 0  # (nothing twice)


def test_a_new_life_seen_without_a_death_declared_here_ends_the_old_one_too() -> None:
    """A node frozen and declared dead by others ends its life at its thaw;
    here it was never declared dead: its next life says the same."""
    p = Passed()
    p.passed(C, "q", "n0", 2, life=1000)
    p.passed(C, "q", "n0", 1, life=3001)  # (the new life's own: not merged)
    assert p.source_seen("n0", 3001, _same_life) == 0
    assert p.taken(C, "q", 2) == 2
    assert p.conn_gone({C}, until=2.0) == 0  # (the new life's one: its own)


def test_a_client_gone_while_its_owner_was_held_dead_is_counted_if_that_life_ended() -> None:
    """The client died while this node held its owner dead: the owner was
    not told (``ConnGone`` waits for its return in the same life). It came
    back as a new life: what it handed the client is counted here. Gone
    while the owner was live: it was told and counted, so nothing here."""
    p = Passed()
    p.passed(C, "q", "n0", 2, life=1000)
    p.passed(D, "q", "n0", 4, life=1000)
    assert p.conn_gone({D}, until=60.0) == 0  # (n0 live: told)
    p.forget_source("n0", 1000)
    assert p.conn_gone({C}, until=60.0) == 0
    assert p.source_seen("n0", 3001, _same_life) == 2
    assert p.gone == {}


def test_a_life_never_heard_of_again_ends() -> None:
    p = Passed()
    p.passed(C, "q", "n0", 2, life=1000)
    p.forget_source("n0", 1000)
    p.conn_gone({C}, until=60.0)
    assert p.source_ended("n0") == 2


def test_what_an_owner_delivers_to_another_nodes_client_is_carried_by_its_links() -> None:
    """``_delivered``: the messages a frame delivers from the owner's
    flight (plain, and a group copy to several channels of one
    connection), which a SIGKILL of the owner leaves nobody else to count
    if the client's node never took the frame (``Links.carry``)."""
    many = (MsgType.DELIVER_MANY, (["q", "r", "s"], [b"m", 60.0, 1]))
    deliver = (MsgType.DELIVER, ("q", [[b"m", 60.0, i] for i in range(2)]))
    assert _delivered(RelayBack("n0", C, (deliver, many, (MsgType.RECV, ("q", 5))))) == 5
    assert _delivered(RelayBack("n0", C, ((MsgType.RECV, ("q", 5)),))) == 0
    send = (MsgType.SEND, (0, "q", b"m", 1))
    assert _delivered(Relay("n0", 1, C, "t", 60.0, 1, (send,), 0.0)) == 0


CONNS, CHANNELS, SOURCES = (
    st.sampled_from([C, D]),
    st.sampled_from(["q", "r"]),
    st.sampled_from(["n0", "n1"]),
)


def step(name: str, conn: Any, channel: Any, source: Any, n: Any) -> Any:
    """One operation: (name, connection, channel, source node, a count)."""
    return st.tuples(st.just(name), conn, channel, source, n)


ops = st.lists(
    st.one_of(
        step("passed", CONNS, CHANNELS, SOURCES, st.integers(1, 5)),
        step("local", CONNS, CHANNELS, st.just("me"), st.integers(1, 5)),
        step("adopt", CONNS, CHANNELS, SOURCES, st.just(0)),
        step("taken", CONNS, CHANNELS, st.just(""), st.integers(1, 6)),
        step("trim", CONNS, CHANNELS, st.just(""), st.integers(1, 6)),
        step("gone", CONNS, st.just(""), st.just(""), st.just(0)),
        step("dead", st.just(b""), st.just(""), SOURCES, st.integers(1, 3)),
        step("seen", st.just(b""), st.just(""), SOURCES, st.integers(1, 4)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_what_each_connection_holds_that_this_node_answers_for_is_kept_exact(
    operations: list[tuple[str, bytes, str, str, int]],
) -> None:
    """``Passed.adopted`` (listed in the held record and the life note at
    every step) is kept as runs change, not counted: after any sequence of
    deliveries passed on, own handovers, adoptions, reports, bounces,
    clients gone and owners declared dead or seen again, it equals the
    adopted runs counted one by one."""
    p = Passed()
    for op, conn, channel, source, n in operations:
        if op == "passed":
            p.passed(conn, channel, source, n, life=1)
        elif op == "local":
            p.adopt_local(conn, channel, source, n)
        elif op == "adopt":
            p.adopt(conn, channel, source, now=1.0)
        elif op == "taken":
            p.taken(conn, channel, n)
        elif op == "trim":
            p.trim(conn, channel, n)
        elif op == "gone":
            p.conn_gone({conn}, until=2.0)
        elif op == "dead":
            p.forget_source(source, n)
        else:
            p.source_seen(source, n, lambda a, b: a == b)
        assert p.adopted == p.adopted_counted(), op
