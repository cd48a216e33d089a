"""The member table and failure detector (SWIM + Lifeguard), sans I/O.

Two layers: unit tests of the rules on one table fed messages by hand, with
property tests of the merge law; then a deterministic simulation of whole
clusters on an in-memory network with a fake clock (``simnet.SimNet``), where
each scenario measures a simulated figure, prints it (``pytest -s``) and
asserts the bound the cluster issue sets.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from simnet import SimNet
from zchannels.node.membership import (
    Ack,
    Effects,
    EventKind,
    Gossip,
    Member,
    MembershipConfig,
    MemberTable,
    Nack,
    Ping,
    PingReq,
    Refuse,
    State,
    Sync,
    Update,
    first_incarnation,
    suspicion_bounds,
    suspicion_timeout,
)

from zchannels.protocol import PROTOCOL_VERSION

M = TypeVar("M")
CFG = MembershipConfig.test()
LAN = MembershipConfig.lan()


def addr(node: str) -> str:
    return f"tcp://{node}:7701"


def table(node: str = "a", incarnation: int = 100, config: MembershipConfig = CFG) -> MemberTable:
    return MemberTable(
        config,
        node_id=node,
        address=addr(node),
        incarnation=incarnation,
        cluster="c",
        rng=random.Random(0),
    )


def up(node: str, inc: int, state: State = State.ALIVE, source: str = "x") -> Update:
    return Update(node, addr(node), inc, state, source)


def gossip(t: MemberTable, *updates: Update, now: float = 0.0, sender: str = "x") -> Effects:
    return t.handle(Gossip(sender, updates), now)


def kinds(fx: Effects) -> list[tuple[EventKind, str]]:
    return [(e.kind, e.node) for e in fx.events]


def sent(fx: Effects, mtype: type[M]) -> list[tuple[str, M]]:
    return [(to, m) for to, m in fx.messages if isinstance(m, mtype)]


def state_of(t: MemberTable, node: str) -> tuple[State, int] | None:
    m = t.member(node)
    return None if m is None else (m.state, m.incarnation)


def with_peers(*peers: str, node: str = "a", config: MembershipConfig = CFG) -> MemberTable:
    t = table(node, config=config)
    gossip(t, *(up(p, 1) for p in peers))
    return t


# -- the merge rules -------------------------------------------------------------


def test_higher_incarnation_wins_and_suspect_beats_alive_of_same_incarnation() -> None:
    t = with_peers("b")
    assert kinds(gossip(t, up("b", 5))) == [(EventKind.UPDATED, "b")]  # still alive
    assert state_of(t, "b") == (State.ALIVE, 5)
    assert kinds(gossip(t, up("b", 4, State.SUSPECT))) == []  # stale
    assert state_of(t, "b") == (State.ALIVE, 5)
    assert kinds(gossip(t, up("b", 5, State.SUSPECT))) == [(EventKind.SUSPECT, "b")]
    assert kinds(gossip(t, up("b", 5))) == []  # the same incarnation does not refute
    assert state_of(t, "b") == (State.SUSPECT, 5)
    assert kinds(gossip(t, up("b", 6))) == [(EventKind.ALIVE, "b")]
    assert state_of(t, "b") == (State.ALIVE, 6)


def test_suspected_node_refutes_with_a_higher_incarnation() -> None:
    a = with_peers("b", "c")
    fx = gossip(a, Update("a", addr("a"), 100, State.SUSPECT, "b"), sender="c")
    assert a.incarnation == 101
    assert kinds(fx) == [(EventKind.REFUTED, "a")]
    assert "b said suspect" in fx.events[0].reason
    # told directly to the accuser and to whoever passed the claim on
    told = {to for to, m in sent(fx, Gossip)}
    assert told == {addr("b"), addr("c")}
    refutation = Update("a", addr("a"), 101, State.ALIVE, "a")
    for _, m in sent(fx, Gossip):
        assert m == Gossip("a", (refutation,))
    # ... and the refutation wins wherever it arrives
    b = with_peers("a", node="b")
    gossip(b, Update("a", addr("a"), 100, State.SUSPECT, "b"))
    assert state_of(b, "a") == (State.SUSPECT, 100)
    assert kinds(gossip(b, refutation)) == [(EventKind.ALIVE, "a")]
    assert state_of(b, "a") == (State.ALIVE, 101)


def test_declared_dead_node_refutes_too_and_stale_claims_get_an_answer() -> None:
    a = with_peers("b")
    gossip(a, Update("a", addr("a"), 100, State.DEAD, "b"))
    assert a.incarnation == 101
    # b still holds the old suspicion: no new incarnation, but b is told
    fx = gossip(a, Update("a", addr("a"), 100, State.SUSPECT, "z"), sender="b")
    assert a.incarnation == 101 and kinds(fx) == []
    assert [to for to, _ in sent(fx, Gossip)] == [addr("b")]
    # an alive claim of our own incarnation is no news
    assert gossip(a, Update("a", addr("a"), 101, State.ALIVE, "b")).messages == []


def test_dead_is_not_resurrected_by_stale_alive() -> None:
    t = with_peers("b")
    assert kinds(gossip(t, up("b", 5, State.DEAD))) == [(EventKind.DEAD, "b")]
    for stale in (up("b", 5), up("b", 4), up("b", 5, State.SUSPECT), up("b", 1)):
        assert kinds(gossip(t, stale)) == []
        assert state_of(t, "b") == (State.DEAD, 5)
    assert "b" not in t.live()
    # a restart (higher incarnation) brings it back
    assert kinds(gossip(t, up("b", 6))) == [(EventKind.ALIVE, "b")]
    assert "b" in t.live()


def test_left_is_final_for_that_incarnation() -> None:
    t = with_peers("b")
    assert kinds(gossip(t, up("b", 3, State.LEFT, source="b"))) == [(EventKind.LEFT, "b")]
    for later in (up("b", 3), up("b", 3, State.SUSPECT), up("b", 3, State.DEAD)):
        assert kinds(gossip(t, later)) == []
        assert state_of(t, "b") == (State.LEFT, 3)
    assert kinds(gossip(t, up("b", 4))) == [(EventKind.ALIVE, "b")]


def test_restarted_node_is_not_taken_for_its_old_self() -> None:
    first = first_incarnation(1_700_000_000.0)
    second = first_incarnation(1_700_000_000.002)  # restarted 2 ms later
    assert second > first
    t = with_peers()
    gossip(t, Update("b", "tcp://10.0.0.2:7701", first, State.ALIVE, "b"))
    gossip(t, Update("b", "tcp://10.0.0.2:7701", first, State.DEAD, "c"))
    fx = gossip(t, Update("b", "tcp://10.0.0.9:7701", second, State.ALIVE, "b"))
    assert kinds(fx) == [(EventKind.ALIVE, "b")]
    assert t.member("b") == Member("b", State.ALIVE, second, "tcp://10.0.0.9:7701")
    # restarted before the old run was noticed dead: same state, new address
    fx = gossip(t, Update("b", "tcp://10.0.0.3:7701", second + 5, State.ALIVE, "b"))
    assert [(e.kind, e.address) for e in fx.events] == [(EventKind.UPDATED, "tcp://10.0.0.3:7701")]


def test_unknown_members_join_but_tombstones_raise_no_events() -> None:
    t = table()
    assert kinds(gossip(t, up("b", 1))) == [(EventKind.JOINED, "b")]
    assert kinds(gossip(t, up("c", 1, State.SUSPECT))) == [(EventKind.JOINED, "c")]
    assert kinds(gossip(t, up("d", 1, State.DEAD))) == []
    # the tombstone keeps a late alive of the same incarnation out
    assert kinds(gossip(t, up("d", 1))) == []
    assert state_of(t, "d") == (State.DEAD, 1)
    assert t.live() == ["a", "b", "c"]


def test_members_lists_self_first_with_every_field() -> None:
    t = with_peers("c", "b")
    gossip(t, up("c", 2, State.SUSPECT))
    assert t.members() == [
        Member("a", State.ALIVE, 100, addr("a")),
        Member("b", State.ALIVE, 1, addr("b")),
        Member("c", State.SUSPECT, 2, addr("c")),
    ]


# -- property tests of the merge law ---------------------------------------------

NODES = ["b", "c", "d"]
updates_st = st.lists(
    st.builds(
        lambda node, inc, state, source: Update(node, f"{addr(node)}/{inc}", inc, state, source),
        st.sampled_from(NODES),
        st.integers(0, 3),
        st.sampled_from(list(State)),
        st.sampled_from(["b", "c", "d", "e"]),
    ),
    max_size=24,
)


def table_view(t: MemberTable) -> dict[str, Member]:
    return {m.id: m for m in t.members()}


@settings(max_examples=300, deadline=None)
@given(updates_st, st.randoms(use_true_random=False))
def test_merge_is_order_independent_and_keeps_the_greatest_claim(
    updates: list[Update], rnd: random.Random
) -> None:
    shuffled = list(updates)
    rnd.shuffle(shuffled)
    one, two = table(), table()
    for u in updates:
        gossip(one, u)
    gossip(two, *shuffled)
    assert table_view(one) == table_view(two)
    for node in NODES:
        claims = [u for u in updates if u.node == node]
        if claims:
            best = max(claims, key=lambda u: u.key)
            assert one.member(node) == Member(node, best.state, best.incarnation, best.address)
        else:
            assert one.member(node) is None


@settings(max_examples=200, deadline=None)
@given(updates_st)
def test_merge_is_idempotent(updates: list[Update]) -> None:
    t = table()
    gossip(t, *updates)
    before = table_view(t)
    again = gossip(t, *updates)
    assert table_view(t) == before
    assert again.events == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(95, 110), st.sampled_from(list(State))),
        max_size=12,
    )
)
def test_no_claim_about_a_node_outlives_its_refutation(claims: list[tuple[int, State]]) -> None:
    t = with_peers("b")
    for inc, state in claims:
        gossip(t, Update("a", addr("a"), inc, state, "b"))
    assert t.member("a") == Member("a", State.ALIVE, t.incarnation, addr("a"))
    for inc, state in claims:
        # every negative claim was answered by a higher incarnation
        assert t.incarnation > inc or (state == State.ALIVE and t.incarnation >= inc)


# -- joining, refusing, leaving --------------------------------------------------


def test_join_is_a_full_state_exchange_with_a_seed() -> None:
    seed = with_peers("b", "c", node="s")
    j = table("j")
    fx = j.join([addr("s"), addr("j")], now=0.0)  # its own address is skipped
    (to, hello), *rest = fx.messages
    assert to == addr("s") and rest == []
    assert isinstance(hello, Sync) and hello.reply
    assert (hello.cluster, hello.version) == ("c", PROTOCOL_VERSION)
    answer = seed.handle(hello, 0.0)
    assert kinds(answer) == [(EventKind.JOINED, "j")]
    (back_to, state), *_ = answer.messages
    assert back_to == addr("j") and isinstance(state, Sync) and not state.reply
    assert j.unreached() == [addr("s")], "a seed it never heard of"
    fx = j.handle(state, 0.0)
    assert sorted(kinds(fx)) == [(EventKind.JOINED, n) for n in ("b", "c", "s")]
    assert j.live() == ["b", "c", "j", "s"]
    assert j.unreached() == []


def test_a_discovered_peer_gets_a_full_state_exchange_once() -> None:
    seed = with_peers("b", node="s")
    j = table("j")
    j.join([], now=0.0)
    fx = j.discovered(addr("s"), now=0.0)
    [(to, hello)] = fx.messages
    assert to == addr("s") and isinstance(hello, Sync) and hello.reply
    answer = seed.handle(hello, 0.0)
    (_, state), *_ = answer.messages
    j.handle(state, 0.0)
    assert j.live() == ["b", "j", "s"]
    # found again (mDNS re-announces): already a live member, nothing sent
    assert j.discovered(addr("s"), now=1.0).messages == []
    assert j.discovered(addr("j"), now=1.0).messages == []  # itself


def test_join_is_retried_only_while_alone() -> None:
    j = table("j")
    j.join([addr("s")], now=0.0)
    j.tick(0.0)
    retry = CFG.join_retry_interval
    assert sent(j.tick(retry - 0.001), Sync) == []
    assert [to for to, _ in sent(j.tick(retry), Sync)] == [addr("s")]
    gossip(j, up("s", 1))
    later = j.tick(3 * retry)
    assert not [m for to, m in sent(later, Sync) if to == addr("s") and m.reply]


def test_a_configured_seed_no_member_is_at_is_called_while_not_alone() -> None:
    # A node that joined through its seeds and knows another member: a seed
    # whose address holds no member it knows (reaped, never heard of) or
    # only one that left gets a full-state exchange, reconnect_interval after
    # it is found lost, then at doubling gaps up to push_pull_interval; a
    # live seed does not, nor one known dead (the reconnect to dead members
    # calls it anyway). Alone, the join's retry calls every seed instead.
    # (No probes: members that answer nothing here must not be suspected.)
    cfg = MembershipConfig.test(probe_interval=100.0, probe_timeout=50.0, push_pull_interval=1.5)
    j = MemberTable(
        cfg,
        node_id="j",
        address=addr("j"),
        incarnation=100,
        cluster="c",
        rng=random.Random(0),
        seeds=[addr("s"), addr("t"), addr("j")],
    )
    clock = [0.0]

    def calls(seconds: float, to: str) -> list[float]:
        out, until = [], clock[0] + seconds
        while clock[0] < until:
            clock[0] = min(j.next_deadline(), until)
            fx = j.tick(clock[0])
            out += [clock[0] for dest, m in sent(fx, Sync) if m.reply and dest == addr(to)]
        return out

    assert calls(1.0, "s") == []  # alone, never joined nor given a seed to join
    gossip(j, up("k", 1), up("t", 1), now=clock[0])
    start = clock[0]
    # (push-pull with a random live member, k or t, happens too: not to s)
    at = calls(6.0, "s")
    gaps = [round(b - a, 6) for a, b in zip([start, *at], at, strict=False)]
    r = cfg.reconnect_interval
    assert gaps[0] <= r + 1e-9 and gaps[1:4] == [r, 2 * r, 4 * r]
    assert set(gaps[4:]) == {cfg.push_pull_interval}
    gossip(j, up("s", 1), now=clock[0])
    # (push-pull may pick s, one of three live members, every 1.5 s: at most
    # twice in 3 s, where calls to a lost seed would be three)
    assert len(calls(3.0, "s")) <= 2
    gossip(j, up("s", 1, State.LEFT, "s"), up("t", 2, State.DEAD), now=clock[0])
    start = clock[0]
    at = calls(1.0, "s")
    assert at and at[0] - start <= r + 1e-9  # a seed that left: called again, from the start
    gossip(j, up("k", 1, State.LEFT, "k"), now=clock[0])
    assert "t" not in j.live() and calls(3.0, "s") == []  # alone again


@pytest.mark.parametrize(
    ("cluster", "version", "node", "expect"),
    [
        ("other", PROTOCOL_VERSION, "j", "is in cluster 'other', not 'c'"),
        ("c", PROTOCOL_VERSION + 1, "j", f"speaks protocol version {PROTOCOL_VERSION + 1}"),
        ("c", PROTOCOL_VERSION, "s", "uses node id 's', already taken"),
    ],
)
def test_other_cluster_version_or_duplicate_id_is_refused(
    cluster: str, version: int, node: str, expect: str
) -> None:
    seed = with_peers("b", node="s")
    hello = Sync(cluster, version, node, "tcp://elsewhere:1", True, (up(node, 1),))
    fx = seed.handle(hello, 0.0)
    assert [e.kind for e in fx.events] == [EventKind.REFUSED]
    assert expect in fx.events[0].reason
    assert seed.live() == ["b", "s"]  # nothing was merged
    ((to, refusal),) = fx.messages
    assert to == "tcp://elsewhere:1" and isinstance(refusal, Refuse)
    # the refused node gets a reason it can log
    j = table("j")
    got = j.handle(refusal, 0.0)
    assert [e.kind for e in got.events] == [EventKind.REFUSED]
    assert got.events[0].reason.startswith(f"s at {addr('s')} ")
    # a refused reply is not answered (no refusal ping-pong)
    quiet = seed.handle(Sync(cluster, version, node, "tcp://elsewhere:1", False, ()), 0.0)
    assert quiet.messages == [] and len(quiet.events) == 1


def test_push_pull_dead_is_taken_as_suspect_and_unknown_dead_is_ignored() -> None:
    t = with_peers("b")
    state = (up("b", 1, State.DEAD, "s"), up("z", 1, State.DEAD, "s"), up("s", 1))
    fx = t.handle(Sync("c", PROTOCOL_VERSION, "s", addr("s"), False, state), 0.0)
    assert state_of(t, "b") == (State.SUSPECT, 1)
    assert t.member("z") is None
    assert sorted(kinds(fx)) == [(EventKind.JOINED, "s"), (EventKind.SUSPECT, "b")]


def test_leave_tells_every_live_member_and_they_drop_it_at_once() -> None:
    a = with_peers("b", "c", "d")
    gossip(a, up("d", 1, State.DEAD))
    fx = a.leave(now=1.0)
    assert sorted(to for to, _ in sent(fx, Gossip)) == [addr("b"), addr("c")]
    b = with_peers("a", "c", node="b")
    _, bye = fx.messages[0]
    assert kinds(b.handle(bye, 1.0)) == [(EventKind.LEFT, "a")]
    assert b.live() == ["b", "c"]
    # the leaver is inert: no refutation, no probing, no answers
    assert a.left and a.members()[0].state == State.LEFT
    assert gossip(a, Update("a", addr("a"), 100, State.DEAD, "b")) == Effects()
    assert a.tick(5.0) == Effects() and a.next_deadline() == math.inf
    assert a.handle(Ping(1, "b", addr("b"), "a"), 5.0) == Effects()


# -- probing and Lifeguard -------------------------------------------------------


def probe_start(t: MemberTable, now: float = 0.0) -> tuple[float, Ping, str]:
    """Tick until the table pings someone; return (time, ping, address)."""
    for _ in range(100):
        fx = t.tick(now)
        pings = sent(fx, Ping)
        if pings:
            to, ping = pings[0]
            assert isinstance(ping, Ping)
            return now, ping, to
        now = t.next_deadline()
    raise AssertionError("no probe")


def when_indirect(t: MemberTable, now: float) -> float:
    """Tick at each deadline until the PingReqs go out; return that time."""
    for _ in range(100):
        now = t.next_deadline()
        if sent(t.tick(now), PingReq):
            return now
    raise AssertionError("no indirect probe")


def test_answered_probe_raises_no_suspicion_and_improves_health() -> None:
    t = with_peers("b", "c", "d")
    t.awareness = 2
    now, ping, to = probe_start(t)
    assert to == addr(ping.target)
    t.handle(Ack(ping.seq, ping.target), now + 0.001)
    assert t.awareness == 1
    fx = t.tick(now + CFG.probe_interval * 3)
    assert sent(fx, PingReq) == [] and EventKind.SUSPECT not in [e.kind for e in fx.events]


def test_unanswered_probe_goes_indirect_then_suspects_and_tells_the_suspect() -> None:
    t = with_peers("b", "c", "d")
    now, ping, _ = probe_start(t)
    t.awareness = 0
    fx = t.tick(now + CFG.probe_timeout)
    reqs = sent(fx, PingReq)
    helpers = {"b", "c", "d"} - {ping.target}
    assert {to for to, _ in reqs} == {addr(h) for h in helpers}
    for _, req in reqs:
        assert isinstance(req, PingReq)
        assert (req.seq, req.target, req.target_address) == (
            ping.seq,
            ping.target,
            addr(ping.target),
        )
    fx = t.tick(now + CFG.probe_interval)
    assert kinds(fx) == [(EventKind.SUSPECT, ping.target)]
    assert (addr(ping.target), Gossip("a", (up(ping.target, 1, State.SUSPECT, "a"),))) in (
        fx.messages
    )
    # no NACK came back from either helper: our own link is the likely fault
    assert t.awareness == 2


def test_nacks_from_helpers_keep_local_health_good() -> None:
    t = with_peers("b", "c", "d")
    now, ping, _ = probe_start(t)
    t.tick(now + CFG.probe_timeout)
    t.handle(Nack(ping.seq, "x"), now + 0.04)
    t.handle(Nack(ping.seq, "y"), now + 0.04)
    t.tick(now + CFG.probe_interval)
    assert t.awareness == 0
    assert state_of(t, ping.target) == (State.SUSPECT, 1)


def test_poor_local_health_stretches_probe_timing() -> None:
    t = with_peers("b", "c", "d", "e", "f", "g")
    now, _, _ = probe_start(t)
    assert when_indirect(t, now) == pytest.approx(now + CFG.probe_timeout)
    t.awareness = 3
    now += CFG.probe_interval
    fx = t.tick(now)  # that probe fails, no NACKs from 3 helpers; the next starts
    assert t.awareness == 6
    assert len(sent(fx, Ping)) == 1
    assert when_indirect(t, now) == pytest.approx(now + 7 * CFG.probe_timeout)
    t.awareness = 100
    t.tick(now + 7 * CFG.probe_interval)
    assert t.awareness == CFG.awareness_max


def test_helper_relays_the_ack_or_sends_a_nack() -> None:
    h = with_peers("p", "t", node="h")
    req = PingReq(7, "p", addr("p"), "t", addr("t"))
    ((to, ping),) = h.handle(req, 0.0).messages
    assert to == addr("t") and isinstance(ping, Ping) and ping.target == "t"
    fx = h.handle(Ack(ping.seq, "t"), 0.01)
    assert fx.messages == [(addr("p"), Ack(7, "t"))]
    # second request: the target stays silent
    ((_, ping2),) = h.handle(req, 1.0).messages
    assert isinstance(ping2, Ping)
    h.tick(1.0)
    assert h.next_deadline() <= 1.0 + CFG.nack_timeout
    fx = h.tick(1.0 + CFG.nack_timeout)
    assert (addr("p"), Nack(7, "h")) in fx.messages


def test_a_ping_meant_for_another_node_is_not_answered() -> None:
    t = with_peers("b")
    assert t.handle(Ping(1, "b", addr("b"), "someone-else"), 0.0).messages == []
    ((to, ack),) = t.handle(Ping(2, "b", addr("b"), "a"), 0.0).messages
    assert to == addr("b") and isinstance(ack, Ack) and ack.seq == 2


def test_pings_to_a_suspect_carry_the_suspicion_first() -> None:
    t = with_peers("b", "c")
    gossip(t, up("b", 1, State.SUSPECT, "c"))
    for _ in range(6):
        now, ping, _ = probe_start(t, t.next_deadline())
        if ping.target == "b":
            assert ping.gossip[0] == Update("b", addr("b"), 1, State.SUSPECT, "a")
            return
        t.handle(Ack(ping.seq, ping.target), now)
    raise AssertionError("b never probed")


def test_suspicion_timeout_shrinks_with_confirmations() -> None:
    low, high = suspicion_bounds(LAN, 5)
    assert (low, high) == pytest.approx((1.0, 2.0))
    assert suspicion_bounds(LAN, 100)[0] == pytest.approx(2.0)  # log10(N) scaling
    steps = [suspicion_timeout(n, 3, low, high) for n in range(5)]
    assert steps[0] == high and steps[3] == steps[4] == low
    assert steps == sorted(steps, reverse=True)
    assert suspicion_timeout(0, 0, low, high) == low  # nobody could confirm


@pytest.mark.parametrize("confirmations", [0, 1, 3])
def test_suspect_is_declared_dead_when_its_timer_runs_out(confirmations: int) -> None:
    t = with_peers("b", "c", "d", "e", "f", config=LAN)  # 6 members: K = 3
    gossip(t, up("b", 1, State.SUSPECT, "c"))
    for source in ["d", "e", "f"][:confirmations]:
        gossip(t, up("b", 1, State.SUSPECT, source))
    low, high = suspicion_bounds(LAN, 6)
    expected = suspicion_timeout(confirmations, 3, low, high)
    assert kinds(t.tick(expected - 0.001)) == []
    assert state_of(t, "b") == (State.SUSPECT, 1)
    fx = t.tick(expected)
    assert kinds(fx) == [(EventKind.DEAD, "b")]
    # b hears it is considered dead, in case it can refute
    assert (addr("b"), Gossip("a", (up("b", 1, State.DEAD, "a"),))) in fx.messages


def test_dead_members_are_reaped_after_dead_keep() -> None:
    t = with_peers("b")
    t.tick(0.0)
    gossip(t, up("b", 1, State.DEAD), now=0.0)
    t.tick(CFG.dead_keep - 0.01)
    assert t.member("b") is not None
    fx = t.tick(CFG.dead_keep)
    assert kinds(fx) == [(EventKind.REAPED, "b")] and t.member("b") is None


def test_own_stall_gives_timers_their_time_back() -> None:
    t = with_peers("b", "c", "d")
    gossip(t, up("c", 1, State.SUSPECT, "d"))
    now, ping, _ = probe_start(t)
    # the process freezes for 5 s; every deadline passed meanwhile
    later = now + 5.0
    fx = t.tick(later)
    assert kinds(fx) == []  # nobody suspected or declared dead on waking
    assert t.awareness >= 1
    t.handle(Ack(ping.seq, ping.target), later + 0.001)  # the answer was queued
    assert state_of(t, ping.target) == (State.ALIVE, 1)
    assert state_of(t, "c") == (State.SUSPECT, 1)


def test_next_deadline_is_always_in_the_future_after_a_tick() -> None:
    t = with_peers("b", "c")
    now = 0.0
    for _ in range(300):
        t.tick(now)
        nxt = t.next_deadline()
        assert now < nxt <= now + CFG.stall_threshold / 2 + 1e-9
        now = nxt


# -- configuration ---------------------------------------------------------------


def test_presets_are_valid_and_the_lan_budget_fits_three_seconds() -> None:
    for preset in (MembershipConfig.lan(), MembershipConfig.local(), MembershipConfig.test()):
        assert preset.probe_timeout + preset.nack_timeout < preset.probe_interval
    fast, slow = MembershipConfig.test(), MembershipConfig.lan()
    assert fast.probe_interval < MembershipConfig.local().probe_interval < slow.probe_interval
    # worst case on paper, 10 nodes: first probe within one interval, failed
    # one interval later, suspicion at its max, then a few gossip rounds
    _, high = suspicion_bounds(slow, 10)
    assert 2 * slow.probe_interval + high + 3 * slow.gossip_interval < 3.0
    assert MembershipConfig.lan(probe_interval=0.5).probe_interval == 0.5


def test_config_rejects_nonsense() -> None:
    with pytest.raises(TypeError):
        MembershipConfig.lan(probe_intervall=1.0)
    with pytest.raises(ValueError, match="probe_timeout must be shorter"):
        MembershipConfig.lan(probe_timeout=0.5)
    with pytest.raises(ValueError, match="dead_keep"):
        MembershipConfig.lan(dead_keep=float("nan"))
    with pytest.raises(ValueError, match="gossip_nodes"):
        MembershipConfig.lan(gossip_nodes=0)


# -- simulation: whole clusters, fake time ---------------------------------------


def lan_cluster(n: int, seed: int = 0) -> tuple[SimNet, list[str]]:
    net = SimNet(LAN, seed=seed)
    ids = net.add_cluster(n)
    net.run_until_true(net.converged, 5.0)
    return net, ids


def everywhere(net: SimNet, node: str, state: State) -> Callable[[], bool]:
    return lambda: net.all_see(node, (state,))


def dead_events(net: SimNet, since: float) -> list[tuple[float, str, str]]:
    return [(t, obs, ev.node) for t, obs, ev in net.events_of(EventKind.DEAD, since=since)]


@pytest.mark.parametrize("n", [5, 20])
def test_sim_cluster_converges_after_joining_through_one_seed(n: int) -> None:
    net = SimNet(LAN, seed=n)
    ids = net.add_cluster(n, stagger=0.05)
    last_join = net.now
    took = net.run_until_true(net.converged, 5.0, step=0.005)
    print(
        f"\n{n} nodes joined through one seed over {last_join:.2f} s: one member table "
        f"{took:.3f} s after the last join ({net.sent} messages)"
    )
    views = {i: net.view(i) for i in ids}
    assert all(v == views["n0"] for v in views.values())
    assert sorted(views["n0"]) == sorted(ids)
    assert took < 1.0


@pytest.mark.parametrize("n", [3, 5, 20])
def test_sim_killed_node_is_dead_everywhere_within_3s(n: int) -> None:
    figures = []
    for trial in range(6):
        net, ids = lan_cluster(n, seed=100 * n + trial)
        net.run_for(0.5 + 0.173 * trial)  # kill at different points of the probe cycle
        victim = ids[1 + trial % (n - 1)]
        killed_at = net.now
        net.kill(victim)
        figures.append(net.run_until_true(everywhere(net, victim, State.DEAD), 5.0, step=0.005))
        assert {node for _, _, node in dead_events(net, killed_at)} == {victim}
    print(
        f"\n{n} nodes, lan preset: a killed node is dead on every other node after "
        f"median {statistics.median(figures):.2f} s, max {max(figures):.2f} s "
        f"({len(figures)} trials)"
    )
    assert max(figures) < 3.0


def test_sim_node_that_leaves_is_gone_everywhere_within_half_a_second() -> None:
    net, ids = lan_cluster(5)
    left_at = net.now
    net.leave("n3")
    took = net.run_until_true(everywhere(net, "n3", State.LEFT), 1.0, step=0.001)
    print(f"\nleave: gone from every node's live set after {took * 1000:.1f} ms")
    assert took < 0.5
    assert all("n3" not in net.by_id[i].table.live() for i in ids if i != "n3")
    net.run_for(5.0)
    assert dead_events(net, left_at) == []  # left, not dead: nobody probes it
    assert net.all_see("n3", (State.LEFT,))


def test_sim_twenty_percent_loss_on_one_node_for_30s_declares_nobody_dead() -> None:
    net, _ = lan_cluster(5, seed=7)
    start = net.now
    net.set_loss("n2", 0.2)
    net.run_for(30.0)
    suspects = len(net.events_of(EventKind.SUSPECT, since=start))
    refuted = len(net.events_of(EventKind.REFUTED, since=start))
    print(
        f"\n20% loss on one node, 30 s: {suspects} suspicions, {refuted} refutations, "
        f"0 dead ({net.dropped} messages lost)"
    )
    assert dead_events(net, start) == []
    assert net.dropped > 0 and suspects > 0  # the fault did bite
    net.set_loss("n2", 0.0)
    net.run_until_true(net.converged, 5.0)


def test_sim_busy_host_is_not_declared_dead_and_slows_its_own_probing() -> None:
    # a host whose event loop lags 0.3 s (each way) for 30 s
    net, _ = lan_cluster(5, seed=11)
    start = net.now
    net.set_lag("n2", 0.3)
    health = []
    for _ in range(30):
        net.run_for(1.0)
        health.append(net.by_id["n2"].table.awareness)
    suspects = len(net.events_of(EventKind.SUSPECT, about="n2", since=start))
    print(
        f"\nbusy host (0.6 s extra round trip) for 30 s: suspected {suspects} times, "
        f"never dead; its health score reached {max(health)} (timeouts x{max(health) + 1})"
    )
    assert dead_events(net, start) == []
    assert max(health) >= 2  # Lifeguard: it stretched its own timeouts
    net.set_lag("n2", 0.0)
    net.run_until_true(net.converged, 10.0)
    net.run_for(10.0)
    assert net.by_id["n2"].table.awareness == 0  # and recovered


@pytest.mark.parametrize("timers_first", [False, True])
def test_sim_node_frozen_less_than_the_suspicion_timeout_is_not_dead(timers_first: bool) -> None:
    low, _ = suspicion_bounds(LAN, 5)
    for trial in range(5):
        net, _ = lan_cluster(5, seed=20 + trial)
        net.run_for(0.05 * trial)
        start = net.now
        net.pause("n2")
        net.run_for(0.9 * low)
        net.resume("n2", timers_first)
        took = net.run_until_true(net.converged, 5.0)
        assert dead_events(net, start) == []
    suspects = len(net.events_of(EventKind.SUSPECT, about="n2", since=start))
    print(
        f"\nfrozen {0.9 * low:.2f} s (< suspicion {low:.2f} s): not dead, "
        f"{suspects} suspicions refuted, table whole again {took * 1000:.0f} ms after waking"
    )


@pytest.mark.parametrize("timers_first", [False, True])
def test_sim_node_frozen_too_long_is_dead_then_comes_back_and_accuses_nobody(
    timers_first: bool,
) -> None:
    net, _ = lan_cluster(5, seed=3)
    start = net.now
    net.pause("n2")
    took = net.run_until_true(everywhere(net, "n2", State.DEAD), 5.0)
    net.run_for(1.0)
    net.resume("n2", timers_first)
    back = net.run_until_true(net.converged, 5.0)
    print(
        f"\nfrozen {took + 1:.1f} s: dead everywhere after {took:.2f} s, alive everywhere "
        f"again {back * 1000:.0f} ms after waking"
    )
    assert took < 3.0
    # waking up late, it must not take others' silence for their death
    assert [d for d in dead_events(net, start) if d[1] == "n2"] == []
    assert net.view("n0")["n2"][1] > 1


@pytest.mark.parametrize("timers_first", [False, True])
def test_sim_node_frozen_while_suspecting_does_not_declare_dead_on_waking(
    timers_first: bool,
) -> None:
    net, _ = lan_cluster(5, seed=4)
    start = net.now
    n3 = net.by_id["n3"].table
    claim = Update("n3", n3.address, n3.incarnation, State.SUSPECT, "n4")
    net.inject("n2", Gossip("n4", (claim,)))
    net.pause("n2")  # frozen before it could hear n3's refutation
    _, high = suspicion_bounds(LAN, 5)
    net.run_for(high + 1.0)  # its suspicion timer has run out meanwhile
    net.resume("n2", timers_first)
    took = net.run_until_true(net.converged, 5.0)
    accused = [node for _, obs, node in dead_events(net, start) if obs == "n2"]
    print(
        f"\nfrozen {high + 1:.1f} s while suspecting a healthy node, "
        f"{'timers' if timers_first else 'messages'} first on waking: it accused "
        f"{accused or 'nobody'}; one table again {took:.2f} s later"
    )
    assert accused == []
    # (the others rightly declared n2 itself dead meanwhile, and took it back)
    assert {node for _, _, node in dead_events(net, start)} == {"n2"}


def test_sim_partition_2_3_for_10s_then_healed_converges() -> None:
    net, ids = lan_cluster(5, seed=5)
    small, large = ids[:2], ids[2:]
    net.partition(small, large)
    net.run_for(10.0)
    for side, other in ((small, large), (large, small)):
        for i in side:
            view = net.view(i)
            assert all(view[j][0] == State.DEAD for j in other)
            assert all(view[j][0] == State.ALIVE for j in side)
    net.heal()
    took = net.run_until_true(net.converged, 10.0)
    print(f"\npartition 2|3 for 10 s: one member table again {took:.2f} s after healing")
    assert took < 5.0


def test_sim_restarted_node_rejoins_with_a_higher_incarnation() -> None:
    net, _ = lan_cluster(5, seed=9)
    old = net.view("n0")["n4"][1]
    net.kill("n4")
    net.run_until_true(everywhere(net, "n4", State.DEAD), 5.0)
    net.add("n4", seeds=["n1"])
    took = net.run_until_true(net.converged, 5.0)
    print(f"\nrestarted node alive on every node {took * 1000:.0f} ms after it started")
    assert net.view("n0")["n4"][1] > old


def test_sim_nodes_that_joined_through_seeds_meet_the_seeds_next_lives() -> None:
    # Two seeds that name each other; two nodes join through them (nobody's
    # seed). Cut off from the joiners, both seeds die and start again, and
    # meet through their own seed lists, which do not name the joiners; the
    # joiners, not alone (each has the other), have reaped the seeds' dead
    # lives. After the heal there must be one cluster again, not two each
    # whole in its own view (the simulation's seed 6642).
    net = SimNet(LAN, seed=11)
    net.add("s0")
    net.add("s1", seeds=["s0"])
    net.run_for(0.5)
    net.add("j0", seeds=["s0", "s1"])
    net.add("j1", seeds=["s0", "s1"])
    net.run_until_true(net.converged, 5.0)
    net.partition(["j0", "j1"], ["s0", "s1"])
    net.kill("s0")
    net.kill("s1")
    net.run_for(LAN.dead_keep + 5.0)
    assert sorted(net.view("j0")) == ["j0", "j1"]  # the seeds' lives reaped
    net.add("s0", seeds=["s1"])
    net.add("s1", seeds=["s0"])
    net.run_until_true(lambda: net.converged(["s0", "s1"]), 5.0)
    net.heal()
    took = net.run_until_true(net.converged, 10.0)
    print(f"\nseeds restarted while cut off: one member table {took:.2f} s after the heal")
    assert took < 2 * LAN.reconnect_interval + 1.0


def test_sim_node_of_another_cluster_is_refused_everywhere() -> None:
    net, ids = lan_cluster(3)
    intruder = net.add("x", seeds=["n0"], cluster="other")
    net.run_for(3.0)
    assert intruder.live() == ["x"]
    assert all(net.by_id[i].table.member("x") is None for i in ids)
    refusals = net.events_of(EventKind.REFUSED)
    assert {obs for _, obs, _ in refusals} == {"n0", "x"}
    assert any("is in cluster 'sim', not 'other'" in ev.reason for _, obs, ev in refusals)


def test_sim_is_deterministic_for_a_seed() -> None:
    def run() -> list[tuple[float, str, str, str]]:
        net, _ = lan_cluster(5, seed=42)
        net.set_loss("n1", 0.3)
        net.kill("n3")
        net.run_for(5.0)
        return [(t, obs, ev.kind.value, ev.node) for t, obs, ev in net.events]

    assert run() == run()


def test_sim_fifty_nodes_join_partition_heal_and_random_loss() -> None:
    # the cluster issue's simulation target, for the member table
    net = SimNet(LAN, seed=50)
    ids = net.add_cluster(50, stagger=0.02)
    joined = net.run_until_true(net.converged, 5.0, step=0.005)
    net.partition(ids[:20], ids[20:])
    net.run_for(10.0)
    assert net.all_see("n0", (State.DEAD,)) is False  # its own side holds it alive
    assert all(net.view("n49")[i][0] == State.DEAD for i in ids[:20])
    net.heal()
    healed = net.run_until_true(net.converged, 10.0)
    start = net.now
    per_node = 1 - math.sqrt(0.8)  # 20% of all messages lost
    for i in ids:
        net.set_loss(i, per_node)
    net.run_for(10.0)
    suspects = len(net.events_of(EventKind.SUSPECT, since=start))
    falsely_dead = {node for _, _, node in dead_events(net, start)}
    for i in ids:
        net.set_loss(i, 0.0)
    recovered = net.run_until_true(net.agreed, 10.0)
    assert net.running()[0].table.live() == sorted(ids)
    evened = net.run_until_true(net.converged, LAN.push_pull_interval + 1.0, step=0.1)
    print(
        f"\n50 nodes: one table {joined:.3f} s after the last join; {healed:.2f} s after a "
        f"20|30 partition healed; 20% loss for 10 s: {suspects} suspicions, "
        f"{len(falsely_dead)} nodes transiently declared dead, all alive everywhere "
        f"{recovered:.2f} s after the loss stopped, incarnations equal {evened:.1f} s later"
    )
    assert joined < 1.0 and healed < 5.0 and recovered < 3.0
