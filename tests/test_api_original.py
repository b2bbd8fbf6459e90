"""The original flowenricher calls (tests/data/examples/README.md, a copy of the published one) keep working, over real
HTTP with curl, and the versioned blackhole API around the same manager."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from support.api import ORIGINAL_CALLS, ApiEnv, curl, make_env

from appliance.api.server import ApiServer


@pytest.fixture
def env(tmp_path: Path) -> ApiEnv:
    return make_env(tmp_path)


def test_original_calls_with_curl_over_http(env: ApiEnv) -> None:
    server = ApiServer(env.app, "127.0.0.1", 0)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        announce, withdraw, listing = ORIGINAL_CALLS

        code, body = curl(announce, base, env.admin)
        assert code == 200
        assert env.gobgp.held == {"149.202.68.236/32": ("192.0.2.1", ("216285:666",))}

        code, body = curl(listing, base, env.reader)
        assert code == 200 and isinstance(body, dict)
        entry = body["149.202.68.236/32"]
        assert {k: entry[k] for k in ("prefix", "next_hop", "communities")} == {
            "prefix": "149.202.68.236/32", "next_hop": "192.0.2.1", "communities": ["216285:666"]}
        stamp = datetime.fromisoformat(entry["timestamp"])  # RFC 3339 with the configured zone's offset
        assert stamp.utcoffset() == stamp.astimezone(ZoneInfo("Europe/Athens")).utcoffset()
        assert entry["timestamp"][-6] in "+-" and entry["timestamp"][-3] == ":"

        code, body = curl(withdraw, base, env.admin)
        assert code == 200 and body == {"prefix": "149.202.68.236/32", "status": "withdrawn"}
        assert env.gobgp.held == {}
        assert curl(listing, base, env.reader) == (200, {})
        code, body = curl(listing, base, "fe_1_" + "x" * 43)
        assert code == 401
    finally:
        server.stop()


@pytest.mark.parametrize(("body", "path", "words"), [
    ({"prefix": "149.202.68.236/33"}, "$.prefix", "not an IP prefix"),
    ({"prefix": "149.202.68.1/24"}, "$.prefix", "host bits are set (did you mean 149.202.68.0/24?)"),
    ({"prefix": "example.com"}, "$.prefix", "neither an address nor address/length"),
    ({"prefix": "149.202.68.236/32", "next_hop": "192.0.2"}, "$.next_hop", "not an IP address"),
    ({"prefix": "149.202.68.236/32", "next_hop": "100::1"}, "$.next_hop", "it is an IPv6 address"),
    ({"prefix": "149.202.68.236/32", "communities": ["666"]}, "$.communities[0]", "not a BGP community"),
    ({"prefix": "149.202.68.236/32", "communities": ["65535:70000"]}, "$.communities[0]", "after the AS number is 0-65535"),
    ({"prefix": "149.202.68.236/32", "communities": ["1:2:4294967296"]}, "$.communities[0]", "is 0-4294967295"),
    ({"prefix": "149.202.68.236/32", "nexthop": "192.0.2.1"}, "$.nexthop", "Extra inputs"),
    ({}, "$.prefix", "Field required"),
])
def test_malformed_announcements_are_422_with_the_path(env: ApiEnv, body: dict[str, object], path: str,
                                                        words: str) -> None:
    response = env.client.post("/announce", json=body, headers=env.headers())
    assert response.status_code == 422
    problems = response.json()["problems"]
    assert any(p["path"] == path and words in p["reason"] for p in problems), problems
    assert env.gobgp.held == {}


@pytest.mark.parametrize(("prefix", "rule"), [
    ("149.202.68.0/24", "shorter than /32"),
    ("84.54.49.1", "never-blackhole list"),
])
def test_safety_refusal_is_409_naming_the_rule(env: ApiEnv, prefix: str, rule: str) -> None:
    response = env.client.post("/announce", json={"prefix": prefix}, headers=env.headers())
    assert response.status_code == 409
    assert response.json()["error"] == "refused" and rule in response.json()["detail"]
    assert env.gobgp.held == {}


def test_bare_address_defaults_and_unknown_withdraw(env: ApiEnv) -> None:
    response = env.client.post("/announce", json={"prefix": "2001:db8::7"}, headers=env.headers())
    assert response.status_code == 200
    assert response.json()["prefix"] == "2001:db8::7/128"
    assert env.gobgp.held == {"2001:db8::7/128": ("100::1", ("65535:666",))}
    missing = env.client.post("/withdraw", json={"prefix": "198.51.100.9/32"}, headers=env.headers())
    assert missing.status_code == 404 and "not blackholed" in missing.json()["detail"]


def test_v1_blackholes_with_expiry_history_and_evidence(env: ApiEnv) -> None:
    manual = env.client.post("/api/v1/blackholes", json={"prefix": "203.0.113.9/32", "duration_s": 600},
                             headers=env.headers())
    assert manual.status_code == 200
    body = manual.json()
    created = datetime.fromisoformat(body["created_at"])
    assert (datetime.fromisoformat(body["expires_at"]) - created).total_seconds() == pytest.approx(600)
    assert body["source"] == "api" and body["evidence"]["requested_by"] == "ops"

    evidence = {"key": "src", "flows": 812, "unique_dst_ips": 77}
    env.manager.request("198.51.100.66", None, ["65001:666"], 3600, "slow_horizontal_scan", evidence)
    active = env.client.get("/api/v1/blackholes", headers=env.headers(env.reader)).json()
    assert [b["prefix"] for b in active] == ["203.0.113.9/32", "198.51.100.66/32"]

    gone = env.client.delete("/api/v1/blackholes/198.51.100.66/32", headers=env.headers())
    assert gone.status_code == 200 and gone.json()["withdrawn_at"] is not None
    history = env.client.get("/api/v1/blackholes/history", headers=env.headers(env.reader)).json()
    by_prefix = {b["prefix"]: b for b in history}
    assert by_prefix["198.51.100.66/32"]["rule"] == "slow_horizontal_scan"
    assert by_prefix["198.51.100.66/32"]["evidence"] == evidence
    assert by_prefix["198.51.100.66/32"]["withdrawn_at"] is not None
    assert by_prefix["203.0.113.9/32"]["withdrawn_at"] is None
    assert set(env.gobgp.held) == {"203.0.113.9/32"}
    bad = env.client.delete("/api/v1/blackholes/not-a-prefix", headers=env.headers())
    assert bad.status_code == 422 and bad.json()["problems"][0]["path"] == "path.prefix"
