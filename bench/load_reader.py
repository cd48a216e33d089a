"""Many WebSocket readers of the live blog in one process (run on one host).

``python -m bench.load_reader URL N SECONDS``: opens N connections to the
blog's WebSocket, then for SECONDS records, per received post, the delay
between the ``sent`` timestamp in its text and its arrival (one clock: every
host of the load run is on this machine). Prints one JSON line
``{"ready": N}`` once all are connected, and at the end
``{"received": count, "latencies_ms": [...], "errors": n}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import websockets

#: Connections opened at a time (a burst of 1000 handshakes overloads Daphne).
CONNECT_BATCH = 50
#: Seconds between two batches of handshakes.
PACE = 0.05


class Tally:
    def __init__(self, n: int) -> None:
        self.n, self.joined, self.failed = n, 0, 0
        self.all_in = asyncio.Event()

    def count(self, ok: bool) -> None:
        if ok:
            self.joined += 1
        else:
            self.failed += 1
        if self.joined + self.failed == self.n:
            self.all_in.set()


async def read(
    url: str, stop: asyncio.Event, out: list[float], errors: list[str], tally: Tally
) -> None:
    joined = False
    try:
        async with websockets.connect(url, open_timeout=60, max_queue=None) as ws:
            await ws.recv()  # the consumer's hello: it has joined the group
            joined = True
            tally.count(True)
            while not stop.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                now = time.time()
                message = json.loads(raw)
                if message.get("kind") == "update" and message["text"].startswith("load "):
                    out.append((now - float(message["text"].split()[2])) * 1000)
    except Exception as exc:  # a reader that fails is counted, not fatal
        errors.append(repr(exc)[:200])
        if not joined:
            tally.count(False)


async def main(url: str, n: int, seconds: float) -> None:
    stop = asyncio.Event()
    latencies: list[float] = []
    errors: list[str] = []
    tasks = []
    tally = Tally(n)
    for start in range(0, n, CONNECT_BATCH):
        batch = [
            asyncio.create_task(read(url, stop, latencies, errors, tally))
            for _ in range(min(CONNECT_BATCH, n - start))
        ]
        tasks += batch
        await asyncio.sleep(PACE)  # pacing the handshakes, not waiting for a condition
    await asyncio.wait_for(tally.all_in.wait(), 120)
    print(json.dumps({"ready": tally.joined, "failed": tally.failed}), flush=True)
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    print(
        json.dumps(
            {
                "received": len(latencies),
                "latencies_ms": latencies,
                "errors": len(errors),
                "first_errors": errors[:3],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
