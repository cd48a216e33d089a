"""App config: connects the post_save handler."""

from __future__ import annotations

from django.apps import AppConfig


class BlogConfig(AppConfig):
    name = "blog"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (connects the handlers)
