"""The layer works from any event loop and any thread.

Django calls the layer from Daphne's loop, from ``async_to_sync`` in sync
views and signal handlers (a fresh loop per call, in a worker thread), and
from other threads' loops. Each must work, and the per-loop connections of
short-lived loops must not pile up.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import django
import pytest
from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import get_channel_layer
from conftest import eventually
from django.conf import settings

from zchannels.layer import ZeroMQChannelLayer

if not settings.configured:
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=[],
        CHANNEL_LAYERS={"default": {"BACKEND": "zchannels.layer.ZeroMQChannelLayer", "CONFIG": {}}},
        USE_TZ=True,
    )
    django.setup()

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.testing import WebsocketCommunicator
from django.db.models.signals import post_save

# Consumers close stale DB connections through asgiref's process-wide
# single-thread executor, whose worker thread then lives until exit. Start it
# now, so the leftover-threads check does not blame the test that first used it.
SyncToAsync.single_thread_executor.submit(lambda: None).result()

#: Seconds any one awaited step may take.
STEP = 10.0


@pytest.fixture
async def big() -> AsyncIterator[ZeroMQChannelLayer]:
    """A layer with room for every message of a test, so slow receivers
    never turn into ChannelFull."""
    lay = ZeroMQChannelLayer(prefix="threads", capacity=5000)
    await lay.flush()
    yield lay
    await lay.flush()
    await lay.close()


class Threads:
    """Plain threads whose end the running loop can await; exceptions are
    collected and re-raised by ``join``."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        self._left = 0
        self._all_done = asyncio.Event()

    def start(self, target: Callable[..., object], *args: Any) -> None:
        def run() -> None:
            try:
                target(*args)
            except BaseException as exc:
                self.errors.append(exc)
            finally:
                self.loop.call_soon_threadsafe(self._one_done)

        thread = threading.Thread(target=run, name=f"test-{target.__name__}")
        self._left += 1
        self.threads.append(thread)
        thread.start()

    def _one_done(self) -> None:
        self._left -= 1
        if self._left == 0:
            self._all_done.set()

    async def join(self, limit: float = STEP) -> None:
        try:
            await asyncio.wait_for(self._all_done.wait(), limit)
        except TimeoutError:
            alive = [t.name for t in self.threads if t.is_alive()]
            pytest.fail(f"threads still running after {limit:g} s: {alive}")
        for thread in self.threads:
            thread.join(1)
        if self.errors:
            raise self.errors[0]


async def recv(lay: ZeroMQChannelLayer, channel: str) -> dict[str, Any]:
    return await asyncio.wait_for(lay.receive(channel), STEP)


# -- async_to_sync from threads -------------------------------------------------


async def test_async_to_sync_send_from_several_threads(big: ZeroMQChannelLayer) -> None:
    per_thread = 25
    n_threads = 8

    def sender(t: int) -> None:
        send = async_to_sync(big.send)
        for i in range(per_thread):
            send("threads.inbox", {"t": t, "i": i})

    threads = Threads()
    for t in range(n_threads):
        threads.start(sender, t)
    got = [await recv(big, "threads.inbox") for _ in range(n_threads * per_thread)]
    await threads.join()
    for t in range(n_threads):
        mine = [m["i"] for m in got if m["t"] == t]
        assert mine == list(range(per_thread)), f"thread {t}'s messages: {mine}"


async def test_sync_function_sends_and_receives(big: ZeroMQChannelLayer) -> None:
    """A plain sync function (a sync view, a management command) using the
    layer through async_to_sync, talking to a consumer on this loop."""

    def sync_view(n: int) -> list[dict[str, Any]]:
        for i in range(n):
            async_to_sync(big.send)("threads.to_main", {"i": i})
        return [async_to_sync(big.receive)("threads.to_sync") for _ in range(n)]

    replies: list[list[dict[str, Any]]] = []
    threads = Threads()
    threads.start(lambda: replies.append(sync_view(5)))
    for i in range(5):
        assert await recv(big, "threads.to_main") == {"i": i}
        await big.send("threads.to_sync", {"reply": i})
    await threads.join()
    assert replies == [[{"reply": i} for i in range(5)]]


async def test_event_loops_in_several_threads(big: ZeroMQChannelLayer) -> None:
    """Four threads, each with its own loop: each sends to the next and
    receives from the previous (a ring), all at once, on one layer object."""
    n_threads, n = 4, 50
    received: dict[int, list[int]] = {}
    start_together = threading.Barrier(n_threads)

    async def worker(k: int) -> None:
        await big.send(f"ring.{(k + 1) % n_threads}", {"from": k, "i": -1})  # connect first
        await asyncio.to_thread(start_together.wait, STEP)
        got = []

        async def send_all() -> None:
            for i in range(n):
                await big.send(f"ring.{(k + 1) % n_threads}", {"from": k, "i": i})

        async def receive_all() -> None:
            for _ in range(n + 1):
                got.append((await big.receive(f"ring.{k}"))["i"])

        await asyncio.wait_for(asyncio.gather(send_all(), receive_all()), STEP)
        received[k] = got
        name = await big.new_channel()
        await big.send(name, {"own": k})
        assert await asyncio.wait_for(big.receive(name), STEP) == {"own": k}

    threads = Threads()
    for k in range(n_threads):
        threads.start(asyncio.run, worker(k))
    await threads.join(30)
    assert received == {k: list(range(-1, n)) for k in range(n_threads)}


# -- connections of short-lived loops ---------------------------------------------


async def node_connections(lay: ZeroMQChannelLayer) -> int:
    count: int = (await lay.node_status())["connections"]
    return count


async def test_async_to_sync_calls_do_not_leak_connections(layer: ZeroMQChannelLayer) -> None:
    client = layer.client
    await layer.node_status()  # this loop's connection exists; the keeper's soon

    async def keeper_connected() -> bool:
        return client.open_connections() >= 2

    await eventually(keeper_connected, STEP, "the keeper to connect")
    base_node = await node_connections(layer)
    base_client = client.open_connections()

    def sync_worker(t: int, calls: int) -> None:
        send = async_to_sync(layer.send)
        receive = async_to_sync(layer.receive)
        for i in range(calls // 2):
            send(f"leak.{t}", {"i": i})
            assert receive(f"leak.{t}") == {"i": i}

    start = time.monotonic()
    threads = Threads()
    threads.start(sync_worker, 0, 100)  # 100 calls one after another...
    for t in range(1, 5):  # ...and 100 more from four threads at once
        threads.start(sync_worker, t, 26)
    await threads.join(60)
    took = time.monotonic() - start

    async def back_to_baseline() -> bool:
        return (
            await node_connections(layer) <= base_node and client.open_connections() <= base_client
        )

    settle = await eventually(back_to_baseline, 5, "connections of finished loops to close")
    now_node = await node_connections(layer)
    now_client = client.open_connections()
    print(
        f"200 async_to_sync calls in {took:.2f} s; node connections {base_node} -> {now_node}, "
        f"client connections {base_client} -> {now_client}, settled in {settle:.2f} s"
    )
    assert now_node <= base_node and now_client <= base_client


# -- Django: a post_save handler broadcasting to a consumer ------------------------


class Post:
    """Stands in for a model instance; the signal is sent as Django would."""

    def __init__(self, pk: int, title: str) -> None:
        self.pk = pk
        self.title = title


def announce_post(sender: type, instance: Post, created: bool, **kwargs: Any) -> None:
    async_to_sync(get_channel_layer().group_send)(
        "liveblog",
        {"type": "post.saved", "pk": instance.pk, "title": instance.title, "created": created},
    )


async def test_post_save_handler_group_send_reaches_consumer() -> None:
    django_layer = get_channel_layer()
    assert isinstance(django_layer, ZeroMQChannelLayer), django_layer
    try:
        await django_layer.flush()
        reader = await django_layer.new_channel()
        await django_layer.group_add("liveblog", reader)
        post_save.connect(announce_post, sender=Post, dispatch_uid="test-liveblog")

        def save_posts() -> None:  # a sync view saving two posts
            for pk, title in [(1, "first"), (2, "second")]:
                post_save.send(
                    sender=Post,
                    instance=Post(pk, title),
                    created=True,
                    update_fields=None,
                    raw=False,
                    using="default",
                )

        threads = Threads()
        threads.start(save_posts)
        got = [await recv(django_layer, reader) for _ in range(2)]
        await threads.join()
        assert got == [
            {"type": "post.saved", "pk": 1, "title": "first", "created": True},
            {"type": "post.saved", "pk": 2, "title": "second", "created": True},
        ]
    finally:
        post_save.disconnect(sender=Post, dispatch_uid="test-liveblog")
        await django_layer.flush()
        await django_layer.close()


class LiveBlogConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """The cluster demo's reader: joins the live blog, forwards each post."""

    async def connect(self) -> None:
        await self.channel_layer.group_add("liveblog", self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard("liveblog", self.channel_name)

    async def post_saved(self, event: dict[str, Any]) -> None:
        await self.send_json({"pk": event["pk"], "title": event["title"]})


async def test_post_save_reaches_websocket_consumers() -> None:
    """Two readers connected through a real Channels consumer on this loop; a
    sync thread saves a post; both readers' sockets get it."""
    django_layer = get_channel_layer()
    assert isinstance(django_layer, ZeroMQChannelLayer), django_layer
    readers = [WebsocketCommunicator(LiveBlogConsumer.as_asgi(), "/ws/liveblog/") for _ in range(2)]
    post_save.connect(announce_post, sender=Post, dispatch_uid="test-liveblog-ws")
    try:
        await django_layer.flush()
        for reader in readers:
            connected, _ = await reader.connect(timeout=STEP)
            assert connected
        assert len(await django_layer.group_channels("liveblog")) == 2

        def save_posts() -> None:
            post_save.send(sender=Post, instance=Post(7, "live"), created=False)
            post_save.send(sender=Post, instance=Post(8, "update"), created=True)

        threads = Threads()
        threads.start(save_posts)
        await threads.join()
        for reader in readers:  # each post once, in order
            got = [await reader.receive_json_from(timeout=STEP) for _ in range(2)]
            assert got == [{"pk": 7, "title": "live"}, {"pk": 8, "title": "update"}]
    finally:
        post_save.disconnect(sender=Post, dispatch_uid="test-liveblog-ws")
        for reader in readers:
            await reader.disconnect()
        await django_layer.flush()
        await django_layer.close()
