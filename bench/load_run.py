"""The load run: the live-blog demo under a thousand WebSocket readers.

``python -m bench.load_run [--readers 1000] [--seconds 60] [--interval 0.1]
[--layers zchannels,redis] [--write]`` (``bench/load-run`` installs what it
needs first). For each layer it brings up the three-host demo cluster
(``cluster-demo/run.py``; network namespaces as root), spreads the readers
over the hosts (one reader process per host, ``bench/load_reader.py``, on
that host), posts one update every ``interval`` seconds for ``seconds``
through the hosts' post form in turn, and reports: deliveries (posts x
readers expected), post-to-screen latency p50/p99 (from just before the HTTP
POST to the reader's receipt, one clock), and the CPU seconds each host's
processes used (znode, Daphne, worker; for channels_redis also the
redis-server, on h1). With ``redis`` the same site runs on
``channels_redis.core.RedisChannelLayer`` against one redis-server on h1.
``--write`` puts the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.cookiejar
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cluster-demo"))

from run import DemoCluster, DemoHost  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
#: Seconds readers keep listening after the last post.
TAIL = 5.0


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / ticks


def host_pids(host: DemoHost) -> list[int]:
    return [p.pid for p in host.procs.values()]


class Poster:
    """Posts through a host's form (with Django's CSRF cookie), as a browser would."""

    def __init__(self, host: DemoHost) -> None:
        self.url = host.url
        jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        self.opener.open(self.url + "/", timeout=10).read()
        self.token = next(c.value for c in jar if c.name == "csrftoken")

    def post(self, text: str) -> None:
        body = urllib.parse.urlencode({"text": text, "csrfmiddlewaretoken": self.token}).encode()
        request = urllib.request.Request(self.url + "/post/", data=body)
        self.opener.open(request, timeout=30).read()


def lines(proc: subprocess.Popen[str]) -> queue.Queue[dict[str, Any]]:
    q: queue.Queue[dict[str, Any]] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(json.loads(line))

    threading.Thread(target=pump, daemon=True).start()
    return q


def run_once(layer: str, readers: int, seconds: float, interval: float) -> dict[str, Any]:
    cluster = DemoCluster(layer=layer).start()
    try:
        per_host = [readers // 3 + (1 if i < readers % 3 else 0) for i in range(3)]
        procs, outs = [], []
        for host, n in zip(cluster.hosts, per_host, strict=True):
            url = (
                f"ws://{host.ip}:8000/ws/blog/"
                if cluster.mode == "lan"
                else f"ws://127.0.0.1:{host.port}/ws/blog/"
            )
            proc = host.launch(
                [sys.executable, "-m", "bench.load_reader", url, str(n), str(seconds + TAIL)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            outs.append(lines(proc))
        joined = sum(q.get(timeout=180)["ready"] for q in outs)
        posters = [Poster(h) for h in cluster.hosts]
        before = [cpu_seconds(host_pids(h)) for h in cluster.hosts]
        posts = 0
        start = time.monotonic()
        # Posts go out on schedule, each in its own thread (a slow POST under
        # load must not hold back the next one); the text carries send time.
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            sent = []
            while time.monotonic() - start < seconds:
                due = start + posts * interval
                time.sleep(max(0.0, due - time.monotonic()))
                sent.append(pool.submit(posters[posts % 3].post, f"load {posts} {time.time():.6f}"))
                posts += 1
            failed_posts = sum(1 for f in sent if f.exception() is not None)
        results = [q.get(timeout=seconds + 120) for q in outs]
        after = [cpu_seconds(host_pids(h)) for h in cluster.hosts]
        for proc in procs:
            proc.wait(30)
    finally:
        cluster.stop()
    latencies = sorted(x for r in results for x in r["latencies_ms"])
    return {
        "layer": layer,
        "mode": cluster.mode,
        "readers": joined,
        "posts": posts,
        "expected": posts * joined,
        "delivered": len(latencies),
        "reader_errors": sum(r["errors"] for r in results),
        "first_reader_errors": [e for r in results for e in r["first_errors"]][:3],
        "failed_posts": failed_posts,
        "p50_ms": statistics.median(latencies) if latencies else None,
        "p99_ms": latencies[int(len(latencies) * 0.99)] if latencies else None,
        "cpu_s": [round(b - a, 1) for a, b in zip(before, after, strict=True)],
        "seconds": seconds,
    }


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| layer | readers | posts | delivered / expected | p50 | p99 | CPU s per host h1/h2/h3 |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"zchannels": "zchannels (znode per host)", "redis": "channels_redis core"}
    for r in rows:
        out.append(
            f"| {names.get(r['layer'], r['layer'])} | {r['readers']} | {r['posts']} "
            f"| {r['delivered']:,} / {r['expected']:,} | {r['p50_ms']:.0f} ms "
            f"| {r['p99_ms']:.0f} ms | {' / '.join(str(c) for c in r['cpu_s'])} |"
        )
    return "\n".join(out)


def write(rows: list[dict[str, Any]], command: str, interval: float) -> None:
    """Put the table in docs/benchmarks.md, in the section of this post interval."""
    begin, end = f"<!-- load-run:{interval:g}:begin -->", f"<!-- load-run:{interval:g}:end -->"
    mode = rows[0]["mode"]
    where = "3 network-namespace hosts" if mode == "lan" else "3 loopback hosts"
    section = (
        f"{begin}\n### {rows[0]['readers']} readers, one post every {interval:g} s\n\n"
        f"`{command}` — {where} on this 2-core machine (so all hosts share two cores), "
        f"one post every {interval:g} s for "
        f"{rows[0]['seconds']:.0f} s through the hosts' post form in turn; latency is from just "
        "before the HTTP POST to the reader's receipt. CPU counts each host's znode, Daphne "
        "and worker (and, for channels_redis, the redis-server on h1). "
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n{table(rows)}\n{end}\n"
    )
    text = DOCS.read_text()
    if begin in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOCS.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load_run")
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--layers", default="zchannels,redis")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rows = []
    for layer in args.layers.split(","):
        print(f"load run: {layer} ...", file=sys.stderr, flush=True)
        rows.append(run_once(layer, args.readers, args.seconds, args.interval))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))
    if args.write:
        write(rows, "bench/load-run " + " ".join(sys.argv[1:]), args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
