"""A WebSocket reader: ``python -m lan_site.reader URL [--within SECONDS]``.

Connects (retrying until the server is up, within the limit), prints
``{"event": "ready"}``, then ``{"event": "message", "message": ...}`` per
frame received, as JSON lines (the format ``tests/procs.py`` reads).
"""

from __future__ import annotations

import argparse
import json
import time

import websocket

#: Seconds between two connection attempts while the server starts.
RETRY = 0.05


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--within", type=float, default=20.0)
    args = parser.parse_args()
    deadline = time.monotonic() + args.within
    while True:
        try:
            ws = websocket.create_connection(args.url, timeout=args.within)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(RETRY)
    print(json.dumps({"event": "ready"}), flush=True)
    ws.settimeout(None)
    while True:
        print(json.dumps({"event": "message", "message": json.loads(ws.recv())}), flush=True)


if __name__ == "__main__":
    main()
