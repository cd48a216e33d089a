"""Plain sync views: publishing to the room, and a health check."""

from __future__ import annotations

import os

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path


def post(request: HttpRequest) -> JsonResponse:
    """A sync view publishing to every reader of the room, on every worker."""
    text = request.GET.get("text", "")
    async_to_sync(get_channel_layer().group_send)(
        "room", {"type": "room.message", "text": text, "via": "view"}
    )
    return JsonResponse({"pid": os.getpid()})


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [path("post/", post), path("health/", health)]
