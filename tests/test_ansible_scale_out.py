"""The scale-out deployment (site.yml's collectors and storers, docs/scale-out.md): the
playbook parses, installs neither Kafka nor ClickHouse for those hosts, and the
flowenricher role renders a valid config.yaml for a collector and for a storer.

The roles run for real under ansible-playbook, on an inventory made from
inventory.example with scale-out hosts reached over a local connection: the common and
flowenricher preflights (what site.yml's preflight play runs for them), then the
effective config the role would install is written out and read by load_config, the
check `flowenricher validate` makes as the role's gate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.files import set_group_vars

from appliance.flowenricher.collector.settings import KafkaSettings
from appliance.flowenricher.config import load_config

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("ansible-playbook") is None, reason="ansible is not installed")

ROLE_COLLECT = "role" in KafkaSettings.model_fields
"""Whether this checkout's kafka settings have the collector role (kafka.role: collect)."""

PREFLIGHT = yaml.safe_load((REPO / "site.yml").read_text())[0]
"""site.yml's preflight play: run as it is, then the rendered files are written out."""

PLAY = [{**PREFLIGHT, "name": "Preflight, then the config and rules the role would install", "tasks": [
    # public: the flowenricher role's defaults (flowenricher_rules) stay visible to the last task
    *({**task, "ansible.builtin.include_role": {**task["ansible.builtin.include_role"], "public": True}}
      if "ansible.builtin.include_role" in task else task for task in PREFLIGHT["tasks"]),
    {"name": "The config and rules the flowenricher role would install",
     "ansible.builtin.copy": {"content": "{{ item.value | to_nice_yaml }}",
                              "dest": "{{ out }}/{{ inventory_hostname }}.{{ item.name }}.yaml", "mode": "0600"},
     "loop": [{"name": "config", "value": "{{ flowenricher_effective_config }}"},
              {"name": "rules", "value": "{{ flowenricher_rules }}"},
              {"name": "grafana", "value": "{{ {'host': grafana_clickhouse_host, 'port': grafana_clickhouse_port,"
                                           " 'secure': grafana_clickhouse_secure, 'user': grafana_clickhouse_user,"
                                           " 'password': grafana_clickhouse_password} if grafana_clickhouse_host"
                                           " is defined else {} }}"}],
     "loop_control": {"label": "{{ item.name }}"},
     "when": "inventory_hostname not in groups['mikrotik']"},
]}]

def _env() -> dict[str, str]:
    return {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1", "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
            "ANSIBLE_FILTER_PLUGINS": str(REPO / "ansible" / "plugins" / "filter"),
            "ANSIBLE_LOCALHOST_WARNING": "False", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False"}


def _render(tmp_path: Path, groups: dict[str, list[str]], example: Path = REPO / "inventory.example",
            group_vars: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The effective config of every host of `groups` (group -> host names), rendered from
    `example`'s group_vars with those hosts, and `group_vars` (group -> values) over them.
    The key "" holds ansible-playbook's output."""
    tmp_path.mkdir(exist_ok=True)
    inventory = tmp_path / "inventory"
    shutil.copytree(example, inventory)
    vault = inventory / "group_vars" / "all" / "vault.yml"
    shutil.copy(vault.with_name("vault.yml.example"), vault)  # as the operator does (unencrypted here)
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts: dict[str, Any] = {"appliance": {"hosts": {}}, "mikrotik": {"hosts": {}}}
    hosts |= {group: {"hosts": {name: {**local, "ansible_host": f"192.0.2.{100 + index}"}
                                for index, name in enumerate(names)}} for group, names in groups.items()}
    if groups.get("appliance"):  # the router the appliance's roles derive their settings from
        hosts["mikrotik"]["hosts"]["edge-1"] = local
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": hosts}}))
    for group, values in (group_vars or {}).items():
        set_group_vars(inventory, group, values)
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / "flowenricher-1.0.0-py3-none-any.whl").write_bytes(b"")  # the preflight reads its name only
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "play.yml").write_text(yaml.safe_dump(PLAY, sort_keys=False))
    extra = {"out": str(out), "flowenricher_wheelhouse": str(wheelhouse)}
    done = subprocess.run(["ansible-playbook", "-i", str(inventory), "-e", json.dumps(extra), "play.yml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env())
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    configs: dict[str, dict[str, Any]] = {"": {"output": done.stdout}}
    for path in sorted(out.glob("*.config.yaml")):
        host = path.name.removesuffix(".config.yaml")
        settings = load_config(path)  # the role's gate: `flowenricher validate --config`
        configs[host] = {"settings": settings, "raw": settings.raw, "config": path,
                         "rules": out / f"{host}.rules.yaml",
                         "grafana": yaml.safe_load((out / f"{host}.grafana.yaml").read_text())}
    return configs


def test_every_group_of_the_example_inventory_renders_what_flowenricher_validate_accepts(tmp_path: Path) -> None:
    """The appliance, a collector and a storer of inventory.example pass site.yml's
    preflight, and the config and rules each would install pass the real `flowenricher
    validate`, the check the role runs on the host before it installs them."""
    groups = {"appliance": ["flowenricher-1"], "collectors": ["collector-1"], "storers": ["storer-1"]}
    configs = _render(tmp_path, groups)
    assert set(configs) == {"", "flowenricher-1", "collector-1", "storer-1"}
    for host, rendered in configs.items():
        if not host:
            continue
        done = subprocess.run([sys.executable, "-m", "appliance.cli", "--log-level", "error", "validate",
                               "--config", str(rendered["config"]), "--rules", str(rendered["rules"])],
                              cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, f"{host}: {done.stdout}{done.stderr}"
        assert done.stdout.startswith("valid:"), done.stdout
    api = configs["flowenricher-1"]["settings"].api  # beyond loopback, so over TLS
    assert api.listen == "0.0.0.0:9600" and str(api.tls_cert) == "/etc/flowenricher/tls/api.pem"


def test_the_preflight_refuses_what_flowenricher_validate_refuses(tmp_path: Path) -> None:
    """The example's API beyond loopback without its TLS files: `run` would refuse the
    config, so the preflight does, with the service's own words."""
    example = tmp_path / "example"
    shutil.copytree(REPO / "inventory.example", example)
    appliance = example / "group_vars" / "appliance.yml"
    text = appliance.read_text()
    assert "flowenricher_api_tls_cert_file" in text
    appliance.write_text("\n".join(line for line in text.splitlines() if "_tls_" not in line) + "\n")
    with pytest.raises(AssertionError, match=r"flowenricher_config \(config.yaml\): \$.api.listen: the API listens "
                                             r"on 0.0.0.0:9600, beyond this machine, on plain HTTP"):
        _render(tmp_path / "run", {"appliance": ["flowenricher-1"]}, example)


OPERATORS_CLICKHOUSE = {
    "host": "clickhouse-1.example.net", "port": 8443, "secure": True, "user": "fe_writer",
    "password": "{{ vault_clickhouse_writer_password }}", "reader_user": "fe_reader",
    "reader_password": "{{ vault_clickhouse_grafana_password }}", "cluster": "flows_cluster"}


def test_an_appliance_on_the_operators_clickhouse(tmp_path: Path) -> None:
    """appliance_clickhouse_external: the clickhouse role's preflight is skipped (as the role
    itself in site.yml), config.yaml names the operator's cluster and Grafana reads there."""
    configs = _render(tmp_path, {"appliance": ["flowenricher-1"]},
                      group_vars={"appliance": {"appliance_clickhouse_external": OPERATORS_CLICKHOUSE}})
    ch = configs["flowenricher-1"]["settings"].clickhouse
    assert (ch.host, ch.port, ch.secure, ch.user, ch.cluster) == (
        "clickhouse-1.example.net", 8443, True, "fe_writer", "flows_cluster")
    assert ch.password == "change-me-writer-secret"  # from the vault, through the mapping
    assert configs["flowenricher-1"]["grafana"] == {
        "host": "clickhouse-1.example.net", "port": 8443, "secure": True, "user": "fe_reader",
        "password": "change-me-grafana-secret"}
    output = configs[""]["output"]
    assert "Check the clickhouse role's inputs" not in output and "Check the grafana role" in output
    plays = yaml.safe_load((REPO / "site.yml").read_text())
    appliance = next(p for p in plays if p["name"] == "Appliance")
    clickhouse = next(r for r in appliance["roles"] if r["role"] == "clickhouse")
    assert "appliance_clickhouse_external" in clickhouse["when"]


def test_an_appliance_on_its_own_clickhouse_by_default(tmp_path: Path) -> None:
    configs = _render(tmp_path, {"appliance": ["flowenricher-1"]})
    ch = configs["flowenricher-1"]["settings"].clickhouse
    assert (ch.host, ch.port, ch.secure, ch.cluster) == ("127.0.0.1", 8123, False, None)
    assert configs["flowenricher-1"]["grafana"]["host"] == "127.0.0.1"
    assert "Check the clickhouse role's inputs" in configs[""]["output"]


@pytest.mark.parametrize(("change", "named"), [
    ({"host": None}, "appliance_clickhouse_external.host: missing or empty"),
    ({"reader_password": ""}, "appliance_clickhouse_external.reader_password: missing or empty"),
    ({"port": 0}, "appliance_clickhouse_external.port: 0 is not a TCP port"),
    ({"hostname": "x"}, "appliance_clickhouse_external.hostname: unknown key"),
])
def test_incomplete_operators_clickhouse_is_refused_by_the_preflight(tmp_path: Path, change: dict[str, Any],
                                                                     named: str) -> None:
    settings = {key: value for key, value in {**OPERATORS_CLICKHOUSE, **change}.items() if value is not None}
    with pytest.raises(AssertionError, match=re.escape(named)):
        _render(tmp_path, {"appliance": ["flowenricher-1"]},
                group_vars={"appliance": {"appliance_clickhouse_external": settings}})


def test_the_playbook_parses_with_the_example_inventory() -> None:
    done = subprocess.run(["ansible-playbook", "--syntax-check", "-i", str(REPO / "inventory.example"),
                           str(REPO / "site.yml")], capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_scale_out_hosts_get_no_kafka_and_no_clickhouse() -> None:
    plays = yaml.safe_load((REPO / "site.yml").read_text())
    scale_out = [p for p in plays if p["hosts"] == "collectors:storers"]
    assert len(scale_out) == 1
    # gobgp: on storers, the router's table reflected by the appliance's gobgpd (BGP enrichment)
    assert [r["role"] for r in scale_out[0]["roles"]] == ["common", "gobgp", "flowenricher"]
    assert "storers" in scale_out[0]["roles"][1]["when"]
    preflight = next(t for t in plays[0]["tasks"] if t["name"] == "Scale-out roles")
    assert "clickhouse" not in preflight["loop"] and "kafka" not in preflight["loop"]
    assert not any("kafka" in r.name or "zookeeper" in r.name for r in (REPO / "roles").iterdir())


def test_a_storer_of_goflow2_records_renders_a_valid_config(tmp_path: Path) -> None:
    configs = _render(tmp_path, {"storers": ["storer-1"]})
    storer = configs["storer-1"]["settings"]
    assert storer.kafka.enabled and storer.kafka.format == "goflow2"  # no collectors: goflow2 publishes
    assert list(storer.kafka.brokers) == ["kafka-1.example.net:9092", "kafka-2.example.net:9092",
                                          "kafka-3.example.net:9092"]
    assert (storer.kafka.topic, storer.kafka.group_id) == ("flows", "flowenricher")
    assert storer.kafka.detection_topic == "flows-detection"  # the example turns the exchange on
    ch = storer.clickhouse
    assert (ch.host, ch.port, ch.secure, ch.cluster) == ("clickhouse-1.example.net", 8443, True, "flows_cluster")
    assert ch.password == "change-me-writer-secret"  # the vault's vault_clickhouse_writer_password
    assert not storer.bgp.listener.enabled and storer.blackhole.router_api is None
    owner = storer.blackhole.owner  # blackholes go to the appliance, which serves the API
    assert owner is not None and owner.url == "https://appliance.example.net:9600" and not storer.api.enabled
    assert str(owner.token_file).endswith("/owner.token") and owner.ca_file is None


@pytest.mark.skipif(not ROLE_COLLECT, reason="this checkout's kafka settings have no collector role (kafka.role)")
def test_a_collector_and_its_storers_render_valid_configs(tmp_path: Path) -> None:
    configs = _render(tmp_path, {"collectors": ["collector-1"], "storers": ["storer-1", "storer-2"]})
    collector = configs["collector-1"]["settings"]
    assert collector.kafka.enabled and configs["collector-1"]["raw"]["kafka"]["role"] == "collect"
    assert collector.clickhouse.host is None  # nothing stored on a collector
    for name in ("storer-1", "storer-2"):
        storer = configs[name]["settings"]
        assert storer.kafka.format == "flowenricher" and storer.clickhouse.cluster == "flows_cluster"


def test_a_storer_without_a_detection_topic_renders_none(tmp_path: Path) -> None:
    example = tmp_path / "example"
    shutil.copytree(REPO / "inventory.example", example)
    storers = example / "group_vars" / "storers.yml"
    old = "flowenricher_kafka_detection_topic: flows-detection"
    assert old in storers.read_text()
    storers.write_text(storers.read_text().replace(old, 'flowenricher_kafka_detection_topic: ""'))
    configs = _render(tmp_path / "run", {"storers": ["storer-1"]}, example)
    assert configs["storer-1"]["settings"].kafka.detection_topic is None
    assert "detection_topic" not in configs["storer-1"]["raw"]["kafka"]


def _storer_refused(tmp_path: Path, old: str, new: str, match: str) -> None:
    """The example inventory with `old` replaced by `new` in the storers' group_vars: the
    preflight refuses a storer with a message matching `match`."""
    example = tmp_path / "example"
    shutil.copytree(REPO / "inventory.example", example)
    storers = example / "group_vars" / "storers.yml"
    text = storers.read_text()
    assert old in text
    storers.write_text(text.replace(old, new))
    with pytest.raises(AssertionError, match=match):
        _render(tmp_path / "run", {"storers": ["storer-1"]}, example)


def test_a_storer_with_an_owner_but_no_token_is_refused_by_the_preflight(tmp_path: Path) -> None:
    _storer_refused(tmp_path, '"{{ vault_blackhole_owner_token }}"', '""',
                    "flowenricher_blackhole_owner_token must hold an admin")


def test_a_storer_without_brokers_is_refused_by_the_preflight(tmp_path: Path) -> None:
    _storer_refused(tmp_path, "flowenricher_kafka_brokers: [", "flowenricher_kafka_brokers: []\n# [",
                    "needs flowenricher_kafka_brokers")
