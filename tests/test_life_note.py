"""The note a node's process leaves for the next (``zchannels.node.life_note``),
written from what it is for: a life that left says so once, to the next
process of the same node on the same disk, soon enough that its peers still
remember that life; anything else on disk is not taken for such a note."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from zchannels.node.life_note import (
    LIMIT,
    BadLifeNote,
    LifeNote,
    note_path,
    take_note,
    write_note,
)

NOTE = LifeNote("n1", 1_795_000_000_000_000, 1_800_000_000.5)


def test_a_note_written_is_taken_once_by_the_next_process_of_that_node(tmp_path: Path) -> None:
    path = write_note(str(tmp_path), NOTE)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["n1.life.json"]  # (nothing left beside it)
    assert take_note(str(tmp_path), "n2", NOTE.at + 1, 30.0) is None  # (another node's file)
    assert take_note(str(tmp_path), "n1", NOTE.at + 1, 30.0) == NOTE
    assert take_note(str(tmp_path), "n1", NOTE.at + 2, 30.0) is None  # (read once)
    assert not os.path.exists(path)


def test_a_note_its_peers_have_forgotten_the_life_of_is_not_used(tmp_path: Path) -> None:
    write_note(str(tmp_path), NOTE)
    assert take_note(str(tmp_path), "n1", NOTE.at + 30.5, 30.0) is None
    assert not os.path.exists(note_path(str(tmp_path), "n1"))  # (nor read again)
    write_note(str(tmp_path), NOTE)  # a clock set back: not trusted either
    assert take_note(str(tmp_path), "n1", NOTE.at - 5, 30.0) is None


def test_no_state_dir_yet_is_no_note(tmp_path: Path) -> None:
    assert take_note(str(tmp_path / "missing"), "n1", 0.0, 30.0) is None
    write_note(str(tmp_path / "new" / "dir"), NOTE)  # (made as it is written)
    assert take_note(str(tmp_path / "new" / "dir"), "n1", NOTE.at, 30.0) == NOTE


def _note(**changed: object) -> bytes:
    fields: dict[str, object] = {"v": 1, "node": "n1", "life": 1, "at": 1.0, "how": "left"}
    fields.update(changed)
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a version 1 note"),
        (_note(v=2), "v"),
        (_note(how="killed"), "how"),
        (_note(node=""), "node"),
        (_note(life="1"), "life"),
        (_note(life=True), "life"),
        (_note(life=-1), "life"),
        (_note(at=None), "at"),
        (_note(links_in={}), "links_in"),
        (_note(links_in=[["n2", 1, 1]]), "links_in"),
        (_note(links_in=[[2, 1, 1, 1]]), "links_in"),
        (_note(links_in=[["n2", 1, 1, -1]]), "links_in"),
        (_note(conns={}), "conns"),
        (_note(conns=[["czAvMA==", -1]]), "conns"),
        (_note(flights=[["not base64!", 1]]), "flights"),
        (_note(flights=[["czAvMA=="]]), "flights"),
    ],
)
def test_a_malformed_note_is_a_typed_error_and_never_used(
    tmp_path: Path, data: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(BadLifeNote):
        LifeNote.decode(data)
    path = note_path(str(tmp_path), "n1")
    Path(path).write_bytes(data)
    assert take_note(str(tmp_path), "n1", 1.0, 30.0) is None
    assert "malformed" in caplog.text
    assert not os.path.exists(path)  # (removed: not read at every start)


def test_a_note_keeps_how_far_its_life_took_each_peers_link(tmp_path: Path) -> None:
    """So the next process answers the peers' probes of that life's links
    as it would have (``Links.restore``). A note of session 28 has none;
    one with more than fit in ``LIMIT`` is written without them, never
    left unreadable."""
    note = LifeNote("n1", 5, 1.0, (("n2", 7, 1, 12), ("n3", 9, 2, 1)))
    write_note(str(tmp_path), note)
    assert take_note(str(tmp_path), "n1", 1.0, 30.0) == note
    assert LifeNote.decode(_note()) == LifeNote("n1", 1, 1.0)
    many = LifeNote("n1", 5, 1.0, tuple((f"n{i}", i, 1, 1) for i in range(LIMIT // 10)))
    assert len(many.encode()) <= LIMIT
    assert LifeNote.decode(many.encode()) == LifeNote("n1", 5, 1.0)


def test_a_note_keeps_its_clients_tallies(tmp_path: Path) -> None:
    """A life that leaves without a drain leaves its clients holding what
    it handed them; its note keeps each connection's reserved-send tally
    and flight, as a held record does (connection ids are bytes: base64
    in the JSON)."""
    note = LifeNote("n1", 5, 1.0, (), ((b"s/0", 7), (b"\x00\xffsecure", 0)), ((b"s/0", 3),))
    write_note(str(tmp_path), note)
    assert take_note(str(tmp_path), "n1", 1.0, 30.0) == note


def test_node_ids_that_are_not_file_names_stay_in_the_state_dir(tmp_path: Path) -> None:
    note = LifeNote("../../etc/x y", 7, 1.0)
    path = write_note(str(tmp_path), note)
    assert os.path.dirname(path) == str(tmp_path)
    assert take_note(str(tmp_path), "../../etc/x y", 2.0, 30.0) == note
    assert LifeNote.decode(NOTE.encode()) == NOTE
