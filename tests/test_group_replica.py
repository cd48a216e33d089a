"""The replicated group table (``GroupReplica``), pure: unit tests of each merge
rule, then property tests of whole clusters of replicas whose deltas are lost,
duplicated and reordered, which one round of all-pairs anti-entropy must bring
to the truth (the sum of every live node's own counts)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zchannels.node.group_replica import MAX_AHEAD, Delta, GroupReplica, Slice


def delta(origin: str, version: int, group: str, count: int, inc: int = 1) -> Delta:
    return Delta(origin, inc, version, group, count)


def view(r: GroupReplica) -> tuple[dict[str, int], dict[str, list[str]]]:
    return r.groups(), {g: r.nodes_for(g) for g in r.groups()}


# -- our own slice ---------------------------------------------------------------


def test_set_local_numbers_deltas_and_shows_in_the_view() -> None:
    r = GroupReplica("a", 7)
    assert r.set_local("chat", 2) == Delta("a", 7, 1, "chat", 2)
    assert r.set_local("chat", 2) is None  # unchanged: nothing to push
    assert r.set_local("news", 1) == Delta("a", 7, 2, "news", 1)
    assert r.set_local("chat", 0) == Delta("a", 7, 3, "chat", 0)
    assert r.set_local("gone", 0) is None  # 0 where there was none
    assert r.groups() == {"news": 1}
    assert r.nodes_for("news") == ["a"] and r.nodes_for("chat") == []
    assert r.size("news") == 1 and r.size("chat") == 0
    assert r.digest() == {"a": (7, 3)}


def test_set_local_rejects_negative_and_non_int_counts() -> None:
    r = GroupReplica("a", 1)
    with pytest.raises(ValueError):
        r.set_local("chat", -1)
    with pytest.raises(ValueError):
        r.set_local("chat", True)
    assert r.digest() == {"a": (1, 0)} and r.groups() == {}


# -- deltas ----------------------------------------------------------------------


def test_apply_in_order_sums_over_nodes() -> None:
    r = GroupReplica("a", 1)
    r.set_local("chat", 1)
    assert r.apply(delta("b", 1, "chat", 3))
    assert r.apply(delta("c", 1, "chat", 2))
    assert r.apply(delta("b", 2, "news", 1))
    assert r.groups() == {"chat": 6, "news": 1}
    assert r.nodes_for("chat") == ["a", "b", "c"]
    assert r.size("chat") == 6
    assert r.digest() == {"a": (1, 1), "b": (1, 2), "c": (1, 1)}
    assert r.apply(delta("b", 3, "chat", 0))
    assert r.nodes_for("chat") == ["a", "c"] and r.size("chat") == 3


def test_duplicate_and_stale_deltas_are_ignored() -> None:
    r = GroupReplica("a", 1)
    assert r.apply(delta("b", 1, "chat", 3))
    assert r.apply(delta("b", 2, "chat", 5))
    assert not r.apply(delta("b", 2, "chat", 5))  # duplicate
    assert not r.apply(delta("b", 1, "chat", 3))  # stale: would undo v2
    assert r.size("chat") == 5 and r.digest()["b"] == (1, 2)


def test_out_of_order_delta_applies_but_contiguous_waits_for_the_gap() -> None:
    r = GroupReplica("a", 1)
    assert r.apply(delta("b", 2, "news", 4))
    assert r.size("news") == 4  # absolute counts: safe to apply at once
    assert r.digest()["b"] == (1, 0)  # but the gap shows
    assert not r.apply(delta("b", 2, "news", 4))  # a duplicate above the gap too
    assert r.apply(delta("b", 1, "chat", 1))
    assert r.digest()["b"] == (1, 2)
    assert r.groups() == {"chat": 1, "news": 4}


def test_older_delta_of_a_group_never_overwrites_a_newer_one() -> None:
    r = GroupReplica("a", 1)
    assert r.apply(delta("b", 3, "chat", 5))
    assert r.apply(delta("b", 2, "chat", 9))  # news (fills version 2), not the count
    assert r.size("chat") == 5
    assert r.apply(delta("b", 1, "chat", 7))
    assert r.size("chat") == 5 and r.digest()["b"] == (1, 3)


def test_delta_too_far_ahead_is_left_to_anti_entropy() -> None:
    r = GroupReplica("a", 1)
    r.apply(delta("b", 1, "chat", 1))
    assert not r.apply(delta("b", MAX_AHEAD + 2, "chat", 5))
    assert r.size("chat") == 1
    assert r.apply(delta("b", MAX_AHEAD + 1, "chat", 5))
    assert r.size("chat") == 5


def test_invalid_deltas_are_ignored() -> None:
    r = GroupReplica("a", 1)
    assert not r.apply(delta("b", 1, "chat", -1))
    assert not r.apply(delta("b", 0, "chat", 1))  # versions start at 1
    assert not r.apply(delta("b", 1, "chat", True))  # a bool is no count
    assert r.groups() == {} and "b" not in r.digest()


def test_nobody_else_writes_our_slice() -> None:
    r = GroupReplica("a", 1)
    r.set_local("chat", 1)
    assert not r.apply(delta("a", 2, "chat", 9))
    assert not r.apply(delta("a", 2, "chat", 9, inc=2))
    assert not r.apply_slice(Slice("a", 2, 5, (("chat", 9),)))
    assert r.size("chat") == 1 and r.digest() == {"a": (1, 1)}


# -- incarnations ----------------------------------------------------------------


def test_older_incarnation_is_ignored() -> None:
    r = GroupReplica("a", 1)
    assert r.apply(delta("b", 1, "chat", 2, inc=5))
    assert not r.apply(delta("b", 2, "chat", 9, inc=4))
    assert not r.apply_slice(Slice("b", 4, 9, (("news", 1),)))
    assert r.groups() == {"chat": 2} and r.digest()["b"] == (5, 1)


def test_newer_incarnation_replaces_the_whole_slice() -> None:
    r = GroupReplica("a", 1)
    r.apply(delta("b", 1, "chat", 2))
    r.apply(delta("b", 2, "news", 3))
    r.apply(delta("b", 4, "later", 1))  # out of order, pending
    assert r.apply(delta("b", 1, "news", 1, inc=2))  # restarted: version from 1
    assert r.groups() == {"news": 1}
    assert r.digest()["b"] == (2, 1)
    assert r.apply(delta("b", 2, "chat", 6, inc=2))  # old v2 is no duplicate now
    assert r.groups() == {"news": 1, "chat": 6}
    # by slice as well, even one at version 0 (a restart with no members)
    assert r.apply_slice(Slice("b", 3, 0, ()))
    assert r.groups() == {} and r.digest()["b"] == (3, 0)


def test_newer_incarnation_too_far_ahead_still_replaces_the_slice() -> None:
    r = GroupReplica("a", 1)
    r.apply(delta("b", 1, "chat", 2))
    assert r.apply(delta("b", MAX_AHEAD + 1, "news", 1, inc=2))
    assert r.groups() == {} and r.digest()["b"] == (2, 0)


# -- slices ----------------------------------------------------------------------


def test_slice_fills_a_gap_and_sets_every_group() -> None:
    r = GroupReplica("a", 1)
    r.apply(delta("b", 1, "chat", 2))
    r.apply(delta("b", 2, "old", 1))
    # b's slice at version 4: "old" went to 0, "new" arrived; deltas 3-4 lost
    assert r.apply_slice(Slice("b", 1, 4, (("chat", 3), ("new", 1))))
    assert r.groups() == {"chat": 3, "new": 1}
    assert r.digest()["b"] == (1, 4)
    assert not r.apply(delta("b", 3, "old", 7))  # covered by the slice


def test_slice_not_newer_than_what_we_hold_is_ignored() -> None:
    r = GroupReplica("a", 1)
    r.apply(delta("b", 1, "chat", 2))
    r.apply(delta("b", 2, "chat", 3))
    assert not r.apply_slice(Slice("b", 1, 2, (("chat", 99),)))
    assert not r.apply_slice(Slice("b", 1, 1, ()))
    assert r.size("chat") == 3


def test_slice_keeps_groups_written_by_newer_out_of_order_deltas() -> None:
    r = GroupReplica("a", 1)
    r.apply(delta("b", 5, "chat", 8))  # version 5 before 1-4
    assert r.apply_slice(Slice("b", 1, 3, (("chat", 2), ("news", 1))))
    assert r.groups() == {"chat": 8, "news": 1}
    assert r.digest()["b"] == (1, 3)
    assert r.apply(delta("b", 4, "news", 0))
    assert r.digest()["b"] == (1, 5)  # the pending version 5 counts now
    assert r.groups() == {"chat": 8}


def test_invalid_slices_are_ignored() -> None:
    r = GroupReplica("a", 1)
    r.apply(delta("b", 1, "chat", 2))
    assert not r.apply_slice(Slice("b", 1, 4, (("chat", -1),)))
    assert not r.apply_slice(Slice("b", 1, 4, (("chat", 1), ("chat", 3))))
    assert not r.apply_slice(Slice("b", 1, -1, ()))
    assert not r.apply_slice(Slice("c", 1, 4, (("x", 1), ("y", -2))))
    assert r.groups() == {"chat": 2} and r.digest() == {"a": (1, 0), "b": (1, 1)}


def test_forwarded_slice_with_later_values_converges_once_the_gap_closes() -> None:
    # b holds origin o complete to 1 plus an out-of-order version 3 for "chat";
    # it forwards that to c, tagged version 1. c then sees o's deltas 2 and 3.
    o, b, c = GroupReplica("o", 1), GroupReplica("b", 1), GroupReplica("c", 1)
    d1, d2, d3 = o.set_local("chat", 1), o.set_local("chat", 2), o.set_local("chat", 3)
    assert d1 and d2 and d3
    b.apply(d1)
    b.apply(d3)
    assert b.digest()["o"] == (1, 1)
    for s in b.missing(c.digest()):
        c.apply_slice(s)
    assert c.size("chat") == 3 and c.digest()["o"] == (1, 1)
    c.apply(d2)  # briefly the older value ...
    assert c.digest()["o"] == (1, 2)
    c.apply(d3)  # ... until the gap closes
    assert c.size("chat") == 3 and c.digest()["o"] == o.digest()["o"]


# -- anti-entropy ----------------------------------------------------------------


def test_missing_ships_each_slice_the_peer_is_behind_on() -> None:
    r = GroupReplica("a", 2)
    r.set_local("chat", 1)
    r.apply(delta("b", 1, "chat", 2, inc=3))
    r.apply(delta("b", 2, "news", 1, inc=3))
    r.apply(delta("c", 1, "x", 1))
    r.apply(delta("e", 1, "y", 1))
    peer = {
        "a": (2, 0),  # behind on us: our own slice goes
        "b": (3, 1),  # a gap
        "c": (1, 1),  # level
        "d": (1, 9),  # we don't know it
        "e": (2, 0),  # newer incarnation than ours: never
    }
    assert r.missing(peer) == [
        Slice("a", 2, 1, (("chat", 1),)),
        Slice("b", 3, 2, (("chat", 2), ("news", 1))),
    ]
    assert [s.origin for s in r.missing({"a": (1, 9), "b": (3, 7)})] == ["a", "c", "e"]
    assert r.missing(r.digest()) == []


def test_empty_slices_are_shipped_too() -> None:
    # An empty slice still says which (incarnation, version) is current: c
    # learns it from the origin a, then refuses b's stale slice of a.
    a, b, c = GroupReplica("a", 1), GroupReplica("b", 1), GroupReplica("c", 1)
    b.apply(a.set_local("chat", 1) or pytest.fail("no delta"))
    a.set_local("chat", 0)  # lost
    assert a.missing(c.digest()) == [Slice("a", 1, 2, ())]
    for s in a.missing(c.digest()):
        assert c.apply_slice(s)
    assert c.digest()["a"] == (1, 2)
    assert b.missing(c.digest()) == [Slice("b", 1, 0, ())]
    assert not c.apply_slice(b.slice_of("a"))
    assert c.groups() == {}


def test_digest_exchange_repairs_a_lost_delta() -> None:
    a, b = GroupReplica("a", 1), GroupReplica("b", 1)
    b.apply(a.set_local("chat", 1) or pytest.fail("no delta"))
    a.set_local("chat", 2)  # lost
    a.set_local("news", 1)  # lost
    assert b.digest()["a"] != a.digest()["a"]
    shipped = a.missing(b.digest())
    assert shipped == [a.slice_of("a")]
    assert all(b.apply_slice(s) for s in shipped)
    assert view(b) == view(a) and b.digest()["a"] == a.digest()["a"]


# -- dropping a dead node ----------------------------------------------------------


def test_drop_origin_forgets_the_slice_and_stays_dropped() -> None:
    r = GroupReplica("a", 1)
    r.set_local("chat", 1)
    r.apply(delta("b", 1, "chat", 2, inc=4))
    r.apply(delta("b", 2, "news", 1, inc=4))
    assert r.drop_origin("b") == ["chat", "news"]
    assert r.groups() == {"chat": 1} and r.nodes_for("chat") == ["a"]
    assert "b" not in r.digest()
    assert not r.apply(delta("b", 3, "chat", 5, inc=4))  # late delta, same incarnation
    assert not r.apply(delta("b", 1, "chat", 5, inc=3))  # older incarnation
    assert not r.apply_slice(Slice("b", 4, 9, (("chat", 5),)))  # a peer's stale slice
    assert r.groups() == {"chat": 1} and "b" not in r.digest()
    assert r.drop_origin("b") == []
    assert r.apply(delta("b", 1, "chat", 5, inc=5))  # it restarted: welcome
    assert r.nodes_for("chat") == ["a", "b"]


def test_drop_origin_of_an_unknown_node_with_its_incarnation() -> None:
    r = GroupReplica("a", 1)
    assert r.drop_origin("b", incarnation=3) == []
    assert not r.apply(delta("b", 1, "chat", 1, inc=3))
    assert r.apply(delta("b", 1, "chat", 1, inc=4))
    # a lower incarnation given later does not lower what is remembered
    r.drop_origin("c", incarnation=5)
    r.drop_origin("c", incarnation=2)
    assert not r.apply(delta("c", 1, "chat", 1, inc=5))
    r.forget_dropped("c")
    assert r.apply(delta("c", 1, "chat", 1, inc=5))


def test_own_slice_is_never_dropped() -> None:
    r = GroupReplica("a", 1)
    r.set_local("chat", 1)
    assert r.drop_origin("a") == []
    assert r.groups() == {"chat": 1}
    assert r.set_local("chat", 2) == Delta("a", 1, 2, "chat", 2)


# -- clusters of replicas ----------------------------------------------------------

GROUPS = ["g0", "g1", "g2", "g3"]


class Cluster:
    """Replicas, an in-flight set of deltas (each copy to each peer) and the truth."""

    def __init__(self, n: int) -> None:
        self.ids = [f"n{i}" for i in range(n)]
        self.incarnation = dict.fromkeys(self.ids, 1)
        self.nodes = {i: GroupReplica(i, 1) for i in self.ids}
        self.local: dict[str, dict[str, int]] = {i: {} for i in self.ids}
        self.in_flight: list[tuple[str, Delta]] = []

    def change(self, node: str, group: str, count: int, copies: list[int]) -> None:
        d = self.nodes[node].set_local(group, count)
        self.local[node][group] = count
        if d is None:
            return
        for peer, k in zip([p for p in self.ids if p != node], copies, strict=False):
            self.in_flight += [(peer, d)] * k  # k = 0: lost; 2: duplicated

    def deliver(self, index: int) -> None:
        peer, d = self.in_flight.pop(index)
        if peer in self.nodes:
            self.nodes[peer].apply(d)

    def exchange(self, receiver: str, sender: str) -> None:
        for s in self.nodes[sender].missing(self.nodes[receiver].digest()):
            self.nodes[receiver].apply_slice(s)

    def full_round(self, pairs: list[tuple[str, str]]) -> None:
        for receiver, sender in pairs:
            self.exchange(receiver, sender)

    def restart(self, node: str) -> None:
        self.incarnation[node] += 1
        self.nodes[node] = GroupReplica(node, self.incarnation[node])
        self.local[node] = {}

    def truth(self) -> tuple[dict[str, int], dict[str, list[str]]]:
        sizes: dict[str, int] = {}
        where: dict[str, list[str]] = {}
        for node in sorted(self.nodes):
            for group, count in self.local[node].items():
                if count:
                    sizes[group] = sizes.get(group, 0) + count
                    where.setdefault(group, []).append(node)
        return sizes, where

    def check(self) -> None:
        sizes, where = self.truth()
        for r in self.nodes.values():
            assert r.groups() == sizes
            for group in GROUPS:
                assert r.nodes_for(group) == where.get(group, [])
                assert r.size(group) == sizes.get(group, 0)
        # and anti-entropy agrees: no replica is behind another on any origin
        for a, b in itertools.permutations(self.nodes.values(), 2):
            assert a.missing(b.digest()) == []


def run(cluster: Cluster, data: st.DataObject, steps: int) -> None:
    """Random local changes, deliveries and occasional single exchanges."""
    n = len(cluster.ids)
    for _ in range(steps):
        live = sorted(cluster.nodes)
        action = data.draw(st.sampled_from(["change", "change", "deliver", "exchange"]))
        if action == "change":
            cluster.change(
                data.draw(st.sampled_from(live)),
                data.draw(st.sampled_from(GROUPS)),
                data.draw(st.integers(0, 3)),
                data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)),
            )
        elif action == "deliver" and cluster.in_flight:
            cluster.deliver(data.draw(st.integers(0, len(cluster.in_flight) - 1)))
        elif action == "exchange":
            receiver, sender = data.draw(st.permutations(live))[:2]
            cluster.exchange(receiver, sender)


def settle(cluster: Cluster, data: st.DataObject) -> None:
    """Deliver (or lose) what is in flight in random order, then one round of
    all-pairs anti-entropy in random order."""
    order = data.draw(st.permutations(range(len(cluster.in_flight))))
    flight, cluster.in_flight = cluster.in_flight, []
    lose = data.draw(st.lists(st.booleans(), min_size=len(flight), max_size=len(flight)))
    for i in order:
        if not lose[i]:
            cluster.in_flight.append(flight[i])
            cluster.deliver(len(cluster.in_flight) - 1)
    pairs = list(itertools.permutations(sorted(cluster.nodes), 2))
    cluster.full_round(data.draw(st.permutations(pairs)))


@settings(max_examples=200, deadline=None)
@given(st.integers(3, 6), st.data())
def test_one_round_of_anti_entropy_converges_to_the_truth(n: int, data: st.DataObject) -> None:
    cluster = Cluster(n)
    run(cluster, data, data.draw(st.integers(0, 60)))
    settle(cluster, data)
    cluster.check()


@settings(max_examples=100, deadline=None)
@given(st.integers(3, 6), st.data())
def test_a_dropped_origin_stays_dropped(n: int, data: st.DataObject) -> None:
    cluster = Cluster(n)
    run(cluster, data, data.draw(st.integers(5, 50)))
    dead = data.draw(st.sampled_from(cluster.ids))
    dead_replica = cluster.nodes.pop(dead)
    del cluster.local[dead]
    survivors = sorted(cluster.nodes)
    # some survivors learn of the death first; the others still hold its slice
    # and offer it in anti-entropy, and its late deltas are still in flight
    first = data.draw(st.lists(st.sampled_from(survivors), unique=True, min_size=1))
    # (the member table knows the dead incarnation, even where no delta of
    # it ever arrived)
    for node in first:
        cluster.nodes[node].drop_origin(dead, incarnation=cluster.incarnation[dead])
    pairs = list(itertools.permutations(survivors, 2))
    cluster.full_round(data.draw(st.permutations(pairs)))
    for node in first:
        assert dead not in cluster.nodes[node].digest()
    for node in survivors:
        cluster.nodes[node].drop_origin(dead, incarnation=cluster.incarnation[dead])
    # its last words, after the drop: a slice straight from it, and stale deltas
    for node in survivors:
        assert not cluster.nodes[node].apply_slice(dead_replica.slice_of(dead))
    run(cluster, data, data.draw(st.integers(0, 20)))
    settle(cluster, data)
    cluster.check()
    for r in cluster.nodes.values():
        assert dead not in r.digest()


@settings(max_examples=100, deadline=None)
@given(st.integers(3, 6), st.data())
def test_a_restarted_origin_replaces_its_old_slice(n: int, data: st.DataObject) -> None:
    cluster = Cluster(n)
    run(cluster, data, data.draw(st.integers(5, 50)))
    node = data.draw(st.sampled_from(cluster.ids))
    old = cluster.nodes[node]
    cluster.restart(node)  # its old incarnation's deltas stay in flight
    run(cluster, data, data.draw(st.integers(0, 40)))
    # the old incarnation's own slice, arriving late, cannot undo the restart
    for peer in cluster.ids:
        r = cluster.nodes[peer]
        if peer != node and r.digest().get(node, (0, 0))[0] == cluster.incarnation[node]:
            before = view(r)
            assert not r.apply_slice(old.slice_of(node))
            assert view(r) == before
    settle(cluster, data)
    cluster.check()
    for r in cluster.nodes.values():
        assert r.digest()[node][0] == cluster.incarnation[node]
