"""How long a node lives: the lock that makes it the one node of its socket,
and the rule that ends a node started on demand once nobody uses it.

Owns: holding a node's lock file (an exclusive ``flock`` taken before the
node binds and held for its whole life; the kernel releases it when the
process ends, SIGKILL included, so "a node serves" is "the lock is held"),
looking at the claim file (client processes hold shared locks on it while
they use the node), and ``IdleRule``, the pure decision to stop. Does not own
the sockets or the tick (``zchannels.node.server``), nor starting nodes
(``zchannels.shared``). POSIX ``flock(2)`` only.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time

#: Seconds a starting node keeps trying for its lock. A client looking to
#: see whether a node serves holds the lock for an instant; after this long
#: the holder is another node, and this one gives way.
LOCK_WAIT = 0.5
#: Seconds between two tries for the lock while it is busy.
LOCK_RETRY = 0.01


class Locked(Exception):
    """Another process holds the lock file: a node serves already."""


def open_private(path: str) -> int:
    """``path`` opened for locking: created 0600 if missing, never followed
    if it is a symbolic link, not inherited by programs this process runs."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


class NodeLock:
    """The node's exclusive lock, held from before it binds until after it
    has unbound (``release``) or until the process ends."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    async def take(cls, path: str, within: float = LOCK_WAIT) -> NodeLock:
        """Take the lock, trying for ``within`` seconds; raise ``Locked``
        if another node holds it."""
        fd = open_private(path)
        deadline = time.monotonic() + within
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return cls(fd)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise Locked(f"another node holds {path}") from None
            await asyncio.sleep(LOCK_RETRY)

    def announce(self, text: str) -> None:
        """Write who serves into the lock file (for operators, and for clients:
        a change of content tells them a new node serves)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text.encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # nobody serves now
            os.close(self._fd)  # closing the only descriptor releases the lock
            self._fd = None


class Claims:
    """The claim file: each client process that uses the node holds a shared
    lock on it, taken before it connects. While anyone does, the node is in
    use; once nobody does, ``seize`` takes it exclusively, so a process
    arriving while the node stops waits for it to be gone instead of
    connecting to a node that is leaving."""

    def __init__(self, path: str) -> None:
        self._fd: int | None = open_private(path)

    def held(self) -> bool:
        """Whether some client process holds a claim (an instant's exclusive
        lock, given back at once, tells)."""
        if self._fd is None:
            return False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        return False

    def seize(self) -> bool:
        """Take the claim file exclusively and keep it (the node is about to
        stop): False if a client claimed it meanwhile."""
        if self._fd is None:
            return True
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class IdleRule:
    """When a node started on demand stops: once it has been unused for
    ``after`` seconds without a break (pure: the caller says whether it is
    in use, and when)."""

    def __init__(self, after: float) -> None:
        self.after = after
        self._idle_since: float | None = None

    def observe(self, now: float, in_use: bool) -> bool:
        """True when the node should stop now."""
        if in_use:
            self._idle_since = None
            return False
        if self._idle_since is None:
            self._idle_since = now
        return now - self._idle_since >= self.after
