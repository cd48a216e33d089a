"""The memberships another node's sessions hold here, by node: a group_send
from a peer asks whether any are held for that node's earlier lives
(``GroupReplication._superseded``) without scanning every holder."""

from __future__ import annotations

from zchannels.node.groups import Groups


def test_holders_are_counted_per_node_as_they_come_and_go() -> None:
    g = Groups()
    g.add("asgi|g", "asgi|a!1", "n1@1000/t1", 60.0, 10)
    g.add("asgi|g", "asgi|a!2", "n1@1000/t1", 60.0, 10)
    g.add("asgi|h", "asgi|b!1", "n1@2000/t2", 60.0, 10)
    g.add("asgi|g", "asgi|c", "localtag", 60.0, 10)  # this node's own session
    assert g.has_node("n1") and not g.has_node("localtag") and not g.has_node("n2")
    assert sorted(g.held("n1@1000/t1")) == [("asgi|g", "asgi|a!1"), ("asgi|g", "asgi|a!2")]
    g.discard("asgi|g", "asgi|a!1")
    g.discard("asgi|g", "asgi|a!2")
    assert g.has_node("n1"), "n1@2000/t2 still holds one"
    assert g.drop_holder("n1@2000/t2") == 1
    assert not g.has_node("n1")
    assert g.drop_holder("n1@2000/t2") == 0


def test_a_membership_taken_over_by_another_holder_moves_its_node_count() -> None:
    g = Groups()
    g.add("asgi|g", "asgi|a", "n1@1000/t1", 60.0, 10)
    g.add("asgi|g", "asgi|a", "n2@1000/t9", 60.0, 10)  # renewed by another session
    assert not g.has_node("n1") and g.has_node("n2")
