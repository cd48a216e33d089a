"""A real DNS server for the namespace LAN: Debian's dnsmasq on one host.

Owns: running ``dnsmasq`` in a host of a ``netns.Lan``, serving a zone of
A records (a hosts file) and SRV records (a conf file), changing them while
it runs, and asking it (from the test process, through a socket made in a
host of the LAN) until it serves what it was told.

- A records: ``set_addresses`` rewrites the hosts file and sends SIGHUP,
  which makes dnsmasq re-read it (``--addn-hosts``) without a restart.
- SRV records: dnsmasq reads ``--srv-host`` only at start (its SIGHUP
  re-reads hosts files, not its configuration: checked with dnsmasq 2.90),
  so ``set_srv`` restarts it. Lookups during the restart fail, which the
  nodes must (and do) take as "nothing known", not as "no one listed".

Every name is under ``ZONE``, which dnsmasq answers for alone (``--local``):
a name it does not hold is NXDOMAIN, never forwarded. Needs ``dnsmasq``
(Debian's ``dnsmasq-base``; ``scripts/check`` installs it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from netns import Host

#: The test zone: reserved for testing (RFC 6761), never on a real network.
ZONE = "zc.test"
#: Seconds dnsmasq may take to start, or to serve a change.
SERVE_WITHIN = 10.0
#: Seconds one query from the test process may take.
QUERY_TIMEOUT = 0.5
#: Seconds between two queries while waiting for a change to be served.
POLL = 0.02


def dnsmasq_path() -> str:
    path = shutil.which("dnsmasq", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        pytest.fail(
            "the DNS discovery tests need dnsmasq (a real DNS server), which is not "
            "installed: apt-get install -y dnsmasq-base (scripts/check does)",
            pytrace=False,
        )
    return path


class DnsServer:
    """dnsmasq on ``host``, serving ``ZONE`` from files in ``folder``."""

    def __init__(self, host: Host, folder: Path) -> None:
        self.host = host
        self.folder = folder
        self.hosts_file = folder / "dns-hosts"
        self.conf_file = folder / "dns-srv.conf"
        self.log_file = folder / "dnsmasq.log"
        self.proc: subprocess.Popen[Any] | None = None
        self._addresses: dict[str, tuple[str, ...]] = {}
        self._srv: dict[str, tuple[tuple[str, int], ...]] = {}

    # -- records ------------------------------------------------------------
    def set_addresses(self, records: Mapping[str, Iterable[str]]) -> None:
        """Serve exactly these A records (``name -> addresses``); returns
        once dnsmasq serves them."""
        self._addresses = {name: tuple(addrs) for name, addrs in records.items()}
        self._write()
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)
            self.wait_served()

    def set_srv(self, records: Mapping[str, Iterable[tuple[str, int]]]) -> None:
        """Serve exactly these SRV records (``name -> [(target, port)]``);
        restarts dnsmasq (see the module doc); returns once they are served."""
        self._srv = {name: tuple(targets) for name, targets in records.items()}
        self._write()
        if self.proc is not None:
            self.stop()
            self.start()

    def _write(self) -> None:
        lines = [f"{a} {name}" for name, addrs in self._addresses.items() for a in addrs]
        self.hosts_file.write_text("".join(line + "\n" for line in lines))
        conf = [
            f"srv-host={name},{target},{port}"
            for name, targets in self._srv.items()
            for target, port in targets
        ]
        self.conf_file.write_text("".join(line + "\n" for line in conf))

    # -- the process --------------------------------------------------------
    def start(self) -> DnsServer:
        self._write()
        log = self.log_file.open("a")
        try:
            self.proc = self.host.run(
                [
                    dnsmasq_path(),
                    "--keep-in-foreground",
                    "--user=root",
                    "--no-resolv",  # no upstream servers: this zone only
                    "--no-hosts",  # not the machine's /etc/hosts either
                    f"--addn-hosts={self.hosts_file}",  # re-read on SIGHUP
                    f"--conf-file={self.conf_file}",  # the srv-host lines
                    f"--listen-address={self.host.ip}",
                    "--bind-interfaces",
                    f"--local=/{ZONE}/",  # NXDOMAIN for names it does not hold
                    "--local-ttl=0",  # no client may cache an answer
                    "--pid-file=",  # none: the test holds the pid
                    "--log-queries",
                    "--log-facility=-",  # to stderr, i.e. log_file
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self.wait_served()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(SERVE_WITHIN)
        self.proc = None

    # -- asking it ----------------------------------------------------------
    def query(self, name: str, rdtype: str) -> list[str] | None:
        """The records dnsmasq serves for ``name`` (texts, sorted), [] for
        none (NXDOMAIN or no data), None if it did not answer."""
        request = dns.message.make_query(name, rdtype)
        sock = self.host.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            reply = dns.query.udp(request, self.host.ip, timeout=QUERY_TIMEOUT, sock=sock)
        except (dns.exception.Timeout, OSError):
            return None
        finally:
            sock.close()
        if reply.rcode() != dns.rcode.NOERROR:
            return []
        wanted = dns.rdatatype.from_text(rdtype)
        return sorted(
            rr.to_text() for rrset in reply.answer if rrset.rdtype == wanted for rr in rrset
        )

    def expected(self) -> dict[tuple[str, str], list[str]]:
        """What every name should answer, as ``query`` shows it."""
        want = {(n, "A"): sorted(a) for n, a in self._addresses.items()}
        for name, targets in self._srv.items():
            want[(name, "SRV")] = sorted(f"0 0 {port} {target}." for target, port in targets)
        return want

    def wait_served(self, removed: Iterable[tuple[str, str]] = ()) -> float:
        """Wait until every record set is served as set (and the names in
        ``removed`` answer nothing); the seconds it took."""
        want = self.expected()
        for key in removed:
            want.setdefault(key, [])
        start = time.monotonic()
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"dnsmasq exited ({self.proc.returncode}): {self.log_tail()}")
            if all(self.query(name, rdtype) == records for (name, rdtype), records in want.items()):
                return time.monotonic() - start
            if time.monotonic() - start > SERVE_WITHIN:
                pytest.fail(f"dnsmasq did not serve {want} within {SERVE_WITHIN:g} s")
            time.sleep(POLL)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text().splitlines()[-lines:])
        except OSError:
            return ""
