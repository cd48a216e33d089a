"""Django system checks of the zchannels layers in ``CHANNEL_LAYERS``.

Owns: turning each zchannels layer's ``CONFIG`` (and ``TEST_CONFIG``) into
check messages, each with a hint that says the fix. ``manage.py check``
reports as Errors what would otherwise fail at the first
``get_channel_layer()`` or the first message, and as Warnings the
channels_redis keys the layer ignores; ``check --deploy`` adds Warnings about
settings unsafe in production. Does not own the rules themselves
(``zchannels.config``; ``zchannels.keys``, with the bind policy's endpoint
rule).

A check builds no layer, starts no node and opens no socket: it parses CONFIG
with ``LayerConfig.build`` and reads key files. ``zchannels.apps`` registers
the two entry points (tag ``zchannels``); ``layer_messages`` and
``deploy_messages`` are the pure parts, on any ``CHANNEL_LAYERS`` mapping.

=========================  ==================================================
``zchannels.E001``         unknown CONFIG key
``zchannels.E002``         invalid CONFIG value (type, range, combination)
``zchannels.E003``         key file missing, unreadable, too open or malformed
``zchannels.E004``         embedded cluster member without a key: its node
                           would refuse to serve peers beyond loopback
``zchannels.E005``         CONFIG is not a dict
``zchannels.E006``         BACKEND names a zchannels class that does not import
``zchannels.W001``         channels_redis key, accepted and ignored
``zchannels.W002``         (deploy) ``insecure=True``
``zchannels.W003``         (deploy) ``tcp://`` node beyond loopback, no key_file
``zchannels.W004``         (deploy) ``tcp://`` node on loopback, no key_file
=========================  ==================================================
"""

from __future__ import annotations

import difflib
import os
import stat
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from django.core.checks import CheckMessage, Error
from django.core.checks import Warning as CheckWarning
from django.utils.module_loading import import_string

from .config import (
    CHANNELS_REDIS_ONLY,
    LayerConfig,
    option_names,
    unknown_options,
)
from .errors import ConfigError
from .keys import KeyFileError, loopback_only, read_key_file

#: The backend path of the layer (no import needed to recognise it).
BACKEND = "zchannels.layer.ZeroMQChannelLayer"

#: What each CONFIG key must be: the hint of an E002 about it.
_VALUE_HINTS: Mapping[str, str] = {
    "expiry": "a positive number of seconds a message may wait in a queue (default 60)",
    "group_expiry": "a positive number of seconds a group membership lives (default 86400)",
    "capacity": "a positive int: messages a channel holds before ChannelFull (default 100)",
    "channel_capacity": (
        "a dict {glob string or re.compile(...) pattern: positive int}, "
        "e.g. {'http.request': 200, 'websocket.send!*': 20}"
    ),
    "prefix": "up to 50 of A-Z a-z 0-9 _ . - (default 'asgi')",
    "max_message_size": "a positive int of bytes (default 2097152)",
    "node": (
        "'ipc:///run/zchannels/znode.sock' (a znode on this host), 'tcp://HOST:PORT', "
        "'embedded' (a node inside each process), or delete it for the node shared by "
        "every process of the site on this host"
    ),
    "scope": (
        "a non-empty name for the site's shared node (processes with the same scope "
        "share it), only without 'node' and 'cluster'"
    ),
    "request_timeout": "a positive number of seconds (default 30)",
    "cluster": (
        "a non-empty cluster name, for an embedded node only (no 'node'); with a znode "
        "sidecar the znode joins the cluster instead: znode run --cluster NAME"
    ),
    "discovery": (
        "'mdns', 'dns:NAME[:PORT]' or 'dns-srv:NAME' (a list combines them), or delete "
        "it to join through 'seeds' only"
    ),
    "seeds": "a list of 'tcp://HOST:PORT' strings, with 'cluster'",
    "peer_endpoint": (
        "'tcp://HOST:PORT' where peers reach this process's node (port 0: a free one), "
        "or delete it for the LAN address"
    ),
    "interfaces": "a list of IP address strings mDNS announces on",
    "key_file": "the path of a file made by 'znode keygen PATH' (a list during a rollover)",
    "insecure": "True or False (a bool: the string 'false' would be true)",
    "metrics_endpoint": (
        "a loopback 'HOST:PORT' such as '127.0.0.1:9746' where the node the layer starts "
        "serves /metrics, /healthz and /readyz, or delete it (a znode: give it "
        "--metrics-endpoint)"
    ),
}


def check_channel_layers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``manage.py check``: Errors for invalid CONFIGs, Warnings for ignored keys."""
    return layer_messages(_settings_layers())


def check_channel_layers_deploy(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``manage.py check --deploy``: Warnings about settings unsafe in production."""
    return deploy_messages(_settings_layers())


def _settings_layers() -> Any:
    from django.conf import settings

    return getattr(settings, "CHANNEL_LAYERS", {})


def layer_messages(channel_layers: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for obj, options in _zchannels_configs(channel_layers, messages):
        messages += _config_messages(obj, options)
    return messages


def deploy_messages(channel_layers: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for obj, options in _zchannels_configs(channel_layers, []):
        if not isinstance(options, Mapping):
            continue  # an Error of check_channel_layers (deploy runs those too)
        try:
            config = LayerConfig.build(_own(options))
        except (ConfigError, TypeError):
            continue  # likewise
        messages += _deploy_messages(obj, config)
    return messages


def _zchannels_configs(
    channel_layers: Any, messages: list[CheckMessage]
) -> Iterator[tuple[str, Any]]:
    """``(obj, options)`` of each CONFIG and TEST_CONFIG of a zchannels
    BACKEND; a zchannels BACKEND that does not import goes to ``messages``."""
    if not isinstance(channel_layers, Mapping):
        return
    for alias, layer in channel_layers.items():
        if not isinstance(layer, Mapping):
            continue
        obj = f"CHANNEL_LAYERS[{alias!r}]"
        backend = layer.get("BACKEND")
        ours, error = _is_zchannels(backend)
        if error is not None:
            messages.append(Error(error, hint=_backend_hint(), obj=obj, id="zchannels.E006"))
        if not ours:
            continue
        yield f"{obj}['CONFIG']", layer.get("CONFIG", {})
        if "TEST_CONFIG" in layer:
            yield f"{obj}['TEST_CONFIG']", layer["TEST_CONFIG"]


def _is_zchannels(backend: Any) -> tuple[bool, str | None]:
    """Whether ``backend`` builds its layer as ``ZeroMQChannelLayer(**CONFIG)``
    (the class, or a subclass that keeps its ``__init__``), and the error
    when it names a zchannels class that cannot be imported. Other backends
    are not ours to judge: channels reports them when it loads them."""
    if backend == BACKEND:
        return True, None
    if not isinstance(backend, str):
        return False, None
    try:
        cls = import_string(backend)
    except Exception as exc:
        if backend.startswith("zchannels."):
            return False, f"BACKEND {backend!r} cannot be imported: {exc}"
        return False, None
    if "zchannels.layer" not in sys.modules:  # then cls cannot be a subclass
        return False, None
    from .layer import ZeroMQChannelLayer

    ours = (
        isinstance(cls, type)
        and issubclass(cls, ZeroMQChannelLayer)
        and cls.__init__ is ZeroMQChannelLayer.__init__
    )
    return ours, None


def _backend_hint() -> str:
    return f"Set BACKEND to {BACKEND!r}."


def _config_messages(obj: str, options: Any) -> list[CheckMessage]:
    if not isinstance(options, Mapping):
        return [
            Error(
                f"CONFIG must be a dict of options, got {type(options).__name__}",
                hint="Set it to {} (an embedded node) or a dict of the README's layer options.",
                obj=obj,
                id="zchannels.E005",
            )
        ]
    messages: list[CheckMessage] = []
    valid = option_names()
    for key in unknown_options(options):
        close = difflib.get_close_matches(key, [*valid, *CHANNELS_REDIS_ONLY], n=1)
        guess = f"Did you mean {close[0]!r}? " if close else ""
        messages.append(
            Error(
                f"unknown CONFIG key {key!r}",
                hint=f"{guess}Delete or rename it; valid keys: {', '.join(valid)}.",
                obj=obj,
                id="zchannels.E001",
            )
        )
    for key in CHANNELS_REDIS_ONLY:
        if key in options:
            messages.append(
                CheckWarning(
                    f"CONFIG {key!r} is a channels_redis option that zchannels ignores",
                    hint=f"Delete it: {CHANNELS_REDIS_ONLY[key]}",
                    obj=obj,
                    id="zchannels.W001",
                )
            )
    try:
        config = LayerConfig.build(_own(options))
    except (ConfigError, TypeError) as exc:
        at: str | None = getattr(exc, "key", None)
        what = _VALUE_HINTS.get(at or "")
        hint = (
            f"Set CONFIG[{at!r}] to {what}."
            if what
            else "See the 'Layer options' table in zchannels' README."
        )
        messages.append(Error(str(exc), hint=hint, obj=obj, id="zchannels.E002"))
        return messages
    messages += _key_file_messages(obj, config)
    if config.cluster is not None and not config.key_file and not config.insecure:
        peer = config.peer_endpoint
        if peer is None or not loopback_only(peer):
            where = repr(peer) if peer else "the LAN address (the default peer_endpoint)"
            messages.append(
                Error(
                    f"CONFIG cluster={config.cluster!r} without key_file: the embedded node "
                    f"would refuse to start, as it would serve peers on {where}, beyond "
                    "loopback, with no cluster key",
                    hint=(
                        "Make a key with 'znode keygen PATH', copy it to every host and "
                        "set CONFIG['key_file'] = PATH; or set CONFIG['insecure'] = True "
                        "on a network you trust (check --deploy warns about it)."
                    ),
                    obj=obj,
                    id="zchannels.E004",
                )
            )
    return messages


def _own(options: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``options`` that zchannels uses."""
    valid = set(option_names())
    return {k: v for k, v in options.items() if k in valid}


def _key_file_messages(obj: str, config: LayerConfig) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for path in config.key_file:
        try:
            read_key_file(path)
        except KeyFileError as exc:
            messages.append(
                Error(str(exc), hint=_key_file_hint(path), obj=obj, id="zchannels.E003")
            )
    return messages


def _key_file_hint(path: str) -> str:
    mode: int | None
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return (
            f"Make it with 'znode keygen {path}' (then copy the same file to every "
            "node), or fix the path."
        )
    except OSError:
        mode = None
    if mode is not None and mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"Run 'chmod 600 {path}': a key file must be readable by its owner only."
    if mode is None or not os.access(path, os.R_OK):
        return (
            "Make it readable by the user Django runs as, and by no one else "
            f"(chown that user, chmod 600 {path})."
        )
    return "Use a file written by 'znode keygen PATH', copied unchanged from a node."


def _deploy_messages(obj: str, config: LayerConfig) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    if config.insecure:
        what = (
            "this process's node serves its peers without a cluster key, so anyone who "
            "can reach its port can read and inject every message"
            if config.cluster is not None
            else "it has no effect without 'cluster', where it would let anyone who can "
            "reach this process's node read and inject every message"
        )
        messages.append(
            CheckWarning(
                f"CONFIG insecure=True: {what}",
                hint=(
                    "Make a key with 'znode keygen PATH', set CONFIG['key_file'] = PATH in "
                    "every process of the cluster, and delete 'insecure'."
                ),
                obj=obj,
                id="zchannels.W002",
            )
        )
    node = config.node
    if node is not None and node.startswith("tcp://") and not config.key_file:
        if loopback_only(node):
            messages.append(
                CheckWarning(
                    f"CONFIG node={node!r} is a loopback TCP port without key_file: every "
                    "user and container sharing this host's network can connect to it and "
                    "read or inject messages",
                    hint=(
                        "Use an ipc:// endpoint (its socket is mode 600: this user only), "
                        "or serve the port with 'znode run --key-file PATH' and set "
                        "CONFIG['key_file'] = PATH."
                    ),
                    obj=obj,
                    id="zchannels.W004",
                )
            )
        else:
            messages.append(
                CheckWarning(
                    f"CONFIG node={node!r} is reached over the network without key_file: "
                    "messages travel unencrypted and unauthenticated, and the znode must "
                    "run with --insecure",
                    hint=(
                        "Make a key with 'znode keygen PATH', start the znode with "
                        "--key-file PATH and set CONFIG['key_file'] = PATH; or run a znode "
                        "on each host and use 'ipc://...'."
                    ),
                    obj=obj,
                    id="zchannels.W003",
                )
            )
    return messages
