"""Member-table messages on the wire: ``membership`` dataclasses <-> frames.

Owns: the mapping between the pure member table's message dataclasses and
the peer message types of ``zchannels.protocol`` (whose field layouts they
must match), and the checks on what the generic decoder cannot see (each
gossiped update's shape and state). Every malformed input is a
``DecodeError``, like any other frame.
"""

from __future__ import annotations

import re
from typing import Any

from zchannels.protocol import DecodeError, Message, MsgType

from .membership import Ack, Gossip, Nack, Ping, PingReq, Refuse, State, Sync, Update
from .membership import Message as PeerMessage

#: Most updates one message may carry (a full table of a large cluster).
MAX_UPDATES = 10_000
_STATES = {s.value: s for s in State}


def to_wire(msg: PeerMessage) -> Message:
    match msg:
        case Ping():
            return MsgType.PEER_PING, (
                msg.seq,
                msg.source,
                msg.source_address,
                msg.target,
                _updates(msg.gossip),
            )
        case PingReq():
            return MsgType.PEER_PING_REQ, (
                msg.seq,
                msg.source,
                msg.source_address,
                msg.target,
                msg.target_address,
                _updates(msg.gossip),
            )
        case Ack():
            return MsgType.PEER_ACK, (msg.seq, msg.source, _updates(msg.gossip))
        case Nack():
            return MsgType.PEER_NACK, (msg.seq, msg.source)
        case Gossip():
            return MsgType.PEER_GOSSIP, (msg.source, _updates(msg.gossip))
        case Sync():
            return MsgType.PEER_SYNC, (
                msg.cluster,
                msg.version,
                msg.source,
                msg.source_address,
                int(msg.reply),
                _updates(msg.members),
            )
        case Refuse():
            return MsgType.PEER_REFUSE, (msg.cluster, msg.version, msg.source, msg.reason)
    raise TypeError(f"not a peer message: {msg!r}")  # pragma: no cover


#: What a peer address must look like: a TCP endpoint (host or [IPv6], port).
_ADDRESS = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]{1,253}):[0-9]{1,5}")


def _address(value: str) -> str:
    if not _ADDRESS.fullmatch(value):
        raise DecodeError("field", f"not a peer address: {value[:80]!r}")
    return value


def from_wire(mtype: MsgType, f: tuple[Any, ...]) -> PeerMessage:
    """A decoded peer message (fields already type-checked by ``decode``;
    addresses checked here, since the node connects to them)."""
    if mtype == MsgType.PEER_PING:
        return Ping(f[0], f[1], _address(f[2]), f[3], _parse(f[4]))
    if mtype == MsgType.PEER_PING_REQ:
        return PingReq(f[0], f[1], _address(f[2]), f[3], _address(f[4]), _parse(f[5]))
    if mtype == MsgType.PEER_ACK:
        return Ack(f[0], f[1], _parse(f[2]))
    if mtype == MsgType.PEER_NACK:
        return Nack(f[0], f[1])
    if mtype == MsgType.PEER_GOSSIP:
        return Gossip(f[0], _parse(f[1]))
    if mtype == MsgType.PEER_SYNC:
        return Sync(f[0], f[1], f[2], _address(f[3]), bool(f[4]), _parse(f[5]))
    if mtype == MsgType.PEER_REFUSE:
        return Refuse(f[0], f[1], f[2], f[3])
    raise DecodeError("type", f"{mtype.name} is not a peer message")


def _updates(updates: tuple[Update, ...]) -> list[list[Any]]:
    return [[u.node, u.address, u.incarnation, u.state.value, u.source] for u in updates]


def _parse(raw: list[Any]) -> tuple[Update, ...]:
    if len(raw) > MAX_UPDATES:
        raise DecodeError("field", f"{len(raw)} updates in one message")
    out = []
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 5
            or not isinstance(item[0], str)
            or not isinstance(item[1], str)
            or not isinstance(item[2], int)
            or isinstance(item[2], bool)
            or not isinstance(item[3], str)
            or item[3] not in _STATES
            or not isinstance(item[4], str)
        ):
            raise DecodeError("field", f"bad member update {item!r:.80}")
        out.append(Update(item[0], _address(item[1]), item[2], _STATES[item[3]], item[4]))
    return tuple(out)
