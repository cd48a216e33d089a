"""An ``MdnsDiscovery`` in a process of its own, and the handle tests read it by.

Run as ``python -m tests.mdns_peer --cluster C --node-id N --endpoint
tcp://IP:PORT [--interface IP] [--protocol-version V]`` (from the repository
root; in a LAN host via ``Host.run``), it prints one JSON object per line:

- ``{"event": "ready", "t": ...}`` once registered and browsing;
- ``{"event": "found" | "lost", "endpoint": ..., "node_id": ..., "t": ...}``
  per discovery event;
- ``{"event": "log", "message": ..., "t": ...}`` per line the
  ``zchannels.discovery`` logger writes at INFO or above (the "ignoring" lines);
- ``{"event": "stopped", "t": ...}`` after SIGTERM made it ``stop()``
  (goodbye sent); then it exits 0.

``t`` is ``time.monotonic()``: one clock for every process of the machine,
namespaces included, so the test can subtract its own start times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


class _EmitLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        emit("log", message=record.getMessage(), level=record.levelname)


async def run(args: argparse.Namespace) -> int:
    from zchannels.discovery import MdnsDiscovery

    logger = logging.getLogger("zchannels.discovery")
    logger.setLevel(logging.INFO)
    logger.addHandler(_EmitLog())
    discovery = MdnsDiscovery(
        cluster=args.cluster,
        node_id=args.node_id,
        incarnation=args.incarnation,
        peer_endpoint=args.endpoint,
        interfaces=args.interface or None,
        protocol_version=args.protocol_version,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await discovery.start()
    emit("ready")

    async def report() -> None:
        async for event in discovery.events():
            emit(event.kind, endpoint=event.endpoint, node_id=event.node_id)

    reporting = asyncio.create_task(report())
    await stop.wait()
    await discovery.stop()
    await reporting  # events() ends after stop(): every event is printed
    emit("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mdns_peer")
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--incarnation", type=int, default=1)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--interface", action="append", default=[])
    parser.add_argument("--protocol-version", type=int, default=1)
    return asyncio.run(run(parser.parse_args(argv)))


class PeerProcess:
    """A running ``tests.mdns_peer``: its lines, read by a thread as they come."""

    def __init__(self, proc: subprocess.Popen[str], node_id: str) -> None:
        self.proc = proc
        self.node_id = node_id
        self.lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"mdns-peer-{node_id}", daemon=True)
        self._reader.start()

    @staticmethod
    def argv(cluster: str, node_id: str, endpoint: str, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "tests.mdns_peer", "--cluster", cluster,
            "--node-id", node_id, "--endpoint", endpoint, *extra,
        ]  # fmt: skip

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(ValueError):  # the pipe closed at teardown
            for line in self.proc.stdout:
                try:
                    item = json.loads(line)
                except ValueError:
                    item = {"event": "unparsable", "line": line}
                with self._lock:
                    self.lines.append(item)

    def events(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [line for line in self.lines if line.get("event") == kind]

    def found_ids(self) -> set[str]:
        """Node ids found and not lost since."""
        peers: set[str] = set()
        with self._lock:
            for line in self.lines:
                if line.get("event") == "found":
                    peers.add(line["node_id"])
                elif line.get("event") == "lost":
                    peers.discard(line["node_id"])
        return peers

    def logged(self, fragment: str) -> list[str]:
        return [e["message"] for e in self.events("log") if fragment in e["message"]]

    def __repr__(self) -> str:
        with self._lock:
            tail = self.lines[-6:]
        return f"<mdns peer {self.node_id} pid {self.proc.pid}, last lines {tail}>"


if __name__ == "__main__":
    sys.exit(main())
