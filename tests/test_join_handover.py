"""A restarted node serves its clients only after its peers have handed back
what they kept for it (``ClusterNode``, pure: two nodes, a hand-run network).

What a user sees: a process on node B sends to its own ``new_channel()`` name
while B is stopped without a drain (B has left and lingers, so the message is
passed to the node that keeps B's names while it is away), then B's next life
starts and the process sends again. The process must receive its messages in
the order it sent them: what the keeper hands back is older than anything
sent to the new life. Before, the new life served its clients as soon as it
had joined, and delivered the newer message before the handover arrived.
"""

from __future__ import annotations

from typing import Any

from purenet import PureNet
from purenet import make_node as make
from zchannels.node.cluster import LINGER_BOUNDS, ClusterNode, Effects
from zchannels.node.effects import Fx
from zchannels.node.peer_messages import Ask, Handoff, Relay
from zchannels.node.peer_wire import decode_peer, encode_peers

from zchannels.protocol import Message, MsgType

A_ADDR, B_ADDR = "tcp://10.0.0.1:7701", "tcp://10.0.0.2:7701"
SESSION = "procsessab"
CONN = b"client-of-b"
DELAY = 0.0005  # one way, every peer link


class Net(PureNet):
    """Peer frames delivered after ``DELAY``, in order per link; ticks when
    due; what clients are sent is recorded. ``drop``: a predicate on decoded
    peer messages the network loses."""

    def __init__(self, nodes: dict[str, ClusterNode], drop: Any = None) -> None:
        super().__init__(nodes, DELAY)
        self.drop = drop

    def sending(self, to: str, frame: bytes) -> bytes | None:
        if self.drop is None:
            return frame
        kept = [m for m in decode_peer(frame) if not self.drop(m)]
        return encode_peers(kept) if kept else None

    def client(self, address: str, messages: list[Message]) -> None:
        self.apply(address, self.nodes[address].client(CONN, messages, self.now))

    def delivered(self, since: float = 0.0) -> list[tuple[float, bytes]]:
        """(when, payload) of every message delivered to the client."""
        return [
            (at, item[0])
            for at, _, conn, (mtype, fields) in self.to_clients
            if conn == CONN and mtype == MsgType.DELIVER and at >= since
            for item in fields[1]
        ]


def _losing(net: Net, address: str, kind: type) -> list[bool]:
    """From now on, while the flag returned holds (``[True]``), every frame
    ``address`` sends that carries a ``kind`` message is lost."""
    lossy = [True]
    deliver = net.apply

    def apply(at: str, fx: Effects) -> None:
        if at == address and lossy[0]:
            fx.peers[:] = [
                (to, frame)
                for to, frame in fx.peers
                if not any(isinstance(m, kind) for m in decode_peer(frame))
            ]
        deliver(at, fx)

    net.apply = apply  # type: ignore[method-assign]
    return lossy


def joined(drop: Any = None) -> tuple[Net, ClusterNode, ClusterNode]:
    """Nodes a and b, started as the shell starts them, each the other's
    seed: both have joined and serve."""
    a = make("a", A_ADDR, (B_ADDR,), 1_000_001)
    b = make("b", B_ADDR, (A_ADDR,), 1_000_001)
    net = Net({A_ADDR: a, B_ADDR: b}, drop)
    for address, node in net.nodes.items():
        net.start(address, node)
    net.run(2 * b.config.join_timeout)
    return net, a, b


def scenario(drop: Any = None) -> tuple[Net, ClusterNode, float]:
    """B's client sends ``first`` to its own name while B lingers after a
    plain leave, and ``second`` to B's next life; it receives from then on."""
    net, a, b = joined(drop)  # (both serve: joined, handed over)
    assert sorted(a.table.live()) == ["a", "b"]  # type: ignore[union-attr]
    hello: Message = (MsgType.HELLO, (SESSION, 7, [60.0]))
    net.client(B_ADDR, [hello])
    name = f"specific.{b.config.node_tag}.{SESSION}!0"

    net.apply(B_ADDR, b.leave(net.now))  # a plain leave: B lingers
    net.run(net.now + 0.05)
    net.client(B_ADDR, [(MsgType.SEND, (1, name, b"first", 100))])
    net.run(net.now + 0.2)  # passed on to the keeper, answered
    acks = [m[1][0] for _, _, conn, m in net.to_clients if conn == CONN and m[0] == MsgType.ACK]
    assert acks == [1]  # (taken: the keeper answered)
    del net.nodes[B_ADDR]  # gone

    b2 = make("b", B_ADDR, (A_ADDR,), 1_100_001)  # the next life
    net.nodes[B_ADDR] = b2
    restarted = net.now
    net.start(B_ADDR, b2)
    # The process reconnects at once: HELLO, a receive, its next send.
    net.client(B_ADDR, [hello, (MsgType.RECV, (name, 10))])
    net.client(B_ADDR, [(MsgType.SEND, (2, name, b"second", 100))])
    net.run(net.now + 5.0)
    return net, b2, restarted


def test_what_the_keeper_hands_back_is_delivered_before_newer_sends() -> None:
    net, b2, restarted = scenario()
    got = net.delivered(restarted)
    assert [payload for _, payload in got] == [b"first", b"second"]
    assert b2.counters["handover_timeouts"] == 0
    assert not any(b2.drops().values()), b2.drops()
    # served one round trip after the join, not after a timeout
    assert got[-1][0] - restarted < 0.05, got


def test_a_peer_that_never_says_it_handed_over_delays_serving_by_join_timeout() -> None:
    """(a peer of an older version, or its message lost): the new life
    serves anyway, ``join_timeout`` after it started, and counts it."""
    net, b2, restarted = scenario(drop=lambda m: type(m).__name__ == "HandedOver")
    got = net.delivered(restarted)
    assert sorted(payload for _, payload in got) == [b"first", b"second"]
    assert b2.counters["handover_timeouts"] == 1
    assert not any(b2.drops().values()), b2.drops()  # (kept a lease from then)
    join_timeout = b2.config.join_timeout
    assert join_timeout <= got[0][0] - restarted < join_timeout + 0.5, got


def test_a_node_that_joins_late_holds_its_clients_at_most_join_timeout_in_all() -> None:
    """Simulation seed 1486: a node restarted onto a lossy link hears its
    peers only 1.4 s after its start, and none says it handed over. A send
    its client made at the start must be answered within the answer bound:
    the new life serves ``join_timeout`` after its start, not after it
    joined (3.4 s before, a send unanswered beyond the bound)."""
    net, _a, b = joined()
    hello: Message = (MsgType.HELLO, (SESSION, 7, [60.0]))
    net.apply(B_ADDR, b.leave(net.now))
    net.run(net.now + 0.5)
    del net.nodes[B_ADDR]
    b2 = make("b", B_ADDR, (A_ADDR,), 1_100_001)
    net.nodes[B_ADDR] = b2
    restarted = net.now
    late = restarted + 1.4
    # Every peer message is lost for 1.4 s; HandedOver, always.
    net.drop = lambda m: net.now < late or type(m).__name__ == "HandedOver"
    net.start(B_ADDR, b2)
    net.client(B_ADDR, [hello, (MsgType.SEND, (1, "q", b"m", 100))])
    join_timeout = b2.config.join_timeout
    while net.now < restarted + join_timeout and len(b2.table.live()) < 2:  # type: ignore[union-attr]
        net.run(net.now + 0.01)
    joined_at = net.now
    assert late <= joined_at < restarted + join_timeout - 0.1, joined_at - restarted
    net.run(restarted + join_timeout + 0.5)
    answers = [
        (at, m[0])
        for at, _, conn, m in net.to_clients
        if conn == CONN and at >= restarted and m[0] in (MsgType.ACK, MsgType.ERROR)
    ]
    assert answers, "the send was never answered"
    answered_at, kind = answers[0]
    assert kind == MsgType.ACK, answers
    assert join_timeout <= answered_at - restarted < join_timeout + 0.1, answers
    assert b2.counters["handover_timeouts"] == 1


def test_a_node_that_left_lingers_until_its_last_reserved_send_could_be_acknowledged() -> None:
    """Simulation seeds 36 and 59 (``plans/leaving-node-reserved-sends-*``:
    acknowledged-after-its-limit, lagged-past-its-limit): a process whose
    node left and lingers
    sends under a reservation shortly before the linger's limit; the node
    relays the sends, its peer takes them, and the acknowledgement is on
    its way (the link's ack delay, a lag) when the limit comes. Ended
    then, the node counted them lost as it ended, and they were delivered.
    So the limit grows while such a frame waits for its acknowledgement,
    to the answer bound after it was sent (at most twice the bound)."""
    a = make("a", A_ADDR, (B_ADDR,), 1_000_001)
    b = make("b", B_ADDR, (A_ADDR,), 1_000_001)
    acks_lost = [False]
    net = Net(
        {A_ADDR: a, B_ADDR: b},
        drop=lambda m: acks_lost[0] and type(m).__name__ == "LinkAck" and m.gen != 0,
    )
    for address, node in net.nodes.items():
        net.start(address, node)
    net.run(2 * b.config.join_timeout)
    net.client(B_ADDR, [(MsgType.HELLO, (SESSION, 7, [60.0]))])
    left = net.now
    net.apply(B_ADDR, b.leave(left))
    bound = b.linger_limit()
    assert bound > 0
    net.run(left + 0.05)
    net.client(B_ADDR, [(MsgType.SEND, (1, "q", b"asks", 100))])  # (answered: a reservation)
    net.run(net.now + 0.05)
    assert b.linger_limit() == bound  # (nothing waits)
    acks_lost[0] = True  # (the peer took it; its acknowledgement is late)
    sent = net.now
    net.client(B_ADDR, [(MsgType.SEND, (0, "q", b"reserved", 100))])
    net.run(net.now + 0.05)
    assert b.passing_on()
    assert abs(b.linger_limit() - (sent + bound - left)) < 1e-9
    acks_lost[0] = False
    net.run(net.now + 0.5)  # (the link sends it again; this time acknowledged)
    assert not b.passing_on() and b.linger_limit() == bound
    assert b.gone(net.now) == 0


def _leaving_with_its_handover_lost(
    sends: int,
) -> tuple[Net, ClusterNode, ClusterNode, str, float, list[bool]]:
    """B's client queued ``sends`` messages on a name B owns, with nobody
    receiving; B leaves, and while ``lossy[0]`` its frames carrying the
    handover (to A, the name's next owner) are lost, every time the link
    sends them again; everything else gets through (A is heard from)."""
    net, a, b = joined()
    name = next(f"q{i}" for i in range(100) if b.routing.route(f"q{i}") is None)  # type: ignore[union-attr]
    net.client(B_ADDR, [(MsgType.HELLO, (SESSION, 7, [60.0]))])
    for i in range(sends):
        net.client(B_ADDR, [(MsgType.SEND, (i + 1, name, b"m%d" % i, 100))])
    net.run(net.now + 0.05)
    lossy = _losing(net, B_ADDR, Handoff)
    left = net.now
    net.apply(B_ADDR, b.leave(left))
    return net, a, b, name, left, lossy


def test_a_node_that_left_lingers_while_a_peer_it_still_hears_has_not_taken_its_handover() -> None:
    """Simulation seed 155 without kills (a handover into 30% loss): the
    peer was heard from after the handover was sent, the linger ended at
    its limit, the handover was taken for delivered (only its
    acknowledgement late) and the queue was lost, counted by nobody. A
    peer still heard from is reachable: the node lingers on while it is,
    up to ``LINGER_BOUNDS`` answer bounds, and the handover gets through."""
    net, a, b, name, left, lossy = _leaving_with_its_handover_lost(3)
    bound = b.routing.answer_within()  # type: ignore[union-attr]
    net.run(left + 3 * bound)  # (past the 2 bounds a linger had at most)
    assert b.passing_on(), "the handover still waits"
    assert 3 * bound < b.linger_limit() <= LINGER_BOUNDS * bound
    lossy[0] = False  # (sent again: this time it gets through)
    net.run(net.now + 0.5)
    assert not b.passing_on()
    assert b.gone(net.now) == 0
    assert a.core.queues.length(name) == 3


def test_a_handover_a_peer_heard_from_never_took_is_counted_as_the_node_ends() -> None:
    """The linger's limit, and then: a peer heard from all along that never
    acknowledged the handover did not take it (its acknowledgement would
    have come): counted as the process ends, not presumed delivered."""
    net, a, b, name, left, _ = _leaving_with_its_handover_lost(1)
    bound = b.routing.answer_within()  # type: ignore[union-attr]
    net.run(left + 10 * bound)
    assert b.passing_on() and b.linger_limit() == LINGER_BOUNDS * bound
    assert b.gone(net.now) == 1, "counted as the process ends"
    assert a.core.queues.length(name) == 0


def test_a_restart_one_start_number_later_is_a_new_life() -> None:
    """A restart within a millisecond of the last start (the shell's start
    number one above: kill -9 and a fast supervisor; simulation seed 91,
    two restarts 18 ms apart) is a new life to its peers, not the old life
    refuting a suspicion: they hand it what it owns and say so
    (``HandedOver``), and open a new link to it. Before, the new life was
    taken for the old one, what was sent on the old life's link was dropped
    by the new one uncounted, and it served only after ``join_timeout``."""
    net, a, b = joined()
    b.links.hurry(0.0)  # (what the killed process kept goes nowhere)
    b2 = make("b", B_ADDR, (A_ADDR,), 1_000_002)  # killed and restarted at once
    net.nodes[B_ADDR] = b2
    restarted = net.now
    net.start(B_ADDR, b2)
    net.run(restarted + 0.5)
    member = a.table.member("b")  # type: ignore[union-attr]
    assert member is not None and member.incarnation == b2.incarnation
    assert b2.counters["handover_timeouts"] == 0 and not b2._joining
    assert b2.links.counters["link_for_past_life"] == 0


def test_a_handover_held_by_a_node_that_left_before_it_joined_is_counted_as_it_ends() -> None:
    """Simulation seed 70: a node left while it was still joining (its LEFT
    reached nobody); a peer that then saw its join handed it a channel's
    queue, which it held (a starting node holds peers' messages until it
    has joined) until its process ended. Its link acknowledged the handover
    (or it came before the first link), so the sender counts nothing: the
    node counts it as it ends."""
    b = make("b", B_ADDR, (A_ADDR,), 1_000_001)
    b.start(0.0)
    b.discovered(A_ADDR, 0.0)
    b.leave(0.01)
    items = [[b"m1", 60.0, 1_000_001_001], [b"m2", 60.0, 1_000_001_002]]
    b.peer(encode_peers([Handoff("a", (("q0", items),), ())]), 0.3)
    assert b.gone(0.5) == 2
    assert b.drops()["dead_owner"] == 2


def test_a_link_frame_with_a_malformed_message_is_taken_and_its_link_goes_on() -> None:
    """A peer's link frame carrying a malformed message (soak seed 138: a
    relay with a holder tag no codec accepts) is taken without it: counted
    a decode_error, and the frames after it on that link are taken too
    (refused as a whole, it was sent again and refused for good, and the
    link stalled behind it)."""
    net, a, b = joined()
    assert b.table is not None and a.table is not None
    member_b = a.table.member("b")
    assert member_b is not None
    sends = ((MsgType.SEND, (0, "q", b"m", 10)),)
    bad = Relay("a", a.incarnation, b"conn", "a@1/tag", 60.0, 2, sends, net.now)
    good = Ask(7, "a", "members", "asgi|g7")
    frames = [a.links.frame(member_b, msg, net.now) for msg in (bad, good)]
    assert all(isinstance(f, bytes) and f for f in frames)

    def taken() -> int:
        return sum(upto for source, _life, _gen, upto in b.links.report() if source == "a")

    before, errors = taken(), b.counters["decode_errors"]
    for frame in frames:
        b.peer(frame, net.now)  # type: ignore[arg-type]
    assert b.counters["decode_errors"] == errors + 1
    assert taken() == before + 2, "the malformed one's frame and the next are taken"


def test_a_node_that_left_lingers_while_a_peer_it_still_hears_owes_reserved_sends() -> None:
    """Kill-free seed 173, shrunk to 14 ops (``plans/reserved-sends-into-
    loss-after-a-leave-lingered-on.json``): a process whose node had left
    sent under a reservation while the node lingered; the relays waited
    behind 30% packet loss, the peer was heard from meanwhile, and the
    linger ended at its limit (the answer bound after the last send) with
    them on their way: lost with the process, and presumed taken, as the
    peer had been heard from after they were sent. Reserved sends are what
    only this node counts, as a handover is (seed 155): it lingers on while
    that peer is heard from, up to ``LINGER_BOUNDS`` bounds."""
    net, a, b = joined()
    name = next(f"q{i}" for i in range(100) if b.routing.route(f"q{i}") == "a")  # type: ignore[union-attr]
    net.client(B_ADDR, [(MsgType.HELLO, (SESSION, 7, [60.0]))])
    left = net.now
    net.apply(B_ADDR, b.leave(left))
    net.run(left + 0.05)
    net.client(B_ADDR, [(MsgType.SEND, (1, name, b"asks", 100))])  # (answered: a reservation)
    net.run(net.now + 0.05)
    lossy = _losing(net, B_ADDR, Relay)
    net.client(B_ADDR, [(MsgType.SEND, (0, name, b"reserved", 100))])
    bound = b.routing.answer_within()  # type: ignore[union-attr]
    net.run(left + 3 * bound)  # (past the 2 bounds a linger had at most)
    assert b.passing_on(), "the reserved send still waits"
    assert 3 * bound < b.linger_limit() <= LINGER_BOUNDS * bound
    lossy[0] = False  # (sent again: this time it gets through)
    net.run(net.now + 0.5)
    assert not b.passing_on()
    assert b.gone(net.now) == 0
    # (counted once: by the owner, which refuses a send that late as its
    # client may have been told it was not taken)
    assert a.core.queues.length(name) == 1
    assert a.routing.counters["late_sends_refused"] == 1  # type: ignore[union-attr]
    assert a.drops()["dead_owner"] == 1


def test_a_life_ended_in_place_that_leaves_unheard_counts_beyond_its_last_report() -> None:
    """Kill-free seed 105, shrunk to 6 ops (``plans/fenced-life-left-alone-
    in-partition-counts-beyond-its-last-report.json``): an owner reported 3
    queued messages, took 4 more and froze; its peer declared it dead and
    counted the 3 of its last report. It thawed cut off from its peer, ended
    its life in place (7 dropped, said only in the next life's load
    reports) and left, its next life heard by nobody: the 4 were counted by
    nobody. Its process counts them as it ends; heard from after the fence
    (its reports reached a peer, which counts what they add), it does not."""
    for heard in (False, True):
        _counted_when(heard)


def _counted_when(heard: bool) -> None:
    """Seed 105's fence and leave (``heard``: a peer takes the next life's
    load reports); what the process counts as it ends."""
    cut = [False]
    net, _, b = joined(drop=lambda m: cut[0])
    name = next(f"q{i}" for i in range(100) if b.routing.route(f"q{i}") is None)  # type: ignore[union-attr]
    net.client(B_ADDR, [(MsgType.HELLO, (SESSION, 7, [60.0]))])
    for i in range(3):
        net.client(B_ADDR, [(MsgType.SEND, (i + 1, name, b"m%d" % i, 100))])
    net.run(net.now + 1.5)  # (a load report of 3 went out, and a took it)
    assert b._reports[-1][1] == 3
    for i in range(3, 7):
        net.client(B_ADDR, [(MsgType.SEND, (i + 1, name, b"m%d" % i, 100))])
    net.run(net.now + 0.01)
    cut[0] = not heard
    fx = Fx()
    b._fence(net.now, fx, "declared dead while it was frozen")
    net.apply(B_ADDR, b._finish(fx, net.now))
    net.run(net.now + 1.5)  # (the next life's load report: taken by a, or cut off)
    net.apply(B_ADDR, b.leave(net.now))
    net.run(net.now + 2 * b.linger_limit())
    assert b.gone(net.now) == (0 if heard else 4)
    assert b.counters["fence_counted_at_exit"] == (0 if heard else 4)
