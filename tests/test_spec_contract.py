"""The Channels layer contract between a process and its node (issue 10).

Written from the Channels layer specification (channels'
``docs/channel_layer_spec.rst``: "Capacity", "Channel Semantics", the
``flush`` extension), from the contract in DESIGN.md/README ("``ChannelFull``
exactly when the channel holds ``capacity`` messages not yet returned by a
``receive()``"), and from what Django users do (loops made and closed by
hand, ``fork()`` after the layer was used, a group per chat room) — not from
the implementation. Every test runs through an embedded node, the shared
node of ``CONFIG = {}``, a ``znode`` sidecar and a 3-node cluster
(``tests/deployments.py``).

The words the tests use:

- a channel *holds* a message from the moment a ``send()`` (or a
  ``group_send()`` that did not drop it) returned until a ``receive()``
  returned it: queued at the owner, in flight or prefetched by a receiving
  process, it is held all the same;
- "another process" is a layer of another CONFIG (``process=N``), or a real
  child process where the test says so;
- two processes order their actions only by telling each other: when what
  process B does must come after what process A did (B sends once A has
  received), A tells B through the layer first (``tell``), as real processes
  would. Without it the test would ask the node to order two independent
  connections by the test's own control flow, which no two real processes
  can observe.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import time
import warnings
from typing import Any

import pytest
from channels.exceptions import ChannelFull
from conftest import eventually
from deployments import (  # noqa: F401  (fixtures)
    Scenario,
    channel_of_another_process,
    dep_fixture,
    dep_sync_fixture,
    deployment,
    run,
)

from zchannels.errors import ZChannelsError
from zchannels.layer import ZeroMQChannelLayer

#: Seconds to wait for a message that must arrive (it arrives in
#: milliseconds; the bound only turns a loss into a failure instead of a hang).
ARRIVES = 3.0


async def recv(layer: ZeroMQChannelLayer, channel: str, within: float = ARRIVES) -> Any:
    try:
        return await asyncio.wait_for(layer.receive(channel), within)
    except TimeoutError:
        pytest.fail(f"nothing arrived on {channel!r} within {within:g} s")


async def recv_many(layer: ZeroMQChannelLayer, channel: str, n: int) -> list[Any]:
    got: list[Any] = []
    for _ in range(n):
        try:
            got.append(await asyncio.wait_for(layer.receive(channel), ARRIVES))
        except TimeoutError:
            pytest.fail(f"{len(got)} of {n} messages arrived on {channel!r}: {got}")
    return got


async def more_drops(dep: Scenario, before: int, n: int) -> bool:
    """At least ``n`` more ``full`` drops than ``before``."""
    return await dep.full_drops() - before >= n


async def tell(dep: Scenario, a: ZeroMQChannelLayer, b: ZeroMQChannelLayer) -> None:
    """Process ``a`` tells process ``b`` it is done, through the layer: what
    ``b`` does next comes after everything ``a`` did before (in a cluster the
    note goes through the node that owns the tests' plain channels)."""
    token = os.urandom(4).hex()
    note = dep.plain(f"note-{token}")  # its own channel: no reader has prefetched it
    await a.send(note, {"note": token})
    assert await recv(b, note) == {"note": token}


def by_writer(messages: list[dict[str, Any]], key: str) -> dict[Any, list[dict[str, Any]]]:
    """Messages grouped by writer (``message[key]``), each writer's in the
    order received: the spec orders one writer's messages, not several's."""
    out: dict[Any, list[dict[str, Any]]] = {}
    for message in messages:
        out.setdefault(message[key], []).append(message)
    return out


def non_local(name: str) -> str:
    """The part of a process-specific name up to and including ``!``."""
    return name[: name.index("!") + 1]


# -- 1. capacity is exact, whatever was prefetched -----------------------------
async def test_capacity_is_exact_after_a_receive(dep: Scenario) -> None:
    """Issue 10, defect 1, in the issue's own steps."""
    sender = dep.layer(at=0, process=1, capacity=3)
    reader = dep.layer(at=2, process=2, capacity=3)
    ch = dep.plain("exact")
    for i in range(3):
        await sender.send(ch, {"i": i})
    with pytest.raises(ChannelFull):
        await sender.send(ch, {"i": "4th"})
    assert await recv(reader, ch) == {"i": 0}
    await tell(dep, reader, sender)
    await sender.send(ch, {"i": 3})  # the channel holds 1 and 2: room for one
    # now it holds 1, 2 and 3 (some of them perhaps prefetched by the reader)
    with pytest.raises(ChannelFull):
        await sender.send(ch, {"i": "over"})
    assert await recv_many(reader, ch, 3) == [{"i": 1}, {"i": 2}, {"i": 3}]
    await tell(dep, reader, sender)
    # what raised ChannelFull was never queued: the next message is the marker
    await sender.send(ch, {"i": "marker"})
    assert await recv(reader, ch) == {"i": "marker"}


async def test_capacity_is_exact_with_two_senders(dep: Scenario) -> None:
    """ChannelFull if *and only if* the channel holds ``capacity`` messages:
    what one sender may pipeline must not take room from another."""
    a = dep.layer(at=0, process=1, capacity=3)
    b = dep.layer(at=2, process=2, capacity=3)
    reader = dep.layer(at=2, process=3, capacity=3)
    ch = dep.plain("two-senders")
    await a.send(ch, {"from": "a", "n": 0})
    await b.send(ch, {"from": "b", "n": 0})
    await b.send(ch, {"from": "b", "n": 1})  # holds 2 before this one: it fits
    with pytest.raises(ChannelFull):
        await a.send(ch, {"from": "a", "n": "over"})
    with pytest.raises(ChannelFull):
        await b.send(ch, {"from": "b", "n": "over"})
    got = by_writer(await recv_many(reader, ch, 3), "from")
    assert got == {"a": [{"from": "a", "n": 0}], "b": [{"from": "b", "n": n} for n in (0, 1)]}


# -- 2. process-specific channels share capacity per non-local part ------------
async def test_new_channels_of_one_process_share_one_capacity(dep: Scenario) -> None:
    """Spec, "Capacity": process-local channels apply their capacity on the
    non-local part (up to and including ``!``), shared by all the "virtual"
    channels inside it (issue 10, defect 2)."""
    owner = dep.layer(at=2, process=1, capacity=3)
    sender = dep.layer(at=0, process=2, capacity=3)
    one, two = await owner.new_channel(), await owner.new_channel()
    assert non_local(one) == non_local(two), "two new_channel() names of one process"
    await sender.send(one, {"to": 1, "n": 0})
    await sender.send(two, {"to": 2, "n": 0})
    await sender.send(one, {"to": 1, "n": 1})  # 3 in the shared part
    with pytest.raises(ChannelFull):
        await sender.send(two, {"to": 2, "n": "over"})
    with pytest.raises(ChannelFull):
        await sender.send(one, {"to": 1, "n": "over"})
    three = await owner.new_channel()  # a name made later shares it too
    assert non_local(three) == non_local(one)
    with pytest.raises(ChannelFull):
        await sender.send(three, {"to": 3, "n": "over"})
    assert await recv_many(owner, one, 2) == [{"to": 1, "n": 0}, {"to": 1, "n": 1}]
    assert await recv(owner, two) == {"to": 2, "n": 0}
    await tell(dep, owner, sender)
    # empty again: three fit (wherever they are prefetched), a fourth does not
    for name in (three, one, two):
        await sender.send(name, {"again": name})
    with pytest.raises(ChannelFull):
        await sender.send(three, {"again": "over"})
    for name in (three, one, two):
        assert await recv(owner, name) == {"again": name}


async def test_a_thousand_readers_in_one_process_get_every_group_message(dep: Scenario) -> None:
    """Issue 10, defect 2: sharing capacity per process must not let one
    group_send use it up once per member: 1,000 readers in one (Daphne)
    process, capacity 100, each gets every group message while it reads."""
    readers = dep.layer(at=2, process=1, capacity=100)
    sender = dep.layer(at=0, process=2, capacity=100)
    names = [await readers.new_channel() for _ in range(1000)]
    assert len({non_local(n) for n in names}) == 1
    await asyncio.gather(*(readers.group_add("live", n) for n in names))
    before = await dep.full_drops()
    rounds = 10
    got: dict[str, list[int]] = {n: [] for n in names}

    async def read(name: str) -> None:
        while len(got[name]) < rounds:
            got[name].append((await readers.receive(name))["i"])

    reading = asyncio.gather(*(read(n) for n in names))
    for i in range(rounds):
        await sender.group_send("live", {"i": i})
    try:
        await asyncio.wait_for(reading, 30)
    except TimeoutError:
        short = {n: g for n, g in got.items() if len(g) < rounds}
        pytest.fail(
            f"{len(short)} of 1000 readers missed group messages within 30 s; "
            f"e.g. {next(iter(short.values()))}"
        )
    assert all(g == list(range(rounds)) for g in got.values()), "lost or reordered"
    assert await dep.full_drops() == before, "a group message was dropped as full"


async def test_channel_capacity_glob_and_regex_are_exact(dep: Scenario) -> None:
    """Per-name capacities (spec: "configurable per channel name or name
    prefix"; channels_redis' ``channel_capacity``: globs and compiled regexes
    matched on the channel name), exact like the default one, prefetch
    included."""
    config = {"capacity": 100, "channel_capacity": {"jobs.*": 2, re.compile(r"bulk\."): 4}}
    sender = dep.layer(at=0, process=1, **config)
    reader = dep.layer(at=2, process=2, **config)
    for ch, capacity in ((dep.plain("jobs.x"), 2), (dep.plain("bulk.y"), 4)):
        for i in range(capacity):
            await sender.send(ch, {"i": i})
        with pytest.raises(ChannelFull):
            await sender.send(ch, {"i": "over"})
        assert await recv(reader, ch) == {"i": 0}
        await tell(dep, reader, sender)
        await sender.send(ch, {"i": capacity})  # room for exactly one
        with pytest.raises(ChannelFull):
            await sender.send(ch, {"i": "over again"})
        got = await recv_many(reader, ch, capacity)
        assert got == [{"i": i} for i in range(1, capacity + 1)], ch
    # a name no pattern matches has the default capacity
    other = dep.plain("other")
    for i in range(10):
        await sender.send(other, {"i": i})
    assert await recv_many(reader, other, 10) == [{"i": i} for i in range(10)]


async def test_channel_capacity_pattern_for_new_channels_is_shared(dep: Scenario) -> None:
    """A ``channel_capacity`` pattern matching a process's ``new_channel()``
    names gives their shared non-local part that capacity."""
    config = {"capacity": 100, "channel_capacity": {"reply.*": 2}}
    owner = dep.layer(at=2, process=1, **config)
    sender = dep.layer(at=0, process=2, **config)
    a, b = await owner.new_channel("reply"), await owner.new_channel("reply")
    assert non_local(a) == non_local(b)
    await sender.send(a, {"to": "a"})
    await sender.send(b, {"to": "b"})
    with pytest.raises(ChannelFull):
        await sender.send(a, {"to": "a", "n": "over"})
    with pytest.raises(ChannelFull):
        await sender.send(b, {"to": "b", "n": "over"})
    # another non-local part of the same process: the default capacity
    plain = await owner.new_channel()
    assert non_local(plain) != non_local(a)
    for i in range(5):
        await sender.send(plain, {"i": i})
    assert await recv(owner, a) == {"to": "a"}
    assert await recv(owner, b) == {"to": "b"}
    assert await recv_many(owner, plain, 5) == [{"i": i} for i in range(5)]


# -- 3, 4. group_send: members with room get it, drops are counted once ---------
async def test_group_send_reaches_a_member_with_room(dep: Scenario) -> None:
    """Issue 10, defect 3: one process sends to a member directly, another
    group_sends; with capacity 3 the member holds 2 before the second
    group_send, so it must get it (and nothing is counted dropped). Three
    rounds, each starting from an empty channel."""
    member = dep.layer(at=2, process=1, capacity=3)
    direct = dep.layer(at=2, process=2, capacity=3)
    broadcaster = dep.layer(at=0, process=3, capacity=3)
    # Another member on the same node, always reading: once it has a
    # group_send, so has the node (in a cluster a group_send may return
    # before the member's node has it, and the member must not start
    # reading before that: reading makes room).
    witness = dep.layer(at=2, process=4, capacity=3)
    ch, seen = await member.new_channel(), await witness.new_channel()
    await member.group_add("room", ch)
    await witness.group_add("room", seen)
    before = await dep.full_drops()
    for r in range(3):
        await direct.send(ch, {"from": "direct", "round": r})
        await broadcaster.group_send("room", {"from": "group", "round": r, "n": 1})
        # the channel holds 2 now: room for this one
        await broadcaster.group_send("room", {"from": "group", "round": r, "n": 2})
        assert [m["n"] for m in await recv_many(witness, seen, 2)] == [1, 2]
        got = by_writer(await recv_many(member, ch, 3), "from")
        assert got == {
            "direct": [{"from": "direct", "round": r}],
            "group": [{"from": "group", "round": r, "n": n} for n in (1, 2)],
        }, f"round {r}"
        await tell(dep, member, direct)
        # (the witness's takes, too, are reported before the next round's
        # group_sends: else a quick round finds the witness's channel
        # holding last round's two, and a third copy does not fit)
        await tell(dep, witness, broadcaster)
    await broadcaster.group_send("room", {"from": "group", "marker": True})
    assert await recv(member, ch) == {"from": "group", "marker": True}
    assert await dep.full_drops() == before, "a member with room was counted as full"


async def test_a_skipped_group_member_is_counted_once(dep: Scenario) -> None:
    """Issue 10, defect 4: 10 group_sends to a member with capacity 5 that
    does not read: 5 delivered, 5 dropped, ``full`` grows by exactly 5 (in
    ``layer.drops()`` and ``znode status``, summed over every node)."""
    member = dep.layer(at=2, process=1, capacity=5)
    broadcaster = dep.layer(at=0, process=2, capacity=5)
    ch = await member.new_channel()
    await member.group_add("ten", ch)
    before = await dep.full_drops()
    for i in range(10):
        await broadcaster.group_send("ten", {"i": i})
    # (in a cluster a group_send may return before the owner has it: the
    # member starts reading once all ten were handled, i.e. five dropped)
    await eventually(
        lambda: more_drops(dep, before, 5), 5, "five group messages to be dropped as full"
    )
    assert await recv_many(member, ch, 5) == [{"i": i} for i in range(5)]
    await tell(dep, member, broadcaster)
    # the marker comes next: the dropped five never arrive, and once it is
    # here the owner has handled (and counted) everything sent before it
    await broadcaster.group_send("ten", {"i": "marker"})
    assert await recv(member, ch) == {"i": "marker"}
    assert await dep.full_drops() - before == 5


# -- 5. an event loop closed by hand --------------------------------------------
def test_a_loop_closed_by_hand_does_not_break_the_layer(dep_sync: Scenario) -> None:
    """Issue 10, defect 5: Celery tasks, management commands and channels'
    own tests make a loop, use the layer on it and close it without
    ``asyncio.run()`` or ``layer.close()``. Other loops must not notice, and
    what the closed loop had prefetched comes back, in order."""
    dep = dep_sync
    layer = dep.layer(at=2, process=1)
    plain = dep.plain("by-hand")
    loop = asyncio.new_event_loop()

    async def before() -> tuple[str, Any, Any]:
        mine = await layer.new_channel()
        for i in range(5):
            await layer.send(mine, {"i": i})
            await layer.send(plain, {"i": i})
        # one taken from each; the rest may now be prefetched by this loop
        return mine, await recv(layer, mine), await recv(layer, plain)

    try:
        mine, first_mine, first_plain = loop.run_until_complete(asyncio.wait_for(before(), 10))
    finally:
        loop.close()
    assert (first_mine, first_plain) == ({"i": 0}, {"i": 0})

    async def after() -> tuple[list[Any], list[Any]]:
        rest_mine = await recv_many(layer, mine, 4)
        rest_plain = await recv_many(layer, plain, 4)
        await layer.send(plain, {"after": True})
        assert await recv(layer, plain) == {"after": True}
        return rest_mine, rest_plain

    rest_mine, rest_plain = run(after, 15)
    assert rest_mine == [{"i": i} for i in range(1, 5)], "the closed loop's prefetch"
    assert rest_plain == [{"i": i} for i in range(1, 5)], "the closed loop's prefetch"

    # and again: one more loop closed by hand, then one more asyncio.run
    async def roundtrip() -> Any:
        await layer.send(mine, {"once": "more"})
        return await recv(layer, mine)

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(asyncio.wait_for(roundtrip(), 10)) == {"once": "more"}
    finally:
        loop.close()
    assert run(roundtrip, 10) == {"once": "more"}


# -- 6. flush ----------------------------------------------------------------
async def test_flush_forgets_what_a_closed_process_had_prefetched(dep: Scenario) -> None:
    """Issue 10, defect 6, in the issue's own steps: after ``flush()``
    returns nothing sent before it is delivered and every capacity is free."""
    first = dep.layer(at=2, process=1, capacity=3)
    ch = dep.plain("flushed")
    await first.send(ch, {"old": 0})
    await first.send(ch, {"old": 1})
    assert await recv(first, ch) == {"old": 0}  # the other one may be prefetched
    await first.flush()
    await first.close()
    later = dep.layer(at=0, process=2, capacity=3)
    for i in range(3):
        await later.send(ch, {"new": i})  # the channel is empty: three fit
    with pytest.raises(ChannelFull):
        await later.send(ch, {"new": "over"})
    assert await recv_many(later, ch, 3) == [{"new": i} for i in range(3)]


async def test_flush_forgets_what_a_live_process_prefetched(dep: Scenario) -> None:
    """The same, with the receiving process still running: what it had
    prefetched before the flush is gone too."""
    consumer = dep.layer(at=2, process=1, capacity=3)
    ch = dep.plain("flushed-live")
    await consumer.send(ch, {"old": 0})
    await consumer.send(ch, {"old": 1})
    assert await recv(consumer, ch) == {"old": 0}
    await consumer.flush()
    other = dep.layer(at=0, process=2, capacity=3)
    for i in range(3):
        await other.send(ch, {"new": i})
    assert await recv_many(consumer, ch, 3) == [{"new": i} for i in range(3)]
    await tell(dep, consumer, other)
    # and the flushed message took no room: empty now, three fit, not four
    for i in range(3, 6):
        await other.send(ch, {"new": i})
    with pytest.raises(ChannelFull):
        await other.send(ch, {"new": "over"})
    assert await recv_many(consumer, ch, 3) == [{"new": i} for i in range(3, 6)]


# -- 7. fork -------------------------------------------------------------------
def _forked_child(
    layer: ZeroMQChannelLayer, plain: str, parents: str, shared_node: bool, out: int
) -> None:
    """The child's side: the inherited layer object, used as is. Reports one
    JSON object on ``out`` and leaves with ``os._exit`` (never returns)."""
    code = 1
    try:
        # a hang in C code still ends (the parent reports it)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(6)

        async def child() -> dict[str, Any]:
            own = await layer.new_channel()
            await layer.send(own, {"child": "roundtrip"})
            roundtrip = await layer.receive(own)
            taken = []
            try:  # the parent's prefetched messages are not the child's
                taken.append(await asyncio.wait_for(layer.receive(plain), 0.5))
            except TimeoutError:
                pass
            if shared_node:
                await layer.send(parents, {"from": "child"})
            await layer.close()  # a worker that ends cleanly
            return {"roundtrip": roundtrip, "taken": taken}

        async def bounded() -> dict[str, Any]:
            return await asyncio.wait_for(child(), 4)

        report = asyncio.run(bounded())
        code = 0
    except BaseException as exc:
        report = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        os.write(out, json.dumps(report).encode())
    finally:
        os._exit(code)


def _child_report(r: int, pid: int, within: float) -> dict[str, Any]:
    data = b""
    deadline = time.monotonic() + within
    try:
        while True:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the forked child said nothing within {within:g} s (hung)")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    if not data:
        pytest.fail(f"the forked child died without a report (wait status {status})")
    report: dict[str, Any] = json.loads(data)
    return report


def test_a_layer_used_before_fork_works_in_the_child(dep_sync: Scenario) -> None:
    """Issue 10, defect 7: Django keeps one layer per alias; gunicorn
    ``--preload`` and ``ChannelsLiveServerTestCase`` fork after it was used.
    The child gets a working layer from the same object; the parent's
    prefetched messages, session and memberships stay the parent's."""
    dep = dep_sync
    layer = dep.layer(at=2, process=1)
    sender = dep.layer(at=0, process=2)
    plain = dep.plain("before-fork")
    shared_node = dep.kind != "embedded"  # an embedded child has a node of its own
    loop = asyncio.new_event_loop()
    try:

        async def before() -> tuple[str, Any]:
            mine = await layer.new_channel()
            await layer.group_add("parents", mine)
            for i in range(3):
                await sender.send(plain, {"i": i})
            return mine, await recv(layer, plain)  # 1 and 2 may now be prefetched

        mine, first = loop.run_until_complete(asyncio.wait_for(before(), 10))
        assert first == {"i": 0}
        r, w = os.pipe()
        with warnings.catch_warnings():  # (3.12+ warns about fork with threads)
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(r)
            _forked_child(layer, plain, mine, shared_node, w)
        os.close(w)
        report = _child_report(r, pid, within=10)
        assert "error" not in report, f"in the forked child: {report['error']}"
        assert report["roundtrip"] == {"child": "roundtrip"}

        async def after() -> None:
            # the parent's own: what it prefetched, then whatever comes next
            taken = report["taken"]
            rest = await recv_many(layer, plain, 2 - len(taken))
            assert sorted(m["i"] for m in taken + rest) == [1, 2], "lost or duplicated"
            assert [m["i"] for m in rest] == sorted(m["i"] for m in rest), "reordered"
            await sender.send(plain, {"i": "marker"})
            assert await recv(layer, plain) == {"i": "marker"}
            if shared_node:
                assert await recv(layer, mine) == {"from": "child"}
            # the parent's membership outlived the child
            await sender.group_send("parents", {"group": "after the fork"})
            assert await recv(layer, mine) == {"group": "after the fork"}

        loop.run_until_complete(asyncio.wait_for(after(), 15))
    finally:
        loop.close()

    async def fresh_loop() -> Any:
        await layer.send(mine, {"fresh": "loop"})
        return await recv(layer, mine)

    assert run(fresh_loop, 10) == {"fresh": "loop"}


# -- 8. receive() on a process-specific name this process did not make ---------
@pytest.mark.parametrize("whose", ["made-up", "another process's"])
async def test_receive_on_a_process_specific_name_not_made_here_is_refused(
    dep: Scenario, whose: str
) -> None:
    """Issue 10, defect 8: the spec says the local parts of a ``!`` channel
    are generated and managed by the process that consumes it; receiving on
    another's must fail at once, saying why (channels_redis refuses too)."""
    layer = dep.layer(at=2, process=1)
    mine = await layer.new_channel()

    async def refused(name: str) -> None:
        start = time.monotonic()
        try:
            await asyncio.wait_for(layer.receive(name), 2)
        except (TypeError, ZChannelsError) as exc:
            took = time.monotonic() - start
            text = str(exc)
            assert name in text, f"the error does not name the channel: {text!r}"
            reasons = ("process", "new_channel", "this layer", "made", "created")
            assert any(r in text for r in reasons), f"the error does not say why: {text!r}"
            print(f"refused in {took * 1000:.1f} ms: {type(exc).__name__}: {text}")
        except TimeoutError:
            pytest.fail(f"receive({name!r}) still waiting after 2 s: it must be refused")
        else:
            pytest.fail(f"receive({name!r}) returned a message")

    if whose == "made-up":
        await refused("not-ours!x")
    else:
        with channel_of_another_process(dep.config(at=0, process=2)) as theirs:
            await refused(theirs)
    # this process's own names still work, through any layer instance of it
    twin = dep.layer(at=2, process=1)
    await layer.send(mine, {"still": "mine"})
    assert await recv(twin, mine) == {"still": "mine"}
