"""The seeded fault schedule of one run: which fault, on whom, when, for how long.

Owns: turning (seed, the run's shape) into a list of ``Fault``s, pure and
deterministic: the same seed and shape give the same kinds, targets and times
(relative to the run's start) on any machine, so a failing run is replayed by
its seed. Does not own: carrying the faults out (``tests.faults.cluster``).

Faults come one at a time, each followed by a settling gap, so the checker can
tell which fault a stall or a loss belongs to. A run ends with a quiet period
with no fault, in which every channel must serve again.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

#: Every kind of fault, and what it does:
#: ``kill``: SIGKILL a node, start it again (same id and endpoints) ``hold`` s later;
#: ``term``: SIGTERM a node (a clean leave), start it again ``hold`` s later;
#: ``freeze``: SIGSTOP a node, SIGCONT it ``hold`` s later;
#: ``consumer_kill``: SIGKILL a consumer process, start a replacement ``hold`` s later;
#: ``burn``: one busy process per core for ``hold`` s (a loaded host);
#: ``lag``: SIGSTOP a node and a second one (the ``lagger``: the node that
#: takes over the first node's first hashed channel when it is gone);
#: SIGCONT the lagger ``LAG_THAW`` s later, when the others have declared
#: both dead: it comes back believing the first alive while the others do
#: not, and they pass it what it will relay to the frozen node (nodes that
#: disagree about a frozen owner: issue 11's defect 3); SIGCONT the first
#: ``hold`` s after the start.
KINDS = ("kill", "term", "freeze", "consumer_kill", "burn", "lag")
#: What a schedule draws from unless told otherwise (``lag`` came later: the
#: seeds of the first five kept their schedules).
DEFAULT_KINDS = KINDS[:5]
#: Faults that take a node away (the others leave every node serving).
NODE_KINDS = frozenset({"kill", "term", "freeze", "lag"})
#: Seconds the lagger of a ``lag`` fault stays stopped: past a death's
#: declaration (1.3-2 s with the lan preset).
LAG_THAW = 4.0

#: (min, max) seconds a fault of each kind lasts (``hold``).
HOLD = {
    "kill": (0.5, 2.0),
    "term": (0.5, 2.0),
    "freeze": (2.0, 5.0),
    "consumer_kill": (0.5, 0.5),
    "burn": (3.0, 5.0),
    "lag": (4.5, 6.0),
}
#: (min, max) seconds with no fault after one ends: longer than a death takes
#: to be declared (~1.3-1.8 s with the lan preset) and a restarted node to
#: rejoin, so each fault's effects are over before the next begins.
GAP = (2.5, 4.0)
#: Seconds at the end of a run with no fault: every channel must serve again.
QUIET = 4.0


@dataclass(frozen=True, slots=True)
class Fault:
    #: seconds after the run's start
    at: float
    kind: str
    #: a node id for node faults, a consumer id for ``consumer_kill``, "cpu" for ``burn``
    target: str
    #: seconds until the restart, thaw, replacement or end of the burn
    hold: float

    @property
    def ends(self) -> float:
        return self.at + self.hold

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"t={self.at:6.2f}s {self.kind:<13} {self.target:<8} for {self.hold:.2f}s"


def make_schedule(
    seed: int,
    nodes: list[str],
    consumers: list[str],
    duration: float,
    kinds: tuple[str, ...] = DEFAULT_KINDS,
    warmup: float = 2.0,
    quiet: float = QUIET,
) -> list[Fault]:
    """Faults from ``warmup`` s after the start until ``quiet`` s before
    ``duration``, each kind equally likely, targets uniform."""
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"fault kinds must be some of {', '.join(KINDS)}; got {kinds}")
    rng = random.Random(seed)
    faults: list[Fault] = []
    t = warmup + rng.uniform(0.0, 1.0)
    while True:
        kind = rng.choice(kinds)
        low, high = HOLD[kind]
        hold = round(rng.uniform(low, high), 3)
        if kind in NODE_KINDS:
            target = rng.choice(nodes)
        elif kind == "consumer_kill":
            target = rng.choice(consumers)
        else:
            target = "cpu"
        if t + hold > duration - quiet:
            return faults
        faults.append(Fault(round(t, 3), kind, target, hold))
        t += hold + rng.uniform(*GAP)
