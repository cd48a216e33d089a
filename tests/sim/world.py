"""The simulated world: nodes, client processes and the network, on one clock.

Owns: simulated time (one heap of timed events: frames in flight, node
ticks, client timers, schedule ops), the network's faults, the nodes' lives
(start, freeze, thaw, kill, restart, clean leave, join, and a drain: one
step of a rolling restart) and the run's phases (schedule, the drains under
way, heal, settle, drain the channels, check). Does not own a protocol decision:
each node is a real ``ClusterNode`` (or a test's broken one) driven as the
asyncio shell drives it (one call per frame, ``tick`` at ``next_deadline()``,
``undeliverable`` when a send to a client fails); each client is a
``client.SimClient``.

Network model (what ZeroMQ over ipc/tcp does; simnet's, plus links):
- every link (client->node, node->client, node->node) is FIFO: a frame never
  overtakes an earlier one of the same link, whatever its delay;
- delay: ``base + jitter * U(0,1)`` per frame, plus a node's lag (a busy
  host) on peer frames;
- packet loss on a node's NIC (``loss``): peer links are TCP, so a lost
  packet is retransmitted, not lost: with that probability a frame waits one
  or more retransmission timeouts (0.2 s each), and so does everything after
  it on its link (head-of-line blocking);
- connection reset (``reset``, as after a ZMTP heartbeat timeout): every
  frame in flight on the node's peer links is lost;
- partition: peer frames between sides are dropped when sent;
- freeze (SIGSTOP): the node neither ticks nor handles; what arrives waits
  and is handled in arrival order when it thaws;
- kill (SIGKILL): the node's state is gone; frames in flight to it are lost,
  frames its clients send afterwards wait in their sockets (a DEALER keeps
  them until it reconnects) and reach the restarted node (a new node object,
  same address, a larger incarnation);
- client death: frames in flight to it are lost; once the node's socket
  knows (``DETECT`` s later) a send to it fails: ``undeliverable``.

A plain leave (``leave`` op: ``NodeServer.stop`` without a drain; its
clients stay on its socket) leaves and lingers as ``stop`` does (below),
then is gone; the plan's ``restart`` starts the next life once it is.
A drain (``drain`` op: SIGTERM, as ``NodeServer.drain`` and ``stop`` carry
it out) waits, as a rolling deploy does (Kubernetes), until no other drain
is under way and every running node is ready (``node.readiness``, what
``/readyz`` answers: joined, member view unchanged for ``ready_settle``);
drains still waiting when the schedule ends are given up. Then the node's
``drain(now)``; its clients, told DRAIN, move (``client``); once
``drained()`` after a client frame or a tick (or ``DRAIN_TIMEOUT`` later)
the node leaves, and lingers as the shell does: it still handles
frames and ticks until nothing is ``passing_on()`` and no peer frame came
for ``LINGER_QUIET`` s (at most ``linger_limit()``); then it is gone (its
clients' frames wait in their sockets) and restarts ``hold`` s later, same
id, a new incarnation. Nodes start with every node's address as a seed,
as a deployment does (static seeds, or discovery: either way a node expects
peers): a starting node then holds its clients until it has joined and its
peers have handed over what it owns (``ClusterNode.start``, ``_joined``).
(Before, only plans with drains had seeds: the others' nodes found each other
by ``discovered`` without expecting peers, which no deployment configures,
and a restarted node served its clients before its handovers came back.)

Every event is appended to a trace (and hashed): same seed, same schedule,
same trace, byte for byte.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zchannels.node.config import NodeConfig
from zchannels.node.held_record import HeldRecord, encode_slot
from zchannels.node.held_record import decode as decode_record
from zchannels.node.life_note import LifeNote
from zchannels.node.membership import suspicion_bounds
from zchannels.node.peer_wire import decode_peer
from zchannels.node.readiness import Readiness, expects_peers

from zchannels.protocol import DecodeError, ErrorCode, Message, MsgType, decode, encode_many

from .adapter import EffectsLike, NodeLike
from .check import MESSAGE_DROPS, History, message_drops
from .client import Job, SimClient
from .locus import Locus, keys_in, keys_in_raw
from .schedule import Op, Plan, is_rolling

NodeFactory = Callable[..., NodeLike]

#: seconds after a client process dies before its node's sends to it fail
DETECT = 0.001
#: client <-> node link delay (ipc on one host)
CLIENT_DELAY, CLIENT_JITTER = 0.0001, 0.0001
#: node <-> node link delay (a LAN)
PEER_DELAY, PEER_JITTER = 0.0003, 0.0004
#: TCP's retransmission timeout (Linux's minimum)
RTO = 0.2
#: seconds a frame a node sends waits in its own process (libzmq's pipe to
#: its I/O thread) before it is on the wire: a SIGSTOP within this of a
#: send holds the frame until SIGCONT (``freeze``)
PIPE = 0.0005
#: seconds a draining node waits for its clients to move before it leaves
#: anyway (``NodeConfig.drain_timeout`` is 10 s; here every request is
#: answered within the answer bound, 2.95 s for 3 nodes, so a client that
#: has not moved by then is stuck)
DRAIN_TIMEOUT = 3.0
#: as node.server: a node that left stops passing on what peers send once
#: none came for this long; it checks every quarter of it
LINGER_QUIET = 0.1


@dataclass
class DrainStep:
    """One node's rolling-restart step under way."""

    life: int  # the node's ``starts`` when it began
    #: seconds away before the restart; None: a plain leave (``stop()``),
    #: restarted by the plan's own ``restart`` op, once it is gone
    hold: float | None
    began: float
    #: "draining" (clients moving), "lingering" (left, passing on), "away"
    phase: str = "draining"
    left_at: float = 0.0
    limit: float = 0.0  # linger_limit()
    poked: bool = False  # a step is due (drained)
    timed_out: bool = False
    #: a plain leave's restart came while it lingered: start it once gone
    restart_when_gone: bool = False


class SimCrash(Exception):
    """A node raised, or broke the driving contract (a deadline not after a tick)."""


@dataclass
class SimNode:
    index: int
    address: str
    node_id: str
    node: NodeLike | None = None
    frozen: bool = False
    left: bool = False
    killed_at: float = -1.0
    #: frames that arrived while frozen: ("client", conn, msgs) / ("peer", frame)
    inbox: list[tuple[Any, ...]] = field(default_factory=list)
    #: frames it sent that were still in its process when it froze (``PIPE``):
    #: (wire delay, kind, to, payload, reset count), sent at the thaw
    stalled_out: list[tuple[float, str, Any, Any, Any]] = field(default_factory=list)
    #: client frames sent while the node was down, waiting for it
    parked: list[tuple[bytes, list[Message]]] = field(default_factory=list)
    tick_gen: int = 0
    tick_at: float = -1.0
    starts: int = 0
    loss: float = 0.0
    lag: float = 0.0
    drain: DrainStep | None = None
    #: what /readyz would answer (fed the node's member events)
    ready: Readiness | None = None
    #: when the last peer frame arrived (a lingering node waits for quiet)
    peer_heard: float = 0.0
    #: what its process left on its disk for the next (``state_dir``): the
    #: note of a life that left, written after its last count (``_depart``),
    #: taken by the next start; a SIGKILL writes none
    note: Any = None
    #: what its process held at its last step (``ClusterNode.held_record``),
    #: as the shell keeps it where a SIGKILL leaves it; taken by the next
    #: start when no note is (a life that left)
    record: Any = None

    @property
    def up(self) -> bool:
        return self.node is not None


class World:
    def __init__(
        self,
        plan: Plan,
        *,
        factory: NodeFactory,
        clustered: bool,
        config: Callable[[int, str], NodeConfig] | None = None,
        keep_trace: bool = False,
        stop_at_first: bool = True,
        locus: Locus | None = None,
    ) -> None:
        self.plan = plan
        #: where each message was last seen (``--explain``; a diagnostic)
        self.locus = locus
        self.explained: list[str] = []
        #: stop at the first violation (explore, shrink) or check on (CI:
        #: every invariant gets its verdict in every run)
        self.stop_at_first = stop_at_first
        self.rng = random.Random(plan.seed)
        self.factory = factory
        self.clustered = clustered
        self._config = config or _test_config(clustered)
        self.keep_trace = keep_trace
        self.trace: list[str] = []
        self._hash = hashlib.sha256()
        self.now = 0.0
        self._heap: list[tuple[float, int, str, Any, Any, Any]] = []
        self._serial = 0
        self._last: dict[tuple[str, str], float] = {}
        self.history = History()
        self.nodes: dict[str, SimNode] = {}
        self.clients: dict[str, SimClient] = {}
        self.by_conn: dict[bytes, SimClient] = {}
        self.sides: list[set[str]] | None = None
        #: (from, to) -> connection resets so far: older frames are lost
        self.resets: dict[tuple[str, str], int] = {}
        #: drops of killed incarnations, as they were at their kill
        self.dead_drops = 0
        #: the same, by reason (a rolling restart counts none)
        self.dead_drops_by: dict[str, int] = {}
        #: drains that ended with the timeout, not with every client moved
        self.drain_timeouts: list[str] = []
        #: drain ops waiting for their turn: (node, hold)
        self.waiting_drains: list[tuple[SimNode, float]] = []
        self._drain_poll = False
        #: drains begun
        self.drains = 0
        #: what a run did and counted, for tests: drains, requests clients
        #: held while moving, drops other than the refusals producers saw
        self.stats: dict[str, int] = {}
        #: wire name of each "!cX.i" reference once its owner has made it
        self.bang: dict[str, str] = {}
        #: channel -> consumers (client ids) ever assigned
        self.consumers_of: dict[str, set[str]] = {}
        self.steps = 0
        self.bound = 0.0
        self.terms: dict[str, int] = {}
        #: what killed nodes held beyond what their counters last heard
        #: (``_note_kill_gap``: a diagnostic)
        self.kill_gap = 0

    # -- tracing ---------------------------------------------------------------
    def log(self, text: str) -> None:
        line = f"{self.now:.6f} {text}"
        self._hash.update(line.encode())
        self._hash.update(b"\n")
        if self.keep_trace:
            self.trace.append(line)

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    # -- the event heap ----------------------------------------------------------
    def _push(self, at: float, kind: str, a: Any = None, b: Any = None, c: Any = None) -> None:
        if self.locus is not None and kind in ("n2c", "c2n", "peer"):
            self._locus_sent(kind, a, b, c)
        self._serial += 1
        heapq.heappush(self._heap, (at, self._serial, kind, a, b, c))

    def _life(self, sn: SimNode) -> str:
        return f"{sn.node_id}.{sn.starts}"

    def _locus_sent(self, kind: str, a: Any, b: Any, c: Any) -> None:
        assert self.locus is not None
        if kind == "peer":
            link, frame, _sent = b
            src = self._life(self.nodes[link[0]])
            self.locus.sent(src, self._life(self.nodes[link[1]]), keys_in_raw(frame), self.now)
        elif kind == "n2c":
            client = self.clients[a]
            src = self._life(self.nodes[client.node])
            self.locus.sent(src, a, keys_in(b), self.now)
        else:
            client = self.by_conn[b]
            self.locus.sent(client.cid, self._life(self.nodes[a]), keys_in(c[0]), self.now)

    def _link_at(self, src: str, dst: str, delay: float) -> float:
        """Arrival time on a FIFO link: never before an earlier frame's."""
        at = max(self.now + delay, self._last.get((src, dst), 0.0))
        self._last[(src, dst)] = at
        return at

    def timer(self, cid: str, at: float, what: str, arg: str) -> None:
        self._push(at, "timer", cid, what, arg)

    # -- nodes -------------------------------------------------------------------
    def add_node(self, index: int) -> SimNode:
        address = address_of(index)
        sn = self.nodes.get(address)
        if sn is None:
            sn = self.nodes[address] = SimNode(index, address, f"n{index}")
        return sn

    def start_node(self, sn: SimNode) -> None:
        if sn.up:
            return
        sn.starts += 1
        sn.left = False
        sn.frozen = False
        sn.inbox.clear()
        incarnation = 1_000_000 + int(self.now * 1000) * 10 + sn.starts
        config = self._config(sn.index, sn.address)
        if self.clustered:  # (every node as a seed, as a deployment does)
            seeds = tuple(address_of(i) for i in range(self.plan.nodes))
            config = dataclasses.replace(config, seeds=seeds)
        sn.drain = None
        sn.ready = Readiness(
            settle=config.ready_settle,
            expects_peers=expects_peers(config.seeds, config.discovery, {sn.address}),
            changed_at=self.now,
        )
        try:
            sn.node = self.factory(
                config,
                address=sn.address,
                incarnation=incarnation,
                rng=random.Random(self.rng.random()),
            )
        except TypeError:
            raise
        self.log(f"start {sn.node_id} inc {incarnation}")
        note, sn.note = sn.note, None  # (taken, as ``NodeServer.start`` takes it)
        record, sn.record = sn.record, None
        if note is not None:
            # (through the file's layout, as the next process reads it)
            sn.node.previous_life(LifeNote.decode(note.encode()), self.now)
        elif record is not None and hasattr(sn.node, "previous_crash"):
            # (through the file's layout, as the next process reads it)
            life, held, *rest = record
            kept = decode_record(encode_slot(1, HeldRecord(life, held, 0.0, *rest)))
            sn.node.previous_crash(
                kept.life, kept.held, kept.links, self.now, kept.conns, kept.flights, kept.parked
            )
        self._apply(sn, self._call(sn, "start", self.now))
        if self.clustered:
            # (every seed, up or not, as the shell's static discovery finds
            # them: a seed down now is tried again while this node knows
            # nobody; finding only those up left a node restarted while the
            # others were down without seeds for good, soak seed 1550)
            for address in config.seeds:
                if address != sn.address and sn.up:
                    self._apply(sn, self._call(sn, "discovered", address, self.now))
        for c in self._clients_of(sn):
            c.node_down = False
        parked, sn.parked = sn.parked, []
        for conn, msgs in parked:  # the clients' sockets reconnect and send
            self._node_client_frame(sn, conn, msgs)

    def _gone_drops(self, sn: SimNode) -> None:
        assert sn.node is not None
        drops = sn.node.drops()
        self.dead_drops += message_drops(drops)
        for reason in MESSAGE_DROPS:
            self.dead_drops_by[reason] = self.dead_drops_by.get(reason, 0) + int(
                drops.get(reason, 0)
            )

    def kill(self, sn: SimNode) -> None:
        if not sn.up:
            return
        assert sn.node is not None
        sn.drain = None
        self._gone_drops(sn)
        self.log(f"kill {sn.node_id} drops {sn.node.drops()}")
        if self.locus is not None:
            self.locus.ended(self._life(sn), f"killed at {self.now:.6f}", sn.node.drops())
        self._note_kill_gap(sn)
        sn.node = None
        sn.killed_at = self.now
        sn.frozen = False
        sn.stalled_out.clear()  # (what was in its pipe dies with it)
        sn.inbox.clear()
        self.reset(sn)  # its connections die with it
        for c in self._clients_of(sn):
            c.node_down = True
            c.exempt_all()

    def _note_kill_gap(self, sn: SimNode) -> None:
        """A diagnostic, not a verdict: what the node holds as it is killed,
        less what the survivor that counts it (the first live node by id)
        last heard it hold. A SIGKILL's loss is counted from that report, so
        a shortfall (``uncounted_loss``) up to this sum, or an excess
        (``overcounted``) down to it, is the report's age, not a lost count
        (``terms["kill_gap"]``)."""
        assert sn.node is not None
        actual = int(sn.node.status().get("queued", 0))
        seen = 0
        for other in sorted(self.nodes.values(), key=lambda n: n.node_id):
            routing = getattr(other.node, "routing", None) if other is not sn else None
            if other.up and routing is not None:
                seen = int(routing.loads.get(sn.node_id, {}).get("queued", 0) or 0)
                break
        self.kill_gap += actual - seen

    def leave(self, sn: SimNode) -> None:
        """A clean leave (``NodeServer.stop``): leave, then linger as the
        shell does (passing on what peers still send) before the process
        is gone; the plan's ``restart`` comes after that."""
        if not sn.up or sn.frozen:
            return
        step = sn.drain
        if step is not None and step.phase != "draining":
            return  # (leaving already)
        if step is None:
            step = sn.drain = DrainStep(sn.starts, None, self.now)
        self._leave_lingering(sn, step)

    def _leave_lingering(self, sn: SimNode, step: DrainStep) -> None:
        step.phase = "lingering"
        step.left_at = self.now
        self._apply(sn, self._call(sn, "leave", self.now))
        node = sn.node
        step.limit = node.linger_limit() if node is not None else 0.0
        self._push(self.now + LINGER_QUIET / 4, "drain", sn.address, step.life, "lingering")

    def _depart(self, sn: SimNode) -> None:
        """A node that left stops: its state goes with it (counted)."""
        assert sn.node is not None
        sn.node.gone(self.now)  # (what no peer acknowledged is counted now)
        life_note = getattr(sn.node, "life_note", None)
        if life_note is not None and sn.node.config.state_dir is not None:
            sn.note = life_note(self.now)  # (as ``NodeServer.stop`` writes it)
        self._gone_drops(sn)
        self.log(f"left {sn.node_id} drops {sn.node.drops()}")
        if self.locus is not None:
            self.locus.ended(self._life(sn), f"left at {self.now:.6f}", sn.node.drops())
        sn.node = None
        sn.left = True
        sn.killed_at = self.now
        self.reset(sn)
        for c in self._clients_of(sn):
            c.node_down = True
            c.exempt_all()

    # -- a drain: one step of a rolling restart ---------------------------------
    def want_drain(self, sn: SimNode, hold: float) -> None:
        self.waiting_drains.append((sn, hold))
        self._start_drains()

    def _turn(self) -> bool:
        """Whether a drain may begin: none under way, every running node ready."""
        for sn in self.nodes.values():
            if sn.drain is not None:
                return False
            if sn.node is not None and (
                sn.frozen or sn.ready is None or sn.ready.verdict(self.now, True) is not None
            ):
                return False
        return True

    def _start_drains(self) -> None:
        while self.waiting_drains and self._turn():
            sn, hold = self.waiting_drains.pop(0)
            self.drain(sn, hold)
        if self.waiting_drains and not self._drain_poll:
            self._drain_poll = True
            self._push(self.now + 0.05, "drain_turn")

    def drain(self, sn: SimNode, hold: float) -> None:
        if not sn.up or sn.frozen or sn.drain is not None:
            return
        self.drains += 1
        step = sn.drain = DrainStep(sn.starts, hold, self.now)
        self.log(f"drain {sn.node_id} hold {hold}")
        self._push(self.now + DRAIN_TIMEOUT, "drain", sn.address, step.life, "draining")
        self._apply(sn, self._call(sn, "drain", self.now))
        self._check_drained(sn)

    def _check_drained(self, sn: SimNode) -> None:
        """After a client frame or a tick, as ``NodeServer._check_drained``:
        the leave is one step later (the drain coroutine wakes up)."""
        step = sn.drain
        if step is None or step.phase != "draining" or step.poked or sn.node is None:
            return
        if sn.node.drained():
            step.poked = True
            self._push(self.now, "drain", sn.address, step.life, "draining")

    def _drain_step(self, sn: SimNode, life: int, phase: str) -> None:
        """The drain's next step, if it is still in ``phase``."""
        step = sn.drain
        if step is None or step.life != life or step.phase != phase:
            return
        if phase == "away":
            if not sn.up:
                self.start_node(sn)
            return
        if sn.node is None or sn.frozen:
            return  # (a frozen node takes its step when it thaws)
        if phase == "draining":
            if not sn.node.drained():
                step.poked = False  # (a client said HELLO meanwhile)
                if self.now < step.began + DRAIN_TIMEOUT:
                    return
                step.timed_out = True
                self.drain_timeouts.append(
                    f"{sn.node_id} drain at {step.began:.4f}: clients not moved after "
                    f"{DRAIN_TIMEOUT:g} s"
                )
            self.log(f"{sn.node_id} drained{' (timeout)' if step.timed_out else ''}: leaves")
            self._leave_lingering(sn, step)
        else:
            quiet = self.now - max(sn.peer_heard, step.left_at) >= LINGER_QUIET
            step.limit = sn.node.linger_limit()  # (it grows while young frames wait)
            if self.now - step.left_at < step.limit and not (quiet and not sn.node.passing_on()):
                self._push(self.now + LINGER_QUIET / 4, "drain", sn.address, life, "lingering")
                return
            self._depart(sn)
            if step.hold is None:  # a plain leave: the plan restarts it
                sn.drain = None
                if step.restart_when_gone:
                    self.start_node(sn)
                return
            step.phase = "away"
            self._push(self.now + step.hold, "drain", sn.address, life, "away")

    def reset(self, sn: SimNode) -> None:
        """Every peer connection of ``sn`` breaks: frames in flight are lost."""
        self.log(f"reset {sn.node_id}")
        for other in self.nodes:
            for link in ((sn.address, other), (other, sn.address)):
                self.resets[link] = self.resets.get(link, 0) + 1

    def freeze(self, sn: SimNode) -> None:
        if sn.up and not sn.frozen:
            sn.frozen = True
            self.log(f"freeze {sn.node_id}")
            for c in self._clients_of(sn):
                c.node_down = True
                c.exempt_all()
            self._stall_pipe(sn)

    def _stall_pipe(self, sn: SimNode) -> None:
        """What ``sn`` sent within ``PIPE`` of its freeze is still in its
        process (handed to libzmq, not yet written by its I/O thread, which
        SIGSTOP stops too): it goes out at the thaw, in order, before
        anything the node sends then (the real-process fault test, seed 6:
        a delivery made the instant its node froze reached the client's node
        3 s later, after that node had declared it dead)."""
        since = self.now - PIPE
        kept: list[tuple[float, int, str, Any, Any, Any]] = []
        stalled: list[tuple[float, int, str, Any, Any, Any]] = []
        for entry in self._heap:
            _at, _serial, kind, a, b, c = entry
            if (kind == "peer" and b[0][0] == sn.address and b[2] >= since) or (
                kind == "n2c" and self.clients[a].node == sn.address and c >= since
            ):
                stalled.append(entry)
            else:
                kept.append(entry)
        if stalled:
            stalled.sort()
            for at, _serial, kind, a, b, c in stalled:
                sent = b[2] if kind == "peer" else c
                sn.stalled_out.append((at - sent, kind, a, b, c))
            if self.keep_trace:
                kinds = [
                    " ".join(type(m).__name__ for m in decode_peer(b[1])) if k == "peer" else "n2c"
                    for _at, _s, k, _a, b, _c in stalled
                ]
                self.log(f"{sn.node_id} froze with {len(stalled)} frame(s) in its pipe: {kinds}")
            self._heap[:] = kept  # (in place: ``run_until`` holds the list)
            heapq.heapify(self._heap)

    def _unstall_pipe(self, sn: SimNode) -> None:
        stalled, sn.stalled_out = sn.stalled_out, []
        for delay, kind, a, b, c in stalled:
            if kind == "peer":
                link, frame, _sent = b
                self._push(self._link_at(*link, delay), kind, a, (link, frame, self.now), c)
            else:
                at = self._link_at(sn.address, a, delay)
                self._push(at, kind, a, b, self.now)

    def thaw(self, sn: SimNode) -> None:
        if not sn.up or not sn.frozen:
            return
        sn.frozen = False
        self.log(f"thaw {sn.node_id}")
        self._unstall_pipe(sn)
        for c in self._clients_of(sn):
            c.node_down = False
        if sn.drain is not None:
            self._push(self.now, "drain", sn.address, sn.drain.life, sn.drain.phase)
        inbox, sn.inbox = sn.inbox, []
        for item in inbox:
            if not sn.up or sn.frozen:
                break
            if item[0] == "client":
                self._node_client_frame(sn, item[1], item[2])
            else:
                self._node_peer_frame(sn, item[1])
        self._schedule_tick(sn)

    def _clients_of(self, sn: SimNode) -> list[SimClient]:
        return [c for c in self.clients.values() if c.node == sn.address and not c.dead]

    def _call(self, sn: SimNode, method: str, *args: Any) -> EffectsLike | None:
        node = sn.node
        if node is None:
            return None
        try:
            fx: EffectsLike = getattr(node, method)(*args)
        except Exception as exc:
            raise SimCrash(f"{sn.node_id}.{method} raised {exc!r}") from exc
        return fx

    def _apply(self, sn: SimNode, fx: EffectsLike | None) -> None:
        """Carry out what a node decided, as ``NodeServer._apply`` does: what
        a gone client bounced goes back to the node after the step's other
        frames are out."""
        if fx is None:
            return
        if sn.node is not None and sn.node.config.state_dir is not None:
            # (before its frames leave, as ``NodeServer._apply`` keeps it)
            held_record = getattr(sn.node, "held_record", None)
            if held_record is not None:
                sn.record = held_record()
                queues = sn.node.core.queues
                if queues.queued() != queues.queued_counted():
                    raise SimCrash(
                        f"{sn.node_id} keeps {queues.queued()} queued, "
                        f"holds {queues.queued_counted()}"
                    )
                if queues.flying != queues.flying_counted():
                    raise SimCrash(
                        f"{sn.node_id} keeps {queues.flying} in flight, "
                        f"has {queues.flying_counted()}"
                    )
                routing = getattr(sn.node, "routing", None)
                passed = routing.passed if routing is not None else None
                if passed is not None and passed.adopted != passed.adopted_counted():
                    raise SimCrash(
                        f"{sn.node_id} keeps {passed.adopted} adopted, "
                        f"has {passed.adopted_counted()}"
                    )
        bounced: list[tuple[bytes, list[Message]]] = []
        for ev in fx.events:
            self.log(f"{sn.node_id} event {ev}")
            if sn.ready is not None and getattr(ev, "node", sn.node_id) != sn.node_id:
                sn.ready.member_event(ev.kind, self.now)
        if fx.clients:
            by_conn: dict[bytes, list[Message]] = {}
            for conn, message in fx.clients:
                by_conn.setdefault(conn, []).append(message)
            for conn, msgs in by_conn.items():
                client = self.by_conn.get(conn)
                if (
                    client is None
                    or client.node != sn.address
                    or (client.dead and self.now >= client.died_at + DETECT)
                ):
                    self.log(f"{sn.node_id} undeliverable {conn!r} {_types(msgs)}")
                    if client is not None:
                        client.gone_seen = True
                    if client is not None and client.dead:
                        self.history.refused_dead += sum(
                            1
                            for m in msgs
                            if m[0] == MsgType.ERROR
                            and m[1][0] == 0
                            and m[1][1] == ErrorCode.UNKNOWN_SESSION
                        )
                    bounced.append((conn, msgs))
                    continue
                frame = decode(encode_many(msgs))
                at = self._link_at(
                    sn.address, client.cid, CLIENT_DELAY + CLIENT_JITTER * self.rng.random()
                )
                self._push(at, "n2c", client.cid, frame, self.now)
        for to, raw in fx.peers:
            self._send_peer(sn, to, raw)
        for conn, msgs in bounced:
            self._apply(sn, self._call(sn, "undeliverable", conn, msgs, self.now))
        self._schedule_tick(sn)

    def _schedule_tick(self, sn: SimNode) -> None:
        if sn.node is None or sn.frozen:
            return
        at = max(sn.node.next_deadline(), self.now)
        if at != sn.tick_at:
            sn.tick_gen += 1
            sn.tick_at = at
            self._push(at, "tick", sn.address, sn.tick_gen)

    def _send_peer(self, sn: SimNode, to: str, frame: bytes) -> None:
        dst = self.nodes.get(to)
        if dst is None:
            self.log(f"{sn.node_id} peer frame to unknown {to}")
            return
        if self.sides is not None and not any(sn.address in s and to in s for s in self.sides):
            return
        delay = PEER_DELAY + PEER_JITTER * self.rng.random() + sn.lag + dst.lag
        keep = (1 - sn.loss) * (1 - dst.loss)
        while keep < 1 and self.rng.random() >= keep:
            delay += RTO  # a TCP retransmission
        link = (sn.address, to)
        at = self._link_at(*link, delay)
        self._push(at, "peer", to, (link, frame, self.now), self.resets.get(link, 0))

    def _node_client_frame(self, sn: SimNode, conn: bytes, msgs: list[Message]) -> None:
        client = self.by_conn.get(conn)
        who = client.cid if client is not None else repr(conn)
        if client is not None and not client.gone_seen:
            for m in msgs:
                if m[0] == MsgType.CONSUMED:
                    client.reported += sum(r[2] for r in m[1][0])
                elif m[0] == MsgType.CONSUMED_BUNDLES:
                    client.reported += sum(
                        e[i + 1] - e[i] for e in m[1][0] for i in range(1, len(e) - 1, 2)
                    )
        self.log(f"{sn.node_id} <- {who} {_types(msgs)}")
        if self.locus is not None:
            self.locus.got(self._life(sn), keys_in(msgs), self.now)
        self._apply(sn, self._call(sn, "client", conn, msgs, self.now))
        if sn.drain is not None:
            self._check_drained(sn)

    def _node_peer_frame(self, sn: SimNode, frame: bytes) -> None:
        if self.keep_trace:  # (what the frame carries, by type: costly, so only then)
            try:
                kinds = " ".join(type(m).__name__ for m in decode_peer(frame))
            except DecodeError as exc:  # (the node counts it a decode_error and goes on)
                kinds = f"UNDECODABLE {exc}"
            self.log(f"{sn.node_id} <- peer {len(frame)} {kinds}")
        else:
            self.log(f"{sn.node_id} <- peer {len(frame)}")
        sn.peer_heard = self.now
        if self.locus is not None:
            self.locus.got(self._life(sn), keys_in_raw(frame), self.now)
        self._apply(sn, self._call(sn, "peer", frame, self.now))

    # -- clients -----------------------------------------------------------------
    def add_client(self, cid: str, node_index: int) -> SimClient | None:
        if cid in self.clients:
            return None
        sn = self.nodes.get(address_of(node_index))
        if sn is None:
            return None
        session = base64.b32encode(self.rng.randbytes(7)).decode()[:10].lower()
        client = SimClient(
            self,
            self.history,
            cid,
            sn.address,
            random.Random(self.rng.random()),
            session=session,
            expiry=60.0,
            request_timeout=30.0,
            now=self.now,
        )
        client.node_down = not sn.up or sn.frozen
        self.clients[cid] = client
        self.by_conn[client.conn] = client
        self.log(f"client {cid} on {sn.node_id} session {session}")
        self._flush(client)
        return client

    def _flush(self, client: SimClient) -> None:
        frame = client.flush(self.now)
        if not frame:
            return
        frame = decode(encode_many(frame))
        at = self._link_at(
            client.cid, client.node, CLIENT_DELAY + CLIENT_JITTER * self.rng.random()
        )
        self._push(at, "c2n", client.node, client.conn, (frame, self.now))

    def resolve(self, ref: str) -> str | None:
        """A schedule's channel reference as a wire name ("!c2.0": the first
        new_channel() name of client c2)."""
        if not ref.startswith("!"):
            if ref.startswith("q"):  # (one consumer each: FIFO is checked there)
                self.history.fifo_channels.add(ref)
            return ref
        name = self.bang.get(ref)
        if name is None:
            owner = self.clients.get(ref[1:].partition(".")[0])
            if owner is None or owner.dead:
                return None
            made = owner.new_channel()
            if made is None:
                return None
            name = self.bang[ref] = made
            self.consumers_of.setdefault(name, set()).add(owner.cid)
            self.history.fifo_channels.add(name)
        return name

    # -- running -----------------------------------------------------------------
    def run_until(self, end: float, stop: Callable[[], bool] | None = None) -> None:
        heap = self._heap
        while heap and heap[0][0] <= end:
            if self.stop_at_first and self.history.violations:
                return
            at, _serial, kind, a, b, c = heapq.heappop(heap)
            self.now = max(self.now, at)
            self.steps += 1
            if kind == "n2c":
                client = self.clients[a]
                if client.dead:
                    continue
                if self.locus is not None:
                    self.locus.got(a, keys_in(b), self.now)
                client.on_frame(b, self.now)
                self._flush(client)
            elif kind == "c2n":
                sn = self.nodes[a]
                frame, sent_at = c
                if not sn.up:
                    if sn.killed_at < sent_at:  # sent while down: waits in the socket
                        sn.parked.append((b, frame))
                    continue
                if sn.frozen:
                    sn.inbox.append(("client", b, frame))
                else:
                    self._node_client_frame(sn, b, frame)
            elif kind == "peer":
                sn = self.nodes[a]
                if not sn.up or c != self.resets.get(b[0], 0):
                    continue
                if sn.frozen:
                    sn.inbox.append(("peer", b[1]))
                else:
                    self._node_peer_frame(sn, b[1])
            elif kind == "tick":
                sn = self.nodes[a]
                if sn.node is None or sn.frozen or b != sn.tick_gen:
                    continue
                sn.tick_at = -1.0
                self._apply(sn, self._call(sn, "tick", self.now))
                if sn.node is not None and sn.node.next_deadline() <= self.now:
                    raise SimCrash(f"{sn.node_id}: next_deadline not after tick at {self.now}")
                if sn.drain is not None:
                    self._check_drained(sn)
            elif kind == "drain":
                self._drain_step(self.nodes[a], b, c)
            elif kind == "drain_turn":
                self._drain_poll = False
                self._start_drains()
            elif kind == "timer":
                client = self.clients[a]
                if client.dead:
                    continue
                client.on_timer(b, c, self.now)
                if b == "sweep":
                    self._check_answers(client)
                self._flush(client)
            elif kind == "op":
                self._op(self.plan.ops[a])
            if stop is not None and stop():
                return
        self.now = max(self.now, end)

    def _check_answers(self, client: SimClient) -> None:
        late = client.overdue(self.now, self.bound)
        if late:
            self.history.violate(
                self.now, "answer_time", f"unanswered after {self.bound:.2f} s: {late[0]}"
            )

    # -- the schedule ------------------------------------------------------------
    def _op(self, op: Op) -> None:
        self.log(f"op {op.kind} {' '.join(map(str, op.args))}")
        k, args = op.kind, op.args
        if k == "client":
            self.add_client(args[0], args[1])
            return
        if k in (
            "kill",
            "restart",
            "freeze",
            "thaw",
            "leave",
            "join",
            "loss",
            "lag",
            "reset",
            "drain",
        ):
            sn = self.nodes.get(address_of(args[0]))
            if sn is None:
                if k != "join":
                    return
                sn = self.add_node(args[0])
            if k == "kill":
                self.kill(sn)
            elif k == "restart" and sn.drain is not None and sn.drain.hold is None:
                sn.drain.restart_when_gone = True  # (the process has not exited yet)
            elif k in ("restart", "join"):
                self.start_node(sn)
            elif k == "freeze":
                self.freeze(sn)
            elif k == "thaw":
                self.thaw(sn)
            elif k == "leave":
                self.leave(sn)
            elif k == "loss":
                sn.loss = args[1]
            elif k == "lag":
                sn.lag = args[1]
            elif k == "reset":
                self.reset(sn)
            elif k == "drain":
                self.want_drain(sn, args[1])
            return
        if k == "partition":
            self.sides = [{address_of(i) for i in side} for side in args]
            return
        if k == "heal":
            self.sides = None
            return
        client = self.clients.get(args[0])
        if client is None or client.dead:
            return
        if k == "die":
            client.die(self.now)
            if self.locus is not None:  # (what it held is named so: ``--explain``)
                self.locus.ends[client.cid] = f"died at {self.now:.6f}"
            return
        if k == "gsend":
            _cid, group, n, gap = args
            for _ in range(n):
                client.enqueue(Job("group_send", group, 0, gap), self.now)
        elif k == "send":
            _cid, ref, n, gap, capacity = args
            channel = self.resolve(ref)
            if channel is None:
                return
            self.consumers_of.setdefault(channel, set())  # drained at the end
            for _ in range(n):
                client.enqueue(Job("send", channel, capacity, gap), self.now)
        elif k == "recv":
            _cid, ref, proc = args
            channel = self.resolve(ref)
            if channel is None:
                return
            self.consumers_of.setdefault(channel, set()).add(client.cid)
            client.consume(channel, proc, self.now)
        elif k == "cancel":
            _cid, ref, restart = args
            channel = self.resolve(ref)
            if channel is not None:
                client.cancel(channel, restart, self.now)
        elif k == "gadd":
            _cid, group, ref, capacity = args
            channel = self.resolve(ref)
            if channel is not None:
                client.group_add(group, channel, capacity, self.now)
        elif k == "gdiscard":
            _cid, group, ref = args
            channel = self.resolve(ref)
            if channel is not None:
                client.group_discard(group, channel, self.now)
        self._flush(client)

    # -- phases ------------------------------------------------------------------
    def run(self, settle: float, drain_limit: float) -> History:
        """The schedule, then heal, settle, drain, and the final checks."""
        plan = self.plan
        n = max([plan.nodes, *(op.args[0] + 1 for op in plan.ops if op.kind == "join")])
        self.bound = answer_bound(self._config(0, address_of(0)), n)
        for i in range(plan.nodes):
            self.start_node(self.add_node(i))
        for i, op in enumerate(plan.ops):
            self._push(op.at, "op", i)
        end = max([0.0, *(op.at for op in plan.ops)])
        try:
            go_on = self._go_on
            self.run_until(end)
            if go_on():
                self._finish_drains()
            if go_on():
                self._heal()
                # (and until every peer frame sent before the heal has
                # arrived: one waiting out retransmissions drawn while a
                # loss lasted is in transit, not lost, whatever it carries)
                sent = [at for at, _, kind, *_ in self._heap if kind == "peer"]
                self.run_until(max([self.now + settle, *sent]))
            if go_on():
                self._converged()
                self._drain(drain_limit)
            if go_on():
                self._final()
        except SimCrash as exc:
            self.history.violate(self.now, "crash", str(exc))
        if self.keep_trace:
            self._log_state()
        return self.history

    def _log_state(self) -> None:
        """For a traced replay: where each live node ends — its counters
        that say something was lost, dropped or held, and every pool that
        still holds capacity, with what holds it (queued messages, and each
        connection's flight: for another node's client, whose it is)."""
        words = ("lost", "drop", "stale", "parked", "gone", "forgotten", "left_to", "unanswered")
        for sn in sorted(self.nodes.values(), key=lambda n: n.node_id):
            if sn.node is None:
                continue
            status = sn.node.status()
            counts = {f"drops.{k}": v for k, v in status.get("drops", {}).items() if v}
            for group in ("counters", "routing_counters", "peer_counters"):
                for k, v in (status.get(group) or {}).items():
                    if v and isinstance(v, int) and any(w in k for w in words):
                        counts[f"{group}.{k}"] = v
            self.log(f"state {sn.node_id} {counts}")
            queues = getattr(getattr(sn.node, "core", None), "queues", None)
            routing = getattr(sn.node, "routing", None)
            for name, pool in queues.pools.items() if queues is not None else ():
                if not pool.held:
                    continue
                self.log(f"state {sn.node_id} pool {name} holds {pool.held}")
                for channel in sorted(pool.names):
                    ch = queues.channels.get(channel)
                    if ch is None:
                        continue
                    for conn, flight in ch.flight.items():
                        virtual = routing._virtual.get(conn) if routing is not None else None
                        who = (
                            f"{virtual.origin}@{virtual.incarnation}/{virtual.tag}"
                            if virtual is not None
                            else repr(conn)
                        )
                        self.log(f"state   {channel} flight to {who}: {sorted(flight)}")
                    if ch.items:
                        self.log(f"state   {channel} queued {len(ch.items)}")

    def _finish_drains(self) -> None:
        """Drains under way when the schedule ends run to their restart
        (each phase is bounded) before the heal; a frozen node is thawed
        first (the heal would thaw it)."""
        if self.waiting_drains:
            self.log(f"{len(self.waiting_drains)} drains given up")
            self.waiting_drains.clear()
        if not any(sn.drain is not None for sn in self.nodes.values()):
            return
        for sn in sorted(self.nodes.values(), key=lambda n: n.index):
            if sn.drain is not None and sn.frozen:
                self.thaw(sn)
        limit = self.now + 2 * DRAIN_TIMEOUT + 10.0
        while self._go_on() and self.now < limit:
            if not any(sn.drain is not None for sn in self.nodes.values()):
                return
            self.run_until(self.now + LINGER_QUIET)

    def _go_on(self) -> bool:
        return not (self.stop_at_first and self.history.violations)

    def _heal(self) -> None:
        self.log("heal")
        self.sides = None
        for sn in sorted(self.nodes.values(), key=lambda n: n.index):
            sn.loss = sn.lag = 0.0
            if sn.frozen:
                self.thaw(sn)
        for sn in sorted(self.nodes.values(), key=lambda n: n.index):
            if not sn.up:
                self.start_node(sn)

    def _converged(self) -> None:
        views = {
            sn.node_id: membership_view(sn.node.status())
            for sn in self.nodes.values()
            if sn.node is not None
        }
        live = {sn.node_id for sn in self.nodes.values() if sn.up}
        for node_id, view in views.items():
            if view["alive"] != live:
                self.history.violate(
                    self.now,
                    "convergence",
                    f"{node_id} sees {sorted(view['alive'])} alive, live are {sorted(live)}",
                )
                return
        extra = {k: v for k, v in next(iter(views.values())).items() if k != "alive"}
        for node_id, view in views.items():
            for k, v in extra.items():
                if view.get(k) != v:
                    self.history.violate(self.now, "convergence", f"{node_id} differs on {k}")
                    return

    def _drain(self, limit: float) -> None:
        """Every channel that was used gets a live consumer; run until
        nothing is queued, prefetched or in flight."""
        self.log("drain")
        live_nodes = [sn for sn in self.nodes.values() if sn.up]
        drainers = 0
        for channel in sorted(self.consumers_of):
            cids = sorted(self.consumers_of[channel])
            alive = [self.clients[c] for c in cids if not self.clients[c].dead]
            if alive:
                for c in alive:
                    c.consume(channel, 0.0, self.now)
                    self._flush(c)
                continue
            if "!" in channel:
                continue  # its process is gone: the node drops it (counted)
            sn = live_nodes[drainers % len(live_nodes)]
            drainer = self.add_client(f"d{drainers}", sn.index)
            drainers += 1
            if drainer is not None:
                self.consumers_of[channel].add(drainer.cid)
                drainer.consume(channel, 0.0, self.now)
                self._flush(drainer)
        for c in self.clients.values():
            if not c.dead:
                for channel, consumer in c.consumers.items():
                    if not consumer.active:
                        c.consume(channel, 0.0, self.now)
                self._flush(c)
        deadline = self.now + limit
        while self.now < deadline and self._go_on():
            self.run_until(self.now + 0.25)
            if self._quiet():
                self.run_until(self.now + 0.5)
                if self._quiet():
                    self._settle_parked()
                    return
        if self._go_on():
            self.history.violate(
                self.now,
                "stalled",
                f"{limit:g} s after the drain began, with every channel consumed and "
                f"every fault healed, still: {self._busy()}",
            )

    def _settle_parked(self) -> None:
        """Deliveries a node made to a client of a node it declared dead
        are parked (``Routing._parked_flight``; their room is free, so the
        drain is quiet) until that client's node says what it took, or the
        park lapses and they are counted lost (``presume_dead_after``): wait
        for that, so the final count is the one the nodes come to."""
        routings = [
            sn.node.routing
            for sn in self.nodes.values()
            if sn.node is not None and sn.node.routing is not None
        ]
        if not routings:
            return
        until = self.now + max(r.presume_dead_after() for r in routings) + 0.5
        while self._go_on() and self.now < until and any(r.parked_count() for r in routings):
            self.run_until(self.now + 0.25)

    def _busy(self) -> str:
        what = [
            f"{sn.node_id} queues {sn.node.status().get('queued', 0)}"
            for sn in self.nodes.values()
            if sn.node is not None and sn.node.status().get("queued", 0)
        ]
        for c in self.clients.values():
            if not c.dead:
                if c.pending or c.withdraw_sent or c.hello_outstanding:
                    what.append(f"{c.cid} waits for {len(c.pending) + len(c.withdraw_sent)}")
                held = sum(len(s.buffer) for s in c.flow.channels.values())
                if held:
                    what.append(f"{c.cid} holds {held} untaken")
        for sn in self.nodes.values():
            if sn.node is not None:
                what += [
                    f"{sn.node_id} pool {k} holds {n}" for k, n in _held_pools(sn.node).items()
                ]
        return ", ".join(what[:6]) or "?"

    def _quiet(self) -> bool:
        for c in self.clients.values():
            if c.dead:
                continue
            if not c.idle() or any(s.buffer for s in c.flow.channels.values()):
                return False
        # (capacity units too: a unit no message holds is never released,
        # and the pool refuses a send one message early: seed 76)
        return all(
            sn.node.status().get("queued", 0) == 0 and not _held_pools(sn.node)
            for sn in self.nodes.values()
            if sn.node
        )

    def _final(self) -> None:
        for c in self.clients.values():
            if not c.dead:
                self._check_answers(c)
        drops = self.dead_drops
        held = 0
        for sn in self.nodes.values():
            if sn.node is not None:
                drops += message_drops(sn.node.drops())
                held += int(sn.node.status().get("queued", 0))
        for c in self.clients.values():
            drops += c.counters.lost_in_node_restart
            if c.dead:
                self.history.unreported += max(0, c.taken - c.reported)
            if not c.dead:
                held += sum(len(s.buffer) for s in c.flow.channels.values())
        self.terms = self.history.account(drops, held, self.now)
        if self.locus is not None:
            self._explain()
        self.terms["kill_gap"] = self.kill_gap
        self.log(f"final {self.terms}")
        refused = sum(1 for r in self.history.sends.values() if r.outcome == "refused")
        self.stats = {
            "drains": self.drains,
            "held": sum(c.held_total for c in self.clients.values()),
            "counted": drops - refused,
        }
        if is_rolling(self.plan):
            drops_by = dict(self.dead_drops_by)
            for sn in self.nodes.values():
                if sn.node is not None:
                    for reason, n in sn.node.drops().items():
                        if reason in MESSAGE_DROPS:
                            drops_by[reason] = drops_by.get(reason, 0) + int(n)
            self.history.rolling(
                drops_by,
                sum(c.counters.lost_in_node_restart for c in self.clients.values()),
                self.drain_timeouts,
                self.now,
            )

    def _explain(self) -> None:
        """Where each accepted send neither taken nor held was last seen."""
        assert self.locus is not None
        for sn in self.nodes.values():
            if sn.node is not None:
                drops = {k: int(v) for k, v in sn.node.drops().items() if v}
                self.locus.drops[self._life(sn)] = drops
        taken = {k for k, _c in self.history.taken}
        held = {
            k
            for c in self.clients.values()
            if not c.dead
            for s in c.flow.channels.values()
            for k in keys_in(list(s.buffer))
        }
        missing = [
            r.key
            for r in self.history.sends.values()
            if r.kind == "send" and r.outcome == "accepted" and r.key not in taken | held
        ]
        self.explained = self.locus.explain(missing)


def membership_view(status: dict[str, Any]) -> dict[str, Any]:
    """What a node's status says of the cluster, for the convergence check:
    the live members, and (where the status has them) owners and replicas."""
    members = status.get("members") or []
    alive = {
        str(m.get("id"))
        for m in members
        if isinstance(m, dict) and m.get("state") in ("alive", "suspect")
    }
    view: dict[str, Any] = {"alive": alive}
    for key in ("ring", "owners", "group_digest", "replicas"):
        if key in status:
            view[key] = status[key]
    return view


def address_of(index: int) -> str:
    """Node ``index``'s peer address (the peer codec takes tcp endpoints only)."""
    return f"tcp://10.0.0.{index + 1}:7701"


def answer_bound(config: NodeConfig, nodes: int) -> float:
    """Seconds within which a request must be answered while its own node
    runs. A node may rightly hold a send until a dead client is found dead:
    a put deferred for a reservation waits for its holder's REVOKED, or for
    its lease to lapse (lease, then the next tick and sweep). A cluster may
    also first have to find a silent owner dead: a probe round slowed by
    local health, the longest suspicion, a few round trips (issue 11:
    "within the suspicion timeout plus one round trip")."""
    bound = config.client_lease + 2 * config.tick_interval + config.sweep_interval + 0.1
    if nodes > 1:
        m = config.membership
        _low, high = suspicion_bounds(m, nodes)
        bound += high + 2 * m.probe_interval * (1 + m.awareness_max) + 0.25
    return bound


def _test_config(clustered: bool) -> Callable[[int, str], NodeConfig]:
    def make(index: int, address: str) -> NodeConfig:
        return NodeConfig.test(
            node_id=f"n{index}",
            client_endpoints=("inproc://sim",),
            peer_endpoint=address if clustered else None,
            discovery=("none",),
            cluster="sim",
            # (a node's disk: ``SimNode.note``, never a path on this host)
            state_dir="sim-disk" if clustered else None,
        )

    return make


def _types(msgs: list[Message]) -> str:
    return ",".join(str(int(m[0])) for m in msgs)


def _held_pools(node: NodeLike) -> dict[str, int]:
    """Pool -> the capacity units it holds (queued and in-flight messages;
    a node without the real core's queues: none)."""
    queues = getattr(getattr(node, "core", None), "queues", None)
    if queues is None:
        return {}
    return {k: p.held for k, p in queues.pools.items() if p.held}
