"""Channel ownership, pure: tags for ``new_channel()`` names, rendezvous
hashing for the rest; golden owners, movement on join/leave, balance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st
from zchannels.node.config import NodeConfig
from zchannels.node.ownership import Ownership, moved, node_key, tag_of, weight

from zchannels.names import specific_name, wire_name

NAMES = [f"app|chat.room.{i}" for i in range(10_000)]
GOLDEN_IDS = ["alpha", "bravo", "charlie", "delta", "echo"]

node_ids = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=12, unique=True)
# Untagged names: no "!", so never read as a new_channel() name.
plain_names = st.lists(
    st.text(st.characters(blacklist_characters="!"), max_size=40), min_size=1, max_size=30
)


def reference_owner(ids: list[str], wire: str) -> str:
    """The rendezvous rule written out: highest weight, smallest id on a tie."""
    best, owner = -1, ""
    for node in sorted(ids):
        if weight(node, wire) > best:
            best, owner = weight(node, wire), node
    return owner


def counts(own: Ownership, names: list[str]) -> Counter[str | None]:
    return Counter(own.owner(n) for n in names)


# -- the hash is a cluster-wide contract ----------------------------------


def test_golden_hash_and_tags() -> None:
    # Every node must compute the same owner: a changed hash must fail here.
    assert node_key("alpha").hex() == "b52f7e54cd313e691148cc2c80345831"
    assert weight("alpha", "app|thumbnails") == 7116598975025732442
    assert tag_of("alpha") == "8ed3f6" == NodeConfig(node_id="alpha").node_tag
    own = Ownership.from_ids(GOLDEN_IDS)
    assert dict(own.members) == {
        "alpha": "8ed3f6",
        "bravo": "f144a6",
        "charlie": "b9dd96",
        "delta": "4f4a94",
        "echo": "092c79",
    }


def test_golden_owners() -> None:
    own = Ownership.from_ids(GOLDEN_IDS)
    got = {n: own.owner(n) for n in [*NAMES[:12], "thumbnails", "app|thumbnails", "x|y-z_w.v"]}
    assert got == {
        "app|chat.room.0": "delta",
        "app|chat.room.1": "delta",
        "app|chat.room.2": "alpha",
        "app|chat.room.3": "echo",
        "app|chat.room.4": "charlie",
        "app|chat.room.5": "charlie",
        "app|chat.room.6": "charlie",
        "app|chat.room.7": "echo",
        "app|chat.room.8": "echo",
        "app|chat.room.9": "echo",
        "app|chat.room.10": "charlie",
        "app|chat.room.11": "bravo",
        "thumbnails": "echo",
        # the whole wire name is hashed: the prefix changes the owner
        "app|thumbnails": "charlie",
        "x|y-z_w.v": "delta",
    }


def test_same_owners_in_other_processes() -> None:
    # Python's hash() is salted per process; ours must not be.
    script = (
        "import json, sys\n"
        "from zchannels.node.ownership import Ownership\n"
        "own = Ownership.from_ids(json.loads(sys.argv[1]))\n"
        "print(json.dumps([own.owner(f'app|chat.room.{i}') for i in range(500)]))\n"
    )
    own = Ownership.from_ids(GOLDEN_IDS)
    here = [own.owner(n) for n in NAMES[:500]]
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script, json.dumps(GOLDEN_IDS[::-1])],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert json.loads(out.stdout) == here


# -- one owner, agreed by everyone ---------------------------------------


@given(node_ids, plain_names, st.data())
def test_every_name_has_one_live_owner_whatever_the_order(
    ids: list[str], names: list[str], data: st.DataObject
) -> None:
    a = Ownership.from_ids(ids)
    b = Ownership.from_ids(data.draw(st.permutations(ids)), cache_size=0)
    assert list(a.members) == list(b.members) == sorted(ids)  # ties: smallest id wins
    for name in names:
        owner = a.owner(name)
        assert owner in ids
        assert owner == b.owner(name) == reference_owner(ids, name)


def test_no_members_no_owner() -> None:
    own = Ownership({})
    assert own.owner("app|thumbnails") is None
    assert own.handoff("gone", ["app|a"]).orphaned == ["app|a"]


# -- movement: only ~1/N of names, and only to/from the changed node ----------


def test_join_moves_about_one_in_n_plus_one_and_only_to_the_new_node() -> None:
    for n in (2, 4, 9, 19):
        before = Ownership.from_ids(f"web-{i}" for i in range(n))
        after = Ownership.from_ids(f"web-{i}" for i in range(n + 1))
        changes = moved(before, after, NAMES)
        expected = len(NAMES) / (n + 1)
        assert abs(len(changes) - expected) <= 0.15 * expected, (n, len(changes))
        assert {new for _, new in changes.values()} == {f"web-{n}"}
        # and the new node got exactly those names
        assert counts(after, NAMES)[f"web-{n}"] == len(changes)


def test_leave_moves_only_the_leavers_names_spread_over_the_rest() -> None:
    ids = [f"web-{i}" for i in range(10)]
    before = Ownership.from_ids(ids)
    after = Ownership.from_ids(i for i in ids if i != "web-3")
    changes = moved(before, after, NAMES)
    held = {n for n in NAMES if before.owner(n) == "web-3"}
    assert set(changes) == held
    assert all(old == "web-3" for old, _ in changes.values())
    spread = Counter(new for _, new in changes.values())
    assert set(spread) == set(ids) - {"web-3"}
    assert max(spread.values()) <= 2 * min(spread.values())


@given(node_ids, st.text(min_size=1, max_size=12), plain_names)
def test_join_and_leave_move_only_what_they_must(
    ids: list[str], newcomer: str, names: list[str]
) -> None:
    if newcomer in ids:
        return
    small = Ownership.from_ids(ids)
    big = Ownership.from_ids([*ids, newcomer])
    joined = moved(small, big, names)
    assert all(new == newcomer for _, new in joined.values())
    assert set(joined) == {n for n in names if big.owner(n) == newcomer}
    left = moved(big, small, names)  # the newcomer leaves again
    assert {n: (b, a) for n, (a, b) in joined.items()} == left


def test_balance_across_ten_nodes() -> None:
    own = Ownership.from_ids(f"web-{i}" for i in range(10))
    per_node = counts(own, NAMES)
    assert len(per_node) == 10
    for node, count in per_node.items():
        assert 800 <= count <= 1200, (node, count)


# -- new_channel() names route by their tag -------------------------------


def test_new_channel_names_go_to_their_tagged_node_or_nowhere() -> None:
    ids = [f"web-{i}" for i in range(5)]
    own = Ownership.from_ids(ids)
    for node in ids:
        for prefix in ("app", "my.dotted-app", ""):
            name = wire_name(prefix, specific_name("specific", tag_of(node), "abcdefghij", 7))
            assert own.owner(name) == node
    name = wire_name("app", specific_name("specific", tag_of("web-2"), "abcdefghij", 1))
    gone = Ownership.from_ids(i for i in ids if i != "web-2")
    assert gone.owner(name) is None
    assert moved(own, gone, [name]) == {name: ("web-2", None)}
    # a tag no member has ever had
    assert own.owner("app|specific.zzzzzz.abcdefghij!1") is None


def test_tagged_names_do_not_move_when_others_join() -> None:
    ids = [f"web-{i}" for i in range(5)]
    names = [
        wire_name("app", specific_name("s", tag_of(i), "abcdefghij", k))
        for i in ids
        for k in range(50)
    ]
    before = Ownership.from_ids(ids)
    after = Ownership.from_ids([*ids, *(f"new-{k}" for k in range(20))])
    assert moved(before, after, names) == {}


def test_tag_collision_resolves_the_same_way_everywhere() -> None:
    a = Ownership({"zeta": "abcdef", "alpha": "abcdef", "mid": "123456"})
    b = Ownership({"mid": "123456", "alpha": "abcdef", "zeta": "abcdef"})
    name = "app|specific.abcdef.abcdefghij!1"
    assert a.owner(name) == b.owner(name) == "alpha"
    assert a.tag_collisions == {"abcdef": ("alpha", "zeta")}
    assert Ownership.from_ids(GOLDEN_IDS).tag_collisions == {}


# -- hand-off after a change ----------------------------------------------


def test_handoff_groups_held_names_by_new_owner() -> None:
    ids = [f"web-{i}" for i in range(4)]
    before = Ownership.from_ids(ids)
    after = Ownership.from_ids([*ids, "web-4"])
    mine = [n for n in NAMES[:2000] if before.owner(n) == "web-0"]
    orphan = wire_name("app", specific_name("s", "zzzzzz", "abcdefghij", 0))
    own_specific = wire_name("app", specific_name("s", tag_of("web-0"), "abcdefghij", 0))
    plan = after.handoff("web-0", [*mine, orphan, own_specific])
    assert list(plan.to) == ["web-4"]  # a join only ever hands to the newcomer
    assert plan.to["web-4"] == [n for n in mine if after.owner(n) == "web-4"]  # order kept
    assert 0 < len(plan.to["web-4"]) < len(mine)
    assert plan.orphaned == [orphan]


@given(node_ids, plain_names)
def test_handoff_partitions_what_is_held(ids: list[str], names: list[str]) -> None:
    own = Ownership.from_ids(ids)
    me = ids[0]
    plan = own.handoff(me, names)
    assert plan.orphaned == []
    assert me not in plan.to
    handed = [n for group in plan.to.values() for n in group]
    kept = [n for n in names if own.owner(n) == me]
    assert sorted(handed + kept) == sorted(names)
    for owner, group in plan.to.items():
        assert all(own.owner(n) == owner for n in group)


# -- the cache ------------------------------------------------------------


def test_cache_is_bounded_and_gives_the_same_answers() -> None:
    ids = [f"web-{i}" for i in range(7)]
    cached = Ownership.from_ids(ids, cache_size=64)
    plain = Ownership.from_ids(ids, cache_size=0)
    for name in NAMES[:1000]:
        assert cached.owner(name) == plain.owner(name)
    assert cached.cache_info().currsize == 64
    hits = cached.cache_info().hits
    cached.owner(NAMES[999])
    assert cached.cache_info().hits == hits + 1


def test_a_membership_change_never_serves_a_stale_owner() -> None:
    ids = [f"web-{i}" for i in range(3)]
    old = Ownership.from_ids(ids)
    name = NAMES[0]
    first = old.owner(name)
    assert first is not None and old.owner(name) == first  # now cached
    new = Ownership.from_ids(i for i in ids if i != first)
    assert new.owner(name) not in (None, first)
    assert new.cache_info().currsize == 1


# -- a node that left cleanly: its names are parked, not orphaned ------------------


def test_a_left_nodes_names_are_kept_by_the_live_ones_until_it_is_back() -> None:
    """Issue 13, graceful drain: a node that left (it drains for a restart)
    has its tag parked: its ``new_channel()`` names are owned, as every other
    name, by rendezvous over the live nodes; a node that died has none; the
    node back takes its names again."""
    live = {"web-1": tag_of("web-1"), "web-2": tag_of("web-2")}
    gone = tag_of("web-3")
    names = [wire_name("asgi", specific_name("asgi", gone, f"s{i:09d}", i)) for i in range(60)]
    dead = Ownership(live)
    parked = Ownership(live, parked=[gone])
    assert {dead.owner(n) for n in names} == {None}
    owners = [parked.owner(n) for n in names]
    assert set(owners) == {"web-1", "web-2"}, "parked names are spread over the live nodes"
    assert owners == [Ownership(live, parked=[gone]).owner(n) for n in names], "every node agrees"
    back = Ownership({**live, "web-3": gone}, parked=[gone])
    assert {back.owner(n) for n in names} == {"web-3"}
    # hashed names do not move because a tag is parked
    plain = [f"asgi|chat.{i}" for i in range(60)]
    assert [parked.owner(n) for n in plain] == [dead.owner(n) for n in plain]
