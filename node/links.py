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
  oldest has waited ``retransmit`` seconds for its acknowledgement, or at
  once when an acknowledgement takes nothing (a gap's: the peer lacks the
  oldest; at most once per quarter ``retransmit``: ``link_fast_retransmits``).
- A link ends when its peer's life does in this node's view (declared
  dead, left, or seen in a new life), or when this node's life ends in
  place (a fence), or when it keeps more than ``max_unacked`` frames (a
  peer that hears but is never heard): nothing is sent again
  (``link_abandoned`` frames). What those frames carried that only this
  node would count (the caller's ``units``: reserved sends, handed-over
  items) waits in limbo: this node asks the peer how far it took the link
  (``LinkProbe``, every ``retransmit``, on the same connection after the
  frames, so the answer is final) and counts what the peer never took as
  lost (``lost_units``, the node's ``dead_owner``), once. A peer that does
  not know (a new process at its address: ``LinkState`` -1) or never
  answers within ``limbo_keep`` has it all counted. What the peer took is
  its own to count (queued, delivered, or lost with it).
- A message that carries units only this node counts, addressed to a
  peer its member table has dead (the caller's view is behind the
  table's), is not sent but counted lost (``link_unsent_to_dead``): plain,
  on no link, nobody could ask how far it was taken.
- A frame for an earlier life of the receiving node (its sender has not
  seen the new life yet; it may be a copy sent again) is not taken
  (``link_for_past_life``): that life may have taken it, and a second copy
  would be a duplicate. Its sender's limbo counts what only it counts.
- A leaving node lingers while frames wait for their acknowledgement
  (``sending``): one still on its way when the process exits is lost with
  its connection.
- A peer that never says hello (an older version) gets frames as before;
  its hellos from this node are dropped there as malformed and counted
  (``decode_errors``), once per ``hello_interval``, until it is upgraded.
- A hello says what its life reads beyond what every version with links
  reads (``peer_wire.FEATURES``, a bit set in ``upto``; every older version
  ignores it and says 0). A message is framed for a peer as the process
  at its address reads it (``peer_wire.readable``; the newest life of it
  that said hello): without producer stamps unless that hello said it
  reads them, so a node not heard yet, or one of an older version, is
  never sent a type it would drop (in a rolling upgrade: every relayed
  send to an old node, every delivery relayed back through one). Taken
  off, they are counted (``stamps_stripped``: the life said hello without
  them, an older version; ``stamps_stripped_unheard``: no hello of it yet).
  A message with stamps for a live node never heard from waits for its
  hello as a new life's messages do (its hello crosses a join's handover
  on the way); held messages are framed when released, as the hello says.

Pure: ``now`` comes in, frames (node id, bytes) go out; the composing
``ClusterNode`` addresses them.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .membership import LIVE, Member, State
from .peer_messages import TIMED, ClusterMessage, LinkAck, LinkProbe, LinkSeq, LinkState, aged
from .peer_wire import FEATURES, PeerMessage, encode_peer, encode_peers, readable, stamps_in

#: A member's incarnation grows by one per refuted suspicion; this much
#: above the one a link was opened at is a new life (``routing.RESTART_GAP``).
_NEW_LIFE = 1000


class _Sent(NamedTuple):
    """A frame sent on a link, kept until the peer acknowledges it."""

    seq: int
    frame: bytes
    #: messages it carries that only this node counts lost if never taken
    units: int
    #: what the caller wants back if the peer never took it
    note: Any
    #: when it was first sent
    first: float
    #: its units were in this node's queues (items handed over), which its
    #: load reports counted (``give_up``)
    queued: bool
    #: the message, if it carries times left: sent again, it is framed
    #: anew with them aged (``peer_messages.aged``)
    timed: ClusterMessage | None = None
    #: what a SIGKILL of this life would leave nobody else to count if the
    #: peer never took it: ``units``, and deliveries from this node's
    #: flight, which its process counts when the client is forgotten
    #: (``carry``)
    carried: int = 0


@dataclass(slots=True)
class _Out:
    node: str
    target: int  # the peer's incarnation when the link opened
    gen: int
    life: int  # this node's life then
    next_seq: int = 1
    unacked: deque[_Sent] = field(default_factory=deque)
    sent_at: float = 0.0  # when the oldest unacknowledged frame was last sent
    #: what the unacknowledged frames carry (``_Sent.carried``: ``carry``)
    carried: int = 0


@dataclass(slots=True)
class _Limbo:
    """A link given up with frames not acknowledged, until its peer says how
    far it took it (``LinkState``)."""

    node: str
    life: int
    gen: int
    frames: list[tuple[int, int, Any]]  # (seq, units, note)
    until: float  # then counted whole, if nobody answered
    next_probe: float = 0.0
    #: the peer's incarnation when the link opened
    target: int = 0
    #: the peer's incarnation in the member table when last probed
    seen: int = 0
    #: a link of this node's last process, killed (``restore``): kept
    #: while its peer is not known yet (the new process is joining)
    restored: bool = False


@dataclass(slots=True)
class _Held:
    """Messages for a peer's new life that has not said hello yet, kept in
    order until it does (``frame``)."""

    incarnation: int  # the life they are for
    since: float
    msgs: list[tuple[PeerMessage, int, Any, bool]]  # (message, units, note, queued)


#: frames not acknowledged (on links and in limbo) that ``Links.carry``
#: lists one by one for the next process to ask about; beyond, it counts
#: what they carry whole. ``carry`` and the record's encoding run at every
#: step: measured on this machine, 5 us with none, 60 us with 200, 0.5 ms
#: with 2,000 (listing them all would cost a node with a peer far behind
#: more than the exactness is worth)
CARRY_FRAMES = 256

#: ``Links.frame``: the message is held for the peer's new life, send nothing
HELD = b""
#: ``Links.frame``: what the message carried that only this node counts is
#: counted lost, as the peer is dead here: send nothing
DROPPED = b"\x00dropped"


@dataclass(slots=True)
class _In:
    expected: int
    ack_due: float | None = None
    last: float = 0.0


@dataclass(frozen=True, slots=True)
class LinkCarry:
    """What a life's links leave for the next process of its node, in its
    held record (``Links.carry``, ``Links.restore``)."""

    #: links out: (peer, this node's life, gen, the peer's incarnation when
    #: it opened, how far the peer's last load report said it took it,
    #: ((seq, carried), ...) of the frames not acknowledged that carry what
    #: only this node counts: ``_Sent.carried``)
    out: tuple[tuple[str, int, int, int, int, tuple[tuple[int, int], ...]], ...] = ()
    #: links in: (source, its life, gen, the next seq this life expected)
    into: tuple[tuple[str, int, int, int], ...] = ()
    #: what frames too many to list carry (more than ``CARRY_FRAMES``): not
    #: asked about, counted whole with what the record says was held
    lump: int = 0

    def units(self) -> int:
        """The units its links out carry, listed or not."""
        return self.lump + sum(units for *_, frames in self.out for _, units in frames)

    def folded(self) -> LinkCarry:
        """The same units, none listed (a record with no room for them)."""
        return LinkCarry((), (), self.units())


@dataclass(frozen=True, slots=True)
class LinkSettings:
    ack_delay: float = 0.02
    retransmit: float = 1.0
    hello_interval: float = 1.0
    max_unacked: int = 100_000
    #: seconds a link given up waits for its peer to say how far it took
    #: it; then every unit it kept is counted lost
    limbo_keep: float = 10.0
    #: seconds an incoming link's state is kept after its last frame
    idle_keep: float = 120.0


class Links:
    def __init__(
        self, node_id: str, life: int, settings: LinkSettings, features: int = FEATURES
    ) -> None:
        self.node_id = node_id
        self.life = life
        self.settings = settings
        #: what this life reads beyond every linked version, said in its
        #: hello (``peer_wire.FEATURES``; a test that plays an older
        #: version says 0)
        self.features = features
        self.counters: Counter[str] = Counter()
        #: seconds before unacknowledged frames are sent again (shorter
        #: while a node that left lingers: ``hurry``)
        self.retransmit = settings.retransmit
        self._gen = 0
        self._out: dict[str, _Out] = {}
        self._by_gen: dict[int, _Out] = {}
        #: (source, its life, gen) -> what this node took of that link
        self._in: dict[tuple[str, int, int], _In] = {}
        #: node -> the life it said hello from (it speaks links)
        self._speaks: dict[str, int] = {}
        #: node -> (the life its last hello came from, the features it said)
        self._features: dict[str, tuple[int, int]] = {}
        #: node never heard from -> its life in which messages held for its
        #: hello waited ``hold_limit`` in vain (``_waits_for_hello``)
        self._silent: dict[str, int] = {}
        self._next_hello = 0.0
        self._ack_at: float | None = None
        #: (this node's life then, gen) -> a link given up, in limbo
        self._limbo: dict[tuple[int, int], _Limbo] = {}
        #: answers to probes, for the next frames out
        self._replies: list[tuple[str, bytes]] = []
        #: probes to send before the first frame of a new link (``first``)
        self._first: list[bytes] = []
        #: what the last ``take`` refused as for an earlier life of this node
        #: (the caller reads what is a fact whatever life took it)
        self.for_past_life: list[PeerMessage] = []
        #: units of frames no peer took, counted lost (``dead_owner``)
        self.lost_units = 0
        #: notes of frames a peer never took, for the caller (``lost_notes``)
        self._lost_notes: list[tuple[Any, bool]] = []
        #: node -> when a link message (a frame, an acknowledgement, a hello,
        #: a probe or its answer) last came from it
        self._heard: dict[str, float] = {}
        #: peers that left and linger: what they send is acknowledged at once
        self._leaving: set[str] = set()
        #: (node, this node's life, gen) -> how far that node had taken this
        #: node's link gen at its last load report (for a peer that died
        #: before answering)
        self._reported: dict[tuple[str, int, int], int] = {}
        #: node -> messages held for its new life until it says hello
        self._held: dict[str, _Held] = {}

    # -- sending -----------------------------------------------------------
    def frame(
        self,
        member: Member,
        msg: PeerMessage,
        now: float,
        units: int = 0,
        note: Any = None,
        queued: bool = False,
        carried: int | None = None,
    ) -> bytes | None:
        """``msg`` for ``member`` as one frame, sequenced and kept, if the
        member is live and its life speaks links; else None (sent as it is).
        ``units``: messages in it that only this node would count lost if
        the peer never took them (reserved sends, handed-over items);
        ``queued``: they were in this node's queues (handed over), which its
        load reports counted (``give_up``); ``carried``: what a SIGKILL of
        this life would leave nobody else to count if the peer never took
        it (``carry``; ``units`` if not said).

        ``HELD`` (send nothing now): the member is a new life of a node that
        spoke links in an earlier one and has not said hello yet. Sent
        plain, a frame is on no link: a partition or a reset loses it and
        nobody counts what it carried (simulation seed 202: a keeper's
        handback to a restarted owner, lost as a partition began; soak seed
        1127: a receiver's credit, and the channel stalled). It is framed
        on the link once the new life says hello (``release``), in order
        with everything held after it; if that life ends first, what only
        this node counts is counted lost, and if it says nothing for
        ``hold_limit`` (an older version: it never will) it goes plain.

        ``HELD`` too: ``msg`` carries producer stamps and the member is a
        live node never heard from (``_waits_for_hello``): its hello will
        say whether it reads them."""
        if (
            member.id in self._held
            or self._unheard_life(member)
            or self._waits_for_hello(member, msg)
        ):
            held = self._held.get(member.id)
            if held is None:
                held = self._held[member.id] = _Held(member.incarnation, now, [])
            held.msgs.append((msg, units, note, queued))
            self.counters["link_held"] += 1
            return HELD
        link = self._link(member, now)
        if link is None:
            if member.state == State.DEAD and units:
                # The caller's view is behind the member table's (messages
                # a stall held, taken up before the deaths it held: ``
                # ClusterNode._release``). Sent plain, the frame is on no
                # link: a live peer cut off loses it and nobody counts what
                # it carried, and one that takes it delivers what a limbo
                # could not have asked about (simulation seed 219: a frozen
                # node's client's reserved sends, relayed at its thaw into a
                # partition to an owner its table had dead). Counted as a
                # link given up that never answered. (Deliveries, which only
                # carry a note, still go plain: their owner parks them for a
                # client of a node it thinks dead, ``Routing.send_back``.)
                self.counters["link_unsent_to_dead"] += 1
                self._count_lost(units)
                if note is not None:
                    self._lost_notes.append((note, False))
                return DROPPED
            return None
        # (as the life the link is to reads it: fixed for the link's life,
        # so a frame sent again, or framed anew aged, keeps its form)
        msg = self.readable(member, msg)
        seq = link.next_seq
        link.next_seq += 1
        frame = encode_peers([LinkSeq(self.node_id, self.life, link.gen, seq, link.target), msg])
        if not link.unacked:
            link.sent_at = now
        timed = msg if isinstance(msg, TIMED) else None
        carried = units if carried is None else carried
        link.unacked.append(_Sent(seq, frame, units, note, now, queued, timed, carried))
        link.carried += carried
        if len(link.unacked) > self.settings.max_unacked:
            self._end(link, now)
        return frame

    def _again(self, link: _Out, sent: _Sent, now: float) -> bytes:
        """A frame sent again: as it was, or, if its message carries times
        left, framed anew with them aged by how long ago it was first sent."""
        if sent.timed is None:
            return sent.frame
        msg = aged(sent.timed, now - sent.first)
        head = LinkSeq(self.node_id, self.life, link.gen, sent.seq, link.target)
        return encode_peers([head, msg]) if msg is not None else sent.frame

    def _link(self, member: Member, now: float) -> _Out | None:
        link = self._out.get(member.id)
        if link is not None and not self._current(link, member):
            self._end(link, now)
            link = None
        if link is not None:
            return link
        if member.state not in LIVE:
            return None
        life = self._speaks.get(member.id)
        if life is None or not life <= member.incarnation < life + _NEW_LIFE:
            return None
        # A link given up with this node's frames in limbo is asked about
        # before the first frame of the new one, on the same connection: its
        # answer then comes before anything the peer does with the new
        # link's frames (a client's report of deliveries it took, which must
        # not be read as taking the limbo's deliveries it never got).
        for limbo in self._limbo.values():
            if limbo.node == member.id:
                limbo.next_probe = now + self.settings.retransmit
                self._first.append(encode_peer(LinkProbe(self.node_id, limbo.life, limbo.gen)))
        self._gen += 1
        link = _Out(member.id, member.incarnation, self._gen, self.life, sent_at=now)
        self._out[member.id] = link
        self._by_gen[link.gen] = link
        self.counters["links_opened"] += 1
        return link

    def peer_features(self, member: Member) -> int | None:
        """What the process at ``member``'s address reads beyond what every
        version with links reads, as the newest life of that node that said
        hello here said it (0: an older version); None if none has said
        hello in ``member``'s life or after it (not yet, or never: a
        version before links). A life after the member's is the process
        that takes the frame now: the member table may not know it yet
        (simulation plan ``sends-held-through-a-partition-refused-after-a-
        restarted-node-served-newer``: deliveries relayed back to a node
        its peer still saw as the life that left, whose new process had
        said hello)."""
        heard = self._features.get(member.id)
        if heard is None:
            return None
        life, features = heard
        return features if member.incarnation < life + _NEW_LIFE else None

    def readable(self, member: Member, msg: PeerMessage) -> PeerMessage:
        """``msg`` as the process at ``member``'s address reads it
        (``peer_wire.readable``, with ``peer_features``): one not heard yet
        is sent only what every version reads. Stamps taken off are
        counted: for a life whose hello said it reads none, an older version
        (a mixed cluster: ``stamps_stripped``), or for one not heard yet
        (``stamps_stripped_unheard``: either; a version before links, or a
        plain frame to a node thought dead). Losing them loses no message:
        only the order check per producer where queues meet is skipped on
        that path."""
        features = self.peer_features(member)
        out, stripped = readable(msg, features or 0)
        if stripped:
            unheard = features is None
            self.counters["stamps_stripped_unheard" if unheard else "stamps_stripped"] += stripped
        return out

    def speaks(self, node: str) -> bool:
        """Whether ``node`` has said hello to this node (in any life)."""
        return node in self._speaks

    def _waits_for_hello(self, member: Member, msg: PeerMessage) -> bool:
        """Whether ``msg`` carries producer stamps for a live node this
        node has never heard from, which may yet say hello (it has not let
        ``hold_limit`` pass in silence in this life). Sent at once, it would
        go without them (``readable``), and a node that joins or a new
        process is handed channels as the peer's hello crosses the handover
        on the way: the merge of the handed items with newer sends, which
        the stamps order, would go by deadline (simulation seed 125's shrunk
        plan ``relay-delayed-on-a-lossy-link-merged-after-a-newer-send``:
        a restarted node's handover to a peer back from a partition, 0.2 ms
        before the peer's hello came). Held, it waits that long, and goes on
        the link."""
        # (a give-back's stamps do not hold it: held, it is lost uncounted
        # if the life ends unheard, and only its place among its producer's
        # messages, not the message, needs them; simulation seed 1342, an
        # uncounted loss of 8 while give-backs waited for a hello)
        if (
            member.state not in LIVE
            or member.id in self._speaks
            or not stamps_in(msg, give_backs=False)
        ):
            return False
        silent = self._silent.get(member.id)
        return silent is None or member.incarnation >= silent + _NEW_LIFE

    def _unheard_life(self, member: Member) -> bool:
        """A live member in a life after the one it said hello from."""
        life = self._speaks.get(member.id)
        return member.state in LIVE and life is not None and member.incarnation >= life + _NEW_LIFE

    @property
    def hold_limit(self) -> float:
        """Seconds messages wait for a new life's hello (it says one as it
        learns of this node, and every ``hello_interval``)."""
        return 3 * self.settings.hello_interval

    def release(self, member_of: Any, now: float) -> list[tuple[str, bytes]]:
        """(address, frame) for messages held for a new life (``frame``):
        on its link once it said hello, plain once ``hold_limit`` passed
        without one; counted lost (what only this node counts: ``units``)
        if that life ended first, as nothing of them was sent.
        ``member_of``: node id -> its ``Member`` or None."""
        out: list[tuple[str, bytes]] = []
        for node, held in list(self._held.items()):
            member = member_of(node)
            if (
                member is None
                or member.state not in LIVE
                or member.incarnation >= held.incarnation + _NEW_LIFE
            ):
                del self._held[node]
                self._held_lost(held)
                continue
            hello = member.id in self._speaks and not self._unheard_life(member)
            if not hello and now < held.since + self.hold_limit:
                continue
            if not hello and member.id not in self._speaks:
                # (a node never heard from: a version before links; what
                # follows for this life is not held for a hello again)
                self._silent[member.id] = member.incarnation
            del self._held[node]
            for msg, units, note, queued in held.msgs:
                # (framed now, not when held: now the new life's hello has
                # said what it reads, or it never will)
                frame = self.frame(member, msg, now, units, note, queued) if hello else None
                out.extend((member.address, probe) for probe in self.first())
                out.append((member.address, frame or encode_peer(self.readable(member, msg))))
        return out

    def holding(self) -> bool:
        return bool(self._held)

    def _held_lost(self, held: _Held) -> None:
        """What was held for a life that ended unheard was never sent: what
        only this node counts of it is lost (nobody answered for its notes)."""
        self._count_lost(sum(units for _, units, _, _ in held.msgs))
        self._lost_notes.extend((note, False) for _, _, note, _ in held.msgs if note is not None)

    @staticmethod
    def _current(link: _Out, member: Member | None) -> bool:
        return (
            member is not None
            and member.state in LIVE
            and member.incarnation < link.target + _NEW_LIFE
        )

    def _end(self, link: _Out, now: float) -> None:
        """The link is given up (its peer's life ended in this node's view,
        or this node's did, or it kept too much): nothing is sent again.
        What it still kept waits in limbo for the peer to say how far it took
        it (``LinkProbe``): the rest was lost on the way, and only this node
        knows what it carried."""
        self._out.pop(link.node, None)
        self._by_gen.pop(link.gen, None)
        self.counters["link_abandoned"] += len(link.unacked)
        frames = [(f.seq, f.units, f.note) for f in link.unacked if f.units or f.note is not None]
        if not frames:
            self._reported.pop((link.node, link.life, link.gen), None)
        else:
            self._limbo[(link.life, link.gen)] = _Limbo(
                link.node,
                link.life,
                link.gen,
                frames,
                now + self.settings.limbo_keep,
                now,
                link.target,
            )
        link.unacked.clear()
        link.carried = 0

    # -- receiving -----------------------------------------------------------
    def take(self, messages: list[PeerMessage], now: float) -> list[PeerMessage]:
        """What of a frame's messages the node should handle: a sequenced
        frame's message if it is the next of its link, nothing if it is a
        copy or follows a gap; acknowledgements and hellos are taken here."""
        if not messages:
            return messages
        head = messages[0]
        if isinstance(head, LinkAck | LinkProbe | LinkState | LinkSeq):
            self._heard[head.source] = now
        if isinstance(head, LinkAck):
            self._on_ack(head, now)
            return messages[1:]
        if isinstance(head, LinkProbe):
            state = self._in.get((head.source, head.life, head.gen))
            upto = -1 if state is None else state.expected - 1
            answer = LinkState(self.node_id, head.life, head.gen, upto)
            self._replies.append((head.source, encode_peer(answer)))
            return messages[1:]
        if isinstance(head, LinkState):
            self._on_state(head)
            return messages[1:]
        if not isinstance(head, LinkSeq):
            return messages
        if not self.life <= head.target < self.life + _NEW_LIFE:
            # For an earlier life of this node (a fence ended it, or this is
            # a new process at its address): not taken. Its sender may be
            # sending it again, and that life may have taken it already (a
            # second copy would be a duplicate); what it carried that only
            # the sender counts is counted there (``LinkProbe``).
            self.counters["link_for_past_life"] += 1
            self.for_past_life = messages[1:]
            return []
        key = (head.source, head.life, head.gen)
        state = self._in.get(key)
        if state is None:  # (a link starts at 1)
            state = _In(expected=1)
            self._in[key] = state
            self._speaks.setdefault(head.source, head.life)
        state.last = now
        if head.seq != state.expected:
            self.counters["link_duplicates" if head.seq < state.expected else "link_gaps"] += 1
            self._due(state, now)
            return []
        state.expected += 1
        if head.source in self._leaving:
            self._due(state, now)
        elif state.ack_due is None:
            self._due(state, now + self.settings.ack_delay)
        return messages[1:]

    def left(self, node: str, gone: bool) -> None:
        """``node`` left (``gone``: False when a life of it is seen again).
        A node that left lingers, then ends, counting as lost what a peer
        had not acknowledged by then (``give_up``): a frame it took is
        acknowledged at once, not ``ack_delay`` later, so a partition or a
        freeze that begins meanwhile does not leave it counted there as well
        as taken here (simulation seeds 18 and 44, shrunk: reserved sends
        taken 3 ms before a freeze, and 0.7 ms before a partition, counted
        by the node that left and delivered or counted again here)."""
        if gone:
            self._leaving.add(node)
        else:
            self._leaving.discard(node)

    def _on_state(self, answer: LinkState) -> None:
        limbo = self._limbo.get((answer.life, answer.gen))
        if limbo is None or limbo.node != answer.source:
            return
        upto = answer.upto
        speaks = self._speaks.get(limbo.node)
        if (
            upto < 0
            and speaks is not None
            and speaks <= limbo.target < speaks + _NEW_LIFE
            and limbo.target <= limbo.seen < speaks + _NEW_LIFE
        ):
            # It has no state for the link, and it is the life the link was
            # for (its newest hello and the member table say so): it never
            # took a frame of it; not "a new process, which cannot say". So
            # what the link told it of a client's flight is told again
            # (``RelayLost``), as when it says how far it took; presumed
            # lost, a give-back stayed in its flight for good (simulation
            # seed 4988 shrunk, 7 ops: every frame of the link went into a
            # partition, among them deliveries refused as from an owner held
            # dead, given back). (A new process that answers before its
            # hello or its new incarnation reached this node is taken for
            # the old life: its units are counted from 0, not from that
            # life's last report.)
            self.counters["link_never_taken"] += 1
            upto = 0
        self._settle(limbo, upto)

    def _settle(self, limbo: _Limbo, upto: int) -> None:
        """Count what ``limbo``'s peer never took: beyond ``upto``, or (it
        does not know: -1, a new process) beyond what its last load report
        said it had taken (what it took before that report is in the queue
        that report counts for it, or was delivered)."""
        del self._limbo[(limbo.life, limbo.gen)]
        reported = self._reported.pop((limbo.node, limbo.life, limbo.gen), 0)
        answered = upto >= 0
        if not answered:
            upto = reported
        never = [(u, note) for seq, u, note in limbo.frames if seq > upto]
        self._count_lost(sum(u for u, _ in never))
        self._lost_notes.extend((note, answered) for _, note in never if note is not None)

    def limbo_notes(self, node: str) -> list[Any]:
        """The callers' notes of what waits in limbo for ``node`` (until
        its answer, or ``limbo_keep``)."""
        return [
            note
            for limbo in self._limbo.values()
            if limbo.node == node
            for _, _, note in limbo.frames
            if note is not None
        ]

    def first(self) -> list[bytes]:
        """Probes to send before the frame ``frame`` just made, on the same
        connection: that frame opened a new link to a peer an earlier link
        to which is in limbo (once)."""
        out, self._first = self._first, []
        return out

    def lost_notes(self) -> list[tuple[Any, bool]]:
        """The notes of frames their peers never took, once (the caller
        counts what they carried that it keeps: ``ClusterNode``), each with
        whether the peer said so (``LinkState``; else it is presumed from
        its last load report, or it never answered)."""
        out, self._lost_notes = self._lost_notes, []
        return out

    def reported(self, node: str, states: list[list[Any]]) -> None:
        """``node``'s load report said how far it had taken each link."""
        for source, life, gen, upto in states:
            if source != self.node_id:
                continue
            link = self._limbo.get((life, gen)) or self._by_gen.get(gen)
            if link is not None and link.life == life and link.node == node:
                self._reported[(node, life, gen)] = upto

    def held_units(self) -> int:
        """Units in messages held for a peer's new life (``_held``), never
        framed: a SIGKILL loses them, and only this node knew of them
        (``ClusterNode.held_record`` counts them with its queues)."""
        return sum(u for held in self._held.values() for _, u, _, _ in held.msgs)

    def carry(self) -> LinkCarry:
        """What this life's links would leave for the next process of this
        node if a SIGKILL ended it now (``ClusterNode.held_record``): for
        each link out, live or in limbo, the frames no peer acknowledged
        that carry what only this node counts (units; on a live link, also
        deliveries from its flight: ``_Sent.carried``), so the next process asks
        the peer how far it took that link and counts only the rest
        (``restore``: a frame the peer took is the peer's to count, even if
        the kill cut off its acknowledgement); and how far this life took
        each link in, so the next process answers the peers' probes of them
        as this life would have (a peer's limbo then counts only what this
        life never took: what it took, its record counts as queued)."""
        into = tuple(
            (source, life, gen, state.expected) for (source, life, gen), state in self._in.items()
        )
        listed = sum(len(link.unacked) for link in self._out.values())
        listed += sum(len(limbo.frames) for limbo in self._limbo.values())
        if listed > CARRY_FRAMES:  # (too many to list at every step: counted whole)
            lump = sum(link.carried for link in self._out.values())
            lump += sum(u for limbo in self._limbo.values() for _, u, _ in limbo.frames)
            return LinkCarry((), into, lump)
        kept: list[tuple[_Out | _Limbo, tuple[tuple[int, int], ...]]] = [
            (link, tuple((f.seq, f.carried) for f in link.unacked if f.carried))
            for link in self._out.values()
        ]
        kept += [
            (limbo, tuple((seq, units) for seq, units, _ in limbo.frames if units))
            for limbo in self._limbo.values()
        ]
        out = tuple(
            (k.node, k.life, k.gen, k.target, self._reported.get((k.node, k.life, k.gen), 0), f)
            for k, f in kept
            if f
        )
        return LinkCarry(out, into)

    def restore(self, carry: LinkCarry, now: float) -> None:
        """The links of this node's last process, which a SIGKILL ended
        (``carry``, from its held record): what it sent that no peer
        acknowledged waits in limbo here, asked about as this life's own
        limbo is (``LinkProbe``, once this process knows the peer; counted
        whole after ``limbo_keep``), and this life answers the peers'
        probes of that life's links in as it would have."""
        for node, life, gen, target, reported, frames in carry.out:
            if life >= self.life or (life, gen) in self._limbo:
                continue  # (not an earlier life's: nothing to ask)
            self._limbo[(life, gen)] = _Limbo(
                node,
                life,
                gen,
                [(seq, units, None) for seq, units in frames],
                now + self.settings.limbo_keep,
                now,
                target,
                restored=True,
            )
            if reported:
                self._reported[(node, life, gen)] = reported
            self.counters["link_restored_frames"] += len(frames)
        for source, life, gen, expected in carry.into:
            self._in.setdefault((source, life, gen), _In(expected, last=now))

    def report(self) -> list[list[Any]]:
        """How far this node has taken each peer link (for its load report)."""
        return [
            [source, life, gen, st.expected - 1] for (source, life, gen), st in self._in.items()
        ]

    def _count_lost(self, units: int) -> None:
        self.lost_units += units
        self.counters["link_lost_units"] += units

    def replies(self) -> list[tuple[str, bytes]]:
        """Answers to probes that arrived (node id, frame), once."""
        out, self._replies = self._replies, []
        return out

    def _due(self, state: _In, at: float) -> None:
        if state.ack_due is None or at < state.ack_due:
            state.ack_due = at
        if self._ack_at is None or at < self._ack_at:
            self._ack_at = at

    def _on_ack(self, ack: LinkAck, now: float) -> None:
        if ack.gen == 0:  # a hello; ``upto``: what its life reads (0: older)
            if self._speaks.get(ack.source) != ack.life:
                self._speaks[ack.source] = ack.life
            heard = self._features.get(ack.source)
            if heard is None or ack.life >= heard[0]:  # (not a late one of a life before)
                self._features[ack.source] = (ack.life, ack.upto)
            return
        if ack.life != self.life:
            return
        link = self._by_gen.get(ack.gen)
        if link is None or link.node != ack.source:
            return
        acked = False
        while link.unacked and link.unacked[0].seq <= ack.upto:
            link.carried -= link.unacked.popleft().carried
            acked = True
        if acked:
            link.sent_at = now
        elif (
            link.unacked
            and link.unacked[0].seq == ack.upto + 1
            and now >= link.sent_at + self.retransmit / 4
        ):
            # An acknowledgement that takes nothing is a gap's or a copy's
            # (sent at once): the peer lacks the oldest frame (a connection
            # reset lost it), so everything is sent again now, not a whole
            # ``retransmit`` later (simulation soak seed 957: a reset lost
            # a frame, the frames after it were refused as gaps for 0.7 s,
            # among them a receiver's credit, and the peer left first).
            link.sent_at = now - self.retransmit
            self.counters["link_fast_retransmits"] += 1

    # -- timers --------------------------------------------------------------
    def tick(
        self, now: float, member_of: dict[str, Member], live: list[str]
    ) -> list[tuple[str, bytes]]:
        """Acknowledgements due, frames to send again, hellos; links whose
        peer's life ended are given up. ``member_of``: the member table's
        entries by id; ``live``: live peers (not this node)."""
        out: list[tuple[str, bytes]] = []
        s = self.settings
        probes: list[tuple[str, bytes]] = []
        for link in list(self._out.values()):
            if not self._current(link, member_of.get(link.node)):
                self._end(link, now)
            elif link.unacked and now >= link.sent_at + self.retransmit:
                link.sent_at = now
                self.counters["link_retransmits"] += len(link.unacked)
                out.extend((link.node, self._again(link, f, now)) for f in link.unacked)
        for limbo in list(self._limbo.values()):
            if now >= limbo.until or (limbo.node not in member_of and not limbo.restored):
                # (nobody answered: a peer that died for good, or forgotten)
                self._settle(limbo, -1)
            elif now >= limbo.next_probe:
                # (to the peer whatever this node thinks of it: one that
                # lingers after it left, or a new process at its address,
                # answers; the probe follows the frames on their connection)
                limbo.next_probe = now + s.retransmit
                if limbo.node not in member_of:
                    continue  # (restored: asked once this process knows it)
                limbo.seen = member_of[limbo.node].incarnation
                probe = LinkProbe(self.node_id, limbo.life, limbo.gen)
                probes.append((limbo.node, encode_peer(probe)))
        # (probes first: a new link's frames sent again follow them)
        out[:0] = probes
        out.extend(self.replies())
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
        """Says this life speaks links, and what it reads beyond what every
        version with links does (``features``, in ``upto``), to every live
        peer each ``hello_interval``, and to a peer as soon as it is seen
        live."""
        return LinkAck(self.node_id, self.life, 0, self.features)

    def new_life(self, life: int, now: float) -> None:
        """This node ended its life in place (``ClusterNode._fence``): what
        its links kept was the old life's, and is given up."""
        for link in list(self._out.values()):
            self._end(link, now)
        # (held for a peer's new life, never sent: lost with the old life)
        for held in self._held.values():
            self._held_lost(held)
        self._held.clear()
        self.life = life
        self._next_hello = 0.0

    def hurry(self, within: float) -> None:
        """This node left and lingers at most ``within`` seconds: frames not
        acknowledged are sent again several times meanwhile, so a peer that
        can be reached has them, and has said so, before the node ends
        (``give_up``)."""
        self.retransmit = min(self.retransmit, within / 3)

    def give_up(
        self,
        now: float,
        left_at: float | None = None,
        reports: Sequence[tuple[float, int]] = (),
        taken_within: float = float("inf"),
    ) -> int:
        """This process ends (after a leave, once it stopped lingering):
        every link is given up, and what a peer never took is counted lost
        now, as nobody will ask again: beyond what its last load report said
        it had taken, if nothing was heard from it since the oldest frame it
        did not acknowledge was sent (a partition: it never took them). A
        peer heard from since took them: frames are sent again while the
        node lingers, and only their acknowledgements were slow (counted,
        they were an overcount: ``plans/leaving-node-lagged-relays``).

        ``left_at``, ``reports``: when this node left, and its last load
        reports (when each was sent, and the queue it reported: ``queued`` +
        ``parked``), the newest a peer took (heard from since) being the one
        its peers have. If no peer was heard from since the leave,
        none is known to have heard it: they take the node for dead and
        count that queue (``Routing._node_gone``), so of the items it handed
        over after that report that were never taken (they were in its
        queues) as many are left to them, and only the rest is counted here
        (``link_left_to_peers``). Reserved
        sends it relayed are in no report of its, and are counted
        (simulation seed 250, ``plans/leave-alone-in-partition-counted-twice``:
        a node that left alone in a partition counted its handover, and its
        peers, which never heard the LEFT, its last reported queue).
        ``taken_within``: a handover is not presumed taken by a peer heard
        from this long or longer after it was sent (the answer bound: the
        node lingered while that peer was heard, and no acknowledgement
        came). Returns the units counted."""
        before = self.lost_units
        alone = left_at is not None and not self.heard_since(left_at)
        # (the report its peers count is the newest one a peer took that did
        # not leave itself: one that left counts nothing of it; simulation
        # seed 266's shrink, plans/leave-into-partition-after-a-peer-left-
        # counted-once.json)
        last = self.last_heard()
        taken = [r for r in reports if last is not None and r[0] <= last]
        since, spare = taken[-1] if alone and taken else (now, 0)

        def left_to_peers(units: int, queued: bool, first: float) -> int:
            """Of ``units`` sent at ``first``, those not left to the peers."""
            nonlocal spare
            if spare > 0 and queued and units and first >= since:
                left = min(spare, units)
                spare -= left
                self.counters["link_left_to_peers"] += left
                units -= left
            return units

        for link in list(self._out.values()):
            heard = self._heard.get(link.node)
            # (taken: its acknowledgement is on its way; only frames first
            # sent before the peer was last heard, not those sent after it
            # went silent: seed 6, a handover sent as the node left into a
            # partition, after the peer's last frame)
            # (but a handover the node lingered on for while the peer was
            # heard, ``heard_waiting``: a peer heard from ``taken_within``
            # or more after it was sent, that never acknowledged it, did not
            # take it: its acknowledgement would have come before)
            if heard is not None:
                link.unacked = deque(
                    f
                    for f in link.unacked
                    if f.first > heard or (f.units and f.queued and heard >= f.first + taken_within)
                )
            for i, f in enumerate(link.unacked):
                link.unacked[i] = f._replace(units=left_to_peers(f.units, f.queued, f.first))
            self._end(link, now)
        for limbo in list(self._limbo.values()):
            self._settle(limbo, -1)
        # (what was held for a new life that never said hello was never
        # sent: the same, as if sent when it was held)
        for held in self._held.values():
            held.msgs = [(m, left_to_peers(u, q, held.since), n, q) for m, u, n, q in held.msgs]
            self._held_lost(held)
        self._held.clear()
        return self.lost_units - before

    def youngest_counted(self) -> float | None:
        """When the newest frame not acknowledged that carries what only this
        node counts (units, a note) was first sent; None if there is none."""
        return max(
            (
                f.first
                for link in self._out.values()
                for f in link.unacked
                if f.units or f.note is not None
            ),
            default=None,
        )

    def last_heard(self) -> float | None:
        """When a peer that did not leave itself was last heard from on
        its link (the report its peers hold is the newest sent before)."""
        return max((t for n, t in self._heard.items() if n not in self._leaving), default=None)

    def heard_since(self, at: float) -> bool:
        """Whether any peer was heard from on its link after ``at``."""
        return any(t > at for t in self._heard.values())

    def heard_waiting(self) -> float | None:
        """When a peer that has not acknowledged a frame carrying what only
        this node counts (a handover's items from its queues, reserved
        sends it relayed) was last heard from (newest of such peers); None
        if none was heard. (Handovers only until kill-free seed 173: reserved
        sends relayed as the node lingered, behind 30% packet loss, lost
        with the process at the linger's limit and counted by nobody.)"""
        return max(
            (
                self._heard[link.node]
                for link in self._out.values()
                if link.node in self._heard and any(f.units for f in link.unacked)
            ),
            default=None,
        )

    def sending(self) -> bool:
        """Frames wait for their acknowledgement, or messages for a new
        life's hello (a leaving node lingers)."""
        return bool(self._held) or any(link.unacked for link in self._out.values())

    def next_deadline(self) -> float:
        deadline = self._next_hello
        for held in self._held.values():
            deadline = min(deadline, held.since + self.hold_limit)
        for limbo in self._limbo.values():
            deadline = min(deadline, limbo.next_probe, limbo.until)
        if self._ack_at is not None:
            deadline = min(deadline, self._ack_at)
        r = self.retransmit
        for link in self._out.values():
            if link.unacked:
                deadline = min(deadline, link.sent_at + r)
        return deadline

    def status(self) -> dict[str, int]:
        return {
            "open": len(self._out),
            "unacked": sum(len(link.unacked) for link in self._out.values()),
            "limbo": sum(len(limbo.frames) for limbo in self._limbo.values()),
        }
