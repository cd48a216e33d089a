"""Where each message was last seen: a diagnostic for accounting failures.

Owns: for every message (producer, sequence), the last frame event that
carried it — sent by a process into the network, or received by one — and,
at the end of a run, an explanation of the messages neither taken nor held:
where each was last (a node's life that was killed, that left, or is still
live; a link whose frame never arrived; a client), next to what each node
life counted dropped. It judges nothing: ``check`` does. It tells an
``uncounted_loss`` made by a killed life's estimate (what died in a SIGKILL
beyond its last load report) from one lost somewhere a node was alive to
count it.

    python -m tests.sim --plan p.json --explain
    python -m tests.sim --seed 7 --schedules 1 --explain

Payloads are found by their bytes (``{"p": producer, "s": seq}`` packed as
the layer packs a dict) in client messages and raw peer frames alike.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .check import MsgKey

_MARK = b"\x82\xa1p"


def keys_in_raw(frame: bytes) -> list[MsgKey]:
    """The message keys whose packed payload appears in ``frame``."""
    found: list[MsgKey] = []
    at = frame.find(_MARK)
    while at >= 0:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(frame[at : at + 64])
        try:
            body = unpacker.unpack()
        except Exception:
            body = None
        if isinstance(body, dict) and isinstance(body.get("p"), str):
            seq = body.get("s")
            if isinstance(seq, int):
                found.append((body["p"], seq))
        at = frame.find(_MARK, at + 1)
    return found


def keys_in(messages: Any) -> list[MsgKey]:
    """The message keys among client protocol messages (bytes anywhere in them)."""
    found: list[MsgKey] = []
    stack = [messages]
    while stack:
        item = stack.pop()
        if isinstance(item, (bytes, bytearray, memoryview)):
            found.extend(keys_in_raw(bytes(item)))
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return found


@dataclass
class Locus:
    """Fed by the world (``World.locus``) at every frame sent and received."""

    #: key -> (event, where, time): ("sent", "src>dst", t) / ("at", "who<src", t)
    last: dict[MsgKey, tuple[str, str, float]] = field(default_factory=dict)
    #: node life label -> how it ended ("killed at t", "left at t"); a
    #: client -> "died at t"
    ends: dict[str, str] = field(default_factory=dict)
    #: node life label -> its message drops as it ended (or at the end)
    drops: dict[str, dict[str, int]] = field(default_factory=dict)

    def sent(self, src: str, dst: str, keys: list[MsgKey], now: float) -> None:
        for k in keys:
            self.last[k] = ("sent", f"{src}>{dst}", now)

    def got(self, who: str, keys: list[MsgKey], now: float) -> None:
        for k in keys:
            before = self.last.get(k)
            came = before[1].partition(">")[0] if before and before[0] == "sent" else "?"
            self.last[k] = ("at", f"{who}<{came}", now)

    def ended(self, life: str, how: str, drops: dict[str, int]) -> None:
        self.ends[life] = how
        self.drops[life] = {k: int(v) for k, v in drops.items() if v}

    def explain(self, missing: list[MsgKey]) -> list[str]:
        """Lines: each place the missing messages were last, with how many."""
        where: Counter[str] = Counter()
        first: dict[str, tuple[MsgKey, float]] = {}
        for k in missing:
            event, place, t = self.last.get(k, ("never", "sent", 0.0))
            if event == "at":
                who, _, came = place.partition("<")
                if who.startswith("c") or who.startswith("d"):  # (a client: from its node)
                    label = f"at {who} ({self.ends.get(who, 'live at the end')}), from {came}"
                    label += f" ({self.ends.get(came, 'live at the end')})"
                else:
                    kind = "a client" if came.startswith(("c", "d")) else "a peer"
                    label = f"at {who} ({self.ends.get(who, 'live at the end')}), from {kind}"
            elif event == "sent":
                src, _, dst = place.partition(">")
                label = (
                    f"in flight {src} -> {dst} ({self.ends.get(src, 'sender live')}; "
                    f"{self.ends.get(dst, 'receiver live')})"
                )
            else:
                label = "never in a frame"
            where[label] += 1
            if label not in first or t < first[label][1]:
                first[label] = (k, t)
        lines = [f"missing {len(missing)}"]
        for label, n in where.most_common():
            k, t = first[label]
            lines.append(f"  {n:4d} {label}; first {k} at {t:.6f}")
        for life in sorted(self.drops):
            lines.append(f"  {life}: {self.ends.get(life, 'live')} drops {self.drops[life]}")
        return lines
