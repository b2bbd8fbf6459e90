"""PTR enrichment against a real DNS server (dnsmasq on loopback, tests/support/dns_server.py).

What a user sees: names arrive in the flows of later batches and in ``ptr_cache`` rows
with the AS and country of the address; an address without a name, or whose server
fails, is asked once per negative TTL, not once per batch; the resolver never exceeds
its concurrency cap or rate; and ingest goes on while the DNS server hangs or is gone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.reversename
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support.dns_server import DnsServer, unavailable_reason

from appliance.flowenricher.batch import DictColumn, FlowBatch, str_to_addr
from appliance.flowenricher.config import DnsSettings
from appliance.flowenricher.enrich.base import AddressSet
from appliance.flowenricher.enrich.ptr import PtrResolver, PtrResult, PtrStage, parse_nameserver
from appliance.flowenricher.errors import ConfigError
from appliance.flowenricher.storage.tables import PTR_CACHE

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))

HOSTS = [f"198.51.100.{i}" for i in range(100, 140)]
NAMES = {
    "198.51.100.1": "web1.example.test",
    "198.51.100.2": "web2.example.test",
    "2001:db8::1": "v6host.example.test",
    "10.9.0.1": "gw.internal.test",
    "1.2.3.4": "public.example.test",
    **{ip: f"h{ip.rsplit('.', 1)[1]}.example.test" for ip in HOSTS},
}
ZONES = ["198.51.100.0/24", "2001:db8::/32", "10.9.0.0/16", "1.2.3.0/24"]
NXDOMAIN = ["198.51.100.99", "2001:db8::99"]
SERVFAIL = "203.0.113.5"
REFUSED = "192.0.2.1"  # in no zone of either server


def start_server(workdir: Path, ttl: int = 600) -> DnsServer:
    return DnsServer(workdir, NAMES, ZONES, servfail=[SERVFAIL], ttl=ttl).start()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DnsServer]:
    srv = start_server(tmp_path / "dns")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def resolvers() -> Iterator[Callable[..., tuple[PtrResolver, CollectorRegistry]]]:
    """Builds started resolvers, each with its own registry; closes them all afterwards."""
    made: list[PtrResolver] = []

    def make(nameserver: str, **options: Any) -> tuple[PtrResolver, CollectorRegistry]:
        registry = CollectorRegistry()
        resolver = PtrResolver(nameserver, registry=registry, **options)
        made.append(resolver)
        resolver.start()
        return resolver, registry

    yield make
    for resolver in made:
        resolver.close()


def batch_of(pairs: list[tuple[str, str]], **columns: Any) -> FlowBatch:
    """Flows src -> dst between the given addresses, plus any other columns."""
    def addrs(texts: list[str]) -> np.ndarray:
        return np.frombuffer(b"".join(str_to_addr(t) for t in texts), np.uint8).reshape(-1, 16).copy()

    return FlowBatch(len(pairs), {"src_addr": addrs([s for s, _ in pairs]), "dst_addr": addrs([d for _, d in pairs]),
                                  **columns})


def enrich(stage: PtrStage, pairs: list[tuple[str, str]], **columns: Any) -> FlowBatch:
    batch = batch_of(pairs, **columns)
    stage.enrich(batch, AddressSet.of(batch))
    return batch


def count(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(f"flowenricher_ptr_{name}_total")
    return 0.0 if value is None else value


def gauge(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(f"flowenricher_ptr_{name}")
    assert value is not None, name
    return value


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    """Poll until `condition` holds; the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {timeout_s} s")
        time.sleep(0.01)


def settle(resolver: PtrResolver) -> None:
    wait_for(lambda: resolver.pending == 0, "every queued address to get its answer")


def pairs_of(ips: list[str]) -> list[tuple[str, str]]:
    return [(ip, "198.51.100.2") for ip in ips]


def test_the_server_is_real(server: DnsServer) -> None:
    def ask(ip: str) -> dns.message.Message:
        query = dns.message.make_query(dns.reversename.from_address(ip), "PTR")
        return dns.query.udp(query, "127.0.0.1", port=server.port, timeout=5)

    for ip in ("198.51.100.1", "2001:db8::1", "10.9.0.1"):
        reply = ask(ip)
        assert reply.rcode() == dns.rcode.NOERROR
        assert [rr.to_text() for rr in reply.answer[0]] == [NAMES[ip] + "."]
    assert ask(NXDOMAIN[0]).rcode() == dns.rcode.NXDOMAIN
    assert ask(NXDOMAIN[1]).rcode() == dns.rcode.NXDOMAIN
    assert ask(SERVFAIL).rcode() == dns.rcode.SERVFAIL
    assert ask(REFUSED).rcode() == dns.rcode.REFUSED
    wait_for(lambda: server.queries_for("198.51.100.1") == 1, "the query log")
    assert server.queries_for(SERVFAIL) == 1


def test_names_reach_later_batches_the_sink_and_lookup(server: DnsServer) -> None:
    results: list[PtrResult] = []
    registry = CollectorRegistry()
    settings = DnsSettings(nameserver="127.0.0.1", port=server.port, timeout_s=2.0)
    resolver = PtrResolver.from_settings(settings, registry, sink=results.extend)
    resolver.start()
    stage = PtrStage(resolver)
    pairs = [("198.51.100.1", "2001:db8::1"), ("10.9.0.1", "198.51.100.1"), (NXDOMAIN[0], "1.2.3.4"),
             (SERVFAIL, "198.51.100.2")]
    columns = {
        "src_as": np.array([64501, 64510, 64520, 64530], np.uint32),
        "dst_as": np.array([64502, 64501, 64503, 64540], np.uint32),
        "src_as_name": DictColumn.from_strings(["Web One", "Internal", "Nowhere", "Broken"]),
        "dst_as_name": DictColumn.from_strings(["Six", "Web One", "Public Net", "Web Two"]),
        "src_host_country": DictColumn.from_strings(["FR", "", "DE", "NL"]),
        "dst_host_country": DictColumn.from_strings(["CH", "FR", "US", "BE"]),
    }
    try:
        first = enrich(stage, pairs, **columns)
        assert "src_host_ptr" not in first and "dst_host_ptr" not in first  # nothing waited for DNS
        settle(resolver)

        later = enrich(stage, pairs, **columns)
        assert later["src_host_ptr"].strings() == ["web1.example.test", "gw.internal.test", "", ""]
        assert later["dst_host_ptr"].strings() == ["v6host.example.test", "web1.example.test", "public.example.test",
                                                   "web2.example.test"]
        assert count(registry, "answers") == 5
        assert gauge(registry, "cache_entries") == 7  # five names and two negatives

        wait_for(lambda: len(results) == 5, "the sink to receive the five names")
        rows = {r.ip: r.row() for r in results}
        now = time.time()
        assert all(now - 60 <= r.updated_at <= now for r in results)
        assert {k: v for k, v in rows["198.51.100.1"].items() if k != "updated_at"} == {
            "ip": "198.51.100.1", "ptr": "web1.example.test", "asn": 64501, "asn_name": "Web One",
            "country": "FR"}  # a source: src_* columns
        assert (rows["1.2.3.4"]["asn"], rows["1.2.3.4"]["asn_name"], rows["1.2.3.4"]["country"]) == (
            64503, "Public Net", "US")  # only a destination: dst_* columns
        assert (rows["2001:db8::1"]["ip"], rows["2001:db8::1"]["ptr"]) == ("2001:db8::1", "v6host.example.test")
        assert set(rows["2001:db8::1"]) == set(PTR_CACHE.names)  # every column of the table, by its name

        queries = count(registry, "queries")
        assert resolver.lookup("2001:db8::1") == "v6host.example.test"  # from the cache
        assert resolver.lookup(NXDOMAIN[0]) is None
        assert count(registry, "queries") == queries
        assert resolver.lookup("198.51.100.100") == "h100.example.test"  # asked now
        assert resolver.lookup("198.51.100.98") is None
        assert count(registry, "queries") == queries + 2
        assert server.queries_for("198.51.100.100") == 1
    finally:
        stage.close()
    assert not resolver.running


def test_negative_answers_are_cached(server: DnsServer, resolvers: Callable[..., tuple[PtrResolver,
                                                                                      CollectorRegistry]]) -> None:
    resolver, registry = resolvers(server.nameserver, timeout_s=2.0)
    stage = PtrStage(resolver)
    failing = [*NXDOMAIN, SERVFAIL, REFUSED]
    enrich(stage, pairs_of(failing))
    settle(resolver)
    assert (count(registry, "nxdomain"), count(registry, "servfail"), count(registry, "errors")) == (2, 1, 1)
    sent = count(registry, "queries")

    for _ in range(3):
        batch = enrich(stage, pairs_of(failing))
        assert "src_host_ptr" in batch and batch["src_host_ptr"].strings() == ["", "", "", ""]
    time.sleep(0.3)  # room for a query that should not be sent
    assert count(registry, "queries") == sent
    for ip in failing:
        assert server.queries_for(ip) == 1, ip


def test_ttl_expiry_requeries_and_a_hung_server_keeps_known_names(
        tmp_path: Path, resolvers: Callable[..., tuple[PtrResolver, CollectorRegistry]]) -> None:
    server = start_server(tmp_path / "dns", ttl=1)
    try:
        honours, registry = resolvers(server.nameserver, min_ttl_s=0, negative_ttl_s=0.5, timeout_s=0.3)
        clamps, clamped_registry = resolvers(server.nameserver, min_ttl_s=60)
        stages = [PtrStage(honours), PtrStage(clamps)]
        pairs = [("198.51.100.1", NXDOMAIN[0])]
        for stage in stages:
            enrich(stage, pairs)
            settle(stage.resolver)
        assert server.queries_for("198.51.100.1") == 2

        time.sleep(1.2)  # past the answer's TTL (1 s) and the negative TTL (0.5 s)
        for stage in stages:
            refreshed = enrich(stage, pairs)
            assert refreshed["src_host_ptr"].strings() == ["web1.example.test"]  # expired, still shown meanwhile
            settle(stage.resolver)
        wait_for(lambda: server.queries_for("198.51.100.1") == 3, "the refresh query")
        assert server.queries_for(NXDOMAIN[0]) == 3
        assert count(registry, "queries") == 4
        assert count(clamped_registry, "queries") == 2  # min_ttl_s=60 outlasts the 1 s TTL

        server.pause()
        time.sleep(1.2)
        enrich(stages[0], pairs)
        settle(honours)
        assert count(registry, "timeouts") == 2
        later = enrich(stages[0], pairs)
        assert later["src_host_ptr"].strings() == ["web1.example.test"]  # a timeout does not erase a name
        assert later["dst_host_ptr"].strings() == [""]
    finally:
        server.stop()


def test_concurrency_cap(server: DnsServer, resolvers: Callable[..., tuple[PtrResolver, CollectorRegistry]]) -> None:
    resolver, registry = resolvers(server.nameserver, max_inflight=3, rate_per_s=10000, timeout_s=20)
    stage = PtrStage(resolver)
    hosts = HOSTS[:30]
    server.pause()
    try:
        enrich(stage, pairs_of(hosts))
        wait_for(lambda: count(registry, "queries") >= 3, "the first queries")
        time.sleep(0.3)  # room for a fourth query that must not be sent
        assert count(registry, "queries") == 3
        assert gauge(registry, "inflight") == 3
        # 27 of the 30 hosts and web2 (every flow's destination) wait for a free slot.
        assert gauge(registry, "backlog") == 28
    finally:
        server.resume()
    settle(resolver)
    assert resolver.peak_inflight == 3
    assert count(registry, "answers") == 31
    assert all(server.queries_for(ip) == 1 for ip in hosts)
    assert enrich(stage, pairs_of(hosts))["src_host_ptr"].strings() == [NAMES[ip] for ip in hosts]


def test_rate_limit(server: DnsServer, resolvers: Callable[..., tuple[PtrResolver, CollectorRegistry]]) -> None:
    rate, burst = 40.0, 2
    resolver, registry = resolvers(server.nameserver, max_inflight=16, rate_per_s=rate, burst=burst)
    stage = PtrStage(resolver)
    hosts = HOSTS[:29]  # plus web2: 30 addresses
    started = time.monotonic()
    enrich(stage, pairs_of(hosts))
    while resolver.pending:
        sent = count(registry, "queries")
        elapsed = time.monotonic() - started  # read after the count: the bound only loosens
        assert sent <= burst + rate * elapsed, (sent, elapsed)
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    assert count(registry, "answers") == 30
    assert elapsed >= (30 - burst) / rate  # slower is fine; faster would break the limit


def test_full_backlog_drops_and_offers_again(server: DnsServer,
                                             resolvers: Callable[..., tuple[PtrResolver, CollectorRegistry]]) -> None:
    resolver, registry = resolvers(server.nameserver, queue_max=5, max_inflight=2)
    stage = PtrStage(resolver)
    hosts = HOSTS[:19]  # plus web2: 20 addresses
    enrich(stage, pairs_of(hosts))
    assert count(registry, "dropped") == 15
    rounds = 1
    while True:
        settle(resolver)
        batch = enrich(stage, pairs_of(hosts))
        if "src_host_ptr" in batch and batch["src_host_ptr"].strings() == [NAMES[ip] for ip in hosts]:
            break
        rounds += 1
        assert rounds <= 5, "the dropped addresses never came back"
    assert rounds == 4  # 5 per round: 20 addresses in 4 batches
    assert all(server.queries_for(ip) == 1 for ip in hosts)


def test_ingest_goes_on_while_the_server_hangs_or_is_gone(
        server: DnsServer, resolvers: Callable[..., tuple[PtrResolver, CollectorRegistry]]) -> None:
    resolver, registry = resolvers(server.nameserver, max_inflight=4, timeout_s=0.3)
    stage = PtrStage(resolver)
    server.pause()
    try:
        hung = enrich(stage, pairs_of(HOSTS[:19]))  # returns although no answer can come
        assert "src_host_ptr" not in hung
        assert resolver.lookup("198.51.100.1", timeout_s=0.5) is None
        settle(resolver)
        assert count(registry, "timeouts") == 21  # 20 batch addresses and the lookup
        assert count(registry, "answers") == 0
    finally:
        server.resume()

    server.stop()
    gone = enrich(stage, pairs_of(HOSTS[19:30]))
    assert "src_host_ptr" not in gone
    settle(resolver)
    assert count(registry, "timeouts") + count(registry, "errors") == 21 + 11
    assert resolver.peak_inflight <= 4

    resolver.close()
    assert not resolver.running
    after = enrich(stage, pairs_of(HOSTS[30:]))  # a closed resolver still answers from its cache
    assert "src_host_ptr" not in after and gauge(registry, "backlog") == 0


def test_private_addresses_stay_home_when_asked(server: DnsServer,
                                                resolvers: Callable[..., tuple[PtrResolver, CollectorRegistry]]) -> None:
    resolver, registry = resolvers(server.nameserver, private=False)
    stage = PtrStage(resolver)
    enrich(stage, [("10.9.0.1", "1.2.3.4"), ("198.51.100.1", "::")])
    settle(resolver)
    assert count(registry, "queries") == 1
    assert server.queries_for("1.2.3.4") == 1
    assert resolver.lookup("10.9.0.1") is None
    assert server.queries_for("10.9.0.1") == 0 and server.queries_for("198.51.100.1") == 0
    assert enrich(stage, [("10.9.0.1", "1.2.3.4")])["dst_host_ptr"].strings() == ["public.example.test"]


def test_a_failing_sink_is_counted_and_resolution_goes_on(
        server: DnsServer, resolvers: Callable[..., tuple[PtrResolver, CollectorRegistry]]) -> None:
    def broken(results: list[PtrResult]) -> None:
        raise OSError("ClickHouse is away")

    resolver, registry = resolvers(server.nameserver, sink=broken, sink_interval_s=0.1)
    stage = PtrStage(resolver)
    enrich(stage, [("198.51.100.1", "10.9.0.1")])
    wait_for(lambda: count(registry, "sink_errors") >= 1, "the sink failure to be counted")
    enrich(stage, [("1.2.3.4", "10.9.0.1")])
    settle(resolver)
    assert enrich(stage, [("198.51.100.1", "1.2.3.4")])["dst_host_ptr"].strings() == ["public.example.test"]


def test_close_hands_the_last_names_to_the_sink(
        server: DnsServer, resolvers: Callable[..., tuple[PtrResolver, CollectorRegistry]]) -> None:
    results: list[PtrResult] = []
    resolver, _ = resolvers(server.nameserver, sink=results.extend, sink_interval_s=3600)
    stage = PtrStage(resolver)
    enrich(stage, [("198.51.100.1", "2001:db8::1")])
    settle(resolver)
    assert results == []  # the next periodic flush is an hour away
    stage.close()
    assert sorted((r.ip, r.ptr) for r in results) == [("198.51.100.1", "web1.example.test"),
                                                      ("2001:db8::1", "v6host.example.test")]


def test_bad_settings_are_named() -> None:
    with pytest.raises(ConfigError) as err:
        PtrResolver("dns.example.test", max_inflight=0, min_ttl_s=10, max_ttl_s=5, rate_per_s=0)
    text = str(err.value)
    assert "dns nameserver: 'dns.example.test'" in text and "not an IP address" in text
    assert "dns max_inflight: 0" in text and "dns rate_per_s: 0" in text and "min_ttl (10)" in text
    with pytest.raises(ConfigError, match="port '99999'"):
        PtrResolver("127.0.0.1:99999")
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    assert parse_nameserver("::1", 53) == ("::1", 53)
    assert parse_nameserver("127.0.0.1:5300") == ("127.0.0.1", 5300)
    resolver = PtrResolver("127.0.0.1")
    with pytest.raises(RuntimeError, match="not running"):
        resolver.lookup("192.0.2.1")
    with pytest.raises(ValueError, match=r"'example\.test' is not an IPv4 or IPv6 address"):
        resolver.lookup("example.test")
