"""Config and rules through the API: validated by the schemas, saved atomically, applied;
a failure leaves the running settings and the files as they were."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from support.api import CONFIG_TEXT, RULES_TEXT, ApiEnv, make_env

from appliance.flowenricher.common.private import write_atomic
from appliance.flowenricher.config import load_config
from appliance.flowenricher.errors import ConfigError

YAML = {"Content-Type": "application/yaml"}


@pytest.fixture
def env(tmp_path: Path) -> ApiEnv:
    return make_env(tmp_path)


def test_get_config_masks_secrets_and_shows_defaults(env: ApiEnv) -> None:
    body = env.client.get("/api/v1/config", headers=env.headers(env.reader)).json()
    assert body["path"] == str(env.config_path)
    assert body["config"]["snmp"] == {"community": "********"}
    assert body["config"]["clickhouse"] == {"password": ""}  # empty: nothing to hide
    assert body["effective"]["api"]["listen"] == "127.0.0.1:9600"
    assert "s3cret" not in str(body)


def test_yaml_replacement_is_saved_as_sent_and_applied(env: ApiEnv) -> None:
    text = CONFIG_TEXT.replace("timezone: Europe/Athens", "timezone: UTC  # changed through the API")
    text = text.replace("community: s3cret", "community: n3w")
    response = env.client.put("/api/v1/config", content=text, headers={**env.headers(), **YAML})
    assert response.status_code == 200, response.text
    assert env.config_path.read_text() == text  # comments kept
    assert [s.timezone for s in env.applied_config] == ["UTC"]
    assert env.applied_config[0].snmp.community == "n3w"
    assert load_config(env.config_path).timezone == "UTC"
    assert env.client.get("/api/v1/config", headers=env.headers()).json()["config"]["timezone"] == "UTC"
    assert list(env.config_path.parent.glob(".config.yaml.*")) == []  # no temporary file left


def test_masked_secrets_round_trip_keeps_the_current_value(env: ApiEnv) -> None:
    current = env.client.get("/api/v1/config", headers=env.headers()).json()["config"]
    current["my_prefixes"] = ["84.54.49.0/24", "2a14:4280::/29"]
    response = env.client.put("/api/v1/config", json=current, headers=env.headers())
    assert response.status_code == 200, response.text
    saved = yaml.safe_load(env.config_path.read_text())
    assert saved["snmp"]["community"] == "s3cret"
    assert env.applied_config[-1].snmp.community == "s3cret"
    assert [str(p) for p in env.applied_config[-1].my_prefixes] == ["84.54.49.0/24", "2a14:4280::/29"]

    no_secret = {"clickhouse": {"password": "********"}}
    refused = env.client.put("/api/v1/config", json=no_secret, headers=env.headers())
    assert refused.status_code == 422
    assert refused.json()["problems"] == [{"path": "$.clickhouse.password",
                                           "reason": "'********' keeps the current secret, but there is none"}]


@pytest.mark.parametrize(("body", "headers", "expected"), [
    ({"timezone": "Mars/Base", "clickhouse": {"port": "x"}, "colectors": {}}, {}, [
        ("$.timezone", "'Mars/Base' is not an IANA time zone"),
        ("$.clickhouse.port", "'x' is not of type 'integer'"),
        ("$.colectors", "unknown key (did you mean 'collectors'?)"),
    ]),
    (b"timezone: UTC\ntimezone: UTC\n", YAML, [("line 2", "duplicate key 'timezone' (first on line 1)")]),
    (b"collectors: [\n", YAML, [("line 2, column 1", "YAML syntax error")]),
    (b"{not json", {"Content-Type": "application/json"}, [("$", "Expecting property name")]),
    (b"- a list\n", YAML, [("$", "is not of type 'object'")]),
])
def test_invalid_config_is_422_and_changes_nothing(env: ApiEnv, body: Any, headers: dict[str, str],
                                                   expected: list[tuple[str, str]]) -> None:
    before = env.config_path.read_text()
    kwargs: dict[str, Any] = {"json": body} if isinstance(body, dict) else {"content": body}
    response = env.client.put("/api/v1/config", headers={**env.headers(), **headers}, **kwargs)
    assert response.status_code == 422, response.text
    problems = [(p["path"], p["reason"]) for p in response.json()["problems"]]
    assert len(problems) == len(expected), problems
    for (path, reason), (want_path, want_words) in zip(problems, expected, strict=True):
        assert path == want_path and want_words in reason, problems
    assert env.config_path.read_text() == before
    assert env.applied_config == []
    assert env.client.get("/api/v1/config", headers=env.headers()).json()["config"]["timezone"] == "Europe/Athens"


def test_validate_only_saves_nothing(env: ApiEnv) -> None:
    before = env.config_path.read_text()
    ok = env.client.post("/api/v1/config/validate", content=b"timezone: UTC\n", headers={**env.headers(), **YAML})
    assert ok.status_code == 200 and ok.json() == {"valid": True, "detail": "the config is valid"}
    bad = env.client.post("/api/v1/config/validate", json={"insert": {"batch_size": 0}},
                          headers=env.headers(env.reader))
    assert bad.status_code == 422 and bad.json()["problems"][0]["path"] == "$.insert.batch_size"
    assert env.config_path.read_text() == before and env.applied_config == []


def test_service_refusal_restores_the_file(tmp_path: Path) -> None:
    def refuse(_settings: Any) -> None:
        raise ConfigError(["config: $.collectors.workers: changing the workers needs a restart"])

    env = make_env(tmp_path, apply_config=refuse)
    before = env.config_path.read_text()
    response = env.client.put("/api/v1/config", json={"collectors": {"workers": 3}}, headers=env.headers())
    assert response.status_code == 422
    assert response.json()["problems"] == [{"path": "$.collectors.workers",
                                            "reason": "changing the workers needs a restart"}]
    assert env.config_path.read_text() == before

    def crash(_settings: Any) -> None:
        raise RuntimeError("listener thread died")

    env.app.state.ctx.files._apply_config = crash
    response = env.client.put("/api/v1/config", json={"timezone": "UTC"}, headers=env.headers())
    assert response.status_code == 500 and "listener thread died" in response.json()["detail"]
    assert env.config_path.read_text() == before


def test_rules_replace_validate_and_refuse(env: ApiEnv) -> None:
    assert env.client.get("/api/v1/rules", headers=env.headers()).json()["rules"][0]["name"] == "slow_horizontal_scan"
    new = RULES_TEXT + ("- name: udp_flood\n  proto: udp\n  same_dst_ip: true\n  min_flows: 1000\n"
                        "  time_window: 10s\n  action: alert\n")
    response = env.client.put("/api/v1/rules", content=new, headers={**env.headers(), **YAML})
    assert response.status_code == 200, response.text
    assert [r["name"] for r in response.json()["rules"]] == ["slow_horizontal_scan", "udp_flood"]
    assert env.rules_path.read_text() == new
    assert [[r["name"] for r in rules] for rules in env.applied_rules] == [["slow_horizontal_scan", "udp_flood"]]

    duplicate = [{"name": "a", "min_flows": 5, "action": "alert"}, {"name": "a", "time_window": "0s", "action": "alert"}]
    refused = env.client.put("/api/v1/rules", json=duplicate, headers=env.headers())
    assert refused.status_code == 422
    paths = [p["path"] for p in refused.json()["problems"]]
    assert "$[1].name" in paths and "$[1].time_window" in paths
    assert env.rules_path.read_text() == new and len(env.applied_rules) == 1
    checked = env.client.post("/api/v1/rules/validate", json={"rules": []}, headers=env.headers(env.reader))
    assert checked.json() == {"valid": True, "detail": "0 valid rules"}


def test_no_file_to_replace_is_409(tmp_path: Path) -> None:
    env = make_env(tmp_path, config_path=None)
    response = env.client.put("/api/v1/config", json={}, headers=env.headers())
    assert response.status_code == 409 and "--config" in response.json()["detail"]


def test_write_atomic_keeps_permissions(tmp_path: Path) -> None:
    target = tmp_path / "config.yaml"
    target.write_text("old")
    target.chmod(0o640)
    write_atomic(target, "new")
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
