"""Which live node owns a channel: tags for ``new_channel()`` names, rendezvous
hashing for every other name.

Owns: the mapping from a wire channel name (``prefix|name``, see
``zchannels.names.wire_name``) to the id of the live node that holds its
queue, and, after a membership change, which held names must be handed to
whom. Does not own: who is live (the member table decides, and builds a new
``Ownership`` from its live set at every change), moving the messages
(the shell sends what ``handoff`` returns), or forwarding.

Rules (cluster issue, point 3):

- A name made by ``new_channel()`` carries its node's tag
  (``zchannels.names.owner_of``) and is owned by the live node with that tag,
  or by nobody (``None``) when that node is gone: its consumer lived there.
  Unless that node *left* cleanly and is not yet forgotten (its tag is
  *parked*): a drained node's clients wait for its next life (a rolling
  restart), so its names are owned meanwhile as every other name is, by
  rendezvous hashing over the live nodes, which keep what is sent to them
  and hand it to the node when it is back.
- Every other name is owned by rendezvous (highest-random-weight) hashing,
  Thaler & Ravishankar, "Using name-based mappings to increase hit rates",
  IEEE/ACM Transactions on Networking 6(1), 1998: each live node ``n`` scores
  the name with a pseudo-random ``weight(n, name)`` and the highest score
  wins. A node's scores do not depend on the other members, so when a node
  joins only the names it now wins move (to it, about 1/(N+1) of them), and
  when one leaves only the names it held move; no other name changes owner.

Weight (a cluster-wide contract, like the wire format: every node must compute
the same owner, so a change needs a protocol version bump; a golden test locks
it): ``BLAKE2b-64(node_key || utf8(wire_name))`` compared as big-endian bytes,
where ``node_key = BLAKE2b-128(utf8(node_id))`` (fixed length, so no
``(node, name)`` pair can be read as another; ``utf8`` passes lone surrogates
through, so any ``str`` hashes). Not Python's ``hash()``, which
is salted per process. Ties (probability 2**-64) go to the smallest node id.

Cost per ``owner()`` call (``timeit``, best of 7 runs of 20,000 calls, on
the development box: CPython 3.11, a 2-vCPU VM; node ids ``web-0``...):

=======  ===============  ==============  ===============================
members  hashed, uncached  any, cache hit  ``new_channel()`` name, uncached
=======  ===============  ==============  ===============================
3        1.4 us           0.15 us         0.29 us
20       6.8 us           0.15 us         0.29 us
100      32 us            0.15 us         0.29 us
=======  ===============  ==============  ===============================

An uncached hashed lookup costs ~0.3 us per member (one copied, pre-keyed
BLAKE2b state per member), so results are kept in a bounded LRU cache
(``cache_size`` entries; names repeat, and a bound keeps hostile names from
growing it). Building an ``Ownership`` costs ~150 us for 100 members with
their tags given (~420 us through ``from_ids``, which also derives them). An
``Ownership`` is immutable: a membership change builds a new one, and with it
an empty cache, so no stale owner can survive a change.

Tag collisions: a tag is 24 bits of the node id's hash, so two ids can share
one (about 3e-4 for 100 nodes). Every node then routes that tag to the
smallest of those ids, so the cluster still agrees on one owner; the member
table should refuse a joining node whose tag is in ``tag_collisions``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from zchannels.names import owner_of

from .config import NodeConfig

NodeId = str

#: Default bound on cached owners: ~10 MB at worst, and far more distinct
#: hashed names than a site normally sends to (process-specific names are
#: looked up by tag and are cheap either way).
DEFAULT_CACHE_SIZE = 65536

_KEY_BYTES = 16  # node_key: BLAKE2b-128
_WEIGHT_BYTES = 8  # weight: BLAKE2b-64


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (never valid in a channel name, but a
    # str all the same) hashes instead of raising; valid text is plain UTF-8.
    return text.encode("utf-8", "surrogatepass")


def node_key(node_id: NodeId) -> bytes:
    """The fixed-length prefix a node's weights are hashed under."""
    return hashlib.blake2b(_utf8(node_id), digest_size=_KEY_BYTES).digest()


def weight(node_id: NodeId, wire: str) -> int:
    """``node_id``'s rendezvous score for ``wire`` (the reference definition)."""
    digest = hashlib.blake2b(node_key(node_id) + _utf8(wire), digest_size=_WEIGHT_BYTES)
    return int.from_bytes(digest.digest(), "big")


def tag_of(node_id: NodeId) -> str:
    """The tag ``new_channel()`` names of ``node_id`` carry (``NodeConfig.node_tag``)."""
    return NodeConfig(node_id=node_id, client_endpoints=()).node_tag


@dataclass(frozen=True, slots=True)
class Handoff:
    """What a node must do with the names it holds after a membership change."""

    #: new owner -> held names it now owns, in the order they were given
    to: dict[NodeId, list[str]] = field(default_factory=dict)
    #: held names nobody owns now (a ``new_channel()`` name whose node is
    #: gone, or no live member at all): their messages are lost, and counted
    orphaned: list[str] = field(default_factory=list)


class Ownership:
    """The owner of every channel name under one set of live members."""

    __slots__ = ("_lookup", "members", "parked", "tag_collisions")

    def __init__(
        self,
        members: Mapping[NodeId, str],
        cache_size: int = DEFAULT_CACHE_SIZE,
        parked: Iterable[str] = (),
    ) -> None:
        """``members`` maps each live node id to its tag (``NodeConfig.node_tag``);
        ``parked``: tags of nodes that left and may come back (their names are
        hashed over ``members`` meanwhile)."""
        #: live node id -> its tag
        self.members: Mapping[NodeId, str] = dict(sorted(members.items()))
        #: tags of nodes that left cleanly, not yet forgotten
        self.parked: frozenset[str] = frozenset(parked)
        by_tag: dict[str, NodeId] = {}
        collisions: dict[str, list[NodeId]] = {}
        for node_id, tag in self.members.items():  # ascending ids: the smallest wins
            if tag in by_tag:
                collisions.setdefault(tag, [by_tag[tag]]).append(node_id)
            else:
                by_tag[tag] = node_id
        #: tag -> the live ids sharing it (empty unless two ids hash alike)
        self.tag_collisions: Mapping[str, tuple[NodeId, ...]] = {
            tag: tuple(ids) for tag, ids in collisions.items()
        }
        # One BLAKE2b state per member with node_key already absorbed: a
        # weight is then copy + update + digest, without re-hashing the key.
        states = [
            (node_id, hashlib.blake2b(node_key(node_id), digest_size=_WEIGHT_BYTES))
            for node_id in self.members
        ]
        # The cache wraps a closure, not a bound method, so it holds no
        # reference back to ``self`` and goes with it when membership changes.
        self._lookup = functools.lru_cache(maxsize=cache_size)(
            functools.partial(_compute, by_tag, self.parked, states)
        )

    @classmethod
    def from_ids(
        cls, node_ids: Iterable[NodeId], cache_size: int = DEFAULT_CACHE_SIZE
    ) -> Ownership:
        """Members given by id alone, their tags derived as ``NodeConfig`` does."""
        return cls({node_id: tag_of(node_id) for node_id in node_ids}, cache_size)

    def owner(self, wire: str) -> NodeId | None:
        """The live node that owns ``wire``; None for a ``new_channel()`` name
        whose node is not a live member, or when there are no members."""
        return self._lookup(wire)

    def handoff(self, me: NodeId, held: Iterable[str]) -> Handoff:
        """Of the names ``me`` holds, which go to which owner (``me``'s own stay)."""
        result = Handoff()
        for wire in held:
            owner = self._lookup(wire)
            if owner is None:
                result.orphaned.append(wire)
            elif owner != me:
                result.to.setdefault(owner, []).append(wire)
        return result

    def cache_info(self) -> functools._CacheInfo:
        return self._lookup.cache_info()

    def __repr__(self) -> str:
        return f"Ownership({sorted(self.members)!r}, parked={sorted(self.parked)!r})"


def _compute(
    by_tag: Mapping[str, NodeId],
    parked: frozenset[str],
    states: list[tuple[NodeId, hashlib.blake2b]],
    wire: str,
) -> NodeId | None:
    tagged = owner_of(wire)
    if tagged is not None:
        by_node = by_tag.get(tagged[0])
        if by_node is not None or tagged[0] not in parked:
            return by_node
    data = _utf8(wire)
    best = b""
    owner: NodeId | None = None
    for node_id, state in states:  # ascending ids
        h = state.copy()
        h.update(data)
        score = h.digest()
        if score > best:  # strict: on a tie the earlier (smaller) id stays
            best, owner = score, node_id
    return owner


def moved(
    old: Ownership, new: Ownership, names: Iterable[str]
) -> dict[str, tuple[NodeId | None, NodeId | None]]:
    """name -> (old owner, new owner) for each of ``names`` whose owner changed."""
    out: dict[str, tuple[NodeId | None, NodeId | None]] = {}
    for wire in names:
        before, after = old.owner(wire), new.owner(wire)
        if before != after:
            out[wire] = (before, after)
    return out
