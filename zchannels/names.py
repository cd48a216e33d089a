"""Channel and group names: validity, and who owns a process-specific name.

Owns: the format of names made by ``new_channel()`` and how the owner (node
and client session) is read back from one, and which names are valid. The
validity rules and ``TypeError`` messages are channels' own (its
``BaseChannelLayer``), copied here rather than imported: the node's pure
modules import this one and must not pull in channels or Django, and the
layer must raise the same errors on every channels it supports (the methods
that raise them exist only since channels 4.2.1). ``tests/test_versions.py``
checks the copy against the installed channels.

On the wire every name is qualified by the layer's ``prefix`` as
``prefix|name`` (``|`` is not valid in a channels name, so this is unambiguous).

A process-specific name is ``{prefix}.{node}.{session}!{local}``: ``node`` is
the owning node's tag, ``session`` the owning client process's tag, ``local``
a per-session counter. Tags come from ``os.urandom``, so names stay unique
after ``random.seed()``, and the whole suffix is ~26 characters, leaving
``MAX_NAME_LENGTH`` (100) to the prefix.
"""

from __future__ import annotations

import base64
import functools
import os
import re

# channels' BaseChannelLayer (channels/layers.py), the same in every release
# from 4.0.0 to 4.3.2: a name is a str shorter than MAX_NAME_LENGTH that
# matches its regex. Kept verbatim, quirks included, since the point is to
# agree with channels: ``$`` also matches before a final newline, and ``\w``
# after the ``!`` takes any Unicode word character.
MAX_NAME_LENGTH = 100
_CHANNEL_RE = re.compile(r"^[a-zA-Z\d\-_.]+(\![\d\w\-_.]*)?$")
_GROUP_RE = re.compile(r"^[a-zA-Z\d\-_.]+$")

# channels' TypeError messages (BaseChannelLayer.invalid_name_error since
# 4.2.1, formatted with "Channel" or "Group"; 4.0-4.2.0 appended the name).
INVALID_NAME_ERROR = (
    f"{{}} name must be a valid unicode string with length < {MAX_NAME_LENGTH} "
    "containing only ASCII alphanumerics, hyphens, underscores, or periods."
)
RECEIVE_NAME_ERROR = "Specific channel names in receive() must end at the !"

#: A layer's ``prefix`` (its namespace on the node).
PREFIX_RE = re.compile(r"[A-Za-z0-9_.\-]{0,50}")

SESSION_TAG_LEN = 10
NODE_TAG_LEN = 6


def random_tag(length: int) -> str:
    """A lowercase base32 tag of ``length`` characters (5 random bits each)."""
    raw = base64.b32encode(os.urandom((length * 5 + 7) // 8)).decode("ascii")
    return raw[:length].lower()


def valid_channel(name: object) -> bool:
    return isinstance(name, str) and len(name) < MAX_NAME_LENGTH and bool(_CHANNEL_RE.match(name))


def valid_group(name: object) -> bool:
    return isinstance(name, str) and len(name) < MAX_NAME_LENGTH and bool(_GROUP_RE.match(name))


def require_valid_channel(name: object, receive: bool = False) -> None:
    """channels' ``require_valid_channel_name``: its rules, its TypeErrors."""
    if not valid_channel(name):
        raise TypeError(INVALID_NAME_ERROR.format("Channel"))
    if receive and isinstance(name, str) and "!" in name and not name.endswith("!"):
        raise TypeError(RECEIVE_NAME_ERROR)


def require_valid_group(name: object) -> None:
    """channels' ``require_valid_group_name``: its rules, its TypeError."""
    if not valid_group(name):
        raise TypeError(INVALID_NAME_ERROR.format("Group"))


def wire_name(prefix: str, name: str) -> str:
    """The name as the node knows it: ``prefix|name`` (the layer's namespace)."""
    return f"{prefix}|{name}" if prefix else name


def namespace(wire: str) -> str:
    """The prefix a wire name was qualified with ("" for none)."""
    return wire.rpartition("|")[0]


def local_part(wire: str) -> str:
    """The name without its namespace (what capacity patterns are matched on)."""
    return wire.rpartition("|")[2]


# The node checks every name of every frame; names repeat, so the answers
# are cached (a bounded LRU, so hostile names cannot grow it).
@functools.lru_cache(maxsize=65536)
def valid_wire_channel(wire: object) -> bool:
    if not isinstance(wire, str):
        return False
    prefix, _, name = wire.rpartition("|")
    return bool(PREFIX_RE.fullmatch(prefix)) and valid_channel(name)


def valid_wire_group(wire: object) -> bool:
    if not isinstance(wire, str):
        return False
    prefix, _, name = wire.rpartition("|")
    return bool(PREFIX_RE.fullmatch(prefix)) and valid_group(name)


def pool_of(name: str) -> str:
    """The capacity pool of a channel (the Channels spec, "Capacity"): a
    process-specific name ``x!local`` shares ``x!`` with the other names of
    its process; any other name is its own."""
    bang = name.find("!")
    return name if bang < 0 else name[: bang + 1]


def specific_name(prefix: str, node_tag: str, session_tag: str, counter: int) -> str:
    return f"{prefix}.{node_tag}.{session_tag}!{_base36(counter)}"


@functools.lru_cache(maxsize=65536)
def owner_of(name: str) -> tuple[str, str] | None:
    """(node tag, session tag) of a name made by ``new_channel()``, else None."""
    bang = name.find("!")
    if bang < 0:
        return None
    parts = name[:bang].rsplit(".", 2)
    if len(parts) != 3 or len(parts[1]) != NODE_TAG_LEN or len(parts[2]) != SESSION_TAG_LEN:
        return None
    return parts[1], parts[2]


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out
