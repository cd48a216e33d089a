"""Settings of the LAN test site (no database, no templates)."""

from __future__ import annotations

import os

SECRET_KEY = "lan-test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["daphne", "channels"]
ROOT_URLCONF = "lan_site.urls"
ASGI_APPLICATION = "lan_site.asgi.application"
DATABASES: dict[str, object] = {}
USE_TZ = True
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "zchannels.layer.ZeroMQChannelLayer",
        "CONFIG": {"node": os.environ["ZCHANNELS_NODE"]},
    }
}
