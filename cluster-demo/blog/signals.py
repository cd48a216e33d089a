"""Saving a post pushes it to every reader, on every host; an image becomes a job.

A plain Django ``post_save`` handler, synchronous like most of Django: it calls
the async channel layer through ``async_to_sync`` — the pattern channels_redis
users have everywhere, unchanged.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver

from .models import BlogUpdate

GROUP = "liveblog"
JOBS = "thumbnails"


@receiver(post_save, sender=BlogUpdate)
def publish(sender: type[BlogUpdate], instance: BlogUpdate, created: bool, **_: Any) -> None:
    if not created:
        return
    layer = get_channel_layer()
    if layer is None:
        return
    async_to_sync(layer.group_send)(GROUP, {"type": "blog.update", "update": instance.as_event()})
    if instance.image:
        # a normal (non-"!") channel: whichever worker on whichever host is
        # free takes it, and only one does
        async_to_sync(layer.send)(
            JOBS, {"type": "thumbnail.make", "id": instance.pk, "from": settings.HOST}
        )
