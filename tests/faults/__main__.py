"""``python -m tests.faults``: fault runs against real ``znode`` processes, and their reports.

    python -m tests.faults --runs 20 --seed 1            # the soak: seeds 1..20
    python -m tests.faults --seed 7 --runs 1             # replay seed 7
    python -m tests.faults check DIR                     # check a kept run again

Each run prints its seed and schedule first, then its report; the exit code
is 0 only if every run kept every invariant. Runs go to ``--out`` (a temp
directory by default, removed unless ``--keep`` or a run failed).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .checker import Report, check
from .cluster import RunSpec, execute
from .schedule import DEFAULT_KINDS, KINDS, Fault

#: Sends per second of all producers together when ``--rate`` is not given
#: (N producers, each to 2N channels).
TOTAL_RATE = 360.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__.split("\n")[0])
    p.add_argument("command", nargs="?", choices=("run", "check"), default="run")
    p.add_argument("dir", nargs="?", help="check: the run's directory (with run.json)")
    p.add_argument("--seed", type=int, help="the first run's seed (default: random, printed)")
    p.add_argument("--runs", type=int, default=1, help="runs, seeds seed, seed+1, ...")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of workload per run")
    p.add_argument(
        "--kinds",
        default=",".join(DEFAULT_KINDS),
        help=f"fault kinds to draw from, comma-separated, of {','.join(KINDS)} "
        f"(default {','.join(DEFAULT_KINDS)})",
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="AT:KIND:TARGET:HOLD",
        help="a fixed fault instead of the seed's schedule; repeatable (e.g. 3:freeze:n1:4)",
    )
    p.add_argument(
        "--rate",
        type=float,
        help="sends/s per producer per channel (default: 360 sends/s in all, "
        "20 per stream with 3 nodes: 5 nodes' 25 workload processes saturate 2 cores "
        "at 3 nodes' rate, and a consumer's backlog then reads as slow recovery)",
    )
    p.add_argument("--group-rate", type=float, default=2.0, help="group_sends/s per producer")
    p.add_argument("--request-timeout", type=float, default=8.0)
    p.add_argument("--preset", choices=("lan", "test"), default="lan")
    p.add_argument("--out", type=Path, help="where runs go (default: a temp directory)")
    p.add_argument("--keep", action="store_true", help="keep the runs' logs even if they pass")
    p.add_argument("--json", action="store_true", help="also print each report as JSON")
    return p


def parse_fault(text: str) -> Fault:
    at, kind, target, hold = text.split(":")
    return Fault(float(at), kind, target, float(hold))


def summary(reports: list[Report], took: list[float]) -> str:
    def total(key: str) -> int:
        return sum(int(r.counts.get(key, 0)) for r in reports)

    recoveries = [x for r in reports for x in r.figures["recovery_max"] if x is not None]
    latencies = [r.figures["max_send_latency"] for r in reports]
    passed = sum(r.ok for r in reports)
    lines = [
        f"== {passed} of {len(reports)} runs kept every invariant"
        f" (run time median {statistics.median(took):.1f} s, max {max(took):.1f} s)",
        f"  duplicates {total('duplicates')}, never sent {total('never_sent')}, "
        f"inversions {total('inversions')}, slow answers {total('slow_answers')}",
        f"  lost {total('lost')} vs counted {total('counted')}: silent {total('silent')} "
        f"(per run: {[(r.counts['lost'], r.counts['counted']) for r in reports]})",
        f"  max send latency per run: {[round(x, 2) for x in latencies]}",
    ]
    if recoveries:
        lines.append(
            f"  recovery after a fault (max over channels): median "
            f"{statistics.median(recoveries):.2f} s, max {max(recoveries):.2f} s"
        )
    failed = [r for r in reports if not r.ok]
    for r in failed:
        lines.append(f"  seed {r.seed}: {', '.join(r.violations)}  ({r.dir})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "check":
        if not args.dir:
            print("check: give the run's directory", file=sys.stderr)
            return 2
        report = check(Path(args.dir))
        print(report.render())
        if args.json:
            print(json.dumps(report.to_json(), indent=1))
        return 0 if report.ok else 1
    kinds = tuple(k for k in args.kinds.split(",") if k)
    seed = args.seed if args.seed is not None else random.randrange(1, 1_000_000)
    out = args.out or Path(tempfile.mkdtemp(prefix="zchannels-faults-"))
    fixed = tuple(parse_fault(f) for f in args.fault) or None
    reports: list[Report] = []
    took: list[float] = []
    for i in range(args.runs):
        spec = RunSpec(
            seed=seed + i,
            out=out / f"seed-{seed + i}",
            nodes=args.nodes,
            duration=args.duration,
            kinds=kinds,
            rate=args.rate or TOTAL_RATE / (2 * args.nodes * args.nodes),
            group_rate=args.group_rate,
            request_timeout=args.request_timeout,
            preset=args.preset,
            faults=fixed,
        )
        print(f"-- seed {spec.seed} ({i + 1}/{args.runs})", flush=True)
        for fault in spec.schedule():
            print(f"   scheduled {fault}", flush=True)
        start = time.monotonic()
        execute(spec, say=lambda _line: None)
        report = check(spec.out)
        took.append(time.monotonic() - start)
        reports.append(report)
        print(report.render(), flush=True)
        if args.json:
            print(json.dumps(report.to_json(), indent=1), flush=True)
        (spec.out / "report.json").write_text(json.dumps(report.to_json(), indent=1))
        if report.ok and not args.keep:
            shutil.rmtree(spec.out, ignore_errors=True)
    print(summary(reports, took))
    keep: list[Any] = [r.dir for r in reports if not r.ok]
    if keep or args.keep:
        print(f"logs kept in {out}")
    elif args.out is None:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
