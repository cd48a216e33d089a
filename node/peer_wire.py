"""Every peer message on the wire: layouts, the one codec, every check.

Owns: the field layout of each peer message type (type numbers are
``zchannels.protocol.MsgType``'s, append-only; the layouts live here, with
the node, not in the client protocol), turning the member table's messages
(``membership``) and the cluster's (``peer_messages``) into frames and back,
and every check on what arrives: field types, then shapes the generic
decoder cannot see (gossiped updates, relayed client messages, handed-over
items, digests). Every malformed input is one ``DecodeError``; a message
that leaves ``decode_peer`` is well-formed.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from zchannels.names import valid_wire_channel, valid_wire_group
from zchannels.protocol import (
    DecodeError,
    Message,
    MsgType,
    check_message,
    decode,
    decode_each,
    encode,
    encode_batch,
    specs_of,
)

from .core import MAX_CAPACITY, RELAYED, wire_items
from .membership import Ack, Gossip, Nack, Ping, PingReq, Refuse, State, Sync, Update
from .membership import Message as MemberMessage
from .peer_messages import (
    Answer,
    Ask,
    ClusterMessage,
    ConnGone,
    FanoutsSeen,
    GroupDelta,
    GroupDeltaAck,
    GroupDigest,
    GroupFanout,
    GroupFanoutPassed,
    GroupSlice,
    HandedOver,
    HandedReservation,
    Handoff,
    HolderGone,
    LinkAck,
    LinkProbe,
    LinkSeq,
    LinkState,
    Load,
    Relay,
    RelayBack,
    RelayLost,
    Reservations,
)
from .sessions import valid_duration

PeerMessage = MemberMessage | ClusterMessage

#: What a life reads beyond the peer types every version with links reads,
#: as a bit set said in its hello (``LinkAck`` with ``gen`` 0 carries it in
#: ``upto``; every version of ``links`` since the first ignores a hello's
#: ``upto`` and sends 0, so an older node says "none" and hears nothing it
#: cannot read). Bits are append-only, like the type numbers.
#:
#: The node reads the stamped forms PEER_RELAY_STAMPED (64),
#: PEER_HANDOFF_STAMPED (65) and PEER_RELAY_BACK_STAMPED (66). One bit for
#: the three: 64 and 65 came in one commit (06a5278) and 66 a day later
#: (ac83b79), but both before any hello said anything, so a life that says
#: this bit reads all three, and a life of a version in between (64 and 65,
#: not 66) says 0 and is sent the plain forms (it reads them too).
FEATURE_STAMPS = 1
#: The node reads a RETURN inside PEER_RELAY_STAMPED with a fifth field,
#: the stamps of what it gives back, ``[[seq, producer, life, n]...]``
#: (``queues.Stamp``; the client's node knows them: it passed the
#: deliveries on). A life that does not say it is sent the RETURN without
#: them (an older one would refuse the relay as malformed).
FEATURE_RETURN_STAMPS = 2
#: What this version reads (its hello says so).
FEATURES = FEATURE_STAMPS | FEATURE_RETURN_STAMPS

#: Most updates one message may carry (a full table of a large cluster).
MAX_UPDATES = 10_000
#: Most entries of a list inside one peer message (connections gone, a
#: digest, group counts, members handed over): bounds what a frame builds.
MAX_ENTRIES = 1_000_000
_STATES = {s.value: s for s in State}
_NUM: tuple[type, ...] = (int, float)

#: What an owner may pass back to a client through its node.
RELAYED_BACK = frozenset(
    {
        MsgType.DELIVER,
        MsgType.DELIVER_MANY,
        MsgType.DELIVER_BUNDLE,
        MsgType.ACK,
        MsgType.ERROR,
        MsgType.REVOKE,
        MsgType.FLUSHED,
        # credit the owner held for the client, handed back to its node when
        # the channel moved on (the node grants it to the new owner)
        MsgType.RECV,
    }
)
#: Keys a load report may carry (anything else is dropped on arrival):
#: counts, drop counters, "at" (the sender's monotonic clock) and "fenced"
#: ([the incarnation of a life it ended in place, messages lost with it])
#: and "links" ([[source, its life, link gen, taken up to]...]: how far it
#: had taken each peer link as it reported, for ``links``' count of what a
#: peer that died never took) and "parked" (deliveries to clients of nodes
#: it declared dead, whose fate it does not know yet: what dies with it)
#: and "counted" ([[node, incarnation]...]: dead lives whose loss it counted
#: as the first survivor; the others drop the count they kept for it)
#: and "left" ([[node, incarnation]...]: lives it saw leave cleanly; a node
#: that declared one dead, cut off from its LEFT, counts nothing for it)
#: and "n" (the report's number in the sender's life: a newer report of a
#: life has a higher one), "held" ([[node, incarnation, report number,
#: lost]...]: which report of each dead life it holds, for the first survivor
#: to count the newest) and "tallied" (the same shape: dead lives it counted
#: as the first survivor, by which report, and how many in all) and
#: "crashed" ([the incarnation of the life of the process before this one,
#: which died without leaving, messages it held at its last step]).
LOAD_KEYS = (
    "channels",
    "queued",
    "drops",
    "at",
    "fenced",
    "links",
    "parked",
    "counted",
    "left",
    "n",
    "held",
    "tallied",
    "crashed",
)

#: PEER_RELAY's layout (and PEER_RELAY_STAMPED's: the same fields).
_RELAY_FIELDS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("origin", str),
    ("incarnation", int),
    ("conn", bytes),
    ("session", str),
    ("expiry", _NUM),
    ("hops", int),
    ("messages", list),
    ("sent_at", _NUM),
)

#: Field layout of every peer message: (name, python type) in wire order.
PEER_FIELDS: dict[MsgType, tuple[tuple[str, type | tuple[type, ...]], ...]] = {
    # The member table's (membership.py); ``gossip`` and ``members`` are lists
    # of updates [node, address, incarnation, state ("alive"|"suspect"|
    # "dead"|"left"), source].
    MsgType.PEER_PING: (
        ("seq", int),
        ("source", str),
        ("source_address", str),
        ("target", str),
        ("gossip", list),
    ),
    MsgType.PEER_PING_REQ: (
        ("seq", int),
        ("source", str),
        ("source_address", str),
        ("target", str),
        ("target_address", str),
        ("gossip", list),
    ),
    MsgType.PEER_ACK: (("seq", int), ("source", str), ("gossip", list)),
    MsgType.PEER_NACK: (("seq", int), ("source", str)),
    MsgType.PEER_GOSSIP: (("source", str), ("gossip", list)),
    # cluster name and protocol version: a node of another is refused
    MsgType.PEER_SYNC: (
        ("cluster", str),
        ("version", int),
        ("source", str),
        ("source_address", str),
        ("reply", int),
        ("members", list),
    ),
    MsgType.PEER_REFUSE: (("cluster", str), ("version", int), ("source", str), ("reason", str)),
    # Group replication's (replication.py): see peer_messages for meanings.
    MsgType.GROUP_DELTA: (
        ("origin", str),
        ("incarnation", int),
        ("version", int),
        ("group", str),
        ("count", int),
        ("ack", int),
    ),
    MsgType.GROUP_DELTA_ACK: (("source", str), ("ack", int)),
    # entries: [[origin, incarnation, contiguous version], ...]
    MsgType.GROUP_DIGEST: (("source", str), ("entries", list)),
    # counts: [[group, count], ...]
    MsgType.GROUP_SLICE: (
        ("origin", str),
        ("incarnation", int),
        ("version", int),
        ("counts", list),
    ),
    MsgType.GROUP_FANOUT: (
        ("origin", str),
        ("incarnation", int),
        ("seq", int),
        ("group", str),
        ("payload", bytes),
        ("ttl", _NUM),
    ),
    # source: the node that passes it on; then GROUP_FANOUT's fields
    MsgType.GROUP_FANOUT_PASSED: (
        ("source", str),
        ("origin", str),
        ("incarnation", int),
        ("seq", int),
        ("group", str),
        ("payload", bytes),
        ("ttl", _NUM),
    ),
    # Routing's (routing.py). messages: client messages as [type, field...]
    MsgType.PEER_RELAY: _RELAY_FIELDS,
    # PEER_RELAY's fields; a SEND among ``messages`` may end with its stamp,
    # [producer, life, n] (``queues.Stamp``), and a RETURN with the stamps
    # of what it gives back, [[seq, producer, life, n]...]
    # (``FEATURE_RETURN_STAMPS``)
    MsgType.PEER_RELAY_STAMPED: _RELAY_FIELDS,
    MsgType.PEER_RELAY_BACK: (("source", str), ("conn", bytes), ("messages", list)),
    # PEER_RELAY_BACK's fields, and stamps [[channel, seq, producer, life,
    # n]...]: of the messages it delivers (``queues.Stamp``)
    MsgType.PEER_RELAY_BACK_STAMPED: (
        ("source", str),
        ("conn", bytes),
        ("messages", list),
        ("stamps", list),
    ),
    MsgType.PEER_CONN_GONE: (("origin", str), ("incarnation", int), ("conns", list)),
    MsgType.PEER_HOLDER_GONE: (("origin", str), ("incarnation", int), ("sessions", list)),
    # channels [[channel, items]...] (items as in DELIVER, oldest first);
    # members [[group, channel, holder, ttl_s, capacity]...]
    MsgType.PEER_HANDOFF: (("origin", str), ("channels", list), ("members", list)),
    # PEER_HANDOFF's fields; an item may end with its stamp, [payload, ttl_s,
    # seq, [producer, life, n]]
    MsgType.PEER_HANDOFF_STAMPED: (("origin", str), ("channels", list), ("members", list)),
    MsgType.PEER_HANDED_OVER: (("origin", str), ("incarnation", int)),
    # upto [[origin, its incarnation, fanout seq]...]
    MsgType.PEER_FANOUTS_SEEN: (("source", str), ("upto", list)),
    # reports [[channel, upto, count, expired]...]; returned [[channel,
    # [seq...]]...]
    MsgType.PEER_RELAY_LOST: (
        ("origin", str),
        ("incarnation", int),
        ("conn", bytes),
        ("reports", list),
        ("returned", list),
    ),
    MsgType.PEER_LINK_SEQ: (
        ("source", str),
        ("life", int),
        ("gen", int),
        ("seq", int),
        ("target", int),
    ),
    # gen 0: a hello, and upto is then what its life reads (FEATURES)
    MsgType.PEER_LINK_ACK: (("source", str), ("life", int), ("gen", int), ("upto", int)),
    MsgType.PEER_LINK_PROBE: (("source", str), ("life", int), ("gen", int)),
    MsgType.PEER_LINK_STATE: (("source", str), ("life", int), ("gen", int), ("upto", int)),
    MsgType.PEER_ASK: (("qid", int), ("origin", str), ("kind", str), ("arg", str)),
    MsgType.PEER_ANSWER: (("qid", int), ("source", str), ("result", list)),
    MsgType.PEER_LOAD: (("origin", str), ("load", dict)),
    # entries [[pool, holder node, its incarnation, holder conn, session tag,
    # expiry_s, slots, ttl_s]...]
    MsgType.PEER_RESERVATIONS: (("origin", str), ("entries", list)),
}
_PEER_SPECS = specs_of(PEER_FIELDS)


def encode_peer(msg: PeerMessage) -> bytes:
    """One peer message as one frame."""
    mtype, fields = to_wire(msg)
    return encode(mtype, *fields)


def encode_peers(msgs: list[PeerMessage]) -> bytes:
    """Several peer messages as one frame (BATCH when more than one)."""
    if len(msgs) == 1:
        return encode_peer(msgs[0])
    return encode_batch([to_wire(m) for m in msgs])


def decode_peer(frame: bytes, max_size: int | None = None) -> list[PeerMessage]:
    """Every peer message in a frame, fully checked. Raises only ``DecodeError``."""
    return [from_wire(mtype, fields) for mtype, fields in decode(frame, max_size, _PEER_SPECS)]


def salvage_link_frame(
    frame: bytes, max_size: int | None = None
) -> tuple[list[PeerMessage], list[DecodeError]] | None:
    """A frame ``decode_peer`` refused: if it is a link frame (well-formed
    as a whole, its first message a well-formed ``LinkSeq``), its
    well-formed messages and why each other one was not; else None.
    Refused as a whole, a link frame is sent again, refused again, and
    everything after it on its link waits for good (soak seed 138, before
    its fix: one malformed relay held a link up to the end of the run)."""
    try:
        items = decode_each(frame, max_size, _PEER_SPECS)
    except DecodeError:
        return None
    good: list[PeerMessage] = []
    bad: list[DecodeError] = []
    for item in items:
        if not isinstance(item, DecodeError):
            try:
                good.append(from_wire(*item))
                continue
            except DecodeError as exc:
                item = exc
        if not good:
            return None  # (no link header: not a link frame)
        bad.append(item)
    return (good, bad) if isinstance(good[0], LinkSeq) else None


def to_wire(msg: PeerMessage) -> Message:
    """A peer message as (type, fields) in its wire layout."""
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
        case GroupDelta():
            return MsgType.GROUP_DELTA, (
                msg.origin,
                msg.incarnation,
                msg.version,
                msg.group,
                msg.count,
                msg.ack,
            )
        case GroupDeltaAck():
            return MsgType.GROUP_DELTA_ACK, (msg.source, msg.ack)
        case GroupDigest():
            return MsgType.GROUP_DIGEST, (msg.source, [list(e) for e in msg.entries])
        case GroupSlice():
            counts = [list(c) for c in msg.counts]
            return MsgType.GROUP_SLICE, (msg.origin, msg.incarnation, msg.version, counts)
        case GroupFanout():
            return MsgType.GROUP_FANOUT, (
                msg.origin,
                msg.incarnation,
                msg.seq,
                msg.group,
                msg.payload,
                msg.ttl,
            )
        case GroupFanoutPassed():
            return MsgType.GROUP_FANOUT_PASSED, (
                msg.source,
                msg.origin,
                msg.incarnation,
                msg.seq,
                msg.group,
                msg.payload,
                msg.ttl,
            )
        case Relay():
            stamped = _relay_stamps(msg) > 0
            return MsgType.PEER_RELAY_STAMPED if stamped else MsgType.PEER_RELAY, (
                msg.origin,
                msg.incarnation,
                msg.conn,
                msg.tag,
                msg.expiry,
                msg.hops,
                [[mtype, *fields] for mtype, fields in msg.messages],
                msg.sent_at,
            )
        case RelayLost():
            return MsgType.PEER_RELAY_LOST, (
                msg.origin,
                msg.incarnation,
                msg.conn,
                [list(r) for r in msg.reports],
                [[name, list(seqs)] for name, seqs in msg.returned],
            )
        case RelayBack():
            messages = [[mtype, *fields] for mtype, fields in msg.messages]
            if msg.stamps:
                stamps = [list(s) for s in msg.stamps]
                return MsgType.PEER_RELAY_BACK_STAMPED, (msg.source, msg.conn, messages, stamps)
            return MsgType.PEER_RELAY_BACK, (msg.source, msg.conn, messages)
        case ConnGone():
            return MsgType.PEER_CONN_GONE, (msg.origin, msg.incarnation, list(msg.conns))
        case HolderGone():
            return MsgType.PEER_HOLDER_GONE, (msg.origin, msg.incarnation, list(msg.sessions))
        case Handoff():
            stamped = _handoff_stamps(msg) > 0
            return MsgType.PEER_HANDOFF_STAMPED if stamped else MsgType.PEER_HANDOFF, (
                msg.origin,
                [[name, items] for name, items in msg.channels],
                [list(m) for m in msg.members],
            )
        case HandedOver():
            return MsgType.PEER_HANDED_OVER, (msg.origin, msg.incarnation)
        case FanoutsSeen():
            return MsgType.PEER_FANOUTS_SEEN, (msg.source, [list(u) for u in msg.upto])
        case LinkSeq():
            return MsgType.PEER_LINK_SEQ, (msg.source, msg.life, msg.gen, msg.seq, msg.target)
        case LinkAck():
            return MsgType.PEER_LINK_ACK, (msg.source, msg.life, msg.gen, msg.upto)
        case LinkProbe():
            return MsgType.PEER_LINK_PROBE, (msg.source, msg.life, msg.gen)
        case LinkState():
            return MsgType.PEER_LINK_STATE, (msg.source, msg.life, msg.gen, msg.upto)
        case Ask():
            return MsgType.PEER_ASK, (msg.qid, msg.origin, msg.kind, msg.arg)
        case Answer():
            return MsgType.PEER_ANSWER, (msg.qid, msg.source, list(msg.result))
        case Load():
            return MsgType.PEER_LOAD, (msg.origin, msg.load)
        case Reservations():
            return MsgType.PEER_RESERVATIONS, (msg.origin, [list(e) for e in msg.entries])
    raise TypeError(f"not a peer message: {msg!r}")  # pragma: no cover


def _relay_stamps(msg: Relay) -> int:
    """How many of a relay's SENDs carry a stamp (a fifth field), and how
    many stamps its RETURNs carry (a fifth field too)."""
    return _send_stamps(msg) + _return_stamps(msg)


def _send_stamps(msg: Relay) -> int:
    return sum(1 for mtype, fields in msg.messages if mtype == MsgType.SEND and len(fields) > 4)


def _return_stamps(msg: Relay) -> int:
    return sum(
        len(fields[4])
        for mtype, fields in msg.messages
        if mtype == MsgType.RETURN and len(fields) > 4
    )


def _handoff_stamps(msg: Handoff) -> int:
    """How many of a handover's items carry a stamp (a fourth field)."""
    return sum(1 for _, items in msg.channels for item in items if len(item) > 3)


def stamps_in(msg: PeerMessage, give_backs: bool = True) -> int:
    """How many producer stamps ``msg`` carries (a relay's SENDs, a relay
    back's deliveries, a handover's items; ``give_backs``: and a relayed
    RETURN's)."""
    if isinstance(msg, Relay):
        return _relay_stamps(msg) if give_backs else _send_stamps(msg)
    if isinstance(msg, RelayBack):
        return len(msg.stamps)
    if isinstance(msg, Handoff):
        return _handoff_stamps(msg)
    return 0


def readable(msg: PeerMessage, features: int) -> tuple[PeerMessage, int]:
    """``msg`` as a peer life that said ``features`` in its hello reads it,
    and how many stamps were taken off for it: a relay, a relay back or a
    handover with producer stamps goes without them (the plain type, which
    every version reads) unless that life reads the stamped forms
    (``FEATURE_STAMPS``), and a relayed RETURN without the stamps of what it
    gives back unless it reads those too (``FEATURE_RETURN_STAMPS``). A node
    of an older version drops a frame of a type it does not know with all
    it carries, and refuses a message it cannot read; without its stamps
    the message still arrives, and only the per-producer order check where
    queues meet (``queues.Stamp``) is skipped on that path."""
    if isinstance(msg, Relay):
        strip = []
        if not features & FEATURE_STAMPS:
            strip.append(MsgType.SEND)
        if not features & FEATURE_RETURN_STAMPS:
            strip.append(MsgType.RETURN)
        n = (_send_stamps(msg) if MsgType.SEND in strip else 0) + (
            _return_stamps(msg) if MsgType.RETURN in strip else 0
        )
        if n:
            messages = tuple(
                (mtype, fields[:4]) if mtype in strip else (mtype, fields)
                for mtype, fields in msg.messages
            )
            return replace(msg, messages=messages), n
        return msg, 0
    if features & FEATURE_STAMPS:
        return msg, 0
    if isinstance(msg, RelayBack):
        if msg.stamps:
            return replace(msg, stamps=()), len(msg.stamps)
    elif isinstance(msg, Handoff):
        n = _handoff_stamps(msg)
        if n:
            channels = tuple((name, [item[:3] for item in items]) for name, items in msg.channels)
            return replace(msg, channels=channels), n
    return msg, 0


#: What a peer address must look like: a TCP endpoint (host or [IPv6], port).
_ADDRESS = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]{1,253}):[0-9]{1,5}")


def _address(value: str) -> str:
    if not _ADDRESS.fullmatch(value):
        raise DecodeError("field", f"not a peer address: {value[:80]!r}")
    return value


def from_wire(mtype: MsgType, f: tuple[Any, ...]) -> PeerMessage:
    """A peer message from fields ``decode`` has type-checked against
    ``PEER_FIELDS``; everything inside them is checked here (addresses too,
    since the node connects to them)."""
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
    if mtype == MsgType.GROUP_DELTA:
        _require(valid_wire_group(f[3]) and f[4] >= 0, "GROUP_DELTA group or count")
        return GroupDelta(f[0], f[1], f[2], f[3], f[4], f[5])
    if mtype == MsgType.GROUP_DELTA_ACK:
        return GroupDeltaAck(f[0], f[1])
    if mtype == MsgType.GROUP_DIGEST:
        return GroupDigest(f[0], _node_versions(f[1], "GROUP_DIGEST entries"))
    if mtype == MsgType.GROUP_SLICE:
        counts = _bounded(f[3])
        _require(
            all(
                type(c) is list and len(c) == 2 and type(c[0]) is str and type(c[1]) is int
                for c in counts
            ),
            "GROUP_SLICE counts",
        )
        return GroupSlice(f[0], f[1], f[2], tuple(sorted((c[0], c[1]) for c in counts)))
    if mtype == MsgType.GROUP_FANOUT:
        _require(valid_wire_group(f[3]) and valid_duration(f[5]), "GROUP_FANOUT group or ttl")
        return GroupFanout(f[0], f[1], f[2], f[3], f[4], float(f[5]))
    if mtype == MsgType.GROUP_FANOUT_PASSED:
        _require(
            valid_wire_group(f[4]) and valid_duration(f[6]), "GROUP_FANOUT_PASSED group or ttl"
        )
        return GroupFanoutPassed(f[0], f[1], f[2], f[3], f[4], f[5], float(f[6]))
    if mtype == MsgType.PEER_RELAY or mtype == MsgType.PEER_RELAY_STAMPED:
        origin, inc, conn, tag, expiry, hops, raw, sent_at = f
        _require(
            0 < len(conn) <= 256
            and 0 < len(tag) <= 64
            and "/" not in tag
            and 0 < expiry < 1e9
            and hops >= 0,
            "PEER_RELAY connection, session, expiry or hops",
        )
        if mtype == MsgType.PEER_RELAY_STAMPED:
            messages = _stamped_messages(raw)
        else:
            messages = _messages(raw, RELAYED)
        return Relay(origin, inc, conn, tag, float(expiry), hops, messages, float(sent_at))
    if mtype == MsgType.PEER_RELAY_LOST:
        _require(0 < len(f[2]) <= 256, "PEER_RELAY_LOST connection")
        return RelayLost(f[0], f[1], f[2], _lost_reports(f[3]), _lost_returns(f[4]))
    if mtype == MsgType.PEER_RELAY_BACK:
        return RelayBack(f[0], f[1], _messages(f[2], RELAYED_BACK))
    if mtype == MsgType.PEER_RELAY_BACK_STAMPED:
        stamps = _bounded(f[3])
        _require(
            all(
                type(s) is list
                and len(s) == 5
                and type(s[0]) is str
                and valid_wire_channel(s[0])
                and type(s[1]) is int
                and _stamp(s[2:])
                for s in stamps
            ),
            "PEER_RELAY_BACK_STAMPED stamps",
        )
        stamped = tuple((s[0], s[1], s[2], s[3], s[4]) for s in stamps)
        return RelayBack(f[0], f[1], _messages(f[2], RELAYED_BACK), stamped)
    if mtype == MsgType.PEER_CONN_GONE:
        conns = _bounded(f[2])
        _require(all(type(c) is bytes for c in conns), "PEER_CONN_GONE connections")
        return ConnGone(f[0], f[1], tuple(conns))
    if mtype == MsgType.PEER_HOLDER_GONE:
        tags = _bounded(f[2])
        _require(all(type(t) is str for t in tags), "PEER_HOLDER_GONE sessions")
        return HolderGone(f[0], f[1], tuple(tags))
    if mtype == MsgType.PEER_HANDOFF:
        return Handoff(f[0], _handed_channels(f[1]), _handed_members(f[2]))
    if mtype == MsgType.PEER_HANDOFF_STAMPED:
        return Handoff(f[0], _handed_channels(f[1], stamped=True), _handed_members(f[2]))
    if mtype == MsgType.PEER_HANDED_OVER:
        return HandedOver(f[0], f[1])
    if mtype == MsgType.PEER_FANOUTS_SEEN:
        return FanoutsSeen(f[0], _node_versions(f[1], "PEER_FANOUTS_SEEN upto"))
    if mtype == MsgType.PEER_LINK_SEQ:
        _require(f[2] >= 1 and f[3] >= 1, "PEER_LINK_SEQ gen or seq")
        return LinkSeq(f[0], f[1], f[2], f[3], f[4])
    if mtype == MsgType.PEER_LINK_ACK:
        _require(f[2] >= 0 and f[3] >= 0, "PEER_LINK_ACK gen or upto")
        return LinkAck(f[0], f[1], f[2], f[3])
    if mtype == MsgType.PEER_LINK_PROBE:
        _require(f[2] >= 1, "PEER_LINK_PROBE gen")
        return LinkProbe(f[0], f[1], f[2])
    if mtype == MsgType.PEER_LINK_STATE:
        _require(f[2] >= 1 and f[3] >= -1, "PEER_LINK_STATE gen or upto")
        return LinkState(f[0], f[1], f[2], f[3])
    if mtype == MsgType.PEER_ASK:
        _require(f[2] in ("flush", "members"), f"PEER_ASK kind {f[2][:20]!r}")
        return Ask(f[0], f[1], f[2], f[3])
    if mtype == MsgType.PEER_ANSWER:
        result = _bounded(f[2])
        _require(all(type(r) is str for r in result), "PEER_ANSWER result")
        return Answer(f[0], f[1], tuple(result))
    if mtype == MsgType.PEER_LOAD:
        load = {
            k: v
            for k, v in f[1].items()
            if k in LOAD_KEYS
            and (
                type(v) is int
                or (type(v) is dict and len(v) < 64)
                or (k == "at" and type(v) is float)
                or (k in ("fenced", "crashed") and _two_ints(v))
                or (k == "links" and _link_states(v))
                or (k in ("counted", "left") and _lives(v))
                or (k in ("held", "tallied") and _life_counts(v))
            )
        }
        return Load(f[0], load)
    if mtype == MsgType.PEER_RESERVATIONS:
        return Reservations(f[0], _handed_reservations(f[1]))
    raise DecodeError("type", f"{mtype.name} is not a peer message")


def consumption_report(r: object) -> bool:
    """Whether ``r`` is one client consumption report, ``[channel, upto,
    count, expired]`` (``CONSUMED``; ``RelayLost`` carries them again)."""
    return (
        type(r) is list
        and len(r) == 4
        and type(r[0]) is str
        and valid_wire_channel(r[0])
        and all(type(x) is int for x in r[1:])
        and 0 <= r[3] <= r[2]
    )


def _lost_reports(value: list[Any]) -> tuple[tuple[str, int, int, int], ...]:
    """``[[channel, upto, count, expired]...]``: a consumption report each
    (``RelayLost``)."""
    reports = _bounded(value)
    _require(all(consumption_report(r) for r in reports), "PEER_RELAY_LOST reports")
    return tuple((r[0], r[1], r[2], r[3]) for r in reports)


def _lost_returns(value: list[Any]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``[[channel, [seq...]]...]``: what a client gave back (``RelayLost``)."""
    returned = _bounded(value)
    _require(
        all(
            type(r) is list
            and len(r) == 2
            and type(r[0]) is str
            and valid_wire_channel(r[0])
            and type(r[1]) is list
            and len(r[1]) <= MAX_ENTRIES
            and all(type(q) is int for q in r[1])
            for r in returned
        ),
        "PEER_RELAY_LOST returned",
    )
    return tuple((r[0], tuple(r[1])) for r in returned)


def _lives(value: object) -> bool:
    """``[[node, incarnation]...]``, at most 64."""
    return (
        type(value) is list
        and len(value) <= 64
        and all(
            type(v) is list and len(v) == 2 and type(v[0]) is str and type(v[1]) is int
            for v in value
        )
    )


def _name_and_three_ints(value: object, most: int, low: int | None) -> bool:
    """``[[str, int, int, int]...]``, at most ``most`` rows, each int at
    least ``low`` (None: any)."""
    return (
        type(value) is list
        and len(value) <= most
        and all(
            type(e) is list
            and len(e) == 4
            and type(e[0]) is str
            and all(type(x) is int and (low is None or x >= low) for x in e[1:])
            for e in value
        )
    )


def _life_counts(value: object) -> bool:
    """``[[node, incarnation, report number, count]...]``, at most 64."""
    return _name_and_three_ints(value, 64, 0)


def _link_states(value: object) -> bool:
    """``[[source, life, gen, upto]...]`` (upto -1: nothing taken)."""
    return _name_and_three_ints(value, 10_000, None)


def _two_ints(value: object) -> bool:
    return type(value) is list and len(value) == 2 and all(type(x) is int for x in value)


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise DecodeError("field", f"bad {what}")


def _node_versions(raw: list[Any], what: str) -> tuple[tuple[str, int, int], ...]:
    """``[[node, incarnation, number]...]`` (a digest's versions, the last
    fanouts seen), each checked; bool is not int."""
    entries = _bounded(raw)
    _require(
        all(
            type(e) is list
            and len(e) == 3
            and type(e[0]) is str
            and type(e[1]) is int
            and type(e[2]) is int
            for e in entries
        ),
        what,
    )
    return tuple((e[0], e[1], e[2]) for e in entries)


def _bounded(raw: list[Any]) -> list[Any]:
    if len(raw) > MAX_ENTRIES:
        raise DecodeError("field", f"{len(raw)} entries in one message")
    return raw


def _messages(raw: list[Any], allowed: frozenset[MsgType]) -> tuple[Message, ...]:
    """Client messages carried inside a peer message: each checked as the
    client protocol checks a frame's, and of a type that may travel so."""
    messages = tuple(check_message(item) for item in _bounded(raw))
    for mtype, _ in messages:
        if mtype not in allowed:
            raise DecodeError("field", f"{mtype.name} may not be relayed")
    return messages


def _handed_channels(raw: list[Any], stamped: bool = False) -> tuple[tuple[str, list[Any]], ...]:
    """``[[channel, items]...]``; ``stamped``: an item may end with its
    stamp (made a tuple, as the node holds it)."""
    out = []
    for entry in _bounded(raw):
        _require(
            type(entry) is list
            and len(entry) == 2
            and type(entry[0]) is str
            and valid_wire_channel(entry[0])
            and type(entry[1]) is list,
            "PEER_HANDOFF channel",
        )
        items = entry[1]
        if stamped:
            plain = [item[:3] if type(item) is list else item for item in items]
            _require(
                wire_items(plain)
                and all(len(item) == 3 or (len(item) == 4 and _stamp(item[3])) for item in items),
                "PEER_HANDOFF_STAMPED items",
            )
            items = [
                item if len(item) == 3 else [*item[:3], (item[3][0], item[3][1], item[3][2])]
                for item in items
            ]
        else:
            _require(wire_items(items), "PEER_HANDOFF channel")
        out.append((entry[0], items))
    return tuple(out)


#: Longest producer name a stamp may carry ("node/session tag").
_MAX_PRODUCER = 512


def _stamp(value: object) -> bool:
    """``[producer, life, n]`` (``queues.Stamp``): a name and two
    non-negative ints (bool is not int)."""
    return (
        type(value) is list
        and len(value) == 3
        and type(value[0]) is str
        and 0 < len(value[0]) <= _MAX_PRODUCER
        and type(value[1]) is int
        and type(value[2]) is int
        and value[1] >= 0
        and value[2] >= 0
    )


def _stamped_messages(raw: list[Any]) -> tuple[Message, ...]:
    """A ``PEER_RELAY_STAMPED``'s messages: as ``_messages``, and a SEND may
    end with its stamp (kept as a fifth field, a tuple), a RETURN with the
    stamps of what it gives back (a fifth field, a tuple of ``(seq,
    producer, life, n)``)."""
    out = []
    for item in _bounded(raw):
        if type(item) is list and len(item) == 6 and item[0] == MsgType.SEND:
            _require(_stamp(item[5]), "PEER_RELAY_STAMPED stamp")
            mtype, fields = check_message(item[:5])
            stamp = (item[5][0], item[5][1], item[5][2])
            out.append((mtype, (*fields, stamp)))
        elif type(item) is list and len(item) == 6 and item[0] == MsgType.RETURN:
            stamps = item[5]
            _require(
                type(stamps) is list
                and len(stamps) <= MAX_ENTRIES
                and all(
                    type(s) is list and len(s) == 4 and type(s[0]) is int and _stamp(s[1:])
                    for s in stamps
                ),
                "PEER_RELAY_STAMPED RETURN stamps",
            )
            mtype, fields = check_message(item[:5])
            out.append((mtype, (*fields, tuple((s[0], s[1], s[2], s[3]) for s in stamps))))
        else:
            out.append(check_message(item))
    messages = tuple(out)
    for mtype, _ in messages:
        if mtype not in RELAYED:
            raise DecodeError("field", f"{mtype.name} may not be relayed")
    return messages


def _handed_members(raw: list[Any]) -> tuple[tuple[str, str, str, float, int], ...]:
    out = []
    for m in _bounded(raw):
        _require(
            type(m) is list
            and len(m) == 5
            and type(m[0]) is str
            and type(m[1]) is str
            and type(m[2]) is str
            and valid_wire_group(m[0])
            and valid_wire_channel(m[1])
            and valid_duration(m[3])
            and type(m[4]) is int
            and 0 < m[4] <= MAX_CAPACITY,
            "PEER_HANDOFF member",
        )
        out.append((m[0], m[1], m[2], float(m[3]), m[4]))
    return tuple(out)


def _handed_reservations(raw: list[Any]) -> tuple[HandedReservation, ...]:
    out = []
    for e in _bounded(raw):
        _require(
            type(e) is list
            and len(e) == 8
            and type(e[0]) is str
            and valid_wire_channel(e[0])
            and type(e[1]) is str
            and type(e[2]) is int
            and type(e[3]) is bytes
            and 0 < len(e[3]) <= 256
            and type(e[4]) is str
            and 0 < len(e[4]) <= 64
            and "/" not in e[4]
            and type(e[5]) in _NUM
            and 0 < e[5] < 1e9
            and type(e[6]) is int
            and e[6] > 0
            and type(e[7]) in _NUM
            and 0 < e[7] < 1e9,
            "PEER_RESERVATIONS entry",
        )
        out.append((e[0], e[1], e[2], e[3], e[4], float(e[5]), e[6], float(e[7])))
    return tuple(out)


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
