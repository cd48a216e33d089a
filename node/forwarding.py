"""Sends to channels that live on another node of the cluster.

Owns: forwarding a client's send to a ``new_channel()`` name of another node
(the node its tag names) as ``PEER_SEND``, answering the client with that
node's answer (queued, or ChannelFull), and the receiving side: queueing a
forwarded send locally. A send whose owner node is not a live member is
dropped and counted (at-most-once), as is one whose owner does not answer
within ``timeout`` (it died meanwhile). Does not own: plain channel names
(owned by rendezvous hashing: still local in this version).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from zchannels.names import owner_of
from zchannels.protocol import ErrorCode, Message, MsgType, encode

from .core import NodeCore, Out
from .ownership import tag_of
from .peers import PeerMesh

log = logging.getLogger("zchannels.node")


class Forwarding:
    def __init__(
        self,
        mesh: PeerMesh,
        core: NodeCore,
        send: Callable[[list[Out]], None],
        *,
        timeout: float = 5.0,
    ) -> None:
        self.mesh = mesh
        self.core = core
        self._send_out = send
        self.timeout = timeout
        self._ids = itertools.count(1)
        #: fid -> (client connection, request id, channel, deadline)
        self._pending: dict[int, tuple[bytes, int, str, float]] = {}
        self._tags: dict[str, str] = {}  # node id -> tag, memoized
        self._task: asyncio.Task[None] | None = None
        self.lost = 0

    def start(self) -> None:
        self.mesh.handlers[MsgType.PEER_SEND] = self._on_send
        self.mesh.handlers[MsgType.PEER_SEND_RESULT] = self._on_result
        self._task = asyncio.create_task(self._expire(), name="znode-forwarding")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def after_core(self) -> None:
        forwards, self.core.forwards = self.core.forwards, []
        out: list[Out] = []
        for conn, req, channel, payload, capacity, ttl in forwards:
            owner = owner_of(channel)
            node = self._node_with_tag(owner[0]) if owner is not None else None
            if node is None:
                self.core.counters.dropped_dead_owner += 1
                if req:
                    out.append((conn, (MsgType.ACK, (req, 0))))
                continue
            fid = next(self._ids)
            if req:
                self._pending[fid] = (conn, req, channel, time.monotonic() + self.timeout)
            frame = encode(
                MsgType.PEER_SEND, fid, self.mesh.node_id, channel, payload, capacity, ttl
            )
            self.mesh.send_to(node, frame)
        if out:
            self._send_out(out)

    def _node_with_tag(self, tag: str) -> str | None:
        for node in self.mesh.live_peers():
            known = self._tags.get(node)
            if known is None:
                known = self._tags[node] = tag_of(node)
            if known == tag:
                return node
        return None

    # -- peer messages -------------------------------------------------------
    def _on_send(self, f: tuple[Any, ...], now: float) -> None:
        fid, origin, channel, payload, capacity, ttl = f
        code, out = self.core.send_from_peer(channel, payload, capacity, float(ttl), now)
        self._send_out(out)
        self.mesh.send_to(origin, encode(MsgType.PEER_SEND_RESULT, fid, code))

    def _on_result(self, f: tuple[Any, ...], _now: float) -> None:
        fid, code = f
        pending = self._pending.pop(fid, None)
        if pending is None:
            return
        conn, req, channel, _ = pending
        reply: Message = (
            (MsgType.ERROR, (req, ErrorCode.CHANNEL_FULL, channel))
            if code == 1
            else (MsgType.ACK, (req, 0))
        )
        self._send_out([(conn, reply)])

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(self.timeout / 4)
            now = time.monotonic()
            late = [fid for fid, p in self._pending.items() if p[3] <= now]
            out: list[Out] = []
            for fid in late:
                conn, req, _, _ = self._pending.pop(fid)
                self.lost += 1
                out.append((conn, (MsgType.ACK, (req, 0))))
            if late:
                log.warning("%d forwarded sends unanswered (owner died?): counted lost", len(late))
                self._send_out(out)
