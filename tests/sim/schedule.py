"""Schedules: the workload and faults of one run, generated from a seed.

Owns: ``Op`` (one timed action), ``Plan`` (a seed, a node count and the ops:
everything a run depends on, so a plan replays exactly and can be saved as
JSON) and ``generate``. Does not own how an op is carried out (``world``).

A plan mixes, over a few simulated seconds:
- client processes spread over the nodes (``client``), each consumer on its
  channels (``recv``, with a per-message work time);
- sends in bursts (``send``) to hashed channels ``qN`` (one consumer each:
  FIFO is checked there), ``sN`` (several competing consumers; one has a
  small capacity, so ``ChannelFull`` and reservations being revoked happen)
  and ``!`` channels (``!cK.i``: client K's i-th ``new_channel()`` name);
- groups with members on several nodes (``gadd``/``gdiscard``/``gsend``);
- cancelled receives, alone or in storms (``cancel``, restarted or not);
- client process death (``die``);
- node faults, as the fault set allows: ``freeze``/``thaw``, ``kill``/
  ``restart``, ``leave``/``restart``, ``join``, ``partition``/``heal``,
  ``loss`` (TCP retransmissions) and ``lag`` bursts, peer connection
  ``reset``s, and ``drain``: one step of a rolling restart (the node drains,
  leaves once its clients have moved, and restarts ``hold`` s later: one op,
  the world carries out the steps; ``faults=("drain",)`` is a rolling
  restart, checked strictly: see ``check``).
Ops that no longer make sense when run (a send from a dead client, a thaw of
a running node) do nothing, so the shrinker may drop any op.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

#: every fault kind; the single-node default leaves out what cannot be
#: counted without peers (a killed lone node takes its queues with it)
FAULTS = ("freeze", "kill", "leave", "join", "partition", "loss", "lag", "reset", "die", "drain")
#: what a schedule draws from unless told otherwise (``drain`` came later:
#: the seeds of the first nine keep their schedules, and the strict xfails
#: of tests/test_sim.py their seeds)
DEFAULT_FAULTS = FAULTS[:9]
SINGLE_FAULTS = ("freeze", "die")
#: a rolling restart: nothing else goes wrong (``check``'s strict mode)
ROLLING = ("drain",)
#: seconds a drained node stays away before its restart (a process
#: replaced at once, a slower deploy)
DRAIN_HOLDS = (0.01, 0.1, 0.3, 1.0)


@dataclass(frozen=True, slots=True)
class Op:
    at: float
    kind: str
    args: tuple[Any, ...]

    def to_json(self) -> list[Any]:
        return [round(self.at, 6), self.kind, *self.args]

    @staticmethod
    def from_json(raw: list[Any]) -> Op:
        args = tuple(tuple(a) if isinstance(a, list) else a for a in raw[2:])
        return Op(float(raw[0]), str(raw[1]), args)

    def __str__(self) -> str:
        return f"{self.at:8.4f} {self.kind} {' '.join(map(str, self.args))}"


@dataclass(frozen=True, slots=True)
class Plan:
    seed: int
    nodes: int
    ops: tuple[Op, ...]

    def to_json(self) -> str:
        return json.dumps(
            {"seed": self.seed, "nodes": self.nodes, "ops": [op.to_json() for op in self.ops]}
        )

    @staticmethod
    def from_json(text: str) -> Plan:
        raw = json.loads(text)
        ops = tuple(Op.from_json(o) for o in raw["ops"])
        return Plan(int(raw["seed"]), int(raw["nodes"]), ops)

    def without(self, drop: set[int]) -> Plan:
        return Plan(
            self.seed, self.nodes, tuple(o for i, o in enumerate(self.ops) if i not in drop)
        )


def generate(
    seed: int,
    nodes: int,
    faults: tuple[str, ...] | None = None,
    duration: float | None = None,
) -> Plan:
    rng = random.Random(seed)
    if faults is None:
        faults = DEFAULT_FAULTS if nodes > 1 else SINGLE_FAULTS
    if nodes <= 1:
        faults = tuple(
            f for f in faults if f not in ("join", "partition", "loss", "lag", "reset", "drain")
        )
    T = duration if duration is not None else rng.uniform(1.0, 3.0)
    ops: list[Op] = []

    def add(at: float, kind: str, *args: Any) -> None:
        ops.append(Op(round(at, 6), kind, args))

    n_clients = rng.randint(max(3, nodes), max(4, 2 * nodes + 1))
    clients = [f"c{i}" for i in range(n_clients)]
    for i, cid in enumerate(clients):
        add(rng.uniform(0, 0.02), "client", cid, i % nodes)
    q = [f"q{i}" for i in range(rng.randint(2, 4))]
    s = [f"s{i}" for i in range(rng.randint(1, 2))]
    cap: dict[str, int] = {name: 1000 for name in q + s}
    cap[s[0]] = rng.choice((4, 1000))
    bangs = [f"!{cid}.0" for cid in clients[: rng.randint(2, n_clients)]]
    groups = [f"g{i}" for i in range(rng.randint(0, 2))]
    procs = (0.0, 0.0, 0.0005, 0.002, 0.01)

    consumer: dict[str, str] = {}
    for name in q:
        consumer[name] = rng.choice(clients)
        add(0.05 + rng.uniform(0, 0.05), "recv", consumer[name], name, rng.choice(procs))
    for name in s:
        for cid in rng.sample(clients, 2):
            add(0.05 + rng.uniform(0, 0.05), "recv", cid, name, rng.choice(procs))
    for ref in bangs:
        consumer[ref] = ref[1:].partition(".")[0]
        add(0.05 + rng.uniform(0, 0.05), "recv", consumer[ref], ref, rng.choice(procs))
    for group in groups:
        for ref in rng.sample(bangs, min(len(bangs), rng.randint(2, 4))):
            add(0.1 + rng.uniform(0, 0.05), "gadd", consumer[ref], group, ref, 1000)

    targets = q + s + bangs
    t = 0.15
    while t < T:
        t += rng.expovariate(40.0)
        roll = rng.random()
        if roll < 0.55:
            ref = rng.choice(targets)
            capacity = cap.get(ref, 1000)
            add(
                t,
                "send",
                rng.choice(clients),
                ref,
                rng.randint(1, 8),
                rng.choice((0.0, 0.0002, 0.002)),
                capacity,
            )
        elif roll < 0.63 and groups:
            add(t, "gsend", rng.choice(clients), rng.choice(groups), rng.randint(1, 3), 0.001)
        elif roll < 0.75:
            ref = rng.choice(q + bangs)
            add(t, "cancel", consumer[ref], ref, rng.choice((0.0, 0.001, 0.01, 0.3, None)))
        elif roll < 0.80:
            ref = rng.choice(q + bangs)
            for i in range(rng.randint(3, 10)):
                add(t + i * rng.uniform(0.0005, 0.005), "cancel", consumer[ref], ref, 0.0005)
        elif roll < 0.82 and groups:
            ref = rng.choice(bangs)
            if rng.random() < 0.5:
                add(t, "gdiscard", consumer[ref], rng.choice(groups), ref)
            else:
                add(t, "gadd", consumer[ref], rng.choice(groups), ref, 1000)
        elif roll < 0.85 and "die" in faults:
            add(t, "die", rng.choice(clients))
        elif roll < 0.93:
            _fault(rng, add, t, nodes, faults)
    ops.sort(key=lambda o: o.at)
    return Plan(seed, nodes, tuple(ops))


def _fault(rng: random.Random, add: Any, t: float, nodes: int, faults: tuple[str, ...]) -> None:
    kinds = [f for f in faults if f != "die"]
    if not kinds:
        return
    kind = rng.choice(kinds)
    node = rng.randrange(nodes)
    if kind == "freeze":
        add(t, "freeze", node)
        add(t + rng.choice((0.05, 0.3, 1.0, 2.5)), "thaw", node)
    elif kind == "kill":
        add(t, "kill", node)
        add(t + rng.choice((0.01, 0.2, 1.0, 2.0)), "restart", node)
    elif kind == "leave":
        add(t, "leave", node)
        add(t + rng.choice((0.05, 0.5, 1.5)), "restart", node)
    elif kind == "join":
        add(t, "join", nodes + rng.randrange(2))
    elif kind == "partition":
        members = list(range(nodes))
        rng.shuffle(members)
        cut = rng.randint(1, nodes - 1)
        add(t, "partition", tuple(members[:cut]), tuple(members[cut:]))
        add(t + rng.choice((0.2, 1.0, 2.5)), "heal")
    elif kind == "loss":
        add(t, "loss", node, rng.choice((0.1, 0.3, 0.6)))
        add(t + rng.choice((0.2, 1.0)), "loss", node, 0.0)
    elif kind == "reset":
        add(t, "reset", node)
    elif kind == "lag":
        add(t, "lag", node, rng.choice((0.005, 0.05, 0.3)))
        add(t + rng.choice((0.2, 1.0)), "lag", node, 0.0)
    elif kind == "drain":
        add(t, "drain", node, rng.choice(DRAIN_HOLDS))


def is_rolling(plan: Plan) -> bool:
    """A rolling restart: drains, and no other fault (no process dies)."""
    return any(op.kind == "drain" for op in plan.ops) and not any(
        op.kind in FAULTS or op.kind in ("restart", "thaw", "heal")
        for op in plan.ops
        if op.kind != "drain"
    )
