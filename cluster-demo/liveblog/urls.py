"""Pages: the live blog, chat, the cluster view, posting, uploads, admin."""

from __future__ import annotations

from blog import views
from django.conf import settings
from django.contrib import admin
from django.urls import path, re_path
from django.views.static import serve

urlpatterns = [
    path("", views.live_blog, name="blog"),
    path("post/", views.post, name="post"),
    path("chat/", views.chat, name="chat"),
    path("cluster/", views.cluster, name="cluster"),
    path("admin/", admin.site.urls),
    re_path(r"^media/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT}),
]
