"""ASN and GeoIP enrichment against MaxMind's own test databases (tests/data/geoip)."""

from __future__ import annotations

import bisect
import ipaddress
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import maxminddb
import maxminddb.extension
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from appliance.flowenricher.batch import FlowBatch, str_to_addr
from appliance.flowenricher.config import GeoIpSettings
from appliance.flowenricher.enrich.base import AddressSet, public_mask
from appliance.flowenricher.enrich.geo import GeoStage
from appliance.flowenricher.enrich.pipeline import Enricher
from appliance.flowenricher.errors import ConfigError

DATA = Path(__file__).parent / "data" / "geoip"
ASN_DB = DATA / "GeoLite2-ASN-Test.mmdb"
CITY_DB = DATA / "GeoIP2-City-Test.mmdb"
OTHER_CITY_DB = DATA / "GeoLite2-City-Test.mmdb"
BROKEN_DOUBLE = DATA / "GeoIP2-City-Test-Broken-Double-Format.mmdb"
INVALID_NODES = DATA / "GeoIP2-City-Test-Invalid-Node-Count.mmdb"
BROKEN_POINTERS = DATA / "MaxMind-DB-test-broken-pointers-24.mmdb"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _addrs(*texts: str) -> np.ndarray:
    return np.frombuffer(b"".join(str_to_addr(t) for t in texts), np.uint8).reshape(-1, 16)


def _batch(pairs: list[tuple[str, str]]) -> FlowBatch:
    return FlowBatch(len(pairs), {"src_addr": _addrs(*(s for s, _ in pairs)), "dst_addr": _addrs(*(d for _, d in pairs))})


def _metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def stage(registry: CollectorRegistry) -> Iterator[GeoStage]:
    geo = GeoStage(ASN_DB, CITY_DB, registry=registry)
    yield geo
    geo.close()


def _enriched(geo: GeoStage, pairs: list[tuple[str, str]]) -> FlowBatch:
    batch = _batch(pairs)
    geo.enrich(batch, AddressSet.of(batch))
    return batch


def test_databases_are_read_by_the_c_extension(stage: GeoStage) -> None:
    assert stage.uses_c_extension
    assert all(isinstance(db.reader, maxminddb.extension.Reader) for db in stage.databases.values())


# Expected answers read off the databases' sources (GeoLite2-ASN-Test.source.json,
# GeoIP2-City-Test.source.json).
KNOWN = [
    ("1.0.0.1", 15169, "Google Inc.", "", ""),
    ("12.81.92.7", 7018, "AT&T Services", "", ""),
    ("89.160.20.115", 29518, "Bredband2 AB", "SE", "Linköping"),
    ("81.2.69.160", 0, "", "GB", "London"),
    ("175.16.199.1", 0, "", "CN", "Changchun"),
    ("2001:1700::1", 6730, "Sunrise Communications AG", "", ""),
    ("2003::1", 3320, "Deutsche Telekom AG", "", ""),
    ("2001:480:10::1", 0, "", "US", "San Diego"),
    ("2001:218::1", 0, "", "JP", ""),
]


@pytest.mark.parametrize(("ip", "asn", "org", "country", "city"), KNOWN)
def test_known_addresses_v4_and_v6(stage: GeoStage, ip: str, asn: int, org: str, country: str, city: str) -> None:
    # The address as source of one flow and destination of another.
    batch = _enriched(stage, [(ip, "8.8.8.8"), ("8.8.4.4", ip)])
    assert batch["src_as"][0] == asn and batch["dst_as"][1] == asn
    assert batch["src_as_name"].strings()[0] == org == batch["dst_as_name"].strings()[1]
    assert batch["src_host_country"].strings()[0] == country == batch["dst_host_country"].strings()[1]
    assert batch["src_host_city"].strings()[0] == city == batch["dst_host_city"].strings()[1]
    answer = stage.lookup(ip)
    assert (answer["asn"], answer["as_name"], answer["country"], answer["city"]) == (asn, org, country, city)


def _source(name: str) -> list[tuple[IPNetwork, dict[str, Any]]]:
    """A source JSON's networks; IPv4-compatible ``::a.b.c.d/n`` ones as the IPv4
    networks they answer for (an IPv6 database keeps IPv4 under ::/96)."""
    out: list[tuple[IPNetwork, dict[str, Any]]] = []
    compat = ipaddress.ip_network("::/96")
    for entry in json.loads((DATA / name).read_text()):
        for text, record in entry.items():
            net = ipaddress.ip_network(text)
            if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.network_address in compat:
                net = ipaddress.ip_network(f"{ipaddress.IPv4Address(int(net.network_address))}/{net.prefixlen - 96}")
            out.append((net, record))
    return out


class _SourceTable:
    """The record of the source network holding an address (the sources' networks do not overlap)."""

    def __init__(self, source: list[tuple[IPNetwork, dict[str, Any]]]) -> None:
        rows = sorted((n.version, int(n.network_address), int(n.broadcast_address), r) for n, r in source)
        self._starts = [(v, first) for v, first, _, _ in rows]
        self._rows = rows

    def get(self, ip: str) -> dict[str, Any]:
        addr = ipaddress.ip_address(ip)
        i = bisect.bisect_right(self._starts, (addr.version, int(addr))) - 1
        if i >= 0:
            version, _, last, record = self._rows[i]
            if version == addr.version and int(addr) <= last:
                return record
        return {}


def _is_public(ip: str) -> bool:
    return bool(public_mask(_addrs(ip))[0])


def test_every_network_of_the_sources_is_answered_as_its_record(stage: GeoStage) -> None:
    asn_source = _source("GeoLite2-ASN-Test.source.json")
    city_source = _source("GeoIP2-City-Test.source.json")
    asn_table, city_table = _SourceTable(asn_source), _SourceTable(city_source)
    # A record without an organisation is named from another record of its AS.
    orgs_of: dict[int, set[str]] = {}
    for _, r in asn_source:
        if "autonomous_system_organization" in r:
            orgs_of.setdefault(r["autonomous_system_number"], set()).add(r["autonomous_system_organization"])
    ips = sorted({str(a) for net, _ in asn_source + city_source for a in (net.network_address, net.broadcast_address)})
    expected: list[tuple[int, set[str], str, str]] = []
    for ip in ips:
        if not _is_public(ip):
            expected.append((0, {""}, "", ""))
            continue
        asn_rec, city_rec = asn_table.get(ip), city_table.get(ip)
        asn = asn_rec.get("autonomous_system_number", 0)
        org = asn_rec.get("autonomous_system_organization")
        expected.append((asn, {org} if org else orgs_of.get(asn, {""}),
                         city_rec.get("country", {}).get("iso_code", ""),
                         city_rec.get("city", {}).get("names", {}).get("en", "")))
    assert sum(e[0] != 0 or e[2] != "" for e in expected) > 1000
    assert stage.wait_for_names(timeout=30)
    batch = _enriched(stage, [(ip, "::1") for ip in ips])
    got = list(zip(batch["src_as"].tolist(), batch["src_as_name"].strings(), batch["src_host_country"].strings(),
                   batch["src_host_city"].strings(), strict=True))
    mismatches = [(ip, e, g) for ip, e, g in zip(ips, expected, got, strict=True)
                  if (g[0], g[2], g[3]) != (e[0], e[2], e[3]) or g[1] not in e[1]]
    assert not mismatches, mismatches[:10]


def test_lookup_reports_the_networks_of_the_answers(stage: GeoStage) -> None:
    answer = stage.lookup("2003::1")
    assert answer["asn_network"] == "2003::/19" and answer["public"] is True
    answer = stage.lookup("::ffff:81.2.69.161")
    assert answer["ip"] == "81.2.69.161"
    assert answer["geo_network"] == "81.2.69.160/27"


def test_lookup_rejects_what_is_not_an_address(stage: GeoStage) -> None:
    with pytest.raises(ValueError, match=r"'81\.2\.69\.300' is not an IPv4 or IPv6 address"):
        stage.lookup("81.2.69.300")


def test_private_and_bogon_addresses_are_never_looked_up(stage: GeoStage, registry: CollectorRegistry) -> None:
    # ::214.0.0.1 (IPv4-compatible, not global unicast) has an answer in the City database:
    # only the public filter keeps it empty.
    assert stage.databases["city"].reader.get("::214.0.0.1") is not None
    private = ["10.0.0.1", "192.168.1.1", "127.0.0.1", "100.64.0.1", "169.254.1.1", "192.0.2.7", "224.0.0.5",
               "fc00::1", "fe80::1", "2001:db8::1", "::1", "::214.0.0.1"]
    batch = _enriched(stage, [(ip, ip) for ip in private])
    for side in ("src", "dst"):
        assert not batch[f"{side}_as"].any()
        for column in ("as_name", "host_country", "host_city"):
            assert set(batch[f"{side}_{column}"].strings()) == {""}
    assert _metric(registry, "flowenricher_geoip_lookups_total", db="asn") == 0
    assert _metric(registry, "flowenricher_geoip_lookups_total", db="city") == 0
    assert stage.lookup("10.0.0.1")["public"] is False
    # The same database answers the public IPv4 form of that address.
    assert _enriched(stage, [("214.0.0.1", "10.0.0.1")])["src_host_city"].strings() == ["Singapore"]


def test_flow_batch_through_the_pipeline_names_peer_ases(stage: GeoStage, registry: CollectorRegistry) -> None:
    batch = _batch([("1.0.0.1", "10.1.1.1"), ("10.1.1.1", "2003::1"), ("81.2.69.160", "89.160.20.115")])
    # Neighbour ASes as the BGP stage would set them: none of their addresses is in a flow,
    # the names come from the walk over the whole ASN database.
    batch["peer_src_as"] = np.array([1221, 0, 4837], np.uint32)
    assert stage.wait_for_names(timeout=30)
    Enricher([stage], registry, as_name=stage.as_name).enrich(batch)
    assert batch["src_as"].tolist() == [15169, 0, 0]
    assert batch["dst_as"].tolist() == [0, 3320, 29518]
    assert batch["src_as_name"].strings() == ["Google Inc.", "", ""]
    assert batch["dst_as_name"].strings() == ["", "Deutsche Telekom AG", "Bredband2 AB"]
    assert batch["src_host_country"].strings() == ["", "", "GB"]
    assert batch["dst_host_city"].strings() == ["", "", "Linköping"]
    assert batch["peer_src_as_name"].strings() == ["Telstra Pty Ltd", "", "CNCGROUP China169 Backbone"]
    assert _metric(registry, "flowenricher_enrich_errors_total", stage="geoip") == 0


def test_asn_names_cover_the_whole_asn_database(stage: GeoStage) -> None:
    assert stage.wait_for_names(timeout=30)
    orgs: dict[int, set[str]] = {}
    for _, record in _source("GeoLite2-ASN-Test.source.json"):
        if "autonomous_system_organization" in record:
            orgs.setdefault(record["autonomous_system_number"], set()).add(record["autonomous_system_organization"])
    assert set(stage.asn_names) == set(orgs)
    assert all(stage.as_name(asn) in names for asn, names in orgs.items())
    assert stage.as_name(64512) == ""


def test_as_numbers_from_the_exporter_are_kept(stage: GeoStage) -> None:
    assert stage.wait_for_names(timeout=30)
    batch = _batch([("1.0.0.1", "2003::1"), ("1.0.0.1", "2003::1")])
    batch["src_as"] = np.array([1221, 0], np.uint32)
    stage.enrich(batch, AddressSet.of(batch))
    assert batch["src_as"].tolist() == [1221, 15169]
    assert batch["src_as_name"].strings() == ["Telstra Pty Ltd", "Google Inc."]
    assert batch["dst_as"].tolist() == [3320, 3320]


def test_cache_is_bounded_and_answers_repeat_lookups(registry: CollectorRegistry) -> None:
    geo = GeoStage(ASN_DB, CITY_DB, cache_size=4, registry=registry)
    try:
        first = _enriched(geo, [("1.0.0.1", "81.2.69.160"), ("2003::1", "1.0.0.1")])
        assert _metric(registry, "flowenricher_geoip_lookups_total", db="asn") == 3
        again = _enriched(geo, [("1.0.0.1", "81.2.69.160"), ("2003::1", "1.0.0.1")])
        assert _metric(registry, "flowenricher_geoip_lookups_total", db="asn") == 3
        assert _metric(registry, "flowenricher_geoip_cache_hits_total") == 3
        for column in ("src_as", "dst_as"):
            assert first[column].tolist() == again[column].tolist()
        assert again["dst_host_city"].strings() == ["London", ""]
        many = [(f"1.0.0.{i}", f"2003::{i}") for i in range(1, 40)]
        _enriched(geo, many)
        assert 0 < geo.cache_len() <= 4
        # The bound evicts the least recently seen: the last addresses looked up stay
        # (a batch looks its unique addresses up in sorted order, IPv6 after IPv4).
        looked_up = _metric(registry, "flowenricher_geoip_lookups_total", db="asn")
        _enriched(geo, [("2003::38", "2003::39")])
        assert _metric(registry, "flowenricher_geoip_lookups_total", db="asn") == looked_up
    finally:
        geo.close()
    uncached = CollectorRegistry()
    geo = GeoStage(ASN_DB, None, cache_size=0, registry=uncached)
    try:
        for _ in range(2):
            _enriched(geo, [("1.0.0.1", "2003::1")])
        assert geo.cache_len() == 0
        assert _metric(uncached, "flowenricher_geoip_lookups_total", db="asn") == 4
    finally:
        geo.close()


def test_negative_cache_size_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"geoip\.cache_size: -1 is negative"):
        GeoStage(None, None, cache_size=-1, registry=CollectorRegistry())


def _later(seconds: float) -> float:
    """A monotonic time `seconds` past now, for maybe_reload(now=...)."""
    return time.monotonic() + seconds + 1


def _overwrite(target: Path, source: Path, bump_ns: int = 5_000_000_000) -> None:
    """Copy `source` over `target` in place (same inode, as `cp` does) and move its mtime on."""
    st = target.stat()
    shutil.copyfile(source, target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + bump_ns))


def _place(geo: GeoStage, ip: str) -> tuple[str, str]:
    batch = _enriched(geo, [(ip, "10.0.0.1")])
    return batch["src_host_country"].strings()[0], batch["src_host_city"].strings()[0]


def test_reload_when_the_file_is_replaced(tmp_path: Path, registry: CollectorRegistry) -> None:
    live = tmp_path / "city.mmdb"
    shutil.copyfile(CITY_DB, live)
    geo = GeoStage(None, live, reload_interval_s=3600, registry=registry)
    try:
        assert _place(geo, "214.0.0.1") == ("SG", "Singapore")
        assert _place(geo, "214.78.0.1") == ("", "")
        assert geo.cache_len() == 2
        # Rewritten in place, smaller: a reader mapping the live file would die of SIGBUS;
        # this one keeps answering from its snapshot until the interval has passed.
        _overwrite(live, OTHER_CITY_DB)
        assert live.stat().st_size < CITY_DB.stat().st_size
        assert not geo.maybe_reload()
        assert _place(geo, "2.2.3.1") == ("GB", "Boxford")  # not cached: read from the snapshot
        assert geo.lookup("214.0.0.1")["city"] == "Singapore"
        assert geo.maybe_reload(now=_later(3600))
        assert geo.cache_len() == 0
        assert _place(geo, "214.0.0.1") == ("", "")
        assert _place(geo, "2.2.3.1") == ("", "")
        assert _place(geo, "214.78.0.1") == ("US", "San Diego")
        assert _metric(registry, "flowenricher_geoip_reloads_total", db="city", result="ok") == 1
        assert _metric(registry, "flowenricher_geoip_build_epoch_seconds", db="city") == \
            maxminddb.open_database(str(OTHER_CITY_DB)).metadata().build_epoch
        # Unchanged file: nothing to do.
        assert not geo.maybe_reload(now=_later(7200))
    finally:
        geo.close()


def test_replacement_by_rename_is_seen_from_enrich(tmp_path: Path, registry: CollectorRegistry) -> None:
    live = tmp_path / "GeoLite2-City.mmdb"
    shutil.copyfile(CITY_DB, live)
    geo = GeoStage(None, live, reload_interval_s=0, registry=registry)
    try:
        assert _place(geo, "2.2.3.1") == ("GB", "Boxford")
        staged = tmp_path / "GeoLite2-City.mmdb.new"
        shutil.copyfile(OTHER_CITY_DB, staged)
        os.replace(staged, live)  # what geoipupdate does
        assert _place(geo, "2.2.3.1") == ("", "")
        assert _metric(registry, "flowenricher_geoip_reloads_total", db="city", result="ok") == 1
    finally:
        geo.close()


def test_failed_reload_keeps_the_previous_database(tmp_path: Path, registry: CollectorRegistry) -> None:
    live = tmp_path / "asn.mmdb"
    shutil.copyfile(ASN_DB, live)
    geo = GeoStage(live, None, reload_interval_s=0, registry=registry)
    try:
        live.write_bytes(ASN_DB.read_bytes()[:5000])  # an interrupted download
        assert not geo.maybe_reload()
        assert _enriched(geo, [("1.0.0.1", "2003::1")])["dst_as"].tolist() == [3320]
        assert _metric(registry, "flowenricher_geoip_reloads_total", db="asn", result="failed") == 1
        # The same broken version is not retried (nor counted) again.
        assert not geo.maybe_reload()
        assert _metric(registry, "flowenricher_geoip_reloads_total", db="asn", result="failed") == 1
        live.unlink()
        assert not geo.maybe_reload()
        assert _metric(registry, "flowenricher_geoip_reloads_total", db="asn", result="failed") == 2
        assert geo.lookup("1.0.0.1")["asn"] == 15169
        shutil.copyfile(ASN_DB, live)
        assert geo.maybe_reload()
        assert _metric(registry, "flowenricher_geoip_reloads_total", db="asn", result="ok") == 1
    finally:
        geo.close()


@pytest.mark.parametrize(("role", "path", "reason"), [
    ("city", BROKEN_DOUBLE, "invalid MaxMind DB file: corrupt data section after 2.3.3.0/24"),
    ("city", INVALID_NODES, "invalid MaxMind DB file: metadata or search tree rejected"),
    ("asn", BROKEN_POINTERS, "invalid MaxMind DB file: corrupt data section after 1.1.1.8/29"),
    ("asn", DATA / "GeoLite2-ASN-Test.source.json", "no MaxMind DB metadata marker"),
    ("asn", CITY_DB, "a GeoIP2-City database, expected an ASN database here (swapped with geoip.city_db?)"),
    ("city", ASN_DB, "a GeoLite2-ASN database, expected a City database here (swapped with geoip.asn_db?)"),
    ("city", DATA / "missing.mmdb", "cannot open: No such file or directory"),
    ("city", DATA, "cannot open: Is a directory"),
    ("city", Path("/dev/zero"), "not a regular file"),
])
def test_broken_databases_fail_at_start_naming_the_file(role: str, path: Path, reason: str) -> None:
    asn, city = (path, None) if role == "asn" else (None, path)
    with pytest.raises(ConfigError) as caught:
        GeoStage(asn, city, registry=CollectorRegistry())
    assert str(caught.value).startswith(f"geoip.{role}_db {path}: ")
    assert reason in str(caught.value)


def test_truncated_and_empty_files_fail_at_start(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.mmdb"
    truncated.write_bytes(CITY_DB.read_bytes()[:10000])
    empty = tmp_path / "empty.mmdb"
    empty.touch()
    for path, reason in ((truncated, "truncated, or not an .mmdb file"), (empty, "empty file")):
        with pytest.raises(ConfigError, match=f"geoip.city_db {path}: invalid MaxMind DB file: .*{reason}"):
            GeoStage(None, path, registry=CollectorRegistry())


def test_records_that_fail_at_lookup_are_counted_not_raised(registry: CollectorRegistry) -> None:
    # Without the check at open (check_records=0) this database's corruption shows only
    # when the bad records are read.
    geo = GeoStage(None, BROKEN_DOUBLE, check_records=0, registry=registry)
    try:
        batch = _enriched(geo, [("81.2.69.160", "2.125.160.216"), ("2001:218::1", "1.1.1.1")])
        assert set(batch["src_host_country"].strings()) == {""}
        assert _metric(registry, "flowenricher_geoip_lookup_errors_total", db="city") == 3
        assert _metric(registry, "flowenricher_geoip_lookups_total", db="city") == 4
        answer = geo.lookup("81.2.69.160")
        assert answer["country"] == ""
        assert "data section contains bad data" in str(answer["errors"])
        assert _metric(registry, "flowenricher_geoip_lookup_errors_total", db="city") == 4
    finally:
        geo.close()


def test_no_databases_leaves_the_batch_alone(registry: CollectorRegistry) -> None:
    geo = GeoStage(None, None, registry=registry)
    batch = _enriched(geo, [("1.0.0.1", "81.2.69.160")])
    assert "src_as" not in batch and "src_host_country" not in batch
    assert geo.lookup("1.0.0.1")["asn"] == 0
    geo.close()


def test_built_from_the_geoip_settings(registry: CollectorRegistry) -> None:
    settings = GeoIpSettings(asn_db=ASN_DB, city_db=CITY_DB, reload_interval_s=30.0, cache_size=2)
    geo = GeoStage.from_settings(settings, registry)
    try:
        batch = _enriched(geo, [("1.0.0.1", "81.2.69.160"), ("2003::1", "89.160.20.115")])
        assert batch["dst_host_city"].strings() == ["London", "Linköping"]
        assert geo.cache_len() == 2
    finally:
        geo.close()
