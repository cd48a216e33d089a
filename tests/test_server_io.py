"""The node's socket shell: client frames are read however the node was woken.

A ZeroMQ socket's file descriptor is edge-triggered: it signals that the
socket's state *may* have changed, and any operation on the socket — a send
included — can consume that signal. Frames that arrived while the node was
sending from outside its read loop (answering a peer's relay, a timer) must
still be read at once, not when the next frame on another pipe happens to
wake the socket. Seen from outside as 0.25 to 2.4 s stalls of a receive whose
credit withdrawal went through another node (the cancellation storm of
test_cluster_channels), and a CI run that timed out at 60 s.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import zmq
from zchannels.node.cluster import Effects
from zchannels.node.config import NodeConfig
from zchannels.node.server import NodeServer

from zchannels.protocol import MsgType, decode, encode

#: what the test client calls itself (libzmq's own ids are 5 bytes, never NUL-led)
IDENT = b"probe"


async def answers(
    client: zmq.Socket[bytes], n: int, within: float
) -> tuple[list[tuple[MsgType, tuple[object, ...]]], float]:
    """The first ``n`` messages the node sends ``client`` (fewer if ``within``
    seconds pass first), and the seconds it took; the node's loop runs."""
    got: list[tuple[MsgType, tuple[object, ...]]] = []
    start = time.monotonic()
    while len(got) < n and time.monotonic() - start < within:
        if client.poll(0):
            got.extend(decode(client.recv()))
        else:
            await asyncio.sleep(0.002)
    return got, time.monotonic() - start


async def test_a_frame_that_arrived_while_the_node_sent_elsewhere_is_read(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/node.sock"
    server = NodeServer(NodeConfig(client_endpoints=(endpoint,)))
    await server.start()
    ctx = zmq.Context.instance()
    client = ctx.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.setsockopt(zmq.ROUTING_ID, IDENT)
    client.connect(endpoint)
    try:
        # Known to the node first (its pipe is up), answered: the loop is idle.
        client.send(encode(MsgType.PING))
        first, _ = await answers(client, 1, 5.0)
        assert [m[0] for m in first] == [MsgType.RESET], first  # (no session: RESET)

        def elsewhere() -> None:
            # One callback of the node's loop, as a peer frame's or a timer's:
            # a client frame arrives meanwhile, then the node sends (here: an
            # unasked PONG, as it would send a relayed delivery).
            client.send(encode(MsgType.PING))
            time.sleep(0.05)  # (the frame reaches the node's socket)
            server._apply(Effects(clients=[(IDENT, (MsgType.PONG, (server.incarnation,)))]))

        asyncio.get_running_loop().call_soon(elsewhere)
        got, took = await answers(client, 2, 3.0)
        print(f"the PING that arrived during a send was answered after {took * 1000:.1f} ms")
        # The unasked PONG, then the answer to the second PING — with no other
        # traffic to wake the socket.
        assert [m[0] for m in got] == [MsgType.PONG, MsgType.RESET], (
            f"the frame sent during the node's send was not read in 3 s: {got}"
        )
    finally:
        client.close(0)
        await server.stop()
