"""Background work: ``manage.py runworker thumbnails`` on every host."""

from __future__ import annotations

from io import BytesIO
from typing import Any

from asgiref.sync import async_to_sync
from channels.consumer import SyncConsumer
from django.conf import settings
from django.core.files.base import ContentFile
from django.db.models import F
from PIL import Image

from .models import BlogUpdate
from .signals import GROUP

THUMBNAIL_SIZE = (160, 160)


class ThumbnailWorker(SyncConsumer):  # type: ignore[misc]
    def thumbnail_make(self, message: dict[str, Any]) -> None:
        post = BlogUpdate.objects.filter(pk=message["id"]).first()
        if post is None or not post.image:
            return
        with post.image.open("rb") as f:
            image = Image.open(f)
            image.thumbnail(THUMBNAIL_SIZE)
            out = BytesIO()
            image.convert("RGB").save(out, "JPEG", quality=80)
        post.thumbnail.save(f"thumb-{post.pk}.jpg", ContentFile(out.getvalue()), save=False)
        BlogUpdate.objects.filter(pk=post.pk).update(
            thumbnail=post.thumbnail.name,
            thumbnailed_on=settings.HOST,
            thumbnail_runs=F("thumbnail_runs") + 1,
        )
        post.refresh_from_db()
        async_to_sync(self.channel_layer.group_send)(
            GROUP, {"type": "blog.thumbnail", "update": post.as_event()}
        )
