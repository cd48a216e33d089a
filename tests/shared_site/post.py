"""Publish to the room from a process of its own: ``python -m shared_site.post TEXT``
(what a management command or a Celery task does). Prints ``{"event": "sent"}``."""

from __future__ import annotations

import json
import os
import sys

import django


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shared_site.settings")
    django.setup()
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    message = {"type": "room.message", "text": sys.argv[1], "via": "worker"}
    async_to_sync(get_channel_layer().group_send)("room", message)
    print(json.dumps({"event": "sent"}), flush=True)


if __name__ == "__main__":
    main()
