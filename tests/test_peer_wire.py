"""Member-table messages survive the wire unchanged; bad updates are DecodeErrors."""

from __future__ import annotations

import pytest
from zchannels.node.membership import (
    Ack,
    Gossip,
    Nack,
    Ping,
    PingReq,
    Refuse,
    State,
    Sync,
    Update,
)
from zchannels.node.membership import Message as PeerMessage
from zchannels.node.peer_wire import from_wire, to_wire

from zchannels.protocol import DecodeError, MsgType, decode, encode

UP = Update("n1", "tcp://127.0.0.1:7701", 1795492554600, State.SUSPECT, "n2")
MESSAGES: list[PeerMessage] = [
    Ping(1, "n1", "tcp://a:1", "n2", (UP,)),
    PingReq(2, "n1", "tcp://a:1", "n3", "tcp://c:3", ()),
    Ack(3, "n2", (UP, UP)),
    Nack(4, "n3"),
    Gossip("n1", (UP,)),
    Sync("zc", 1, "n1", "tcp://a:1", True, (UP,)),
    Sync("zc", 1, "n1", "tcp://a:1", False, ()),
    Refuse("zc", 1, "n9", "cluster 'other' is not 'zc'"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_roundtrip(msg: PeerMessage) -> None:
    mtype, fields = to_wire(msg)
    [(decoded_type, decoded)] = decode(encode(mtype, *fields))
    assert from_wire(decoded_type, decoded) == msg


@pytest.mark.parametrize(
    "update",
    [
        ["n1", "tcp://a:1", 5, "zombie", "n2"],
        ["n1", "tcp://a:1", 5, "alive"],
        ["n1", "tcp://a:1", True, "alive", "n2"],
        ["n1", "tcp://a:1", "5", "alive", "n2"],
        [1, "tcp://a:1", 5, "alive", "n2"],
        ["n1", "tcp://a:1", 5, ["alive"], "n2"],
        "n1",
    ],
)
def test_bad_updates_are_decode_errors(update: object) -> None:
    [(mtype, fields)] = decode(encode(MsgType.PEER_GOSSIP, "n1", [update]))
    with pytest.raises(DecodeError):
        from_wire(mtype, fields)


def test_client_types_are_not_peer_messages() -> None:
    with pytest.raises(DecodeError):
        from_wire(MsgType.PING, ())
