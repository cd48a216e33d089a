"""``MdnsDiscovery`` for real, in this process, on loopback only.

Several instances bound to 127.0.0.1 share multicast on ``lo``, so they see
each other's registrations as hosts on a LAN would. Every test uses a fresh
cluster name, so other runs on this machine are other clusters to it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import eventually
from zchannels.discovery import CombinedDiscovery, MdnsDiscovery, PeerEvent, StaticPeers

#: Seconds within which instances on loopback must find each other (they
#: take milliseconds: registration skips probing).
FIND_WITHIN = 2.0
#: Seconds for a goodbye to be reported as "lost" on the other side.
GOODBYE_WITHIN = 2.0


class Watched:
    """A discovery source started for a test, with every event it yields."""

    def __init__(self, source: Any) -> None:
        self.source = source  # a Discovery; Any lets tests read MdnsDiscovery fields
        self.events: list[PeerEvent] = []
        self.ended = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.source.start()
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for event in self.source.events():
            self.events.append(event)
        self.ended = True

    async def stop(self) -> None:
        await self.source.stop()
        if self._task is not None:
            await asyncio.wait_for(self._task, GOODBYE_WITHIN)

    def found(self) -> set[str | None]:
        """Node ids (None for seeds) found and not lost since."""
        current: dict[str, str | None] = {}
        for event in self.events:
            if event.kind == "found":
                current[event.endpoint] = event.node_id
            else:
                current.pop(event.endpoint, None)
        return set(current.values())


class Loopback:
    """This test's MdnsDiscovery instances on loopback. Every name carries a
    per-test tag: node ids (hence service names: registration skips probing,
    so names must be unique on the link) and the cluster, so that another
    test run on this machine at the same time is a stranger, never a twin."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.cluster = f"test-{self.tag}"
        self.started: list[Watched] = []
        self._ports = iter(range(7701, 7800))

    def node(self, short: str) -> str:
        return f"{short}-{self.tag}"

    def make(self, short: str, **overrides: Any) -> MdnsDiscovery:
        settings: dict[str, Any] = {
            "cluster": self.cluster,
            "node_id": self.node(short),
            "incarnation": 1,
            "peer_endpoint": f"tcp://127.0.0.1:{next(self._ports)}",
            "interfaces": ["127.0.0.1"],
            "protocol_version": 1,
            **overrides,
        }
        return MdnsDiscovery(**settings)

    async def watch(self, source: Any) -> Watched:
        watched = Watched(source)
        await watched.start()
        self.started.append(watched)
        return watched

    async def __call__(self, short: str, **overrides: Any) -> Watched:
        """A started, watched instance in this test's cluster."""
        return await self.watch(self.make(short, **overrides))


@pytest.fixture
async def mdns() -> AsyncIterator[Loopback]:
    loopback = Loopback()
    yield loopback
    await asyncio.gather(*(watched.stop() for watched in loopback.started))


async def test_two_nodes_find_each_other_and_not_themselves(mdns: Loopback) -> None:
    a = await mdns("a")
    b = await mdns("b")
    took = await eventually(
        lambda: a.found() == {mdns.node("b")} and b.found() == {mdns.node("a")},
        FIND_WITHIN,
        "a and b to meet",
    )
    print(f"\nloopback mDNS: a and b found each other in {took * 1000:.0f} ms")
    assert PeerEvent("found", endpoint(b), mdns.node("b")) in a.events
    assert [e.kind for e in a.events] == ["found"], "one event for one peer"


@pytest.mark.parametrize(
    ("odd", "reason"),
    [
        ({"cluster": "another"}, "cluster 'another-"),
        ({"protocol_version": 2}, "protocol version 2 (ours is 1)"),
        ({"key_fingerprint": "ab12cd"}, "cluster key fingerprint ab12cd (ours is none)"),
    ],
    ids=["cluster", "version", "key"],
)
async def test_peers_of_another_cluster_version_or_key_are_ignored_with_one_line(
    mdns: Loopback,
    caplog: pytest.LogCaptureFixture,
    odd: dict[str, Any],
    reason: str,
) -> None:
    caplog.set_level(logging.INFO, logger="zchannels.discovery")
    if "cluster" in odd:
        odd = {"cluster": f"another-{mdns.tag}"}
    a = await mdns("a")
    b = await mdns("b")
    x = await mdns("x", **odd)

    def ignoring(name: str) -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "zchannels.discovery" and f"ignoring {name}" in r.getMessage()
        ]

    await eventually(
        lambda: (
            a.found() == {mdns.node("b")}
            and b.found() == {mdns.node("a")}
            and all(ignoring(w.source.service_name) for w in (a, b, x))
        ),
        FIND_WITHIN,
        "a and b to meet, and x and they to see (and ignore) each other",
    )
    x_lines = ignoring(x.source.service_name)
    assert len(x_lines) == 2, f"one line from a and one from b: {x_lines}"
    assert all(reason in line for line in x_lines), x_lines
    assert [len(ignoring(w.source.service_name)) for w in (a, b)] == [1, 1], "one line from x"
    assert x.found() == set()


async def test_stop_says_goodbye_and_the_peer_reports_lost(mdns: Loopback) -> None:
    a = await mdns("a")
    b = await mdns("b")
    await eventually(lambda: a.found() == {mdns.node("b")}, FIND_WITHIN, "a to find b")
    stopping = asyncio.create_task(b.stop())
    took = await eventually(lambda: a.found() == set(), GOODBYE_WITHIN, "a to see b leave")
    await stopping
    assert b.ended, "events() ends after stop()"
    print(f"\nloopback mDNS: b reported lost {took:.3f} s after stop() began")
    assert [e.kind for e in a.events] == ["found", "lost"]
    assert a.events[1].node_id == mdns.node("b")


async def test_a_later_start_of_a_node_replaces_the_earlier_one(
    mdns: Loopback,
) -> None:
    a = await mdns("a")
    await mdns("b", incarnation=1, peer_endpoint="tcp://127.0.0.1:7790")
    await eventually(
        lambda: a.found() == {mdns.node("b")}, FIND_WITHIN, "a to find b's first start"
    )
    # b restarts without a goodbye (its old record lingers) on another port.
    await mdns("b", incarnation=2, peer_endpoint="tcp://127.0.0.1:7791")
    await eventually(lambda: len(a.events) == 3, FIND_WITHIN, "a to see b's second start")
    assert a.events[1:] == [
        PeerEvent("lost", "tcp://127.0.0.1:7790", mdns.node("b")),
        PeerEvent("found", "tcp://127.0.0.1:7791", mdns.node("b")),
    ]


async def test_seeds_and_mdns_combined_report_each_endpoint_once(
    mdns: Loopback,
) -> None:
    b = await mdns("b")
    b_endpoint = endpoint(b)
    probe = await mdns("probe")
    seeds = StaticPeers([b_endpoint, "tcp://192.0.2.1:7701"])
    a = mdns.make("a")
    combined = Watched(CombinedDiscovery([seeds, a]))
    await combined.start()
    try:
        await eventually(lambda: mdns.node("a") in probe.found(), FIND_WITHIN, "a announced")
        await eventually(
            lambda: {e.endpoint for e in combined.events} >= {b_endpoint, endpoint(probe)},
            FIND_WITHIN,
            "a to find b and probe",
        )
        found = [e.endpoint for e in combined.events if e.kind == "found"]
        assert sorted(found) == sorted([b_endpoint, "tcp://192.0.2.1:7701", endpoint(probe)]), (
            "b is a seed and an mDNS peer: reported once"
        )
        # b leaves mDNS but stays a seed: not lost. probe leaves: lost.
        await b.stop()
        await probe.stop()
        await eventually(lambda: not a.peers, GOODBYE_WITHIN, "a's mDNS to lose b and probe")
        await eventually(
            lambda: any(e.kind == "lost" for e in combined.events), GOODBYE_WITHIN, "a lost"
        )
        lost = [e for e in combined.events if e.kind == "lost"]
        assert lost == [PeerEvent("lost", endpoint(probe), mdns.node("probe"))]
    finally:
        await combined.stop()
    assert combined.ended


def endpoint(watched: Watched) -> str:
    source = watched.source
    assert isinstance(source, MdnsDiscovery)
    return source.announcement.endpoint
