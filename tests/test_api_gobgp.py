"""The original API calls against real GoBGP and BIRD: an announce reaches BIRD's RIB
(what the router would hold), a withdraw removes it.

The app is the real one (create_app) over the real manager, SQLite state and token
tables; the announcer is the production GoBgpAnnouncer talking gRPC to gobgpd in the
test's network namespace (support.bgp_lab), which advertises to BIRD over BGP.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from support.api import CONFIG_TEXT, RULES_TEXT, SAFETY
from support.bgp_lab import BgpLab, bgp_lab_fixture, wait_until

from appliance.api import ApiDeps, create_app
from appliance.api.tokens import create_token
from appliance.flowenricher.bgp.announcer import GoBgpAnnouncer
from appliance.flowenricher.blackhole.manager import BlackholeManager, Defaults
from appliance.flowenricher.blackhole.safety import SafetyPolicy
from appliance.flowenricher.blackhole.state import StateDB
from appliance.flowenricher.config import load_config

__all__ = ["bgp_lab_fixture"]


def test_original_calls_reach_bird(bgp_lab: BgpLab, tmp_path: Path) -> None:
    bgp_lab.start()
    bgp_lab.wait_established()
    (tmp_path / "config.yaml").write_text(CONFIG_TEXT)
    (tmp_path / "detection.yml").write_text(RULES_TEXT)
    state = StateDB(f"sqlite:///{tmp_path}/state.db")
    announcer = GoBgpAnnouncer(bgp_lab.api_target)
    try:
        manager = BlackholeManager(state, announcer, SafetyPolicy(SAFETY), tmp_path / "blackholes.txt", Defaults(),
                                   CollectorRegistry())
        token = create_token(state.engine, "admin", "ops").token
        app = create_app(ApiDeps(settings=load_config(tmp_path / "config.yaml"), blackholes=manager,
                                 registry=CollectorRegistry(), config_path=tmp_path / "config.yaml",
                                 rules_path=tmp_path / "detection.yml"))
        client = TestClient(app, headers={"Authorization": f"Bearer {token}"})
        body = {"prefix": "149.202.68.236/32", "next_hop": "192.0.2.1", "communities": ["65001:666"]}
        assert client.post("/announce", json=body).status_code == 200
        wait_until(lambda: bgp_lab.route("149.202.68.236/32"), "the announced /32 in BIRD")
        route = bgp_lab.route("149.202.68.236/32")
        assert "BGP.next_hop: 192.0.2.1" in route and "(65001,666)" in route, route
        assert list(client.get("/blackholes").json()) == ["149.202.68.236/32"]
        assert client.post("/withdraw", json={"prefix": "149.202.68.236/32"}).status_code == 200
        wait_until(lambda: not bgp_lab.route("149.202.68.236/32"), "the withdrawn /32 gone from BIRD")
        assert client.get("/blackholes").json() == {}
    finally:
        announcer.close()
        state.close()
