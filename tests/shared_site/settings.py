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
# A view's exception (an HTTP 500) is printed to the server's log, which a
# failing test shows: without this, DEBUG = False keeps it to the mail admins.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
}
