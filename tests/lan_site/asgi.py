"""The ASGI application Daphne serves: one WebSocket route."""

from __future__ import annotations

import json
import os
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lan_site.settings")
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


class BlogReader(AsyncWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        await self.channel_layer.group_add("blog", self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard("blog", self.channel_name)

    async def blog_post(self, event: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(event["post"]))


application = ProtocolTypeRouter({"websocket": URLRouter([path("ws/blog/", BlogReader.as_asgi())])})
