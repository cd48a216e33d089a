"""The client <-> node wire format: frames, message types, and the one codec.

Owns: the byte layout of every frame that crosses a ZeroMQ socket between a
layer connection and a node, the append-only ``MsgType`` enum, the field layout
of each message, and ``DecodeError``. Does not own: sockets, sessions, or what a
message *means* (that is ``zchannels.node.core`` and ``zchannels.connection``).

Frame layout (one ZeroMQ frame; the DEALER/ROUTER identity frame is not part of it)::

    byte 0      protocol version (``PROTOCOL_VERSION``)
    byte 1      message type (``MsgType``)
    bytes 2..   msgpack array: the message's fields, in the order of ``FIELDS``

A ``BATCH`` frame carries several messages in one frame: its body is an array
of arrays ``[type, field, field, ...]``. Batching is what lets a drain-style
shell move ~10^5 messages/s through one socket (see shared/NOTES.md).

User messages are serialized once, by the layer, and travel inside ``SEND``,
``GROUP_SEND`` and ``DELIVER`` as opaque msgpack ``bin`` values.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import msgpack

#: Bumped on any incompatible change; a node drops frames of another version.
PROTOCOL_VERSION = 1


#: HELLO policy, second field: a bit set of what the client does beyond
#: protocol version 1 (a node ignores bits it does not know; an older node
#: ignores the field).
#: The client reports group messages' consumption per bundle
#: (``DELIVER_BUNDLE`` / ``CONSUMED_BUNDLES``).
FEATURE_BUNDLE_REPORTS = 1

#: Seconds a send reservation granted in an ACK holds on the node. A client
#: uses one for at most half of this, so it never outlives the node's promise.
RESERVATION_TTL = 2.0


class MsgType(enum.IntEnum):
    """Message types. The numeric values are part of the protocol: append only."""

    BATCH = 0
    HELLO = 1  # client -> node: open a connection of a session
    WELCOME = 2  # node -> client: answer to HELLO
    PING = 3  # client -> node: renew the session lease
    PONG = 4  # node -> client
    SEND = 5  # client -> node: enqueue one message on a channel
    ACK = 6  # node -> client: request done
    ERROR = 7  # node -> client: request failed
    RECV = 8  # client -> node: grant credit for deliveries of a channel
    DELIVER = 9  # node -> client: messages of a channel
    RETURN = 10  # client -> node: give back undelivered messages, withdraw credit
    GROUP_ADD = 11  # client -> node
    GROUP_DISCARD = 12  # client -> node
    GROUP_SEND = 13  # client -> node
    FLUSH = 14  # client -> node
    BYE = 15  # client -> node: this connection is closing
    RESET = 16  # node -> client: "I have no session for you: send HELLO again"
    STATUS = 17  # client -> node: ask for the node's status (counters, sizes)
    STATUS_REPLY = 18  # node -> client
    GROUP_INFO = 19  # client -> node: members of a group
    GROUP_INFO_REPLY = 20  # node -> client
    # node <-> node: the member table (zchannels.node.membership; SWIM)
    PEER_PING = 21
    PEER_PING_REQ = 22
    PEER_ACK = 23
    PEER_NACK = 24
    PEER_GOSSIP = 25
    PEER_SYNC = 26
    PEER_REFUSE = 27
    # node <-> node: replicated group member counts (zchannels.node.replication)
    GROUP_DELTA = 28
    GROUP_DELTA_ACK = 29
    GROUP_DIGEST = 30
    GROUP_SLICE = 31
    GROUP_FANOUT_V1 = 32  # retired before any release: superseded by GROUP_FANOUT (52)
    # node <-> node: retired before any release (superseded by PEER_RELAY);
    # the numbers stay taken
    PEER_SEND = 33
    PEER_SEND_RESULT = 34
    # node <-> node: client messages for channels another node owns
    # (zchannels.node.routing), and what moves when ownership changes
    PEER_RELAY_V1 = 35  # retired before any release: superseded by PEER_RELAY (48)
    PEER_RELAY_BACK = 36
    PEER_CONN_GONE = 37
    PEER_HOLDER_GONE = 38
    PEER_HANDOFF = 39
    PEER_ASK = 40
    PEER_ANSWER = 41
    PEER_LOAD = 42
    # client <-> node: exact capacity (prefetched messages count until taken),
    # reservations given up on demand, flush reaching what was prefetched
    CONSUMED = 43  # client -> node: messages of a channel were taken
    REVOKE = 44  # node -> client: give up your send reservation on a channel
    REVOKED = 45  # client -> node: given up (after every send made with it)
    FLUSHED = 46  # node -> client: a namespace was flushed: drop what you prefetched
    DELIVER_MANY = 47  # node -> client: one message for several channels (a group_send)
    # node <-> node: PEER_RELAY_V1 and the origin's send time (zchannels.node.peer_wire)
    PEER_RELAY = 48
    # client <-> node: a graceful drain (a rolling restart loses nothing)
    DRAIN = 49  # node -> client: "I am going away: give everything back and hold"
    MOVING = 50  # client -> node: "given back, answered, holding until a node welcomes me"
    STOP = 51  # client -> node: drain, then stop (``znode drain``)
    # node <-> node: GROUP_FANOUT_V1 with an id (origin, incarnation, seq), so
    # a node can pass a fanout on to where memberships just moved and the
    # receiver drop a second copy (zchannels.node.replication)
    GROUP_FANOUT = 52
    # node <-> node: a GROUP_FANOUT passed on by the node that had just
    # handed the group's memberships to the receiver (it reached none of
    # them there), naming that node (zchannels.node.replication)
    GROUP_FANOUT_PASSED = 53
    # node <-> node: send reservations handed to a pool's new owner with its
    # queue, so a holder's reserved sends still fit there (zchannels.node.routing)
    PEER_RESERVATIONS = 54
    # client <-> node: a group message's consumption reported per bundle, not
    # per member. A node sends DELIVER_BUNDLE only to a client whose HELLO
    # policy says it reports that way (``FEATURE_BUNDLE_REPORTS``), and a
    # client sends CONSUMED_BUNDLES only for a DELIVER_BUNDLE: so an older
    # node (which ignores the policy's later fields and sends DELIVER_MANY)
    # never gets one, and an older client never gets a DELIVER_BUNDLE.
    DELIVER_BUNDLE = 55  # node -> client: DELIVER_MANY, reportable per bundle
    CONSUMED_BUNDLES = 56  # client -> node: copies of DELIVER_BUNDLEs were taken
    # node <-> node: "I have handed you everything I held that you own": what
    # a node sends a peer it sees start a new life, after the handover; the
    # starting node serves its clients once every live peer said it (or
    # ``join_timeout``), so what they hand back goes before what its clients
    # send it (zchannels.node.cluster)
    PEER_HANDED_OVER = 57
    # node <-> node: a peer link's sequence number (the frame's next message
    # is that one) and its acknowledgement (or, gen 0, a hello: "I speak
    # links", its upto the bit set of what the life reads beyond that:
    # zchannels.node.peer_wire.FEATURES): the cluster's messages between two
    # lives arrive once, in order, or are given up with the life
    # (zchannels.node.links)
    PEER_LINK_SEQ = 58
    PEER_LINK_ACK = 59
    # node <-> node: a link given up with frames not acknowledged (its peer
    # was declared dead, left, restarted) asks how far the peer took it, and
    # the answer; what it never took is counted lost by the sender, once
    PEER_LINK_PROBE = 60
    PEER_LINK_STATE = 61
    # node <-> node: just before a handover of group memberships, the last
    # group_send fanout the sender had taken from each origin: those
    # memberships had them, and the receiver does not give them again
    # (zchannels.node.replication)
    PEER_FANOUTS_SEEN = 62
    # node <-> node: consumption reports and give-backs of a client that a
    # link lost on their way to the owner whose flight holds them (the link
    # ended while the owner was thought dead; it was not, and never took
    # them): its capacity is released, its give-backs counted lost
    # (zchannels.node.routing)
    PEER_RELAY_LOST = 63
    # node <-> node: PEER_RELAY and PEER_HANDOFF (same fields) whose SENDs and
    # items carry their stamp, [producer, life, n], given by the producer's
    # node as the send entered the cluster: where queues of a channel meet,
    # no producer's messages are reordered (zchannels.node.queues). A relay
    # or handover with no stamp travels as before, so what an older node can
    # read it still reads; one with stamps goes to a peer as PEER_RELAY or
    # PEER_HANDOFF, its stamps taken off, unless that peer's life said in its
    # hello that it reads these (peer_wire.FEATURE_STAMPS).
    PEER_RELAY_STAMPED = 64
    PEER_HANDOFF_STAMPED = 65
    # node <-> node: PEER_RELAY_BACK, and the stamps of the messages it
    # delivers, [[channel, seq, producer, life, n]...]: the client's node
    # refuses a delivery older than a message of the same producer another
    # owner of the channel handed the client (zchannels.node.queues). Sent
    # only when a delivery has a stamp, and only to a peer whose life said it
    # reads it (as for 64 and 65): a node of an older version cannot read it
    # and would drop it, counted, with the deliveries it carries.
    PEER_RELAY_BACK_STAMPED = 66


class ErrorCode(enum.IntEnum):
    """Codes carried by ``ERROR``. Append only."""

    CHANNEL_FULL = 1  # the channel's queue is at its capacity
    UNKNOWN_SESSION = 2  # node restarted or lease lapsed: HELLO again, then retry
    BAD_REQUEST = 3  # well-formed frame, nonsensical content (e.g. an invalid name)
    LIMIT = 4  # a per-client bound (channels, group entries) was hit
    OUTCOME_UNKNOWN = 5  # a send the channel's owner did not answer in time: taken or not


# Field layout of every message: (name, python type) in wire order.
# ``float`` fields accept ints on decode (msgpack encodes 3.0 as a float, but a
# foreign encoder may not). Every duration is float seconds.
_F = tuple[tuple[str, type | tuple[type, ...]], ...]
_NUM: tuple[type, ...] = (int, float)
FIELDS: dict[MsgType, _F] = {
    # session: the process's session tag (10 base32 chars); pid: for operators;
    # policy: [expiry_s, features, reserved] (the layer's ``expiry``;
    # ``FEATURE_*`` bits; how many sends this connection has made on
    # reservations (SEND req 0) in all, before this HELLO, so a node's next
    # process counts the ones its killed process never read; the last two
    # absent from older clients; a list, to grow)
    MsgType.HELLO: (("session", str), ("pid", int), ("policy", list)),
    # node_id; node_tag (what new_channel() names carry to point at this node);
    # incarnation (changes at every node start); lease (s);
    # max_frame (bytes the node accepts in one frame)
    MsgType.WELCOME: (
        ("node_id", str),
        ("node_tag", str),
        ("incarnation", str),
        ("lease", _NUM),
        ("max_frame", int),
    ),
    MsgType.PING: (),
    MsgType.PONG: (("incarnation", str),),
    # req: client-chosen request id, echoed in ACK/ERROR. req 0: a send that
    # uses a reservation (see node/queues.py): no answer unless it fails.
    # capacity: the channel's capacity as the sender's layer computes it
    # (channel_capacity patterns run in the layer: the node runs no client regex)
    MsgType.SEND: (("req", int), ("channel", str), ("payload", bytes), ("capacity", int)),
    # result: request-specific count: for SEND the slots now reserved for
    # this connection on that channel, for GROUP_SEND the members reached
    MsgType.ACK: (("req", int), ("result", int)),
    MsgType.ERROR: (("req", int), ("code", int), ("detail", str)),
    # credit: how many more messages of channel this connection will take
    MsgType.RECV: (("channel", str), ("credit", int)),
    # items: [[payload, ttl_remaining_s, seq], ...] oldest first; seq is the
    # node's ordering of the message (RETURN hands it back so order survives)
    MsgType.DELIVER: (("channel", str), ("items", list)),
    # items as in DELIVER; the node puts them back in the queue by seq.
    # withdraw=1: also drop this connection's credit on the channel, and
    # answer ACK(req): every DELIVER sent before that ACK used the old credit.
    MsgType.RETURN: (("req", int), ("channel", str), ("items", list), ("withdraw", int)),
    # expiry: the membership's remaining lifetime (group_expiry) in seconds;
    # capacity: the member channel's capacity, used by group_send
    MsgType.GROUP_ADD: (
        ("req", int),
        ("group", str),
        ("channel", str),
        ("expiry", _NUM),
        ("capacity", int),
    ),
    # req 0: no answer wanted (the layer does not wait for discards)
    MsgType.GROUP_DISCARD: (("req", int), ("group", str), ("channel", str)),
    MsgType.GROUP_SEND: (("req", int), ("group", str), ("payload", bytes)),
    # prefix: the namespace to clear (a layer's ``prefix``)
    MsgType.FLUSH: (("req", int), ("prefix", str)),
    # answered by ACK once the node has forgotten the connection; final=1:
    # the process is closing its session (drop its memberships now)
    MsgType.BYE: (("req", int), ("final", int)),
    MsgType.RESET: (("incarnation", str),),
    MsgType.STATUS: (("req", int),),
    # status: a map of counters and sizes (see zchannels.node.core.NodeCore.status)
    MsgType.STATUS_REPLY: (("req", int), ("status", dict)),
    MsgType.GROUP_INFO: (("req", int), ("group", str)),
    MsgType.GROUP_INFO_REPLY: (("req", int), ("channels", list)),
    # (types 21-42: peer messages; their layouts live with the node, in
    # zchannels.node.peer_wire, and never reach a client socket's decoder)
    # reports: [[channel, upto, count, expired], ...], one per channel: the
    # first ``count`` messages of channel this connection was handed (in the
    # order handed), none with a seq above ``upto``, were taken by a
    # receive() (or, ``expired`` of them, found expired in the process):
    # they no longer count against capacity
    MsgType.CONSUMED: (("reports", list),),
    MsgType.REVOKE: (("channel", str),),
    MsgType.REVOKED: (("channel", str),),
    # prefix: the namespace a flush() cleared
    MsgType.FLUSHED: (("prefix", str),),
    # one group message for several channels of the receiving connection, as
    # one DELIVER of [payload, ttl, seq] for each: the payload travels once
    MsgType.DELIVER_MANY: (("channels", list), ("item", list)),
    # as DELIVER_MANY, to a client that reports per bundle: ``item``'s seq
    # names the bundle in CONSUMED_BUNDLES, ``channels`` its positions
    MsgType.DELIVER_BUNDLE: (("channels", list), ("item", list)),
    # bundles: [[seq, start, end, start, end, ...], ...]: of the
    # DELIVER_BUNDLE with that seq sent to this connection, the channels at
    # positions [start, end) of its list (runs, in any order) had that
    # message taken by a receive() (not found expired: those go in
    # CONSUMED). Applied before any CONSUMED of the same frame: a client
    # reports a channel's copy here only if no CONSUMED report of that
    # channel is pending, so everything the channel was handed earlier is
    # reported already.
    MsgType.CONSUMED_BUNDLES: (("bundles", list),),
    # incarnation: the node's that drains (its clients hold their requests
    # until a WELCOME from another incarnation, or from this one again)
    MsgType.DRAIN: (("incarnation", str),),
    # sent once the connection has no withdrawal and no request of its own
    # unanswered: nothing more comes from it to this node's incarnation
    MsgType.MOVING: (),
    # answered ACK(req, clients): the node drains (DRAIN to its clients), then
    # leaves its cluster and stops, as on SIGTERM
    MsgType.STOP: (("req", int),),
}

Message = tuple[MsgType, tuple[Any, ...]]


class DecodeError(ValueError):
    """A frame that is not a valid message of this protocol version.

    The one exception every malformed input turns into: the shell logs,
    counts and drops it, and goes on.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        #: a short, stable reason used as a counter label (e.g. "version")
        self.reason = reason


def encode(mtype: MsgType, *fields: Any) -> bytes:
    """One message as one frame."""
    body: bytes = msgpack.packb(fields, use_bin_type=True)
    return bytes((PROTOCOL_VERSION, mtype)) + body


def encode_batch(messages: Iterable[Message]) -> bytes:
    """Several messages as one BATCH frame."""
    body = [[mtype, *fields] for mtype, fields in messages]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return bytes((PROTOCOL_VERSION, MsgType.BATCH)) + packed


def encode_many(messages: list[Message]) -> bytes:
    """One frame for a list of messages: plain when there is one, BATCH otherwise."""
    if len(messages) == 1:
        mtype, fields = messages[0]
        return encode(mtype, *fields)
    return encode_batch(messages)


#: Messages are packed into one frame up to about this many bytes.
BATCH_BYTES = 256 * 1024


def split_batches(messages: list[Message], max_bytes: int = BATCH_BYTES) -> list[list[Message]]:
    """Cut ``messages`` into runs of roughly ``max_bytes`` encoded bytes each,
    so one frame never grows past the peer's limit because of batching (a
    single message bigger than the limit still travels alone). (Every frame
    a process sends goes through here: the common case, everything in one
    frame, builds no list.)"""
    if len(messages) == 1:
        return [messages]
    sizes = [_approx_size(message) for message in messages]
    if sum(sizes) <= max_bytes:
        return [messages]
    chunks: list[list[Message]] = [[]]
    size = 0
    for message, approx in zip(messages, sizes, strict=True):
        if chunks[-1] and size + approx > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(message)
        size += approx
    return chunks


# (plain ints: an IntEnum member compared costs more, once per message sent)
_DELIVER, _RETURN = int(MsgType.DELIVER), int(MsgType.RETURN)
_DELIVER_GROUP = (int(MsgType.DELIVER_MANY), int(MsgType.DELIVER_BUNDLE))


def _approx_size(message: Message) -> int:
    """Bytes a message takes on the wire, give or take its small fields:
    only user payloads can be large."""
    mtype, fields = message
    if mtype == _DELIVER:
        return 32 + len(fields[0]) + sum(len(item[0]) + 12 for item in fields[1])
    if mtype in _DELIVER_GROUP:
        return 32 + len(fields[1][0]) + sum(len(c) + 2 for c in fields[0])
    if mtype == _RETURN:
        return 32 + len(fields[1]) + sum(len(item[0]) + 12 for item in fields[2])
    size = 32
    for f in fields:
        if type(f) is bytes or type(f) is str:
            size += len(f)
    return size


# Bounds on what a decoder will build, so a hostile frame cannot make it
# allocate unboundedly (msgpack's own limits are per-container and generous).
_MAX_BATCH = 100_000


def decode(frame: bytes, max_size: int | None = None, specs: Specs | None = None) -> list[Message]:
    """Every message in a frame, validated against ``specs`` (the client
    protocol's by default; ``specs_of`` builds others). Raises only
    ``DecodeError``."""
    specs = _SPECS if specs is None else specs
    mtype_num, body = _body(frame, max_size)
    if mtype_num == MsgType.BATCH:
        return [check_message(item, specs) for item in body]
    return [_check(mtype_num, body, specs)]


def decode_each(
    frame: bytes, max_size: int | None = None, specs: Specs | None = None
) -> list[Message | DecodeError]:
    """As ``decode``, but each message of a BATCH is checked by itself: in
    the place of each one that is not well-formed, why. Raises
    ``DecodeError`` for a frame that is not well-formed as a whole."""
    specs = _SPECS if specs is None else specs
    mtype_num, body = _body(frame, max_size)
    if mtype_num != MsgType.BATCH:
        return [_check(mtype_num, body, specs)]
    out: list[Message | DecodeError] = []
    for item in body:
        try:
            out.append(check_message(item, specs))
        except DecodeError as exc:
            out.append(exc)
    return out


def _body(frame: bytes, max_size: int | None) -> tuple[int, list[Any]]:
    """A frame's type number and its unpacked body (an array)."""
    if max_size is not None and len(frame) > max_size:
        raise DecodeError("oversized", f"{len(frame)} > {max_size} bytes")
    if len(frame) < 2:
        raise DecodeError("truncated", f"{len(frame)} bytes")
    if frame[0] != PROTOCOL_VERSION:
        raise DecodeError("version", f"got {frame[0]}, speak {PROTOCOL_VERSION}")
    try:
        body = msgpack.unpackb(
            memoryview(frame)[2:],
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_array_len=_MAX_BATCH,
        )
    except Exception as exc:  # msgpack raises many kinds; one error for all
        raise DecodeError("msgpack", repr(exc)[:200]) from None
    if not isinstance(body, list):
        raise DecodeError("shape", "body is not an array")
    return frame[1], body


_BY_NUMBER: dict[int, MsgType] = {int(t): t for t in MsgType}


def _exact(typ: type | tuple[type, ...]) -> frozenset[type]:
    return frozenset(typ) if isinstance(typ, tuple) else frozenset((typ,))


#: type number -> (type, field names, the exact types each field may have):
#: msgpack builds exact ints, floats, strs, bytes, lists and dicts (never a
#: subclass), so a set lookup of ``type(value)`` checks a field, and a bool
#: (its own type) is never taken for an int
Specs = dict[int, tuple[MsgType, tuple[str, ...], tuple[frozenset[type], ...]]]


def specs_of(layouts: dict[MsgType, _F]) -> Specs:
    """What ``decode`` checks frames against, from field layouts like ``FIELDS``."""
    return {
        int(t): (t, tuple(name for name, _ in fs), tuple(_exact(typ) for _, typ in fs))
        for t, fs in layouts.items()
    }


_SPECS = specs_of(FIELDS)


def check_message(item: object, specs: Specs | None = None) -> Message:
    """One message given as ``[type, field, ...]`` (as inside a BATCH or a
    relay), validated like a frame's. Raises only ``DecodeError``."""
    if type(item) is not list or not item or not isinstance(item[0], int):
        raise DecodeError("shape", "message is not [type, ...]")
    if item[0] == MsgType.BATCH:
        raise DecodeError("shape", "nested batch")
    return _check(item[0], item[1:], _SPECS if specs is None else specs)


def _check(mtype_num: int, fields: list[Any], specs: Specs) -> Message:
    spec = specs.get(mtype_num)
    if spec is None:
        raise DecodeError("type", f"unknown message type {mtype_num}")
    mtype, names, types = spec
    if len(fields) != len(names):
        raise DecodeError("shape", f"{mtype.name} has {len(fields)} fields, want {len(names)}")
    for i, (value, allowed) in enumerate(zip(fields, types, strict=True)):
        if type(value) not in allowed:
            name = names[i]
            raise DecodeError(
                "field",
                f"{mtype.name}.{name} is {type(value).__name__}, want {sorted(allowed, key=str)}",
            )
    return mtype, tuple(fields)
