"""Plain sync views: publishing to the room, and a health check."""

from __future__ import annotations

import os

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from zchannels.errors import SendOutcomeUnknown


def post(request: HttpRequest) -> JsonResponse:
    """A sync view publishing to every reader of the room, on every worker.

    A ``group_send`` made as the node dies (SIGKILL) may have reached it or
    not, and nobody can tell: it raises ``SendOutcomeUnknown``, which this
    view answers with 503 and the error (what a site that retries does)."""
    text = request.GET.get("text", "")
    try:
        async_to_sync(get_channel_layer().group_send)(
            "room", {"type": "room.message", "text": text, "via": "view"}
        )
    except SendOutcomeUnknown as error:
        body = {"pid": os.getpid(), "error": type(error).__name__, "detail": str(error)}
        return JsonResponse(body, status=503)
    return JsonResponse({"pid": os.getpid()})


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [path("post/", post), path("health/", health)]
