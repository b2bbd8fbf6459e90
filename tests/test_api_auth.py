"""Tokens, scopes, the audit log, the body size limit and the refusal of default secrets."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.orm import Session
from support.api import SAFETY, ApiEnv, make_env
from support.recording_gobgp import RecordingGoBGP

from appliance.api import ApiDeps, create_app
from appliance.api.auth import TokenRow
from appliance.api.hardening import insecure_defaults
from appliance.api.tokens import TokenError, create_token, list_tokens, revoke_token
from appliance.flowenricher.blackhole.manager import BlackholeManager
from appliance.flowenricher.blackhole.safety import SafetyPolicy
from appliance.flowenricher.blackhole.state import StateDB
from appliance.flowenricher.config import parse_config
from appliance.flowenricher.errors import ConfigError

ADMIN_CALLS: list[tuple[str, str, object]] = [
    ("POST", "/announce", {"prefix": "203.0.113.5/32"}),
    ("POST", "/withdraw", {"prefix": "203.0.113.5/32"}),
    ("POST", "/api/v1/blackholes", {"prefix": "203.0.113.5/32"}),
    ("DELETE", "/api/v1/blackholes/203.0.113.5/32", None),
    ("PUT", "/api/v1/config", {}),
    ("PUT", "/api/v1/rules", []),
    ("GET", "/api/v1/audit", None),
]
READ_CALLS = ["/blackholes", "/api/v1/blackholes", "/api/v1/blackholes/history", "/api/v1/config", "/api/v1/rules",
              "/metrics", "/api/v1/schemas/config"]


@pytest.fixture
def env(tmp_path: Path) -> ApiEnv:
    return make_env(tmp_path)


def test_missing_unknown_malformed_and_revoked_tokens_get_the_same_401(env: ApiEnv, tmp_path: Path) -> None:
    engine = env.manager.state.engine
    spare = create_token(engine, "admin", "spare")
    token_id, secret = spare.token.split("_", 2)[1:]
    revoke_token(engine, "spare")
    attempts = [
        {}, {"Authorization": "Bearer"}, {"Authorization": "Bearer nonsense"},
        {"Authorization": f"Bearer fe_{token_id}_{secret[:-1]}A"},  # right id, wrong secret
        {"Authorization": "Bearer fe_999_" + secret},  # no such id
        {"Authorization": f"Bearer {spare.token}"},  # revoked
        {"Authorization": f"Token {env.admin}"},  # unknown scheme
    ]
    bodies = set()
    for headers in attempts:
        response = env.client.get("/blackholes", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        bodies.add(response.text)
    assert len(bodies) == 1  # nothing says which part was wrong


def test_scopes(env: ApiEnv) -> None:
    for method, path, body in ADMIN_CALLS:
        response = env.client.request(method, path, json=body, headers=env.headers(env.reader))
        assert response.status_code == 403, path
        assert response.json()["error"] == "forbidden"
    for path in READ_CALLS:
        assert env.client.get(path, headers=env.headers(env.reader)).status_code == 200, path
    assert env.client.get("/health/live").status_code == 200  # no token needed
    assert env.client.get("/health").status_code == 503  # nor here: not ready, this env has no flow store
    assert env.gobgp.held == {}


def test_tokens_are_stored_hashed_and_revocation_is_immediate(env: ApiEnv) -> None:
    engine = env.manager.state.engine
    issued = create_token(engine, "read", None)
    assert issued.name == f"read-{issued.id}" and issued.token.startswith(f"fe_{issued.id}_")
    secret = issued.token.split("_", 2)[2]
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    with Session(engine) as session:
        stored = {row.token_hash for row in session.scalars(select(TokenRow))}
    assert hashlib.sha256(secret.encode()).hexdigest() in stored
    with engine.connect() as conn:  # the secret itself is nowhere in the database
        dump = "\n".join(str(tuple(r)) for r in conn.exec_driver_sql("SELECT * FROM api_tokens"))
    assert secret not in dump
    assert env.client.get("/blackholes", headers=env.headers(issued.token)).status_code == 200
    assert revoke_token(engine, str(issued.id)) == [issued.id]
    assert env.client.get("/blackholes", headers=env.headers(issued.token)).status_code == 401
    assert [t.revoked_at is not None for t in list_tokens(engine)] == [False, False, True]
    with pytest.raises(TokenError, match="no active token"):
        revoke_token(engine, str(issued.id))
    with pytest.raises(TokenError, match="scope"):
        create_token(engine, "root")


def test_basic_auth_with_the_token_as_password_opens_the_status_page(env: ApiEnv) -> None:
    challenge = env.client.get("/")
    assert challenge.status_code == 401 and challenge.headers["www-authenticate"].startswith("Basic realm=")
    assert env.client.get("/", auth=("operator", env.reader)).status_code == 200
    assert env.client.get("/", auth=("operator", "wrong")).status_code == 401


def test_every_mutation_is_audited_with_who_what_and_result(env: ApiEnv) -> None:
    env.client.post("/announce", json={"prefix": "203.0.113.5/32"}, headers=env.headers())
    env.client.post("/announce", json={"prefix": "203.0.113.0/24"}, headers=env.headers())  # refused
    env.client.post("/withdraw", json={"prefix": "203.0.113.5/32"}, headers=env.headers(env.reader))
    env.client.post("/withdraw", json={"prefix": "203.0.113.5/32"})  # no token
    env.client.put("/api/v1/config", content=b"clickhouse:\n  password: hunter2\n  port: nope\n",
                   headers={**env.headers(), "Content-Type": "application/yaml"})
    env.client.get("/blackholes", headers=env.headers())  # reads are not audited
    rows = env.client.get("/api/v1/audit", headers=env.headers()).json()
    seen = [(r["method"], r["path"], r["status"], r["token_name"]) for r in reversed(rows)]
    assert seen == [
        ("POST", "/announce", 200, "ops"),
        ("POST", "/announce", 409, "ops"),
        ("POST", "/withdraw", 403, "grafana"),
        ("POST", "/withdraw", 401, ""),
        ("PUT", "/api/v1/config", 422, "ops"),
    ]
    assert '"prefix":"203.0.113.5/32"' in rows[-1]["body"]
    assert rows[0]["client"] == "testclient"
    assert "hunter2" not in rows[0]["body"] and "password: ********" in rows[0]["body"]


def test_body_limit_413_declared_and_streamed(tmp_path: Path) -> None:
    env = make_env(tmp_path, max_body_bytes=1024)
    big = b"- name: x\n" + b"#" * 2000 + b"\n"
    declared = env.client.post("/api/v1/rules/validate", content=big, headers=env.headers())
    assert declared.status_code == 413 and declared.json()["error"] == "too_large"

    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b"#" * 500

    streamed = env.client.post("/api/v1/rules/validate", content=chunks(), headers=env.headers())
    assert streamed.status_code == 413 and streamed.json()["error"] == "too_large"
    small = env.client.post("/api/v1/rules/validate", content=b"[]", headers=env.headers())
    assert small.status_code == 200
    statuses = [r["status"] for r in env.client.get("/api/v1/audit", headers=env.headers()).json()]
    assert statuses == [200, 413, 413]


def _deps(tmp_path: Path, config: Mapping[str, object], dev_mode: bool = False) -> ApiDeps:
    state = StateDB(f"sqlite:///{tmp_path}/state.db")
    manager = BlackholeManager(state, RecordingGoBGP(), SafetyPolicy(SAFETY), None)
    return ApiDeps(settings=parse_config(config), blackholes=manager, registry=CollectorRegistry(),
                   dev_mode=dev_mode)


def test_refuses_to_start_with_default_secrets_outside_dev_mode(tmp_path: Path) -> None:
    exposed = {"api": {"listen": "0.0.0.0:9600", "allow_plain_http": True}}
    with pytest.raises(ConfigError) as err:
        create_app(_deps(tmp_path, exposed))
    assert err.value.problems[0].startswith("config: $.api.listen: ")
    assert "no API token exists" in err.value.problems[0]
    create_app(_deps(tmp_path, exposed, dev_mode=True))  # dev mode: a warning
    deps = _deps(tmp_path, exposed)
    create_token(deps.blackholes.state.engine, "admin")
    create_app(deps)  # a token exists now
    create_app(_deps(tmp_path, {}))  # loopback without tokens is fine: nothing is exposed

    # Outside dev mode the config itself is refused (tests/data/config_corpus/config-default-secrets.yaml).
    remote = parse_config(yaml.safe_load("clickhouse: {host: ch.example.net}\napi: {dev_mode: true}\n"
                                         "snmp: {targets: [{exporter: 192.0.2.10}, {exporter: 127.0.0.1}]}"))
    problems = insecure_defaults(remote, active_tokens=1)
    assert [p.split(": ")[1] for p in problems] == ["$.clickhouse.password", "$.snmp (target 0, 192.0.2.10)"]
    original = parse_config(yaml.safe_load("clickhouse: {host: localhost, password: ''}"))
    assert insecure_defaults(original, active_tokens=0) == []


def test_token_list_is_a_table_or_json_and_never_shows_a_secret(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from appliance.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(f"storage:\n  path: {tmp_path / 'data'}\n", encoding="utf-8")
    assert main(["token", "create", "--scope", "admin", "--name", "ops admin", "--config", str(config)]) == 0
    assert main(["token", "create", "--scope", "read", "--name", "grafana\nid 9", "--config", str(config)]) == 0
    assert main(["token", "revoke", "ops admin", "--config", str(config)]) == 0
    secrets = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("revoked")]
    assert len(secrets) == 2

    assert main(["token", "list", "--config", str(config)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["ID", "NAME", "SCOPE", "CREATED", "(UTC)", "REVOKED", "(UTC)"]
    assert len(table) == 3  # the name's newline is escaped, not a row of its own
    assert table[1].split()[:4] == ["1", "ops", "admin", "admin"] and table[1].split()[-1].endswith("Z")
    assert table[2].split()[:4] == ["2", "grafana\\nid", "9", "read"] and table[2].endswith("  -")
    assert "TokenInfo" not in "\n".join(table)

    assert main(["token", "list", "--json", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    listed = json.loads(out)
    assert [(t["id"], t["name"], t["scope"], t["active"]) for t in listed] == [
        (1, "ops admin", "admin", False), (2, "grafana\nid 9", "read", True)]
    assert listed[0]["revoked_at"].endswith("Z") and listed[1]["revoked_at"] is None
    assert set(listed[0]) == {"id", "name", "scope", "created_at", "revoked_at", "active"}
    for secret in secrets:
        assert secret not in out and secret not in "\n".join(table)
