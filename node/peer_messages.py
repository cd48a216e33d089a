"""The cluster's peer messages (besides the member table's own): frozen
dataclasses, one per message type, fields in wire order.

Owns: what routing and group replication say to each other's nodes. The wire
layouts, the type numbers and every check on what arrives live in
``zchannels.node.peer_wire`` (the one peer codec); the member table's
messages (``Ping``, ``Ack``, ...) live with it in ``membership``. A message
that reaches a handler is well-formed: handlers check meaning (is the sender
a member?), never shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zchannels.protocol import Message

#: An item of a channel as it travels: [payload, ttl remaining (s), seq],
#: and its stamp ``(producer, life, n)`` if it has one (``queues.Stamp``).
Item = list[Any]


@dataclass(frozen=True, slots=True)
class GroupDelta:
    """One change of ``origin``'s own member count of ``group`` (absolute);
    ``ack`` != 0: answer ``GroupDeltaAck`` with it (a group_add waits)."""

    origin: str
    incarnation: int
    version: int
    group: str
    count: int
    ack: int


@dataclass(frozen=True, slots=True)
class GroupDeltaAck:
    source: str
    ack: int


@dataclass(frozen=True, slots=True)
class GroupDigest:
    """``entries``: (origin, incarnation, contiguous version) the sender
    holds; answered with the ``GroupSlice``s it lacks."""

    source: str
    entries: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class GroupSlice:
    """``origin``'s whole slice of member counts up to ``version``."""

    origin: str
    incarnation: int
    version: int
    counts: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class GroupFanout:
    """A group_send for the receiving node's own members; ``ttl`` seconds.
    ``(origin, incarnation, seq)`` names it: the node where it was sent, in
    that life, numbered (a copy passed on is dropped where it came before)."""

    origin: str
    incarnation: int
    seq: int
    group: str
    payload: bytes
    ttl: float


@dataclass(frozen=True, slots=True)
class GroupFanoutPassed:
    """A ``GroupFanout`` (same id and fields) that ``source`` passed on: it
    came to ``source`` after ``source`` had handed memberships of ``group``
    to the receiving node, so it reached none of those there. The receiver
    applies it to what those handovers brought that its own copy, if it had
    one, did not reach (``replication``)."""

    source: str
    origin: str
    incarnation: int
    seq: int
    group: str
    payload: bytes
    ttl: float


@dataclass(frozen=True, slots=True)
class FanoutsSeen:
    """Sent just before a ``Handoff`` that moves group memberships, on the
    same link: the last group_send fanout ``source`` had taken from each
    origin (``(origin, incarnation, seq)``; an origin's fanouts reach it in
    order), so every one up to it had reached the memberships that follow.
    The receiver does not give those memberships a copy of such a fanout
    again (it may get one straight from the origin, which sends there as
    soon as its counts say so: ``replication``)."""

    source: str
    upto: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class Relay:
    """Client messages of connection ``conn`` on node ``origin`` (at
    ``incarnation``) for channels the receiving node owns. ``tag``: the
    client's session tag (its memberships are held as
    ``origin@incarnation/tag``); ``expiry``: its message expiry (s);
    ``hops``: how many nodes passed it on (bounded by ``core.MAX_HOPS``);
    ``sent_at``: when the origin sent it, on the origin's monotonic clock
    (the owner refuses a send that arrives after the origin stopped waiting
    for it: ``routing``). A ``SEND`` among ``messages`` may carry a fifth
    field, its stamp ``(producer, life, n)`` (``queues.Stamp``, given by the
    producer's node), and a ``RETURN`` a fifth field too, the stamps of
    what it gives back, ``((index in items, producer, life, n)...)`` (from
    the client's node, for a life that reads them:
    ``peer_wire.FEATURE_RETURN_STAMPS``): then the relay travels as
    ``PEER_RELAY_STAMPED``."""

    origin: str
    incarnation: int
    conn: bytes
    tag: str
    expiry: float
    hops: int
    messages: tuple[Message, ...]
    sent_at: float


@dataclass(frozen=True, slots=True)
class RelayLost:
    """What a ``Relay`` of client ``conn`` on node ``origin`` (at
    ``incarnation``) told the receiving node of its flight, on a link its
    sender gave up while it thought the receiver dead, and which the
    receiver, alive in that same life, said it never took (``LinkState``).
    ``reports``: (channel, upto, count, expired) as the client reported
    them; each releases the first ``count`` of the client's flight of the
    channel here whatever their numbers (the reports that came after it
    released the oldest in their place), unless it is older than a flush
    of the channel's namespace. ``returned``: (channel, sequence numbers)
    the client gave back; counted lost (``dead_owner``) and dropped from the
    flight, never queued again: newer messages of the channel may have been
    delivered since."""

    origin: str
    incarnation: int
    conn: bytes
    reports: tuple[tuple[str, int, int, int], ...]
    returned: tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True, slots=True)
class RelayBack:
    """The owner's answers (deliveries, ACK, ERROR, REVOKE, FLUSHED) for
    ``conn`` on the receiving node; ``source``: the owner. ``stamps``: of
    the messages it delivers that have one (``queues.Stamp``), as
    ``(channel, seq, producer, life, n)``; with any, it travels as
    ``PEER_RELAY_BACK_STAMPED``."""

    source: str
    conn: bytes
    messages: tuple[Message, ...]
    stamps: tuple[tuple[str, int, str, int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class ConnGone:
    """Connections of ``origin`` that went away: forget their credit."""

    origin: str
    incarnation: int
    conns: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class HolderGone:
    """Client sessions of ``origin`` that ended: drop what they hold."""

    origin: str
    incarnation: int
    sessions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HandedOver:
    """``origin`` has handed over (``Handoff``, before this on the same link)
    everything it held that the receiving node owns, once it saw that node
    live at ``incarnation`` in a new life."""

    origin: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class Handoff:
    """Names the receiving node now owns: ``channels`` (name, items oldest
    first) and ``members`` (group, channel, holder, ttl s, capacity). An
    item with a stamp (``Item``) makes it travel as
    ``PEER_HANDOFF_STAMPED``."""

    origin: str
    channels: tuple[tuple[str, list[Item]], ...]
    members: tuple[tuple[str, str, str, float, int], ...]


#: (pool, holder's node, its incarnation, the holder's connection there, its
#: session tag, its message expiry s, slots left, seconds left)
HandedReservation = tuple[str, str, int, bytes, str, float, int, float]


@dataclass(frozen=True, slots=True)
class Reservations:
    """Send reservations ``origin`` granted on pools the receiving node now
    owns, handed over with their queues (just before their ``Handoff``, on
    the same link): each holder's reserved sends, which it makes without
    waiting for an answer, must still fit at the new owner."""

    origin: str
    entries: tuple[HandedReservation, ...]


@dataclass(frozen=True, slots=True)
class Ask:
    """A cluster-wide request: ``kind`` "flush" (arg: prefix) or "members"
    (arg: group)."""

    qid: int
    origin: str
    kind: str
    arg: str


@dataclass(frozen=True, slots=True)
class Answer:
    """``result``: nothing for flush, the group's channels on ``source``."""

    qid: int
    source: str
    result: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Load:
    """What ``origin`` holds now: {"channels": n, "queued": n, "drops": {...}}."""

    origin: str
    load: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LinkSeq:
    """The frame's next message is number ``seq`` of link ``gen`` from
    ``source`` in its life ``life`` (its starting incarnation) to the
    receiving node, which the sender knew at incarnation ``target``
    (``links``)."""

    source: str
    life: int
    gen: int
    seq: int
    target: int


@dataclass(frozen=True, slots=True)
class LinkAck:
    """``source`` took every message of link ``gen`` (of the receiving
    node's life ``life``) up to ``upto``. ``gen`` 0 is a hello: ``source``
    speaks links in its life ``life``, and ``upto`` is the bit set of what
    that life reads beyond what every version with links reads
    (``peer_wire.FEATURES``; 0 from an older version, which ignores it)."""

    source: str
    life: int
    gen: int
    upto: int


@dataclass(frozen=True, slots=True)
class LinkProbe:
    """``source`` gave up its link ``gen`` (of its life ``life``) to the
    receiving node with frames not acknowledged: how far did you take it?
    Answered with ``LinkState``; sent on the same connection after those
    frames, so the answer is final."""

    source: str
    life: int
    gen: int


@dataclass(frozen=True, slots=True)
class LinkState:
    """The answer to a ``LinkProbe``: ``source`` took link ``gen`` of the
    receiving node's life ``life`` up to ``upto``, and no more will come
    (-1: it does not know: a new process, or it forgot the link)."""

    source: str
    life: int
    gen: int
    upto: int


ClusterMessage = (
    GroupDelta
    | GroupDeltaAck
    | GroupDigest
    | GroupSlice
    | GroupFanout
    | GroupFanoutPassed
    | FanoutsSeen
    | Relay
    | RelayBack
    | ConnGone
    | HolderGone
    | Handoff
    | HandedOver
    | Reservations
    | Ask
    | Answer
    | Load
    | LinkSeq
    | LinkAck
    | LinkProbe
    | LinkState
    | RelayLost
)

#: Which part of the node handles which message (``ClusterNode`` dispatches).
ROUTING_MESSAGES = (
    Relay,
    RelayLost,
    RelayBack,
    ConnGone,
    HolderGone,
    Handoff,
    Reservations,
    Ask,
    Answer,
    Load,
)
REPLICATION_MESSAGES = (
    GroupDelta,
    GroupDeltaAck,
    GroupDigest,
    GroupSlice,
    GroupFanout,
    GroupFanoutPassed,
    FanoutsSeen,
)

#: The messages that carry times left (``aged``).
TIMED = (Handoff, Reservations)


def aged(msg: ClusterMessage, age: float) -> ClusterMessage | None:
    """``msg`` as it reads ``age`` seconds after it was made, if it carries
    times left (the items' and memberships' TTLs of a ``Handoff``, the
    reservations' of ``Reservations``); None if it carries none. A link
    sends a frame again as it was made (``links``): a TTL measured then
    would say the items are younger by as long as the frame waited, and a
    receiver merging a handover with what it queued meanwhile by deadline
    would put them after newer messages (simulation seed 46: a ``Handoff``
    sent again for a second)."""
    if isinstance(msg, Handoff):
        channels = tuple(
            (name, [[item[0], item[1] - age, *item[2:]] for item in items])
            for name, items in msg.channels
        )
        # (a membership or a reservation whose time ran out meanwhile is
        # left out, as its receiver would drop it; an item is kept, for the
        # receiver to count expired)
        members = tuple((g, c, h, ttl - age, cap) for g, c, h, ttl, cap in msg.members if ttl > age)
        return Handoff(msg.origin, channels, members)
    if isinstance(msg, Reservations):
        entries = tuple((*e[:7], e[7] - age) for e in msg.entries if e[7] > age)
        return Reservations(msg.origin, entries)
    return None
