"""``--profile DIR``: cProfile every worker process and the znode sidecar.

Each worker writes ``<scenario>-<layer>-<roles>-<pid>.pstats``; the sidecar runs as
``python -m cProfile -o znode-<n>.pstats -m zchannels.node run ...`` (znode exits
normally on SIGTERM, so cProfile writes its file). At the end ``summarize`` merges the
files per (scenario, layer, roles) and writes the top functions of each as text. The
profiler slows everything down (often 2x): use it to see where the time goes, not for
the table. Narrow the run (``--layers zch-sidecar --scenarios pingpong``) so the
sidecar's profile holds one scenario.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import re
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TOP = 30


@contextmanager
def maybe_profile(directory: str | None, name: str) -> Iterator[None]:
    if directory is None:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(os.path.join(directory, f"{name}-{os.getpid()}.pstats"))


def summarize(directory: Path) -> list[Path]:
    """Merge ``*.pstats`` per measurement kind; write ``<kind>.txt``; return those paths."""
    kinds: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(directory.glob("*.pstats")):
        kinds[re.sub(r"-\d+$", "", path.stem)].append(path)
    written = []
    for kind, paths in sorted(kinds.items()):
        out = io.StringIO()
        stats = pstats.Stats(str(paths[0]), stream=out)
        for path in paths[1:]:
            stats.add(str(path))
        stats.strip_dirs()
        out.write(f"{kind}: {len(paths)} process(es) merged\n\n")
        stats.sort_stats("tottime").print_stats(TOP)
        stats.sort_stats("cumulative").print_stats(TOP)
        target = directory / f"{kind}.txt"
        target.write_text(out.getvalue())
        written.append(target)
    return written
