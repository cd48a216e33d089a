"""Routing's bookkeeping, pure: a fake member table and a real ``NodeCore``.

What a node keeps for other nodes' clients (virtual connections, memberships
held as ``node@incarnation/session``) must survive that node refuting a
suspicion (its incarnation +1) and go when it restarts (a new start time);
relays from its earlier life are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zchannels.node.core import ClusterWork, CoreSettings, NodeCore
from zchannels.node.effects import Fx
from zchannels.node.membership import EventKind, Member, MemberEvent, MembershipConfig, State
from zchannels.node.peer_messages import Load, Relay, RelayBack
from zchannels.node.routing import RESTART_GAP, Routing
from zchannels.node.sessions import Policy

from zchannels.protocol import Message, MsgType

START = 1_795_000_000_000  # a start incarnation (ms since the epoch)


@dataclass
class FakeTable:
    """The member table as routing reads it (live members, incarnations)."""

    incarnations: dict[str, int]
    node_id: str = "n1"
    incarnation: int = START
    config: MembershipConfig = field(default_factory=MembershipConfig.lan)

    def live(self) -> list[str]:
        return sorted(self.incarnations)

    def member(self, node: str) -> Member | None:
        inc = self.incarnations.get(node)
        return None if inc is None else Member(node, State.ALIVE, inc, f"tcp://{node}:1")

    def members(self) -> list[Member]:
        return [m for m in (self.member(n) for n in sorted(self.incarnations)) if m is not None]


def routing() -> tuple[Routing, NodeCore, FakeTable]:
    core = NodeCore(CoreSettings("n1", "aaaaaa", str(START), 3.0, 1 << 20))
    table = FakeTable({"n1": START, "n2": START + 7})
    r = Routing(core, table)  # type: ignore[arg-type]
    core.route = lambda channel: None  # this node owns everything here
    return r, core, table


def relay(r: Routing, inc: int, *messages: Message) -> Fx:
    fx = Fx()
    r.handle(Relay("n2", inc, b"client-1", "tagtagtag0", 60.0, 1, messages, 0.0), 0.0, fx)
    return fx


def test_a_refuted_suspicion_keeps_relayed_state_and_a_restart_drops_it() -> None:
    r, core, table = routing()
    relay(r, START, (MsgType.RECV, ("asgi|c", 5)))
    relay(r, START, (MsgType.GROUP_ADD, (1, "asgi|g", "asgi|c", 60.0, 10)))
    assert len(r._virtual) == 1 and core.groups.count("asgi|g") == 1
    # n2 refuted a suspicion: same life, incarnation + 1
    r.on_member_event(MemberEvent(EventKind.UPDATED, "n2", "tcp://n2:1", START + 8), 0.0, Fx())
    assert len(r._virtual) == 1 and core.groups.count("asgi|g") == 1
    relay(r, START, (MsgType.RECV, ("asgi|c", 1)))  # its relays still count
    assert r.counters["stale_relay"] == 0
    # n2 restarted: a new start time, its earlier clients are gone
    restarted = START + 60_000
    table.incarnations["n2"] = restarted
    r.on_member_event(MemberEvent(EventKind.UPDATED, "n2", "tcp://n2:1", restarted), 0.0, Fx())
    assert r._virtual == {} and core.groups.count("asgi|g") == 0
    relay(r, START, (MsgType.RECV, ("asgi|c", 1)))  # a frame from its earlier life
    assert r.counters["stale_relay"] == 1 and r._virtual == {}
    assert RESTART_GAP < 60_000


def test_relays_from_non_members_are_counted_and_ignored() -> None:
    r, _, _ = routing()
    fx = Fx()
    r.handle(Relay("stranger", START, b"c", "tagtagtag0", 60.0, 1, (), 0.0), 0.0, fx)
    assert r.counters["from_strangers"] == 1
    assert r._virtual == {} and fx.out == [] and fx.peers == []


def test_a_relayed_send_is_answered_back_through_the_clients_node() -> None:
    r, core, _ = routing()
    fx = relay(r, START, (MsgType.SEND, (4, "asgi|c", b"p", 10)))
    assert core.queues.length("asgi|c") == 1
    [(vconn, (mtype, fields))] = fx.out
    assert r.is_virtual(vconn) and mtype == MsgType.ACK and fields[0] == 4
    back = Fx()
    r.send_back(fx.out, back)
    assert back.peers == [("n2", RelayBack("n1", b"client-1", ((MsgType.ACK, fields),)))]


def test_an_unanswered_relay_is_answered_at_its_deadline_and_counted() -> None:
    r, core, _ = routing()
    core.route = lambda channel: "n2"
    work = ClusterWork()
    core.sessions.hello(b"A", "sessiontag", 1, Policy(60.0), 0.0)
    core.handle(b"A", [(MsgType.SEND, (9, "asgi|far", b"x", 10))], 0.0, work)
    fx = Fx()
    r.after_core(work, 0.0, fx)
    [(owner, msg)] = fx.peers
    assert owner == "n2" and isinstance(msg, Relay)
    assert r.next_deadline() <= r.timeout
    late = Fx()
    r.tick(r.timeout, late)
    assert (b"A", (MsgType.ACK, (9, 0))) in late.out
    assert r.counters["lost_unanswered"] == 1


def test_a_send_that_arrives_after_its_origin_stopped_waiting_is_refused() -> None:
    """A frozen owner (or a healed partition) hands the node frames its origin
    gave up on: a send among them is not taken (the origin answers it and
    counts it lost), so a message counted lost never arrives later."""
    r, core, _ = routing()
    # n2's clock is 1000 s ahead of ours; its frames normally take ~1 ms
    relay_at(r, sent_at=1000.0, now=0.001, message=(MsgType.RECV, ("asgi|c", 1)))
    fresh = relay_at(r, sent_at=1001.0, now=1.0015, message=(MsgType.SEND, (1, "asgi|c", b"a", 9)))
    assert core.queues.length("asgi|c") == 0 and fresh.out, "a fresh send is taken"
    stale_by = r.fresh_within() + 0.1
    late = relay_at(
        r, sent_at=1002.0, now=2.001 + stale_by, message=(MsgType.SEND, (2, "asgi|c", b"b", 9))
    )
    assert r.counters["late_sends_refused"] == 1
    assert late.out == [] and core.queues.counters.enqueued == 1, "the late send was not taken"


def relay_at(r: Routing, *, sent_at: float, now: float, message: Message) -> Fx:
    fx = Fx()
    relay = Relay("n2", START, b"client-1", "tagtagtag0", 60.0, 1, (message,), sent_at)
    r.handle(relay, now, fx)
    return fx


def test_a_relayed_send_is_answered_at_its_deadline_even_if_its_owner_dies_sooner() -> None:
    """The owner may be frozen, not dead: it still takes the send until
    ``fresh_within``; so the origin answers (and counts) only at its deadline."""
    r, core, table = routing()
    core.route = lambda channel: "n2"
    core.sessions.hello(b"A", "sessiontag", 1, Policy(60.0), 0.0)
    work = ClusterWork()
    core.handle(b"A", [(MsgType.SEND, (9, "asgi|far", b"x", 10))], 0.0, work)
    r.after_core(work, 0.0, Fx())
    del table.incarnations["n2"]
    died = Fx()
    r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START + 7), 0.5, died)
    assert not [o for o in died.out if o[0] == b"A"], "not answered at the death"
    deadline = Fx()
    r.tick(r.answer_within(), deadline)
    assert (b"A", (MsgType.ACK, (9, 0))) in deadline.out
    assert r.counters["lost_unanswered"] == 1
    assert r.answer_within() > r.fresh_within() > 0


def survivor(me: str) -> tuple[Routing, FakeTable]:
    core = NodeCore(CoreSettings(me, "aaaaaa", str(START), 3.0, 1 << 20))
    table = FakeTable({"n1": START, "n2": START, "n3": START}, node_id=me)
    r = Routing(core, table)  # type: ignore[arg-type]
    r.handle(Load("n2", {"channels": 1, "queued": 5, "drops": {}}), 0.0, Fx())
    del table.incarnations["n2"]
    r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START), 1.0, Fx())
    return r, table


def test_what_died_with_a_node_is_counted_once_by_one_survivor() -> None:
    """Never heard of again: its last reported queue is counted lost, after
    ``presume_lost_after``, by the first survivor by id only."""
    counted = []
    for me in ("n1", "n3"):
        r, _ = survivor(me)
        r.tick(1.0, Fx())
        assert r.counters["lost_in_dead_nodes"] == 0, "not yet: it may be frozen"
        r.tick(1.0 + r.presume_lost_after(), Fx())
        r.tick(2.0 + r.presume_lost_after(), Fx())
        counted.append(r.counters["lost_in_dead_nodes"])
    assert counted == [5, 0]


def test_a_node_that_ended_its_life_in_place_reports_exactly_what_it_lost() -> None:
    r, table = survivor("n1")
    renewed = START + RESTART_GAP + 5
    table.incarnations["n2"] = renewed
    r.on_member_event(MemberEvent(EventKind.UPDATED, "n2", "tcp://n2:1", renewed), 2.0, Fx())
    report = {"channels": 0, "queued": 0, "drops": {}, "fenced": [START, 7]}
    for _ in range(3):  # (every load report says it; it counts once)
        r.handle(Load("n2", dict(report)), 2.5, Fx())
    r.tick(100.0, Fx())
    assert r.counters["lost_in_dead_nodes"] == 7


def test_a_node_back_in_the_same_life_lost_nothing() -> None:
    """A healed partition: it held on to everything (nothing is counted)."""
    r, table = survivor("n1")
    table.incarnations["n2"] = START + 1  # refuted: the same life
    r.on_member_event(MemberEvent(EventKind.ALIVE, "n2", "tcp://n2:1", START + 1), 2.0, Fx())
    r.handle(Load("n2", {"channels": 1, "queued": 5, "drops": {}}), 2.5, Fx())
    r.tick(100.0, Fx())
    assert r.counters["lost_in_dead_nodes"] == 0


def receiving_far() -> tuple[Routing, NodeCore, FakeTable, Fx]:
    """Our client ``A`` waits on ``asgi|far``, which n2 owns: its credit went there."""
    r, core, table = routing()
    r.refresh()
    far = next(f"asgi|far{i}" for i in range(100) if r.route(f"asgi|far{i}") == "n2")
    core.route = r.route
    core.sessions.hello(b"A", "sessiontag", 1, Policy(60.0), 0.0)
    work = ClusterWork()
    core.handle(b"A", [(MsgType.RECV, (far, 5))], 0.0, work)
    fx = Fx()
    r.after_core(work, 0.0, fx)
    [(owner, msg)] = fx.peers
    assert owner == "n2" and isinstance(msg, Relay) and msg.messages == ((MsgType.RECV, (far, 5)),)
    return r, core, table, fx


def regranted(fx: Fx) -> list[tuple[str, Message]]:
    return [
        (owner, m)
        for owner, msg in fx.peers
        if isinstance(msg, Relay)
        for m in msg.messages
        if m[0] == MsgType.RECV
    ]


def test_credit_held_by_a_life_that_ended_unseen_is_granted_to_the_next() -> None:
    """kill -9 and a supervisor's restart, faster than failure detection (or
    a leave whose LEFT and handover were lost with its connections): the
    owner is back as a new life that never had our client's credit. Without
    it granted again the receive waits forever on a channel the new life
    queues for (simulation seed 38: plans/restart-before-death-credit.json)."""
    r, _, table, first = receiving_far()
    [(_, (_, (far, _)))] = regranted(first)
    joined = MemberEvent(EventKind.JOINED, "n2", "tcp://n2:1", START + 7)
    r.on_member_event(joined, 0.1, Fx())
    refuted = Fx()  # the same life, a refutation: nothing to grant again
    table.incarnations["n2"] = START + 8
    r.on_member_event(MemberEvent(EventKind.UPDATED, "n2", "tcp://n2:1", START + 8), 0.2, refuted)
    assert regranted(refuted) == []
    restarted = START + 8 + RESTART_GAP + 1
    table.incarnations["n2"] = restarted
    back = Fx()
    r.on_member_event(MemberEvent(EventKind.UPDATED, "n2", "tcp://n2:1", restarted), 0.3, back)
    assert regranted(back) == [("n2", (MsgType.RECV, (far, 5)))]
    assert r.counters["credit_regranted"] == 1


def test_credit_is_granted_again_when_this_node_learns_it_was_declared_dead() -> None:
    """This node was slow (or cut off) and its peers declared it dead: each
    forgot our clients there, their credit with them; this node refutes and
    stays in its life, so it grants that credit again, once per incarnation
    declared dead (simulation seed 75, a 0.3 s lag)."""
    r, _, _, _ = receiving_far()
    said = MemberEvent(EventKind.DECLARED_DEAD, "n1", "tcp://n1:1", START, "n2 said dead")
    again = Fx()
    r.on_member_event(said, 1.0, again)
    assert len(regranted(again)) == 1 and regranted(again)[0][0] == "n2"
    twice = Fx()
    r.on_member_event(said, 1.1, twice)  # (every peer's claim is heard)
    assert regranted(twice) == []
    older = Fx()  # a claim about an earlier life of this id is not about us
    r.on_member_event(
        MemberEvent(EventKind.DECLARED_DEAD, "n1", "tcp://n1:1", START - RESTART_GAP), 1.2, older
    )
    assert regranted(older) == []
