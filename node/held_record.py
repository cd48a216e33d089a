"""What a node's process keeps where a SIGKILL leaves it: what its life holds.

Owns: the held record (``HeldRecord``), its one layout (two fixed slots in a
memory-mapped file), writing it after every step (``RecordFile``) and taking
the last process's at start (``take_record``). The pure node says what to
keep (``ClusterNode.held_record``) and what a taken record means
(``ClusterNode.previous_crash``); this module only keeps it.

Why: a node killed by SIGKILL (or any crash) counts nothing as it dies. One
survivor counts what it held, and until now that was the dead life's last
load report, up to a report interval old: what came or went since was
counted twice or not at all (the largest term of the simulation's
``uncounted_loss`` and ``overcounted`` verdicts under SIGKILL). Pages of a
shared file mapping belong to the kernel's page cache, not to the process:
what the process wrote there before it was killed is in the file when the
next process opens it (a host that loses power loses it, and the record is
then too old or absent: the estimate counts, as before). So the shell writes
the record after every step, before that step's frames leave (a frame that
left is never ahead of the record), and the next process of the node says
in its load reports what its last life held (``crashed``).

Layout: two slots of ``SLOT_SIZE`` bytes. Each begins with a head
(``HEAD``): a magic, the layout's version, a write number, the life, the
messages held, the wall clock of the write, the length of the links' part
that follows, and a CRC-32 of the head before it and that part. The links'
part (``Links.carry``: the frames no peer acknowledged, how far this life
took each peer's link) is msgpack, ``[out, into, lump, conns, flights,
parked]``; ``conns`` is the clients' reserved-send tally
(``Sessions.reserved_carry``) and ``flights`` how many messages each client
connection had in flight (``Queues.flying``), each flat: ``[conn, count,
conn, count, ...]`` (both absent from a session 29 record, flights from one
of early session 30); ``parked``, what the life had parked for other nodes'
clients (``Routing.parked_carry``: ``[[node, life, conn, [[channel,
[number, ...]], ...]], ...]``, absent before session 31), which ``held``
counts too: the next process subtracts what it can settle. A part that does
not fit in a slot is kept with its links folded (their units counted whole,
nothing listed: ``LinkCarry.folded``), and if it still does not fit, without
its tally, flights and parks (those clients' unread sends and flights are
then not counted, and what was parked is counted whole). A write goes to
the slot its number picks, so a kill in the middle of one leaves the other
whole; a reader takes the whole slot with the higher number. A record of
version 1 (session 28: two 48-byte slots, no links' part) is read too: a
node upgraded right after a SIGKILL.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import zlib
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import msgpack

from .life_note import take_file
from .links import LinkCarry
from .routing import ParkedCarry

log = logging.getLogger("zchannels.node")

MAGIC = b"zchr"
#: the layout's version: a record of another is not read (but version 1's)
VERSION = 2
#: magic, version (3 bytes of padding), write number, life, held, wall
#: clock, the links' part's length, CRC-32 of the head before it and the part
HEAD = struct.Struct("<4sB3xQqqdII")
_HEAD_BEFORE_CRC = struct.Struct("<4sB3xQqqdI")
_CRC = struct.Struct("<I")
#: bytes of one slot (a file has two; the kernel keeps only pages written)
SLOT_SIZE = 64 * 1024
SIZE = 2 * SLOT_SIZE

#: version 1 (session 28): magic, version, write number, life, held, clock
_V1_BODY = struct.Struct("<4sB3xQqqd")
#: version 1: the body and its CRC-32
_V1_SLOT = struct.Struct("<40sI4x")
_V1_SIZE = 2 * _V1_SLOT.size

#: seconds after which an unchanged record is written again (its clock says
#: how old it is when the next process finds it)
REFRESH = 1.0


#: connection -> a count, as the record lists reserved sends and flights
Tally = tuple[tuple[bytes, int], ...]
#: what the node keeps (``ClusterNode.held_record``): its life, the messages
#: it holds, its links' part, its clients' reserved-send tally and flights,
#: and what it parked
Kept = tuple[int, int, LinkCarry, Tally, Tally, ParkedCarry]


class BadHeldRecord(ValueError):
    """A record file with no whole slot this version wrote."""


@dataclass(frozen=True, slots=True)
class HeldRecord:
    """Life ``life`` of a node held ``held`` messages at its last step, at
    ``at`` (wall clock, seconds since the epoch); ``links``: what its links
    carried that the next process asks its peers about; ``conns``: how many
    reserved sends each client connection had made, as far as it read;
    ``flights``: how many messages each had in flight."""

    life: int
    held: int
    at: float
    links: LinkCarry = field(default_factory=LinkCarry)
    #: connection -> reserved sends its client made in all, as that life
    #: knew (``Sessions.reserved_carry``)
    conns: tuple[tuple[bytes, int], ...] = ()
    #: connection -> messages handed to it that it had not reported taken
    #: nor given back (``Queues.flying``; this node's own clients only)
    flights: tuple[tuple[bytes, int], ...] = ()
    #: what it had parked for other nodes' clients (``Routing.parked_carry``;
    #: ``held`` counts it too)
    parked: ParkedCarry = ()


def record_path(state_dir: str, node_id: str) -> str:
    """Where node ``node_id`` keeps its record (one file per node id)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in node_id)
    return os.path.join(state_dir, f"{safe}.held")


def _pack(links: LinkCarry, conns: Tally, flights: Tally, parked: ParkedCarry = ()) -> bytes:
    out = [[*link[:5], [x for frame in link[5] for x in frame]] for link in links.out]
    into = [list(link) for link in links.into]
    tally = list(chain.from_iterable(conns))
    flying = list(chain.from_iterable(flights))
    parks = [
        [node, life, conn, [[name, list(seqs)] for name, seqs in channels]]
        for node, life, conn, channels in parked
    ]
    packed: bytes = msgpack.packb([out, into, links.lump, tally, flying, parks])
    return packed


def _list(value: Any, what: str, fields: int | None = None) -> list[Any]:
    """``value`` if it is a list (of ``fields`` items, if given);
    ``BadHeldRecord`` naming ``what`` if it is not."""
    if type(value) is not list or (fields is not None and len(value) != fields):
        shape = "a list" if fields is None else f"a list of {fields}"
        raise BadHeldRecord(f"links' part malformed: {what} is not {shape}")
    return value


def _parked(parks: Any) -> ParkedCarry:
    """``[[node, life, conn, [[channel, [number, ...]], ...]], ...]``
    validated; ``BadHeldRecord`` if it is not."""
    out = []
    for park in _list(parks, "parked"):
        node, life, conn, channels = _list(park, "a park", 4)
        if type(conn) is not bytes:
            raise BadHeldRecord("links' part malformed: a park's connection is not bytes")
        named = tuple(
            (_str(name), tuple(_int(q) for q in _list(seqs, "a park's numbers")))
            for name, seqs in (_list(e, "a park's channel", 2) for e in _list(channels, "channels"))
        )
        out.append((_str(node), _int(life), conn, named))
    return tuple(out)


def _tally(flat: Any) -> Tally:
    """``[conn, count, ...]`` validated; ``BadHeldRecord`` if it is not."""
    if type(flat) is not list or len(flat) % 2:
        raise BadHeldRecord("links' part malformed: a tally is not [conn, count, ...]")
    if not all(type(conn) is bytes for conn in flat[::2]):
        raise BadHeldRecord("links' part malformed: a tally names a connection not in bytes")
    return tuple(zip(flat[::2], [_int(x) for x in flat[1::2]], strict=True))


def _int(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise BadHeldRecord(f"links' part malformed: {value!r} is not a count")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise BadHeldRecord(f"links' part malformed: {value!r} is not a node id")
    return value


def _unpack(data: bytes) -> tuple[LinkCarry, Tally, Tally, ParkedCarry]:
    """The links' part, the tally, the flights and the parks, validated;
    ``BadHeldRecord`` if they are not."""
    try:
        part = msgpack.unpackb(data)
        if not isinstance(part, list) or not 3 <= len(part) <= 6:
            raise BadHeldRecord(
                "links' part malformed: not [out, into, lump, conns, flights, parked]"
            )
        out, into, lump = part[:3]
        conns = _tally(part[3]) if len(part) > 3 else ()
        flights = _tally(part[4]) if len(part) > 4 else ()
        parked = _parked(part[5]) if len(part) > 5 else ()
        links_out = []
        for node, life, gen, target, reported, flat in out:
            numbers = [_int(x) for x in flat]
            if len(numbers) % 2:
                raise BadHeldRecord("links' part malformed: a frame without its units")
            frames = tuple(zip(numbers[::2], numbers[1::2], strict=True))
            links_out.append(
                (_str(node), _int(life), _int(gen), _int(target), _int(reported), frames)
            )
        links_in = tuple(
            (_str(source), _int(life), _int(gen), _int(expected))
            for source, life, gen, expected in into
        )
        carried = LinkCarry(tuple(links_out), links_in, _int(lump))
        return carried, conns, flights, parked
    except BadHeldRecord:
        raise
    except (ValueError, TypeError, msgpack.ExtraData) as exc:
        raise BadHeldRecord(f"links' part malformed: {exc}") from exc


def encode_slot(number: int, record: HeldRecord) -> bytes:
    """One slot's bytes: its head and its links' part (the rest of the slot
    is not written). A links' part with no room in the slot is folded, and
    without its tally if it still has none."""
    room = SLOT_SIZE - HEAD.size
    links = _pack(record.links, record.conns, record.flights, record.parked)
    if len(links) > room:
        links = _pack(record.links.folded(), record.conns, record.flights, record.parked)
    if len(links) > room:
        links = _pack(record.links.folded(), (), ())
    head = _HEAD_BEFORE_CRC.pack(
        MAGIC, VERSION, number, record.life, record.held, record.at, len(links)
    )
    return head + _CRC.pack(zlib.crc32(links, zlib.crc32(head))) + links


def _decode_slot(chunk: bytes) -> tuple[int, HeldRecord] | None:
    """(write number, record) of a whole slot of this version; else None."""
    if len(chunk) < HEAD.size:
        return None
    magic, version, number, life, held, at, length, crc = HEAD.unpack_from(chunk)
    links = chunk[HEAD.size : HEAD.size + length]
    if len(links) < length or zlib.crc32(links, zlib.crc32(chunk[: _HEAD_BEFORE_CRC.size])) != crc:
        return None
    if magic != MAGIC or version != VERSION or life < 0 or held < 0:
        return None
    return number, HeldRecord(life, held, at, *_unpack(links))


def _decode_v1(data: bytes) -> list[tuple[int, HeldRecord]]:
    found = []
    for i in range(2):
        body, crc = _V1_SLOT.unpack_from(data, i * _V1_SLOT.size)
        if zlib.crc32(body) != crc:
            continue
        magic, version, number, life, held, at = _V1_BODY.unpack(body)
        if magic == MAGIC and version == 1 and life >= 0 and held >= 0:
            found.append((number, HeldRecord(life, held, at)))
    return found


def decode(data: bytes) -> HeldRecord:
    """The record in a file's bytes: the whole slot with the higher write
    number; ``BadHeldRecord`` if neither is whole (or one's links' part,
    whole by its CRC, is not one: written by no version of this module)."""
    if len(data) == _V1_SIZE and 1 in (data[4], data[_V1_SLOT.size + 4]):  # (version bytes)
        found = _decode_v1(data)
    else:
        slots = (_decode_slot(data[i * SLOT_SIZE : (i + 1) * SLOT_SIZE]) for i in range(2))
        found = [slot for slot in slots if slot is not None]
    if not found:
        raise BadHeldRecord(f"no whole version {VERSION} slot in {len(data)} bytes")
    return max(found, key=lambda slot: slot[0])[1]


class RecordFile:
    """The record this process keeps (``write`` after every step). Opened
    anew (the last process's record is taken first: ``take_record``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, SIZE)
            self._map: mmap.mmap | None = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_WRITE)
        finally:
            os.close(fd)  # (the mapping keeps the file)
        self._number = 0
        self._last: Kept | None = None
        self._written_at = 0.0

    def write(self, kept: Kept, at: float) -> None:
        """Keep what the node says (``ClusterNode.held_record``) if it
        changed, or if the last write is ``REFRESH`` old (``at``: the wall
        clock)."""
        if self._map is None:
            return
        if kept == self._last and at - self._written_at < REFRESH:
            return
        self._number += 1
        slot = (self._number % 2) * SLOT_SIZE
        data = encode_slot(self._number, HeldRecord(kept[0], kept[1], at, *kept[2:]))
        self._map[slot : slot + len(data)] = data
        self._last = kept
        self._written_at = at

    def remove(self) -> None:
        """The life ended cleanly (its note says so): nothing for the next."""
        self.close()
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def take_record(state_dir: str, node_id: str, now: float, max_age: float) -> HeldRecord | None:
    """The record the last process of ``node_id`` left in ``state_dir``, if
    any, removed as it is read. One that cannot be read, has no whole slot,
    or is older than ``max_age`` (its peers have forgotten that life) is
    logged and not used."""
    path = record_path(state_dir, node_id)
    data = take_file(path, "held record", SIZE)
    if data is None:
        return None
    try:
        record = decode(data)
    except BadHeldRecord as exc:
        log.warning("held record %s is malformed (not used): %s", path, exc)
        return None
    if not 0 <= now - record.at <= max_age:
        age = now - record.at
        log.info("held record %s is %.0f s old (not used: its peers forgot it)", path, age)
        return None
    return record
