"""The common role's preflight warns when a host is below what its table size and flow rate
need (roles/common/tasks/sizing.yml, figures in roles/common/vars/sizing.yml, docs/sizing.md).

The role runs for real under ansible-playbook on localhost; the host's size arrives as facts
the way the setup module delivers them (a module returning ``ansible_facts``), so the
tasks read ``ansible_facts['memtotal_mb']`` and ``ansible_facts['processor_vcpus']`` as
they do on an appliance.  Without those facts (site.yml's preflight play gathers none) the
check stays silent and the preflight passes.
"""

from __future__ import annotations

import math
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


def _preflight(tmp_path: Path, size: tuple[int, int] | None, groups: tuple[str, ...] = (),
               **variables: object) -> subprocess.CompletedProcess[str]:
    """Run the common role's preflight on localhost with `size` (MB, vCPUs) as its facts,
    localhost a member of `groups` (site.yml's: appliance, storers, collectors) and each
    other group of `groups` holding one unreachable host."""
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
    children: dict[str, Any] = {}
    for group in groups:
        member, _, other = group.partition(":")
        children[member or other] = {"hosts": {"localhost" if member else f"{other}-1.invalid": {}}}
    inventory = {"all": {"hosts": {"localhost": {}}, "children": children}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1", "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
           "ANSIBLE_FILTER_PLUGINS": str(REPO / "ansible" / "plugins" / "filter"),
           "ANSIBLE_LIBRARY": str(tmp_path / "library"), "ANSIBLE_LOCALHOST_WARNING": "False"}
    done = subprocess.run(["ansible-playbook", "-i", "hosts.yml", "-c", "local", "-e",
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
    memory = (smallest["embedded"]["memory_mb"] + smallest["gobgpd_memory_mb"] + _sizing()["grafana"]["memory_mb"]
              + _sizing()["os"]["memory_mb"])
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


def _need(done: subprocess.CompletedProcess[str]) -> str:
    """The warning's "needs about ... on this <role>" part."""
    text = " ".join(done.stdout.split())
    start = text.index("needs about")
    return text[start:text.index("(figures", start)]


def test_what_is_counted_follows_what_the_host_runs(tmp_path: Path) -> None:
    """A storer runs no ClickHouse server and no Grafana (the operator's ClickHouse, the
    appliance's Grafana), and gobgpd only when an appliance reflects its table; a collector
    runs flowenricher alone; an appliance on the operator's ClickHouse runs no server."""
    sizing = _sizing()
    tier = sizing["tiers"][-1]  # the full table, the default expectation
    fe, fe_embedded, gobgpd = tier["clickhouse"], tier["embedded"], tier["gobgpd_memory_mb"]
    os_mb = sizing["os"]["memory_mb"]
    grafana, server = sizing["grafana"], sizing["clickhouse_server"]
    cases: list[tuple[tuple[str, ...], dict[str, object], str, tuple[float, float], str]] = [
        ((), {}, "appliance",
         (fe["memory_mb"] + gobgpd + server["memory_mb"] + grafana["memory_mb"] + os_mb,
          fe["cores"] + server["cores"] + grafana["cores"]),
         "flowenricher (clickhouse store), gobgpd, a ClickHouse server, Grafana, the OS"),
        ((), {"appliance_clickhouse_external": {"host": "ch.example.net"}}, "appliance",
         (fe["memory_mb"] + gobgpd + grafana["memory_mb"] + os_mb, fe["cores"] + grafana["cores"]),
         "flowenricher (clickhouse store), gobgpd, Grafana, the OS"),
        (("storers", ":appliance"), {"common_store": "clickhouse"}, "storer",
         (fe["memory_mb"] + gobgpd + os_mb, fe["cores"]), "flowenricher (clickhouse store), gobgpd, the OS"),
        (("storers",), {"common_store": "clickhouse"}, "storer",
         (fe["memory_mb"] + os_mb, fe["cores"]), "flowenricher (clickhouse store), the OS"),
        (("collectors", ":appliance"), {"common_store": "embedded"}, "collector",
         (fe_embedded["memory_mb"] + os_mb, fe_embedded["cores"]), "flowenricher (embedded store), the OS"),
    ]
    for index, (groups, variables, role, (memory, cores), counted) in enumerate(cases):
        workdir = tmp_path / str(index)
        workdir.mkdir()
        done = _preflight(workdir, (256, 1), groups, **variables)
        expected = f"needs about {memory} MB and {max(1, math.ceil(cores))} vCPUs for {counted} on this {role} "
        assert _need(done) == expected, (groups, variables)
