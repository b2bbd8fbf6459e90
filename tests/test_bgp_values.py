"""The one definition of BGP values (common/bgp_values.py) and every edge that uses it.

The syntax table is checked on the parser; then one bad value of each kind is sent
through every edge (config file, rules file, API, blackhole manager, GoBGP client, the
GoBGP test double) and each must refuse it with the same reason.  The manager's failed
state and the address-family rules for rule next hops run on the real manager, state
DB and API with the GoBGP double; test_blackhole_gobgp.py has them with real gobgpd.
"""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from support.api import ApiEnv, make_env
from support.recording_gobgp import RecordingGoBGP

from appliance.flowenricher.bgp.client import _path
from appliance.flowenricher.blackhole.manager import AnnounceRefused, BlackholeManager, Defaults
from appliance.flowenricher.blackhole.safety import Refused, SafetyPolicy, SafetySettings
from appliance.flowenricher.blackhole.state import StateDB
from appliance.flowenricher.common.bgp_values import (
    DISCARD_NEXT_HOP_V6,
    BgpValueError,
    BlackholeRoute,
    parse_community,
    parse_next_hop,
    parse_prefix,
)
from appliance.flowenricher.config import load_config, load_rules
from appliance.flowenricher.errors import ConfigError


@pytest.mark.parametrize(("text", "parts"), [
    ("65535:666", (65535, 666)),
    ("0:0", (0, 0)),
    ("65001:666:7", (65001, 666, 7)),
    ("4294967295:4294967295:4294967295", (4294967295, 4294967295, 4294967295)),
    ("216285:666", (216285, 666, 0)),  # the original README's: a 32-bit ASN, announced large
    ("4294967295:65535", (4294967295, 65535, 0)),
    ("blackhole", (65535, 666)),
    ("No-Export", (65535, 65281)),
    ("no-advertise", (65535, 65282)),
])
def test_communities_that_can_be_announced(text: str, parts: tuple[int, ...]) -> None:
    community = parse_community(text)
    assert community.parts == parts and community.text == text
    assert str(community) == ":".join(map(str, parts))


@pytest.mark.parametrize(("text", "reason"), [
    ("666", "write ASN:VALUE"),
    ("65001:", "write ASN:VALUE"),
    ("a:b", "write ASN:VALUE"),
    ("1:2:3:4", "write ASN:VALUE"),
    ("-1:666", "write ASN:VALUE"),
    ("\uff16\uff15\uff10\uff10\uff11:666", "write ASN:VALUE"),  # fullwidth digits: str.isdigit's, not BGP's
    ("65001:65536", "the value after the AS number is 0-65535"),
    ("4294967296:1", "an AS number is 0-4294967295"),
    ("1:2:4294967296", "each part of a large community is 0-4294967295"),
    ("no-such-name", "write ASN:VALUE"),
])
def test_communities_that_cannot(text: str, reason: str) -> None:
    with pytest.raises(BgpValueError, match=reason) as caught:
        parse_community(text)
    assert str(caught.value).startswith(f"{text!r} is not a BGP community: ")


@given(st.lists(st.integers(0, 2**33), min_size=2, max_size=3))
def test_community_numbers_follow_the_rfcs(parts: list[int]) -> None:
    """Every ASN:VALUE and a:b:c: accepted exactly when it fits RFC 1997 / RFC 8092 (or
    the 32-bit ASN mapping), with the announced numbers; refused with BgpValueError."""
    text = ":".join(map(str, parts))
    if len(parts) == 3:
        fits: tuple[int, ...] | None = tuple(parts) if max(parts) <= 0xFFFFFFFF else None
    elif parts[1] > 0xFFFF or parts[0] > 0xFFFFFFFF:
        fits = None
    else:
        fits = tuple(parts) if parts[0] <= 0xFFFF else (parts[0], parts[1], 0)
    if fits is None:
        with pytest.raises(BgpValueError):
            parse_community(text)
    else:
        assert parse_community(text).parts == fits


@given(st.text(max_size=30))
def test_any_text_is_a_community_or_a_bgp_value_error(text: str) -> None:
    try:
        community = parse_community(text)
    except BgpValueError as err:
        assert err.value == text and err.reason
    else:
        assert len(community.parts) in (2, 3) and all(0 <= p <= 0xFFFFFFFF for p in community.parts)


def test_prefixes_and_next_hops() -> None:
    assert parse_prefix("203.0.113.9") == ipaddress.ip_network("203.0.113.9/32")
    assert parse_prefix(" 2001:db8::9 ") == ipaddress.ip_network("2001:db8::9/128")
    with pytest.raises(BgpValueError, match=r"host bits are set \(did you mean 203.0.113.0/24\?\)"):
        parse_prefix("203.0.113.9/24")
    with pytest.raises(BgpValueError, match="not an IP prefix"):
        parse_prefix("203.0.113.9/33")
    assert str(parse_next_hop("100::1", 6)) == "100::1"
    # The default IPv6 next hop is inside RFC 6666's discard-only prefix.
    assert ipaddress.ip_address(DISCARD_NEXT_HOP_V6) in ipaddress.ip_network("100::/64")
    for bad, reason in (("0.0.0.0", "unspecified"), ("::", "unspecified"), ("127.0.0.1", "loopback"),
                        ("::1", "loopback"), ("224.0.0.1", "multicast"), ("fe80::1", "link-local"),
                        ("192.0.2.300", "not an IP address")):
        with pytest.raises(BgpValueError, match=reason):
            parse_next_hop(bad)
    with pytest.raises(BgpValueError, match="not a next hop for 2001:db8::9/128: it is an IPv4 address"):
        BlackholeRoute.parse("2001:db8::9/128", "192.0.2.1", [])


# --------------------------------------------------------------------------- every edge, one reason

BAD_COMMUNITY = "65001:65536"
COMMUNITY_REASON = "the value after the AS number is 0-65535 (RFC 1997); write a large community a:b:c for more"


def _manager(tmp_path: Path) -> tuple[BlackholeManager, RecordingGoBGP, CollectorRegistry]:
    gobgp, registry = RecordingGoBGP(), CollectorRegistry()
    manager = BlackholeManager(StateDB(f"sqlite:///{tmp_path}/state.db"), gobgp,
                               SafetyPolicy(SafetySettings(max_active=2)), tmp_path / "blackholes.txt",
                               Defaults(), registry)
    return manager, gobgp, registry


def test_every_edge_refuses_a_community_with_the_same_reason(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f'blackhole:\n  communities: ["65535:666", "{BAD_COMMUNITY}"]\n')
    with pytest.raises(ConfigError) as from_config:
        load_config(config)
    assert from_config.value.problems == [
        f"{config}: $.blackhole.communities[1]: '{BAD_COMMUNITY}' is not a BGP community (ASN:VALUE, a:b:c, "
        f"blackhole, no-export or no-advertise): {COMMUNITY_REASON}"]

    rules = tmp_path / "detection.yml"
    rules.write_text(f"- {{name: scan, min_flows: 10, time_window: 60s, action: 'alert,blackhole', "
                     f"blackhole_count: 10, blackhole_time: 600, blackhole_communities: ['{BAD_COMMUNITY}']}}\n")
    with pytest.raises(ConfigError) as from_rules:
        load_rules(rules)
    assert len(from_rules.value.problems) == 1
    assert from_rules.value.problems[0].startswith(f"{rules}: $[0].blackhole_communities[0]: rule 'scan': ")
    assert from_rules.value.problems[0].endswith(COMMUNITY_REASON)

    (tmp_path / "api").mkdir()
    env = make_env(tmp_path / "api")
    answer = env.client.post("/announce", json={"prefix": "203.0.113.9/32", "communities": [BAD_COMMUNITY]},
                             headers=env.headers())
    assert answer.status_code == 422
    assert [p["path"] for p in answer.json()["problems"]] == ["$.communities[0]"]
    assert answer.json()["problems"][0]["reason"].endswith(COMMUNITY_REASON)

    manager, gobgp, registry = _manager(tmp_path)
    with pytest.raises(Refused, match=COMMUNITY_REASON.replace("(", r"\(").replace(")", r"\)")):
        manager.announce("203.0.113.9", communities=[BAD_COMMUNITY])
    assert manager.state.history() == [] and gobgp.held == {}  # nothing stored, nothing announced
    assert registry.get_sample_value("flowenricher_blackhole_refused_total", {"source": "api"}) == 1

    for edge in (lambda: _path("203.0.113.9/32", "192.0.2.1", [BAD_COMMUNITY], None),
                 lambda: gobgp.announce("203.0.113.9/32", "192.0.2.1", [BAD_COMMUNITY])):
        with pytest.raises((BgpValueError, AnnounceRefused)) as caught:
            edge()
        assert str(caught.value).endswith(COMMUNITY_REASON)


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("next_hop_v6", "192.0.2.1", "'192.0.2.1' is not an IPv6 next hop: it is an IPv4 address"),
    ("next_hop_v4", "100::1", "'100::1' is not an IPv4 next hop: it is an IPv6 address"),
    ("next_hop_v4", "127.0.0.1", "'127.0.0.1' is not an IPv4 next hop: a loopback address cannot be a next hop"),
])
def test_config_next_hops_are_per_family(tmp_path: Path, key: str, value: str, reason: str) -> None:
    """No setup can blackhole an IPv6 address without an IPv6 next hop: next_hop_v6 has
    a default of its family and cannot be set to another family."""
    config = tmp_path / "config.yaml"
    config.write_text(f'blackhole:\n  {key}: "{value}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert caught.value.problems == [f"{config}: $.blackhole.{key}: {reason}"]
    config.write_text("")
    settings = load_config(config).blackhole
    assert (settings.next_hop_v4, settings.next_hop_v6) == ("192.0.2.1", "100::1")


def test_rule_next_hop_is_checked(tmp_path: Path) -> None:
    rules = tmp_path / "detection.yml"
    rules.write_text("- {name: scan, min_flows: 10, time_window: 60s, action: 'alert,blackhole', "
                     "blackhole_count: 10, blackhole_time: 600, blackhole_next_hop: 0.0.0.0}\n")
    with pytest.raises(ConfigError) as caught:
        load_rules(rules)
    assert caught.value.problems[0].endswith("the unspecified address cannot be a next hop")


def test_api_refuses_a_next_hop_of_the_other_family(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    answer = env.client.post("/api/v1/blackholes", json={"prefix": "2001:db8::9", "next_hop": "192.0.2.1"},
                             headers=env.headers())
    assert answer.status_code == 422
    assert answer.json()["problems"] == [{"path": "$.next_hop", "reason": "'192.0.2.1' is not a "
                                          "next hop for 2001:db8::9/128: it is an IPv4 address"}]
    assert env.gobgp.held == {}


# --------------------------------------------------------------------------- families of rule next hops


def test_original_rule_next_hop_serves_ipv4_and_ipv6_gets_its_own(tmp_path: Path) -> None:
    """A rule in the original format gives one IPv4 blackhole_next_hop: an IPv6 attacker
    it catches is announced with the configured IPv6 next hop, never the IPv4 one."""
    manager, gobgp, _ = _manager(tmp_path)
    manager.request("198.51.100.66/32", "192.0.2.66", ["65001:666"], 600, "scan", {"key": "src"})
    manager.request("2001:db8:bad::66/128", "192.0.2.66", ["65001:666"], 600, "scan", {"key": "src"})
    assert gobgp.held == {"198.51.100.66/32": ("192.0.2.66", ("65001:666",)),
                          "2001:db8:bad::66/128": ("100::1", ("65001:666",))}
    assert {bh.state for bh in manager.active()} == {"announced"}


# --------------------------------------------------------------------------- failed for good


def _stored_before_the_checks(manager: BlackholeManager, prefix: str, community: str) -> int:
    """A row as an earlier flowenricher stored it, before its values were checked at the
    edge (the issue: 216285:666 then, any unannounceable value now)."""
    return manager.state.add(prefix=prefix, next_hop="192.0.2.1", communities=[community], source="api",
                             rule="", evidence={}, created_at=time.time(), expires_at=None, announced=False).id


def test_a_refused_blackhole_fails_at_once_and_frees_its_slot(tmp_path: Path) -> None:
    manager, gobgp, registry = _manager(tmp_path)  # max_active=2
    manager.announce("203.0.113.1")
    _stored_before_the_checks(manager, "203.0.113.2/32", BAD_COMMUNITY)
    with pytest.raises(Refused, match="the configured maximum is 2"):
        manager.announce("203.0.113.3")
    manager.tick()
    failed = manager.state.history()[0]
    assert failed.state == "failed" and failed.failed_reason.endswith(COMMUNITY_REASON)
    assert [bh.prefix for bh in manager.active()] == ["203.0.113.1/32"]
    for _ in range(3):  # not retried: the double never saw it, counters do not move
        manager.tick()
    assert gobgp.ever == ["203.0.113.1/32"]
    assert registry.get_sample_value("flowenricher_blackhole_failed_total", {"source": "api"}) == 1
    assert registry.get_sample_value("flowenricher_blackhole_gobgp_errors_total") == 0
    assert registry.get_sample_value("flowenricher_blackholes_pending") == 0
    manager.announce("203.0.113.3")  # the slot it held is free
    assert set(gobgp.held) == {"203.0.113.1/32", "203.0.113.3/32"}
    lines = [json.loads(x) for x in (tmp_path / "blackholes.txt").read_text().splitlines()]
    assert [x["action"] for x in lines if x["prefix"] == "203.0.113.2/32"] == ["failed"]


def test_failed_is_listed_with_its_reason_but_not_in_force(tmp_path: Path) -> None:
    env: ApiEnv = make_env(tmp_path)
    _stored_before_the_checks(env.manager, "203.0.113.2/32", BAD_COMMUNITY)
    assert env.client.post("/announce", json={"prefix": "203.0.113.1/32", "communities": ["216285:666"]},
                           headers=env.headers()).status_code == 200
    env.manager.tick()
    listed = env.client.get("/api/v1/blackholes", headers=env.headers(env.reader)).json()
    assert [(b["prefix"], b["state"]) for b in listed] == [("203.0.113.1/32", "confirmed"),
                                                           ("203.0.113.2/32", "failed")]
    assert listed[1]["reason"].endswith(COMMUNITY_REASON) and listed[1]["announced"] is False
    original = env.client.get("/blackholes", headers=env.headers(env.reader)).json()
    assert list(original) == ["203.0.113.1/32"]
    assert original["203.0.113.1/32"]["communities"] == ["216285:666"]  # echoed as written
    # A new request for the prefix replaces the failure in the list.
    assert env.client.post("/announce", json={"prefix": "203.0.113.2/32"}, headers=env.headers()).status_code == 200
    listed = env.client.get("/api/v1/blackholes", headers=env.headers(env.reader)).json()
    assert [(b["prefix"], b["state"]) for b in listed] == [("203.0.113.1/32", "confirmed"),
                                                           ("203.0.113.2/32", "announced")]  # not ticked yet


def test_an_api_announcement_gobgp_refuses_is_a_409_and_listed_failed(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    env.gobgp.refusing = "UNKNOWN: some policy said no"
    answer = env.client.post("/api/v1/blackholes", json={"prefix": "203.0.113.5"}, headers=env.headers())
    assert answer.status_code == 409
    assert answer.json()["detail"] == "203.0.113.5/32 failed, not announced: GoBGP refused it: UNKNOWN: some policy said no"
    listed = env.client.get("/api/v1/blackholes", headers=env.headers(env.reader)).json()
    assert [(b["prefix"], b["state"], b["reason"]) for b in listed] == [
        ("203.0.113.5/32", "failed", "GoBGP refused it: UNKNOWN: some policy said no")]
    assert env.client.get("/blackholes", headers=env.headers(env.reader)).json() == {}
    assert env.manager.active() == []
    assert env.registry.get_sample_value("flowenricher_blackhole_failed_total", {"source": "api"}) == 1
