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

Layout: two slots of ``SLOT.size`` bytes; each has a magic, the layout's
version, a write number, the life, the messages held, the wall clock of the
write, and a CRC-32 of all that. A write goes to the slot its number picks,
so a kill in the middle of one leaves the other whole; a reader takes the
whole slot with the higher number.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import zlib
from dataclasses import dataclass

from .life_note import take_file

log = logging.getLogger("zchannels.node")

MAGIC = b"zchr"
#: the layout's version: a record of another is not read
VERSION = 1
#: magic, version (3 bytes of padding), write number, life, held, wall clock
_BODY = struct.Struct("<4sB3xQqqd")
#: the body and its CRC-32 (4 bytes of padding)
SLOT = struct.Struct("<40sI4x")
SIZE = 2 * SLOT.size
#: seconds after which an unchanged record is written again (its clock says
#: how old it is when the next process finds it)
REFRESH = 1.0


class BadHeldRecord(ValueError):
    """A record file with no whole slot this version wrote."""


@dataclass(frozen=True, slots=True)
class HeldRecord:
    """Life ``life`` of a node held ``held`` messages at its last step, at
    ``at`` (wall clock, seconds since the epoch)."""

    life: int
    held: int
    at: float


def record_path(state_dir: str, node_id: str) -> str:
    """Where node ``node_id`` keeps its record (one file per node id)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in node_id)
    return os.path.join(state_dir, f"{safe}.held")


def encode_slot(number: int, record: HeldRecord) -> bytes:
    body = _BODY.pack(MAGIC, VERSION, number, record.life, record.held, record.at)
    return SLOT.pack(body, zlib.crc32(body))


def decode(data: bytes) -> HeldRecord:
    """The record in a file's bytes: the whole slot with the higher write
    number; ``BadHeldRecord`` if neither is whole."""
    best: tuple[int, HeldRecord] | None = None
    for i in range(2):
        chunk = data[i * SLOT.size : (i + 1) * SLOT.size]
        if len(chunk) < SLOT.size:
            continue
        body, crc = SLOT.unpack(chunk)
        if zlib.crc32(body) != crc:
            continue
        magic, version, number, life, held, at = _BODY.unpack(body)
        if magic != MAGIC or version != VERSION or life < 0 or held < 0:
            continue
        if best is None or number > best[0]:
            best = (number, HeldRecord(life, held, at))
    if best is None:
        raise BadHeldRecord(f"no whole version {VERSION} slot in {len(data)} bytes")
    return best[1]


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
        self._last: tuple[int, int] = (-1, -1)
        self._written_at = 0.0

    def write(self, life: int, held: int, at: float) -> None:
        """Keep (``life``, ``held``) if it changed, or if the last write is
        ``REFRESH`` old (``at``: the wall clock)."""
        if self._map is None:
            return
        if (life, held) == self._last and at - self._written_at < REFRESH:
            return
        self._number += 1
        slot = (self._number % 2) * SLOT.size
        self._map[slot : slot + SLOT.size] = encode_slot(self._number, HeldRecord(life, held, at))
        self._last = (life, held)
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
