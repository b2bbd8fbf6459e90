"""The flowenricher role's systemd units, rendered by Ansible from the role's own tasks
(tasks/unit_facts.yml) and templates, and their start check run for real.

* the API mode: inside `flowenricher run` (default) the collector's unit waits for
  /health/live; with `flowenricher_api_mode: separate` the API has its own hardened unit,
  ordered after the collector and wanting it, and the collector's unit has no API check;
* the probe URL follows the api section of config.yaml: https with tls_cert/tls_key, a
  wildcard listen address asked on loopback, IPv6 in brackets;
* the rendered ExecStart of flowenricher-api.service serves, and its rendered
  ExecStartPost succeeds once /health/live answers (plain HTTP and HTTPS) and fails
  within its bound when nothing serves;
* systemd-analyze verify accepts the units (skipped when this systemd cannot verify
  offline).

No systemd runs the units here (no booted systemd on this machine); Molecule does that on
the VM (molecule/default/verify.yml).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support.files import load_module, self_signed

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "roles" / "flowenricher" / "templates"

pytestmark = pytest.mark.skipif(shutil.which("ansible-playbook") is None, reason="ansible is not installed")

PLAY = """\
- name: Render the flowenricher role's units
  hosts: localhost
  gather_facts: false
  vars_files: [vars.json]
  tasks:
    - name: The role's unit facts
      ansible.builtin.include_role:
        name: flowenricher
        tasks_from: unit_facts
    - name: Units
      ansible.builtin.template:
        src: "{templates}/{{{{ item }}}}.j2"
        dest: "{out}/{{{{ item }}}}"
        mode: "0644"
      loop: [flowenricher.service, flowenricher-api.service]
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _venv(tmp_path: Path) -> Path:
    """A stand-in venv whose bin/flowenricher is this checkout's console script."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    script = venv / "bin" / "flowenricher"
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                      "from appliance.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)
    return venv


def _render(tmp_path: Path, api: dict[str, object], mode: str, timeout: int = 60) -> dict[str, configparser.RawConfigParser]:
    out = tmp_path / "units"
    out.mkdir(exist_ok=True)
    values = {
        "flowenricher_effective_config": {"api": api, "collectors": {"netflow": {"config": {"bindport": 2055}}}},
        "flowenricher_api_mode": mode, "flowenricher_api_start_timeout": timeout,
        "flowenricher_venv": str(_venv(tmp_path)), "flowenricher_user": "flowenricher",
        "flowenricher_config_dir": str(tmp_path / "etc"), "flowenricher_config_live_dir": str(tmp_path / "etc" / "live"),
        "flowenricher_data_dir": str(tmp_path / "data"), "flowenricher_log_dir": str(tmp_path / "log"),
    }
    (tmp_path / "vars.json").write_text(json.dumps(values))
    (tmp_path / "play.yml").write_text(PLAY.format(out=out, templates=TEMPLATES))
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
           "ANSIBLE_FILTER_PLUGINS": str(REPO / "ansible" / "plugins" / "filter"),
           "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
           "ANSIBLE_PYTHON_INTERPRETER": sys.executable, "ANSIBLE_FORCE_COLOR": "0"}
    done = subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", str(tmp_path / "play.yml")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    units = {}
    for name in ("flowenricher.service", "flowenricher-api.service"):
        parser = configparser.RawConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string((out / name).read_text())
        units[name] = parser
    return units


def _probe(unit: configparser.RawConfigParser) -> list[str]:
    return shlex.split(unit.get("Service", "ExecStartPost"))


def test_default_mode_checks_the_api_inside_the_collector(tmp_path: Path) -> None:
    units = _render(tmp_path, {"listen": "0.0.0.0:9600", "enabled": True}, "inprocess")
    probe = _probe(units["flowenricher.service"])
    assert probe[0] == "/usr/bin/curl" and probe[-1] == "http://127.0.0.1:9600/health/live"
    assert "--insecure" not in probe
    assert int(units["flowenricher.service"].get("Service", "TimeoutStartSec")) > 60


def test_separate_mode_has_its_own_hardened_unit_after_the_collector(tmp_path: Path) -> None:
    units = _render(tmp_path, {"listen": "[::]:443", "enabled": False, "tls_cert": "/etc/c.pem", "tls_key": "/etc/k.pem"},
                    "separate")
    collector, api = units["flowenricher.service"], units["flowenricher-api.service"]
    assert not collector.has_option("Service", "ExecStartPost")
    assert collector.get("Service", "AmbientCapabilities") == ""  # 443 is the API's, not the collector's
    assert "flowenricher.service" in api.get("Unit", "After").split()
    assert "flowenricher.service" in api.get("Unit", "Wants").split()
    assert not api.has_option("Unit", "Requires") and not api.has_option("Unit", "BindsTo")
    service = dict(api.items("Service"))
    assert service["ExecStart"].split()[1:3] == ["api", "--config"]
    assert (service["User"], service["Group"]) == ("flowenricher", "flowenricher")
    assert service["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "RestrictSUIDSGID"):
        assert service[hardening] == "yes"
    assert service["ProtectSystem"] == "strict"
    probe = _probe(api)
    assert probe[-1] == "https://[::1]:443/health/live" and "--insecure" in probe


def _serve(tmp_path: Path, unit: configparser.RawConfigParser, config: dict[str, object]) -> subprocess.Popen[bytes]:
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc" / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.Popen(shlex.split(unit.get("Service", "ExecStart")), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _config(tmp_path: Path, api: dict[str, object]) -> dict[str, object]:
    (tmp_path / "rules.yml").write_text("[]\n")
    return {"storage": {"path": str(tmp_path / "data")}, "api": api,
            "detection": {"rules_config": str(tmp_path / "rules.yml")}}


@pytest.mark.parametrize("tls", [False, True])
def test_the_rendered_start_check_waits_for_the_separate_api(tmp_path: Path, tls: bool) -> None:
    api: dict[str, object] = {"listen": f"127.0.0.1:{_free_port()}", "enabled": False}
    if tls:
        cert, key = self_signed(tmp_path, "api", "appliance.example")
        api.update(tls_cert=str(cert), tls_key=str(key))
    unit = _render(tmp_path, api, "separate", timeout=40)["flowenricher-api.service"]
    server = _serve(tmp_path, unit, _config(tmp_path, api))
    try:
        started = time.monotonic()
        waited = subprocess.run(_probe(unit), capture_output=True, text=True, timeout=120)
        assert waited.returncode == 0, waited.stderr
        assert server.poll() is None  # it returned because the API serves, not because it ended
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert time.monotonic() - started < 40


def test_the_start_check_fails_within_its_bound_when_nothing_serves(tmp_path: Path) -> None:
    unit = _render(tmp_path, {"listen": f"127.0.0.1:{_free_port()}", "enabled": False}, "separate",
                   timeout=3)["flowenricher-api.service"]
    started = time.monotonic()
    waited = subprocess.run(_probe(unit), capture_output=True, text=True, timeout=60)
    assert waited.returncode != 0
    assert time.monotonic() - started < 3 + 5


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    _render(tmp_path, {"listen": "127.0.0.1:9600", "enabled": False}, "separate")
    units = tmp_path / "units"
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *(str(u) for u in sorted(units.iterdir()))],
                          capture_output=True, text=True, timeout=120)
    problems = [line for line in done.stderr.splitlines() if str(units) in line or "Unknown" in line]
    if done.returncode != 0 and not problems:
        pytest.skip(f"systemd-analyze cannot verify here: {done.stderr[-500:]}")
    assert not problems, done.stderr


def test_probe_url_follows_the_api_section() -> None:
    api_probe_url = load_module(REPO / "roles" / "flowenricher" / "filter_plugins" / "flowenricher_api.py").api_probe_url

    assert api_probe_url({}) == "http://127.0.0.1:9600/health/live"
    assert api_probe_url({"listen": "192.0.2.10:9600"}, "/health/ready") == "http://192.0.2.10:9600/health/ready"
    assert api_probe_url({"listen": "[2001:db8::10]:9600", "tls_cert": "c", "tls_key": "k"}) == (
        "https://[2001:db8::10]:9600/health/live")
    assert api_probe_url({"listen": "0.0.0.0:9600", "tls_cert": "c"}).startswith("http://")  # needs both
    with pytest.raises(ValueError, match=re.escape("api.listen '2001:db8::1:9600'")):
        api_probe_url({"listen": "2001:db8::1:9600"})
