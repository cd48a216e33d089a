"""Runs measurements: worker processes, deadlines, interleaved rounds, collected results.

One measurement = one (scenario, layer) pair in fresh processes (forked by a
``forkserver`` that has imported only third-party modules and the harness): each role
in its own process, joined by pipes (two roles: one pipe; more: a star of pipes from
the first role to each other one), or -- for in-process layers and one-role scenarios
-- all roles as tasks of one process. Each worker process has a CPU ``Meter`` (cpu.py);
the coordinator merges the workers' readings into CPU µs per delivered message.

Every wait has a deadline: a role that does not finish in ``budget.deadline_s`` is
cancelled inside its worker (which reports where it was stuck), and a worker that does
not report in time is killed. A broken layer costs one deadline per cell and reads
"timeout" or "failed" in the table; it never hangs the run.

Rounds are interleaved: round r runs every scenario for every layer, the layer order
rotated by r, so drift on a noisy machine spreads over all layers alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import multiprocessing.connection
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

from bench import cpu, layers
from bench.budget import Budget
from bench.control import Hub, Peer, PipePeer, queue_peers
from bench.layers import LayerSpec
from bench.profiling import maybe_profile, summarize
from bench.scenarios import PROBE, SCENARIOS, Metrics, Role, Scenario
from bench.services import Services

CLOSE_DEADLINE_S = 10.0
BUSY_LOAD = 0.7
"""1-minute load average above which the run notes that something else was using the CPU."""
ERROR_GRACE_S = 2.0
"""After one worker's error: how long the other may take to report its own."""
EXIT_GRACE_S = 10.0
"""Past the role deadline: time for spawning, importing and closing before a kill."""


@dataclass
class Outcome:
    ok: bool
    metrics: Metrics = field(default_factory=dict)
    error: str = ""
    warnings: list[str] = field(default_factory=list)
    series: dict[str, list[float]] = field(default_factory=dict)
    """Per-event samples (fan-out shots), pooled over runs for percentiles."""


@dataclass
class Results:
    budget: Budget
    layers: list[LayerSpec]
    scenarios: list[Scenario]
    samples: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    """(layer key, metric key) -> one value per successful run."""
    sample_rounds: dict[tuple[str, str], list[int]] = field(
        default_factory=lambda: defaultdict(list)
    )
    """(layer key, metric key) -> the round of each value in ``samples`` (pairs the layers
    of one round for per-round ratios)."""
    pooled: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    """(layer key, series key) -> every per-event sample of every run (fan-out shots)."""
    failures: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    """(layer key, scenario key) -> one error text per failed run."""
    unavailable: dict[str, str] = field(default_factory=dict)
    """layer key -> why the layer did not run at all."""
    warnings: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0


# --- inside a worker process -----------------------------------------------------------


def roles_for(scenario_key: str, spec: LayerSpec) -> tuple[Role, ...] | None:
    if scenario_key == PROBE.key:
        return PROBE.roles if spec.kind == "channels" else None
    if spec.kind == "pyzmq":
        from bench import bare_zmq

        return bare_zmq.ROLES.get(scenario_key)
    if spec.kind == "relay":
        from bench import relay_floor

        return relay_floor.ROLES.get(scenario_key)
    scenario = SCENARIOS[scenario_key]
    if scenario.processes_only and spec.single_process:
        return None
    return scenario.roles


def _is_hub(scenario_key: str) -> bool:
    scenario = SCENARIOS.get(scenario_key)
    return scenario is not None and scenario.hub


def _links(scenario_key: str, count: int) -> list[Peer | Hub]:
    """In-process links for ``count`` roles of one process: a pair, or a star."""
    if count == 1:
        return [queue_peers()[0]]
    if count == 2 and not _is_hub(scenario_key):
        return list(queue_peers())
    pairs = [queue_peers() for _ in range(count - 1)]
    return [Hub([hub_end for hub_end, _ in pairs]), *(end for _, end in pairs)]


def _short(filename: str) -> str:
    path = Path(filename)
    return f"{path.parent.name}/{path.name}"


def _where(exc: BaseException) -> str:
    """The innermost harness frame and the innermost frame overall that raised ``exc``."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    ours = [f for f in frames if f"{Path(__file__).parent.name}/" in _short(f.filename)]
    parts = [f"{_short(f.filename)}:{f.lineno} `{(f.line or '').strip()}`" for f in ours[-1:]]
    if not ours or frames[-1] is not ours[-1]:
        parts.append(f"{_short(frames[-1].filename)}:{frames[-1].lineno}")
    return " → ".join(parts)


def _stuck_at(task: asyncio.Task[Any]) -> str:
    """Where a pending task waits: its chain of awaiting coroutines, innermost last."""
    chain: list[str] = []
    obj: Any = task.get_coro()
    while obj is not None:
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None)
        if frame is None:
            break
        chain.append(f"{_short(frame.f_code.co_filename)}:{frame.f_lineno} {frame.f_code.co_name}")
        obj = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None)
    return " → ".join(chain[-4:])


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RoleTimeout):
        return str(exc)
    where = _where(exc)
    text = f"{type(exc).__name__}: {exc}"
    return f"{text} (at {where})" if where else text


class RoleTimeout(Exception):
    """A role did not finish within the deadline; the message says where it waited."""


async def _run_roles(
    scenario_key: str,
    role_indices: Sequence[int],
    spec: LayerSpec,
    budget: Budget,
    deadline_s: float,
    conns: list[Connection],
    meter: cpu.Meter,
    warnings: list[str],
) -> Metrics:
    roles = roles_for(scenario_key, spec)
    if roles is None:
        raise ValueError(f"{spec.key} has no {scenario_key} scenario")
    peers: list[Peer | Hub]
    if len(role_indices) > 1 or not conns:
        peers = _links(scenario_key, len(role_indices))
    elif role_indices[0] == 0 and _is_hub(scenario_key):
        peers = [Hub([PipePeer(c) for c in conns])]
    else:
        peers = [PipePeer(conns[0])]
    end = time.monotonic() + deadline_s
    layer = layers.build(spec)
    try:
        tasks = [
            asyncio.create_task(roles[i](layer, peer, budget, meter), name=roles[i].__name__)
            for i, peer in zip(role_indices, peers, strict=True)
        ]
        done, pending = await asyncio.wait(
            tasks, timeout=max(0.0, end - time.monotonic()), return_when=asyncio.FIRST_EXCEPTION
        )
        failed = [t for t in done if t.exception() is not None]
        chains = {t: _stuck_at(t) for t in pending}
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # names are read after cancelling: a role may label its task with its progress
        stuck = "; ".join(f"{t.get_name()} waiting at {chain}" for t, chain in chains.items())
        if failed:
            raise failed[0].exception()  # type: ignore[misc]
        if pending:
            raise RoleTimeout(f"timeout: not done within {deadline_s:g} s; {stuck}")
    finally:
        if layer is not None:
            try:
                async with asyncio.timeout(CLOSE_DEADLINE_S):
                    await layers.close(spec, layer)
            except TimeoutError:
                warnings.append(f"{spec.close}() did not return within {CLOSE_DEADLINE_S:g} s")
            except Exception as exc:
                warnings.append(f"{spec.close}() raised {type(exc).__name__}: {exc}")
    merged: Metrics = {}
    for task in tasks:
        merged.update(task.result())
    return merged


def worker(
    scenario_key: str,
    role_indices: tuple[int, ...],
    spec: LayerSpec,
    budget: Budget,
    deadline_s: float,
    peer_conns: list[Connection],
    result_conn: Connection,
    profile_dir: str | None,
) -> None:
    """Entry point of a worker process: run the roles, send one result tuple."""
    warnings: list[str] = []
    known = roles_for(scenario_key, spec) or ()
    names = "+".join(dict.fromkeys(known[i].__name__ for i in role_indices if i < len(known)))
    meter = cpu.Meter(spec.node_pid or None)
    try:
        roles = _run_roles(
            scenario_key, role_indices, spec, budget, deadline_s, peer_conns, meter, warnings
        )
        with maybe_profile(profile_dir, f"{spec.key}-{names}"):
            metrics = asyncio.run(roles)
        metrics.update(meter.metrics())
        result_conn.send(("ok", metrics, meter.series(), "", warnings))
    except BaseException as exc:
        result_conn.send(("error", {}, {}, _describe(exc), warnings))


# --- in the coordinator ------------------------------------------------------------------


PRELOAD = [
    "bench.runner",
    "channels.layers",
    "channels_redis.core",
    "channels_redis.pubsub",
    "msgpack",
    "zmq.asyncio",
]
"""What the fork server imports once, so a worker starts in ~0.1 s, not ~1 s: third-party
modules and the harness only. zchannels is imported afresh by each worker (no state of
the layer under test is ever inherited through a fork)."""


def _context() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # the server skips what it cannot import
    return ctx


def measure(
    scenario_key: str,
    spec: LayerSpec,
    budget: Budget,
    deadline_s: float,
    profile_dir: Path | None = None,
) -> Outcome:
    """Run one measurement in fresh worker processes and collect its outcome."""
    roles = roles_for(scenario_key, spec)
    if roles is None:
        return Outcome(False, error=f"no {scenario_key} scenario for {spec.key}")
    ctx = _context()
    groups: list[tuple[int, ...]]
    peer_ends: list[list[Connection]]
    if spec.single_process or len(roles) == 1:
        groups = [tuple(range(len(roles)))]
        peer_ends = [[]]
    else:  # role 0 is joined to every other role: a pair, or the hub of a star
        groups = [(i,) for i in range(len(roles))]
        pipes = [ctx.Pipe(duplex=True) for _ in roles[1:]]
        peer_ends = [[a for a, _ in pipes], *([b] for _, b in pipes)]
    procs = []
    results: list[Connection] = []
    for indices, peer_end in zip(groups, peer_ends, strict=True):
        read_end, write_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=worker,
            args=(
                scenario_key,
                indices,
                spec,
                budget,
                deadline_s,
                peer_end,
                write_end,
                None if profile_dir is None else str(profile_dir),
            ),
            daemon=True,
        )
        proc.start()
        write_end.close()
        procs.append(proc)
        results.append(read_end)
    for ends in peer_ends:
        for end in ends:
            end.close()

    outcome = _collect(procs, results, deadline_s + EXIT_GRACE_S)
    for proc in procs:
        proc.join(3.0)
        if proc.is_alive():
            if outcome.ok:
                outcome.warnings.append("a worker did not exit within 3 s after its layer closed")
            proc.kill()
            proc.join(5.0)
    for conn in results:
        conn.close()
    outcome.metrics = cpu.per_message(outcome.metrics)
    return outcome


def _collect(procs: list[Any], conns: list[Connection], wait_s: float) -> Outcome:
    """Gather every worker's result. After the first error the others get a short grace,
    so a timeout reports where *each* role was waiting (a lost message shows as both
    sides waiting in receive)."""
    metrics: Metrics = {}
    series: dict[str, list[float]] = {}
    warnings: list[str] = []
    errors: list[str] = []
    pending: dict[Any, Any] = dict(zip(conns, procs, strict=True))
    end = time.monotonic() + wait_s
    while pending:
        ready = multiprocessing.connection.wait(list(pending), max(0.0, end - time.monotonic()))
        if not ready:
            if not errors:
                errors.append(f"timeout: worker gave no result within {wait_s:g} s")
            break
        for conn in ready:
            proc = pending.pop(conn)
            try:
                status, part, samples, error, notes = cast(Connection, conn).recv()
            except EOFError:
                proc.join(1.0)
                status, part, samples = "error", {}, {}
                error, notes = f"worker died ({proc.exitcode})", []
            warnings.extend(notes)
            if status == "ok":
                cpu.merge(metrics, part)
                for key, values in samples.items():
                    series.setdefault(key, []).extend(values)
            else:
                errors.append(error)
                end = min(end, time.monotonic() + ERROR_GRACE_S)
    if errors:
        return Outcome(False, error="; ".join(errors), warnings=warnings)
    return Outcome(True, metrics, warnings=warnings, series=series)


def _versions() -> dict[str, str]:
    meta = {"python": platform.python_version(), "machine": f"{platform.machine()}"}
    for dist in ("pyzmq", "msgpack", "channels", "channels_redis", "redis", "zchannels"):
        try:
            meta[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            meta[dist] = "not installed"
    try:
        import zmq

        meta["libzmq"] = zmq.zmq_version()
    except ImportError:
        pass
    meta["source"] = source_state()
    return meta


def source_state() -> str:
    """Which zchannels code ran: the commit, and a digest of the source files as they are
    (a run whose digest changes before it ends measured a mix of versions)."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for folder in ("zchannels", "node", "discovery"):
        for path in sorted((root / folder).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    git = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    commit = git.stdout.strip() if git.returncode == 0 else "no commit"
    return f"{commit}, source digest {digest.hexdigest()[:12]}"


def run(
    budget: Budget,
    layer_keys: Sequence[str],
    scenario_keys: Sequence[str],
    log: Callable[[str], None],
    profile_dir: Path | None = None,
) -> Results:
    started = time.monotonic()
    results = Results(budget, [], [SCENARIOS[k] for k in scenario_keys])
    results.meta = _versions()
    load_before = os.getloadavg()[0]
    clock = time.get_clock_info("perf_counter").implementation
    if "CLOCK_MONOTONIC" not in clock:
        results.warnings.append(
            f"perf_counter is {clock}, not CLOCK_MONOTONIC: the fan-out times compare two clocks"
        )
    with tempfile.TemporaryDirectory(prefix="zchannels-bench-") as tmp:
        workdir = Path(tmp)
        need = {s.needs for s in layers.specs(0, "", "") if s.key in layer_keys and s.needs}
        services = Services(workdir, need, profile_dir, log)
        try:
            if services.redis is not None:
                results.meta["redis-server"] = services.redis.version()
            port = services.redis.port if services.redis else 0
            endpoint = services.znode.endpoint if services.znode else ""
            relay = services.relay.endpoint if services.relay else ""
            results.layers = [s for s in layers.specs(port, endpoint, relay) if s.key in layer_keys]
            _probe_all(results, services, budget, log)
            _rounds(results, services, budget, log, profile_dir)
        finally:
            services.stop()
            for path in sorted(workdir.glob("*.log")):
                results.meta[f"{path.name}, last lines"] = "\n".join(
                    path.read_text(errors="replace").splitlines()[-10:]
                )
    if results.meta["source"] != source_state():
        results.warnings.append(
            "the zchannels source changed during the run: its figures mix code versions"
        )
    load_after = os.getloadavg()[0]
    results.meta["load"] = f"{load_before:.2f} before, {load_after:.2f} after"
    if load_before > BUSY_LOAD:
        results.warnings.append(
            f"the machine was busy before the run began (1-minute load average "
            f"{load_before:.2f} on {os.cpu_count()} cores): absolute figures are low, "
            "the interleaved ratios less affected"
        )
    if profile_dir is not None:
        for path in summarize(profile_dir):
            log(f"profile: {path}")
    results.elapsed_s = time.monotonic() - started
    return results


def _probe_all(
    results: Results, services: Services, budget: Budget, log: Callable[[str], None]
) -> None:
    for spec in results.layers:
        error = services.error(spec.needs)
        if not error and spec.kind == "channels":
            outcome = measure(PROBE.key, spec, budget, budget.probe_deadline_s)
            error = "" if outcome.ok else f"probe failed: {outcome.error}"
            results.warnings.extend(f"{spec.label}, probe: {w}" for w in outcome.warnings)
        if error:
            results.unavailable[spec.key] = error
            log(f"{spec.label}: UNAVAILABLE -- {error}")
        else:
            log(f"{spec.label}: ok")


def _rounds(
    results: Results,
    services: Services,
    budget: Budget,
    log: Callable[[str], None],
    profile_dir: Path | None,
) -> None:
    active = [s for s in results.layers if s.key not in results.unavailable]
    for r in range(budget.rounds):
        order = active[r % len(active) :] + active[: r % len(active)] if active else []
        for scenario in results.scenarios:
            for spec in order:
                cell = (spec.key, scenario.key)
                if roles_for(scenario.key, spec) is None:
                    continue
                if len(results.failures[cell]) >= budget.max_failures:
                    continue
                if spec.needs == "znode":
                    warning = services.revive_znode()
                    if warning:
                        results.warnings.append(warning)
                if services.error(spec.needs):
                    results.failures[cell].append(services.error(spec.needs))
                    continue
                node = replace(spec, node_pid=services.pid(spec.needs))
                began = time.monotonic()
                outcome = measure(scenario.key, node, budget, budget.deadline_s, profile_dir)
                took = time.monotonic() - began
                services.reset(spec.needs)
                _record(results, spec, scenario, outcome, r)
                tag = f"[{r + 1}/{budget.rounds}] {scenario.key:<10} {spec.key:<13} {took:4.1f}s"
                shown = ", ".join(
                    f"{k}={v:,.3g}" for k, v in outcome.metrics.items() if not k.startswith("note.")
                )
                log(f"{tag} {shown}" if outcome.ok else f"{tag} FAILED: {outcome.error}")


def _record(
    results: Results, spec: LayerSpec, scenario: Scenario, outcome: Outcome, round_: int
) -> None:
    results.warnings.extend(f"{spec.label}, {scenario.key}: {w}" for w in outcome.warnings)
    if outcome.ok:
        for key, value in outcome.metrics.items():
            results.samples[(spec.key, key)].append(value)
            results.sample_rounds[(spec.key, key)].append(round_)
        for key, values in outcome.series.items():
            results.pooled[(spec.key, key)].extend(values)
    else:
        results.failures[(spec.key, scenario.key)].append(outcome.error)


def with_rounds(budget: Budget, rounds: int | None) -> Budget:
    return budget if rounds is None else replace(budget, rounds=rounds)


def stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
