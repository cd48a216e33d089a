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


#: The node's decision modules: pure (``now`` and an injected RNG in,
#: effects out). The shell (server, peers, finding, cli, lifetime, logs,
#: security) is the only part that may touch sockets, clocks and tasks.
DECISIONS = (
    "cluster",
    "core",
    "effects",
    "group_replica",
    "groups",
    "membership",
    "ownership",
    "peer_messages",
    "peer_wire",
    "queues",
    "replication",
    "routing",
    "sessions",
)
#: What a decision module may not import itself: sockets, the event loop,
#: the clock, threads, discovery's I/O.
IMPURE = ("zmq", "asyncio", "time", "socket", "threading", "zeroconf", "dns", "selectors")


def test_the_node_decision_modules_import_no_io_and_read_no_clock() -> None:
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "node"
    for name in DECISIONS:
        tree = ast.parse((root / f"{name}.py").read_text())
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module not in ("server", "peers", "finding", "cli", "lifetime"), (
                    f"node/{name}.py reaches the shell ({node.module})"
                )
        assert not imported & set(IMPURE), f"node/{name}.py imports {imported & set(IMPURE)}"


def test_the_whole_cluster_node_loads_without_the_socket_shell() -> None:
    """Importing the composed pure node loads no zmq, asyncio, zeroconf or
    shell module: the import graph never reaches the sockets."""
    probe = (
        "import json, sys\n"
        "import zchannels.node.cluster\n"
        "shell = ('zmq', 'asyncio', 'zeroconf', 'dns', 'zchannels.node.server', "
        "'zchannels.node.peers', 'zchannels.node.finding')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(shell))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
