"""A hand-run network of pure nodes (``ClusterNode``) for tests: peer
frames arrive ``delay`` seconds after they are sent, in order per link;
each node ticks when its deadline is due; what clients are sent is
recorded as (when, node address, connection, message).

A test changes what the network does to a frame by overriding ``sending``
(as it leaves: kept, changed or lost) or ``reading`` (as the receiver's
decoder would take it).
"""

from __future__ import annotations

import heapq
import random

from zchannels.node.cluster import ClusterNode, Effects
from zchannels.node.config import NodeConfig

from zchannels.protocol import Message


def make_node(
    node_id: str, address: str, seeds: tuple[str, ...], incarnation: int = 1_000_001
) -> ClusterNode:
    """A node of the test preset at ``address`` that finds ``seeds``."""
    config = NodeConfig.test(
        node_id=node_id,
        client_endpoints=("inproc://t",),
        peer_endpoint=address,
        discovery=("none",),
        cluster="t",
        seeds=seeds,
        client_lease=30.0,  # (a test's processes do not ping)
    )
    return ClusterNode(config, address=address, incarnation=incarnation, rng=random.Random(1))


class PureNet:
    def __init__(self, nodes: dict[str, ClusterNode], delay: float) -> None:
        self.nodes = nodes
        self.delay = delay
        self.now = 0.0
        self.queue: list[tuple[float, int, str, bytes]] = []
        self.seq = 0
        self.to_clients: list[tuple[float, str, bytes, Message]] = []

    def sending(self, to: str, frame: bytes) -> bytes | None:
        """``frame`` as it leaves for ``to`` (None: lost)."""
        return frame

    def reading(self, to: str, frame: bytes) -> bytes | None:
        """``frame`` as ``to`` reads it (None: nothing of it)."""
        return frame

    def apply(self, address: str, fx: Effects) -> None:
        for conn, message in fx.clients:
            self.to_clients.append((self.now, address, conn, message))
        for to, frame in fx.peers:
            sent = self.sending(to, frame)
            if sent is None:
                continue
            self.seq += 1
            heapq.heappush(self.queue, (self.now + self.delay, self.seq, to, sent))

    def start(self, address: str, node: ClusterNode) -> None:
        """As the shell starts a node: then its seeds are found."""
        self.apply(address, node.start(self.now))
        for seed in node.config.seeds:
            self.apply(address, node.discovered(seed, self.now))

    def run(self, until: float) -> None:
        while True:
            tick_at = min((n.next_deadline(), a) for a, n in self.nodes.items())
            frame_at = self.queue[0][0] if self.queue else float("inf")
            at = min(tick_at[0], frame_at)
            if at > until:
                self.now = until
                return
            self.now = max(self.now, at)
            if frame_at <= tick_at[0]:
                _, _, to, frame = heapq.heappop(self.queue)
                read = self.reading(to, frame)
                if read is not None and to in self.nodes:
                    self.apply(to, self.nodes[to].peer(read, self.now))
            else:
                address = tick_at[1]
                self.apply(address, self.nodes[address].tick(self.now))
