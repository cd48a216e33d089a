"""No HTTP views: the site is its WebSocket route."""

from __future__ import annotations

urlpatterns: list[object] = []
