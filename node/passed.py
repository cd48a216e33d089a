"""What this node passed on to its clients from other nodes, for the client's
messages that the owner no longer holds.

Owns: per (our client's connection, channel), the runs of deliveries other
nodes made to it through this node, oldest first, as the client holds them
(``Passed``); and which of them this node answers for since their owner
handed the channel on (*adopted*). Decides nothing on the wire: ``routing``
feeds it and counts what it says.

Why: an owner that hands a channel on forgets its flight (``Queues.take``):
the client's reports of it go to the new owner, which never knew those
messages. If the client then died, they were counted by nobody (simulation
seeds 116 and 155 without kills: a heal or a leave moved the channel while
the client held a delivery, and the client died). The client's node sees
all of it in order: the owner's deliveries reach it before the credit the
owner hands back as it moves the channel (one ordered link), the client
takes and gives back in the order it was handed (its reports come before
any later message), and the client's death is known here first. So the
owner's runs are adopted when its credit comes back; a report or give-back
of the client takes from the oldest runs first; what is adopted and taken
is released here (the report goes on for the rest); what is adopted when
the client is gone is counted lost here (``receiver_gone``), once.

Not adopted by a handover: what a node this node declared dead delivered
before (its runs stay, marked with the life declared dead:
``forget_source``), and what it delivers after (``routing`` refuses it).
An owner that declared this node dead parked what it had handed our
clients and counts it itself; if it later hands the channel back, its runs
here are adopted as well (the refutation does not say which owner that
was: dropping every run then undid seed 116's fix). Once that life is known
to have ended (it is back as a new life, ended in place or restarted, or
was never heard of again: ``source_ended``), its runs are this node's: no
count of a dead life has what it had handed other nodes' clients (a
fence counts its queue and what it parked; a SIGKILL's count, its last
reported queue), so a client that dies holding them had them counted by
nobody (simulation seed 7980, 8 ops: a consumer died holding 4 deliveries
of an owner frozen meanwhile, which ended its life at its thaw). Back in
the same life, it holds them again (``source_seen``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

#: (our client's connection, channel)
Key = tuple[bytes, str]
#: most runs kept per key: beyond, the oldest go (it is never reached: a
#: client holds at most its credit, and runs merge per source)
MAX_RUNS = 256


@dataclass(slots=True)
class Run:
    """``count`` messages ``source`` delivered in a row; ``adopted``: this
    node answers for them."""

    source: str
    count: int
    adopted: bool = False
    #: the life of ``source`` that delivered them (as this node knew it)
    life: int = 0
    #: that life, declared dead here while the client held these, until it
    #: is known how it ended (-1: not declared dead)
    dead: int = -1


class Passed:
    def __init__(self) -> None:
        #: key -> runs, oldest first
        self.runs: dict[Key, deque[Run]] = {}
        #: connections gone: key -> their runs, until (for an owner's
        #: credit that comes back after this node knew the client gone)
        self.gone: dict[Key, tuple[float, deque[Run]]] = {}
        #: connection -> how many of the messages it holds this node answers
        #: for (adopted runs), kept as runs change (``_recount``): a held
        #: record lists it at every step
        self.adopted: dict[bytes, int] = {}
        self._of_key: dict[Key, int] = {}

    def _recount(self, key: Key) -> None:
        """``key``'s runs changed: its adopted count, in ``adopted``."""
        runs = self.runs.get(key)
        now = sum(r.count for r in runs if r.adopted) if runs else 0
        was = self._of_key.pop(key, 0)
        if now:
            self._of_key[key] = now
        if now != was:
            total = self.adopted.get(key[0], 0) + now - was
            if total:
                self.adopted[key[0]] = total
            else:
                del self.adopted[key[0]]

    def adopted_counted(self) -> dict[bytes, int]:
        """``adopted`` counted run by run (the simulation checks the two
        agree after every step)."""
        out: dict[bytes, int] = {}
        for (conn, _), runs in self.runs.items():
            n = sum(r.count for r in runs if r.adopted)
            if n:
                out[conn] = out.get(conn, 0) + n
        return out

    def passed(self, conn: bytes, channel: str, source: str, count: int, life: int = 0) -> None:
        """``source`` (in its life ``life``) delivered ``count`` messages of
        ``channel`` to ``conn`` through this node."""
        if count <= 0:
            return
        runs = self.runs.get((conn, channel))
        if runs is None:
            runs = self.runs[(conn, channel)] = deque()
        last = runs[-1] if runs else None
        if (
            last is not None
            and last.source == source
            and last.life == life
            and not last.adopted
            and last.dead < 0
        ):
            last.count += count
            return
        runs.append(Run(source, count, life=life))
        if len(runs) > MAX_RUNS:
            if runs.popleft().adopted:
                self._recount((conn, channel))

    def adopt_local(self, conn: bytes, channel: str, me: str, count: int) -> None:
        """This node handed ``channel`` on while its own client ``conn`` held
        ``count`` of its deliveries: older than anything it holds from
        elsewhere of it, so first."""
        if count <= 0:
            return
        runs = self.runs.setdefault((conn, channel), deque())
        runs.appendleft(Run(me, count, True))
        self._recount((conn, channel))

    def taken(self, conn: bytes, channel: str, count: int) -> int:
        """``conn`` took (or gave back) the first ``count`` it held of
        ``channel``: how many of them were adopted here."""
        runs = self.runs.get((conn, channel))
        if not runs:
            return 0
        adopted = 0
        while count > 0 and runs:
            run = runs[0]
            used = min(run.count, count)
            count -= used
            if run.adopted:
                adopted += used
            if used == run.count:
                runs.popleft()
            else:
                run.count -= used
        if not runs:
            del self.runs[(conn, channel)]
        if adopted:
            self._recount((conn, channel))
        return adopted

    def adopt(self, conn: bytes, channel: str, source: str, now: float) -> int:
        """``source`` handed ``channel`` on and gave back ``conn``'s credit on
        it: what ``conn`` holds of its deliveries is this node's to answer
        for. Returns how many to count lost now (``conn`` is gone)."""
        runs = self.runs.get((conn, channel))
        if runs is not None:
            for run in runs:
                if run.source == source and run.dead < 0:
                    run.adopted = True
            self._recount((conn, channel))
            return 0
        entry = self.gone.get((conn, channel))
        if entry is None:
            return 0
        lost = sum(r.count for r in entry[1] if r.source == source and r.dead < 0)
        kept = deque(r for r in entry[1] if r.source != source or r.dead >= 0)
        if kept:
            self.gone[(conn, channel)] = (entry[0], kept)
        else:
            del self.gone[(conn, channel)]
        return lost

    def trim(self, conn: bytes, channel: str, count: int) -> None:
        """The last ``count`` passed to ``conn`` never reached it (they
        bounced: queued again)."""
        runs = self.runs.get((conn, channel))
        while runs and count > 0:
            last = runs[-1]
            used = min(last.count, count)
            count -= used
            if used == last.count:
                runs.pop()
            else:
                last.count -= used
        if runs is not None and not runs:
            del self.runs[(conn, channel)]
        self._recount((conn, channel))

    def conn_gone(self, conns: set[bytes], until: float) -> int:
        """``conns`` are gone: what they held that was adopted is lost
        (returned, for the caller to count); the rest waits until ``until``
        in case its owner hands it on meanwhile (``adopt``)."""
        lost = 0
        for key in [k for k in self.runs if k[0] in conns]:
            runs = self.runs.pop(key)
            self._recount(key)
            lost += sum(r.count for r in runs if r.adopted)
            rest = deque(r for r in runs if not r.adopted)
            if rest:
                self.gone[key] = (until, rest)
        return lost

    def forget_source(self, source: str, life: int) -> None:
        """This node declared ``source``'s life ``life`` dead: what it
        delivered is not adoptable by a handover; it keeps its place for the
        client's reports until it is known how that life ended."""
        for runs in self.runs.values():
            for run in runs:
                if run.source == source and not run.adopted and run.dead < 0:
                    run.dead = life
        # (of clients gone before: it was told, ``ConnGone``, and counted)
        for key, (until, gone) in list(self.gone.items()):
            kept = deque(r for r in gone if r.source != source)
            if kept:
                self.gone[key] = (until, kept)
            else:
                del self.gone[key]

    def source_seen(self, source: str, life: int, same_life: Callable[[int, int], bool]) -> int:
        """``source`` is live in life ``life``. What an earlier life of it
        delivered (not ``same_life``) is this node's to answer for: that
        life ended (in place, or its process did), and what it had handed
        other nodes' clients went with it. What the same life delivered is
        its own again if it was declared dead here. Returns how many of an
        ended life's went to clients that went while it was held dead here
        (for the caller to count lost)."""

        def ended(run: Run) -> bool:
            return run.source == source and run.life < life and not same_life(run.life, life)

        for key, runs in self.runs.items():
            changed = False
            for run in runs:
                if ended(run):
                    changed |= not run.adopted
                    run.adopted, run.dead = True, -1
                elif run.source == source and run.dead >= 0 and same_life(run.dead, life):
                    run.dead = -1
            if changed:
                self._recount(key)
        lost = 0
        for key, (until, gone) in list(self.gone.items()):
            # (of clients gone: what a life declared dead here had handed
            # them; a live one was told, ``ConnGone``, and counted it)
            lost += sum(r.count for r in gone if ended(r) and r.dead >= 0)
            for run in gone:
                if run.source == source and run.dead >= 0 and same_life(run.dead, life):
                    run.dead = -1  # (it is told of the client gone: it counts)
            kept = deque(r for r in gone if not ended(r))
            if kept:
                self.gone[key] = (until, kept)
            else:
                del self.gone[key]
        return lost

    def source_ended(self, source: str) -> int:
        """The life of ``source`` declared dead here was never heard of
        again: what it delivered is this node's (``source_seen``)."""
        return self.source_seen(source, 1 << 62, lambda a, b: a == b)

    def expire(self, now: float) -> None:
        for key in [k for k, (until, _) in self.gone.items() if until <= now]:
            del self.gone[key]
