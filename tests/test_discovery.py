"""Discovery's pure parts: the TXT record (a wire contract), instance names,
``PeerBook``'s verdicts, and merging sources (``EndpointMerge``,
``CombinedDiscovery`` over in-memory sources). No network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from conftest import eventually
from zchannels.discovery import Announcement, CombinedDiscovery, PeerEvent, StaticPeers
from zchannels.discovery.announcement import MAX_LABEL, PeerBook, Verdict, instance_label
from zchannels.discovery.combined import EndpointMerge

#: Seconds a merged event may take to come out of CombinedDiscovery.
MERGE_WITHIN = 1.0

ME = Announcement(
    cluster="blog",
    node_id="web1",
    incarnation=5,
    protocol_version=1,
    endpoint="tcp://10.0.0.1:7701",
)


def txt(**fields: str) -> dict[bytes, bytes | None]:
    base = {
        "cluster": "blog",
        "node": "web2",
        "inc": "7",
        "ver": "1",
        "ep": "tcp://10.0.0.2:7701",
    }
    base.update(fields)
    return {k.encode(): v.encode() for k, v in base.items()}


def test_txt_record_is_locked() -> None:
    """Other nodes parse these keys and values: changing them is a protocol change."""
    keyed = Announcement("blog", "web1", 1732412345678, 1, "tcp://10.0.0.1:7701", "9f86d081")
    assert keyed.to_txt() == {
        "cluster": "blog",
        "node": "web1",
        "inc": "1732412345678",
        "ver": "1",
        "ep": "tcp://10.0.0.1:7701",
        "fp": "9f86d081",
    }
    assert "fp" not in ME.to_txt()
    wire = {k.encode(): v.encode() for k, v in keyed.to_txt().items()}
    assert Announcement.from_txt(wire) == keyed


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"inc": "-1"}, "'inc' is not a decimal number"),
        ({"ver": "one"}, "'ver' is not a decimal number"),
        ({"ver": "\u0661"}, "'ver' is not a decimal number"),  # an Arabic-Indic digit
        ({"ep": "tcp://*:7701x"}, "peer endpoint must be"),
        ({"ep": "ipc:///tmp/x"}, "peer endpoint must be"),
        ({"ep": "tcp://h:70000"}, "peer endpoint must be"),
        ({"cluster": ""}, "must not be empty"),
    ],
)
def test_malformed_txt_is_refused_with_the_reason(fields: dict[str, str], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        Announcement.from_txt(txt(**fields))


def test_missing_or_undecodable_txt_keys_are_refused() -> None:
    record = txt()
    del record[b"ep"]
    with pytest.raises(ValueError, match="'ep' missing"):
        Announcement.from_txt(record)
    with pytest.raises(ValueError, match="not UTF-8"):
        Announcement.from_txt({**txt(), b"node": b"\xff"})
    with pytest.raises(ValueError, match="'node' missing"):
        Announcement.from_txt({**txt(), b"node": None})  # a key without "="


def test_instance_labels_are_dns_labels_unique_per_id_and_start() -> None:
    assert instance_label("web1", 5) == "web1-5"
    ids = ["web.1", "web_1", "WEB1", "web1", "x" * 200, "x" * 201, "ünï", "---", ""]
    labels = [instance_label(node_id, 1732412345678) for node_id in ids]
    assert len(set(labels)) == len(labels)
    for label in labels:
        assert len(label.encode()) <= MAX_LABEL
        assert label[0] != "-" and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
    assert instance_label("web1", 5) != instance_label("web1", 6)


def test_peer_book_reports_peers_once_and_ignores_strangers_once() -> None:
    book = PeerBook(ME)
    name = "web2-7._zchannels._tcp.local."
    found = book.seen(name, txt())
    assert found.events == (PeerEvent("found", "tcp://10.0.0.2:7701", "web2"),)
    assert found.ignored is None
    assert book.seen(name, txt()).events == (), "seen again (an update): nothing new"
    own = {k.encode(): v.encode() for k, v in ME.to_txt().items()}
    assert book.seen("web1-5", own) == Verdict(), "our own record: silently skipped"

    for stranger, reason in [
        (txt(cluster="shop"), "cluster 'shop' (ours is 'blog')"),
        (txt(ver="2"), "protocol version 2 (ours is 1)"),
        (txt(fp="beef"), "fingerprint beef (ours is none)"),
        (txt(node="web1", inc="4"), "our own node id"),
        (txt(inc="x"), "malformed TXT record"),
    ]:
        first = book.seen("other", stranger)
        assert first.events == () and first.ignored is not None and reason in first.ignored
        assert book.seen("other", stranger).ignored is None, "logged once, not per update"
        book.gone("other")
    assert book.gone(name).events == (PeerEvent("lost", "tcp://10.0.0.2:7701", "web2"),)
    assert book.gone(name).events == ()


def test_a_peer_that_turns_into_a_stranger_is_lost() -> None:
    book = PeerBook(ME)
    book.seen("p", txt())
    verdict = book.seen("p", txt(ver="2"))
    assert verdict.events == (PeerEvent("lost", "tcp://10.0.0.2:7701", "web2"),)
    assert verdict.ignored is not None
    moved = PeerBook(ME)
    moved.seen("p", txt())
    assert moved.seen("p", txt(ep="tcp://10.0.0.9:7701")).events == (
        PeerEvent("lost", "tcp://10.0.0.2:7701", "web2"),
        PeerEvent("found", "tcp://10.0.0.9:7701", "web2"),
    )


def test_only_the_latest_start_of_a_node_is_a_peer() -> None:
    """A start that died without a goodbye leaves its record for its TTL."""
    book = PeerBook(ME)
    book.seen("web2-7", txt(inc="7"))
    later = book.seen("web2-8", txt(inc="8", ep="tcp://10.0.0.2:7702"))
    assert later.events == (
        PeerEvent("lost", "tcp://10.0.0.2:7701", "web2"),
        PeerEvent("found", "tcp://10.0.0.2:7702", "web2"),
    )
    stale = book.seen("web2-6", txt(inc="6"))
    assert stale.events == () and stale.ignored is not None and "stale" in stale.ignored
    assert book.gone("web2-7").events == (), "the replaced start's goodbye changes nothing"
    assert set(book.peers) == {"web2-8"}


def test_endpoint_merge_reports_first_found_and_last_lost() -> None:
    merge = EndpointMerge(2)
    e = PeerEvent("found", "tcp://a:1")
    lost = PeerEvent("lost", "tcp://a:1")
    assert merge.apply(0, e) == e
    assert merge.apply(0, e) is None, "a repeat from the same source"
    assert merge.apply(1, e) is None, "another source: already reported"
    assert merge.apply(0, lost) is None, "source 1 still has it"
    assert merge.apply(0, lost) is None, "source 0 no longer had it"
    assert merge.apply(1, lost) == lost


class FakeSource:
    """A discovery source the test feeds by hand."""

    def __init__(self, fail_stop: bool = False) -> None:
        self.queue: asyncio.Queue[PeerEvent | None] = asyncio.Queue()
        self.started = self.stopped = False
        self.fail_stop = fail_stop

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True
        self.queue.put_nowait(None)
        if self.fail_stop:
            raise OSError("stop failed")

    async def events(self) -> AsyncIterator[PeerEvent]:
        while (event := await self.queue.get()) is not None:
            if event.endpoint == "boom":
                raise RuntimeError("source broke")
            yield event


async def collect(combined: CombinedDiscovery, into: list[PeerEvent]) -> None:
    async for event in combined.events():
        into.append(event)


async def test_combined_merges_stops_all_and_ends() -> None:
    mdns_like = FakeSource()
    failing = FakeSource(fail_stop=True)
    combined = CombinedDiscovery([StaticPeers(["tcp://seed:1"]), mdns_like, failing])
    await combined.start()
    assert mdns_like.started and failing.started
    events: list[PeerEvent] = []
    reader = asyncio.create_task(collect(combined, events))
    await eventually(lambda: events, MERGE_WITHIN, "the seed")
    assert events == [PeerEvent("found", "tcp://seed:1")]
    for event in [
        PeerEvent("found", "tcp://seed:1", "n1"),  # mDNS sees the seed too
        PeerEvent("found", "tcp://peer:1", "n2"),
        PeerEvent("lost", "tcp://seed:1", "n1"),  # and loses it: still a seed
        PeerEvent("lost", "tcp://peer:1", "n2"),
    ]:
        mdns_like.queue.put_nowait(event)
    await eventually(lambda: len(events) == 3, MERGE_WITHIN, "peer found and lost")
    assert events[1:] == [
        PeerEvent("found", "tcp://peer:1", "n2"),
        PeerEvent("lost", "tcp://peer:1", "n2"),
    ]
    with pytest.raises(OSError, match="stop failed"):
        await combined.stop()
    assert mdns_like.stopped and failing.stopped, "every source stopped despite a failure"
    await asyncio.wait_for(reader, MERGE_WITHIN)  # events() ended


async def test_combined_raises_a_source_error_from_events() -> None:
    broken = FakeSource()
    combined = CombinedDiscovery([broken])
    await combined.start()
    broken.queue.put_nowait(PeerEvent("found", "boom"))
    with pytest.raises(RuntimeError, match="source broke"):
        await asyncio.wait_for(collect(combined, []), MERGE_WITHIN)
    await combined.stop()
