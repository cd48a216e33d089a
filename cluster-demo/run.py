"""Run the live-blog demo on a three-host cluster: ``scripts/demo``.

As root (with iproute2) the three hosts are network namespaces on a bridge
(``tests/netns.py``; 10.77.0.11-13 exist only inside them); otherwise they are
three sets of processes on loopback. Each host runs a ``znode`` (one cluster,
sharing a key made for the run), Daphne serving the Django site, and
``manage.py runworker thumbnails``. The site is reachable from this machine at
http://127.0.0.1:8001-8003/ (in namespaces through a small forwarder to each
host's Daphne). Ctrl-C stops everything, namespaces included.

``DemoCluster`` is also what the browser tests drive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # the LAN harness the tests use

from zchannels.keys import write_key_file  # noqa: E402

#: Seconds a process may take to come up.
START_LIMIT = 30.0
#: Seconds between two looks while waiting for something to come up.
POLL = 0.05
FIRST_PORT = 8001

Launch = Callable[..., "subprocess.Popen[Any]"]


@dataclass
class DemoHost:
    name: str
    launch: Launch
    ip: str  # where its peers and Daphne listen
    port: int  # the URL's port on this machine
    node_endpoint: str = ""
    procs: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL every process of this host (no goodbye, no leave)."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for proc in self.procs.values():
            proc.wait(10)


class Forwarder:
    """127.0.0.1:PORT -> a unix socket, for each LAN host's Daphne (the
    browser lives in this namespace; the host's addresses exist only in its)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._servers: list[asyncio.Server] = []
        #: the connections' tasks, held: asyncio keeps only weak references,
        #: and a connection whose two ends wait on each other (a browser that
        #: went, a Daphne keeping its side open) is a cycle the garbage
        #: collector destroyed pending, its warnings failing the next test's
        #: setup on a busy machine
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, port: int, path: str) -> None:
        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            with contextlib.suppress(OSError):
                writer.write_eof()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            try:
                up_reader, up_writer = await asyncio.open_unix_connection(path)
            except OSError:
                writer.close()
                return
            try:
                await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            finally:
                for w in (up_writer, writer):
                    w.close()
                    with contextlib.suppress(OSError):
                        await w.wait_closed()

        async def serve() -> None:
            # (a socket of our own: a host name would cost an executor thread)
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            self._servers.append(await asyncio.start_server(handle, sock=listener))

        asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)

    def close(self) -> None:
        async def cancel_rest() -> None:
            # (connections still open, e.g. a browser's WebSockets: end them,
            # and those accepted meanwhile: a task left pending is destroyed
            # with the loop, and its warnings fail whichever test comes next)
            while tasks := [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        async def stop() -> None:
            for server in self._servers:
                server.close()
            await cancel_rest()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        # (a connection accepted between ``stop`` and the loop's stop got a
        # task after the last look: a busy machine's CI run had it destroyed
        # pending, and its warnings failed the next test's setup; the loop is
        # stopped now, so run it here until nothing is left)
        if not self._thread.is_alive():
            self.loop.run_until_complete(cancel_rest())
        self.loop.close()


class DemoCluster:
    def __init__(
        self, workdir: Path | None = None, lan: bool | None = None, layer: str = "zchannels"
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="zchannels-demo-"))
        self.data = self.workdir / "data"
        self.want_lan = (os.geteuid() == 0) if lan is None else lan
        self.mode = ""
        self.hosts: list[DemoHost] = []
        self._lan: Any = None
        self._forwarder: Forwarder | None = None
        self.key = self.workdir / "cluster.key"
        #: "zchannels", or "redis": the same site on channels_redis (the load
        #: run's comparison), with one redis-server on h1
        self.layer = layer
        self.redis_url = ""
        self._logs: list[Any] = []  # each Django process's output (in workdir)

    # -- bringing it up ------------------------------------------------------------
    def start(self) -> DemoCluster:
        self.data.mkdir(parents=True, exist_ok=True)
        write_key_file(self.key)
        self._django(["migrate", "-v", "0"]).check_returncode()
        self._make_hosts()
        seed: list[str] = []
        for host in self.hosts:
            seed = self._start_node(host, seed)
        if self.layer == "redis":
            self._start_redis(self.hosts[0])
        for host in self.hosts:
            self._start_site(host)
        for host in self.hosts:
            self._wait_http(host)
        return self

    def _make_hosts(self) -> None:
        if self.want_lan:
            from netns import Lan, NetnsUnavailable

            try:
                self._lan = Lan(3, "zdemo")
                self._lan.build()
            except NetnsUnavailable as exc:
                print(f"(no network namespaces: {exc}; using loopback)")
                self._lan = None
        if self._lan is not None:
            self.mode = "lan"
            self._forwarder = Forwarder()
            self.hosts = [
                DemoHost(h.name, h.run, h.ip, FIRST_PORT + i) for i, h in enumerate(self._lan.hosts)
            ]
        else:
            self.mode = "loopback"
            self.hosts = [
                DemoHost(f"h{i + 1}", subprocess.Popen, "127.0.0.1", FIRST_PORT + i)
                for i in range(3)
            ]

    def _env(self, host: DemoHost) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(HERE),
            "DJANGO_SETTINGS_MODULE": "liveblog.settings",
            "ZCHANNELS_NODE": host.node_endpoint,
            "DEMO_HOST": host.name,
            "DEMO_DATA": str(self.data),
            "DEMO_LAYER": self.layer,
            "DEMO_REDIS": self.redis_url,
        }

    def _django(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(HERE), "DEMO_DATA": str(self.data)}
        return subprocess.run(
            [sys.executable, str(HERE / "manage.py"), *args],
            cwd=HERE,
            env=env,
            capture_output=True,
            text=True,
        )

    def _start_node(self, host: DemoHost, seed: list[str]) -> list[str]:
        host.node_endpoint = f"ipc://{self.workdir}/{host.name}.sock"
        cmd = [sys.executable, "-m", "zchannels.node", "run", "--node-id", host.name]
        cmd += ["--client-endpoint", host.node_endpoint, "--key-file", str(self.key)]
        cmd += ["--cluster", "liveblog", "--log-level", "WARNING"]
        if self.mode == "loopback":
            cmd += ["--peer-endpoint", "tcp://127.0.0.1:0", "--discovery", "none", *seed]
        proc = host.launch(cmd, stdout=subprocess.PIPE, text=True)
        host.procs["znode"] = proc
        line = proc.stdout.readline() if proc.stdout is not None else ""
        if not line:
            raise RuntimeError(f"znode on {host.name} did not start")
        ready = json.loads(line)
        return ["--seed", str(ready["peer"])] if self.mode == "loopback" else []

    def _start_redis(self, host: DemoHost) -> None:
        port = 6379 if self.mode == "lan" else 16379
        cmd = ["redis-server", "--bind", host.ip, "--port", str(port), "--save", ""]
        cmd += ["--appendonly", "no", "--protected-mode", "no"]
        host.procs["redis"] = host.launch(cmd, stdout=subprocess.DEVNULL)
        self.redis_url = f"redis://{host.ip}:{port}"

    def _start_site(self, host: DemoHost) -> None:
        env = self._env(host)

        def logged(what: str) -> dict[str, Any]:
            log = open(self.workdir / f"{host.name}-{what}.log", "ab")
            self._logs.append(log)
            return {"stdout": log, "stderr": subprocess.STDOUT, "cwd": HERE}

        if self.mode == "lan":
            sock = f"{self.workdir}/{host.name}-http.sock"
            endpoints = ["-e", f"tcp:8000:interface={host.ip}", "-e", f"unix:{sock}"]
        else:
            endpoints = ["-b", "127.0.0.1", "-p", str(host.port)]
        site = [sys.executable, "-m", "daphne", *endpoints, "liveblog.asgi:application"]
        host.procs["daphne"] = host.launch(site, env=env, **logged("daphne"))
        worker = [sys.executable, str(HERE / "manage.py"), "runworker", "thumbnails"]
        host.procs["worker"] = host.launch(worker, env=env, **logged("worker"))
        if self._forwarder is not None:
            self._wait_path(sock)
            self._forwarder.add(host.port, sock)

    def _wait_path(self, path: str) -> None:
        deadline = time.monotonic() + START_LIMIT
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path} did not appear")
            time.sleep(POLL)

    def _wait_http(self, host: DemoHost) -> None:
        deadline = time.monotonic() + START_LIMIT
        while True:
            try:
                with urllib.request.urlopen(host.url + "/", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{host.name}'s site did not come up at {host.url}")
            time.sleep(POLL)

    # -- taking it down --------------------------------------------------------------
    def stop(self) -> None:
        for host in self.hosts:
            for proc in host.procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
        for host in self.hosts:
            for proc in host.procs.values():
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
                if proc.stdout is not None:
                    proc.stdout.close()
        for log in self._logs:
            log.close()
        if self._forwarder is not None:
            self._forwarder.close()
        if self._lan is not None:
            self._lan.teardown()


def main() -> int:
    cluster = DemoCluster()
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        cluster.start()
        where = (
            "3 hosts: network namespaces on a bridge (10.77.0.11-13)"
            if cluster.mode == "lan"
            else "3 hosts on loopback (run as root for network namespaces)"
        )
        print(f"\nzchannels live blog on {where}; each runs znode, Daphne and a thumbnail worker.")
        for host in cluster.hosts:
            print(
                f"  {host.name}: {host.url}/   chat {host.url}/chat/   cluster {host.url}/cluster/"
            )
        print("Open a reader on each host, post on any. Ctrl-C stops everything.", flush=True)
        stop.wait()
    finally:
        print("\nstopping ...", flush=True)
        cluster.stop()
        shutil.rmtree(cluster.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
