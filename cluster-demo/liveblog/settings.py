"""Settings of the live-blog demo. Per host, from the environment ``run.py`` sets:

- ``ZCHANNELS_NODE``: this host's znode (``ipc://...``);
- ``DEMO_HOST``: this host's name, shown on pages and in every update;
- ``DEMO_DATA``: the folder shared by the hosts (SQLite database, uploads).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA = Path(os.environ.get("DEMO_DATA", Path(__file__).resolve().parent.parent / ".demo-data"))
HOST = os.environ.get("DEMO_HOST", "localhost")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "zchannels-demo-only")
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "channels",
    "blog",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "liveblog.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ASGI_APPLICATION = "liveblog.asgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA / "db.sqlite3",
        "OPTIONS": {"timeout": 20},  # several hosts write to one file
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
STATIC_URL = "static/"
MEDIA_URL = "/media/"
MEDIA_ROOT = DATA / "media"

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "zchannels.layer.ZeroMQChannelLayer",
        "CONFIG": {"node": os.environ.get("ZCHANNELS_NODE", "ipc:///tmp/zchannels/znode.sock")},
    }
}
if os.environ.get("DEMO_LAYER") == "redis":  # the load run's side-by-side comparison
    CHANNEL_LAYERS["default"] = {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # max_connections: with redis-py's default pool, ~20% of 1,000 WebSocket
        # connects failed with "Too many connections" (docs/benchmarks.md)
        "CONFIG": {
            "hosts": [
                {
                    "address": os.environ.get("DEMO_REDIS", "redis://127.0.0.1:6379"),
                    "max_connections": 2000,
                }
            ]
        },
    }
