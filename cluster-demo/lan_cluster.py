"""Three hosts form a cluster by themselves; one dies and is declared dead.

Run it with ``scripts/cluster-demo``. As root (with iproute2) it builds a
three-host LAN out of network namespaces joined by a bridge — the harness the
LAN tests use, ``tests/netns.py``; addresses 10.77.0.11-13 exist only inside
those namespaces — and starts ``znode run --cluster demo`` on each host with
no seeds: the nodes find each other by mDNS. Without root it starts three
nodes on loopback joined by ``--seed`` instead. Either way it prints
``znode status`` from every host, SIGKILLs the third host's node, shows when
the others declared it dead, and stops everything (namespaces included).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from zchannels.node.cli import query

from zchannels.keys import write_key_file
from zchannels.protocol import MsgType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the LAN harness the tests use

ZNODE = [sys.executable, "-m", "zchannels.node"]
#: Seconds between two looks at the cluster while waiting for it to change.
POLL = 0.05

Launch = Callable[..., "subprocess.Popen[str]"]


class Node:
    def __init__(self, name: str, endpoint: str, proc: subprocess.Popen[str]) -> None:
        self.name, self.endpoint, self.proc = name, endpoint, proc
        assert proc.stdout is not None
        self.ready = json.loads(proc.stdout.readline())

    def states(self) -> dict[str, str]:
        status = query(self.endpoint, MsgType.STATUS)
        return {m["id"]: m["state"] for m in status["members"]}


def start_node(launch: Launch, workdir: str, name: str, extra: list[str]) -> Node:
    endpoint = f"ipc://{workdir}/{name}.sock"
    cmd = [*ZNODE, "run", "--node-id", name, "--client-endpoint", endpoint, *extra]
    return Node(
        name, endpoint, launch([*cmd, "--log-level", "WARNING"], stdout=subprocess.PIPE, text=True)
    )


def wait(condition: Callable[[], bool], limit: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > limit:
            raise SystemExit(f"cluster-demo: {what} did not happen within {limit:g} s")
        time.sleep(POLL)
    return time.monotonic() - start


def show_status(node: Node) -> None:
    print(f"\n$ znode status --node {node.endpoint}    # on {node.name}", flush=True)
    subprocess.run([*ZNODE, "status", "--node", node.endpoint], check=True)


@contextlib.contextmanager
def hosts(workdir: str) -> Iterator[tuple[str, list[tuple[str, Launch]]]]:
    """(how, [(host name, how to start a process there)] * 3)."""
    try:
        from netns import Lan, NetnsUnavailable
    except ImportError:  # (run from somewhere without the tests folder)
        Lan = None  # type: ignore[assignment,misc]
    if Lan is not None and os.geteuid() == 0:
        try:
            lan = Lan(3, "zdemo")
            lan.build()
        except NetnsUnavailable as exc:
            print(f"(no network namespaces: {exc}; using loopback)")
        else:
            try:
                yield "lan", [(h.name, h.run) for h in lan.hosts]
            finally:
                lan.teardown()
            return
    yield "loopback", [(f"h{i}", subprocess.Popen) for i in (1, 2, 3)]


def main() -> int:
    workdir = tempfile.mkdtemp(prefix="zchannels-cluster-")
    nodes: list[Node] = []
    with hosts(workdir) as (how, machines):
        try:
            if how == "lan":
                key = f"{workdir}/cluster.key"
                write_key_file(key)
                print(
                    "3 hosts: network namespaces on a bridge, 10.77.0.11-13; znode keygen, then "
                    "znode run --cluster demo --key-file cluster.key on each, no seeds "
                    "(mDNS finds the peers; CurveZMQ between them)"
                )
                for name, launch in machines:
                    extra = ["--cluster", "demo", "--key-file", key]
                    nodes.append(start_node(launch, workdir, name, extra))
            else:
                print("not root: 3 nodes on loopback, joined by --seed")
                seed: list[str] = []
                for name, launch in machines:
                    extra = ["--peer-endpoint", "tcp://127.0.0.1:0", "--discovery", "none"]
                    node = start_node(launch, workdir, name, extra + seed)
                    seed = ["--seed", str(node.ready["peer"])]
                    nodes.append(node)
            names = {n.name for n in nodes}
            took = wait(
                lambda: all(
                    set(n.states()) == names and set(n.states().values()) == {"alive"}
                    for n in nodes
                ),
                10,
                "the cluster forming",
            )
            print(f"one member table on every host {took:.3f} s after the last start")
            for node in nodes:
                show_status(node)
            victim = nodes[-1]
            print(f"\nSIGKILL the node on {victim.name} (no goodbye) ...", flush=True)
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait()
            took = wait(
                lambda: all(n.states().get(victim.name) == "dead" for n in nodes[:-1]),
                10,
                f"{victim.name} declared dead",
            )
            print(f"{victim.name} declared dead on every other host after {took:.2f} s")
            show_status(nodes[0])
            return 0
        finally:
            for node in nodes:
                if node.proc.poll() is None:
                    node.proc.send_signal(signal.SIGTERM)
            for node in nodes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.proc.wait(5)
                if node.proc.stdout is not None:
                    node.proc.stdout.close()


if __name__ == "__main__":
    sys.exit(main())
