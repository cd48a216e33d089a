"""A live blog is a stream of updates; one may carry an image to thumbnail."""

from __future__ import annotations

from django.db import models


class BlogUpdate(models.Model):
    text = models.TextField()
    image = models.ImageField(upload_to="images/", blank=True)
    thumbnail = models.ImageField(upload_to="thumbs/", blank=True)
    #: how many times a worker made the thumbnail (the demo shows it stays 1)
    thumbnail_runs = models.PositiveIntegerField(default=0)
    #: which host's worker made it
    thumbnailed_on = models.CharField(max_length=100, blank=True)
    #: which host saved the post
    posted_on = models.CharField(max_length=100, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]

    def as_event(self) -> dict[str, object]:
        """What readers receive (JSON)."""
        return {
            "id": self.pk,
            "text": self.text,
            "posted_on": self.posted_on,
            "created": self.created.isoformat(),
            "has_image": bool(self.image),
            "thumbnail": self.thumbnail.url if self.thumbnail else None,
            "thumbnailed_on": self.thumbnailed_on,
        }
