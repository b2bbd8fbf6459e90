"""Shared parts of the API tests (no tests here): a recording GoBGP stand-in, a real
embedded chDB store with sample flows, and an app built around them with real tokens.

The blackhole manager, state DB, store, token and audit tables are the real ones; only
GoBGP is replaced by a recorder (the gobgpd + BIRD path has its own test).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from appliance.api import ApiDeps, create_app
from appliance.api.tokens import create_token
from appliance.flowenricher.blackhole.manager import BlackholeManager, Defaults
from appliance.flowenricher.blackhole.safety import SafetyPolicy, SafetySettings, networks
from appliance.flowenricher.blackhole.state import StateDB
from appliance.flowenricher.config import Settings, load_config
from appliance.flowenricher.storage import StoreSettings, open_store
from appliance.flowenricher.storage.base import FlowStore

from . import sample_batch
from .recording_gobgp import RecordingGoBGP

HOUR = 3600

# The original README's calls exactly as published (tests/data/examples/README.md, a copy of the published one); the
# tests add the bearer header the appliance requires (see :func:`curl`).
ORIGINAL_CALLS = [
    """curl -X POST http://127.0.0.1:9600/announce -H 'Content-Type: application/json' \
  -d '{"prefix": "149.202.68.236/32", "next_hop": "192.0.2.1", "communities": ["216285:666"]}'""",
    """curl -X POST http://127.0.0.1:9600/withdraw -H 'Content-Type: application/json' \
  -d '{"prefix": "149.202.68.236/32"}'""",
    """curl http://127.0.0.1:9600/blackholes""",
]


def curl(command: str, base: str, token: str) -> tuple[int, Any]:
    """Run one of ORIGINAL_CALLS with curl against `base` (the API's http://host:port)."""
    args = shlex.split(command.replace("http://127.0.0.1:9600", base))
    args[1:1] = ["-sS", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout
    body, _, code = out.rpartition("\n")
    return int(code), json.loads(body)


SAFETY = SafetySettings(never=networks(["84.54.49.1", "192.0.2.0/24"]), own=networks(["84.54.49.0/24"]),
                        max_active=20, max_per_minute=1000)


@contextlib.contextmanager
def flow_store(path: Path, start: int, hours: int = 2, per_hour: int = 3000) -> Iterator[FlowStore]:
    """A real embedded store in `path` with `hours` of sample flows from `start`."""
    store = open_store(StoreSettings(path=str(path)))
    try:
        store.migrate()
        for hour in range(hours):
            store.insert(sample_batch(per_hour, seed=hour, start=start + hour * HOUR))
        yield store
    finally:
        store.close()


@dataclass
class ApiEnv:
    app: FastAPI
    client: TestClient
    manager: BlackholeManager
    gobgp: RecordingGoBGP
    registry: CollectorRegistry
    admin: str
    reader: str
    config_path: Path
    rules_path: Path
    applied_config: list[Settings] = field(default_factory=list)
    applied_rules: list[list[dict[str, Any]]] = field(default_factory=list)

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin}"}


CONFIG_TEXT = """\
# the operator's config
timezone: Europe/Athens
clickhouse:
  password: ""
snmp:
  community: s3cret
my_prefixes: [84.54.49.0/24]
"""

RULES_TEXT = """\
- name: slow_horizontal_scan
  proto: tcp
  same_dst_port: true
  unique_dst_ips: 50
  min_flows: 70
  time_window: 60s
  action: alert
"""


def make_env(tmp_path: Path, store: FlowStore | None = None, clock: Any = None, config_text: str = CONFIG_TEXT,
             rules_text: str = RULES_TEXT, **extra: Any) -> ApiEnv:
    """An app over real parts in `tmp_path`, with one admin and one read token."""
    config_path, rules_path = tmp_path / "config.yaml", tmp_path / "detection.yml"
    config_path.write_text(config_text)
    rules_path.write_text(rules_text)
    settings = load_config(config_path)
    state = StateDB(f"sqlite:///{tmp_path}/state.db")
    registry = CollectorRegistry()
    gobgp = RecordingGoBGP()
    manager = BlackholeManager(state, gobgp, SafetyPolicy(SAFETY), tmp_path / "blackholes.txt",
                               Defaults(communities=("65535:666",)), registry)
    admin = create_token(state.engine, "admin", "ops").token
    reader = create_token(state.engine, "read", "grafana").token
    applied_config: list[Settings] = []
    applied_rules: list[list[dict[str, Any]]] = []
    parts: dict[str, Any] = {
        "query": store.query if store is not None else None, "config_path": config_path, "rules_path": rules_path,
        "apply_config": applied_config.append, "apply_rules": applied_rules.append,
        **({"clock": clock} if clock is not None else {}), **extra,
    }
    deps = ApiDeps(settings=settings, blackholes=manager, registry=registry, **parts)
    app = create_app(deps)
    return ApiEnv(app, TestClient(app), manager, gobgp, registry, admin, reader, config_path, rules_path,
                  applied_config, applied_rules)
