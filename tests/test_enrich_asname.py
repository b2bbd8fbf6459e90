"""Every stored AS name is the name of the AS number stored beside it, whichever stage
(GeoIP, BGP, the exporter) set the number: MaxMind's test ASN database and the BGP stage
fed from a prefix file whose routes disagree with the database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from appliance.flowenricher.batch import FlowBatch, str_to_addr
from appliance.flowenricher.bgp.prefix_file import PrefixFileRib
from appliance.flowenricher.enrich.base import AddressSet
from appliance.flowenricher.enrich.bgp import BgpStage
from appliance.flowenricher.enrich.geo import GeoStage
from appliance.flowenricher.enrich.pipeline import AS_NAME_COLUMNS, Enricher

DATA = Path(__file__).parent / "data" / "geoip"
ASN_DB = DATA / "GeoLite2-ASN-Test.mmdb"

# The database says: 1.0.0.0/24 is AS15169 "Google Inc.", 1.128.0.0/11 AS1221 "Telstra Pty Ltd",
# 2003::/24 AS3320 "Deutsche Telekom AG".  The routes say otherwise for the first two.
ROUTES = [
    {"prefix": "1.128.0.0/11", "as_path": [64500, 64999], "next_hop": "192.0.2.1"},  # private origin, no name
    {"prefix": "1.0.0.0/24", "as_path": [64500, 4837, 1221], "next_hop": "192.0.2.1"},  # Telstra's, via China169
]


def db_names() -> dict[int, str]:
    names: dict[int, str] = {}
    for entry in json.loads((DATA / "GeoLite2-ASN-Test.source.json").read_text()):
        for record in entry.values():
            if "autonomous_system_organization" in record:
                names[record["autonomous_system_number"]] = record["autonomous_system_organization"]
    return names


def batch_of(pairs: list[tuple[str, str]]) -> FlowBatch:
    def addrs(texts: list[str]) -> np.ndarray:
        return np.frombuffer(b"".join(str_to_addr(t) for t in texts), np.uint8).reshape(-1, 16).copy()

    return FlowBatch(len(pairs), {"src_addr": addrs([s for s, _ in pairs]), "dst_addr": addrs([d for _, d in pairs])})


@pytest.fixture
def stages(tmp_path: Path) -> Iterator[tuple[GeoStage, BgpStage]]:
    path = tmp_path / "prefixes.json"
    path.write_text(json.dumps(ROUTES))
    registry = CollectorRegistry()
    rib = PrefixFileRib(path, registry, check_interval_s=0)
    rib.start()
    geo = GeoStage(ASN_DB, None, registry=registry)
    bgp = BgpStage(rib, registry)
    assert geo.wait_for_names(timeout=30)
    yield geo, bgp
    geo.close()
    bgp.close()


FLOWS = [("1.0.0.1", "1.128.0.1"), ("2003::1", "1.0.0.7"), ("1.128.9.9", "2003::5")]


def test_stages_alone_leave_a_name_beside_another_as(stages: tuple[GeoStage, BgpStage]) -> None:
    """The bug as it was: BGP replaces GeoIP's number and GeoIP's name stays beside it."""
    geo, bgp = stages
    batch = batch_of(FLOWS)
    addrs = AddressSet.of(batch)
    geo.enrich(batch, addrs)
    bgp.enrich(batch, addrs)
    assert (int(batch["dst_as"][0]), batch["dst_as_name"].strings()[0]) == (64999, "Telstra Pty Ltd")


def test_pipeline_names_each_as_number_stored(stages: tuple[GeoStage, BgpStage]) -> None:
    geo, bgp = stages
    batch = batch_of(FLOWS)
    Enricher([geo, bgp], CollectorRegistry(), as_name=geo.as_name).enrich(batch)
    got = [{c: (int(batch[c][i]), batch[n].strings()[i]) for c, n in AS_NAME_COLUMNS} for i in range(batch.n)]
    assert got[0] == {"src_as": (1221, "Telstra Pty Ltd"), "dst_as": (64999, ""),
                      "peer_src_as": (64500, ""), "peer_dst_as": (64500, "")}
    # No route to 2003::/24: GeoIP's number and name stay.
    assert got[1]["src_as"] == (3320, "Deutsche Telekom AG") and got[1]["dst_as"] == (1221, "Telstra Pty Ltd")
    assert got[2]["src_as"] == (64999, "") and got[2]["dst_as"] == (3320, "Deutsche Telekom AG")


def test_every_pair_matches_the_database_over_all_its_networks(stages: tuple[GeoStage, BgpStage]) -> None:
    """All networks of the test database as sources and destinations, half of them routed
    to an origin the database names differently (or not at all), plus exporter numbers."""
    geo, bgp = stages
    names = db_names()
    networks = [str(net.network_address) for net, _ in geo.databases["asn"].reader]
    rng = np.random.default_rng(7)
    pairs = [(networks[i], networks[j]) for i, j in rng.integers(0, len(networks), (400, 2))]
    batch = batch_of(pairs)
    batch["src_as"] = rng.choice(np.array([0, 0, 0, 3320, 65001], np.uint32), batch.n)  # what an exporter sent
    Enricher([geo, bgp], CollectorRegistry(), as_name=geo.as_name).enrich(batch)
    checked = 0
    for column, name_column in AS_NAME_COLUMNS:
        numbers, stored = batch[column].tolist(), batch[name_column].strings()
        for number, name in zip(numbers, stored, strict=True):
            assert name == (names.get(number, "") if number else ""), (column, number, name)
            checked += bool(number)
    assert checked > 400


def test_names_are_set_before_the_stages_that_read_them(stages: tuple[GeoStage, BgpStage]) -> None:
    """The PTR stage queues (AS, AS name) of each address for ptr_cache: a stage after
    bgp must already see the corrected names."""
    geo, bgp = stages
    seen: list[tuple[int, str]] = []

    class Reader:
        name = "reader"

        def enrich(self, batch: FlowBatch, addrs: AddressSet) -> None:
            seen.append((int(batch["dst_as"][0]), batch["dst_as_name"].strings()[0]))

        def close(self) -> None:
            pass

    Enricher([geo, bgp, Reader()], CollectorRegistry(), as_name=geo.as_name).enrich(batch_of(FLOWS))
    assert seen == [(64999, "")]
