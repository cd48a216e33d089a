"""The floor of any sidecar design: bare pyzmq through a do-nothing relay.

``python -m bench.relay_floor`` measures ping-pong round trips/s between two
processes (A and B, asyncio, drain-style reads, 100-byte messages) on ipc://

- directly, DEALER -> ROUTER (two hops per round trip, like "bare pyzmq"), and
- through a third process that only forwards frames (four hops, like any
  sidecar or broker: A -> relay -> B -> relay -> A), with no decoding, no
  queues, no logic at all.

Whatever a sidecar does per message comes on top of the second figure, so it
bounds what zchannels' sidecar ping-pong can reach on this machine.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from typing import cast

import zmq

ROUNDS = 5
ROUND_TRIPS = 5000


def relay(endpoint: str) -> None:
    """Forward every frame from A to B and back; nothing else."""

    async def run() -> None:
        sock = zmq.Context.instance().socket(zmq.ROUTER)
        sock.bind(endpoint)
        loop = asyncio.get_running_loop()

        def readable() -> None:
            while cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                ident, msg = sock.recv_multipart(zmq.NOBLOCK)
                sock.send_multipart([b"B" if ident == b"A" else b"A", msg], zmq.NOBLOCK)

        loop.add_reader(sock.fileno(), readable)
        await asyncio.Event().wait()

    asyncio.run(run())


async def endpoint_role(role: str, endpoint: str, direct: bool) -> None:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, role.encode())
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        while cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            inbox.put_nowait(sock.recv(zmq.NOBLOCK))

    if direct and role == "B":  # B is the ROUTER side of a direct pair
        sock.close()
        sock = zmq.Context.instance().socket(zmq.ROUTER)
        sock.bind(endpoint)

        def readable_router() -> None:
            while cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                ident, msg = sock.recv_multipart(zmq.NOBLOCK)
                sock.send_multipart([ident, msg], zmq.NOBLOCK)

        loop.add_reader(sock.fileno(), readable_router)
        print("ready", flush=True)
        await asyncio.Event().wait()
    sock.connect(endpoint)
    loop.add_reader(sock.fileno(), readable)
    if role == "B":
        print("ready", flush=True)
        while True:
            sock.send(await inbox.get())
            readable()
    await asyncio.sleep(0.3)
    payload = b"x" * 100
    for _ in range(200):  # warm-up
        sock.send(payload)
        readable()
        await inbox.get()
    start = time.perf_counter()
    for _ in range(ROUND_TRIPS):
        sock.send(payload)
        readable()
        await inbox.get()
    print(ROUND_TRIPS / (time.perf_counter() - start), flush=True)


def measure(direct: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        endpoint = f"ipc://{tmp}/floor.sock"
        me = [sys.executable, "-m", "bench.relay_floor"]
        helpers = []
        try:
            if not direct:
                helpers.append(subprocess.Popen([*me, "relay", endpoint]))
            b = subprocess.Popen(
                [*me, "B", endpoint, str(direct)], stdout=subprocess.PIPE, text=True
            )
            helpers.append(b)
            assert b.stdout is not None
            b.stdout.readline()
            out = subprocess.run(
                [*me, "A", endpoint, str(direct)],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
            return float(out.strip())
        finally:
            for proc in helpers:
                proc.kill()
                proc.wait()


def main() -> None:
    direct, relayed = [], []
    for _ in range(ROUNDS):  # interleaved
        direct.append(measure(True))
        relayed.append(measure(False))
    print(f"bare pyzmq, direct (2 hops):      {statistics.median(direct):,.0f} round trips/s")
    print(f"bare pyzmq, via a relay (4 hops): {statistics.median(relayed):,.0f} round trips/s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "relay":
        relay(sys.argv[2])
    elif len(sys.argv) > 1:
        asyncio.run(endpoint_role(sys.argv[1], sys.argv[2], sys.argv[3] == "True"))
    else:
        main()
