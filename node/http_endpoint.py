"""A node's HTTP endpoint for operators: ``/metrics``, ``/healthz``, ``/readyz``.

Owns: the ``--metrics-endpoint HOST:PORT`` spelling and its loopback rule,
a small HTTP server (the standard library's ``wsgiref``, in a thread of its
own, so a slow or stuck scraper never holds the node's event loop), and
reading the node safely from that thread: every request asks the node's
event loop (``call_soon_threadsafe``) and waits at most ``LOOP_WAIT``
seconds; a loop that does not answer in time is reported, not waited for.
Does not own: what the metrics say (``zchannels.node.metrics``) or the
readiness rule (``zchannels.node.readiness``).

- ``/metrics``: Prometheus' text format (OpenMetrics if the scraper asks for
  it), the node's metrics and the standard ``process_*`` ones; 503 if the
  loop does not answer.
- ``/healthz``: 200 ``ok`` while the node's event loop answers, else 503.
- ``/readyz``: 200 ``ready``, or 503 with the reason (``Readiness``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import TCPServer, ThreadingMixIn
from typing import TYPE_CHECKING, Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

from zchannels.keys import loopback_only

from .membership import MemberEvent
from .metrics import FrameLatency, MemberEvents, NodeCollector, Snapshot, snapshot
from .readiness import Readiness, expects_peers
from .security import InsecureBind

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from .server import NodeServer

log = logging.getLogger("zchannels.node")

T = TypeVar("T")

#: Seconds a request waits for the node's event loop. A loop that takes
#: longer is stuck or overloaded: /healthz says so (503) rather than hang
#: until the prober's own timeout (Kubernetes' default is 1 s).
LOOP_WAIT = 0.8
#: Seconds between two looks at the shutdown flag by the server thread:
#: bounds how long ``stop()`` takes.
_POLL = 0.05


class NodeUnresponsive(Exception):
    """The node's event loop did not answer in time (or no longer runs)."""


def parse_address(spec: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; port 0: a free one) as
    ``(host, port)``; ``ValueError`` saying the spelling otherwise."""
    host, sep, port = spec.rpartition(":") if isinstance(spec, str) else ("", "", "")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"metrics endpoint must be HOST:PORT (e.g. 127.0.0.1:9746, [::1]:9746), got {spec!r}"
        )
    return host, int(port)


def exposed(spec: str) -> bool:
    """True when ``HOST:PORT`` reaches beyond this host (the bind policy's
    rule, ``zchannels.keys.loopback_only``)."""
    host, port = parse_address(spec)
    return not loopback_only(f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}")


def check_exposure(spec: str, insecure: bool) -> None:
    """Refuse to serve the endpoint beyond loopback unless ``insecure``: it
    tells anyone who can reach it which nodes a cluster has and how busy
    they are."""
    if not exposed(spec):
        return
    if insecure:
        log.warning(
            "serving /metrics, /healthz, /readyz on %s, beyond loopback "
            "(--metrics-insecure): anyone who can reach it can read the node's figures",
            spec,
        )
        return
    raise InsecureBind(
        f"refusing to serve metrics on {spec}, beyond loopback: anyone who can reach it "
        "could read the node's figures. Use a loopback address (127.0.0.1:PORT), or pass "
        "--metrics-insecure where only your monitoring reaches that address"
    )


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a request never keeps the process alive

    def server_bind(self) -> None:
        # Not HTTPServer's: its socket.getfqdn() may ask DNS, and this runs
        # on the node's event loop while it starts.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host.decode() if isinstance(host, bytes) else str(host)
        self.server_port = port
        self.setup_environ()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape is noise; errors surface as statuses


class OpsEndpoint:
    """A node's ``/metrics``, ``/healthz`` and ``/readyz`` on
    ``config.metrics_endpoint``. Made with the node (it listens to member
    events from the start); ``start()`` binds and serves, ``stop()`` ends."""

    def __init__(self, node: NodeServer) -> None:
        config = node.config
        if config.metrics_endpoint is None:
            raise ValueError("the node has no metrics_endpoint")
        check_exposure(config.metrics_endpoint, config.metrics_insecure)
        self.node = node
        self.address = config.metrics_endpoint
        #: seconds per client frame (``NodeServer`` observes every frame)
        self.latency = FrameLatency()
        self.events = MemberEvents()
        self.readiness = Readiness(
            settle=config.ready_settle,
            expects_peers=config.peer_endpoint is not None
            and expects_peers(config.seeds, config.discovery, {config.peer_endpoint}),
            changed_at=time.monotonic(),
        )
        node.member_listeners.append(self._on_member_event)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(NodeCollector(self._snapshot))
        ProcessCollector(registry=self._registry)

    @property
    def url(self) -> str:
        """Where it serves (the port chosen, for port 0)."""
        if self._httpd is None:
            return ""
        host, port = self._httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> None:
        """Bind and serve (on the node's loop; OSError if the port is taken)."""
        self._loop = asyncio.get_running_loop()
        host, port = parse_address(self.address)
        server_class = _Server6 if ":" in host else _Server
        try:
            httpd = server_class((host, port), _QuietHandler, bind_and_activate=True)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve metrics on {self.address}: {exc}") from None
        httpd.set_app(self._app)
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(_POLL,), name="znode-metrics", daemon=True
        )
        self._thread.start()
        log.info("serving /metrics, /healthz, /readyz on %s", self.url)

    def stop(self) -> None:
        """Stop serving (blocks the caller for up to ``_POLL`` seconds)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # -- on the node's event loop -------------------------------------------
    def _on_member_event(self, event: MemberEvent) -> None:
        self.events(event)
        if event.node != self.node.config.node_id:
            self.readiness.member_event(event.kind, time.monotonic())

    def _verdict(self) -> str | None:
        return self.readiness.verdict(time.monotonic(), serving=bool(self.node.endpoints))

    def _take(self) -> Snapshot:
        status = self.node.core.status()
        return snapshot(status, self.events, self.latency, self._verdict() is None)

    # -- on the HTTP thread -------------------------------------------------
    def _on_loop(self, fn: Callable[[], T]) -> T:
        """``fn()``'s result, run on the node's loop; NodeUnresponsive if the
        loop does not run it within ``LOOP_WAIT`` seconds."""
        loop = self._loop
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)

        try:
            if loop is None:
                raise RuntimeError("not started")
            loop.call_soon_threadsafe(run)
            return future.result(LOOP_WAIT)
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:
            future.cancel()
            raise NodeUnresponsive(
                f"the node's event loop did not answer within {LOOP_WAIT:g} s"
                if isinstance(exc, concurrent.futures.TimeoutError)
                else f"the node's event loop is not running ({exc})"
            ) from None

    def _snapshot(self) -> Snapshot:
        return self._on_loop(self._take)

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _reply(start_response, 405, "only GET and HEAD\n")
        try:
            if path == "/metrics":
                encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
                body = encoder(self._registry)
                start_response("200 OK", [("Content-Type", content_type)])
                return [body]
            if path == "/healthz":
                self._on_loop(lambda: None)
                return _reply(start_response, 200, "ok\n")
            if path == "/readyz":
                reason = self._on_loop(self._verdict)
                if reason is None:
                    return _reply(start_response, 200, "ready\n")
                return _reply(start_response, 503, reason + "\n")
        except NodeUnresponsive as exc:
            return _reply(start_response, 503, f"{exc}\n")
        return _reply(start_response, 404, "not found: /metrics, /healthz, /readyz\n")


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def _reply(start_response: StartResponse, status: int, text: str) -> list[bytes]:
    body = text.encode()
    start_response(
        f"{status} {_REASONS[status]}",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]
