"""The BGP enrichment stage: flow columns from a real GoBGP's RIB (fed by BIRD, see
tests/support/bgp_lab.py) and from the JSON prefix file, with pmacct's meaning of
peer_src_as, peer_dst_as, src_as and dst_as."""

from __future__ import annotations

import ipaddress
import json
import os
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from support.bgp_lab import BIRD_V4, BIRD_V6, BgpLab, StaticRoute, bgp_lab_fixture  # noqa: F401 (fixture)

from appliance.flowenricher.batch import FlowBatch, ListColumn, addr_to_str, str_to_addr
from appliance.flowenricher.bgp.client import GoBgpClient
from appliance.flowenricher.bgp.mirror import RibMirror
from appliance.flowenricher.bgp.prefix_file import PrefixFileError, PrefixFileRib, load_prefix_file
from appliance.flowenricher.bgp.prefix_file import _route as prefix_file_route
from appliance.flowenricher.bgp.rib import RibState
from appliance.flowenricher.bgp.route import parse_community
from appliance.flowenricher.enrich.base import AddressSet
from appliance.flowenricher.enrich.bgp import BgpStage

GEOIP_AS = 4242  # what a GeoIP stage put in src_as/dst_as before BGP runs

ROUTES = [
    StaticRoute("203.0.113.0/24", (64500, 15169), ("65000:100",), 200),
    StaticRoute("198.51.100.128/25", (64501, 64496, 64497), ("65000:200", "64501:1"), 50),
    StaticRoute("2001:db8::/32", (64502,), (), None),
    StaticRoute("2001:db8:1::/48", (64500, 13335), ("65000:300",), 120),
]

# (src, dst) of each flow.
FLOWS = [
    ("192.0.2.10", "203.0.113.5"),  # to a routed destination from an unrouted source
    ("198.51.100.200", "203.0.113.77"),  # both routed
    ("2001:db8:9::1", "2001:db8:1::5"),  # IPv6, both routed
    ("10.0.0.1", "10.0.0.2"),  # no route either way
    ("203.0.113.9", "192.0.2.99"),  # to our own announced prefix (empty AS path)
]


def batch_of(flows: list[tuple[str, str]]) -> FlowBatch:
    n = len(flows)
    src = np.frombuffer(b"".join(str_to_addr(s) for s, _ in flows), np.uint8).reshape(n, 16).copy()
    dst = np.frombuffer(b"".join(str_to_addr(d) for _, d in flows), np.uint8).reshape(n, 16).copy()
    return FlowBatch(n, {"src_addr": src, "dst_addr": dst,
                         "src_as": np.full(n, GEOIP_AS, np.uint32), "dst_as": np.full(n, GEOIP_AS, np.uint32)})


def test_exporter_values_stay_where_the_rib_has_no_answer(tmp_path: Path) -> None:
    """What the exporter sent (AS numbers, BGP next hop, previous AS) is replaced only by
    a route's answer; its bgpPrevAdjacentAsNumber even beats the symmetric-routing guess."""
    path = tmp_path / "prefixes.json"
    write(path, PREFIX_TABLE)
    rib = PrefixFileRib(path, check_interval_s=0)
    rib.start()
    batch = batch_of([("198.51.100.7", "203.0.113.5"), ("10.0.0.1", "10.0.0.2"), ("2001:db8:1::9", "10.0.0.3")])
    batch["peer_src_as"] = np.array([0, 64999, 64998], np.uint32)
    batch["peer_dst_as"] = np.array([1, 2, 3], np.uint32)
    batch["bgp_next_hop"] = np.frombuffer(str_to_addr("192.0.2.250") * 3, np.uint8).reshape(3, 16).copy()
    batch["dst_as_path"] = ListColumn.from_lists([[1, 2], [3], [4, 5, 6]])
    BgpStage(rib).enrich(batch, AddressSet.of(batch))
    got = columns(batch)
    # Flow 0: routes both ways; the source's route is 198.51.100.0/24 with an empty path.
    assert (got[0]["peer_dst_as"], got[0]["dst_as_path"], got[0]["bgp_next_hop"]) == (64500, [64500, 15169], "192.0.2.1")
    # Flow 1: no route at all: everything as the exporter sent it.
    assert got[1] == {"src_as": GEOIP_AS, "dst_as": GEOIP_AS, "peer_src_as": 64999, "peer_dst_as": 2,
                      "dst_as_path": [3], "dst_communities": [], "local_pref": 0, "bgp_next_hop": "192.0.2.250"}
    # Flow 2: a route to the source only; the exporter's previous AS wins over the guess.
    assert (got[2]["src_as"], got[2]["peer_src_as"], got[2]["dst_as_path"]) == (13335, 64998, [4, 5, 6])


def columns(batch: FlowBatch) -> list[dict[str, Any]]:
    names = ("src_as", "dst_as", "peer_src_as", "peer_dst_as", "dst_as_path", "dst_communities", "local_pref",
             "bgp_next_hop")
    out = []
    for i in range(batch.n):
        row: dict[str, Any] = {}
        for name in names:
            data = batch[name]
            if isinstance(data, ListColumn):
                row[name] = data.row(i)
            elif data.ndim == 2:
                row[name] = addr_to_str(data[i]) if data[i].any() else ""
            else:
                row[name] = int(data[i])
        out.append(row)
    return out


def communities(*texts: str) -> list[int]:
    return sorted(parse_community(t) for t in texts)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


def test_stage_fills_columns_from_gobgp(bgp_lab: BgpLab) -> None:
    bgp_lab.start(ROUTES)
    bgp_lab.wait_established()
    registry = CollectorRegistry()
    mirror = RibMirror(bgp_lab.api_target, registry, max_backoff_s=1.0)
    stage = BgpStage(mirror, registry, local_asn=65000)
    mirror.start()
    try:
        with GoBgpClient(bgp_lab.api_target) as client:
            client.add_path("192.0.2.0/24", "10.255.0.1")  # one of our own prefixes
        wait_until(lambda: len(mirror.view()) == len(ROUTES) + 1, 10, "the routes in the mirror")
        batch = batch_of(FLOWS)
        stage.enrich(batch, AddressSet.of(batch))
    finally:
        stage.close()
    got = columns(batch)
    # The route to 203.0.113.0/24: neighbour 64500, origin 15169.  The source has a
    # route of our own AS (192.0.2.0/24, empty path): origin our AS, no neighbour.
    assert got[0] == {"src_as": 65000, "dst_as": 15169, "peer_src_as": 0, "peer_dst_as": 64500,
                      "dst_as_path": [64500, 15169], "dst_communities": communities("65000:100"),
                      "local_pref": 200, "bgp_next_hop": BIRD_V4}
    # The source's route (the /25) gives src_as (origin) and peer_src_as (its first AS).
    assert got[1] == {"src_as": 64497, "dst_as": 15169, "peer_src_as": 64501, "peer_dst_as": 64500,
                      "dst_as_path": [64500, 15169], "dst_communities": communities("65000:100"),
                      "local_pref": 200, "bgp_next_hop": BIRD_V4}
    # IPv6: the /48 is more specific than the /32 for the destination; LOCAL_PREF as sent.
    assert got[2] == {"src_as": 64502, "dst_as": 13335, "peer_src_as": 64502, "peer_dst_as": 64500,
                      "dst_as_path": [64500, 13335], "dst_communities": communities("65000:300"),
                      "local_pref": 120, "bgp_next_hop": BIRD_V6}
    # No route: every BGP column keeps its default, GeoIP's AS numbers stay.
    assert got[3] == {"src_as": GEOIP_AS, "dst_as": GEOIP_AS, "peer_src_as": 0, "peer_dst_as": 0,
                      "dst_as_path": [], "dst_communities": [], "local_pref": 0, "bgp_next_hop": ""}
    # Towards our own prefix: no neighbour AS, origin our AS, GoBGP's next hop.
    assert got[4] == {"src_as": 15169, "dst_as": 65000, "peer_src_as": 64500, "peer_dst_as": 0,
                      "dst_as_path": [], "dst_communities": [], "local_pref": 0, "bgp_next_hop": "10.255.0.1"}
    # Of the 10 distinct addresses, 8 have a route (192.0.2.10 and .99 in our /24); 10.0.0.1 and .2 none.
    assert registry.get_sample_value("flowenricher_bgp_lookups_total", {"result": "route"}) == 8
    assert registry.get_sample_value("flowenricher_bgp_lookups_total", {"result": "no_route"}) == 2


def test_stage_with_gobgp_down_at_start(bgp_lab: BgpLab) -> None:
    """Nothing to mirror: the batch goes through untouched and the lookups are counted."""
    bgp_lab.start(ROUTES, gobgpd=False)
    registry = CollectorRegistry()
    mirror = RibMirror(bgp_lab.api_target, registry, max_backoff_s=0.5)
    stage = BgpStage(mirror, registry)
    mirror.start()
    try:
        batch = batch_of(FLOWS)
        stage.enrich(batch, AddressSet.of(batch))
    finally:
        stage.close()
    assert all(row["dst_as"] == GEOIP_AS and row["peer_dst_as"] == 0 and row["dst_as_path"] == []
               for row in columns(batch))
    assert registry.get_sample_value("flowenricher_bgp_lookups_total", {"result": "no_table"}) == 10


# --- the JSON prefix file ------------------------------------------------------------------

PREFIX_TABLE = [
    {"prefix": "203.0.113.0/24", "as_path": [64500, 15169], "next_hop": "192.0.2.1", "local_pref": 100,
     "communities": ["65001:100", 4259840001]},
    {"prefix": "2001:db8:1::/48", "as_path": [64500, 13335], "next_hop": "2001:db8::1"},
    {"prefix": "198.51.100.0/24"},
]


def write(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def test_stage_from_prefix_file(tmp_path: Path) -> None:
    path = tmp_path / "prefixes.json"
    write(path, PREFIX_TABLE)
    registry = CollectorRegistry()
    rib = PrefixFileRib(path, registry, check_interval_s=0.05)
    stage = BgpStage(rib, registry)
    rib.start()
    try:
        batch = batch_of([("198.51.100.7", "203.0.113.5"), ("2001:db8::9", "2001:db8:1::5")])
        stage.enrich(batch, AddressSet.of(batch))
        got = columns(batch)
        assert got[0] == {"src_as": GEOIP_AS, "dst_as": 15169, "peer_src_as": 0, "peer_dst_as": 64500,
                          "dst_as_path": [64500, 15169], "dst_communities": [parse_community("65001:100"), 4259840001],
                          "local_pref": 100, "bgp_next_hop": "192.0.2.1"}
        assert got[1]["dst_as"] == 13335 and got[1]["bgp_next_hop"] == "2001:db8::1" and got[1]["src_as"] == GEOIP_AS

        # The file changes: reloaded without a restart.
        write(path, [*PREFIX_TABLE, {"prefix": "203.0.113.128/25", "as_path": [64501]}])
        wait_until(lambda: str(getattr(rib.view().route("203.0.113.200"), "prefix", "")) == "203.0.113.128/25",
                   5, "the changed file reloaded")
        # A broken version is refused and counted; the last good table stays.
        write(path, [{"prefix": "203.0.113.0/24", "as_path": ["x"]}])
        wait_until(lambda: (registry.get_sample_value("flowenricher_prefix_file_errors_total") or 0) >= 1, 5,
                   "the broken file counted")
        assert len(rib.view()) == 4
    finally:
        stage.close()


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "line 1 column 2: invalid JSON"),
    ('{"prefix": "203.0.113.0/24"}', "a JSON list of routes, not dict"),
    ('["203.0.113.0/24"]', "entry 0: a route is a JSON object, not str"),
    ('[{"as_path": [1]}]', 'entry 0: missing "prefix"'),
    ('[{"prefix": "203.0.113.1/24"}]', "entry 0 (203.0.113.1/24): prefix: 203.0.113.1/24 has host bits set"),
    ('[{"prefix": "203.0.113.0/33"}]', "entry 0 (203.0.113.0/33): prefix:"),
    ('[{"prefix": "2001:db8::/32"}, {"prefix": "203.0.113.0/24", "as_path": [64500, -1]}]',
     "entry 1 (203.0.113.0/24): as_path[1] must be an integer 1-4294967295, not -1"),
    ('[{"prefix": "203.0.113.0/24", "as_path": [0]}]', "as_path[0] must be an integer 1-4294967295, not 0"),
    ('[{"prefix": "203.0.113.0/24", "next_hop": "192.0.2.300"}]', "entry 0 (203.0.113.0/24): next_hop:"),
    ('[{"prefix": "203.0.113.0/24", "local_pref": "high"}]', "local_pref must be an integer 0-4294967295"),
    ('[{"prefix": "203.0.113.0/24", "communities": ["65001:70000"]}]',
     "'65001:70000' is not a BGP community: the value after the AS number is 0-65535"),
    ('[{"prefix": "203.0.113.0/24", "communities": ["216285:666"]}]',
     "'216285:666' is not a standard BGP community: it is a large community"),
    ('[{"prefix": "203.0.113.0/24", "aspath": [1]}]', "entry 0 (203.0.113.0/24): unknown key(s) aspath"),
    ('[{"prefix": "203.0.113.0/24"}, {"prefix": "203.0.113.0/24"}]',
     "entry 1 (203.0.113.0/24): prefix already given in entry 0"),
])
def test_prefix_file_errors_name_file_entry_and_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "prefixes.json"
    path.write_text(content)
    with pytest.raises(PrefixFileError) as raised:
        load_prefix_file(path, RibState().new_builder())
    assert str(raised.value).startswith(f"{path}: ")
    assert message in str(raised.value)


_ROUTE = st.fixed_dictionaries(
    {"prefix": st.one_of(
        st.tuples(st.integers(0, 2**32 - 1), st.integers(8, 32)).map(
            lambda t: str(ipaddress.ip_network((t[0] >> (32 - t[1]) << (32 - t[1]), t[1])))),
        st.tuples(st.integers(0, 2**128 - 1), st.integers(16, 128)).map(
            lambda t: str(ipaddress.ip_network((t[0] >> (128 - t[1]) << (128 - t[1]), t[1])))))},
    optional={"as_path": st.lists(st.integers(1, 2**32 - 1), max_size=6),
              "next_hop": st.sampled_from(["192.0.2.1", "2001:db8::1"]),
              "local_pref": st.integers(0, 2**32 - 1),
              "communities": st.lists(st.sampled_from(["65001:100", "64500:666", 42]), max_size=3)})
"""A route of the prefix file, as an operator would write it."""


def _load_whole(text: str) -> tuple[bytes, int] | str:
    """The table a json.loads of the whole file gives (the reference the streaming loader
    must equal): its keys and row count, or the JSON error's position."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return f"line {err.lineno} column {err.colno}: invalid JSON"
    builder = RibState().new_builder()
    for entry in data:
        key, attrs = prefix_file_route(entry)
        builder.add(key, attrs)
    return builder.keys().tobytes(), len(builder)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(routes=st.lists(_ROUTE, max_size=12, unique_by=lambda r: r["prefix"]), indent=st.sampled_from([None, 0, 2]),
       chunk=st.sampled_from([1, 2, 3, 7, 64, 1 << 20]), cut=st.none() | st.tuples(st.integers(0, 10**6),
                                                                               st.integers(1, 4)))
def test_prefix_file_read_in_chunks_equals_the_whole_parse(tmp_path_factory: pytest.TempPathFactory,
                                                           routes: list[dict[str, Any]], indent: int | None,
                                                           chunk: int, cut: tuple[int, int] | None) -> None:
    """The streaming loader, whatever its chunk size, loads what json.loads of the whole
    file gives; with characters cut out of the file (`cut`), it refuses where json.loads
    does, at the same line and column, and loads the same table where the cut file is
    still a valid table."""
    text = json.dumps(routes, indent=indent)
    if cut is not None:
        start = cut[0] % (len(text) + 1)
        text = text[:start] + text[start + cut[1]:]
    path = tmp_path_factory.mktemp("chunks") / "prefixes.json"
    path.write_text(text)
    try:
        expected: tuple[bytes, int] | str = _load_whole(text)
    except (ValueError, TypeError, AttributeError, KeyError):
        expected = "invalid table"  # valid JSON, not a valid table: only the loader's refusal is checked
    builder = RibState().new_builder()
    with mock.patch("appliance.flowenricher.bgp.prefix_file._CHUNK", chunk):
        try:
            load_prefix_file(path, builder)
            got: tuple[bytes, int] | str = (builder.keys().tobytes(), len(builder))
        except PrefixFileError as err:
            got = str(err).removeprefix(f"{path}: ")
    if expected == "invalid table":
        assert isinstance(got, str) and "invalid JSON" not in got, got
    elif isinstance(expected, str):
        assert isinstance(got, str) and got.startswith(expected), (got, expected, text)
    else:
        assert got == expected


_OCTET = st.integers(0, 255).map(str) | st.sampled_from(["00", "01", "010", "256", "999", "-1", " 1", "1 ", "+1"])
_V4_TEXT = st.lists(_OCTET, min_size=3, max_size=5).map(".".join)
_V6_TEXT = (st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
            | st.integers(0, 2**128 - 1).map(lambda n: ipaddress.IPv6Address(n).exploded.upper())
            | st.sampled_from(["::", "::1", "::ffff:192.0.2.0", "fe80::1%eth0", ":::", "1::2::3", "2001:db8::g",
                               "1:2:3:4:5:6:7:8:9", "::192.0.2.256", "2001:0db8:0000::"]))
_LENGTH = st.integers(0, 129).map(str) | st.sampled_from(["08", "032", "", "x", "24 ", "255.255.255.0", "-1"])


@settings(max_examples=1500, deadline=None)
@given(address=_V4_TEXT | _V6_TEXT, length=_LENGTH, slash=st.sampled_from(["/", "//", ""]))
def test_prefix_text_read_as_ipaddress_reads_it(address: str, length: str, slash: str) -> None:
    """The prefix file's fast reading of a prefix gives ipaddress.ip_network(strict=True)'s
    key for every text it accepts and refuses, with its words, every text it refuses."""
    from appliance.flowenricher.bgp.prefix_file import _prefix
    from appliance.flowenricher.bgp.route import prefix_key
    text = f"{address}{slash}{length}"
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as err:
        with pytest.raises(ValueError) as refused:
            _prefix(text)
        assert str(refused.value) == str(err)
    else:
        assert _prefix(text) == prefix_key(net.network_address.packed, net.prefixlen)


def test_prefix_file_repeat_found_after_loading(tmp_path: Path) -> None:
    """A prefix given three times: the error names its second entry and its first."""
    path = tmp_path / "prefixes.json"
    path.write_text(json.dumps([{"prefix": "2001:db8::/32"}, {"prefix": "203.0.113.0/24"}, {"prefix": "10.0.0.0/8"},
                                {"prefix": "2001:db8::/32"}, {"prefix": "203.0.113.0/24"},
                                {"prefix": "2001:db8::/32"}]))
    with pytest.raises(PrefixFileError, match=r"entry 3 \(2001:db8::/32\): prefix already given in entry 0$"):
        load_prefix_file(path, RibState().new_builder())


def test_prefix_file_missing_fails_at_start(tmp_path: Path) -> None:
    rib = PrefixFileRib(tmp_path / "absent.json")
    with pytest.raises(PrefixFileError, match=r"absent\.json: cannot read: No such file"):
        rib.start()
    rib.close()
