"""The ASGI application: Django for HTTP, Channels consumers for WebSockets."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "liveblog.settings")
django_app = get_asgi_application()

from blog import consumers, workers  # noqa: E402
from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_app,
        "websocket": URLRouter(
            [
                path("ws/blog/", consumers.BlogReader.as_asgi()),
                path("ws/chat/<str:room>/", consumers.ChatRoom.as_asgi()),
                path("ws/cluster/", consumers.ClusterView.as_asgi()),
            ]
        ),
        # ``manage.py runworker thumbnails``: background jobs on a plain channel
        "channel": ChannelNameRouter({"thumbnails": workers.ThumbnailWorker.as_asgi()}),
    }
)
