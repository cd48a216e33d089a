"""The codec of users' messages: msgpack, plus the values Django code sends.

Owns: how a message dict becomes the bytes that travel (opaque to every
node) and back, and the error that names where an unencodable value sits.
Does not own: frames and their fields (``zchannels.protocol``), size limits
and the Channels contract (``zchannels.layer``).

Plain values (str, int, float, bool, None, bytes, list, tuple, dict) are
msgpack's own: tuples arrive as lists, and msgpack calls neither hook for
them, so plain messages cost what they cost without this module. The values
below travel as msgpack extension types (``ExtType(code, data)``); each decodes
back to the same type and an equal value.

Encoding version 1 (``CODEC_VERSION``). The codes and layouts are part of the
wire contract, like the protocol's message types: append-only. A layout is
never changed; a new one takes a new code, and a decoder keeps decoding every
code it ever knew. A code this version does not know (sent by a newer
zchannels during a rolling upgrade) decodes to ``msgpack.ExtType`` instead of
failing the receive. Integers are big-endian; ``offset`` is the UTC offset in
microseconds (signed), present only when flag bit 1 is set::

    code  type                layout (data)
    1     uuid.UUID           16 bytes: UUID.bytes
    2     datetime.datetime   u16 year, u8 month, day, hour, minute, second,
                              u32 microsecond, u8 flags (bit 0 fold,
                              bit 1 aware), [i64 offset]: 12 or 20 bytes
    3     datetime.date       u16 year, u8 month, u8 day: 4 bytes
    4     datetime.time       u8 hour, minute, second, u32 microsecond,
                              u8 flags (as datetime), [i64 offset]: 8 or 16 bytes
    5     datetime.timedelta  i32 days, u32 seconds, u32 microseconds: 12 bytes
    6     decimal.Decimal     ASCII, str(value): exact, with its exponent,
                              sign, NaN and Infinity ("1.10", "-0", "sNaN")

An aware datetime or time keeps its UTC offset, not its zone: it decodes with
a fixed-offset ``datetime.timezone`` (UTC decodes as ``timezone.utc``), with
the same wall-clock fields, fold and ``utcoffset()``: the same instant, and
equal to the original (except that Python never calls a time in a zone's
gap or fold equal to one of another zone, PEP 495); zone rules such as
Europe/Paris's are not carried. A ``tzinfo`` that gives no
offset (a zoneinfo zone on a bare ``time``) counts as naive, as Python counts
it. Subclasses (a freezegun datetime, a UUID subclass) decode as the base type.
"""

from __future__ import annotations

import datetime
import decimal
import struct
import uuid
from collections.abc import Callable
from typing import Any, Final

import msgpack

#: The set of extension codes and layouts this module writes and reads.
CODEC_VERSION: Final = 1

#: Extension type codes (msgpack leaves 0-127 to applications). Append-only.
EXT_UUID: Final = 1
EXT_DATETIME: Final = 2
EXT_DATE: Final = 3
EXT_TIME: Final = 4
EXT_TIMEDELTA: Final = 5
EXT_DECIMAL: Final = 6

#: What a message may hold, for error messages and the README.
SUPPORTED: Final = (
    "str, int, float, bool, None, bytes, list, tuple, dict, uuid.UUID, "
    "datetime.datetime, datetime.date, datetime.time, datetime.timedelta, decimal.Decimal"
)

_DATETIME = struct.Struct(">HBBBBBIB")
_DATE = struct.Struct(">HBB")
_TIME = struct.Struct(">BBBIB")
_TIMEDELTA = struct.Struct(">iII")
_OFFSET = struct.Struct(">q")
_FOLD, _AWARE = 1, 2


def _offset_us(offset: datetime.timedelta) -> bytes:
    return _OFFSET.pack((offset.days * 86_400 + offset.seconds) * 1_000_000 + offset.microseconds)


def _tz(data: bytes, at: int) -> datetime.timezone:
    (us,) = _OFFSET.unpack_from(data, at)
    if len(data) != at + _OFFSET.size:
        raise ValueError("trailing bytes")
    # timezone(timedelta(0)) is timezone.utc itself
    return datetime.timezone(datetime.timedelta(microseconds=us))


def _encode_uuid(value: uuid.UUID) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_UUID, value.bytes)


def _encode_datetime(value: datetime.datetime) -> msgpack.ExtType:
    offset = value.utcoffset()
    flags = value.fold | (_AWARE if offset is not None else 0)
    head = _DATETIME.pack(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        flags,
    )
    return msgpack.ExtType(EXT_DATETIME, head if offset is None else head + _offset_us(offset))


def _encode_date(value: datetime.date) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_DATE, _DATE.pack(value.year, value.month, value.day))


def _encode_time(value: datetime.time) -> msgpack.ExtType:
    offset = value.utcoffset()
    flags = value.fold | (_AWARE if offset is not None else 0)
    head = _TIME.pack(value.hour, value.minute, value.second, value.microsecond, flags)
    return msgpack.ExtType(EXT_TIME, head if offset is None else head + _offset_us(offset))


def _encode_timedelta(value: datetime.timedelta) -> msgpack.ExtType:
    return msgpack.ExtType(
        EXT_TIMEDELTA, _TIMEDELTA.pack(value.days, value.seconds, value.microseconds)
    )


def _encode_decimal(value: decimal.Decimal) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_DECIMAL, str(value).encode("ascii"))


#: Exact type -> encoder; subclasses are looked up by ``isinstance`` in this
#: order (datetime before date: a datetime is a date).
_ENCODERS: dict[type, Callable[[Any], msgpack.ExtType]] = {
    uuid.UUID: _encode_uuid,
    datetime.datetime: _encode_datetime,
    datetime.date: _encode_date,
    datetime.time: _encode_time,
    datetime.timedelta: _encode_timedelta,
    decimal.Decimal: _encode_decimal,
}


def encode_ext(value: Any) -> msgpack.ExtType:
    """msgpack's ``default=`` hook: called only for values msgpack cannot
    encode itself, so plain messages never reach it."""
    encoder = _ENCODERS.get(type(value))
    if encoder is None:
        for kind, candidate in _ENCODERS.items():
            if isinstance(value, kind):
                encoder = candidate
                break
        else:
            raise TypeError(
                f"{type(value).__module__}.{type(value).__qualname__} is not one of "
                f"the types a message may hold: {SUPPORTED}"
            )
    return encoder(value)


def _decode_datetime(data: bytes) -> datetime.datetime:
    year, month, day, hour, minute, second, micro, flags = _DATETIME.unpack_from(data)
    tz = _tz(data, _DATETIME.size) if flags & _AWARE else None
    if tz is None and len(data) != _DATETIME.size:
        raise ValueError("trailing bytes")
    return datetime.datetime(
        year, month, day, hour, minute, second, micro, tzinfo=tz, fold=flags & _FOLD
    )


def _decode_date(data: bytes) -> datetime.date:
    if len(data) != _DATE.size:
        raise ValueError("wrong length")
    return datetime.date(*_DATE.unpack(data))


def _decode_time(data: bytes) -> datetime.time:
    hour, minute, second, micro, flags = _TIME.unpack_from(data)
    tz = _tz(data, _TIME.size) if flags & _AWARE else None
    if tz is None and len(data) != _TIME.size:
        raise ValueError("trailing bytes")
    return datetime.time(hour, minute, second, micro, tzinfo=tz, fold=flags & _FOLD)


def _decode_timedelta(data: bytes) -> datetime.timedelta:
    days, seconds, micro = _TIMEDELTA.unpack(data)
    return datetime.timedelta(days=days, seconds=seconds, microseconds=micro)


def _decode_decimal(data: bytes) -> decimal.Decimal:
    return decimal.Decimal(data.decode("ascii"))


_DECODERS: dict[int, Callable[[bytes], Any]] = {
    EXT_UUID: lambda data: uuid.UUID(bytes=data),
    EXT_DATETIME: _decode_datetime,
    EXT_DATE: _decode_date,
    EXT_TIME: _decode_time,
    EXT_TIMEDELTA: _decode_timedelta,
    EXT_DECIMAL: _decode_decimal,
}


def decode_ext(code: int, data: bytes) -> Any:
    """msgpack's ``ext_hook``: called only for extension types."""
    decoder = _DECODERS.get(code)
    if decoder is None:
        return msgpack.ExtType(code, data)  # a newer zchannels' type: passed on as is
    try:
        return decoder(data)
    except (ValueError, TypeError, struct.error, decimal.InvalidOperation) as exc:
        raise ValueError(
            f"malformed zchannels extension type {code} ({len(data)} bytes): {exc}"
        ) from None


def packb(message: Any) -> bytes:
    """The bytes of ``message``; the layer's ``_encode`` makes this same call
    inline (the hot path). A Packer made here rather than through
    ``msgpack.packb``, whose ``**kwargs`` wrapper costs more than the hook:
    callgrind, a typical 7-key message, msgpack 1.2: 12,900 instructions with
    ``msgpack.packb(m, use_bin_type=True)``, 13,800 with ``default=`` added,
    11,200 this way."""
    payload: bytes = msgpack.Packer(default=encode_ext, use_bin_type=True).pack(message)
    return payload


def unpackb(payload: bytes) -> Any:
    """The message in ``payload``; the layer's ``_decode`` makes this same call
    inline. (``ext_hook=`` costs ~1.5% of a typical message's decoding: one
    more keyword to parse; it is called only for extension types.)"""
    return msgpack.unpackb(payload, raw=False, strict_map_key=False, ext_hook=decode_ext)


def unencodable_path(value: Any, path: str = "") -> str:
    """Where in ``value`` the first thing ``packb`` cannot encode sits, as
    ``['key'][0]`` (or ``['a'] key <object ...>`` for a dict key); empty if it is
    ``value`` itself. Only called once encoding has failed."""
    children: Any
    if isinstance(value, dict):
        children = value.items()
    elif isinstance(value, list | tuple):
        children = enumerate(value)
    else:
        return path
    is_dict = isinstance(value, dict)
    for key, child in children:
        try:
            packb(child)
        except (TypeError, ValueError, OverflowError):
            return unencodable_path(child, f"{path}[{key!r}]")
        if is_dict:
            try:
                packb(key)
            except (TypeError, ValueError, OverflowError):
                return f"{path} key {key!r}"
    return path
