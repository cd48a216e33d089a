"""The whole-cluster simulation (``tests/sim``, issue 11 item 3): the
checker itself, exact replay, shrinking, mutants it must catch, and a few
hundred seeded schedules against the real node.

Layer: deterministic simulation (STYLE.md §6). Every schedule is a seed:
``python -m tests.sim --seed S --schedules 1 -v`` replays one. Invariants
that the node breaks today (issue 11's defects, and one the simulation found
on a single node) are separate ``xfail(strict=True)`` tests, so the run stays
green and each flips to a failure the day its fix lands.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgpack
import pytest
from sim.check import History
from sim.client import payload_of
from sim.explore import DRAIN_LIMIT, SETTLE, run_plan, shrink, verdicts_many
from sim.schedule import DEFAULT_FAULTS, FAULTS, ROLLING, Op, Plan, generate
from sim.world import World
from zchannels.node.cluster import ClusterNode, Effects

from zchannels.protocol import Message, MsgType

ROOT = Path(__file__).resolve().parent.parent
#: schedules per CI run (one node; three nodes), and worker processes (this
#: machine has 2 cores)
SCHEDULES = int(os.environ.get("ZCHANNELS_SIM_SCHEDULES", "300"))
CLUSTER_SCHEDULES = int(os.environ.get("ZCHANNELS_SIM_CLUSTER_SCHEDULES", "300"))
#: rolling restarts: three-node schedules whose only fault is a drain
ROLLING_SCHEDULES = int(os.environ.get("ZCHANNELS_SIM_ROLLING_SCHEDULES", "200"))
JOBS = 2


# -- the checker, on hand-made histories ----------------------------------------


def _history(*keys: tuple[str, int], target: str = "q") -> History:
    h = History()
    h.fifo_channels.add(target)
    for key in keys:
        h.sent(key, "send", target, 0.0)
        h.outcome(key, "accepted", 0.0)
    return h


def _invariants(h: History) -> set[str]:
    return {v.invariant for v in h.violations}


def test_a_clean_history_passes() -> None:
    h = _history(("p", 1), ("p", 2), ("p", 3))
    for s in (1, 2):
        h.delivered("c", "q", payload_of("p", s), 1.0)
    terms = h.account(drops=1, held=0, now=2.0)  # the third counted lost
    assert h.violations == []
    assert terms["missing"] == 1


def test_a_duplicate_is_caught() -> None:
    h = _history(("p", 1))
    h.delivered("c", "q", payload_of("p", 1), 1.0)
    h.delivered("d", "q", payload_of("p", 1), 2.0)
    assert _invariants(h) == {"duplicate"}


def test_an_inversion_is_caught() -> None:
    h = _history(("p", 1), ("p", 2))
    h.delivered("c", "q", payload_of("p", 2), 1.0)
    h.delivered("c", "q", payload_of("p", 1), 2.0)
    assert _invariants(h) == {"fifo"}


def test_an_inversion_on_a_shared_channel_is_not_one() -> None:
    """Competing consumers with prefetch take out of order by design."""
    h = _history(("p", 1), ("p", 2), target="s")
    h.fifo_channels.clear()
    h.delivered("c", "s", payload_of("p", 2), 1.0)
    h.delivered("d", "s", payload_of("p", 1), 2.0)
    assert h.violations == []


def test_an_uncounted_loss_is_caught() -> None:
    h = _history(("p", 1), ("p", 2), ("p", 3))
    h.delivered("c", "q", payload_of("p", 1), 1.0)
    h.account(drops=1, held=0, now=2.0)  # two missing, one counted
    assert _invariants(h) == {"uncounted_loss"}


def test_a_message_counted_twice_is_caught() -> None:
    h = _history(("p", 1), ("p", 2))
    h.delivered("c", "q", payload_of("p", 1), 1.0)
    h.account(drops=2, held=0, now=2.0)
    assert _invariants(h) == {"overcounted"}


def test_a_late_delivery_of_a_counted_loss_is_caught() -> None:
    h = _history(("p", 1))
    h.outcome(("p", 1), "counted_lost", 1.0)
    h.delivered("c", "q", payload_of("p", 1), 2.0)
    assert _invariants(h) == {"lost_then_delivered"}
    # and at count level: counted (by the client) and delivered
    h2 = _history(("p", 1))
    h2.delivered("c", "q", payload_of("p", 1), 2.0)
    h2.account(drops=1, held=0, now=3.0)
    assert _invariants(h2) == {"overcounted"}


def test_a_delivery_then_a_count_of_its_loss_is_caught() -> None:
    h = _history(("p", 1))
    h.delivered("c", "q", payload_of("p", 1), 1.0)
    h.outcome(("p", 1), "counted_lost", 2.0)
    assert _invariants(h) == {"lost_then_delivered"}


def test_phantoms_are_caught() -> None:
    h = _history(("p", 1))
    h.delivered("c", "q", payload_of("p", 9), 1.0)  # never sent
    h.delivered("c", "other", payload_of("p", 1), 1.0)  # sent elsewhere
    h.delivered("c", "q", msgpack.packb([1, 2]), 1.0)  # not ours at all
    assert [v.invariant for v in h.violations] == ["phantom"] * 3


# -- exact replay and shrinking ---------------------------------------------------


def test_same_seed_same_trace_byte_for_byte() -> None:
    plan = generate(11, 1)
    a = run_plan(plan, keep_trace=True)
    b = run_plan(plan, keep_trace=True)
    assert a.trace == b.trace and a.digest == b.digest
    assert len(a.trace) > 500
    assert run_plan(generate(12, 1)).digest != a.digest


def test_a_traced_replay_ends_with_what_each_node_still_holds() -> None:
    """A traced replay ends with each live node's state: which pool still
    holds capacity and what holds it (the diagnosis of soak seeds 138 and
    728 took that). Here: 3 sends nobody had time to take (no drain)."""
    plan = Plan(0, 3, (Op(0.01, "client", ("c0", 0)), Op(0.2, "send", ("c0", "q0", 3, 0.0, 1000))))
    result = run_plan(plan, keep_trace=True, drain_limit=0.0)
    assert result.invariant == "stalled"
    state = [line.split(" ", 1)[1] for line in result.trace if " state " in line]
    owner = next(line.split()[1] for line in state if " pool q0 holds 3" in line)
    assert state.count(f"state {owner} pool q0 holds 3") == 1
    assert "state   q0 queued 3" in state
    assert sum(1 for line in state if line.startswith("state n") and "{" in line) == 3


def test_a_saved_plan_replays_exactly() -> None:
    plan = generate(5, 1)
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert run_plan(again).digest == run_plan(plan).digest


def test_replay_is_identical_across_processes() -> None:
    """The command line runs under PYTHONHASHSEED=0 whatever the caller's."""
    digests = set()
    for hashseed in ("1", "2"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.sim",
                "--seed",
                "3",
                "--schedules",
                "1",
                "-v",
                "--no-shrink",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": hashseed},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        line = next(x for x in out.stdout.splitlines() if x.startswith("seed 3:"))
        digests.add(line.rsplit(", ", 1)[1])
    assert len(digests) == 1


# -- mutants the checker must catch ------------------------------------------------


class SilentDrop(ClusterNode):
    """Broken on purpose: every 5th acknowledged send is answered and never
    queued, and no counter says so."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sends = 0

    def client(self, conn: bytes, messages: list[Message], now: float) -> Effects:
        kept: list[Message] = []
        answers: list[tuple[bytes, Message]] = []
        for m in messages:
            if m[0] == MsgType.SEND and m[1][0]:
                self.sends += 1
                if self.sends % 5 == 0:
                    answers.append((conn, (MsgType.ACK, (m[1][0], 0))))
                    continue
            kept.append(m)
        fx = super().client(conn, kept, now)
        fx.clients[:0] = answers
        return fx


class DoubleDeliver(ClusterNode):
    """Broken on purpose: the 20th delivery goes out twice."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delivers = 0

    def _twice(self, fx: Effects) -> Effects:
        for conn, m in list(fx.clients):
            if m[0] == MsgType.DELIVER:
                self.delivers += 1
                if self.delivers == 20:
                    fx.clients.append((conn, m))
        return fx

    def client(self, conn: bytes, messages: list[Message], now: float) -> Effects:
        return self._twice(super().client(conn, messages, now))


class Reorder(ClusterNode):
    """Broken on purpose: a DELIVER of several messages arrives reversed."""

    def client(self, conn: bytes, messages: list[Message], now: float) -> Effects:
        fx = super().client(conn, messages, now)
        fx.clients = [
            (c, (MsgType.DELIVER, (m[1][0], list(reversed(m[1][1])))))
            if m[0] == MsgType.DELIVER and len(m[1][1]) > 1
            else (c, m)
            for c, m in fx.clients
        ]
        return fx


@pytest.mark.parametrize(
    ("mutant", "invariant"),
    [(SilentDrop, "uncounted_loss"), (DoubleDeliver, "duplicate"), (Reorder, "fifo")],
)
def test_a_broken_node_is_caught(mutant: type[ClusterNode], invariant: str) -> None:
    caught = next(
        (
            seed
            for seed in range(40)
            if invariant
            in {v.invariant for v in run_plan(generate(seed, 1), factory=mutant).violations}
        ),
        None,
    )
    assert caught is not None, f"{mutant.__name__} went unnoticed in 40 schedules"


#: one drain under traffic: node 0 drains while c0 (its client) sends to q0
#: (c1's, on node 1) and c1 sends to c0's new_channel() name
ONE_DRAIN = Plan(
    7,
    3,
    tuple(
        Op.from_json(o)
        for o in (
            [0.0, "client", "c0", 0],
            [0.0, "client", "c1", 1],
            [0.05, "recv", "c1", "q0", 0.0],
            [0.05, "recv", "c0", "!c0.0", 0.0],
            [0.6, "drain", 0, 0.1],
            [0.6, "send", "c0", "q0", 8, 0.01, 1000],
            [0.62, "send", "c1", "!c0.0", 8, 0.01, 1000],
            [0.65, "send", "c0", "q0", 8, 0.01, 1000],
        )
    ),
)


def test_a_drain_moves_its_clients_and_loses_nothing() -> None:
    """The drain's steps as the shell takes them: drain, drained (the
    clients moved), leave, linger, gone, restart hold s later in a new
    incarnation; the node's client held a send meanwhile; all 24 taken."""
    result = run_plan(ONE_DRAIN, keep_trace=True)
    assert result.violations == []
    steps = [
        line.split(" ", 1)[1]
        for line in result.trace
        if " drain" in line or "start n0" in line or "left n0" in line
    ]
    assert steps[:5] == [
        "start n0 inc 1000001",
        "op drain 0 0.1",
        "drain n0 hold 0.1",
        "n0 drained: leaves",
        steps[4],
    ]
    assert steps[4].startswith("left n0") and steps[5].startswith("start n0 inc")
    assert steps[5] != steps[0]
    assert result.stats == {"drains": 1, "held": 1, "counted": 0}
    assert result.summary["taken"] == result.summary["sent"] == 24


class SilentDrain(ClusterNode):
    """Broken on purpose: a drain that does not tell its clients."""

    def drain(self, now: float) -> Effects:
        super().drain(now)
        return Effects()


def test_a_drain_that_does_not_tell_its_clients_is_caught() -> None:
    """Its clients never move: the node leaves at the drain timeout."""
    result = run_plan(ONE_DRAIN, factory=SilentDrain, stop_at_first=False)
    assert "drain_timeout" in {v.invariant for v in result.violations}
    assert result.stats["held"] == 0


def test_a_failure_shrinks_to_a_short_schedule_that_still_fails() -> None:
    seed = next(
        s
        for s in range(40)
        if run_plan(generate(s, 1), factory=SilentDrop).invariant == "uncounted_loss"
    )
    plan = generate(seed, 1)

    def run(p: Plan) -> Any:
        return run_plan(p, factory=SilentDrop)

    small = shrink(plan, "uncounted_loss", run=run, budget=60)
    assert len(small.ops) < len(plan.ops) // 4
    assert run(small).invariant == "uncounted_loss"
    # a send alone cannot fail: the mutant drops every 5th
    assert any(op.kind == "send" for op in small.ops)


# -- the schedules ------------------------------------------------------------------

#: invariants the node breaks today, with the defect and a seed where it shows
#: (empty: the one it found, reserved sends of a process that died refused
#: UNKNOWN_SESSION and counted by nobody, seed 0, is fixed: the node counts them)
KNOWN_SINGLE: dict[str, str] = {}


def _explore(
    schedules: int, nodes: int, what: str, faults: tuple[str, ...] | None = None
) -> dict[str, list[tuple[int, str]]]:
    """Seeds 0..schedules-1 on ``nodes`` nodes: invariant -> [(seed, violation)]."""
    return _explore_stats(schedules, nodes, what, faults)[0]


def _explore_stats(
    schedules: int, nodes: int, what: str, faults: tuple[str, ...] | None = None
) -> tuple[dict[str, list[tuple[int, str]]], dict[str, int]]:
    """``_explore``, and the runs' ``stats`` summed (drains, held, counted)."""
    started = time.perf_counter()
    results = verdicts_many(range(schedules), nodes, faults, jobs=JOBS)
    took = time.perf_counter() - started
    by: dict[str, list[tuple[int, str]]] = defaultdict(list)
    totals: dict[str, int] = defaultdict(int)
    for seed, found, _seconds, stats in results:
        for invariant, text in found.items():
            by[invariant].append((seed, text))
        for key, n in stats.items():
            totals[key] += n
    print(f"\n{schedules} {what} schedules in {took:.1f} s: {dict(totals)}")
    return by, totals


@pytest.fixture(scope="module")
def single() -> dict[str, list[tuple[int, str]]]:
    return _explore(SCHEDULES, 1, "single-node")


def _report(by: dict[str, list[tuple[int, str]]], invariant: str) -> str:
    seeds = by.get(invariant, [])
    return "\n".join(f"seed {s}: {text}" for s, text in seeds[:5])


@pytest.mark.timeout(900)  # (the module's schedules run in the first)
def test_single_node_schedules_hold_every_other_invariant(
    single: dict[str, list[tuple[int, str]]],
) -> None:
    unexpected = {k: v for k, v in single.items() if k not in KNOWN_SINGLE}
    assert not unexpected, "\n".join(_report(single, k) for k in unexpected)


@pytest.mark.timeout(900)  # (the module's schedules run in the first)
def test_single_node_reserved_sends_of_dead_processes_are_counted(
    single: dict[str, list[tuple[int, str]]],
) -> None:
    assert "uncounted_loss_dead_sender" not in single, _report(single, "uncounted_loss_dead_sender")


PLANS = Path(__file__).resolve().parent / "sim" / "plans"


def test_shrunk_single_node_dead_sender_plan() -> None:
    """Shrunk from seed 0: c3 sends with reservations, its node freezes, it
    sends 4 more (queued in the node's socket), dies; the node thaws, a send
    to c3 fails, and the 4 reserved sends are refused UNKNOWN_SESSION."""
    result = run_plan(Plan.from_json((PLANS / "single-dead-sender.json").read_text()))
    assert result.violations == [], result.violations


#: Shrunk cluster plans that still fail (strict xfails); the others pass
#: since the answer bound, the late-send refusal and the fence
#: (defect2-overcounted, defect3-answer-time, defect3-stalled,
#: freeze-fence-new-life: seed 0, a fenced life's relays carried the old
#: incarnation) and since a member thought dead is still heard and sent to
#: (heal-credit-and-delivery-race: seed 8, a receiver's credit and then its
#: delivery dropped in the moment a healed partition's views catch up), and
#: since a starting node serves its clients once its peers have handed over
#: what it owns (plain-leave-fifo: seed 46, messages its clients sent as it
#: left were handed back after their newer ones had been delivered), and
#: since peer links send again what a broken connection lost and an owner
#: counts the reserved sends it refuses as late
#: (defect2-uncounted-loss: a reserved send relayed across a partition;
#: defect2-reserved-send-lost-in-partition: seed 4, the same, 6 sends), and
#: since what a given-up link kept is counted where its peer never took it
#: (lost-then-delivered: messages lost with a node restarted under its
#: clients, counted by nobody), and since a node that ends after its leave
#: counts what no peer acknowledged (leave-into-partition-handoff: seed 37,
#: its queue handed to an owner cut off by a partition;
#: leave-into-partition-relayed-sends: seed 123, the same for sends it
#: relayed there), and since a node that left heard by no peer leaves its
#: last reported queue to the peers that declare it dead, and a peer that
#: heard the leave says so to those that declared it dead
#: (leave-alone-in-partition-counted-twice: seed 250, and seed 19), and
#: since a group_send from a restarted node's new life skips the memberships
#: another node kept for its earlier life's sessions (the new life applied
#: it to those its clients made again; group-copy-handed-back-after-
#: partition-delivered-twice: seed 724 of the soak, a duplicate), and
#: since what is for a new life of a peer is held until it says hello
#: (Links.frame: credit-to-a-restarted-owner-cut-off-lost-plain-frame, soak
#: seed 1127, a stall; handback-to-a-new-life-held-until-it-says-hello,
#: seed 202, and handback-to-a-restarted-owner-not-lost-with-a-reset, seed
#: 264: handbacks sent plain and lost; and handbacks-from-two-keepers-
#: merged, seed 290's overcount, whose timing it moved), and since the
#: producer's node numbers each client's sends and queues that meet keep
#: each producer's order by those numbers (queues.Stamp, Queues.adopt:
#: relay-delayed-on-a-lossy-link-merged-after-a-newer-send, seed 125's
#: shrink; handback-delayed-in-transit-merged-after-newer-sends, seed 46's:
#: merged by deadline, measured where each was queued or framed, a
#: producer's older sends went after its newer ones), and since a give-back
#: relayed to an owner carries the stamps of what it gives back
#: (FEATURE_RETURN_STAMPS: give-back-of-another-owners-deliveries-queued-
#: without-stamps-ahead-of-an-older-one, seed 5978, queued by its stamps;
#: give-backs-of-two-owners-numbered-alike-told-apart-by-their-stamps, seed
#: 489's shrink; give-back-taken-up-late-keeps-the-mark-of-a-newer-send-its-
#: client-took, seed 6222's).
#: name -> (the invariant it still breaks, why). Each runs and must break
#: that invariant and no other (so it still guards everything else it was
#: saved for), reported as an xfail; once it passes, the test fails until
#: it is taken out of this table.
FAILING_PLANS: dict[str, tuple[str, str]] = {
    # (fifo, the causes of the 10,000 run's fifo seeds left in session 23:
    # docs/cluster.md, "In session 23")
    "older-send-handed-to-the-next-consumer-after-its-predecessor-took-a-newer": (
        "fifo",
        "seed 6361 (11 ops, shrunk again in session 25; 1767 alike): n1, lagging, was declared "
        "dead in the same life and kept c3's sends 1-6, which c0 had given back; n2 served "
        "the channel meanwhile and c0 took c3's newer sends 7-13 from it, then died; the "
        "channel's next consumer d0, a new connection with no marks, was handed send 1 by n1 "
        "once the views healed. The marks are per connection; one per channel would refuse "
        "what competing consumers take out of order by design. What it needs: an owner "
        "declared dead in the same life not serving what it held from before, or the interim "
        "owner's marks handed to it with the channel",
    ),
    "deliveries-held-unread-by-a-node-that-ended-its-life-as-their-owner-did-counted-by-nobody": (
        "uncounted_loss",
        "kill-free seed 1009's shrink (7 ops): the consumer's node and the channel's owner froze "
        "and both ended their lives in place at the same thaw; the owner's 2 deliveries, held "
        "unread by the consumer's node, were dropped with its life. It tells the owner "
        "(RelayLost), which no life of the owner takes, and the owner's fence handed them to "
        "its next life as flight to other nodes' clients, uncounted. Counting them at the "
        "fenced node when no life of the owner takes the frame (39c6d12) counted them twice "
        "where the owner had parked them (CI seed 81, 18 seeds of the 10,000); counting them at "
        "the owner's next life counted refusals twice (seed 3158). What it needs: the RelayLost "
        "saying whether its sender counts it if unheard, or the owner's fence saying what it "
        "parked",
    ),
    "last-leavers-handover-to-a-peer-heard-after-it-was-sent-under-loss-counted-by-nobody": (
        "uncounted_loss",
        "a 14-op shrink of seed 919 found in session 31 (it fails on every version of that "
        "session; the seed itself passes): all three nodes leave; under 30% loss on n2, n0, "
        "the last, hands its 25 queued messages to n2, which had left unheard and whose "
        "process ended first. n0 heard n2 0.1 s after the handover's frame went, so its exit "
        "presumed the frame taken (Links.give_up: a peer heard from since took it, only the "
        "acknowledgement is on its way) and counted nothing. What it needs: the peer's word "
        "(the acknowledgements its frames carried, against a measured round trip), not a "
        "presumption either way: the reverse counts twice what a lossy peer did take",
    ),
    "give-back-relayed-to-a-node-that-left-never-taken": (
        "uncounted_loss_dead_sender",
        "an uncounted loss (seed 148, 14 ops; the checker names it uncounted_loss_dead_sender, "
        "as the shortfall is no bigger than c1's refused reserved sends): c2 stopped receiving "
        "q1 with credit still granted (a receive keeps its prefetch after a cancel since "
        "2026-12-05), so c0's 4 sends were delivered to it; its node n2 leaves (handing q1 to "
        "n0, frozen), then freezes; c2's sweep gives the 4 back, n2 relays them to n0, which "
        "thaws still taking n2 for q1's owner and relays them back to n2; n0 then hears n2 "
        "left, its link to n2 ends with the frame in limbo, and n2 thaws and exits without "
        "taking it. A relayed give-back is in nobody's flight once the node that delivered "
        "it left (its leave hands over the queue, not the flight), and links count only "
        "reserved sends and handed-over items (counting relayed give-backs there too "
        "overcounts where a partitioned owner also counted them receiver_gone: 3 more "
        "overcounted seeds of 300)",
    ),
}


@pytest.mark.parametrize(
    "name",
    [path.stem for path in sorted(PLANS.glob("*.json")) if not path.stem.startswith("single-")],
)
def test_shrunk_cluster_plan(name: str) -> None:
    result = run_plan(Plan.from_json((PLANS / f"{name}.json").read_text()))
    known = FAILING_PLANS.get(name)
    if known is None:
        assert result.violations == [], result.violations
        return
    invariant, why = known
    if not result.violations:
        pytest.fail(f"{name} passes now: take it out of FAILING_PLANS ({invariant}: {why})")
    others = [v for v in result.violations if v.invariant != invariant]
    assert not others, f"besides the known {invariant}: {others}"
    pytest.xfail(f"{invariant}: {why}")


def test_drain_came_last_so_old_seeds_keep_their_schedules() -> None:
    """``drain`` was added after the other kinds: what a seed draws by
    default must not change (the strict xfails below name seeds), and
    ``--faults drain`` is a rolling restart with no other fault."""
    assert FAULTS[-1] == "drain" and "drain" not in DEFAULT_FAULTS
    assert DEFAULT_FAULTS == FAULTS[:9]
    assert generate(8, 3) == generate(8, 3, DEFAULT_FAULTS)
    kinds = {op.kind for seed in range(20) for op in generate(seed, 3, ROLLING).ops}
    assert "drain" in kinds
    assert not kinds & (set(FAULTS) - {"drain"}), kinds
    assert not {"restart", "thaw", "heal"} & kinds


def test_channels_with_one_consumer_are_checked_for_fifo() -> None:
    """Every channel a schedule gives one consumer at a time is checked
    for order: the ``new_channel()`` names and the hashed ``qN`` (until
    2026-12-06 only the former were, and an inversion on a ``qN``, issue
    11 defect 1, passed unseen)."""
    plan = Plan.from_json(
        (PLANS / "delivery-from-a-frozen-owner-refused-after-its-death.json").read_text()
    )
    world = World(plan, factory=ClusterNode, clustered=True)
    history = world.run(SETTLE, DRAIN_LIMIT)
    assert "q0" in history.fifo_channels
    assert not {c for c in history.fifo_channels if c.startswith("s")}, "competing consumers"
    assert history.violations == []


def test_a_frozen_node_sends_what_was_in_its_pipe_when_it_thaws() -> None:
    """SIGSTOP stops libzmq's I/O thread too: a frame a node sent just
    before its freeze waits in its process until it thaws (the real-process
    fault test, seed 6: a delivery reached the client's node 3 s late, after
    the owner had been declared dead). The plan freezes n2 100 us after it
    relayed a delivery to n1's client."""
    plan = Plan.from_json(
        (PLANS / "delivery-from-a-frozen-owner-refused-after-its-death.json").read_text()
    )
    result = run_plan(plan, keep_trace=True)
    [held] = [line for line in result.trace if "in its pipe" in line]
    assert held.startswith("0.902000 n2 froze with 1 frame(s) in its pipe"), held
    assert "RelayBack" in held
    assert result.violations == []


def test_schedules_exercise_what_they_should() -> None:
    """A schedule set that never froze a node or killed a consumer would
    prove nothing: the generator's mix is checked on the first seeds."""
    kinds: dict[str, int] = defaultdict(int)
    for seed in range(30):
        for op in generate(seed, 3).ops:
            kinds[op.kind] += 1
    for kind in (
        "send",
        "gsend",
        "recv",
        "cancel",
        "gadd",
        "die",
        "freeze",
        "kill",
        "restart",
        "partition",
        "leave",
        "reset",
        "loss",
        "lag",
    ):
        assert kinds[kind] > 0, kind
    assert isinstance(generate(0, 3).ops[0], Op)


# -- three nodes (the real ClusterNode) -------------------------------------------

#: What the explorer still finds against ClusterNode (3 nodes), with
#: a seed each (``python -m tests.sim --seed S --schedules 1 --nodes 3 -v``)
#: and its shrunk schedule in tests/sim/plans/. Each is a strict xfail: when
#: the fix lands, the test passes, xfail(strict) fails, and the mark goes.
KNOWN_CLUSTER = {
    # (uncounted_loss_dead_sender: on one node exact and fixed; in a
    # cluster the checker names a shortfall no bigger than the reserved
    # sends refused to dead processes after it; seed 148 was (before a
    # receive kept its prefetch after a cancel, which moved it: see below)
    # reserved sends a node that left held in a doubt and dropped as its
    # process ended, counted since by ``ClusterNode.gone``; before, seeds
    # 103 and 197, a fence's give-backs and a fence report after the
    # estimate, plans/fence-give-back-to-next-life.json,
    # plans/fence-report-after-estimate.json)
    "uncounted_loss": "issue 11 defect 2: accepted messages lost and counted by no node; "
    "2 of 300 seeds: 168, 289 (3 before what a client holds that its node answers for "
    "after handing the channel on went in the held record and the life note, and what a "
    "client gives back to the next life before its HELLO was counted, session 30: seed "
    "288; "
    "5 before the next process of a SIGKILLed life counted "
    "what that life's clients that never came back had in flight, from the held "
    "record's flights, session 30: seeds 100 and 158; "
    "6 before the reserved sends a SIGKILLed "
    "node never read from its socket were counted by its next process at the client's "
    "HELLO, from the held record's tally, session 30: seed 125; "
    "8 before a killed owner's deliveries to "
    "other nodes' clients, in frames those nodes never took, were counted by its next "
    "process, seeds 97 and 299; 9 before a SIGKILLed life's "
    "next process asked its peers how far they took what its links carried, and answered "
    "their probes as that life would, session 29; 32 before a SIGKILLed life was counted "
    "from what it held at its last step, its held record, not from its last load report: "
    "the report's age was the "
    "largest term; what is left is mostly what was in transit as the life died, such as "
    "reserved sends in its socket it never read, docs/cluster.md, session 28; "
    "33 before a message with producer stamps for a node never heard "
    "from waited for its hello, which moved seed 264's timing: it passes; "
    "34 before a node that left lingered while a peer it still heard "
    "had not acknowledged its reserved sends, as it did for a handover: seed 6, kill-free "
    "seed 173's shrink, plans/reserved-sends-into-loss-after-a-leave-lingered-on.json; "
    "33 before the client's node refused a delivery older than one of the "
    "same producer another owner handed the client: seed 125, which stopped at that "
    "inversion before, goes on to a loss it had too; 40 before a dead life was counted by "
    "the newest report of it any "
    "survivor holds, not the first survivor's own: seeds 42, 77, 92, 133, 157, 240, 266 "
    "pass, plans/leaver-alone-in-partition-counted-from-the-newest-report.json; "
    "38 before nodes called their configured seeds when not alone, and the "
    "final count waited for parked deliveries, which moved timings; 42 before a link sent "
    "everything again at once when its peer "
    "acknowledged a gap, soak seed 957's shrink, plans/reset-gap-filled-before-the-peer-"
    "leaves.json; 41 before a node that left had its frames acknowledged at once, "
    "which moved seed 58 onto a killed owner's estimate; 43 before what is for a new life "
    "of a peer was held until it says "
    "hello: seeds 119, 202 and 264 fixed, seed 48 moved onto a killed owner's estimate; "
    "44 before what a node not yet in the member table sends was held "
    "until it is, which moved seed 277 back; 43 before what a client did with its flight "
    "was told again when a link "
    "lost it, which moved seed 277 onto a killed owner's estimate, its 7-op shrink failing "
    "before too; 45 before a receive kept its prefetch after a cancel, which moved "
    "every timing; 47 before a node that leaves alone in a partition left its "
    "reported queue to its peers; 43 before a silent node was presumed lost only after "
    "dead_keep: "
    "seeds 60, 170, 266 had a loss covered by a count of a node back in the same life; "
    "40 before answering sooner at an owner's death moved every timing; "
    "41 before a node that ends after its leave judged each frame a "
    "peer never acknowledged by itself, seed 6, plans/leave-into-partition-handover-after-"
    "peer-last-heard.json; 43 before deliveries to a client of a node thought dead were "
    "parked at once, seeds 28 and 280, plans/delivery-to-a-node-thought-dead-parked.json; "
    "48 before a node that ends after its leave counted what is still "
    "queued there, a handover taken while it lingered, seed 78, plans/handover-to-a-"
    "lingering-node-counted-at-exit.json; 50 before a dead node's load report counted "
    "what it had parked, "
    "seed 116; 54 before a link in limbo was asked about before the first frame of "
    "the next link to its peer, seed 4, plans/limbo-probe-before-new-link.json; 56 before "
    "a fence counted what its clients give back to the next life and a fence report "
    "after the estimate counts what it adds, seeds 0, 84, 103, 197; "
    "59 before a node that ends after its leave counted the deliveries "
    "to other nodes' clients those nodes never took, seed 263, "
    "plans/leave-into-partition-delivery-in-flight.json; "
    "70 before a node that ends after its leave counted what a peer "
    "cut off never took, seeds 37 and 123; "
    "72 before a copy of a client's report stopped going to a node that had left; "
    "62 before frames for a past life were refused, a duplicate's risk; "
    "95 with peer links and prompt load reports alone, 124 before; 12 of those 95 were "
    "within what a killed node held beyond its last report); what a SIGKILLed "
    "owner held is counted from its last load report, an estimate by construction; "
    "plans/defect2-uncounted-loss.json (a send relayed across a partition) passes now",
    "overcounted": "issue 11 defect 2: messages counted lost that were delivered after all "
    "(2 of 300 seeds: 70, 157, since what a SIGKILLed life had parked for other nodes' "
    "clients waits in its next process, from the held record, for the clients' reports "
    "told again, session 31: seeds 176 and 196, plans/what-a-killed-owner-parked-settled-"
    "by-the-clients-reports-told-to-its-next-life.json; 4 before: 70, 157, 176, 196, "
    "since a client's node copies its report of a live "
    "node's deliveries to that node when the report goes to another owner: it may have "
    "declared the client's node dead and parked them, kill-free seed 65, plans/report-of-"
    "deliveries-by-an-owner-that-declared-the-clients-node-dead-copied-to-it.json, and seed "
    "166; 6 before: 65, 70, 157, 166, 176, 196, since a SIGKILLed life's next process "
    "counts its held record itself, once, and counts only the frames its peers say they "
    "never took, session 29: seed 27, reserved sends a peer took whose acknowledgement the "
    "kill cut off, and seed 50, a crashed life's record counted by the first survivor and "
    "by one that lagged behind a partition, pass; 14 before: 27, 52, 65, 95, 108, 116, 157, "
    "160, 166, 176, 219, 241, 289, 298, since a SIGKILLed life is counted from its held "
    "record: what it held at its last step, which counts a frame a peer took whose "
    "acknowledgement the kill cut off, and "
    "which the old estimate's age no longer offsets; 9 before: 52, 65, 95, 166, 176, 222, "
    "241, 247, 260, since a node's next life "
    "says its last one left, from the note its process leaves in state_dir: seed 283, a "
    "leaver's queue counted by it and by peers that never heard the leave, passes; "
    "10 before: 52, 65, 95, 166, 176, 222, 241, 247, 260, 283, since a dead life is "
    "counted by the newest report of it any survivor holds: seed 260's newest report said "
    "8 queued that the killed node had handed over after it, which the first survivor's "
    "older report hid; 9 before: 52, 65, 95, 166, 176, 222, 241, 247, 283, since nodes call their "
    "configured seeds when not alone and a parked delivery waits as long as the dead are "
    "remembered, which moved timings; before, 52, 95, 176, 222, 226, 240, 241, 247, 283, "
    "since a node finds every "
    "seed at its start, up or not, which moved timings; 10 before: 6, 52, 53, 95, 176, "
    "222, 226, 241, 247, 283; 222 and 226 moved "
    "there with the link's fast resend, 222's 4-op shrink fails on the code before it too; "
    "8 before it; 10 before deliveries given back "
    "where their owner was thought dead told that owner, seeds 201 and 244, plans/deliveries-"
    "given-back-where-their-owner-was-thought-dead-not-counted-lost.json; 15 before what a node "
    "that left sends was acknowledged at once, seeds 9, 18, 44, 250, 265, plans/leaver-"
    "reserved-sends-taken-before-a-*-acknowledged-at-once.json; 16 before a report after "
    "a handover said the leaver's life left, seed 19, plans/leave-into-partition-report-"
    "after-handover-says-it-left.json; 17 before a run given back that an earlier owner "
    "had handed out went to the "
    "front in its order and a handover after the channel was served was dropped: seed 47; "
    "16 before what a node not yet in the member table sends was held until it is, "
    "which moved seed 250 onto a killed owner's estimate, its 7-op shrink failing before "
    "too; 17 before what a client did with its flight was told again when a link lost it "
    "(seed 59); 9 before a receive kept its prefetch after a cancel, which moved every timing: "
    "the shrunk seeds 9 and 44 fail on the code before it too, a plain leave or a kill "
    "with a lossy link or a partition; 10 before a node that left "
    "heard by no peer left its last "
    "reported queue to the peers that declare it dead, seeds 19 and 250, plans/leave-alone-"
    "in-partition-counted-twice.json; 18 before a silent "
    "node was presumed lost only after dead_keep, not 3x the answer bound: a partition "
    "longer than that healed into the same life and its queue was delivered, seeds 1, 56, "
    "195, 226, 240, 277, plans/partition-healed-after-presumption-not-counted.json; "
    "15 before a node that "
    "left lingered until its last reserved send could be acknowledged, seeds 36 and 59, "
    "plans/leaving-node-"
    "reserved-sends-*.json, while a node that ends after its leave judging each frame a "
    "peer never acknowledged by itself added seed 171, a lossy link whose acknowledgements "
    "came after the linger's limit; 17 before the first survivor said which "
    "dead lives it counted, seeds 27 and 50, plans/first-survivor-counted-then-killed.json; "
    "21 before a node seen back in the same "
    "life stopped being presumed lost when its next report was late, seeds 48, 174, 207, "
    "278; 19 before the limbo probes moved "
    "timings, seeds 50, 104 and 195: a dead node's last reported queue counted by two "
    "survivors; 14 before a node that ends after its "
    "leave counted what a peer cut off never took: a node that leaves alone in a "
    "partition is counted by it and by its peers, plans/leave-alone-in-partition-counted-"
    "twice.json, seeds 19 and 250; 13 before a copy of a client's report stopped going to "
    "a node that had left; 24 before what a client of a node declared "
    "dead was handed waited for its report, seed 22; 13 before peer links and prompt "
    "load reports; 31 before a reserved send "
    "refused UNKNOWN_SESSION stopped being counted by its client as well as its node; "
    "seed 139, 5 ops: a client of a node "
    "declared dead while it lagged took what its owner had counted receiver_gone as it "
    "forgot the client; the shrunk plans/defect2-overcounted.json, "
    "seed 11, passes now; 10 more seeds were deliveries that bounced off a client that had "
    "gone, given back after the owner had counted them: plans/delivery-after-gone-"
    "overcounted.json)",
    "uncounted_loss_dead_sender": "issue 11 defect 2: seed 148, an uncounted loss the "
    "checker names after the reserved sends refused to a dead process, as it is no bigger "
    "than they are: plans/give-back-relayed-to-a-node-that-left-never-taken.json (its first "
    "shrink, plans/give-back-relayed-by-a-life-that-left-refused-stale.json, a relay from a "
    "life that had left refused as stale with its give-backs uncounted, passes since they "
    "are counted there)",
    # (fifo: none of 300 since 2026-12-07. Issue 11 defect 1, a producer's
    # messages to a channel taken out of order: seed 125 of 300 once FIFO was
    # checked on the qN channels too (2026-12-06); its first shrink,
    # plans/relay-delayed-on-a-lossy-link-merged-after-a-newer-send.json
    # (queues merged by deadline), passes since queues that meet keep each
    # producer's order by the numbers its node gave its sends (queues.Stamp).
    # The seed itself was two owners delivering at once: c0's send 28,
    # relayed to q1's owner n1 and answered outcome unknown, reached n1 late
    # on a lossy link and was delivered after c0's send 70, queued and
    # delivered meanwhile at n0, which owned q1 in its view. Passes since the
    # client's node refuses a delivery older than one of the same producer
    # another owner handed the client (Queues.from_elsewhere; its 45-op
    # shrink, plans/older-deliveries-of-two-owners-refused-after-leaves-a-
    # restart-and-loss.json), and fails uncounted_loss instead: a loss the
    # code before it had too, behind the inversion its run stopped at.)
    # (fifo on new_channel() names: none of 300 since 2026-12-06. Seed 46 was issue 11 defect 1: a
    # node stopped without a drain lingers after it left, what its clients
    # send to their new_channel() names meanwhile goes to the node keeping
    # its names, and was delivered after what they then sent to the node's
    # next life; fixed by HANDED_OVER (a starting node serves once its peers
    # have handed back, plans/plain-leave-lingers.json), then found again
    # with 60% loss on the keeper, which the new life had declared dead:
    # fixed since a handover that comes after the channel was served here
    # is dropped and counted (Queues.adopt; seed 782 too). Seed 47 and soak
    # seed 1139's first shrink (plans/give-back-from-an-earlier-owner-kept-
    # in-order.json): a run given back that an earlier owner had handed out
    # goes to the front, in its order (Queues.give_back). Still found beyond
    # the CI seeds: soak seed 1139 itself (one producer's relays reaching the
    # owner out of order across a restart and a fence), and seed 46's shrink
    # in FAILING_PLANS: a handback delayed in transit merged by deadline
    # after newer sends. Seed 290: a handback newer than what is queued is
    # merged by deadline, plans/handbacks-from-two-keepers-merged.json.)
    # (stalled: none of 300 since peer links; seed 194 was a receive's
    # credit lost with a partition, which its link now sends again)
}


@pytest.fixture(scope="module")
def cluster() -> dict[str, list[tuple[int, str]]]:
    return _explore(CLUSTER_SCHEDULES, 3, "three-node")


@pytest.mark.timeout(900)  # (the module's schedules run in the first)
def test_cluster_schedules_hold_every_other_invariant(
    cluster: dict[str, list[tuple[int, str]]],
) -> None:
    known = KNOWN_CLUSTER.keys() | KNOWN_SINGLE.keys()
    unexpected = {k: v for k, v in cluster.items() if k not in known}
    assert not unexpected, "\n".join(_report(cluster, k) for k in unexpected)


@pytest.mark.parametrize(
    "invariant",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=why))
        for name, why in KNOWN_CLUSTER.items()
    ],
)
@pytest.mark.timeout(900)  # (the module's schedules run in the first)
def test_cluster_invariant_holds(cluster: dict[str, list[tuple[int, str]]], invariant: str) -> None:
    assert invariant not in cluster, _report(cluster, invariant)


# -- rolling restarts: drains only, nothing may be lost or counted ------------------

#: What the simulation finds in rolling restarts (3 nodes, drain-only
#: schedules), with seeds and a shrunk plan in tests/sim/plans/ (give each a
#: strict xfail, as above, so it flips when its fix lands). (Found and fixed: a
#: relayed send that came back to its origin was answered twice and counted
#: lost_unanswered: seeds 103, 265; plans/drain-relay-back-to-origin.json.
#: A group fanout that reached the new holder of memberships before their
#: handover missed them, the old holder's passed-on copy dropped as a second
#: copy: seeds 157, 46, 131, 136, 267;
#: plans/drain-group-fanout-before-handover.json; tests/test_replication.py.
#: A send reservation granted by an owner that then drained stayed behind,
#: and the holder's next reserved send was refused full by the new owner:
#: seed 127; plans/drain-reservation-left-behind.json.) None is known now.
KNOWN_ROLLING: dict[str, str] = {}


@pytest.fixture(scope="module")
def rolling() -> tuple[dict[str, list[tuple[int, str]]], dict[str, int]]:
    return _explore_stats(ROLLING_SCHEDULES, 3, "rolling-restart", ROLLING)


@pytest.mark.timeout(900)  # (the module's schedules run in the first)
def test_rolling_restarts_lose_nothing_and_count_nothing(
    rolling: tuple[dict[str, list[tuple[int, str]]], dict[str, int]],
) -> None:
    """Every node drained and restarted in turn, under load: no violation of
    any invariant (no duplicate, no inversion, nothing lost, and no drop
    counted: each counter has its own ``rolling_dropped_<reason>``, see
    check.History.rolling), but the known ones above. The drops counted over
    every schedule are exactly those of the seeds a known one names."""
    by, totals = rolling
    unexpected = {k: v for k, v in by.items() if k not in KNOWN_ROLLING}
    assert not unexpected, "\n".join(_report(by, k) for k in unexpected)
    if not any(k.startswith("rolling_dropped") for k in by):
        assert totals["counted"] == 0, totals
    # the schedules did drain nodes, and clients did hold requests meanwhile
    assert totals["drains"] >= ROLLING_SCHEDULES, totals
    assert totals["held"] > 0, totals


def test_explain_says_where_messages_neither_taken_nor_held_were_last() -> None:
    """``--explain`` (``sim/locus.py``): each missing message by the place
    it was last seen, found by its payload bytes in the frames. Three sends
    a node accepted die with it in a SIGKILL: they were last at its first
    life. The diagnostic changes nothing in the run (same digest)."""
    plan = Plan(
        0,
        1,
        (
            Op(0.01, "client", ("c0", 0)),
            Op(0.2, "send", ("c0", "q0", 3, 0.0, 1000)),
            Op(0.5, "kill", (0,)),
            Op(0.6, "restart", (0,)),
        ),
    )
    explained = run_plan(plan, stop_at_first=False, explain=True)
    plain = run_plan(plan, stop_at_first=False)
    assert explained.digest == plain.digest
    assert explained.terms["missing"] == 3
    assert explained.explained[0] == "missing 3"
    assert explained.explained[1].startswith(
        "     3 at n0.1 (killed at 0.500000), from a client; first ('c0', 1)"
    )
    # A consumer that dies holding what it prefetched: named with its death
    # and the node life that handed it those (which counted them).
    plan = Plan(
        0,
        1,
        (
            Op(0.01, "client", ("c0", 0)),
            Op(0.02, "client", ("c1", 0)),
            Op(0.05, "recv", ("c0", "q0", 0.01)),
            Op(0.15, "cancel", ("c0", "q0", None)),
            Op(0.2, "send", ("c1", "q0", 3, 0.0, 1000)),
            Op(0.5, "die", ("c0",)),
        ),
    )
    explained = run_plan(plan, stop_at_first=False, explain=True)
    assert explained.violations == [] and explained.terms["drops"] == 3
    assert explained.explained[1].startswith(
        "     3 at c0 (died at 0.500000), from n0.1 (live at the end); first ('c1', 1)"
    )
