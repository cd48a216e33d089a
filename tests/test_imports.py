"""What importing the layer pulls in: a sidecar's clients never load the node.

A Django process pointed at a ``znode`` (CONFIG ``node=...``) or using the
site's shared node (CONFIG ``{}``) runs no node code, so it must not import
the node, zeroconf or discovery (time and memory in every worker); the
embedded node is loaded only when a layer needs it. And
the connection shell does not import the session that owns it (no import
circle between ``zchannels.client`` and ``zchannels.connection``).
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("zchannels.node", "zchannels.discovery", "zchannels.embedded", "zeroconf")


def loaded_after(code: str) -> list[str]:
    probe = (
        "import json, sys\n"
        f"{code}\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


def test_a_sidecar_layer_imports_no_node_code() -> None:
    code = (
        "from zchannels.layer import ZeroMQChannelLayer\n"
        "layer = ZeroMQChannelLayer(node='ipc:///nonexistent/znode.sock')\n"
        "layer.client"
    )
    assert loaded_after(code) == []


def test_an_embedded_layer_loads_the_node_when_it_needs_it() -> None:
    code = (
        "from zchannels.layer import ZeroMQChannelLayer\nZeroMQChannelLayer(node='embedded').client"
    )
    assert "zchannels.embedded" in loaded_after(code)


def test_a_default_layer_runs_its_node_in_another_process() -> None:
    """CONFIG = {}: the site's shared node is a process of its own; the
    Django process loads no node code either."""
    code = (
        "from zchannels.layer import ZeroMQChannelLayer\nlayer = ZeroMQChannelLayer()\nlayer.client"
    )
    assert loaded_after(code) == []


def test_the_connection_shell_does_not_import_the_client() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, zchannels.connection; print('zchannels.client' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "False"
