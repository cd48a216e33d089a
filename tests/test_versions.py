"""The channels and Django versions zchannels declares, and what it imports.

pyproject.toml declares channels>=4.0 and django>=4.2; ``scripts/check`` runs
this file and the contract tests against the newest releases and again
against the oldest declared (channels 4.0.0, Django 4.2). This file checks
that the name rules copied into ``zchannels.names`` are those of the channels
installed, that the layer's TypeError messages are channels 4.2.1+'s whichever
channels is installed, and that the node's pure modules import neither
channels nor Django.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from channels.layers import BaseChannelLayer
from hypothesis import given
from hypothesis import strategies as st

from zchannels import names
from zchannels.layer import ZeroMQChannelLayer

# channels' BaseChannelLayer messages since 4.2.1, written out: what the layer
# raises on every channels version (4.0-4.2.0 appended ", not {name}" instead).
CHANNEL_ERROR = (
    "Channel name must be a valid unicode string with length < 100 "
    "containing only ASCII alphanumerics, hyphens, underscores, or periods."
)
GROUP_ERROR = CHANNEL_ERROR.replace("Channel", "Group", 1)
RECEIVE_ERROR = "Specific channel names in receive() must end at the !"

#: channels >= 4.2.1 (``require_valid_*_name``); older ones have ``valid_*_name``.
NEW_API = hasattr(BaseChannelLayer, "require_valid_channel_name")

#: The node's modules that decide without I/O: they run without Django.
PURE_MODULES = [
    "zchannels.names",
    "zchannels.protocol",
    "zchannels.node.core",
    "zchannels.node.queues",
    "zchannels.node.groups",
    "zchannels.node.sessions",
    "zchannels.node.membership",
    "zchannels.node.ownership",
    "zchannels.node.group_replica",
    "zchannels.node.peer_wire",
]


def test_pure_modules_import_neither_channels_nor_django() -> None:
    # A fresh interpreter: this one has imported both already.
    probe = (
        "import importlib, sys\n"
        f"for module in {PURE_MODULES!r}:\n"
        "    importlib.import_module(module)\n"
        "    pulled = sorted(m for m in sys.modules if m.split('.')[0] in ('channels', 'django'))\n"
        "    if pulled:\n"
        "        sys.exit(f'{module} imported {pulled}')\n"
        "print('clean')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "clean"


def test_name_constants_are_channels() -> None:
    assert names.MAX_NAME_LENGTH == BaseChannelLayer.MAX_NAME_LENGTH
    for ours, theirs in [
        (names._CHANNEL_RE, BaseChannelLayer.channel_name_regex),
        (names._GROUP_RE, BaseChannelLayer.group_name_regex),
    ]:
        assert (ours.pattern, ours.flags) == (theirs.pattern, theirs.flags)


def test_messages_are_channels_newest() -> None:
    layer = ZeroMQChannelLayer()  # validation alone: it never connects
    for check, name, expected in [
        (layer.require_valid_channel_name, "bad name", CHANNEL_ERROR),
        (layer.require_valid_group_name, "bad!name", GROUP_ERROR),
        (lambda n: layer.require_valid_channel_name(n, receive=True), "a!b", RECEIVE_ERROR),
    ]:
        with pytest.raises(TypeError) as info:
            check(name)
        assert str(info.value) == expected
    if NEW_API:
        base = BaseChannelLayer()
        assert base.invalid_name_error.format("Channel") == CHANNEL_ERROR
        assert base.invalid_name_error.format("Group") == GROUP_ERROR


def verdict(check: object, *args: object) -> str | None:
    """None if ``check(*args)`` accepts, else its TypeError's message."""
    try:
        assert callable(check)
        assert check(*args) is True
    except TypeError as exc:
        return str(exc)
    return None


def channels_verdict(kind: str, name: object, receive: bool = False) -> str | None:
    """What channels' own BaseChannelLayer says of ``name``, in 4.2.1+'s
    words: older channels' message is read back to the newer text (it is
    that text with ", not {name}" in place of the final period)."""
    base = BaseChannelLayer()
    extra = (receive,) if kind == "channel" else ()
    if NEW_API:
        return verdict(getattr(base, f"require_valid_{kind}_name"), name, *extra)
    said = verdict(getattr(base, f"valid_{kind}_name"), name, *extra)
    if said is None or said == RECEIVE_ERROR:
        return said
    suffix = f", not {name}"
    assert said.endswith(suffix), said
    return said.removesuffix(suffix) + "."


# Names near every rule: the allowed characters, the ones around them, the
# length limit, "!" in any place, and values that are not str at all.
ALPHABET = "aZ09-_.!" + " /|:\nüé٣"
NAMES = st.one_of(
    st.text(st.sampled_from(ALPHABET), max_size=12),
    st.text(st.sampled_from("aZ09-_."), min_size=95, max_size=104).flatmap(
        lambda s: st.sampled_from([s, s + "!", s[:50] + "!" + s[50:], s + "\n"])
    ),
    st.text(max_size=110),
    st.none(),
    st.integers(),
    st.floats(allow_nan=False),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
)


@given(name=NAMES, receive=st.booleans())
def test_channel_rules_are_channels(name: object, receive: bool) -> None:
    layer = ZeroMQChannelLayer()
    ours = verdict(layer.require_valid_channel_name, name, receive)
    assert ours == channels_verdict("channel", name, receive)
    assert ours in (None, CHANNEL_ERROR, RECEIVE_ERROR)
    assert names.valid_channel(name) == (ours in (None, RECEIVE_ERROR))


@given(name=NAMES)
def test_group_rules_are_channels(name: object) -> None:
    layer = ZeroMQChannelLayer()
    ours = verdict(layer.require_valid_group_name, name)
    assert ours == channels_verdict("group", name)
    assert ours in (None, GROUP_ERROR)
    assert names.valid_group(name) == (ours is None)
