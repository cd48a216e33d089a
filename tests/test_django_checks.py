"""zchannels as a Django app: its system checks.

The pure part (``zchannels.checks.layer_messages`` / ``deploy_messages`` on a
``CHANNEL_LAYERS`` mapping) is tested in this process; the app itself in a
test project (``tests/checks_site``), where ``call_command("check")`` runs in
a fresh process so that INSTALLED_APPS and settings are that project's, and
where loading the app and checking must start no node, thread or socket.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.checks import CheckMessage
from django.core.checks import Error as CheckError
from django.core.checks import Warning as CheckWarning
from zchannels.node.security import loopback_only as node_loopback_only

from zchannels.checks import deploy_messages, layer_messages, loopback_only
from zchannels.config import option_names
from zchannels.keys import write_key_file
from zchannels.layer import ZeroMQChannelLayer

BACKEND = "zchannels.layer.ZeroMQChannelLayer"
TESTS = Path(__file__).resolve().parent


def layers(config: Any, backend: str = BACKEND) -> dict[str, Any]:
    return {"default": {"BACKEND": backend, "CONFIG": config}}


def ids(messages: list[CheckMessage]) -> list[str]:
    return [m.id for m in messages]


def only(messages: list[CheckMessage], check_id: str) -> CheckMessage:
    found = [m for m in messages if m.id == check_id]
    assert len(found) == 1, messages
    return found[0]


@pytest.fixture
def key_file(tmp_path: Path) -> str:
    path = tmp_path / "cluster.key"
    write_key_file(path)
    return str(path)


# -- manage.py check: what would fail later is an Error now ---------------------


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"node": "ipc:///run/zchannels/znode.sock", "capacity": 50, "expiry": 10},
        {"channel_capacity": {"http.request": 200}, "prefix": "site"},
        {"cluster": "lan", "peer_endpoint": "tcp://127.0.0.1:0"},  # loopback: no key needed
        {"cluster": "lan", "insecure": True},
    ],
    ids=repr,
)
def test_a_valid_config_gives_no_message(config: dict[str, Any]) -> None:
    assert layer_messages(layers(config)) == []


def test_unknown_key_is_an_error_with_a_guess_and_the_valid_names() -> None:
    message = only(layer_messages(layers({"capasity": 5})), "zchannels.E001")
    assert isinstance(message, CheckError)
    assert message.msg == "unknown CONFIG key 'capasity'"
    assert message.obj == "CHANNEL_LAYERS['default']['CONFIG']"
    assert message.hint.startswith("Did you mean 'capacity'? Delete or rename it; valid keys: ")
    for name in option_names():
        assert name in message.hint


@pytest.mark.parametrize(
    ("config", "key", "says"),
    [
        ({"capacity": "100"}, "capacity", "a positive int"),
        ({"expiry": -1}, "expiry", "seconds a message may wait"),
        ({"insecure": "false"}, "insecure", "a bool"),
        ({"node": "redis://localhost:6379"}, "node", "'ipc:///run/zchannels/znode.sock'"),
        ({"prefix": "no spaces"}, "prefix", "A-Z a-z 0-9"),
        ({"channel_capacity": [("http.*", 5)]}, "channel_capacity", "re.compile"),
        ({"seeds": "tcp://10.0.0.2:7000", "cluster": "x"}, "seeds", "a list of"),
        ({"cluster": "lan", "node": "ipc:///x.sock"}, "cluster", "znode run --cluster NAME"),
        ({"peer_endpoint": 7000, "cluster": "x"}, "peer_endpoint", "'tcp://HOST:PORT'"),
        ({"key_file": 42}, "key_file", "znode keygen PATH"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else "",
)
def test_bad_value_is_an_error_with_the_fix(config: dict[str, Any], key: str, says: str) -> None:
    message = only(layer_messages(layers(config)), "zchannels.E002")
    assert isinstance(message, CheckError)
    assert message.hint.startswith(f"Set CONFIG[{key!r}] to "), message.hint
    assert says in message.hint, message.hint
    # the same CONFIG fails the layer with the same words
    with pytest.raises(ValueError) as info:
        ZeroMQChannelLayer(**config)
    assert str(info.value) == message.msg


def test_missing_key_file_is_an_error_saying_how_to_make_one(tmp_path: Path) -> None:
    path = tmp_path / "nope.key"
    message = only(layer_messages(layers({"key_file": str(path)})), "zchannels.E003")
    assert str(path) in message.msg
    assert message.hint.startswith(f"Make it with 'znode keygen {path}'")


def test_key_file_readable_by_others_is_an_error_saying_chmod(key_file: str) -> None:
    os.chmod(key_file, 0o644)
    message = only(layer_messages(layers({"key_file": [key_file]})), "zchannels.E003")
    assert "accessible by others" in message.msg
    assert message.hint.startswith(f"Run 'chmod 600 {key_file}'")


def test_malformed_key_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.key"
    path.write_text("not json")
    path.chmod(0o600)
    message = only(layer_messages(layers({"key_file": path})), "zchannels.E003")  # a Path works
    assert "malformed" in message.msg and "znode keygen" in message.hint


def test_good_key_files_pass_every_one_is_read(key_file: str, tmp_path: Path) -> None:
    assert layer_messages(layers({"node": "tcp://10.0.0.1:7001", "key_file": key_file})) == []
    rollover = [key_file, str(tmp_path / "next.key")]  # the second does not exist
    assert ids(layer_messages(layers({"cluster": "c", "key_file": rollover}))) == ["zchannels.E003"]


def test_cluster_member_without_key_is_the_error_its_node_would_raise() -> None:
    message = only(layer_messages(layers({"cluster": "lan"})), "zchannels.E004")
    assert "would refuse to start" in message.msg
    assert "znode keygen PATH" in message.hint and "CONFIG['key_file']" in message.hint
    exposed = layers({"cluster": "lan", "peer_endpoint": "tcp://0.0.0.0:7000"})
    assert ids(layer_messages(exposed)) == ["zchannels.E004"]


def test_config_that_is_not_a_dict_and_a_misspelt_backend() -> None:
    assert ids(layer_messages(layers(["hosts"]))) == ["zchannels.E005"]
    message = only(
        layer_messages(layers({}, backend="zchannels.layer.ZeroMQLayer")), "zchannels.E006"
    )
    assert message.hint == f"Set BACKEND to {BACKEND!r}."


class SubLayer(ZeroMQChannelLayer):
    """Keeps ZeroMQChannelLayer's __init__: its CONFIG is zchannels'."""


class OwnInitLayer(ZeroMQChannelLayer):
    def __init__(self, flavour: str = "", **options: Any) -> None:
        super().__init__(**options)


def test_only_zchannels_backends_are_judged() -> None:
    nonsense = {"whatever": 1}
    assert layer_messages(layers(nonsense, "channels.layers.InMemoryChannelLayer")) == []
    assert layer_messages(layers(nonsense, "not.a.module.Layer")) == []
    assert ids(layer_messages(layers(nonsense, f"{__name__}.SubLayer"))) == ["zchannels.E001"]
    assert layer_messages(layers({"flavour": "x"}, f"{__name__}.OwnInitLayer")) == []
    assert layer_messages("not a dict") == [] and layer_messages({"x": None}) == []


def test_test_config_is_checked_too() -> None:
    settings = {"default": {"BACKEND": BACKEND, "TEST_CONFIG": {"capacty": 1}}}
    message = only(layer_messages(settings), "zchannels.E001")
    assert message.obj == "CHANNEL_LAYERS['default']['TEST_CONFIG']"


def test_channels_redis_keys_are_one_warning_each_saying_what_replaces_them() -> None:
    config = {
        "hosts": [("localhost", 6379)],
        "symmetric_encryption_keys": ["secret"],
        "capacity": 100,
    }
    messages = layer_messages(layers(config))
    assert ids(messages) == ["zchannels.W001", "zchannels.W001"]
    assert all(isinstance(m, CheckWarning) for m in messages)
    hosts, keys = messages
    assert hosts.msg == "CONFIG 'hosts' is a channels_redis option that zchannels ignores"
    assert "znode sidecar" in hosts.hint
    assert "the cluster key encrypts" in keys.hint


def test_loopback_rule_is_the_nodes() -> None:
    for endpoint in [
        "ipc:///tmp/x.sock",
        "inproc://x",
        "tcp://127.0.0.1:1",
        "tcp://127.5.0.1:1",
        "tcp://[::1]:1",
        "tcp://localhost:1",
        "tcp://0.0.0.0:1",
        "tcp://*:1",
        "tcp://10.0.0.1:1",
        "tcp://[::]:1",
        "tcp://example.com:1",
        "udp://127.0.0.1:1",
    ]:
        assert loopback_only(endpoint) == node_loopback_only(endpoint), endpoint


# -- check --deploy: what is unsafe in production --------------------------------


def test_deploy_warns_about_insecure() -> None:
    message = only(deploy_messages(layers({"cluster": "lan", "insecure": True})), "zchannels.W002")
    assert isinstance(message, CheckWarning)
    assert "read and inject every message" in message.msg
    assert "znode keygen PATH" in message.hint


def test_deploy_warns_about_tcp_nodes_without_a_key(key_file: str) -> None:
    remote = only(deploy_messages(layers({"node": "tcp://10.0.0.5:7001"})), "zchannels.W003")
    assert "unencrypted" in remote.msg and "--key-file PATH" in remote.hint
    local = only(deploy_messages(layers({"node": "tcp://127.0.0.1:7001"})), "zchannels.W004")
    assert "every user" in local.msg and "ipc://" in local.hint
    keyed = {"node": "tcp://10.0.0.5:7001", "key_file": key_file}
    assert deploy_messages(layers(keyed)) == []


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"node": "ipc:///run/zchannels/znode.sock"},
        {"cluster": "lan", "key_file": "/etc/zchannels/cluster.key"},
        {"capacity": "bad"},  # invalid: an Error of manage.py check, not a deploy warning
        {"hosts": [("localhost", 6379)]},
    ],
    ids=repr,
)
def test_deploy_is_quiet_about_safe_settings(config: dict[str, Any]) -> None:
    assert deploy_messages(layers(config)) == []


# -- the app in a project: call_command("check") ---------------------------------


def run_check(channel_layers: dict[str, Any], *args: str) -> dict[str, Any]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="checks_site.settings",
        CHECKS_SITE_LAYERS=json.dumps(channel_layers),
        PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [sys.executable, str(TESTS / "checks_site" / "run_check.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def assert_touched_nothing(report: dict[str, Any]) -> None:
    assert report["modules"] == [], "the app or its checks imported the node"
    assert report["threads"] == 1, "a thread was started"
    assert report["sockets"] == 0, "a socket was opened"
    assert report["layers_built"] == 0, "a layer was built"


def test_check_reports_a_bad_config_at_check_time(tmp_path: Path) -> None:
    report = run_check(
        {
            "default": {
                "BACKEND": BACKEND,
                "CONFIG": {"capasity": 5, "hosts": ["redis://localhost"]},
            },
            "typed": {"BACKEND": BACKEND, "CONFIG": {"expiry": "60"}},
            "keyed": {"BACKEND": BACKEND, "CONFIG": {"key_file": str(tmp_path / "none.key")}},
        }
    )
    failed = report["failed"]
    assert failed is not None, report
    assert "CHANNEL_LAYERS['default']['CONFIG']: (zchannels.E001) unknown CONFIG key" in failed
    assert "HINT: Did you mean 'capacity'?" in failed
    assert "(zchannels.W001) CONFIG 'hosts' is a channels_redis option" in failed
    assert "CHANNEL_LAYERS['typed']['CONFIG']: (zchannels.E002)" in failed
    assert "HINT: Set CONFIG['expiry'] to a positive number of seconds" in failed
    assert "CHANNEL_LAYERS['keyed']['CONFIG']: (zchannels.E003)" in failed
    assert f"HINT: Make it with 'znode keygen {tmp_path / 'none.key'}'" in failed
    assert_touched_nothing(report)


def test_check_deploy_warns_and_passes(key_file: str) -> None:
    channel_layers = {
        "default": {"BACKEND": BACKEND, "CONFIG": {"node": "tcp://10.1.2.3:7001"}},
        "member": {"BACKEND": BACKEND, "CONFIG": {"cluster": "lan", "insecure": True}},
        "safe": {
            "BACKEND": BACKEND,
            "CONFIG": {"node": "tcp://10.1.2.3:7001", "key_file": key_file},
        },
    }
    plain = run_check(channel_layers)
    assert plain["failed"] is None and "no issues" in plain["output"], plain
    report = run_check(channel_layers, "--deploy", "--tag", "zchannels")
    assert report["failed"] is None, report
    out = report["output"]
    assert "CHANNEL_LAYERS['default']['CONFIG']: (zchannels.W003)" in out
    assert "CHANNEL_LAYERS['member']['CONFIG']: (zchannels.W002)" in out
    assert "'safe'" not in out
    assert "System check identified 2 issues" in out
    assert_touched_nothing(report)
