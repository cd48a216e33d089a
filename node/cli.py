"""The ``znode`` command: run a node, check a configuration, ask a node for
its status.

Owns: argument parsing (flags map one-to-one onto ``NodeConfig`` fields),
dispatching to the subcommands, signal handling, logging setup, and printing
status. Where a setting comes from (flag, ``ZNODE_*`` variable, TOML file) is
``config_sources``; what ``check-config`` checks and prints is
``config_check``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import zmq
from zchannels.discovery.sources import listen_port, parse_source, parse_sources

from zchannels.keys import KeyFileError, write_key_file
from zchannels.protocol import DecodeError, MsgType, decode, encode

from . import config_check, logs
from .config import (
    DEFAULT_PEER_PORT,
    NodeConfig,
    default_client_endpoint,
    default_state_dir,
    lan_address,
)
from .config_sources import (
    CONFIG_ENV,
    Option,
    Settings,
    SourceError,
    config_file,
    given_flags,
    options_of,
    parse_file,
    resolve,
    suppress_defaults,
)
from .lifetime import Locked
from .security import InsecureBind
from .server import NodeServer

log = logging.getLogger("zchannels.node")


#: The subcommands that take ``run``'s flags (and its env/TOML settings).
_CONFIGURED = ("run", "check-config")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    options = run_options(parser)
    for command in _CONFIGURED:
        suppress_defaults(subcommand(parser, command), options)
    args = parser.parse_args(argv)
    if args.command == "keygen":
        return _keygen(args)
    if args.command == "status":
        return _status(args)
    if args.command == "drain":
        return _drain(args)
    try:
        settings = read_settings(args, options, os.environ)
    except SourceError as exc:
        if args.command == "check-config" and args.json:
            print(json.dumps({"valid": False, "error": str(exc)}, indent=2))
        print(f"znode {args.command}: {exc}", file=sys.stderr)
        return 2
    effective = argparse.Namespace(**{**vars(args), **settings.values()})
    if args.command == "check-config":
        return config_check.main(effective, settings, lambda: node_config(effective))
    return _run(effective, settings)


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of ``znode NAME``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise KeyError(name)


def run_options(parser: argparse.ArgumentParser) -> tuple[Option, ...]:
    """``znode run``'s flags as settings (all but ``--config``), from the
    parser itself: a flag added to ``run`` gets its ``ZNODE_*`` variable
    and TOML key with no code anywhere else."""
    return options_of(subcommand(parser, "run"), exclude=("config",))


def read_settings(
    args: argparse.Namespace, options: tuple[Option, ...], env: Mapping[str, str]
) -> Settings:
    """The settings of ``run``/``check-config``: the command line in
    ``args``, then ``env``, then the config file (``--config`` or
    ``ZNODE_CONFIG``), read here. ``SourceError`` for an unreadable file or
    any bad variable or key."""
    named = config_file(args.config, env)
    table = None
    path = None
    if named is not None:
        path = named[0]
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            via = "--config" if named[1] == "flag" else CONFIG_ENV
            raise SourceError([f"cannot read {path} ({via}): {exc.strerror}"]) from None
        except UnicodeDecodeError as exc:
            raise SourceError([f"{path}: not UTF-8 text ({exc.reason})"]) from None
        table = parse_file(text, path)
    return resolve(options, given_flags(args, options), env, table, path)


def _discovery(spec: str) -> str:
    """argparse type of ``--discovery``: the spelling, checked."""
    try:
        parse_source(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return spec


def build_parser() -> argparse.ArgumentParser:
    """The ``znode`` command line (also read by the tests of ``deploy/``)."""
    parser = argparse.ArgumentParser(prog="znode", description="zchannels node")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a node (the per-host sidecar)")
    run.add_argument(
        "--client-endpoint",
        action="append",
        dest="client_endpoints",
        metavar="ENDPOINT",
        help=f"where Django processes connect; repeatable (default {default_client_endpoint()})",
    )
    run.add_argument(
        "--config",
        metavar="PATH",
        help="a TOML file of settings, one key per flag, named as its NodeConfig field "
        f"(client_endpoints) or as the flag (client-endpoint); also {CONFIG_ENV}. Every flag "
        "can also be given as ZNODE_<FLAG> (ZNODE_CLIENT_ENDPOINT; lists comma-separated). "
        "Precedence: flag > env > file > default",
    )
    run.add_argument("--node-id", help="this node's id (default: the host name)")
    run.add_argument(
        "--peer-endpoint",
        metavar="ENDPOINT",
        help="where other nodes reach this one (tcp://HOST:PORT)",
    )
    run.add_argument(
        "--seed",
        action="append",
        dest="seeds",
        metavar="ENDPOINT",
        help="a peer endpoint to join through; repeatable",
    )
    run.add_argument(
        "--cluster",
        help="the cluster's name (default zchannels); without --peer-endpoint, "
        f"peers are served on this host's LAN address, port {DEFAULT_PEER_PORT} "
        "(or the PORT of --discovery dns:NAME:PORT)",
    )
    run.add_argument(
        "--discovery",
        action="append",
        type=_discovery,
        metavar="mdns|none|dns:NAME[:PORT]|dns-srv:NAME",
        help="how peers are found besides seeds; repeatable: mdns (the default: the LAN), "
        f"dns:NAME[:PORT] (NAME's A/AAAA records, each a peer on PORT, default "
        f"{DEFAULT_PEER_PORT}), dns-srv:NAME (SRV records), or none (seeds only). "
        "DNS names are resolved again every --dns-interval",
    )
    run.add_argument(
        "--interface",
        action="append",
        dest="interfaces",
        metavar="ADDRESS",
        help="IP address of an interface mDNS announces on; repeatable "
        "(default: the peer endpoint's address)",
    )
    run.add_argument(
        "--key-file",
        action="append",
        dest="key_files",
        metavar="PATH",
        help="cluster key (znode keygen): peers and tcp:// clients must hold it; "
        "give two while rolling a cluster over to a new key (the first is served)",
    )
    run.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening beyond loopback without a key (anyone on the network "
        "can read and inject messages)",
    )
    run.add_argument(
        "--metrics-endpoint",
        metavar="HOST:PORT",
        help="serve /metrics (Prometheus), /healthz and /readyz over HTTP on HOST:PORT "
        "(loopback only without --metrics-insecure; port 0: a free one)",
    )
    run.add_argument(
        "--metrics-insecure",
        action="store_true",
        help="allow --metrics-endpoint beyond loopback (anyone who can reach it reads "
        "the node's figures)",
    )
    run.add_argument("--preset", choices=("lan", "test"), default="lan")
    run.add_argument(
        "--lock-file",
        metavar="PATH",
        help="hold an exclusive lock on PATH while running; exit at once (0) if "
        "another node holds it",
    )
    run.add_argument(
        "--state-dir",
        metavar="PATH",
        default=default_state_dir(),
        help="where the node notes, as it stops, that its life left, for its next start to "
        "tell its peers (so a peer that never heard the leave does not count its queue "
        "lost too); none: no note (default: %(default)s)",
    )
    run.add_argument(
        "--claim-file",
        metavar="PATH",
        help="client processes hold shared locks on PATH while they use the node "
        "(with --exit-when-idle)",
    )
    for name, flag in (
        ("client_lease", "--client-lease"),
        ("tick_interval", "--tick-interval"),
        ("sweep_interval", "--sweep-interval"),
        ("log_interval", "--log-interval"),
        ("dns_interval", "--dns-interval"),
        ("exit_when_idle", "--exit-when-idle"),
        ("ready_settle", "--ready-settle"),
        ("drain_timeout", "--drain-timeout"),
    ):
        run.add_argument(flag, dest=name, type=float, metavar="SECONDS")
    run.add_argument("--max-frame-size", dest="max_frame_size", type=int, metavar="BYTES")
    for name in ("max_client_channels", "max_client_group_entries"):
        run.add_argument("--" + name.replace("_", "-"), dest=name, type=int, metavar="N")
    run.add_argument("--log-level", default="INFO")
    run.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text (for people; the default) or json: one object per line, with the "
        "node id and structured fields (for log shippers)",
    )

    keygen = sub.add_parser("keygen", help="write a new cluster key file (mode 600)")
    keygen.add_argument("path", metavar="PATH")

    status = sub.add_parser("status", help="show a node's state")
    status.add_argument("--node", default=default_client_endpoint(), metavar="ENDPOINT")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS")

    drain = sub.add_parser(
        "drain",
        help="make a node drain and stop (as SIGTERM does); wait until it has gone",
        description="Ask the node at ENDPOINT to drain: its clients give back what they "
        "hold and hold what they send, it hands its channels over and leaves its "
        "cluster, then it stops; its clients go on with the next node on the same "
        "endpoint. Exit status 0 once the node no longer answers, 1 if it still does "
        "after --timeout seconds or did not take the request.",
    )
    drain.add_argument("--node", default=default_client_endpoint(), metavar="ENDPOINT")
    drain.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")

    # Last, so that it takes every flag of run, whoever added it where.
    check = sub.add_parser(
        "check-config",
        parents=[run],
        add_help=False,  # run's -h comes with its flags
        help="check run's configuration (flags, ZNODE_* variables, --config file) "
        "without starting, and print it with where each value came from",
        description="Build the node's configuration exactly as 'znode run' would, check "
        "it (key files, bind policy) without binding anything, and print every setting "
        "with its source (flag, env, file, default); secrets are masked. Exit status 0: "
        "valid; 1: the configuration is refused (the reason is printed); 2: a flag, "
        "variable or file key is malformed.",
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _keygen(args: argparse.Namespace) -> int:
    try:
        key = write_key_file(args.path)
    except KeyFileError as exc:
        print(f"znode keygen: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.path} (fingerprint {key.fingerprint}); copy it to every node "
        "(owner-only permissions) and start them with --key-file",
        file=sys.stderr,
    )
    return 0


def node_config(args: argparse.Namespace) -> NodeConfig:
    """``znode run``'s flags as a ``NodeConfig``: each flag sets the field of
    its name over the preset. ``ValueError`` for flags that do not go
    together, ``OSError`` when there is no LAN address to serve peers on."""
    overrides: dict[str, Any] = {
        f.name: getattr(args, f.name)
        for f in fields(NodeConfig)
        if getattr(args, f.name, None) is not None
    }
    for name in ("client_endpoints", "seeds", "interfaces", "key_files", "discovery"):
        if overrides.get(name):
            overrides[name] = tuple(overrides[name])
    if overrides.get("state_dir") in ("none", ""):
        overrides["state_dir"] = None
    if args.cluster is not None and args.peer_endpoint is None:
        # found by dns:NAME:PORT, a node listens on that PORT
        port = listen_port(parse_sources(args.discovery or ()), DEFAULT_PEER_PORT)
        overrides["peer_endpoint"] = f"tcp://{lan_address()}:{port or DEFAULT_PEER_PORT}"
    preset = NodeConfig.test if args.preset == "test" else NodeConfig.lan
    return preset(**overrides)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    formatter = logs.setup(args.log_level, args.log_format)
    for warning in settings.warnings:
        log.warning("%s", warning, extra={"reason": "config"})
    try:
        config = node_config(args)
    except (OSError, ValueError) as exc:  # no LAN address; --discovery none with another
        log.error("cannot start: %s", exc, extra={"reason": "config"})
        return 1
    if isinstance(formatter, logs.JsonFormatter):
        formatter.node = config.node_id
    try:
        asyncio.run(_serve(config))
    except (zmq.ZMQError, KeyFileError, InsecureBind, OSError) as exc:  # (OSError: a port)
        log.error("cannot start: %s", exc, extra={"reason": type(exc).__name__})
        return 1
    except Locked as exc:
        log.info("not starting: %s (it serves)", exc)
    return 0


async def _serve(config: NodeConfig) -> None:
    server = NodeServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Tell whoever started us (tests, scripts) where we listen.
    peer = server.mesh.address if server.mesh is not None else None
    metrics = server.ops.url if server.ops is not None else None
    print(
        json.dumps(
            {"ready": True, "endpoints": server.endpoints, "peer": peer, "metrics": metrics}
        ),
        flush=True,
    )
    # --exit-when-idle: the node also stops once nobody uses it.
    wanted = (stop, server.idle, server.stop_wanted)
    done = [asyncio.create_task(event.wait()) for event in wanted]
    await asyncio.wait(done, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        task.cancel()
    if not server.idle.is_set() and config.drain_timeout > 0:
        await server.drain(config.drain_timeout)
    await server.stop()
    # ...and what it counted to the end (a leave counts what no peer
    # acknowledged as it ends: ``ClusterNode.gone``; nobody can ask it now)
    print(json.dumps({"stopped": True, "status": server.node.core.status()}, default=str))


def query(endpoint: str, mtype: MsgType, *fields: Any, timeout: float = 3.0) -> Any:
    """One request to a node's client endpoint, without a session."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, f"znode-cli/{secrets.token_hex(4)}".encode())
    try:
        sock.connect(endpoint)
        sock.send(encode(mtype, 1, *fields))
        if not sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"no answer from {endpoint} in {timeout:g} s")
        for reply_type, reply in decode(sock.recv()):
            if reply[0] == 1 and reply_type != MsgType.ERROR:
                return reply[1]
        raise DecodeError("shape", "unexpected answer")
    finally:
        sock.close()


def _drain(args: argparse.Namespace) -> int:
    try:
        incarnation = query(args.node, MsgType.STATUS, timeout=3.0)["incarnation"]
        sessions = query(args.node, MsgType.STOP, timeout=3.0)
    except (TimeoutError, DecodeError, zmq.ZMQError) as exc:
        print(f"znode drain: {exc}", file=sys.stderr)
        return 1
    print(f"znode drain: {args.node} drains ({sessions} client processes)", flush=True)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:  # (a supervisor may have started the next node there already)
            if query(args.node, MsgType.STATUS, timeout=0.5)["incarnation"] != incarnation:
                raise TimeoutError
        except (TimeoutError, DecodeError, zmq.ZMQError):
            print(f"znode drain: {args.node} has stopped")
            return 0
        time.sleep(0.1)
    print(f"znode drain: {args.node} still answers after {args.timeout:g} s", file=sys.stderr)
    return 1


def _status(args: argparse.Namespace) -> int:
    try:
        status = query(args.node, MsgType.STATUS, timeout=args.timeout)
    except (TimeoutError, DecodeError, zmq.ZMQError) as exc:
        print(f"znode status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    print(f"node {status['node_id']}  incarnation {status['incarnation']}")
    if status.get("cluster"):
        print(f"  cluster {status['cluster']}")
    print(
        f"  {'member':<20} {'state':<8} {'incarnation':<15} {'channels':>8} {'queued':>8}  address"
    )
    for m in status.get("members", []):
        channels = "-" if m.get("channels") is None else m["channels"]
        queued = "-" if m.get("queued") is None else m["queued"]
        print(
            f"  {m['id']:<20} {m['state']:<8} {m['incarnation']:<15} "
            f"{channels:>8} {queued:>8}  {m['address']}"
        )
    for key in ("sessions", "connections", "channels", "queued", "groups", "group_entries"):
        print(f"  {key:<14} {status[key]}")
    sizes = status.get("group_sizes") or {}
    if sizes:
        print("  groups (members, cluster-wide):")
        for group, size in sorted(sizes.items()):
            print(f"    {group:<30} {size}")
    print("  drops: " + ", ".join(f"{k} {v}" for k, v in sorted(status["drops"].items())))
    print("  counters:")
    for key, value in sorted(status["counters"].items()):
        print(f"    {key:<22} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
