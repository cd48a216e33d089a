"""``python -m bench``: run the scenarios for every layer, print verdicts and table.

Progress goes to stderr; the issue-10 verdicts and the markdown table to stdout.
``--write`` also puts them into docs/benchmarks.md between its markers. Needs
redis-server on PATH for the channels_redis anchors (bench/run installs it) and
zchannels installed for its columns; a layer that cannot run reads "unavailable" with
the reason, and the rest still runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import report, runner
from bench.budget import FULL, QUICK
from bench.layers import LAYER_KEYS
from bench.scenarios import SCENARIOS

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def _keys(text: str, valid: tuple[str, ...], what: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in valid]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; valid: {', '.join(valid)}")
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fast smoke run (2 rounds, short boxes)"
    )
    parser.add_argument("--write", action="store_true", help=f"write the output into {DOCS}")
    parser.add_argument("--rounds", type=int, help="interleaved runs per cell (default 5, quick 2)")
    parser.add_argument("--layers", default=",".join(LAYER_KEYS), help="comma-separated layer keys")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated scenario keys"
    )
    parser.add_argument("--json", type=Path, help="also dump every sample and failure here")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="cProfile every worker and the znode sidecar into DIR (slows everything down)",
    )
    args = parser.parse_args(argv)

    budget = runner.with_rounds(QUICK if args.quick else FULL, args.rounds)
    layers = _keys(args.layers, LAYER_KEYS, "layer")
    scenarios = _keys(args.scenarios, tuple(SCENARIOS), "scenario")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        args.profile = args.profile.resolve()
    results = runner.run(budget, layers, scenarios, runner.stderr_log, args.profile)
    text = report.render(results)
    print(text)
    if args.write:
        report.write_docs(DOCS, text)
        runner.stderr_log(f"wrote the table into {DOCS}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "meta": results.meta,
                    "samples": {f"{k[0]} {k[1]}": v for k, v in results.samples.items()},
                    "failures": {f"{k[0]} {k[1]}": v for k, v in results.failures.items() if v},
                    "rounds": {f"{k[0]} {k[1]}": v for k, v in results.sample_rounds.items()},
                    "pooled": {f"{k[0]} {k[1]}": v for k, v in results.pooled.items()},
                    "unavailable": results.unavailable,
                    "warnings": results.warnings,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
