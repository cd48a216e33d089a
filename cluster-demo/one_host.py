"""One host, one ``znode``, several Django-style processes sharing a layer.

Run it with ``.venv/bin/python cluster-demo/one_host.py``. It starts a ``znode`` sidecar on
an ipc socket in a temp dir, then three processes that each use
``ZeroMQChannelLayer(node="ipc://...")`` exactly as Django would with
``CONFIG = {"node": "ipc://..."}``:

- every process makes a process-specific channel and joins the group "room";
- process 1 sends a direct message to process 2's channel;
- every process sends one ``group_send`` to "room", and every process prints
  the messages it receives;
- finally ``znode status`` shows what the node saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

from zchannels.layer import ZeroMQChannelLayer

PROCESSES = 3


async def member(index: int, endpoint: str) -> None:
    layer = ZeroMQChannelLayer(node=endpoint)
    me = await layer.new_channel()
    await layer.group_add("room", me)
    print(json.dumps({"channel": me}), flush=True)
    peers = json.loads(sys.stdin.readline())  # every process's channel, once all joined
    if index == 1:
        await layer.send(peers[1], {"type": "direct", "text": "hello from process 1"})
    await layer.group_send("room", {"type": "room", "text": f"process {index} says hi"})
    expected = PROCESSES + (1 if index == 2 else 0)
    for _ in range(expected):
        message = await asyncio.wait_for(layer.receive(me), 10)
        print(f"  process {index} (pid {os.getpid()}) got {message['type']}: {message['text']}")
    await layer.close()


def main() -> int:
    workdir = tempfile.mkdtemp(prefix="zchannels-demo-")
    endpoint = f"ipc://{workdir}/znode.sock"
    znode = [sys.executable, "-m", "zchannels.node"]
    node = subprocess.Popen([*znode, "run", "--client-endpoint", endpoint], stdout=subprocess.PIPE)
    try:
        assert node.stdout is not None
        print("znode:", node.stdout.readline().decode().strip())
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "member", str(i), endpoint],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(1, PROCESSES + 1)
        ]
        channels = []
        for proc in procs:
            assert proc.stdout is not None
            channels.append(json.loads(proc.stdout.readline())["channel"])
        print("process channels:", ", ".join(channels))
        started = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(channels) + "\n")
            proc.stdin.flush()
        for proc in procs:
            out, _ = proc.communicate(timeout=30)
            print(out, end="")
            if proc.returncode != 0:
                print(f"member exited with {proc.returncode}")
                return 1
        print(f"all messages delivered in {(time.perf_counter() - started) * 1e3:.1f} ms")
        subprocess.run([*znode, "status", "--node", endpoint], check=True)
        return 0
    finally:
        node.terminate()
        node.wait(10)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "member":
        asyncio.run(member(int(sys.argv[2]), sys.argv[3]))
    else:
        sys.exit(main())
