"""The ASGI application: Django's HTTP views, and the room's WebSocket."""

from __future__ import annotations

import json
import os
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shared_site.settings")
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.urls import path  # noqa: E402


class RoomReader(AsyncWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        await self.channel_layer.group_add("room", self.channel_name)
        await self.accept()
        await self.send(text_data=json.dumps({"pid": os.getpid()}))

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard("room", self.channel_name)

    async def room_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps({"text": event["text"], "via": event["via"]}))


application = ProtocolTypeRouter(
    {
        "http": get_asgi_application(),
        "websocket": URLRouter([path("ws/room/", RoomReader.as_asgi())]),
    }
)
