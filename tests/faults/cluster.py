"""Carrying out one fault run: real ``znode`` processes, workload processes, faults.

Owns: starting N ``znode run`` processes as one cluster on loopback (fixed
peer ports, so a restarted node comes back at its address; each seeded with
all the others; ``--discovery none``), a producer and two consumers per node
(``tests.faults.workload``), the hashed channel names (two owned by each
node, each consumed on another node than its owner), carrying out the
schedule (``tests.faults.schedule``), sampling every node's status
(what ``znode status --json`` prints) all along, and the end of a run: stop
the producers, let the consumers drain, check that group membership was
restored (group sizes, and a marker ``group_send`` from every node reaching
every live consumer), stop everything. Everything observed goes to
``run.json`` in the run's directory, next to the processes' own logs; the
checker (``tests.faults.checker``) reads only those files.

Does not own: deciding anything about what happened (the checker does).

Timing: every wait for a condition polls with a deadline; the only fixed
sleeps are the schedule's own (a fault at t=3 s) and the sampling interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from .schedule import DEFAULT_KINDS, GAP, LAG_THAW, NODE_KINDS, QUIET, Fault, make_schedule

ROOT = Path(__file__).resolve().parent.parent.parent
#: The layer's prefix (wire names are ``prefix|name``).
PREFIX = "asgi"
#: The group every consumer's ``new_channel()`` joins.
GROUP = "faults"
#: Seconds between two status samples of one node.
SAMPLE_EVERY = 0.1
#: Seconds a status request may take (a frozen node never answers).
STATUS_TIMEOUT = 0.5
#: Seconds the final counters wait for parked deliveries to be settled: a
#: park lasts at most ``dead_keep`` (30 s in the ``lan`` preset the run uses;
#: a node back in a new life, as a frozen one is, has them counted at once).
PARKED_WAIT = 35.0
#: Seconds between two looks at a condition waited for with a deadline.
POLL = 0.05


@dataclass(frozen=True, slots=True)
class RunSpec:
    seed: int
    #: where the logs and run.json go (created)
    out: Path
    nodes: int = 3
    #: seconds from the start of the workload to the stop of the producers
    duration: float = 20.0
    kinds: tuple[str, ...] = DEFAULT_KINDS
    #: sends per second per producer per hashed channel
    rate: float = 20.0
    #: group_sends per second per producer (0: only the end markers)
    group_rate: float = 2.0
    #: hashed channels owned by each node
    channels_per_node: int = 2
    #: the layers' capacity (large enough that a channel between consumers fills rarely)
    capacity: int = 1000
    #: the layers' request_timeout: how long a send may hang at most (30 s by
    #: default; shorter here, so a hanging send does not take the whole run)
    request_timeout: float = 8.0
    #: ``znode run --preset``
    preset: str = "lan"
    #: a fixed schedule instead of the seed's (tests of one fault)
    faults: tuple[Fault, ...] | None = None

    def schedule(self) -> list[Fault]:
        if self.faults is not None:
            return list(self.faults)
        return make_schedule(
            self.seed, self.node_ids(), self.consumer_ids(), self.duration, self.kinds
        )

    def node_ids(self) -> list[str]:
        return [f"n{i}" for i in range(self.nodes)]

    def consumer_ids(self) -> list[str]:
        return [f"c{i}{k}" for i in range(self.nodes) for k in "ab"]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["faults"] = None if self.faults is None else [f.to_json() for f in self.faults]
        return d


def hashed_channels(node_ids: list[str], per_node: int) -> dict[str, list[str]]:
    """owner -> ``per_node`` plain channel names it owns among ``node_ids``
    (rendezvous hashing, computed as the nodes do)."""
    from zchannels.node.ownership import Ownership

    ownership = Ownership.from_ids(node_ids)
    owned: dict[str, list[str]] = {n: [] for n in node_ids}
    for i in itertools.count():
        name = f"stream.{i}"
        owner = ownership.owner(f"{PREFIX}|{name}")
        if owner is not None and len(owned[owner]) < per_node:
            owned[owner].append(name)
        if all(len(v) == per_node for v in owned.values()):
            return owned
    raise AssertionError("unreachable")


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(condition: Callable[[], object], timeout: float) -> float | None:
    """Poll ``condition``; the seconds it took, or None if ``timeout`` passed."""
    start = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            return None
        time.sleep(POLL)


# -- processes ------------------------------------------------------------------
class NodeProc:
    """One ``znode run`` process (and, after a restart, the next one)."""

    def __init__(self, node_id: str, endpoint: str, peer: str, seeds: list[str], out: Path) -> None:
        self.id, self.endpoint, self.peer, self.seeds, self.out = (
            node_id,
            endpoint,
            peer,
            seeds,
            out,
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.life = 0
        self.ready_at: float | None = None

    def start(self, preset: str, timeout: float = 15.0) -> float:
        """Start it and wait for its ready line; the time it was ready."""
        self.life += 1
        stdout = self.out / f"{self.id}-life{self.life}.out"
        cmd = [sys.executable, "-m", "zchannels.node", "run", "--preset", preset]
        cmd += ["--node-id", self.id, "--client-endpoint", self.endpoint]
        cmd += ["--peer-endpoint", self.peer, "--discovery", "none", "--log-level", "WARNING"]
        # (its disk: the note a life that left leaves for the next, ``state_dir``)
        cmd += ["--state-dir", str(self.out / "state")]
        for seed in self.seeds:
            cmd += ["--seed", seed]
        with (
            open(stdout, "wb") as out,
            open(self.out / f"{self.id}-life{self.life}.err", "wb") as err,
        ):
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err)

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.id} exited with {self.proc.returncode} before ready")
            return b'"ready": true' in stdout.read_bytes()

        if wait_until(ready, timeout) is None:
            raise RuntimeError(f"{self.id} not ready within {timeout:g} s")
        self.ready_at = time.monotonic()
        return self.ready_at

    def stopped_status(self) -> dict[str, Any] | None:
        """The status the current life printed as it stopped (its last
        counts: a leave counts what no peer acknowledged as it ends), or
        None (killed, or still running)."""
        for r in read_jsonl(self.out / f"{self.id}-life{self.life}.out"):
            if r.get("stopped"):
                status: dict[str, Any] = r["status"]
                return status
        return None

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)  # (a frozen node cannot stop)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def reap(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            self.proc.wait(timeout)


@dataclass(slots=True)
class WorkProc:
    """One life of one workload process."""

    id: str
    role: str
    node: str
    life: int
    log: Path
    spec: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    killed_at: float | None = None
    exited_at: float | None = None
    #: what the process wrote to stderr
    err: Path | None = None

    def start(self) -> None:
        self.err = self.log.with_suffix(".err")
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.workload", self.role, json.dumps(self.spec)],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.started = time.monotonic()

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.id} (life {self.life}) exited with {self.proc.returncode}: "
                f"{self.err.read_text()[-2000:] if self.err else ''}"
            )
        return self.log.exists() and '"k":"ready"' in self.log.read_text()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "node": self.node,
            "life": self.life,
            "log": self.log.name,
            "started": self.started,
            "killed_at": self.killed_at,
            "exited_at": self.exited_at,
            "returncode": None if self.proc is None else self.proc.returncode,
            "channels": self.spec.get("channels", []),
        }


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a log; a last line cut by a kill is skipped."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                yield json.loads(line)


# -- status sampling ------------------------------------------------------------
def status_of(endpoint: str, timeout: float = STATUS_TIMEOUT) -> dict[str, Any] | None:
    """What ``znode status --json`` prints for the node at ``endpoint``, or
    None if it does not answer in ``timeout`` s."""
    import zmq
    from zchannels.node.cli import query

    from zchannels.protocol import DecodeError, MsgType

    try:
        result: dict[str, Any] = query(endpoint, MsgType.STATUS, timeout=timeout)
    except (TimeoutError, DecodeError, zmq.ZMQError):
        return None
    return result


def sample(node: str, status: dict[str, Any] | None, t: float) -> dict[str, Any]:
    """The part of a status the checker uses."""
    if status is None:
        return {"t": t, "node": node, "ok": False}
    counters = status.get("counters", {})
    return {
        "t": t,
        "node": node,
        "ok": True,
        "incarnation": status.get("incarnation"),
        "members": {m["id"]: m["state"] for m in status.get("members", [])},
        "view": status.get("view"),
        "drops": status.get("drops", {}),
        "routing": status.get("routing_counters", {}),
        "group_skipped_full": counters.get("group_skipped_full", 0),
        "group_size": status.get("group_sizes", {}).get(f"{PREFIX}|{GROUP}"),
        "queued": status.get("queued"),
    }


class Sampler:
    """Samples every node's status every ``SAMPLE_EVERY`` s, one thread per
    node (a frozen node's timeouts delay no other node's samples)."""

    def __init__(self, nodes: list[NodeProc]) -> None:
        self.nodes = nodes
        self.samples: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), name=f"faults-{n.id}", daemon=True)
            for n in nodes
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def take(self, node: NodeProc, why: str = "") -> dict[str, Any]:
        return self.add(sample(node.id, status_of(node.endpoint), time.monotonic()), why)

    def add(self, s: dict[str, Any], why: str = "") -> dict[str, Any]:
        if why:
            s["why"] = why
        with self._lock:
            self.samples.append(s)
        return s

    def _run(self, node: NodeProc) -> None:
        while not self._stop.is_set():
            self.take(node)
            self._stop.wait(SAMPLE_EVERY)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(10)


# -- a run ----------------------------------------------------------------------
@dataclass(slots=True)
class Executed:
    """A fault as it was carried out (monotonic times)."""

    fault: Fault
    began: float = 0.0
    ended: float = 0.0
    #: node faults: when the restarted node printed ready (kill, term)
    back: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.fault.to_json(),
            "began": self.began,
            "ended": self.ended,
            "back": self.back,
            "notes": self.notes,
        }


class Run:
    def __init__(self, spec: RunSpec, say: Callable[[str], None] = print) -> None:
        self.spec = spec
        self.say = say
        self.out = spec.out
        self.out.mkdir(parents=True, exist_ok=True)
        ids = spec.node_ids()
        ports = free_ports(len(ids))
        peers = {n: f"tcp://127.0.0.1:{p}" for n, p in zip(ids, ports, strict=True)}
        self.nodes = {
            n: NodeProc(
                n,
                f"ipc://{self.out}/{n}.sock",
                peers[n],
                [peers[m] for m in ids if m != n],
                self.out,
            )
            for n in ids
        }
        self.owned = hashed_channels(ids, spec.channels_per_node)
        self.channels = [ch for n in ids for ch in self.owned[n]]
        self.workers: list[WorkProc] = []
        self.sampler = Sampler(list(self.nodes.values()))
        self.executed: list[Executed] = []
        self.burners: list[subprocess.Popen[bytes]] = []
        self.t0 = 0.0
        self.phases: dict[str, float] = {}
        self.end: dict[str, Any] = {}

    # -- the workload -------------------------------------------------------
    def _consumer_channels(self) -> dict[str, list[str]]:
        """Each hashed channel gets one consumer, on a node that does not own it."""
        ids = self.spec.node_ids()
        consumers = self.spec.consumer_ids()
        assigned: dict[str, list[str]] = {c: [] for c in consumers}
        for i, owner in enumerate(ids):
            # the channels of node i are consumed on node i+1
            on = ids[(i + 1) % len(ids)]
            mine = [c for c in consumers if c[1:-1] == on[1:]]
            for j, ch in enumerate(self.owned[owner]):
                assigned[mine[j % len(mine)]].append(ch)
        return assigned

    def _worker(self, wid: str, role: str, node: str, life: int, **spec: Any) -> WorkProc:
        log = self.out / f"{wid}-life{life}.jsonl"
        full = {
            "id": wid,
            "node": self.nodes[node].endpoint,
            "log": str(log),
            "group": GROUP,
            "capacity": self.spec.capacity,
            "request_timeout": self.spec.request_timeout,
            "seed": zlib.crc32(f"{self.spec.seed}/{wid}/{life}".encode()),
            **spec,
        }
        w = WorkProc(wid, role, node, life, log, full)
        w.start()
        self.workers.append(w)
        return w

    def _start_consumer(self, cid: str, life: int) -> WorkProc:
        node = f"n{cid[1:-1]}"
        return self._worker(
            cid,
            "consumer",
            node,
            life,
            channels=self._consumer_channels()[cid],
            cancel=cid.endswith("b"),
        )

    def lagger_of(self, target: str) -> str:
        """The node that owns ``target``'s first hashed channel once
        ``target`` is gone (a ``lag`` fault's second node)."""
        from zchannels.node.ownership import Ownership

        rest = Ownership.from_ids([n for n in self.spec.node_ids() if n != target])
        owner = rest.owner(f"{PREFIX}|{self.owned[target][0]}")
        if owner is None:
            raise AssertionError(f"nobody owns {self.owned[target][0]} without {target}")
        return owner

    def live_consumers(self) -> list[WorkProc]:
        return [w for w in self.workers if w.role == "consumer" and w.alive()]

    # -- the steps ----------------------------------------------------------
    def start(self) -> None:
        self.say(f"run seed {self.spec.seed}: {self.spec.nodes} nodes in {self.out}")
        for node in self.nodes.values():
            node.start(self.spec.preset)
        ids = set(self.nodes)
        took = wait_until(self._formed, 20)
        if took is None:
            raise RuntimeError("the cluster did not form in 20 s")
        self.phases["formed"] = time.monotonic()
        self.sampler.start()
        for cid in self.spec.consumer_ids():
            self._start_consumer(cid, 1)
        if wait_until(lambda: all(w.ready() for w in self.workers), 30) is None:
            raise RuntimeError("consumers not ready in 30 s")
        for i, node_id in enumerate(sorted(ids)):
            self._worker(
                f"p{i}",
                "producer",
                node_id,
                1,
                channels=self.channels,
                rate=self.spec.rate,
                group_rate=self.spec.group_rate,
            )
        if wait_until(lambda: all(w.ready() for w in self.workers), 30) is None:
            raise RuntimeError("producers not ready in 30 s")
        self.t0 = time.monotonic()

    def _formed(self) -> bool:
        ids = set(self.nodes)
        for node in self.nodes.values():
            s = status_of(node.endpoint)
            if s is None or {m["id"] for m in s["members"] if m["state"] == "alive"} != ids:
                return False
        return True

    def _sleep_until(self, at: float) -> None:
        """The schedule's own time (a fault at t=3 s): a sleep is what it is."""
        delay = self.t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def faults(self, schedule: list[Fault]) -> None:
        """Carry out ``schedule``. A fault begins at its time, or ``GAP[0]``
        s after the one before actually ended (a restart on a loaded machine
        can take seconds), so faults never pile up; the producers stop
        ``QUIET`` s after the last fault at the earliest. Kinds, targets and
        holds are the seed's whatever the machine; times may shift (the
        report gives both)."""
        ended: float | None = None
        for fault in schedule:
            at = fault.at if ended is None else max(fault.at, ended - self.t0 + GAP[0])
            self._sleep_until(at)
            ex = Executed(fault)
            self._begin(ex)
            self.say(
                f"  {fault}" + (f" (began {at - fault.at:.2f} s late)" if at > fault.at else "")
            )
            if fault.kind == "lag":
                self._sleep_until(at + LAG_THAW)
                self.nodes[ex.notes["lagger"]].signal(signal.SIGCONT)
                ex.notes["lagger_thawed"] = time.monotonic()
            self._sleep_until(at + fault.hold)
            self._end(ex)
            self.executed.append(ex)
            ended = ex.back or ex.ended
        stop = (
            self.spec.duration
            if ended is None
            else max(self.spec.duration, ended - self.t0 + QUIET)
        )
        self._sleep_until(stop)

    def _begin(self, ex: Executed) -> None:
        f = ex.fault
        if f.kind in NODE_KINDS:
            node = self.nodes[f.target]
            # a last look at its counters (those die with a killed node)
            ex.notes["before"] = self.sampler.take(node, f"before {f.kind}")
            lagger = None
            if f.kind == "lag":
                lagger = self.nodes[self.lagger_of(f.target)]
                ex.notes["lagger"] = lagger.id
                ex.notes["lagger_before"] = self.sampler.take(lagger, "before lag")
            ex.began = time.monotonic()
            node.signal(
                {
                    "kill": signal.SIGKILL,
                    "term": signal.SIGTERM,
                    "freeze": signal.SIGSTOP,
                    "lag": signal.SIGSTOP,
                }[f.kind]
            )
            if lagger is not None:
                lagger.signal(signal.SIGSTOP)
        elif f.kind == "consumer_kill":
            [victim] = [w for w in self.live_consumers() if w.id == f.target]
            ex.began = time.monotonic()
            assert victim.proc is not None
            victim.proc.kill()
            victim.killed_at = ex.began
            ex.notes["life"] = victim.life
        else:
            ex.began = time.monotonic()
            self.burners = [
                subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(os.cpu_count() or 2)
            ]

    def _end(self, ex: Executed) -> None:
        f = ex.fault
        if f.kind in ("kill", "term"):
            node = self.nodes[f.target]
            if node.proc is not None:
                # (a SIGTERMed node leaves cleanly: usually gone by now)
                code = node.proc.wait(10)
                ex.notes["exit_code"] = code
                last = node.stopped_status()
                if last is not None:  # (what it counted to its end)
                    self.sampler.add(sample(node.id, last, time.monotonic()), "stopped")
            ex.ended = time.monotonic()
            ex.back = node.start(self.spec.preset)
        elif f.kind in ("freeze", "lag"):
            ex.ended = time.monotonic()
            self.nodes[f.target].signal(signal.SIGCONT)
        elif f.kind == "consumer_kill":
            [dead] = [w for w in self.workers if w.id == f.target and w.killed_at == ex.began]
            assert dead.proc is not None
            dead.proc.wait(10)
            ex.ended = time.monotonic()
            ex.notes["replacement_life"] = dead.life + 1
            self._start_consumer(f.target, dead.life + 1)
        else:
            ex.ended = time.monotonic()
            for burner in self.burners:
                burner.kill()
                burner.wait(10)
            self.burners = []

    def finish(self) -> None:
        """Stop the producers, let the consumers drain, check membership
        and markers, stop the consumers, take the final counters."""
        self.phases["producers_stopping"] = time.monotonic()
        producers = [w for w in self.workers if w.role == "producer"]
        for p in producers:
            assert p.proc is not None
            p.proc.send_signal(signal.SIGTERM)
        for p in producers:
            assert p.proc is not None
            try:
                p.proc.wait(self.spec.request_timeout + 10)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait(10)
                self.end["producer_hung"] = [*self.end.get("producer_hung", []), p.id]
            p.exited_at = time.monotonic()
        self.phases["producers_stopped"] = time.monotonic()
        self.end["drain_s"] = self._drain()
        self.phases["drained"] = time.monotonic()
        self._membership()
        self.phases["membership_checked"] = time.monotonic()
        for c in self.live_consumers():
            assert c.proc is not None
            c.proc.send_signal(signal.SIGTERM)
        for c in [w for w in self.workers if w.role == "consumer" and w.exited_at is None]:
            assert c.proc is not None
            try:
                c.proc.wait(15)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait(10)
                self.end["consumer_hung"] = [*self.end.get("consumer_hung", []), c.id]
            if c.killed_at is None:
                c.exited_at = time.monotonic()
        # Deliveries a node made to a client of a node it declared dead wait
        # (parked) until that client's node says what it took, or until the
        # park lapses and they are counted lost (as long as the dead are
        # remembered): the final counters are those the nodes come to.
        took = wait_until(lambda: self._parked() == 0, PARKED_WAIT)
        self.end["parked_settled"] = {"took": took, "left": self._parked()}
        self.sampler.stop()
        for node in self.nodes.values():
            self.sampler.take(node, "final")
        self.phases["final"] = time.monotonic()

    def _parked(self) -> int:
        """Deliveries parked on the nodes that answer (``znode status``)."""
        total = 0
        for node_id, node in self.nodes.items():
            status = status_of(node.endpoint) or {}
            total += int(status.get("nodes", {}).get(node_id, {}).get("parked", 0) or 0)
        return total

    def _drain(self, settle: float = 2.0, limit: float = 20.0) -> float:
        """Wait until every channel message a send accepted has been
        delivered, or deliveries have stopped for ``settle`` s."""
        expected: set[tuple[str, str, int]] = set()
        for w in self.workers:
            if w.role == "producer":
                for r in read_jsonl(w.log):
                    if r["k"] == "send" and r["r"] == "ok" and not r["ch"].startswith("#"):
                        expected.add((w.id, r["ch"], r["s"]))
        offsets: dict[Path, int] = {}
        got: set[tuple[str, str, int]] = set()
        last_change = time.monotonic()
        start = time.monotonic()
        while time.monotonic() - start < limit:
            before = len(got)
            for w in self.workers:
                if w.role != "consumer":
                    continue
                got.update(_tail_deliveries(w.log, offsets))
            if len(got) != before:
                last_change = time.monotonic()
            if expected <= got or time.monotonic() - last_change > settle:
                break
            time.sleep(POLL)
        return time.monotonic() - start

    def _membership(self) -> None:
        """Membership restored: every node counts every live consumer's
        member, and a group_send from every node reaches each of them."""
        live = self.live_consumers()
        want = len(live)

        def sizes() -> list[Any]:
            return [
                (s or {}).get("group_sizes", {}).get(f"{PREFIX}|{GROUP}")
                for s in (status_of(n.endpoint) for n in self.nodes.values())
            ]

        took = wait_until(lambda: sizes() == [want] * len(self.nodes), 10)
        self.end["group_sizes"] = {"want": want, "seen": sizes(), "took": took}
        members = {}
        for c in live:
            ready = next(r for r in read_jsonl(c.log) if r["k"] == "ready")
            members[c.log.name] = ready["member"]
        markers = [f"end-{n}" for n in self.nodes]

        async def send_markers() -> None:
            from zchannels.layer import ZeroMQChannelLayer

            for n, node in self.nodes.items():
                layer = ZeroMQChannelLayer(node=node.endpoint, request_timeout=5.0)
                try:
                    await layer.group_send(GROUP, {"m": f"end-{n}"})
                finally:
                    await layer.close()

        asyncio.run(send_markers())

        def seen() -> dict[str, list[str]]:
            got: dict[str, list[str]] = {}
            for c in live:
                got[c.log.name] = sorted(
                    r["m"]
                    for r in read_jsonl(c.log)
                    if r["k"] == "m" and r["ch"] == members[c.log.name]
                )
            return got

        took = wait_until(lambda: all(v == sorted(markers) for v in seen().values()), 10)
        self.end["markers"] = {"want": markers, "seen": seen(), "took": took}

    def stop(self) -> None:
        """Whatever still runs, stopped (also after a failure)."""
        for burner in self.burners:
            burner.kill()
            burner.wait(10)
        for w in self.workers:
            if w.alive():
                assert w.proc is not None
                w.proc.kill()
                w.proc.wait(10)
        for node in self.nodes.values():
            node.stop()
        self.sampler.stop()

    def record(self, schedule: list[Fault]) -> Path:
        path = self.out / "run.json"
        run = {
            "spec": self.spec.to_json(),
            "t0": self.t0,
            "phases": self.phases,
            "nodes": {
                n: {"endpoint": p.endpoint, "peer": p.peer, "lives": p.life}
                for n, p in self.nodes.items()
            },
            "owned": self.owned,
            "channels": self.channels,
            "schedule": [f.to_json() for f in schedule],
            "executed": [e.to_json() for e in self.executed],
            "workers": [w.to_json() for w in self.workers],
            "samples": self.sampler.samples,
            "end": self.end,
        }
        path.write_text(json.dumps(run, indent=1))
        return path


def _tail_deliveries(path: Path, offsets: dict[Path, int]) -> Iterator[tuple[str, str, int]]:
    """The channel deliveries logged in ``path`` since the last call."""
    if not path.exists():
        return
    f: IO[str]
    with open(path, encoding="utf-8") as f:
        f.seek(offsets.get(path, 0))
        while True:
            line = f.readline()
            if not line.endswith("\n"):
                break
            offsets[path] = f.tell()
            r = json.loads(line)
            if r["k"] == "r" and not r.get("g"):
                yield (r["p"], r["ch"], r["s"])


def execute(spec: RunSpec, say: Callable[[str], None] = print) -> Path:
    """Carry out one run; the path of its run.json."""
    run = Run(spec, say)
    schedule = spec.schedule()
    try:
        run.start()
        run.faults(schedule)
        run.finish()
    finally:
        run.stop()
    return run.record(schedule)
