"""The three ways a site runs the layer, as one parametrized fixture.

- ``embedded``: ``CONFIG = {"node": "embedded"}``: the node runs inside this process;
- ``shared``: ``CONFIG = {}``: the shared node of this checkout's scope, a
  process started on demand (the ``layer`` fixture's node too);
- ``sidecar``: ``CONFIG = {"node": endpoint}``: one ``znode`` serves the host;
- ``cluster``: three ``znode`` processes joined by seeds; layers talk to
  different nodes, and plain names are picked so that their owner is a node
  none of the test's layers talks to (``node-1``; layers use nodes 0 and 2).

The nodes are started once per module (a cluster forms in a few seconds) and
every test gets its own ``prefix``, so tests share no channel, group or
capacity. Drop counters are node-wide, so tests compare them before and after.

"Another process" is a layer with another configuration: layer instances with
equal CONFIG in one process share one session (that is the documented
behaviour of one Django process), so each role of a test (``process=N``)
gets a distinct ``request_timeout``. A test that needs a real OS process
forks or spawns one itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import select
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import Znode, wait_for
from procs import ROOT
from test_cluster import converged, start_cluster, status
from zchannels.node.ownership import Ownership

from zchannels.layer import ZeroMQChannelLayer

KINDS = ("embedded", "shared", "sidecar", "cluster")
CLUSTER_IDS = ["node-0", "node-1", "node-2"]
#: the node plain names are owned by in the cluster: no test layer talks to it
OWNER = "node-1"

_prefixes = itertools.count()


@dataclass
class Deployment:
    kind: str
    nodes: list[Znode] = field(default_factory=list)
    #: the layers' CONFIG beyond ``node`` (``shared``: a scope of its own)
    options: dict[str, Any] = field(default_factory=dict)

    def endpoint(self, at: int) -> str | None:
        """The ``node`` CONFIG of a layer on node ``at`` (None: no znode)."""
        if not self.nodes:
            return None
        return self.nodes[at % len(self.nodes)].endpoint

    def check_alive(self) -> None:
        dead = [n.endpoint for n in self.nodes if n.proc is None or n.proc.poll() is not None]
        if dead:
            pytest.fail(f"{self.kind}: znode(s) {dead} died in an earlier test")


@dataclass
class Scenario:
    """One test's view of a deployment: its own prefix and its layers."""

    deployment: Deployment
    prefix: str
    layers: list[ZeroMQChannelLayer] = field(default_factory=list)
    #: one layer per node, to read its drop counters
    observers: list[ZeroMQChannelLayer] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.deployment.kind

    def config(self, at: int = 0, process: int = 0, **options: Any) -> dict[str, Any]:
        """The CONFIG of role ``process`` on node ``at``."""
        config: dict[str, Any] = {"prefix": self.prefix, "request_timeout": 30.0 - process}
        config.update(self.deployment.options)
        endpoint = self.deployment.endpoint(at)
        if endpoint is not None:
            config["node"] = endpoint
        config.update(options)
        return config

    def layer(self, at: int = 0, process: int = 0, **options: Any) -> ZeroMQChannelLayer:
        """A layer of "process" ``process`` talking to node ``at`` (in the
        cluster: 0 and 2 are used by layers, 1 owns the plain names)."""
        layer = ZeroMQChannelLayer(**self.config(at, process, **options))
        self.layers.append(layer)
        return layer

    def plain(self, stem: str) -> str:
        """A plain channel name; in the cluster one owned by ``OWNER``."""
        if self.kind != "cluster":
            return stem
        ownership = Ownership.from_ids(CLUSTER_IDS)
        for i in itertools.count():
            name = f"{stem}.{i}"
            if ownership.owner(f"{self.prefix}|{name}") == OWNER:
                return name
        raise AssertionError("unreachable")

    async def full_drops(self) -> int:
        """``full`` drops of the whole deployment (every node's own count,
        summed: a drop counted on two nodes is counted twice here), read with
        ``layer.drops()``; for znodes also checked against ``znode status``."""
        if not self.observers:
            self.observers = [
                self.layer(at, process=20 + at) for at in range(max(1, len(self.deployment.nodes)))
            ]
        via_layer = 0
        for observer in self.observers:
            via_layer += (await observer.drops())["full"]
        if self.deployment.nodes:
            via_status = sum(status(n)["drops"]["full"] for n in self.deployment.nodes)
            assert via_status == via_layer, (
                f"znode status says {via_status} full drops, layer.drops() {via_layer}"
            )
        return via_layer

    async def aclose(self) -> None:
        """Close every layer of the test. Cleanup only: a layer a failed test
        left broken must not hide the test's own failure."""
        for layer in self.layers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(layer.close(), 5)
        self.layers.clear()
        self.observers.clear()


def _start(kind: str, base: Path, started: list[Znode]) -> Deployment:
    """Start ``kind``; every znode started is appended to ``started`` at
    once, so a failed start leaves nothing running."""

    def znode(endpoint: str | None = None, *extra: str) -> Znode:
        if endpoint is None:
            endpoint = f"ipc://{base}/znode-{len(started)}.sock"
        node = Znode(endpoint, list(extra))
        started.append(node)
        return node.start()

    if kind == "embedded":
        return Deployment(kind, options={"node": "embedded"})
    if kind == "shared":
        return Deployment(kind)
    if kind == "sidecar":
        return Deployment(kind, [znode()])
    nodes = start_cluster(znode, 3)
    wait_for(lambda: converged(nodes, set(CLUSTER_IDS)), 15, "the 3-node cluster to form")
    return Deployment(kind, nodes)


@pytest.fixture(scope="module", params=KINDS)
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    started: list[Znode] = []
    try:
        yield _start(request.param, tmp_path_factory.mktemp(request.param), started)
    finally:
        for node in started:
            node.stop()


def _scenario(deployment: Deployment) -> Scenario:
    deployment.check_alive()
    return Scenario(deployment, prefix=f"spec{next(_prefixes)}")


@pytest.fixture(name="dep")
async def dep_fixture(deployment: Deployment) -> AsyncIterator[Scenario]:
    """For async tests: layers are closed on the test's loop afterwards."""
    scenario = _scenario(deployment)
    yield scenario
    await scenario.aclose()


@pytest.fixture(name="dep_sync")
def dep_sync_fixture(deployment: Deployment) -> Iterator[Scenario]:
    """For sync tests (they make and close event loops by hand)."""
    scenario = _scenario(deployment)
    yield scenario
    with contextlib.suppress(Exception):
        asyncio.run(scenario.aclose())


def run(coro_fn: Callable[[], Any], within: float) -> Any:
    """``asyncio.run`` with a deadline."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro_fn(), within)

    return asyncio.run(bounded())


#: A child process that makes a ``new_channel()`` name with a layer of the
#: CONFIG given as JSON in argv[1], prints it, and holds its session until
#: its stdin closes.
_NAME_MAKER = """
import asyncio, json, sys
from zchannels.layer import ZeroMQChannelLayer

async def main():
    layer = ZeroMQChannelLayer(**json.loads(sys.argv[1]))
    print(await layer.new_channel(), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await layer.close()

asyncio.run(main())
"""


@contextlib.contextmanager
def channel_of_another_process(config: dict[str, Any], within: float = 20.0) -> Iterator[str]:
    """A ``new_channel()`` name made by another (live) OS process."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _NAME_MAKER, json.dumps(config)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], within)
        name = proc.stdout.readline().strip() if ready else ""
        if "!" not in name:
            pytest.fail(f"the other process printed no channel name within {within:g} s: {name!r}")
        yield name
    finally:
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
