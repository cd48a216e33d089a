"""The cluster-wide group table: per group, which nodes have members and how many.

Owns: this node's view of every origin's *slice* (origin node -> group ->
count of that origin's members), the rules for merging a peer's deltas and
slices into it, the per-origin digest that anti-entropy compares, and the
slices a peer lacks. Does not own: the memberships themselves (each stays
with the node that holds it, ``groups.Groups``), sockets, timers, the wire
encoding, or who is alive (the member table says when to ``drop_origin``).
Pure and deterministic: no clock, no randomness, no I/O.

Design (cluster issue, point 4), after Phoenix.Tracker (Phoenix.PubSub; each
node replicates its own presence "slice" by deltas and heartbeats with
per-node clocks, and requests a full transfer on a gap) and Erlang/OTP ``pg``
(each node is the only writer of its own group memberships, and tells its
peers when they change; a node that goes down takes its entries with it):

- Each node is the only writer of its own slice. ``set_local`` records a
  change and returns the ``Delta`` to push to every peer. A delta carries the
  new *absolute* count, never an increment, so applying one twice, or after a
  newer one of another group, is harmless.
- Versions are per origin and per incarnation: 1, 2, 3, ... one per delta.
  A replica keeps, per origin, the highest *contiguous* version it has
  applied. A lost delta leaves a gap, the digest shows the contiguous version
  only, and anti-entropy (``digest`` / ``missing`` / ``apply_slice``) ships
  the whole slice to a peer that is behind.
- Out of order: a delta newer than the contiguous version is applied to its
  group at once, unless that group already holds a value from a newer delta
  (each group remembers the version that last wrote it while that version is
  above the contiguous one). The contiguous version advances only when the
  gap is filled or a slice covering it arrives. Deltas at or below the
  contiguous version are duplicates or stale and are ignored.
- A slice is complete up to its ``version``: every delta up to it is in it
  (a slice forwarded by a third node may also hold some later values; they
  are tagged with ``version``, a lower bound, so a later in-order delta may
  replace one with an older value for a moment, but the contiguous version
  cannot pass a delta that has not been applied, so once it reaches the
  origin's version every count is exact). Groups our out-of-order deltas
  wrote above the slice's version keep their values.
- Incarnations: a restarted node has a higher incarnation and counts from 1
  again. A delta or slice of a newer incarnation replaces the origin's whole
  slice; one of an older incarnation is ignored.
- A dead or departed node's slice is dropped, and its incarnation remembered,
  so a late delta or a third node's stale slice of that incarnation (or an
  older one) cannot bring it back; a newer incarnation (the node restarted)
  is welcome.

Invariant the property tests check: after any loss, duplication or
reordering of deltas, one round of digest exchange between every pair of
replicas leaves every replica's ``groups()`` and ``nodes_for()`` equal to
the sum of every live node's own counts.

Bounds: negative counts are invalid (``set_local`` raises ``ValueError``,
``apply``/``apply_slice`` return False). A delta more than ``MAX_AHEAD``
versions beyond the contiguous one is ignored (anti-entropy fills the gap
instead), so a corrupt or hostile version cannot pin a group for ever nor
grow the set of out-of-order versions without bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NodeId = str

#: How far beyond an origin's contiguous version a delta may be and still be
#: applied out of order. Far more deltas than can be in flight from one node
#: between two anti-entropy rounds; it bounds ``_Origin.pending``.
MAX_AHEAD = 65536


@dataclass(frozen=True, slots=True)
class Delta:
    """One change of one group in one origin's slice."""

    #: the node whose slice changed (its only writer)
    origin: NodeId
    #: the origin's incarnation (a restarted node has a higher one)
    incarnation: int
    #: per-origin counter, +1 per delta, starting at 1 for each incarnation
    version: int
    group: str
    #: the new absolute count of the origin's members in the group (0 = none)
    count: int


@dataclass(frozen=True, slots=True)
class Slice:
    """An origin's whole slice, for anti-entropy."""

    origin: NodeId
    incarnation: int
    #: the origin's version this slice is complete up to
    version: int
    #: (group, count) with count > 0, sorted by group
    counts: tuple[tuple[str, int], ...]


@dataclass(slots=True)
class _Origin:
    """What this replica holds of one origin's slice."""

    incarnation: int
    #: highest version v such that every delta 1..v is reflected
    contiguous: int = 0
    #: group -> count, counts > 0 only
    counts: dict[str, int] = field(default_factory=dict)
    #: group -> version of the delta that last wrote it, kept only while that
    #: version is above ``contiguous`` (below it, any new delta is newer)
    written: dict[str, int] = field(default_factory=dict)
    #: versions above ``contiguous`` already applied (the far side of gaps)
    pending: set[int] = field(default_factory=set)

    def advance(self) -> None:
        """Move ``contiguous`` over the versions now filled, and forget what
        is no longer above it."""
        while self.contiguous + 1 in self.pending:
            self.contiguous += 1
            self.pending.discard(self.contiguous)
        if self.written:
            self.written = {g: v for g, v in self.written.items() if v > self.contiguous}


def _valid_count(count: object) -> bool:
    return isinstance(count, int) and not isinstance(count, bool) and count >= 0


class GroupReplica:
    """This node's view of every node's per-group member counts."""

    __slots__ = ("_by_group", "_dropped", "_origins", "incarnation", "node_id")

    def __init__(self, node_id: NodeId, incarnation: int) -> None:
        self.node_id = node_id
        self.incarnation = incarnation
        #: origin -> its slice as we hold it; our own included
        self._origins: dict[NodeId, _Origin] = {node_id: _Origin(incarnation)}
        #: group -> origin -> count (> 0): the index nodes_for/size read
        self._by_group: dict[str, dict[NodeId, int]] = {}
        #: dropped origin -> the highest incarnation of it that was dropped
        self._dropped: dict[NodeId, int] = {}

    # -- our own slice -------------------------------------------------------

    def set_local(self, group: str, count: int) -> Delta | None:
        """Set how many of this node's members ``group`` has; the delta to push
        to every peer, or None if the count did not change."""
        if not _valid_count(count):
            raise ValueError(f"group member count must be an int >= 0, got {count!r}")
        own = self._origins[self.node_id]
        if own.counts.get(group, 0) == count:
            return None
        own.contiguous += 1
        self._put(self.node_id, own, group, count)
        return Delta(self.node_id, self.incarnation, own.contiguous, group, count)

    # -- merging peers' state ------------------------------------------------

    def apply(self, delta: Delta) -> bool:
        """Merge a peer's delta. True if it changed our view (a count, or
        the origin's incarnation or versions); False if ignored: a duplicate,
        stale, of a dropped or older incarnation, too far ahead, ours, or
        invalid."""
        if delta.origin == self.node_id or not _valid_count(delta.count) or delta.version < 1:
            return False
        entry, new = self._entry(delta.origin, delta.incarnation)
        if entry is None:
            return False
        if (
            delta.version <= entry.contiguous
            or delta.version in entry.pending
            or delta.version > entry.contiguous + MAX_AHEAD
        ):
            return new
        if entry.written.get(delta.group, 0) < delta.version:
            self._put(delta.origin, entry, delta.group, delta.count)
            entry.written[delta.group] = delta.version
        entry.pending.add(delta.version)
        entry.advance()
        return True

    def apply_slice(self, s: Slice) -> bool:
        """Merge an origin's full slice (from the origin or a third node). True
        if it changed our view; False if ignored (not newer than what we hold,
        of a dropped or older incarnation, ours, or invalid)."""
        if s.origin == self.node_id or s.version < 0:
            return False
        incoming: dict[str, int] = {}
        for group, count in s.counts:
            if not _valid_count(count) or group in incoming:
                return False
            if count:
                incoming[group] = count
        entry, new = self._entry(s.origin, s.incarnation)
        if entry is None:
            return False
        if s.version <= entry.contiguous and not new:
            return False
        # Groups an out-of-order delta wrote above the slice's version keep
        # that newer value; every other group takes the slice's (0 if absent).
        keep = {g for g, v in entry.written.items() if v > s.version}
        for group in set(entry.counts) | set(incoming):
            if group not in keep:
                self._put(s.origin, entry, group, incoming.get(group, 0))
        entry.contiguous = max(entry.contiguous, s.version)
        entry.pending = {v for v in entry.pending if v > entry.contiguous}
        entry.advance()
        return True

    def drop_origin(self, node_id: NodeId, incarnation: int | None = None) -> list[str]:
        """Forget a dead or departed node's slice; the groups whose membership
        changed, sorted. Its deltas and slices of the incarnation we held (or
        ``incarnation``, if higher) and older are ignored from now on. Pass the
        member table's incarnation of the dead node: where none of its deltas
        ever arrived we hold no incarnation, and without one a third node's
        stale slice of it would be taken. Our own slice is never dropped."""
        if node_id == self.node_id:
            return []
        entry = self._origins.pop(node_id, None)
        known = [] if incarnation is None else [incarnation]
        if entry is not None:
            known.append(entry.incarnation)
        if node_id in self._dropped:
            known.append(self._dropped[node_id])
        if known:
            self._dropped[node_id] = max(known)
        if entry is None:
            return []
        affected = sorted(entry.counts)
        for group in affected:
            self._unindex(node_id, group)
        return affected

    def forget_dropped(self, node_id: NodeId) -> None:
        """Stop remembering a dropped node (once the member table has reaped
        it, long after any delta of it can still be in flight)."""
        self._dropped.pop(node_id, None)

    # -- anti-entropy --------------------------------------------------------

    def digest(self) -> dict[NodeId, tuple[int, int]]:
        """origin -> (incarnation, contiguous version), our own included."""
        return {o: (e.incarnation, e.contiguous) for o, e in self._origins.items()}

    def missing(self, peer_digest: dict[NodeId, tuple[int, int]]) -> list[Slice]:
        """The slices (ours or others') a peer with ``peer_digest`` lacks or
        has a gap in: every origin where the peer's (incarnation, version) is
        behind ours, or that it has never heard of. Never one the peer knows
        at a newer incarnation.

        An empty slice is shipped too: it tells the peer which incarnation
        and version are current, so that a third node's stale slice of the
        same origin, arriving later in the same round, is refused."""
        out: list[Slice] = []
        for origin in sorted(self._origins):
            entry = self._origins[origin]
            theirs = peer_digest.get(origin)
            if theirs is None or tuple(theirs) < (entry.incarnation, entry.contiguous):
                out.append(self.slice_of(origin))
        return out

    def slice_of(self, origin: NodeId) -> Slice:
        """The slice of ``origin`` as we hold it (KeyError if we hold none)."""
        entry = self._origins[origin]
        return Slice(
            origin, entry.incarnation, entry.contiguous, tuple(sorted(entry.counts.items()))
        )

    # -- reading -------------------------------------------------------------

    def nodes_for(self, group: str) -> list[NodeId]:
        """The nodes with members in ``group`` (ours included), sorted."""
        return sorted(self._by_group.get(group, ()))

    def size(self, group: str) -> int:
        """Members of ``group`` over all nodes."""
        return sum(self._by_group.get(group, {}).values())

    def groups(self) -> dict[str, int]:
        """group -> total members, for every group with any."""
        return {g: sum(per.values()) for g, per in self._by_group.items()}

    # -- internals -----------------------------------------------------------

    def _entry(self, origin: NodeId, incarnation: int) -> tuple[_Origin | None, bool]:
        """The entry an update of ``origin`` at ``incarnation`` goes into (None:
        ignore the update), and whether it is new: an origin we did not hold,
        or a newer incarnation, which replaces the origin's whole slice (a
        change of view even if the update itself is then ignored)."""
        if origin in self._dropped and incarnation <= self._dropped[origin]:
            return None, False
        entry = self._origins.get(origin)
        if entry is not None and incarnation < entry.incarnation:
            return None, False
        if entry is not None and incarnation == entry.incarnation:
            return entry, False
        if entry is not None:
            for group in list(entry.counts):
                self._unindex(origin, group)
        entry = self._origins[origin] = _Origin(incarnation)
        return entry, True

    def _put(self, origin: NodeId, entry: _Origin, group: str, count: int) -> None:
        if count:
            entry.counts[group] = count
            self._by_group.setdefault(group, {})[origin] = count
        elif entry.counts.pop(group, None) is not None:
            self._unindex(origin, group)

    def _unindex(self, origin: NodeId, group: str) -> None:
        per = self._by_group.get(group)
        if per is not None:
            per.pop(origin, None)
            if not per:
                del self._by_group[group]
