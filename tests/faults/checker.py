"""The checker of a fault run: what every process logged, against the invariants.

Owns: reading a run's directory (``run.json`` from the harness, each
workload process's JSON-lines log) and deciding, strictly:

- **duplicates**: a message (producer, channel, seq) delivered twice on one
  channel (a group message: twice to one member);
- **never sent**: a delivery no producer logged a send of; and a delivery of a
  send that raised ``ChannelFull`` (refused, so it must not arrive);
- **inversions**: per producer and channel, among delivered messages, one
  delivered after a later one of the same producer (FIFO), with how late;
- **silent loss**: every send that returned without error is delivered or
  counted in a drop reason: ``lost`` (accepted, never delivered) against
  ``counted`` (the drop counters: every node life's last sampled ``drops``,
  the dead-node losses counted once per death, every client's
  ``lost_in_node_restart``); ``lost > counted`` is a loss nobody recorded;
- **double counted**: without group traffic (``group_rate`` 0), where the
  balance is exact, ``counted > lost`` (beyond what consumer kills allow) is
  a message both delivered and counted lost;
- **slow answers**: every send answered within ``answer_bound`` s (the
  suspicion timeout + a margin); a send made while the producer's own node
  was down (it cannot answer) within that bound of its return;
- **slow recovery**: after a node fault, each channel the node owned serves
  again (delivers a message sent after the fault began) within
  ``RECOVERY_AFTER_DEAD`` s of the node being declared dead everywhere;
- **unrecovered**: after every fault, every channel serves again before the
  run ends, and no message is left queued on a node at the end (while its
  consumer waits);
- **membership**: after the run, every node counts every live consumer's
  group member, and a ``group_send`` from every node reaches each of them.

It also measures, per fault: the longest send, the time until each channel
served again (``recovery``), when the fault was declared everywhere.

Lost vs counted is exact for channel messages only when nothing else moves
the counters: a node life's counters are known up to its last sample (the
harness samples every node just before it kills or freezes it), and group
messages count per member where a node fault makes the expected members
uncertain (those sends are reported as ``group_uncertain``, not lost, while
their drops still count: with group traffic, ``counted`` can only be high).
Run with ``--group-rate 0`` for an exact channel balance.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cluster import GROUP, read_jsonl
from .schedule import NODE_KINDS

#: Seconds added to the suspicion timeout for a send's answer (a round trip,
#: a loaded 2-core machine, the relaying node learning of the death by gossip).
ANSWER_MARGIN = 1.0
#: Seconds within which a channel must serve again once its owner is
#: declared dead by every other node (issue 11, defect 3).
RECOVERY_AFTER_DEAD = 1.0
#: Seconds after a node fault ends (restart ready, or thaw) during which
#: group deliveries are uncertain (members re-asserted, views settling).
SETTLE = 2.0
#: Messages a consumer SIGKILL may leave both delivered and counted
#: (``receiver_gone``): taken by ``receive()`` in the instant before the kill,
#: before the consumption report left (docs/delivery.md); one per channel
#: the consumer receives on, its hashed channel and its group member.
OVERLAP_PER_CONSUMER_KILL = 2
#: Examples kept per violation.
EXAMPLES = 8

Key = tuple[str, str, int]  # (producer, channel or "#group", seq)


def answer_bound(preset: str, nodes: int) -> float:
    """Seconds within which every send must be answered: the longest
    suspicion timeout of the preset, one probe, and ``ANSWER_MARGIN``."""
    from zchannels.node.config import NodeConfig
    from zchannels.node.membership import suspicion_bounds

    config = (NodeConfig.test() if preset == "test" else NodeConfig.lan()).membership
    _, high = suspicion_bounds(config, nodes)
    return float(high + config.probe_interval + ANSWER_MARGIN)


@dataclass(slots=True)
class Report:
    seed: int
    dir: str
    spec: dict[str, Any]
    faults: list[dict[str, Any]]
    #: the run's start (monotonic seconds; fault times are after it)
    t0: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)
    #: invariant name -> {"count": n, "examples": [...]} (only those violated)
    violations: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def violated(self, name: str) -> bool:
        return name in self.violations

    def add(self, name: str, count: int, examples: list[Any]) -> None:
        if count:
            self.violations[name] = {"count": count, "examples": examples[:EXAMPLES]}

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "dir": self.dir,
            "ok": self.ok,
            "spec": self.spec,
            "faults": self.faults,
            "counts": self.counts,
            "figures": self.figures,
            "violations": self.violations,
        }

    def render(self) -> str:
        c, f = self.counts, self.figures
        lines = [
            f"== seed {self.seed}: {'OK' if self.ok else 'VIOLATED: ' + ', '.join(self.violations)}"
            f"  ({self.dir})",
            f"  {self.spec['nodes']} nodes, {self.spec['duration']:g} s, "
            f"replay: python -m tests.faults --seed {self.seed} --runs 1 "
            f"--nodes {self.spec['nodes']} --duration {self.spec['duration']:g}"
            + (f" --kinds {','.join(self.spec['kinds'])}" if self.spec.get("kinds") else "")
            + "".join(
                f" --fault {f['at']:g}:{f['kind']}:{f['target']}:{f['hold']:g}"
                for f in self.spec.get("faults") or []
            )
            + f" --rate {self.spec.get('rate', 20):g} --group-rate {self.spec['group_rate']:g}",
            "  faults:",
        ]
        for x in self.faults:
            rec = x.get("recovery") or {}
            late = x["began"] - self.t0 - x["at"]
            lines.append(
                f"    t={x['at']:6.2f}s {x['kind']:<13} {x['target']:<5} {x['hold']:.2f}s"
                + (f"  {x['slow_answers']} slow answers" if x.get("slow_answers") else "")
                + (f" (began {late:.2f}s late)" if late > 0.05 else "")
                + f"  declared in {_s(x.get('declared_after'))}"
                f"  max send {_s(x.get('max_send_latency'))}"
                f"  recovery max {_s(rec.get('max'))} ({rec.get('slowest', '-')})"
                + (
                    f", after declared {_s(x.get('recovery_after_declared'))}"
                    if x.get("recovery_after_declared") is not None
                    else ""
                )
            )
        lines += [
            f"  sends: {c['sends']} ({c['sends_ok']} ok, {c['sends_full']} ChannelFull, "
            f"{c['sends_error']} errors {c['send_errors']}); group sends {c['group_sends']}",
            f"  deliveries: {c['deliveries']} channel, {c['group_deliveries']} group; "
            f"duplicates {c['duplicates']}, never sent {c['never_sent']}, "
            f"inversions {c['inversions']}",
            f"  lost {c['lost']} (channel {c['lost_channel']} + group {c['lost_group']} "
            f"- {c['stuck_at_end']} still queued at the end; group uncertain "
            f"{c['group_uncertain']}) vs counted {c['counted']} "
            f"{c['counted_by']}: silent {c['silent']}, overcounted {c['overcounted']} "
            f"({'exact' if c['balance_exact'] else 'group traffic: counted is an upper bound'})",
            f"  send latency: max {_s(f['max_send_latency'])} (bound {f['answer_bound']:.2f} s, "
            f"{c['slow_answers']} over); waiting for own node down: max "
            f"{_s(f['max_send_latency_own_node_down'])}",
            f"  recovery per fault (max over channels): {f['recovery_max']}",
            f"  membership: {f['membership']}",
        ]
        for name, v in self.violations.items():
            lines.append(f"  VIOLATION {name}: {v['count']}")
            for ex in v["examples"]:
                lines.append(f"    {json.dumps(ex, sort_keys=True)}")
        return "\n".join(lines)


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}s"


# -- reading ----------------------------------------------------------------------
@dataclass(slots=True)
class _Send:
    key: Key
    t0: float
    t1: float
    result: str


@dataclass(slots=True)
class _Delivery:
    key: Key
    channel: str  # where it arrived (the member channel for a group message)
    t: float
    life: str  # consumer log name


def check(run_dir: Path) -> Report:
    run = json.loads((run_dir / "run.json").read_text())
    spec = run["spec"]
    t0 = run["t0"]
    report = Report(spec["seed"], str(run_dir), spec, [], t0)
    sends: dict[Key, _Send] = {}
    deliveries: list[_Delivery] = []
    last_counters: dict[str, dict[str, int]] = {}
    members: dict[str, tuple[str, float, float]] = {}  # life -> (member, joined, until)
    errors: list[dict[str, Any]] = []
    end_of_run = run["phases"].get("final", run["phases"].get("membership_checked", 0.0))
    for w in run["workers"]:
        name = w["log"]
        for r in read_jsonl(run_dir / name):
            k = r["k"]
            if k == "send":
                key = (w["id"], r["ch"], r["s"])
                sends[key] = _Send(key, r["t0"], r["t1"], r["r"])
            elif k == "r":
                ch = "#" + GROUP if r.get("g") else r["ch"]
                deliveries.append(_Delivery((r["p"], ch, r["s"]), r["ch"], r["t"], name))
            elif k == "counters":
                last_counters[name] = r["c"]
            elif k == "ready" and "member" in r:
                until = w["killed_at"] or w["exited_at"] or end_of_run
                members[name] = (r["member"], r["t"], until)
            elif k == "error":
                errors.append({"log": name, **r})
    faults = run["executed"]
    node_down = _node_down_windows(run)
    _deliveries(report, sends, deliveries)
    _fifo(report, deliveries, sends, faults, t0)
    _losses(report, run, sends, deliveries, members, faults, last_counters)
    _latency(report, run, sends, node_down, faults)
    _recovery(report, run, sends, deliveries, faults)
    _membership(report, run)
    report.faults = [{**f, **_fault_figures(report, i)} for i, f in enumerate(faults)]
    harness: list[dict[str, Any]] = []
    for w in run["workers"]:
        if w["killed_at"] is None and w["returncode"] not in (0, None):
            harness.append({"worker": w["log"], "returncode": w["returncode"]})
    for hung in ("producer_hung", "consumer_hung"):
        for who in run["end"].get(hung, []):
            harness.append({hung: who})
    report.add("harness", len(harness), harness)
    report.counts["consumer_errors"] = len(errors)
    report.figures["consumer_errors"] = errors[:EXAMPLES]
    return report


# -- invariants -------------------------------------------------------------------
def _deliveries(report: Report, sends: dict[Key, _Send], deliveries: list[_Delivery]) -> None:
    seen: Counter[tuple[Key, str]] = Counter()
    dups, never, refused, after_error = [], [], [], []
    for d in deliveries:
        seen[(d.key, d.channel)] += 1
        if seen[(d.key, d.channel)] == 2:
            dups.append({"msg": list(d.key), "on": d.channel, "second_at": d.t})
        s = sends.get(d.key)
        if s is None:
            never.append({"msg": list(d.key), "on": d.channel, "at": d.t})
        elif s.result == "ChannelFull":
            refused.append({"msg": list(d.key), "on": d.channel, "at": d.t})
        elif s.result != "ok":
            after_error.append({"msg": list(d.key), "result": s.result})
    channel = [d for d in deliveries if not d.key[1].startswith("#")]
    c = report.counts
    c["sends"] = len(sends)
    c["group_sends"] = sum(1 for k in sends if k[1].startswith("#"))
    c["sends_ok"] = sum(1 for s in sends.values() if s.result == "ok")
    c["sends_full"] = sum(1 for s in sends.values() if s.result == "ChannelFull")
    errs = Counter(s.result for s in sends.values() if s.result not in ("ok", "ChannelFull"))
    c["sends_error"] = sum(errs.values())
    c["send_errors"] = dict(errs)
    c["deliveries"] = len(channel)
    c["group_deliveries"] = len(deliveries) - len(channel)
    c["duplicates"] = sum(n - 1 for n in seen.values() if n > 1)
    c["never_sent"] = len(never)
    c["delivered_after_error"] = len(after_error)
    report.add("duplicates", c["duplicates"], dups)
    report.add("never_sent", len(never) + len(refused), never + refused)
    report.figures["delivered_after_error"] = after_error[:EXAMPLES]


def _fault_at(faults: list[dict[str, Any]], t: float) -> str | None:
    """The last fault that began before ``t``, as ``kind target @t``."""
    best = None
    for f in faults:
        if f["began"] <= t:
            best = f
    if best is None:
        return None
    return f"{best['kind']} {best['target']} @{best['at']:.2f}s"


def _fifo(
    report: Report,
    deliveries: list[_Delivery],
    sends: dict[Key, _Send],
    faults: list[dict[str, Any]],
    t0: float,
) -> None:
    """Per (producer, stream, channel it arrived on), in delivery order: a
    message delivered after a later message of the same stream."""
    streams: dict[tuple[str, str, str], list[_Delivery]] = defaultdict(list)
    for d in deliveries:
        streams[(d.key[0], d.key[1], d.channel)].append(d)
    inversions: list[dict[str, Any]] = []
    for (producer, _stream, channel), ds in streams.items():
        ds.sort(key=lambda d: d.t)
        top: _Delivery | None = None
        seen: set[int] = set()
        for d in ds:
            if d.key[2] in seen:
                continue  # a duplicate (reported as one), not an inversion
            seen.add(d.key[2])
            if top is not None and d.key[2] < top.key[2]:
                sent = sends.get(d.key)
                inversions.append(
                    {
                        "producer": producer,
                        "channel": channel,
                        "seq": d.key[2],
                        "after_seq": top.key[2],
                        "late_by": round(d.t - top.t, 3),
                        "sent_at": None if sent is None else round(sent.t0 - t0, 3),
                        "delivered_at": round(d.t - t0, 3),
                        "fault": _fault_at(faults, d.t),
                    }
                )
            if top is None or d.key[2] > top.key[2]:
                top = d
    inversions.sort(key=lambda x: -x["late_by"])
    report.counts["inversions"] = len(inversions)
    report.add("inversions", len(inversions), inversions)


def _node_down_windows(run: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """node -> [(from, to)]: when it could not answer its own clients (killed
    or stopped until its restart was ready; frozen until thawed)."""
    down: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for f in run["executed"]:
        if f["kind"] in ("kill", "term"):
            down[f["target"]].append((f["began"], f["back"] or f["ended"]))
        elif f["kind"] in ("freeze", "lag"):
            down[f["target"]].append((f["began"], f["ended"]))
        if f["kind"] == "lag":
            down[f["notes"]["lagger"]].append((f["began"], f["notes"]["lagger_thawed"]))
    return down


def _stopped(f: dict[str, Any]) -> set[str]:
    """The nodes a fault takes away (none for the others)."""
    if f["kind"] not in NODE_KINDS:
        return set()
    return {f["target"], *([f["notes"]["lagger"]] if f["kind"] == "lag" else [])}


def _node_fault_windows(run: dict[str, Any]) -> list[tuple[float, float]]:
    return [
        (f["began"], (f["back"] or f["ended"]) + SETTLE)
        for f in run["executed"]
        if f["kind"] in NODE_KINDS
    ]


def _losses(
    report: Report,
    run: dict[str, Any],
    sends: dict[Key, _Send],
    deliveries: list[_Delivery],
    members: dict[str, tuple[str, float, float]],
    faults: list[dict[str, Any]],
    last_counters: dict[str, dict[str, int]],
) -> None:
    t0 = run["t0"]
    delivered = {(d.key, d.channel) for d in deliveries}
    lost_channel = [
        s
        for s in sends.values()
        if s.result == "ok" and not s.key[1].startswith("#") and (s.key, s.key[1]) not in delivered
    ]
    # group messages: per member that was certainly in the group
    windows = _node_fault_windows(run)
    lost_group, uncertain = [], 0
    for s in sends.values():
        if s.result != "ok" or not s.key[1].startswith("#"):
            continue
        for _life, (member, joined, until) in members.items():
            if not (joined < s.t0 and s.t1 < until) or (s.key, member) in delivered:
                continue
            if any(a <= s.t1 and s.t0 <= b for a, b in windows):
                uncertain += 1
            else:
                lost_group.append((s, member))
    by_reason, by_life = counted(run, last_counters)
    total = sum(by_reason.values())
    # Still queued on a node when the run ended (no receive took them while
    # their consumer waited): not lost, not delivered; "unrecovered" says so.
    stuck = sum(int(s.get("queued") or 0) for s in _final_samples(run))
    lost = len(lost_channel) + len(lost_group) - stuck
    c = report.counts
    c["lost_channel"] = len(lost_channel)
    c["lost_group"] = len(lost_group)
    c["group_uncertain"] = uncertain
    c["stuck_at_end"] = stuck
    c["lost"] = lost
    c["counted"] = total
    c["counted_by"] = dict(by_reason)
    c["silent"] = max(0, lost - total)
    c["overcounted"] = max(0, total - lost)
    report.figures["counted_by_node_life"] = by_life
    examples = [
        {
            "msg": list(s.key),
            "sent_at": round(s.t0 - t0, 3),
            "fault": _fault_at(faults, s.t1),
        }
        for s in sorted(lost_channel, key=lambda s: s.t0)
    ] + [{"msg": list(s.key), "member": m, "sent_at": round(s.t0 - t0, 3)} for s, m in lost_group]
    lost_by_channel = Counter(s.key[1] for s in lost_channel)
    report.figures["lost_by_channel"] = dict(lost_by_channel)
    report.figures["lost_by_fault"] = dict(
        Counter(str(_fault_at(faults, s.t1)) for s in lost_channel)
    )
    report.add("silent_loss", c["silent"], [{"lost": lost, "counted": total}, *examples])
    # Without group traffic the balance is exact: a count above the losses
    # is a message both counted and delivered (beyond the one overlap the
    # contract allows: taken in the instant before its consumer was killed).
    exact = run["spec"]["group_rate"] == 0
    c["balance_exact"] = exact
    kills = sum(1 for f in faults if f["kind"] == "consumer_kill")
    allowed = OVERLAP_PER_CONSUMER_KILL * kills
    if exact and total - lost > allowed:
        report.add(
            "double_counted",
            total - lost - allowed,
            [{"lost": lost, "counted": total, "allowed_overlap": allowed, "by": dict(by_reason)}],
        )


def _final_samples(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in run["samples"] if s.get("why") == "final" and s["ok"]]


def counted(
    run: dict[str, Any], last_counters: dict[str, dict[str, int]]
) -> tuple[Counter[str], dict[str, dict[str, int]]]:
    """Messages counted lost, by reason: each node life's last sampled drops
    (``expired``, ``receiver_gone``, ``dead_owner`` less what it counted for
    dead nodes), group members skipped full, the dead nodes' queued messages
    once per death (every survivor counts them: the largest count per period
    between two faults), and the clients' ``lost_in_node_restart``."""
    by_life: dict[str, dict[str, int]] = {}
    series: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for s in run["samples"]:
        if not s["ok"]:
            continue
        life = f"{s['node']}@{s['incarnation']}"
        drops, routing = s["drops"], s["routing"]
        in_dead = int(routing.get("lost_in_dead_nodes", 0))
        by_life[life] = {
            "expired": int(drops.get("expired", 0)),
            "receiver_gone": int(drops.get("receiver_gone", 0)),
            "dead_owner": int(drops.get("dead_owner", 0)) - in_dead,
            "group_skipped_full": int(s.get("group_skipped_full", 0)),
        }
        series[life].append((s["t"], in_dead))
    reasons: Counter[str] = Counter()
    for life_counts in by_life.values():
        reasons.update(life_counts)
    # dead nodes' queues: the increments of each survivor's count, per period
    cuts = sorted(f["began"] for f in run["executed"])
    per_period: dict[int, dict[str, int]] = defaultdict(dict)
    for life, points in series.items():
        points.sort()
        for (_, a), (t, b) in itertools.pairwise(points):
            if b > a:
                period = sum(1 for c in cuts if c <= t)
                per_period[period][life] = per_period[period].get(life, 0) + b - a
    reasons["lost_in_dead_nodes"] = sum(max(v.values()) for v in per_period.values())
    reasons["lost_in_node_restart"] = sum(
        int(c.get("lost_in_node_restart", 0)) for c in last_counters.values()
    )
    return +reasons, by_life


def _overlaps(windows: list[tuple[float, float]], a: float, b: float) -> bool:
    return any(x <= b and a <= y for x, y in windows)


def _latency(
    report: Report,
    run: dict[str, Any],
    sends: dict[Key, _Send],
    node_down: dict[str, list[tuple[float, float]]],
    faults: list[dict[str, Any]],
) -> None:
    """Every send answered within the bound; a send whose own node was down
    (killed until restarted, frozen until thawed) counts from its return."""
    spec = run["spec"]
    bound = answer_bound(spec["preset"], spec["nodes"])
    node_of = {w["id"]: w["node"] for w in run["workers"] if w["role"] == "producer"}
    t0 = run["t0"]
    slow, own_down_max, overall = [], 0.0, 0.0
    for s in sends.values():
        took = s.t1 - s.t0
        start = s.t0
        for a, b in node_down.get(node_of[s.key[0]], []):
            if a <= s.t1 and s.t0 <= b:  # its node was down meanwhile
                own_down_max = max(own_down_max, took)
                start = max(start, b)
        overall = max(overall, took if start == s.t0 else 0.0)
        if s.t1 - start > bound:
            slow.append(
                {
                    "msg": list(s.key),
                    "took": round(took, 3),
                    "after_own_node_back": None if start == s.t0 else round(s.t1 - start, 3),
                    "result": s.result,
                    "sent_at": round(s.t0 - t0, 3),
                    "fault": _fault_at(faults, s.t1),
                }
            )
    slow.sort(key=lambda x: -x["took"])
    report.counts["slow_answers"] = len(slow)
    report.figures["answer_bound"] = bound
    report.figures["max_send_latency"] = overall
    report.figures["max_send_latency_own_node_down"] = own_down_max
    # per fault: the longest send that overlapped it (own node down or not),
    # and how many answers that came after it began were over the bound
    for i, f in enumerate(faults):
        late = [x for x in slow if f["began"] - t0 <= x["sent_at"] + x["took"]]
        nxt = [g["began"] - t0 for g in faults[i + 1 :]]
        if nxt:
            late = [x for x in late if x["sent_at"] + x["took"] < nxt[0]]
        report.figures.setdefault("per_fault", {}).setdefault(i, {})["slow_answers"] = len(late)
        end = (f["back"] or f["ended"]) + SETTLE
        around = [s.t1 - s.t0 for s in sends.values() if s.t0 <= end and f["began"] <= s.t1]
        report.figures.setdefault("per_fault", {}).setdefault(i, {})["max_send_latency"] = (
            max(around) if around else None
        )
    report.add("slow_answers", len(slow), slow)


def _declared(run: dict[str, Any], f: dict[str, Any]) -> float | None:
    """When every other node first showed ``f``'s node dead (or left) in a
    sample, in seconds after the fault began; None if never before it was back."""
    if f["kind"] not in NODE_KINDS:
        return None
    others = [n for n in run["nodes"] if n not in _stopped(f)]
    latest: dict[str, str] = {}
    until = (f["back"] or f["ended"]) + SETTLE
    for s in sorted(run["samples"], key=lambda s: s["t"]):
        if not s["ok"] or s["node"] == f["target"] or s["t"] < f["began"] or s["t"] > until:
            continue
        latest[s["node"]] = s["members"].get(f["target"], "?")
        if all(latest.get(o) in ("dead", "left") for o in others):
            return float(s["t"] - f["began"])
    return None


def _consumers_back(run: dict[str, Any], f: dict[str, Any], channel: str) -> float:
    """Seconds after ``f`` began when a consumer of ``channel`` can take
    again: 0 if one runs on a node the fault left alone, else when the
    first of their nodes runs again. Nobody serves a channel whose every
    consumer is stopped (seed 55's lag: the frozen owner's channels are
    consumed on the second node it stops)."""
    stopped = _stopped(f)
    nodes = {
        w["node"] for w in run["workers"] if w["role"] == "consumer" and channel in w["channels"]
    }
    if not nodes or nodes - stopped:
        return 0.0
    back = {f["target"]: (f["back"] or f["ended"]) - f["began"]}
    if f["kind"] == "lag":
        back[f["notes"]["lagger"]] = f["notes"]["lagger_thawed"] - f["began"]
    return min(back[n] for n in nodes)


def _recovery(
    report: Report,
    run: dict[str, Any],
    sends: dict[Key, _Send],
    deliveries: list[_Delivery],
    faults: list[dict[str, Any]],
) -> None:
    """Per fault, per hashed channel: seconds from the fault's start until
    every producer's stream on it served again (delivered a message sent
    after the fault began); a node fault's own producers are left out (they
    send nothing until their node is back). For a node declared dead: from
    then until each channel it owned served again."""
    streams: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for d in deliveries:
        if d.key[1].startswith("#"):
            continue
        s = sends.get(d.key)
        if s is not None:
            streams[(d.key[0], d.channel)].append((s.t0, d.t))
    producers = {w["id"]: w["node"] for w in run["workers"] if w["role"] == "producer"}
    slow: list[dict[str, Any]] = []
    unrecovered: list[dict[str, Any]] = []
    maxima: list[float | None] = []
    for i, f in enumerate(faults):
        rec: dict[str, float | None] = {}
        slowest_stream: dict[str, str] = {}
        for ch in run["channels"]:
            worst: float | None = 0.0
            for p, node in producers.items():
                if node in _stopped(f):
                    continue
                after = [at for sent, at in streams.get((p, ch), []) if sent >= f["began"]]
                if not after:
                    worst = None
                    slowest_stream[ch] = p
                    break
                took = min(after) - f["began"]
                if worst is not None and took >= worst:
                    worst, slowest_stream[ch] = took, p
            rec[ch] = worst
        known = {k: v for k, v in rec.items() if v is not None}
        slowest = max(known, key=lambda k: known[k]) if known else None
        fig = report.figures.setdefault("per_fault", {}).setdefault(i, {})
        fig["recovery"] = {
            "per_channel": {k: None if v is None else round(v, 3) for k, v in rec.items()},
            "max": known[slowest] if slowest else None,
            "slowest": f"{slowest} ({slowest_stream.get(slowest, '')})" if slowest else None,
        }
        maxima.append(None if slowest is None else round(known[slowest], 2))
        declared = _declared(run, f)
        fig["declared_after"] = declared
        if declared is not None and f["kind"] in ("kill", "freeze", "lag"):
            owned = run["owned"][f["target"]]
            # (from the declaration, or from when a consumer of the channel
            # runs again if the fault stopped all of them: a lag stops the
            # node whose consumers take the frozen owner's channels)
            late = max(
                (float("inf") if rec[ch] is None else rec[ch])
                - max(declared, _consumers_back(run, f, ch))
                for ch in owned
            )
            fig["recovery_after_declared"] = late
            back = (f["back"] or f["ended"]) - f["began"]
            if late > RECOVERY_AFTER_DEAD and declared + RECOVERY_AFTER_DEAD < back:
                slow.append(
                    {
                        "fault": f"{f['kind']} {f['target']} @{f['at']:.2f}s for {f['hold']:.2f}s",
                        "declared_after": round(declared, 3),
                        "served_after_declared": round(late, 3),
                        "channels": {ch: rec[ch] for ch in owned},
                    }
                )
        never = [ch for ch, v in rec.items() if v is None]
        if never:
            unrecovered.append(
                {
                    "fault": f"{f['kind']} {f['target']} @{f['at']:.2f}s",
                    "never": {ch: slowest_stream[ch] for ch in never},
                }
            )
    stuck = {s["node"]: s["queued"] for s in _final_samples(run) if s.get("queued")}
    if stuck:
        unrecovered.append({"queued_at_end": stuck})
    report.figures["recovery_max"] = maxima
    report.add("slow_recovery", len(slow), slow)
    report.add("unrecovered", len(unrecovered), unrecovered)


def _membership(report: Report, run: dict[str, Any]) -> None:
    end = run["end"]
    sizes, markers = end.get("group_sizes", {}), end.get("markers", {})
    report.figures["membership"] = {
        "group_sizes_took": sizes.get("took"),
        "markers_took": markers.get("took"),
    }
    problems = []
    if sizes.get("took") is None:
        problems.append({"group_sizes": sizes})
    if markers.get("took") is None:
        problems.append({"markers": markers})
    report.add("membership", len(problems), problems)


def _fault_figures(report: Report, i: int) -> dict[str, Any]:
    fig: dict[str, Any] = report.figures.get("per_fault", {}).get(i, {})
    return fig
