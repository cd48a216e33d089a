"""Discovery by DNS on a real LAN, against a real DNS server.

Hosts are network namespaces on a bridge (``tests/netns.py``); the fourth
host runs dnsmasq (``tests/dns_server.py``) serving the zone ``zc.test``, and
every other host resolves through it alone (its own ``/etc/resolv.conf``).
Each cluster host runs a real ``znode run --discovery dns:...`` (or
``dns-srv:...``) with a short re-resolution interval; records are added and
removed while the cluster runs. mDNS is off (``--discovery`` replaces it), so
DNS is the only way these nodes meet.

The node added to the name runs ``--discovery none``: it resolves nothing
itself, so it can only be found by the others' re-resolution, which is what
the join time measures (from the moment the DNS server serves its record).
Figures are printed. Needs root, iproute2 and dnsmasq; without them the
tests fail and say so.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from dns_server import ZONE, DnsServer
from netns import Host, Lan, lan_for_test
from zchannels.node.cli import query

from zchannels.keys import write_key_file
from zchannels.protocol import MsgType

pytestmark = pytest.mark.slow

#: The re-resolution interval these nodes run with (``--dns-interval``):
#: short, so the test is quick; the bound below is stated in intervals.
INTERVAL = 1.0
#: A node added to the name must be in every member table within one
#: interval; the slack covers the state exchange (a new CurveZMQ connection),
#: one gossip round and a loaded two-core machine. Measured: 0.5-1.0 s after
#: the record was served, of which ~0.1 s is the exchange.
JOIN_SLACK = 0.5
#: Seconds a node may take to print its ready line.
START_WITHIN = 30.0
#: The name listing the cluster (A records) and its SRV name.
PEERS = f"peers.{ZONE}"
SRV = f"_zchannels._tcp.{ZONE}"


class DnsNode:
    """A ``znode`` on one LAN host, logging at INFO to a file."""

    def __init__(self, host: Host, folder: Path, *discovery: str, port: int = 7701) -> None:
        self.host = host
        self.id = host.name
        self.endpoint = f"ipc://{folder}/{host.name}.sock"
        self.peer = f"tcp://{host.ip}:{port}"
        self.log = folder / f"{host.name}.log"
        key = folder / "cluster.key"
        if not key.exists():
            write_key_file(key)
        argv = [
            sys.executable,
            *("-m", "zchannels.node", "run", "--preset", "lan"),
            *("--cluster", "dns-test", "--node-id", self.id, "--peer-endpoint", self.peer),
            *("--client-endpoint", self.endpoint, "--key-file", str(key)),
            *("--dns-interval", str(INTERVAL), "--log-level", "INFO"),
        ]
        for spec in discovery:
            argv += ["--discovery", spec]
        with self.log.open("w") as log:
            self.proc = host.run(argv, stdout=subprocess.PIPE, stderr=log, text=True)

    def ready(self) -> DnsNode:
        line: list[str] = []
        out = self.proc.stdout
        reader = threading.Thread(target=lambda: line.append(out.readline() if out else ""))
        reader.start()
        reader.join(START_WITHIN)
        if not line or not line[0]:
            self.proc.kill()
            reader.join()
            pytest.fail(f"znode on {self.id} not ready in {START_WITHIN:g} s: {self.log_tail()}")
        ready = json.loads(line[0])
        assert ready["ready"] is True and ready["peer"] == self.peer, ready
        return self

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = query(self.endpoint, MsgType.STATUS, timeout=2.0)
        return result

    def alive(self) -> set[str]:
        return {m["id"] for m in self.status()["members"] if m["state"] == "alive"}

    def logged(self, text: str) -> bool:
        return text in self.log.read_text()

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text().splitlines()[-lines:])


def agreed(nodes: list[DnsNode], ids: set[str]) -> bool:
    return all(n.alive() == ids for n in nodes)


def start(*nodes: DnsNode) -> list[DnsNode]:
    """Started together, then each waited for: Python starts in parallel."""
    return [node.ready() for node in nodes]


@pytest.fixture
def lan() -> Iterator[Lan]:
    with lan_for_test(4, "zdns") as built:
        yield built


@pytest.fixture
def dns(lan: Lan, tmp_path: Path) -> Iterator[DnsServer]:
    server_host = lan.hosts[3]
    for host in lan.hosts[:3]:
        host.use_nameserver(server_host.ip)
    server = DnsServer(server_host, tmp_path)
    yield server
    server.stop()  # the LAN's teardown would too; this is sooner


def test_a_node_added_to_the_name_joins_within_one_interval_and_a_removed_one_stays(
    lan: Lan, dns: DnsServer, tmp_path: Path
) -> None:
    h1, h2, h3 = lan.hosts[:3]
    dns.set_addresses({PEERS: [h1.ip, h2.ip]})
    dns.start()
    nodes = start(
        DnsNode(h1, tmp_path, f"dns:{PEERS}"),
        DnsNode(h2, tmp_path, f"dns:{PEERS}"),
        DnsNode(h3, tmp_path, "none"),  # found only by the others' re-resolution
    )
    first, second, added = nodes
    wait_for(lambda: agreed([first, second], {"h1", "h2"}), 15, "h1 and h2 to meet by DNS")
    assert added.alive() == {"h3"}, "h3 is not in the name yet: nobody can know it"

    dns.set_addresses({PEERS: [h1.ip, h2.ip, h3.ip]})  # returns once served
    took = wait_for(lambda: agreed(nodes, {"h1", "h2", "h3"}), 5 * INTERVAL, "h3 to join")
    print(
        f"\nnode added to dns:{PEERS} in every member table {took:.3f} s after its record "
        f"was served (re-resolution interval {INTERVAL:g} s)"
    )
    assert took < INTERVAL + JOIN_SLACK, f"join took {took:.2f} s (interval {INTERVAL:g} s)"
    # each of h1 and h2 finds h3 by its own next resolution (whichever was
    # first told the other by gossip)
    found = f"found peer {added.peer} (dns:{PEERS})"
    for node in (first, second):
        wait_for(lambda n=node: n.logged(found), 2 * INTERVAL, f"{node.id} to resolve h3")

    # h2 leaves the name but keeps running: logged, and still a member
    dns.set_addresses({PEERS: [h1.ip, h3.ip]})
    vanished = f"discovery lost peer {second.peer} (dns:{PEERS}"
    took = wait_for(lambda: first.logged(vanished), 3 * INTERVAL, "h1 to log that h2 left the name")
    print(f"h2's record removal seen by h1 after {took:.3f} s; h2 stays a member")
    end = time.monotonic() + 2 * INTERVAL  # two more resolutions: nothing changes
    while time.monotonic() < end:
        assert agreed(nodes, {"h1", "h2", "h3"}), [n.status()["members"] for n in nodes]
        time.sleep(0.1)


def test_srv_records_give_hosts_and_ports(lan: Lan, dns: DnsServer, tmp_path: Path) -> None:
    h1, h2, h3 = lan.hosts[:3]
    names = {f"{h.name}.{ZONE}": [h.ip] for h in (h1, h2, h3)}
    dns.set_addresses(names)
    # peers on ports other than the default: only the SRV records say where
    dns.set_srv({SRV: [(f"h1.{ZONE}", 7801), (f"h2.{ZONE}", 7802)]})
    dns.start()
    nodes = start(
        DnsNode(h1, tmp_path, f"dns-srv:{SRV}", port=7801),
        DnsNode(h2, tmp_path, f"dns-srv:{SRV}", port=7802),
        DnsNode(h3, tmp_path, "none", port=7803),
    )
    wait_for(lambda: agreed(nodes[:2], {"h1", "h2"}), 15, "h1 and h2 to meet by SRV")

    # dnsmasq reads SRV records only at start: it restarts (a lookup may
    # fail meanwhile, which must change nothing)
    restart = time.monotonic()
    dns.set_srv({SRV: [(f"h1.{ZONE}", 7801), (f"h2.{ZONE}", 7802), (f"h3.{ZONE}", 7803)]})
    served = time.monotonic()
    took = wait_for(lambda: agreed(nodes, {"h1", "h2", "h3"}), 5 * INTERVAL, "h3 to join")
    print(
        f"\nnode added to dns-srv:{SRV} in every member table {took:.3f} s after the "
        f"restarted server served it (restart took {served - restart:.3f} s; "
        f"interval {INTERVAL:g} s)"
    )
    assert took < INTERVAL + JOIN_SLACK, f"join took {took:.2f} s (interval {INTERVAL:g} s)"
    addresses = {m["id"]: m["address"] for m in nodes[0].status()["members"]}
    assert addresses == {n.id: n.peer for n in nodes}
