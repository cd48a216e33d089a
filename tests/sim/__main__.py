"""``python -m tests.sim``: explore schedules, replay one, shrink a failure.

    python -m tests.sim --schedules 300                # seeds 0..299
    python -m tests.sim --schedules 10000 --jobs 2     # the soak
    python -m tests.sim --seed 1234 --schedules 1 -v   # replay one seed
    python -m tests.sim --plan shrunk.json --trace     # replay a saved plan

A failing seed prints its replay command, is shrunk (``--no-shrink`` to
skip) and the shrunk plan is printed and saved as JSON. Runs under
``PYTHONHASHSEED=0`` (re-executing itself if needed): the node iterates over
sets of names, and a replay must be byte-identical in any process.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from .explore import explore, run_plan, shrink
from .schedule import FAULTS, Plan, generate


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "tests.sim", *sys.argv[1:]])
    ap = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__.split("\n")[0])
    ap.add_argument("--schedules", type=int, default=100, help="how many seeds (default 100)")
    ap.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    ap.add_argument(
        "--nodes", type=int, default=None, help="nodes (default 3, or 1 without a cluster)"
    )
    ap.add_argument(
        "--faults",
        default=None,
        help=f"comma-separated subset of {','.join(FAULTS)} (default: all that apply "
        "but drain; --faults drain: a rolling restart, checked strictly)",
    )
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--plan", type=Path, help="replay a plan saved as JSON")
    ap.add_argument("--no-shrink", action="store_true")
    ap.add_argument("--shrink-budget", type=float, default=300.0, help="seconds (default 300)")
    ap.add_argument("--trace", action="store_true", help="print the event trace of a replay")
    ap.add_argument(
        "--explain",
        action="store_true",
        help="replay (a plan, or --seed with --schedules 1) and say where each message "
        "neither taken nor held was last seen (tests/sim/locus.py)",
    )
    ap.add_argument("--keep-going", action="store_true", help="do not stop at the first failure")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    # (the node logs what it drops; the checker reports what matters)
    logging.getLogger("zchannels").setLevel(logging.ERROR)

    nodes = args.nodes if args.nodes is not None else 3
    faults = tuple(args.faults.split(",")) if args.faults else None

    if args.plan is not None:
        return _replay(Plan.from_json(args.plan.read_text()), args.trace, args.explain)
    if args.explain:
        return _replay(generate(args.seed, nodes, faults), args.trace, True)

    started = time.perf_counter()
    failures: list[tuple[int, str]] = []
    steps = 0
    done = 0
    seeds = range(args.seed, args.seed + args.schedules)
    for seed, violation, digest, seconds, n_steps in explore(seeds, nodes, faults, args.jobs):
        done += 1
        steps += n_steps
        if args.verbose:
            outcome = violation or "ok"
            print(f"seed {seed}: {outcome} ({seconds:.2f} s, {n_steps} steps, {digest[:12]})")
        if violation is not None:
            failures.append((seed, violation))
            print(f"FAIL seed {seed}: {violation}")
            print(f"  replay: {_replay_cmd(seed, nodes, args.faults)}")
            if not args.keep_going:
                break
        elif done % 500 == 0:
            print(f"{done} schedules, {time.perf_counter() - started:.0f} s", flush=True)
    took = time.perf_counter() - started
    print(
        f"{done} schedules ({nodes} node{'s' if nodes > 1 else ''}), {steps} steps, "
        f"{took:.1f} s, {len(failures)} failed"
    )
    if failures and not args.no_shrink:
        seed, _ = failures[0]
        _shrink(generate(seed, nodes, faults), args.shrink_budget)
    return 1 if failures else 0


def _replay_cmd(seed: int, nodes: int, faults: str | None) -> str:
    extra = f" --faults {faults}" if faults else ""
    return f"python -m tests.sim --seed {seed} --schedules 1 --nodes {nodes}{extra} -v"


def _replay(plan: Plan, trace: bool, explain: bool = False) -> int:
    result = run_plan(plan, keep_trace=trace, stop_at_first=not explain, explain=explain)
    if trace:
        print("\n".join(result.trace))
    for op in plan.ops:
        print(f"  {op}")
    print(f"digest {result.digest}  steps {result.steps}  {result.summary}  {result.terms}")
    for v in result.violations:
        print(f"FAIL {v}")
    for line in result.explained:
        print(line)
    return 1 if result.failed else 0


def _shrink(plan: Plan, budget: float) -> None:
    first = run_plan(plan)
    if first.invariant is None:
        return
    started = time.perf_counter()
    small = shrink(plan, first.invariant, budget=budget)
    result = run_plan(small)
    print(
        f"shrunk seed {plan.seed} from {len(plan.ops)} to {len(small.ops)} ops "
        f"in {time.perf_counter() - started:.0f} s; still: {result.violations[0]}"
    )
    for op in small.ops:
        print(f"  {op}")
    path = Path(f"sim-seed{plan.seed}-shrunk.json")
    path.write_text(small.to_json())
    print(f"  saved: {path}  (replay: python -m tests.sim --plan {path} --trace)")


if __name__ == "__main__":
    raise SystemExit(main())
