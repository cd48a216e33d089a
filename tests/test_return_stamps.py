"""A give-back relayed to an owner carries the stamps of what it gives
back (``FEATURE_RETURN_STAMPS``), and the owner puts it where its
producers' order says.

The client's node knows each stamp: it handed the message to its client,
or passed on another owner's delivery with its stamp (``RelayBack``). The
owner the give-back reaches may not have handed it (the channel moved, or
two nodes owned it at once): without stamps it went to the front under new
numbers, before older messages of the same producer (simulation seed
5978), or its numbers, which another owner gave, were taken for the
owner's own (seed 489). And what a client gives back no longer makes its
node forget that the client took a producer's newer message (seed 6222).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_routing import relay, routing
from zchannels.node.effects import Fx
from zchannels.node.peer_messages import Relay, RelayBack
from zchannels.node.peer_wire import (
    FEATURE_RETURN_STAMPS,
    FEATURE_STAMPS,
    FEATURES,
    decode_peer,
    encode_peer,
    readable,
    stamps_in,
    to_wire,
)
from zchannels.node.queues import Queues, Stamp

from zchannels.protocol import DecodeError, MsgType, encode

R = b"r"  # a receiving connection (at the owner: its client, relayed)
P = "n0/abcdefghij"  # a producer
LIFE = 1_000_000


def _taken(q: Queues, name: str = "c", conn: bytes = b"next") -> list[bytes]:
    """Everything ``name`` holds, in the order a receiver is handed it."""
    got: list[bytes] = []
    for _c, _n, items in q.grant(conn, name, 1000, 2.0):
        got += [payload for payload, _ttl, _seq in items]
    return got


def _stamp(n: int) -> Stamp:
    return (P, LIFE, n)


# -- the owner ------------------------------------------------------------------


@pytest.mark.parametrize("stamped", [True, False])
def test_another_owners_deliveries_given_back_go_where_their_stamps_say(stamped: bool) -> None:
    """Seed 5978 (37 ops): the owner handed send 24; the client's node,
    holding the owner dead, served the client's sends 25-30 itself (its
    numbers). The client gave back 25-30 to the owner, then 24. Without
    stamps 25-30, not in the owner's flight, went to the front, before 24."""
    owner = Queues()
    owner.put("c", b"24", 60.0, 100, 0.0, stamp=_stamp(24))
    [(_, _, handed)] = owner.grant(R, "c", 1, 0.0)
    elsewhere = [[b"%d" % n, 50.0, 100 + n] for n in range(25, 31)]  # (another node's numbers)
    given = [_stamp(n) for n in range(25, 31)] if stamped else None
    owner.give_back(R, "c", elsewhere, 1.0, stamps=given)
    owner.give_back(R, "c", [[p, ttl, seq] for p, ttl, seq in handed], 1.0)
    expected = [b"%d" % n for n in range(24, 31)]
    if stamped:
        assert _taken(owner) == expected
    else:  # (as before the stamps travelled: the order this fix is for)
        assert _taken(owner) == expected[1:] + expected[:1]
    assert owner.channels["c"].pool.held == 7


def test_a_give_back_numbered_as_an_owners_own_delivery_is_told_apart_by_its_stamp() -> None:
    """Seed 489 (9 ops): two owners handed one client messages under the
    same numbers (every node's first life numbers from the same place);
    one RETURN gave them all back. By number alone, another owner's send 1
    was taken for this owner's message 1 (and went back with its stamp),
    and its own, given back later in the RETURN, went to the front. With
    the stamps each is what it is."""
    owner = Queues()
    owner.put("c", b"o1", 60.0, 100, 0.0, stamp=("n1/other", LIFE, 1))
    [(_, _, mine)] = owner.grant(R, "c", 1, 0.0)
    seq = mine[0][2]
    theirs = [b"p1", 50.0, seq]  # the other owner's delivery, the same number
    items = [theirs, [mine[0][0], mine[0][1], seq]]
    owner.give_back(R, "c", items, 1.0, stamps=[_stamp(1), ("n1/other", LIFE, 1)])
    ch = owner.channels["c"]
    assert {item[1]: item[4] for item in ch.items} == {
        b"p1": _stamp(1),
        b"o1": ("n1/other", LIFE, 1),
    }
    assert ch.pool.held == 2 and not ch.flight


# -- the client's node ----------------------------------------------------------


def test_the_clients_node_gives_the_stamps_of_what_its_client_gives_back() -> None:
    """What it handed (as owner) and what it passed on (another owner's
    delivery, numbered the same) are told apart by payload; what the
    client reports taken, passed on to the owner, is forgotten."""
    q = Queues()
    q.put("c", b"a", 60.0, 100, 0.0, stamp=_stamp(1))
    [(_, _, handed)] = q.grant(R, "c", 1, 0.0)
    seq = handed[0][2]
    assert q.from_elsewhere(R, "c", "n2", _stamp(2), seq, 0.5, b"b")
    assert q.from_elsewhere(R, "c", "n2", _stamp(3), seq + 1, 0.5, b"x")
    q.took(R, "c", 1)  # (its report of "a", passed on: the first handed)
    items = [[b"b", 10.0, seq], [b"x", 10.0, seq + 1], [b"unknown", 10.0, 99]]
    assert q.stamps_given_back(R, "c", items) == ((0, *_stamp(2)), (1, *_stamp(3)))
    assert q.held_stamps == {}
    assert q.stamps_given_back(R, "c", items) == ()


def test_a_clients_stamps_are_forgotten_as_it_takes_them_and_in_time() -> None:
    q = Queues()
    for n in (1, 2, 3):
        q.put("c", b"%d" % n, 60.0, 100, 0.0, stamp=_stamp(n))
    [(_, _, handed)] = q.grant(R, "c", 3, 0.0)
    q.consumed(R, "c", handed[1][2], 2, 0)  # (taken here: by its numbers)
    assert list(q.held_stamps[(R, "c")]) == [handed[2][2]]
    q.expire(1000.0)
    assert q.held_stamps == {}


def test_a_give_back_keeps_the_mark_of_a_newer_message_its_client_took() -> None:
    """Seed 6222: the client gave back sends 4-11 (it had withdrawn its
    credit as they came); its node took the RETURN up late, after it had
    passed on the owner's sends 15-36, which the client took. Forgetting
    every mark let 4-11, handed again by the same owner where their stamps
    say (new numbers, before 15-36's), through after 15-36. Knowing the
    stamps given back, the mark of send 36 stays, and 4-11 are refused."""
    q = Queues()
    for n in range(4, 12):
        assert q.from_elsewhere(R, "c", "n2", _stamp(n), 20 + n, 1.0, b"%d" % n)
    for n in range(15, 37):
        assert q.from_elsewhere(R, "c", "n1", _stamp(n), 100 + n, 2.0, b"%d" % n)
    items = [[b"%d" % n, 10.0, 20 + n] for n in range(4, 12)]
    stamps = q.stamps_given_back(R, "c", items)
    assert [s[3] for s in stamps] == list(range(4, 12))
    q.forget_handed(R, "c", [20 + n for n in range(4, 12)], 3.0, [_stamp(n) for n in range(4, 12)])
    assert not q.from_elsewhere(R, "c", "n1", _stamp(4), 90, 3.5, b"4")
    assert q.from_elsewhere(R, "c", "n1", _stamp(37), 137, 3.5, b"37")


def test_a_give_back_of_a_producers_newest_forgets_its_mark() -> None:
    """What the client gave back, its newest included, comes again from
    any owner and is not refused (as before); so does a producer's message
    when a stamp given back is not known (no more is known than before)."""
    for known in (True, False):
        q = Queues()
        for n in (5, 6, 7):
            assert q.from_elsewhere(R, "c", "n2", _stamp(n), n, 1.0, b"%d" % n)
        stamps: list[Stamp | None] = [_stamp(6), _stamp(7) if known else None]
        q.forget_handed(R, "c", [6, 7], 2.0, stamps)
        assert q.from_elsewhere(R, "c", "n1", _stamp(6), 1, 2.5, b"6"), known


# -- the wire -----------------------------------------------------------------

RETURN_STAMPED = Relay(
    "n1",
    7,
    b"\x00k",
    "abcdefghij",
    60.0,
    1,
    (
        (MsgType.RETURN, (3, "asgi|c", [[b"x", 1.5, 7], [b"y", 1.5, 8]], 1, ((1, P, LIFE, 42),))),
        (MsgType.SEND, (0, "asgi|c", b"p", 100, (P, LIFE, 43))),
    ),
    2.5,
)


def test_a_relayed_return_with_stamps_in_golden_bytes() -> None:
    """PEER_RELAY_STAMPED (64), its layout unchanged: a RETURN may end with
    the stamps of what it gives back, ``[[index in items, producer, life,
    n]...]``."""
    frame = encode_peer(RETURN_STAMPED)
    assert frame.hex() == (
        "014098a26e3107c402006baa6162636465666768696acb404e00000000000001"
        "92960a03a6617367697c639293c40178cb3ff80000000000000793c40179cb3f"
        "f80000000000000801919401ad6e302f6162636465666768696ace000f42402a"
        "960500a6617367697c63c401706493ad6e302f6162636465666768696ace000f"
        "42402bcb4004000000000000"
    )
    assert decode_peer(frame) == [RETURN_STAMPED]
    assert stamps_in(RETURN_STAMPED) == 2


@pytest.mark.parametrize(
    "stamps",
    [
        [[0, P, LIFE]],  # short
        [[0, "", LIFE, 1]],  # no producer
        [[True, P, LIFE, 1]],  # bool is not int
        [[0, P, LIFE, -1]],
        "not a list",
    ],
)
def test_a_malformed_return_stamp_is_refused(stamps: object) -> None:
    ret = [MsgType.RETURN, 3, "asgi|c", [[b"x", 1.5, 7]], 1, stamps]
    frame = encode(MsgType.PEER_RELAY_STAMPED, "n1", 7, b"\x00k", "abcdefghij", 60.0, 1, [ret], 2.5)
    with pytest.raises(DecodeError):
        decode_peer(frame)


def test_a_plain_relay_carries_no_return_stamps() -> None:
    ret = [MsgType.RETURN, 3, "asgi|c", [[b"x", 1.5, 7]], 1, [[0, P, LIFE, 1]]]
    frame = encode(MsgType.PEER_RELAY, "n1", 7, b"\x00k", "abcdefghij", 60.0, 1, [ret], 2.5)
    with pytest.raises(DecodeError):
        decode_peer(frame)


def test_a_life_that_reads_no_return_stamps_is_sent_the_return_without_them() -> None:
    """A peer of the version before (its hello says ``FEATURE_STAMPS``
    alone) would refuse a RETURN with a fifth field: it is sent without
    it, its send keeps its stamp; a life of no feature gets neither."""
    assert (FEATURE_STAMPS, FEATURE_RETURN_STAMPS, FEATURES) == (1, 2, 3)
    same, stripped = readable(RETURN_STAMPED, FEATURES)
    assert (same, stripped) == (RETURN_STAMPED, 0)
    older, stripped = readable(RETURN_STAMPED, FEATURE_STAMPS)
    assert stripped == 1
    ret, send = older.messages if isinstance(older, Relay) else ((), ())
    assert ret == (MsgType.RETURN, RETURN_STAMPED.messages[0][1][:4])
    assert send == RETURN_STAMPED.messages[1]
    assert to_wire(older)[0] == MsgType.PEER_RELAY_STAMPED
    oldest, stripped = readable(RETURN_STAMPED, 0)
    assert stripped == 2
    assert to_wire(oldest)[0] == MsgType.PEER_RELAY
    assert oldest == replace(
        RETURN_STAMPED, messages=tuple((t, f[:4]) for t, f in RETURN_STAMPED.messages)
    )
    assert decode_peer(encode_peer(oldest)) == [oldest]


# -- the owner's relay back -------------------------------------------------------


def test_deliveries_made_as_their_channel_is_handed_over_are_relayed_with_their_stamps() -> None:
    """Seed 6222's shrink (26 ops): an owner that thawed delivered a
    producer's sends 4-11 to a client of another node and handed the
    channel over in the same step; the relay back was made after the
    handover, from the channel's stamps, gone with it: sent without them,
    the client's node could not refuse them after the new owner's 15-19."""
    r, core, _ = routing()
    stamp = (P, LIFE, 4)
    core.queues.put("asgi|c", b"4", 60.0, 100, 0.0, stamp=stamp)
    fx = relay(r, 1_795_000_000_007, (MsgType.RECV, ("asgi|c", 10)))
    deliveries = [o for o in fx.out if o[1][0] == MsgType.DELIVER]
    [(_, (_, (_, [item])))] = deliveries
    core.queues.take("asgi|c", 0.0)  # (handed over in the same step)
    assert "asgi|c" not in core.queues.channels
    back = Fx()
    r.send_back(deliveries, back, 0.0)
    [(_, msg)] = back.peers
    assert isinstance(msg, RelayBack)
    assert msg.stamps == (("asgi|c", item[2], *stamp),)
