"""The common role's preflight warns when a host is below what its table size and flow rate
need (roles/common/tasks/sizing.yml, figures in roles/common/vars/sizing.yml, docs/sizing.md).

The role runs for real under ansible-playbook on localhost; the host's size arrives as facts
the way the setup module delivers them (a module returning ``ansible_facts``), so the
tasks read ``ansible_facts['memtotal_mb']`` and ``ansible_facts['processor_vcpus']`` as
they do on an appliance.  Without those facts (site.yml's preflight play gathers none) the
check stays silent and the preflight passes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("ansible-playbook") is None, reason="ansible is not installed")

HOST_SIZE_MODULE = '''#!/usr/bin/python
"""Report a host size as facts, as the setup module does for memtotal_mb and processor_vcpus."""
from ansible.module_utils.basic import AnsibleModule

module = AnsibleModule(argument_spec={"memtotal_mb": {"type": "int", "required": True},
                                      "processor_vcpus": {"type": "int", "required": True}})
module.exit_json(changed=False, ansible_facts={"memtotal_mb": module.params["memtotal_mb"],
                                               "processor_vcpus": module.params["processor_vcpus"]})
'''

WARNING = "WARNING: common: this host has"


def _preflight(tmp_path: Path, size: tuple[int, int] | None, **variables: object) -> subprocess.CompletedProcess[str]:
    """Run the common role's preflight on localhost with `size` (MB, vCPUs) as its facts."""
    (tmp_path / "library").mkdir(exist_ok=True)
    (tmp_path / "library" / "host_size.py").write_text(HOST_SIZE_MODULE)
    tasks: list[dict[str, object]] = []
    if size is not None:
        tasks.append({"name": "Host size", "host_size": {"memtotal_mb": size[0], "processor_vcpus": size[1]}})
    tasks.append({"name": "Common preflight", "ansible.builtin.include_role": {"name": "common",
                                                                                "tasks_from": "preflight"}})
    play = [{"name": "Sizing", "hosts": "localhost", "gather_facts": False,
             "vars": {"appliance_router_address": "192.0.2.1", "appliance_admin_networks": ["198.51.100.0/24"],
                      **variables},
             "tasks": tasks}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1", "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
           "ANSIBLE_FILTER_PLUGINS": str(REPO / "ansible" / "plugins" / "filter"),
           "ANSIBLE_LIBRARY": str(tmp_path / "library"), "ANSIBLE_LOCALHOST_WARNING": "False"}
    done = subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", "-e",
                           f"ansible_python_interpreter={sys.executable}", "play.yml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return done


def _sizing() -> dict[str, Any]:
    sizing: dict[str, Any] = yaml.safe_load((REPO / "roles" / "common" / "vars" / "sizing.yml").read_text())
    return sizing["common_sizing"]  # type: ignore[no-any-return]


def test_a_small_host_is_warned_with_what_it_needs(tmp_path: Path) -> None:
    done = _preflight(tmp_path, (1024, 1))
    assert WARNING in done.stdout, done.stdout[-3000:]
    assert "1024 MB of RAM and 1 vCPUs" in done.stdout
    assert "1200000 prefixes at 5000 flows/s with the clickhouse store" in done.stdout


def test_a_big_enough_host_is_not_warned(tmp_path: Path) -> None:
    done = _preflight(tmp_path, (65536, 16))
    assert WARNING not in done.stdout, done.stdout[-3000:]
    assert "Warn when the host is below" in done.stdout  # the check ran, and was skipped


def test_the_need_follows_the_table_the_rate_and_the_store(tmp_path: Path) -> None:
    """A host big enough for a small table embedded is too small for a full table at the
    highest measured rate storing into a ClickHouse server beside it."""
    tiers = _sizing()["tiers"]
    smallest = tiers[0]
    memory = smallest["embedded"]["memory_mb"] + smallest["gobgpd_memory_mb"] + _sizing()["others"]["memory_mb"]
    small = _preflight(tmp_path, (int(memory) + 1, 4), common_expected_table_prefixes=0,
                       common_expected_flows_per_s=smallest["flows_per_s"], common_store="embedded")
    assert WARNING not in small.stdout, small.stdout[-3000:]
    big = _preflight(tmp_path, (int(memory) + 1, 4), common_expected_table_prefixes=tiers[-1]["prefixes"],
                     common_expected_flows_per_s=tiers[-1]["flows_per_s"], common_store="clickhouse")
    assert WARNING in big.stdout, big.stdout[-3000:]


def test_beyond_the_measured_figures_the_warning_says_so(tmp_path: Path) -> None:
    done = _preflight(tmp_path, (1024, 1), common_expected_flows_per_s=5_000_000)
    assert "the largest measured: this host asks for more" in done.stdout, done.stdout[-3000:]


def test_without_facts_the_preflight_passes_silently(tmp_path: Path) -> None:
    done = _preflight(tmp_path, None)
    assert WARNING not in done.stdout
