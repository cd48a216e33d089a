"""Group replication, sans I/O: fanouts racing handovers of memberships.

A node that has just handed a group's memberships away passes the group's
fanouts on (``GROUP_FANOUT_PASSED``); the receiver applies a passed-on copy
to what that node's handovers brought after its own copy was applied, and to
nothing else (issue 13, item 5: seeds 157, 46, 131, 136, 267 of
``python -m tests.sim --faults drain``).
"""

from __future__ import annotations

import random

from zchannels.node.core import ClusterWork, CoreSettings, NodeCore
from zchannels.node.effects import Fx
from zchannels.node.membership import Gossip, MembershipConfig, MemberTable, State, Update
from zchannels.node.peer_messages import FanoutsSeen, GroupFanout, GroupFanoutPassed
from zchannels.node.replication import GroupReplication
from zchannels.node.routing import RESTART_GAP
from zchannels.node.sessions import Policy

from zchannels.protocol import MsgType

G = "asgi|g"
HANDED = "asgi|handed"  # the membership n1 hands to n2 (its keeper)
OWN = "asgi|own"  # a membership n2 held all along
F = GroupFanout("n0", 5, 1, G, b"m", 60.0)  # a group_send made on n0
ID = (F.origin, F.incarnation, F.seq)
PASSED = GroupFanoutPassed("n1", *ID, G, F.payload, F.ttl)  # n1's copy of it


def make_node(node_id: str = "n2") -> GroupReplication:
    core = NodeCore(CoreSettings(node_id, "abcdef", "7", 3.0, 1 << 20))
    table = MemberTable(
        MembershipConfig.test(),
        node_id=node_id,
        address="tcp://127.0.0.1:7702",
        incarnation=7,
        cluster="zc",
        rng=random.Random(0),
    )
    replication = GroupReplication(core, table, random.Random(0))
    core.groups.add(G, OWN, "n2@7/ownownowno", 60.0, 10)
    return replication


def hand_over(replication: GroupReplication, now: float, source: str = "n1") -> None:
    """What the composer does with a PEER_HANDOFF from ``source``."""
    member = (G, HANDED, f"{source}@3/abcdefghij", 60.0, 10)
    _, added = replication.core.adopt((), (member,), now)
    assert added == [(G, HANDED)]
    replication.adopted([(source, added)], now)


def queued(replication: GroupReplication, channel: str) -> int:
    return replication.core.queues.length(channel)


def test_a_fanout_before_the_handover_reaches_the_handed_members_once() -> None:
    """Seed 157: n0's fanout reaches n2 before n1's handover does (it finds
    only n2's own member); n1, which got it after handing over, passes it
    on: n2 applies that copy to the handed membership only, and once."""
    node = make_node()
    node.handle(F, 0.1, Fx())
    assert (queued(node, OWN), queued(node, HANDED)) == (1, 0)
    hand_over(node, 0.2)
    node.handle(PASSED, 0.3, Fx())
    assert (queued(node, OWN), queued(node, HANDED)) == (1, 1)
    assert (node.fanouts_caught_up, node.fanout_duplicates) == (1, 0)
    # a further copy reaches nobody new: a duplicate, counted once
    node.handle(PASSED, 0.4, Fx())
    node.handle(F, 0.4, Fx())
    assert (queued(node, OWN), queued(node, HANDED)) == (1, 1)
    assert (node.fanouts_caught_up, node.fanout_duplicates) == (1, 2)


def test_a_fanout_after_the_handover_is_not_applied_twice() -> None:
    node = make_node()
    hand_over(node, 0.1)
    node.handle(F, 0.2, Fx())  # (the handed member is here: it gets it)
    assert (queued(node, OWN), queued(node, HANDED)) == (1, 1)
    node.handle(PASSED, 0.3, Fx())
    assert (queued(node, OWN), queued(node, HANDED)) == (1, 1)
    assert (node.fanouts_caught_up, node.fanout_duplicates) == (0, 1)


def test_a_passed_copy_that_comes_first_reaches_every_member() -> None:
    """No copy came directly yet: the passed one is this node's first; the
    direct one that comes later is a duplicate."""
    node = make_node()
    hand_over(node, 0.1)
    node.handle(PASSED, 0.2, Fx())
    node.handle(F, 0.3, Fx())
    assert (queued(node, OWN), queued(node, HANDED)) == (1, 1)
    assert (node.fanouts_caught_up, node.fanout_duplicates) == (0, 1)


def test_a_passed_copy_is_only_for_the_passing_nodes_handovers() -> None:
    """Memberships handed by another node after the fanout are not the
    passing node's to make up for (that node passes its own copy on)."""
    node = make_node()
    node.handle(F, 0.1, Fx())
    hand_over(node, 0.2, source="n3")
    node.handle(PASSED, 0.3, Fx())  # from n1, which handed nothing here
    assert queued(node, HANDED) == 0
    assert node.fanout_duplicates == 1
    node.handle(GroupFanoutPassed("n3", *ID, G, b"m", 60.0), 0.3, Fx())
    assert queued(node, HANDED) == 1


def test_the_origin_gets_its_own_fanout_back_for_what_came_after_it() -> None:
    """Seed 46, the variant: the fanout was made on n2 itself before n1's
    handover reached it; n1, which had already handed the memberships,
    passes it back to its origin, which applies it to them."""
    node = make_node()
    core = node.core
    conn = b"cccccccccc/0"
    out = core.handle(conn, [(MsgType.HELLO, ("cccccccccc", 1, [60.0]))], 0.0)
    assert out[0][1][0] == MsgType.WELCOME
    work = ClusterWork()
    core.handle(conn, [(MsgType.GROUP_SEND, (1, G, b"mine"))], 0.1, work)
    node.after_core(work, 0.1, Fx())
    assert (queued(node, OWN), queued(node, HANDED)) == (1, 0)
    hand_over(node, 0.2)
    inc = node.replica.incarnation
    back = GroupFanoutPassed("n1", "n2", inc, 1, G, b"mine", 60.0)
    node.handle(back, 0.3, Fx())
    assert (queued(node, OWN), queued(node, HANDED)) == (1, 1)
    node.handle(back, 0.4, Fx())
    assert (queued(node, OWN), queued(node, HANDED)) == (1, 1)
    assert (node.fanouts_caught_up, node.fanout_duplicates) == (1, 1)


def test_a_node_that_handed_a_group_passes_its_fanouts_on_even_to_their_origin() -> None:
    node = make_node("n1")
    node.moved([("n0", G), ("n2", G)], 0.0)
    fx = Fx()
    node.handle(F, 0.1, fx)  # made on n0, which the memberships went to as well
    passed = GroupFanoutPassed("n1", *ID, G, F.payload, F.ttl)
    assert sorted(fx.peers, key=lambda p: p[0]) == [("n0", passed), ("n2", passed)]
    # a copy passed on here is not passed on again
    fx = Fx()
    node.handle(GroupFanoutPassed("n2", *ID, G, b"m", 60.0), 0.2, fx)
    assert fx.peers == []


def test_what_a_node_remembers_of_fanouts_and_handovers_is_bounded() -> None:
    node = make_node()
    node.handle(F, 0.0, Fx())
    hand_over(node, 0.0)
    later = 2 * node.catch_up_window() + 0.1
    node.tick(later, Fx())
    assert node._seen == {} and node._handed_in == []


def test_a_fanout_its_keeper_had_queued_is_not_given_again_with_the_handover() -> None:
    """Seen in CI's rolling restart (a group message twice on a ``!``
    channel): n0 made a group_send as n2 came back. n1, which kept n2's
    client's channel meanwhile, took it before it handed that membership
    back (the message went with the channel's queue); n0 had just handed n2
    other memberships, so it sent n2 its copy too, which came after n1's
    handover. Said before the handover (``FanoutsSeen``): n1 had taken n0's
    fanouts up to this one, so the handed membership is not given it
    again; n2's own members are."""
    node = make_node()
    n1 = Update("n1", "tcp://127.0.0.1:7701", 3, State.ALIVE, "n1")
    node.table.handle(Gossip("n1", (n1,)), 0.0)
    assert node.table.member("n1") is not None
    node.handle(FanoutsSeen("n1", (("n0", 5, 1),)), 0.1, Fx())
    hand_over(node, 0.1)  # (F's copy is in the queue it hands over: not shown)
    node.handle(F, 0.2, Fx())
    assert (queued(node, OWN), queued(node, HANDED)) == (1, 0)
    assert node.fanouts_had == 1
    # n1 did not pass it on (it had it); a later copy of it is a duplicate
    node.handle(PASSED, 0.3, Fx())
    assert (queued(node, OWN), queued(node, HANDED)) == (1, 0)
    # a later fanout of n0 (n1 had not taken it) reaches both
    node.handle(GroupFanout("n0", 5, 2, G, b"n", 60.0), 0.4, Fx())
    assert (queued(node, OWN), queued(node, HANDED)) == (2, 1)


def test_what_a_node_had_taken_goes_before_its_handovers_of_memberships() -> None:
    """The sender's side: each origin's last fanout, its own included."""
    node = make_node("n1")
    node.handle(F, 0.1, Fx())
    node.handle(GroupFanout("n0", 5, 3, G, b"m", 60.0), 0.2, Fx())
    node.handle(GroupFanout("n0", 5, 2, G, b"m", 60.0), 0.3, Fx())  # (an older one later)
    node.handle(GroupFanout("n3", 9, 4, G, b"m", 60.0), 0.3, Fx())
    # (a copy passed on by another node says nothing of its origin's earlier ones)
    node.handle(GroupFanoutPassed("n2", "n0", 5, 9, G, b"m", 60.0), 0.4, Fx())
    assert node.fanouts_seen() == FanoutsSeen("n1", (("n0", 5, 3), ("n3", 9, 4)))


def test_what_a_handover_said_goes_on_with_the_memberships_it_brought() -> None:
    """Soak seed 5000: n1 was handed a membership by n0 whose queue held
    copies of n2's fanouts up to 3 (n0's ``FanoutsSeen`` said so), then
    handed it on before any of them reached n1 directly. Its own
    ``FanoutsSeen`` must say what the first one said, for that membership,
    or the copies n1 passes on later reach it a second time. Mixed with a
    membership n1 held all along (which had nothing), the two go in two
    handovers, each after what it had."""
    node = make_node("n1")
    n0 = Update("n0", "tcp://127.0.0.1:7700", 5, State.ALIVE, "n0")
    node.table.handle(Gossip("n0", (n0,)), 0.0)
    node.handle(FanoutsSeen("n0", (("n2", 9, 3),)), 0.1, Fx())
    hand_over(node, 0.1, source="n0")
    handed = (G, HANDED, "n0@3/abcdefghij", 60.0, 10)
    own = (G, OWN, "n2@7/ownownowno", 60.0, 10)
    assert node.fanouts_seen((handed,)) == FanoutsSeen("n1", (("n2", 9, 3),))
    # (soak seed 5608: with one held here all along, which had nothing, the
    # handover is split, each part after what it had)
    assert node.fanouts_seen_split((handed, own)) == [
        (FanoutsSeen("n1", (("n2", 9, 3),)), (handed,)),
        (FanoutsSeen("n1", ()), (own,)),
    ]
    node.handle(GroupFanout("n2", 9, 5, G, b"x", 60.0), 0.2, Fx())  # (taken here: later)
    assert node.fanouts_seen_split((handed, own)) == [
        (FanoutsSeen("n1", (("n2", 9, 5),)), (handed, own))
    ]


def test_own_group_send_skips_members_kept_for_a_nodes_earlier_life() -> None:
    """Soak seed 3040: n2 kept n3's client's channel while n3 restarted;
    n3's new life is live, and this node's own group_send goes there (its
    client makes its membership again there). A copy queued here too
    reached the channel twice once the queue was handed back: skipped, as
    a peer's fanout skips them (``_superseded``)."""
    node = make_node("n2")
    kept = "asgi|kept"
    node.core.groups.add(G, kept, "n3@1000/keptkeptke", 60.0, 10)
    node.core.sessions.hello(b"A", "sendersend", 1, Policy(60.0), 0.0)
    send = [(MsgType.GROUP_SEND, (1, G, b"m"))]
    node.core.handle(b"A", send, 0.1, ClusterWork())
    assert (queued(node, OWN), queued(node, kept)) == (1, 1), "n3 not live: kept here"
    n3 = Update("n3", "tcp://127.0.0.1:7703", 1000 + RESTART_GAP, State.ALIVE, "n3")
    node.table.handle(Gossip("n3", (n3,)), 0.2)
    assert node.superseded_here(G) == {kept}
    node.core.handle(b"A", send, 0.3, ClusterWork())
    assert (queued(node, OWN), queued(node, kept)) == (2, 1), "skipped for the new life"


def test_a_peers_fanout_skips_members_kept_for_a_nodes_earlier_life() -> None:
    """10,000 seed 7642: n2 kept n3's client's channel and membership while
    n3 restarted; the client made its membership again at n3's new life,
    and a third node's group_send reached both n3 and n2 in the same
    millisecond. n2's copy went back with the channel to n3, which had one
    already: delivered twice. Once n3's new life is live here, a peer's
    fanout skips what is kept for the old one, as this node's own
    group_send does; before, it is kept (queued for the handback)."""
    node = make_node("n2")
    kept = "asgi|kept"
    node.core.groups.add(G, kept, "n3@1000/keptkeptke", 60.0, 10)
    node.handle(GroupFanout("n0", 5, 1, G, b"m", 60.0), 0.1, Fx())
    assert (queued(node, OWN), queued(node, kept)) == (1, 1), "n3 not live: kept here"
    n3 = Update("n3", "tcp://127.0.0.1:7703", 1000 + RESTART_GAP, State.ALIVE, "n3")
    node.table.handle(Gossip("n3", (n3,)), 0.2)
    node.handle(GroupFanout("n0", 5, 2, G, b"n", 60.0), 0.3, Fx())
    assert (queued(node, OWN), queued(node, kept)) == (2, 1), "skipped for the new life"
    assert node.fanouts_had == 1


def test_a_passed_copy_skips_members_whose_handover_had_it() -> None:
    """Soak seed 5608: the fanout reached this node's own member first;
    then n1 handed over a membership it had already given it (its queue
    holds the copy: ``FanoutsSeen``), and later passed the fanout on. The
    passed copy is for what n1's handovers brought after this node's copy
    was applied, but not for memberships that had it."""
    node = make_node()
    n1 = Update("n1", "tcp://127.0.0.1:7701", 3, State.ALIVE, "n1")
    node.table.handle(Gossip("n1", (n1,)), 0.0)
    node.handle(F, 0.1, Fx())
    assert (queued(node, OWN), queued(node, HANDED)) == (1, 0)
    node.handle(FanoutsSeen("n1", (("n0", 5, 1),)), 0.2, Fx())
    hand_over(node, 0.2)  # (F's copy is in the queue it hands over: not shown)
    node.handle(PASSED, 0.3, Fx())
    assert (queued(node, OWN), queued(node, HANDED)) == (1, 0)
    assert node.fanout_duplicates == 1
