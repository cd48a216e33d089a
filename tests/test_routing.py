"""Routing's bookkeeping, pure: a fake member table and a real ``NodeCore``.

What a node keeps for other nodes' clients (virtual connections, memberships
held as ``node@incarnation/session``) must survive that node refuting a
suspicion (its incarnation +1) and go when it restarts (a new start time);
relays from its earlier life are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from zchannels.node.core import MAX_HOPS, ClusterWork, CoreSettings, NodeCore, Out
from zchannels.node.effects import EVERYONE, Fx
from zchannels.node.membership import EventKind, Member, MemberEvent, MembershipConfig, State
from zchannels.node.ownership import Ownership, tag_of
from zchannels.node.peer_messages import (
    ConnGone,
    Handoff,
    Load,
    Relay,
    RelayBack,
    RelayLost,
    Reservations,
)
from zchannels.node.peer_wire import decode_peer, encode_peer
from zchannels.node.routing import GONE_MEMORY, RELAY_FRESH_MARGIN, RESTART_GAP, Routing
from zchannels.node.sessions import Policy

from zchannels.protocol import ErrorCode, Message, MsgType

START = 1_795_000_000_000  # a start incarnation (ms since the epoch)


class _Lives(dict[str, int]):
    """Live members' incarnations; a member deleted is remembered dead, as
    the member table keeps a dead member (until it is reaped)."""

    def __init__(self, lives: dict[str, int]) -> None:
        super().__init__(lives)
        self.dead: dict[str, int] = {}

    def __delitem__(self, node: str) -> None:
        self.dead[node] = self[node]
        super().__delitem__(node)

    def __setitem__(self, node: str, incarnation: int) -> None:
        self.dead.pop(node, None)
        super().__setitem__(node, incarnation)


@dataclass
class FakeTable:
    """The member table as routing reads it (live members, incarnations)."""

    incarnations: dict[str, int]
    node_id: str = "n1"
    incarnation: int = START
    config: MembershipConfig = field(default_factory=MembershipConfig.lan)
    #: members that left cleanly (not live; their names are parked)
    left: dict[str, int] = field(default_factory=dict)

    def live(self) -> list[str]:
        return sorted(self.incarnations)

    def __post_init__(self) -> None:
        self.incarnations = _Lives(self.incarnations)

    def member(self, node: str) -> Member | None:
        inc = self.incarnations.get(node)
        if inc is None and node in self.left:
            return Member(node, State.LEFT, self.left[node], f"tcp://{node}:1")
        dead = getattr(self.incarnations, "dead", {})
        if inc is None and node in dead:
            return Member(node, State.DEAD, dead[node], f"tcp://{node}:1")
        return None if inc is None else Member(node, State.ALIVE, inc, f"tcp://{node}:1")

    def unreached(self) -> list[str]:
        return []

    def members(self) -> list[Member]:
        dead = getattr(self.incarnations, "dead", {})
        names = sorted({*self.incarnations, *self.left, *dead})
        return [m for m in (self.member(n) for n in names) if m is not None]


def routing(first_seq: int = 0) -> tuple[Routing, NodeCore, FakeTable]:
    settings = CoreSettings("n1", "aaaaaa", str(START), 3.0, 1 << 20, first_seq=first_seq)
    core = NodeCore(settings)
    table = FakeTable({"n1": START, "n2": START + 7})
    r = Routing(core, table)  # type: ignore[arg-type]
    core.route = lambda channel: None  # this node owns everything here
    return r, core, table


def relay(r: Routing, inc: int, *messages: Message) -> Fx:
    fx = Fx()
    r.handle(Relay("n2", inc, b"client-1", "tagtagtag0", 60.0, 1, messages, 0.0), 0.0, fx)
    return fx


def test_relays_for_a_client_forgotten_in_the_same_step_are_dropped_and_counted() -> None:
    """Soak seed 138 (plans/joined-node-pool-holds-capacity-after-reset.json):
    sends another node's client relayed here were taken up (held relays) in
    the step that forgot that client; passed on as if it were this node's
    own, they carried its holder tag, no peer decoded the frame, and the
    link stalled. They are dropped; the reserved one is counted."""
    r, core, _ = routing()
    relay(r, START, (MsgType.RECV, ("asgi|c", 5)))
    [(vconn, virtual)] = r._virtual.items()
    r._forget_virtual(("n2", START, b"client-1"), 1.0, Fx())
    work = ClusterWork()
    for req in (0, 7):  # (a reserved send, and one its client waits on)
        work.relays.append(("n3", vconn, virtual.session, (MsgType.SEND, (req, "q", b"m", 10)), 2))
    fx = Fx()
    r.after_core(work, 1.0, fx)
    assert fx.peers == [], "nothing goes out for it"
    assert core.counters.dropped_dead_owner == 1
    assert r.counters["relays_for_forgotten_clients"] == 2


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


def test_relays_from_a_node_never_a_member_are_dropped_at_the_bound_and_counted() -> None:
    r, core, _ = routing()
    fx = Fx()
    reserved = (MsgType.SEND, (0, "asgi|c", b"p", 10))  # (no answer: only n9 knew of it)
    r.handle(Relay("n9", START, b"c", "tagtagtag0", 60.0, 1, (reserved,), 0.0), 0.0, fx)
    assert r._virtual == {} and fx.out == [] and fx.peers == [], "held, not taken"
    assert r.counters["from_strangers"] == 0
    assert r.next_deadline() <= r.answer_within()
    r.tick(r.answer_within(), Fx())
    assert r.counters["from_strangers"] == 1
    assert core.drops()["dead_owner"] == 1, "the reserved send it carried is counted"
    assert core.queues.length("asgi|c") == 0


def test_what_a_node_sends_before_it_is_a_member_is_taken_once_it_is() -> None:
    """Simulation seed 468: as a partition healed, a node granted a
    receive's credit to the channel's new owner, which had never heard of
    it (it had restarted meanwhile); dropped, the channel stalled."""
    r, core, table = routing()
    fx = Fx()
    credit = Relay(
        "n3", START + 9, b"c", "tagtagtag0", 60.0, 1, ((MsgType.RECV, ("asgi|c", 5)),), 0
    )
    r.handle(credit, 0.0, fx)
    assert r._virtual == {}
    table.incarnations["n3"] = START + 9
    joined = Fx()
    r.on_member_event(MemberEvent(EventKind.JOINED, "n3", "tcp://n3:1", START + 9), 0.1, joined)
    assert len(r._virtual) == 1 and r.counters["from_strangers_held"] == 1
    [vconn] = r._virtual
    assert core.queues.channels["asgi|c"].credits == {vconn: 5}
    r.tick(r.answer_within() + 1, Fx())
    assert r.counters["from_strangers"] == 0


def test_a_relayed_send_is_answered_back_through_the_clients_node() -> None:
    r, core, _ = routing()
    fx = relay(r, START, (MsgType.SEND, (4, "asgi|c", b"p", 10)))
    assert core.queues.length("asgi|c") == 1
    [(vconn, (mtype, fields))] = fx.out
    assert r.is_virtual(vconn) and mtype == MsgType.ACK and fields[0] == 4
    back = Fx()
    r.send_back(fx.out, back, 0.0)
    assert back.peers == [("n2", RelayBack("n1", b"client-1", ((MsgType.ACK, fields),)))]


def test_an_unanswered_relayed_send_is_answered_outcome_unknown_at_its_deadline() -> None:
    """The owner may have taken it (and be frozen, or its answer lost with a
    partition): counted lost, a send it had taken would be a drop that was
    delivered. The client's send() raises SendOutcomeUnknown; nothing is
    counted dropped."""
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
    [(conn, (mtype, (req, code, detail)))] = late.out
    assert (conn, mtype, req, code) == (b"A", MsgType.ERROR, 9, ErrorCode.OUTCOME_UNKNOWN)
    assert "may or may not have been taken" in detail
    assert r.counters["unanswered_sends"] == 1
    assert core.drops()["dead_owner"] == 0


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


def test_sends_relayed_from_a_life_this_node_holds_dead_are_refused() -> None:
    """Seed 6236 of the 10,000: n0 relayed its client's send 1 to this
    node (the owner) over a lagging link, then declared it dead and served
    the client's sends 2-4 itself; this node, which held n0 dead by then,
    took send 1 and delivered it after them once the views healed. A send
    from a life this node holds dead is refused (its origin answers its
    client that the outcome is unknown; a reserved send, which nobody
    answers, is counted here); what else the relay carries is taken, and
    the same life back (a refuted death) is served again."""
    r, core, table = routing()
    del table.incarnations["n2"]  # (declared dead here)
    fx = relay(
        r,
        START + 7,
        (MsgType.SEND, (5, "asgi|c", b"a", 9)),
        (MsgType.SEND, (0, "asgi|c", b"b", 9)),
        (MsgType.RECV, ("asgi|d", 1)),
    )
    assert core.queues.length("asgi|c") == 0 and core.queues.counters.enqueued == 0
    assert r.counters["sends_from_dead_refused"] == 2
    assert core.counters.dropped_dead_owner == 1, "the reserved send, once"
    assert not [o for o in fx.out if o[1][0] in (MsgType.ACK, MsgType.ERROR)]
    table.incarnations["n2"] = START + 8  # (it refuted the death)
    relay(r, START + 8, (MsgType.SEND, (6, "asgi|c", b"c", 9)))
    assert core.queues.counters.enqueued == 1 and r.counters["sends_from_dead_refused"] == 2


def relay_at(r: Routing, *, sent_at: float, now: float, message: Message) -> Fx:
    fx = Fx()
    relay = Relay("n2", START, b"client-1", "tagtagtag0", 60.0, 1, (message,), sent_at)
    r.handle(relay, now, fx)
    return fx


def _waiting_send(r: Routing, core: NodeCore) -> None:
    """Our client A's send (request 9) relayed to n2 at 0.0, unanswered."""
    core.route = lambda channel: "n2"
    core.sessions.hello(b"A", "sessiontag", 1, Policy(60.0), 0.0)
    work = ClusterWork()
    core.handle(b"A", [(MsgType.SEND, (9, "asgi|far", b"x", 10))], 0.0, work)
    r.after_core(work, 0.0, Fx())


def _answers_to_a(r: Routing, now: float) -> list[Out]:
    fx = Fx()
    r.tick(now, fx)
    return [o for o in fx.out if o[0] == b"A"]


def test_a_send_to_an_owner_declared_dead_is_answered_once_the_owner_would_refuse_it() -> None:
    """Issue 11 defect 3: the channel must serve again within a second of
    its owner's death, not when the answer bound (2.4 s) ends. The owner may
    be only frozen or cut off, and takes the send until ``fresh_within``
    after it was sent: so the origin answers (outcome unknown) then, plus
    the margin for the owner's estimate of the delay, and not before; the
    client's next send goes to the new owner and cannot be overtaken."""
    r, core, table = routing()
    _waiting_send(r, core)
    del table.incarnations["n2"]
    died = Fx()
    r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START + 7), 0.2, died)
    assert not [o for o in died.out if o[0] == b"A"], "not answered at the death"
    due = r.fresh_within() + RELAY_FRESH_MARGIN
    assert r.next_deadline() <= due < r.answer_within() - 1.0
    assert _answers_to_a(r, due - 0.01) == []
    [(_, (mtype, (req, code, _)))] = _answers_to_a(r, due)
    assert (mtype, req, code) == (MsgType.ERROR, 9, ErrorCode.OUTCOME_UNKNOWN)
    assert r.counters["unanswered_sends"] == 1
    assert _answers_to_a(r, r.answer_within()) == [], "answered once"


def test_a_send_waiting_on_an_owner_declared_dead_late_is_answered_at_the_death() -> None:
    """Declared dead after the send is already too old for its owner to
    take: answered at the declaration."""
    r, core, table = routing()
    _waiting_send(r, core)
    del table.incarnations["n2"]
    r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START + 7), 1.5, Fx())
    assert r.next_deadline() <= 1.5
    [(_, (mtype, (req, code, _)))] = _answers_to_a(r, 1.5)
    assert (mtype, req, code) == (MsgType.ERROR, 9, ErrorCode.OUTCOME_UNKNOWN)


def test_a_send_waiting_on_an_owner_seen_in_a_new_life_is_answered_at_once() -> None:
    """A node back as a new process (kill -9 and a restart faster than
    failure detection) takes no frame meant for its earlier life: what our
    clients wait on there is answered at once, not at the bound."""
    r, core, table = routing()
    _waiting_send(r, core)
    restarted = START + 60_000
    table.incarnations["n2"] = restarted
    r.on_member_event(MemberEvent(EventKind.UPDATED, "n2", "tcp://n2:1", restarted), 0.3, Fx())
    [(_, (mtype, (req, code, _)))] = _answers_to_a(r, 0.3)
    assert (mtype, req, code) == (MsgType.ERROR, 9, ErrorCode.OUTCOME_UNKNOWN)


def test_a_send_waiting_on_an_owner_that_refuted_a_suspicion_waits_for_its_answer() -> None:
    """Same life (incarnation + 1): it may still answer; nothing sooner."""
    r, core, _ = routing()
    _waiting_send(r, core)
    r.on_member_event(MemberEvent(EventKind.UPDATED, "n2", "tcp://n2:1", START + 8), 0.3, Fx())
    assert _answers_to_a(r, r.answer_within() - 0.01) == []
    assert len(_answers_to_a(r, r.answer_within())) == 1


def survivor(me: str) -> tuple[Routing, FakeTable]:
    core = NodeCore(CoreSettings(me, "aaaaaa", str(START), 3.0, 1 << 20))
    table = FakeTable({"n1": START, "n2": START, "n3": START}, node_id=me)
    r = Routing(core, table)  # type: ignore[arg-type]
    r.handle(Load("n2", {"channels": 1, "queued": 5, "drops": {}}), 0.0, Fx())
    del table.incarnations["n2"]
    r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START), 1.0, Fx())
    return r, table


def n2_ended_in_place(
    r: Routing, table: FakeTable, renewed: int, lost: int, seen: float, reported: float
) -> None:
    """n2 is seen (at ``seen``) in the life after one it ended in place,
    and its fence report (at ``reported``) says that life lost ``lost``."""
    table.incarnations["n2"] = renewed
    r.on_member_event(MemberEvent(EventKind.UPDATED, "n2", "tcp://n2:1", renewed), seen, Fx())
    fenced = {"channels": 0, "queued": 0, "drops": {}, "fenced": [START, lost]}
    r.handle(Load("n2", fenced), reported, Fx())


def test_what_died_with_a_node_is_counted_once_by_one_survivor() -> None:
    """Never heard of again: its last reported queue is counted lost, after
    ``presume_dead_after``, by the first survivor by id only."""
    counted = []
    for me in ("n1", "n3"):
        r, _ = survivor(me)
        r.tick(1.0, Fx())
        assert r.counters["lost_in_dead_nodes"] == 0, "not yet: it may be frozen"
        r.tick(1.0 + r.presume_dead_after(), Fx())
        r.tick(2.0 + r.presume_dead_after(), Fx())
        counted.append(r.counters["lost_in_dead_nodes"])
    assert counted == [5, 0]


def test_the_survivor_in_its_oldest_life_counts_not_one_just_restarted() -> None:
    """Seed 68: n1 was killed and restarted just before n2 died; n1 has no
    load report of n2's, n3 has. n3, in its older life, counts (not n1,
    first by id): exactly once between them."""
    counted = []
    for me in ("n1", "n3"):
        core = NodeCore(CoreSettings(me, "aaaaaa", str(START), 3.0, 1 << 20))
        incs = {"n1": START + 5 * RESTART_GAP, "n2": START, "n3": START}
        table = FakeTable(incs, node_id=me, incarnation=incs[me])
        r = Routing(core, table)  # type: ignore[arg-type]
        if me == "n3":  # (n1's new life never heard from n2)
            r.handle(Load("n2", {"channels": 1, "queued": 4, "drops": {}}), 0.0, Fx())
        del table.incarnations["n2"]
        r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START), 1.0, Fx())
        r.tick(1.0 + r.presume_dead_after(), Fx())
        counted.append(r.counters["lost_in_dead_nodes"])
    assert counted == [0, 4]


def test_a_count_left_to_a_survivor_that_is_dead_too_is_made_when_it_is_found_dead() -> None:
    """n1 (first) should count n2's loss; it is dead too, not yet declared:
    n3 keeps the count, and makes it once n1 is declared dead."""
    r, table = survivor("n3")
    r.tick(1.0 + r.presume_dead_after(), Fx())
    assert r.counters["lost_in_dead_nodes"] == 0
    del table.incarnations["n1"]
    r.on_member_event(MemberEvent(EventKind.DEAD, "n1", "tcp://n1:1", START), 2.0, Fx())
    r.tick(2.0 + r.presume_dead_after(), Fx())
    assert r.counters["lost_in_dead_nodes"] == 5
    r.tick(10.0 + r.presume_dead_after(), Fx())
    assert r.counters["lost_in_dead_nodes"] == 5


def test_a_peer_only_heard_to_be_dead_may_count_first_too() -> None:
    """Simulation seed 6's third shrink (plans/new-life-told-a-peer-is-dead-
    keeps-a-count.json): n3 (a new life, say) knows n1 only as dead (it
    never declared it: gossip told it), and n2 dies. n1, in an older life,
    may be alive behind a partition and count n2's queue: n3 keeps the
    count until n1 says it counted, or for the answer bound."""
    r, table = survivor("n3")
    del table.incarnations["n1"]  # (dead in the table: no event here)
    r.refresh()
    t = 1.0 + r.presume_dead_after()
    r.tick(t, Fx())
    assert r.counters["lost_in_dead_nodes"] == 0, "n1 may count it"
    r.tick(t + r.answer_within() + 0.1, Fx())
    assert r.counters["lost_in_dead_nodes"] == 5


def test_a_life_declared_dead_whose_report_says_it_left_is_not_counted() -> None:
    """Simulation seed 19's shrink (plans/leave-into-partition-report-after-
    handover-says-it-left.json): n2 left inside a partition, its LEFT lost;
    n1 declared it dead (5 queued at its last report). After the heal its
    handover and the report after it came on its link: the report says that
    life left, so nothing is counted, not when its next life comes (n2
    counts, as it ends, what a peer did not acknowledge; n1 took it all).
    The same life's report without it leaves the death as it was."""
    for says_left, counted in ((True, 0), (False, 5)):
        r, table = survivor("n1")
        report: dict[str, object] = {"channels": 0, "queued": 0, "drops": {}}
        if says_left:
            report["left"] = [["n2", START]]
        r.handle(Load("n2", report), 1.5, Fx())
        renewed = START + 60 * RESTART_GAP
        table.incarnations["n2"] = renewed
        r.on_member_event(MemberEvent(EventKind.ALIVE, "n2", "tcp://n2:1", renewed), 2.0, Fx())
        r.handle(Load("n2", {"channels": 0, "queued": 0, "drops": {}}), 2.1, Fx())
        r.tick(100.0, Fx())
        assert r.counters["lost_in_dead_nodes"] == counted, says_left


def test_a_next_life_says_its_last_one_left_and_no_peer_counts_that_life() -> None:
    """Kill-free simulation seeds 858 and 3176: n2 left alone in a partition
    (or behind packet loss), its LEFT and its report after the handover
    lost; it counted, as it ended, what it could not hand over. n1 declared
    it dead (5 queued at its last report) and would count those 5 as well
    when n2's next life came. The next process found its note (``state_dir``)
    and says that life left in its reports, for as long as a peer may hold
    the death unsettled: nothing is counted. Without the note: 5."""
    for noted, counted in ((True, 0), (False, 5)):
        r, table = survivor("n1")
        renewed = START + 60 * RESTART_GAP
        core = NodeCore(CoreSettings("n2", "aaaaaa", str(renewed), 3.0, 1 << 20))
        n2_table = FakeTable({"n1": START, "n2": renewed}, node_id="n2", incarnation=renewed)
        next_life = Routing(core, n2_table)  # type: ignore[arg-type]
        if noted:
            next_life.previous_left(START + 3, 1.9)  # (refuted thrice before it left)
        report = next_life._report(2.0)
        assert (["n2", START + 3] in report.get("left", [])) == noted
        table.incarnations["n2"] = renewed
        r.on_member_event(MemberEvent(EventKind.ALIVE, "n2", "tcp://n2:1", renewed), 2.0, Fx())
        r.handle(Load("n2", report), 2.1, Fx())
        r.tick(100.0, Fx())
        assert r.counters["lost_in_dead_nodes"] == counted, noted
        # said for as long as a peer may hold that death, then no more
        later = next_life._report(1.9 + next_life.presume_dead_after() - 0.01)
        assert (["n2", START + 3] in later.get("left", [])) == noted
        gone = next_life._report(1.9 + next_life.presume_dead_after())
        assert ["n2", START + 3] not in gone.get("left", [])


def test_a_next_life_says_what_its_crashed_life_held_and_that_is_counted() -> None:
    """A SIGKILLed life's loss was its last load report (5 queued here), up
    to a report interval old: what came or went since was counted twice or
    not at all (the largest term of the simulation's SIGKILL failures). The
    next process found the held record its last life kept after every step
    (``held_record``) and says in its reports what that life held as it
    died (``crashed``): the survivor that counts it counts that, more (8) or
    less (2) than the report; without a record, the report (5)."""
    for held, counted in ((8, 8), (2, 2), (None, 5)):
        r, table = survivor("n1")  # (n2's life START declared dead, 5 queued)
        renewed = START + 60 * RESTART_GAP
        core = NodeCore(CoreSettings("n2", "aaaaaa", str(renewed), 3.0, 1 << 20))
        n2_table = FakeTable({"n1": START, "n2": renewed}, node_id="n2", incarnation=renewed)
        next_life = Routing(core, n2_table)  # type: ignore[arg-type]
        if held is not None:
            next_life.previous_crash(START, held)
        report = next_life._report(2.0)
        assert report.get("crashed") == (None if held is None else [START, held])
        assert "fenced" not in report  # (its clients kept nothing: only the count)
        table.incarnations["n2"] = renewed
        r.on_member_event(MemberEvent(EventKind.ALIVE, "n2", "tcp://n2:1", renewed), 2.0, Fx())
        [wire] = decode_peer(encode_peer(Load("n2", report)))  # (the key survives the codec)
        assert isinstance(wire, Load)
        r.handle(wire, 2.1, Fx())
        r.tick(100.0, Fx())
        assert r.counters["lost_in_dead_nodes"] == counted, held
        r.handle(Load("n2", next_life._report(3.0)), 3.1, Fx())
        assert r.counters["lost_in_dead_nodes"] == counted, "counted once"


def test_a_life_whose_next_died_before_reporting_waits_for_how_it_ended() -> None:
    """Kill-free simulation seed 1272 (6 ops): n2 left behind 60 % loss and
    came back into the same loss; n1 declared its next life dead before any
    report of it came, and counted the life that left by its last report
    (5), as the leaver counted its handover. That life now waits: the next
    life back in the same life says it left (nothing counted), or says
    nothing of it (a kill: 5), or is never heard (5 once the earlier life's
    presumption runs out)."""
    for after, counted in (("left", 0), ("report", 5), ("nothing", 5)):
        r, table = survivor("n1")  # (n2's life START declared dead, 5 queued)
        renewed = START + 60 * RESTART_GAP
        table.incarnations["n2"] = renewed
        r.on_member_event(MemberEvent(EventKind.ALIVE, "n2", "tcp://n2:1", renewed), 1.5, Fx())
        del table.incarnations["n2"]
        r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", renewed), 2.5, Fx())
        r.tick(2.6, Fx())
        assert r.counters["lost_in_dead_nodes"] == 0, "how did it end?"
        if after != "nothing":
            table.incarnations["n2"] = renewed + 1  # (back: it refuted)
            r.on_member_event(
                MemberEvent(EventKind.ALIVE, "n2", "tcp://n2:1", renewed + 1), 3.0, Fx()
            )
            report: dict[str, object] = {"channels": 0, "queued": 0}
            if after == "left":
                report["left"] = [["n2", START]]
            r.handle(Load("n2", report), 3.1, Fx())
            assert r.counters["lost_in_dead_nodes"] == counted, after
        for t in (1.0 + r.presume_dead_after(), 100.0):
            r.tick(t, Fx())
        assert r.counters["lost_in_dead_nodes"] == counted, after


def test_a_note_of_a_life_not_before_this_one_is_not_said() -> None:
    core = NodeCore(CoreSettings("n2", "aaaaaa", str(START), 3.0, 1 << 20))
    r = Routing(core, FakeTable({"n2": START}, node_id="n2"))  # type: ignore[arg-type]
    r.previous_left(START, 1.0)
    assert "left" not in r._report(1.5)


def _n2_ended_and_n3_may_have_counted(r: Routing, table: FakeTable, n3_says: bool) -> int:
    """n2 ended its life in place (5 lost, its fence report in at 2.1), n3
    may have counted it: nothing is counted here at once; n3's report says
    it did (``n3_says``), or nobody does. Returns what was counted here by
    the end."""
    n2_ended_in_place(r, table, START + RESTART_GAP + 1, 5, 2.05, 2.1)
    r.tick(2.1, Fx())
    assert r.counters["lost_in_dead_nodes"] == 0, "n3 may have counted it"
    if n3_says:
        tally = {"channels": 0, "queued": 0, "drops": {}, "tallied": [["n2", START, 1 << 62, 5]]}
        r.handle(Load("n3", tally), 2.3, Fx())
    for t in (2.1 + r.answer_within(), 40.0):
        r.tick(t, Fx())
    return r.counters["lost_in_dead_nodes"]


def test_a_first_survivor_held_dead_by_a_peer_waits_for_that_peers_count() -> None:
    """Kill-free simulation seed 100 (6 ops): n1 was cut off alone, and n3
    held it dead; n2 froze, was declared dead, and ended its life in place
    (5 lost, its fence report). n3, first in its view, counted the report at
    once; n1 heard it after the heal, after it saw n3 live, first by id in
    its view: it counted as well. Having refuted its own death, n1 now keeps
    the count for the answer bound: n3's report says it counted (sent soon
    after n3 saw n1 back: below), and nothing is counted twice. Nobody
    says so: n1 counts it then."""
    for n3_says, counted in ((True, 0), (False, 5)):
        r, table = survivor("n1")
        r.on_member_event(
            MemberEvent(EventKind.REFUTED, "n1", "tcp://n1:1", START + 1, claim=State.DEAD),
            2.0,
            Fx(),
        )
        assert _n2_ended_and_n3_may_have_counted(r, table, n3_says) == counted, n3_says


def test_a_first_survivor_that_held_a_peer_dead_waits_for_that_peers_count() -> None:
    """Kill-free simulation seed 469 (9 ops): 30 % loss on n1's links; n1
    and n3 each declared the other dead, n1 heard of n3's declaration only
    after it counted; n2 froze and ended its life in place. n3, first in its
    view, counted n2's report; n1, first in its own once n3 was back, counted
    n2's fence report as well. A peer back from a death declared here may
    have held this node dead too: n1 keeps the count for the answer bound,
    and n3's report says it counted. Nobody says so: n1 counts it then."""
    for n3_says, counted in ((True, 0), (False, 5)):
        r, table = survivor("n1")
        del table.incarnations["n3"]
        r.on_member_event(MemberEvent(EventKind.DEAD, "n3", "tcp://n3:1", START), 1.5, Fx())
        table.incarnations["n3"] = START + 1
        r.on_member_event(MemberEvent(EventKind.ALIVE, "n3", "tcp://n3:1", START + 1), 2.0, Fx())
        assert _n2_ended_and_n3_may_have_counted(r, table, n3_says) == counted, n3_says


def test_a_survivor_that_counted_reports_soon_to_a_peer_it_held_dead_when_it_is_back() -> None:
    """The other side of seed 100: n3 counted n2's loss while it held n1
    dead; when n1 is back, a report (with what n3 counted) goes soon, not at
    the next interval, so n1 hears it before it counts the same."""
    r, table = survivor("n1")  # (n1 first: it counts n2's 5)
    r.tick(1.0 + r.presume_dead_after(), Fx())
    assert r.counters["lost_in_dead_nodes"] == 5
    t = 1.5 + r.presume_dead_after()
    r.tick(t, Fx())  # (its report of the count goes)
    del table.incarnations["n3"]
    r.on_member_event(MemberEvent(EventKind.DEAD, "n3", "tcp://n3:1", START), t + 0.1, Fx())
    r.tick(t + 0.2, Fx())
    deadline = r.next_deadline()
    table.incarnations["n3"] = START + 1
    r.on_member_event(MemberEvent(EventKind.ALIVE, "n3", "tcp://n3:1", START + 1), t + 0.3, Fx())
    assert r.next_deadline() < deadline and r.next_deadline() <= t + 0.3 + r._soon
    fx = Fx()
    r.tick(r.next_deadline(), fx)
    [report] = [m.load for _, m in fx.peers if isinstance(m, Load)]
    assert report["tallied"][0][:2] == ["n2", START]


def test_a_node_that_ended_its_life_in_place_still_reports_the_leaves_it_heard() -> None:
    """Simulation seed 6's second shrink (plans/fence-still-reports-a-leave-
    it-heard.json): n2 left, n1 cut off never heard it and declared it dead;
    n0 heard the LEFT (n2's queue was handed to it), froze, and ended its
    life in place. Its next life's reports still say n2's life left, so n1
    does not count n2's last reported queue as well as n0's fence report."""
    core = NodeCore(CoreSettings("n0", "aaaaaa", str(START), 3.0, 1 << 20))
    table = FakeTable({"n0": START, "n1": START, "n2": START}, node_id="n0")
    old = Routing(core, table)  # type: ignore[arg-type]
    del table.incarnations["n2"]
    old.on_member_event(MemberEvent(EventKind.LEFT, "n2", "tcp://n2:1", START), 1.0, Fx())
    renewed = Routing(core, table)  # type: ignore[arg-type]
    renewed.carry_counts(old)
    assert ["n2", START] in renewed._report(2.0)["left"]


def test_a_leaving_node_reports_its_own_life_among_those_that_left() -> None:
    core = NodeCore(CoreSettings("n1", "aaaaaa", str(START), 3.0, 1 << 20))
    r = Routing(core, FakeTable({"n1": START, "n2": START}, node_id="n1"))  # type: ignore[arg-type]
    fx = Fx()
    r.leave(1.0, fx)
    [report] = [m.load for _, m in fx.peers if isinstance(m, Load)]
    assert ["n1", START] in report["left"]


def test_a_death_that_a_peer_cut_off_too_saw_as_a_leave_is_not_counted() -> None:
    """Simulation seed 37 (``plans/leave-into-partition-handoff``): n3, cut
    off from n1 and n2, declared both dead; n2 had left, and n1 heard it (n2
    counted, as it ended, the handover that never reached n3). n2's next
    life ends that life at n3 while n1's end is not settled: n1 may know how
    it ended, so the count waits. n1 back in the same life says n2 left:
    nothing is counted. n1 back not knowing, or dead for good (presumed),
    n3 counts n2's last reported queue as it would have when n2's next life
    came (it was the first survivor then: n1, cut off, had an older report
    of n2's; seed 207 shrunk)."""
    for n1_says, counted in (("left", 0), ("nothing", 5), ("dead", 5 + 2)):
        core = NodeCore(CoreSettings("n3", "aaaaaa", str(START), 3.0, 1 << 20))
        table = FakeTable({"n1": START, "n2": START, "n3": START}, node_id="n3")
        r = Routing(core, table)  # type: ignore[arg-type]
        r.handle(Load("n1", {"channels": 1, "queued": 2, "drops": {}}), 0.0, Fx())
        r.handle(Load("n2", {"channels": 1, "queued": 5, "drops": {}}), 0.0, Fx())
        del table.incarnations["n1"]
        r.on_member_event(MemberEvent(EventKind.DEAD, "n1", "tcp://n1:1", START), 0.5, Fx())
        del table.incarnations["n2"]
        r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START), 1.0, Fx())
        renewed = START + 60 * RESTART_GAP  # (n2's next life, a minute later)
        table.incarnations["n2"] = renewed
        r.on_member_event(MemberEvent(EventKind.ALIVE, "n2", "tcp://n2:1", renewed), 1.5, Fx())
        r.handle(Load("n2", {"channels": 0, "queued": 0, "drops": {}}), 1.6, Fx())
        assert r.counters["lost_in_dead_nodes"] == 0, "n1 may know how it ended"
        if n1_says != "dead":
            for n in ("n1", "n3"):  # (each had declared the other dead: refuted)
                table.incarnations[n] = START + 1
            r.on_member_event(
                MemberEvent(EventKind.ALIVE, "n1", "tcp://n1:1", START + 1), 2.0, Fx()
            )
            report = {"channels": 1, "queued": 2, "drops": {}}
            if n1_says == "left":
                report["left"] = [["n2", START]]
            r.handle(Load("n1", report), 2.1, Fx())
        for t in (3.0, 0.5 + r.presume_lost_after(), 20.0, 40.0):
            r.tick(t, Fx())
        assert r.counters["lost_in_dead_nodes"] == counted, n1_says


def test_a_leave_heard_after_the_death_was_declared_counts_nothing() -> None:
    """The LEFT reached this node after it declared the life dead (gossip
    from a peer that heard it, after a partition healed): the leaver counted
    what it could not hand over, nothing is counted here."""
    r, _ = survivor("n1")
    r.on_member_event(MemberEvent(EventKind.LEFT, "n2", "tcp://n2:1", START), 1.5, Fx())
    r.tick(1.0 + r.presume_lost_after(), Fx())
    r.tick(40.0, Fx())
    assert r.counters["lost_in_dead_nodes"] == 0


def test_a_count_the_first_survivor_says_it_made_is_not_made_again() -> None:
    """Seed 27: n1 (first) counted n2's loss and said so in its load report,
    then was killed itself: n3, first then, drops the count it kept for n1
    instead of making it again. A report n1 makes only later (this node saw
    the death first) works as well: the kept count goes when it comes."""
    r, table = survivor("n3")
    r.tick(1.0 + r.presume_dead_after(), Fx())  # (n3 keeps 5 for n1)
    counted = {"channels": 0, "queued": 0, "drops": {}, "counted": [["n2", START]]}
    r.handle(Load("n1", counted), 1.5 + r.presume_dead_after(), Fx())
    del table.incarnations["n1"]
    r.on_member_event(MemberEvent(EventKind.DEAD, "n1", "tcp://n1:1", START), 2.0, Fx())
    r.tick(2.0 + r.presume_dead_after(), Fx())
    r.tick(10.0 + r.presume_dead_after(), Fx())
    assert r.counters["lost_in_dead_nodes"] == 0
    # and the one that counts says so, soon
    first, _ = survivor("n1")
    fx = Fx()
    first.tick(1.0 + first.presume_dead_after(), fx)
    first.tick(1.0 + first.presume_dead_after() + first._soon, fx)
    reports = [m.load for _, m in fx.peers if isinstance(m, Load)]
    assert first.counters["lost_in_dead_nodes"] == 5
    assert reports and reports[-1]["counted"] == [["n2", START]]


# -- a dead life is counted by the newest report of it any survivor holds ------


def survivors_of_n2(
    heard: dict[str, int], declared: tuple[str, ...] = ("n1", "n3")
) -> dict[str, tuple[Routing, FakeTable]]:
    """n1 (first by id) and n3 survive n2: each heard n2's load reports up
    to the number ``heard[me]``, report k saying k - 1 queued (cumulative:
    nothing left n2 meanwhile); those in ``declared`` declared it dead."""
    made = {}
    for me in ("n1", "n3"):
        core = NodeCore(CoreSettings(me, "aaaaaa", str(START), 3.0, 1 << 20))
        table = FakeTable({"n1": START, "n2": START, "n3": START}, node_id=me)
        r = Routing(core, table)  # type: ignore[arg-type]
        for no in range(1, heard[me] + 1):
            r.handle(Load("n2", {"channels": 1, "queued": no - 1, "n": no}), 0.0, Fx())
        if me in declared:
            n2_declared_dead(r, table, 1.0)
        made[me] = (r, table)
    return made


def n2_declared_dead(r: Routing, table: FakeTable, now: float) -> None:
    del table.incarnations["n2"]
    r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START), now, Fx())


def n2_back_as_a_new_process(survivors: dict[str, tuple[Routing, FakeTable]]) -> None:
    """n2's life ended: it is back as a new process, its first report in."""
    renewed = START + 60 * RESTART_GAP
    for r, table in survivors.values():
        table.incarnations["n2"] = renewed
        r.on_member_event(MemberEvent(EventKind.ALIVE, "n2", "tcp://n2:1", renewed), 1.5, Fx())
        r.handle(Load("n2", {"channels": 0, "queued": 0, "n": 1}), 1.6, Fx())


def tell(source: Routing, to: Routing, now: float) -> None:
    """``source``'s load report reaches ``to``."""
    to.handle(Load(source.me, source._report(now)), now, Fx())


def counted_by(survivors: dict[str, tuple[Routing, FakeTable]]) -> dict[str, int]:
    return {me: r.counters["lost_in_dead_nodes"] for me, (r, _) in survivors.items()}


def talk_until(survivors: dict[str, tuple[Routing, FakeTable]], end: float) -> None:
    """Every live survivor ticks and reports to the others, until ``end``."""
    for t in (2.0, 3.0, 5.0, 10.0, 40.0, 80.0, end):
        live = [r for r, _ in survivors.values() if r.me in r.table.live()]
        for r in live:
            r.tick(t, Fx())
            for other in live:
                if other is not r:
                    tell(r, other, t)


def test_a_dead_life_is_counted_by_the_newest_report_any_survivor_holds() -> None:
    """Simulation seed 266 (plans/leaver-alone-in-partition-counted-from-
    the-newest-report.json): the survivor that counts a dead life (here n1,
    the first) held an older report of it than another (n3, outranked),
    and the 7 messages the newer report said were counted by nobody. Every
    accepted message is delivered or counted once: the cluster counts a
    dead life once, by the newest report of it any survivor holds, in
    whichever order the survivors hear each other."""
    for first_speaks_first in (True, False):
        survivors = survivors_of_n2({"n1": 1, "n3": 8})
        n2_back_as_a_new_process(survivors)
        (first, _), (keeper, _) = survivors["n1"], survivors["n3"]
        assert counted_by(survivors) == {"n1": 0, "n3": 0}, "n1 counted by report 1"
        if first_speaks_first:
            tell(first, keeper, 1.7)
            keeper.tick(1.7 + keeper.answer_within(), Fx())
            assert keeper._count_later, "n3 keeps 7 until the first counts by report 8"
        tell(keeper, first, 1.8)
        assert counted_by(survivors) == {"n1": 7, "n3": 0}
        tell(first, keeper, 1.9)
        assert keeper._count_later == {}, "the first's count covers it"
        talk_until(survivors, 200.0)
        assert counted_by(survivors) == {"n1": 7, "n3": 0}, first_speaks_first


def test_a_newer_report_heard_before_the_count_is_the_one_counted() -> None:
    """The first survivor, told of a newer report of a death it has not
    settled yet, counts by that one when it settles."""
    survivors = survivors_of_n2({"n1": 3, "n3": 8})
    tell(survivors["n3"][0], survivors["n1"][0], 1.2)
    n2_back_as_a_new_process(survivors)
    assert counted_by(survivors) == {"n1": 7, "n3": 0}
    talk_until(survivors, 200.0)
    assert counted_by(survivors) == {"n1": 7, "n3": 0}


def test_a_survivor_with_an_older_report_than_the_first_counts_nothing() -> None:
    """n3 holds an older report of n2 (2 queued) than n1, the first (7):
    n1 counts 7 by its report, and n3, told by which report it counted,
    counts nothing, not even once n1 has died and it is the first."""
    survivors = survivors_of_n2({"n1": 8, "n3": 3})
    n2_back_as_a_new_process(survivors)
    (first, _), (keeper, table) = survivors["n1"], survivors["n3"]
    tell(first, keeper, 1.7)
    assert keeper._count_later == {}
    del table.incarnations["n1"]
    keeper.on_member_event(MemberEvent(EventKind.DEAD, "n1", "tcp://n1:1", START), 2.0, Fx())
    for t in (3.0, 10.0, 100.0):
        keeper.tick(t, Fx())
    assert counted_by(survivors) == {"n1": 7, "n3": 0}


def test_the_first_dead_before_it_hears_of_a_newer_report_leaves_the_rest_counted() -> None:
    """n1, the first, counted n2's life by an older report (2 of 7) and
    died before n3's newer one reached it: n3, first then, counts what its
    report adds to what n1 said it counted, 5."""
    survivors = survivors_of_n2({"n1": 3, "n3": 8})
    n2_back_as_a_new_process(survivors)
    (first, _), (keeper, table) = survivors["n1"], survivors["n3"]
    assert counted_by(survivors) == {"n1": 2, "n3": 0}
    tell(first, keeper, 1.7)
    del table.incarnations["n1"]
    keeper.on_member_event(MemberEvent(EventKind.DEAD, "n1", "tcp://n1:1", START), 3.0, Fx())
    for t in (3.0, 3.0 + keeper.answer_within(), 100.0):
        keeper.tick(t, Fx())
    assert counted_by(survivors) == {"n1": 2, "n3": 5}


def test_a_death_not_settled_when_the_next_life_dies_is_counted_first() -> None:
    """Simulation plans/lost-then-delivered.json (seed 0): n1, the first,
    frozen while n2 died, restarted and died again, declared both of n2's
    lives dead as it thawed. Its count of the first life gave way to the
    second's (one per node) and was never made; n3 held a newer report of
    the first (9 queued). The first life's death is settled as the second
    is declared (it ended), and n3's report counted by it: once no report
    of the second life says the first left (session 27: none came before
    the second was declared dead, so it waits for one, or for the first
    life's presumption, ``_earlier``)."""
    survivors = survivors_of_n2({"n1": 1, "n3": 10})
    (first, t1), (keeper, _) = survivors["n1"], survivors["n3"]
    n2_back_as_a_new_process({"n3": survivors["n3"]})
    assert keeper._count_later, "n3 keeps n2's 9 for the first survivor"
    renewed = START + 60 * RESTART_GAP
    t1.incarnations["n2"] = renewed  # (n1 hears of n2's next life only as it dies)
    del t1.incarnations["n2"]
    first.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", renewed), 2.0, Fx())
    tell(keeper, first, 2.1)
    assert counted_by(survivors) == {"n1": 0, "n3": 0}, "did the first life leave?"
    talk_until(survivors, 200.0)
    assert counted_by(survivors) == {"n1": 9, "n3": 0}


def test_a_newer_report_a_peer_holds_of_a_node_still_live_here_counts_at_its_death() -> None:
    """Frames reach a node in order, not with the member table's view: n1
    hears that n3 holds n2's report 8 (7 queued) of a death n1 has not
    declared yet (n2 is still live here, n1 heard only report 1). When n1
    declares it dead, it counts by report 8."""
    survivors = survivors_of_n2({"n1": 1, "n3": 8}, declared=("n3",))
    (first, t1), (keeper, _) = survivors["n1"], survivors["n3"]
    tell(keeper, first, 1.1)
    n2_declared_dead(first, t1, 1.2)
    n2_back_as_a_new_process(survivors)
    assert counted_by(survivors) == {"n1": 7, "n3": 0}
    talk_until(survivors, 200.0)
    assert counted_by(survivors) == {"n1": 7, "n3": 0}


def test_a_survivor_that_counts_none_keeps_it_for_a_newer_report_of_a_peer() -> None:
    """Simulation seed 266 unshrunk: a survivor that settles a death while
    another would count it keeps its count even when its report says none
    (it is outranked, or not the first): told of a peer's newer report, and
    the first after all (that peer dies before it counts), it counts by
    that report. Kept only when it says something, the 12 messages n0's
    newest report held were counted by nobody there."""
    survivors = survivors_of_n2({"n1": 8, "n3": 1})
    (first, _), (keeper, t3) = survivors["n1"], survivors["n3"]
    n2_back_as_a_new_process({"n3": survivors["n3"]})  # (n1 has not seen it yet)
    assert keeper._count_later, "n3 keeps its count of none for the first"
    tell(first, keeper, 1.7)  # (n1 holds report 8 of n2, 7 queued)
    del t3.incarnations["n1"]
    keeper.on_member_event(MemberEvent(EventKind.DEAD, "n1", "tcp://n1:1", START), 2.0, Fx())
    for t in (2.0, 2.0 + keeper.answer_within(), 100.0):
        keeper.tick(t, Fx())
    assert counted_by(survivors) == {"n1": 0, "n3": 7}


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


def test_a_fence_report_waits_for_a_peer_declared_dead_that_would_count_first() -> None:
    """Simulation seed 6's first shrink (plans/partition-healing-as-a-frozen-
    owner-ends-its-life-counted-once.json): n3 declared n1 dead (a partition)
    and n2 (frozen); n2 wakes, ends its life in place and reports its 7 lost
    as the partition heals. n1, first by id, may be alive and count them in
    its own view (where n3 is the dead one): n3 keeps the count until n1
    says it counted (then never), or for the answer bound (then it counts)."""
    for n1_counts, counted in ((True, 0), (False, 7)):
        r, table = survivor("n3")
        del table.incarnations["n1"]
        r.on_member_event(MemberEvent(EventKind.DEAD, "n1", "tcp://n1:1", START), 1.1, Fx())
        n2_ended_in_place(r, table, START + RESTART_GAP + 5, 7, 2.0, 2.0)
        r.tick(2.1, Fx())
        assert r.counters["lost_in_dead_nodes"] == 0, "n1 may count it"
        if n1_counts:  # (the partition healed: n1 back in its life, it counted)
            for n in ("n1", "n3"):
                table.incarnations[n] = START + 1
            r.on_member_event(
                MemberEvent(EventKind.ALIVE, "n1", "tcp://n1:1", START + 1), 2.2, Fx()
            )
            report = {"channels": 1, "queued": 0, "drops": {}, "counted": [["n2", START]]}
            r.handle(Load("n1", report), 2.3, Fx())
        for t in (2.5, 2.0 + r.answer_within(), 2.1 + r.answer_within(), 20.0):
            r.tick(t, Fx())
        assert r.counters["lost_in_dead_nodes"] == counted, n1_counts


def test_a_node_back_in_the_same_life_lost_nothing() -> None:
    """A healed partition: it held on to everything (nothing is counted)."""
    r, table = survivor("n1")
    table.incarnations["n2"] = START + 1  # refuted: the same life
    r.on_member_event(MemberEvent(EventKind.ALIVE, "n2", "tcp://n2:1", START + 1), 2.0, Fx())
    r.handle(Load("n2", {"channels": 1, "queued": 5, "drops": {}}), 2.5, Fx())
    r.tick(100.0, Fx())
    assert r.counters["lost_in_dead_nodes"] == 0


def test_a_partition_longer_than_the_answer_bound_is_not_counted_when_it_heals() -> None:
    """Simulation seed 56 (shrunk: plans/partition-healed-after-presumption-
    not-counted.json): n0, cut off for 2.5 s, held 2 messages for a client
    of its own; its peers counted its last reported queue at 3x the answer
    bound (1.8 s there), and it came back in the same life and delivered
    them. The presumption waits as long as the member table remembers the
    dead (``dead_keep``: as long as a partition it reconnects after): back
    in the same life before then, nothing is counted; never heard of again,
    its last reported queue is."""
    r, table = survivor("n1")
    assert r.presume_dead_after() >= table.config.dead_keep > r.presume_lost_after()
    r.tick(1.0 + r.presume_lost_after(), Fx())
    assert r.counters["lost_in_dead_nodes"] == 0, "it may only be cut off"
    table.incarnations["n2"] = START + 1  # refuted: the same life
    back = MemberEvent(EventKind.ALIVE, "n2", "tcp://n2:1", START + 1)
    r.on_member_event(back, 2.0 + r.presume_lost_after(), Fx())
    r.tick(1.0 + r.presume_dead_after(), Fx())
    r.tick(100.0, Fx())
    assert r.counters["lost_in_dead_nodes"] == 0
    silent, _ = survivor("n1")
    silent.tick(1.0 + silent.presume_dead_after(), Fx())
    assert silent.counters["lost_in_dead_nodes"] == 5


def test_a_node_seen_back_in_the_same_life_is_not_presumed_lost_before_it_reports() -> None:
    """Simulation seed 50 (shrunk): n2 refuted its death and is back in the
    same life, but its next load report has not come when the presumption
    is due (the one it sent before this node saw it back was dropped): it
    holds what it had, nothing is counted; ended in place later, its fence
    report is counted as any is."""
    r, table = survivor("n1")
    table.incarnations["n2"] = START + 1  # refuted: the same life
    r.on_member_event(MemberEvent(EventKind.ALIVE, "n2", "tcp://n2:1", START + 1), 2.0, Fx())
    r.tick(1.0 + r.presume_dead_after(), Fx())
    r.tick(2.0 + r.presume_dead_after(), Fx())
    assert r.counters["lost_in_dead_nodes"] == 0
    fenced = {"channels": 0, "queued": 0, "drops": {}, "fenced": [START, 4]}
    r.handle(Load("n2", fenced), 3.0 + r.presume_dead_after(), Fx())
    r.tick(4.0 + r.presume_dead_after(), Fx())
    assert r.counters["lost_in_dead_nodes"] == 4


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
    # (at the new life's first load report: sent before it speaks links, a
    # plain frame a connection reset loses for good;
    # plans/kill-restart-reset-stalls.json)
    assert regranted(back) == []
    loaded = Fx()
    r.handle(Load("n2", {"queued": 0}), 0.4, loaded)
    assert regranted(loaded) == [("n2", (MsgType.RECV, (far, 5)))]
    assert r.counters["credit_regranted"] == 1


def test_credit_at_an_earlier_life_of_the_owner_is_granted_to_its_next() -> None:
    """The owner left cleanly and is back in a new life that owns the
    channel again; the handback of our client's credit (through this node)
    never came, or the channel came back to it first: the credit is
    recorded at the owner, but at its earlier life, and the new one never
    had it. Without it granted again the receive waits forever on the
    new life's queue (10,000-schedule soak, seed 8076: a stalled channel).
    Granted at the new life's next load report; a refutation is the same
    life, and nothing is granted again."""
    r, _, table, first = receiving_far()
    [(_, (_, (far, _)))] = regranted(first)
    life = table.incarnations["n2"]
    table.incarnations["n2"] = life + 1  # (a refuted suspicion: the same life)
    r.tick(1.0, Fx())
    assert r.counters["credit_regranted_new_life"] == 0
    del table.incarnations["n2"]
    table.left["n2"] = life + 1
    r.on_member_event(MemberEvent(EventKind.LEFT, "n2", "tcp://n2:1", life + 1), 1.0, Fx())
    restarted = life + RESTART_GAP + 5
    del table.left["n2"]
    table.incarnations["n2"] = restarted
    r.on_member_event(MemberEvent(EventKind.JOINED, "n2", "tcp://n2:1", restarted), 1.1, Fx())
    r.handle(Load("n2", {"queued": 0}), 1.2, Fx())  # (its first report)
    assert r._credit[(b"A", far)][0] == "n2", "recorded at n2, in its earlier life"
    checked = Fx()
    r.tick(1.2 + 2 * r.load_interval, checked)
    assert r.counters["credit_regranted_new_life"] == 1 and regranted(checked) == []
    loaded = Fx()
    r.handle(Load("n2", {"queued": 1}), 1.5, loaded)
    assert regranted(loaded) == [("n2", (MsgType.RECV, (far, 5)))]
    assert r._credit[(b"A", far)] == ["n2", 5, restarted]
    again = Fx()
    r.tick(2.0 + 2 * r.load_interval, again)
    assert regranted(again) == [] and r.counters["credit_regranted_new_life"] == 1


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


# -- send reservations move with their channel (issue 13, item 5) -------------


def cluster_node(me: str, live: tuple[str, ...], left: tuple[str, ...] = ()) -> Routing:
    core = NodeCore(CoreSettings(me, tag_of(me), str(START), 3.0, 1 << 20))
    table = FakeTable({n: START for n in live}, node_id=me, left={n: START for n in left})
    return Routing(core, table)  # type: ignore[arg-type]


def moving_name() -> str:
    """A channel n1 owns among n1, n2, n3 and n2 owns once n1 has left."""
    before = Ownership({n: tag_of(n) for n in ("n1", "n2", "n3")})
    after = Ownership({n: tag_of(n) for n in ("n2", "n3")})
    return next(
        name
        for name in (f"asgi|c{i}" for i in range(1000))
        if before.owner(name) == "n1" and after.owner(name) == "n2"
    )


def step(r: Routing, msg: object, now: float) -> Fx:
    """One peer message in, with the core's relays carried (as the cluster
    node's composer does)."""
    fx = Fx()
    r.handle(msg, now, fx)  # type: ignore[arg-type]
    while (work := fx.take_work()) is not None:
        r.after_core(work, now, fx)
    return fx


def from_n3(conn: bytes, now: float, *messages: Message) -> Relay:
    """Messages of a client on n3 (the holder's node), relayed."""
    return Relay("n3", START, conn, "tagtagtag0", 60.0, 1, messages, now)


def to(fx: Fx, node: str) -> list[object]:
    return [msg for target, msg in fx.peers if target == node]


def answers(r: Routing, fx: Fx, conn: bytes) -> list[Message]:
    """What the owner said to n3's client ``conn`` (its virtual connection)."""
    vconn = r._vconn_of[("n3", START, conn)]
    return [m for c, m in fx.out if c == vconn]


def test_a_send_reservation_moves_with_its_channel_and_its_sends_fit_there() -> None:
    """The old owner (n1) grants the holder (a client on n3) 2 reserved slots
    and then leaves; n2 takes the channel. Before, the reservation stayed
    behind: another sender's put took the promised room at n2 and the
    holder's reserved sends (fire and forget: its send() had returned) were
    refused there and counted full. Now it moves with the queue: n2 defers
    that put and asks the holder for the reservation; the reserved sends,
    one passed on by n1, one sent to n2 directly, fit; the put is then
    refused ChannelFull (told to its sender): exactly ``capacity`` held."""
    name, cap = moving_name(), 5
    r1 = cluster_node("n1", ("n1", "n2", "n3"))
    r2 = cluster_node("n2", ("n2", "n3"), left=("n1",))
    fx = step(r1, from_n3(b"holder", 0.0, (MsgType.SEND, (1, name, b"m0", cap))), 0.0)
    assert answers(r1, fx, b"holder") == [(MsgType.ACK, (1, 2))], "2 slots reserved"
    for req in (2, 3):
        fx = step(r1, from_n3(b"other", 0.1, (MsgType.SEND, (req, name, b"o", cap))), 0.1)
        assert answers(r1, fx, b"other") == [(MsgType.ACK, (req, 0))]
    assert r1.core.queues.held(name) == 3  # + 2 reserved: the pool is fully promised

    fx = Fx()
    r1.leave(0.2, fx)
    handed = to(fx, "n2")
    assert [type(m) for m in handed] == [Reservations, Handoff], "the reservation goes first"
    assert r1.core.queues.pools == {}, "nothing stays behind"
    for msg in handed:
        step(r2, msg, 0.21)
    assert r2.core.queues.held(name) == 3

    # another sender's put: it fits only if the reservation yields
    fx = step(r2, from_n3(b"other", 0.3, (MsgType.SEND, (4, name, b"o", cap))), 0.3)
    assert answers(r2, fx, b"other") == [], "deferred, not accepted over the promise"
    assert answers(r2, fx, b"holder") == [(MsgType.REVOKE, (name,))]
    # the holder's reserved sends: one by n3's stale view through n1, one direct
    passed = step(r1, from_n3(b"holder", 0.31, (MsgType.SEND, (0, name, b"r1", cap))), 0.31)
    [relay] = to(passed, "n2")
    assert isinstance(relay, Relay) and relay.origin == "n3" and relay.conn == b"holder"
    step(r2, relay, 0.32)
    step(r2, from_n3(b"holder", 0.33, (MsgType.SEND, (0, name, b"r2", cap))), 0.33)
    assert r2.core.queues.held(name) == 5 and r2.core.drops()["full"] == 0
    # then its answer to the REVOKE (after its sends, on the same path)
    fx = step(r2, from_n3(b"holder", 0.34, (MsgType.REVOKED, (name,))), 0.34)
    assert answers(r2, fx, b"other") == [(MsgType.ERROR, (4, ErrorCode.CHANNEL_FULL, name))]
    assert r2.core.queues.held(name) == 5 == r2.core.queues.length(name)
    assert r2.core.drops()["full"] == 1, "the one refusal its sender was told of"
    assert r1.core.drops()["full"] == 0


def test_a_put_waiting_for_a_reservation_is_decided_by_the_new_owner() -> None:
    """A put deferred at the old owner (it fits only if the holder gives its
    reservation up) when the channel moves is sent on to the new owner with
    the reservation, and decided there once the holder answered: its one
    reserved send and the put both fit, nothing is counted."""
    name, cap = moving_name(), 5
    r1 = cluster_node("n1", ("n1", "n2", "n3"))
    r2 = cluster_node("n2", ("n2", "n3"), left=("n1",))
    step(r1, from_n3(b"holder", 0.0, (MsgType.SEND, (1, name, b"m0", cap))), 0.0)
    for req in (2, 3):
        step(r1, from_n3(b"other", 0.1, (MsgType.SEND, (req, name, b"o", cap))), 0.1)
    fx = step(r1, from_n3(b"other", 0.15, (MsgType.SEND, (4, name, b"o", cap))), 0.15)
    assert answers(r1, fx, b"holder") == [(MsgType.REVOKE, (name,))]
    fx = Fx()
    r1.leave(0.2, fx)
    handed = to(fx, "n2")
    assert [type(m) for m in handed] == [Reservations, Handoff, Relay]
    for msg in handed:
        fx = step(r2, msg, 0.21)
    assert answers(r2, fx, b"other") == [], "the put waits at n2 now"
    # the holder's reserved send and its REVOKED, by n3's stale view, via n1
    for msg in ((MsgType.SEND, (0, name, b"r1", cap)), (MsgType.REVOKED, (name,))):
        [relay] = to(step(r1, from_n3(b"holder", 0.3, msg), 0.3), "n2")
        fx = step(r2, relay, 0.31)
    assert answers(r2, fx, b"other") == [(MsgType.ACK, (4, 0))]
    assert r2.core.queues.held(name) == 5 and r2.core.drops()["full"] == 0


def test_deliveries_that_bounce_off_a_client_this_owner_forgot_are_not_queued_again() -> None:
    """n2's client dies with deliveries of our channel on their way to it.
    We forget it (n2 says it has gone) and count what it had been handed
    and not taken as ``receiver_gone``; the deliveries then bounce off it
    and n2 gives them back. Queued again they would be delivered too, a
    drop counted and delivered (simulation seed 66, a 0.05 s lag): they are
    dropped here. What another owner had handed it (before a handover) was
    counted nowhere and is queued again as usual."""
    r, core, _ = routing()
    relay(r, START, (MsgType.RECV, ("asgi|c", 5)))
    for i in range(3):  # three sends, delivered at once against the credit
        relay(r, START, (MsgType.SEND, (0, "asgi|c", b"m%d" % i, 10)))
    [seqs] = r.core.queues.flight_seqs(next(iter(r._virtual))).values()
    assert len(seqs) == 3 and core.queues.length("asgi|c") == 0
    r.handle(ConnGone("n2", START, (b"client-1",)), 1.0, Fx())
    assert core.drops()["receiver_gone"] == 3
    first = min(seqs)
    # a malformed give-back from it goes to the core, which refuses and counts it
    bad = core.counters.bad_requests
    relay(r, START, (MsgType.RETURN, (0, "asgi|c", [[b"m", 60.0]], 1)))
    assert core.counters.bad_requests == bad + 1
    items = [[b"m", 60.0, seq] for seq in sorted(seqs)] + [[b"other", 60.0, first - 1]]
    relay(r, START, (MsgType.RETURN, (0, "asgi|c", items, 1)))
    assert r.counters["returns_counted_already"] == 3
    assert core.queues.length("asgi|c") == 1, "only the one counted nowhere is queued again"
    assert core.drops()["receiver_gone"] == 3


def test_a_life_that_ended_unseen_takes_only_its_own_clients_along() -> None:
    """kill -9 and a restart: the new life's clients may register here (a
    receive's credit, an acknowledged group_add) before the gossip of its
    new incarnation does. Ending the old life must not drop them."""
    r, core, table = routing()
    r.on_member_event(MemberEvent(EventKind.JOINED, "n2", "tcp://n2:1", START + 7), 0.0, Fx())
    relay(r, START + 7, (MsgType.GROUP_ADD, (1, "asgi|old", "asgi|c", 60.0, 10)))
    new = START + 60_000
    relay(r, new, (MsgType.RECV, ("asgi|c", 5)))
    relay(r, new, (MsgType.GROUP_ADD, (2, "asgi|g", "asgi|c", 60.0, 10)))
    assert len(r._virtual) == 2
    table.incarnations["n2"] = new
    r.on_member_event(MemberEvent(EventKind.UPDATED, "n2", "tcp://n2:1", new), 0.1, Fx())
    assert [v.incarnation for v in r._virtual.values()] == [new], "only the old life's go"
    assert core.groups.count("asgi|g") == 1 and core.groups.count("asgi|old") == 0


def test_a_life_that_ended_unseen_and_in_place_is_counted_once_exactly() -> None:
    """A stalled node fenced itself (declared dead elsewhere) and this node
    sees its new life before any death of the old one: counted once, with
    the exact figure of its fence report, not its last queue as well."""
    r, _, table = routing()
    r.on_member_event(MemberEvent(EventKind.JOINED, "n1", "tcp://n1:1", START), 0.0, Fx())
    r.on_member_event(MemberEvent(EventKind.JOINED, "n2", "tcp://n2:1", START + 7), 0.0, Fx())
    r.handle(Load("n2", {"channels": 1, "queued": 5, "drops": {}}), 0.5, Fx())
    new = START + 7 + RESTART_GAP + 1
    table.incarnations["n2"] = new
    r.on_member_event(MemberEvent(EventKind.UPDATED, "n2", "tcp://n2:1", new), 1.0, Fx())
    fenced = {"channels": 0, "queued": 0, "drops": {}, "fenced": [START + 7, 4]}
    for at in (1.5, 2.5):
        r.handle(Load("n2", dict(fenced)), at, Fx())
    r.tick(100.0, Fx())
    assert r.counters["lost_in_dead_nodes"] == 4


def test_credit_forgotten_at_a_refuted_death_is_granted_again_when_it_is_back() -> None:
    """n2 was declared dead here (it lagged) and forgotten with its client's
    credit; it refuted a suspicion before hearing of its death, so it never
    grants that credit again. When it is live again in the same life, the
    credit is granted here again: the next send reaches the waiting client
    (seed 124: the channel queued 8 messages, the receive waited forever)."""
    r, core, table = routing()
    relay(r, START, (MsgType.RECV, ("asgi|c", 5)))
    del table.incarnations["n2"]
    r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START), 1.0, Fx())
    assert r._virtual == {}
    core.queues.put("asgi|c", b"m", 61.0, 10, 1.0)  # queued: nobody has credit
    assert core.queues.length("asgi|c") == 1
    table.incarnations["n2"] = START + 1  # back, the same life
    fx = Fx()
    r.on_member_event(MemberEvent(EventKind.ALIVE, "n2", "tcp://n2:1", START + 1), 2.0, fx)
    assert fx.out == []  # (not before its next load report says it kept that life)
    r.handle(Load("n2", {"channels": 0, "queued": 0, "drops": {}}), 2.5, fx)
    [(vconn, (mtype, (channel, items)))] = fx.out
    assert r.is_virtual(vconn) and mtype == MsgType.DELIVER and channel == "asgi|c"
    assert len(items) == 1 and core.queues.length("asgi|c") == 0
    assert r.counters["credit_restored"] == 1


def test_credit_forgotten_at_a_death_is_let_go_after_its_memory_ends() -> None:
    """What a death's forgotten credit (and credit refused from a life held
    dead) is kept for ends after ``GONE_MEMORY``, parked flight or not (the
    tick let it go only while some delivery was parked)."""
    r, _, table = routing()
    relay(r, START, (MsgType.RECV, ("asgi|c", 5)))
    del table.incarnations["n2"]
    r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START), 1.0, Fx())
    relay(r, START, (MsgType.RECV, ("asgi|d", 5)))  # (refused: n2's life is held dead)
    assert r._forgot_credit and r._refused_credit and not r._parked_flight
    r.tick(1.0 + GONE_MEMORY / 2, Fx())
    assert r._forgot_credit and r._refused_credit
    r.tick(2.0 + GONE_MEMORY, Fx())
    assert r._forgot_credit == {} and r._refused_credit == {}


def test_credit_forgotten_at_a_death_is_not_restored_if_the_node_ended_that_life() -> None:
    """A frozen node that wakes may refute its death first, then end that
    life in place (a fence): its first load report says so, and its old
    clients' credit is not granted again (defect3-stalled's plan counted a
    delivery to them twice)."""
    r, core, table = routing()
    relay(r, START, (MsgType.RECV, ("asgi|c", 5)))
    del table.incarnations["n2"]
    r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START), 1.0, Fx())
    core.queues.put("asgi|c", b"m", 61.0, 10, 1.0)
    table.incarnations["n2"] = START + 1
    fx = Fx()
    r.on_member_event(MemberEvent(EventKind.ALIVE, "n2", "tcp://n2:1", START + 1), 2.0, fx)
    load = {"channels": 0, "queued": 0, "drops": {}, "fenced": [START, 0]}
    r.handle(Load("n2", load), 2.5, fx)
    assert fx.out == [] and r._forgot_credit == {} and core.queues.length("asgi|c") == 1


def test_credit_forgotten_at_a_death_is_not_restored_to_a_new_life() -> None:
    """A restart: the old life's clients are gone, and their credit with them."""
    r, _core, table = routing()
    relay(r, START, (MsgType.RECV, ("asgi|c", 5)))
    del table.incarnations["n2"]
    r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START), 1.0, Fx())
    restarted = START + 60_000
    table.incarnations["n2"] = restarted
    fx = Fx()
    r.on_member_event(MemberEvent(EventKind.JOINED, "n2", "tcp://n2:1", restarted), 2.0, fx)
    assert fx.out == [] and r._virtual == {} and r._forgot_credit == {}


def _credit_relayed_after_n2_declared_dead() -> tuple[Routing, NodeCore, FakeTable]:
    """n2 declared dead here; then a RECV of its client, made in that life,
    arrives (relayed on by other nodes, or n2's grant made anew as it heard
    of its death, ahead of its refutation); then a message is sent."""
    r, core, table = routing()
    del table.incarnations["n2"]
    r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START + 7), 1.0, Fx())
    fx = relay(r, START, (MsgType.RECV, ("asgi|c", 5)))
    assert fx.out == []
    core.queues.put("asgi|c", b"m", 61.0, 10, 1.5)
    return r, core, table


def test_credit_relayed_from_a_life_held_dead_is_not_granted() -> None:
    """Soak seed 4054 (plans/group-message-taken-twice-after-leaves-and-
    restarts-in-a-partition.json): granted, the channel's messages went to
    the dead life's address, where its next life, whose client had
    reconnected under the same connection id, handed them on beside its own
    copy. Not granted: nothing goes to n2, no connection is made for a life
    whose clients were forgotten, and a new life of n2 does not get it."""
    r, core, table = _credit_relayed_after_n2_declared_dead()
    assert r._virtual == {} and core.queues.length("asgi|c") == 1
    assert r.counters["credit_from_gone_life"] == 1
    restarted = START + 60_000
    table.incarnations["n2"] = restarted
    fx = Fx()
    r.on_member_event(MemberEvent(EventKind.JOINED, "n2", "tcp://n2:1", restarted), 2.0, fx)
    r.handle(Load("n2", {"channels": 0, "queued": 0, "drops": {}}), 2.5, fx)
    assert fx.out == [] and r._virtual == {} and r._refused_credit == {}
    assert core.queues.length("asgi|c") == 1


def test_credit_refused_from_a_life_held_dead_is_granted_when_it_is_back() -> None:
    """Kill-free seed 11: the refused RECV was n2's grant made anew as it
    heard of its death, ahead of its refutation; n2 will not grant it again.
    Back in the same life, it is granted here at n2's next load report,
    though another relay of that client made its connection here meanwhile
    (which, for credit forgotten at the death, means its node granted anew)."""
    r, core, table = _credit_relayed_after_n2_declared_dead()
    table.incarnations["n2"] = START + 8  # refuted: the same life
    fx = Fx()
    r.on_member_event(MemberEvent(EventKind.ALIVE, "n2", "tcp://n2:1", START + 8), 2.0, fx)
    relay(r, START, (MsgType.RECV, ("asgi|other", 3)))  # (its connection is made again)
    assert len(r._virtual) == 1 and fx.out == []
    r.handle(Load("n2", {"channels": 0, "queued": 0, "drops": {}}), 2.5, fx)
    [(vconn, (mtype, (channel, items)))] = fx.out
    assert r.is_virtual(vconn) and mtype == MsgType.DELIVER and channel == "asgi|c"
    assert len(items) == 1 and core.queues.length("asgi|c") == 0


def test_credit_whose_handback_was_lost_is_granted_where_its_channel_lives() -> None:
    """Our client's credit sits at n2, which no longer owns the channel (it
    moved here), and n2's handback never came (lost with a connection):
    after ``answer_within`` it is granted here; a handback coming after
    that is not granted twice."""
    r, core, _table, _ = receiving_far()
    far = next(iter(k[1] for k in r._credit))
    r.ownership = Ownership({"n1": "aaaaaa"})  # n2's channels are ours now
    r.tick(1.0, Fx())  # (noticed)
    assert r._credit and r.counters["credit_regranted_stale"] == 0
    late = 1.0 + r.answer_within() + r.load_interval
    r.tick(late, Fx())
    assert r.counters["credit_regranted_stale"] == 1 and not r._credit
    assert core.queues.credits_of(b"A") == {far: 5}
    again = Fx()
    r.handle(RelayBack("n2", b"A", ((MsgType.RECV, (far, 5)),)), late + 0.1, again)
    assert core.queues.credits_of(b"A") == {far: 5}, "the late handback is not granted twice"


def leaving() -> tuple[Routing, NodeCore, FakeTable, set[int]]:
    """n2's client receives our channel: three messages are on their way to
    it (handed out against its credit) when n2 leaves cleanly (a drain)."""
    r, core, table = routing()
    r.on_member_event(MemberEvent(EventKind.JOINED, "n2", "tcp://n2:1", START + 7), 0.0, Fx())
    relay(r, START + 7, (MsgType.RECV, ("asgi|c", 5)))
    for i in range(3):
        relay(r, START + 7, (MsgType.SEND, (0, "asgi|c", b"m%d" % i, 10)))
    [seqs] = core.queues.flight_seqs(next(iter(r._virtual))).values()
    assert len(seqs) == 3
    del table.incarnations["n2"]
    table.left["n2"] = START + 7
    r.on_member_event(MemberEvent(EventKind.LEFT, "n2", "tcp://n2:1", START + 7), 1.0, Fx())
    return r, core, table, seqs


def test_a_give_back_that_comes_after_its_node_left_is_queued_again() -> None:
    """The drained client gave back what reached it after it had withdrawn
    its credit, and n2 relayed that before it left; but n2's LEAVE reached
    us first (through another node's gossip). Nothing was lost: nothing is
    counted, the messages are queued again, and nothing more is delivered
    to the client of a node that left. (Seen in rolling restarts under
    load: 2-6 messages counted receiver_gone, their give-back dropped.)"""
    r, core, _, seqs = leaving()
    assert core.drops()["receiver_gone"] == 0
    relay(r, START + 7, (MsgType.SEND, (0, "asgi|c", b"later", 10)))  # (a keeper's, say)
    assert core.queues.length("asgi|c") == 1, "nothing more goes to n2's client"
    items = [[b"m", 60.0, seq] for seq in sorted(seqs)]
    relay(r, START + 7, (MsgType.RETURN, (0, "asgi|c", items, 0)))
    assert core.queues.length("asgi|c") == 4 and r.counters["returns_counted_already"] == 0
    r.tick(1.0 + r.answer_within(), Fx())
    assert r._virtual == {} and core.drops()["receiver_gone"] == 0


def test_what_a_left_nodes_client_never_gives_back_is_parked_once_its_relays_are_in() -> None:
    """Once n2's last relays are surely in, what its client still holds is
    parked, not counted: the client keeps it across its node's restart and
    may take it, reporting through n2's next life (kill-free simulation seed
    402, 7 ops: counted receiver_gone here at once, and taken). What it
    reports taken is not counted; the rest is, when the park lapses."""
    for reported in (0, 2):
        r, core, _, seqs = leaving()
        r.tick(1.0 + r.answer_within() / 2, Fx())
        assert core.drops()["receiver_gone"] == 0 and len(r._virtual) == 1
        r.tick(1.0 + r.answer_within(), Fx())
        assert core.drops()["receiver_gone"] == 0 and r._virtual == {}
        assert r.parked_count() == 3
        if reported:
            said = (("asgi|c", sorted(seqs)[reported - 1], reported, 0),)
            r.handle(RelayLost("n2", START + 7 + RESTART_GAP, b"client-1", said, ()), 2.0, Fx())
        r.tick(1.0 + r.answer_within() + r.presume_dead_after(), Fx())
        assert core.drops()["receiver_gone"] == 3 - reported and r.parked_count() == 0


def _declared_dead_with_three_in_flight(
    first_seq: int = 0,
) -> tuple[Routing, NodeCore, FakeTable, list[int]]:
    """n2's client was handed three messages of our channel; then n2 is
    declared dead here (it may only lag, or be cut off)."""
    r, core, table = routing(first_seq)
    relay(r, START, (MsgType.RECV, ("asgi|c", 5)))
    for i in range(3):
        relay(r, START, (MsgType.SEND, (0, "asgi|c", b"m%d" % i, 10)))
    [seqs] = core.queues.flight_seqs(next(iter(r._virtual))).values()
    del table.incarnations["n2"]
    r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START), 1.0, Fx())
    return r, core, table, sorted(seqs)


def test_what_a_killed_life_parked_waits_in_the_next_for_the_clients_word() -> None:
    """Simulation seed 518 (6 ops): a partition cut an owner off from the
    client it had handed 4 deliveries, and it parked them; it was killed.
    Its held record counted them whole, and the client, which took them,
    told the next life so (its node's relays told again). The record now
    lists what was parked; the next life parks it as the last did: what the
    client says it took of those numbers is settled, the rest counted
    (``receiver_gone``) when the park lapses."""
    r, _, _, seqs = _declared_dead_with_three_in_flight()
    carry = r.parked_carry()
    assert carry == (("n2", START, b"client-1", (("asgi|c", tuple(seqs)),)),)
    following, core, _ = routing(first_seq=1000)
    assert following.inherit_parked(carry, 2.0) == 3
    said = (("asgi|c", seqs[1], 2, 0),)
    following.handle(RelayLost("n2", START, b"client-1", said, ()), 2.1, Fx())
    assert following.parked_count() == 1
    following.tick(2.0 + following.presume_dead_after(), Fx())
    assert core.drops()["receiver_gone"] == 1 and following.parked_count() == 0


def _moving_to_n3(r: Routing, owner: str | None) -> str:
    """A channel ``owner`` owns in ``r``'s view (None: ``r``'s node), and
    n3 once it joins."""
    r.refresh()
    moves = Ownership({"n1": START, "n2": START + 7, "n3": START + 9})
    return next(
        name
        for name in (f"asgi|c{i}" for i in range(1000))
        if r.route(name) == owner and moves.owner(name) == "n3"
    )


def _handed_three(r: Routing, core: NodeCore, name: str = "asgi|c") -> list[list[object]]:
    """n2's client was handed three messages of our ``name``: the items."""
    relay(r, START, (MsgType.RECV, (name, 5)))
    for i in range(3):
        relay(r, START, (MsgType.SEND, (0, name, b"m%d" % i, 10)))
    [seqs] = core.queues.flight_seqs(next(iter(r._virtual))).values()
    return [[b"m%d" % i, 60.0, seq] for i, seq in enumerate(sorted(seqs))]


def test_at_exit_a_delivery_its_client_reported_taken_is_not_counted_lost() -> None:
    """Kill-free simulation seed 744 (7 ops): an owner left while 30 % loss
    took its link's acknowledgements. Its client had taken all 6 deliveries
    and said so, but their frames were still unacknowledged as the process
    ended, and were counted lost. What the client reported taken (or gave
    back) left the flight here: its node took the frame. What is still in
    flight is counted."""
    r, core, _ = routing()
    items = _handed_three(r, core)
    relay(r, START, (MsgType.CONSUMED, ([["asgi|c", items[1][2], 2, 0]],)))
    notes = [("n2", b"client-1", {"asgi|c": items})]
    assert r.lost_at_exit(notes, 2.0) == 1
    assert core.counters.dropped_dead_owner == 1


def test_at_exit_a_delivery_a_handover_left_in_nobodys_flight_is_counted_lost() -> None:
    """So is what a handover left in nobody's flight here (``Queues.take``:
    a leave hands every channel on first; seed 263, plans/leave-into-
    partition-delivery-in-flight.json), but not what the client had
    reported taken before it."""
    r, core, table = routing()
    name = _moving_to_n3(r, None)
    core.route = r.route
    items = _handed_three(r, core, name)
    relay(r, START, (MsgType.CONSUMED, ([[name, items[0][2], 1, 0]],)))
    table.incarnations["n3"] = START + 9
    r.on_member_event(MemberEvent(EventKind.JOINED, "n3", "tcp://n3:1", START + 9), 1.0, Fx())
    assert r.route(name) == "n3"
    assert core.queues.flight_seqs(next(iter(r._virtual))) == {}, "handed on"
    assert r.lost_at_exit([("n2", b"client-1", {name: items})], 2.0) == 2


def test_what_a_client_of_a_node_declared_dead_took_is_not_counted_lost() -> None:
    """Seed 22 (two nodes, 30% loss: each declared the other dead): the
    owner counted the client's delivery ``receiver_gone`` as it forgot the
    client; the delivery arrived, the client took it. Now what the client
    was handed waits: reported taken (CONSUMED), it is not counted; given
    back, it is queued again; the rest is counted when nothing more can
    come."""
    r, core, table, seqs = _declared_dead_with_three_in_flight()
    assert core.drops()["receiver_gone"] == 0
    table.incarnations["n2"] = START + 1  # back in the same life
    relay(r, START, (MsgType.CONSUMED, ([["asgi|c", seqs[0], 1, 0]],)))
    items = [[b"m2", 60.0, seqs[2]]]
    relay(r, START, (MsgType.RETURN, (0, "asgi|c", items, 1)))
    assert core.queues.length("asgi|c") == 1, "given back: queued again"
    assert core.drops()["receiver_gone"] == 0
    # (not at three answer bounds: a partition that long may still heal in
    # the same life, and the client's reports come then: seed 91)
    r.tick(1.0 + r.presume_lost_after() + 0.01, Fx())
    assert core.drops()["receiver_gone"] == 0 and r._parked_flight
    fx = Fx()
    r.tick(1.0 + r.presume_dead_after(), fx)  # the second was never heard of
    assert core.drops()["receiver_gone"] == 1
    assert r.counters["parked_flight_lost"] == 1
    # and it is not queued again if it bounces after all
    relay(r, START, (MsgType.RETURN, (0, "asgi|c", [[b"m1", 60.0, seqs[1]]], 1)))
    assert core.queues.length("asgi|c") == 1
    assert r.next_deadline() > 1.0 + r.presume_dead_after()


def test_a_gone_clients_give_back_of_its_counted_parked_flight_is_not_queued_again() -> None:
    """Seed 3791 (9 ops, shrunk): a client's node lagged, was declared
    dead, and its client's flight here was parked; back in the same life,
    the client was handed one more, then died. Its node said so, and bounced
    the deliveries still on their way to it back here, one relay each. The
    parked ones were counted ``receiver_gone`` as the client was forgotten;
    what was counted then was replaced by the live flight's numbers, so the
    parked ones given back after it were queued again and delivered:
    counted twice."""
    r, core, table, seqs = _declared_dead_with_three_in_flight()
    table.incarnations["n2"] = START + 1  # back in the same life
    relay(r, START, (MsgType.RECV, ("asgi|c", 1)))
    relay(r, START, (MsgType.SEND, (0, "asgi|c", b"m3", 10)))
    assert core.queues.length("asgi|c") == 0, "handed to the client at once"
    r.handle(ConnGone("n2", START, (b"client-1",)), 2.0, Fx())
    assert core.drops()["receiver_gone"] == 4
    for i, seq in enumerate(seqs):
        relay(r, START, (MsgType.RETURN, (0, "asgi|c", [[b"m%d" % i, 60.0, seq]], 1)))
    assert core.queues.length("asgi|c") == 0, "counted: not queued again"


def _delivered_in_one_step_with(r: Routing, fx: Fx, now: float) -> bytes:
    """n2's client holds credit on our channel; three relayed sends are
    delivered to it in the step ``fx``, which goes on (the caller forgets
    the client in it)."""
    relay(r, START, (MsgType.RECV, ("asgi|c", 5)))
    [vconn] = r._virtual
    for i in range(3):
        send = (MsgType.SEND, (0, "asgi|c", b"m%d" % i, 10))
        r.handle(Relay("n2", START, b"client-1", "tagtagtag0", 60.0, 1, (send,), now), now, fx)
    assert [m[0] for c, m in fx.out if c == vconn] == [MsgType.DELIVER] * 3
    return vconn


def test_deliveries_made_in_the_step_that_declares_their_clients_node_dead_go_to_it() -> None:
    """Simulation seed 1752 (9 ops): a node thawed, delivered the sends it
    held to a client of a node it declared dead in the same step; the
    deliveries stayed in the step's answers after the client was
    forgotten, the shell bounced them, and they were queued again (at the
    front, in reverse order, without their stamps) after they were parked:
    taken out of order and counted lost too. They go to the client's node
    as to a node thought dead (parked: its reports say what it took)."""
    r, core, table = routing()
    fx = Fx()
    vconn = _delivered_in_one_step_with(r, fx, 0.0)
    del table.incarnations["n2"]
    r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START), 0.0, fx)
    assert [o for o in fx.out if o[0] == vconn] == [], "nothing left for the shell to bounce"
    backs = [m for node, m in fx.peers if node == "n2" and isinstance(m, RelayBack)]
    sent = [i for b in backs for t, f in b.messages if t == MsgType.DELIVER for i in f[1]]
    assert [item[0] for item in sent] == [b"m0", b"m1", b"m2"]
    assert r.parked_count() == 3 and core.drops()["receiver_gone"] == 0


def test_deliveries_made_in_the_step_their_client_goes_are_counted_and_not_sent() -> None:
    """The same step, with the client gone (its node said so): what it was
    handed is counted ``receiver_gone`` as its flight is dropped, once;
    nothing is sent, nor left to bounce and be queued again."""
    r, core, _ = routing()
    fx = Fx()
    vconn = _delivered_in_one_step_with(r, fx, 0.0)
    r.handle(ConnGone("n2", START, (b"client-1",)), 0.0, fx)
    assert [o for o in fx.out if o[0] == vconn] == []
    assert not [m for _, m in fx.peers if isinstance(m, RelayBack)]
    assert core.drops()["receiver_gone"] == 3 and core.queues.length("asgi|c") == 0


def test_a_parked_delivery_given_back_goes_where_its_number_says() -> None:
    """Simulation seed 7081 (8 ops): a cancelled receive gave back sends
    3-5 (queued again here), then send 6, handed to it before its node was
    declared dead and parked; given back as if an earlier owner had handed
    it, it went to the front, and the next receiver took 6, 3, 4, 5. It is
    this node's own: it goes back where its number says."""
    r, core, table = routing()
    relay(r, START, (MsgType.RECV, ("asgi|c", 5)))
    for i in range(3):
        relay(r, START, (MsgType.SEND, (0, "asgi|c", b"m%d" % i, 10)))
    [seqs] = core.queues.flight_seqs(next(iter(r._virtual))).values()
    first, second, third = sorted(seqs)
    items = [[b"m0", 60.0, first], [b"m1", 60.0, second]]
    relay(r, START, (MsgType.RETURN, (1, "asgi|c", items, 1)))  # (its credit withdrawn)
    del table.incarnations["n2"]
    r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START), 1.0, Fx())
    assert r.parked_count() == 1
    table.incarnations["n2"] = START + 1  # back in the same life
    relay(r, START, (MsgType.RETURN, (0, "asgi|c", [[b"m2", 60.0, third]], 0)))
    assert r.parked_count() == 0
    got = [p for _c, _n, its in core.queues.grant(b"r", "asgi|c", 10, 2.0) for p, _t, _s in its]
    assert got == [b"m0", b"m1", b"m2"]
    assert core.drops()["receiver_gone"] == 0


def test_a_fence_counts_of_its_parks_what_the_held_relays_do_not_settle() -> None:
    """Kill-free simulation seed 6966 (27 ops): a frozen owner had parked 3
    deliveries to a client of a node it held dead, and held that client's
    relays unread when it ended its life in place: one reports two taken
    (not lost), one gives the third back (the fence counts held give-backs
    lost, as ``returned``: not again as parked). Nothing is left parked."""
    r, core, _, seqs = _declared_dead_with_three_in_flight()
    assert r.parked_count() == 3
    took = Relay(
        "n2",
        START,
        b"client-1",
        "tagtagtag0",
        60.0,
        1,
        ((MsgType.CONSUMED, ([["asgi|c", seqs[1], 2, 0]],)),),
        1.5,
    )
    gave = Relay(
        "n2",
        START,
        b"client-1",
        "tagtagtag0",
        60.0,
        1,
        ((MsgType.RETURN, (0, "asgi|c", [[b"m2", 60.0, seqs[2]]], 0)),),
        1.6,
    )
    other = Relay(
        "n2",
        START,
        b"client-2",
        "tagtagtag1",
        60.0,
        1,
        ((MsgType.CONSUMED, ([["asgi|c", seqs[2], 1, 0]],)),),
        1.6,
    )
    r.settle_parked_held([other])
    assert r.parked_count() == 3, "another client's report settles nothing"
    r.settle_parked_held([took])
    assert r.parked_count() == 1
    r.settle_parked_held([gave])
    assert r.parked_count() == 0
    assert core.queues.length("asgi|c") == 0, "not queued again: the fence counts it"
    assert not any(core.drops().values())


def test_what_a_client_of_a_node_declared_dead_held_is_counted_when_it_goes() -> None:
    r, core, _, _ = _declared_dead_with_three_in_flight()
    r.handle(ConnGone("n2", START, (b"client-1",)), 2.0, Fx())
    assert core.drops()["receiver_gone"] == 3


def test_what_a_client_of_a_node_declared_dead_held_is_counted_when_its_park_lapses() -> None:
    """Its node restarted: the client may live on there, keeping what it
    held (``Flow.rewelcomed``), so it is not counted at the next life (as
    until session 26) but when the park lapses, unless reported taken."""
    r, core, table, _ = _declared_dead_with_three_in_flight()
    table.incarnations["n2"] = START + RESTART_GAP + 5  # restarted
    r.tick(2.0, Fx())
    assert core.drops()["receiver_gone"] == 0
    r.tick(1.0 + r.presume_dead_after(), Fx())
    assert core.drops()["receiver_gone"] == 3


def test_what_a_node_parked_is_counted_as_its_process_ends_after_a_leave() -> None:
    """Simulation seed 229 without kills: the owner had parked what it
    handed a client of a frozen node it declared dead, then left; its
    process ended before the park lapsed and nobody counted it. Counted as
    the process ends (``ClusterNode.gone``), as the lapse would have."""
    r, core, _, _ = _declared_dead_with_three_in_flight()
    assert core.drops()["receiver_gone"] == 0
    assert r.count_parked_at_exit(1.5) == 3
    assert core.drops()["receiver_gone"] == 3 and r.parked_count() == 0
    assert r.count_parked_at_exit(1.6) == 0, "once"


def test_what_a_node_parked_is_in_its_load_report_and_dies_with_it() -> None:
    """Simulation seed 116: the owner of a channel parked what it had handed
    a client of a node it declared dead (whose fate only it would count),
    then was killed itself before counting it: its report says how much it
    parked, soon after it parked it, and a survivor counts that with its
    queue."""
    r, _, _, _ = _declared_dead_with_three_in_flight()
    fx = Fx()
    r.tick(1.0 + r._soon, fx)  # (parking moved what it holds: a report soon)
    [report] = [m.load for _, m in fx.peers if isinstance(m, Load)]
    assert report["parked"] == 3 and report["queued"] == 0
    counted = []
    for me in ("n1", "n3"):
        core2 = NodeCore(CoreSettings(me, "aaaaaa", str(START), 3.0, 1 << 20))
        table2 = FakeTable({"n1": START, "n2": START, "n3": START}, node_id=me)
        r2 = Routing(core2, table2)  # type: ignore[arg-type]
        r2.handle(Load("n2", {"channels": 1, "queued": 2, "parked": 3}), 0.0, Fx())
        del table2.incarnations["n2"]
        r2.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START), 1.0, Fx())
        r2.tick(1.0 + r2.presume_dead_after(), Fx())
        counted.append(r2.counters["lost_in_dead_nodes"])
    assert counted == [5, 0]


def test_deliveries_a_past_life_never_took_go_back_to_the_queue_and_out_again() -> None:
    """Simulation seed 5799 without kills: n2 ended its life in place and
    its next life relayed its client's credit here before this node's
    member table and links heard of that life, so the deliveries went on
    the link to the life before, which never took them (``links``: a frame
    for a past life). Nothing counted them, and the channel's pool held
    them for good. Told so (``never_delivered``), they go back to the queue
    with their credit and out again, in their order; nothing is lost."""
    r, core, _ = routing()
    new_life = START + 2 * RESTART_GAP
    relay(r, new_life, (MsgType.RECV, ("asgi|c", 5)))
    fx = relay(r, new_life, (MsgType.SEND, (0, "asgi|c", b"m0", 10)))
    fx.out += relay(r, new_life, (MsgType.SEND, (0, "asgi|c", b"m1", 10))).out
    [vconn] = r._virtual
    handed = [item for _, (t, f) in fx.out if t == MsgType.DELIVER for item in f[1]]
    assert [item[0] for item in handed] == [b"m0", b"m1"]
    fx = Fx()
    r.never_delivered([("n2", b"client-1", {"asgi|c": handed})], 1.5, fx)
    again = [i[0] for c, (t, f) in fx.out if c == vconn and t == MsgType.DELIVER for i in f[1]]
    assert again == [b"m0", b"m1"]
    assert len(core.queues.flight_seqs(vconn)["asgi|c"]) == 2  # (in flight again)
    assert core.queues.held("asgi|c") == 2  # (their room, once)
    assert not any(core.drops().values()), core.drops()


def test_what_is_told_to_a_life_that_ended_unread_of_its_flight_is_counted_once() -> None:
    """Simulation seed 7980, 8 ops: n2's client died holding deliveries of
    this node's life, which ended in place (a fence) before it read n2's
    ConnGone. n2 counts nothing (it told the owner), the ended life counted
    none of that flight (it had not read the ConnGone), and the next life
    is handed it (``ended_flight``): when the ConnGone comes for the ended
    life, the next life counts it, ``receiver_gone``, once; a copy counts
    nothing more, and another client's flight is not touched."""
    r, core, _ = routing()
    r.ended_flight(
        {
            ("n2", b"client-1"): {"asgi|c": {3, 4}, "asgi|d": {9}},
            ("n2", b"client-2"): {"asgi|c": {5}},
        },
        1.0,
    )
    gone = ConnGone("n2", START + 7, (b"client-1",))
    assert r.told_ended_life([gone]) == 3
    assert core.drops()["receiver_gone"] == 3
    assert r.told_ended_life([gone]) == 0
    assert core.drops()["receiver_gone"] == 3
    assert r._ended_flight == {("n2", b"client-2"): {"asgi|c": {5}}}
    # A RelayLost for that life is its sender's to count (10,000 seed 3158:
    # a refusal told to a life that ended in place, counted by both)
    told = RelayLost("n2", START + 7, b"client-2", (), (("asgi|c", (5, 6)),))
    assert r.told_ended_life([told]) == 0
    assert core.drops()["dead_owner"] == 0


def test_credit_sent_again_after_a_hello_is_taken_once() -> None:
    """Soak seeds 1741 and 5060: a client's credit went plain to an owner
    its node had never heard a hello from, and was lost in a partition; the
    node sends the same relay again on the link once the owner says hello
    (``ClusterNode._credit_again``). At a join the first one arrives too:
    the copy (the same relay, its ``sent_at`` too) is dropped, so the
    client's credit is not doubled; a later grant is taken."""
    r, core, _ = routing()
    grant = Relay(
        "n2", START, b"client-1", "tagtagtag0", 60.0, 1, ((MsgType.RECV, ("asgi|c", 5)),), 0.25
    )
    for _ in range(2):  # (the plain one, then its copy on the link)
        r.handle(grant, 0.3, Fx())
    [vconn] = r._virtual
    assert core.queues.channels["asgi|c"].credits[vconn] == 5
    assert r.counters["credit_copies_dropped"] == 1
    r.handle(replace(grant, sent_at=0.5), 0.6, Fx())  # (a later grant)
    assert core.queues.channels["asgi|c"].credits[vconn] == 10


def test_a_report_of_what_was_parked_and_what_came_since_is_split_between_them() -> None:
    """Seed 4: the client's node never took one of the parked deliveries
    (its link ended first: counted at once); the client then took the two
    others and one delivered since, and reports the three in one CONSUMED:
    two settle what was parked, one goes on to the new delivery's flight."""
    r, core, table, seqs = _declared_dead_with_three_in_flight()
    table.incarnations["n2"] = START + 1  # back in the same life
    r.never_delivered([("n2", b"client-1", {"asgi|c": [[b"m", 10.0, seqs[2]]]})], 1.5)
    assert core.drops()["receiver_gone"] == 1
    relay(r, START, (MsgType.RECV, ("asgi|c", 5)))
    relay(r, START, (MsgType.SEND, (0, "asgi|c", b"new", 10)))
    [vconn] = r._virtual
    [[new]] = [list(s) for s in core.queues.flight_seqs(vconn).values()]
    relay(r, START, (MsgType.CONSUMED, ([["asgi|c", new, 3, 1]],)))
    assert core.queues.flight_seqs(vconn) == {}
    assert core.drops()["expired"] == 1  # (counted once, with the parked ones)
    r.tick(1.0 + r.presume_dead_after(), Fx())
    assert core.drops()["receiver_gone"] == 1
    assert r.counters["parked_flight_lost"] == 1


def test_takes_on_a_link_whose_receiver_did_not_say_it_took_them_are_told_again() -> None:
    """Kill-free seed 116: a node ending its life in place relayed its
    client's reports of what it took into a partition; the owner, asked
    after the heal, knew nothing of that link (as a new process at its
    address would say). The takes are told again (``RelayLost``), the
    give-backs are not: only the life that took them may count them."""
    r, _, _ = routing()
    lost = Relay(
        "n1",
        START,
        b"A",
        "tagtagtag0",
        60.0,
        1,
        (
            (MsgType.CONSUMED, ([["asgi|c", 7, 2, 0]],)),
            (MsgType.RETURN, (0, "asgi|d", [[b"m", 5.0, 9]], 1)),
        ),
        0.0,
    )
    fx = Fx()
    r.takes_unheard("n2", lost, fx)
    assert fx.peers == [("n2", RelayLost("n1", START, b"A", (("asgi|c", 7, 2, 0),), ()))]
    assert r.counters["takes_told_again"] == 1
    quiet = Fx()
    r.takes_unheard("n2", replace(lost, messages=lost.messages[1:]), quiet)
    assert quiet.peers == [], "nothing taken: nothing told"


def test_takes_told_again_settle_what_was_parked_and_not_what_a_later_life_handed() -> None:
    """What a client took, told again, settles what was parked for it here
    (not counted lost when the park lapses); told to a later life at the
    same address (which answers as the one that never took the link), it
    names numbers below that life's own, and changes nothing there."""
    r, core, _, seqs = _declared_dead_with_three_in_flight(first_seq=START * 1000)
    earlier = seqs[0] - 1_000_000  # (what an earlier life of this node handed)
    r.handle(RelayLost("n2", START, b"client-1", (("asgi|c", earlier, 3, 0),), ()), 1.2, Fx())
    [(_, (_, parked))] = r._parked_flight.items()
    assert parked == {"asgi|c": seqs}, "an earlier life's report changes nothing here"
    r.handle(RelayLost("n2", START, b"client-1", (("asgi|c", seqs[2], 3, 0),), ()), 1.3, Fx())
    assert r._parked_flight == {}
    r.tick(1.0 + r.presume_dead_after(), Fx())
    assert core.drops()["receiver_gone"] == 0


def test_a_report_of_parked_deliveries_frees_those_it_took_not_the_first() -> None:
    """Soak seed 638 (a stalled pool): the first of three parked deliveries
    never reached the client (sent plain into a partition); it took the
    other two and reports them (up to the last, two). Those two are
    settled; the first stays parked and is counted when the parked flight
    lapses. Freeing the first two instead left, report after report, the
    last one taken in flight for good."""
    r, core, table, seqs = _declared_dead_with_three_in_flight()
    table.incarnations["n2"] = START + 1  # back in the same life
    relay(r, START, (MsgType.CONSUMED, ([["asgi|c", seqs[2], 2, 0]],)))
    [(_, (_, parked))] = r._parked_flight.items()
    assert parked == {"asgi|c": [seqs[0]]}
    relay(r, START, (MsgType.RECV, ("asgi|c", 5)))
    relay(r, START, (MsgType.SEND, (0, "asgi|c", b"new", 10)))
    [vconn] = r._virtual
    [[new]] = [list(s) for s in core.queues.flight_seqs(vconn).values()]
    relay(r, START, (MsgType.CONSUMED, ([["asgi|c", new, 1, 0]],)))
    assert core.queues.flight_seqs(vconn) == {}, "the new one it took is settled"
    assert core.queues.held("asgi|c") == 0
    r.tick(1.0 + r.presume_dead_after(), Fx())
    assert core.drops()["receiver_gone"] == 1
    assert r.counters["parked_flight_lost"] == 1


def test_a_report_settles_the_parked_delivery_of_its_number_and_those_handed_before() -> None:
    """A client takes in the order it was handed, and reports the newest
    number it took. Parked here, in the order handed: two deliveries, then
    a give-back queued again and handed last with its old, lowest number
    (simulation seeds 336 and 8836). The client takes the first two (a
    report up to the second's number, two) and then the third (a report up
    to its number, one): nothing is left to count lost when the park lapses.
    Settling the last handed of those numbered up to the report's freed the
    third for the first report, and the first stayed parked, counted lost
    though the client took it."""
    r, core, table, seqs = _declared_dead_with_three_in_flight()
    table.incarnations["n2"] = START + 1  # back in the same life
    [(_, (_, parked))] = r._parked_flight.items()
    parked["asgi|c"] = [seqs[1], seqs[2], seqs[0]]  # (the give-back handed last)
    relay(r, START, (MsgType.CONSUMED, ([["asgi|c", seqs[2], 2, 0]],)))
    assert parked == {"asgi|c": [seqs[0]]}
    relay(r, START, (MsgType.CONSUMED, ([["asgi|c", seqs[0], 1, 0]],)))
    assert r._parked_flight == {}
    r.tick(1.0 + r.presume_dead_after(), Fx())
    assert core.drops()["receiver_gone"] == 0


def _handed_three_then_a_new_life() -> tuple[Routing, NodeCore, list[int], int]:
    """n2's client was handed three messages; then n2 is seen in a new
    life (it restarted, or left and came back), which the client may have
    said hello to, keeping what it held (``Flow.rewelcomed``)."""
    r, core, table = routing()
    relay(r, START + 7, (MsgType.RECV, ("asgi|c", 5)))
    for i in range(3):
        relay(r, START + 7, (MsgType.SEND, (0, "asgi|c", b"m%d" % i, 10)))
    [seqs] = core.queues.flight_seqs(next(iter(r._virtual))).values()
    renewed = START + 7 + 2 * RESTART_GAP
    table.incarnations["n2"] = renewed
    r.on_member_event(MemberEvent(EventKind.ALIVE, "n2", "tcp://n2:1", renewed), 1.0, Fx())
    return r, core, sorted(seqs), renewed


def test_what_a_client_of_a_restarted_node_holds_waits_for_its_reports_there() -> None:
    """Kill-free seed 6035 (6 ops): a consumer held 5 deliveries while its
    node left and restarted; it said hello to the next life and took them.
    The owner counted them ``receiver_gone`` as it forgot the earlier life's
    client. Now they are parked, and the client's reports through the new
    life (same connection) settle them: nothing is counted."""
    r, core, seqs, renewed = _handed_three_then_a_new_life()
    assert core.drops()["receiver_gone"] == 0
    relay(r, renewed, (MsgType.CONSUMED, ([["asgi|c", seqs[2], 3, 0]],)))
    assert r._parked_flight == {}
    r.tick(1.0 + r.presume_dead_after(), Fx())
    assert core.drops()["receiver_gone"] == 0
    assert core.queues.held("asgi|c") == 0


def test_what_a_client_of_a_restarted_node_held_is_counted_if_it_never_reports() -> None:
    """The client did not live on (or never took them): counted once, when
    the park lapses, and what it is handed in the new life is its own."""
    r, core, _seqs, renewed = _handed_three_then_a_new_life()
    relay(r, renewed, (MsgType.RECV, ("asgi|c", 5)))
    relay(r, renewed, (MsgType.SEND, (0, "asgi|c", b"new", 10)))
    vconn = next(v for v, virtual in r._virtual.items() if virtual.incarnation == renewed)
    [[new]] = [list(s) for s in core.queues.flight_seqs(vconn).values()]
    relay(r, renewed, (MsgType.CONSUMED, ([["asgi|c", new, 1, 0]],)))
    assert core.queues.flight_seqs(vconn) == {}, "the new one is settled in the live flight"
    r.tick(1.0 + r.presume_dead_after(), Fx())
    assert core.drops()["receiver_gone"] == 3
    assert core.queues.held("asgi|c") == 0


def test_a_report_the_new_life_read_before_the_hello_settles_what_was_parked() -> None:
    """The client took what it held while its node was down; its report
    reached the node's next life before its hello, as an unknown
    connection's. That life tells the owner (``RelayLost``), and the owner
    settles what it parked for the client's earlier life: nothing counted."""
    r, core, seqs, renewed = _handed_three_then_a_new_life()
    told = Fx()
    node = Routing(  # (the client's node's next life, n2, for which n1 owns the channel)
        NodeCore(CoreSettings("n2", "bbbbbb", str(renewed), 3.0, 1 << 20)),
        FakeTable({"n1": START, "n2": renewed}, node_id="n2", incarnation=renewed),  # type: ignore[arg-type]
    )
    node.core.route = node.route
    node.route = lambda channel: "n1"  # type: ignore[method-assign]
    node.reports_unheard(b"client-1", [(MsgType.CONSUMED, ([["asgi|c", seqs[2], 3, 0]],))], told)
    [(owner, lost)] = told.peers
    assert owner == "n1" and isinstance(lost, RelayLost)
    r.handle(lost, 1.1, Fx())
    assert r._parked_flight == {}
    r.tick(1.0 + r.presume_dead_after(), Fx())
    assert core.drops()["receiver_gone"] == 0


def _moved_here(r: Routing, before: Ownership) -> str:
    """A channel the leave of n3 moved to this node (n1)."""
    for i in range(1000):
        channel = f"asgi|moved{i}"
        if before.owner(channel) == "n3" and r.route(channel) is None:
            return channel
    raise AssertionError("no channel moved here")


def _send(r: Routing, now: float, hops: int, channel: str, payload: bytes) -> None:
    """n2's client's send: hops 1 straight from n2, 2 passed on by n3."""
    sends = ((MsgType.SEND, (1, channel, payload, 100)),)
    r.handle(Relay("n2", START + 7, b"client-1", "tagtagtag0", 60.0, hops, sends, now), now, Fx())


def test_a_send_straight_to_a_channel_that_just_moved_here_waits_for_those_passed_on() -> None:
    """Rolling seed 1111 (plans/drain-relays-passed-on-overtaken): n2's
    client sends to a channel of n3 as n3 leaves; its first send reached n3
    after n3 had handed the channel here, and comes passed on (two hops),
    after the next one, which n2 sent here straight once it heard of the
    leave. The straight one waits ``hold``; the passed-on one does not."""
    core = NodeCore(CoreSettings("n1", "aaaaaa", str(START), 3.0, 1 << 20))
    table = FakeTable({"n1": START, "n2": START + 7, "n3": START + 9})
    r = Routing(core, table, hold=0.05)  # type: ignore[arg-type]
    core.route = r.route
    before = r.ownership
    del table.incarnations["n3"]
    table.left["n3"] = START + 9
    r.on_member_event(MemberEvent(EventKind.LEFT, "n3", "tcp://n3:1", START + 9), 1.0, Fx())
    channel = _moved_here(r, before)
    _send(r, 1.001, 1, channel, b"second")  # straight from n2: held
    assert core.queues.length(channel) == 0
    assert r.next_deadline() <= 1.05
    _send(r, 1.002, 2, channel, b"first")  # passed on by n3: queued at once
    _send(r, 1.003, 1, channel, b"third")  # behind the held one
    assert core.queues.length(channel) == 1
    fx = Fx()
    r.tick(1.05, fx)
    assert core.queues.length(channel) == 3
    assert [i[1] for i in core.queues.channels[channel].items] == [b"first", b"second", b"third"]
    assert r.counters["relays_held"] == 2
    # later sends, and sends to channels that did not move, are not held
    _send(r, 1.1, 1, channel, b"fourth")
    assert core.queues.length(channel) == 4


def test_our_clients_send_to_a_channel_that_just_moved_here_waits_for_its_last_one() -> None:
    """The same race with the new owner as the sender's own node: its
    client's first send was relayed to n3, which had just handed the channel
    here and passes it back (two hops); the next one, made here once n3 had
    left, would be queued at once, first. It waits ``hold``."""
    core = NodeCore(CoreSettings("n1", "aaaaaa", str(START), 3.0, 1 << 20))
    table = FakeTable({"n1": START, "n2": START + 7, "n3": START + 9})
    r = Routing(core, table, hold=0.05)  # type: ignore[arg-type]
    core.route = r.route
    conn = b"cccccccccc/0"
    core.handle(conn, [(MsgType.HELLO, ("cccccccccc", 1, [60.0]))], 0.0)
    before = r.ownership
    after = Ownership({n: r._tag(n) for n in ("n1", "n2")})
    channel = next(
        c
        for c in (f"asgi|c{i}" for i in range(1000))
        if before.owner(c) == "n3" and after.owner(c) == "n1"
    )
    work = ClusterWork()
    core.handle(conn, [(MsgType.SEND, (1, channel, b"first", 100))], 1.0, work)
    fx = Fx()
    r.after_core(work, 1.0, fx)
    assert [type(m).__name__ for _, m in fx.peers] == ["Relay"]  # (to n3)
    del table.incarnations["n3"]
    table.left["n3"] = START + 9
    r.on_member_event(MemberEvent(EventKind.LEFT, "n3", "tcp://n3:1", START + 9), 1.001, Fx())
    assert r.route(channel) is None  # (it moved here)
    second = [(MsgType.SEND, (2, channel, b"second", 100))]
    assert r.hold_local(conn, second, 1.002)
    assert r.hold_local(conn, [(MsgType.SEND, (3, channel, b"third", 100))], 1.003)
    assert r.next_deadline() <= 1.052
    session = core.sessions.by_conn[conn]
    first = ((MsgType.SEND, (1, channel, b"first", 100)),)
    back = Relay("n1", START, conn, session.tag, 60.0, 2, first, 1.0)  # (passed back by n3)
    r.handle(back, 1.004, Fx())
    assert core.queues.length(channel) == 1
    r.tick(1.06, Fx())
    assert [i[1] for i in core.queues.channels[channel].items] == [b"first", b"second", b"third"]
    assert r.counters["client_frames_held"] == 2


def _passing_on() -> tuple[Routing, FakeTable]:
    """n2's client's send (request 4) came here, and n3 owns its channel in
    this node's view: passed on to n3 (a second hop)."""
    core = NodeCore(CoreSettings("n1", "aaaaaa", str(START), 3.0, 1 << 20))
    table = FakeTable({"n1": START, "n2": START + 7, "n3": START + 9})
    r = Routing(core, table)  # type: ignore[arg-type]
    core.route = lambda channel: "n3"  # in this node's view n3 owns it
    fx = relay(r, START, (MsgType.SEND, (4, "asgi|c", b"p", 10)))
    r.after_core(fx.take_work() or ClusterWork(), 0.0, fx)  # (as ClusterNode does)
    [(owner, passed)] = fx.peers
    assert owner == "n3" and isinstance(passed, Relay) and passed.origin == "n2"
    return r, table


def test_a_send_passed_on_to_an_owner_declared_dead_is_answered_to_its_origin() -> None:
    """Views differ for a moment after a death: a node passes another node's
    client's send on to the owner in its own view (a second hop), and the
    owner answers the origin directly. If that owner is declared dead here,
    this node answers the origin for it, as the origin does for its own
    clients (tests.faults seed 12: a send passed on to a
    SIGKILLed owner, answered only at the origin's bound, 2.4 s)."""
    r, table = _passing_on()
    del table.incarnations["n3"]
    r.on_member_event(MemberEvent(EventKind.DEAD, "n3", "tcp://n3:1", START + 9), 0.2, Fx())
    due = r.fresh_within() + RELAY_FRESH_MARGIN
    assert r.next_deadline() <= due
    early = Fx()
    r.tick(due - 0.01, early)
    assert early.out == []
    answered = Fx()
    r.tick(due, answered)
    back = Fx()
    r.send_back(answered.out, back, due)
    [(to, msg)] = back.peers
    assert to == "n2" and isinstance(msg, RelayBack)
    [(mtype, (req, code, _))] = msg.messages
    assert (mtype, req, code) == (MsgType.ERROR, 4, ErrorCode.OUTCOME_UNKNOWN)
    late = Fx()
    r.tick(r.answer_within() + 1.0, late)
    assert late.out == [], "answered once"


def test_a_send_passed_on_is_not_answered_here_at_the_bound() -> None:
    """Its origin waits for it and answers at its own bound; the owner here
    still alive, this node says nothing."""
    r, _ = _passing_on()
    assert len(r._passed_on) == 1
    fx = Fx()
    r.tick(r.answer_within() + 0.5, fx)
    assert fx.out == [] and r._passed_on == {}


def test_a_passed_on_send_whose_client_is_forgotten_is_not_answered() -> None:
    """The origin declared dead too before the answer was due: its client is
    forgotten here, and nothing is sent for it (no frame to a connection
    that is no longer there)."""
    r, table = _passing_on()
    for node, inc in (("n3", START + 9), ("n2", START + 7)):
        del table.incarnations[node]
        r.on_member_event(MemberEvent(EventKind.DEAD, node, f"tcp://{node}:1", inc), 0.2, Fx())
    assert r._virtual == {}
    due = Fx()
    r.tick(r.fresh_within() + RELAY_FRESH_MARGIN, due)
    assert [o for o in due.out if o[1][0] == MsgType.ERROR] == []
    assert r._passed_due == set()


def _handed_far_by_n2_then_n2_dead() -> tuple[Routing, NodeCore, str, list[list[object]]]:
    """Our client ``A`` was handed two messages of ``asgi|far`` by its owner
    n2; then n2 is declared dead here (it may only lag: simulation seed 188
    without kills, a 0.3 s lag), so ``asgi|far`` is ours in our view."""
    r, core, table, _ = receiving_far()
    far = next(iter(k[1] for k in r._credit))
    items: list[list[object]] = [[b"m1", 60.0, 101], [b"m2", 60.0, 102]]
    delivered = Fx()
    r.handle(RelayBack("n2", b"A", ((MsgType.DELIVER, (far, items)),)), 0.5, delivered)
    assert delivered.out == [(b"A", (MsgType.DELIVER, (far, items)))]
    del table.incarnations["n2"]
    r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START + 7), 1.0, Fx())
    assert r.route(far) is None, "ours now, in our view"
    return r, core, far, items


def _copies_to_n2(fx: Fx) -> list[tuple[Message, int]]:
    """Reports (``CONSUMED``) relayed to n2, with their hops."""
    return [
        (m, msg.hops)
        for node, msg in fx.peers
        if node == "n2" and isinstance(msg, Relay)
        for m in msg.messages
        if m[0] == MsgType.CONSUMED
    ]


def _n2_back(r: Routing, incarnation: int, now: float) -> Fx:
    """n2 is seen live again (``incarnation``: the same life, or a new one)."""
    r.table.incarnations["n2"] = incarnation  # type: ignore[attr-defined]
    fx = Fx()
    r.on_member_event(MemberEvent(EventKind.ALIVE, "n2", "tcp://n2:1", incarnation), now, fx)
    return fx


def test_deliveries_bounced_off_a_gone_client_tell_the_owner_thought_dead() -> None:
    """The client is gone: n2's deliveries bounce off it and go back into
    our queue (we own the channel in our view). n2, if it lives, parked
    them as handed to a client of a node it declared dead, and would count
    them lost when that lapses, though they are queued here and delivered
    later: it is told they are not its any more, as if taken (a report's
    copy, for n2 alone). Not plain, on no link, where a partition or loss
    would lose it: held until n2 is back in that life, then sent before
    it hears the client is gone."""
    r, core, far, items = _handed_far_by_n2_then_n2_dead()
    work, fx = ClusterWork(), Fx()
    core.undeliverable(b"A", [(MsgType.DELIVER, (far, items))], 2.0, work)
    r.after_core(work, 2.0, fx)
    assert core.queues.length(far) == 2, "queued here again"
    assert fx.peers == [(EVERYONE, ConnGone("n1", START, (b"A",)))], "(n2 is not live)"
    back = _n2_back(r, START + 8, 2.5)
    assert _copies_to_n2(back) == [((MsgType.CONSUMED, ([[far, 102, 2, 0]],)), MAX_HOPS)]
    told = [type(msg).__name__ for node, msg in back.peers if node == "n2"]
    assert told[:2] == ["Relay", "ConnGone"], "the copy first"


def test_deliveries_a_client_gives_back_tell_the_owner_thought_dead() -> None:
    r, core, far, items = _handed_far_by_n2_then_n2_dead()
    work, fx = ClusterWork(), Fx()
    core.handle(b"A", [(MsgType.RETURN, (3, far, items, 1))], 2.0, work)
    r.after_core(work, 2.0, fx)
    assert core.queues.length(far) == 2
    assert _copies_to_n2(fx) == []
    back = _n2_back(r, START + 8, 2.5)
    assert _copies_to_n2(back) == [((MsgType.CONSUMED, ([[far, 102, 2, 0]],)), MAX_HOPS)]


def test_copies_held_for_a_node_thought_dead_go_only_to_the_same_life_in_time() -> None:
    """A new life of n2 never had the flight the copy settles, and once
    n2's park there has lapsed it counted what the copy would settle (a
    late copy would free another delivery in its place): dropped then."""
    for incarnation, late in ((START + RESTART_GAP + 8, False), (START + 8, True)):
        r, core, far, items = _handed_far_by_n2_then_n2_dead()
        work = ClusterWork()
        core.handle(b"A", [(MsgType.RETURN, (3, far, items, 1))], 2.0, work)
        r.after_core(work, 2.0, Fx())
        assert r._for_return, "held"
        when = 2.0 + r.presume_dead_after() + 0.01 if late else 2.5
        assert _copies_to_n2(_n2_back(r, incarnation, when)) == []
        assert r._for_return == {}


def _handed_ours(core: NodeCore, far: str) -> int:
    """Our client ``A`` is handed a message of ``far`` by this node (its
    owner now, in our view); returns its number."""
    work = ClusterWork()
    core.handle(b"A", [(MsgType.RECV, (far, 5))], 2.0, work)
    core.handle(b"A", [(MsgType.SEND, (0, far, b"ours", 10))], 2.0, work)
    [[seq]] = [list(s) for s in core.queues.flight_seqs(b"A").values()]
    return seq


def test_deliveries_of_this_nodes_own_given_back_tell_nobody() -> None:
    """What this node handed its client itself is its own flight: nothing
    to tell anyone."""
    r, core, far, _ = _handed_far_by_n2_then_n2_dead()
    seq = _handed_ours(core, far)
    work, fx = ClusterWork(), Fx()
    core.handle(b"A", [(MsgType.RETURN, (3, far, [[b"ours", 60.0, seq]], 1))], 2.0, work)
    r.after_core(work, 2.0, fx)
    assert _copies_to_n2(fx) == [] and core.queues.length(far) == 1
    assert _copies_to_n2(_n2_back(r, START + 8, 2.5)) == []


def test_a_report_of_this_nodes_own_delivery_is_not_copied_to_an_earlier_deliverer() -> None:
    """Simulation seed 388 (a partition): n2 handed our client messages,
    then was declared dead here and the channel became ours; our client
    took what we handed it and reported it. The report is ours: a copy to
    n2 (its last deliverer) named our numbers, which n2's may be, and freed
    n2's parked deliveries the client never got, lost uncounted."""
    r, core, far, _ = _handed_far_by_n2_then_n2_dead()
    seq = _handed_ours(core, far)
    work, fx = ClusterWork(), Fx()
    core.handle(b"A", [(MsgType.CONSUMED, ([[far, seq, 1, 0]],))], 2.0, work)
    r.after_core(work, 2.0, fx)
    assert core.queues.flight_seqs(b"A") == {}, "applied here"
    assert r._for_return == {}
    # (a report of what n2 handed it is n2's: held for it)
    work = ClusterWork()
    core.handle(b"A", [(MsgType.CONSUMED, ([[far, 102, 1, 0]],))], 2.1, work)
    r.after_core(work, 2.1, Fx())
    assert _copies_to_n2(_n2_back(r, START + 8, 2.5)) == [
        ((MsgType.CONSUMED, ([[far, 102, 1, 0]],)), MAX_HOPS)
    ]


def _handed_by_n2_then_moved_to_n3(n2_after: State) -> tuple[Routing, NodeCore, str]:
    """Our client ``A`` was handed two messages of a channel n2 owns; then
    n3 joins and owns it in our view (``n2_after``: n2 stays live, or
    left)."""
    r, core, table = routing()
    far = _moving_to_n3(r, "n2")
    core.route = r.route
    core.sessions.hello(b"A", "sessiontag", 1, Policy(60.0), 0.0)
    work = ClusterWork()
    core.handle(b"A", [(MsgType.RECV, (far, 5))], 0.0, work)
    r.after_core(work, 0.0, Fx())
    items = [[b"m1", 60.0, 101], [b"m2", 60.0, 102]]
    r.handle(RelayBack("n2", b"A", ((MsgType.DELIVER, (far, items)),)), 0.5, Fx())
    table.incarnations["n3"] = START + 9
    r.on_member_event(MemberEvent(EventKind.JOINED, "n3", "tcp://n3:1", START + 9), 1.0, Fx())
    if n2_after == State.LEFT:
        del table.incarnations["n2"]
        table.incarnations.dead.pop("n2")  # type: ignore[attr-defined]
        table.left["n2"] = START + 7
        r.on_member_event(MemberEvent(EventKind.LEFT, "n2", "tcp://n2:1", START + 7), 1.1, Fx())
    assert r.route(far) == "n3"
    return r, core, far


def _reports_to(fx: Fx) -> list[tuple[str, Message, int]]:
    return [
        (node, m, msg.hops)
        for node, msg in fx.peers
        if isinstance(msg, Relay)
        for m in msg.messages
        if m[0] == MsgType.CONSUMED
    ]


def test_a_report_of_a_live_nodes_deliveries_going_elsewhere_is_copied_to_it() -> None:
    """Kill-free simulation seed 65 (8 ops, a 0.3 s lag): the owner declared
    our node dead as its deliveries reached our client, and parked them;
    our node, which refuted the death later and never heard from whom, sent
    the client's report of taking them to the node that owned the channel
    in its view, and the owner counted the park lost when it lapsed. A copy
    goes to the live node that delivered them (for it alone: MAX_HOPS), not
    to one that left (it handed its flight over)."""
    for n2_after, copied in ((State.ALIVE, True), (State.LEFT, False)):
        r, core, far = _handed_by_n2_then_moved_to_n3(n2_after)
        work, fx = ClusterWork(), Fx()
        core.handle(b"A", [(MsgType.CONSUMED, ([[far, 102, 2, 0]],))], 2.0, work)
        r.after_core(work, 2.0, fx)
        report = (MsgType.CONSUMED, ([[far, 102, 2, 0]],))
        sent = _reports_to(fx)
        assert [(m, hops < MAX_HOPS) for n, m, hops in sent if n == "n3"] == [(report, True)]
        assert [s for s in sent if s[0] == "n2"] == ([("n2", report, MAX_HOPS)] if copied else [])


def test_a_report_to_the_node_that_delivered_is_not_copied() -> None:
    r, core, _, _ = receiving_far()
    far = next(iter(k[1] for k in r._credit))
    items = [[b"m1", 60.0, 101]]
    r.handle(RelayBack("n2", b"A", ((MsgType.DELIVER, (far, items)),)), 0.5, Fx())
    work, fx = ClusterWork(), Fx()
    core.handle(b"A", [(MsgType.CONSUMED, ([[far, 101, 1, 0]],))], 1.0, work)
    r.after_core(work, 1.0, fx)
    [(node, report, hops)] = _reports_to(fx)
    assert (node, report) == ("n2", (MsgType.CONSUMED, ([[far, 101, 1, 0]],))) and hops < MAX_HOPS


def test_a_client_gone_while_its_owner_was_thought_dead_is_told_when_it_is_back() -> None:
    """Simulation seed 244 (a 0.3 s lag): our client, receiving a channel n2
    owns, went while n2 was declared dead here; ``ConnGone`` goes to live
    members only, so n2, back in the same life, kept its delivery to the
    client in flight for good (a stalled pool). It is told when it is back;
    a new life of n2 never knew the client and is told nothing."""
    for back_at, told in ((START + 8, True), (START + RESTART_GAP + 8, False)):
        r, core, table, _ = receiving_far()
        del table.incarnations["n2"]
        r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START + 7), 1.0, Fx())
        work, fx = ClusterWork(), Fx()
        core.undeliverable(b"A", [], 1.5, work)  # (the client is gone)
        r.after_core(work, 1.5, fx)
        assert fx.peers == [(EVERYONE, ConnGone("n1", START, (b"A",)))]
        table.incarnations["n2"] = back_at
        again = Fx()
        r.on_member_event(MemberEvent(EventKind.ALIVE, "n2", "tcp://n2:1", back_at), 2.0, again)
        gone = [m for node, m in again.peers if node == "n2" and isinstance(m, ConnGone)]
        assert gone == ([ConnGone("n1", START, (b"A",))] if told else [])
        later = Fx()
        r.on_member_event(
            MemberEvent(EventKind.UPDATED, "n2", "tcp://n2:1", back_at + 1), 3.0, later
        )
        assert not any(isinstance(m, ConnGone) for _, m in later.peers), "told once"


def _n2_declared_dead_then_delivers(linked: bool) -> tuple[Routing, NodeCore, str, Fx]:
    """Our client ``A`` waits on ``asgi|far``, which n2 owns; n2 is
    declared dead here (its channels are ours in our view, the client's
    credit with them); then a delivery n2 made comes (``linked``: on a link,
    n2 thinking our node alive; else plain, n2 having declared us dead)."""
    r, core, table, _ = receiving_far()
    far = next(iter(k[1] for k in r._credit))
    del table.incarnations["n2"]
    r.on_member_event(MemberEvent(EventKind.DEAD, "n2", "tcp://n2:1", START + 7), 1.0, Fx())
    fx = Fx()
    items = [[b"old", 60.0, 101]]
    back = RelayBack("n2", b"A", ((MsgType.DELIVER, (far, items)), (MsgType.ACK, (4, 0))))
    r.handle(back, 1.5, fx, linked)
    return r, core, far, fx


def test_a_delivery_from_an_owner_declared_dead_is_not_handed_to_the_client() -> None:
    """The real-process fault test, seed 6: a delivery made the instant its
    owner froze waited in that process's ZeroMQ pipe for the 3 s of the
    freeze and reached the client's node after it had declared the owner
    dead and its client had taken 48 newer messages of the same producer
    from the channel's new owner: handed on, it was an order inversion.
    Refused (the rest of the frame goes on), it is lost, and counted once."""
    for linked in (True, False):
        r, core, _far, fx = _n2_declared_dead_then_delivers(linked)
        assert fx.out == [(b"A", (MsgType.ACK, (4, 0)))], "the ACK only"
        assert r.counters["deliveries_refused_from_dead"] == 1
        assert core.drops()["dead_owner"] == 0, "not counted yet: whose is it?"


def test_a_refused_delivery_is_told_to_its_owner_back_in_the_same_life() -> None:
    """n2 was only slow or cut off: told (``RelayLost``, on its link), it
    drops the delivery from its flight and counts it there; not here."""
    r, core, far, _ = _n2_declared_dead_then_delivers(linked=True)
    back = _n2_back(r, START + 8, 2.0)
    told = [m for node, m in back.peers if node == "n2" and isinstance(m, RelayLost)]
    assert told == [RelayLost("n1", START, b"A", (), ((far, (101,)),))]
    assert core.drops()["dead_owner"] == 0
    # (and if that life ends before it takes it, its link says so: counted here)
    r.relay_unheard(told[0])
    assert core.drops()["dead_owner"] == 1
    r.relay_unheard(told[0])
    assert core.drops()["dead_owner"] == 1, "once"


def test_a_refused_delivery_is_counted_here_if_its_owners_life_ended() -> None:
    """n2 ended that life (a fence after the freeze, a restart): a delivery
    it sent on a link, thinking our node alive, was in its flight to a live
    node, which no end of its life counts: counted here. One it sent plain
    (it had declared our node dead) it parked, and counts itself (at the
    park's lapse, its fence, or in its last load report)."""
    for linked in (True, False):
        r, core, _far, _ = _n2_declared_dead_then_delivers(linked)
        back = _n2_back(r, START + RESTART_GAP + 8, 2.0)
        assert not [m for _, m in back.peers if isinstance(m, RelayLost)]
        assert core.drops()["dead_owner"] == (1 if linked else 0)
        assert r._for_return == {}


def test_a_clients_sends_are_numbered_where_they_enter_the_cluster() -> None:
    """FIFO per producer where queues meet (``queues.Stamp``): the
    producer's node numbers each of its clients' sends, in the order they
    arrive, and the relay carries the number to the owner, which queues
    the send with it (and hands it on with the queue); a relay that brought
    a send with no number (an older node's) gets none at the owner."""
    r, core, _ = routing()
    core.route = lambda channel: "n2"
    core.sessions.hello(b"A", "sessiontag", 1, Policy(60.0), 0.0)
    work = ClusterWork()
    core.handle(
        b"A",
        [(MsgType.SEND, (9, "asgi|far", b"x", 10)), (MsgType.SEND, (0, "asgi|far", b"y", 10))],
        0.0,
        work,
    )
    fx = Fx()
    r.after_core(work, 0.0, fx)
    [(_owner, msg)] = fx.peers
    assert isinstance(msg, Relay)
    stamps = [fields[4] for _mtype, fields in msg.messages]
    assert stamps == [("n1/sessiontag", START, 1), ("n1/sessiontag", START, 2)]
    # at the owner: queued with its number, handed on with it
    owner, owner_core, _ = routing()
    owner.handle(replace(msg, origin="n2", incarnation=START + 7), 0.1, Fx())
    owner.handle(
        replace(
            msg,
            origin="n2",
            incarnation=START + 7,
            messages=((MsgType.SEND, (0, "asgi|far", b"z", 10)),),
        ),
        0.1,
        Fx(),
    )
    items, _credit = owner_core.queues.take("asgi|far", 0.2)
    assert [item[3:] for item in items] == [(stamps[0],), (stamps[1],), ()]


def test_a_delivery_older_than_one_another_owner_handed_is_refused_and_told() -> None:
    """Simulation seed 31 without kills: two nodes owned ``far`` at once,
    each in its own view. This node (which took the channel while its link
    to n2 lagged) handed our client the producer's send 8 itself; n2's
    delivery of send 1 (made before, held on its way) comes after. It is refused: n2 is told
    (``RelayLost``: it drops it from its flight and counts it), and the
    credit it took is granted again where the channel lives, as if our
    client had taken it; the rest of the frame, and n2's newer send 9, go
    on."""
    r, core, _table, _ = receiving_far()
    far = next(iter(k[1] for k in r._credit))
    p = "n1/sessiontag"
    core.queues.put(far, b"8", 60.0, 100, 1.0, stamp=(p, START, 8))
    [(_conn, _name, [(payload, _ttl, _seq)])] = core.queues.grant(b"A", far, 1, 1.0)
    assert payload == b"8"
    fx = Fx()
    items = [[b"1", 60.0, 101], [b"9", 60.0, 102]]
    stamps = ((far, 101, p, START, 1), (far, 102, p, START, 9))
    back = RelayBack("n2", b"A", ((MsgType.DELIVER, (far, items)), (MsgType.ACK, (4, 0))), stamps)
    r.handle(back, 1.5, fx, True)
    assert fx.out == [
        (b"A", (MsgType.DELIVER, (far, [[b"9", 60.0, 102]]))),
        (b"A", (MsgType.ACK, (4, 0))),
    ]
    assert r.counters["deliveries_refused_out_of_order"] == 1
    told = [m for node, m in fx.peers if node == "n2" and isinstance(m, RelayLost)]
    assert told == [RelayLost("n1", START, b"A", (), ((far, (101,)),))]
    assert regranted(fx) == [("n2", (MsgType.RECV, (far, 1)))]
    assert core.drops()["dead_owner"] == 0, "counted by n2, whose flight held it"
    # once our client gives back what it holds there, what comes again
    # (from any owner) is not refused
    core.queues.forget_handed(b"A", far, [], 2.0)
    again = Fx()
    r.handle(back, 2.0, again, True)
    assert r.counters["deliveries_refused_out_of_order"] == 1
    assert again.out[0] == (b"A", (MsgType.DELIVER, (far, items)))


def _client_step(r: Routing, core: NodeCore, messages: list[Message], now: float) -> Fx:
    work = ClusterWork()
    fx = Fx()
    fx.out.extend(core.handle(b"A", messages, now, work))
    r.after_core(work, now, fx)
    return fx


def test_what_our_client_held_of_an_owner_that_handed_the_channel_on_is_ours() -> None:
    """The owner of the channel our client receives on hands it on while the
    client holds 3 of its deliveries: it forgets them (``Queues.take``), and
    its hand-back of the credit says so. The client takes one, and then
    dies: the other two are counted here, once, and its report of the
    first goes nowhere (the new owner never knew it). Kill-free simulation
    seeds 155, 244 and 116: nobody counted them."""
    r, core, _, _ = receiving_far()
    far = next(f"asgi|far{i}" for i in range(100) if r.route(f"asgi|far{i}") == "n2")
    items = [[b"m", 60.0, seq] for seq in (1, 2, 3)]
    delivered = Fx()
    r.handle(RelayBack("n2", b"A", ((MsgType.DELIVER, (far, items)),)), 0.1, delivered)
    assert [m[0] for _, m in delivered.out] == [MsgType.DELIVER]
    r.handle(RelayBack("n2", b"A", ((MsgType.RECV, (far, 2)),)), 0.2, Fx())
    reported = _client_step(r, core, [(MsgType.CONSUMED, ([[far, 1, 1, 0]],))], 0.3)
    assert not [m for _, msg in reported.peers if isinstance(msg, Relay) for m in msg.messages]
    assert core.drops()["receiver_gone"] == 0
    _client_step(r, core, [(MsgType.BYE, (0, 1))], 0.4)
    assert core.drops()["receiver_gone"] == 2
    assert r.counters["passed_lost"] == 2


def test_an_owner_that_kept_its_deliveries_counts_them_itself() -> None:
    """No hand-back: the owner still holds them in its flight, and counts
    them as it hears the client is gone (``ConnGone``); nothing here."""
    r, core, _, _ = receiving_far()
    far = next(f"asgi|far{i}" for i in range(100) if r.route(f"asgi|far{i}") == "n2")
    items = [[b"m", 60.0, seq] for seq in (1, 2)]
    r.handle(RelayBack("n2", b"A", ((MsgType.DELIVER, (far, items)),)), 0.1, Fx())
    gone = _client_step(r, core, [(MsgType.BYE, (0, 1))], 0.2)
    assert core.drops()["receiver_gone"] == 0
    assert any(isinstance(msg, ConnGone) for _, msg in gone.peers)


def test_a_hand_back_of_no_credit_keeps_what_is_owed_at_the_new_owner() -> None:
    """An owner hands the channel on while our client holds its deliveries
    but no credit there: it hands back none (for ``passed``), which must not
    drop the credit our client holds at another owner meanwhile."""
    r, _, _, _ = receiving_far()
    far = next(f"asgi|far{i}" for i in range(100) if r.route(f"asgi|far{i}") == "n2")
    assert r._credit[(b"A", far)][0] == "n2"
    r.handle(RelayBack("n0", b"A", ((MsgType.RECV, (far, 0)),)), 0.1, Fx())
    assert r._credit[(b"A", far)][0] == "n2"
    r.handle(RelayBack("n2", b"A", ((MsgType.RECV, (far, 0)),)), 0.2, Fx())
    assert (b"A", far) not in r._credit
