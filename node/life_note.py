"""What a node's process leaves on disk for the next one: how its life ended.

Owns: the note (``LifeNote``), its one layout (JSON), and reading and
writing it in the node's ``state_dir`` (for the shell, ``NodeServer``: the
pure node takes and returns ``LifeNote`` objects only).

Why: a node that leaves while a partition or packet loss cuts it off from
its peers hands over what it can and counts, as its process ends, what no
peer acknowledged (``ClusterNode.gone``). A peer that never heard the leave
declared that life dead, and counts its last reported queue as lost in a
dead node once its next life appears (``Routing._settle_death``): the same
messages twice, or, when the leaving node left that count to its peers
(``Links.give_up``, alone since its leave), none if a peer did hear it. So
the process notes, after its last count, that its life left; the next
process on the same ``state_dir`` says so to its peers (``left`` in its load
reports), and none counts that life. A process that ends any other way
(SIGKILL, a crash) writes no note: its peers count it from its last report,
as before.

A note is read once (the file is removed as it is read) and is of one node
id; a note older than ``max_age`` (the member table's ``dead_keep``: its
peers have forgotten that life by then) or of another node is left unused.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from dataclasses import dataclass

log = logging.getLogger("zchannels.node")

#: the layout's version: a note of another is not read
VERSION = 1
#: bytes a note may take (one with more links in than fit is written
#: without them: ``LifeNote.encode``)
LIMIT = 64 * 1024


class BadLifeNote(ValueError):
    """A note that is not one this version wrote (its reason says what)."""


@dataclass(frozen=True, slots=True)
class LifeNote:
    """Node ``node``'s life ``life`` (its incarnation as it ended) left
    cleanly: it handed over what it could and counted, as its process ended,
    everything it could not (``ClusterNode.gone``). ``at``: when it ended
    (wall clock, seconds since the epoch; for ``max_age`` and operators).
    ``links_in``: how far it took each peer's link to it, (source, its
    life, gen, the next seq it expected), so the next process answers the
    peers' probes of them as it would have (``Links.restore``; a note
    without them, from session 28 or too big, answers "I do not know").
    ``conns`` and ``flights``: its clients' reserved-send tally and what
    each connection had in flight, as a held record keeps them
    (``ClusterNode.held_record``; JSON: ``[[base64 connection id, count],
    ...]``): its clients may outlive it, or not come back."""

    node: str
    life: int
    at: float
    links_in: tuple[tuple[str, int, int, int], ...] = ()
    conns: tuple[tuple[bytes, int], ...] = ()
    flights: tuple[tuple[bytes, int], ...] = ()

    def encode(self) -> bytes:
        raw = {"v": VERSION, "node": self.node, "life": self.life, "at": self.at, "how": "left"}
        data = json.dumps(
            {
                **raw,
                "links_in": [list(link) for link in self.links_in],
                "conns": _tally_out(self.conns),
                "flights": _tally_out(self.flights),
            }
        ).encode()
        return data if len(data) <= LIMIT else json.dumps(raw).encode()

    @classmethod
    def decode(cls, data: bytes) -> LifeNote:
        """The note in ``data``; ``BadLifeNote`` if it is not one."""
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadLifeNote(f"not JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("v") != VERSION or raw.get("how") != "left":
            raise BadLifeNote(f"not a version {VERSION} note of a life that left: {raw!r:.200}")
        node, life, at = raw.get("node"), raw.get("life"), raw.get("at")
        if not isinstance(node, str) or not node:
            raise BadLifeNote(f"node must be a non-empty string, not {node!r:.100}")
        if not isinstance(life, int) or isinstance(life, bool) or life < 0:
            raise BadLifeNote(f"life must be a non-negative integer, not {life!r:.100}")
        if not isinstance(at, int | float) or isinstance(at, bool):
            raise BadLifeNote(f"at must be a number, not {at!r:.100}")
        links_in = raw.get("links_in", [])
        if not isinstance(links_in, list) or not all(_link_in(link) for link in links_in):
            raise BadLifeNote(f"links_in must be [source, life, gen, seq] lists: {links_in!r:.100}")
        return cls(
            node,
            life,
            float(at),
            tuple(tuple(link) for link in links_in),
            _tally_in(raw.get("conns", []), "conns"),
            _tally_in(raw.get("flights", []), "flights"),
        )


def _tally_out(tally: tuple[tuple[bytes, int], ...]) -> list[list[object]]:
    return [[base64.b64encode(conn).decode(), n] for conn, n in tally]


def _tally_in(raw: object, name: str) -> tuple[tuple[bytes, int], ...]:
    """``[[base64 connection id, count], ...]``; ``BadLifeNote`` if not."""
    if not isinstance(raw, list):
        raise BadLifeNote(f"{name} must be a list, not {raw!r:.100}")
    out = []
    for entry in raw:
        if not (
            isinstance(entry, list)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and type(entry[1]) is int
            and entry[1] >= 0
        ):
            raise BadLifeNote(f"{name} must be [connection, count] lists: {entry!r:.100}")
        try:
            conn = base64.b64decode(entry[0], validate=True)
        except (binascii.Error, ValueError):
            raise BadLifeNote(f"{name}: {entry[0]!r:.100} is not base64") from None
        out.append((conn, entry[1]))
    return tuple(out)


def _link_in(link: object) -> bool:
    return (
        isinstance(link, list)
        and len(link) == 4
        and isinstance(link[0], str)
        and all(type(n) is int and n >= 0 for n in link[1:])
    )


def note_path(state_dir: str, node_id: str) -> str:
    """Where node ``node_id`` keeps its note (one file per node id, so
    several nodes may share a directory)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in node_id)
    return os.path.join(state_dir, f"{safe}.life.json")


def write_note(state_dir: str, note: LifeNote) -> str:
    """Write ``note`` whole or not at all (a file beside it, flushed to
    disk, renamed over it). Returns its path."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = note_path(state_dir, note.node)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, note.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def take_file(path: str, what: str, limit: int) -> bytes | None:
    """The first ``limit`` bytes of the file at ``path``, removed as it is
    read (what the last process left is for the next one only); None if
    there is none, or (logged, naming it ``what``) it cannot be read or
    removed. Shared by the note and the held record (``held_record``)."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("%s %s could not be read (not used): %s", what, path, exc)
        return None
    try:
        os.remove(path)
    except OSError as exc:
        log.warning("%s %s could not be removed (not used): %s", what, path, exc)
        return None
    return data


def take_note(state_dir: str, node_id: str, now: float, max_age: float) -> LifeNote | None:
    """The note the last process of ``node_id`` left in ``state_dir``, if
    any, removed as it is read (it is of that life only). One that cannot be
    read, is malformed, is of another node or older than ``max_age`` is
    logged and not used."""
    path = note_path(state_dir, node_id)
    data = take_file(path, "life note", LIMIT)
    if data is None:
        return None
    try:
        note = LifeNote.decode(data)
    except BadLifeNote as exc:
        log.warning("life note %s is malformed (not used): %s", path, exc)
        return None
    if note.node != node_id:
        log.warning("life note %s is of node %r, not %r (not used)", path, note.node, node_id)
        return None
    if not 0 <= now - note.at <= max_age:
        log.info("life note %s is %.0f s old (not used: its peers forgot it)", path, now - note.at)
        return None
    return note
