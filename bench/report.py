"""Turns ``Results`` into the markdown table (medians, target ratios, footnotes).

Also writes that table into docs/benchmarks.md between the two marker lines, leaving
the rest of the document alone.
"""

from __future__ import annotations

import datetime
import os
import re
from collections import Counter
from pathlib import Path
from statistics import median

from bench.layers import REDIS_LAYERS
from bench.runner import Results
from bench.scenarios import Metric, Scenario

BEGIN = "<!-- bench:results:begin (written by `bench/run --write`) -->"
END = "<!-- bench:results:end -->"

TIMES = "\u00d7"  # the multiplication sign, escaped for ruff RUF001
SUBJECT = "zch-sidecar"
BEST_REDIS_TARGET = 2.0
PYZMQ_TARGET = 0.5
PYZMQ_METRICS = ("pingpong.rate", "throughput.rate")
CORE_TARGET = 3.0
CORE_METRICS = ("fanout.1000.ms",)


def fmt(value: float, metric: Metric) -> str:
    if metric.unit == "/s":
        return f"{value:,.0f}"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def speedup(subject: float, anchor: float, metric: Metric) -> float:
    """How many times better the subject is than the anchor (>1: the subject wins)."""
    return subject / anchor if metric.higher_is_better else anchor / subject


class _Footnotes:
    def __init__(self) -> None:
        self.texts: list[str] = []

    def ref(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"


class Table:
    def __init__(self, results: Results) -> None:
        self.r = results
        self.notes = _Footnotes()

    def median(self, layer: str, metric: str) -> float | None:
        values = self.r.samples.get((layer, metric))
        return median(values) if values else None

    def cell(self, layer: str, scenario: Scenario, metric: Metric) -> str:
        if layer in self.r.unavailable:
            return "unavailable " + self.notes.ref(self.r.unavailable[layer])
        failures = self.r.failures.get((layer, scenario.key), [])
        value = self.median(layer, metric.key)
        if value is None and not failures:
            return "—"
        if value is None:
            kind = "timeout" if all(f.startswith("timeout") for f in failures) else "failed"
            return f"{kind} " + " ".join(self.notes.ref(f) for f in dict.fromkeys(failures))
        text = fmt(value, metric)
        if failures:
            runs = len(self.r.samples[(layer, metric.key)]) + len(failures)
            refs = " ".join(self.notes.ref(f) for f in dict.fromkeys(failures))
            text += f" ({len(failures)}/{runs} failed {refs})"
        return text

    def ratio(self, metric: Metric, anchors: tuple[str, ...], target: float | None) -> str:
        subject = self.median(SUBJECT, metric.key)
        values = {a: self.median(a, metric.key) for a in anchors}
        present = [v for v in values.values() if v is not None]
        if subject is None or not present:
            return "—"
        best = max(present) if metric.higher_is_better else min(present)
        ratio = speedup(subject, best, metric)
        text = f"{ratio:.2f}{TIMES}"
        missing = [a for a, v in values.items() if v is None]
        if missing:  # a best-of without all its anchors proves nothing
            return text + f" (without {', '.join(missing)})"
        if target is not None:
            text += " ✅" if ratio >= target else f" ❌ (<{target:g}{TIMES})"
        return text

    def markdown(self) -> str:
        layers = self.r.layers
        head = ["Scenario (channel names)", "Metric", *(s.label for s in layers)]
        ratios = SUBJECT in {s.key for s in layers}
        if ratios:
            head += [
                f"sidecar ÷ best redis (target ≥{BEST_REDIS_TARGET:g}{TIMES})",
                f"sidecar ÷ redis core (≥{CORE_TARGET:g}{TIMES} at 1000)",
                f"sidecar ÷ bare pyzmq (≥{PYZMQ_TARGET:g}{TIMES})",
            ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for scenario in self.r.scenarios:
            for i, metric in enumerate(scenario.metrics):
                label = f"{scenario.title} ({scenario.names})" if i == 0 else ""
                unit = "" if metric.unit == "/s" else f" ({metric.unit})"
                row = [label, metric.label + unit]
                row += [self.cell(s.key, scenario, metric) for s in layers]
                if ratios:
                    best_target = BEST_REDIS_TARGET if metric.primary else None
                    core_target = CORE_TARGET if metric.key in CORE_METRICS else None
                    row.append(self.ratio(metric, REDIS_LAYERS, best_target))
                    row.append(self.ratio(metric, ("redis-core",), core_target))
                    if metric.key.startswith(("pingpong.", "throughput.")):
                        target = PYZMQ_TARGET if metric.key in PYZMQ_METRICS else None
                        row.append(self.ratio(metric, ("pyzmq",), target))
                    else:
                        row.append("—")
                lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines)


def _run_line(r: Results) -> str:
    b = r.budget
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    m = r.meta
    return (
        f"Measured {when} on {os.cpu_count()} cores ({m.get('machine', '?')}); "
        f"Python {m.get('python')}, pyzmq {m.get('pyzmq')} / libzmq {m.get('libzmq', '?')}, "
        f"msgpack {m.get('msgpack')}, channels {m.get('channels')}, "
        f"channels_redis {m.get('channels_redis')}, redis-py {m.get('redis')}, "
        f"redis-server {m.get('redis-server', '?')}, zchannels {m.get('zchannels')} "
        f"({m.get('source', '?')}).  \n"
        f"Medians of {b.rounds} interleaved run(s); time box {b.box_s:g} s per measurement, "
        f"at most {b.max_messages:,} messages; fan-out: median of {b.fanout_shots} shots "
        f"after 1 warm-up per run; group ops: at most {b.group_ops:,} memberships. "
        f"Whole run: {r.elapsed_s:.0f} s; 1-minute load average {m.get('load', '?')}."
    )


def _extra_notes(r: Results) -> list[str]:
    out: list[str] = []
    for (layer, key), values in sorted(r.samples.items()):
        if key == "note.channel_full_retries":
            out.append(f"{layer}: ChannelFull retries per run (median) {median(values):,.0f}")
        elif key == "note.memberships":
            out.append(
                f"{layer}: memberships added per group-ops run (median) {median(values):,.0f}"
            )
    for text, count in Counter(r.warnings).items():
        out.append(text + (f" ({TIMES}{count})" if count > 1 else ""))
    return out


def render(r: Results) -> str:
    table = Table(r)
    body = table.markdown()
    parts = [_run_line(r), "", body, ""]
    if table.notes.texts:
        parts += [f"- [{i}] {t}".replace("\n", "\n  ") for i, t in enumerate(table.notes.texts, 1)]
        parts.append("")
    notes = _extra_notes(r)
    if notes:
        parts.append("Notes:")
        parts += [f"- {n}".replace("\n", "\n  ") for n in notes]
        parts.append("")
    return "\n".join(parts)


def write_docs(path: Path, text: str) -> None:
    """Replace what stands between the markers in ``path`` (append the markers if absent)."""
    block = f"{BEGIN}\n{text.rstrip()}\n{END}"
    doc = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: block, doc, count=1)
    else:
        doc = doc.rstrip() + ("\n\n" if doc else "") + block + "\n"
    path.write_text(doc)
