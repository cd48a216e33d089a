"""Peer links: the cluster's messages between two lives arrive once, in order.

Owns: the sequence numbers, acknowledgements and retransmissions of the
cluster's own messages (routing's and group replication's; not the member
table's, which tolerate loss by design) from this node's life to each live
peer life. Decides nothing about what the messages say.

Why: ZeroMQ over TCP keeps a link's frames in order, but a connection that
breaks (a ZMTP heartbeat timeout, a reset, a partition that outlasts the
kernel's retransmissions) loses what was in flight, silently. Before links,
a reserved send relayed across such a break, a receiver's credit or a
give-back was lost with no counter to say so, or a channel stalled (issue
11 defect 2: ``tests/sim/plans/defect2-uncounted-loss.json``,
``defect2-reserved-send-lost-in-partition.json``).

How (go-back-N, as TCP does it one level up):

- A frame for a live peer whose current life has said it speaks links
  (``LinkAck`` with ``gen`` 0, a hello, sent to every live peer every
  ``hello_interval``) is ``[LinkSeq, message]``: this life's link ``gen``
  (a number per opened link, so a link opened again after the peer was
  thought dead starts afresh), and ``seq`` 1, 2, ... The frame is kept until
  the peer acknowledges it.
- The receiver takes a frame only if its ``seq`` is the next one of its
  link: a lower one is a copy (dropped: ``link_duplicates``), a higher one
  follows a loss (dropped: ``link_gaps``; the sender sends it again). It
  acknowledges what it took (``LinkAck``: everything up to ``upto``)
  ``ack_delay`` later, and at once after a copy or a gap.
- The sender sends every unacknowledged frame again, oldest first, when the
  oldest has waited ``retransmit`` seconds for its acknowledgement.
- A link ends when its peer's life does in this node's view (declared
  dead, left, or seen in a new life): what it still kept is given up
  (``link_abandoned``) and left to the rules for what dies with a node, as
  before links. A link that keeps more than ``max_unacked`` frames (a peer
  that hears but is never heard) is given up too.
- A peer that never says hello (an older version) gets frames as before;
  its hellos from this node are dropped there as malformed and counted
  (``decode_errors``), once per ``hello_interval``, until it is upgraded.

Pure: ``now`` comes in, frames (node id, bytes) go out; the composing
``ClusterNode`` addresses them.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from .membership import LIVE, Member
from .peer_messages import LinkAck, LinkSeq
from .peer_wire import PeerMessage, encode_peer, encode_peers

#: A member's incarnation grows by one per refuted suspicion; this much
#: above the one a link was opened at is a new life (``routing.RESTART_GAP``).
_NEW_LIFE = 1000


@dataclass(slots=True)
class _Out:
    node: str
    target: int  # the peer's incarnation when the link opened
    gen: int
    next_seq: int = 1
    unacked: deque[tuple[int, bytes]] = field(default_factory=deque)
    sent_at: float = 0.0  # when the oldest unacknowledged frame was last sent


@dataclass(slots=True)
class _In:
    expected: int
    ack_due: float | None = None
    last: float = 0.0


@dataclass(frozen=True, slots=True)
class LinkSettings:
    ack_delay: float = 0.02
    retransmit: float = 0.25
    hello_interval: float = 1.0
    max_unacked: int = 100_000
    #: seconds an incoming link's state is kept after its last frame
    idle_keep: float = 120.0


class Links:
    def __init__(self, node_id: str, life: int, settings: LinkSettings) -> None:
        self.node_id = node_id
        self.life = life
        self.settings = settings
        self.counters: Counter[str] = Counter()
        self._gen = 0
        self._out: dict[str, _Out] = {}
        self._by_gen: dict[int, _Out] = {}
        #: (source, its life, gen) -> what this node took of that link
        self._in: dict[tuple[str, int, int], _In] = {}
        #: node -> the life it said hello from (it speaks links)
        self._speaks: dict[str, int] = {}
        self._next_hello = 0.0
        self._ack_at: float | None = None

    # -- sending -----------------------------------------------------------
    def frame(self, member: Member, msg: PeerMessage, now: float) -> bytes | None:
        """``msg`` for ``member`` as one frame, sequenced and kept, if the
        member is live and its life speaks links; else None (sent as it is)."""
        link = self._link(member, now)
        if link is None:
            return None
        seq = link.next_seq
        link.next_seq += 1
        frame = encode_peers([LinkSeq(self.node_id, self.life, link.gen, seq, link.target), msg])
        if not link.unacked:
            link.sent_at = now
        link.unacked.append((seq, frame))
        if len(link.unacked) > self.settings.max_unacked:
            self._end(link, "overflow")
        return frame

    def _link(self, member: Member, now: float) -> _Out | None:
        link = self._out.get(member.id)
        if link is not None and not self._current(link, member):
            self._end(link, "peer's life ended")
            link = None
        if link is not None:
            return link
        if member.state not in LIVE:
            return None
        life = self._speaks.get(member.id)
        if life is None or not life <= member.incarnation < life + _NEW_LIFE:
            return None
        self._gen += 1
        link = _Out(member.id, member.incarnation, self._gen, sent_at=now)
        self._out[member.id] = link
        self._by_gen[link.gen] = link
        self.counters["links_opened"] += 1
        return link

    @staticmethod
    def _current(link: _Out, member: Member | None) -> bool:
        return (
            member is not None
            and member.state in LIVE
            and member.incarnation < link.target + _NEW_LIFE
        )

    def _end(self, link: _Out, why: str) -> None:
        self._out.pop(link.node, None)
        self._by_gen.pop(link.gen, None)
        self.counters["link_abandoned"] += len(link.unacked)
        link.unacked.clear()

    # -- receiving -----------------------------------------------------------
    def take(self, messages: list[PeerMessage], now: float) -> list[PeerMessage]:
        """What of a frame's messages the node should handle: a sequenced
        frame's message if it is the next of its link, nothing if it is a
        copy or follows a gap; acknowledgements and hellos are taken here."""
        if not messages:
            return messages
        head = messages[0]
        if isinstance(head, LinkAck):
            self._on_ack(head, now)
            return messages[1:]
        if not isinstance(head, LinkSeq):
            return messages
        key = (head.source, head.life, head.gen)
        state = self._in.get(key)
        if state is None:
            # A link to this life starts at 1; one opened to an earlier life
            # of this node (a frame sent before the sender saw this life) is
            # taken from wherever it is now, as a frame without a link would be.
            mine = self.life <= head.target < self.life + _NEW_LIFE
            state = _In(expected=1 if mine else head.seq)
            self._in[key] = state
            self._speaks.setdefault(head.source, head.life)
        state.last = now
        if head.seq != state.expected:
            self.counters["link_duplicates" if head.seq < state.expected else "link_gaps"] += 1
            self._due(state, now)
            return []
        state.expected += 1
        if state.ack_due is None:
            self._due(state, now + self.settings.ack_delay)
        return messages[1:]

    def _due(self, state: _In, at: float) -> None:
        if state.ack_due is None or at < state.ack_due:
            state.ack_due = at
        if self._ack_at is None or at < self._ack_at:
            self._ack_at = at

    def _on_ack(self, ack: LinkAck, now: float) -> None:
        if ack.gen == 0:  # a hello
            if self._speaks.get(ack.source) != ack.life:
                self._speaks[ack.source] = ack.life
            return
        if ack.life != self.life:
            return
        link = self._by_gen.get(ack.gen)
        if link is None or link.node != ack.source:
            return
        acked = False
        while link.unacked and link.unacked[0][0] <= ack.upto:
            link.unacked.popleft()
            acked = True
        if acked:
            link.sent_at = now

    # -- timers --------------------------------------------------------------
    def tick(
        self, now: float, member_of: dict[str, Member], live: list[str]
    ) -> list[tuple[str, bytes]]:
        """Acknowledgements due, frames to send again, hellos; links whose
        peer's life ended are given up. ``member_of``: the member table's
        entries by id; ``live``: live peers (not this node)."""
        out: list[tuple[str, bytes]] = []
        s = self.settings
        for link in list(self._out.values()):
            if not self._current(link, member_of.get(link.node)):
                self._end(link, "peer's life ended")
            elif link.unacked and now >= link.sent_at + s.retransmit:
                link.sent_at = now
                self.counters["link_retransmits"] += len(link.unacked)
                out.extend((link.node, frame) for _, frame in link.unacked)
        if self._ack_at is not None and now >= self._ack_at:
            self._ack_at = None
            for (source, life, gen), state in list(self._in.items()):
                if state.ack_due is not None:
                    if now >= state.ack_due:
                        state.ack_due = None
                        ack = LinkAck(self.node_id, life, gen, state.expected - 1)
                        out.append((source, encode_peer(ack)))
                    else:
                        self._due(state, state.ack_due)
        if now >= self._next_hello:
            self._next_hello = now + s.hello_interval
            hello = encode_peer(self.hello())
            out.extend((node, hello) for node in live)
            for key, state in list(self._in.items()):
                if state.ack_due is None and now - state.last > s.idle_keep:
                    del self._in[key]
        return out

    def hello(self) -> LinkAck:
        """Says this life speaks links (to every live peer each
        ``hello_interval``, and to a peer as soon as it is seen live)."""
        return LinkAck(self.node_id, self.life, 0, 0)

    def new_life(self, life: int) -> None:
        """This node ended its life in place (``ClusterNode._fence``): what
        its links kept was the old life's, and is given up."""
        for link in list(self._out.values()):
            self._end(link, "this life ended")
        self.life = life
        self._next_hello = 0.0

    def next_deadline(self) -> float:
        deadline = self._next_hello
        if self._ack_at is not None:
            deadline = min(deadline, self._ack_at)
        r = self.settings.retransmit
        for link in self._out.values():
            if link.unacked:
                deadline = min(deadline, link.sent_at + r)
        return deadline

    def status(self) -> dict[str, int]:
        return {
            "open": len(self._out),
            "unacked": sum(len(link.unacked) for link in self._out.values()),
        }
