"""Direction from my_prefixes, network classification, and the pipeline around stages."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from appliance.flowenricher.batch import FlowBatch, str_to_addr
from appliance.flowenricher.enrich.base import AddressSet, public_mask
from appliance.flowenricher.enrich.networks import INBOUND, INTERNAL, OUTBOUND, TRANSIT, NetworkInfo, NetworksStage
from appliance.flowenricher.enrich.pipeline import Enricher


def _addrs(*texts: str) -> np.ndarray:
    return np.frombuffer(b"".join(str_to_addr(t) for t in texts), np.uint8).reshape(-1, 16)


def _batch(pairs: list[tuple[str, str]]) -> FlowBatch:
    return FlowBatch(len(pairs), {"src_addr": _addrs(*(s for s, _ in pairs)), "dst_addr": _addrs(*(d for _, d in pairs))})


MINE = [ipaddress.ip_network("84.54.49.0/24"), ipaddress.ip_network("2a14:4280::/29")]


def test_direction_follows_my_prefixes_v4_and_v6() -> None:
    batch = _batch([
        ("8.8.8.8", "84.54.49.10"),          # in
        ("84.54.49.10", "1.1.1.1"),          # out
        ("84.54.49.1", "84.54.49.2"),        # internal
        ("8.8.8.8", "1.1.1.1"),              # transit
        ("2a00:1450::1", "2a14:4280:1::5"),  # in, IPv6
        ("2a14:4287:ffff::1", "2a00::1"),    # out: last /29 address block
        ("2a14:4288::1", "2a00::1"),         # just outside the /29: transit
    ])
    stage = NetworksStage(MINE, {})
    stage.enrich(batch, AddressSet.of(batch))
    assert batch["flow_direction"].tolist() == [INBOUND, OUTBOUND, INTERNAL, TRANSIT, INBOUND, OUTBOUND, TRANSIT]


def test_no_prefixes_leaves_direction_unknown() -> None:
    batch = _batch([("8.8.8.8", "84.54.49.10")])
    NetworksStage([], {}).enrich(batch, AddressSet.of(batch))
    assert batch["flow_direction"].tolist() == [0]


def test_most_specific_network_wins() -> None:
    nets = {
        ipaddress.ip_network("84.54.49.0/24"): NetworkInfo("hosting"),
        ipaddress.ip_network("84.54.49.64/26"): NetworkInfo("acme-rack", "acme"),
        ipaddress.ip_network("2a14:4280::/32"): NetworkInfo("v6-core"),
    }
    batch = _batch([("84.54.49.70", "84.54.49.5"), ("9.9.9.9", "2a14:4280::1")])
    stage = NetworksStage(MINE, nets)
    stage.enrich(batch, AddressSet.of(batch))
    assert batch["src_net_name"].strings() == ["acme-rack", ""]
    assert batch["src_net_customer"].strings() == ["acme", ""]
    assert batch["dst_net_name"].strings() == ["hosting", "v6-core"]
    assert stage.network_of("84.54.49.65") == NetworkInfo("acme-rack", "acme")
    assert stage.network_of("10.0.0.1") is None


def test_matcher_agrees_with_ipaddress_on_random_addresses() -> None:
    rng = np.random.default_rng(7)
    prefixes = [ipaddress.ip_network(f"{a}.{b}.0.0/{n}", strict=False)
                for a, b, n in zip(rng.integers(1, 223, 200), rng.integers(0, 255, 200), rng.integers(8, 25, 200),
                                   strict=True)]
    stage = NetworksStage(prefixes, {p: NetworkInfo(str(p)) for p in prefixes})
    ips = [str(ipaddress.IPv4Address(int(x))) for x in rng.integers(1 << 24, 223 << 24, 3000)]
    ips += [f"{p.network_address}" for p in prefixes[:50]]
    batch = _batch([(ip, "8.8.8.8") for ip in ips])
    stage.enrich(batch, AddressSet.of(batch))
    got = batch["src_net_name"].strings()
    for ip, name in zip(ips, got, strict=True):
        addr = ipaddress.ip_address(ip)
        best = max((p for p in prefixes if addr in p), key=lambda p: p.prefixlen, default=None)
        assert name == (str(best) if best else ""), ip


def test_public_mask() -> None:
    got = public_mask(_addrs("8.8.8.8", "10.1.1.1", "100.64.0.1", "192.0.2.1", "2a00:1450::1", "2001:db8::1",
                             "fe80::1", "::1", "fd00::1", "224.0.0.5", "172.32.0.1"))
    assert got.tolist() == [True, False, False, False, True, False, False, False, False, False, True]


class _Failing:
    name = "broken"

    def enrich(self, batch: FlowBatch, addrs: AddressSet) -> None:
        raise RuntimeError("bug")

    def close(self) -> None:
        return None


class _PeerSetter:
    name = "peers"

    def enrich(self, batch: FlowBatch, addrs: AddressSet) -> None:
        batch["peer_dst_as"] = np.array([15169, 0, 15169], np.uint32)

    def close(self) -> None:
        return None


def test_pipeline_counts_a_failing_stage_and_goes_on() -> None:
    registry = CollectorRegistry()
    enricher = Enricher([_Failing(), NetworksStage(MINE, {}), _PeerSetter()], registry,
                        as_name=lambda asn: {15169: "GOOGLE"}.get(asn, ""))
    batch = _batch([("8.8.8.8", "84.54.49.10"), ("84.54.49.10", "1.1.1.1"), ("8.8.8.8", "1.1.1.1")])
    enricher.enrich(batch)
    assert registry.get_sample_value("flowenricher_enrich_errors_total", {"stage": "broken"}) == 1
    assert batch["flow_direction"].tolist() == [INBOUND, OUTBOUND, TRANSIT]
    assert batch["peer_dst_as_name"].strings() == ["GOOGLE", "", "GOOGLE"]
    assert registry.get_sample_value("flowenricher_enriched_flows_total") == 3


@pytest.mark.parametrize("n", [0, 1])
def test_pipeline_small_batches(n: int) -> None:
    batch = _batch([("8.8.8.8", "84.54.49.10")] * n)
    Enricher([NetworksStage(MINE, {})], CollectorRegistry()).enrich(batch)
    assert batch.n == n


@pytest.mark.parametrize("v6_share", [0.0, 0.3])
def test_address_set_maps_back_to_every_flow(v6_share: float) -> None:
    rng = np.random.default_rng(3)
    n = 5000
    pool = rng.integers(0, 256, (300, 16), dtype=np.uint8)
    pool[:, :12] = np.where(rng.random(300)[:, None] < v6_share, pool[:, :12],
                            np.array([0] * 10 + [255, 255], np.uint8))
    src, dst = pool[rng.integers(0, 300, n)], pool[rng.integers(0, 300, n)]
    addrs = AddressSet.of(FlowBatch(n, {"src_addr": src, "dst_addr": dst}))
    assert (addrs.addrs[addrs.src] == src).all() and (addrs.addrs[addrs.dst] == dst).all()
    assert len(addrs) == len({bytes(r) for r in np.concatenate([src, dst])})
