"""WebSocket consumers: blog readers, chat rooms, and the live cluster view."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from .signals import GROUP

#: Seconds between two cluster snapshots pushed to a cluster page.
CLUSTER_REFRESH = 0.5


class BlogReader(AsyncWebsocketConsumer):  # type: ignore[misc]
    """Joins the live blog on connect; receives each update as JSON."""

    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()
        await self.send(text_data=json.dumps({"kind": "hello", "host": settings.HOST}))

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def blog_update(self, event: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps({"kind": "update", **event["update"]}))

    async def blog_thumbnail(self, event: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps({"kind": "thumbnail", **event["update"]}))


class ChatRoom(AsyncWebsocketConsumer):  # type: ignore[misc]
    """The Channels tutorial's chat: a room is a group."""

    async def connect(self) -> None:
        room = re.sub(r"[^A-Za-z0-9_.-]", "", self.scope["url_route"]["kwargs"]["room"])[:50]
        self.group = f"chat_{room or 'lobby'}"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            text = str(json.loads(text_data or "{}").get("message", ""))[:2000]
        except ValueError:
            return
        await self.channel_layer.group_send(
            self.group, {"type": "chat.message", "message": text, "host": settings.HOST}
        )

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps({"message": event["message"], "host": event["host"]}))


class ClusterView(AsyncWebsocketConsumer):  # type: ignore[misc]
    """The cluster as this host's node sees it, pushed every half second."""

    async def connect(self) -> None:
        await self.accept()
        self.pusher = asyncio.create_task(self.push())

    async def disconnect(self, code: int) -> None:
        self.pusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.pusher

    async def push(self) -> None:
        while True:
            status = await self.channel_layer.node_status()
            await self.send(text_data=json.dumps({"host": settings.HOST, "status": status}))
            await asyncio.sleep(CLUSTER_REFRESH)
