"""The original API calls against real GoBGP and BIRD: an announce reaches BIRD's RIB
(what the router would hold), with its communities as announced, and a withdraw
removes it.

The app is the real one (create_app) over the real manager, SQLite state and token
tables; the announcer is the production GoBgpAnnouncer talking gRPC to gobgpd in the
test's network namespace (support.bgp_lab), which advertises to BIRD over BGP.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry
from support.api import CONFIG_TEXT, ORIGINAL_CALLS, RULES_TEXT, SAFETY, curl
from support.bgp_lab import BgpLab, bgp_lab_fixture, wait_until

from appliance.api import ApiDeps, create_app
from appliance.api.server import ApiServer
from appliance.api.tokens import create_token
from appliance.flowenricher.blackhole.announcer import GoBgpAnnouncer
from appliance.flowenricher.blackhole.manager import BlackholeManager, Defaults
from appliance.flowenricher.blackhole.safety import SafetyPolicy
from appliance.flowenricher.blackhole.state import StateDB
from appliance.flowenricher.config import load_config

__all__ = ["bgp_lab_fixture"]


def test_original_readme_calls_reach_bird(bgp_lab: BgpLab, tmp_path: Path) -> None:
    """The README's three curl calls verbatim, over HTTP: ``216285:666`` (a 32-bit ASN, no
    RFC 1997 community) reaches BIRD as the large community (216285, 666, 0), the
    listing echoes it as written, and the withdrawal removes the route."""
    bgp_lab.start()
    bgp_lab.wait_established()
    (tmp_path / "config.yaml").write_text(CONFIG_TEXT)
    (tmp_path / "detection.yml").write_text(RULES_TEXT)
    state = StateDB(f"sqlite:///{tmp_path}/state.db")
    announcer = GoBgpAnnouncer(bgp_lab.api_target)
    server: ApiServer | None = None
    manager: BlackholeManager | None = None
    try:
        manager = BlackholeManager(state, announcer, SafetyPolicy(SAFETY), tmp_path / "blackholes.txt", Defaults(),
                                   CollectorRegistry())
        manager.start()  # the check thread, as the service runs it
        token = create_token(state.engine, "admin", "ops").token
        app = create_app(ApiDeps(settings=load_config(tmp_path / "config.yaml"), blackholes=manager,
                                 registry=CollectorRegistry(), config_path=tmp_path / "config.yaml",
                                 rules_path=tmp_path / "detection.yml"))
        server = ApiServer(app, "127.0.0.1", 0)
        server.start()
        base = f"http://127.0.0.1:{server.port}"
        announce, withdraw, listing = ORIGINAL_CALLS

        code, body = curl(announce, base, token)
        assert code == 200 and body["communities"] == ["216285:666"], body
        wait_until(lambda: bgp_lab.route("149.202.68.236/32"), "the announced /32 in BIRD")
        route = bgp_lab.route("149.202.68.236/32")
        assert "BGP.next_hop: 192.0.2.1" in route, route
        assert "BGP.large_community: (216285, 666, 0)" in route, route
        assert "BGP.community:" not in route, route  # nothing else was made of it
        code, body = curl(listing, base, token)
        assert code == 200 and list(body) == ["149.202.68.236/32"]
        assert body["149.202.68.236/32"]["communities"] == ["216285:666"]
        # No tick: the check thread alone confirms it, within the second of the target.
        v1 = "curl http://127.0.0.1:9600/api/v1/blackholes"
        wait_until(lambda: [b["state"] for b in curl(v1, base, token)[1]] == ["confirmed"],
                   "the announced /32 confirmed in /api/v1/blackholes", timeout=2.0)
        (shown,) = curl(v1, base, token)[1]
        took = datetime.fromisoformat(shown["confirmed_at"]) - datetime.fromisoformat(shown["created_at"])
        assert took.total_seconds() < 1.0, shown

        assert curl(withdraw, base, token)[0] == 200
        wait_until(lambda: not bgp_lab.route("149.202.68.236/32"), "the withdrawn /32 gone from BIRD")
        assert curl(listing, base, token) == (200, {})
    finally:
        if server is not None:
            server.stop()
        if manager is not None:
            manager.close()
        announcer.close()
        state.close()
