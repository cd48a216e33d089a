"""Exceptions of zchannels, grouped by what the caller can do about them.

At the Django boundary they are also what consumers already catch:
``ChannelFull`` and ``MessageTooLarge`` subclass channels' own exceptions, bad
names and messages raise ``TypeError`` (as channels' ``BaseChannelLayer``),
and an invalid CONFIG raises ``ConfigError`` (a ``ValueError``). Also the
one warning category: ``ChannelsRedisOptionWarning``.
"""

from __future__ import annotations

from channels.exceptions import ChannelFull as _ChannelsChannelFull
from channels.exceptions import MessageTooLarge as _ChannelsMessageTooLarge


class ZChannelsError(Exception):
    """Base of every zchannels error. ``retriable``: trying again may succeed."""

    retriable = False


class ConfigError(ZChannelsError, ValueError):
    """The layer's CONFIG or the node's settings are invalid. ``key``: the
    CONFIG key at fault, when one is (Django's system check names it)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ChannelsRedisOptionWarning(UserWarning):
    """A channels_redis CONFIG key that has no meaning for zchannels was
    accepted and ignored; the message says what replaces it. Issued once per
    key per process (Python's default warning filter); silence it with
    ``warnings.filterwarnings("ignore", category=ChannelsRedisOptionWarning)``
    or, better, delete the key."""


class ChannelFull(ZChannelsError, _ChannelsChannelFull):  # type: ignore[misc]
    """The channel's queue on its owner node is at capacity. Retry later."""

    retriable = True

    def __init__(self, channel: str) -> None:
        super().__init__(f"channel {channel!r} is full")
        self.channel = channel


class MessageTooLarge(ZChannelsError, _ChannelsMessageTooLarge):  # type: ignore[misc]
    """The encoded message is larger than ``max_message_size``."""

    def __init__(self, size: int, max_size: int) -> None:
        super().__init__(f"message is {size} bytes, the limit is {max_size}")
        self.size = size
        self.max_size = max_size


class NodeUnavailable(ZChannelsError):
    """The node did not answer within ``request_timeout`` (down, or restarting).

    A ``send`` that timed out may still be delivered once the node is back.
    """

    retriable = True


class SendOutcomeUnknown(NodeUnavailable):
    """Whether this ``send``/``group_send`` was taken cannot be known: the
    node that had it died and restarted before it answered, or the channel's
    owner (another node) did not answer within the bound tied to failure
    detection (frozen, cut off, or dead). It may be delivered or not; it is
    never counted as dropped. Sending it again may deliver it twice, so it
    is not ``retriable`` (retry only what tolerates a duplicate).
    """

    retriable = False


class ProtocolError(ZChannelsError):
    """The node refused a request as malformed: a bug, or mismatched versions."""


class LimitExceeded(ZChannelsError):
    """The node refused a request because this process reached a per-client
    bound (channels or group entries it may create): a runaway or hostile
    client cannot exhaust the node. Retriable once the process holds less."""

    retriable = True


class ForeignChannel(ZChannelsError, TypeError):
    """``receive()`` on a process-specific (``!``) channel this process did
    not make: only the process that made a ``new_channel()`` name can receive
    on it (its messages are held for that process; another would wait
    forever). A ``TypeError``, as channels raises for names it cannot use."""

    def __init__(self, channel: str, session: str) -> None:
        super().__init__(
            f"cannot receive on {channel!r}: a process-specific channel (with '!') is "
            f"received only by the process whose new_channel() made it, and this "
            f"process's names carry session {session!r}"
        )
        self.channel = channel
