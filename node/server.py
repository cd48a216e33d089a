"""The node's asyncio shell: the client sockets, the peer sockets, one timer.

Owns: the ZeroMQ sockets clients talk to, reading frames in drain style (one
wake-up of the event loop reads every frame that is ready, see NOTES.md),
decoding client frames, counting and logging bad input, feeding every event
to the pure ``ClusterNode`` (``zchannels.node.cluster``) with the time, and
carrying out the ``Effects`` it returns: frames to clients and peers, log
lines. One timer fires at the node's ``next_deadline()``. Decides nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import zmq

from zchannels.keys import Keyring
from zchannels.protocol import (
    DecodeError,
    Message,
    MsgType,
    decode,
    encode,
    encode_many,
    split_batches,
)

from .cluster import ClusterNode, Effects
from .config import NodeConfig
from .core import NodeCore, Out
from .held_record import RecordFile, record_path, take_record
from .life_note import take_note, write_note
from .lifetime import Claims, IdleRule, NodeLock
from .membership import EventKind, MemberEvent, first_incarnation
from .routing import RESTART_GAP
from .security import HandshakeWatch, admission, check_bind_policy, serve_with

if TYPE_CHECKING:  # the cluster's sockets load only in a cluster (a node's start time)
    from .finding import PeerFinder
    from .http_endpoint import OpsEndpoint
    from .metrics import FrameLatency
    from .peers import PeerMesh

log = logging.getLogger("zchannels.node")

# Plain ints: pyzmq's enum members cost a microsecond per use on the hot path.
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE) | _NOBLOCK

#: Frames queued to one client before it counts as gone (it is not reading).
_CLIENT_SNDHWM = 100_000
#: Send errors that mean "this client is gone": disconnected, or not reading.
_GONE = (zmq.EHOSTUNREACH, zmq.EAGAIN)
#: Connection ids of clients on the CurveZMQ socket start with this and are
#: never 5 bytes long (libzmq's own ids are 5 bytes starting with NUL; a
#: plain-socket client choosing an id that starts with NUL is refused), and
#: routing's virtual connections start with b"\x00zr".
_SECURE = b"\x00s"
#: Frames read in one wake-up before yielding to the loop, so a flood from one
#: client cannot starve ticks (leases) and other work.
_DRAIN_LIMIT = 2048
#: Member events that may announce a peer's new life.
_NEW_LIFE = frozenset({EventKind.JOINED, EventKind.ALIVE, EventKind.UPDATED})
#: Seconds without a peer frame after which a node that left stops passing
#: on what its peers send (they have all heard of the leave by then: it
#: reaches each directly, in well under this on a LAN).
LINGER_QUIET = 0.1


class RateLimitedLog:
    """Logs the first event of a kind, then at most one summary per interval."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = defaultdict(int)

    def warning(self, kind: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._suppressed[kind] += 1
            return
        self._last[kind] = now
        more = self._suppressed.pop(kind, 0)
        suffix = f" (+{more} more since last report)" if more else ""
        # (structured fields for --log-format json: what happened, how often)
        log.warning(msg + suffix, *args, extra={"event": kind, "suppressed": more})


class NodeServer:
    """A running node. ``await start()``, then ``await stop()``."""

    def __init__(self, config: NodeConfig, context: zmq.Context[zmq.Socket[bytes]] | None = None):
        self.config = config
        # One incarnation per start, shared by the client protocol (clients
        # notice a restart by it) and the member table (peers do).
        started = first_incarnation(time.time())
        self.node = ClusterNode(
            config,
            address=config.peer_endpoint or "",
            incarnation=started,
            rng=random.Random(),
        )
        self.node.shell_status = self._shell_status
        self._ctx = context or zmq.Context.instance()
        #: the cluster keys (``--key-file``); None: no key, loopback only
        self.keyring: Keyring | None = Keyring.load(config.key_files) if config.key_files else None
        self._sock: zmq.Socket[bytes] | None = None
        #: with a key: the CurveZMQ socket of the tcp:// client endpoints;
        #: its clients' connection ids carry the ``_SECURE`` prefix
        self._secure: zmq.Socket[bytes] | None = None
        self._secure_watch: HandshakeWatch | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: the socket whose read loop runs now (it looks for more frames after
        #: every one), if any
        self._reading: zmq.Socket[bytes] | None = None
        self._stopping = False
        #: set while draining, once every client has said MOVING
        self._drained: asyncio.Event | None = None
        #: a client asked for a drain and a stop (``znode drain``)
        self.stop_wanted = asyncio.Event()
        #: when the last peer frame arrived (the leave lingers until quiet)
        self._peer_heard = 0.0
        #: each peer's incarnation as last seen (a new one: it restarted)
        self._lives: dict[str, int] = {}
        self._rlog = RateLimitedLog(config.log_interval)
        self.mesh: PeerMesh | None = None
        #: called with every member event (the metrics endpoint counts them)
        self.member_listeners: list[Callable[[MemberEvent], None]] = []
        self.finder: PeerFinder | None = None
        if config.peer_endpoint is not None:
            from .peers import PeerMesh

            self.mesh = PeerMesh(
                node_id=config.node_id,
                endpoint=config.peer_endpoint,
                context=self._ctx,
                max_frame=config.max_frame_size,
                on_frame=self._on_peer_frame,
                after_frames=self._rearm,
                keyring=self.keyring,
            )
        self.endpoints: list[str] = []
        #: the lock file held while this node lives (``lock_file``)
        self.lock: NodeLock | None = None
        self._claims: Claims | None = None
        #: what this life holds, kept where a SIGKILL leaves it
        #: (``held_record``; with a ``state_dir``, clustered)
        self._held_file: RecordFile | None = None
        self._idle = IdleRule(config.exit_when_idle) if config.exit_when_idle > 0 else None
        #: set once the node has been unused for ``exit_when_idle`` seconds
        #: (no session, no claim): ``znode run`` then stops it
        self.idle = asyncio.Event()
        #: /metrics, /healthz, /readyz (``metrics_endpoint``), and the
        #: per-frame latency it reports; None when not served
        self.ops: OpsEndpoint | None = None
        self.latency: FrameLatency | None = None
        if config.metrics_endpoint is not None:
            from .http_endpoint import OpsEndpoint

            self.ops = OpsEndpoint(self)
            self.latency = self.ops.latency

    # -- lifecycle -------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        config = self.config
        check_bind_policy(
            config.exposed_endpoints(), keyed=self.keyring is not None, insecure=config.insecure
        )
        if config.lock_file is not None:
            # Before binding: an ipc bind takes the path over from whoever had it.
            self.lock = await NodeLock.take(config.lock_file)
        if config.state_dir is not None and self.mesh is not None:
            # (after the lock: a node that loses it must not take the note)
            note = take_note(
                config.state_dir, config.node_id, time.time(), config.membership.dead_keep
            )
            if note is not None:
                self.node.previous_life(note, time.monotonic())
                log.info("the last life of this node (%d) left cleanly: telling peers", note.life)
            # (a record with no note: the last process died holding what it
            # says; with a note it left, and its record is stale)
            record = take_record(
                config.state_dir, config.node_id, time.time(), config.membership.dead_keep
            )
            if record is not None and note is None:
                self.node.previous_crash(
                    record.life,
                    record.held,
                    record.links,
                    time.monotonic(),
                    record.conns,
                    record.flights,
                    record.parked,
                )
                log.warning(
                    "the last life of this node (%d) died holding %d messages (counted "
                    "lost here), and %d in frames its peers had not acknowledged (asking "
                    "them how far they took them); %d client connections' reserved sends "
                    "are checked as they come back",
                    record.life,
                    record.held + record.links.lump,
                    record.links.units() - record.links.lump,
                    len(record.conns),
                )
            try:
                self._held_file = RecordFile(record_path(config.state_dir, config.node_id))
            except OSError as exc:
                log.warning("could not keep the held record in %s: %s", config.state_dir, exc)
        try:
            if config.claim_file is not None:
                self._claims = Claims(config.claim_file)
            if self.ops is not None:  # (after the lock: a node that loses it binds nothing)
                self.ops.start()
            await self._bind_and_serve(self._loop)
        except BaseException:
            if self.ops is not None:
                self.ops.stop()
            if self._held_file is not None:
                self._held_file.close()
                self._held_file = None
            self._release_locks()
            raise
        if self.lock is not None:
            self.lock.announce(f"{os.getpid()} {self.incarnation}\n")

    async def _bind_and_serve(self, loop: asyncio.AbstractEventLoop) -> None:
        config = self.config
        plain = list(config.client_endpoints)
        secure: list[str] = []
        if self.keyring is not None:  # tcp:// clients must hold the cluster key
            secure = [e for e in plain if not e.startswith(("ipc://", "inproc://"))]
            plain = [e for e in plain if e.startswith(("ipc://", "inproc://"))]
        self._sock = self._client_socket(plain, None)
        if secure:
            try:
                self._secure = self._client_socket(secure, self.keyring)
            except zmq.ZMQError:
                self._sock.close(0)
                raise
            self._secure_watch = HandshakeWatch(self._secure, loop, "client")
        sock = self._sock
        if self.mesh is not None:
            from .finding import PeerFinder

            try:
                address = self.mesh.start()
            except zmq.ZMQError:
                self._close_client_sockets()
                raise
            self.node.bind(address)
            self.finder = PeerFinder(
                config,
                address=address,
                incarnation=self.node.incarnation,
                keyring=self.keyring,
                discovered=self._discovered,
            )
            self._apply(self.node.start(time.monotonic()))
            log.info("node %s in cluster %r, peers on %s", config.node_id, config.cluster, address)
            await self.finder.start()
        else:
            self._apply(self.node.start(time.monotonic()))
        loop.add_reader(sock.fileno(), self._on_readable)
        if self._secure is not None:
            loop.add_reader(self._secure.fileno(), self._on_readable, True)
            loop.call_soon(self._on_readable, True)
        self._rearm()
        log.info(
            "node %s (incarnation %s) serving clients on %s",
            self.config.node_id,
            self.incarnation,
            ", ".join(self.endpoints),
        )
        # Frames may already be waiting; the edge-triggered FD won't say so.
        loop.call_soon(self._on_readable)

    async def drain(self, within: float) -> bool:
        """Tell every client this node is going away (``DRAIN``) and wait, at
        most ``within`` seconds, until each has given back what it held,
        had its requests answered and said ``MOVING``: it then holds what it
        sends until a node (the restarted one) welcomes it. True if all did."""
        if self._sock is None or self._drained is not None:
            return True
        began = time.monotonic()
        self._drained = asyncio.Event()
        self._apply(self.node.drain(began))
        self._check_drained()
        try:
            await asyncio.wait_for(self._drained.wait(), within)
        except TimeoutError:
            log.warning(
                "drain: %d connections had not moved after %g s; stopping anyway",
                len(self.core.sessions.by_conn) - len(self.core.moved),
                within,
            )
            return False
        log.info(
            "drained: %d connections moved in %.3f s",
            len(self.core.moved),
            time.monotonic() - began,
        )
        return True

    def _check_drained(self) -> None:
        if self._drained is not None and not self._drained.is_set() and self.node.drained():
            self._drained.set()

    async def stop(self) -> None:
        if self.ops is not None:
            self.ops.stop()
        if self.finder is not None:
            await self.finder.stop()
        if self.mesh is not None:
            # hand everything over, say LEFT: the last frames to peers; then
            # pass on what peers still send here until they have all heard
            self._apply(self.node.leave(time.monotonic()))
            await self._linger()
            lost = self.node.gone(time.monotonic())
            if lost:
                log.warning(
                    "leave: %d handed-over or relayed messages never acknowledged by a peer: "
                    "lost, counted dead_owner %s",
                    lost,
                    self.node.drops(),
                )
            note = self.node.life_note(time.time())
            if note is not None and self.config.state_dir is not None:
                try:  # (after its last count: the next life tells its peers)
                    write_note(self.config.state_dir, note)
                except OSError as exc:
                    log.warning(
                        "could not write the life note in %s: %s", self.config.state_dir, exc
                    )
            if self._held_file is not None:
                self._held_file.remove()  # (it left: nothing held for the next)
                self._held_file = None
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.mesh is not None:
            self.mesh.close()
        self._close_client_sockets()
        self._release_locks()
        log.info("node %s stopped", self.config.node_id)

    def _release_locks(self) -> None:
        # The node's lock first: a process that waits for the claim file
        # then finds no node, and starts one at once.
        if self.lock is not None:
            self.lock.release()
        if self._claims is not None:
            self._claims.release()

    def _client_socket(self, endpoints: list[str], keyring: Keyring | None) -> zmq.Socket[bytes]:
        """A ROUTER bound to ``endpoints``; with ``keyring``, a CurveZMQ server
        admitting holders of the cluster key only."""
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # A send to a client that has gone raises instead of vanishing, so
        # its deliveries are put back for other receivers.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A restarted client reusing its identity takes over at once (libzmq #2892).
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # Deliveries are bounded by client credit and replies by requests; a
        # client that sends requests but never reads its replies reaches
        # this bound, and is then treated as gone (ROUTER_MANDATORY makes the
        # send fail with EAGAIN instead of dropping silently).
        sock.setsockopt(zmq.SNDHWM, _CLIENT_SNDHWM)
        sock.setsockopt(zmq.RCVHWM, 0)
        # Frames up to twice the limit are read, then dropped and counted as
        # "oversized"; libzmq cuts off a sender of anything bigger.
        sock.setsockopt(zmq.MAXMSGSIZE, 2 * self.config.max_frame_size)
        if keyring is not None:
            domain = f"clients:{self.config.node_id}"
            admission(self._ctx).allow(domain, keyring.publics)
            serve_with(sock, keyring, domain)
        try:
            for endpoint in endpoints:
                if endpoint.startswith("ipc://"):
                    _prepare_ipc_path(endpoint[len("ipc://") :])
                sock.bind(endpoint)
                bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
                if bound.startswith("ipc://"):  # only this user's processes may connect
                    os.chmod(bound[len("ipc://") :], 0o600)
                self.endpoints.append(bound)
        except zmq.ZMQError:
            sock.close(0)
            raise
        return sock

    def _close_client_sockets(self) -> None:
        if self._secure_watch is not None:
            self._secure_watch.close()
            self._secure_watch = None
        for sock in (self._sock, self._secure):
            if sock is not None:
                if self._loop is not None:
                    self._loop.remove_reader(sock.fileno())
                sock.close(0)
        self._sock = self._secure = None
        for endpoint in self.endpoints:
            if endpoint.startswith("ipc://"):
                with contextlib.suppress(OSError):
                    os.unlink(endpoint[len("ipc://") :])
        self.endpoints = []

    def refused(self) -> dict[str, int]:
        """Connections refused for want of the cluster key, by socket."""
        watches = [w for w in (self._secure_watch, *self._peer_watches()) if w is not None]
        return {w.what: w.refused for w in watches}

    def _security_status(self) -> dict[str, Any]:
        keyring = self.keyring
        return {
            "security": {
                "keyed": keyring is not None,
                "fingerprints": [k.fingerprint for k in keyring.keys] if keyring else [],
                "insecure": self.config.insecure,
                "refused": self.refused(),
            }
        }

    def _peer_watches(self) -> list[HandshakeWatch | None]:
        return [self.mesh.watch] if self.mesh is not None else []

    def _shell_status(self) -> dict[str, Any]:
        """What only the shell knows: security, the peer sockets' counters."""
        return {**self._security_status(), **(self.mesh.status() if self.mesh else {})}

    @property
    def core(self) -> NodeCore:
        return self.node.core

    @property
    def incarnation(self) -> str:
        """This life's incarnation, as clients see it (a fence starts another)."""
        return str(self.node.incarnation)

    # -- I/O -------------------------------------------------------------
    def _on_readable(self, secure: bool = False) -> None:
        """Read every frame that is ready on the plain (or the CurveZMQ) socket."""
        sock = self._secure if secure else self._sock
        if sock is None:
            return
        self._reading = sock
        try:
            for _ in range(_DRAIN_LIMIT):
                if not cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
                    return
                frames = sock.recv_multipart(_NOBLOCK)
                if secure:
                    frames[0] = _SECURE + frames[0]
                elif frames[0][:1] == b"\x00" and len(frames[0]) != 5:
                    # A client-chosen id posing as one of ours (virtual or
                    # secure connections start with NUL; libzmq's own ids
                    # are 5 bytes).
                    self._dropped("identity", frames[0], "reserved connection id")
                    continue
                self._on_frames(frames)
        finally:
            self._reading = None
        # More is waiting: come back after other callbacks had their turn.
        if self._loop is not None:
            self._loop.call_soon(self._on_readable, secure)

    def _read_soon(self, reading: zmq.Socket[bytes] | None = None) -> None:
        """After frames went to clients from outside the read loop (a peer's
        relay, a timer): sending on a socket can consume its FD's edge for
        client frames that arrived meanwhile (the FD is edge-triggered), and
        they would wait, unread, for the next frame on another pipe; look
        now. (The read loop of ``reading`` looks after every frame anyway;
        a send to a CurveZMQ client from the plain socket's loop, or the
        reverse, can consume the other socket's edge.)"""
        loop = self._loop
        if loop is None:
            return
        for secure, sock in ((False, self._sock), (True, self._secure)):
            if sock is None or sock is reading:
                continue
            if cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
                loop.call_soon(self._on_readable, secure)

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self._dropped("shape", frames[0] if frames else b"?", f"{len(frames)} frames")
            return
        conn, frame = frames
        now = time.monotonic()
        try:
            messages = decode(frame, self.config.max_frame_size)
        except DecodeError as exc:
            self._dropped(exc.reason, conn, str(exc))
            return
        try:
            self._apply(self.node.client(conn, messages, now))
            if self._drained is not None:
                self._check_drained()
            if self.core.stop_requested and not self.stop_wanted.is_set():
                log.info("a client asked this node to drain and stop")
                self.stop_wanted.set()
            if self.latency is not None:
                self.latency.observe(time.monotonic() - now)
        except zmq.ZMQError:
            raise
        except Exception:  # a bug must cost one frame, never the node
            self.core.decode_error("internal")
            log.exception("error handling a frame from %r (dropped)", conn[:32])
        if self.mesh is not None:
            self._rearm()

    async def _linger(self) -> None:
        """After LEFT: keep passing on what peers send (relays sent before
        they heard of the leave, answers to what this node passed on) until
        nothing is pending here and no peer frame came for ``LINGER_QUIET``
        seconds, at most ``linger_limit`` (asked again each time: it grows
        while a frame sent since waits for its acknowledgement)."""
        began = time.monotonic()
        while True:
            now = time.monotonic()
            quiet = now - max(self._peer_heard, began) >= LINGER_QUIET
            if now - began >= self.node.linger_limit():
                log.warning(
                    "leave: still busy after %.2f s; closing (%s; peers quiet: %s)",
                    now - began,
                    self.node.busy_with(),
                    quiet,
                )
                return
            if quiet and not self.node.passing_on():
                return
            await asyncio.sleep(LINGER_QUIET / 4)

    def _on_peer_frame(self, frame: bytes) -> None:
        self._peer_heard = time.monotonic()
        try:
            self._apply(self.node.peer(frame, time.monotonic()))
        except zmq.ZMQError:
            raise
        except Exception:  # a bug must cost one frame, never the peer socket
            self.node.counters["handler_errors"] += 1
            log.exception("error handling a peer frame (dropped)")

    def _discovered(self, endpoint: str) -> None:
        """Discovery found a peer at ``endpoint``."""
        if self.mesh is not None and self.mesh.may_discover():
            self._apply(self.node.discovered(endpoint, time.monotonic()))
            self._rearm()

    def _apply(self, fx: Effects) -> None:
        """Carry out one step's effects: client frames, peer frames, logs;
        then what the clients that had gone bounced (``send``)."""
        held_file = self._held_file
        if held_file is not None:
            # (before the step's frames leave: a SIGKILL finds it as new)
            kept = self.node.held_record()
            if kept is not None:
                held_file.write(kept, time.time())
        bounced: list[tuple[bytes, list[Message]]] = []
        if fx.clients:
            bounced = self.send(fx.clients)
            if self._reading is None or self._secure is not None:
                self._read_soon(self._reading)
        mesh = self.mesh
        if mesh is not None:
            for event in fx.events:
                if event.kind in _NEW_LIFE and event.node != self.config.node_id:
                    before = self._lives.get(event.node)
                    self._lives[event.node] = event.incarnation
                    if before is not None and event.incarnation - before >= RESTART_GAP:
                        # A restarted peer (not a refutation: that is the
                        # same process): the socket to its address is
                        # backing off from the old process's end (up to a
                        # second); a fresh one connects at once.
                        mesh.forget(event.address)
            for address, frame in fx.peers:
                mesh.send(address, frame)
            for event in fx.events:
                if event.kind == EventKind.REAPED:
                    mesh.forget(event.address)
                _log_event(event)
                for listener in self.member_listeners:
                    listener(event)
        for conn, unsent in bounced:
            self._apply(self.node.undeliverable(conn, unsent, time.monotonic()))

    def drops(self) -> dict[str, int]:
        """Messages and frames dropped, by reason (``ClusterNode.drops``)."""
        return self.node.drops()

    def _dropped(self, reason: str, conn: bytes, detail: str) -> None:
        self.core.decode_error(reason)
        self._rlog.warning(
            "decode:" + reason, "dropped a malformed frame from %r (%s)", conn[:32], detail
        )

    def _send_frame(self, conn: bytes, frame: bytes) -> bool:
        """One frame to one client; False if it has gone."""
        sock, conn = self._target(conn)
        if sock is None:
            return False
        try:
            _send_to(sock, conn, frame)
        except zmq.ZMQError as exc:
            self._gone(conn, exc)
            return False
        return True

    def _gone(self, conn: bytes, exc: zmq.ZMQError) -> None:
        """A send to ``conn`` failed: it disconnected, or it does not read
        (its queue is full: cut off and counted). Anything else is a bug."""
        if exc.errno not in _GONE:
            raise exc
        if exc.errno == zmq.EAGAIN:
            self.core.counters.slow_clients += 1
            self._rlog.warning(
                "slow", "cut off client %r: %d replies queued unread", conn[:32], _CLIENT_SNDHWM
            )

    def send(self, out: list[Out]) -> list[tuple[bytes, list[Message]]]:
        """Frames to this node's clients; returns, per client that has gone,
        what it would have received, for ``ClusterNode.undeliverable`` once
        the rest of the step's frames are out (``_apply``). Put back and
        delivered to another client at once, its messages went out ahead of
        what that client was handed before them in the same step, and the
        client's reports, made in the order it took them, released the
        wrong ones: the node's flight held two for good (simulation seed
        8683 without kills, 8 ops: plans/deliveries-bounced-by-a-dead-
        client-sent-after-the-step-that-handed-them.json)."""
        sock = self._sock
        if sock is None or not out:
            return []
        if len(out) == 1:  # the common case (an ACK, one delivery): no grouping
            conn, (mtype, fields) = out[0]
            if self._secure is not None:
                target, ident = self._target(conn)
                if target is None:
                    return []
                sock = target
            else:
                ident = conn
            try:
                _send_to(sock, ident, encode(mtype, *fields))
            except zmq.ZMQError as exc:
                self._gone(conn, exc)
                return [(conn, [out[0][1]])]
            return []
        by_conn: dict[bytes, list[Message]] = {}
        for conn, message in out:
            by_conn.setdefault(conn, []).append(message)
        # Every frame is encoded before the first is sent, so they leave
        # back to back (the first send wakes libzmq's I/O thread, which may
        # take this thread's core: the frames to a group_send's other
        # processes should not wait for that behind their encoding).
        ready = []
        for conn, messages in by_conn.items():
            chunks = split_batches(coalesce(messages) if len(messages) > 1 else messages)
            target, ident = self._target(conn) if self._secure is not None else (sock, conn)
            if target is not None:
                ready.append((conn, target, ident, chunks, [encode_many(c) for c in chunks]))
        bounced: list[tuple[bytes, list[Message]]] = []
        for conn, target, ident, chunks, frames in ready:
            for i, frame in enumerate(frames):
                try:
                    _send_to(target, ident, frame)
                except zmq.ZMQError as exc:
                    self._gone(conn, exc)
                    # The client is gone: what it would have received goes back.
                    bounced.append((conn, [m for rest in chunks[i:] for m in rest]))
                    break
        return bounced

    def _target(self, conn: bytes) -> tuple[zmq.Socket[bytes] | None, bytes]:
        """The socket a connection id belongs to, and its identity there."""
        if conn[:2] == _SECURE and len(conn) != 5:  # (a libzmq id may start so)
            return self._secure, conn[2:]
        return self._sock, conn

    # -- the one timer ----------------------------------------------------
    def _rearm(self) -> None:
        """(Re)arm the timer for the node's next deadline."""
        loop = self._loop
        if loop is None or self._stopping:
            return
        deadline = self.node.next_deadline()
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = time.monotonic()
        try:
            self._apply(self.node.tick(now))
        except zmq.ZMQError:
            raise
        except Exception:  # a bug must cost one tick, never the timers
            self.node.counters["timer_errors"] += 1
            log.exception("node timers: error (carrying on)")
        if self._idle is not None:
            self._check_idle(self._idle, now)
        if self._drained is not None:
            self._check_drained()
        self._rearm()

    def _check_idle(self, rule: IdleRule, now: float) -> None:
        """``exit_when_idle``: unused (no session, no claim) for that long,
        the node seizes the claim file and says it is done (``idle``)."""
        if self.idle.is_set():
            return
        claims = self._claims
        in_use = len(self.core.sessions) > 0 or (claims is not None and claims.held())
        if not rule.observe(now, in_use):
            return
        if claims is not None and not claims.seize():
            rule.observe(now, True)  # a process claimed it this instant
            return
        log.info("no clients for %g s: stopping", rule.after)
        self.idle.set()


def coalesce(messages: list[Message]) -> list[Message]:
    """One connection's messages of one step, with each run of DELIVERs of
    one channel as one DELIVER: ``DELIVER(c, [a]), DELIVER(c, [b])`` means
    to a connection what ``DELIVER(c, [a, b])`` means (the items in order,
    credit used by each), so a step that took a burst of sends to one
    receiving channel sends the channel's name once, and the receiver
    decodes and dispatches one message, not one per item."""
    out: list[Message] = []
    ours: set[int] = set()  # indexes in out of DELIVERs whose items list is ours
    for message in messages:
        if message[0] == MsgType.DELIVER and out:
            last = out[-1]
            if last[0] == MsgType.DELIVER and last[1][0] == message[1][0]:
                i = len(out) - 1
                if i not in ours:
                    out[i] = last = (MsgType.DELIVER, (last[1][0], list(last[1][1])))
                    ours.add(i)
                last[1][1].extend(message[1][1])
                continue
        out.append(message)
    return out


def _send_to(sock: zmq.Socket[bytes], ident: bytes, frame: bytes) -> None:
    """``sock.send_multipart((ident, frame), NOBLOCK)`` without its cost:
    pyzmq's send_multipart combines ``SNDMORE | flags`` as enum flags, about
    10 µs per frame on the 2-core machines of docs/benchmarks.md (a frame
    whose identity is refused raises before its body is sent, as there)."""
    sock.send(ident, _MORE_NOBLOCK)
    sock.send(frame, _NOBLOCK)


def _log_event(event: MemberEvent) -> None:
    level = logging.WARNING if event.kind in (EventKind.DEAD, EventKind.REFUSED) else logging.INFO
    log.log(
        level,
        "member %s %s (%s)%s",
        event.node,
        event.kind.value,
        event.address,
        f": {event.reason}" if event.reason else "",
    )


def _prepare_ipc_path(path: str) -> None:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
