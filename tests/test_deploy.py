"""The deployment examples in ``deploy/`` are checked, not just written.

Each example is read the way its tool reads it (Kubernetes and Compose YAML
with PyYAML, YAML 1.1 like kubectl's parser: ``0400`` is octal; the systemd
unit with its line continuations and specifiers), and:

- every ``znode`` command line (containers, init containers, probes,
  ``ExecStart``) parses with ``znode``'s own parser, every flag spelled in
  full (argparse would accept an abbreviation), and ``run``'s flags make a
  ``NodeConfig``;
- every layer ``CONFIG`` (``ZCHANNELS_CONFIG``, which the examples'
  settings.py reads) makes a ``LayerConfig``;
- every ``--key-file`` (or ``key_file``) is where the example puts the key,
  and every mode the example gives it, on the way there too, is one
  ``zchannels.keys.read_key_file`` accepts: a real key file with that mode
  is read;
- every ``dns:`` name is a headless Service (or Compose service) of the same
  file, selecting the pods that run the peers, on the port ``dns:`` implies;
- an ipc endpoint's folder is the same storage in ``znode``'s container and
  in the site's.
"""

from __future__ import annotations

import json
import os
import posixpath
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from procs import ROOT
from zchannels.discovery.sources import DnsName, DnsSrv, listen_port, parse_sources
from zchannels.node.cli import build_parser, node_config
from zchannels.node.config import DEFAULT_PEER_PORT

from zchannels.config import LayerConfig
from zchannels.keys import KeyFileError, read_key_file, write_key_file

DEPLOY = ROOT / "deploy"
KUBERNETES = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
COMPOSE = DEPLOY / "compose" / "compose.yaml"
SYSTEMD = DEPLOY / "systemd" / "znode.service"
#: The environment variable the examples' settings.py reads CONFIG from.
CONFIG_VARIABLE = "ZCHANNELS_CONFIG"
WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet")


# -- checks shared by every example ------------------------------------------------
def flags_of(command: str) -> set[str]:
    """The option strings of one ``znode`` subcommand, from the real parser."""
    parser = build_parser()
    [sub] = [a for a in parser._actions if a.choices and command in a.choices]  # type: ignore[operator]
    subparser = sub.choices[command]  # type: ignore[index]
    return {flag for action in subparser._actions for flag in action.option_strings}


def check_znode(argv: list[str], where: str) -> Any:
    """``argv``: a ``znode`` command line without the program. Returns the
    parsed arguments; fails the test, saying where, on any unknown flag."""
    assert argv, f"{where}: znode without a command"
    known = flags_of(argv[0])
    for token in argv[1:]:
        if token.startswith("-"):
            flag = token.split("=", 1)[0]
            if flag not in known:
                pytest.fail(f"{where}: znode {argv[0]} has no flag {flag}", pytrace=False)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: znode {shlex.join(argv)} does not parse", pytrace=False)
    if argv[0] == "run":
        node_config(args)  # flags that do not go together raise here
    return args


def layer_config(raw: str, where: str) -> LayerConfig:
    return LayerConfig.from_options(json.loads(raw))


def mode_accepted(mode: int, folder: Path) -> bool:
    """Does ``znode`` read a key file with this mode? (A real one, read.)"""
    path = folder / f"mode-{mode:o}-{len(list(folder.iterdir()))}.key"
    write_key_file(path)
    os.chmod(path, mode)
    try:
        read_key_file(path)
    except KeyFileError:
        return False
    return True


def install(argv: list[str]) -> dict[str, Any]:
    """The parts of a coreutils ``install`` command line the examples use."""
    assert posixpath.basename(argv[0]) == "install", argv
    out: dict[str, Any] = {"directory": False, "paths": []}
    tokens = iter(argv[1:])
    for token in tokens:
        if token in ("-m", "-o", "-g"):
            out[token[1]] = next(tokens)
        elif token == "-d":
            out["directory"] = True
        elif token == "-D":
            pass
        else:
            assert not token.startswith("-"), f"install option {token} not understood here"
            out["paths"].append(token)
    return out


def dns_names(args: Any) -> list[DnsName | DnsSrv]:
    return [s for s in parse_sources(args.discovery or ()) if s != "mdns"]


def test_the_examples_exist() -> None:
    assert [p.name for p in KUBERNETES] == ["daemonset.yaml", "sidecar.yaml"]
    assert COMPOSE.exists() and SYSTEMD.exists()


def test_the_mode_check_accepts_owner_only_and_refuses_the_rest(tmp_path: Path) -> None:
    assert mode_accepted(0o400, tmp_path)
    assert mode_accepted(0o600, tmp_path)
    assert not mode_accepted(0o440, tmp_path)  # what fsGroup or an ACL mask gives
    assert not mode_accepted(0o644, tmp_path)  # Kubernetes' default for a Secret


def test_the_flag_check_catches_unknown_and_abbreviated_flags() -> None:
    with pytest.raises(pytest.fail.Exception, match="no flag --disc"):
        check_znode(["run", "--disc", "mdns"], "here")  # argparse alone would take it
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        check_znode(["run", "--discovery", "dns"], "here")
    with pytest.raises(ValueError, match="cannot be combined"):
        check_znode(["run", "--discovery", "none", "--discovery", "mdns"], "here")


# -- Kubernetes --------------------------------------------------------------------
def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload name, pod template metadata, pod spec) of every workload."""
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            template = doc["spec"]["template"]
            yield doc["metadata"]["name"], template["metadata"], template["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def argv_of(container: dict[str, Any]) -> list[str]:
    return [str(a) for a in (*container.get("command", []), *container.get("args", []))]


def probes(container: dict[str, Any]) -> Iterator[list[str]]:
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = container.get(kind)
        if probe and "exec" in probe:
            yield [str(a) for a in probe["exec"]["command"]]


def find_mount(container: dict[str, Any], path: str) -> tuple[dict[str, Any], str] | None:
    """The volume mount holding ``path`` in ``container``, and the path within it."""
    for mount in container.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/")
        if path == root or path.startswith(root + "/"):
            return mount, path[len(root) :].lstrip("/")
    return None


def mount_for(container: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    found = find_mount(container, path)
    if found is None:
        pytest.fail(f"{container['name']}: nothing is mounted at {path}", pytrace=False)
    return found


def check_key_in_pod(spec: dict[str, Any], container: dict[str, Any], key: str, tmp: Path) -> None:
    """The key at ``key`` in ``container`` comes from a Secret mounted
    read-only, through modes znode accepts all the way."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mount, inside = mount_for(container, key)
    where = f"{container['name']}: --key-file {key}"
    volume = volumes[mount["name"]]
    if "secret" not in volume:
        # an owner-only copy made by an init container that installs it there
        made = []
        for init in spec.get("initContainers", []):
            argv = argv_of(init)
            if not argv or posixpath.basename(argv[0]) != "install":
                continue
            done = install(argv)
            target = None if done["directory"] else find_mount(init, done["paths"][-1])
            if target is not None and (target[0]["name"], target[1]) == (mount["name"], inside):
                made.append((init, done))
        assert made, f"{where}: no init container installs the key into {mount['name']}"
        init, done = made[0]
        assert mode_accepted(int(done["m"], 8), tmp), f"{where}: copied with mode {done['m']}"
        uid = spec.get("securityContext", {}).get("runAsUser")
        assert done.get("o") == str(uid), f"{where}: the copy belongs to {done.get('o')}, not {uid}"
        assert mount.get("readOnly") is True, f"{where}: the key's volume is mounted writable"
        source = done["paths"][0]
        mount, inside = mount_for(init, source)
        volume = volumes[mount["name"]]
        where = f"{init['name']}: the key's source {source}"
    assert "secret" in volume, f"{where}: not from a Secret"
    assert mount.get("readOnly") is True, f"{where}: the Secret is mounted writable"
    secret = volume["secret"]
    modes = [item["mode"] for item in secret.get("items", []) if item["path"] == inside]
    mode = modes[0] if modes else secret.get("defaultMode", 0o644)
    assert mode == 0o400, f"{where}: the Secret is mounted with mode {mode:o}, not 0400"
    assert mode_accepted(mode, tmp), f"{where}: znode refuses mode {mode:o}"


def check_dns_name(
    source: DnsName | DnsSrv, docs: list[dict[str, Any]], pods: str, labels: dict[str, str]
) -> None:
    """``source`` names a headless Service of this file selecting the pods
    ``labels`` describes, on the port the peers listen on."""
    assert isinstance(source, DnsName), "the Kubernetes examples use dns:, not dns-srv:"
    service_name = source.name.split(".")[0]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert service_name in services, f"{source}: no Service {service_name} in this file"
    service = services[service_name]["spec"]
    assert service.get("clusterIP") == "None", f"{source}: {service_name} is not headless"
    assert service.get("publishNotReadyAddresses") is True, f"{source}: not-ready pods unlisted"
    selector = service["selector"]
    assert selector.items() <= labels.items(), f"{service_name} does not select the {pods} pods"
    port = source.port or DEFAULT_PEER_PORT
    assert any(p["port"] == port for p in service["ports"]), f"{service_name} has no port {port}"


def storage(
    workload: str, spec: dict[str, Any], container: dict[str, Any], folder: str
) -> tuple[str, ...]:
    """Where ``folder`` of ``container`` is stored: a host folder (shared by
    every pod on the Kubernetes node) or a volume of one workload's pod."""
    mount, inside = mount_for(container, folder + "/x")
    volume = {v["name"]: v for v in spec.get("volumes", [])}[mount["name"]]
    if "hostPath" in volume:
        return ("hostPath", volume["hostPath"]["path"], inside)
    return (workload, mount["name"], inside)


@pytest.mark.parametrize("path", KUBERNETES, ids=lambda p: p.name)
def test_kubernetes_example(path: Path, tmp_path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    socket_folders: dict[str, set[tuple[str, ...]]] = {}  # ipc folder -> where it is stored
    layers: list[tuple[str, str, dict[str, Any], dict[str, Any], str]] = []
    nodes = 0
    for workload, metadata, spec in pod_specs(docs):
        for container in containers(spec):
            where = f"{path.name}: {workload}/{container['name']}"
            for line in [argv_of(container), *probes(container)]:
                if not line or posixpath.basename(line[0]) != "znode":
                    continue
                args = check_znode(line[1:], where)
                if args.command != "run":
                    continue
                nodes += 1
                assert args.key_files, f"{where}: a LAN node needs a key"
                for key in args.key_files:
                    check_key_in_pod(spec, container, key, tmp_path)
                for source in dns_names(args):
                    check_dns_name(source, docs, workload, metadata["labels"])
                ports = {p["containerPort"] for p in container.get("ports", [])}
                listens = listen_port(parse_sources(args.discovery), DEFAULT_PEER_PORT)
                assert listens in ports, f"{where}: peer port {listens} not declared"
                for endpoint in args.client_endpoints or ():
                    folder = posixpath.dirname(endpoint.removeprefix("ipc://"))
                    stored = storage(workload, spec, container, folder)
                    socket_folders.setdefault(folder, set()).add(stored)
            for variable in container.get("env", []):
                if variable["name"] == CONFIG_VARIABLE:
                    layers.append((where, workload, spec, container, variable["value"]))
    assert nodes and layers, f"{path.name}: no znode or no site found"
    for where, workload, spec, container, raw in layers:
        config = layer_config(raw, where)
        if config.node is not None and config.node.startswith("ipc://"):
            folder = posixpath.dirname(config.node.removeprefix("ipc://"))
            assert folder in socket_folders, f"{where}: no znode serves {config.node}"
            stored = storage(workload, spec, container, folder)
            assert stored in socket_folders[folder], f"{where}: {folder} is not znode's"


def test_the_kubernetes_key_check_catches_a_readable_secret(tmp_path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(KUBERNETES[0].read_text()) if d]
    for _, _, spec in pod_specs(docs):
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                volume["secret"]["defaultMode"] = 0o440
        znode = [c for c in containers(spec) if argv_of(c)[:1] == ["znode"]]
        if znode:
            with pytest.raises(AssertionError, match="mode 440"):
                check_key_in_pod(spec, znode[0], "/key/cluster.key", tmp_path)
            return
    pytest.fail("no znode container in the example")


# -- Docker Compose ----------------------------------------------------------------
def test_compose_example(tmp_path: Path) -> None:
    compose = yaml.safe_load(COMPOSE.read_text())  # `<<:` merge keys resolved, as Compose does
    services: dict[str, Any] = compose["services"]
    secrets: dict[str, Any] = compose.get("secrets", {})
    members = 0
    for name, service in services.items():
        command = [str(a) for a in service.get("command", [])]
        if command and posixpath.basename(command[0]) == "znode":
            check_znode(command[1:], f"compose: {name}")
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        if CONFIG_VARIABLE not in environment:
            continue
        members += 1
        config = layer_config(environment[CONFIG_VARIABLE], name)
        for source in parse_sources(config.discovery):
            assert isinstance(source, DnsName), f"compose: {name}: {source} is not a dns: name"
            assert source.name in services, f"compose: {name}: {source} names no service"
            assert source.port in (None, DEFAULT_PEER_PORT), "embedded members listen on 7701"
        given = {}
        for entry in service.get("secrets", []):
            entry = {"source": entry} if isinstance(entry, str) else entry
            given[f"/run/secrets/{entry.get('target', entry['source'])}"] = entry
        assert config.key_file, f"compose: {name}: a LAN member needs a key"
        for key in config.key_file:
            assert key in given, f"compose: {name}: {key} is no secret of the service"
            entry = given[key]
            assert entry["source"] in secrets, f"compose: {name}: no secret {entry['source']}"
            mode = entry.get("mode", 0o444)  # Compose's default: world-readable
            assert mode == 0o400 and mode_accepted(mode, tmp_path), f"{name}: key mode {mode:o}"
    assert members >= 2, "compose: the web and worker services"


# -- systemd -------------------------------------------------------------------------
def unit_settings(text: str) -> dict[str, list[str]]:
    """``Section.Key -> values`` of a unit file: continuations joined,
    comments dropped, repeated keys kept in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    logical = text.replace("\\\n", " ")
    for line in logical.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def exec_argv(value: str) -> list[str]:
    """An Exec*= command line: prefixes dropped, specifiers of a system
    service expanded (%t: the runtime folder root)."""
    value = value.lstrip("@-:+!|")
    return [a.replace("%t", "/run").replace("%%", "%") for a in shlex.split(value)]


def test_systemd_example(tmp_path: Path) -> None:
    unit = unit_settings(SYSTEMD.read_text())
    [start] = unit["Service.ExecStart"]
    argv = exec_argv(start)
    assert posixpath.basename(argv[0]) == "znode" and posixpath.isabs(argv[0])
    args = check_znode(argv[1:], "znode.service")
    assert args.command == "run" and args.key_files
    user = unit["Service.User"][0]
    copies = [install(exec_argv(v)) for v in unit.get("Service.ExecStartPre", [])]
    for key in args.key_files:
        made = [c for c in copies if c["paths"][-1:] == [key]]
        assert made, f"znode.service: nothing puts the key at {key}"
        assert made[0]["o"] == user, f"the key copy belongs to {made[0]['o']}, not {user}"
        assert mode_accepted(int(made[0]["m"], 8), tmp_path), f"key mode {made[0]['m']}"
    runtime = [f"/run/{d}" for d in unit["Service.RuntimeDirectory"][0].split()]
    assert unit["Service.RuntimeDirectoryMode"] == ["0700"]
    for endpoint in args.client_endpoints:
        folder = posixpath.dirname(endpoint.removeprefix("ipc://"))
        assert folder in runtime, f"{endpoint}: not in the unit's runtime folder"
    for key in args.key_files:
        assert posixpath.dirname(key) in runtime, f"{key}: not in the unit's runtime folder"
    assert unit["Service.KillSignal"] == ["SIGTERM"], "SIGTERM: hand over, then leave"
