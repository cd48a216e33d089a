"""What the simulation observed, and the invariants it must satisfy.

Owns: the history of one run (every message sent, with its outcome as its
producer saw it; every message a ``receive()`` took; group memberships made;
drop counters) and the checks over it. Checked at every delivery (cheap, so a
run stops at the first violation, which keeps shrinking fast):

- ``phantom``: a message taken that no producer sent, or taken from a
  channel it was not sent to (for a group message: a channel never added
  to that group);
- ``duplicate``: one message taken twice from one channel;
- ``fifo``: per producer, channel and kind (send / group_send), the
  messages taken from a channel with one consumer at a time are taken in
  the order they were sent (sequence numbers rise);
- ``lost_then_delivered``: a message its producer counted lost (a SEND
  unanswered when its node restarted: ``lost_in_node_restart``) is taken,
  before or after it was counted.

Checked by the world while it runs: ``answer_time`` (see ``world``). Checked
at the end, after heal, settle and drain:

- ``accounting``: every message whose ``send()`` returned (accepted; plus
  those refused with ChannelFull and those counted lost by the client,
  both of which a counter records) is taken, still held (queued on a node,
  or prefetched by a live process), or counted in one drop counter:
  ``units - taken - held <= drops`` (else ``uncounted_loss``) and
  ``drops <= units - taken - held + slack`` (else ``overcounted``: a message
  counted twice, or counted and taken). ``drops`` is the sum of every live
  node's ``drops()`` (message reasons), every killed incarnation's as it was
  at its kill, and the clients' ``lost_in_node_restart``. ``slack`` is what
  may be counted that is not a unit: sends whose outcome the producer never
  learned (timed out, or the producer died) and group copies (a group_send
  reaches an unknown number of members; bounded by the members ever added),
  and messages taken by a process that died before its ``CONSUMED`` report
  left (the node counts them ``receiver_gone``: it cannot know better).
  Without group sends and unknown outcomes the slack is 0: exact equality.
- ``stalled``: after heal and settle, with a live consumer on every channel
  that was used, everything drains (nothing queued, prefetched or
  unanswered) within the drain limit;
- ``convergence``: after heal and settle, every live node sees the same
  live members (and the same owners/replicas, where its status says them).

A rolling restart (a plan whose only faults are drains: ``schedule.ROLLING``)
is held to more (``rolling``): nothing may be lost, and nothing counted.

- ``rolling_dropped_<reason>``: a node counted a message dropped
  (``expired``, ``dead_owner``, ``receiver_gone``, or ``full`` beyond the
  ChannelFull refusals its producer was told of: a reserved send or a group
  member), or a client counted one (``rolling_lost_in_node_restart``); one
  name per reason, so each cause has its own verdict;
- ``rolling_lost``: more sends not taken (accepted, or never answered) than
  all of those counts: a loss nobody counted, with no slack at all;
- ``rolling_group_missed``: an accepted group_send not taken from a member
  that was in the group for its whole call (added, acknowledged, before it
  began; not discarded before it returned);
- ``drain_timeout``: a node left before all its clients had moved.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgpack

#: (producer, sequence number): one message
MsgKey = tuple[str, int]

#: drop reasons that count messages (``decode_error`` counts frames)
MESSAGE_DROPS = ("full", "expired", "dead_owner", "receiver_gone")


@dataclass(slots=True)
class SendRecord:
    key: MsgKey
    kind: str  # "send" or "group"
    target: str  # wire channel or group
    sent_at: float
    #: "pending", "accepted", "refused", "unknown" (timed out, or its
    #: producer died waiting), "counted_lost" (lost_in_node_restart)
    outcome: str = "pending"
    outcome_at: float = 0.0
    reached: int = 0  # group_send: members the first node reached


@dataclass(slots=True)
class Violation:
    at: float
    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant} at {self.at:.6f}: {self.detail}"


@dataclass
class History:
    sends: dict[MsgKey, SendRecord] = field(default_factory=dict)
    #: (key, channel) -> (time, consumer) of each take
    taken: dict[tuple[MsgKey, str], tuple[float, str]] = field(default_factory=dict)
    #: channels with one consumer at a time: FIFO is checked there
    fifo_channels: set[str] = field(default_factory=set)
    #: (producer, channel, kind) -> highest sequence number taken
    last_seq: dict[tuple[str, str, str], int] = field(default_factory=dict)
    #: group -> channels ever added to it
    members: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    deliveries: int = 0
    #: messages taken by processes that died, not reported (``CONSUMED``)
    #: to their node while it knew the connection: it counts them
    #: ``receiver_gone``, rightly from what it knows; the accounting allows
    #: at most that many (set by the world at the end)
    unreported: int = 0
    #: reserved sends (req 0) of processes that had died, refused by their
    #: node with UNKNOWN_SESSION (it had forgotten the connection when a
    #: send to it failed): counted by nobody. Seen by the world in the
    #: replies it could not deliver; see ``account``.
    refused_dead: int = 0
    #: (group, channel) -> [(time, "acked" | "discard")]: a group_add
    #: acknowledged, a group_discard made (for ``rolling``)
    group_events: dict[tuple[str, str], list[tuple[float, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    # -- recording -------------------------------------------------------------
    def sent(self, key: MsgKey, kind: str, target: str, now: float) -> None:
        self.sends[key] = SendRecord(key, kind, target, now)

    def outcome(self, key: MsgKey, outcome: str, now: float, reached: int = 0) -> None:
        rec = self.sends[key]
        rec.outcome, rec.outcome_at, rec.reached = outcome, now, reached
        if outcome == "counted_lost":
            for (k, channel), (t, who) in self.taken.items():
                if k == key:
                    self.violate(
                        now,
                        "lost_then_delivered",
                        f"{key} counted lost by its producer at {now:.6f}, "
                        f"taken from {channel} by {who} at {t:.6f}",
                    )

    def group_added(self, group: str, channel: str, now: float) -> None:
        self.members[group].add(channel)

    def group_add_acked(self, group: str, channel: str, now: float) -> None:
        self.group_events[(group, channel)].append((now, "acked"))

    def group_discarded(self, group: str, channel: str, now: float) -> None:
        self.group_events[(group, channel)].append((now, "discard"))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def violate(self, now: float, invariant: str, detail: str) -> None:
        # (when a run goes on past a violation, a few of each kind are kept)
        if sum(v.invariant == invariant for v in self.violations) < 5:
            self.violations.append(Violation(now, invariant, detail))

    # -- checked at every take ---------------------------------------------------
    def delivered(self, consumer: str, channel: str, payload: bytes, now: float) -> None:
        self.deliveries += 1
        key = _key_of(payload)
        if key is None:
            self.violate(now, "phantom", f"{consumer} took an unknown payload from {channel}")
            return
        rec = self.sends.get(key)
        if rec is None:
            self.violate(now, "phantom", f"{consumer} took {key} from {channel}: never sent")
            return
        if rec.kind == "send" and rec.target != channel:
            self.violate(
                now, "phantom", f"{consumer} took {key} from {channel}: sent to {rec.target}"
            )
            return
        if rec.kind == "group" and channel not in self.members.get(rec.target, ()):
            self.violate(
                now,
                "phantom",
                f"{consumer} took {key} from {channel}: sent to group {rec.target}, "
                "which never had it",
            )
            return
        seen = self.taken.get((key, channel))
        if seen is not None:
            self.violate(
                now,
                "duplicate",
                f"{key} taken from {channel} by {consumer}, already by {seen[1]} at {seen[0]:.6f}",
            )
            return
        self.taken[(key, channel)] = (now, consumer)
        if rec.outcome == "counted_lost":
            self.violate(
                now,
                "lost_then_delivered",
                f"{key} taken from {channel} by {consumer}: its producer counted it lost "
                f"at {rec.outcome_at:.6f}",
            )
        if channel in self.fifo_channels:
            stream = (key[0], channel, rec.kind)
            last = self.last_seq.get(stream, 0)
            if key[1] < last:
                self.violate(
                    now,
                    "fifo",
                    f"{consumer} took {key} from {channel} after ({key[0]}, {last}) "
                    f"(sent at {rec.sent_at:.6f}, outcome {rec.outcome})",
                )
            else:
                self.last_seq[stream] = key[1]

    # -- checked at the end ------------------------------------------------------
    def account(self, drops: int, held: int, now: float) -> dict[str, int]:
        """The accounting invariant (see the module docstring); returns its terms."""
        units = taken = slack = 0
        taken_keys = {k for k, _c in self.taken}
        group_taken: dict[MsgKey, int] = defaultdict(int)
        for k, _c in self.taken:
            group_taken[k] += 1
        for rec in self.sends.values():
            if rec.kind == "send":
                got = rec.key in taken_keys
                if rec.outcome in ("accepted", "refused", "counted_lost"):
                    units += 1
                    taken += got
                elif not got:
                    slack += 1  # outcome unknown: may be counted, may not
            elif rec.outcome in ("accepted", "unknown", "pending"):
                possible = len(self.members.get(rec.target, ()))
                slack += max(0, possible - group_taken[rec.key])
        slack += self.unreported
        missing = units - taken - held
        terms = {
            "refused_dead": self.refused_dead,
            "units": units,
            "taken": taken,
            "held": held,
            "missing": missing,
            "drops": drops,
            "slack": slack,
        }
        if drops < missing <= drops + self.refused_dead:
            # Named apart so it cannot hide another loss: a shortfall the
            # reserved sends of dead processes refused uncounted can explain
            # (drops may include group copies, so "<=", not "==").
            self.violate(
                now,
                "uncounted_loss_dead_sender",
                f"{missing - drops} reserved send(s) of processes that died, read by the "
                f"node after it forgot them, refused (UNKNOWN_SESSION) and counted by "
                f"nobody: {terms}",
            )
        elif missing > drops:
            self.violate(
                now,
                "uncounted_loss",
                f"{missing - drops} accepted message(s) neither taken, held nor counted: {terms}",
            )
        elif drops > missing + slack:
            self.violate(
                now,
                "overcounted",
                f"{drops - missing - slack} more drops counted than messages missing: {terms}",
            )
        return terms

    def rolling(
        self,
        drops_by: dict[str, int],
        lost_in_node_restart: int,
        drain_timeouts: list[str],
        now: float,
    ) -> None:
        """A rolling restart's stricter checks (see the module docstring)."""
        for text in drain_timeouts:
            self.violate(now, "drain_timeout", text)
        refused = sum(1 for r in self.sends.values() if r.outcome == "refused")
        counted = {k: v for k, v in drops_by.items() if v and k != "full"}
        if drops_by.get("full", 0) > refused:
            counted["full"] = drops_by["full"] - refused
        for reason, n in sorted(counted.items()):
            extra = " (beyond the refusals producers were told of)" if reason == "full" else ""
            self.violate(
                now,
                f"rolling_dropped_{reason}",
                f"{n} message(s) counted {reason}{extra} in a rolling restart",
            )
        if lost_in_node_restart:
            self.violate(
                now,
                "rolling_lost_in_node_restart",
                f"{lost_in_node_restart} send(s) counted lost_in_node_restart by clients",
            )
        taken_keys = {k for k, _c in self.taken}
        lost = sorted(
            (
                r
                for r in self.sends.values()
                if r.kind == "send" and r.key not in taken_keys and r.outcome != "refused"
            ),
            key=lambda r: r.sent_at,
        )
        if len(lost) > sum(counted.values()) + lost_in_node_restart:
            first = lost[0]
            self.violate(
                now,
                "rolling_lost",
                f"{len(lost)} send(s) not taken in a rolling restart, {sum(counted.values())} "
                f"counted; the first {first.key} to {first.target} sent at "
                f"{first.sent_at:.6f} ({first.outcome})",
            )
        by_group: dict[MsgKey, set[str]] = defaultdict(set)
        for k, channel in self.taken:
            by_group[k].add(channel)
        missed: list[str] = []
        for rec in self.sends.values():
            if rec.kind != "group" or rec.outcome != "accepted":
                continue
            for channel in sorted(self.members.get(rec.target, ())):
                events = self.group_events.get((rec.target, channel), [])
                member = any(t <= rec.sent_at and e == "acked" for t, e in events) and not any(
                    t <= rec.outcome_at and e == "discard" for t, e in events
                )
                if member and channel not in by_group[rec.key]:
                    missed.append(f"{rec.key} (sent {rec.sent_at:.6f}) to {channel}")
        if missed:
            self.violate(
                now,
                "rolling_group_missed",
                f"{len(missed)} group deliveries missed in a rolling restart, the first: "
                f"{missed[0]}",
            )

    def summary(self) -> dict[str, Any]:
        outcomes: dict[str, int] = defaultdict(int)
        for rec in self.sends.values():
            outcomes[f"{rec.kind}:{rec.outcome}"] += 1
        return {"sent": len(self.sends), "taken": len(self.taken), **dict(sorted(outcomes.items()))}


def _key_of(payload: bytes) -> MsgKey | None:
    try:
        body = msgpack.unpackb(payload, raw=False)
    except Exception:
        return None
    if not isinstance(body, dict):
        return None
    producer, seq = body.get("p"), body.get("s")
    if isinstance(producer, str) and isinstance(seq, int):
        return (producer, seq)
    return None


def message_drops(drops: dict[str, int]) -> int:
    return sum(int(drops.get(reason, 0)) for reason in MESSAGE_DROPS)
