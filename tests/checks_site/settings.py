"""Settings of the system-check test project: zchannels as an installed app,
``CHANNEL_LAYERS`` from the environment (JSON in ``CHECKS_SITE_LAYERS``), so
each test runs ``check`` on the CONFIG it wants in a fresh process."""

from __future__ import annotations

import json
import os

SECRET_KEY = "checks-test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels", "zchannels"]
DATABASES: dict[str, object] = {}
USE_TZ = True
CHANNEL_LAYERS = json.loads(os.environ["CHECKS_SITE_LAYERS"])
