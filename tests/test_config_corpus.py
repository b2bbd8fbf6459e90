"""One verdict for every entry point: a config or rules file that one of them accepts,
none refuses, and a problem reads the same wherever it is reported.

Each file of tests/data/config_corpus/ is a case: ``config-*`` and ``valid-config-*`` are
config files, ``rules-*`` and ``valid-rules-*`` rules files.  Its ``# expect:`` comment
lines are the problems (JSON path, reason) every entry point must report, in that order;
a file without them must be accepted.  A regression is a new file.

The entry points: the Ansible role's gate (the exact ``validate`` command line of
roles/flowenricher/tasks/config.yml, which is ``flowenricher validate``), the API's
validate and PUT routes (the real app, create_app), and ``flowenricher run``: for every
case, the run command itself up to the point where it starts the service (only the start
is replaced), and for a few cases the real ``run`` process, refusing at start or
starting and stopped by its PID.  Each names the document its own way (the file path, or
``config``/``rules`` in the API): only that prefix is removed before comparing.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from support import FlowenricherProcess, flowenricher_argv, free_port
from support.api import ApiEnv, make_env

from appliance.flowenricher import cli, service

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "data" / "config_corpus"
CASES = sorted(CORPUS.glob("*.yaml"))
ROLE_TASKS = REPO / "roles" / "flowenricher" / "tasks" / "config.yml"
YAML = {"Content-Type": "application/yaml"}
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")

Kind = Literal["config", "rules"]


@dataclass(frozen=True)
class Verdict:
    """What an entry point said: accepted, or refused with these problem lines
    (``$.path: reason``, the document's name removed)."""

    accepted: bool
    problems: tuple[str, ...] = ()


def kind_of(case: Path) -> Kind:
    return "rules" if case.name.startswith(("rules-", "valid-rules-")) else "config"


def expected(case: Path) -> Verdict:
    lines = tuple(line.removeprefix("# expect: ") for line in case.read_text().splitlines()
                  if line.startswith("# expect: "))
    return Verdict(not lines, lines)


def named_problems(output: str, source: str) -> tuple[str, ...]:
    """The problem lines of a command's stderr about `source`, its name removed; log
    lines (a refusal logged by the service) count by the message they carry."""
    prefix = f"{source}: "
    return tuple(line.split(prefix, 1)[1] for line in output.splitlines() if prefix in line)


def test_the_corpus_covers_what_the_issue_asks() -> None:
    broken = [case for case in CASES if not case.name.startswith("valid-")]
    assert len(broken) >= 25
    assert {kind_of(case) for case in broken} == {"config", "rules"}
    assert all(not expected(case).accepted for case in broken), "a broken case without # expect: lines"
    assert [case for case in CASES if case.name.startswith("valid-") and not expected(case).accepted] == []


# --------------------------------------------------------------------------- entry points


def _gate_commands() -> dict[Kind, list[str]]:
    """The role's ``validate:`` command lines, with the venv's console script replaced by
    this environment's (``%s`` stays: Ansible puts the candidate file there)."""
    commands: dict[Kind, list[str]] = {}
    for task in yaml.safe_load(ROLE_TASKS.read_text()):
        line = (task.get("ansible.builtin.copy") or {}).get("validate", "")
        if "flowenricher" in line:
            script = "{{ flowenricher_venv }}/bin/flowenricher "
            assert line.startswith(script), line
            argv = shlex.split(line.removeprefix(script))
            commands["rules" if "--rules" in argv else "config"] = [*flowenricher_argv(), *argv]
    assert set(commands) == {"config", "rules"}, f"the role's gate changed: {ROLE_TASKS}"
    return commands


GATE = _gate_commands()


def ansible_gate(case: Path, workdir: Path) -> Verdict:
    """`flowenricher validate` exactly as the role runs it before installing a file."""
    argv = [str(case) if arg == "%s" else arg for arg in GATE[kind_of(case)]]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=workdir)
    assert done.returncode in (0, 2), f"{argv} exited {done.returncode}:\n{done.stderr}"
    problems = named_problems(done.stderr, str(case))
    assert (done.returncode == 2) == bool(problems), done.stderr  # every refusal names the file
    return Verdict(done.returncode == 0, problems)


def _api_verdict(response: Any) -> Verdict:
    if response.status_code == 200:
        return Verdict(True)
    assert response.status_code == 422, response.text
    return Verdict(False, tuple(f"{p['path']}: {p['reason']}" for p in response.json()["problems"]))


def api_validate(env: ApiEnv, case: Path) -> Verdict:
    response = env.client.post(f"/api/v1/{kind_of(case)}/validate", content=case.read_bytes(),
                               headers={**env.headers(), **YAML})
    return _api_verdict(response)


def api_put(env: ApiEnv, case: Path) -> Verdict:
    """PUT, and what a user sees of it: the file replaced as sent, or left as it was."""
    target = env.config_path if kind_of(case) == "config" else env.rules_path
    before = target.read_text()
    response = env.client.put(f"/api/v1/{kind_of(case)}", content=case.read_bytes(), headers={**env.headers(), **YAML})
    verdict = _api_verdict(response)
    assert target.read_text() == (case.read_text() if verdict.accepted else before)
    return verdict


def run_config(workdir: Path, case: Path | None = None) -> Path:
    """A config for `run` on this machine: `case`'s settings (none for a rules case) with
    loopback listeners on free ports and the data under `workdir`, where not set."""
    document: dict[str, Any] = {}
    if case is not None:
        document = yaml.safe_load(case.read_text()) or {}
    document.setdefault("collectors", {}).setdefault(
        "listeners", [{"address": "127.0.0.1", "port": free_port(), "protocol": "netflow"}])
    document["collectors"].setdefault("workers", 1)
    document.setdefault("metrics", {}).setdefault("listen", f"127.0.0.1:{free_port(socket.SOCK_STREAM)}")
    document.setdefault("api", {}).setdefault("listen", f"127.0.0.1:{free_port(socket.SOCK_STREAM)}")
    document.setdefault("storage", {}).setdefault("path", str(workdir / "data"))
    document.setdefault("detection", {}).setdefault("alerts_log", str(workdir / "detections.log"))
    path = workdir / f"run-{case.name if case else 'config.yaml'}"
    path.write_text(json.dumps(document))  # JSON is YAML
    return path


def run_argv(case: Path, workdir: Path) -> list[str]:
    if kind_of(case) == "config":
        return ["run", "--config", str(case)]
    return ["run", "--config", str(run_config(workdir)), "--rules", str(case)]


def run_until_start(case: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str]) -> Verdict:
    """`flowenricher run` (cli.main) with only the service's start replaced: every check
    the command makes before starting anything runs as it is."""
    started: list[object] = []

    def start(settings: object, build_runtime: object = None) -> int:
        started.append(settings)
        return 0

    monkeypatch.setattr(service, "run_service", start)
    monkeypatch.chdir(workdir)
    capsys.readouterr()
    code = cli.main(run_argv(case, workdir))
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert (code == 0) == bool(started)
    return Verdict(code == 0, named_problems(err, str(case)))


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ApiEnv]:
    api = make_env(tmp_path)
    try:
        yield api
    finally:
        api.client.close()


# --------------------------------------------------------------------------- the verdicts


@pytest.mark.parametrize("case", CASES, ids=[case.stem for case in CASES])
def test_every_entry_point_gives_the_same_verdict(case: Path, tmp_path: Path, env: ApiEnv,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    want = expected(case)
    verdicts = {
        "ansible gate (flowenricher validate)": ansible_gate(case, tmp_path),
        "API validate": api_validate(env, case),
        "API PUT": api_put(env, case),
        "flowenricher run (until it starts)": run_until_start(case, tmp_path, monkeypatch, capsys),
    }
    assert verdicts == dict.fromkeys(verdicts, want)


# `run` as a process: the issue's case, problems `run` used to find only when starting its
# parts (SNMP poller, DNS resolver), and a rules file (refused before anything starts).
REFUSED_BY_RUN = ["config-traffic-label-bogus", "config-snmp-exporter-twice", "config-dns-ttl", "rules-window-too-long"]


@pytest.mark.parametrize("name", REFUSED_BY_RUN)
def test_run_refuses_at_start_with_the_same_lines(name: str, tmp_path: Path) -> None:
    case = CORPUS / f"{name}.yaml"
    argv = [*flowenricher_argv(), *run_argv(case, tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode in (1, 2), done.stderr
    assert Verdict(False, named_problems(done.stderr, str(case))) == expected(case)
    assert not (tmp_path / "data").exists()  # refused before the store was opened


def test_run_starts_on_valid_config_and_rules(tmp_path: Path) -> None:
    config = run_config(tmp_path, CORPUS / "valid-config-original-keys.yaml")
    rules = CORPUS / "valid-rules-original.yaml"
    proc = FlowenricherProcess(tmp_path, "service", "run", "--config", str(config), "--rules", str(rules))
    try:
        proc.wait_for(lambda: "listening:" in proc.output(), 60, "listening")
        assert "detection: 1 rules from" in proc.output()
    finally:
        code = proc.stop()
    assert code == 0, proc.output()[-4000:]


def test_validate_says_what_only_run_can_check(tmp_path: Path) -> None:
    """Opening the GeoIP files needs this machine: `validate` does not pretend it did."""
    config = tmp_path / "config.yaml"
    config.write_text("enrich: geoip\ngeoip: {asn_db: /nonexistent/GeoLite2-ASN.mmdb}\n")
    done = subprocess.run([*flowenricher_argv(), "validate", "--config", str(config)], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (f"checked when run starts, not here: {config}: $.geoip.asn_db: '/nonexistent/GeoLite2-ASN.mmdb' "
            "is opened and checked as a MaxMind database") in done.stdout.splitlines()
