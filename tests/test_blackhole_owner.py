"""A storer's blackhole requests go to the one owner of announcements.

The owner is the real API (create_app) over the real manager, SQLite state and token
tables, announcing through the production GoBgpAnnouncer to gobgpd in the test's network
namespace, which advertises to BIRD (support.bgp_lab): a route in BIRD is what the router
would hold.  The storer side is the production blackhole action (detect/actions.py) over
OwnerSink, built from a storer's config as `run` builds it (wiring._add_blackholes).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from support.api import CONFIG_TEXT, RULES_TEXT, SAFETY
from support.bgp_lab import BgpLab, bgp_lab_fixture, wait_until

from appliance.api import ApiDeps, create_app
from appliance.api.server import ApiServer
from appliance.api.tokens import create_token
from appliance.flowenricher.blackhole.announcer import GoBgpAnnouncer
from appliance.flowenricher.blackhole.manager import BlackholeManager, Defaults, rule_next_hop
from appliance.flowenricher.blackhole.owner import OwnerSink
from appliance.flowenricher.blackhole.safety import SafetyPolicy
from appliance.flowenricher.blackhole.state import StateDB
from appliance.flowenricher.config import load_config, parse_config
from appliance.flowenricher.detect.actions import BlackholeAction, build_actions
from appliance.flowenricher.detect.detection import Detection
from appliance.flowenricher.detect.rules import Rule
from appliance.flowenricher.detect.rules_file import parse_rules
from appliance.flowenricher.errors import ConfigError
from appliance.flowenricher.service import Runtime
from appliance.flowenricher.wiring import _add_blackholes

__all__ = ["bgp_lab_fixture"]

RULE = Rule.from_validated(parse_rules([{
    "name": "udp_flood_victim", "key": "dst", "proto": "udp", "min_pps": 1000, "time_window": "10s",
    "action": "alert,blackhole", "blackhole_count": 1, "blackhole_next_hop": "192.0.2.1",
    "blackhole_communities": ["65001:666"], "blackhole_time": 600}])[0])


def detection(victim: str) -> Detection:
    now = time.time()
    return Detection(rule=RULE.name, key="dst", address=victim, detected_at=now, window_s=10.0, flows=40,
                     packets=200_000, bytes=120_000_000, pps=20_000.0, bps=96e6, syn_ratio=0.0, first_seen=now - 10,
                     last_seen=now, actions=("alert", "blackhole"), blackhole=True)


def storer_config(tmp_path: Path, url: str, token: str, **owner: object) -> dict[str, object]:
    (tmp_path / "owner.token").write_text(token + "\n")
    return {"api": {"enabled": False},
            "blackhole": {"owner": {"url": url, "token_file": str(tmp_path / "owner.token"), **owner}}}


@contextmanager
def owner(tmp_path: Path, lab: BgpLab | None, port: int = 0) -> Iterator[tuple[str, str, BlackholeManager]]:
    """The owner: (base URL, an admin token, its manager), announcing to `lab`'s gobgpd, or
    without `lab` through an announcer nobody answers (for requests the policy refuses)."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.yaml").write_text(CONFIG_TEXT)
    (tmp_path / "detection.yml").write_text(RULES_TEXT)
    state = StateDB(f"sqlite:///{tmp_path}/state.db")
    announcer = GoBgpAnnouncer(lab.api_target if lab is not None else "127.0.0.1:9")
    manager = BlackholeManager(state, announcer, SafetyPolicy(SAFETY), tmp_path / "blackholes.txt", Defaults(),
                               CollectorRegistry())
    manager.start()
    server: ApiServer | None = None
    try:
        token = create_token(state.engine, "admin", "storer-1").token
        app = create_app(ApiDeps(settings=load_config(tmp_path / "config.yaml"), blackholes=manager,
                                 registry=CollectorRegistry(), config_path=tmp_path / "config.yaml",
                                 rules_path=tmp_path / "detection.yml"))
        server = ApiServer(app, "127.0.0.1", port)
        server.start()
        yield f"http://127.0.0.1:{server.port}", token, manager
    finally:
        if server is not None:
            server.stop()
        manager.close()
        announcer.close()
        state.close()


def storer_sink(tmp_path: Path, url: str, token: str, registry: CollectorRegistry, **owner: object) -> OwnerSink:
    """The sink `run` builds from a storer's config (the same wiring function)."""
    cfg = parse_config(storer_config(tmp_path, url, token, **owner))
    runtime = Runtime()
    _add_blackholes(runtime, cfg, registry, lambda sql, fmt: b"")
    assert isinstance(runtime.blackholes, OwnerSink)
    return runtime.blackholes


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_a_storers_detection_is_announced_by_the_owner_and_reaches_bird(bgp_lab: BgpLab, tmp_path: Path) -> None:
    """The owner's API is down when the storer detects: the blackhole action retries until
    the owner is up, the owner's manager announces through GoBGP, and BIRD holds the route
    with the rule's next hop and community; the owner lists it with the rule and the
    storer's evidence and token name."""
    bgp_lab.start()
    bgp_lab.wait_established()
    registry = CollectorRegistry()
    with socket.socket() as probe:  # a free port nobody listens on until the owner starts on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    owner_dir = tmp_path / "owner"
    owner_dir.mkdir()
    state = StateDB(f"sqlite:///{owner_dir}/state.db")  # the storer's token exists before it starts
    token = create_token(state.engine, "admin", "storer-1").token
    state.close()
    started = threading.Event()
    holder: dict[str, object] = {}

    def serve() -> None:
        time.sleep(2.5)  # the first tries find nobody
        with owner(owner_dir, bgp_lab, port) as (_, _, manager):
            holder["manager"] = manager
            started.set()
            while not holder.get("done"):
                time.sleep(0.1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        sink = storer_sink(tmp_path, f"http://127.0.0.1:{port}", token, registry)
        (action,) = build_actions(registry, blackhole_sink=sink, blackhole_attempts=sink.attempts)
        assert isinstance(action, BlackholeAction)
        action.handle(RULE, detection("84.54.49.77"))
        assert action.flush(30.0), "the request was not delivered within 30 s"
        assert started.is_set()
        assert sample(registry, "flowenricher_blackhole_owner_requests_total", result="failed") >= 1
        assert sample(registry, "flowenricher_blackhole_owner_requests_total", result="announced") == 1
        wait_until(lambda: bgp_lab.route("84.54.49.77/32"), "the storer's blackhole in BIRD")
        route = bgp_lab.route("84.54.49.77/32")
        assert "BGP.next_hop: 192.0.2.1" in route, route
        assert "(65001,666)" in route, route
        manager = holder["manager"]
        assert isinstance(manager, BlackholeManager)
        (active,) = manager.active()
        assert (active.prefix, active.source, active.rule) == ("84.54.49.77/32", "rule", RULE.name)
        evidence = active.evidence
        assert evidence["key"] == "dst" and evidence["requested_by"] == "storer-1", evidence
        action.close()
    finally:
        holder["done"] = True
        thread.join(15)


def test_a_refusal_is_counted_and_not_retried_and_a_bad_token_is_rejected(tmp_path: Path) -> None:
    """The owner's safety policy refuses an address on its never list: one request, a 409,
    counted as refused, nothing announced.  A token the owner does not know: rejected,
    given up at once (not retried), counted."""
    with owner(tmp_path / "owner", None) as (base, token, manager):
        registry = CollectorRegistry()
        sink = storer_sink(tmp_path, base, token, registry)
        (action,) = build_actions(registry, blackhole_sink=sink, blackhole_attempts=sink.attempts)
        assert isinstance(action, BlackholeAction)
        action.handle(RULE, detection("84.54.49.1"))  # on the owner's never list
        assert action.flush(10.0)
        assert sample(registry, "flowenricher_blackhole_owner_requests_total", result="refused") == 1
        assert sample(registry, "flowenricher_blackhole_owner_requests_total", result="failed") == 0
        assert manager.active() == []
        action.close()

        registry = CollectorRegistry()
        sink = storer_sink(tmp_path, base, "fe_not_a_token_of_the_owner", registry)
        (action,) = build_actions(registry, blackhole_sink=sink, blackhole_attempts=sink.attempts)
        assert isinstance(action, BlackholeAction)
        action.handle(RULE, detection("84.54.49.78"))
        assert action.flush(10.0)
        assert sample(registry, "flowenricher_blackhole_owner_requests_total", result="rejected") == 1
        assert sample(registry, "flowenricher_detection_deliveries_dropped_total", action="blackhole",
                      reason="refused") == 1
        assert manager.active() == []
        action.close()


def test_a_storers_config_is_checked(tmp_path: Path) -> None:
    """Every entry point's one check: the owner needs api.enabled false; plain HTTP only to
    this machine; a token file that cannot be read stops `run` at start, naming it."""
    ok = storer_config(tmp_path, "https://owner.example.net:9600", "t")
    parse_config(ok)
    with pytest.raises(ConfigError) as err:
        parse_config({**ok, "api": {}})
    assert any("$.blackhole.owner" in p and "api.enabled: false" in p for p in err.value.problems), err.value
    with pytest.raises(ConfigError) as err:
        parse_config(storer_config(tmp_path, "http://owner.example.net:9600", "t"))
    assert any("$.blackhole.owner.url" in p and "plain HTTP" in p for p in err.value.problems), err.value
    with pytest.raises(ConfigError) as err:
        parse_config(storer_config(tmp_path, "ftp://owner.example.net", "t"))
    assert any("$.blackhole.owner.url" in p for p in err.value.problems), err.value
    with pytest.raises(ConfigError) as err:
        parse_config(storer_config(tmp_path, "https://owner.example.net:9600", "t", attempts=0))
    assert any("$.blackhole.owner.attempts" in p for p in err.value.problems), err.value
    cfg = parse_config(storer_config(tmp_path, "http://127.0.0.1:9600", "t"))
    (tmp_path / "owner.token").write_text("\n")
    with pytest.raises(ConfigError, match=r"owner\.token: holds no token"):
        OwnerSink(cfg.blackhole.owner)  # type: ignore[arg-type]
    (tmp_path / "owner.token").unlink()
    with pytest.raises(ConfigError, match=r"owner\.token: cannot be read"):
        OwnerSink(cfg.blackhole.owner)  # type: ignore[arg-type]


def test_a_rules_next_hop_serves_its_own_family() -> None:
    """The owner treats a storer's request as its own rules': an IPv4 next hop (the
    original format's only kind) gives way to the configured one for an IPv6 victim."""
    assert rule_next_hop("2001:db8::7/128", "192.0.2.1") is None
    assert rule_next_hop("198.51.100.7/32", "192.0.2.1") == "192.0.2.1"
    assert rule_next_hop("2001:db8::7/128", "100::1") == "100::1"
    assert rule_next_hop("198.51.100.7/32", None) is None
