"""The grafana role's pinned ClickHouse plugin and its archive check, statically.

Grafana cannot be installed on this machine (DESIGN §3), so the plugin install and the
admin password sync (grafana-cli on the appliance) are not run here: the role's tasks
are checked by ansible-lint and the syntax check (tests/test_molecule.py), and what
happens on the controller is run for real:

* the archive check reads real zip files: the pinned plugin and version pass; another
  version, another plugin, a path outside the plugin's directory or a file that is not a
  zip is refused, naming the archive;
* the preflight of site.yml stops on a wrong archive, naming the variable, before any
  host is changed, and passes with the right one;
* the pinned version is the one the dashboards are saved with.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml
from support.files import load_module, set_group_vars

REPO = Path(__file__).resolve().parent.parent
PLUGIN = "grafana-clickhouse-datasource"
DEFAULTS = yaml.safe_load((REPO / "roles" / "grafana" / "defaults" / "main.yml").read_text())
PINNED = str(DEFAULTS["grafana_clickhouse_plugin_version"])



ARCHIVE_FILTER = REPO / "roles" / "grafana" / "filter_plugins" / "grafana_plugin_archive.py"
plugin_archive_problems = load_module(ARCHIVE_FILTER).plugin_archive_problems


def _zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zipped:
        for name, text in files.items():
            zipped.writestr(name, text)
    return path


def _plugin(path: Path, plugin_id: str = PLUGIN, version: str = PINNED, extra: dict[str, str] | None = None) -> Path:
    manifest = json.dumps({"id": plugin_id, "type": "datasource", "info": {"version": version}})
    return _zip(path, {f"{plugin_id}/plugin.json": manifest, f"{plugin_id}/gpx_clickhouse_linux_amd64": "binary",
                       **(extra or {})})


def test_the_pinned_version_is_the_dashboards_plugin_version() -> None:
    versions = {panel_version for dashboard in (REPO / "roles" / "grafana" / "files" / "dashboards").glob("*.json")
                for panel_version in _plugin_versions(json.loads(dashboard.read_text()))}
    assert versions == {PINNED}


def _plugin_versions(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [str(node["pluginVersion"])] if "pluginVersion" in node else []
        return own + [v for child in node.values() for v in _plugin_versions(child)]
    if isinstance(node, list):
        return [v for child in node for v in _plugin_versions(child)]
    return []


def test_an_archive_of_the_pinned_plugin_passes(tmp_path: Path) -> None:
    assert plugin_archive_problems(str(_plugin(tmp_path / "ok.zip")), PLUGIN, PINNED) == []


@pytest.mark.parametrize(("make", "expected"), [
    (lambda d: _plugin(d / "a.zip", version="4.0.0"), "holds version '4.0.0', the role pins"),
    (lambda d: _plugin(d / "a.zip", plugin_id="other-datasource"), "is outside the plugin's directory"),
    (lambda d: _plugin(d / "a.zip", extra={f"{PLUGIN}/../../etc/cron.d/x": "boom"}), "is outside the plugin's directory"),
    (lambda d: _zip(d / "a.zip", {f"{PLUGIN}/README.md": "no manifest"}), f"no {PLUGIN}/plugin.json"),
    (lambda d: _zip(d / "a.zip", {f"{PLUGIN}/plugin.json": json.dumps({"id": "x", "info": {"version": PINNED}})}),
     "holds the plugin 'x'"),
    (lambda d: (d / "a.zip").write_text("not a zip") and d / "a.zip", "not a readable zip archive"),
    (lambda d: d / "missing.zip", "not a readable zip archive"),
])
def test_a_wrong_archive_is_refused_by_name(tmp_path: Path, make: object, expected: str) -> None:
    archive = make(tmp_path)  # type: ignore[operator]
    problems = plugin_archive_problems(str(archive), PLUGIN, PINNED)
    assert problems and expected in problems[0] and str(archive) in problems[0], problems


@pytest.mark.skipif(shutil.which("ansible-playbook") is None, reason="ansible is not installed")
def test_the_preflight_checks_the_archive_before_any_host_changes(tmp_path: Path) -> None:
    inv = tmp_path / "inventory"
    shutil.copytree(REPO / "inventory.example", inv)
    vault = inv / "group_vars" / "all"
    (vault / "vault.yml").write_text((vault / "vault.yml.example").read_text())
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / "flowenricher-0.1.0-py3-none-any.whl").write_bytes(b"")
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1", "ANSIBLE_GATHERING": "explicit",
           "ANSIBLE_TIMEOUT": "3"}

    def preflight(archive: Path) -> subprocess.CompletedProcess[str]:
        set_group_vars(inv, "appliance", {"flowenricher_wheelhouse": str(wheelhouse),
                                          "grafana_clickhouse_plugin_archive": str(archive)})
        return subprocess.run(["ansible-playbook", "-i", str(inv), "site.yml", "--tags", "preflight"], cwd=REPO,
                              capture_output=True, text=True, timeout=300, env=env)

    wrong = preflight(_plugin(tmp_path / "old.zip", version="4.0.0"))
    assert wrong.returncode != 0
    assert "grafana_clickhouse_plugin_archive" in wrong.stdout and "holds version '4.0.0'" in wrong.stdout, \
        wrong.stdout[-4000:]
    assert "PLAY [Appliance]" not in wrong.stdout
    right = preflight(_plugin(tmp_path / "pinned.zip"))
    assert right.returncode == 0, right.stdout[-4000:] + right.stderr[-2000:]
