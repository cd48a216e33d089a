"""A rolling upgrade: nodes of two versions in one cluster lose nothing
(``ClusterNode``, pure: two nodes, a hand-run network).

What an operator sees: node B still runs a version from before producer
stamps (it does not know PEER_RELAY_STAMPED 64, PEER_HANDOFF_STAMPED 65 nor
PEER_RELAY_BACK_STAMPED 66, and drops a message of such a type as
undecodable, with every send or delivery it carries); node A runs this one.
Processes on both send to channels the other node owns and receive from
them. Every message arrives, in order; B is sent none of the types it
cannot read; A counts the stamps it left out for B (``stamps_stripped``),
which shows a mixed cluster in its status.

B is played by this version with its hello saying it reads nothing beyond
the types every version with links reads (``links.features = 0``, what an
older version's hello says), behind a network that takes away, as B's
decoder would, every message of a type it does not know. A node of the
version between (its hello says ``FEATURE_STAMPS`` alone) is sent a
client's give-back without the stamps of what it gives back, which it
would refuse as malformed (``FEATURE_RETURN_STAMPS``).
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from purenet import PureNet
from purenet import make_node as make
from zchannels.node.cluster import ClusterNode
from zchannels.node.peer_messages import Relay
from zchannels.node.peer_wire import FEATURE_RETURN_STAMPS, FEATURE_STAMPS, FEATURES, decode_peer

from zchannels.protocol import Message, MsgType, encode, encode_batch

A_ADDR, B_ADDR = "tcp://10.0.0.1:7701", "tcp://10.0.0.2:7701"
DELAY = 0.0005  # one way, every peer link
CONN_A, CONN_B = b"client-of-a", b"client-of-b"

#: The types a node from before the stamps does not know.
STAMPED = {
    MsgType.PEER_RELAY_STAMPED,
    MsgType.PEER_HANDOFF_STAMPED,
    MsgType.PEER_RELAY_BACK_STAMPED,
}


def types_in(frame: bytes) -> list[int]:
    """The type numbers a frame carries, read as any version reads them."""
    if frame[1] != MsgType.BATCH:
        return [frame[1]]
    return [item[0] for item in msgpack.unpackb(frame[2:])]


class Net(PureNet):
    """Peer frames delivered after ``DELAY`` in order; ticks when due; what
    clients are sent is recorded. Frames to an ``old`` node lose the
    messages it cannot decode (``refused``), as its decoder would drop
    them: a frame of one such message whole, a link frame's such message
    alone (its link header is taken: the message is lost for good)."""

    def __init__(self, nodes: dict[str, ClusterNode], old: set[str]) -> None:
        super().__init__(nodes, DELAY)
        self.old = old
        #: (to, type number) of every peer message sent
        self.sent: list[tuple[str, int]] = []
        self.refused: list[tuple[str, int]] = []

    def sending(self, to: str, frame: bytes) -> bytes | None:
        self.sent.extend((to, t) for t in types_in(frame))
        return frame

    def reading(self, to: str, frame: bytes) -> bytes | None:
        if to not in self.old or not set(types_in(frame)) & STAMPED:
            return frame
        self.refused.extend((to, t) for t in types_in(frame) if t in STAMPED)
        if frame[1] != MsgType.BATCH:
            return None
        kept = [(i[0], tuple(i[1:])) for i in msgpack.unpackb(frame[2:]) if i[0] not in STAMPED]
        if len(kept) == 1:
            return encode(MsgType(kept[0][0]), *kept[0][1])
        return encode_batch([(MsgType(t), f) for t, f in kept])

    def client(self, address: str, conn: bytes, messages: list[Message]) -> None:
        self.apply(address, self.nodes[address].client(conn, messages, self.now))

    def delivered(self, conn: bytes, channel: str) -> list[bytes]:
        return [
            item[0]
            for _, _, to, (mtype, fields) in self.to_clients
            if to == conn and mtype == MsgType.DELIVER and fields[0] == channel
            for item in fields[1]
        ]


def owned_by(node: ClusterNode, owner: str) -> str:
    """A channel name ``owner`` owns (as ``node`` sees the cluster)."""
    routing = node.routing
    assert routing is not None
    return next(
        name
        for name in (f"asgi.q{i}" for i in range(1000))
        if routing.ownership.owner(name) == owner
    )


def exchange(b_features: int | None) -> tuple[Net, ClusterNode, dict[str, list[bytes]]]:
    """Nodes a (this version) and b (its hello says ``b_features``; None:
    this version too), joined. A process on each receives a channel the
    other node owns, and both send to both channels, interleaved; what
    each process received, by channel."""
    a = make("a", A_ADDR, (B_ADDR,))
    b = make("b", B_ADDR, (A_ADDR,))
    old = set()
    if b_features is not None:
        b.links.features = b_features
        old.add(B_ADDR)
    net = Net({A_ADDR: a, B_ADDR: b}, old)
    for address, node in net.nodes.items():
        net.start(address, node)
    net.run(2 * b.config.join_timeout)
    assert a.table is not None and sorted(a.table.live()) == ["a", "b"]
    on_b, on_a = owned_by(a, "b"), owned_by(a, "a")
    assert owned_by(b, "b") == on_b and owned_by(b, "a") == on_a

    net.client(A_ADDR, CONN_A, [(MsgType.HELLO, ("sessionaaa", 7, [60.0]))])
    net.client(B_ADDR, CONN_B, [(MsgType.HELLO, ("sessionbbb", 8, [60.0]))])
    net.run(net.now + 0.05)
    # (each receives a channel the other node owns: deliveries relayed back)
    net.client(A_ADDR, CONN_A, [(MsgType.RECV, (on_b, 100))])
    net.client(B_ADDR, CONN_B, [(MsgType.RECV, (on_a, 100))])
    net.run(net.now + 0.05)
    for i in range(10):
        for address, conn, req in ((A_ADDR, CONN_A, 2 * i + 1), (B_ADDR, CONN_B, 2 * i + 2)):
            who = b"a" if address == A_ADDR else b"b"
            sends: list[Message] = [
                (MsgType.SEND, (req * 10, on_b, who + b"%d" % i, 100)),
                (MsgType.SEND, (req * 10 + 1, on_a, who + b"%d" % i, 100)),
            ]
            net.client(address, conn, sends)
        net.run(net.now + 0.01)
    net.run(net.now + 2.0)
    got = {
        "a takes from b": net.delivered(CONN_A, on_b),
        "b takes from a": net.delivered(CONN_B, on_a),
    }
    return net, a, got


def _from(who: bytes, got: list[bytes]) -> list[bytes]:
    return [m for m in got if m.startswith(who)]


def test_an_older_node_exchanges_sends_and_deliveries_with_this_version_losing_none() -> None:
    net, a, got = exchange(b_features=0)
    # Nothing an older node cannot read went to it, so nothing was lost
    # there as undecodable.
    assert net.refused == []
    assert not {t for to, t in net.sent if to == B_ADDR} & STAMPED
    # Every message sent arrived, each sender's in the order it sent them,
    # on the channel either node owns.
    for got_here in got.values():
        assert len(got_here) == 20
        for who in (b"a", b"b"):
            assert _from(who, got_here) == [who + b"%d" % i for i in range(10)]
    # The operator sees the stamps left out for the older node.
    assert a.links.counters["stamps_stripped"] > 0


def test_between_two_nodes_of_this_version_the_stamps_travel() -> None:
    """The same exchange when B is upgraded: the stamped forms go both ways
    (the test above does exercise what an older node could not read), and
    none is left out."""
    net, a, got = exchange(b_features=None)
    sent_to_b = {t for to, t in net.sent if to == B_ADDR}
    assert {MsgType.PEER_RELAY_STAMPED, MsgType.PEER_RELAY_BACK_STAMPED} <= sent_to_b
    assert all(len(v) == 20 for v in got.values())
    assert a.links.counters["stamps_stripped"] == 0


def _returns_to(net: Net, to: str, frames: list[tuple[str, bytes]]) -> list[tuple[Any, ...]]:
    """The fields of every RETURN relayed to ``to`` in ``frames``."""
    return [
        fields
        for dest, frame in frames
        if dest == to
        for msg in decode_peer(frame)
        if isinstance(msg, Relay)
        for mtype, fields in msg.messages
        if mtype == MsgType.RETURN
    ]


@pytest.mark.parametrize("b_features", [FEATURE_STAMPS, FEATURES])
def test_a_give_back_relayed_to_a_node_that_reads_no_return_stamps_goes_without_them(
    b_features: int,
) -> None:
    """B runs the version before ``FEATURE_RETURN_STAMPS`` (its hello says
    ``FEATURE_STAMPS`` alone; a RETURN with a fifth field is malformed to
    it): a's client gives back what b handed it, and the relayed RETURN
    reaches b without the stamps, which queues it again and hands it to
    the client once more, in order. To a b of this version they travel."""
    a = make("a", A_ADDR, (B_ADDR,))
    b = make("b", B_ADDR, (A_ADDR,))
    b.links.features = b_features
    frames: list[tuple[str, bytes]] = []

    class Recording(Net):
        def sending(self, to: str, frame: bytes) -> bytes | None:
            frames.append((to, frame))
            return super().sending(to, frame)

    net = Recording({A_ADDR: a, B_ADDR: b}, set())
    for address, node in net.nodes.items():
        net.start(address, node)
    net.run(2 * b.config.join_timeout)
    on_b = owned_by(a, "b")
    net.client(A_ADDR, CONN_A, [(MsgType.HELLO, ("sessionaaa", 7, [60.0]))])
    net.client(B_ADDR, CONN_B, [(MsgType.HELLO, ("sessionbbb", 8, [60.0]))])
    net.run(net.now + 0.05)
    sends: list[Message] = [(MsgType.SEND, (i + 1, on_b, b"%d" % i, 100)) for i in range(5)]
    net.client(B_ADDR, CONN_B, sends)
    net.run(net.now + 0.05)
    net.client(A_ADDR, CONN_A, [(MsgType.RECV, (on_b, 100))])
    net.run(net.now + 0.05)
    handed = [
        [p, 50.0, seq]
        for _, _, to, (mtype, fields) in net.to_clients
        if to == CONN_A and mtype == MsgType.DELIVER
        for p, _ttl, seq in fields[1]
    ]
    assert [p for p, _, _ in handed] == [b"%d" % i for i in range(5)]
    net.client(A_ADDR, CONN_A, [(MsgType.RETURN, (9, on_b, handed, 1))])
    net.run(net.now + 0.05)
    (fields,) = _returns_to(net, B_ADDR, frames)
    if b_features & FEATURE_RETURN_STAMPS:
        assert [s[0] for s in fields[4]] == [0, 1, 2, 3, 4]
        assert a.links.counters["stamps_stripped"] == 0
    else:
        assert len(fields) == 4
        assert a.links.counters["stamps_stripped"] == 5
    net.to_clients.clear()
    net.client(A_ADDR, CONN_A, [(MsgType.RECV, (on_b, 100))])
    net.run(net.now + 0.05)
    assert net.delivered(CONN_A, on_b) == [b"%d" % i for i in range(5)]
