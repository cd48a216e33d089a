"""Posts can be written in the admin too (the post_save handler fires alike)."""

from __future__ import annotations

from django.contrib import admin

from .models import BlogUpdate

admin.site.register(BlogUpdate)
