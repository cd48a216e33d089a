"""The codec of users' messages (``zchannels.codec``), without a layer.

Golden bytes lock every extension layout (a silent wire change fails here);
property tests (hypothesis) check that every supported value decodes to the
same type and value, alone and nested, that plain messages encode exactly as
msgpack alone does (so older zchannels read them), and that anything else
raises a TypeError naming where it sits.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
import zoneinfo
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from zchannels import codec

# -- golden bytes: the wire contract of encoding version 1 ---------------------

GOLDEN: list[tuple[Any, str]] = [
    # fixext16, code 1, UUID.bytes
    (uuid.UUID("12345678-1234-5678-1234-567812345678"), "d80112345678123456781234567812345678"),
    # ext8 len 12, code 2: 2024-05-01 12:34:56.123456, flags 0 (naive)
    (dt.datetime(2024, 5, 1, 12, 34, 56, 123456), "c70c0207e805010c22380001e24000"),
    # ext8 len 20, code 2, flags 2 (aware), offset -3:30 as i64 microseconds
    (
        dt.datetime(2024, 5, 1, 12, 34, 56, 123456, tzinfo=dt.timezone(dt.timedelta(hours=-3.5))),
        "c7140207e805010c22380001e24002fffffffd10fb4200",
    ),
    # flags 1: fold
    (dt.datetime(2024, 10, 27, 2, 30, fold=1), "c70c0207e80a1b021e000000000001"),
    # fixext4, code 3
    (dt.date(2024, 2, 29), "d60307e8021d"),
    # ext8 len 8, code 4
    (dt.time(23, 59, 59, 999999), "d704173b3b000f423f00"),
    # fixext16, code 4, aware +05:45
    (
        dt.time(1, 2, 3, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=45))),
        "d804010203000000000200000004d1d0ef00",
    ),
    # ext8 len 12, code 5: days -3, seconds 5, microseconds 7
    (dt.timedelta(days=-3, seconds=5, microseconds=7), "c70c05fffffffd0000000500000007"),
    # ext8 len 5, code 6: ASCII "-1.10"
    (decimal.Decimal("-1.10"), "c705062d312e3130"),
]


@pytest.mark.parametrize(("value", "wire"), GOLDEN, ids=[type(v).__name__ for v, _ in GOLDEN])
def test_golden_bytes(value: Any, wire: str) -> None:
    assert codec.packb(value).hex() == wire
    assert_same(codec.unpackb(bytes.fromhex(wire)), value)


def test_version_and_codes_are_the_documented_ones() -> None:
    assert codec.CODEC_VERSION == 1
    assert (
        codec.EXT_UUID,
        codec.EXT_DATETIME,
        codec.EXT_DATE,
        codec.EXT_TIME,
        codec.EXT_TIMEDELTA,
        codec.EXT_DECIMAL,
    ) == (1, 2, 3, 4, 5, 6)


# -- sameness: same type, same value, same offset -------------------------------


def assert_same(got: Any, want: Any, path: str = "") -> None:
    """``got`` is ``want`` as the codec promises: same type and value; an
    aware datetime/time with the same wall clock, fold and UTC offset (its
    zone becomes a fixed offset); Decimals to the digit (NaN != NaN)."""
    if isinstance(want, tuple):
        want = list(want)  # msgpack's arrays are lists
    expected_type = type(want)
    for base in (dt.datetime, dt.date, dt.time, uuid.UUID):
        if isinstance(want, base):  # subclasses decode as their base
            expected_type = base
            break
    assert type(got) is expected_type, f"{path}: {type(got)} is not {expected_type}"
    if isinstance(want, dict):
        assert list(got) == list(want), path
        for key in want:
            assert_same(got[key], want[key], f"{path}[{key!r}]")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, decimal.Decimal):
        assert str(got) == str(want), path
    elif isinstance(want, dt.datetime | dt.time):
        assert got.replace(tzinfo=None) == want.replace(tzinfo=None), path
        assert got.fold == want.fold, path
        assert got.utcoffset() == want.utcoffset(), path
        if want.utcoffset() is not None:
            assert isinstance(got.tzinfo, dt.timezone), path
        if isinstance(want, dt.datetime) and isinstance(want.tzinfo, dt.timezone):
            # (with a zoneinfo zone, PEP 495 makes a time in a gap or fold
            # unequal to any time of another zone: the fields and offset,
            # checked above, are what say it is the same instant)
            assert got == want, path
    else:
        assert got == want, path


def roundtrip(value: Any) -> Any:
    return codec.unpackb(codec.packb(value))


# -- properties -----------------------------------------------------------------

#: Fixed UTC offsets: anything strictly inside +-24 h, to the microsecond.
offsets = st.timedeltas(
    min_value=dt.timedelta(hours=-24) + dt.timedelta(microseconds=1),
    max_value=dt.timedelta(hours=24) - dt.timedelta(microseconds=1),
).map(dt.timezone)
zones = st.none() | offsets | st.timezones() | st.just(dt.UTC)
folds = st.integers(0, 1)
datetimes = st.builds(lambda d, f: d.replace(fold=f), st.datetimes(timezones=zones), folds)
times = st.builds(lambda t, f: t.replace(fold=f), st.times(timezones=st.none() | offsets), folds)
decimals = st.decimals(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [decimal.Decimal(s) for s in ("-0", "sNaN", "-sNaN12", "NaN5", "1E+999999", "1.000")]
)
ext_values = st.uuids() | datetimes | st.dates() | times | st.timedeltas() | decimals
plain_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)


def containers(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=12,
    )


@given(ext_values)
def test_every_supported_value_roundtrips(value: Any) -> None:
    assert_same(roundtrip(value), value)


@given(st.dictionaries(st.text(), containers(plain_scalars | ext_values), max_size=6))
def test_messages_roundtrip(message: dict[str, Any]) -> None:
    assert_same(roundtrip(message), message)


@given(st.dictionaries(st.text(), containers(plain_scalars), max_size=6))
def test_plain_messages_encode_exactly_as_msgpack(message: dict[str, Any]) -> None:
    # older zchannels (and anything else that reads msgpack) read them as before
    assert codec.packb(message) == msgpack.packb(message, use_bin_type=True)


@given(st.uuids() | st.dates() | st.timedeltas())
def test_supported_values_work_as_dict_keys(key: Any) -> None:
    assert roundtrip({key: 1}) == {key: 1}


def test_aware_values_keep_their_offset_not_their_zone() -> None:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    summer = dt.datetime(2024, 7, 1, 9, 0, tzinfo=paris)
    got = roundtrip(summer)
    assert got == summer and got.utcoffset() == dt.timedelta(hours=2)
    assert got.tzinfo == dt.timezone(dt.timedelta(hours=2))
    # the second 02:30 of the night clocks go back: fold and offset both kept
    again = dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=paris)
    got = roundtrip(again)
    assert (got.fold, got.utcoffset()) == (1, dt.timedelta(hours=1))
    assert got.timestamp() == again.timestamp()
    assert roundtrip(dt.datetime(2024, 1, 1, tzinfo=dt.UTC)).tzinfo is dt.UTC


def test_subclasses_decode_as_their_base_type() -> None:
    class FakeDatetime(dt.datetime):  # as freezegun's
        pass

    value = FakeDatetime(2024, 1, 2, 3, 4, 5)
    got = roundtrip(value)
    assert type(got) is dt.datetime and got == value


def test_unknown_extension_codes_pass_through() -> None:
    # a newer zchannels' type during a rolling upgrade: delivered, not dropped
    ext = msgpack.ExtType(42, b"future")
    assert roundtrip({"x": ext}) == {"x": ext}


@pytest.mark.parametrize(
    ("code", "data"),
    [
        (codec.EXT_UUID, b"short"),
        (codec.EXT_DATETIME, b"\x07\xe8\x0d\x01\x00\x00\x00\x00\x00\x00\x00\x00"),  # month 13
        (codec.EXT_DATETIME, bytes.fromhex("07e805010c22380001e24000") + b"x"),  # trailing
        (codec.EXT_DATE, b"\x07"),
        (codec.EXT_TIME, bytes.fromhex("0102030000000002000000141dd76000")),  # +24 h
        (codec.EXT_TIMEDELTA, b""),
        (codec.EXT_DECIMAL, b"1.2.3"),
        (codec.EXT_DECIMAL, b"\xff"),
    ],
)
def test_malformed_extension_raises_one_valueerror(code: int, data: bytes) -> None:
    with pytest.raises(ValueError, match=f"malformed zchannels extension type {code}"):
        codec.unpackb(msgpack.packb(msgpack.ExtType(code, data)))


class Opaque:
    pass


@pytest.mark.parametrize(
    ("message", "path"),
    [
        ({"a": {"b": Opaque()}}, "['a']['b']"),
        (
            {"ok": uuid.uuid4(), "items": [dt.date.today(), {"deep": {1, 2}}]},
            "['items'][1]['deep']",
        ),
        ({"a": {uuid.uuid4(): 1, Opaque(): 2}}, "['a'] key <"),
        (
            {"at": dt.datetime.now(dt.UTC), "when": [decimal.Decimal(1), frozenset()]},
            "['when'][1]",
        ),
    ],
)
def test_anything_else_is_a_typeerror_naming_where(message: dict[str, Any], path: str) -> None:
    with pytest.raises(TypeError) as info:
        codec.packb(message)
    assert "is not one of the types a message may hold" in str(info.value)
    assert "uuid.UUID" in str(info.value) and "decimal.Decimal" in str(info.value)
    assert codec.unencodable_path(message).startswith(path)
