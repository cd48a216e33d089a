"""The wire codec: golden bytes lock the format; every malformed frame is one DecodeError."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from zchannels.protocol import (
    FEATURE_BUNDLE_REPORTS,
    FIELDS,
    PROTOCOL_VERSION,
    DecodeError,
    MsgType,
    decode,
    encode,
    encode_batch,
    encode_many,
    split_batches,
)

# Every message type, encoded once, as it must stay. A change here is a
# protocol change: bump PROTOCOL_VERSION and say so.
GOLDEN: dict[MsgType, tuple[tuple[object, ...], str]] = {
    MsgType.HELLO: (
        ("abcdefghij", 42, [60.0]),
        "010193aa6162636465666768696a2a91cb404e000000000000",
    ),
    MsgType.WELCOME: (
        ("n1", "abc123", "inc", 3.0, 1024),
        "010295a26e31a6616263313233a3696e63cb4008000000000000cd0400",
    ),
    MsgType.PING: ((), "010390"),
    MsgType.PONG: (("inc",), "010491a3696e63"),
    MsgType.SEND: ((7, "asgi|c", b"\x81\xa1a\x01", 100), "01059407a6617367697c63c40481a1610164"),
    MsgType.ACK: ((7, 3), "0106920703"),
    MsgType.ERROR: ((7, 1, "c"), "0107930701a163"),
    MsgType.RECV: (("c", 32), "010892a16320"),
    MsgType.DELIVER: (("c", [[b"x", 1.5, 7]]), "010992a1639193c40178cb3ff800000000000007"),
    MsgType.RETURN: ((4, "c", [[b"x", 1.5, 7]], 1), "010a9404a1639193c40178cb3ff80000000000000701"),
    MsgType.GROUP_ADD: ((1, "g", "c", 86400.0, 100), "010b9501a167a163cb40f518000000000064"),
    MsgType.GROUP_DISCARD: ((1, "g", "c"), "010c9301a167a163"),
    MsgType.GROUP_SEND: ((1, "g", b"p"), "010d9301a167c40170"),
    MsgType.FLUSH: ((1, "asgi"), "010e9201a461736769"),
    MsgType.BYE: ((1, 1), "010f920101"),
    MsgType.RESET: (("inc",), "011091a3696e63"),
    MsgType.STATUS: ((1,), "01119101"),
    MsgType.STATUS_REPLY: ((1, {"a": 1}), "0112920181a16101"),
    MsgType.GROUP_INFO: ((1, "g"), "01139201a167"),
    MsgType.GROUP_INFO_REPLY: ((1, ["c"]), "0114920191a163"),
    # version 1, type 43, [[[channel, upto seq, count taken, of which expired]]]
    MsgType.CONSUMED: (([["asgi|c", 7, 2, 1]],), "012b919194a6617367697c63070201"),
    MsgType.REVOKE: (("asgi|c",), "012c91a6617367697c63"),
    MsgType.REVOKED: (("asgi|c",), "012d91a6617367697c63"),
    MsgType.FLUSHED: (("asgi",), "012e91a461736769"),
    # [[channels...], [payload, ttl, seq]]: one group message for two channels
    MsgType.DELIVER_MANY: (
        (["asgi|a", "asgi|b"], [b"\x81\xa1a\x01", 30.0, 7]),
        "012f9292a6617367697c61a6617367697c6293c40481a16101cb403e00000000000007",
    ),
    # a graceful drain: the node's incarnation; the client's "moved"; znode drain
    MsgType.DRAIN: (("inc",), "013191a3696e63"),
    MsgType.MOVING: ((), "013290"),
    MsgType.STOP: ((1,), "01339101"),
    # DELIVER_MANY's layout, type 55: sent to a client that reports per bundle
    MsgType.DELIVER_BUNDLE: (
        (["asgi|a", "asgi|b"], [b"\x81\xa1a\x01", 30.0, 7]),
        "01379292a6617367697c61a6617367697c6293c40481a16101cb403e00000000000007",
    ),
    # type 56, [[[seq, start, end, ...]]]: bundle 7 taken on positions 0-1,
    # bundle 9 on positions 0 and 3-4
    MsgType.CONSUMED_BUNDLES: (([[7, 0, 2], [9, 0, 1, 3, 5]],), "0138919293070002950900010305"),
}


def test_every_type_has_a_golden_frame() -> None:
    assert set(GOLDEN) == set(FIELDS)


def test_peer_types_never_reach_a_client_decoder() -> None:
    """Peer layouts live with the node (zchannels.node.peer_wire); on a
    client socket a peer message is an unknown type."""
    with pytest.raises(DecodeError) as info:
        decode(encode(MsgType.PEER_NACK, 5, "n1"))
    assert info.value.reason == "type"


@pytest.mark.parametrize("mtype", list(GOLDEN), ids=lambda t: t.name)
def test_golden_bytes(mtype: MsgType) -> None:
    fields, hexframe = GOLDEN[mtype]
    frame = encode(mtype, *fields)
    assert frame.hex() == hexframe
    [(decoded_type, decoded)] = decode(bytes.fromhex(hexframe))
    assert decoded_type == mtype
    assert decoded == tuple(list(f) if isinstance(f, tuple) else f for f in fields)


def test_type_numbers_are_frozen() -> None:
    # Append-only: the numbers are part of the protocol.
    assert [(t.name, int(t)) for t in MsgType][:5] == [
        ("BATCH", 0),
        ("HELLO", 1),
        ("WELCOME", 2),
        ("PING", 3),
        ("PONG", 4),
    ]
    assert PROTOCOL_VERSION == 1
    assert (int(MsgType.DELIVER_BUNDLE), int(MsgType.CONSUMED_BUNDLES)) == (55, 56)
    assert FEATURE_BUNDLE_REPORTS == 1


def test_batch_roundtrip_and_golden() -> None:
    frame = encode_batch([(MsgType.PING, ()), (MsgType.ACK, (1, 0))])
    assert frame.hex() == "010092910393060100"
    assert decode(frame) == [(MsgType.PING, ()), (MsgType.ACK, (1, 0))]
    assert encode_many([(MsgType.PING, ())]) == encode(MsgType.PING)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "truncated"),
        (b"\x01", "truncated"),
        (b"\x02\x03\x90", "version"),
        (b"\x01\xee\x90", "type"),
        (b"\x01\x03\xc1", "msgpack"),
        (b"\x01\x03\x93\x01", "msgpack"),
        (b"\x01\x03\x01", "shape"),
        (b"\x01\x05" + msgpack.packb([1, "c"]), "shape"),
        (b"\x01\x05" + msgpack.packb(["1", "c", b"p", 1]), "field"),
        (b"\x01\x05" + msgpack.packb([True, "c", b"p", 1]), "field"),
        (b"\x01\x00" + msgpack.packb([[0]]), "shape"),
        (b"\x01\x00" + msgpack.packb([["x"]]), "shape"),
        (b"\x01\x00" + msgpack.packb([1]), "shape"),
    ],
)
def test_malformed_frames_raise_decode_error(frame: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(frame)
    assert info.value.reason == reason


def test_oversized_frame() -> None:
    with pytest.raises(DecodeError) as info:
        decode(encode(MsgType.PING), max_size=2)
    assert info.value.reason == "oversized"


@given(st.binary(max_size=512))
def test_any_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    try:
        messages = decode(data)
    except DecodeError:
        return
    for mtype, fields in messages:
        assert len(fields) == len(FIELDS[mtype])


@given(st.binary(max_size=256))
def test_any_body_after_a_valid_header_is_safe(body: bytes) -> None:
    for mtype in MsgType:
        try:
            decode(bytes((PROTOCOL_VERSION, mtype)) + body)
        except DecodeError:
            pass


@given(st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=3000)), min_size=1, max_size=60))
def test_split_batches_keeps_order_and_bounds_size(items: list[tuple[str, bytes]]) -> None:
    messages = [(MsgType.SEND, (i, ch, p)) for i, (ch, p) in enumerate(items)]
    chunks = split_batches(messages, max_bytes=4096)
    assert [m for chunk in chunks for m in chunk] == messages
    for chunk in chunks:
        assert len(chunk) == 1 or len(encode_many(chunk)) <= 4096 + 64 * len(chunk)
