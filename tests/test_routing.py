"""Routing's bookkeeping, pure: a fake member table and a real ``NodeCore``.

What a node keeps for other nodes' clients (virtual connections, memberships
held as ``node@incarnation/session``) must survive that node refuting a
suspicion (its incarnation +1) and go when it restarts (a new start time);
relays from its earlier life are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from zchannels.node.core import ClusterWork, CoreSettings, NodeCore
from zchannels.node.effects import Fx
from zchannels.node.membership import EventKind, Member, MemberEvent, State
from zchannels.node.peer_messages import Relay, RelayBack
from zchannels.node.routing import RESTART_GAP, Routing
from zchannels.node.sessions import Policy

from zchannels.protocol import Message, MsgType

START = 1_795_000_000_000  # a start incarnation (ms since the epoch)


@dataclass
class FakeTable:
    """The member table as routing reads it (live members, incarnations)."""

    incarnations: dict[str, int]
    node_id: str = "n1"
    incarnation: int = START

    def live(self) -> list[str]:
        return sorted(self.incarnations)

    def member(self, node: str) -> Member | None:
        inc = self.incarnations.get(node)
        return None if inc is None else Member(node, State.ALIVE, inc, f"tcp://{node}:1")


def routing() -> tuple[Routing, NodeCore, FakeTable]:
    core = NodeCore(CoreSettings("n1", "aaaaaa", str(START), 3.0, 1 << 20))
    table = FakeTable({"n1": START, "n2": START + 7})
    r = Routing(core, table)  # type: ignore[arg-type]
    core.route = lambda channel: None  # this node owns everything here
    return r, core, table


def relay(r: Routing, inc: int, *messages: Message) -> Fx:
    fx = Fx()
    r.handle(Relay("n2", inc, b"client-1", "tagtagtag0", 60.0, 1, messages), 0.0, fx)
    return fx


def test_a_refuted_suspicion_keeps_relayed_state_and_a_restart_drops_it() -> None:
    r, core, table = routing()
    relay(r, START, (MsgType.RECV, ("asgi|c", 5)))
    relay(r, START, (MsgType.GROUP_ADD, (1, "asgi|g", "asgi|c", 60.0, 10)))
    assert len(r._virtual) == 1 and core.groups.count("asgi|g") == 1
    # n2 refuted a suspicion: same life, incarnation + 1
    r.on_member_event(MemberEvent(EventKind.UPDATED, "n2", "tcp://n2:1", START + 8), 0.0, Fx())
    assert len(r._virtual) == 1 and core.groups.count("asgi|g") == 1
    relay(r, START, (MsgType.RECV, ("asgi|c", 1)))  # its relays still count
    assert r.counters["stale_relay"] == 0
    # n2 restarted: a new start time, its earlier clients are gone
    restarted = START + 60_000
    table.incarnations["n2"] = restarted
    r.on_member_event(MemberEvent(EventKind.UPDATED, "n2", "tcp://n2:1", restarted), 0.0, Fx())
    assert r._virtual == {} and core.groups.count("asgi|g") == 0
    relay(r, START, (MsgType.RECV, ("asgi|c", 1)))  # a frame from its earlier life
    assert r.counters["stale_relay"] == 1 and r._virtual == {}
    assert RESTART_GAP < 60_000


def test_relays_from_non_members_are_counted_and_ignored() -> None:
    r, _, _ = routing()
    fx = Fx()
    r.handle(Relay("stranger", START, b"c", "tagtagtag0", 60.0, 1, ()), 0.0, fx)
    assert r.counters["from_strangers"] == 1
    assert r._virtual == {} and fx.out == [] and fx.peers == []


def test_a_relayed_send_is_answered_back_through_the_clients_node() -> None:
    r, core, _ = routing()
    fx = relay(r, START, (MsgType.SEND, (4, "asgi|c", b"p", 10)))
    assert core.queues.length("asgi|c") == 1
    [(vconn, (mtype, fields))] = fx.out
    assert r.is_virtual(vconn) and mtype == MsgType.ACK and fields[0] == 4
    back = Fx()
    r.send_back(fx.out, back)
    assert back.peers == [("n2", RelayBack("n1", b"client-1", ((MsgType.ACK, fields),)))]


def test_an_unanswered_relay_is_answered_at_its_deadline_and_counted() -> None:
    r, core, _ = routing()
    core.route = lambda channel: "n2"
    work = ClusterWork()
    core.sessions.hello(b"A", "sessiontag", 1, Policy(60.0), 0.0)
    core.handle(b"A", [(MsgType.SEND, (9, "asgi|far", b"x", 10))], 0.0, work)
    fx = Fx()
    r.after_core(work, 0.0, fx)
    [(owner, msg)] = fx.peers
    assert owner == "n2" and isinstance(msg, Relay)
    assert r.next_deadline() <= r.timeout
    late = Fx()
    r.tick(r.timeout, late)
    assert (b"A", (MsgType.ACK, (9, 0))) in late.out
    assert r.counters["lost_unanswered"] == 1
