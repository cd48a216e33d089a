"""A LAN made of Linux network namespaces, for tests that need real hosts.

Owns: building, breaking and removing the LAN. It does not know what runs on
it (the tests start their processes with ``Host.run``).

Shape: one "switch" namespace holds a bridge ``br0``; each host is a
namespace whose ``eth0`` is one end of a veth pair, the other end a port of
the bridge in the switch namespace. Addresses (``10.77.0.11``, ``.12``, ...)
exist only inside the host namespaces, and every link is created directly in
its namespace (``ip link add ... netns``), so the root namespace's networking
is never touched. Multicast works: ``lo`` is up and 224.0.0.0/4 is routed via
``eth0`` in each host; the bridge floods multicast (snooping off).

Breaking it:

- ``Host.link_down()`` sets the host's port *on the switch* down: the cable
  is pulled at the switch, so nothing passes either way while the host keeps
  its address and routes (its processes see no interface change, as on a
  real partition).
- ``Host.set_loss(loss_percent)`` makes the host's ``eth0`` drop P% of the
  frames in each direction, at random, with a tc BPF filter (iproute2's
  ``tc``; netem is not in these machines' kernels: see ``loss_filter``).

Name resolution: ``Host.use_nameserver(address)`` gives the programs a host runs
their own ``/etc/resolv.conf`` (``ip netns exec`` bind-mounts
``/etc/netns/NAMESPACE/resolv.conf`` over it), so a test can serve the LAN
a DNS zone of its own; teardown removes those files.

Names are unique per run: ``{prefix}{pid}-{n}-h1`` etc. (interface names are
per namespace, so they stay short: ``eth0``, ``br0``, ``h1``). Teardown kills
every process started on the LAN and deletes every namespace (which removes
the bridge and veths), also when the test failed; namespaces left by a run
with the same prefix whose process is gone (a crashed run) are removed at
the next build. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2
(``ip``, ``tc``); without them ``NetnsUnavailable`` says what is missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

#: The LAN's /24; hosts are .11, .12, ... Every LAN lives in its own
#: namespaces, so concurrent runs can all use it.
SUBNET = "10.77.0"
#: Where ``ip netns exec NS`` looks for files to bind-mount over /etc's
#: (``resolv.conf``, ``hosts``) for the program it runs.
NETNS_ETC = "/etc/netns"
#: Seconds a process gets to end after SIGTERM at teardown before SIGKILL.
TERM_GRACE = 2.0
#: Seconds any one ``ip``/``tc`` command may take.
COMMAND_TIMEOUT = 10.0
#: setns(2) flag: join a network namespace.
CLONE_NEWNET = 0x40000000
#: Classic BPF ancillary load of a random u32 (SKF_AD_OFF + SKF_AD_RANDOM,
#: linux/filter.h), as the unsigned k operand tc's bytecode syntax wants.
SKF_AD_RANDOM = 2**32 - 0x1000 + 56
#: tc verdicts a direct-action filter returns (linux/pkt_cls.h).
TC_ACT_OK = 0
TC_ACT_SHOT = 2

_SBIN = os.pathsep.join(("/usr/sbin", "/sbin"))
_run_counter = itertools.count(1)


class NetnsUnavailable(Exception):
    """Namespaces cannot be built here; the message says why and what is needed."""


def _tool(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + _SBIN)
    if path is None:
        raise NetnsUnavailable(
            f"the LAN tests need the {name!r} command from iproute2, which is not"
            " installed: apt-get install -y iproute2"
        )
    return path


def check_available() -> tuple[str, str]:
    """Paths of ``ip`` and ``tc``, or ``NetnsUnavailable`` with the reason."""
    if not sys.platform.startswith("linux"):
        raise NetnsUnavailable(f"the LAN tests need Linux network namespaces, not {sys.platform}")
    ip, tc = _tool("ip"), _tool("tc")
    if os.geteuid() != 0:
        raise NetnsUnavailable(
            "the LAN tests build network namespaces and need root (CAP_SYS_ADMIN and"
            f" CAP_NET_ADMIN); this runs as uid {os.geteuid()}: run the tests as root"
            " (CI runs them as root)"
        )
    return ip, tc


class Host:
    """One host of the LAN: a network namespace with ``eth0`` at ``ip``."""

    def __init__(self, lan: Lan, index: int) -> None:
        self.lan = lan
        #: short name, also the name of its port on the switch: "h1", "h2", ...
        self.name = f"h{index}"
        self.namespace = f"{lan.run_id}-{self.name}"
        self.ip = f"{lan.subnet}.{10 + index}"
        self.processes: list[subprocess.Popen[Any]] = []
        self._lossy = False  # a clsact qdisc with loss filters is on eth0

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.ip} ({self.namespace})>"

    def run(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in this host (``ip netns exec``, which execs it: the
        Popen's pid is the program's). It gets its own session, so teardown
        can end it and its children; the LAN reaps it at teardown."""
        popen_kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(
            [self.lan.ip, "netns", "exec", self.namespace, *argv], **popen_kwargs
        )
        self.processes.append(proc)
        return proc

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
        """A socket of this host, made in this process: a socket belongs to
        the network namespace it was created in, so a short thread joins the
        namespace (setns(2) moves only the calling thread), creates it, ends."""
        made: list[socket.socket] = []
        failed: list[BaseException] = []

        def create() -> None:
            try:
                fd = os.open(f"/run/netns/{self.namespace}", os.O_RDONLY)
                try:
                    if _libc().setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns({self.namespace}): {os.strerror(err)}")
                    made.append(socket.socket(family, kind))
                finally:
                    os.close(fd)
            except BaseException as exc:
                failed.append(exc)

        thread = threading.Thread(target=create, name=f"netns-{self.name}")
        thread.start()
        thread.join()
        if failed:
            raise failed[0]
        return made[0]

    def use_nameserver(self, address: str) -> None:
        """Programs started on this host from now on (``run``) resolve names
        through the DNS server at ``address`` only (one-second timeouts, so a
        lookup while it restarts fails fast)."""
        folder = os.path.join(NETNS_ETC, self.namespace)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "resolv.conf"), "w") as f:
            f.write(f"nameserver {address}\noptions timeout:1 attempts:2\n")

    def link_down(self) -> None:
        """Pull the cable at the switch: no frame passes either way."""
        self.lan.sh("ip", "-n", self.lan.switch, "link", "set", self.name, "down")

    def link_up(self) -> None:
        self.lan.sh("ip", "-n", self.lan.switch, "link", "set", self.name, "up")

    def set_loss(self, loss_percent: float) -> None:
        """Drop ``loss_percent`` % of the frames in each direction of this
        host's link, at random (see ``loss_filter``)."""
        if not 0 <= loss_percent <= 100:
            raise ValueError(f"loss_percent must be 0..100, got {loss_percent}")
        self.clear_loss()
        ns = self.namespace
        self.lan.sh("tc", "-n", ns, "qdisc", "add", "dev", "eth0", "clsact")
        self._lossy = True
        for direction in ("egress", "ingress"):
            self.lan.sh("tc", "-n", ns, "filter", "add", "dev", "eth0", direction,
                        "bpf", "direct-action", "bytecode", loss_filter(loss_percent))  # fmt: skip

    def clear_loss(self) -> None:
        if self._lossy:
            self.lan.sh("tc", "-n", self.namespace, "qdisc", "del", "dev", "eth0", "clsact")
            self._lossy = False


def loss_filter(loss_percent: float) -> str:
    """A classic BPF program, in tc's ``bytecode`` syntax, that drops a packet
    with probability ``loss_percent``/100, for a ``tc ... bpf direct-action``
    filter (its return value is the tc verdict).

    Why not ``tc qdisc ... netem loss``: the kernels of these machines are
    built without netem (``CONFIG_NET_SCH_NETEM`` is not set), while the BPF
    classifier and ``clsact`` are in every kernel of the last decade. Like
    netem's default, each packet is lost independently of the others.
    """
    threshold = min(round(loss_percent / 100 * 2**32), 2**32 - 1)
    program = [
        (0x20, 0, 0, SKF_AD_RANDOM),  # A = 32 random bits
        (0x35, 0, 1, threshold),  # if A >= threshold (unsigned) go on, else skip one
        (0x06, 0, 0, TC_ACT_OK),  # return "pass"
        (0x06, 0, 0, TC_ACT_SHOT),  # return "drop"
    ]
    return f"{len(program)}," + ",".join(" ".join(map(str, op)) for op in program)


class Lan:
    """``n_hosts`` hosts on one bridge. Use as a context manager (or
    ``build()`` then ``teardown()``): teardown runs even when the body fails."""

    def __init__(self, n_hosts: int, name_prefix: str = "zcl", subnet: str = SUBNET) -> None:
        if not 1 <= n_hosts <= 200:
            raise ValueError(f"n_hosts must be 1..200, got {n_hosts}")
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", name_prefix):
            raise ValueError(
                f"name_prefix must be 1-12 lowercase letters/digits, got {name_prefix!r}"
            )
        self.ip, self.tc = check_available()
        self.prefix = name_prefix
        self.subnet = subnet
        #: unique per LAN: the prefix, this process's pid, a counter
        self.run_id = f"{name_prefix}{os.getpid()}-{next(_run_counter)}"
        self.switch = f"{self.run_id}-sw"
        self.hosts = [Host(self, i) for i in range(1, n_hosts + 1)]
        self._namespaces: list[str] = []  # created so far, in order

    def __enter__(self) -> Lan:
        self.build()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.teardown()

    def __getitem__(self, index: int) -> Host:
        return self.hosts[index]

    @property
    def namespaces(self) -> list[str]:
        return [self.switch, *(host.namespace for host in self.hosts)]

    def sh(self, *argv: str) -> None:
        """Run one ``ip``/``tc`` command; raise with its stderr if it fails."""
        tools = {"ip": self.ip, "tc": self.tc}
        command = [tools.get(argv[0], argv[0]), *argv[1:]]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
        if done.returncode != 0:
            raise subprocess.CalledProcessError(
                done.returncode, argv, done.stdout, done.stderr.strip()
            )

    def build(self) -> None:
        remove_leftovers(self.prefix)
        try:
            self._add_namespace(self.switch)
        except subprocess.CalledProcessError as exc:
            raise NetnsUnavailable(
                f"cannot create a network namespace ({' '.join(exc.cmd)}: {exc.stderr});"
                " the LAN tests need root with CAP_SYS_ADMIN and CAP_NET_ADMIN, e.g. a"
                " privileged container"
            ) from None
        try:
            sw = self.switch
            self.sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge",
                    "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0")  # fmt: skip
            self.sh("ip", "-n", sw, "link", "set", "br0", "up")
            for host in self.hosts:
                ns = host.namespace
                self._add_namespace(ns)
                self.sh("ip", "-n", sw, "link", "add", host.name, "type", "veth",
                        "peer", "name", "eth0", "netns", ns)  # fmt: skip
                self.sh("ip", "-n", sw, "link", "set", host.name, "master", "br0")
                self.sh("ip", "-n", sw, "link", "set", host.name, "up")
                self.sh("ip", "-n", ns, "link", "set", "lo", "up")
                self.sh("ip", "-n", ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
                self.sh("ip", "-n", ns, "link", "set", "eth0", "up")
                self.sh("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        except BaseException:
            self.teardown()
            raise

    def teardown(self) -> None:
        """End every process on the LAN, then delete every namespace (and with
        them the bridge and veths). Goes on past errors; raises the first."""
        errors: list[BaseException] = []
        procs = [proc for host in self.hosts for proc in host.processes]
        for host in self.hosts:
            host.processes.clear()
        _end_processes(procs)
        for namespace in reversed(self._namespaces):
            try:
                _delete_namespace(self.ip, namespace)
            except (OSError, subprocess.SubprocessError) as exc:
                errors.append(exc)
        for host in self.hosts:
            _remove_etc(host.namespace)
        self._namespaces.clear()
        if errors:
            raise errors[0]

    def _add_namespace(self, namespace: str) -> None:
        self.sh("ip", "netns", "add", namespace)
        self._namespaces.append(namespace)


def list_namespaces(ip: str | None = None) -> list[str]:
    """Names of the network namespaces ``ip netns`` knows."""
    out = subprocess.run(
        [ip or _tool("ip"), "netns", "list"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=True,
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def remove_leftovers(prefix: str) -> list[str]:
    """Delete namespaces of earlier LANs with this prefix whose process is
    gone (a crashed or killed run); LANs of live processes are left alone."""
    ip = _tool("ip")
    pattern = re.compile(rf"{re.escape(prefix)}(\d+)-\d+-(sw|h\d+)")
    removed = []
    for namespace in list_namespaces(ip):
        match = pattern.fullmatch(namespace)
        if match and not _alive(int(match[1])):
            _delete_namespace(ip, namespace)
            removed.append(namespace)
    if os.path.isdir(NETNS_ETC):  # files of namespaces already gone
        for name in os.listdir(NETNS_ETC):
            match = pattern.fullmatch(name)
            if match and not _alive(int(match[1])):
                _remove_etc(name)
    return removed


def _remove_etc(namespace: str) -> None:
    """Remove a namespace's files under NETNS_ETC (the folder itself stays:
    another LAN may be writing into it)."""
    shutil.rmtree(os.path.join(NETNS_ETC, namespace), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _end_processes(procs: list[subprocess.Popen[Any]]) -> None:
    """SIGTERM each process group, SIGKILL what is left after TERM_GRACE, reap all."""
    for proc in procs:
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(COMMAND_TIMEOUT)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)  # if it left its group


def namespace_pids(namespace: str, ip: str | None = None) -> list[int]:
    """The processes running in a namespace (``ip netns pids``)."""
    out = subprocess.run(
        [ip or _tool("ip"), "netns", "pids", namespace],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    ).stdout
    return [int(pid) for pid in out.split() if pid.isdigit()]


def _delete_namespace(ip: str, namespace: str) -> None:
    """Kill whatever still runs in it (a namespace outlives its name while a
    process holds it), then delete it. A process still on its way in (an
    ``ip netns exec`` that opened the namespace but has not joined it yet)
    escapes this; ``Host.run``'s processes are ended by pid before, so only
    processes started behind the harness's back can."""
    for pid in namespace_pids(namespace, ip):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(
        [ip, "netns", "delete", namespace],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=True,
    )


@contextlib.contextmanager
def lan(n_hosts: int, name_prefix: str = "zcl") -> Iterator[Lan]:
    """A built LAN for the body of the ``with``, torn down after it."""
    with Lan(n_hosts, name_prefix) as built:
        yield built


@contextlib.contextmanager
def lan_for_test(n_hosts: int, name_prefix: str = "zcl") -> Iterator[Lan]:
    """``lan()`` for pytest fixtures: a machine that cannot build namespaces
    fails the test with the reason (never a skip: CI must run these)."""
    built = lan_or_fail(n_hosts, name_prefix)
    unavailable = None
    try:
        built.build()
    except NetnsUnavailable as exc:
        unavailable = exc
    if unavailable is not None:
        _fail(unavailable)
    try:
        yield built
    finally:
        built.teardown()


def lan_or_fail(n_hosts: int, name_prefix: str = "zcl") -> Lan:
    """An unbuilt ``Lan``, or the test fails saying what this machine lacks."""
    try:
        return Lan(n_hosts, name_prefix)
    except NetnsUnavailable as exc:
        unavailable = exc
    _fail(unavailable)


def _fail(unavailable: NetnsUnavailable) -> NoReturn:
    import pytest

    pytest.fail(f"LAN test cannot run: {unavailable}", pytrace=False)


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)
