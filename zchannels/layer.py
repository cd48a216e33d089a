"""``ZeroMQChannelLayer``: the Channels layer Django loads.

Owns: the Channels contract at the Django boundary — name and message
validation (channels' own rules and ``TypeError``s), serializing each user
message once with msgpack, size limits, and mapping node answers to the
exceptions consumers already catch. Does not own: connections, sessions or
the node (``zchannels.client``, ``zchannels.connection``, ``zchannels.node``).

Usage::

    CHANNEL_LAYERS = {"default": {"BACKEND": "zchannels.layer.ZeroMQChannelLayer",
                                  "CONFIG": {}}}          # the site's shared node
    # or "CONFIG": {"node": "ipc:///run/zchannels/znode.sock"}  # znode sidecar
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
from channels.layers import BaseChannelLayer

from . import client as _client
from .codec import decode_ext, encode_ext, unencodable_path
from .config import LayerConfig
from .connection import Connection
from .errors import ForeignChannel, MessageTooLarge
from .names import (
    local_part,
    owner_of,
    require_valid_channel,
    require_valid_group,
    specific_name,
    wire_name,
)
from .protocol import MsgType


class ZeroMQChannelLayer(BaseChannelLayer):  # type: ignore[misc]
    extensions = ["groups", "flush"]

    def __init__(self, **options: Any) -> None:
        self.config = LayerConfig.from_options(options)
        # BaseChannelLayer's attributes, for code that reads them.
        self.expiry = self.config.expiry
        self.capacity = self.config.capacity
        self.channel_capacity = list(self.config.channel_capacity)
        self.group_expiry = self.config.group_expiry
        self.prefix = self.config.prefix
        self._client: _client.Client | None = None
        self._capacities: dict[str, int] = {}
        self._valid_names: set[str] = set()
        #: names send() was called with -> (wire name, capacity)
        self._sendable: dict[str, tuple[str, int]] = {}
        #: names checked for receive() (valid, and ours if '!') -> wire name,
        #: for the client ``_receivable_for``
        self._receivable: dict[str, str] = {}
        self._receivable_for: _client.Client | None = None
        #: (the payload received last, its decoded message once a second
        #: receiver got the same payload object: see ``_decode``)
        self._last_payload: tuple[bytes | None, dict[str, Any] | None] = (None, None)

    # -- plumbing ---------------------------------------------------------
    @property
    def client(self) -> _client.Client:
        client = self._client
        if client is None or client.pid != _client.current_pid:
            # (after a fork the parent's client, sockets and prefetched
            # messages stay the parent's: the child gets its own)
            client = self._client = _client.acquire(self.config)
        return client

    def _conn(self) -> Connection:
        return self.client.connection()

    async def _ready_conn(self) -> Connection:
        """This loop's connection once the node has said its frame limit."""
        conn = self.client.connection()
        if conn.incarnation is None:
            await conn.ready()
        return conn

    def _wire(self, name: str) -> str:
        return wire_name(self.prefix, name)

    # channels' require_valid_*_name (same rules, same TypeErrors) are done in
    # zchannels.names: BaseChannelLayer has them only since channels 4.2.1.
    def require_valid_channel_name(self, name: Any, receive: bool = False) -> bool:
        """channels' own check (same TypeErrors), remembered for names seen
        valid before: it runs on every send and receive."""
        if not receive and isinstance(name, str) and name in self._valid_names:
            return True
        require_valid_channel(name, receive)
        if receive:
            return True
        if len(self._valid_names) > 10_000:
            self._valid_names.clear()
        self._valid_names.add(name)
        return True

    def require_valid_group_name(self, name: Any) -> bool:
        require_valid_group(name)
        return True

    def _capacity(self, channel: str) -> int:
        """``channel_capacity`` matched once per name (the patterns run here,
        in the layer, never in the node)."""
        capacity = self._capacities.get(channel)
        if capacity is None:
            if len(self._capacities) > 10_000:
                self._capacities.clear()
            capacity = self._capacities[channel] = self.config.capacity_for(channel)
        return capacity

    def _encode(self, message: dict[str, Any]) -> bytes:
        try:
            # = codec.packb, inline (see there why a Packer and not msgpack.packb)
            payload: bytes = msgpack.Packer(default=encode_ext, use_bin_type=True).pack(message)
        except (TypeError, ValueError, OverflowError) as exc:
            path = unencodable_path(message)
            raise TypeError(f"message{path} cannot be serialized: {exc}") from None
        limit = self.config.max_message_size
        node_max = self.client.max_frame
        if node_max is not None:
            limit = min(limit, node_max - 1024)  # room for the frame's own fields
        if len(payload) > limit:
            raise MessageTooLarge(len(payload), limit)
        return payload

    # -- the contract -----------------------------------------------------
    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Put ``message`` on ``channel``. Raises ChannelFull at capacity."""
        known = self._sendable.get(channel)
        if known is None:  # (a name sent to before is valid: checked once)
            self.require_valid_channel_name(channel)
            if len(self._sendable) > 10_000:
                self._sendable.clear()
            known = self._sendable[channel] = (self._wire(channel), self._capacity(channel))
        if not isinstance(message, dict):
            raise TypeError(f"message must be a dict, not {type(message).__name__}")
        client = self._client
        if client is None or client.pid != _client.current_pid:
            client = self.client  # (the property, inline: every send)
        conn = client.connection()
        if conn.incarnation is None:
            await conn.ready()
        wire, capacity = known
        payload = self._encode(message)
        if not conn.send_reserved(wire, payload, capacity):
            await conn.send(wire, payload, capacity)

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message of ``channel``; waits as long as it takes.

        Cancelling it loses nothing: a message is only taken by a receive that
        goes on to return it.
        """
        client = self._client
        if client is None or client.pid != _client.current_pid:
            client = self.client  # (the property, inline: every receive)
        known = self._receivable
        wire = known.get(channel) if self._receivable_for is client else None
        if wire is None:
            self.require_valid_channel_name(channel)
            if "!" in channel and not self._ours(channel, client):
                raise ForeignChannel(channel, client.session)
            if self._receivable_for is not client or len(known) > 10_000:
                known.clear()
                self._receivable_for = client
            wire = known[channel] = self._wire(channel)
        conn = client.connection()
        got: Any = conn.receive_step(wire, None)
        while type(got) is not bytes:
            try:
                await got
            except asyncio.CancelledError:
                conn.abandon(wire, got)
                raise
            got = conn.receive_step(wire, got)
        return self._decode(got)

    def _decode(self, payload: bytes) -> dict[str, Any]:
        """The message, decoded once per group message: the members of a
        group_send in this process share one payload object, and each gets
        its own dict (a shallow copy when the message holds no containers,
        so no receiver can change what another sees; else a fresh decode)."""
        last = self._last_payload
        if last[0] is not payload:
            self._last_payload = (payload, None)
            message: dict[str, Any] = msgpack.unpackb(
                payload, raw=False, strict_map_key=False, ext_hook=decode_ext
            )
            return message
        pristine = last[1]
        if pristine is None:
            pristine = msgpack.unpackb(
                payload, raw=False, strict_map_key=False, ext_hook=decode_ext
            )
            if any(isinstance(v, dict | list) for v in pristine.values()):
                pristine = {}  # not flat: decode for each receiver
            self._last_payload = (payload, pristine)
        if pristine:
            return dict(pristine)
        decoded: dict[str, Any] = msgpack.unpackb(
            payload, raw=False, strict_map_key=False, ext_hook=decode_ext
        )
        return decoded

    def _ours(self, channel: str, client: _client.Client) -> bool:
        owner = owner_of(channel)
        return owner is not None and owner[1] == client.session

    async def new_channel(self, prefix: str = "specific") -> str:
        """A process-specific channel name, owned by this process and node."""
        await self._ready_conn()
        client = self.client
        if client.node_tag is None:  # pragma: no cover - ready() sets it
            raise RuntimeError("node did not say its tag")
        name = specific_name(prefix, client.node_tag, client.session, client.next_name_index())
        self.require_valid_channel_name(name)
        return name

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        key = (self._wire(group), self._wire(channel))
        expiry = float(self.config.group_expiry)
        # Recorded first, so a node restart while this is in flight re-adds it.
        capacity = self._capacity(channel)
        self.client.memberships[key] = (time.monotonic() + expiry, capacity)
        await self._conn().request(MsgType.GROUP_ADD, key[0], key[1], expiry, capacity)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``. Returns without waiting for the
        node (a discard needs no answer): a later group_send from this event
        loop never reaches the channel, and one from anywhere else does not
        once the node has the discard, well under a millisecond later on one
        host. (async_to_sync returns only after its loop's connection closed,
        which waits for the node.)"""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        key = (self._wire(group), self._wire(channel))
        self.client.memberships.pop(key, None)
        self._conn().post(MsgType.GROUP_DISCARD, 0, key[0], key[1])

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send to every member; members whose channel is full are skipped
        (and counted by the node), as channels_redis does."""
        self.require_valid_group_name(group)
        if not isinstance(message, dict):
            raise TypeError(f"message must be a dict, not {type(message).__name__}")
        conn = await self._ready_conn()
        await conn.request(MsgType.GROUP_SEND, self._wire(group), self._encode(message))

    async def flush(self) -> None:
        """Forget every queued message and group of this layer's prefix."""
        namespace = self._wire("x")[:-1]
        self.client.memberships = {
            k: v for k, v in self.client.memberships.items() if not k[0].startswith(namespace)
        }
        await self._conn().request(MsgType.FLUSH, self.prefix)

    async def close(self) -> None:
        """Release this layer's connections; using it again reconnects."""
        if self._client is not None:
            client, self._client = self._client, None
            await _client.release(client)

    # -- extensions beyond the spec ---------------------------------------
    async def group_channels(self, group: str) -> list[str]:
        """The channels currently in ``group``."""
        self.require_valid_group_name(group)
        wires = await self._conn().request(MsgType.GROUP_INFO, self._wire(group))
        return sorted(local_part(w) for w in wires)

    async def node_status(self) -> dict[str, Any]:
        """The node's counters and sizes (what ``znode status`` shows)."""
        status: dict[str, Any] = await self._conn().request(MsgType.STATUS)
        return status

    async def drops(self) -> dict[str, int]:
        """Messages and frames the node dropped, by reason: ``full``,
        ``expired``, ``dead_owner`` (its process or node is gone, including
        messages lost with a dead node), ``decode_error`` — the counters
        ``znode status`` shows."""
        status = await self.node_status()
        return {str(k): int(v) for k, v in status["drops"].items()}

    @property
    def counters(self) -> dict[str, int]:
        """Client-side counters of this process (restarts seen, drops)."""
        return dict(self.client.counters)
