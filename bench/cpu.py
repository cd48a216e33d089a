"""CPU time per delivered message, of the client processes and of the node.

Every worker process has one ``Meter``, shared by the roles it runs. A role calls
``meter.mark(key)`` at the start and at the end of its measured phase (a role may
mark more often; the span from its first to its last mark counts). At each mark the
meter reads

- the CPU time of its own process: ``resource.getrusage(RUSAGE_SELF)``, user + system,
  every thread (libzmq's I/O thread and an embedded node's thread included), and
- if the layer has a node process (the znode sidecar, redis-server, the relay of the
  relay floor): that process's CPU time from ``/proc/<pid>/task/*/schedstat``
  (nanoseconds on the CPU, summed over its threads), or, where schedstat is missing,
  ``/proc/<pid>/stat`` utime + stime (clock ticks, 10 ms).

One role of each scenario (the one that counts deliveries) also returns
``cpu.<key>.msgs``: the messages delivered in its measured phase. ``merge`` combines
the workers of one measurement -- client CPU is summed over the processes (each one's
span from its first to its last mark), the node's span is its earliest to its latest
reading in any process -- and ``per_message`` turns that into µs per delivered message:
``cpu.<key>.client_us`` and ``cpu.<key>.node_us``.

Waiting costs no CPU (a role blocked in ``await`` sleeps in epoll), so a span may be a
little wider than the traffic it measures without changing the figure; what a span
must not hold is unrelated work (setup, warm-up), and the roles mark accordingly.
"""

from __future__ import annotations

import os
import resource
from collections import defaultdict
from pathlib import Path

CLIENT = ".client_s"
NODE_FIRST = ".node_t0"
NODE_LAST = ".node_t1"
MSGS = ".msgs"


def self_cpu_s() -> float:
    """User + system CPU seconds of this process, all threads, µs resolution."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pid_cpu_s(pid: int) -> float | None:
    """CPU seconds of process ``pid`` (all threads), or None if it cannot be read."""
    total_ns = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total_ns += int((task / "schedstat").read_text().split()[0])
        return total_ns / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:  # no schedstat: clock ticks of the whole thread group
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Meter:
    """CPU readings at the marks of the roles of one worker process."""

    def __init__(self, node_pid: int | None = None) -> None:
        self.node_pid = node_pid
        self._own: dict[str, list[float]] = defaultdict(list)
        self._node: dict[str, list[float]] = defaultdict(list)
        self._series: dict[str, list[float]] = defaultdict(list)

    def mark(self, key: str) -> None:
        """A boundary of the measured phase ``key`` (call it at its start and at its end)."""
        self._own[key].append(self_cpu_s())
        if self.node_pid:
            node = pid_cpu_s(self.node_pid)
            if node is not None:
                self._node[key].append(node)

    def sample(self, key: str, value: float) -> None:
        """One observation of a distribution pooled over runs (e.g. one fan-out shot)."""
        self._series[key].append(value)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, values in self._own.items():
            if len(values) > 1:
                out[f"cpu.{key}{CLIENT}"] = max(values) - min(values)
        for key, values in self._node.items():
            if len(values) > 1:
                out[f"cpu.{key}{NODE_FIRST}"] = min(values)
                out[f"cpu.{key}{NODE_LAST}"] = max(values)
        return out

    def series(self) -> dict[str, list[float]]:
        return dict(self._series)


def merge(into: dict[str, float], part: dict[str, float]) -> None:
    """Add one worker's metrics to the measurement's: CPU spans combine, the rest is set."""
    for key, value in part.items():
        if key not in into:
            into[key] = value
        elif key.endswith(CLIENT):
            into[key] += value
        elif key.endswith(NODE_FIRST):
            into[key] = min(into[key], value)
        elif key.endswith(NODE_LAST):
            into[key] = max(into[key], value)
        else:
            into[key] = value


def per_message(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` with the raw CPU readings replaced by µs per delivered message."""
    out = {k: v for k, v in metrics.items() if not k.startswith("cpu.")}
    for key, msgs in metrics.items():
        if not (key.startswith("cpu.") and key.endswith(MSGS)) or msgs <= 0:
            continue
        base = key.removesuffix(MSGS)
        client = metrics.get(base + CLIENT)
        if client is not None:
            out[f"{base}.client_us"] = client / msgs * 1e6
        first, last = metrics.get(base + NODE_FIRST), metrics.get(base + NODE_LAST)
        if first is not None and last is not None:
            out[f"{base}.node_us"] = (last - first) / msgs * 1e6
    return out
