"""What one connection owes its node and is owed by it, sans I/O.

Owns: per channel, the messages the node has handed over and no
``receive()`` has taken yet (the prefetch buffer), the receive credit granted
to the node, withdrawals of credit not yet acknowledged, the consumption not
yet reported, and the send reservations the node granted. Takes events
(a receive starts, takes, leaves; a delivery, an ACK, a flush, a revoke, a
sweep, a close) with ``now`` and returns the messages to send and how many
waiting receivers to wake. No socket, no event loop, no clock read: the
shell (``zchannels.connection``) carries the effects out, and the property
tests run it against the node's queues over arbitrary interleavings.

The invariants it keeps (with ``zchannels.node.queues``):

- A message is taken only by a ``receive()`` that returns it, so a cancelled
  receive loses nothing; what nobody here takes for ``IDLE_RETURN`` seconds,
  or at close, is given back to the node (``RETURN``), which puts it back
  in order by sequence number. Deliveries that cross a withdrawal go back too, until the node
  acknowledges the withdrawal.
- Capacity is exact: every message taken (or found expired here) is
  reported (``CONSUMED``, coalesced per channel, always before any later
  message of this connection), and only then stops counting at the node.
- A reserved send never outlives the node's promise (half the TTL), and a
  ``REVOKE`` is answered (``REVOKED``) after every send made with the
  reservation: they share one ordered pipe.
- When the node drains (``DRAIN``: it is going away, a rolling restart),
  everything prefetched goes back and every credit is withdrawn; until a
  node welcomes the connection again no credit is granted, no reservation
  taken, and whatever arrives goes back: the node can hand all of it on.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .names import namespace, pool_of
from .protocol import RESERVATION_TTL, Message, MsgType

#: Credit kept granted per channel while it is being received. A window lets
#: the node push the next messages while the consumer handles this one
#: (without it, every message costs a round trip). Prefetched messages still
#: count against the channel's capacity until a receive() takes them.
RECEIVE_WINDOW = 32
#: A receive grants credit again once the node holds (credit) or this
#: connection buffers no more than this many for the channel.
REPLENISH_AT = RECEIVE_WINDOW // 2
#: Seconds prefetched messages may sit with nobody receiving before they are
#: given back to the node for other receivers.
IDLE_RETURN = 0.25


class BundleIn:
    """One ``DELIVER_BUNDLE`` as this connection holds it: the buffer entry
    its channels share, and which of them took it and are not reported yet
    (runs of positions in the delivery's channel list, so a report names a
    whole bundle, or a run of it, in two integers)."""

    __slots__ = ("born", "channels", "entry", "index", "next", "runs", "taken")

    def __init__(self, channels: list[str], entry: tuple[bytes, float, int], now: float) -> None:
        self.born = now
        self.channels = channels
        #: the buffer entry every channel of the delivery shares: a copy is
        #: this bundle's only if it is this very object (not a redelivery)
        self.entry = entry
        #: channel -> position, built only when takes come out of order
        self.index: dict[str, int] | None = None
        #: the position the next take usually has (receivers are woken in
        #: the delivery's order)
        self.next = 0
        #: [start, end, start, end, ...]: taken, not reported
        self.runs: list[int] = []
        #: copies taken so far (reported or not)
        self.taken = 0

    def take(self, channel: str) -> bool:
        """``channel`` took its copy (False: not a channel of this delivery)."""
        i = self.next
        channels = self.channels
        if i >= len(channels) or channels[i] != channel:
            if self.index is None:
                self.index = {c: j for j, c in enumerate(channels)}
            found = self.index.get(channel)
            if found is None:
                return False
            i = found
        runs = self.runs
        if runs and runs[-1] == i:
            runs[-1] = i + 1
        else:
            runs += (i, i + 1)
        self.next = i + 1
        self.taken += 1
        return True


@dataclass(slots=True)
class ChannelFlow:
    #: (payload, local deadline, node seq): handed over, not yet taken
    buffer: deque[tuple[bytes, float, int]] = field(default_factory=deque)
    #: credit granted to the node and not yet used
    credit: int = 0
    #: when a receiver last left (monotonic)
    active_at: float = 0.0
    #: receive() calls using this channel right now (waiting or just woken)
    users: int = 0
    #: receivers waiting for something to land in ``buffer``
    waiting: int = 0


class Flow:
    def __init__(self, requests: itertools.count[int] | None = None) -> None:
        self.channels: dict[str, ChannelFlow] = {}
        #: RETURN request id -> channel, until the node's ACK
        self.withdrawals: dict[int, str] = {}
        #: channel -> credit withdrawals not yet acknowledged
        self.draining: dict[str, int] = {}
        #: channel -> [highest seq taken, how many taken, how many of them
        #: found expired]: not yet reported
        self.consumed: dict[str, list[int]] = {}
        #: seq -> a DELIVER_BUNDLE some of whose copies may still be taken
        #: here (a take of its shared entry is reported per bundle)
        self.bundles: dict[int, BundleIn] = {}
        #: seq -> the bundles with copies taken and not reported yet
        self.bundles_taken: dict[int, BundleIn] = {}
        #: capacity pool -> [slots the node reserved for us, use until (monotonic)]
        self.reservations: dict[str, list[float]] = {}
        #: capacity pool -> reserved sends made so far (see ``reserved``)
        self.spent: dict[str, int] = {}
        self._req = requests if requests is not None else itertools.count(1)
        #: messages taken / found expired here (for counters)
        self.expired = 0
        #: the node drains: nothing is granted or reserved until a WELCOME
        self.moving = False

    # -- receiving --------------------------------------------------------
    def enter(self, channel: str) -> ChannelFlow:
        """A receive() starts on ``channel``."""
        state = self.channels.get(channel)
        if state is None:
            state = self.channels[channel] = ChannelFlow()
        state.users += 1
        return state

    def take(self, channel: str, now: float) -> bytes | None:
        """The next live prefetched message of ``channel``, if any (its
        consumption is recorded for the next report)."""
        state = self.channels.get(channel)
        if state is None:
            return None
        return self.take_from(state, channel, now)

    def take_from(self, state: ChannelFlow, channel: str, now: float) -> bytes | None:
        """``take``, for a receive() that holds ``channel``'s ``state``."""
        buffer = state.buffer
        while buffer:
            entry = buffer.popleft()
            payload, deadline, seq = entry
            if self.bundles and deadline > now and channel not in self.consumed:
                # A copy of a DELIVER_BUNDLE, with nothing of this channel
                # reported per channel yet (so the node, applying bundle
                # reports first, finds everything handed before it gone).
                bundle = self.bundles.get(seq)
                if bundle is not None and bundle.entry is entry and bundle.take(channel):
                    self.bundles_taken[seq] = bundle
                    return payload
            report = self.consumed.get(channel)
            if report is None:
                report = self.consumed[channel] = [seq, 1, 0]
            else:
                report[1] += 1
                if seq > report[0]:
                    report[0] = seq
            if deadline > now:
                return payload
            report[2] += 1
            self.expired += 1
        return None

    def wants_credit(self, state: ChannelFlow) -> bool:
        """Whether ``replenish`` may have credit to grant (a cheap test the
        shell makes on every receive, inline: ``REPLENISH_AT``)."""
        return state.credit + len(state.buffer) <= REPLENISH_AT

    def replenish(self, channel: str) -> list[Message]:
        """Credit to grant so the node keeps up to a window in flight."""
        state = self.channels.get(channel)
        if state is None or channel in self.draining or self.moving:
            # New credit now would let the node deliver newer messages ahead
            # of the ones still coming back to it; grant once drained.
            return []
        have = state.credit + len(state.buffer)
        if have > REPLENISH_AT:
            return []
        grant = RECEIVE_WINDOW - have
        state.credit += grant
        return [(MsgType.RECV, (channel, grant))]

    def leave(self, channel: str, now: float) -> None:
        """A receive() on ``channel`` ends (returned, failed or cancelled).
        What it leaves prefetched stays for the next receive() here, however
        it ended, and goes back only once nobody here took it for
        ``IDLE_RETURN`` (``sweep``): giving it back at a cancellation made a
        loop that cancels its receives within a few iterations (a cancel
        storm) wait a withdrawal and a delivery per message and starve."""
        state = self.channels.get(channel)
        if state is None:
            return
        state.users -= 1
        state.active_at = now

    def deliver(
        self, channel: str, items: list[list[Any]], now: float
    ) -> tuple[int, list[Message]]:
        """The node handed messages over: how many waiters to wake, and what
        to send (a RETURN, for what arrived against withdrawn credit).
        (``deliver_many`` has this method's path for a channel receiving
        here inline: a rule added here belongs there too.)"""
        state = self.channels.get(channel)
        if state is None or self.draining.get(channel) or self.moving:
            # Sent against credit we have withdrawn: it goes back, and the
            # node merges it in by sequence number, so order holds.
            return 0, [(MsgType.RETURN, (0, channel, items, 0))]
        state.credit = max(0, state.credit - len(items))
        for payload, ttl, seq in items:
            state.buffer.append((payload, now + ttl, seq))
        if state.waiting:
            return min(state.waiting, len(items)), []
        if state.users == 0 and now - state.active_at > IDLE_RETURN:
            return 0, self.give_back(channel, now)
        return 0, []

    def deliver_many(
        self, channels: list[str], item: list[Any], now: float, bundle: bool = False
    ) -> tuple[list[str], list[Message]]:
        """One group message for several channels (``DELIVER_MANY``, or
        ``DELIVER_BUNDLE`` with ``bundle``: its takes are reported per
        bundle): the channels where one waiter is to be woken (a message
        each), and what to send. (This runs once per member of a group_send: a channel
        receiving here, not draining, of a connection not moving, takes
        ``deliver``'s path inline and shares one buffer entry with the
        others; any other goes through ``deliver``.)"""
        wakes: list[str] = []
        out: list[Message] = []
        payload, ttl, seq = item
        entry = (payload, now + ttl, seq)
        states = {} if self.moving else self.channels  # (moving: all go back, by deliver)
        draining = self.draining
        items = [item]
        shared = False
        for channel in channels:
            state = states.get(channel)
            if state is not None and not (draining and draining.get(channel)):
                if state.credit > 0:
                    state.credit -= 1
                state.buffer.append(entry)
                shared = True
                if state.waiting:
                    wakes.append(channel)
                elif state.users == 0 and now - state.active_at > IDLE_RETURN:
                    out.extend(self.give_back(channel, now))
                continue
            wake, back = self.deliver(channel, items, now)
            if wake:  # (one item: one waiter at most)
                wakes.append(channel)
            if back:
                out.extend(back)
        if bundle and shared:
            self.bundles[seq] = BundleIn(channels, entry, now)
        return wakes, out

    def give_back(self, channel: str, now: float) -> list[Message]:
        """Return what nobody here is taking to the node, withdraw credit."""
        state = self.channels.get(channel)
        if state is None:
            return []
        # Expired ones are taken here (and counted by the node, once); the
        # rest go back.
        while state.buffer and state.buffer[0][1] <= now:
            _payload, _deadline, seq = state.buffer.popleft()
            report = self.consumed.setdefault(channel, [seq, 0, 0])
            report[0] = max(report[0], seq)
            report[1] += 1
            report[2] += 1
            self.expired += 1
        out = self.report()
        items = [[p, deadline - now, seq] for p, deadline, seq in state.buffer]
        state.buffer.clear()
        if state.credit or items:
            # Deliveries already on their way used the credit withdrawn here:
            # until the node's ACK says they have all arrived, whatever
            # arrives for this channel goes back too (see ``deliver``).
            req = next(self._req)
            self.withdrawals[req] = channel
            self.draining[channel] = self.draining.get(channel, 0) + 1
            out.append((MsgType.RETURN, (req, channel, items, 1)))
        state.credit = 0
        if state.users == 0:
            del self.channels[channel]
        return out

    def give_back_all(self, now: float) -> list[Message]:
        out: list[Message] = []
        for channel in list(self.channels):
            out.extend(self.give_back(channel, now))
        return out

    def withdrawal_acked(self, req: int) -> list[Message]:
        """The node acknowledged withdrawal ``req`` (a RETURN of ours): once a
        channel has none left, a waiting receiver's credit goes out again."""
        channel = self.withdrawals.pop(req)
        left = self.draining.get(channel, 1) - 1
        if left > 0:
            self.draining[channel] = left
            return []
        self.draining.pop(channel, None)
        state = self.channels.get(channel)
        if state is not None and state.waiting:
            return self.replenish(channel)
        return []

    def sweep(self, now: float) -> list[Message]:
        """Idle channels give their prefetched messages back; lapsed
        reservations go."""
        out: list[Message] = []
        for channel, state in list(self.channels.items()):
            if state.users == 0 and now - state.active_at > IDLE_RETURN:
                out.extend(self.give_back(channel, now))
        for channel, reservation in list(self.reservations.items()):
            if reservation[1] <= now:
                del self.reservations[channel]
        if self.bundles:
            # Bundles some copies of which went back or still wait after an
            # idle spell are forgotten (not while takes of theirs wait to be
            # reported); their copies still here are then reported per
            # channel, which is always right: everything handed to a
            # channel before them is reported already.
            taken = self.bundles_taken
            old = [
                seq
                for seq, bundle in self.bundles.items()
                if now - bundle.born > IDLE_RETURN and seq not in taken
            ]
            for seq in old:
                del self.bundles[seq]
        return out

    def flushed(self, prefix: str) -> list[Message]:
        """The node flushed namespace ``prefix``: what was prefetched of it is
        gone (the node no longer counts it)."""
        for channel, state in self.channels.items():
            if state.buffer and namespace(channel) == prefix:
                state.buffer.clear()
        for channel in [c for c in self.consumed if namespace(c) == prefix]:
            del self.consumed[channel]
        # (a bundle's channels share one pool, so one namespace)
        for seq in [s for s, b in self.bundles.items() if namespace(b.channels[0]) == prefix]:
            del self.bundles[seq]
        for seq in [s for s, b in self.bundles_taken.items() if namespace(b.channels[0]) == prefix]:
            self.bundles_taken[seq].runs.clear()
            del self.bundles_taken[seq]
        return []

    @property
    def unreported(self) -> bool:
        """Whether some consumption is not reported yet (``report``)."""
        return bool(self.consumed or self.bundles_taken)

    def report(self) -> list[Message]:
        """Consumption not yet reported: copies of bundles taken (one report
        per bundle, a run of positions per stretch of its channels), then
        a report per channel; the node applies them in that order."""
        out: list[Message] = []
        if self.bundles_taken:
            bundles = self.bundles
            reports: list[list[Any]] = []
            for seq, bundle in self.bundles_taken.items():
                reports.append([seq, *bundle.runs])
                bundle.runs = []
                if bundle.taken >= len(bundle.channels):
                    bundles.pop(seq, None)  # (every copy is taken)
            self.bundles_taken.clear()
            out.append((MsgType.CONSUMED_BUNDLES, (reports,)))
        if self.consumed:
            per_channel = [[channel, *report] for channel, report in self.consumed.items()]
            self.consumed.clear()
            out.append((MsgType.CONSUMED, (per_channel,)))
        return out

    def forget_prefetched(self) -> None:
        """The node dropped our session (its lease lapsed while this process
        was stopped) and counted what it had handed us as lost: taking it now
        would deliver a message counted lost."""
        for state in self.channels.values():
            state.buffer.clear()
        self.bundles.clear()

    def drain(self, now: float) -> list[Message]:
        """The node drains (``DRAIN``): give back everything prefetched,
        withdraw every credit, drop the reservations, and grant nothing until
        a node welcomes us (``rewelcomed``). Receivers keep waiting."""
        self.moving = True
        self.reservations.clear()
        return self.give_back_all(now)

    def rewelcomed(self) -> list[Message]:
        """The node restarted: it knows none of our credit, withdrawals,
        reservations or prefetched messages (which stay ours to take)."""
        self.moving = False
        self.reservations.clear()
        self.withdrawals.clear()
        self.draining.clear()
        self.consumed.clear()
        # (their copies still prefetched here are reported per channel)
        self.bundles.clear()
        self.bundles_taken.clear()
        out: list[Message] = []
        for channel, state in self.channels.items():
            if state.credit:
                out.append((MsgType.RECV, (channel, state.credit)))
            elif state.waiting:
                out.extend(self.replenish(channel))
        return out

    # -- sending ----------------------------------------------------------
    def use_reservation(self, channel: str, now: float) -> bool:
        """Whether a send on ``channel`` may go without waiting for the node
        (reservations hold for the channel's whole capacity pool)."""
        if not self.reservations:
            return False
        pool = pool_of(channel)
        reservation = self.reservations.get(pool)
        if reservation is None:
            return False
        if reservation[0] > 0 and reservation[1] > now:
            reservation[0] -= 1
            self.spent[pool] = self.spent.get(pool, 0) + 1
            return True
        del self.reservations[pool]
        return False

    def reserved_sent(self) -> int:
        """Reserved sends made so far, over every pool (each HELLO says it,
        so a node's next process counts the ones its killed process never
        read: ``Sessions.reserved_hello``)."""
        return sum(self.spent.values())

    def mark(self, channel: str) -> int:
        """Taken when an acknowledged send goes out, given to ``reserved``."""
        return self.spent.get(pool_of(channel), 0)

    def reserved(self, channel: str, slots: int, mark: int, now: float) -> None:
        """The node's ACK says ``slots`` are reserved for us, as of when it
        read the send (taken at ``mark``): reserved sends made since were not
        counted in it yet."""
        pool = pool_of(channel)
        left = slots - (self.spent.get(pool, 0) - mark)
        if left > 0 and not self.moving:
            self.reservations[pool] = [left, now + RESERVATION_TTL / 2]
        else:
            self.reservations.pop(pool, None)

    def revoke(self, channel: str) -> list[Message]:
        """The node wants our reservation on ``channel``'s pool back."""
        self.reservations.pop(pool_of(channel), None)
        return [(MsgType.REVOKED, (channel,))]
