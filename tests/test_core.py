"""The node core, sans I/O: a fake clock, fake connections, exact outcomes."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from zchannels.node.core import MAX_HOPS, ClusterWork, CoreSettings, NodeCore, Out
from zchannels.node.queues import Queues
from zchannels.node.sessions import Policy, Session

from zchannels.protocol import ErrorCode, MsgType

A, B = b"aaaaaaaaaa/0", b"bbbbbbbbbb/0"
SA, SB = "aaaaaaaaaa", "bbbbbbbbbb"


def make_core(lease: float = 3.0) -> NodeCore:
    return NodeCore(CoreSettings("n1", "abcdef", "inc1", lease, 1 << 20))


def hello(core: NodeCore, conn: bytes, tag: str, now: float = 0.0, expiry: float = 60.0) -> None:
    wire = [expiry]
    out = core.handle(conn, [(MsgType.HELLO, (tag, 1, wire))], now)
    assert out[0][1][0] == MsgType.WELCOME


def of_type(out: list[Out], mtype: MsgType) -> list[tuple[bytes, tuple[Any, ...]]]:
    return [(conn, msg[1]) for conn, msg in out if msg[0] == mtype]


def delivered(out: list[Out]) -> list[bytes]:
    return [item[0] for _, (ch, items) in of_type(out, MsgType.DELIVER) for item in items]


def test_send_then_receive_in_order() -> None:
    core = make_core()
    hello(core, A, SA)
    hello(core, B, SB)
    for i in range(3):
        out = core.handle(A, [(MsgType.SEND, (i + 1, "asgi|c", b"m%d" % i, 100))], 1.0)
        assert of_type(out, MsgType.ACK)[0][1][0] == i + 1
    out = core.handle(B, [(MsgType.RECV, ("asgi|c", 10))], 1.0)
    assert delivered(out) == [b"m0", b"m1", b"m2"]
    # remaining credit takes the next message at once
    out = core.handle(A, [(MsgType.SEND, (9, "asgi|c", b"m3", 100))], 1.0)
    assert delivered(out) == [b"m3"]


def test_capacity_is_exact_with_reservations() -> None:
    core = make_core()
    hello(core, A, SA)
    results = []
    req = 1
    for i in range(4):
        # the client may use reserved slots with req 0, as the layer does
        out = core.handle(A, [(MsgType.SEND, (req, "c", b"%d" % i, 3))], 0.0)
        acks = of_type(out, MsgType.ACK)
        errors = of_type(out, MsgType.ERROR)
        results.append("ack" if acks else ErrorCode(errors[0][1][1]).name)
        req += 1
    assert results == ["ack", "ack", "ack", "CHANNEL_FULL"]
    assert core.queues.length("c") == 3


def test_reservations_never_refuse_a_send_that_has_room() -> None:
    """A reserved slot is not a message: a send that fits only if A's
    reservation yields waits while A gives it up (REVOKE / REVOKED, after
    A's reserved sends on the same pipe), then is decided exactly."""
    core = make_core()
    hello(core, A, SA)
    hello(core, B, SB)
    out = core.handle(A, [(MsgType.SEND, (1, "c", b"x", 10))], 0.0)
    reserved = of_type(out, MsgType.ACK)[0][1][1]
    assert reserved == 4  # half of the 9 free slots
    # B fills what is neither queued nor reserved at once...
    answers: list[Out] = []
    for i in range(10):
        answers += core.handle(B, [(MsgType.SEND, (i + 1, "c", b"y", 10))], 0.0)
    assert len(of_type(answers, MsgType.ACK)) == 10 - 1 - reserved
    # ...and the next one asks A for its reservation instead of failing
    assert of_type(answers, MsgType.REVOKE) == [(A, ("c",))]
    assert not of_type(answers, MsgType.ERROR)
    # A had used two of its slots before the REVOKE reached it
    for _ in range(2):
        assert core.handle(A, [(MsgType.SEND, (0, "c", b"z", 10))], 0.0) == []
    settled = core.handle(A, [(MsgType.REVOKED, ("c",))], 0.0)
    # the two slots A gave up go to B's next two sends, in order; the rest are full
    assert [f[0] for _, f in of_type(settled, MsgType.ACK)] == [6, 7]
    assert [f[0] for _, f in of_type(settled, MsgType.ERROR)] == [8, 9, 10]
    assert core.queues.length("c") == 10
    assert core.drops()["full"] == 3


def test_reservations_lapse() -> None:
    core = make_core()
    hello(core, A, SA)
    hello(core, B, SB)
    core.handle(A, [(MsgType.SEND, (1, "c", b"x", 10))], 0.0)
    # after the reservation's lifetime B may use every free slot
    accepted = sum(
        bool(of_type(core.handle(B, [(MsgType.SEND, (i + 1, "c", b"y", 10))], 5.0), MsgType.ACK))
        for i in range(20)
    )
    assert accepted == 9


def test_a_handed_over_reservation_for_names_that_live_elsewhere_goes_when_it_lapses() -> None:
    """A pool made only by a reservation another owner handed over (its
    names live on other nodes, e.g. a left node's ``!`` names split among
    several) leaves nothing behind once the reservation lapses."""
    q = Queues()
    q.adopt_reservation(b"conn", "asgi|specific.abc!", 4, 2.0, 0.0)
    assert "asgi|specific.abc!" in q.pools
    q.expire(1.0)
    assert "asgi|specific.abc!" in q.pools, "not yet: it holds until it lapses"
    q.expire(3.0)
    assert q.pools == {} and q._reserving == {}


def test_expired_messages_are_never_delivered() -> None:
    core = make_core()
    hello(core, A, SA, expiry=0.5)
    hello(core, B, SB)
    core.handle(A, [(MsgType.SEND, (1, "c", b"old", 100))], 0.0)
    core.handle(A, [(MsgType.SEND, (2, "c", b"new", 100))], 0.4)
    out = core.handle(B, [(MsgType.RECV, ("c", 5))], 0.6)
    assert delivered(out) == [b"new"]
    assert core.queues.counters.dropped_expired == 1


def test_round_robin_between_receivers() -> None:
    core = make_core()
    hello(core, A, SA)
    hello(core, B, SB)
    core.handle(A, [(MsgType.RECV, ("c", 100))], 0.0)
    core.handle(B, [(MsgType.RECV, ("c", 100))], 0.0)
    receivers = []
    for i in range(6):
        out = core.handle(A, [(MsgType.SEND, (i + 1, "c", b"m", 100))], 0.0)
        receivers += [conn for conn, _ in of_type(out, MsgType.DELIVER)]
    assert receivers == [A, B, A, B, A, B]


def test_returned_messages_go_back_to_the_head_in_order() -> None:
    core = make_core()
    hello(core, A, SA)
    hello(core, B, SB)
    for i in range(4):
        core.handle(A, [(MsgType.SEND, (i + 1, "c", b"%d" % i, 100))], 0.0)
    out = core.handle(B, [(MsgType.RECV, ("c", 3))], 0.0)
    assert delivered(out) == [b"0", b"1", b"2"]
    items = [list(item) for _, (_, its) in of_type(out, MsgType.DELIVER) for item in its]
    # given back in two returns, the later one first: order still holds
    core.handle(B, [(MsgType.RETURN, (1, "c", items[2:], 1))], 0.0)
    core.handle(B, [(MsgType.RETURN, (0, "c", items[:2], 0))], 0.0)
    out = core.handle(A, [(MsgType.RECV, ("c", 10))], 0.0)
    assert delivered(out) == [b"0", b"1", b"2", b"3"]


def test_undeliverable_deliveries_are_requeued() -> None:
    core = make_core()
    hello(core, A, SA)
    hello(core, B, SB)
    core.handle(B, [(MsgType.RECV, ("c", 5))], 0.0)
    out = core.handle(A, [(MsgType.SEND, (1, "c", b"x", 100))], 0.0)
    messages = [msg for conn, msg in out if conn == B]
    core.undeliverable(B, messages, 0.0)
    assert core.queues.length("c") == 1
    assert core.counters.undeliverable == 1


def test_a_delivery_bouncing_off_a_connection_dropped_meanwhile_is_counted_once() -> None:
    """Simulation seed 2785 (a stalled channel): a node delivers to a
    receiver whose session lapses in the same step (its process died while
    the node was frozen); dropping the connection counts what it was handed
    lost (``receiver_gone``), and the delivery then bounces
    (``undeliverable``): queued again as well, it was counted and queued, in
    a channel of a dead process nobody would ever drain. The same for a
    delivery bouncing after the client said goodbye."""
    mine = f"asgi|specific.abcdef.{SB}!0"
    for how in ("lapse", "bye"):
        core = make_core(lease=1.0)
        hello(core, A, SA)
        hello(core, B, SB)
        core.handle(B, [(MsgType.RECV, (mine, 5)), (MsgType.RECV, ("asgi|c", 5))], 0.0)
        out = core.handle(A, [(MsgType.SEND, (1, mine, b"x", 100))], 0.9)
        out += core.handle(A, [(MsgType.SEND, (2, "asgi|c", b"y", 100))], 0.9)
        bounced = [msg for conn, msg in out if conn == B]
        assert len(bounced) == 2
        if how == "lapse":
            core.handle(A, [(MsgType.PING, ())], 1.5)
            core.tick(1.5)
            assert SB not in core.sessions.by_tag
        else:
            core.handle(B, [(MsgType.BYE, (3, True))], 1.5)
        assert core.drops()["receiver_gone"] == 2
        core.undeliverable(B, bounced, 1.5)
        assert core.queues.length(mine) == 0 and core.queues.length("asgi|c") == 0
        assert core.drops()["receiver_gone"] == 2
        assert core.counters.undeliverable == 2
    # Two frames bounce: the first is queued again and its connection
    # dropped, which counts the second's message lost; when the second
    # bounces, it is not queued as well.
    core = make_core()
    hello(core, A, SA)
    hello(core, B, SB)
    core.handle(B, [(MsgType.RECV, ("asgi|c", 5))], 0.0)
    first = core.handle(A, [(MsgType.SEND, (1, "asgi|c", b"y1", 100))], 0.0)
    second = core.handle(A, [(MsgType.SEND, (2, "asgi|c", b"y2", 100))], 0.0)
    core.undeliverable(B, [msg for conn, msg in first if conn == B], 0.1)
    assert core.queues.length("asgi|c") == 1
    assert core.drops()["receiver_gone"] == 1
    core.undeliverable(B, [msg for conn, msg in second if conn == B], 0.1)
    assert core.queues.length("asgi|c") == 1, "counted once, not queued as well"
    assert core.drops()["receiver_gone"] == 1


def test_group_send_skips_full_members_and_counts() -> None:
    core = make_core()
    hello(core, A, SA)
    for ch in ("c1", "c2"):
        core.handle(A, [(MsgType.GROUP_ADD, (1, "g", ch, 100.0, 1))], 0.0)
    core.handle(A, [(MsgType.SEND, (2, "c1", b"fill", 1))], 0.0)
    out = core.handle(A, [(MsgType.GROUP_SEND, (3, "g", b"hi"))], 0.0)
    assert of_type(out, MsgType.ACK) == [(A, (3, 1))]
    assert core.counters.group_skipped_full == 1
    assert core.queues.length("c2") == 1


def test_group_expiry() -> None:
    core = make_core()
    hello(core, A, SA)
    core.handle(A, [(MsgType.GROUP_ADD, (1, "g", "c", 1.0, 100))], 0.0)
    core.handle(A, [(MsgType.GROUP_ADD, (2, "g", "d", 5.0, 100))], 0.0)
    out = core.handle(A, [(MsgType.GROUP_INFO, (3, "g"))], 2.0)
    assert of_type(out, MsgType.GROUP_INFO_REPLY)[0][1][1] == ["d"]


def test_dead_session_loses_memberships_and_process_channels() -> None:
    core = make_core(lease=1.0)
    hello(core, A, SA)
    hello(core, B, SB)
    mine = f"asgi|specific.abcdef.{SB}!0"
    core.handle(B, [(MsgType.GROUP_ADD, (1, "asgi|g", mine, 100.0, 100))], 0.0)
    core.handle(A, [(MsgType.SEND, (1, mine, b"queued", 100))], 0.0)
    # A keeps pinging; B goes silent
    for t in (0.5, 1.0, 1.5):
        core.handle(A, [(MsgType.PING, ())], t)
        core.tick(t)
    assert SB not in core.sessions.by_tag
    assert core.groups.members("asgi|g", 2.0) == []
    assert core.queues.length(mine) == 0
    # later sends to the dead process's channel are dropped and counted
    out = core.handle(A, [(MsgType.SEND, (2, mine, b"late", 100))], 2.0)
    assert of_type(out, MsgType.ACK) == [(A, (2, 0))]
    assert core.counters.dropped_dead_owner == 2


def test_unknown_session_is_told_to_say_hello() -> None:
    core = make_core()
    out = core.handle(A, [(MsgType.SEND, (5, "c", b"x", 100))], 0.0)
    assert of_type(out, MsgType.ERROR) == [(A, (5, ErrorCode.UNKNOWN_SESSION, ""))]
    out = core.handle(A, [(MsgType.RECV, ("c", 1))], 0.0)
    assert of_type(out, MsgType.RESET) == [(A, ("inc1",))]
    assert core.queues.length("c") == 0


def test_nonsense_is_refused_and_counted() -> None:
    core = make_core()
    hello(core, A, SA)
    out = core.handle(A, [(MsgType.SEND, (1, "bad name!", b"x", 100))], 0.0)
    assert of_type(out, MsgType.ERROR)[0][1][1] == ErrorCode.BAD_REQUEST
    core.handle(A, [(MsgType.RECV, ("c", -5))], 0.0)
    core.handle(A, [(MsgType.RETURN, (0, "c", [[1, 2, 3]], 1))], 0.0)
    core.handle(A, [(MsgType.WELCOME, ("x", "y", "z", 1.0, 1))], 0.0)
    out = core.handle(A, [(MsgType.HELLO, ("short", 1, [60.0]))], 0.0)
    assert of_type(out, MsgType.ERROR)[0][1][1] == ErrorCode.BAD_REQUEST
    out = core.handle(A, [(MsgType.HELLO, (SA, 1, [float("nan")]))], 0.0)
    assert of_type(out, MsgType.ERROR)[0][1][1] == ErrorCode.BAD_REQUEST
    assert core.counters.bad_requests == 5
    assert core.counters.unexpected_type == 1


def test_flush_clears_only_its_prefix() -> None:
    core = make_core()
    hello(core, A, SA)
    core.handle(A, [(MsgType.SEND, (1, "p1|c", b"x", 100))], 0.0)
    core.handle(A, [(MsgType.SEND, (2, "p2|c", b"x", 100))], 0.0)
    core.handle(A, [(MsgType.GROUP_ADD, (3, "p1|g", "p1|c", 100.0, 100))], 0.0)
    core.handle(A, [(MsgType.FLUSH, (4, "p1"))], 0.0)
    assert core.queues.length("p1|c") == 0
    assert core.queues.length("p2|c") == 1
    assert core.groups.members("p1|g", 0.0) == []


# -- properties ---------------------------------------------------------------
ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 0)),
        st.tuples(st.just("grant"), st.integers(0, 1), st.integers(1, 5)),
        st.tuples(st.just("return"), st.integers(0, 1)),
        st.tuples(st.just("drop"), st.integers(0, 1)),
        st.tuples(st.just("consume"), st.integers(0, 1), st.integers(1, 3)),
    ),
    max_size=80,
)


@settings(max_examples=300)
@given(ops)
def test_queue_never_loses_or_duplicates(operations: list[tuple[Any, ...]]) -> None:
    """Whatever the interleaving of sends, credit, returns and dropped
    connections, every message is in exactly one place (queued, held by a
    receiver, taken, or counted lost with a receiver that went away), each
    receiver sees messages in send order, and the channel's capacity count
    is exactly what is queued plus what receivers hold untaken. (With two
    receivers taking turns, one may get a message the other gave back after
    a later one: competing consumers share no order.)"""
    q = Queues()
    conns = [b"c0", b"c1"]
    held: dict[bytes, list[tuple[bytes, int]]] = {c: [] for c in conns}
    taken: list[bytes] = []
    lost: list[bytes] = []
    sent = 0

    def take(deliveries: Any) -> None:
        for conn, _name, items in deliveries:
            held[conn] += [(p, seq) for p, _, seq in items]

    for op in operations:
        if op[0] == "put":
            result = q.put("ch", b"%d" % sent, 100.0, 10_000, 0.0)
            sent += 1
            if result not in (True, False):
                take([result])
        elif op[0] == "grant":
            take(q.grant(conns[op[1]], "ch", op[2], 0.0))
        elif op[0] == "return":
            conn = conns[op[1]]
            items = [(p, 10.0, seq) for p, seq in held[conn]]
            held[conn] = []
            take(q.give_back(conn, "ch", items, 0.0))
        elif op[0] == "consume":
            conn = conns[op[1]]
            took, held[conn] = held[conn][: op[2]], held[conn][op[2] :]
            if took:
                q.consumed(conn, "ch", max(seq for _, seq in took), len(took), 0)
                taken.extend(p for p, _ in took)
        else:
            conn = conns[op[1]]
            lost.extend(p for p, _ in held[conn])
            held[conn] = []
            q.drop_conn(conn, 0.0)
        queued = [item[1] for item in q.channels["ch"].items] if "ch" in q.channels else []
        holding = [p for c in conns for p, _ in held[c]]
        assert q.held("ch") == len(queued) + len(holding), "capacity count is exact"
    queued = [item[1] for item in q.channels["ch"].items] if "ch" in q.channels else []
    # queued messages are in send order
    assert [int(p) for p in queued] == sorted(int(p) for p in queued)
    holding = [p for c in conns for p, _ in held[c]]
    everything = sorted(int(p) for p in queued + holding + taken + lost)
    assert everything == list(range(sent))
    assert q.queued() == len(queued)
    assert q.counters.dropped_receiver_gone == len(lost)


# -- in a cluster: routing decisions and handed-over channels ---------------------
def test_messages_for_a_channel_owned_elsewhere_are_left_for_the_shell() -> None:
    core = make_core()
    core.route = lambda channel: "n2" if channel.endswith("far") else None
    hello(core, A, SA)
    work = ClusterWork()
    out = core.handle(
        A,
        [
            (MsgType.SEND, (1, "asgi|far", b"x", 10)),
            (MsgType.RECV, ("asgi|far", 5)),
            (MsgType.GROUP_ADD, (2, "asgi|g", "asgi|far", 60.0, 10)),
            (MsgType.SEND, (3, "asgi|near", b"y", 10)),
        ],
        0.0,
        work,
    )
    assert [(node, conn, m[0], hops) for node, conn, _, m, hops in work.relays] == [
        ("n2", A, MsgType.SEND, 1),
        ("n2", A, MsgType.RECV, 1),
        ("n2", A, MsgType.GROUP_ADD, 1),
    ]
    assert [f[0] for _, f in of_type(out, MsgType.ACK)] == [3]  # only the local send
    assert core.queues.length("asgi|far") == 0 and len(core.groups) == 0


def test_relayed_messages_are_handled_here_after_too_many_hops() -> None:
    core = make_core()
    core.route = lambda channel: "n2"  # this node thinks another owns everything
    remote = Session("n3@7/cccccccccc", 0, Policy(60.0), 0.0)
    send = (MsgType.SEND, (1, "asgi|c", b"x", 10))
    work = ClusterWork()
    core.handle_relayed(b"\x00zr1", remote, (send,), 1, 0.0, work)
    assert len(work.relays) == 1 and work.relays[0][4] == 2  # passed on, one hop more
    out = core.handle_relayed(b"\x00zr1", remote, (send,), MAX_HOPS, 0.0, ClusterWork())
    assert core.queues.length("asgi|c") == 1, "kept rather than bounced forever"
    assert of_type(out, MsgType.ACK)[0][0] == b"\x00zr1"


def test_a_report_passed_on_here_of_what_this_node_handed_is_applied_here() -> None:
    """Kill-free simulation seed 777 (7 ops): this node handed another
    node's client deliveries, and its view then changed (the channel is
    another's to it). The client's report, passed on here by its node,
    names what this node handed: it releases them here. Passed on to the
    owner this node sees, it went round between two nodes whose views
    differed until its hops ran out, and the flight here stayed, to be
    counted lost though the client took it. A report of numbers this node
    never handed is passed on, as before."""
    core = make_core()
    core.route = lambda channel: None  # (this node's, for now)
    remote = Session("n3@7/cccccccccc", 0, Policy(60.0), 0.0)
    vconn = b"\x00zr1"
    core.handle_relayed(vconn, remote, ((MsgType.RECV, ("asgi|c", 5)),), 1, 0.0, ClusterWork())
    hello(core, A, SA)
    out = core.handle(A, [(MsgType.SEND, (1, "asgi|c", b"x", 10))], 0.1, ClusterWork())
    [(_, (_, (_, items)))] = [o for o in out if o[0] == vconn and o[1][0] == MsgType.DELIVER]
    seq = items[0][2]
    assert core.queues.flight_seqs(vconn) == {"asgi|c": {seq}}
    core.route = lambda channel: "n2"  # (its view moved: another owns it now)
    work = ClusterWork()
    report = (MsgType.CONSUMED, ([["asgi|c", seq + 5, 1, 0]],))
    core.handle_relayed(vconn, remote, (report,), 1, 0.2, work)
    assert work.relays and core.queues.flight_seqs(vconn), "not ours: passed on"
    work = ClusterWork()
    report = (MsgType.CONSUMED, ([["asgi|c", seq, 1, 0]],))
    core.handle_relayed(vconn, remote, (report,), 1, 0.3, work)
    assert not work.relays, "applied here"
    assert core.queues.flight_seqs(vconn) == {}
    assert not any(core.drops().values())


def test_no_live_owner_counts_the_send_as_dead_owner() -> None:
    core = make_core()
    core.route = lambda channel: ""
    hello(core, A, SA)
    work = ClusterWork()
    out = core.handle(A, [(MsgType.SEND, (7, "asgi|c", b"x", 10))], 0.0, work)
    assert of_type(out, MsgType.ACK) == [(A, (7, 0))]
    assert core.drops()["dead_owner"] == 1 and not work.relays


def test_handed_over_messages_go_before_newer_ones_in_order() -> None:
    q = Queues(first_seq=1000)
    # a send reached the new owner before the old owner's queue did
    q.put("c", b"new", 100.0, 10, 0.0)
    old = Queues(first_seq=5)
    for i in range(3):
        old.put("c", b"old%d" % i, 100.0, 10, 0.0)
    old.grant(b"r", "c", 0, 0.0)
    items, credits = old.take("c", 1.0)
    assert "c" not in old.channels and credits == {}
    q.adopt("c", items, 1.0)
    out = q.grant(b"r", "c", 10, 1.0)
    assert [i[0] for _, _, its in out for i in its] == [b"old0", b"old1", b"old2", b"new"]
    seqs = [i[2] for _, _, its in out for i in its]
    assert seqs == sorted(seqs), "renumbered in order: give-backs still sort right"


def test_a_handback_newer_than_what_is_queued_is_merged_by_deadline() -> None:
    """Simulation seed 290: two nodes kept a channel (each had declared the
    other dead); the first handback is queued, the second holds a send made
    after it and one made before. Prepended, the newer would be taken first;
    merged by deadline (one expiry: send order), each producer keeps its
    order, and the handback goes first on equal deadlines."""
    q = Queues(first_seq=1000)
    q.adopt("c", [(b"p12", 100.0, 1)], 0.0)  # handed back first, sent at 0
    q.adopt("c", [(b"p11", 99.5, 1), (b"p13", 100.5, 2)], 0.0)
    out = q.grant(b"r", "c", 10, 1.0)
    assert [i[0] for _, _, its in out for i in its] == [b"p11", b"p12", b"p13"]
    seqs = [i[2] for _, _, its in out for i in its]
    assert seqs == sorted(seqs), "renumbered in order: give-backs still sort right"


def test_a_handback_goes_before_what_was_sent_here_whatever_its_deadlines() -> None:
    """Simulation seed 46: a restarted node queued its client's new sends;
    the keeper of the older ones handed them back in a frame sent again for
    a second, so their TTLs (measured when the frame was made) put their
    deadlines after the new sends'. A producer's node sends to the keeper
    until it hears of the new owner, then here: what is handed over is
    older than what was sent here, and goes first."""
    q = Queues(first_seq=1000)
    for i in range(4, 7):
        q.put("c", b"new%d" % i, 60.0 + i, 10, 0.0)
    assert q.adopt("c", [(b"old1", 62.0, 1), (b"old2", 62.5, 2)], 0.0) == ([], 0)
    q.adopt("c", [(b"old0", 61.0, 7)], 0.0)  # a second keeper's, merged with the first's
    out = q.grant(b"r", "c", 10, 1.0)
    got = [i[0] for _, _, its in out for i in its]
    assert got == [b"old0", b"old1", b"old2", b"new4", b"new5", b"new6"]
    seqs = [i[2] for _, _, its in out for i in its]
    assert seqs == sorted(seqs), "renumbered below what was queued: give-backs still sort right"
    # given back, they come again in that order
    back = [(p, 30.0, seq) for p, _ttl, seq in (i for _, _, its in out for i in its)]
    q.give_back(b"r", "c", back[::-1], 1.0)
    again = [i[0] for _, _, its in q.grant(b"r", "c", 10, 1.0) for i in its]
    assert again == got


def test_a_handback_after_the_channel_was_served_is_dropped_and_counted() -> None:
    """A handover that comes after this node handed one of the channel's
    messages to a receiver is older than that one: delivered now it would
    break the producer's order, so it is dropped and counted once
    (``dead_owner``, and ``handed_over_stale`` among them)."""
    core = make_core()
    hello(core, A, SA)
    core.queues.put("asgi|c", b"new", 100.0, 10, 0.0)
    core.queues.grant(A, "asgi|c", 5, 0.0)  # handed to a receiver: served
    out, _added = core.adopt((("asgi|c", [[b"old", 30.0, 1]]),), (), 0.5)
    assert out == []
    assert core.drops()["dead_owner"] == 1
    assert core.counters.handed_over_stale == 1
    assert core.queues.length("asgi|c") == 0
    # its own puts placed again (not a handover) are never stale
    out, _added = core.adopt((("asgi|c", [[b"mine", 30.0, 0]]),), (), 0.6, handed_over=False)
    assert [m for _conn, m in out] != [] and core.drops()["dead_owner"] == 1


def test_adopt_takes_channels_and_memberships() -> None:
    core = make_core()
    hello(core, A, SA)
    out, added = core.adopt(
        (("asgi|c", [[b"m", 30.0, 1]]),),
        (
            ("asgi|g", "asgi|c", "n2@7/xxxxxxxxxx", 60.0, 10),
            ("asgi|g", "asgi|e", f"n1@inc1/{SA}", 60.0, 10),  # a session of this node
            ("asgi|g", "asgi|f", "n1@inc1/gonegonego", 60.0, 10),  # one that has gone
        ),
        0.0,
    )
    assert out == []
    assert added == [("asgi|g", "asgi|c"), ("asgi|g", "asgi|e")]
    assert core.queues.length("asgi|c") == 1
    assert sorted(core.groups.members("asgi|g", 0.0)) == ["asgi|c", "asgi|e"]
    assert core.groups.holders("n2@") == ["n2@7/xxxxxxxxxx"]
    # the local session's membership goes with it
    core.handle(A, [(MsgType.BYE, (1, 1))], 0.0)
    assert core.groups.members("asgi|g", 0.0) == ["asgi|c"]


# -- a graceful drain (issue 13, item 5) --------------------------------------------


def test_a_drain_tells_every_connection_and_ends_when_each_has_moved() -> None:
    core = make_core()
    hello(core, A, SA)
    hello(core, B, SB)
    assert not core.drained()
    told = core.begin_drain()
    assert sorted(conn for conn, _ in told) == [A, B]
    assert {msg for _, msg in told} == {(MsgType.DRAIN, ("inc1",))}
    # a process that connects meanwhile is told the same, not welcomed
    c = b"cccccccccc/0"
    out = core.handle(c, [(MsgType.HELLO, ("cccccccccc", 1, [60.0]))], 0.1)
    assert out == [(c, (MsgType.DRAIN, ("inc1",)))]
    assert core.handle(c, [(MsgType.PING, ())], 0.1)[0][1][0] == MsgType.PONG
    core.handle(A, [(MsgType.MOVING, ())], 0.2)
    core.handle(c, [(MsgType.MOVING, ())], 0.2)
    assert not core.drained(), "B has not moved yet"
    core.handle(B, [(MsgType.MOVING, ())], 0.3)
    assert core.drained()


def test_stop_is_answered_and_asks_for_a_drain() -> None:
    core = make_core()
    hello(core, A, SA)
    out = core.handle(A, [(MsgType.STOP, (5,))], 0.0)
    assert of_type(out, MsgType.ACK) == [(A, (5, 1))]
    assert core.stop_requested


def test_a_restarted_node_keeps_an_unknown_sessions_channels_for_one_lease() -> None:
    """After a restart, a process of the node's previous life may be on its
    way back: what is sent to its ``new_channel()`` names is kept for one
    lease, delivered if it comes back, and counted dead (once) if not."""
    core = make_core(lease=3.0)
    core.start(100.0)
    hello(core, A, SA)
    back, never = "asgi|specific.abcdef.bbbbbbbbbb!1", "asgi|specific.abcdef.cccccccccc!1"
    for channel in (back, never):
        out = core.handle(A, [(MsgType.SEND, (1, channel, b"x", 100))], 100.5)
        assert [conn for conn, _ in of_type(out, MsgType.ACK)] == [A]  # queued, not refused
    assert core.drops()["dead_owner"] == 0
    hello(core, B, SB, now=101.0)  # bbbbbbbbbb comes back
    out = core.handle(B, [(MsgType.RECV, (back, 10))], 101.0)
    assert delivered(out) == [b"x"]
    core.tick(103.1)  # the lease is over: cccccccccc never came back
    assert core.drops()["dead_owner"] == 1
    out = core.handle(A, [(MsgType.SEND, (2, never, b"y", 100))], 103.2)
    assert core.drops()["dead_owner"] == 2, "after the grace a gone session's channel is dead"


def _expanded(messages: list[Any]) -> list[Any]:
    """Messages with every DELIVER split into one per item."""
    flat: list[Any] = []
    for mtype, fields in messages:
        if mtype == MsgType.DELIVER:
            flat.extend((mtype, fields[0], tuple(item)) for item in fields[1])
        else:
            flat.append((mtype, fields))
    return flat


_one_message = st.one_of(
    st.tuples(
        st.just(MsgType.DELIVER),
        st.tuples(
            st.sampled_from(["asgi|a", "asgi|b"]),
            st.lists(
                st.tuples(st.binary(max_size=3), st.just(60.0), st.integers(0, 99)),
                min_size=1,
                max_size=3,
            ),
        ),
    ),
    st.tuples(st.just(MsgType.ACK), st.tuples(st.integers(1, 9), st.just(1))),
)


@settings(max_examples=300)
@given(st.lists(_one_message, max_size=12))
def test_coalesced_deliveries_mean_what_they_did(messages: list[Any]) -> None:
    from zchannels.node.server import coalesce

    before = repr(messages)
    merged = coalesce(messages)
    assert repr(messages) == before  # the step's own lists are not changed
    assert _expanded(merged) == _expanded(messages)  # same items, same order, same gaps
    for first, second in pairwise(merged):
        assert not (first[0] == second[0] == MsgType.DELIVER and first[1][0] == second[1][0]), (
            "a run of one channel's DELIVERs left apart"
        )


def test_a_burst_of_sends_is_one_delivery_on_the_wire() -> None:
    from zchannels.node.server import coalesce

    core = make_core()
    hello(core, A, SA)
    hello(core, B, SB)
    core.handle(B, [(MsgType.RECV, ("asgi|ch", 32))], 0.0)
    core.handle(A, [(MsgType.SEND, (1, "asgi|ch", b"0", 100))], 0.0)  # (B takes it: credit 31)
    out = core.handle(
        A, [(MsgType.SEND, (0, "asgi|ch", bytes([i]), 100)) for i in range(1, 6)], 0.0
    )
    to_b = [msg for conn, msg in out if conn == B]
    assert [m[0] for m in to_b] == [MsgType.DELIVER] * 5
    (delivery,) = coalesce(to_b)
    assert delivery[0] == MsgType.DELIVER and delivery[1][0] == "asgi|ch"
    assert [item[0] for item in delivery[1][1]] == [bytes([i]) for i in range(1, 6)]


def _members_of(core: NodeCore, features: int) -> list[str]:
    """Process A (HELLO with ``features``) holds three channels in group
    ``asgi|g``, each with credit; B says HELLO too."""
    core.handle(A, [(MsgType.HELLO, (SA, 1, [60.0, features]))], 0.0)
    hello(core, B, SB)
    names = [f"asgi|specific.abcdef.{SA}!{i}" for i in range(3)]
    for i, name in enumerate(names):
        core.handle(A, [(MsgType.GROUP_ADD, (i + 1, "asgi|g", name, 100.0, 2))], 0.0)
        core.handle(A, [(MsgType.RECV, (name, 10))], 0.0)
    return names


def test_a_client_that_reports_per_bundle_is_sent_deliver_bundle() -> None:
    """HELLO's policy says whether a client reports per bundle; only such a
    client is sent DELIVER_BUNDLE (an older one, or one that says nothing,
    gets DELIVER_MANY and reports per channel)."""
    for features, mtype in ((1, MsgType.DELIVER_BUNDLE), (0, MsgType.DELIVER_MANY)):
        core = make_core()
        names = _members_of(core, features)
        out = core.handle(B, [(MsgType.GROUP_SEND, (1, "asgi|g", b"m"))], 1.0)
        assert [m[0] for c, m in out if c == A] == [mtype]
        assert of_type(out, mtype)[0][1][0] == names
    core = make_core()
    out = core.handle(A, [(MsgType.HELLO, (SA, 1, [60.0]))], 0.0)  # (an older client)
    assert out[0][1][0] == MsgType.WELCOME
    assert not core.sessions.by_conn[A].policy.bundle_reports
    out = core.handle(A, [(MsgType.HELLO, (SA, 1, [60.0, True]))], 0.0)
    assert of_type(out, MsgType.ERROR)[0][1][1] == ErrorCode.BAD_REQUEST


def test_consumed_bundles_releases_the_copies_named_once() -> None:
    """Capacity 2 per pool: two group messages fill it; a per-bundle report
    of every copy of the first frees one unit, so a third fits; a report
    repeated, of positions past the end, or of a bundle already released
    frees nothing more."""
    core = make_core()
    names = _members_of(core, 1)
    seqs = []
    for shot in (1, 2):
        out = core.handle(B, [(MsgType.GROUP_SEND, (shot, "asgi|g", b"m%d" % shot))], 1.0)
        assert of_type(out, MsgType.ACK)[0][1] == (shot, 3)
        seqs.append(of_type(out, MsgType.DELIVER_BUNDLE)[0][1][1][2])
    out = core.handle(B, [(MsgType.GROUP_SEND, (3, "asgi|g", b"m3"))], 1.0)
    assert of_type(out, MsgType.ACK)[0][1] == (3, 0), "the pool holds two bundles"
    first, second = seqs
    # two copies of the first, then the third, then it all again and more
    report = [(MsgType.CONSUMED_BUNDLES, ([[first, 0, 2]],))]
    core.handle(A, report, 1.0)
    assert core.queues.held(names[0]) == 2
    again = [[first, 0, 2, 2, 3], [first, 2, 3, 0, 9], [second, 7, 9], [12345, 0, 3]]
    core.handle(A, [(MsgType.CONSUMED_BUNDLES, (again,))], 1.0)
    assert core.queues.held(names[0]) == 1
    assert first not in core.queues.bundles and second in core.queues.bundles
    # another connection's report releases none of A's copies
    core.handle(B, [(MsgType.CONSUMED_BUNDLES, ([[second, 0, 3]],))], 1.0)
    assert core.queues.held(names[0]) == 1
    out = core.handle(B, [(MsgType.GROUP_SEND, (4, "asgi|g", b"m4"))], 1.0)
    assert of_type(out, MsgType.ACK)[0][1] == (4, 3)
    assert core.counters.bad_requests == 0


def test_malformed_bundle_reports_are_counted_and_skipped() -> None:
    core = make_core()
    names = _members_of(core, 1)
    out = core.handle(B, [(MsgType.GROUP_SEND, (1, "asgi|g", b"m"))], 1.0)
    seq = of_type(out, MsgType.DELIVER_BUNDLE)[0][1][1][2]
    bad: list[Any] = [[seq, 0], [seq, -1, 3], [seq, 0, True], [str(seq), 0, 3], seq, []]
    core.handle(A, [(MsgType.CONSUMED_BUNDLES, ([*bad, [seq, 0, 3]],))], 1.0)
    assert core.counters.bad_requests == len(bad)
    assert core.queues.held(names[0]) == 0, "the good entry after them still counts"


def test_a_bundle_report_naming_more_copies_than_it_had_is_cut_short() -> None:
    """A client names each copy once; runs that name more positions than
    the delivery had (a buggy or hostile client repeating ``[0, 3]`` a
    thousand times) cost the node no more than the bundle's size: the
    report is cut there and counted a bad request; what came before it
    counts."""
    core = make_core()
    names = _members_of(core, 1)
    out = core.handle(B, [(MsgType.GROUP_SEND, (1, "asgi|g", b"m"))], 1.0)
    seq = of_type(out, MsgType.DELIVER_BUNDLE)[0][1][1][2]
    bundle = core.queues.bundles[seq]
    visited: list[str] = []

    class Counting(dict):  # type: ignore[type-arg]
        def get(self, key: Any, default: Any = None) -> Any:
            visited.append(key)
            return super().get(key, default)

    core.queues.channels = Counting(core.queues.channels)
    core.handle(A, [(MsgType.CONSUMED_BUNDLES, ([[seq, 0, 2, *[0, 3] * 1000]],))], 1.0)
    assert core.counters.bad_requests == 1
    assert bundle.left == 1 and core.queues.held(names[0]) == 1, "the first run counted"
    assert len(visited) <= len(names), f"{len(visited)} channel lookups for a 3-member bundle"


def test_a_bundle_given_back_and_dropped_is_forgotten() -> None:
    """The node remembers a bundle's channels only while a copy of it is
    somewhere: copies given back and then dropped with the connection leave
    nothing behind, and a late report of them releases nothing."""
    core = make_core()
    names = _members_of(core, 1)
    out = core.handle(B, [(MsgType.GROUP_SEND, (1, "asgi|g", b"m"))], 1.0)
    seq = of_type(out, MsgType.DELIVER_BUNDLE)[0][1][1][2]
    core.handle(A, [(MsgType.RETURN, (7, names[0], [[b"m", 59.0, seq]], 1))], 1.0)
    core.handle(A, [(MsgType.CONSUMED_BUNDLES, ([[seq, 1, 2]],))], 1.0)
    assert seq in core.queues.bundles
    core.handle(A, [(MsgType.BYE, (8, 1))], 1.0)  # the process closes
    assert seq not in core.queues.bundles
    assert core.queues.held(names[0]) == 0


# -- reserved sends no life read ---------------------------------------------
def hello_saying(core: NodeCore, conn: bytes, tag: str, reserved: int, now: float) -> list[Out]:
    """HELLO from a client that says it made ``reserved`` reserved sends."""
    return core.handle(conn, [(MsgType.HELLO, (tag, 1, [60.0, 0, reserved]))], now)


RESERVED_SEND = (MsgType.SEND, (0, "c", b"x", 1000))


def test_a_hello_counts_the_reserved_sends_its_node_never_read() -> None:
    """A reserved send is never answered, so a lost one is known only by
    comparing what the client says it sent (HELLO) with what was read."""
    core = make_core()
    hello_saying(core, A, SA, 0, 0.0)
    core.handle(A, [RESERVED_SEND] * 3, 0.1)
    hello_saying(core, A, SA, 3, 0.2)  # (all three read: nothing lost)
    assert core.counters.reserved_unread == core.counters.dropped_dead_owner == 0
    hello_saying(core, A, SA, 5, 0.3)  # (two never arrived: a broken TCP connection)
    assert core.counters.reserved_unread == core.counters.dropped_dead_owner == 2
    hello_saying(core, A, SA, 5, 0.4)  # (said again: counted once)
    assert core.counters.reserved_unread == 2
    # An older client says nothing: nothing is counted, and it is not refused.
    out = core.handle(B, [(MsgType.HELLO, (SB, 1, [60.0, 0]))], 0.5)
    assert out[0][1][0] == MsgType.WELCOME
    core.handle(B, [RESERVED_SEND], 0.6)
    hello_saying(core, B, SB, 9, 0.7)  # (now it says: the count starts here)
    assert core.counters.reserved_unread == 2
    # Something else there (an early version's capacity patterns) says nothing.
    out = core.handle(B, [(MsgType.HELLO, (SB, 1, [60.0, 0, [["a*", 5]]]))], 0.8)
    assert out[0][1][0] == MsgType.WELCOME
    core.handle(B, [RESERVED_SEND], 0.9)
    hello_saying(core, B, SB, 20, 1.0)
    assert core.counters.reserved_unread == 2


def test_the_next_life_counts_what_the_killed_one_never_read() -> None:
    """A tally inherited from the previous life's record is kept for a
    lease; reserved sends the next life reads before the HELLO are refused
    and counted as read (``dead_owner``), the rest at the HELLO."""
    old = make_core()
    hello_saying(old, A, SA, 0, 0.0)
    hello_saying(old, B, SB, 0, 0.0)
    old.handle(A, [RESERVED_SEND] * 4, 0.1)
    tally = old.sessions.reserved_carry()
    assert dict(tally) == {A: 4, B: 0}
    new = make_core(lease=3.0)
    new.sessions.inherit(tally, (), 1.0)
    new.handle(A, [RESERVED_SEND] * 2, 1.1)  # (waited in A's socket: refused)
    assert new.counters.dropped_dead_owner == 2
    hello_saying(new, A, SA, 4 + 3 + 2, 1.2)  # (3 were in the killed one's socket)
    assert new.counters.reserved_unread == 3
    assert new.counters.dropped_dead_owner == 5
    new.tick(4.1)  # (B never came back in a lease: its process died)
    assert dict(new.sessions.reserved_carry()) == {A: 9}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.just(("send", 0)),
            st.just(("hello", 0)),
            st.tuples(st.just("read"), st.integers(1, 4)),
            st.tuples(st.just("kill"), st.integers(0, 6)),
        ),
        max_size=60,
    )
)
def test_every_reserved_send_is_read_by_some_life_or_counted_unread_once(
    ops: list[tuple[str, int]],
) -> None:
    """Any interleaving of one connection's reserved sends and HELLOs with
    its node reading frames and being SIGKILLed (losing the first ``n`` of
    the frames it had not read: those in its socket; the rest wait in the
    client's and reach the next life), each next life taking the tally from
    its predecessor's record: once the client has said HELLO and every
    frame is read, each reserved send was read by exactly one life or
    counted unread by exactly one, never both."""
    core = make_core()
    hello_saying(core, A, SA, 0, 0.0)
    total = read = counted = 0
    pipe: list[tuple[MsgType, tuple[Any, ...]]] = []

    def take(n: int) -> None:
        nonlocal read
        for message in pipe[:n]:
            read += message[0] == MsgType.SEND
            core.handle(A, [message], 0.0)
        del pipe[:n]

    for op, n in [*ops, ("hello", 0), ("read", 1 << 30)]:
        if op == "send":
            total += 1
            pipe.append(RESERVED_SEND)
        elif op == "hello":
            pipe.append((MsgType.HELLO, (SA, 1, [60.0, 0, total])))
        elif op == "read":
            take(n)
        else:
            counted += core.counters.reserved_unread
            del pipe[:n]
            tally = core.sessions.reserved_carry()
            core = make_core()
            core.sessions.inherit(tally, (), 0.0)
    counted += core.counters.reserved_unread
    assert read + counted == total


# -- what a killed life's clients had in flight -------------------------------
def test_the_flight_of_clients_that_never_come_back_is_counted_a_lease_later() -> None:
    """From the previous life's record (``Queues.flying``): a connection
    that says HELLO again keeps and takes what it holds; one that does not
    in a lease (its process died just before the kill, unnoticed) lost it,
    counted once (``receiver_gone``)."""
    core = make_core(lease=3.0)
    core.sessions.inherit((), ((A, 4), (B, 2)), 10.0)
    hello(core, A, SA, 10.5)
    core.tick(12.9)
    assert core.queues.counters.dropped_receiver_gone == 0
    core.tick(13.0)
    assert core.queues.counters.dropped_receiver_gone == 2
    assert core.counters.flight_unclaimed == 2
    core.tick(20.0)
    assert core.queues.counters.dropped_receiver_gone == 2


def test_what_a_client_of_the_previous_life_gives_back_before_its_hello_is_counted() -> None:
    """Simulation seed 351: a client gave back to the next life, before its
    HELLO, what the previous life had handed it; this life cannot queue
    them (it does not know the session), and the client forgets them.
    Counted once, from that life's flight to it (not again a lease later);
    from a connection with no such flight (its session lapsed here, and its
    flight was counted then), nothing."""
    core = make_core(lease=3.0)
    core.sessions.inherit((), ((A, 5),), 10.0)
    items = [[b"m", 30.0, seq] for seq in (1, 2, 3)]
    out = core.handle(A, [(MsgType.RETURN, (0, "c", items, 1))], 10.1)
    assert of_type(out, MsgType.RESET)
    assert core.counters.dropped_dead_owner == core.counters.returned_to_next_life == 3
    core.handle(B, [(MsgType.RETURN, (0, "c", items, 1))], 10.2)
    assert core.counters.dropped_dead_owner == 3
    core.tick(13.0)  # (A never said HELLO: the 2 left of its flight)
    assert core.queues.counters.dropped_receiver_gone == 2


def test_what_a_client_of_the_previous_life_reports_taken_before_its_hello_is_not_lost() -> None:
    """Simulation seed 265: a client took 12 of what the previous life had
    handed it and died; its reports reached the next life, before any
    HELLO. Taken, not lost: a lease later only the rest is counted."""
    core = make_core(lease=3.0)
    core.sessions.inherit((), ((A, 5),), 10.0)
    reports = [["c", 9, 2, 0], ["d", 9, 1, 0], ["bad", 9, True, 0]]
    core.handle(A, [(MsgType.CONSUMED, (reports,))], 10.1)
    core.handle(A, [(MsgType.CONSUMED_BUNDLES, ([[4, 0, 1]],))], 10.2)
    core.tick(13.0)
    assert core.queues.counters.dropped_receiver_gone == 1
    assert core.counters.dropped_dead_owner == 0


CHANNELS = ["c", "d", "specific.x!a", "specific.x!b"]
flight_ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.sampled_from(CHANNELS), st.integers(1, 3)),
        st.tuples(st.just("recv"), st.sampled_from([A, B]), st.sampled_from(CHANNELS)),
        st.tuples(st.just("take"), st.sampled_from([A, B]), st.sampled_from(CHANNELS)),
        st.tuples(st.just("back"), st.sampled_from([A, B]), st.sampled_from(CHANNELS)),
        st.tuples(st.just("gsend"), st.just(""), st.just("")),
        st.tuples(st.just("bundle"), st.sampled_from([A, B]), st.just("")),
        st.tuples(st.just("flush"), st.just(""), st.just("")),
        st.tuples(st.just("gone"), st.sampled_from([A, B]), st.just("")),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(flight_ops)
@example(  # (a bundle: one group message on two channels of A's process)
    [
        ("recv", A, "specific.x!a"),
        ("recv", A, "specific.x!b"),
        ("gsend", "", ""),
        ("bundle", A, ""),
        ("send", "specific.x!a", 2),
        ("gone", A, ""),
    ]
)
def test_each_connections_flight_count_is_kept_exact(ops: list[tuple[Any, ...]]) -> None:
    """``Queues.flying`` (what the held record lists at every step) is kept
    as flights change, not counted: after any sequence of sends, grants,
    reports, give-backs, group copies, flushes and connections gone, it
    equals the flights counted channel by channel."""
    core = make_core()
    for conn, tag in ((A, SA), (B, SB)):
        core.handle(conn, [(MsgType.HELLO, (tag, 1, [60.0, 1]))], 0.0)
        core.handle(conn, [(MsgType.GROUP_ADD, (1, "g", f"specific.x!{tag[0]}", 60.0, 100))], 0.0)
    handed: dict[tuple[bytes, str], list[list[Any]]] = {}
    bundles: dict[bytes, list[int]] = {}
    for now, (op, who, channel) in enumerate(ops, start=1):
        out: list[Out] = []
        if op == "send":  # (who: the channel; channel: how many)
            for i in range(channel):
                out += core.handle(A, [(MsgType.SEND, (i + 1, who, b"m", 100))], now)
        elif op == "recv":
            out += core.handle(who, [(MsgType.RECV, (channel, 2))], now)
        elif op == "take":
            items = handed.pop((who, channel), [])
            if items:
                report = [[channel, items[-1][2], len(items), 0]]
                core.handle(who, [(MsgType.CONSUMED, (report,))], now)
        elif op == "back":
            items = handed.pop((who, channel), [])
            out += core.handle(who, [(MsgType.RETURN, (1, channel, items, 1))], now)
        elif op == "gsend":
            out += core.handle(B, [(MsgType.GROUP_SEND, (9, "g", b"all"))], now)
        elif op == "bundle":
            seqs = bundles.pop(who, [])
            if seqs:
                core.handle(who, [(MsgType.CONSUMED_BUNDLES, ([[seqs[0], 0, 1]],))], now)
        elif op == "flush":
            out += core.handle(A, [(MsgType.FLUSH, (7, ""))], now)
            handed.clear()
        else:
            out += core.undeliverable(who, [], now)
            handed = {k: v for k, v in handed.items() if k[0] != who}
            core.handle(who, [(MsgType.HELLO, ({A: SA, B: SB}[who], 1, [60.0, 1]))], now)
        for conn, (mtype, fields) in out:
            if mtype == MsgType.DELIVER:  # (as the wire has them: lists)
                handed.setdefault((conn, fields[0]), []).extend(list(i) for i in fields[1])
            elif mtype == MsgType.DELIVER_BUNDLE:
                bundles.setdefault(conn, []).append(fields[1][2])
        assert core.queues.flying == core.queues.flying_counted(), (op, who, channel)
