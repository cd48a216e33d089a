"""``call_command("check", *argv)`` in the check test project, then a JSON
report on stdout: the outcome and what loading the app and checking touched
(modules imported, threads, sockets, layers built)."""

from __future__ import annotations

import io
import json
import os
import sys
import threading

import django

django.setup()

from channels.layers import channel_layers  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.management.base import SystemCheckError  # noqa: E402

out, err = io.StringIO(), io.StringIO()
try:
    call_command("check", *sys.argv[1:], stdout=out, stderr=err)
    failed = None
except SystemCheckError as exc:
    failed = str(exc)
sockets = []
for fd in os.listdir("/proc/self/fd"):
    try:
        if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
            sockets.append(fd)
    except OSError:
        pass  # the listing's own descriptor, closed by now
print(
    json.dumps(
        {
            "failed": failed,
            "output": out.getvalue() + err.getvalue(),
            "modules": sorted(
                m
                for m in sys.modules
                if m.split(".")[0] == "zeroconf"
                or m.startswith(("zchannels.node", "zchannels.embedded", "zchannels.client"))
            ),
            "threads": threading.active_count(),
            "sockets": len(sockets),
            "layers_built": len(channel_layers.backends),
        }
    )
)
