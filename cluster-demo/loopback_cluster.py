"""Three nodes on loopback form a cluster; one is killed and declared dead.

Run it with ``scripts/cluster-demo``. It starts three ``znode`` processes with
``--peer-endpoint tcp://127.0.0.1:0`` (the second and third join through the
first with ``--seed``), prints ``znode status`` from one of them, SIGKILLs the
third and shows when the others declared it dead, then stops the rest with
SIGTERM (a clean leave). What this version clusters is the member table
(SWIM failure detection); channels and groups across nodes come next.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from zchannels.node.cli import query

from zchannels.protocol import MsgType

ZNODE = [sys.executable, "-m", "zchannels.node"]


def start(workdir: str, name: str, seed: str | None) -> tuple[subprocess.Popen[str], Any]:
    cmd = [*ZNODE, "run", "--node-id", name, "--log-level", "WARNING"]
    cmd += ["--client-endpoint", f"ipc://{workdir}/{name}.sock"]
    cmd += ["--peer-endpoint", "tcp://127.0.0.1:0"]
    if seed:
        cmd += ["--seed", seed]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    return proc, ready


def states(endpoint: str) -> dict[str, str]:
    status = query(endpoint, MsgType.STATUS)
    return {m["id"]: m["state"] for m in status["members"]}


def main() -> int:
    workdir = tempfile.mkdtemp(prefix="zchannels-cluster-")
    procs: list[subprocess.Popen[str]] = []
    try:
        first, ready = start(workdir, "host-a", None)
        procs.append(first)
        seed = ready["peer"]
        for name in ("host-b", "host-c"):
            procs.append(start(workdir, name, seed)[0])
        a = f"ipc://{workdir}/host-a.sock"
        deadline = time.monotonic() + 10
        while list(states(a).values()).count("alive") < 3:
            if time.monotonic() > deadline:
                print("the cluster did not form")
                return 1
            time.sleep(0.05)
        subprocess.run([*ZNODE, "status", "--node", a], check=True)
        print("\nSIGKILL host-c ...")
        procs[2].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        seen: dict[str, float] = {}
        while len(seen) < 2 and time.monotonic() - killed < 10:
            for name in ("host-a", "host-b"):
                if name not in seen and states(f"ipc://{workdir}/{name}.sock")["host-c"] == "dead":
                    seen[name] = time.monotonic() - killed
            time.sleep(0.02)
        for name, took in seen.items():
            print(f"  {name} declared host-c dead after {took:.2f} s")
        print("\nhost-a's view now:")
        for member, state in states(a).items():
            print(f"  {member:<8} {state}")
        return 0 if len(seen) == 2 else 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
