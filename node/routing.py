"""Channels across the cluster: who owns each name, and getting messages there.

Owns: the current ``Ownership`` (rebuilt whenever the live member set
changes), relaying client messages for channels another node owns
(``PEER_RELAY``) and passing the owner's answers back (``PEER_RELAY_BACK``),
handing queued messages, receivers' credit and memberships to a name's new
owner when ownership moves (``PEER_HANDOFF``, at every change and by a
periodic sweep), cluster-wide requests (``flush()``, group members:
``PEER_ASK``/``PEER_ANSWER``), and each node's load for ``znode status``
(``PEER_LOAD``). Decides nothing about a channel itself: the owner's
``NodeCore`` does, exactly as for its own clients.

How a relayed client looks to the owner: a *virtual connection* — a
connection id that no ZeroMQ peer can have (it starts with a NUL byte and is
longer than libzmq's generated ids; ids a client sets cannot start with NUL)
— standing for ``(origin node, client connection)``. The owner's core grants
it credit, delivers to it, gives its returns back, reserves send slots for it
and holds its memberships (as ``"origin/session"``) like any local client's;
this module turns its answers into ``PEER_RELAY_BACK`` frames. So receive,
cancellation (give-back, acknowledged credit withdrawal) and send
reservations behave across nodes exactly as on one node.

Failure: messages queued on a node that dies are lost (at-most-once) and
counted on every survivor (``lost_in_dead_nodes``, from the dead node's last
load report); a relayed request its owner never answers (it died) is
answered after ``timeout`` and counted; a deliver that reaches a client
that has gone goes back to its owner.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zchannels.protocol import (
    DecodeError,
    Message,
    MsgType,
    check_message,
    encode,
    encode_many,
    split_batches,
)

from .core import MAX_HOPS, RELAYED, NodeCore, Out
from .membership import EventKind, MemberEvent
from .ownership import Ownership, tag_of
from .peers import PeerMesh
from .queues import ConnId
from .sessions import Policy, Session

log = logging.getLogger("zchannels.node")

#: What an owner may pass back to a client through its node.
_BACK = frozenset(
    {
        MsgType.DELIVER,
        MsgType.DELIVER_MANY,
        MsgType.ACK,
        MsgType.ERROR,
        MsgType.REVOKE,
        MsgType.FLUSHED,
    }
)
#: Requests answered by ACK or ERROR (their request id is field 0).
_ANSWERED = frozenset({MsgType.SEND, MsgType.GROUP_ADD, MsgType.GROUP_DISCARD, MsgType.RETURN})
_VCONN_MARK = b"\x00zr"
#: A member's incarnation starts at its start time in ms and grows by one per
#: refuted suspicion; relays carry the start value. One more than this above
#: it means a new start (a restart, at least a second later), not a refutation.
RESTART_GAP = 1000
#: Seconds the member views must stay still before strays are swept to their
#: owners (longer than a death takes to reach every member by gossip).
SWEEP_DELAY = 1.0


#: (origin node, its incarnation, the client's connection there)
_Client = tuple[str, int, ConnId]


@dataclass(slots=True)
class _Virtual:
    origin: str
    incarnation: int
    conn: ConnId
    session: Session
    tag: str  # the client's session tag on its own node


def holder_of(origin: str, incarnation: int, tag: str) -> str:
    """Who holds a membership made by session ``tag`` of node ``origin`` (at
    ``incarnation``: a restarted node's old sessions are not its new ones)."""
    return f"{origin}@{incarnation}/{tag}"


@dataclass(slots=True)
class _Ask:
    conn: ConnId
    req: int
    kind: str
    waiting: set[str]
    deadline: float
    result: set[str] = field(default_factory=set)


class Routing:
    def __init__(
        self,
        mesh: PeerMesh,
        core: NodeCore,
        send: Callable[[list[Out]], None],
        client_send: Callable[[ConnId, bytes], bool],
        *,
        timeout: float = 5.0,
        load_interval: float = 1.0,
    ) -> None:
        self.mesh = mesh
        self.core = core
        self._send_out = send
        self._client_send = client_send
        self.timeout = timeout
        self.load_interval = load_interval
        self.me = mesh.node_id
        self.incarnation = mesh.incarnation
        self.ownership = Ownership({self.me: core.settings.node_tag})
        self._live: tuple[str, ...] = (self.me,)
        self._tags: dict[str, str] = {self.me: core.settings.node_tag}
        # owner side: virtual connections of clients on other nodes
        self._virtual: dict[ConnId, _Virtual] = {}
        self._vconn_of: dict[_Client, ConnId] = {}
        self._vconn_ids = itertools.count(1)
        # origin side
        #: (client conn, request id) -> (owner, deadline, type): relayed requests
        self._pending: dict[tuple[ConnId, int], tuple[str, float, MsgType]] = {}
        self._relayed_conns: set[ConnId] = set()  # local conns with state elsewhere
        #: (client conn, channel) -> [owner, credit left there]: what our
        #: clients are owed by other nodes, re-granted if that owner dies
        self._credit: dict[tuple[ConnId, str], list[Any]] = {}
        self._remote_holders: set[str] = set()  # local sessions holding memberships elsewhere
        self._asks: dict[int, _Ask] = {}
        self._ask_ids = itertools.count(1)
        #: node id -> its last load report (channels, queued, drops)
        self.loads: dict[str, dict[str, Any]] = {}
        self.counters: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        #: something may sit on a node that does not own it (a handover raced
        #: a view change, a relay ran out of hops): when to sweep it on
        self._sweep_at: float | None = None

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        self.core.route = self.route
        self.core.clustered = True
        self.mesh.listeners.append(self._on_member_event)
        self.mesh.handlers.update(
            {
                MsgType.PEER_RELAY: self._on_relay,
                MsgType.PEER_RELAY_BACK: self._on_relay_back,
                MsgType.PEER_CONN_GONE: self._on_conn_gone,
                MsgType.PEER_HOLDER_GONE: self._on_holder_gone,
                MsgType.PEER_HANDOFF: self._on_handoff,
                MsgType.PEER_ASK: self._on_ask,
                MsgType.PEER_ANSWER: self._on_answer,
                MsgType.PEER_LOAD: self._on_load,
            }
        )
        self._refresh()
        self._task = asyncio.create_task(self._timers(), name="znode-routing")

    async def stop(self) -> None:
        """Before the node leaves: hand everything it holds to the owners
        the others will compute without it (a clean shutdown loses nothing)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        others = [n for n in self._live if n != self.me]
        if others:
            self.ownership = Ownership({n: self._tags[n] for n in others})
            self._live = tuple(others)
            self.handoff(full=True)

    # -- ownership -------------------------------------------------------------
    def route(self, channel: str) -> str | None:
        """None: this node owns ``channel``; the owner's id; "" for nobody."""
        owner = self.ownership.owner(channel)
        if owner == self.me:
            return None
        return owner or ""

    def _refresh(self) -> bool:
        """Rebuild ownership if the live set changed; True if it did."""
        table = self.mesh.table
        live = tuple(table.live()) if table is not None else (self.me,)
        if self.me not in live:  # leaving: keep serving as if alone
            live = tuple(sorted({*live, self.me}))
        if live == self._live:
            return False
        for node in live:
            if node not in self._tags:
                self._tags[node] = tag_of(node)
        self.ownership = Ownership({n: self._tags[n] for n in live})
        self._live = live
        return True

    def status(self) -> dict[str, Any]:
        return {
            "view": list(self._live),
            "nodes": {node: dict(load) for node, load in sorted(self.loads.items())},
            "routing_counters": dict(self.counters),
        }

    def load(self) -> dict[str, Any]:
        """What this node holds, as it reports it to the others."""
        core = self.core
        return {
            "channels": len(core.queues.channels),
            "queued": core.queues.queued(),
            "drops": core.drops(),
        }

    # -- after every core step -------------------------------------------------
    def after_core(self) -> None:
        core = self.core
        if core.relays:
            relays, core.relays = core.relays, []
            self._relay(relays)
        if core.gone_conns:
            gone, core.gone_conns = core.gone_conns, []
            self._conns_gone(gone)
        if core.gone_sessions:
            ended, core.gone_sessions = core.gone_sessions, []
            remote = [tag for tag in ended if tag in self._remote_holders]
            if remote:
                self._remote_holders.difference_update(remote)
                frame = encode(MsgType.PEER_HOLDER_GONE, self.me, self.incarnation, remote)
                self._broadcast(frame)
        if core.asks:
            asks, core.asks = core.asks, []
            for conn, req, kind, arg, local in asks:
                self._ask(conn, req, kind, arg, local)

    def _relay(self, relays: list[tuple[str, ConnId, Session, Message, int]]) -> None:
        """Send client messages to their channels' owners, one frame per
        (owner, client connection) run."""
        deadline = time.monotonic() + self.timeout
        batch: list[list[Any]] = []
        key: tuple[str, ConnId] | None = None
        session: Session | None = None
        hops = 0
        for owner, conn, s, (mtype, fields), h in relays:
            if (owner, conn) != key or h != hops:
                if key is not None and session is not None:
                    self._send_relay(key[0], key[1], session, hops, batch)
                key, session, hops, batch = (owner, conn), s, h, []
            batch.append([mtype, *fields])
            virtual = self._virtual.get(conn)
            if virtual is None:  # a client of this node: remember what is pending
                self._relayed_conns.add(conn)
                if mtype in _ANSWERED and fields[0]:
                    self._pending[(conn, fields[0])] = (owner, deadline, mtype)
                if mtype == MsgType.GROUP_ADD:
                    self._remote_holders.add(s.tag)
                elif mtype == MsgType.RECV:
                    owed = self._credit.setdefault((conn, fields[0]), [owner, 0])
                    owed[0] = owner
                    owed[1] += fields[1]
                elif mtype == MsgType.RETURN and fields[3]:  # credit withdrawn
                    self._credit.pop((conn, fields[1]), None)
        if key is not None and session is not None:
            self._send_relay(key[0], key[1], session, hops, batch)

    def _send_relay(
        self, owner: str, conn: ConnId, session: Session, hops: int, batch: list[list[Any]]
    ) -> None:
        virtual = self._virtual.get(conn)
        if virtual is not None:  # passing on another node's client: keep its origin
            origin, inc, client, tag = (
                virtual.origin,
                virtual.incarnation,
                virtual.conn,
                virtual.tag,
            )
        else:
            origin, inc, client, tag = self.me, self.incarnation, conn, session.tag
        expiry = session.policy.expiry
        for chunk in _chunks(batch):  # (a peer's frame size is bounded)
            frame = encode(MsgType.PEER_RELAY, origin, inc, client, tag, expiry, hops, chunk)
            if not self.mesh.send_to(owner, frame):
                self.counters["relay_unsent"] += 1

    def _conns_gone(self, conns: list[ConnId]) -> None:
        gone = [c for c in conns if c in self._relayed_conns]
        for conn in conns:
            self._relayed_conns.discard(conn)
        if gone:
            ended = set(gone)
            for owed in [k for k in self._credit if k[0] in ended]:
                del self._credit[owed]
            for key in [k for k in self._pending if k[0] in ended]:
                del self._pending[key]
            self._broadcast(encode(MsgType.PEER_CONN_GONE, self.me, self.incarnation, gone))

    def _broadcast(self, frame: bytes) -> None:
        for peer in self.mesh.live_peers():
            self.mesh.send_to(peer, frame)

    # -- answers for virtual connections (called by the shell's send) ---------
    @property
    def has_virtual(self) -> bool:
        return bool(self._virtual)

    def is_virtual(self, conn: ConnId) -> bool:
        return conn in self._virtual

    def send_back(self, out: list[Out]) -> None:
        """Answers the core addressed to virtual connections: relay each run
        to the client's node."""
        runs: dict[ConnId, list[list[Any]]] = {}
        for conn, (mtype, fields) in out:
            runs.setdefault(conn, []).append([mtype, *fields])
        for conn, messages in runs.items():
            virtual = self._virtual.get(conn)
            if virtual is None:
                continue
            for chunk in _chunks(messages):
                frame = encode(MsgType.PEER_RELAY_BACK, self.me, virtual.conn, chunk)
                if not self.mesh.send_to(virtual.origin, frame):
                    self.counters["relay_back_unsent"] += 1

    def _virtual_for(self, client: _Client, tag: str, expiry: float) -> ConnId:
        vconn = self._vconn_of.get(client)
        if vconn is None:
            vconn = _VCONN_MARK + next(self._vconn_ids).to_bytes(8, "big")
            self._vconn_of[client] = vconn
            origin, inc, conn = client
            session = Session(holder_of(origin, inc, tag), 0, Policy(expiry), 0.0)
            self._virtual[vconn] = _Virtual(origin, inc, conn, session, tag)
        else:
            session = self._virtual[vconn].session
            if session.policy.expiry != expiry:
                session.policy = Policy(expiry)
        return vconn

    def _forget_virtual(self, client: _Client) -> None:
        vconn = self._vconn_of.pop(client, None)
        if vconn is not None:
            del self._virtual[vconn]
            self._send_out(self.core.forget_conn(vconn, time.monotonic()))

    # -- peer messages -----------------------------------------------------------
    def _on_relay(self, f: tuple[Any, ...], now: float) -> None:
        origin, inc, conn, tag, expiry, hops, raw = f
        if origin not in self._live:
            self.counters["from_strangers"] += 1  # not a member: nothing to serve
            return
        if not (
            0 < len(conn) <= 256 and 0 < len(tag) <= 64 and "/" not in tag and 0 < expiry < 1e9
        ):
            self.counters["bad_relay"] += 1
            return
        if inc < self._known_incarnation(origin) - RESTART_GAP:
            self.counters["stale_relay"] += 1  # from a node's earlier life
            return
        try:
            messages = [check_message(item) for item in raw]
        except DecodeError:
            self.counters["bad_relay"] += 1
            return
        if any(mtype not in RELAYED for mtype, _ in messages):
            self.counters["bad_relay"] += 1
            return
        if origin == self.me:
            # Our own client's messages came back to us (a handover, or hops
            # while views differed): handle them as its, on its connection.
            session = self.core.sessions.by_conn.get(conn)
            if inc != self.incarnation or session is None:
                self.counters["relay_for_gone_client"] += 1
                return
            self._send_out(self.core.handle_relayed(conn, session, messages, hops, now))
            return
        vconn = self._virtual_for((origin, inc, conn), tag, float(expiry))
        session = self._virtual[vconn].session
        self._send_out(self.core.handle_relayed(vconn, session, messages, hops, now))
        if hops >= MAX_HOPS:
            self._sweep_soon()  # kept here whoever owns it: check once views settle

    def _on_relay_back(self, f: tuple[Any, ...], now: float) -> None:
        source, conn, raw = f
        try:
            messages = [check_message(item) for item in raw]
        except DecodeError:
            self.counters["bad_relay"] += 1
            return
        messages = [m for m in messages if m[0] in _BACK]
        if not messages:
            return
        # (one group message for several channels travels as one; credit and
        # give-backs are per channel)
        messages = [
            (MsgType.DELIVER, (channel, [fields[1]]))
            if mtype == MsgType.DELIVER_MANY
            else (mtype, fields)
            for mtype, fields in messages
            for channel in (fields[0] if mtype == MsgType.DELIVER_MANY else [None])
        ]
        for mtype, fields in messages:
            if mtype in (MsgType.ACK, MsgType.ERROR):
                self._pending.pop((conn, fields[0]), None)
            elif mtype == MsgType.DELIVER:
                owed = self._credit.get((conn, fields[0]))
                if owed is not None:
                    owed[0] = source  # (the channel may have moved there)
                    owed[1] = max(0, owed[1] - len(fields[1]))
        if self._client_send(conn, encode_many(messages)):
            return
        # The client has gone: what it was given goes back to its owner.
        back = [
            [MsgType.RETURN, 0, fields[0], fields[1], 1]
            for mtype, fields in messages
            if mtype == MsgType.DELIVER
        ]
        if back:
            session_tag = self.core.sessions.by_conn.get(conn)
            tag = session_tag.tag if session_tag is not None else "gone"
            frame = encode(MsgType.PEER_RELAY, self.me, self.incarnation, conn, tag, 60.0, 1, back)
            self.mesh.send_to(source, frame)
            # (after the returns: the source forgets this client for good)
            gone = encode(MsgType.PEER_CONN_GONE, self.me, self.incarnation, [conn])
            self.mesh.send_to(source, gone)
        self._send_out(self.core.undeliverable(conn, [], now))

    def _on_conn_gone(self, f: tuple[Any, ...], _now: float) -> None:
        origin, inc, conns = f
        for conn in conns:
            if isinstance(conn, bytes):
                self._forget_virtual((origin, inc, conn))

    def _on_holder_gone(self, f: tuple[Any, ...], _now: float) -> None:
        origin, inc, tags = f
        for tag in tags[:100_000]:
            if isinstance(tag, str):
                self.core.groups.drop_holder(holder_of(origin, inc, tag))

    def _on_handoff(self, f: tuple[Any, ...], now: float) -> None:
        origin, channels, members = f
        if origin not in self._live:
            self.counters["from_strangers"] += 1
            return
        self._send_out(self.core.adopt(origin, channels, members, now))
        self._sweep_soon()  # (views may differ: pass on what is not ours)

    def _on_ask(self, f: tuple[Any, ...], now: float) -> None:
        qid, origin, kind, arg = f
        if origin not in self._live:
            self.counters["from_strangers"] += 1
            return
        result: list[str] = []
        if kind == "flush":
            self._send_out(self.core.clear(arg))
        elif kind == "members":
            result = self.core.groups.members(arg, now)
        else:
            self.counters["bad_ask"] += 1
            return
        self.mesh.send_to(origin, encode(MsgType.PEER_ANSWER, qid, self.me, result))

    def _on_answer(self, f: tuple[Any, ...], _now: float) -> None:
        qid, source, result = f
        ask = self._asks.get(qid)
        if ask is None:
            return
        ask.waiting.discard(source)
        ask.result.update(r for r in result if isinstance(r, str))
        if not ask.waiting:
            self._answer(qid)

    def _on_load(self, f: tuple[Any, ...], _now: float) -> None:
        origin, load = f
        if origin in self._live and origin != self.me:
            self.loads[origin] = {
                k: v
                for k, v in load.items()
                if k in ("channels", "queued", "drops")
                and (isinstance(v, int) or (isinstance(v, dict) and len(v) < 64))
            }

    # -- cluster-wide requests -----------------------------------------------------
    def _ask(self, conn: ConnId, req: int, kind: str, arg: str, local: list[str]) -> None:
        qid = next(self._ask_ids)
        peers = set(self.mesh.live_peers())
        self._asks[qid] = _Ask(conn, req, kind, peers, time.monotonic() + self.timeout, set(local))
        frame = encode(MsgType.PEER_ASK, qid, self.me, kind, arg)
        for peer in peers:
            self.mesh.send_to(peer, frame)
        if not peers:
            self._answer(qid)

    def _answer(self, qid: int) -> None:
        ask = self._asks.pop(qid)
        reply: Message = (
            (MsgType.ACK, (ask.req, 1))
            if ask.kind == "flush"
            else (MsgType.GROUP_INFO_REPLY, (ask.req, sorted(ask.result)))
        )
        self._send_out([(ask.conn, reply)])

    # -- membership changes ----------------------------------------------------------
    def _known_incarnation(self, node: str) -> int:
        member = self.mesh.table.member(node) if self.mesh.table is not None else None
        return member.incarnation if member is not None else 0

    def _on_member_event(self, event: MemberEvent) -> None:
        if event.node == self.me:
            return
        changed = self._refresh()
        if changed and self._sweep_at is not None:
            self._sweep_soon()  # the views move: wait for them to settle
        if event.kind in (EventKind.DEAD, EventKind.LEFT):
            self._node_gone(event.node, died=event.kind == EventKind.DEAD)
        elif event.kind in (EventKind.JOINED, EventKind.ALIVE, EventKind.UPDATED):
            # A restarted node: its earlier life's clients are gone. (A node
            # that refuted a suspicion is still in the same life.)
            self._forget_clients(event.node, below=event.incarnation - RESTART_GAP)
        if changed:
            self.handoff(full=True)

    def _forget_clients(self, node: str, below: int | None = None) -> None:
        """Forget ``node``'s clients (those of incarnations before ``below``):
        their credit here and the memberships they hold."""
        for client in [k for k in self._vconn_of if k[0] == node]:
            if below is None or client[1] < below:
                self._forget_virtual(client)
        for holder in self.core.groups.holders(node + "@"):
            inc = holder[len(node) + 1 :].split("/", 1)[0]
            if below is None or not inc.isdigit() or int(inc) < below:
                self.core.groups.drop_holder(holder)

    def _node_gone(self, node: str, died: bool) -> None:
        # (a node that left cleanly handed its queues over first)
        lost = int(self.loads.pop(node, {}).get("queued", 0))
        if lost and died:
            self.counters["lost_in_dead_nodes"] += lost
            log.warning("node %s gone with %d queued messages (lost)", node, lost)
        self._forget_clients(node)
        if died:
            self._regrant(node)
        out: list[Out] = []
        for key, (owner, _, mtype) in list(self._pending.items()):
            if owner == node:
                del self._pending[key]
                out.append(self._unanswered(key, mtype))
        for qid, ask in list(self._asks.items()):
            ask.waiting.discard(node)
            if not ask.waiting:
                self._answer(qid)
        self._send_out(out)

    def _regrant(self, node: str) -> None:
        """Credit our clients held at ``node``, which died with it: grant it
        to the channels' new owners, so waiting receives are served again.
        (A node that leaves cleanly hands its receivers' credit over itself.)"""
        now = time.monotonic()
        relays: list[tuple[str, ConnId, Session, Message, int]] = []
        for (conn, channel), owed in list(self._credit.items()):
            if owed[0] != node:
                continue
            session = self.core.sessions.by_conn.get(conn)
            if session is None or owed[1] <= 0:
                del self._credit[(conn, channel)]
                continue
            owner = self.route(channel)
            if owner is None:  # ours now: grant it here
                del self._credit[(conn, channel)]
                self._send_out(
                    [
                        (c, (MsgType.DELIVER, (ch, items)))
                        for c, ch, items in self.core.queues.grant(conn, channel, owed[1], now)
                    ]
                )
            elif owner:
                # (MAX_HOPS: the new owner keeps it even if it has not yet
                # seen the death itself, instead of passing it to the dead)
                grant = (MsgType.RECV, (channel, owed[1]))
                relays.append((owner, conn, session, grant, MAX_HOPS))
                del self._credit[(conn, channel)]  # (re-counted as it is relayed)
        if relays:
            self.counters["credit_regranted"] += len(relays)
            self._relay(relays)

    def _unanswered(self, key: tuple[ConnId, int], mtype: MsgType) -> Out:
        """The answer for a relayed request whose owner never answered: a
        send counts as lost (at-most-once); anything else is done."""
        if mtype == MsgType.SEND:
            self.counters["lost_unanswered"] += 1
            return (key[0], (MsgType.ACK, (key[1], 0)))
        return (key[0], (MsgType.ACK, (key[1], 1)))

    def handoff(self, full: bool = False) -> None:
        """Give every queue (and receivers' credit) this node holds for a
        name another live node owns to that owner; ``full``: memberships too
        (they only move when ownership does)."""
        core, now = self.core, time.monotonic()
        channels: dict[str, list[list[Any]]] = {}
        members: dict[str, list[list[Any]]] = {}
        grants: list[tuple[str, ConnId, Session, Message, int]] = []
        for name in list(core.queues.channels):
            owner = self.route(name)
            if owner is None:
                continue
            items, credits = core.queues.take(name, now)
            if not owner:  # nobody owns it any more
                core.counters.dropped_dead_owner += len(items)
                continue
            if items:
                channels.setdefault(owner, []).append([name, [list(i) for i in items]])
            for conn, credit in credits.items():
                session = self._session_of(conn)
                if session is not None:
                    # (MAX_HOPS: the new owner keeps it, whatever its view yet)
                    grant = (MsgType.RECV, (name, credit))
                    grants.append((owner, conn, session, grant, MAX_HOPS))
        if full:
            for group, held in list(core.groups.groups.items()):
                for channel, m in list(held.items()):
                    owner = self.route(channel)
                    if not owner:
                        continue
                    holder = m.holder
                    if "/" not in holder:  # a session of this node
                        self._remote_holders.add(holder)
                        holder = holder_of(self.me, self.incarnation, holder)
                    ttl = m.expires_at - now
                    if ttl > 0:
                        members.setdefault(owner, []).append(
                            [group, channel, holder, ttl, m.capacity]
                        )
                    core.groups.discard(group, channel)
        for owner in {*channels, *members}:
            entries = channels.get(owner, [])
            self.counters["handed_off"] += sum(len(c[1]) for c in entries)
            pieces = _handoff_pieces(entries)
            moved = members.get(owner, [])
            for i, piece in enumerate(pieces or [[]]):  # (memberships go with the first)
                frame = encode(MsgType.PEER_HANDOFF, self.me, piece, moved if i == 0 else [])
                self.mesh.send_to(owner, frame)
        if grants:  # after the messages, on the same pipe: they arrive first
            self._relay(grants)

    def _sweep_soon(self) -> None:
        """Hand over strays once the views have been still for ``SWEEP_DELAY``
        (sooner, a node not yet told of a death could be handed them)."""
        self._sweep_at = time.monotonic() + SWEEP_DELAY

    def _session_of(self, conn: ConnId) -> Session | None:
        virtual = self._virtual.get(conn)
        if virtual is not None:
            return virtual.session
        return self.core.sessions.by_conn.get(conn)

    # -- timers ----------------------------------------------------------------------
    async def _timers(self) -> None:
        next_load = 0.0
        while True:
            await asyncio.sleep(min(self.load_interval, self.timeout) / 4)
            try:
                next_load = self._tick(next_load)
            except Exception:  # a bug must cost one tick, never the timers
                self.counters["timer_errors"] += 1
                log.exception("routing timers: error (carrying on)")

    def _tick(self, next_load: float) -> float:
        """Timeouts, load reports, the stray sweep; returns the next load report time."""
        now = time.monotonic()
        out = [
            self._unanswered(key, mtype)
            for key, (_, deadline, mtype) in list(self._pending.items())
            if deadline <= now and self._pending.pop(key)
        ]
        if out:
            log.warning("%d relayed requests unanswered (owner died?)", len(out))
            self._send_out(out)
        for qid in [q for q, a in self._asks.items() if a.deadline <= now]:
            log.warning(
                "cluster-wide %s: no answer from %s",
                self._asks[qid].kind,
                ", ".join(sorted(self._asks[qid].waiting)),
            )
            self._answer(qid)
        if now >= next_load:
            next_load = now + self.load_interval
            self._broadcast(encode(MsgType.PEER_LOAD, self.me, self.load()))
        if self._sweep_at is not None and now >= self._sweep_at:
            self._sweep_at = None
            self.handoff(full=True)  # what a race left here goes to its owner
        return next_load


#: Bytes of user payload put in one handed-over frame: far under
#: a peer's frame limit (``max_frame_size``, 8 MiB by default), whatever the
#: batch; one message bigger than this still travels alone.
CHUNK_BYTES = 1024 * 1024


def _chunks(messages: list[list[Any]]) -> list[list[list[Any]]]:
    """``[type, field...]`` messages cut into runs of bounded size
    (``protocol.split_batches``'s rule)."""
    runs = split_batches([(MsgType(m[0]), tuple(m[1:])) for m in messages])
    return [[[mtype, *fields] for mtype, fields in run] for run in runs]


def _handoff_pieces(entries: list[list[Any]]) -> list[list[list[Any]]]:
    """``[[channel, items], ...]`` cut into frames of about ``CHUNK_BYTES``.
    The receiver puts each handed-over piece of a channel *before* what it
    holds, so a channel cut in several pieces sends its last piece first."""
    flat: list[list[Any]] = []
    for channel, items in entries:
        pieces: list[list[Any]] = [[]]
        size = 0
        for item in items:
            if pieces[-1] and size + len(item[0]) > CHUNK_BYTES:
                pieces.append([])
                size = 0
            pieces[-1].append(item)
            size += len(item[0]) + 24
        flat += [[channel, piece] for piece in reversed(pieces)]
    frames: list[list[list[Any]]] = []
    size = CHUNK_BYTES + 1
    for entry in flat:
        approx = 64 + sum(len(item[0]) + 24 for item in entry[1])
        if size + approx > CHUNK_BYTES:
            frames.append([])
            size = 0
        frames[-1].append(entry)
        size += approx
    return frames
