"""The cluster under faults, from outside: real ``znode`` processes, a checker over their logs.

Issue 11, item 4 (``tests/faults``; docs/cluster.md, "Fault testing"). Three
nodes on loopback, a producer and two consumers per node, and a seeded
schedule of SIGKILL + restart, SIGTERM + restart, SIGSTOP/SIGCONT, "lag"
(two nodes stopped, one resumed early), consumer SIGKILLs and CPU burners;
then the checker's invariants over what every process logged and every
node's drop counters.

The runs happen once (a module fixture, ``CI_RUNS``; about 2.5 minutes on 2
cores); each test asserts a part of the checker's verdict. What holds today
is asserted plainly; the three defects of issue 11 are asserted in tests of
their own, marked ``xfail(strict=True)`` while open: each was reproduced by
these runs on main, and a strict xfail fails the day it passes, so the mark
goes with the fix. (Defect 1's mark is not strict since it became
intermittent: see its test. Defect 3's went on 2026-12-05: sends to an
owner declared dead are answered sooner.)

The first tests check the harness's own parts without processes: the
schedule replays from its seed, and the checker finds each kind of
violation in a made-up run (a checker that finds nothing would pass
everything).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from faults.checker import Report, answer_bound, check
from faults.cluster import RunSpec, execute
from faults.schedule import DEFAULT_KINDS, GAP, HOLD, KINDS, make_schedule

#: The runs CI makes: (seed, seconds, group_sends/s per producer, fault
#: kinds). Replay one with ``python -m tests.faults --seed S --runs 1
#: --duration D --group-rate G`` (and ``--kinds ...,lag`` for the "all" ones).
#: 12: a lag (two nodes frozen, one thawed early), two SIGKILLs and a
#: consumer SIGKILL, with group traffic; 9: a SIGSTOP, two SIGKILLs, two
#: consumer SIGKILLs; 8: a consumer SIGKILL, a SIGTERM, two SIGKILLs, a CPU
#: burn; 55: a SIGTERM, a SIGKILL, a lag and two consumer SIGKILLs; the last
#: three without group traffic (their loss balance is exact). Defects 1 and
#: 2 show in nearly every run with a node SIGKILLed or frozen; defect 3 in
#: about 70% of lag faults and 25-30% of SIGKILLs and SIGSTOPs, so these
#: runs give it 9 chances (docs/cluster.md has the measured rates).
CI_RUNS = (
    (12, 25.0, 2.0, KINDS),
    (9, 20.0, 0.0, DEFAULT_KINDS),
    (8, 26.0, 0.0, DEFAULT_KINDS),
    (55, 20.0, 0.0, KINDS),
)


# -- the schedule ------------------------------------------------------------------
NODES = ["n0", "n1", "n2"]
CONSUMERS = [f"c{i}{k}" for i in range(3) for k in "ab"]


def test_a_seed_gives_the_same_schedule_every_time() -> None:
    for seed in range(50):
        first = make_schedule(seed, NODES, CONSUMERS, 60.0)
        assert first == make_schedule(seed, NODES, CONSUMERS, 60.0)
        assert first, f"seed {seed}: no fault in 60 s"
        for a, b in itertools.pairwise(first):
            assert b.at >= a.ends + GAP[0], f"seed {seed}: faults overlap: {a} / {b}"
        for f in first:
            low, high = HOLD[f.kind]
            assert low <= f.hold <= high
            assert f.ends <= 60.0 - 4.0  # the quiet end
            assert f.target in (*NODES, *CONSUMERS, "cpu")
    schedules = {tuple(make_schedule(s, NODES, CONSUMERS, 60.0)) for s in range(50)}
    assert len(schedules) == 50, "different seeds gave the same schedule"
    assert {f.kind for s in schedules for f in s} == set(DEFAULT_KINDS)
    every = [make_schedule(s, NODES, CONSUMERS, 60.0, KINDS) for s in range(50)]
    assert {f.kind for s in every for f in s} == set(KINDS)
    # (the seeds CI runs keep their schedules: the first three faults of 12)
    assert [(f.kind, f.target) for f in every[12][:3]] == [
        ("lag", "n1"),
        ("kill", "n1"),
        ("consumer_kill", "c2a"),
    ]
    only = make_schedule(3, NODES, CONSUMERS, 60.0, kinds=("freeze",))
    assert {f.kind for f in only} == {"freeze"}
    with pytest.raises(ValueError, match="fault kinds"):
        make_schedule(3, NODES, CONSUMERS, 60.0, kinds=("explode",))


# -- the checker, on made-up runs ----------------------------------------------------
T0 = 1000.0


class FakeRun:
    """A run directory written by hand: one producer (p0 on n0), one
    consumer (c1a on n1), channels "a" (owned by n0) and "b" (owned by n1)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sends: list[dict[str, Any]] = []
        self.recvs: list[dict[str, Any]] = []
        self.executed: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.counters: dict[str, int] = {}
        self.end: dict[str, Any] = {"group_sizes": {"took": 0.01}, "markers": {"took": 0.02}}

    def send(self, ch: str, s: int, at: float, took: float = 0.001, r: str = "ok") -> None:
        self.sends.append(
            {"k": "send", "ch": ch, "s": s, "t0": T0 + at, "t1": T0 + at + took, "r": r}
        )

    def recv(self, ch: str, s: int, at: float, p: str = "p0") -> None:
        self.recvs.append({"k": "r", "ch": ch, "p": p, "s": s, "t": T0 + at})

    def stream(self, ch: str, n: int, every: float = 0.1, start: float = 0.0) -> None:
        for i in range(1, n + 1):
            self.send(ch, i, start + i * every)
            self.recv(ch, i, start + i * every + 0.01)

    def fault(
        self, kind: str, target: str, at: float, hold: float, notes: dict[str, Any] | None = None
    ) -> None:
        self.executed.append(
            {
                "at": at,
                "kind": kind,
                "target": target,
                "hold": hold,
                "began": T0 + at,
                "ended": T0 + at + hold,
                "back": T0 + at + hold + 0.3 if kind in ("kill", "term") else None,
                "notes": notes or {},
            }
        )

    def sample(self, node: str, at: float, members: dict[str, str], **drops: int) -> None:
        dead = drops.pop("lost_in_dead_nodes", 0)
        self.samples.append(
            {
                "t": T0 + at,
                "node": node,
                "ok": True,
                "incarnation": 1,
                "members": members,
                "drops": {"dead_owner": dead, **drops},
                "routing": {"lost_in_dead_nodes": dead},
                "group_skipped_full": 0,
            }
        )

    def write(self) -> Report:
        self.path.mkdir(exist_ok=True)
        logs = {
            "p0-life1.jsonl": [{"k": "ready", "t": T0}, *self.sends],
            "c1a-life1.jsonl": [
                {"k": "ready", "t": T0 - 1, "member": "specific.x!y"},
                *self.recvs,
                {"k": "counters", "t": T0 + 30, "c": self.counters},
            ],
        }
        for name, records in logs.items():
            with open(self.path / name, "w") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")
        worker = {"killed_at": None, "exited_at": T0 + 30, "returncode": 0, "started": T0}
        run = {
            "spec": {
                "seed": 0,
                "nodes": 3,
                "duration": 30,
                "kinds": list(KINDS),
                "rate": 20,
                "group_rate": 0,
                "preset": "lan",
            },
            "t0": T0,
            "phases": {"final": T0 + 31},
            "nodes": {n: {} for n in NODES},
            "owned": {"n0": ["a"], "n1": [], "n2": ["b"]},
            "channels": ["a", "b"],
            "schedule": [],
            "executed": self.executed,
            "workers": [
                {
                    **worker,
                    "id": "p0",
                    "role": "producer",
                    "node": "n0",
                    "life": 1,
                    "log": "p0-life1.jsonl",
                    "channels": ["a", "b"],
                },
                {
                    **worker,
                    "id": "c1a",
                    "role": "consumer",
                    "node": "n1",
                    "life": 1,
                    "log": "c1a-life1.jsonl",
                    "channels": ["a", "b"],
                },
            ],
            "samples": self.samples,
            "end": self.end,
        }
        (self.path / "run.json").write_text(json.dumps(run))
        return check(self.path)


def test_the_checker_passes_a_clean_run(tmp_path: Path) -> None:
    run = FakeRun(tmp_path / "run")
    run.stream("a", 100)
    run.stream("b", 100)
    report = run.write()
    assert report.ok, report.render()
    assert report.counts["deliveries"] == 200
    assert "replay: python -m tests.faults --seed 0 --runs 1" in report.render()
    assert report.counts["lost"] == report.counts["counted"] == 0


def test_the_checker_finds_duplicates_strangers_and_inversions(tmp_path: Path) -> None:
    run = FakeRun(tmp_path / "run")
    run.stream("a", 50)
    run.recv("a", 7, 9.0)  # twice
    run.recv("a", 999, 9.1)  # never sent
    run.send("b", 1, 1.0, r="ChannelFull")
    run.recv("b", 1, 1.1)  # refused, yet delivered
    for s in (2, 3, 4):
        run.send("b", s, s * 1.0)
    run.recv("b", 3, 3.5)
    run.recv("b", 4, 4.5)
    run.recv("b", 2, 5.0)  # after 3 and 4
    report = run.write()
    assert report.counts["duplicates"] == 1
    assert report.violations["never_sent"]["count"] == 2
    assert report.counts["inversions"] == 1
    [inv] = report.violations["inversions"]["examples"]
    assert (inv["seq"], inv["after_seq"], inv["channel"]) == (2, 4, "b")
    assert inv["late_by"] == pytest.approx(0.5)


def test_the_checker_tells_counted_from_silent_losses(tmp_path: Path) -> None:
    run = FakeRun(tmp_path / "counted")
    run.stream("a", 20)
    for s in range(21, 31):  # 10 accepted, never delivered
        run.send("a", s, 3.0 + s * 0.01)
    run.counters = {"lost_in_node_restart": 2}
    run.sample("n0", 5.0, {}, receiver_gone=3)
    # a dead node's queue, counted by both survivors: once
    run.fault("kill", "n1", 6.0, 2.0)
    run.sample("n0", 5.5, {}, receiver_gone=3, lost_in_dead_nodes=0)
    run.sample("n2", 5.5, {}, lost_in_dead_nodes=0)
    run.sample("n0", 7.5, {}, receiver_gone=3, lost_in_dead_nodes=5)
    run.sample("n2", 7.6, {}, lost_in_dead_nodes=5)
    report = run.write()
    assert report.counts["lost"] == 10
    assert report.counts["counted_by"] == {
        "receiver_gone": 3,
        "lost_in_dead_nodes": 5,
        "lost_in_node_restart": 2,
    }
    assert not report.violated("silent_loss"), report.render()

    run = FakeRun(tmp_path / "both")  # counted and yet delivered
    run.stream("a", 20)
    run.sample("n0", 5.0, {}, receiver_gone=4)
    report = run.write()
    assert report.counts["lost"] == 0
    assert report.violations["double_counted"]["count"] == 4

    run = FakeRun(tmp_path / "silent")
    run.stream("a", 20)
    for s in range(21, 31):
        run.send("a", s, 3.0 + s * 0.01)
    run.sample("n0", 5.0, {}, receiver_gone=3)
    report = run.write()
    assert report.counts["silent"] == 7
    assert report.violated("silent_loss")


def test_the_checker_bounds_answers_and_recovery(tmp_path: Path) -> None:
    run = FakeRun(tmp_path / "run")
    run.stream("a", 100)
    run.stream("b", 20)
    run.fault("freeze", "n2", 3.0, 4.0)  # n2 owns "b" (its consumer is on n1)
    for node in ("n0", "n1"):
        run.sample(node, 3.1, {"n2": "alive"})
        run.sample(node, 4.5, {"n2": "dead"})
    bound = answer_bound("lan", 3)
    run.send("b", 21, 3.05, took=bound + 1.0)  # hangs until the thaw
    run.recv("b", 21, 7.1)
    report = run.write()
    assert report.counts["slow_answers"] == 1
    [slow] = report.violations["slow_recovery"]["examples"]
    assert slow["declared_after"] == pytest.approx(1.5)
    assert slow["served_after_declared"] == pytest.approx(2.6)
    assert report.figures["recovery_max"] == [pytest.approx(4.1)]
    # a lag that also stops the node of the channel's consumer (seed 55):
    # nobody can serve it before that node runs again, 4 s in; served
    # 0.1 s after that, it recovered in time
    run = FakeRun(tmp_path / "lag")
    run.stream("a", 100)
    run.stream("b", 20)
    run.fault("lag", "n2", 3.0, 5.0, {"lagger": "n1", "lagger_thawed": T0 + 7.0})
    run.sample("n0", 3.1, {"n2": "alive"})
    run.sample("n0", 4.5, {"n2": "dead"})
    run.send("b", 21, 3.05, took=1.0)  # answered outcome unknown
    run.send("b", 22, 4.1)  # queued at the new owner, taken once n1 runs
    run.recv("b", 22, 7.1)
    report = run.write()
    assert not report.violated("slow_recovery"), report.render()
    assert report.figures["per_fault"][0]["recovery_after_declared"] == pytest.approx(0.1)
    # the producer's own node down: its wait is reported, not a violation
    run = FakeRun(tmp_path / "own")
    run.stream("a", 100)
    run.fault("kill", "n0", 3.0, 1.0)
    run.send("a", 101, 3.05, took=bound + 1.0)
    run.recv("a", 101, 3.05 + bound + 1.1)
    report = run.write()
    assert not report.violated("slow_answers")
    assert report.figures["max_send_latency_own_node_down"] == pytest.approx(bound + 1.0)


def test_the_checker_requires_membership_restored(tmp_path: Path) -> None:
    run = FakeRun(tmp_path / "run")
    run.stream("a", 10)
    run.end["markers"] = {"took": None, "want": ["end-n0"], "seen": {"c1a-life1.jsonl": []}}
    report = run.write()
    assert report.violated("membership")


# -- real runs -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[Report]:
    out = tmp_path_factory.mktemp("faults")
    done = []
    for seed, duration, group_rate, kinds in CI_RUNS:
        spec = RunSpec(
            seed=seed,
            out=out / f"seed-{seed}",
            duration=duration,
            group_rate=group_rate,
            kinds=kinds,
        )
        execute(spec, say=print)
        report = check(spec.out)
        print(report.render())
        done.append(report)
    return done


def _violations(reports: list[Report], *names: str) -> list[str]:
    return [
        f"seed {r.seed}: {name} {r.violations[name]}"
        for r in reports
        for name in names
        if r.violated(name)
    ]


@pytest.mark.timeout(400)
def test_no_duplicate_and_nothing_never_sent(reports: list[Report]) -> None:
    assert not _violations(reports, "duplicates", "never_sent", "harness")
    for r in reports:
        assert r.counts["deliveries"] > 1000, f"seed {r.seed}: too little traffic to mean much"
        assert r.faults, f"seed {r.seed}: no fault"


@pytest.mark.timeout(400)
def test_group_membership_is_restored(reports: list[Report]) -> None:
    assert not _violations(reports, "membership")
    for r in reports:
        print(f"seed {r.seed}: recovery per fault (s) {r.figures['recovery_max']}")
        assert r.figures["membership"]["markers_took"] is not None


@pytest.mark.timeout(400)
@pytest.mark.xfail(
    # (not strict: since peer links, 2 of 3 executions of the four runs had
    # no inversion at all (CI and two local, 2026-12-05), the third had some;
    # before, every run had 8-118. A strict mark would fail CI at random; it
    # goes back to strict, or goes, once the simulation's fifo seeds pass.)
    strict=False,
    reason="issue 11 defect 1: a message counted lost while its owner was frozen or "
    "killed is delivered later, after messages sent after it (FIFO inversions; "
    "intermittent since peer links)",
)
def test_defect_1_fifo_holds_across_freezes_and_restarts(reports: list[Report]) -> None:
    assert not _violations(reports, "inversions")


@pytest.mark.timeout(400)
@pytest.mark.xfail(
    strict=True,
    reason="issue 11 defect 2: in SIGKILL, SIGTERM and SIGSTOP windows the messages "
    "lost and the drop counters disagree (lost and never counted; counted and delivered)",
)
def test_defect_2_every_lost_message_is_counted_once(reports: list[Report]) -> None:
    assert not _violations(reports, "silent_loss", "double_counted")


@pytest.mark.timeout(400)
def test_defect_3_sends_answered_and_channels_served_within_bounds(
    reports: list[Report],
) -> None:
    """Issue 11 defect 3, fixed: every send is answered within the bound, and
    a channel whose owner is declared dead serves again within a second
    (``Routing._answer_sooner``: what waits on a peer declared dead is
    answered once that owner would refuse it as late; before, at the answer
    bound, 2.4 s after the send)."""
    # (unrecovered: a channel that never serves again, seen after repeated
    # restarts of its consumer's node, is the far end of the same stall)
    assert not _violations(reports, "slow_answers", "slow_recovery", "unrecovered")
    for r in reports:
        print(
            f"seed {r.seed}: max send {r.figures['max_send_latency']} s, recovery per fault "
            f"(s) {r.figures['recovery_max']}"
        )
