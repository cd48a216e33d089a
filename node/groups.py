"""Group membership held by one node, with leases and expiry.

Owns: which channels are in which group, who holds each membership (the
session that added it: when that session's lease lapses, its memberships go),
and when each membership expires (``group_expiry``). Does not own: sessions,
sockets, or what a group_send does with the members.

Pure: methods take ``now`` (monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

from zchannels.names import namespace


@dataclass(slots=True)
class Membership:
    holder: str  # session tag of the process that made it
    expires_at: float  # monotonic seconds
    capacity: int  # the channel's capacity, as the adder's layer computed it


class Groups:
    def __init__(self) -> None:
        self.groups: dict[str, dict[str, Membership]] = {}
        self._by_holder: dict[str, set[tuple[str, str]]] = {}
        #: node -> how many of its sessions hold memberships here
        self._nodes: dict[str, int] = {}
        self.expired = 0
        #: groups whose member count may have changed since ``take_changed``
        #: (the cluster replicates each node's counts; off for a lone node)
        self._changed: set[str] = set()
        self.track_changes = False
        #: bumped at every change of any group (what is derived from the
        #: members, such as a group_send's plan, is cached against it)
        self.version = 0

    def __len__(self) -> int:
        return sum(len(members) for members in self.groups.values())

    def add(self, group: str, channel: str, holder: str, expires_at: float, capacity: int) -> bool:
        """Add or renew a membership; True if the channel was not a member."""
        members = self.groups.setdefault(group, {})
        old = members.get(channel)
        if old is not None and old.holder != holder:
            self._unindex(old.holder, group, channel)
        if old is None and self.track_changes:
            self._changed.add(group)
        members[channel] = Membership(holder, expires_at, capacity)
        self.version += 1
        held = self._by_holder.get(holder)
        if held is None:
            held = self._by_holder[holder] = set()
            self._count_node(holder, 1)
        held.add((group, channel))
        return old is None

    def discard(self, group: str, channel: str) -> bool:
        members = self.groups.get(group)
        if members is None:
            return False
        old = members.pop(channel, None)
        if old is None:
            return False
        self.version += 1
        if self.track_changes:
            self._changed.add(group)
        self._unindex(old.holder, group, channel)
        if not members:
            del self.groups[group]
        return True

    def live(self, group: str, now: float) -> list[tuple[str, Membership]]:
        """Live members of ``group``; expired ones are dropped here."""
        members = self.groups.get(group)
        if not members:
            return []
        stale = [ch for ch, m in members.items() if m.expires_at <= now]
        for ch in stale:
            self.discard(group, ch)
            self.expired += 1
        return list(self.groups.get(group, {}).items())

    def members(self, group: str, now: float) -> list[str]:
        return [channel for channel, _ in self.live(group, now)]

    def drop_holder(self, holder: str) -> int:
        """Remove every membership ``holder`` holds (its lease lapsed)."""
        held = self._by_holder.pop(holder, None)
        if held is None:
            return 0
        self._count_node(holder, -1)
        self.version += 1
        for group, channel in held:
            members = self.groups.get(group)
            if members is not None and channel in members:
                del members[channel]
                if self.track_changes:
                    self._changed.add(group)
                if not members:
                    del self.groups[group]
        return len(held)

    def held_by(self, holder: str) -> int:
        """How many memberships ``holder`` holds."""
        return len(self._by_holder.get(holder, ()))

    def has_node_memberships(self) -> bool:
        """Whether sessions of any other node hold memberships here (asked
        once per group_send: a plain node holds none)."""
        return bool(self._nodes)

    def has_node(self, node: str) -> bool:
        """Whether sessions of ``node`` (another node) hold memberships here
        (asked once per group_send from a peer: no scan of the holders)."""
        return node in self._nodes

    def held(self, holder: str) -> list[tuple[str, str]]:
        """The (group, channel) memberships ``holder`` holds."""
        return list(self._by_holder.get(holder, ()))

    def holders(self, prefix: str) -> list[str]:
        """Holders whose name starts with ``prefix`` (``"node/"``: the sessions
        of another node that made memberships here)."""
        return [h for h in self._by_holder if h.startswith(prefix)]

    def expire(self, now: float) -> None:
        for group in list(self.groups):
            self.members(group, now)

    def clear(self, prefix: str) -> None:
        """Forget every group of namespace ``prefix`` (``flush``)."""
        for group in [g for g in self.groups if namespace(g) == prefix]:
            for channel in list(self.groups[group]):
                self.discard(group, channel)

    def count(self, group: str) -> int:
        return len(self.groups.get(group, ()))

    def take_changed(self) -> set[str]:
        """Groups whose count may have changed since the last call."""
        changed, self._changed = self._changed, set()
        return changed

    def _unindex(self, holder: str, group: str, channel: str) -> None:
        held = self._by_holder.get(holder)
        if held is not None:
            held.discard((group, channel))
            if not held:
                del self._by_holder[holder]
                self._count_node(holder, -1)

    def _count_node(self, holder: str, delta: int) -> None:
        """Holders per node (``node@life/tag``; this node's own sessions,
        bare tags, are not counted)."""
        node, at, _ = holder.partition("@")
        if at:
            n = self._nodes.get(node, 0) + delta
            if n > 0:
                self._nodes[node] = n
            else:
                self._nodes.pop(node, None)
