"""Who may connect to a node: CurveZMQ on its sockets, ZAP admission, bind policy.

Owns: putting a ``Keyring`` on server and client sockets, the process's ZAP
handler (pyzmq's ``ThreadAuthenticator``, one per ZeroMQ context) with the
keys each node admits, counting refused handshakes, and the rule that a node
without a key listens on loopback and ``ipc://`` only. Does not own: key files
(``zchannels.keys``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import cast

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from zchannels.keys import ClusterKey, Keyring, loopback_only

log = logging.getLogger("zchannels.node")

#: Seconds between two log lines about refused handshakes of one node.
_REFUSAL_LOG_INTERVAL = 5.0


class InsecureBind(ValueError):
    """A node without a key asked to listen beyond this host."""


def check_bind_policy(endpoints: list[str], keyed: bool, insecure: bool) -> None:
    """Refuse to serve beyond loopback without a key, unless ``insecure``."""
    exposed = [e for e in endpoints if not loopback_only(e)]
    if not exposed or keyed:
        return
    if insecure:
        log.warning(
            "INSECURE: serving %s with no cluster key (--insecure): anyone who can reach "
            "these ports can read and inject every message. Make a key with "
            "'znode keygen PATH' and start with --key-file PATH.",
            ", ".join(exposed),
        )
        return
    raise InsecureBind(
        f"refusing to listen on {', '.join(exposed)} without a cluster key: anyone on the "
        "network could read and inject messages. Make a key with 'znode keygen PATH', copy "
        "it to every node, and start with --key-file PATH (or pass --insecure on a network "
        "you trust)"
    )


class Admission:
    """The process's ZAP handler for one ZeroMQ context: which client keys
    each node (a ZAP domain) admits. (Refusals are counted by the sockets'
    monitors, ``HandshakeWatch``: most never reach ZAP.)"""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        self._auth = ThreadAuthenticator(context, log=logging.getLogger("zchannels.zap"))
        self._auth.start()
        self._allowed: dict[str, frozenset[bytes]] = {}
        self._lock = threading.Lock()

    def allow(self, domain: str, publics: frozenset[bytes]) -> None:
        with self._lock:
            self._allowed[domain] = publics
        self._auth.configure_curve_callback(domain, credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP's question (on the authenticator's thread): admit ``key``?"""
        with self._lock:
            return key in self._allowed.get(domain, frozenset())


class HandshakeWatch:
    """Counts and logs (rate-limited) the connections a keyed server socket
    refused: no key, another cluster's key, garbage instead of a handshake."""

    def __init__(self, sock: zmq.Socket[bytes], loop: asyncio.AbstractEventLoop, what: str) -> None:
        self.what = what
        self.refused = 0
        self._loop = loop
        self._monitor: zmq.Socket[bytes] | None = sock.get_monitor_socket(_REFUSALS)
        self._logged = -_REFUSAL_LOG_INTERVAL
        loop.add_reader(self._monitor.fileno(), self._on_event)
        loop.call_soon(self._on_event)

    def _on_event(self) -> None:
        monitor = self._monitor
        while monitor is not None and cast(int, monitor.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            self.refused += 1
            now = time.monotonic()
            if now - self._logged >= _REFUSAL_LOG_INTERVAL:
                self._logged = now
                log.warning(
                    "refused a %s connection from %s: no cluster key, or another one "
                    "(%d refused so far)",
                    self.what,
                    event.get("endpoint", b"?").decode(errors="replace"),
                    self.refused,
                )

    def close(self) -> None:
        if self._monitor is not None:
            self._loop.remove_reader(self._monitor.fileno())
            self._monitor.close(0)
            self._monitor = None


#: Server-side monitor events that mean "a connection was refused".
_REFUSALS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


_admissions: dict[int, Admission] = {}
_admissions_lock = threading.Lock()


def admission(context: zmq.Context[zmq.Socket[bytes]]) -> Admission:
    """The ZAP handler of ``context`` (started on first use)."""
    with _admissions_lock:
        found = _admissions.get(id(context))
        if found is None:
            found = _admissions[id(context)] = Admission(context)
        return found


def serve_with(sock: zmq.Socket[bytes], keyring: Keyring, domain: str) -> None:
    """Make ``sock`` a CurveZMQ server of the cluster (before bind)."""
    key = keyring.serving
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, key.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, key.public)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
    # Fail closed: with no ZAP handler answering, refuse instead of admitting
    # any key (libzmq's default for CURVE without a handler).
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def connect_with(sock: zmq.Socket[bytes], client: ClusterKey, server: ClusterKey) -> None:
    """Make ``sock`` a CurveZMQ client (before connect): ``client`` proves we
    hold a cluster key, ``server`` is the key we expect the peer to serve."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, server.public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, client.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, client.secret)
