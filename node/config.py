"""Node configuration: one frozen dataclass, presets, and nothing else.

Every field is float seconds or a count, with why its default is what it is.
``znode run`` flags map one-to-one onto these fields; tests pick a preset
instead of patching constants.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass, field, replace
from typing import Any

from zchannels.discovery.sources import parse_sources

from .membership import MembershipConfig


def default_node_id() -> str:
    """The host name: one sidecar per host, so it names the node well."""
    return socket.gethostname() or "node"


def default_state_dir() -> str:
    """``zchannels`` in the runtime dir (``$XDG_RUNTIME_DIR`` or /tmp):
    where ``znode run`` keeps its socket and its ``state_dir``."""
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return f"{base}/zchannels"


def default_client_endpoint() -> str:
    """An ipc socket in ``default_state_dir``."""
    return f"ipc://{default_state_dir()}/znode.sock"


#: The peer port ``znode run --cluster NAME`` listens on when no
#: ``--peer-endpoint`` is given.
DEFAULT_PEER_PORT = 7701


def lan_address() -> str:
    """This host's LAN address: the first non-loopback IPv4 address of an
    interface that is up (``ifaddr``, which zeroconf uses too)."""
    import ifaddr

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                return ip.ip
    raise OSError("no non-loopback IPv4 address: give --peer-endpoint tcp://HOST:PORT")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    #: This node's id; shown to operators and hashed into ``node_tag``.
    node_id: str = field(default_factory=default_node_id)
    #: ZeroMQ endpoints where Django processes connect (ipc://, tcp://, inproc://).
    client_endpoints: tuple[str, ...] = field(default_factory=lambda: (default_client_endpoint(),))
    #: Seconds a client process may stay silent before its session (its
    #: process-specific channels and group memberships) is dropped. Clients
    #: ping every lease/3, so 3 s tolerates two lost pings and still meets
    #: "a dead process's members vanish within a few seconds".
    client_lease: float = 3.0
    #: Seconds between lease checks: bounds how late past its lease a dead
    #: client is noticed.
    tick_interval: float = 0.1
    #: Seconds between sweeps of expired messages and memberships (expiry is
    #: also checked at every delivery, so this only bounds memory).
    sweep_interval: float = 1.0
    #: Largest frame (bytes) a client may send. A larger one is dropped and
    #: counted; one over twice this size makes libzmq cut the sender off
    #: (ZMQ_MAXMSGSIZE), which then reconnects. Layers learn it in WELCOME
    #: and refuse bigger messages with MessageTooLarge before sending.
    max_frame_size: int = 8 * 1024 * 1024
    #: Seconds between two log lines about the same kind of dropped input.
    log_interval: float = 5.0
    #: Where other nodes reach this one (``tcp://HOST:PORT``; port 0 picks a
    #: free one). None: a node of its own, in no cluster.
    peer_endpoint: str | None = None
    #: Peer endpoints to join through; any one live seed is enough, the rest
    #: of the cluster is learned from it.
    seeds: tuple[str, ...] = ()
    #: The cluster's name: nodes of another cluster are refused.
    cluster: str = "zchannels"
    #: Failure detection timings (SWIM/Lifeguard): see ``MembershipConfig``.
    membership: MembershipConfig = field(default_factory=MembershipConfig.lan)
    #: Seconds within which a client request relayed to another node (a send
    #: to a channel another node owns) is answered: by the owner, or else by
    #: this node, which then answers that a send's outcome is unknown
    #: (``SendOutcomeUnknown``), and the owner refuses such a send if it
    #: arrives later than 3/4 of this (its sender has been told it may not
    #: have been taken, and newer sends may have overtaken it:
    #: ``routing.Routing.fresh_within``). None:
    #: tied to failure detection, the longest suspicion timeout of the
    #: current cluster size plus two probe intervals (2.4 s in a 3-node LAN
    #: cluster), so a dead owner is normally declared dead first.
    relay_timeout: float | None = None
    #: Seconds after its origin sent it beyond which a relayed send is
    #: refused by its owner as late (at most 3/4 of the answer bound
    #: above). A send waiting on an owner this node declared dead is
    #: answered (``SendOutcomeUnknown``) once it is this old plus
    #: ``RELAY_FRESH_MARGIN``: the owner can no longer take it, so the
    #: client's next send, to the channel's new owner, cannot be overtaken;
    #: so a channel serves again within a second of its owner's death
    #: being declared (issue 11 defect 3), not when the answer bound ends.
    relay_fresh_for: float = 0.6
    #: Seconds between two load reports (channels, queued, drops) a node
    #: sends to every peer, for ``znode status`` and for counting what a
    #: dying node held.
    load_interval: float = 1.0
    #: Seconds the member view must stay still before messages that a race
    #: left on a node that does not own them are handed to their owners
    #: (longer than a death takes to reach every member by gossip).
    stray_sweep_delay: float = 1.0
    #: Seconds a group_add's answer waits for the live peers to acknowledge
    #: the change, before it is answered anyway (anti-entropy then carries it).
    group_ack_timeout: float = 0.5
    #: Seconds between two group digests sent to a random peer (anti-entropy:
    #: a lost delta or a healed partition converges within about this).
    anti_entropy_interval: float = 1.0
    #: Seconds a starting cluster member that expects peers (a seed other
    #: than itself, or a discovery source) holds its clients' requests and
    #: its peers' relays until it has joined (seen another live member):
    #: alone, it would take every channel as its own and queue messages
    #: others own. A restarted node usually joins in milliseconds; one with
    #: nobody to join serves alone after this. It is also the most the node
    #: holds them in all: joined, it waits for its peers' handovers only
    #: until this long after its start.
    join_timeout: float = 2.0
    #: Seconds a node waits before acknowledging the cluster messages a
    #: peer's link brought (``links``): acknowledgements of a burst share a
    #: frame; short beside ``link_retransmit``.
    link_ack_delay: float = 0.02
    #: Seconds a peer link waits for the acknowledgement of its oldest frame
    #: before it sends every frame not yet acknowledged again (``links``).
    #: TCP under the link resends lost packets itself (from 0.2 s on
    #: Linux), so the link only has to cover a connection that broke; a
    #: shorter wait sends copies of frames that are merely slow on a lossy
    #: link (in the simulation, 0.25 s doubled the copies' head-of-line
    #: delays and failed more schedules than it fixed). Below the failure
    #: detection of ``lan`` (1.3-1.8 s), so a short break costs about a
    #: second, not a message.
    link_retransmit: float = 1.0
    #: Seconds a node holds the sends other nodes relay straight to it for
    #: a channel that has just become its own (``routing``): a send its
    #: client made just before may still reach the channel's previous
    #: owner and be passed on here (two hops), and must be queued first.
    #: Covers the pass-on's extra hop; a send held longer than this is
    #: queued anyway.
    relay_hold: float = 0.05
    #: How peers are found besides ``seeds``, one or more of: "mdns"
    #: (announce and browse ``_zchannels._tcp.local.``: a LAN),
    #: "dns:NAME[:PORT]" (NAME's A/AAAA records, each a peer on PORT,
    #: default ``DEFAULT_PEER_PORT``), "dns-srv:NAME" (SRV records: hosts and
    #: ports), or just "none" (seeds only). The DNS ones are for containers
    #: and clouds, where multicast does not pass (a Kubernetes headless
    #: Service, a Compose service name). Only in a cluster (``peer_endpoint``
    #: set). See ``zchannels.discovery.sources``.
    discovery: tuple[str, ...] = ("mdns",)
    #: Seconds between two resolutions of each DNS name of ``discovery``: a
    #: node added to the name is in every member table within this time plus
    #: ~0.1 s, once the DNS server serves its record (``tests/test_dns_lan.py``;
    #: a caching server adds up to its TTL: 30 s in Kubernetes' default
    #: CoreDNS setup). 5 s, as libcluster's DNS strategies poll: a starting
    #: node resolves the name itself and finds the others at once, so this
    #: matters mostly when several start together; and 100 nodes asking every
    #: 5 s are 20 queries/s, nothing for a cluster DNS. A lookup never runs on
    #: the event loop, so a slow DNS server delays only the next resolution.
    dns_interval: float = 5.0
    #: IP addresses of the interfaces mDNS announces and listens on. Empty:
    #: the peer endpoint's own address, or every interface when it has none.
    interfaces: tuple[str, ...] = ()
    #: Cluster key files (``znode keygen``): the first is served, all are
    #: admitted (two during a rollover). Peers and tcp:// clients then use
    #: CurveZMQ, and only holders of a key get in.
    key_files: tuple[str, ...] = ()
    #: Allow listening beyond loopback without a key (loudly logged).
    insecure: bool = False
    #: Channels one client process may make exist (by sending or receiving);
    #: past it, requests on new channels fail with LimitExceeded.
    max_client_channels: int = 100_000
    #: Group memberships one client process may hold.
    max_client_group_entries: int = 100_000
    #: A file the node holds an exclusive lock (``flock``) on for its whole
    #: life, taken before it binds: a second node given the same file exits
    #: at once (status 0: the first one serves), so nodes started by racing
    #: processes end up as one, and never take each other's ipc socket. The
    #: kernel releases it when the process ends, SIGKILL included, so "the
    #: lock is held" means "a node serves". The node writes its pid and
    #: incarnation into it. None: no lock (a sidecar its supervisor runs once).
    lock_file: str | None = None
    #: A directory where the node notes, as its process ends after a clean
    #: stop, that its life left (``life_note``), and reads that note as the
    #: next process starts: its load reports then tell the peers, so a peer
    #: that never heard the leave (a partition, packet loss) does not count
    #: that life's last reported queue as lost in a dead node, on top of what
    #: the leaving node counted itself. None: no note; a node that leaves
    #: heard by no peer leaves what its last report covers to them to count
    #: (an estimate). ``znode run`` uses the runtime dir's ``zchannels``.
    state_dir: str | None = None
    #: Seconds without clients after which the node stops by itself; 0:
    #: never. No clients: no session, and nobody holds a claim on
    #: ``claim_file``. The node ``CONFIG = {}`` starts uses 5 s, so processes
    #: of the site that restart (the autoreloader, a recycled worker) find
    #: it still there.
    exit_when_idle: float = 0.0
    #: Seconds a stopping node (SIGTERM, SIGINT, ``znode drain``) waits for
    #: its clients to move before it leaves anyway: it tells each DRAIN, and
    #: each gives back what it prefetched, has its requests answered and then
    #: holds what it sends until the next node on its endpoint (the restarted
    #: one) welcomes it. Usually milliseconds. 0: no drain (clients find the
    #: node gone, as after a crash).
    drain_timeout: float = 10.0
    #: A file client processes hold a shared lock on while they use the node,
    #: taken before they connect: the node counts as unused only when it can
    #: take the file exclusively, and stops holding it, so a process that is
    #: connecting is never left talking to a node that is leaving. None:
    #: sessions alone say whether the node is in use.
    claim_file: str | None = None
    #: ``HOST:PORT`` where the node serves ``/metrics`` (Prometheus),
    #: ``/healthz`` and ``/readyz`` over HTTP (port 0: a free one). None: not
    #: served. Loopback only unless ``metrics_insecure``.
    metrics_endpoint: str | None = None
    #: Allow ``metrics_endpoint`` beyond loopback. Its own switch, not
    #: ``insecure``: exposing read-only figures to a monitoring network must
    #: not also allow serving peers and clients without a key.
    metrics_insecure: bool = False
    #: Seconds a cluster member's view (who is alive or suspect) must stay
    #: unchanged before ``/readyz`` says ready again: ownership moves and
    #: group counts converge in milliseconds, and a member that flaps keeps
    #: the node unready. 2 s: longer than a ``lan`` suspicion usually lasts
    #: before it is refuted, well under a prober's usual failure threshold
    #: (Kubernetes: 3 failures 10 s apart).
    ready_settle: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.discovery, str):  # one spelling given as a bare string
            object.__setattr__(self, "discovery", (self.discovery,))
        parse_sources(self.discovery)  # ValueError names the accepted spellings
        if not (isinstance(self.dns_interval, int | float) and self.dns_interval > 0):
            raise ValueError(
                f"dns_interval must be a positive number of seconds, got {self.dns_interval!r}"
            )
        if self.metrics_endpoint is not None:
            from .http_endpoint import parse_address

            parse_address(self.metrics_endpoint)  # ValueError says the spelling

    def exposed_endpoints(self) -> list[str]:
        """Every endpoint the node listens on (what the bind policy checks)."""
        return [*self.client_endpoints, *([self.peer_endpoint] if self.peer_endpoint else [])]

    @property
    def node_tag(self) -> str:
        digest = hashlib.sha256(self.node_id.encode()).digest()
        return digest.hex()[:6]

    @classmethod
    def lan(cls, **overrides: Any) -> NodeConfig:
        """Production defaults for a host on a LAN."""
        return replace(cls(), **overrides)

    @classmethod
    def test(cls, **overrides: Any) -> NodeConfig:
        """Fast leases for tests: a dead client is dropped within ~1 s; DNS
        names are re-resolved twice a second; ready 0.5 s after a change."""
        fast = cls(
            client_lease=0.9,
            tick_interval=0.05,
            sweep_interval=0.2,
            membership=MembershipConfig.test(),
            dns_interval=0.5,
            ready_settle=0.5,
        )
        return replace(fast, **overrides)
