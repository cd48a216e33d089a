"""Discovery by DNS without a LAN: the spellings (``sources``), what
changed between two resolutions (``dns_watch``), the shell (``DnsDiscovery``)
over scripted lookups, how ``znode`` flags, ``NodeConfig`` and the layer's
``CONFIG`` take the spellings, and real ``znode`` processes on loopback
finding each other through ``localhost`` (``/etc/hosts``) and a seed. The
real DNS server and LAN are in ``test_dns_lan.py``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from conftest import Znode, eventually, wait_for
from zchannels.discovery import DnsDiscovery, DnsName, DnsSrv, PeerEvent
from zchannels.discovery.dns import LookupFailed, SystemLookups
from zchannels.discovery.dns_watch import Answer, NameWatch, endpoint, srv_endpoints
from zchannels.discovery.sources import listen_port, parse_source, parse_sources
from zchannels.node.cli import build_parser, node_config, query
from zchannels.node.config import DEFAULT_PEER_PORT, NodeConfig, lan_address

from zchannels import embedded
from zchannels.config import LayerConfig
from zchannels.errors import ConfigError
from zchannels.protocol import MsgType

#: Seconds a scripted resolution may take to come out as events.
WITHIN = 2.0


# -- spellings -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("mdns", "mdns"),
        ("none", None),
        ("dns:zchannels", DnsName("zchannels")),
        ("dns:peers.default.svc.cluster.local", DnsName("peers.default.svc.cluster.local")),
        ("dns:peers.example.:7801", DnsName("peers.example.", 7801)),
        ("dns:web:1", DnsName("web", 1)),
        ("dns-srv:_zchannels._tcp.peers", DnsSrv("_zchannels._tcp.peers")),
    ],
)
def test_spellings_parse(spec: str, parsed: object) -> None:
    assert parse_source(spec) == parsed
    if parsed not in (None, "mdns"):
        assert str(parsed) == spec, "printed as spelled (logs, events)"


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("dns", "unknown discovery"),
        ("dns:", "is not a DNS name"),
        ("dns:peers:", "port must be 1-65535"),
        ("dns:peers:0", "port must be 1-65535"),
        ("dns:peers:65536", "port must be 1-65535"),
        ("dns:peers:http", "port must be 1-65535"),
        ("dns:peers:7701:1", "is not a DNS name"),
        ("dns:pe ers", "is not a DNS name"),
        ("dns:-peers", "is not a DNS name"),
        ("dns:a..b", "is not a DNS name"),
        ("dns:" + "a" * 64, "is not a DNS name"),
        ("dns-srv:", "is not a DNS name"),
        ("dns-srv:_x._tcp:7701", "is not a DNS name"),
        ("srv:_x._tcp", "unknown discovery"),
        ("MDNS", "unknown discovery"),
        ("consul:x", "unknown discovery"),
    ],
)
def test_bad_spellings_are_refused_with_the_reason(spec: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_source(spec)


def test_several_sources_each_once_and_none_only_alone() -> None:
    assert parse_sources(["dns:a", "mdns", "dns:a", "dns-srv:b"]) == (
        DnsName("a"),
        "mdns",
        DnsSrv("b"),
    )
    assert parse_sources(["none"]) == parse_sources([]) == ()
    with pytest.raises(ValueError, match="'none' cannot be combined"):
        parse_sources(["none", "mdns"])


def test_the_port_dns_sources_imply() -> None:
    assert listen_port(parse_sources(["mdns"]), 7701) is None, "any port: mDNS announces it"
    assert listen_port(parse_sources([]), 7701) is None
    assert listen_port(parse_sources(["dns:a"]), 7701) == 7701
    assert listen_port(parse_sources(["dns-srv:_z._tcp.a"]), 7701) == 7701
    assert listen_port(parse_sources(["mdns", "dns:a", "dns:b:7801"]), 7701) == 7801


# -- what changed between two resolutions ----------------------------------------
A, B, C = "tcp://10.0.0.1:7701", "tcp://10.0.0.2:7701", "tcp://10.0.0.3:7701"


def found(*endpoints: str) -> list[PeerEvent]:
    return [PeerEvent("found", e, via="dns:peers") for e in endpoints]


def lost(*endpoints: str) -> list[PeerEvent]:
    return [PeerEvent("lost", e, via="dns:peers") for e in endpoints]


def test_appearing_endpoints_are_found_and_vanishing_ones_lost() -> None:
    watch = NameWatch("dns:peers", own_endpoint=A)
    first = watch.resolved(Answer(frozenset({A, B})))
    assert list(first.events) == found(B), "our own endpoint is never a peer"
    assert first.log == ()
    assert watch.resolved(Answer(frozenset({A, B}))).events == (), "nothing changed"
    change = watch.resolved(Answer(frozenset({A, C})))
    assert list(change.events) == found(C) + lost(B)
    assert watch.listed == frozenset({C})
    assert list(watch.resolved(Answer(frozenset({A, B, C}))).events) == found(B), "back again"


def test_a_failed_lookup_changes_nothing_and_is_logged_once_per_failure() -> None:
    watch = NameWatch("dns:peers")
    watch.resolved(Answer(frozenset({A, B})))
    failed = watch.resolved(Answer.failed("Temporary failure in name resolution"))
    assert failed.events == ()
    [(level, message)] = failed.log
    assert level == logging.WARNING
    assert "lookup failed (Temporary failure in name resolution)" in message
    assert "keeping the 2 peer(s)" in message
    assert watch.resolved(Answer.failed("Temporary failure in name resolution")) == type(failed)()
    other = watch.resolved(Answer.failed("SERVFAIL"))
    assert other.events == () and len(other.log) == 1, "a different failure is logged"
    back = watch.resolved(Answer(frozenset({A, B})))
    assert back.events == (), "the failures lost no one"
    assert back.log == ((logging.INFO, "dns:peers: resolves again"),)


def test_a_name_that_lists_no_one_is_logged_once_and_loses_everyone() -> None:
    watch = NameWatch("dns:peers")
    empty = watch.resolved(Answer())
    assert empty.events == ()
    assert empty.log == ((logging.INFO, "dns:peers: lists no peer yet"),)
    assert watch.resolved(Answer()).log == ()
    watch.resolved(Answer(frozenset({A})))
    assert list(watch.resolved(Answer()).events) == lost(A), "NXDOMAIN: nobody is listed"


def test_endpoints_are_spelled_as_zeromq_and_the_member_table_spell_them() -> None:
    assert endpoint("10.0.0.1", 7701) == "tcp://10.0.0.1:7701"
    assert endpoint("fd00:0:0::5", 7801) == "tcp://[fd00::5]:7801"
    with pytest.raises(ValueError):
        endpoint("peers.example", 7701)


def test_srv_records_are_all_peers_whatever_their_priority() -> None:
    records = [("h1.z.", 7801), ("h2.z.", 7802), ("h2.z.", 7803), (".", 7701), ("gone.z.", 1)]
    addresses = {"h1.z.": ["10.0.0.1"], "h2.z.": ["10.0.0.2", "fd00::2"], "gone.z.": []}
    assert srv_endpoints(records, addresses) == {
        "tcp://10.0.0.1:7801",
        "tcp://10.0.0.2:7802",
        "tcp://[fd00::2]:7802",
        "tcp://10.0.0.2:7803",
        "tcp://[fd00::2]:7803",
    }


# -- the shell, over scripted lookups --------------------------------------------
class ScriptedLookups:
    """Answers the test sets; each lookup is counted. ``hang`` makes lookups
    wait until released (a slow DNS server)."""

    def __init__(self) -> None:
        self.names: dict[str, list[str] | Exception] = {}
        self.srvs: dict[str, list[tuple[str, int]] | Exception] = {}
        self.asked: list[str] = []
        self.hang: asyncio.Event | None = None

    async def addresses(self, name: str) -> list[str]:
        self.asked.append(name)
        if self.hang is not None:
            await self.hang.wait()
        answer = self.names.get(name, [])
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def srv(self, name: str) -> list[tuple[str, int]]:
        self.asked.append(name)
        answer = self.srvs.get(name, [])
        if isinstance(answer, Exception):
            raise answer
        return answer


async def collect(discovery: DnsDiscovery, into: list[PeerEvent]) -> None:
    async for event in discovery.events():
        into.append(event)


async def test_dns_discovery_reports_changes_at_each_resolution() -> None:
    lookups = ScriptedLookups()
    lookups.names["peers"] = ["10.0.0.1", "10.0.0.2"]
    dns = DnsDiscovery(
        DnsName("peers", 7801),
        default_port=DEFAULT_PEER_PORT,
        interval=0.02,
        own_endpoint="tcp://10.0.0.1:7801",
        lookups=lookups,
    )
    await dns.start()
    events: list[PeerEvent] = []
    reader = asyncio.create_task(collect(dns, events))
    await eventually(lambda: events, WITHIN, "the first resolution")
    assert events == [PeerEvent("found", "tcp://10.0.0.2:7801", via="dns:peers:7801")]
    lookups.names["peers"] = LookupFailed("timed out")
    seen = dns.resolutions
    await eventually(lambda: dns.resolutions > seen + 2, WITHIN, "failed resolutions")
    lookups.names["peers"] = ["10.0.0.1", "10.0.0.3"]
    await eventually(lambda: len(events) == 3, WITHIN, "the change")
    assert events[1:] == [
        PeerEvent("found", "tcp://10.0.0.3:7801", via="dns:peers:7801"),
        PeerEvent("lost", "tcp://10.0.0.2:7801", via="dns:peers:7801"),
    ]
    await dns.stop()
    await asyncio.wait_for(reader, WITHIN)  # events() ended


async def test_dns_srv_discovery_takes_hosts_and_ports_from_the_records() -> None:
    lookups = ScriptedLookups()
    lookups.srvs["_z._tcp.peers"] = [("h1.peers.", 7801), ("h2.peers.", 7802)]
    lookups.names["h1.peers."] = ["10.0.0.1"]
    lookups.names["h2.peers."] = LookupFailed("SERVFAIL")
    dns = DnsDiscovery(DnsSrv("_z._tcp.peers"), default_port=7701, interval=0.02, lookups=lookups)
    answer = await dns.resolve()
    assert answer.error == "SERVFAIL", "one target failing fails the resolution: no false loss"
    lookups.names["h2.peers."] = ["10.0.0.2"]
    assert (await dns.resolve()).endpoints == {"tcp://10.0.0.1:7801", "tcp://10.0.0.2:7802"}
    lookups.srvs["_z._tcp.peers"] = LookupFailed("no nameservers")
    assert (await dns.resolve()).error == "no nameservers"


async def test_a_broken_lookup_does_not_end_discovery(caplog: pytest.LogCaptureFixture) -> None:
    lookups = ScriptedLookups()
    lookups.names["peers"] = RuntimeError("a bug")
    dns = DnsDiscovery(DnsName("peers"), default_port=7701, interval=0.01, lookups=lookups)
    await dns.start()
    events: list[PeerEvent] = []
    reader = asyncio.create_task(collect(dns, events))
    await eventually(lambda: dns.resolutions >= 2, WITHIN, "resolutions despite the bug")
    lookups.names["peers"] = ["10.0.0.9"]
    await eventually(lambda: events, WITHIN, "the peer once lookups work")
    assert events == [PeerEvent("found", "tcp://10.0.0.9:7701", via="dns:peers")]
    assert "RuntimeError: a bug" in caplog.text
    await dns.stop()
    await asyncio.wait_for(reader, WITHIN)


async def test_a_slow_lookup_holds_neither_the_loop_nor_stop() -> None:
    lookups = ScriptedLookups()
    lookups.hang = asyncio.Event()  # never set: the DNS server never answers
    dns = DnsDiscovery(DnsName("peers"), default_port=7701, interval=0.01, lookups=lookups)
    await dns.start()
    ticks = 0
    while ticks < 20:  # the loop goes on meanwhile
        await asyncio.sleep(0)
        ticks += 1
    await eventually(lambda: lookups.asked, WITHIN, "the lookup to start")
    assert lookups.asked == ["peers"], "no second lookup while the first is out"
    await asyncio.wait_for(dns.stop(), WITHIN)


async def test_the_system_resolver_reads_hosts_and_reports_missing_names() -> None:
    lookups = SystemLookups()
    assert "127.0.0.1" in await lookups.addresses("localhost")  # /etc/hosts
    assert await lookups.addresses("127.0.0.2") == ["127.0.0.2"]
    dns = DnsDiscovery(DnsName("localhost", 7999), default_port=7701, interval=60.0)
    assert "tcp://127.0.0.1:7999" in (await dns.resolve()).endpoints


def test_dns_discovery_refuses_a_bad_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        DnsDiscovery(DnsName("peers"), default_port=7701, interval=0)


# -- znode flags, NodeConfig, the layer's CONFIG ------------------------------------
def test_discovery_flags_are_repeatable_and_map_onto_node_config() -> None:
    args = build_parser().parse_args(
        [
            *("run", "--peer-endpoint", "tcp://10.0.0.1:7701", "--seed", "tcp://10.0.0.9:7701"),
            *("--discovery", "dns:peers", "--discovery", "dns-srv:_z._tcp.peers"),
            *("--discovery", "mdns", "--dns-interval", "2.5"),
        ]
    )
    config = node_config(args)
    assert config.discovery == ("dns:peers", "dns-srv:_z._tcp.peers", "mdns")
    assert config.dns_interval == 2.5
    assert config.seeds == ("tcp://10.0.0.9:7701",)
    default = node_config(build_parser().parse_args(["run"]))
    assert default.discovery == ("mdns",) and default.dns_interval == 5.0


def test_a_dns_port_is_the_port_a_cluster_node_listens_on() -> None:
    args = build_parser().parse_args(["run", "--cluster", "c", "--discovery", "dns:peers:7801"])
    assert node_config(args).peer_endpoint is not None
    assert node_config(args).peer_endpoint.endswith(":7801")  # type: ignore[union-attr]
    plain = build_parser().parse_args(["run", "--cluster", "c", "--discovery", "none"])
    assert (node_config(plain).peer_endpoint or "").endswith(f":{DEFAULT_PEER_PORT}")


@pytest.mark.parametrize("spec", ["dns:", "consul:x", "dns:peers:0"])
def test_a_bad_discovery_flag_is_a_usage_error(
    spec: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["run", "--discovery", spec])
    assert exited.value.code == 2
    assert "--discovery" in capsys.readouterr().err


def test_none_with_another_source_is_refused_at_start() -> None:
    args = build_parser().parse_args(["run", "--discovery", "none", "--discovery", "dns:x"])
    with pytest.raises(ValueError, match="'none' cannot be combined"):
        node_config(args)


def test_node_config_validates_discovery_and_interval() -> None:
    assert NodeConfig.lan().dns_interval == 5.0
    assert NodeConfig.test().dns_interval == 0.5
    assert NodeConfig(discovery="dns:peers").discovery == ("dns:peers",)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown discovery"):
        NodeConfig(discovery=("dns-srv",))
    for bad in (0, -1.0, "5"):
        with pytest.raises(ValueError, match="dns_interval"):
            NodeConfig(dns_interval=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (None, ()),
        ("mdns", ("mdns",)),
        ("dns:web:7701", ("dns:web:7701",)),
        (["dns:web", "dns:worker", "mdns"], ("dns:web", "dns:worker", "mdns")),
        ("none", ("none",)),
    ],
)
def test_layer_config_takes_a_spelling_or_a_list(given: object, stored: tuple[str, ...]) -> None:
    config = LayerConfig.from_options({"cluster": "site", "discovery": given})
    assert config.discovery == stored


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("dns", "unknown discovery"),
        (["dns:web", 7701], "must be a list of strings"),
        (["none", "mdns"], "cannot be combined"),
        ("dns:web:99999", "port must be"),
    ],
)
def test_layer_config_refuses_bad_discovery(given: object, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        LayerConfig.from_options({"cluster": "site", "discovery": given})


def test_layer_discovery_needs_a_cluster_and_no_sidecar() -> None:
    with pytest.raises(ConfigError, match="need a cluster name"):
        LayerConfig.from_options({"discovery": "dns:web"})
    with pytest.raises(ConfigError, match="for the embedded node"):
        LayerConfig.from_options({"node": "ipc:///tmp/x.sock", "discovery": ["dns:web"]})


def test_an_embedded_member_found_by_dns_listens_on_the_dns_port() -> None:
    lan_ip = lan_address()

    def peer(**options: object) -> str | None:
        return embedded.node_config(
            LayerConfig.from_options({"cluster": "s", **options})
        ).peer_endpoint

    assert peer(discovery="mdns") == f"tcp://{lan_ip}:0", "any free port: mDNS announces it"
    assert peer() == f"tcp://{lan_ip}:0"
    assert peer(discovery="dns:web") == f"tcp://{lan_ip}:7701"
    assert peer(discovery=["dns:web:7801", "mdns"]) == f"tcp://{lan_ip}:7801"
    assert peer(discovery="dns:web", peer_endpoint="tcp://10.0.0.5:9") == "tcp://10.0.0.5:9"
    node = embedded.node_config(LayerConfig.from_options({"cluster": "s", "discovery": None}))
    assert node.discovery == ("none",), "no discovery: seeds only, as before"


# -- real nodes on loopback ---------------------------------------------------------
def alive(node: Znode) -> set[str]:
    status = query(node.endpoint, MsgType.STATUS, timeout=2.0)
    return {m["id"] for m in status["members"] if m["state"] == "alive"}


def test_znodes_find_each_other_by_dns_and_a_seed(znode: Callable[..., Znode]) -> None:
    def start(node_id: str, *extra: str) -> Znode:
        return znode(None, "--preset", "lan", "--node-id", node_id,
                     "--peer-endpoint", "tcp://127.0.0.1:0", *extra)  # fmt: skip

    first = start("a", "--discovery", "none")
    port = str(first.ready["peer"]).rsplit(":", 1)[1]
    # b knows a only through the name (localhost: /etc/hosts, by getaddrinfo)
    by_dns = start("b", "--discovery", f"dns:localhost:{port}", "--dns-interval", "0.5")
    # c combines a seed (b) with the name
    seed = str(by_dns.ready["peer"])
    both = start("c", "--discovery", f"dns:localhost:{port}", "--seed", seed)
    nodes = [first, by_dns, both]
    took = wait_for(lambda: all(alive(n) == {"a", "b", "c"} for n in nodes), 10, "one table")
    print(f"\nthree znodes on loopback, found by dns:localhost and a seed: {took:.3f} s")
