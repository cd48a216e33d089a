"""Run schedules, replay one exactly, shrink a failing one.

Owns: which node a run drives (the real ``ClusterNode`` unless a test gives
a deliberately broken one), one run's result, the explorer over many seeds
(optionally on several processes) and the shrinker: it drops ops of a
failing plan (halves, quarters, ... then one at a time, as delta debugging
does) for as long as the run still fails the same invariant, and returns the
smallest plan found. Does not own the checks (``check``) or the world.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from zchannels.node.cluster import ClusterNode

from .adapter import NodeLike
from .check import Violation
from .locus import Locus
from .schedule import Plan, generate
from .world import World

#: simulated seconds after the schedule, heal, before draining
SETTLE = 2.5
#: simulated seconds the drain may take at most
DRAIN_LIMIT = 4.0


@dataclass
class Result:
    plan: Plan
    violations: list[Violation]
    digest: str
    steps: int
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)
    terms: dict[str, int] = field(default_factory=dict)
    trace: list[str] = field(default_factory=list)
    #: drains begun, requests held by moving clients, drops counted beyond
    #: the refusals producers were told of (``World.stats``)
    stats: dict[str, int] = field(default_factory=dict)
    #: where the messages neither taken nor held were last (``explain``)
    explained: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.violations)

    @property
    def invariant(self) -> str | None:
        return self.violations[0].invariant if self.violations else None


def run_plan(
    plan: Plan,
    *,
    factory: Callable[..., NodeLike] | None = None,
    keep_trace: bool = False,
    stop_at_first: bool = True,
    explain: bool = False,
    settle: float = SETTLE,
    drain_limit: float = DRAIN_LIMIT,
) -> Result:
    clustered = plan.nodes > 1 or any(op.kind == "join" for op in plan.ops)
    if factory is None:
        factory = ClusterNode  # (alone, without a peer endpoint, it runs only its core)
    started = time.perf_counter()
    world = World(
        plan,
        factory=factory,
        clustered=clustered,
        keep_trace=keep_trace,
        stop_at_first=stop_at_first,
        locus=Locus() if explain else None,
    )
    history = world.run(settle, drain_limit)
    return Result(
        plan,
        list(history.violations),
        world.digest,
        world.steps,
        time.perf_counter() - started,
        history.summary(),
        world.terms,
        world.trace,
        world.stats,
        world.explained,
    )


def shrink(
    plan: Plan,
    invariant: str,
    run: Callable[[Plan], Result] = run_plan,
    budget: float = 120.0,
) -> Plan:
    """The smallest plan found that still fails ``invariant`` (wall-clock
    ``budget`` seconds at most)."""
    deadline = time.monotonic() + budget

    def fails(candidate: Plan) -> bool:
        return run(candidate).invariant == invariant

    best = plan
    chunk = max(1, len(best.ops) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        i = 0
        shrunk = False
        while i < len(best.ops) and time.monotonic() < deadline:
            candidate = best.without(set(range(i, min(i + chunk, len(best.ops)))))
            if candidate.ops != best.ops and fails(candidate):
                best = candidate
                shrunk = True
            else:
                i += chunk
        if not shrunk:
            chunk //= 2
    return best


def _run_seed(
    args: tuple[int, int, tuple[str, ...] | None],
) -> tuple[int, str | None, str, float, int]:
    seed, nodes, faults = args
    result = run_plan(generate(seed, nodes, faults))
    first = str(result.violations[0]) if result.violations else None
    return seed, first, result.digest, result.seconds, result.steps


def explore(
    seeds: range, nodes: int, faults: tuple[str, ...] | None, jobs: int = 1
) -> Iterator[tuple[int, str | None, str, float, int]]:
    """(seed, first violation or None, trace digest, seconds, steps) per seed."""
    work = [(seed, nodes, faults) for seed in seeds]
    if jobs <= 1:
        yield from map(_run_seed, work)
        return
    with ProcessPoolExecutor(jobs) as pool:
        yield from pool.map(_run_seed, work, chunksize=4)


def verdicts(
    args: tuple[int, int, tuple[str, ...] | None],
) -> tuple[int, dict[str, str], float, dict[str, int]]:
    """One seed run to the end (past violations): seed, {invariant: first
    violation}, seconds, ``Result.stats``. For CI, where every invariant gets
    a verdict."""
    seed, nodes, faults = args
    result = run_plan(generate(seed, nodes, faults), stop_at_first=False)
    found: dict[str, str] = {}
    for v in result.violations:
        found.setdefault(v.invariant, str(v))
    return seed, found, result.seconds, result.stats


def verdicts_many(
    seeds: range, nodes: int, faults: tuple[str, ...] | None = None, jobs: int = 2
) -> list[tuple[int, dict[str, str], float, dict[str, int]]]:
    work = [(seed, nodes, faults) for seed in seeds]
    if jobs <= 1:
        return [verdicts(w) for w in work]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(verdicts, work, chunksize=8))
