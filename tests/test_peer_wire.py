"""The peer codec: golden bytes lock every peer message; typed messages
survive the wire unchanged; anything malformed inside one is a DecodeError."""

from __future__ import annotations

from dataclasses import replace

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
from zchannels.node.peer_messages import (
    Answer,
    Ask,
    ConnGone,
    FanoutsSeen,
    GroupDelta,
    GroupDigest,
    GroupFanout,
    GroupFanoutPassed,
    GroupSlice,
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
from zchannels.node.peer_wire import (
    FEATURE_RETURN_STAMPS,
    FEATURE_STAMPS,
    FEATURES,
    PEER_FIELDS,
    PeerMessage,
    decode_peer,
    encode_peer,
    encode_peers,
    from_wire,
    readable,
    to_wire,
)

from zchannels.protocol import FIELDS, DecodeError, MsgType, decode, encode, specs_of

U = ["a", "tcp://h:1", 7, "alive", "a"]  # one gossiped member update

# Every peer message type, encoded once, as it must stay (type numbers are
# zchannels.protocol.MsgType's; PEER_SEND 33, PEER_SEND_RESULT 34 and
# PEER_RELAY_V1 35 and GROUP_FANOUT_V1 32 were retired before any release). A change here is a
# protocol change.
GOLDEN: dict[MsgType, tuple[tuple[object, ...], str]] = {
    MsgType.PEER_PING: (
        (5, "a", "tcp://h:1", "b", [U]),
        "01159505a161a97463703a2f2f683a31a1629195a161a97463703a2f2f683a3107a5616c697665a161",
    ),
    MsgType.PEER_PING_REQ: (
        (5, "a", "tcp://h:1", "b", "tcp://h:2", []),
        "01169605a161a97463703a2f2f683a31a162a97463703a2f2f683a3290",
    ),
    MsgType.PEER_ACK: (
        (5, "b", [U]),
        "01179305a1629195a161a97463703a2f2f683a3107a5616c697665a161",
    ),
    MsgType.PEER_NACK: ((5, "c"), "01189205a163"),
    MsgType.PEER_GOSSIP: (
        ("a", [U]),
        "011992a1619195a161a97463703a2f2f683a3107a5616c697665a161",
    ),
    MsgType.PEER_SYNC: (
        ("zc", 1, "a", "tcp://h:1", 1, [U]),
        "011a96a27a6301a161a97463703a2f2f683a31019195a161a97463703a2f2f683a3107a5616c697665a161",
    ),
    MsgType.PEER_REFUSE: (
        ("zc", 1, "a", "other cluster"),
        "011b94a27a6301a161ad6f7468657220636c7573746572",
    ),
    MsgType.GROUP_DELTA: (
        ("n1", 1795492554600, 3, "asgi|blog", 2, 7),
        "011c96a26e31cf000001a20bb2276803a9617367697c626c6f670207",
    ),
    MsgType.GROUP_DELTA_ACK: (("n2", 7), "011d92a26e3207"),
    MsgType.GROUP_DIGEST: (
        ("n1", [["n1", 1795492554600, 3]]),
        "011e92a26e319193a26e31cf000001a20bb2276803",
    ),
    MsgType.GROUP_SLICE: (
        ("n1", 1795492554600, 3, [["asgi|blog", 2]]),
        "011f94a26e31cf000001a20bb22768039192a9617367697c626c6f6702",
    ),
    MsgType.GROUP_FANOUT: (
        ("n1", 7, 3, "asgi|blog", b"\x81\xa1a\x01", 60.0),
        "013496a26e310703a9617367697c626c6f67c40481a16101cb404e000000000000",
    ),
    MsgType.GROUP_FANOUT_PASSED: (
        ("n2", "n1", 7, 3, "asgi|blog", b"\x81\xa1a\x01", 60.0),
        "013597a26e32a26e310703a9617367697c626c6f67c40481a16101cb404e000000000000",
    ),
    MsgType.PEER_RELAY: (
        ("n1", 7, b"\x00k\x8bEg", "abcdefghij", 60.0, 1, [[8, "asgi|c", 5]], 1.5),
        "013098a26e3107c405006b8b4567aa6162636465666768696acb404e00000000000001919308a6617367697c6305cb3ff8000000000000",
    ),
    MsgType.PEER_RELAY_BACK: (
        ("n2", b"\x00k\x8bEg", [[6, 3, 1]]),
        "012493a26e32c405006b8b45679193060301",
    ),
    MsgType.PEER_CONN_GONE: (
        ("n1", 7, [b"\x00k\x8bEg"]),
        "012593a26e310791c405006b8b4567",
    ),
    MsgType.PEER_HOLDER_GONE: (
        ("n1", 7, ["abcdefghij"]),
        "012693a26e310791aa6162636465666768696a",
    ),
    MsgType.PEER_HANDOFF: (
        (
            "n1",
            [["asgi|c", [[b"\x81\xa1a\x01", 30.0, 7]]]],
            [["asgi|blog", "asgi|c", "n1@7/abcdefghij", 60.0, 100]],
        ),
        "012793a26e319192a6617367697c639193c40481a16101cb403e000000000000079195a9617367697c626c6f67a6617367697c63af6e3140372f6162636465666768696acb404e00000000000064",
    ),
    MsgType.PEER_HANDED_OVER: (
        ("n1", 1000007),
        "013992a26e31ce000f4247",
    ),
    MsgType.PEER_LINK_SEQ: (
        ("n1", 1000007, 2, 5, 1000003),
        "013a95a26e31ce000f42470205ce000f4243",
    ),
    MsgType.PEER_LINK_ACK: (
        ("n2", 1000007, 2, 5),
        "013b94a26e32ce000f42470205",
    ),
    MsgType.PEER_LINK_PROBE: (
        ("n1", 1000007, 2),
        "013c93a26e31ce000f424702",
    ),
    MsgType.PEER_LINK_STATE: (
        ("n2", 1000007, 2, 5),
        "013d94a26e32ce000f42470205",
    ),
    MsgType.PEER_FANOUTS_SEEN: (
        ("n2", [["n1", 1000007, 42]]),
        "013e92a26e329193a26e31ce000f42472a",
    ),
    MsgType.PEER_ASK: (
        (4, "n1", "flush", "asgi"),
        "01289404a26e31a5666c757368a461736769",
    ),
    MsgType.PEER_ANSWER: (
        (4, "n2", ["asgi|c"]),
        "01299304a26e3291a6617367697c63",
    ),
    MsgType.PEER_LOAD: (
        ("n2", {"channels": 3, "queued": 12}),
        "012a92a26e3282a86368616e6e656c7303a67175657565640c",
    ),
    MsgType.PEER_RELAY_LOST: (
        ("n2", 1000007, b"\x00k", [["asgi|c", 9, 2, 0]], [["asgi|c", [10, 11]]]),
        "013f95a26e32ce000f4247c402006b9194a6617367697c630902009192a6617367697c63920a0b",
    ),
    # PEER_RELAY's layout; its SEND carries its stamp [producer, life, n]
    MsgType.PEER_RELAY_STAMPED: (
        (
            "n1",
            7,
            b"\x00k\x8bEg",
            "abcdefghij",
            60.0,
            1,
            [[5, 3, "asgi|c", b"p", 100, ["n1/abcdefghij", 1000007, 42]], [8, "asgi|c", 5]],
            1.5,
        ),
        "014098a26e3107c405006b8b4567aa6162636465666768696acb404e0000000000000192960503a6617367697c63c401706493ad6e312f6162636465666768696ace000f42472a9308a6617367697c6305cb3ff8000000000000",
    ),
    # PEER_HANDOFF's layout; an item may carry its stamp
    MsgType.PEER_HANDOFF_STAMPED: (
        (
            "n1",
            [
                [
                    "asgi|c",
                    [
                        [b"\x81\xa1a\x01", 30.0, 7, ["n1/abcdefghij", 1000007, 42]],
                        [b"\x81\xa1a\x02", 30.0, 8],
                    ],
                ]
            ],
            [["asgi|blog", "asgi|c", "n1@7/abcdefghij", 60.0, 100]],
        ),
        "014193a26e319192a6617367697c639294c40481a16101cb403e0000000000000793ad6e312f6162636465666768696ace000f42472a93c40481a16102cb403e000000000000089195a9617367697c626c6f67a6617367697c63af6e3140372f6162636465666768696acb404e00000000000064",
    ),
    # PEER_RELAY_BACK's fields, and the stamps of what it delivers
    MsgType.PEER_RELAY_BACK_STAMPED: (
        (
            "n2",
            b"\x00k",
            [[MsgType.DELIVER, "asgi|c", [[b"x", 1.5, 7]]]],
            [["asgi|c", 7, "n1/abcdefghij", 1000007, 42]],
        ),
        "014294a26e32c402006b919309a6617367697c639193c40178cb3ff8000000000000079195a6617367697c6307ad6e312f6162636465666768696ace000f42472a",
    ),
    MsgType.PEER_RESERVATIONS: (
        ("n1", [["asgi|c", "n3", 7, b"\x00k\x8bEg", "abcdefghij", 60.0, 4, 1.5]]),
        "013692a26e319198a6617367697c63a26e3307c405006b8b4567aa6162636465666768696acb404e00000000000004cb3ff8000000000000",
    ),
}
RETIRED = {
    MsgType.PEER_SEND,
    MsgType.PEER_SEND_RESULT,
    MsgType.PEER_RELAY_V1,
    MsgType.GROUP_FANOUT_V1,
    MsgType.BATCH,
}


def test_every_type_is_a_client_or_a_peer_type_with_a_golden_frame() -> None:
    assert set(GOLDEN) == set(PEER_FIELDS)
    assert not set(PEER_FIELDS) & set(FIELDS)
    assert set(PEER_FIELDS) | set(FIELDS) | RETIRED == set(MsgType)


@pytest.mark.parametrize("mtype", list(GOLDEN), ids=lambda t: t.name)
def test_golden_bytes(mtype: MsgType) -> None:
    fields, hexframe = GOLDEN[mtype]
    frame = bytes.fromhex(hexframe)
    assert encode(mtype, *fields) == frame
    [msg] = decode_peer(frame)
    assert encode_peer(msg) == frame, "typed message -> the same bytes"
    assert to_wire(msg)[0] == mtype


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
    GroupDelta("n1", 7, 3, "asgi|g", 2, 0),
    GroupDigest("n1", (("n1", 7, 3), ("n2", 8, 1))),
    GroupSlice("n1", 7, 3, (("asgi|a", 1), ("asgi|b", 2))),
    GroupFanout("n1", 7, 3, "asgi|g", b"p", 60.0),
    GroupFanoutPassed("n2", "n1", 7, 3, "asgi|g", b"p", 60.0),
    Relay("n1", 7, b"\x00k", "abcdefghij", 60.0, 1, ((MsgType.RECV, ("asgi|c", 5)),), 2.5),
    Relay(
        "n1",
        7,
        b"\x00k",
        "abcdefghij",
        60.0,
        1,
        (
            (MsgType.SEND, (0, "asgi|c", b"p", 100, ("n1/abcdefghij", 1000007, 3))),
            (MsgType.SEND, (4, "asgi|c", b"q", 100)),
        ),
        2.5,
    ),
    RelayBack("n2", b"\x00k", ((MsgType.DELIVER, ("asgi|c", [[b"x", 1.5, 7]])),)),
    RelayBack(
        "n2",
        b"\x00k",
        ((MsgType.DELIVER, ("asgi|c", [[b"x", 1.5, 7]])),),
        (("asgi|c", 7, "n1/abcdefghij", 1000007, 42),),
    ),
    ConnGone("n1", 7, (b"\x00k", b"\x00j")),
    HolderGone("n1", 7, ("abcdefghij",)),
    Handoff("n1", (("asgi|c", [[b"x", 1.5, 7]]),), (("asgi|g", "asgi|c", "n1@7/t", 60.0, 9),)),
    Handoff("n1", (("asgi|c", [[b"x", 1.5, 7, ("n1/t", 1000007, 3)], [b"y", 1.5, 8]]),), ()),
    Ask(1, "n1", "members", "asgi|g"),
    Answer(1, "n2", ("asgi|c",)),
    Load("n2", {"channels": 1, "queued": 0, "drops": {"full": 0}}),
    LinkSeq("n1", 1000007, 2, 5, 1000003),
    LinkAck("n2", 1000007, 2, 5),
    LinkAck("n2", 1000007, 0, 0),
    LinkProbe("n1", 1000007, 2),
    LinkState("n2", 1000007, 2, 5),
    LinkState("n2", 1000007, 2, -1),
    FanoutsSeen("n2", (("n1", 1000007, 42), ("n3", 9, 1))),
    FanoutsSeen("n2", ()),
    RelayLost("n2", 1000007, b"\x00k", (("asgi|c", 9, 2, 0),), (("asgi|c", (10, 11)),)),
    RelayLost("n2", 1000007, b"\x00k", (), (("asgi|c", ()),)),
    Reservations(
        "n1",
        (
            ("asgi|c", "n3", 7, b"\x00k", "abcdefghij", 60.0, 4, 1.5),
            ("asgi|x.abcdef.ghijklmnop!", "n1", 7, b"\x00j", "abcdefghij", 30.0, 1, 0.25),
        ),
    ),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_roundtrip(msg: PeerMessage) -> None:
    assert decode_peer(encode_peer(msg)) == [msg]


def test_several_messages_travel_in_one_frame() -> None:
    assert decode_peer(encode_peers(MESSAGES)) == MESSAGES


@pytest.mark.parametrize(
    "fields",
    [
        (MsgType.PEER_RELAY, ("n1", 7, b"", "t", 60.0, 1, [], 0.0)),  # empty connection
        (MsgType.PEER_RELAY, ("n1", 7, b"c", "a/b", 60.0, 1, [], 0.0)),  # "/" in a session tag
        (MsgType.PEER_RELAY, ("n1", 7, b"c", "t", 0.0, 1, [], 0.0)),  # no expiry
        (MsgType.PEER_RELAY, ("n1", 7, b"c", "t", 60.0, 1, [[9, "asgi|c", [[b"x", 1, 1]]]], 0.0)),
        (MsgType.PEER_RELAY, ("n1", 7, b"c", "t", 60.0, 1, ["not a message"], 0.0)),
        # a stamp only inside PEER_RELAY_STAMPED, and only a well-formed one
        (
            MsgType.PEER_RELAY,
            ("n1", 7, b"c", "t", 60.0, 1, [[5, 1, "asgi|c", b"p", 1, ["p", 1, 1]]], 0.0),
        ),
        (
            MsgType.PEER_RELAY_STAMPED,
            ("n1", 7, b"c", "t", 60.0, 1, [[5, 1, "asgi|c", b"p", 1, ["p", 1]]], 0.0),
        ),
        (
            MsgType.PEER_RELAY_STAMPED,
            ("n1", 7, b"c", "t", 60.0, 1, [[5, 1, "asgi|c", b"p", 1, ["", 1, 1]]], 0.0),
        ),
        (
            MsgType.PEER_RELAY_STAMPED,
            ("n1", 7, b"c", "t", 60.0, 1, [[5, 1, "asgi|c", b"p", 1, ["p", True, 1]]], 0.0),
        ),
        (
            MsgType.PEER_RELAY_STAMPED,
            ("n1", 7, b"c", "t", 60.0, 1, [[5, 1, "asgi|c", b"p", 1, ["p", 1, -1]]], 0.0),
        ),
        (
            MsgType.PEER_RELAY_STAMPED,
            ("n1", 7, b"c", "t", 60.0, 1, [[8, "asgi|c", 1, ["p", 1, 1]]], 0.0),
        ),
        (
            MsgType.PEER_RELAY_STAMPED,
            ("n1", 7, b"c", "t", 60.0, 1, [[6, 1, 0]], 0.0),
        ),  # an ACK is not relayed
        (MsgType.PEER_RELAY_BACK, ("n2", b"c", [[5, 1, "asgi|c", b"p", 1]])),  # a SEND back
        (MsgType.PEER_CONN_GONE, ("n1", 7, ["not bytes"])),
        (MsgType.PEER_HOLDER_GONE, ("n1", 7, [b"not str"])),
        (MsgType.PEER_HANDOFF, ("n1", [["bad"]], [])),
        (MsgType.PEER_HANDOFF, ("n1", [["asgi|d", [["not bytes", 1, 1]]]], [])),
        (MsgType.PEER_HANDOFF, ("n1", [["asgi|d", [[b"x", 1, 1, ["p", 1, 1]]]]], [])),  # stamped
        (MsgType.PEER_HANDOFF_STAMPED, ("n1", [["asgi|d", [[b"x", 1, 1, ["p", 1]]]]], [])),
        (MsgType.PEER_HANDOFF_STAMPED, ("n1", [["asgi|d", [[b"x", 1, 1, ["p", 1, 1], 0]]]], [])),
        (
            MsgType.PEER_HANDOFF_STAMPED,
            ("n1", [["asgi|d", [["not bytes", 1, 1, ["p", 1, 1]]]]], []),
        ),
        (MsgType.PEER_HANDOFF_STAMPED, ("n1", [["asgi|d", [b"x"]]], [])),
        (MsgType.PEER_RELAY_BACK_STAMPED, ("n2", b"k", [], [["asgi|d", 7, "p", 1]])),
        (MsgType.PEER_RELAY_BACK_STAMPED, ("n2", b"k", [], [["asgi|d", 1.5, "p", 1, 1]])),
        (MsgType.PEER_RELAY_BACK_STAMPED, ("n2", b"k", [], [["bad name!?", 7, "p", 1, 1]])),
        (MsgType.PEER_HANDOFF, ("n1", [], [["asgi|g", "asgi|h", "n2@7/x", -1.0, 10]])),
        (MsgType.PEER_HANDOFF, ("n1", [], [["asgi|g", "asgi|h", "n2@7/x", 60.0, 0]])),
        (MsgType.PEER_RELAY_LOST, ("n2", 7, b"", [], [])),  # no connection
        (MsgType.PEER_RELAY_LOST, ("n2", 7, b"c", [["asgi|c", 9, 1, 2]], [])),  # expired > count
        (MsgType.PEER_RELAY_LOST, ("n2", 7, b"c", [["bad name!?", 9, 1, 0]], [])),
        (MsgType.PEER_RELAY_LOST, ("n2", 7, b"c", [], [["asgi|c", ["not a seq"]]])),
        (MsgType.PEER_RESERVATIONS, ("n1", [["bad name!?", "n3", 7, b"c", "t", 60.0, 4, 1.5]])),
        (MsgType.PEER_RESERVATIONS, ("n1", [["asgi|c", "n3", 7, b"", "t", 60.0, 4, 1.5]])),
        (MsgType.PEER_RESERVATIONS, ("n1", [["asgi|c", "n3", 7, b"c", "a/b", 60.0, 4, 1.5]])),
        (MsgType.PEER_RESERVATIONS, ("n1", [["asgi|c", "n3", 7, b"c", "t", 60.0, 0, 1.5]])),
        (MsgType.PEER_RESERVATIONS, ("n1", [["asgi|c", "n3", 7, b"c", "t", 60.0, 4, -1.0]])),
        (MsgType.PEER_RESERVATIONS, ("n1", [["asgi|c", "n3", True, b"c", "t", 60.0, 4, 1.5]])),
        (MsgType.PEER_RESERVATIONS, ("n1", [["asgi|c", "n3", 7, b"c", "t", 60.0, 4]])),
        (MsgType.PEER_LINK_SEQ, ("n1", 7, 0, 1, 7)),  # no link 0 (a hello's)
        (MsgType.PEER_LINK_SEQ, ("n1", 7, 1, 0, 7)),  # sequence numbers start at 1
        (MsgType.PEER_LINK_ACK, ("n1", 7, -1, 0)),
        (MsgType.PEER_LINK_ACK, ("n1", 7, 1, -1)),
        (MsgType.PEER_LINK_PROBE, ("n1", 7, 0)),
        (MsgType.PEER_LINK_STATE, ("n1", 7, 1, -2)),
        (MsgType.PEER_FANOUTS_SEEN, ("n1", [["n2", 7]])),
        (MsgType.PEER_FANOUTS_SEEN, ("n1", [["n2", 7, "3"]])),
        (MsgType.PEER_FANOUTS_SEEN, ("n1", [["n2", True, 3]])),
        (MsgType.PEER_ASK, (1, "n1", "shutdown", "")),
        (MsgType.PEER_ANSWER, (1, "n1", [1])),
        (MsgType.GROUP_DIGEST, ("n1", [["n1", 7]])),
        (MsgType.GROUP_SLICE, ("n1", 7, 3, [["asgi|g", "2"]])),
        (MsgType.GROUP_DELTA, ("n1", 7, 3, "bad group!", 2, 0)),
        (MsgType.GROUP_FANOUT, ("n1", 7, 3, "asgi|g", b"p", -1.0)),
        (MsgType.GROUP_FANOUT_PASSED, ("n2", "n1", 7, 3, "asgi|g", b"p", -1.0)),
        (MsgType.GROUP_FANOUT_PASSED, ("n2", "n1", 7, 3, "bad group!", b"p", 60.0)),
    ],
    ids=lambda f: f[0].name,
)
def test_malformed_insides_are_decode_errors(fields: tuple[MsgType, tuple[object, ...]]) -> None:
    mtype, values = fields
    with pytest.raises(DecodeError):
        decode_peer(encode(mtype, *values))


def test_a_load_report_keeps_only_what_it_may_carry() -> None:
    frame = encode(MsgType.PEER_LOAD, "n2", {"queued": 3, "evil": 1, "drops": {"x": 1}})
    assert decode_peer(frame) == [Load("n2", {"queued": 3, "drops": {"x": 1}})]
    frame = encode(MsgType.PEER_LOAD, "n2", {"queued": 3, "parked": 2})
    assert decode_peer(frame) == [Load("n2", {"queued": 3, "parked": 2})]
    frame = encode(MsgType.PEER_LOAD, "n2", {"queued": 3, "parked": "2"})
    assert decode_peer(frame) == [Load("n2", {"queued": 3})]
    frame = encode(MsgType.PEER_LOAD, "n2", {"counted": [["n1", 7]]})
    assert decode_peer(frame) == [Load("n2", {"counted": [["n1", 7]]})]
    for bad in ([["n1"]], [["n1", "7"]], [[1, 7]], [["n1", 7]] * 65):
        frame = encode(MsgType.PEER_LOAD, "n2", {"counted": bad, "queued": 1})
        assert decode_peer(frame) == [Load("n2", {"queued": 1})]
    links = [["n1", 7, 2, 5]]
    frame = encode(MsgType.PEER_LOAD, "n2", {"links": links})
    assert decode_peer(frame) == [Load("n2", {"links": links})]
    for bad in (
        [["n1", 7, 2]],
        [["n1", 7, 2, "5"]],
        [[1, 7, 2, 5]],
        "n1",
        [["n1", 7, 2, 5]] * 10_001,
    ):
        frame = encode(MsgType.PEER_LOAD, "n2", {"links": bad, "queued": 1})
        assert decode_peer(frame) == [Load("n2", {"queued": 1})]
    # which report of a dead life a survivor holds, and which the first counted by
    for key in ("held", "tallied"):
        counts = [["n1", 7, 3, 5], ["n0", 9, 1 << 62, 0]]
        frame = encode(MsgType.PEER_LOAD, "n2", {key: counts, "n": 4})
        assert decode_peer(frame) == [Load("n2", {key: counts, "n": 4})]
        for bad in (
            [["n1", 7, 3]],
            [["n1", 7, 3, "5"]],
            [["n1", 7, -1, 5]],
            [[1, 7, 3, 5]],
            [["n1", 7, 3, True]],
            [["n1", 7, 3, 5]] * 65,
        ):
            frame = encode(MsgType.PEER_LOAD, "n2", {key: bad, "queued": 1})
            assert decode_peer(frame) == [Load("n2", {"queued": 1})]


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
    with pytest.raises(DecodeError):
        decode_peer(encode(MsgType.PEER_GOSSIP, "n1", [update]))


def test_client_types_are_not_peer_messages() -> None:
    with pytest.raises(DecodeError):
        from_wire(MsgType.PING, ())


# -- what an older node can read ------------------------------------------------

#: The stamped forms and the version that brought each: a node of an older
#: version decodes none of them (unknown type), and drops what they carry.
STAMPED = {
    MsgType.PEER_RELAY_STAMPED,  # 06a5278
    MsgType.PEER_HANDOFF_STAMPED,  # 06a5278
    MsgType.PEER_RELAY_BACK_STAMPED,  # ac83b79
}
#: How a node from before the stamps decodes a peer frame.
OLD_SPECS = specs_of({t: f for t, f in PEER_FIELDS.items() if t not in STAMPED})

#: A relay of two sends, one stamped; a delivery relayed back with its
#: stamp; a handover of two items, one stamped (as the node makes them).
STAMPED_MESSAGES: list[PeerMessage] = [
    Relay(
        "n1",
        7,
        b"\x00k",
        "abcdefghij",
        60.0,
        1,
        (
            (MsgType.SEND, (0, "asgi|c", b"p", 100, ("n1/abcdefghij", 1000007, 3))),
            (MsgType.SEND, (4, "asgi|c", b"q", 100)),
            (MsgType.RECV, ("asgi|c", 5)),
        ),
        2.5,
    ),
    RelayBack(
        "n2",
        b"\x00k",
        ((MsgType.DELIVER, ("asgi|c", [[b"x", 1.5, 7]])),),
        (("asgi|c", 7, "n1/abcdefghij", 1000007, 42),),
    ),
    Handoff(
        "n1",
        (("asgi|c", [[b"x", 1.5, 7, ("n1/t", 1000007, 3)], [b"y", 1.5, 8]]),),
        (("asgi|g", "asgi|c", "n1@7/t", 60.0, 9),),
    ),
]


def test_a_hello_says_what_its_life_reads_in_golden_bytes() -> None:
    # (gen 0 is a hello; its ``upto`` is the feature bit set. An older node
    # sends 0, "013b94a26e32ce000f42470000", and ignores the field.)
    hello = LinkAck("n2", 1000007, 0, FEATURE_STAMPS)
    assert encode_peer(hello) == bytes.fromhex("013b94a26e32ce000f42470001")
    assert decode_peer(bytes.fromhex("013b94a26e32ce000f42470001")) == [hello]
    # (append-only: a bit keeps its meaning; FEATURE_RETURN_STAMPS, 2, came next)
    assert FEATURE_STAMPS == 1
    assert FEATURES == FEATURE_STAMPS | FEATURE_RETURN_STAMPS == 3
    now = LinkAck("n2", 1000007, 0, FEATURES)
    assert encode_peer(now) == bytes.fromhex("013b94a26e32ce000f42470003")


@pytest.mark.parametrize("msg", STAMPED_MESSAGES, ids=lambda m: type(m).__name__)
def test_a_stamped_message_for_a_life_that_reads_no_stamps_is_one_an_older_node_reads(
    msg: PeerMessage,
) -> None:
    assert to_wire(msg)[0] in STAMPED  # (as it is, an older node drops it)
    plain, stripped = readable(msg, 0)
    assert stripped == 1
    frame = encode_peer(plain)
    assert frame[1] not in STAMPED
    assert len(decode(frame, None, OLD_SPECS)) == 1  # (an older node takes it)
    # Everything but the stamps arrives: the same messages, items, members.
    assert decode_peer(frame) == [plain]
    if isinstance(msg, Relay):
        assert isinstance(plain, Relay)
        assert plain.messages == tuple((t, f[:4]) for t, f in msg.messages)
        assert plain == replace(msg, messages=plain.messages)
    elif isinstance(msg, RelayBack):
        assert plain == replace(msg, stamps=())
    else:
        assert isinstance(msg, Handoff) and isinstance(plain, Handoff)
        unstamped = tuple((n, [i[:3] for i in items]) for n, items in msg.channels)
        assert plain == replace(msg, channels=unstamped)


@pytest.mark.parametrize("msg", STAMPED_MESSAGES, ids=lambda m: type(m).__name__)
def test_a_life_that_reads_stamps_gets_them_as_they_are(msg: PeerMessage) -> None:
    assert readable(msg, FEATURE_STAMPS) == (msg, 0)
    assert readable(msg, FEATURE_STAMPS | 2) == (msg, 0)  # (bits it does not know)


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_a_message_without_stamps_goes_to_any_life_as_it_is(msg: PeerMessage) -> None:
    if to_wire(msg)[0] not in STAMPED:
        assert readable(msg, 0) == (msg, 0)
        assert readable(msg, FEATURE_STAMPS) == (msg, 0)
