"""The process's side of a session with a node.

Owns: the session tag that names this process to its node, the connection of
each event loop, the group memberships this process made (so it can assert
them again on a restarted node), the keeper that renews the session lease, and
client-side counters. One ``Client`` per process per layer configuration;
layer instances with equal configurations share it (``acquire``/``release``).
Does not own: socket I/O (``zchannels.connection``), the node: the site's
shared node (``zchannels.shared``) or an embedded one (``zchannels.embedded``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import zmq

from .background import background
from .config import LayerConfig
from .connection import CLOSE_TIMEOUT, Connection
from .errors import NodeUnavailable
from .keys import read_key_file
from .names import SESSION_TAG_LEN, random_tag
from .protocol import MsgType

if TYPE_CHECKING:
    from . import shared

log = logging.getLogger("zchannels.layer")


class Client:
    def __init__(self, config: LayerConfig) -> None:
        self.config = config
        self.pid = os.getpid()
        self.session, self._names = session_of(config)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        #: the site's shared node (CONFIG without node or cluster)
        self._site: shared.Site | None = None
        if config.node is None and config.cluster is None:
            from . import shared  # (flock: POSIX; only clients of a shared node load it)

            self._site = shared.site(config)
            self.endpoint = self._site.endpoint
        elif config.node is None or config.node == "embedded":
            from . import embedded  # only now: other clients never load the node

            self.endpoint = embedded.endpoint(config)
        else:
            self.endpoint = config.node
        #: the cluster key a tcp:// znode wants (CONFIG key_file; the first file)
        self.key = read_key_file(config.key_file[0]) if config.key_file else None
        self.counters: collections.Counter[str] = collections.Counter()
        self.refs = 0
        self._lock = threading.Lock()
        self._conns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Connection] = (
            weakref.WeakKeyDictionary()
        )
        self._conn_index = itertools.count()
        # The last (loop, connection) used: a strong reference to one loop,
        # replaced as soon as another loop uses this client.
        self._last: tuple[asyncio.AbstractEventLoop, Connection] | None = None
        #: (wire group, wire channel) -> (expires_at (monotonic), capacity)
        self.memberships: dict[tuple[str, str], tuple[float, int]] = {}
        # What the node said in WELCOME.
        self.node_tag: str | None = None
        self.incarnation: str | None = None
        self.lease = 3.0
        #: largest frame the node accepts (from WELCOME); None until known
        self.max_frame: int | None = None
        self._keeper: Any = None
        self._closed = False
        if self._site is not None:
            self._site.attach(self)  # claims the node, starts it if nobody serves

    # -- connections ------------------------------------------------------
    def connection(self) -> Connection:
        """This event loop's connection (made on first use)."""
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0] is loop and not last[1].closed:
            return last[1]  # the common case, without a weakref lookup
        conn = self._conns.get(loop)
        if conn is None or conn.closed:
            with self._lock:
                self._sweep_closed_loops()
                conn = Connection(self, loop, next(self._conn_index))
                self._conns[loop] = conn
            if self._keeper is None:
                self._start_keeper()
        self._last = (loop, conn)
        return conn

    def forget(self, conn: Connection) -> None:
        with self._lock:
            for loop, c in list(self._conns.items()):
                if c is conn:
                    del self._conns[loop]

    def open_connections(self) -> int:
        return sum(1 for c in self._conns.values() if not c.closed)

    def _sweep_closed_loops(self) -> None:
        """Connections whose loops were closed by hand (no asyncio.run, no
        layer.close()) finish closing on the background loop: what they had
        prefetched goes back to the node, in order; no other loop is touched."""
        bg = None
        for loop, conn in list(self._conns.items()):
            if loop.is_closed():
                del self._conns[loop]
                if self._last is not None and self._last[1] is conn:
                    self._last = None
                if bg is None:
                    bg = background().loop
                conn.orphan(bg)

    # -- names ------------------------------------------------------------
    def next_name_index(self) -> int:
        return next(self._names)

    # -- what the node said -----------------------------------------------
    def on_welcome(
        self,
        by: Connection,
        node_tag: str,
        incarnation: str,
        lease: float,
        max_frame: int,
        lost: bool,
    ) -> None:
        """A connection was welcomed. ``lost``: it had found the node without
        our session (restarted, or our lease lapsed while we were stopped)."""
        with self._lock:
            previous = self.incarnation
            self.node_tag, self.incarnation = node_tag, incarnation
            self.lease, self.max_frame = lease, max_frame
            others = [c for c in self._conns.values() if c is not by and not c.closed]
        restarted = previous is not None and previous != incarnation
        if not (restarted or lost):
            return
        if restarted:
            log.warning("node at %s restarted: re-registering this process", self.endpoint)
            self.counters["node_restarts"] += 1
        else:
            log.warning(
                "node at %s had dropped this process's session: re-registering", self.endpoint
            )
            self.counters["sessions_lost"] += 1
        # (a restart: a connection already welcomed by the new node is done)
        restarted_as = incarnation if restarted else None
        for conn in others:
            loop = conn._loopref()
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(conn.rehello, True, restarted_as)
        background().submit(self._reassert())

    def node_replaced(self) -> None:
        """Another node now serves our endpoint (``zchannels.shared`` saw it
        start): every connection pings, so each hears at once that the new
        node does not know it, says HELLO again and gets its receives and
        memberships back, without waiting for the keeper's next ping. (A
        ping waits in the socket until it has reconnected.)"""
        with self._lock:
            conns = [c for c in self._conns.values() if not c.closed]
        for conn in conns:
            loop = conn._loopref()
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # closed meanwhile
                    loop.call_soon_threadsafe(_ping, conn)

    async def _reassert(self) -> None:
        """Add every membership this process holds again (the node forgot)."""
        conn = self.connection()
        now = time.monotonic()
        with self._lock:
            held = [
                (g, c, exp - now, cap)
                for (g, c), (exp, cap) in self.memberships.items()
                if exp > now
            ]
        await asyncio.gather(
            *(conn.request(MsgType.GROUP_ADD, g, c, left, cap) for g, c, left, cap in held),
            return_exceptions=True,
        )
        log.info("re-asserted %d group memberships", len(held))

    # -- keeper -----------------------------------------------------------
    def _start_keeper(self) -> None:
        with self._lock:
            if self._keeper is not None or self._closed:
                return
            self._keeper = background().submit(self._keep())

    async def _keep(self) -> None:
        """Renew the session lease: a ping every lease/3 from a thread of its
        own, so a busy or idle event loop never lets the lease lapse."""
        conn = self.connection()
        while not self._closed:
            if conn.incarnation is None:
                # Not welcomed yet: the lease is not known. (HELLO is queued
                # and goes out whenever the node is there.)
                with contextlib.suppress(NodeUnavailable):
                    await conn.ready()
                continue
            conn.ping()
            with self._lock:
                self._sweep_closed_loops()
            await asyncio.sleep(self.lease / 3)

    # -- lifecycle --------------------------------------------------------
    async def aclose(self) -> None:
        """End the session: every connection gives back what it prefetched and
        says BYE (the node drops the session, and so this process's group
        memberships, when the last one has), the keeper stops."""
        self._closed = True
        if self._site is not None:
            self._site.detach(self)  # (the node stays while our session does)
        with self._lock:
            conns = list(self._conns.items())
        current = asyncio.get_running_loop()
        bg = background().loop
        keeper_conn = None
        for loop, conn in conns:
            if loop is current:
                await conn.aclose()
            elif loop is bg:
                keeper_conn = conn  # closed last, and waited for
            elif loop.is_closed():
                self.forget(conn)
                conn.orphan(bg)
            else:
                with contextlib.suppress(RuntimeError):  # its loop stopped meanwhile
                    loop.call_soon_threadsafe(conn.close_now)
        if self._keeper is not None:
            self._keeper.cancel()
        if keeper_conn is not None and current is not bg:
            done = asyncio.run_coroutine_threadsafe(keeper_conn.aclose(final=True), bg)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.wrap_future(done), CLOSE_TIMEOUT * 2)


def _ping(conn: Connection) -> None:
    if not conn.closed:
        conn.ping()


# -- sharing clients between layer instances of one process -----------------
_clients: dict[LayerConfig, Client] = {}
#: one session tag per configuration for the life of the process: a layer
#: closed and used again keeps the names its new_channel() made
_sessions: dict[LayerConfig, tuple[str, itertools.count[int]]] = {}
_clients_pid = os.getpid()
_clients_lock = threading.RLock()
#: this process's id, kept by a fork hook: the layer compares it with its
#: client's on every send and receive, and ``os.getpid()`` is a system call
current_pid = os.getpid()


def _after_fork_in_child() -> None:
    global current_pid
    current_pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_fork() -> None:
    global _clients_pid
    if _clients_pid != os.getpid():  # forked: the parent's clients are not ours
        _clients.clear()
        _sessions.clear()
        _clients_pid = os.getpid()


def session_of(config: LayerConfig) -> tuple[str, itertools.count[int]]:
    """This process's session tag for ``config``, and the counter of its
    new_channel() names."""
    with _clients_lock:
        _check_fork()
        session = _sessions.get(config)
        if session is None:
            session = _sessions[config] = (random_tag(SESSION_TAG_LEN), itertools.count())
        return session


def acquire(config: LayerConfig) -> Client:
    with _clients_lock:
        _check_fork()
        client = _clients.get(config)
        if client is None:
            client = _clients[config] = Client(config)
        client.refs += 1
        return client


async def release(client: Client) -> None:
    with _clients_lock:
        client.refs -= 1
        if client.refs > 0:
            return
        if _clients.get(client.config) is client:
            del _clients[client.config]
    await client.aclose()
