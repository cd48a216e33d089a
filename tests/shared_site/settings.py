"""Settings of the shared-node test site: no database, and the default layer
CONFIG (every process of the site shares one node, started on demand)."""

from __future__ import annotations

SECRET_KEY = "shared-node-test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["daphne", "channels"]  # daphne: its runserver, for the autoreloader test
ROOT_URLCONF = "shared_site.urls"
ASGI_APPLICATION = "shared_site.asgi.application"
DATABASES: dict[str, object] = {}
USE_TZ = True
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "zchannels.layer.ZeroMQChannelLayer",
        "CONFIG": {},
    }
}
