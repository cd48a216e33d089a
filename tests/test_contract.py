"""The Channels layer contract, on the default node.

What every Channels layer promises (send/receive, FIFO, one receiver per
message, names, validation, capacity, expiry, groups, flush) plus the parts of
channels_redis' CONFIG that zchannels keeps, exercised through the public API
of ``ZeroMQChannelLayer`` with ``CONFIG = {}`` (the shared node of this
process's scope); the two tests that look at the node's own configuration
use an embedded node (``node="embedded"``).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from channels.exceptions import ChannelFull, MessageTooLarge
from channels.layers import BaseChannelLayer
from conftest import eventually

from zchannels import embedded, names
from zchannels.errors import ConfigError
from zchannels.layer import ZeroMQChannelLayer
from zchannels.names import owner_of

#: Seconds any single awaited thing may take before the test fails.
STEP = 5.0

MakeLayer = Callable[..., Awaitable[ZeroMQChannelLayer]]


@pytest.fixture
async def make_layer() -> AsyncIterator[MakeLayer]:
    """``await make_layer(**CONFIG)``: a flushed layer, flushed and closed at
    the end of the test."""
    made: list[ZeroMQChannelLayer] = []

    async def make(**config: Any) -> ZeroMQChannelLayer:
        new = ZeroMQChannelLayer(**config)
        await new.flush()
        made.append(new)
        return new

    yield make
    for each in made:
        await each.flush()
        await each.close()


async def recv(layer: ZeroMQChannelLayer, channel: str) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), STEP)


async def assert_next_is_marker(layer: ZeroMQChannelLayer, channel: str) -> None:
    """Nothing else is queued on ``channel``: a marker sent now is what the
    next receive returns (FIFO), so anything queued earlier would come first."""
    marker = {"marker": os.urandom(4).hex()}
    await layer.send(channel, marker)
    got = await recv(layer, channel)
    assert got == marker, f"{channel} still held {got!r} before the marker"


async def outlive(deadline: float) -> None:
    """Wait until the monotonic clock passes ``deadline``. Used only where the
    condition under test *is* elapsed time (expiry), never as a stand-in for
    some other event."""
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))


async def fill(layer: ZeroMQChannelLayer, channel: str, limit: int = 50) -> int:
    """Send until ChannelFull; how many sends were accepted."""
    for n in range(limit):
        try:
            await layer.send(channel, {"n": n})
        except ChannelFull:
            return n
    pytest.fail(f"{channel} accepted {limit} messages without ChannelFull")


def channels_error(kind: str, name: object) -> str:
    """The exact TypeError message channels' BaseChannelLayer gives. Before
    channels 4.2.1 it has no ``require_valid_*_name`` (and older messages):
    the layer still gives 4.2.1's, which tests/test_versions.py pins."""
    check = getattr(BaseChannelLayer(), f"require_valid_{kind}_name", None)
    if check is None:
        check = names.require_valid_channel if kind == "channel" else names.require_valid_group
    with pytest.raises(TypeError) as info:
        check(name)
    return str(info.value)


# -- send / receive ----------------------------------------------------------


async def test_send_receive_roundtrip(layer: ZeroMQChannelLayer) -> None:
    message = {
        "type": "test.message",
        "text": "héllo ✓",
        "bytes": b"\x00\xff",
        "int": 2**40,
        "float": 1.5,
        "list": [1, "two", None, True],
        "nested": {"a": {"b": [1, 2]}},
    }
    await layer.send("roundtrip", message)
    assert await recv(layer, "roundtrip") == message


async def test_longest_valid_name_roundtrips(layer: ZeroMQChannelLayer) -> None:
    name = "n" * (BaseChannelLayer.MAX_NAME_LENGTH - 1)
    await layer.send(name, {"ok": 1})
    assert await recv(layer, name) == {"ok": 1}


async def test_fifo_per_channel(layer: ZeroMQChannelLayer) -> None:
    for i in range(layer.capacity):
        await layer.send("fifo.a", {"i": i})
        await layer.send("fifo.b", {"i": -i})
    got_a = [(await recv(layer, "fifo.a"))["i"] for _ in range(layer.capacity)]
    got_b = [(await recv(layer, "fifo.b"))["i"] for _ in range(layer.capacity)]
    assert got_a == list(range(layer.capacity))
    assert got_b == [-i for i in range(layer.capacity)]


async def test_fifo_while_receiving_concurrently(make_layer: MakeLayer) -> None:
    lay = await make_layer(prefix="fifo2", capacity=2000)
    n = 1000

    async def sender() -> None:
        for i in range(n):
            await lay.send("fifo.live", {"i": i})

    async def receiver() -> list[int]:
        return [(await lay.receive("fifo.live"))["i"] for _ in range(n)]

    _, got = await asyncio.wait_for(asyncio.gather(sender(), receiver()), 30)
    assert got == list(range(n))


async def _receive_until_stop(lay: ZeroMQChannelLayer, channel: str, out: list[int]) -> None:
    while True:
        message = await lay.receive(channel)
        if message.get("stop"):
            return
        out.append(message["i"])
        await asyncio.sleep(0)  # "work": lets the other receiver run


async def test_one_receiver_per_message_same_connection(make_layer: MakeLayer) -> None:
    lay = await make_layer(prefix="one", capacity=1000)
    n = 300
    a: list[int] = []
    b: list[int] = []
    receivers = asyncio.gather(
        _receive_until_stop(lay, "one.ch", a), _receive_until_stop(lay, "one.ch", b)
    )
    for i in range(n):
        await lay.send("one.ch", {"i": i})
    await lay.send("one.ch", {"stop": True})
    await lay.send("one.ch", {"stop": True})
    await asyncio.wait_for(receivers, 20)
    print(f"split between two receivers: {len(a)} + {len(b)}")
    assert not set(a) & set(b), "a message reached both receivers"
    assert sorted(a + b) == list(range(n)), "messages lost or duplicated"


async def test_one_receiver_per_message_two_processes_worth(make_layer: MakeLayer) -> None:
    """Two clients (different configs, so two sessions and connections) on one
    channel, as two worker processes would be."""
    lay_a = await make_layer(prefix="two", capacity=1000)
    lay_b = await make_layer(prefix="two", capacity=1000, request_timeout=29.0)
    assert lay_a.client is not lay_b.client
    n = 300
    a: list[int] = []
    b: list[int] = []
    receivers = asyncio.gather(
        _receive_until_stop(lay_a, "two.ch", a), _receive_until_stop(lay_b, "two.ch", b)
    )
    for i in range(n):
        await lay_a.send("two.ch", {"i": i})
    await lay_a.send("two.ch", {"stop": True})
    await lay_a.send("two.ch", {"stop": True})
    await asyncio.wait_for(receivers, 20)
    print(f"split between two clients: {len(a)} + {len(b)}")
    assert not set(a) & set(b), "a message reached both receivers"
    assert sorted(a + b) == list(range(n)), "messages lost or duplicated"


# -- new_channel ------------------------------------------------------------


async def test_new_channel_names(make_layer: MakeLayer) -> None:
    layer = await make_layer(node="embedded")  # (its node's config is looked at)
    names = [await layer.new_channel() for _ in range(5000)]
    assert len(set(names)) == len(names), "new_channel() repeated a name"
    client = layer.client
    node = embedded.node()
    assert node is not None
    for name in names:
        assert layer.require_valid_channel_name(name)
        assert len(name) < BaseChannelLayer.MAX_NAME_LENGTH
        assert name.startswith("specific.")
        assert owner_of(name) == (client.node_tag, client.session), name
    assert client.node_tag == node.config.node_tag
    # And they work as channels.
    await layer.send(names[-1], {"to": "specific"})
    assert await recv(layer, names[-1]) == {"to": "specific"}


async def test_new_channel_long_prefix_still_valid(layer: ZeroMQChannelLayer) -> None:
    name = await layer.new_channel(prefix="x" * 70)
    assert layer.require_valid_channel_name(name)
    base = BaseChannelLayer()
    assert base.match_type_and_length(name) and base.channel_name_regex.match(name)
    assert len(name) < BaseChannelLayer.MAX_NAME_LENGTH, len(name)
    assert name.startswith("x" * 70 + ".")
    await layer.send(name, {"long": True})
    assert await recv(layer, name) == {"long": True}


async def test_new_channel_unique_after_random_seed_in_fresh_layers() -> None:
    batches = []
    for _ in range(3):
        random.seed(0)
        fresh = ZeroMQChannelLayer(prefix="seeded")
        try:
            batches.append({await fresh.new_channel() for _ in range(20)})
        finally:
            await fresh.close()
    everything = set().union(*batches)
    assert len(everything) == 60, f"names repeated across fresh layers: {batches}"


# -- validation ----------------------------------------------------------------

BAD_CHANNELS = [
    "has space",
    "slash/y",
    "ünïcode",
    "",
    "a!b!c",
    "n" * 100,
    "n" * 150,
    123,
    None,
    b"x",
]
BAD_GROUPS = ["has space", "bang!x", "ünïcode", "", "g" * 100, 4.5, None, b"g"]


@pytest.mark.parametrize("name", BAD_CHANNELS, ids=repr)
@pytest.mark.parametrize("method", ["send", "receive", "group_add", "group_discard"])
async def test_bad_channel_name_raises_channels_typeerror(
    layer: ZeroMQChannelLayer, method: str, name: object
) -> None:
    expected = channels_error("channel", name)
    call: Awaitable[Any]
    if method == "send":
        call = layer.send(name, {"x": 1})  # type: ignore[arg-type]
    elif method == "receive":
        call = layer.receive(name)  # type: ignore[arg-type]
    else:
        call = getattr(layer, method)("good.group", name)
    with pytest.raises(TypeError) as info:
        await asyncio.wait_for(call, STEP)
    assert str(info.value) == expected


@pytest.mark.parametrize("name", BAD_GROUPS, ids=repr)
@pytest.mark.parametrize("method", ["group_add", "group_discard", "group_send"])
async def test_bad_group_name_raises_channels_typeerror(
    layer: ZeroMQChannelLayer, method: str, name: object
) -> None:
    expected = channels_error("group", name)
    call: Awaitable[Any]
    if method == "group_send":
        call = layer.group_send(name, {"x": 1})  # type: ignore[arg-type]
    else:
        call = getattr(layer, method)(name, "good.channel")
    with pytest.raises(TypeError) as info:
        await asyncio.wait_for(call, STEP)
    assert str(info.value) == expected


@pytest.mark.parametrize("message", [["a", "list"], "text", None, 42, b"bytes"], ids=repr)
async def test_non_dict_message_raises_typeerror(layer: ZeroMQChannelLayer, message: Any) -> None:
    with pytest.raises(TypeError):
        await layer.send("valid.channel", message)
    with pytest.raises(TypeError):
        await layer.group_send("valid.group", message)
    await assert_next_is_marker(layer, "valid.channel")


async def test_unencodable_value_names_its_key_path(layer: ZeroMQChannelLayer) -> None:
    with pytest.raises(TypeError) as info:
        await layer.send("enc.ch", {"a": {"b": object()}})
    assert "['a']['b']" in str(info.value), str(info.value)
    with pytest.raises(TypeError) as info:
        await layer.group_send("enc.g", {"ok": 1, "items": [1, {"deep": {1, 2}}]})
    assert "['items'][1]['deep']" in str(info.value), str(info.value)
    await assert_next_is_marker(layer, "enc.ch")


# -- message size --------------------------------------------------------------


async def test_one_megabyte_message_passes(layer: ZeroMQChannelLayer) -> None:
    blob = os.urandom(1024 * 1024)
    await layer.send("big.ch", {"blob": blob})
    got = await recv(layer, "big.ch")
    assert got["blob"] == blob


async def test_message_over_default_limit_raises(layer: ZeroMQChannelLayer) -> None:
    with pytest.raises(MessageTooLarge):
        await layer.send("big.ch", {"blob": b"x" * (layer.config.max_message_size + 1)})
    await assert_next_is_marker(layer, "big.ch")


async def test_max_message_size_config(make_layer: MakeLayer) -> None:
    lay = await make_layer(prefix="size", max_message_size=1000)
    await lay.send("size.ch", {"b": b"x" * 900})
    assert (await recv(lay, "size.ch"))["b"] == b"x" * 900
    with pytest.raises(MessageTooLarge):
        await lay.send("size.ch", {"b": b"x" * 1001})
    with pytest.raises(MessageTooLarge):
        await lay.group_send("size.g", {"b": b"x" * 1001})
    await assert_next_is_marker(lay, "size.ch")


async def test_node_frame_limit_applies_from_the_first_send(make_layer: MakeLayer) -> None:
    """CONFIG allows 16 MiB, the node's frames are smaller (it says so in
    WELCOME): a message over the node's limit raises MessageTooLarge, on the
    very first call of a fresh layer just as on later calls."""
    lay = await make_layer(prefix="frame", max_message_size=16 * 1024 * 1024, node="embedded")
    await lay.close()  # a fresh client: nothing learnt from the node yet
    node = embedded.node()
    assert node is not None
    too_big = {"b": b"x" * (node.config.max_frame_size + 1024)}
    outcomes = []
    for _ in range(2):
        try:
            await asyncio.wait_for(lay.send("frame.ch", too_big), STEP)
            outcomes.append("sent")
        except MessageTooLarge:
            outcomes.append("MessageTooLarge")
    assert outcomes == ["MessageTooLarge", "MessageTooLarge"], (
        f"{len(too_big['b'])}-byte message, node max_frame_size "
        f"{node.config.max_frame_size}: {outcomes}"
    )


# -- capacity ----------------------------------------------------------------


async def test_capacity_fourth_send_raises_channel_full(make_layer: MakeLayer) -> None:
    lay = await make_layer(prefix="cap", capacity=3)
    for i in range(3):
        await lay.send("cap.ch", {"i": i})
    with pytest.raises(ChannelFull):
        await lay.send("cap.ch", {"i": 3})
    # Receiving makes room again; the refused message was never queued.
    assert (await recv(lay, "cap.ch"))["i"] == 0
    await lay.send("cap.ch", {"i": "after"})
    assert [(await recv(lay, "cap.ch"))["i"] for _ in range(3)] == [1, 2, "after"]


async def test_channel_capacity_glob_and_regex(make_layer: MakeLayer) -> None:
    lay = await make_layer(
        prefix="cc",
        capacity=10,
        channel_capacity={
            "glob.*": 2,
            re.compile(r"rx\.\d+$"): 4,
            re.compile(r"up\.", re.IGNORECASE): 1,
        },
    )
    assert await fill(lay, "glob.a") == 2
    assert await fill(lay, "rx.5") == 4
    assert await fill(lay, "rx.five") == 10
    assert await fill(lay, "UP.x") == 1
    assert await fill(lay, "other") == 10


async def test_channel_capacity_first_match_wins(make_layer: MakeLayer) -> None:
    regex_first = await make_layer(
        prefix="first", channel_capacity={re.compile(r"first\."): 2, "first.*": 5}
    )
    glob_first = await make_layer(
        prefix="first", channel_capacity={"first.*": 5, re.compile(r"first\."): 2}
    )
    assert await fill(regex_first, "first.a") == 2
    assert await fill(glob_first, "first.b") == 5


async def test_group_send_skips_full_member(make_layer: MakeLayer) -> None:
    lay = await make_layer(prefix="gfull", capacity=2)
    await lay.group_add("room", "full.ch")
    await lay.group_add("room", "free.ch")
    await lay.send("full.ch", {"n": 1})
    await lay.send("full.ch", {"n": 2})
    await lay.group_send("room", {"n": "broadcast"})  # must not raise
    assert await recv(lay, "free.ch") == {"n": "broadcast"}
    assert [await recv(lay, "full.ch") for _ in range(2)] == [{"n": 1}, {"n": 2}]
    await assert_next_is_marker(lay, "full.ch")
    await assert_next_is_marker(lay, "free.ch")


# -- expiry ----------------------------------------------------------------------


async def test_expiry_drops_unreceived_message(make_layer: MakeLayer) -> None:
    lay = await make_layer(prefix="exp", expiry=0.3)
    await lay.send("exp.ch", {"n": "stale"})
    sent = time.monotonic()
    await outlive(sent + 0.3 + 0.1)
    await lay.send("exp.ch", {"n": "fresh"})
    got = await recv(lay, "exp.ch")
    age = time.monotonic() - sent
    assert got == {"n": "fresh"}, f"a message {age:.3f} s old was delivered (expiry 0.3 s)"


async def test_expiry_drops_prefetched_message(make_layer: MakeLayer) -> None:
    """A message already pushed to this process (receive window) but not
    taken by a receive() expires too."""
    lay = await make_layer(prefix="exp2", expiry=0.3)
    await lay.send("exp.ch", {"n": 1})
    await lay.send("exp.ch", {"n": 2})
    sent = time.monotonic()
    assert await recv(lay, "exp.ch") == {"n": 1}
    await outlive(sent + 0.3 + 0.1)
    await lay.send("exp.ch", {"n": 3})
    got = await recv(lay, "exp.ch")
    age = time.monotonic() - sent
    assert got == {"n": 3}, f"{got} delivered {age:.3f} s after send (expiry 0.3 s)"


async def test_expiry_message_received_quickly_is_delivered(make_layer: MakeLayer) -> None:
    lay = await make_layer(prefix="exp3", expiry=0.3)
    start = time.monotonic()
    await lay.send("exp.ch", {"n": "quick"})
    got = await recv(lay, "exp.ch")
    took = time.monotonic() - start
    print(f"send+receive took {took * 1000:.1f} ms")
    assert got == {"n": "quick"}, f"took {took:.3f} s"


async def test_group_expiry(make_layer: MakeLayer) -> None:
    lay = await make_layer(prefix="gexp", group_expiry=0.5)
    added = time.monotonic()
    await lay.group_add("gexp.g", "gexp.ch")
    assert await lay.group_channels("gexp.g") == ["gexp.ch"]

    async def gone() -> bool:
        return await lay.group_channels("gexp.g") == []

    await eventually(gone, 5, "the membership to expire")
    age = time.monotonic() - added
    print(f"membership gone after {age:.3f} s (group_expiry 0.5 s)")
    assert age >= 0.5, f"membership expired after only {age:.3f} s"
    await lay.group_send("gexp.g", {"n": "late"})
    await assert_next_is_marker(lay, "gexp.ch")


async def test_group_expiry_send_after_expiry_without_listing(make_layer: MakeLayer) -> None:
    """No GROUP_INFO in between: the send alone must see the lapse."""
    lay = await make_layer(prefix="gexp2", group_expiry=0.3)
    await lay.group_add("gexp.g", "gexp.ch")
    added = time.monotonic()
    await outlive(added + 0.3 + 0.1)
    await lay.group_send("gexp.g", {"n": "late"})
    await assert_next_is_marker(lay, "gexp.ch")


# -- groups ----------------------------------------------------------------------


async def test_group_add_discard_send(layer: ZeroMQChannelLayer) -> None:
    await layer.group_add("room", "alice")
    await layer.group_add("room", "bob")
    await layer.group_add("room", "bob")  # twice: still one membership
    await layer.group_add("other", "bob")
    assert await layer.group_channels("room") == ["alice", "bob"]

    await layer.group_send("room", {"n": 1})
    assert await recv(layer, "alice") == {"n": 1}
    assert await recv(layer, "bob") == {"n": 1}
    await assert_next_is_marker(layer, "bob")  # received once, not twice

    await layer.group_discard("room", "alice")
    await layer.group_discard("room", "alice")  # discarding a non-member is fine
    await layer.group_discard("never.existed", "alice")
    assert await layer.group_channels("room") == ["bob"]
    await layer.group_send("room", {"n": 2})
    await layer.group_send("other", {"n": 3})
    assert await recv(layer, "bob") == {"n": 2}
    assert await recv(layer, "bob") == {"n": 3}
    await assert_next_is_marker(layer, "alice")

    await layer.group_send("empty.group", {"n": 4})  # nobody: no error
    await layer.group_discard("room", "bob")
    assert await layer.group_channels("room") == []


async def test_group_send_to_new_channel_members(layer: ZeroMQChannelLayer) -> None:
    members = [await layer.new_channel() for _ in range(5)]
    for name in members:
        await layer.group_add("specifics", name)
    await layer.group_send("specifics", {"hello": "all"})
    for name in members:
        assert await recv(layer, name) == {"hello": "all"}


# -- flush / close ---------------------------------------------------------------


async def test_flush_clears_queues_and_groups(layer: ZeroMQChannelLayer) -> None:
    for i in range(3):
        await layer.send("flush.ch", {"i": i})
    await layer.group_add("flush.g", "flush.member")
    await layer.flush()
    assert await layer.group_channels("flush.g") == []
    await layer.group_send("flush.g", {"n": "after flush"})
    await assert_next_is_marker(layer, "flush.ch")
    await assert_next_is_marker(layer, "flush.member")
    # A full channel is empty again after flush.
    for i in range(layer.capacity):
        await layer.send("flush.full", {"i": i})
    await layer.flush()
    await layer.send("flush.full", {"i": "again"})
    assert await recv(layer, "flush.full") == {"i": "again"}


async def test_waiting_receiver_survives_flush(layer: ZeroMQChannelLayer) -> None:
    waiting = asyncio.create_task(layer.receive("flush.wait"))
    await layer.group_channels("any")  # a round trip: the receive is registered
    assert not waiting.done()
    await layer.flush()
    await layer.send("flush.wait", {"n": 1})
    assert await asyncio.wait_for(waiting, STEP) == {"n": 1}


async def test_close_then_use_again(layer: ZeroMQChannelLayer) -> None:
    await layer.send("close.ch", {"n": 1})
    await layer.close()
    await layer.send("close.ch", {"n": 2})
    assert [await recv(layer, "close.ch") for _ in range(2)] == [{"n": 1}, {"n": 2}]


# -- prefix, config, instances -----------------------------------------------------


async def test_prefix_isolation(make_layer: MakeLayer) -> None:
    a = await make_layer(prefix="pa")
    b = await make_layer(prefix="pb")
    await a.send("shared.ch", {"from": "a"})
    await assert_next_is_marker(b, "shared.ch")  # b does not see a's message
    await a.group_add("shared.g", "shared.ch")
    assert await b.group_channels("shared.g") == []
    await b.group_send("shared.g", {"from": "b"})
    await b.flush()  # flushes b's namespace only
    assert await a.group_channels("shared.g") == ["shared.ch"]
    assert await recv(a, "shared.ch") == {"from": "a"}
    await assert_next_is_marker(a, "shared.ch")  # b's group_send did not reach a
    # Capacity is per namespace too.
    assert await fill(a, "cap.ch", 200) == a.capacity
    await b.send("cap.ch", {"n": "b fits"})
    assert await recv(b, "cap.ch") == {"n": "b fits"}


def test_unknown_config_key_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        ZeroMQChannelLayer(expiri=5)
    text = str(info.value)
    assert "expiri" in text
    for name in ("expiry", "group_expiry", "capacity", "channel_capacity", "prefix"):
        assert name in text, f"{name!r} missing from: {text}"
    assert isinstance(info.value, ValueError)


def test_extensions() -> None:
    assert ZeroMQChannelLayer.extensions == ["groups", "flush"]
    assert ZeroMQChannelLayer().extensions == ["groups", "flush"]


async def test_two_instances_with_equal_config_share_the_layer() -> None:
    one = ZeroMQChannelLayer(prefix="twin", capacity=7)
    two = ZeroMQChannelLayer(prefix="twin", capacity=7)
    try:
        await one.flush()
        await one.send("twin.ch", {"via": "one"})
        assert await recv(two, "twin.ch") == {"via": "one"}
        await two.group_add("twin.g", "twin.member")
        await one.group_send("twin.g", {"via": "group"})
        assert await recv(one, "twin.member") == {"via": "group"}
        name = await two.new_channel()
        await one.send(name, {"via": "specific"})
        assert await recv(two, name) == {"via": "specific"}
    finally:
        await one.flush()
        await one.close()
        await two.close()
