"""The deployment (site.yml, roles/, inventory.example/) and its Molecule scenario.

* yamllint and ansible-lint (production profile) on the deployment's files;
* bad inventory values stop the play in the preflight, before any host is changed, with
  a message naming the variable (the config is checked against schemas/ on the
  controller; the router's blackhole filter is derived from the appliance's settings, and
  a rule the router could not accept is refused); an unreachable router fails the router
  play with a clear message;
* `molecule test`: site.yml converges a bare Debian 12 VM (systemd-nspawn) with the
  RouterOS simulator as router and BIRD as its BGP side, verify.yml checks what the issue
  lists, and the second converge changes nothing (see molecule/default/).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.files import set_group_vars

REPO = Path(__file__).resolve().parent.parent
DEPLOYMENT = ["site.yml", "roles", "molecule", "inventory.example", "ansible"]


def _tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return path


def _run(argv: list[str], timeout: float = 600, env: dict[str, str] | None = None,
         cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1", **(env or {})})


def test_yamllint() -> None:
    done = _run([_tool("yamllint"), "--strict", "-f", "parsable", "-c", "ansible/yamllint.yml", *DEPLOYMENT])
    assert done.returncode == 0, done.stdout + done.stderr


def test_ansible_lint_production_profile() -> None:
    done = _run([_tool("ansible-lint"), "--nocolor", "-c", "ansible/ansible-lint.yml",
                 "site.yml", "roles", "molecule", "inventory.example"], timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]


# ---------------------------------------------------------------- preflight on inventory.example

@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    """inventory.example copied as an operator would, its vault example filled in, and a
    wheelhouse directory holding a (name-only) wheel: the preflight only looks at names."""
    inv = tmp_path / "inventory"
    shutil.copytree(REPO / "inventory.example", inv)
    (inv / "group_vars" / "all" / "vault.yml").write_text((inv / "group_vars" / "all" / "vault.yml.example").read_text())
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / "flowenricher-0.1.0-py3-none-any.whl").write_bytes(b"")
    set_group_vars(inv, "appliance", {"flowenricher_wheelhouse": str(wheelhouse)})
    return inv


def _preflight(inv: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Only the preflight tasks, no fact gathering: nothing may connect to a host."""
    return _run([_tool("ansible-playbook"), "-i", str(inv), "site.yml", "--tags", "preflight", *extra],
                env={"ANSIBLE_GATHERING": "explicit", "ANSIBLE_TIMEOUT": "3"}, timeout=300)


def test_copied_inventory_example_loads_without_warnings(tmp_path: Path) -> None:
    """README's `cp -r inventory.example inventory`, then the vault file filled in from its
    example: Ansible parses both without a warning (the example is not an inventory source)."""
    inv = tmp_path / "inventory"
    shutil.copytree(REPO / "inventory.example", inv)
    for step in ("copied", "with the vault"):
        done = _run([_tool("ansible-inventory"), "-i", str(inv), "--list"], timeout=120)
        assert done.returncode == 0, done.stderr
        assert "WARNING" not in done.stderr, f"{step}: {done.stderr}"
        hostvars = yaml.safe_load(done.stdout)["_meta"]["hostvars"]
        assert set(hostvars) == {"flowenricher-1", "edge-1"}
        assert ("vault_snmp_community" in hostvars["flowenricher-1"]) == (step == "with the vault")
        example = inv / "group_vars" / "all" / "vault.yml.example"
        (inv / "group_vars" / "all" / "vault.yml").write_text(example.read_text())


def test_no_group_of_the_example_has_both_a_vars_file_and_a_vars_directory() -> None:
    """Ansible reads group_vars/<group>/ or group_vars/<group>.yml, the directory when both
    exist: the file's values would be silently ignored."""
    group_vars = REPO / "inventory.example" / "group_vars"
    both = [path.name for path in group_vars.iterdir() if path.is_dir() and (group_vars / f"{path.name}.yml").exists()]
    assert both == []


def test_inventory_example_passes_the_preflight(inventory: Path) -> None:
    done = _preflight(inventory)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    assert "unreachable=0" in done.stdout and "failed=0" in done.stdout


@pytest.mark.parametrize(("values", "named"), [
    ({"flowenricher_config": {"my_asn": "sixty-four thousand"}}, "flowenricher_config (config.yaml): $.my_asn"),
    ({"flowenricher_rules": [{"name": "r", "proto": "tcp", "time_window": "forever", "action": "alert"}]},
     "flowenricher_rules (detection.yml): $[0].time_window"),
    ({"gobgp_log_level": "chatty"}, "gobgp_log_level"),
    ({"appliance_admin_networks": ["10.0.0.300/24"]}, "common_admin_networks"),
    ({"vault_clickhouse_writer_password": "short"}, "vault_clickhouse_writer_password"),
    # the API's mode is flowenricher_api_mode; api.enabled saying otherwise is refused
    ({"flowenricher_api": {"listen": "127.0.0.1:9600", "enabled": False}}, "flowenricher_api_mode is inprocess"),
    # a rule whose communities the router's filter could not tell a blackhole by
    ({"flowenricher_rules": [{"name": "scan", "proto": "tcp", "unique_dst_ports": 100, "time_window": "60s",
                              "action": "blackhole", "blackhole_count": 1, "blackhole_time": 600,
                              "blackhole_communities": ["no-export"]}]},
     "the router would not accept what it announces: rule 'scan' blackhole_communities"),
])
def test_bad_inventory_values_stop_before_any_host_is_changed(inventory: Path, values: dict[str, object],
                                                              named: str) -> None:
    set_group_vars(inventory, "appliance", values)  # over the example's group_vars/appliance.yml too
    # The full play, not only the preflight: the appliance is unreachable (192.0.2.10), so
    # reaching any task on it would show up as "unreachable"; the preflight must stop first.
    done = _run([_tool("ansible-playbook"), "-i", str(inventory), "site.yml"],
                env={"ANSIBLE_TIMEOUT": "3"}, timeout=300)
    assert done.returncode != 0
    assert named in done.stdout, done.stdout[-5000:]
    assert "PLAY [Appliance]" not in done.stdout, "the play went on after the preflight failed"
    assert "unreachable=1" not in done.stdout


def test_unreachable_router_fails_the_router_play_with_a_clear_message(inventory: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    set_group_vars(inventory, "all", {"mikrotik_api_host": "127.0.0.1", "mikrotik_api_port": port,
                                      "mikrotik_api_timeout": 2})
    done = _run([_tool("ansible-playbook"), "-i", str(inventory), "site.yml", "--limit", "edge-1"], timeout=300)
    assert done.returncode != 0
    assert f"does not answer on 127.0.0.1:{port} (API-SSL)" in done.stdout, done.stdout[-5000:]
    assert "the appliance is configured already" in done.stdout


WHEELHOUSE_PLAY = """\
- name: The flowenricher role's wheelhouse check, on this machine
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Check
      ansible.builtin.include_role:
        name: flowenricher
        tasks_from: wheelhouse
"""


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="the check reads /usr/bin/python3, as the venv's")
@pytest.mark.parametrize("fits", [True, False])
def test_wheelhouse_that_does_not_fit_the_host_stops_the_play(tmp_path: Path, fits: bool) -> None:
    """The entry point site.yml runs before any role changes the appliance, here against
    this machine: a dependency built for another CPython stops it, naming the file."""
    major, minor = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(*sys.version_info[:2])"],
                                  capture_output=True, text=True, check=True).stdout.split()
    machine = subprocess.run(["/usr/bin/python3", "-c", "import platform; print(platform.machine())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    tag = f"cp{major}{minor}" if fits else f"cp{major}{int(minor) + 1}"
    dependency = f"chdb-3.1.0-{tag}-{tag}-manylinux_2_17_{machine}.manylinux2014_{machine}.whl"
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    for name in ("flowenricher-0.10.0-py3-none-any.whl", "flowenricher-0.9.0-py3-none-any.whl", dependency):
        (wheelhouse / name).write_bytes(b"")
    (tmp_path / "play.yml").write_text(WHEELHOUSE_PLAY)
    done = _run([_tool("ansible-playbook"), "-i", "localhost,", "-c", "local", str(tmp_path / "play.yml"),
                 "-e", f"flowenricher_wheelhouse={wheelhouse}",
                 "-e", "flowenricher_wheel=flowenricher-0.10.0-py3-none-any.whl", "-e", "flowenricher_store=embedded"],
                env={"ANSIBLE_ROLES_PATH": str(REPO / "roles"),
                     "ANSIBLE_FILTER_PLUGINS": str(REPO / "ansible" / "plugins" / "filter"),
                     "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3", "ANSIBLE_LOCALHOST_WARNING": "false"},
                cwd=tmp_path, timeout=300)
    if fits:
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        assert "failed=0" in done.stdout
    else:
        assert done.returncode != 0
        assert "does not fit localhost" in done.stdout, done.stdout[-4000:]
        assert f"chdb: no wheel fits CPython {major}.{minor} on linux {machine}" in done.stdout
        assert dependency in done.stdout


# ---------------------------------------------------------------- the Molecule scenario

def _scenario_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the scenario boots a systemd-nspawn VM: needs root"
    for tool, package in (("debootstrap", "debootstrap"), ("systemd-nspawn", "systemd-container"),
                          ("bird", "bird2"), ("openssl", "openssl")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package})"
    return None


def test_molecule_scenario_converges_verifies_and_is_idempotent() -> None:
    reason = _scenario_unavailable()
    if reason:
        pytest.skip(reason)
    done = _run([_tool("molecule"), "test"], timeout=1800)
    tail = (done.stdout + done.stderr)[-15000:]
    assert done.returncode == 0, tail
    assert "idempotence: Executed: Successful" in tail or "Idempotence completed successfully" in tail, tail
