"""Backtests through the API (/api/v1/backtest) on both stores, against real parts: a
store holding generated traffic with known attacks, and, for the embedded store, the
control socket the collector serves its queries on (the job's process reads the store
through it, as it does beside `flowenricher run`).

What the tests hold the jobs to: the report equals the CLI's on the same range, rule
line for rule line, and its detections the live engine's; progress is reported while
the job runs; a cancelled job's process is gone; only admin tokens start or cancel; the
range limit, bad rules and the limit of jobs running at once are refused, naming the field.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support import FlowenricherProcess, flowenricher_argv, free_port
from support.api import ApiEnv, make_env
from support.backtest import RULES, SECONDS, T0, store_and_detect
from support.stores import STORE_KINDS, migrated_store

from appliance.flowenricher.control import ControlServer
from appliance.flowenricher.detect.rules import parse_rule_set

TIMING = {"elapsed_s", "flows_per_s", "times_real_time"}
"""Summary fields that depend on the run, not on what was replayed."""


@dataclass
class Served:
    env: ApiEnv
    live: set[Any]
    config_path: Path
    rules_path: Path


def _config_text(kind: str, data: Path, server_port: int | None, **backtest: Any) -> str:
    cfg: dict[str, Any] = {"timezone": "UTC", "storage": {"path": str(data)}, "my_prefixes": ["84.54.49.0/24"],
                           "api": {"backtest": backtest}}
    if kind == "server":
        cfg["clickhouse"] = {"host": "127.0.0.1", "port": server_port}
    return yaml.safe_dump(cfg)


@dataclass
class Stored:
    kind: str
    root: Path
    port: int
    live: set[Any]


@pytest.fixture(scope="module", params=STORE_KINDS)
def stored(request: pytest.FixtureRequest) -> Iterator[Stored]:
    """The attack traffic stored and detected live (once per store kind: it takes a
    minute); for the embedded store, its control socket served as the collector does."""
    kind = request.param
    root = Path(tempfile.mkdtemp(prefix="fe-bt-"))  # a Unix socket's path is limited to 108 bytes
    try:
        with migrated_store(kind, root) as store:
            live = store_and_detect(store, parse_rule_set(RULES), "attacks")
            control = ControlServer(str(root / "data"), store.query) if kind == "embedded" else None
            if control is not None:
                control.start()
            try:
                yield Stored(kind, root, store.settings.port, live)
            finally:
                if control is not None:
                    control.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def served(stored: Stored, tmp_path: Path) -> Iterator[Served]:
    """An app whose config names the store (max_running 1, max_range 1h); its jobs are
    stopped afterwards."""
    text = _config_text(stored.kind, stored.root / "data", stored.port, max_running=1, max_range="1h")
    env = make_env(tmp_path, config_text=text, rules_text=yaml.safe_dump(RULES))
    try:
        yield Served(env, stored.live, env.config_path, env.rules_path)
    finally:
        env.app.state.ctx.backtests.close()


def _wait(env: ApiEnv, job_id: str, until: set[str], timeout: float = 240.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The job once its state is in `until`, and every progress seen on the way."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = env.client.get(f"/api/v1/backtest/{job_id}", headers=env.headers(env.reader))
        assert answer.status_code == 200, answer.text
        job = answer.json()
        seen.append(job["progress"])
        if job["state"] in until:
            return job, seen
        time.sleep(0.05)
    raise AssertionError(f"backtest {job_id} not {until} after {timeout} s: {job}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def test_the_job_reports_what_the_cli_reports(served: Served) -> None:
    env = served.env
    started = env.client.post("/api/v1/backtest", json={"from": T0, "to": T0 + SECONDS}, headers=env.headers())
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["state"] in ("queued", "running") and started.headers["location"] == job["url"]
    done, seen = _wait(env, job["id"], {"done", "failed", "cancelled"})
    assert done["state"] == "done", done
    lines = done["report"]
    summary = lines[0]
    assert summary["kind"] == "summary" and summary["flows"] > 0
    # Progress never goes back and ends at the whole range with every flow.
    shares = [p["share"] for p in seen]
    assert shares == sorted(shares) and done["progress"]["share"] == 1.0
    assert done["progress"]["flows"] == summary["flows"]
    found = {(line["rule"], (key["address"], key.get("dst_addr"), key.get("dst_port")))
             for line in lines if line["kind"] == "rule" for key in line["top_keys"]}
    assert found == served.live
    assert done["detections"] == {line["rule"]: line["detections"] for line in lines if line["kind"] == "rule"}
    cli = subprocess.run([sys.executable, "-m", "appliance.cli", "backtest", "--config", str(served.config_path),
                          "--rules", str(served.rules_path), "--from", str(T0), "--to", str(T0 + SECONDS),
                          "--format", "jsonl"], capture_output=True, text=True, timeout=300, check=False)
    assert cli.returncode == 0, cli.stderr
    expected = [json.loads(line) for line in cli.stdout.splitlines()]
    for line in (expected[0], summary):
        for name in TIMING:
            line.pop(name)
    assert lines == expected
    listed = env.client.get("/api/v1/backtest", headers=env.headers(env.reader)).json()
    assert [item["id"] for item in listed] == [job["id"]] and listed[0]["report"] is None


def test_cancel_stops_the_process_and_one_job_runs_at_a_time(served: Served) -> None:
    """A job with two rules sets and tuning (slower) is cancelled once it has reported
    progress; meanwhile a second job is refused (max_running 1)."""
    env = served.env
    body = {"from": T0, "to": T0 + SECONDS, "tune": 1, "compare": RULES}
    job = env.client.post("/api/v1/backtest", json=body, headers=env.headers()).json()
    second = env.client.post("/api/v1/backtest", json=body, headers=env.headers())
    assert second.status_code == 429, second.text
    assert "api.backtest.max_running (1)" in second.json()["detail"]
    deadline = time.monotonic() + 120
    while True:
        now = env.client.get(f"/api/v1/backtest/{job['id']}", headers=env.headers()).json()
        assert now["state"] in ("queued", "running"), now
        if now["progress"]["flows"] > 0:
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.02)
    assert 0 < now["progress"]["share"] < 1 and now["progress"]["elapsed_s"] > 0
    assert _alive(env.app.state.ctx.backtests.get(job["id"]).pid)
    forbidden = env.client.delete(f"/api/v1/backtest/{job['id']}", headers=env.headers(env.reader))
    assert forbidden.status_code == 403
    cancelled = env.client.delete(f"/api/v1/backtest/{job['id']}", headers=env.headers())
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert not _alive(env.app.state.ctx.backtests.get(job["id"]).pid)
    final = env.client.get(f"/api/v1/backtest/{job['id']}", headers=env.headers(env.reader)).json()
    assert final["state"] == "cancelled" and final["report"] is None
    # The slot is free again.
    again = env.client.post("/api/v1/backtest", json={"from": T0, "to": T0 + 30}, headers=env.headers())
    assert again.status_code == 202, again.text
    assert _wait(env, again.json()["id"], {"done", "failed"})[0]["state"] == "done"


def test_scope_and_bad_input_are_refused_naming_the_field(tmp_path: Path) -> None:
    """No store is needed: every one of these is refused before a job starts."""
    env = make_env(tmp_path, config_text=_config_text("embedded", tmp_path / "data", None, max_range="1h"))
    ok = {"from": "2026-12-01T00:00:00Z", "to": "2026-12-01T00:30:00Z"}
    assert env.client.post("/api/v1/backtest", json=ok, headers=env.headers(env.reader)).status_code == 403
    assert env.client.get("/api/v1/backtest", headers=env.headers(env.reader)).status_code == 200
    assert env.client.get("/api/v1/backtest").status_code == 401

    def refused(body: dict[str, Any]) -> list[dict[str, str]]:
        answer = env.client.post("/api/v1/backtest", json=body, headers=env.headers())
        assert answer.status_code == 422, answer.text
        problems: list[dict[str, str]] = answer.json()["problems"]
        return problems

    (long,) = refused({**ok, "to": "2026-12-01T02:00:01Z"})
    assert long["path"] == "$.to" and "at most 1h (api.backtest.max_range)" in long["reason"]
    assert refused({**ok, "to": ok["from"]}) == [{"path": "$.to", "reason": "must be after `from`"}]
    assert refused({**ok, "from": "yesterday"})[0]["path"] == "$.from"
    bad_rules = refused({**ok, "rules": [{"name": "x", "min_flows": "many"}]})
    assert bad_rules and all(p["path"].startswith("$.rules[0]") for p in bad_rules), bad_rules
    assert refused({**ok, "compare": [{"nme": "typo"}]})[0]["path"].startswith("$.compare[0]")
    assert refused({**ok, "tune": -1})[0]["path"] == "$.tune"
    assert refused({**ok, "rnage": 1})[0]["path"] == "$.rnage"
    assert env.client.get("/api/v1/backtest/nope", headers=env.headers()).status_code == 404
    assert env.client.get("/api/v1/backtest", headers=env.headers()).json() == []


def test_a_backtest_through_the_api_inside_flowenricher_run() -> None:
    """The in-process mode for real: `flowenricher run` serving the API, its embedded
    store, traffic sent to it; the job's process reads the store through the service's
    control socket while the service keeps it, and reports the flows stored."""
    root = Path(tempfile.mkdtemp(prefix="fe-btr-"))  # a Unix socket's path is limited to 108 bytes
    try:
        port, api_port = free_port(), free_port(socket.SOCK_STREAM)
        rules = root / "detection.yml"
        rules.write_text(yaml.safe_dump(RULES))
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump({
            "collectors": {"listeners": [{"address": "127.0.0.1", "port": port, "protocol": "netflow"}],
                           "workers": 1},
            "storage": {"path": str(root / "data")}, "insert": {"batch_size": 5000, "flush_interval_ms": 200},
            "metrics": {"listen": f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"},
            "api": {"listen": f"127.0.0.1:{api_port}"}, "my_prefixes": ["84.54.49.0/24"],
            "detection": {"enable_detection_engine": True, "rules_config": str(rules)}}))
        token = subprocess.run([*flowenricher_argv(), "token", "create", "--scope", "admin", "--config", str(config)],
                               capture_output=True, text=True, timeout=60, check=True).stdout.strip()
        headers, api = {"Authorization": f"Bearer {token}"}, f"http://127.0.0.1:{api_port}"
        service = FlowenricherProcess(root, "run", "run", "--config", str(config))
        try:
            service.wait_for(lambda: "listening:" in service.output(), 90, "the collector listening")
            begun = int(time.time()) - 1
            sent = subprocess.run([*flowenricher_argv(), "generate", "--to", f"127.0.0.1:{port}", "--fps", "3000",
                                   "--duration", "2", "--protocol", "ipfix"], capture_output=True, text=True,
                                  timeout=120, check=False)
            assert sent.returncode == 0, sent.stderr

            def stored() -> int:
                answer = httpx.get(f"{api}/api/v1/flows/top", params={"by": "dst_port", "limit": 5,
                                                                     "from": begun - 60}, headers=headers)
                return sum(r["flows"] for r in answer.json()["rows"]) if answer.status_code == 200 else 0

            service.wait_for(lambda: stored() > 0, 60, "flows stored")
            time.sleep(1)  # the last inserts
            body = {"from": begun - 60, "to": int(time.time()) + 1}
            job = httpx.post(f"{api}/api/v1/backtest", json=body, headers=headers).json()
            deadline = time.monotonic() + 180
            while (now := httpx.get(f"{api}{job['url']}", headers=headers).json())["state"] in ("queued", "running"):
                assert time.monotonic() < deadline, now
                time.sleep(0.2)
            assert now["state"] == "done", now
            summary = now["report"][0]
            assert summary["flows"] > 0 and summary["announcer_calls"] == 0
            assert summary["flows"] == every_stored_flow(api, headers, begun)
        finally:
            assert service.stop() == 0, service.output()[-3000:]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def every_stored_flow(api: str, headers: dict[str, str], begun: int) -> int:
    """Every flow the store holds (all were sent after `begun`, whatever their exporter times)."""
    answer = httpx.get(f"{api}/api/v1/flows/top", params={"by": "proto", "limit": 100, "from": begun - 3600},
                       headers=headers)
    assert answer.status_code == 200, answer.text
    return sum(int(r["flows"]) for r in answer.json()["rows"])
