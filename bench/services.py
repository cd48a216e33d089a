"""The external processes the benchmark starts and stops: redis-server, a znode sidecar
and the relay of the relay floor (bench/relay_floor.py).

Each is a context manager that starts its process, waits (with a deadline) until it
serves, and on exit stops it: SIGTERM, then SIGKILL if it has not gone in 5 s. Logs go
to files in the run's temporary directory so a failure can quote their tail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from types import TracebackType
from typing import Self


class ServiceError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _Process:
    """A child process with a log file and a polite stop."""

    name = "process"

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str]) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def failure(self, what: str) -> ServiceError:
        code = self.exit_code()
        state = "running" if code is None else f"exited with code {code}"
        return ServiceError(f"{self.name} {what} ({state}); log tail:\n{tail(self.log)}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisServer(_Process):
    """A private redis-server on a free loopback port, no persistence."""

    name = "redis-server"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir / "redis.log")
        self.port = 0
        self.workdir = workdir

    def start(self, deadline_s: float = 10.0) -> Self:
        exe = shutil.which("redis-server")
        if exe is None:
            raise ServiceError("redis-server is not on PATH (bench/run installs it)")
        self.port = free_port()
        self._spawn(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--loglevel", "warning"]
        )  # fmt: skip
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.exit_code() is not None:
                raise self.failure("did not start")
            try:
                if self.command("PING") == b"+PONG":
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise self.failure(f"did not answer PING within {deadline_s} s")

    def command(self, *words: str) -> bytes:
        """One RESP command on a fresh connection; returns the first reply line."""
        request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(request.encode())
            return s.recv(4096).split(b"\r\n", 1)[0]

    def flushall(self) -> None:
        self.command("FLUSHALL")

    def version(self) -> str:
        exe = shutil.which("redis-server")
        if exe is None:
            return "?"
        out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
        return next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())


class ZnodeSidecar(_Process):
    """``znode run --client-endpoint ipc://...`` (or ``python -m zchannels.node``)."""

    name = "znode"

    def __init__(self, workdir: Path, profile_dir: Path | None = None) -> None:
        super().__init__(workdir / "znode.log")
        self.path = workdir / "znode.sock"
        self.endpoint = f"ipc://{self.path}"
        self.profile_dir = profile_dir
        self.starts = 0

    def argv(self) -> list[str]:
        run = ["run", "--client-endpoint", self.endpoint]
        if self.profile_dir is not None:
            out = self.profile_dir / f"znode-sidecar-{self.starts}.pstats"
            return [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "zchannels.node", *run]
        script = Path(sys.executable).with_name("znode")
        if script.exists() and os.access(script, os.X_OK):
            return [str(script), *run]
        return [sys.executable, "-m", "zchannels.node", *run]

    def start(self, deadline_s: float = 15.0) -> Self:
        self.starts += 1
        self.path.unlink(missing_ok=True)  # a stale socket file would look like readiness
        self._spawn(self.argv())
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.exit_code() is not None:
                raise self.failure("did not start")
            if self.path.exists():
                return self
            time.sleep(0.05)
        raise self.failure(f"did not create {self.path} within {deadline_s} s")


class RelayFloor(_Process):
    """``python -m bench.relay_floor relay ipc://...``: forwards frames between A and B."""

    name = "relay"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir / "relay.log")
        self.path = workdir / "relay.sock"
        self.endpoint = f"ipc://{self.path}"

    def start(self, deadline_s: float = 15.0) -> Self:
        self._spawn([sys.executable, "-m", "bench.relay_floor", "relay", self.endpoint])
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.exit_code() is not None:
                raise self.failure("did not start")
            if self.path.exists():
                return self
            time.sleep(0.05)
        raise self.failure(f"did not create {self.path} within {deadline_s} s")


class Services:
    """The redis-server, znode and relay a run needs; restarts the sidecar if it dies.

    A service that cannot start is not fatal: ``error(needs)`` says why, and the
    layers that need it are reported unavailable.
    """

    MAX_RESTARTS = 3

    def __init__(
        self,
        workdir: Path,
        need: Collection[str],
        profile_dir: Path | None,
        log: Callable[[str], None],
    ) -> None:
        self.workdir = workdir
        self.redis: RedisServer | None = None
        self.znode: ZnodeSidecar | None = None
        self.relay: RelayFloor | None = None
        self.errors: dict[str, str] = {}
        if "redis" in need:
            self.redis = RedisServer(workdir)
            try:
                self.redis.start()
                log(f"redis-server {self.redis.version()} on 127.0.0.1:{self.redis.port}")
            except (ServiceError, OSError) as exc:
                self.errors["redis"] = str(exc)
        if "znode" in need:
            self.znode = ZnodeSidecar(workdir, profile_dir)
            try:
                self.znode.start()
                log(f"znode sidecar: {' '.join(self.znode.argv())}")
            except (ServiceError, OSError) as exc:
                self.errors["znode"] = str(exc)
        if "relay" in need:
            self.relay = RelayFloor(workdir)
            try:
                self.relay.start()
                log(f"relay floor: {self.relay.endpoint}")
            except (ServiceError, OSError) as exc:
                self.errors["relay"] = str(exc)

    def pid(self, needs: str | None) -> int:
        """The pid of the process a layer's messages go through (0: none, or not running)."""
        service = {"redis": self.redis, "znode": self.znode, "relay": self.relay}.get(needs or "")
        if service is None or service.proc is None or service.exit_code() is not None:
            return 0
        return service.proc.pid

    def error(self, needs: str | None) -> str:
        return self.errors.get(needs or "", "")

    def revive_znode(self) -> str | None:
        """If the sidecar died, start it again; returns a warning quoting its log, or None."""
        znode = self.znode
        if znode is None or "znode" in self.errors or znode.exit_code() is None:
            return None
        warning = str(znode.failure("died during the run"))
        if znode.starts > self.MAX_RESTARTS:
            self.errors["znode"] = f"znode died {znode.starts} times; not restarted"
            return warning
        znode.log = self.workdir / f"znode-{znode.starts}.log"
        try:
            znode.start()
        except (ServiceError, OSError) as exc:
            self.errors["znode"] = str(exc)
        return warning

    def reset(self, needs: str | None) -> None:
        """After a measurement: each one starts from an empty redis."""
        if needs == "redis" and self.redis is not None and "redis" not in self.errors:
            self.redis.flushall()

    def stop(self) -> None:
        for service in (self.znode, self.redis, self.relay):
            if service is not None:
                service.stop()
