"""``znode check-config``: a node's configuration, checked as ``znode run``
would build it but without binding anything, and shown with where each value
came from and its secrets masked.

Owns: the checks ``run`` makes before it serves that need no socket (the
``NodeConfig`` itself, reading the cluster key files, the bind policy), and
the report (text for people, ``--json`` for scripts). Does not own: where the
values come from (``config_sources``) or how settings become a ``NodeConfig``
(``cli.node_config``, which ``run`` uses too, is passed in). Checks that need
the node to run (an address already in use, a lock file another node holds)
are ``run``'s alone.

Masking: a key file is shown as its path and its fingerprint (a hash of the
public half, as ``znode keygen`` and mDNS show it), never its contents; a
setting whose name looks secret (secret, password, token, credential, key)
shows ``***``; a URL's password (``scheme://user:PASSWORD@host``) too.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any

from zchannels.keys import KeyFileError, Keyring, read_key_file

from .config import NodeConfig
from .config_sources import Settings
from .security import check_bind_policy

#: What a masked value is shown as.
MASK = "***"
_SECRET_NAME = re.compile(r"secret|passw|token|credential|private|(^|_)keys?($|_)", re.I)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:\s]*:)[^/@\s]+(?=@)", re.I)


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    #: the effective value, ready for JSON (masked)
    value: Any
    #: flag, env, file or default
    source: str
    #: exactly where: ``--seed``, ``ZNODE_SEED``, ``FILE: seeds``, ``default``
    #: (or ``preset NAME`` for settings no flag sets)
    origin: str


def check(build: Callable[[], NodeConfig]) -> tuple[NodeConfig | None, str | None]:
    """Build the configuration and run ``run``'s checks that need no
    socket; returns it (None if it cannot be built) and the reason it is
    refused (None: valid)."""
    config = None
    try:
        config = build()
        # as NodeServer reads them: readable, owner-only, well-formed
        keyring = Keyring.load(config.key_files) if config.key_files else None
        keyed = keyring is not None
        check_bind_policy(config.exposed_endpoints(), keyed=keyed, insecure=config.insecure)
    except (OSError, ValueError) as exc:  # KeyFileError, InsecureBind: ValueErrors
        return config, str(exc)
    return config, None


def fingerprints(paths: Iterable[str]) -> dict[str, str | None]:
    """Each key file's fingerprint (None: it cannot be read)."""
    found: dict[str, str | None] = {}
    for path in paths:
        try:
            found[path] = read_key_file(path).fingerprint
        except KeyFileError:
            found[path] = None
    return found


def rows(
    settings: Settings,
    config: NodeConfig | None,
    preset: str,
    keys: Mapping[str, str | None],
) -> list[Row]:
    """Every setting with its effective value: the ``NodeConfig`` field's
    value where the setting is one (so a default shows what the preset
    gives), then the fields no flag sets, from the preset."""
    names = {f.name for f in fields(NodeConfig)}
    found = []
    for setting in settings.settings:
        name = setting.option.name
        value = getattr(config, name) if config is not None and name in names else setting.value
        found.append(Row(name, shown(name, value, keys), setting.source, setting.origin))
    if config is not None:
        flagged = {s.option.name for s in settings.settings}
        for f in fields(NodeConfig):
            if f.name not in flagged:
                value = shown(f.name, getattr(config, f.name), keys)
                found.append(Row(f.name, value, "default", f"preset {preset}"))
    return found


def shown(name: str, value: Any, keys: Mapping[str, str | None]) -> Any:
    """``value`` of the setting ``name`` as it may be printed."""
    if re.search(r"key_files?$", name):
        paths = [value] if isinstance(value, str) else list(value or ())
        return [{"path": p, "fingerprint": keys.get(p)} for p in paths]
    if _SECRET_NAME.search(name) and value not in (None, "", (), []):
        return MASK
    if isinstance(value, str):
        return _URL_PASSWORD.sub(rf"\g<head>{MASK}", value)
    if isinstance(value, tuple | list):
        return [shown(name, item, keys) for item in value]
    if is_dataclass(value) and not isinstance(value, type):
        return {k: shown(k, v, keys) for k, v in asdict(value).items()}
    return value


def report(
    table: list[Row], error: str | None, config_file: str | None, warnings: Iterable[str]
) -> dict[str, Any]:
    """The ``--json`` document."""
    return {
        "valid": error is None,
        "error": error,
        "config_file": config_file,
        "warnings": list(warnings),
        "settings": {
            row.name: {"value": row.value, "source": row.source, "origin": row.origin}
            for row in table
        },
    }


def text(table: list[Row], error: str | None, config_file: str | None, preset: str) -> str:
    """The report for people: one line per setting."""
    lines = [
        "configuration is valid" if error is None else "configuration is INVALID (see below)",
        f"config file: {config_file or '(none)'}",
        f"defaults: preset {preset}",
        "",
        f"{'setting':<26} {'from':<30} value",
    ]
    for row in table:
        where = f"{row.source} {row.origin}" if row.source in ("flag", "env") else row.origin
        if row.source == "file":
            where = "file"
        lines.append(f"{row.name:<26} {where:<30} {_text_value(row.value)}")
    return "\n".join(lines)


def _text_value(value: Any) -> str:
    if value is None or value == []:
        return "-"
    if isinstance(value, list):
        return ", ".join(_text_value(item) for item in value)
    if isinstance(value, dict) and set(value) == {"path", "fingerprint"}:
        fingerprint = value["fingerprint"] or "UNREADABLE"
        return f"{value['path']} (fingerprint {fingerprint})"
    if isinstance(value, dict):
        return " ".join(f"{k}={_text_value(v)}" for k, v in value.items())
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def main(args: argparse.Namespace, settings: Settings, build: Callable[[], NodeConfig]) -> int:
    """``znode check-config``: 0 valid, 1 refused (the reason on stderr too)."""
    config, error = check(build)
    key_files = config.key_files if config is not None else settings["key_files"].value or ()
    table = rows(settings, config, args.preset, fingerprints(key_files))
    config_file = settings.file
    if args.json:
        print(json.dumps(report(table, error, config_file, settings.warnings), indent=2))
    else:
        print(text(table, error, config_file, args.preset))
        for warning in settings.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    if error is not None:
        print(f"znode check-config: {error}", file=sys.stderr)
        return 1
    return 0
