"""Fixtures shared by every test layer.

- ``layer``: a layer with ``CONFIG = {}`` (the shared node of this run's
  scope, started on demand), flushed before the test.
- ``znode``: a factory that starts real ``znode`` processes (test preset, ipc
  in a temp dir) and kills whatever is left at the end.
- hygiene: a test must not leave non-daemon threads running.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from zchannels.layer import ZeroMQChannelLayer

# Hypothesis' wall-clock health checks and deadlines measure the machine, not
# the code: on a loaded CI runner input generation is "too slow" and an
# example exceeds its deadline. The properties stay; timing is bench/run's.
settings.register_profile("zchannels", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("zchannels")

#: Seconds between two polls of a condition that a test waits for (with a
#: deadline): the granularity of a measured figure, never a wait in itself.
POLL = 0.01


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; return the seconds it took. Fails the
    test with ``what`` if ``timeout`` passes first."""
    start = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL)


async def eventually(
    check: Callable[[], object | Awaitable[object]], limit: float, what: str
) -> float:
    """``wait_for`` for async tests: ``check`` may be sync or async; polls
    without blocking the event loop. Returns the seconds it took."""
    start = time.monotonic()
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > limit:
            pytest.fail(f"timed out after {limit:g} s waiting for {what}")
        await asyncio.sleep(POLL)


class Znode:
    """A ``znode run`` subprocess."""

    def __init__(self, endpoint: str, extra: list[str], state_dir: str | None = None) -> None:
        self.endpoint = endpoint
        self.extra = extra
        #: its ``--state-dir`` (a test's own: notes never cross tests)
        self.state_dir = state_dir
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, object] = {}

    def start(self, timeout: float = 15.0) -> Znode:
        cmd = [
            sys.executable,
            "-m",
            "zchannels.node",
            "run",
            "--preset",
            "test",
            "--client-endpoint",
            self.endpoint,
            "--log-level",
            "WARNING",
            *self.extra,
        ]
        if self.state_dir is not None and "--state-dir" not in self.extra:
            cmd += ["--state-dir", self.state_dir]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            self.proc.kill()
            pytest.fail(f"znode did not start: {line!r}")
        ready = json.loads(line)
        assert ready["ready"] is True
        #: what the node printed when ready (endpoints, peer address)
        self.ready = ready
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def znode(tmp_path: Path) -> Iterator[Callable[..., Znode]]:
    """``znode()`` starts a node on a fresh ipc socket; ``znode(endpoint)``
    starts one on that endpoint (e.g. to restart a node in place)."""
    started: list[Znode] = []

    def start(endpoint: str | None = None, *extra: str) -> Znode:
        if endpoint is None:
            endpoint = f"ipc://{tmp_path}/znode-{len(started)}.sock"
        node = Znode(endpoint, list(extra), str(tmp_path / "state")).start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture
async def layer() -> AsyncIterator[ZeroMQChannelLayer]:
    channel_layer = ZeroMQChannelLayer()
    await channel_layer.flush()
    yield channel_layer
    await channel_layer.flush()
    await channel_layer.close()


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        left = [
            t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon
        ]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(POLL)
    assert not left, f"test left threads running: {left}"
