"""The shared node under the servers sites really run on.

``tests/shared_site`` (``CONFIG = {}``) served by uvicorn with 4 workers and by
gunicorn with 4 uvicorn workers: WebSocket readers spread over every worker, a
``group_send`` from a plain sync view and from a separate process reaches all
of them; then the node is SIGKILLed and every reader is served again within
2 s (the takeover time is printed: run with ``-s``). Under ``runserver`` the
autoreloader restarts the site's process and the same node serves on. At the
end no node of the site is left.

Every process of the site runs with ``DJANGO_SETTINGS_MODULE=shared_site.settings``,
so they share one scope; this test process computes the same scope to find
the node.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket
from conftest import wait_for
from procs import ROOT
from test_shared import GONE_WITHIN, TAKEOVER, node_processes, nothing_left, serving

from zchannels import shared
from zchannels.shared import IDLE_EXIT

TESTS = ROOT / "tests"
SETTINGS = "shared_site.settings"
#: Seconds a server gets to serve its first request (4 workers importing Django
#: on two cores).
BOOT = 60.0
#: Seconds any single expected thing may take.
STEP = 10.0
WORKERS = 4
#: Most WebSocket connections opened while looking for every worker.
MAX_READERS = 80
#: The shared node's client lease (``NodeConfig.lan``).
LEASE = 3.0


def site_env() -> dict[str, str]:
    return {**os.environ, "DJANGO_SETTINGS_MODULE": SETTINGS, "PYTHONPATH": str(TESTS)}


def site_directory() -> str:
    """The site's scope directory, as its processes compute it."""
    key, label = shared.scope_key(
        None, SETTINGS, os.path.realpath(TESTS / "shared_site" / "settings.py"), str(TESTS)
    )
    return shared.scope_directory(shared.runtime_base(), key, label)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """A server process of the site; its output goes to a log file."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path) -> None:
        self.name, self.port, self.log = name, port, log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                argv, cwd=TESTS, env=site_env(), stdout=out, stderr=subprocess.STDOUT
            )

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def get(self, path: str, timeout: float = 30.0) -> bytes:
        with urllib.request.urlopen(self.url(path), timeout=timeout) as response:
            body: bytes = response.read()
            return body

    def wait_serving(self) -> float:
        def up() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited: {self.tail()}")
            try:
                return self.get("/health/", timeout=2) == b"ok"
            except OSError:
                return False

        return wait_for(up, BOOT, f"{self.name} to serve")

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Readers:
    """WebSocket readers of the room; one thread each puts what arrives,
    with its arrival time, on one queue."""

    def __init__(self) -> None:
        self.sockets: list[websocket.WebSocket] = []
        self.pids: list[int] = []
        self.arrivals: queue.Queue[tuple[int, dict[str, Any], float]] = queue.Queue()
        self._threads: list[threading.Thread] = []

    def connect(self, url: str) -> int:
        ws = websocket.create_connection(url, timeout=STEP)
        pid = int(json.loads(ws.recv())["pid"])
        ws.settimeout(None)
        index = len(self.sockets)
        self.sockets.append(ws)
        self.pids.append(pid)
        thread = threading.Thread(
            target=self._read, args=(index, ws), name=f"reader-{index}", daemon=True
        )
        thread.start()
        self._threads.append(thread)
        return pid

    def spread_over(self, url: str, workers: int) -> dict[int, int]:
        """Connect until every worker serves a reader (at least two readers
        each, where the kernel's choice of worker allows)."""
        for _ in range(MAX_READERS):
            self.connect(url)
            counts = {p: self.pids.count(p) for p in set(self.pids)}
            if len(counts) == workers and min(counts.values()) >= 2:
                break
        counts = {p: self.pids.count(p) for p in set(self.pids)}
        assert len(counts) == workers, (
            f"{len(self.sockets)} connections reached only workers {counts}"
        )
        return counts

    def _read(self, index: int, ws: websocket.WebSocket) -> None:
        while True:
            try:
                text = ws.recv()
            except Exception:  # closed
                return
            if not text:  # closed by us
                return
            self.arrivals.put((index, json.loads(text), time.monotonic()))

    def expect_everyone(self, text: str, within: float = STEP) -> None:
        """Every reader receives the room message ``text``."""
        missing = set(range(len(self.sockets)))
        deadline = time.monotonic() + within
        while missing:
            try:
                index, message, _ = self.arrivals.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pids = sorted({self.pids[i] for i in missing})
                pytest.fail(f"{len(missing)} readers (workers {pids}) never got {text!r}")
            if message.get("text") == text:
                missing.discard(index)

    def close(self) -> None:
        for ws in self.sockets:
            ws.close()
        for thread in self._threads:
            thread.join(5)


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The site's scope directory; at the end, no node of it may be left
    (waited for with a deadline: the node stops by itself)."""
    directory = site_directory()
    wait_for(lambda: nothing_left(directory), GONE_WITHIN, "an earlier run's node to go")
    yield directory
    took = wait_for(lambda: nothing_left(directory), GONE_WITHIN, "the site's node to go")
    print(f"\nthe site's node was gone {took:.2f} s after its last server stopped")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def post_from_a_worker_process(text: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shared_site.post", text],
        cwd=TESTS,
        env=site_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"event": "sent"}


def check_site(server: Server, directory: str) -> None:
    """Readers on every worker; group_send from a sync view and from another
    process reaches each; the node is SIGKILLed and everyone is served again
    within the bound."""
    booted = server.wait_serving()
    readers = Readers()
    try:
        counts = readers.spread_over(server.url("/ws/room/", "ws"), WORKERS)
        print(f"\n{server.name}: up in {booted:.1f} s; readers per worker {counts}")
        assert len(node_processes(directory)) == 1, "the workers share one node"

        server.get("/post/?text=from-a-view")
        readers.expect_everyone("from-a-view")
        post_from_a_worker_process("from-a-worker")
        readers.expect_everyone("from-a-worker")

        old = serving(directory)
        assert old, "no node serves the site"
        os.kill(int(old.split()[0]), signal.SIGKILL)
        killed = time.monotonic()
        back: dict[int, float] = {}
        unknown: list[int] = []  # workers whose post's outcome was unknown
        sent = 0
        while len(back) < len(readers.sockets):
            if time.monotonic() - killed > STEP:
                pids = {readers.pids[i] for i in range(len(readers.sockets)) if i not in back}
                pytest.fail(f"workers {pids} not served {STEP:g} s after the node's SIGKILL")
            sent += 1
            try:
                server.get(f"/post/?text=after-{sent}")  # waits while no node serves
            except urllib.error.HTTPError as error:
                # A group_send written to the node's socket as it died may
                # have been taken or not (SendOutcomeUnknown, answered 503).
                # Only what a worker sent before it heard of the restart can
                # be: once per worker at most (posts go one at a time).
                answer = json.loads(error.read())
                assert error.code == 503 and answer["error"] == "SendOutcomeUnknown", answer
                assert answer["pid"] not in unknown, f"a second unknown outcome: {answer}"
                unknown.append(answer["pid"])
            try:
                while True:
                    index, message, at = readers.arrivals.get(timeout=0.05)
                    if str(message.get("text", "")).startswith("after-"):
                        back.setdefault(index, at - killed)
            except queue.Empty:
                pass
        takeover = max(back.values())
        new = serving(directory)
        print(
            f"{server.name}: node SIGKILLed; every reader served again after "
            f"{takeover:.2f} s (first {min(back.values()):.2f} s, {sent} posts, "
            f"{len(unknown)} of unknown outcome); "
            f"node {old} -> {new}"
        )
        assert new and new != old
        assert takeover < TAKEOVER, f"served again after {takeover:.2f} s, bound {TAKEOVER:g} s"
        assert len(node_processes(directory)) == 1
        post_from_a_worker_process("after-the-kill")
        readers.expect_everyone("after-the-kill")
    except BaseException:
        print(server.tail())
        raise
    finally:
        readers.close()


def test_uvicorn_with_four_workers(site: str, servers: list[Server], tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "shared_site.asgi:application"]
    argv += ["--workers", str(WORKERS), "--host", "127.0.0.1", "--port", str(port)]
    servers.append(Server("uvicorn", argv, port, tmp_path / "uvicorn.log"))
    check_site(servers[0], site)


def test_gunicorn_with_four_uvicorn_workers(
    site: str, servers: list[Server], tmp_path: Path
) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker"]
    argv += ["-w", str(WORKERS), "-b", f"127.0.0.1:{port}", "shared_site.asgi:application"]
    servers.append(Server("gunicorn", argv, port, tmp_path / "gunicorn.log"))
    check_site(servers[0], site)


def test_runserver_autoreload_keeps_the_node(
    site: str, servers: list[Server], tmp_path: Path
) -> None:
    """``manage.py runserver`` (Daphne's, with the autoreloader): a code
    change restarts the site's process; the new one uses the same node."""
    port = free_port()
    argv = [sys.executable, "-m", "django", "runserver", f"127.0.0.1:{port}"]
    server = Server("runserver", argv, port, tmp_path / "runserver.log")
    servers.append(server)
    server.wait_serving()
    readers = Readers()
    try:
        readers.connect(server.url("/ws/room/", "ws"))
        server.get("/post/?text=before-reload")
        readers.expect_everyone("before-reload")
        before = serving(site)
        first_pid = readers.pids[0]
        readers.close()

        touched = 0.0
        readers = Readers()

        def new_process_serves() -> bool:
            nonlocal touched
            if time.monotonic() - touched > 2.0:  # (again, if the reloader had not looked yet)
                os.utime(TESTS / "shared_site" / "urls.py")  # a code change
                touched = time.monotonic()
            try:
                ws = websocket.create_connection(server.url("/ws/room/", "ws"), timeout=STEP)
            except (OSError, websocket.WebSocketException):
                return False
            try:
                return int(json.loads(ws.recv())["pid"]) != first_pid
            except (OSError, websocket.WebSocketException, ValueError):
                return False
            finally:
                ws.close()

        took = wait_for(new_process_serves, BOOT, "the reloaded process to serve")
        print(f"\nrunserver reloaded in {took:.2f} s")
        readers.connect(server.url("/ws/room/", "ws"))
        server.get("/post/?text=after-reload")
        readers.expect_everyone("after-reload")
        assert len(node_processes(site)) == 1
        # The node outlives the old process by its lease and idle time: a
        # reload within that finds it still serving (no node started anew).
        if took < LEASE + IDLE_EXIT:
            assert serving(site) == before, "the reload started another node"
    except BaseException:
        print(server.tail())
        raise
    finally:
        readers.close()
