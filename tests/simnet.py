"""A deterministic in-memory network of member tables with a fake clock
(memberlist's MockNetwork, plus faults).

Owns: simulated time, message delivery with per-link delay and loss,
partitions, paused (frozen) and killed nodes, and the event log of every
node. Does not own any protocol decision: each node is a real
``MemberTable``, driven exactly as the asyncio shell drives it (``handle``
for each message, ``tick`` by ``next_deadline()``). Same seed, same run.

Fault model:
- loss: a message from ``a`` to ``b`` is dropped with probability
  ``1 - (1-l_a)(1-l_b)(1-l_ab)``, where ``l_x`` is the loss set on node ``x``
  (its NIC is bad both ways) and ``l_ab`` the loss set on the link a→b;
- delay: ``delay + jitter * U(0,1)`` seconds per message, plus the extra
  delay set on either node (a busy host whose event loop lags) and on the
  link;
- partition: messages between nodes of different sides are dropped when sent
  (those already in flight still arrive);
- paused: the node is frozen (SIGSTOP, a long GC, a starved CPU): it neither
  ticks nor handles; what arrives waits in its socket buffer and is handled,
  in order, when it resumes (its overdue timers run first or after);
- killed: SIGKILL; everything sent to it is lost.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from zchannels.node.membership import (
    Effects,
    EventKind,
    MemberEvent,
    MembershipConfig,
    MemberTable,
    Message,
    State,
)


@dataclass
class SimNode:
    table: MemberTable
    paused: bool = False
    killed: bool = False
    inbox: list[Message] = field(default_factory=list)
    deadline: float = 0.0


class SimNet:
    def __init__(
        self,
        config: MembershipConfig,
        seed: int = 0,
        delay: float = 0.0003,
        jitter: float = 0.0004,
        cluster: str = "sim",
    ) -> None:
        self.config = config
        self.rng = random.Random(seed)
        self.delay = delay
        self.jitter = jitter
        self.cluster = cluster
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}  # by address
        self.by_id: dict[str, SimNode] = {}
        self.loss: dict[str, float] = {}  # by address
        self.lag: dict[str, float] = {}  # extra delay, by address
        #: (from address, to address) -> (loss, extra delay)
        self.links: dict[tuple[str, str], tuple[float, float]] = {}
        self.sides: list[set[str]] | None = None  # partition, by address
        #: (time, observer node id, event)
        self.events: list[tuple[float, str, MemberEvent]] = []
        self.sent = 0
        self.dropped = 0
        self._heap: list[tuple[float, int, str, Message]] = []
        self._serial = 0

    # -- building -----------------------------------------------------------
    @staticmethod
    def address(node_id: str) -> str:
        return f"sim://{node_id}"

    def add(
        self,
        node_id: str,
        seeds: list[str] | None = None,
        incarnation: int | None = None,
        cluster: str | None = None,
        version: int | None = None,
    ) -> MemberTable:
        """Start a node now and join it through ``seeds`` (node ids), its
        configured seeds."""
        kwargs = {} if version is None else {"version": version}
        addresses = [self.address(s) for s in seeds or []]
        table = MemberTable(
            self.config,
            node_id=node_id,
            address=self.address(node_id),
            incarnation=int(self.now * 1000) + 1 if incarnation is None else incarnation,
            cluster=self.cluster if cluster is None else cluster,
            rng=random.Random(self.rng.random()),
            seeds=addresses,
            **kwargs,
        )
        node = SimNode(table)
        self.nodes[table.address] = node
        self.by_id[node_id] = node
        self._effects(node, table.join(addresses, self.now))
        return table

    def add_cluster(self, n: int, stagger: float = 0.05) -> list[str]:
        """``n`` nodes n0..n{n-1}, each joining through n0, ``stagger`` s apart."""
        ids = [f"n{i}" for i in range(n)]
        self.add(ids[0])
        for node_id in ids[1:]:
            self.run_for(stagger)
            self.add(node_id, seeds=[ids[0]])
        return ids

    # -- faults -------------------------------------------------------------
    def kill(self, node_id: str) -> None:
        node = self.by_id[node_id]
        node.killed = True
        node.inbox.clear()

    def leave(self, node_id: str) -> None:
        """A clean exit: the node announces it, then its process ends."""
        node = self.by_id[node_id]
        self._effects(node, node.table.leave(self.now))
        node.killed = True

    def pause(self, node_id: str) -> None:
        self.by_id[node_id].paused = True

    def resume(self, node_id: str, timers_first: bool = False) -> None:
        """Thaw a paused node: it handles what queued up, in order. With
        ``timers_first`` its overdue timers run before it reads them, as an
        event loop may well do on waking."""
        node = self.by_id[node_id]
        node.paused = False
        if timers_first:
            self._effects(node, node.table.tick(self.now))
        inbox, node.inbox = node.inbox, []
        for msg in inbox:
            self._effects(node, node.table.handle(msg, self.now))
        node.deadline = node.table.next_deadline()

    def inject(self, node_id: str, msg: Message) -> None:
        """``node_id`` receives ``msg`` now, as if from the network."""
        node = self.by_id[node_id]
        self._effects(node, node.table.handle(msg, self.now))

    def set_loss(self, node_id: str, loss: float) -> None:
        self.loss[self.address(node_id)] = loss

    def set_lag(self, node_id: str, seconds: float) -> None:
        """Every message to or from ``node_id`` takes ``seconds`` longer."""
        self.lag[self.address(node_id)] = seconds

    def set_link(
        self, a: str, b: str, loss: float = 0.0, delay: float = 0.0, both_ways: bool = True
    ) -> None:
        self.links[(self.address(a), self.address(b))] = (loss, delay)
        if both_ways:
            self.links[(self.address(b), self.address(a))] = (loss, delay)

    def partition(self, *sides: list[str]) -> None:
        self.sides = [{self.address(n) for n in side} for side in sides]

    def heal(self) -> None:
        self.sides = None

    # -- running ------------------------------------------------------------
    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(self, end: float) -> None:
        while True:
            t_msg = self._heap[0][0] if self._heap else math.inf
            ticking = None
            t_tick = math.inf
            for node in self.nodes.values():
                if not node.killed and not node.paused and node.deadline < t_tick:
                    t_tick, ticking = node.deadline, node
            t = min(t_msg, t_tick)
            if t > end:
                self.now = end
                return
            self.now = max(self.now, t)
            if t_msg <= t_tick:
                _, _, to, msg = heapq.heappop(self._heap)
                dest = self.nodes.get(to)
                if dest is None or dest.killed:
                    self.dropped += 1
                elif dest.paused:
                    dest.inbox.append(msg)
                else:
                    self._effects(dest, dest.table.handle(msg, self.now))
            else:
                assert ticking is not None
                self._effects(ticking, ticking.table.tick(self.now))
                if ticking.deadline <= self.now:
                    raise AssertionError(
                        f"{ticking.table.node_id}: next_deadline {ticking.deadline} "
                        f"not after tick at {self.now}"
                    )

    def run_until_true(
        self, condition: Callable[[], bool], timeout: float, step: float = 0.01
    ) -> float:
        """Run until ``condition()`` holds, checked every ``step`` simulated
        seconds; return the simulated seconds it took, or raise."""
        start = self.now
        while not condition():
            if self.now - start > timeout:
                raise AssertionError(f"not reached within {timeout} simulated seconds")
            self.run_for(step)
        return self.now - start

    def _effects(self, node: SimNode, fx: Effects) -> None:
        me = node.table.address
        for to, msg in fx.messages:
            self._send(me, to, msg)
        for ev in fx.events:
            self.events.append((self.now, node.table.node_id, ev))
        node.deadline = node.table.next_deadline()

    def _send(self, frm: str, to: str, msg: Message) -> None:
        self.sent += 1
        if self.sides is not None and not any(frm in s and to in s for s in self.sides):
            self.dropped += 1
            return
        link_loss, link_delay = self.links.get((frm, to), (0.0, 0.0))
        keep = (1 - self.loss.get(frm, 0.0)) * (1 - self.loss.get(to, 0.0)) * (1 - link_loss)
        if keep < 1 and self.rng.random() >= keep:
            self.dropped += 1
            return
        self._serial += 1
        lag = self.lag.get(frm, 0.0) + self.lag.get(to, 0.0) + link_delay
        at = self.now + self.delay + lag + self.jitter * self.rng.random()
        heapq.heappush(self._heap, (at, self._serial, to, msg))

    # -- observing ----------------------------------------------------------
    def running(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if not n.killed]

    def view(self, node_id: str) -> dict[str, tuple[State, int]]:
        """What ``node_id`` believes of every member: id -> (state, incarnation)."""
        return {m.id: (m.state, m.incarnation) for m in self.by_id[node_id].table.members()}

    def agreed(self) -> bool:
        """Like ``converged``, but incarnations may differ: a member that
        refuted a suspicion some nodes never heard of is alive at an older
        incarnation there (harmless; push-pull evens it out)."""
        return self.converged(incarnations=False)

    def converged(self, ids: list[str] | None = None, incarnations: bool = True) -> bool:
        """Every running node (or each of ``ids``) holds the same table, in
        which the running nodes, and only they, are alive."""
        nodes = self.running() if ids is None else [self.by_id[i] for i in ids]
        live = {n.table.node_id for n in nodes}
        first = None
        for n in nodes:
            view = {
                m.id: (m.state, m.incarnation if incarnations else 0) for m in n.table.members()
            }
            alive = {i for i, (s, _) in view.items() if s == State.ALIVE}
            if alive != live or any(s == State.SUSPECT for s, _ in view.values()):
                return False
            mine = {i: v for i, v in view.items() if i in live}
            if first is None:
                first = mine
            elif mine != first:
                return False
        return True

    def all_see(self, about: str, states: tuple[State, ...]) -> bool:
        """Every running node other than ``about`` holds it in one of ``states``."""
        for n in self.running():
            if n.table.node_id == about:
                continue
            m = n.table.member(about)
            if m is None or m.state not in states:
                return False
        return True

    def events_of(
        self, kind: EventKind, about: str | None = None, since: float = 0.0
    ) -> list[tuple[float, str, MemberEvent]]:
        return [
            (t, obs, ev)
            for t, obs, ev in self.events
            if ev.kind == kind and t >= since and (about is None or ev.node == about)
        ]
