"""Where ``znode run``'s settings come from: flags, ``ZNODE_*`` variables, a
TOML file (``--config``/``ZNODE_CONFIG``), defaults; and ``znode check-config``.

Pure tests go through the real parser and ``cli.read_settings`` (the code
``run`` uses), with the environment passed in and the file in a temp dir.
Then real processes: ``znode check-config`` on valid and refused
configurations (key material never printed), and ``znode run --config``
serving where its file says.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from procs import ROOT
from zchannels.node import config_check
from zchannels.node.cli import (
    build_parser,
    node_config,
    read_settings,
    run_options,
    subcommand,
)
from zchannels.node.config import NodeConfig, default_state_dir
from zchannels.node.config_sources import (
    LIST_SEPARATOR,
    Settings,
    SourceError,
    options_of,
    resolve,
    suppress_defaults,
)

#: Seconds a znode subprocess gets to start, answer or exit.
STEP = 20.0


def settings(
    argv: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    toml: str | None = None,
    tmp_path: Path | None = None,
    command: str = "run",
) -> tuple[Settings, argparse.Namespace]:
    """What ``znode COMMAND ARGV`` would run with, as ``cli.main`` reads it."""
    parser = build_parser()
    options = run_options(parser)
    for name in ("run", "check-config"):
        suppress_defaults(subcommand(parser, name), options)
    argv = list(argv)
    if toml is not None:
        assert tmp_path is not None
        path = tmp_path / "znode.toml"
        path.write_text(toml)
        argv += ["--config", str(path)]
    args = parser.parse_args([command, *argv])
    found = read_settings(args, options, env or {})
    return found, argparse.Namespace(**{**vars(args), **found.values()})


def value_and_source(found: Settings, name: str) -> tuple[Any, str]:
    return found[name].value, found[name].source


# -- the surface is derived from the parser ------------------------------------------
def test_every_run_flag_has_a_variable_and_a_key_and_check_config_takes_them_all() -> None:
    parser = build_parser()
    run = subcommand(parser, "run")
    options = {o.flag: o for o in run_options(parser)}
    flags = {s for a in run._actions for s in a.option_strings if s.startswith("--")}
    assert set(options) == flags - {"--help", "--config"}
    check = {s for a in subcommand(parser, "check-config")._actions for s in a.option_strings}
    assert flags <= check, "check-config must take every flag run takes"
    endpoint = options["--client-endpoint"]
    assert endpoint.env == "ZNODE_CLIENT_ENDPOINT"
    assert endpoint.keys == ("client_endpoints", "client-endpoint")
    assert options["--key-file"].env == "ZNODE_KEY_FILE" and options["--key-file"].kind == "list"
    assert options["--insecure"].kind == "switch"
    assert options["--node-id"].keys == ("node_id", "node-id")
    assert options["--client-lease"].env == "ZNODE_CLIENT_LEASE"


def test_a_flag_added_later_gets_a_variable_and_a_key_with_no_code() -> None:
    """As ``--metrics-endpoint`` was added to ``run`` after this module: a
    new flag of each kind (a string, a number, a switch) is read from its
    variable and its key with no code of its own."""
    parser = build_parser()
    run = subcommand(parser, "run")
    run.add_argument("--trace-endpoint", metavar="HOST:PORT")
    run.add_argument("--scrape-workers", type=int)
    run.add_argument("--trace-tls", action="store_true")
    options = run_options(parser)
    found = resolve(
        options,
        {},
        {
            "ZNODE_TRACE_ENDPOINT": "127.0.0.1:9100",
            "ZNODE_TRACE_TLS": "yes",
            "ZNODE_METRICS_ENDPOINT": "127.0.0.1:9746",
        },
        {"scrape-workers": 4},
        "f.toml",
    )
    assert value_and_source(found, "trace_endpoint") == ("127.0.0.1:9100", "env")
    assert value_and_source(found, "scrape_workers") == (4, "file")
    assert value_and_source(found, "trace_tls") == (True, "env")
    assert value_and_source(found, "metrics_endpoint") == ("127.0.0.1:9746", "env")


def test_a_flag_of_a_shape_it_cannot_read_fails_loudly() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--verbose", action="count")
    with pytest.raises(TypeError, match="--verbose"):
        options_of(parser)


# -- precedence: flag > env > file > default ------------------------------------------
LEVELS = ("default", "file", "env", "flag")


@pytest.mark.parametrize("top", LEVELS)
def test_a_scalar_comes_from_the_highest_source_given(top: str, tmp_path: Path) -> None:
    given = LEVELS[: LEVELS.index(top) + 1]
    found, args = settings(
        ["--client-lease", "4"] if "flag" in given else [],
        {"ZNODE_CLIENT_LEASE": "3"} if "env" in given else {},
        "client_lease = 2\n" if "file" in given else "",
        tmp_path,
    )
    expected = {"default": None, "file": 2.0, "env": 3.0, "flag": 4.0}[top]
    assert value_and_source(found, "client_lease") == (expected, top)
    assert node_config(args).client_lease == (3.0 if top == "default" else expected)


@pytest.mark.parametrize("top", LEVELS)
def test_a_repeatable_flag_takes_its_whole_list_from_the_highest_source(
    top: str, tmp_path: Path
) -> None:
    given = LEVELS[: LEVELS.index(top) + 1]
    argv = ["--seed", "tcp://10.0.0.4:7701", "--seed", "tcp://10.0.0.5:7701"]
    found, args = settings(
        argv if "flag" in given else [],
        {"ZNODE_SEED": "tcp://10.0.0.2:7701, tcp://10.0.0.3:7701"} if "env" in given else {},
        'seeds = ["tcp://10.0.0.1:7701"]\n' if "file" in given else "",
        tmp_path,
    )
    expected = {
        "default": None,
        "file": ("tcp://10.0.0.1:7701",),
        "env": ("tcp://10.0.0.2:7701", "tcp://10.0.0.3:7701"),
        "flag": ("tcp://10.0.0.4:7701", "tcp://10.0.0.5:7701"),
    }[top]
    assert value_and_source(found, "seeds") == (expected, top)
    assert node_config(args).seeds == (expected or ())


@pytest.mark.parametrize(
    ("argv", "env", "toml", "expected"),
    [
        ([], {}, "", (False, "default")),
        ([], {}, "insecure = true", (True, "file")),
        ([], {"ZNODE_INSECURE": "0"}, "insecure = true", (False, "env")),
        ([], {"ZNODE_INSECURE": "no"}, "insecure = true", (False, "env")),
        ([], {"ZNODE_INSECURE": "TRUE"}, "insecure = false", (True, "env")),
        ([], {"ZNODE_INSECURE": "Yes"}, "", (True, "env")),
        (["--insecure"], {"ZNODE_INSECURE": "false"}, "insecure = false", (True, "flag")),
    ],
)
def test_a_boolean_from_each_source(
    argv: list[str], env: dict[str, str], toml: str, expected: tuple[bool, str], tmp_path: Path
) -> None:
    found, args = settings(argv, env, toml, tmp_path)
    assert value_and_source(found, "insecure") == expected
    assert node_config(args).insecure is expected[0]


def test_the_state_dir_is_the_runtime_dir_unless_given_or_none(tmp_path: Path) -> None:
    """``znode run`` notes a life that left in its state dir by default (the
    runtime dir beside its socket); ``none`` (any source) turns it off."""
    _, args = settings([], {}, "", tmp_path)
    assert node_config(args).state_dir == default_state_dir()
    _, args = settings([], {"ZNODE_STATE_DIR": "none"}, "", tmp_path)
    assert node_config(args).state_dir is None
    _, args = settings(["--state-dir", str(tmp_path)], {}, 'state_dir = "none"\n', tmp_path)
    assert node_config(args).state_dir == str(tmp_path)
    assert NodeConfig().state_dir is None  # (a node made in code writes nothing unasked)


def test_the_config_file_is_named_by_flag_or_variable_and_the_flag_wins(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('node_id = "from-a"\n')
    (tmp_path / "b.toml").write_text('node_id = "from-b"\n')
    found, _ = settings([], {"ZNODE_CONFIG": str(tmp_path / "a.toml")})
    assert found["node_id"].value == "from-a" and found.file == str(tmp_path / "a.toml")
    found, _ = settings(["--config", str(tmp_path / "b.toml")], {"ZNODE_CONFIG": "/nonexistent"})
    assert found["node_id"].value == "from-b"
    assert found["node_id"].origin == f"{tmp_path / 'b.toml'}: node_id"


def test_the_sources_together_make_the_node_config_the_flags_alone_make(tmp_path: Path) -> None:
    _, from_flags = settings(
        [
            "--preset=test",
            "--client-endpoint=ipc:///tmp/x.sock",
            "--client-endpoint=tcp://127.0.0.1:5555",
            "--node-id=n1",
            "--peer-endpoint=tcp://127.0.0.1:0",
            "--discovery=none",
            "--dns-interval=2",
            "--max-frame-size=1000",
            "--log-format=json",
        ]
    )
    _, mixed = settings(
        ["--node-id=n1"],
        {
            "ZNODE_CLIENT_ENDPOINT": "ipc:///tmp/x.sock,tcp://127.0.0.1:5555",
            "ZNODE_DISCOVERY": "none",
            "ZNODE_LOG_FORMAT": "json",
        },
        'preset = "test"\npeer-endpoint = "tcp://127.0.0.1:0"\n'
        "dns_interval = 2\nmax_frame_size = 1000\n",
        tmp_path,
    )
    assert node_config(mixed) == node_config(from_flags)
    assert mixed.log_format == from_flags.log_format == "json"


def test_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    found, _ = settings(
        [],
        {"ZNODE_NODE_ID": "", "ZNODE_SEED": f" {LIST_SEPARATOR} ", "ZNODE_INSECURE": ""},
        'node_id = "file"\nseeds = ["tcp://10.0.0.1:7701"]\ninsecure = true\n',
        tmp_path,
    )
    assert [found[n].source for n in ("node_id", "seeds", "insecure")] == ["file"] * 3


# -- errors say what to fix ---------------------------------------------------------------
def problems(
    argv: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    toml: str | None = None,
    tmp_path: Path | None = None,
) -> str:
    with pytest.raises(SourceError) as raised:
        settings(argv, env, toml, tmp_path)
    return str(raised.value)


def test_an_unknown_key_is_an_error_that_lists_the_valid_ones(tmp_path: Path) -> None:
    message = problems(toml='client_endpoint = ["ipc:///tmp/x"]\n', tmp_path=tmp_path)
    assert "unknown setting 'client_endpoint'" in message
    assert "did you mean 'client-endpoint'?" in message or "'client_endpoints'" in message
    for name in ("client_endpoints", "key_files", "seeds", "insecure", "log_format"):
        assert name in message
    assert "membership" not in message, "only what a flag sets"
    assert "unknown setting 'config'" in problems(toml='config = "x.toml"', tmp_path=tmp_path)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('client_lease = "fast"', "client_lease must be a number, got a string 'fast'"),
        ("max_frame_size = 1.5", "max_frame_size must be an integer, got a float 1.5"),
        ("max_frame_size = true", "max_frame_size must be an integer, got a boolean True"),
        ('insecure = "yes"', "insecure must be a boolean (true or false), got a string 'yes'"),
        ("seeds = [1, 2]", "seeds must be an array of strings (or a string), got an array"),
        ("node-id = 7", "node-id must be a string, got an integer 7"),
        ('preset = "fast"', "preset = 'fast': expected one of 'lan', 'test'"),
        ("node_id = {a = 1}", "node_id must be a string, got a table"),
        ('discovery = ["dns"]', "discovery = ['dns']: "),
    ],
)
def test_a_value_of_the_wrong_type_names_its_key_and_the_type_it_takes(
    toml: str, expected: str, tmp_path: Path
) -> None:
    message = problems(toml=toml, tmp_path=tmp_path)
    assert expected in message
    assert str(tmp_path / "znode.toml") in message


def test_one_setting_spelled_two_ways_is_an_error(tmp_path: Path) -> None:
    message = problems(toml='node_id = "a"\nnode-id = "b"\n', tmp_path=tmp_path)
    assert "'node_id' and 'node-id' are the same setting" in message


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ZNODE_INSECURE": "maybe"}, "ZNODE_INSECURE='maybe': expected 1/0, true/false or yes/no"),
        ({"ZNODE_CLIENT_LEASE": "3s"}, "ZNODE_CLIENT_LEASE='3s': expected a number"),
        ({"ZNODE_MAX_FRAME_SIZE": "1MB"}, "ZNODE_MAX_FRAME_SIZE='1MB': expected an integer"),
        ({"ZNODE_PRESET": "prod"}, "ZNODE_PRESET='prod': expected one of 'lan', 'test'"),
        ({"ZNODE_DISCOVERY": "mdns,carrier-pigeon"}, "ZNODE_DISCOVERY='mdns,carrier-pigeon': "),
    ],
)
def test_a_bad_variable_names_itself_and_what_it_takes(env: dict[str, str], expected: str) -> None:
    assert expected in problems(env=env)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    message = problems(
        env={"ZNODE_INSECURE": "2", "ZNODE_CLIENT_LEASE": "x"},
        toml='nodeid = "a"\nseeds = 3\n',
        tmp_path=tmp_path,
    )
    for part in ("ZNODE_INSECURE", "ZNODE_CLIENT_LEASE", "'nodeid'", "seeds must be"):
        assert part in message
    assert len(message.splitlines()) == 4


def test_a_file_that_is_not_toml_or_not_there_is_an_error(tmp_path: Path) -> None:
    message = problems(toml="node_id = \n", tmp_path=tmp_path)
    assert f"{tmp_path / 'znode.toml'}: not valid TOML" in message
    assert "cannot read /nonexistent.toml (ZNODE_CONFIG)" in problems(
        env={"ZNODE_CONFIG": "/nonexistent.toml"}
    )


def test_an_unknown_variable_is_a_warning_but_kubernetes_service_links_are_not() -> None:
    found, _ = settings(
        [],
        {
            "ZNODE_CLIENT_ENDPOINTS": "ipc:///tmp/x",
            "ZNODE_SERVICE_HOST": "10.0.0.1",
            "ZNODE_PORT": "tcp://10.0.0.1:7701",
            "ZNODE_PORT_7701_TCP_ADDR": "10.0.0.1",
            "OTHER": "x",
        },
    )
    assert found.warnings == (
        "ignoring ZNODE_CLIENT_ENDPOINTS: no znode setting has that name "
        "(did you mean ZNODE_CLIENT_ENDPOINT?)",
    )


# -- what check-config shows -----------------------------------------------------------
def test_secrets_are_masked_and_key_files_shown_by_fingerprint() -> None:
    keys = {"/k/a.key": "0123abcd", "/k/b.key": None}
    assert config_check.shown("key_files", ("/k/a.key", "/k/b.key"), keys) == [
        {"path": "/k/a.key", "fingerprint": "0123abcd"},
        {"path": "/k/b.key", "fingerprint": None},
    ]
    assert config_check.shown("admin_token", "s3cr3t", {}) == config_check.MASK
    assert config_check.shown("metrics_password", "pw", {}) == config_check.MASK
    assert config_check.shown("api_key", "k", {}) == config_check.MASK
    assert config_check.shown("push_url", "https://u:pw@host/x", {}) == "https://u:***@host/x"
    assert config_check.shown("seeds", ("tcp://10.0.0.1:7701",), {}) == ["tcp://10.0.0.1:7701"]
    assert config_check.shown("node_id", "keyboard", {}) == "keyboard"


def test_an_invalid_combination_is_reported_with_every_setting_still_shown() -> None:
    found, args = settings(["--client-endpoint", "tcp://0.0.0.0:5555", "--node-id", "n"])
    config, error = config_check.check(lambda: node_config(args))
    assert error is not None and "without a cluster key" in error
    rows = {r.name: r for r in config_check.rows(found, config, "lan", {})}
    assert rows["client_endpoints"].value == ["tcp://0.0.0.0:5555"]
    assert rows["client_endpoints"].source == "flag"
    assert rows["membership"].origin == "preset lan"


# -- real processes ---------------------------------------------------------------------
def znode(*argv: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zchannels.node", *argv],
        capture_output=True,
        text=True,
        timeout=STEP * 3,
        cwd=ROOT,
        env={**clean_environ(), **(env or {})},
    )


def clean_environ() -> dict[str, str]:
    """This process's environment without any ``ZNODE_*`` the test runner has."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ZNODE_")}


@pytest.fixture
def key(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A key file made by ``znode keygen`` and its contents."""
    path = tmp_path / "cluster.key"
    made = znode("keygen", str(path))
    assert made.returncode == 0, made.stderr
    yield path, json.loads(path.read_text())


def test_check_config_prints_each_value_with_its_source_and_never_key_material(
    tmp_path: Path, key: tuple[Path, dict[str, str]]
) -> None:
    path, material = key
    config = tmp_path / "znode.toml"
    config.write_text(
        f'client_endpoints = ["ipc://{tmp_path}/a.sock", "tcp://10.1.2.3:5555"]\n'
        f'key_files = ["{path}"]\n'
        "client_lease = 2\n"
        'node_id = "from-file"\n'
    )
    env = {"ZNODE_CONFIG": str(config), "ZNODE_NODE_ID": "from-env", "ZNODE_PRESET": "test"}
    as_json = znode("check-config", "--json", "--log-format", "json", env=env)
    text = znode("check-config", "--node-id", "from-flag", env=env)
    for done in (as_json, text):
        assert done.returncode == 0, done.stdout + done.stderr
        for half in ("public", "secret"):
            assert material[half] not in done.stdout + done.stderr, f"printed the {half} key"
    report = json.loads(as_json.stdout)
    assert report["valid"] is True and report["error"] is None
    assert report["config_file"] == str(config)
    got = report["settings"]
    assert got["node_id"] == {"value": "from-env", "source": "env", "origin": "ZNODE_NODE_ID"}
    assert got["client_lease"] == {
        "value": 2.0,
        "source": "file",
        "origin": f"{config}: client_lease",
    }
    assert got["key_files"]["value"] == [
        {"path": str(path), "fingerprint": write_key_fingerprint(path)}
    ]
    assert got["log_format"] == {"value": "json", "source": "flag", "origin": "--log-format"}
    assert got["tick_interval"] == {"value": 0.05, "source": "default", "origin": "default"}
    assert got["seeds"]["source"] == "default"
    lines = {line.split()[0]: line for line in text.stdout.splitlines()[4:]}
    assert text.stdout.startswith("configuration is valid")
    assert lines["node_id"].split()[1:] == ["flag", "--node-id", "from-flag"]
    assert lines["preset"].split()[1:] == ["env", "ZNODE_PRESET", "test"]
    assert lines["client_lease"].split()[1:] == ["file", "2.0"]
    assert f"{path} (fingerprint {write_key_fingerprint(path)})" in lines["key_files"]


def write_key_fingerprint(path: Path) -> str:
    from zchannels.keys import read_key_file

    return read_key_file(path).fingerprint


def test_check_config_refuses_a_lan_endpoint_without_a_key_and_says_why(tmp_path: Path) -> None:
    config = tmp_path / "znode.toml"
    config.write_text('client_endpoints = ["tcp://10.1.2.3:5555"]\n')
    done = znode("check-config", "--config", str(config))
    assert done.returncode == 1
    assert "refusing to listen on tcp://10.1.2.3:5555 without a cluster key" in done.stderr
    assert done.stdout.startswith("configuration is INVALID")
    as_json = znode("check-config", "--config", str(config), "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["valid"] is False and "without a cluster key" in report["error"]
    assert report["settings"]["client_endpoints"]["source"] == "file"


def test_check_config_refuses_a_key_file_others_can_read(
    tmp_path: Path, key: tuple[Path, dict[str, str]]
) -> None:
    path, material = key
    path.chmod(0o644)
    done = znode("check-config", "--key-file", str(path), "--client-endpoint", "ipc:///tmp/x")
    assert done.returncode == 1
    assert f"chmod 600 {path}" in done.stderr
    assert material["secret"] not in done.stdout + done.stderr
    assert "(fingerprint UNREADABLE)" in done.stdout


def test_check_config_and_run_reject_a_malformed_source_with_status_2(tmp_path: Path) -> None:
    for command in ("check-config", "run"):
        done = znode(command, env={"ZNODE_INSECURE": "sure", "ZNODE_CLIENT_LEASE": "soon"})
        assert done.returncode == 2, done.stderr
        assert f"znode {command}: ZNODE_INSECURE='sure': expected 1/0" in done.stderr
        assert "ZNODE_CLIENT_LEASE='soon': expected a number" in done.stderr


def test_run_with_a_config_file_serves_where_the_file_says(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/from-file.sock"
    config = tmp_path / "znode.toml"
    config.write_text(
        f'client-endpoint = "{endpoint}"\nnode_id = "from-file"\npreset = "test"\n'
        'log_level = "WARNING"\n'
    )
    ready = run_until_ready(["--config", str(config)], {})
    try:
        assert ready["endpoints"] == [endpoint]
        status = znode("status", "--json", "--node", endpoint)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["node_id"] == "from-file"
    finally:
        stop(ready)


def test_run_takes_the_variables_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "znode.toml"
    config.write_text(f'client_endpoints = ["ipc://{tmp_path}/file.sock"]\nnode_id = "file"\n')
    endpoint = f"ipc://{tmp_path}/env.sock"
    env = {"ZNODE_CONFIG": str(config), "ZNODE_CLIENT_ENDPOINT": endpoint, "ZNODE_PRESET": "test"}
    ready = run_until_ready([], env)
    try:
        assert ready["endpoints"] == [endpoint]
        status = znode("status", "--json", "--node", endpoint)
        assert json.loads(status.stdout)["node_id"] == "file"
    finally:
        stop(ready)


def run_until_ready(argv: list[str], env: Mapping[str, str]) -> dict[str, Any]:
    """Start ``znode run ARGV`` and wait (with a deadline) for its ready line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "zchannels.node", "run", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**clean_environ(), **env},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + STEP
    ready, _, _ = select.select([proc.stdout], [], [], STEP)
    line = proc.stdout.readline() if ready else ""
    if not line or time.monotonic() > deadline:
        proc.kill()
        _, err = proc.communicate(timeout=STEP)
        pytest.fail(f"znode did not start: {line!r} {err}")
    return {**json.loads(line), "proc": proc}


def stop(ready: dict[str, Any]) -> None:
    proc: subprocess.Popen[str] = ready["proc"]
    proc.terminate()
    try:
        assert proc.wait(STEP) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(STEP)
        proc.communicate()
