"""Moving from channels_redis: its CONFIGs work as they are, and the values
Django code sends (UUID, datetime, date, time, timedelta, Decimal) travel.

Every CONFIG below is copied verbatim from channels_redis 4.3's README (only
the surrounding ``CHANNEL_LAYERS`` is dropped); each builds a working layer on
the embedded node, with one ``ChannelsRedisOptionWarning`` per key that has
no meaning here, saying what replaces it. Truly unknown keys still fail.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import re
import uuid
import warnings
from collections import Counter
from typing import Any

import pytest
from test_codec import assert_same

from zchannels.config import CHANNELS_REDIS_ONLY
from zchannels.errors import ChannelsRedisOptionWarning, ConfigError
from zchannels.layer import ZeroMQChannelLayer

#: Seconds any single awaited thing may take before the test fails.
STEP = 5.0

SECRET_KEY = "django-insecure-0123456789abcdefghijklmnopqrstuvwxyz"

# channels_redis 4.3 README, "Usage" and "Possible options for CONFIG".
README_CONFIGS: dict[str, dict[Any, Any]] = {
    "usage": {
        "hosts": [("localhost", 6379)],
    },
    "ssl": {
        "hosts": [
            {
                "address": "rediss://user@host:port",  # "REDIS_TLS_URL"
                "ssl_cert_reqs": None,
            }
        ]
    },
    "channel_capacity": {
        "hosts": [("localhost", 6379)],
        "channel_capacity": {
            "http.request": 200,
            "http.response!*": 10,
            re.compile(r"^websocket.send\!.+"): 20,
        },
    },
    "symmetric_encryption_keys": {
        "hosts": ["redis://:password@127.0.0.1:6379/0"],
        "symmetric_encryption_keys": [SECRET_KEY],
    },
    "on_disconnect": {
        "hosts": [...],
        "on_disconnect": "redis.disconnect",
    },
    "serializer_format": {
        "hosts": ["redis://:password@127.0.0.1:6379/0"],
        "serializer_format": "json",
    },
}

#: Every keyword of RedisChannelLayer.__init__ and RedisPubSubChannelLayer's
#: (with the RedisPubSubLoopLayer keywords it passes on) in channels_redis 4.3.
EVERY_REDIS_OPTION: dict[str, Any] = {
    "hosts": [("localhost", 6379)],
    "prefix": "asgi",
    "expiry": 60,
    "group_expiry": 86400,
    "capacity": 100,
    "channel_capacity": {"http.request": 200},
    "symmetric_encryption_keys": [SECRET_KEY],
    "random_prefix_length": 12,
    "serializer_format": "msgpack",
    "on_disconnect": "redis.disconnect",
    "on_reconnect": "redis.reconnect",
}


def build(config: dict[Any, Any]) -> tuple[ZeroMQChannelLayer, Counter[str]]:
    """The layer, and how many warnings named each ignored key."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer = ZeroMQChannelLayer(**config)
    counts: Counter[str] = Counter()
    for w in caught:
        assert w.category is ChannelsRedisOptionWarning, w
        named = [k for k in CHANNELS_REDIS_ONLY if f"CONFIG {k!r}" in str(w.message)]
        assert len(named) == 1, str(w.message)
        counts[named[0]] += 1
    return layer, counts


async def works(layer: ZeroMQChannelLayer) -> None:
    try:
        await layer.flush()
        await layer.send("migrated.ch", {"type": "hello", "id": uuid.UUID(int=7)})
        got = await asyncio.wait_for(layer.receive("migrated.ch"), STEP)
        assert got == {"type": "hello", "id": uuid.UUID(int=7)}
        await layer.group_add("migrated.g", "migrated.ch")
        await layer.group_send("migrated.g", {"type": "group"})
        assert await asyncio.wait_for(layer.receive("migrated.ch"), STEP) == {"type": "group"}
    finally:
        await layer.flush()
        await layer.close()


@pytest.mark.parametrize("name", list(README_CONFIGS))
async def test_channels_redis_readme_config_works_with_one_warning_per_key(name: str) -> None:
    config = README_CONFIGS[name]
    layer, counts = build(config)
    assert counts == Counter(k for k in config if k in CHANNELS_REDIS_ONLY)
    await works(layer)


async def test_every_channels_redis_option_is_accepted() -> None:
    layer, counts = build(EVERY_REDIS_OPTION)
    assert set(counts) == set(CHANNELS_REDIS_ONLY) and set(counts.values()) == {1}
    # the names both layers share mean what they meant there
    assert (layer.expiry, layer.group_expiry, layer.capacity, layer.prefix) == (
        60,
        86400,
        100,
        "asgi",
    )
    assert layer.config.capacity_for("http.request") == 200
    await works(layer)


def test_the_readme_capacities_mean_what_they_meant() -> None:
    layer, _ = build(README_CONFIGS["channel_capacity"])
    assert layer.config.capacity_for("http.request") == 200
    assert layer.config.capacity_for("http.response!abc") == 10
    assert layer.config.capacity_for("websocket.send!xyz") == 20
    assert layer.config.capacity_for("other") == 100


@pytest.mark.parametrize(
    ("key", "replacement"),
    [
        ("hosts", "ipc:///run/zchannels/znode.sock"),
        ("symmetric_encryption_keys", "the cluster key encrypts"),
        ("random_prefix_length", "nothing replaces it"),
        ("serializer_format", "msgpack"),
        ("on_disconnect", "reconnects to a restarted znode by itself"),
        ("on_reconnect", "node_restarts"),
    ],
)
def test_each_warning_says_what_replaces_the_key(key: str, replacement: str) -> None:
    with pytest.warns(ChannelsRedisOptionWarning) as record:
        ZeroMQChannelLayer(**{key: EVERY_REDIS_OPTION[key]})
    assert len(record) == 1
    text = str(record[0].message)
    assert text.startswith(f"CONFIG {key!r} (channels_redis) is ignored: "), text
    assert replacement in text and "Delete the key" in text, text


def test_python_shows_each_warning_once_per_process() -> None:
    # Python's default filter: once per key however many layers are built
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            ZeroMQChannelLayer(hosts=[("localhost", 6379)], random_prefix_length=12)
    assert sorted(str(w.message).split()[1] for w in caught) == [
        "'hosts'",
        "'random_prefix_length'",
    ]


def test_truly_unknown_keys_still_fail_listing_the_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        ZeroMQChannelLayer(hosts=[("localhost", 6379)], max_connections=50)
    text = str(info.value)
    assert "max_connections" in text
    for name in ("expiry", "group_expiry", "capacity", "channel_capacity", "prefix", "node"):
        assert name in text, text
    assert "hosts" in text  # listed among the accepted-and-ignored names
    assert info.value.key == "max_connections"


# -- the values Django code sends, through a real layer -------------------------

PARIS = dt.timezone(dt.timedelta(hours=2))
VALUES: dict[str, Any] = {
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "naive": dt.datetime(2024, 5, 1, 12, 34, 56, 123456),
    "utc": dt.datetime(2024, 5, 1, 10, 34, 56, tzinfo=dt.UTC),
    "paris": dt.datetime(2024, 5, 1, 12, 34, 56, tzinfo=PARIS),
    "kathmandu": dt.datetime(2024, 5, 1, 16, 19, 56, tzinfo=dt.timezone(dt.timedelta(hours=5.75))),
    "st_johns": dt.datetime(2024, 1, 1, tzinfo=dt.timezone(-dt.timedelta(hours=3, minutes=30))),
    "date": dt.date(2024, 2, 29),
    "time": dt.time(8, 30),
    "aware_time": dt.time(8, 30, tzinfo=PARIS),
    "timedelta": dt.timedelta(days=-1, seconds=3600, microseconds=5),
    "price": decimal.Decimal("19.90"),
    "nan": decimal.Decimal("NaN"),
}


async def test_values_roundtrip_through_send(layer: ZeroMQChannelLayer) -> None:
    message = {"type": "values", **VALUES, "nested": {"list": list(VALUES.values())}}
    await layer.send("values.ch", message)
    got = await asyncio.wait_for(layer.receive("values.ch"), STEP)
    assert_same(got, message)
    assert got["paris"].utcoffset() == dt.timedelta(hours=2)
    assert got["paris"] == got["utc"]  # the same instant


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
async def test_values_roundtrip_through_group_send(layer: ZeroMQChannelLayer, nested: bool) -> None:
    # members of one process share one payload: decoded once (flat: a
    # shallow copy each) or once per member (nested)
    message: dict[str, Any] = {"type": "values", **VALUES}
    if nested:
        message["nested"] = [VALUES["uuid"], {"when": VALUES["paris"]}]
    members = ["values.a", "values.b", "values.c"]
    for member in members:
        await layer.group_add("values.g", member)
    await layer.group_send("values.g", message)
    got = [await asyncio.wait_for(layer.receive(m), STEP) for m in members]
    for each in got:
        assert_same(each, message)
    assert got[0] is not got[1]


async def test_other_values_are_a_typeerror_naming_the_key(layer: ZeroMQChannelLayer) -> None:
    with pytest.raises(TypeError) as info:
        await layer.send("values.ch", {"id": uuid.uuid4(), "rows": [VALUES["date"], {1, 2}]})
    text = str(info.value)
    assert text.startswith("message['rows'][1] cannot be serialized: builtins.set is not "), text
    assert "uuid.UUID" in text and "decimal.Decimal" in text
    with pytest.raises(TypeError) as info:
        await layer.group_send("values.g", {"user": object()})
    assert "message['user'] cannot be serialized" in str(info.value)
