"""Routing's bookkeeping without sockets: a fake mesh and a real ``NodeCore``.

What a node keeps for other nodes' clients (virtual connections, memberships
held as ``node@incarnation/session``) must survive that node refuting a
suspicion (its incarnation +1) and go when it restarts (a new start time);
relays from its earlier life are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zchannels.node.core import CoreSettings, NodeCore
from zchannels.node.membership import EventKind, Member, MemberEvent, State
from zchannels.node.routing import RESTART_GAP, Routing

from zchannels.protocol import MsgType

START = 1_795_000_000_000  # a start incarnation (ms since the epoch)


@dataclass
class FakeTable:
    incarnations: dict[str, int]

    def live(self) -> list[str]:
        return sorted(self.incarnations)

    def member(self, node: str) -> Member | None:
        inc = self.incarnations.get(node)
        return None if inc is None else Member(node, State.ALIVE, inc, f"tcp://{node}:1")


@dataclass
class FakeMesh:
    table: FakeTable
    node_id: str = "n1"
    incarnation: int = START
    handlers: dict[Any, Any] = field(default_factory=dict)
    listeners: list[Any] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    sent: list[tuple[str, bytes]] = field(default_factory=list)

    def live_peers(self) -> list[str]:
        return [n for n in self.table.live() if n != self.node_id]

    def send_to(self, node: str, frame: bytes) -> bool:
        self.sent.append((node, frame))
        return True


def routing() -> tuple[Routing, NodeCore, FakeMesh]:
    core = NodeCore(CoreSettings("n1", "aaaaaa", str(START), 3.0, 1 << 20))
    core.clustered = True
    mesh = FakeMesh(FakeTable({"n1": START, "n2": START + 7}))
    r = Routing(mesh, core, lambda out: None, lambda conn, frame: True)  # type: ignore[arg-type]
    core.route = lambda channel: None  # this node owns everything here
    r._refresh()
    return r, core, mesh


def relay(r: Routing, inc: int, *messages: list[Any]) -> None:
    r._on_relay(("n2", inc, b"client-1", "tagtagtag0", 60.0, 1, list(messages)), 0.0)


def test_a_refuted_suspicion_keeps_relayed_state_and_a_restart_drops_it() -> None:
    r, core, _ = routing()
    relay(r, START, [MsgType.RECV, "asgi|c", 5])
    relay(r, START, [MsgType.GROUP_ADD, 1, "asgi|g", "asgi|c", 60.0, 10])
    assert len(r._virtual) == 1 and core.groups.count("asgi|g") == 1
    # n2 refuted a suspicion: same life, incarnation + 1
    r._on_member_event(MemberEvent(EventKind.UPDATED, "n2", "tcp://n2:1", START + 8))
    assert len(r._virtual) == 1 and core.groups.count("asgi|g") == 1
    relay(r, START, [MsgType.RECV, "asgi|c", 1])  # its relays still count
    assert r.counters["stale_relay"] == 0
    # n2 restarted: a new start time, its earlier clients are gone
    restarted = START + 60_000
    r.mesh.table.incarnations["n2"] = restarted  # type: ignore[attr-defined]
    r._on_member_event(MemberEvent(EventKind.UPDATED, "n2", "tcp://n2:1", restarted))
    assert r._virtual == {} and core.groups.count("asgi|g") == 0
    relay(r, START, [MsgType.RECV, "asgi|c", 1])  # a frame from its earlier life
    assert r.counters["stale_relay"] == 1 and r._virtual == {}
    assert RESTART_GAP < 60_000


def test_relays_from_non_members_and_malformed_relays_are_counted() -> None:
    r, _, _ = routing()
    r._on_relay(("stranger", START, b"c", "tagtagtag0", 60.0, 1, []), 0.0)
    relay(r, START, [MsgType.DELIVER, "asgi|c", []])  # not a client message
    relay(r, START, ["not a message"])
    r._on_relay(("n2", START, b"", "tagtagtag0", 60.0, 1, []), 0.0)  # empty conn
    assert r.counters["from_strangers"] == 1
    assert r.counters["bad_relay"] == 3
    assert r._virtual == {}
