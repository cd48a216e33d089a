"""The site's shared node: what ``CONFIG = {}`` gives every process of a site.

Owns: which processes share a node (the *scope*: one per Django project, host
and user), the private directory where that node's socket, lock files and log
live, starting the node when no process of the scope has one running
(``python -m zchannels.node run ...``, detached; it stops by itself a few
seconds after its last client is gone), and watching it from the process's
background loop: a node that died is started again, and this process's
clients are told when a new node serves, so they say HELLO again and re-add
their memberships at once, as after a ``znode`` restart. Does not own: the
session (``zchannels.client``), the node's side of the locks and its idle
rule (``zchannels.node.lifetime``). Why a node process started on demand, and
not a node inside one of the site's processes: docs/shared-node.md.

The files of a scope's directory (0700, under ``$XDG_RUNTIME_DIR/zchannels/``
or ``/tmp/zchannels-UID/``):

- ``node.sock``: the node's ipc socket (0600);
- ``node.lock``: the node holds an exclusive ``flock`` on it for its life (a
  held lock means a node serves; the kernel drops it with the process); it
  holds the node's pid and incarnation;
- ``clients.lock``: every process using the node holds a shared lock on it, so
  the node stops only when none does, and never while one is connecting;
- ``spawn.lock``: held by the one process starting a node, so a dead node is
  replaced by one process, not by every process of the site at once;
- ``node.log``: what the nodes said (kept under ``LOG_LIMIT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import re
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from .background import background
from .config import LayerConfig
from .errors import ConfigError

log = logging.getLogger("zchannels.layer")

#: Seconds between two looks at the node (is its lock held? did it change?):
#: bounds how late a dead node is noticed.
WATCH_INTERVAL = 0.2
#: Seconds between two looks while no node serves, until a new one says it
#: does: bounds how late clients hear of it.
URGENT_INTERVAL = 0.05
#: Seconds a node started here stays without clients before it stops: long
#: enough for the site's processes to restart (the autoreloader, a worker
#: recycled) and find it still there, short enough that nothing outlives the
#: site for long.
IDLE_EXIT = 5.0
#: Seconds a process waits for its claim while a node is stopping (the node
#: holds the claim file for the milliseconds that takes).
CLAIM_WAIT = 5.0
#: Seconds a node started here may take to hold its lock before it counts as
#: failed (it is killed then, and another is started).
START_LIMIT = 15.0
#: Seconds before trying again after a node failed to start; doubles up to
#: ``BACKOFF_MAX`` while starts keep failing.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
#: Bytes of ``node.log`` kept: a bigger log is moved to ``node.log.1`` when
#: a node is started.
LOG_LIMIT = 1024 * 1024
#: The longest ipc socket path (``sun_path`` is 108 bytes on Linux, 104 on
#: macOS, with the terminating NUL).
MAX_SOCKET_PATH = 103


# -- the scope ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Scope:
    """One shared node: who shares it (``key``) and where it lives."""

    key: str
    directory: str

    @property
    def socket(self) -> str:
        return os.path.join(self.directory, "node.sock")

    @property
    def endpoint(self) -> str:
        return "ipc://" + self.socket

    @property
    def lock(self) -> str:
        return os.path.join(self.directory, "node.lock")

    @property
    def claims(self) -> str:
        return os.path.join(self.directory, "clients.lock")

    @property
    def spawn_lock(self) -> str:
        return os.path.join(self.directory, "spawn.lock")

    @property
    def log(self) -> str:
        return os.path.join(self.directory, "node.log")


def scope_key(
    name: str | None, settings_module: str | None, settings_file: str | None, cwd: str
) -> tuple[str, str]:
    """Who shares a node, as ``(key, label)`` (pure). ``CONFIG scope`` if
    given; else the settings module and the directory of its file (the
    project: two checkouts of one project are two sites); else the working
    directory. The label makes the directory recognisable; the key, hashed,
    makes it unique."""
    if name is not None:
        return f"scope:{name}", name
    if settings_module:
        where = os.path.dirname(settings_file) if settings_file else cwd
        return f"settings:{settings_module}:{where}", settings_module
    return f"cwd:{cwd}", os.path.basename(cwd.rstrip("/")) or "root"


def scope_directory(base: str, key: str, label: str) -> str:
    """The scope's directory under ``base`` (pure)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", label)[:24].lstrip(".") or "site"
    return os.path.join(base, f"{slug}-{digest}")


def settings_file(module: str) -> str | None:
    """The file of the settings module (found without importing it when it
    is not imported yet)."""
    loaded = sys.modules.get(module)
    path = getattr(loaded, "__file__", None)
    if path is None:
        try:
            spec = importlib.util.find_spec(module)
        except Exception:  # (its package failed to import: Django will say why)
            spec = None
        path = spec.origin if spec is not None else None
    return os.path.realpath(path) if isinstance(path, str) else None


def runtime_base() -> str:
    """Where scope directories live: ``$XDG_RUNTIME_DIR/zchannels`` (the
    user's own tmpfs) when it is usable, else ``/tmp/zchannels-UID``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        try:
            st = os.stat(runtime)
        except OSError:
            st = None
        if st is not None and st.st_uid == os.getuid() and os.access(runtime, os.W_OK):
            return os.path.join(runtime, "zchannels")
    return f"/tmp/zchannels-{os.getuid()}"


def private_dir(path: str) -> None:
    """Make ``path`` a directory only this user can enter (0700), or refuse
    one that is not: owned by someone else, open to others, or a link."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot make the shared node's directory {path}: {exc}") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} is not a directory: remove it, or set CONFIG node")
    if st.st_uid != os.getuid():
        raise ConfigError(
            f"{path} belongs to uid {st.st_uid}, not to this user: remove it, "
            "set XDG_RUNTIME_DIR, or set CONFIG node"
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)  # ours: make it private again


def resolve(config: LayerConfig) -> Scope:
    """This process's scope for ``config``, its directory made if missing."""
    module = os.environ.get("DJANGO_SETTINGS_MODULE") or None
    path = settings_file(module) if module and config.scope is None else None
    key, label = scope_key(config.scope, module, path, os.getcwd())
    base = runtime_base()
    directory = scope_directory(base, key, label)
    scope = Scope(key, directory)
    if len(scope.socket) > MAX_SOCKET_PATH:
        raise ConfigError(
            f"the shared node's socket path {scope.socket} is too long for a unix "
            "socket: set XDG_RUNTIME_DIR to a shorter directory, or set CONFIG node"
        )
    private_dir(base)
    private_dir(directory)
    return scope


# -- what a process does about its node (pure) ---------------------------------
@dataclass(frozen=True, slots=True)
class Seen:
    """One look at the scope's node."""

    now: float
    #: nobody holds the node's lock: no node serves
    free: bool
    #: what the serving node wrote into its lock file (changes with each node)
    serving: str
    #: the node this process started is still starting (alive, lock not held)
    starting: bool
    #: this process holds the spawn lock (it is the one starting a node)
    spawning: bool


class Watch:
    """Decides, from each look at the node, whether to start a node, whether
    to give up on one that did not start, and whether to tell this process's
    clients that a new node serves (pure: no files, no clock)."""

    def __init__(self) -> None:
        self.serving: str | None = None
        self.failures = 0
        self.next_start = 0.0
        self.started_at: float | None = None
        #: since when no node has served (until a new one says it does)
        self.free_since: float | None = None
        #: look more often: no node serves, or a new one has not said so yet
        self.urgent = False

    def step(self, seen: Seen) -> tuple[str, ...]:
        """What to do, in order: ``"nudge"`` (a new node serves: tell the
        clients), ``"done"`` (a node serves: release the spawn lock),
        ``"failed"`` (the node started here never took its lock: kill it if
        it lingers, release the spawn lock), ``"start"`` (take the spawn lock
        if nobody else is starting a node, and start one)."""
        actions: list[str] = []
        if seen.serving and seen.serving != self.serving:
            if self.serving is not None:
                actions.append("nudge")
            self.serving = seen.serving
            self.free_since = None
        if seen.free and self.free_since is None:
            self.free_since = seen.now
        self.urgent = self.free_since is not None and seen.now - self.free_since < START_LIMIT
        if not seen.free:
            self.failures = 0
            if seen.spawning:
                actions.append("done")
            self.started_at = None
            return tuple(actions)
        if seen.spawning:
            if seen.starting and self.started_at is not None:
                if seen.now - self.started_at < START_LIMIT:
                    return tuple(actions)  # ours is starting
            actions.append("failed")
            self.failures += 1
            self.next_start = seen.now + min(BACKOFF_FIRST * 2 ** (self.failures - 1), BACKOFF_MAX)
            self.started_at = None
            return tuple(actions)
        if seen.now >= self.next_start:
            actions.append("start")
        return tuple(actions)

    def started(self, now: float) -> None:
        """A node was started (the spawn lock is ours)."""
        self.started_at = now


# -- the shell ----------------------------------------------------------------
class Client(Protocol):
    """What a site tells the process's clients (``zchannels.client.Client``)."""

    def node_replaced(self) -> None: ...


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _open(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


class Site:
    """This process's view of its scope's node: its claim, the watcher on the
    background loop, the node it started, the clients to tell."""

    def __init__(self, scope: Scope, metrics_endpoint: str | None = None) -> None:
        self.scope = scope
        #: CONFIG metrics_endpoint: the nodes this process starts serve it
        self.metrics_endpoint = metrics_endpoint
        self.endpoint = scope.endpoint
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._clients: list[Client] = []
        self._watch = Watch()
        self._node_fd = _open(scope.lock)
        self._spawn_fd = _open(scope.spawn_lock)
        self._claim_fd: int | None = None
        self._spawning = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._task: Any = None
        #: nodes this process started, for tests and diagnostics
        self.started = 0

    # -- clients ----------------------------------------------------------
    def attach(self, client: Client) -> None:
        """``client`` uses the node: claim it, start it if nobody serves,
        watch it while any client of this process is attached."""
        if self.pid != os.getpid():  # a parent's site, in a forked child
            return
        with self._lock:
            first = not self._clients
            self._clients.append(client)
            if first:
                self._claim()
                self._step()
                self._task = background().submit(self._watching())

    def detach(self, client: Client) -> None:
        if self.pid != os.getpid():  # a parent's site, in a forked child
            return
        with self._lock:
            with contextlib.suppress(ValueError):
                self._clients.remove(client)
            if self._clients:
                return
            if self._task is not None:
                self._task.cancel()
                self._task = None
            if self._claim_fd is not None:
                os.close(self._claim_fd)  # the node may stop once nobody claims it
                self._claim_fd = None
            self._release_spawn()

    def _claim(self) -> None:
        """A shared lock on the claim file: the node does not stop while we
        hold it. It fails only while a node is stopping: wait for it to go."""
        fd = _open(self.scope.claims)
        deadline = time.monotonic() + CLAIM_WAIT
        while not _try_lock(fd, fcntl.LOCK_SH):
            if time.monotonic() > deadline:
                log.warning("%s stays locked: using the node unclaimed", self.scope.claims)
                break
            time.sleep(0.005)
        self._claim_fd = fd

    # -- watching ---------------------------------------------------------
    async def _watching(self) -> None:
        while True:
            await asyncio.sleep(URGENT_INTERVAL if self._watch.urgent else WATCH_INTERVAL)
            with self._lock:
                if not self._clients:
                    return
                self._step()

    def _look(self) -> Seen:
        free = _try_lock(self._node_fd, fcntl.LOCK_SH)
        if free:
            fcntl.flock(self._node_fd, fcntl.LOCK_UN)
        proc = self._proc
        return Seen(
            now=time.monotonic(),
            free=free,
            serving=os.pread(self._node_fd, 200, 0).decode(errors="replace").strip(),
            starting=proc is not None and proc.returncode is None,
            spawning=self._spawning,
        )

    def _step(self) -> None:
        """One look and what follows from it (called under ``_lock``)."""
        seen = self._look()
        for action in self._watch.step(seen):
            if action == "nudge":
                log.info("a new node serves %s", self.endpoint)
                for client in list(self._clients):
                    client.node_replaced()
            elif action == "done":
                self._release_spawn()
            elif action == "failed":
                proc = self._proc
                if proc is not None and proc.returncode is None:
                    proc.kill()  # it never took the lock: hung
                self._release_spawn()
            elif action == "start" and _try_lock(self._spawn_fd, fcntl.LOCK_EX):
                self._spawning = True
                self._start()
                self._watch.started(seen.now)

    def _release_spawn(self) -> None:
        if self._spawning:
            fcntl.flock(self._spawn_fd, fcntl.LOCK_UN)
            self._spawning = False

    def _start(self) -> None:
        """Start a node for the scope: detached (its own session, so a
        Ctrl-C or a worker's death does not reach it), output to the log,
        reaped by a daemon thread."""
        scope = self.scope
        _trim_log(scope.log)
        out = os.open(scope.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            proc = subprocess.Popen(
                [
                    *node_command(),
                    "run",
                    "--client-endpoint",
                    scope.endpoint,
                    "--lock-file",
                    scope.lock,
                    "--claim-file",
                    scope.claims,
                    "--exit-when-idle",
                    str(IDLE_EXIT),
                    "--log-level",
                    "INFO",
                    *metrics_flags(self.metrics_endpoint),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=scope.directory,
                # configured by CONFIG alone: znode reads ZNODE_* variables
                # (zchannels.node.config_sources), and the site's environment may
                # hold those of a znode sidecar (a cluster, a key, a config file)
                env={k: v for k, v in os.environ.items() if not k.startswith("ZNODE_")},
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            log.error("cannot start the shared node: %s", exc)
            return
        finally:
            os.close(out)
        self._proc = proc
        self.started += 1
        log.info("started the shared node for %s (pid %d)", self.endpoint, proc.pid)
        threading.Thread(
            target=_reap, args=(proc, scope.log), name="zchannels-reaper", daemon=True
        ).start()

    # -- fork -------------------------------------------------------------
    def forget_after_fork(self) -> None:
        """In a forked child: close what the parent's site held, without
        unlocking (the locks belong to the parent's open files), and never
        touch them again (the child makes sites of its own)."""
        for fd in (self._node_fd, self._spawn_fd, self._claim_fd):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._node_fd = self._spawn_fd = -1
        self._claim_fd = None
        self._spawning = False
        self._clients = []
        self._task = None
        self._lock = threading.Lock()


def metrics_flags(endpoint: str | None) -> list[str]:
    """``znode run``'s flags for CONFIG metrics_endpoint."""
    return ["--metrics-endpoint", endpoint] if endpoint else []


def node_command() -> list[str]:
    """How this process runs a node: its own interpreter, ``-m zchannels.node``."""
    if not sys.executable:
        raise ConfigError(
            "this Python has no sys.executable to start the shared node with: "
            "run a znode and set CONFIG node"
        )
    return [sys.executable, "-m", "zchannels.node"]


def _reap(proc: subprocess.Popen[bytes], log_path: str) -> None:
    code = proc.wait()
    if code > 0:
        log.warning(
            "the shared node (pid %d) exited with status %d: see %s", proc.pid, code, log_path
        )


def _trim_log(path: str) -> None:
    with contextlib.suppress(OSError):
        if os.path.getsize(path) > LOG_LIMIT:
            os.replace(path, path + ".1")


# -- sites of this process -------------------------------------------------------
_sites: dict[str, Site] = {}
_sites_pid = os.getpid()
_sites_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _sites_lock, _sites_pid
    _sites_lock = threading.Lock()  # a parent's thread may have held it
    for site in _sites.values():
        site.forget_after_fork()
    _sites.clear()
    _sites_pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def site(config: LayerConfig) -> Site:
    """This process's site for ``config``'s scope."""
    scope = resolve(config)
    if _sites_pid != os.getpid():  # forked without os.fork's hooks
        _after_fork_in_child()
    with _sites_lock:
        found = _sites.get(scope.directory)
        if found is None:
            found = _sites[scope.directory] = Site(scope, config.metrics_endpoint)
        return found


def sites() -> dict[str, Site]:
    """This process's sites by directory (for tests and diagnostics)."""
    return dict(_sites)
