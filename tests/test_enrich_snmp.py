"""SNMP interface names against a real Net-SNMP agent (support/snmp_agent.py) serving this
machine's IF-MIB: walks over v2c and v3, flows named from them, names from options data
kept, and an agent that is down (or comes up late) never holding up enrichment.

Ground truth for the walked names is the kernel's own list (/sys/class/net/*/ifindex).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support.snmp_agent import SnmpAgent, free_udp_port, sys_interfaces, unavailable_reason

from appliance.flowenricher.batch import DictColumn, FlowBatch, ipv4_to_addr, str_to_addr
from appliance.flowenricher.config import parse_config
from appliance.flowenricher.enrich.base import AddressSet
from appliance.flowenricher.enrich.snmp import (
    InterfaceInfo,
    InterfaceTable,
    SnmpPoller,
    SnmpStage,
    SnmpTarget,
    fill_names,
    targets_from_settings,
)
from appliance.flowenricher.errors import ConfigError

ROUTER = "192.0.2.1"  # the exporter address flows carry; the agent itself is on loopback
ROUTER6 = "2001:db8::1"
OTHER = "192.0.2.99"  # an exporter nobody polls
UNKNOWN_IFINDEX = 999_999


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    value: float | None = registry.get_sample_value(name, labels)
    return value


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[SnmpAgent]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with SnmpAgent(tmp_path / "snmpd") as running:
        yield running


@pytest.fixture
def pollers() -> Iterator[Callable[..., SnmpPoller]]:
    """Makes started pollers; every one is stopped at the end of the test."""
    made: list[SnmpPoller] = []

    def make(targets: Sequence[SnmpTarget], registry: CollectorRegistry | None = None, **kw: Any) -> SnmpPoller:
        poller = SnmpPoller(targets, registry or CollectorRegistry(), **kw)
        made.append(poller)
        poller.start()
        return poller

    yield make
    for poller in made:
        poller.stop()
        assert not poller.running


def v2c(agent: SnmpAgent, exporter: str = ROUTER, **kw: Any) -> SnmpTarget:
    return SnmpTarget(exporter=exporter, host="127.0.0.1", port=agent.port, community=agent.community, **kw)


def v3(agent: SnmpAgent, exporter: str = ROUTER6, host: str = "::1", **kw: Any) -> SnmpTarget:
    user = agent.user
    kw = {"user": user.name, "auth_key": user.auth_key, "priv_key": user.priv_key, **kw}
    return SnmpTarget(exporter=exporter, host=host, port=agent.port, version="3", auth_protocol="sha",
                      priv_protocol="aes", **kw)


def flows(rows: Sequence[tuple[str, int, int, str]]) -> FlowBatch:
    """Flows of (exporter, input ifIndex, output ifIndex, input name from options data)."""
    n = len(rows)
    exporters = np.frombuffer(b"".join(str_to_addr(r[0]) for r in rows), np.uint8).reshape(n, 16)
    return FlowBatch(n, {
        "exporter_address": exporters.copy(),
        "src_addr": ipv4_to_addr(np.full(n, 0xC6336401, np.uint32)),
        "dst_addr": ipv4_to_addr(np.full(n, 0xCB007101, np.uint32)),
        "input_interface": np.array([r[1] for r in rows], np.uint32),
        "output_interface": np.array([r[2] for r in rows], np.uint32),
        "input_interface_name": DictColumn.from_strings([r[3] for r in rows]),
    })


def enrich(stage: SnmpStage, batch: FlowBatch) -> FlowBatch:
    stage.enrich(batch, AddressSet.of(batch))
    return batch


def lo_ifindex() -> int:
    [index] = [i for i, name in sys_interfaces().items() if name == "lo"]
    return index


def test_v2c_walk_gives_this_machines_interfaces(agent: SnmpAgent, pollers: Callable[..., SnmpPoller]) -> None:
    before = sys_interfaces()
    registry = CollectorRegistry()
    poller = pollers([v2c(agent)], registry)
    wait_until(lambda: bool(poller.interfaces(ROUTER)), "the first walk")
    walked = poller.interfaces(ROUTER)
    after = sys_interfaces()

    # Other tests on this machine add and remove interfaces: compare those that stayed.
    stable = {index: name for index, name in before.items() if after.get(index) == name}
    assert "lo" in stable.values()
    assert {index: walked[index].name for index in stable} == stable
    assert {index: walked[index].label for index in stable} == stable
    assert metric(registry, "flowenricher_snmp_walks_total", exporter=ROUTER, result="ok") == 1
    assert metric(registry, "flowenricher_snmp_walks_total", exporter=ROUTER, result="timeout") == 0
    assert metric(registry, "flowenricher_snmp_interfaces", exporter=ROUTER) == len(walked)
    age = metric(registry, "flowenricher_snmp_last_walk_age_seconds", exporter=ROUTER)
    assert age is not None and 0 <= age < 60
    status = poller.status(ROUTER)
    assert (status.walks_ok, status.consecutive_failures, status.retry_in_s) == (1, 0, 0.0)


def test_v3_authpriv_walk_and_a_wrong_key_refused(agent: SnmpAgent, pollers: Callable[..., SnmpPoller]) -> None:
    host = "::1" if agent.ipv6 else "127.0.0.1"
    registry = CollectorRegistry()
    wrong = v3(agent, exporter=OTHER, host=host, priv_key="not-the-key", timeout_s=0.5, retries=0)
    poller = pollers([v3(agent, host=host), wrong], registry, backoff_initial_s=30, backoff_max_s=30)

    wait_until(lambda: bool(poller.interfaces(ROUTER6)), "the v3 walk")
    assert poller.interfaces(ROUTER6)[lo_ifindex()].name == "lo"
    # A wrong privacy key makes the agent's answer undecodable: the walk fails, counted.
    wait_until(lambda: poller.status(OTHER).consecutive_failures >= 1, "the wrong-key walk to fail")
    assert poller.interfaces(OTHER) == {}
    failed = sum(metric(registry, "flowenricher_snmp_walks_total", exporter=OTHER, result=r) or 0
                 for r in ("timeout", "error"))
    assert failed == 1
    assert poller.status(OTHER).last_error


def test_flows_get_names_from_their_exporters_table(agent: SnmpAgent, pollers: Callable[..., SnmpPoller]) -> None:
    registry = CollectorRegistry()
    poller = pollers([v2c(agent), v3(agent, host="127.0.0.1")], registry)
    stage = SnmpStage(poller, registry)
    wait_until(lambda: bool(poller.interfaces(ROUTER)) and bool(poller.interfaces(ROUTER6)), "both walks")
    lo = lo_ifindex()

    batch = enrich(stage, flows([
        (ROUTER, lo, UNKNOWN_IFINDEX, ""),
        (ROUTER, lo, lo, "ether1"),  # the exporter named it in its options data: kept
        (OTHER, lo, lo, ""),  # nobody polls this exporter
        (ROUTER6, 0, lo, ""),  # ifIndex 0: no interface
    ]))

    assert batch["input_interface_name"].strings() == ["lo", "ether1", "", ""]
    assert batch["output_interface_name"].strings() == ["", "lo", "", "lo"]
    assert metric(registry, "flowenricher_snmp_names_filled_total", direction="input") == 1
    assert metric(registry, "flowenricher_snmp_names_filled_total", direction="output") == 2
    assert poller.interfaces(OTHER) == {}
    assert stage.interfaces(ROUTER)[lo].label == "lo"


def test_dead_agent_counts_timeouts_backs_off_and_never_blocks(pollers: Callable[..., SnmpPoller]) -> None:
    registry = CollectorRegistry()
    dead = SnmpTarget(exporter=ROUTER, host="127.0.0.1", port=free_udp_port(ipv6=False), timeout_s=0.1, retries=0)
    poller = pollers([dead], registry, backoff_initial_s=0.05, backoff_max_s=0.4)
    stage = SnmpStage(poller, registry)

    delays: dict[int, float] = {}

    def five_failures() -> bool:
        status = poller.status(ROUTER)
        if status.consecutive_failures:
            delays.setdefault(status.consecutive_failures, status.retry_in_s)
        # Flows keep going through while the agent is silent; they just stay unnamed.
        assert enrich(stage, flows([(ROUTER, 1, 1, "")]))["input_interface_name"].strings() == [""]
        return status.consecutive_failures >= 5

    wait_until(five_failures, "five failed walks")
    assert {k: delays[k] for k in range(1, 6)} == {1: 0.05, 2: 0.1, 3: 0.2, 4: 0.4, 5: 0.4}
    timeouts = metric(registry, "flowenricher_snmp_walks_total", exporter=ROUTER, result="timeout")
    assert timeouts is not None and timeouts >= 5
    assert metric(registry, "flowenricher_snmp_walks_total", exporter=ROUTER, result="ok") == 0
    assert metric(registry, "flowenricher_snmp_last_walk_age_seconds", exporter=ROUTER) == math.inf
    assert poller.status(ROUTER).last_success_age_s is None
    assert "No SNMP response" in poller.status(ROUTER).last_error


def test_agent_started_later_is_picked_up(tmp_path: Path, pollers: Callable[..., SnmpPoller]) -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    late = SnmpAgent(tmp_path / "late", ipv6=False)
    target = SnmpTarget(exporter=ROUTER, host="127.0.0.1", port=late.port, community=late.community,
                        timeout_s=0.2, retries=0)
    registry = CollectorRegistry()
    poller = pollers([target], registry, interval_s=3600, backoff_initial_s=0.1, backoff_max_s=0.4)
    stage = SnmpStage(poller, registry)
    wait_until(lambda: poller.status(ROUTER).consecutive_failures >= 2, "two failed walks")
    assert enrich(stage, flows([(ROUTER, lo_ifindex(), 0, "")]))["input_interface_name"].strings() == [""]

    with late:
        wait_until(lambda: bool(poller.interfaces(ROUTER)), "the walk after the agent came up")
        status = poller.status(ROUTER)
        assert (status.walks_ok, status.consecutive_failures, status.retry_in_s) == (1, 0, 0.0)
        assert metric(registry, "flowenricher_snmp_retry_delay_seconds", exporter=ROUTER) == 0
        batch = enrich(stage, flows([(ROUTER, lo_ifindex(), 0, "")]))
        assert batch["input_interface_name"].strings() == ["lo"]


def test_fill_names_per_exporter_keeps_options_names_and_codes() -> None:
    # Interface numbering as some vendors do it: sparse, up to 2**31 - 1.
    router_a = InterfaceTable.of({
        1: InterfaceInfo("ether1"), 500: InterfaceInfo("", descr="sfp-sfpplus1"),
        2**31 - 1: InterfaceInfo("bridge"), 7: InterfaceInfo("unused-in-batch"), 8: InterfaceInfo(""),
    }, walked_at=0.0)
    router_b = InterfaceTable.of({1: InterfaceInfo("wan")}, walked_at=0.0)
    ifindexes = np.array([0, 1, 2, 500, 2**31 - 1, 2**32 - 1, 8, 1, 1, 1], np.uint32)
    names = DictColumn(np.array([0, 0, 0, 0, 0, 0, 0, 1, 0, 2], np.uint32), ["", "from-options", ""])
    rows_a = np.array([True] * 8 + [False, False])
    rows_b = ~rows_a

    filled, count = fill_names(names, ifindexes, [(router_a, rows_a), (router_b, rows_b)])

    assert filled.strings() == ["", "ether1", "", "sfp-sfpplus1", "bridge", "", "", "from-options", "wan", "wan"]
    assert count == 5
    assert "unused-in-batch" not in filled.values
    assert filled.values[:3] == names.values  # existing codes keep their meaning
    assert names.strings()[1] == ""  # the input column is not modified in place


def test_fill_names_leaves_a_fully_named_column_alone() -> None:
    table = InterfaceTable.of({1: InterfaceInfo("ether1")}, walked_at=0.0)
    names = DictColumn.constant(3, "from-options")
    filled, count = fill_names(names, np.ones(3, np.uint32), [(table, np.ones(3, bool))])
    assert filled is names and count == 0


def test_bad_targets_are_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"exporter 'router1'.*exporter: 'router1' is not an IPv4 or IPv6"):
        SnmpTarget(exporter="router1", host="127.0.0.1")
    with pytest.raises(ConfigError) as err:
        SnmpTarget(exporter=ROUTER, host="127.0.0.1", version="3", auth_key="short", priv_protocol="rot13")
    fields = [problem.split(": ")[1] for problem in err.value.problems]
    assert fields == ["user", "priv_protocol", "auth_key", "priv_key"]
    with pytest.raises(ConfigError, match="port: 0"):
        SnmpTarget(exporter=ROUTER, host="127.0.0.1", port=0)
    with pytest.raises(ConfigError, match=f"exporter {ROUTER} is listed twice"):
        SnmpPoller([SnmpTarget(ROUTER, "127.0.0.1"), SnmpTarget(ROUTER, "127.0.0.2")])


def test_config_targets_map_to_one_target_per_exporter() -> None:
    settings = parse_config({"snmp": {
        "enabled": True, "target": "127.0.0.1", "community": "c0mm", "port": 1161, "timeout": 1.5, "retries": 2,
        "targets": [{"exporter": ROUTER6, "host": "::1", "version": "3", "user": "u",
                     "auth_key": "auth-pass", "priv_key": "priv-pass", "priv_protocol": "aes256"}],
    }})

    first, second = targets_from_settings(settings.snmp)

    # The original single target: the router is both the agent and the exporter.
    assert (first.exporter, first.host, first.port, first.version, first.community) == (
        "127.0.0.1", "127.0.0.1", 1161, "2c", "c0mm")
    assert (first.timeout_s, first.retries) == (1.5, 2)
    assert (second.exporter, second.host, second.version, second.user, second.priv_protocol) == (
        ROUTER6, "::1", "3", "u", "aes256")
    [by_name] = targets_from_settings(parse_config({"snmp": {"enabled": True, "target": "localhost"}}).snmp)
    assert by_name.host == "localhost" and by_name.exporter in ("127.0.0.1", "::1")
