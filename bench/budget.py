"""How much work one measurement does, and how long anything may wait.

Every layer gets the same budget: a scenario stops after ``max_messages`` or after
``box_s`` seconds of measured work, whichever comes first, so slow layers are measured
over fewer messages but for the same time, and fast ones are not held back.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    rounds: int
    """Interleaved runs of every (scenario, layer) pair; the table shows medians."""
    box_s: float
    """Seconds of measured sending in the message scenarios (the time box)."""
    warm_s: float
    """Seconds of unmeasured warm-up traffic before each measured phase."""
    max_messages: int
    """Upper bound on messages (or round trips) per measurement."""
    many_channels: int
    """Process-specific channels held by the consumer in the many-channels scenario."""
    fanout_sizes: tuple[int, ...]
    """Group sizes for the group_send fan-out scenario."""
    fanout_shots: int
    """Measured group_sends per group size and run (one unmeasured warm-up shot comes
    first); the p99 is taken over the shots of all runs pooled together."""
    fanout_box_s: float
    """Fewer shots when the warm-up shot says ``fanout_shots`` would take longer than this."""
    fanout_min_shots: int
    """But never fewer shots than this."""
    group_ops: int
    """Upper bound on memberships added (then discarded) in the group-ops scenario."""
    deadline_s: float
    """Hard limit for one measurement: past it the layer's cell reads 'timeout'."""
    probe_deadline_s: float = 15.0
    """Hard limit for the smoke probe that decides whether a layer runs at all."""
    max_failures: int = 2
    """After this many failed runs of one (scenario, layer) pair, its remaining runs are skipped."""


FULL = Budget(
    rounds=5,
    box_s=1.0,
    warm_s=0.2,
    max_messages=20_000,
    many_channels=100,
    fanout_sizes=(100, 1000),
    fanout_shots=20,
    fanout_box_s=1.0,
    fanout_min_shots=3,
    group_ops=2_000,
    deadline_s=20.0,
)

QUICK = Budget(
    rounds=2,
    box_s=0.25,
    warm_s=0.05,
    max_messages=5_000,
    many_channels=100,
    fanout_sizes=(100, 1000),
    fanout_shots=5,
    fanout_box_s=0.5,
    fanout_min_shots=3,
    group_ops=2_000,
    deadline_s=15.0,
)
