"""The node's asyncio shell: one ROUTER socket, a tick timer, and the core.

Owns: the ZeroMQ socket clients talk to, reading frames in drain style (one
wake-up of the event loop reads every frame that is ready, see NOTES.md),
decoding, counting and logging bad input, and sending what ``NodeCore``
returns. Decides nothing: every decision is in ``zchannels.node.core``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import defaultdict
from typing import Any, cast

import zmq

from zchannels.protocol import DecodeError, Message, decode, encode, encode_many, split_batches

from .config import NodeConfig
from .core import CoreSettings, NodeCore, Out
from .finding import PeerFinder
from .membership import first_incarnation
from .peers import PeerMesh
from .replication import GroupReplication
from .routing import Routing

log = logging.getLogger("zchannels.node")

# Plain ints: pyzmq's enum members cost a microsecond per use on the hot path.
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)

#: Frames read in one wake-up before yielding to the loop, so a flood from one
#: client cannot starve ticks (leases) and other work.
_DRAIN_LIMIT = 2048


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
        log.warning(msg + suffix, *args)


class NodeServer:
    """A running node. ``await start()``, then ``await stop()``."""

    def __init__(self, config: NodeConfig, context: zmq.Context[zmq.Socket[bytes]] | None = None):
        self.config = config
        # One incarnation per start, shared by the client protocol (clients
        # notice a restart by it) and the member table (peers do).
        started = first_incarnation(time.time())
        self.incarnation = str(started)
        self.core = NodeCore(
            CoreSettings(
                node_id=config.node_id,
                node_tag=config.node_tag,
                incarnation=self.incarnation,
                lease=config.client_lease,
                max_frame=config.max_frame_size,
                sweep_interval=config.sweep_interval,
                first_seq=time.time_ns() // 1000,
            )
        )
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._rlog = RateLimitedLog(config.log_interval)
        self.mesh: PeerMesh | None = None
        if config.peer_endpoint is not None:
            self.mesh = PeerMesh(
                node_id=config.node_id,
                endpoint=config.peer_endpoint,
                cluster=config.cluster,
                config=config.membership,
                context=self._ctx,
                max_frame=config.max_frame_size,
                incarnation=started,
            )
            self.replication: GroupReplication | None = GroupReplication(
                self.mesh, self.core, self.send
            )
            self.routing: Routing | None = Routing(
                self.mesh, self.core, self.send, self._send_frame
            )
            self.mesh.after_frames = self._after_core
            self.finder: PeerFinder | None = PeerFinder(config, self.mesh)
            self.core.extra_status = self._cluster_status
        else:
            self.replication = None
            self.routing = None
            self.finder = None
            self.core.extra_status = lambda: {
                "cluster": None,
                "members": [
                    {"id": config.node_id, "state": "alive", "incarnation": started, "address": ""}
                ],
            }
        self.endpoints: list[str] = []

    # -- lifecycle -------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # A send to a client that has gone raises instead of vanishing, so
        # its deliveries are put back for other receivers.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A restarted client reusing its identity takes over at once (libzmq #2892).
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # Unbounded queues: deliveries are bounded by client credit and
        # replies by requests, so HWM drops would only lose messages.
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        # Frames up to twice the limit are read, then dropped and counted as
        # "oversized"; libzmq cuts off a sender of anything bigger.
        sock.setsockopt(zmq.MAXMSGSIZE, 2 * self.config.max_frame_size)
        try:
            for endpoint in self.config.client_endpoints:
                if endpoint.startswith("ipc://"):
                    _prepare_ipc_path(endpoint[len("ipc://") :])
                sock.bind(endpoint)
                self.endpoints.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        except zmq.ZMQError:
            sock.close(0)
            raise
        self._sock = sock
        if self.mesh is not None:
            try:
                await self.mesh.start()
            except zmq.ZMQError:
                sock.close(0)
                raise
            if self.replication is not None:
                self.replication.start()
            if self.routing is not None:
                self.routing.start()
            if self.finder is not None:
                await self.finder.start()
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self._tick_task = asyncio.create_task(self._ticker(), name="znode-tick")
        log.info(
            "node %s (incarnation %s) serving clients on %s",
            self.config.node_id,
            self.incarnation,
            ", ".join(self.endpoints),
        )
        # Frames may already be waiting; the edge-triggered FD won't say so.
        self._loop.call_soon(self._on_readable)

    async def stop(self) -> None:
        if self.finder is not None:
            await self.finder.stop()
        if self.replication is not None:
            await self.replication.stop()
        if self.routing is not None:
            await self.routing.stop()
        if self.mesh is not None:
            await self.mesh.stop()
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
            self._tick_task = None
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close(0)
            self._sock = None
            for endpoint in self.endpoints:
                if endpoint.startswith("ipc://"):
                    with contextlib.suppress(OSError):
                        os.unlink(endpoint[len("ipc://") :])
        log.info("node %s stopped", self.config.node_id)

    # -- I/O -------------------------------------------------------------
    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(_DRAIN_LIMIT):
            if not cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
                return
            frames = sock.recv_multipart(_NOBLOCK)
            self._on_frames(frames)
        # More is waiting: come back after other callbacks had their turn.
        if self._loop is not None:
            self._loop.call_soon(self._on_readable)

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self._dropped("shape", frames[0] if frames else b"?", f"{len(frames)} frames")
            return
        conn, frame = frames
        try:
            messages = decode(frame, self.config.max_frame_size)
        except DecodeError as exc:
            self._dropped(exc.reason, conn, str(exc))
            return
        self.send(self.core.handle(conn, messages, time.monotonic()))
        self._after_core()

    def _after_core(self) -> None:
        """In a cluster: carry out what the core left for the other nodes
        (count changes, group_sends, sends to their channels)."""
        if self.replication is not None:
            self.replication.after_core()
        if self.routing is not None:
            self.routing.after_core()
        if self.replication is not None and (self.core.held_acks or self.core.fanouts):
            self.replication.after_core()  # (routing's relays may have added some)

    def drops(self) -> dict[str, int]:
        """Messages and frames dropped, by reason: the core's, plus what the
        cluster lost (queued on dead nodes, relays never answered) and
        malformed peer frames."""
        drops = self.core.drops()
        if self.routing is not None and self.mesh is not None:
            rc, mc = self.routing.counters, self.mesh.counters
            drops["dead_owner"] += rc["lost_in_dead_nodes"] + rc["lost_unanswered"]
            drops["decode_error"] += mc["decode_errors"] + rc["bad_relay"]
        return drops

    def _cluster_status(self) -> dict[str, Any]:
        mesh, replication, routing = self.mesh, self.replication, self.routing
        if mesh is None or replication is None or routing is None:
            return {}
        mine = {**routing.load(), "drops": self.drops()}
        nodes = {**routing.loads, self.config.node_id: mine}
        status = {**mesh.status(), **replication.status(), **routing.status()}
        for member in status["members"]:
            load = nodes.get(member["id"], {}) if member["state"] in ("alive", "suspect") else {}
            member["channels"] = load.get("channels")
            member["queued"] = load.get("queued")
        status["nodes"] = {n: nodes[n] for n in sorted(nodes)}
        status["drops"] = mine["drops"]
        return status

    def _dropped(self, reason: str, conn: bytes, detail: str) -> None:
        self.core.decode_error(reason)
        self._rlog.warning(
            "decode:" + reason, "dropped a malformed frame from %r (%s)", conn[:32], detail
        )

    def _send_frame(self, conn: bytes, frame: bytes) -> bool:
        """One frame to one client; False if it has gone."""
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.send_multipart((conn, frame), _NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            return False
        return True

    def send(self, out: list[Out]) -> None:
        sock = self._sock
        if sock is None or not out:
            return
        routing = self.routing
        if routing is not None and routing.has_virtual:
            # Answers for clients of other nodes go back through them.
            virtual = [o for o in out if routing.is_virtual(o[0])]
            if virtual:
                routing.send_back(virtual)
                out = [o for o in out if not routing.is_virtual(o[0])]
                if not out:
                    return
        if len(out) == 1:  # the common case (an ACK, one delivery): no grouping
            conn, (mtype, fields) = out[0]
            try:
                sock.send_multipart((conn, encode(mtype, *fields)), _NOBLOCK)
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                self.send(self.core.undeliverable(conn, [out[0][1]], time.monotonic()))
            return
        by_conn: dict[bytes, list[Message]] = {}
        for conn, message in out:
            by_conn.setdefault(conn, []).append(message)
        for conn, messages in by_conn.items():
            chunks = split_batches(messages)
            for i, chunk in enumerate(chunks):
                try:
                    sock.send_multipart((conn, encode_many(chunk)), _NOBLOCK)
                except zmq.ZMQError as exc:
                    if exc.errno != zmq.EHOSTUNREACH:
                        raise
                    # The client is gone: put back what it would have received.
                    unsent = [m for rest in chunks[i:] for m in rest]
                    self.send(self.core.undeliverable(conn, unsent, time.monotonic()))
                    break

    async def _ticker(self) -> None:
        interval = self.config.tick_interval
        while True:
            await asyncio.sleep(interval)
            self.send(self.core.tick(time.monotonic()))
            self._after_core()


def _prepare_ipc_path(path: str) -> None:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
