"""zchannels as a Django app: ``INSTALLED_APPS = [..., "zchannels"]``.

Owns: registering the system checks of ``zchannels.checks`` (tag
``zchannels``). The app has no models, views or URLs, and loading it starts
nothing: no node, no socket, no thread (``zchannels.node`` and zeroconf are
not imported; the layer starts its node on first use, as before).
"""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class ZChannelsConfig(AppConfig):  # type: ignore[misc]
    name = "zchannels"
    verbose_name = "zchannels (ZeroMQ channel layer)"

    def ready(self) -> None:
        from .checks import check_channel_layers, check_channel_layers_deploy

        checks.register(check_channel_layers, "zchannels")
        checks.register(check_channel_layers_deploy, "zchannels", deploy=True)
