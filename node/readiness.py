"""When a node is ready: the rule ``/readyz`` answers by.

Owns: the readiness rule, pure (STYLE.md §1): it is told the member events
and the time, and says "ready" or why not. Does not own: serving it over
HTTP (``zchannels.node.http_endpoint``) or the member table
(``zchannels.node.membership``).

A node is ready when

1. it serves clients (its client sockets are bound: ``NodeServer.endpoints``);
2. in a cluster where it expects peers (a seed other than itself, or a
   ``discovery`` source other than ``none``), it has **joined**: it has seen
   another live member at least once since it started. Joined stays joined:
   the last survivor of a cluster goes on serving its clients, and a rule
   that took it out of service would turn a degraded cluster into an outage.
   A node configured alone (no cluster; or no seed and ``discovery none``) has
   nobody to wait for;
3. its member view (who is alive or suspect, at which incarnation) has not
   changed for ``settle`` seconds: after a join, a suspicion, a death, a
   leave or a peer's restart, channels move between owners and group counts
   converge (milliseconds, docs/cluster.md), and a suspicion is a change
   that has not finished happening. A node that has never seen a change
   counts from its start.
"""

from __future__ import annotations

from dataclasses import dataclass

from .membership import EventKind

#: Member events that change the view ownership is computed over (or, for
#: a suspicion, are about to). Reaping a dead member, refuting a suspicion
#: of this node and refusing a stranger change nobody's liveness.
VIEW_CHANGES = frozenset(
    {
        EventKind.JOINED,
        EventKind.ALIVE,
        EventKind.SUSPECT,
        EventKind.DEAD,
        EventKind.LEFT,
        EventKind.UPDATED,
    }
)
#: Events that show another member is live: the node has joined.
_LIVE_PEER = frozenset({EventKind.JOINED, EventKind.ALIVE, EventKind.UPDATED})


def expects_peers(seeds: tuple[str, ...], discovery: tuple[str, ...], own: set[str]) -> bool:
    """Whether a cluster member has peers to wait for: a seed that is not
    one of its ``own`` addresses (a static list often names every node,
    itself included), or a discovery source other than ``none``."""
    return any(seed not in own for seed in seeds) or any(d != "none" for d in discovery)


@dataclass(slots=True)
class Readiness:
    #: seconds the member view must stay unchanged
    settle: float
    #: False: a node configured alone is joined from the start
    expects_peers: bool
    #: when the view last changed (monotonic seconds; the node's start at first)
    changed_at: float
    joined: bool = False

    def __post_init__(self) -> None:
        if not self.expects_peers:
            self.joined = True

    def member_event(self, kind: EventKind, now: float) -> None:
        """An event about another member (never this node itself)."""
        if kind in VIEW_CHANGES:
            self.changed_at = now
        if kind in _LIVE_PEER:
            self.joined = True

    def verdict(self, now: float, serving: bool) -> str | None:
        """None when ready, else why not: one short line for ``/readyz``."""
        if not serving:
            return "not serving clients"
        if not self.joined:
            return "not joined: no other live member seen yet"
        quiet = now - self.changed_at
        if quiet < self.settle:
            return (
                f"member view changed {quiet:.1f} s ago "
                f"(ready once unchanged for {self.settle:g} s)"
            )
        return None
