"""Where ``znode run``'s settings come from: its flags, ``ZNODE_*`` environment
variables, a TOML file, and the defaults, merged flag > env > file > default,
each value remembering which source gave it.

Owns: deriving the environment and TOML spelling of every ``run`` flag from
the argparse parser itself (a flag added later gets both with no code here),
converting env strings and checking TOML values the way argparse converts the
flag's own, and the merge. Pure: the environment and the file's text are passed
in; nothing here reads a file, the process environment or the clock. Does not
own: what the values mean (``NodeConfig``, ``cli.node_config``) or checking a
configuration as a whole (``config_check``).

Spelling, for a flag ``--client-endpoint`` whose argparse ``dest`` is
``client_endpoints`` (the ``NodeConfig`` field it sets):

- environment: ``ZNODE_`` and the flag's long name, upper case, dashes as
  underscores: ``ZNODE_CLIENT_ENDPOINT``. A repeatable flag takes a
  comma-separated list (spaces around items are dropped). Comma, because no
  value these flags take has one (ZeroMQ endpoints, addresses, host names,
  ``dns:NAME:PORT``, file paths in practice), while spaces do occur in paths,
  and a comma list survives shells, YAML and systemd's ``Environment=``
  unquoted. A ``store_true`` flag takes 1/0, true/false, yes/no (any case).
  An empty variable counts as unset (as Click and most twelve-factor tools
  read it), so ``ZNODE_X=`` in a template does not override the file.
- TOML: top-level keys; the canonical key is the ``dest``, i.e. the
  ``NodeConfig`` field name (``client_endpoints``, ``key_files``,
  ``client_lease``): one name in the file, in ``NodeConfig`` and in
  ``znode check-config``'s output. The flag's own spelling
  (``client-endpoint``) is accepted too, so a command line can be copied
  into a file. Repeatable flags take an array (or one value); numbers may be
  integers where the flag takes seconds; booleans are TOML booleans.

A source sets a value whole: a list from the environment replaces the file's
list, it does not add to it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from zchannels.errors import ConfigError

#: What every environment variable of ``znode`` starts with.
ENV_PREFIX = "ZNODE_"
#: The variable naming the config file (``--config`` wins over it).
CONFIG_ENV = ENV_PREFIX + "CONFIG"
#: Separates the items of a repeatable flag's environment variable.
LIST_SEPARATOR = ","
#: Kubernetes injects ``<SERVICE>_SERVICE_HOST``, ``<SERVICE>_PORT`` and
#: ``<SERVICE>_PORT_<N>_TCP...`` into every pod for every Service in the
#: namespace ("service links"): a Service named ``znode`` must not make every
#: pod's node complain about unknown settings.
_SERVICE_LINKS = ("ZNODE_SERVICE_", "ZNODE_PORT")

_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})

Source = Literal["flag", "env", "file", "default"]
Kind = Literal["value", "list", "switch"]


class SourceError(ConfigError):
    """Settings from the environment or the file that cannot be used: the
    message lists every problem found, one per line, each naming the
    variable or key at fault and what it takes."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True, slots=True)
class Option:
    """One ``run`` flag, as the environment and the file spell it."""

    #: argparse's ``dest``: the ``NodeConfig`` field, the canonical TOML key
    name: str
    #: the long flag, ``--client-endpoint``
    flag: str
    #: ``value`` (one value), ``list`` (repeatable), ``switch`` (``store_true``)
    kind: Kind
    #: argparse's ``type``: what turns a string into the value (None: str)
    convert: Callable[[str], Any] | None
    choices: tuple[Any, ...] | None
    default: Any

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag.removeprefix("--").upper().replace("-", "_")

    @property
    def keys(self) -> tuple[str, ...]:
        """The TOML keys that set it: the canonical one first."""
        spelled = self.flag.removeprefix("--")
        return (self.name,) if spelled == self.name else (self.name, spelled)

    @property
    def expected(self) -> str:
        """What a TOML value must be, for error messages."""
        if self.kind == "switch":
            return "a boolean (true or false)"
        one = _ITEM_NAMES.get(self.convert, "a string")
        if self.choices is not None:
            one = "one of " + ", ".join(repr(c) for c in self.choices)
        return f"an array of {_plural(one)} (or {one})" if self.kind == "list" else one


_ITEM_NAMES: dict[Callable[[str], Any] | None, str] = {float: "a number", int: "an integer"}


def _plural(one: str) -> str:
    if one.startswith("one of "):
        return "values " + one
    return one.removeprefix("a ").removeprefix("an ") + "s"


def options_of(parser: argparse.ArgumentParser, exclude: Iterable[str] = ()) -> tuple[Option, ...]:
    """Every optional flag of ``parser`` (but ``-h`` and the dests in
    ``exclude``) as an ``Option``. A flag of a shape this module cannot read
    from a string or a TOML value raises ``TypeError``, so it fails a test
    instead of silently having no env/TOML spelling."""
    skip = set(exclude)
    found: list[Option] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.dest in skip:
            continue
        long = [s for s in action.option_strings if s.startswith("--")]
        kind: Kind | None = None
        if isinstance(action, argparse._StoreTrueAction):
            kind = "switch"
        elif type(action) is argparse._StoreAction and action.nargs is None:
            kind = "value"
        elif type(action) is argparse._AppendAction and action.nargs is None:
            kind = "list"
        if kind is None or not long:
            raise TypeError(
                f"{'/'.join(action.option_strings) or action.dest}: config_sources reads "
                "only --long flags that store one value, append one value, or store_true"
            )
        found.append(
            Option(
                name=action.dest,
                flag=long[0],
                kind=kind,
                convert=action.type if callable(action.type) else None,
                choices=tuple(action.choices) if action.choices is not None else None,
                default=action.default,
            )
        )
    return tuple(found)


def suppress_defaults(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """Make ``parser`` leave the attribute of an option it was not given
    unset, so that what is set is exactly what came from the command line."""
    names = {o.name for o in options}
    for action in parser._actions:
        if action.dest in names:
            action.default = argparse.SUPPRESS


def given_flags(args: argparse.Namespace, options: Iterable[Option]) -> dict[str, Any]:
    """The options set on the command line (after ``suppress_defaults``)."""
    return {o.name: getattr(args, o.name) for o in options if hasattr(args, o.name)}


def config_file(flag: str | None, env: Mapping[str, str]) -> tuple[str, Source] | None:
    """The config file's path and where it was named: ``--config``, else
    ``ZNODE_CONFIG`` (empty: unset), else none."""
    if flag:
        return flag, "flag"
    if env.get(CONFIG_ENV):
        return env[CONFIG_ENV], "env"
    return None


def parse_file(text: str, name: str) -> dict[str, Any]:
    """The TOML file's table (``name`` is for messages)."""
    # imported here, as difflib below: only a node given a file (or a bad
    # setting) pays for it, not every start of the shared node (~10 ms)
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SourceError([f"{name}: not valid TOML: {exc}"]) from None


@dataclass(frozen=True, slots=True)
class Setting:
    option: Option
    #: the value (lists as tuples); a default is the flag's default, which
    #: for most flags is None: "the preset's value"
    value: Any
    source: Source
    #: exactly where: ``--seed``, ``ZNODE_SEED``, ``FILE: seeds``, ``default``
    origin: str


@dataclass(frozen=True, slots=True)
class Settings:
    settings: tuple[Setting, ...]
    #: things ignored that an operator may want to know about
    warnings: tuple[str, ...] = ()
    #: the config file read, if any
    file: str | None = None

    def values(self) -> dict[str, Any]:
        return {s.option.name: s.value for s in self.settings}

    def __getitem__(self, name: str) -> Setting:
        for setting in self.settings:
            if setting.option.name == name:
                return setting
        raise KeyError(name)


def resolve(
    options: Sequence[Option],
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    file: Mapping[str, Any] | None = None,
    file_name: str | None = None,
) -> Settings:
    """Merge the sources, flag > env > file > default. ``flags``: what the
    command line set (``given_flags``); ``file``: the parsed TOML table.
    Raises ``SourceError`` listing every bad variable or key at once."""
    problems: list[str] = []
    file_name = file_name or "the config file"
    from_file = _from_file(options, file or {}, file_name, problems)
    from_env = _from_env(options, env, problems)
    if problems:
        raise SourceError(problems)
    settings: list[Setting] = []
    for option in options:
        if option.name in flags:
            value = flags[option.name]
            if option.kind == "list":
                value = tuple(value)
            settings.append(Setting(option, value, "flag", option.flag))
        elif option.name in from_env:
            settings.append(Setting(option, from_env[option.name], "env", option.env))
        elif option.name in from_file:
            key, value = from_file[option.name]
            settings.append(Setting(option, value, "file", f"{file_name}: {key}"))
        else:
            settings.append(Setting(option, option.default, "default", "default"))
    named = file_name if file is not None else None
    return Settings(tuple(settings), tuple(_unknown_env(options, env)), named)


def _from_env(
    options: Sequence[Option], env: Mapping[str, str], problems: list[str]
) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for option in options:
        raw = env.get(option.env, "")
        if option.kind == "list":
            items = [item.strip() for item in raw.split(LIST_SEPARATOR)]
            items = [item for item in items if item]
            if not items:
                continue
            try:
                found[option.name] = tuple(_convert(option, item) for item in items)
            except ValueError as exc:
                problems.append(f"{option.env}={raw!r}: {exc}")
        elif raw.strip():
            try:
                found[option.name] = (
                    _boolean(raw) if option.kind == "switch" else _convert(option, raw.strip())
                )
            except ValueError as exc:
                problems.append(f"{option.env}={raw!r}: {exc}")
    return found


def _boolean(raw: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("expected 1/0, true/false or yes/no")


def _convert(option: Option, text: str) -> Any:
    """A string as argparse would take it for ``option`` (ValueError if not)."""
    value: Any = text
    if option.convert is not None:
        try:
            value = option.convert(text)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            what = _ITEM_NAMES.get(option.convert)
            raise ValueError(f"expected {what}" if what else str(exc)) from None
    if option.choices is not None and value not in option.choices:
        raise ValueError("expected one of " + ", ".join(repr(c) for c in option.choices))
    return value


def _from_file(
    options: Sequence[Option], table: Mapping[str, Any], file_name: str, problems: list[str]
) -> dict[str, tuple[str, Any]]:
    by_key = {key: option for option in options for key in option.keys}
    found: dict[str, tuple[str, Any]] = {}
    for key, value in table.items():
        option = by_key.get(key)
        if option is None:
            import difflib

            close = difflib.get_close_matches(key, by_key, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            valid = ", ".join(o.name for o in options)
            problems.append(f"{file_name}: unknown setting {key!r}{hint}; valid: {valid}")
            continue
        if option.name in found:
            problems.append(
                f"{file_name}: {found[option.name][0]!r} and {key!r} are the same setting"
            )
            continue
        try:
            found[option.name] = (key, _check_toml(option, value))
        except _WrongType:
            problems.append(
                f"{file_name}: {key} must be {option.expected}, got {_toml_type(value)} {value!r}"
            )
        except ValueError as exc:
            problems.append(f"{file_name}: {key} = {value!r}: {exc}")
    return found


class _WrongType(Exception):
    """A TOML value of another type than its setting takes."""


def _check_toml(option: Option, value: Any) -> Any:
    """A TOML value for ``option``, typed as the flag's would be: ``_WrongType``
    for a value of the wrong type, ``ValueError`` for one the flag's type or
    choices refuse."""
    if option.kind == "switch":
        if not isinstance(value, bool):
            raise _WrongType
        return value
    if option.kind == "list":
        items = value if isinstance(value, list) else [value]
        return tuple(_check_toml_item(option, item) for item in items)
    return _check_toml_item(option, value)


def _check_toml_item(option: Option, value: Any) -> Any:
    if isinstance(value, bool):  # a bool is an int in Python; not in TOML
        raise _WrongType
    if option.convert is float and isinstance(value, int | float):
        value = float(value)
    elif option.convert is int and isinstance(value, int):
        pass
    elif option.convert not in (float, int) and isinstance(value, str):
        return _convert(option, value)  # str, or a parsing type: as from a flag
    else:
        raise _WrongType
    if option.choices is not None and value not in option.choices:
        raise ValueError("expected one of " + ", ".join(repr(c) for c in option.choices))
    return value


def _toml_type(value: Any) -> str:
    """A TOML value's type, in TOML's words."""
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), "a date or time")


def _unknown_env(options: Sequence[Option], env: Mapping[str, str]) -> list[str]:
    known = {o.env: o for o in options}
    warnings = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in known or name == CONFIG_ENV:
            continue
        if name.startswith(_SERVICE_LINKS):
            continue
        import difflib

        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        warnings.append(f"ignoring {name}: no znode setting has that name{hint}")
    return warnings
