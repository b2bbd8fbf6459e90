"""Config and rules files: the original files load unchanged, the shipped examples are the
defaults, and every mistake comes back as one line naming file, JSON path and reason."""

from __future__ import annotations

import ipaddress
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from appliance.flowenricher.config import (
    CONFIG_SCHEMA,
    RULES_SCHEMA,
    Settings,
    load_config,
    load_rules,
    load_schema,
    parse_actions,
    parse_config,
    parse_duration,
    parse_rules,
)
from appliance.flowenricher.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
ORIGINAL = REPO / "tests" / "data" / "examples"
SHIPPED = REPO / "appliance" / "flowenricher" / "examples"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(call: Any, *args: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        call(*args)
    return caught.value.problems


# ----------------------------------------------------------------- the original files


def test_original_config_loads_unchanged() -> None:
    settings = load_config(ORIGINAL / "config.original.yaml")

    assert settings.clickhouse.host == "localhost"  # a server, as in the original
    assert not settings.clickhouse.embedded
    assert (settings.clickhouse.database, settings.clickhouse.table) == ("pmacct", "flows")
    assert settings.insert.batch_size == 200  # honoured as given
    assert settings.enrich == frozenset({"geoip", "bgp", "snmp", "ptr"})
    assert settings.my_asn == 216285
    assert settings.my_prefixes == (
        ipaddress.ip_network("84.54.49.0/24"),
        ipaddress.ip_network("194.153.116.0/24"),
        ipaddress.ip_network("2a14:4280::/29"),
    )
    assert settings.detection.enabled
    assert settings.detection.flow_cache_max_window_s == 60.0
    assert settings.detection.rules_path == Path("/opt/flowenricher/etc/detection.yml")
    session = settings.bgp.listener
    assert (session.enabled, session.peer_ip, session.local_asn, session.remote_asn) == (
        True,
        "84.54.49.1",
        65001,
        216285,
    )
    assert session.router_id == "116.203.217.190"
    assert settings.snmp.target == "84.54.49.1" and settings.snmp.timeout_s == 2.0
    assert settings.timezone == "Europe/Athens"
    assert [(lst.address, lst.port, lst.protocol) for lst in settings.collectors.listeners] == [
        ("0.0.0.0", 2055, "netflow"),
        ("0.0.0.0", 4739, "netflow"),
        ("0.0.0.0", 6343, "sflow"),
    ]


def test_original_rules_load_unchanged() -> None:
    [rule] = load_rules(ORIGINAL / "detection.original.yml")

    assert rule["name"] == "slow_horizontal_scan"
    assert rule["blackhole_communities"] == ["65001:666"]
    assert rule["blackhole_next_hop"] == "192.0.2.1"
    assert parse_duration(rule["time_window"]) == 60.0
    assert parse_actions(rule["action"]) == ("alert", "blackhole")
    # Defaults are filled in, so the engine never meets a missing key.
    assert rule["same_dst_ip"] is False and rule["unique_dst_ports"] == 0 and rule["enabled"] is True


def test_rules_in_a_rules_mapping_load(tmp_path: Path) -> None:
    """The original's loader read `rules: [...]`; both shapes are accepted."""
    path = write(
        tmp_path,
        "detection.yml",
        """\
        rules:
          - {name: a, action: alert, time_window: 30s, min_flows: 10}
        """,
    )
    assert [rule["name"] for rule in load_rules(path)] == ["a"]


# ----------------------------------------------------------------- defaults and examples


def test_default_config_is_valid() -> None:
    settings = Settings.default()

    Draft202012Validator(load_schema(CONFIG_SCHEMA)).validate(settings.effective)
    assert settings.clickhouse.embedded
    assert (settings.clickhouse.database, settings.clickhouse.table) == ("flowenricher", "flows")
    assert settings.storage.path == Path("data")
    assert settings.storage.spool_dir == Path("data/spool")
    assert settings.insert.batch_size == 250000 and settings.insert.flush_interval_ms == 1000
    assert (settings.api.host, settings.api.port) == ("127.0.0.1", 9600)
    assert (settings.metrics.host, settings.metrics.port) == ("127.0.0.1", 9601)
    assert (settings.bgp.gobgp.host, settings.bgp.gobgp.port) == ("127.0.0.1", 50051)
    assert settings.collectors.template_hold.max_sets == 10000
    assert settings.collectors.receive_buffer_bytes == 33554432
    assert settings.collectors.worker_count() >= 1
    assert settings.log_level == "info"


def test_empty_file_is_the_default(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "config.yaml", "# nothing\n")) == Settings.default()
    assert load_rules(write(tmp_path, "detection.yml", "")) == []


def test_shipped_example_config_is_the_default() -> None:
    """The annotated example documents the real defaults, key for key."""
    settings = load_config(SHIPPED / "config.yaml")
    assert settings == Settings.default()
    assert settings.effective == Settings.default().effective


def test_shipped_example_rules_validate() -> None:
    rules = load_rules(SHIPPED / "detection.yml")
    assert rules and all(parse_actions(rule["action"]) == ("alert",) for rule in rules)


def test_listeners_follow_the_original_bind_settings() -> None:
    settings = parse_config({"collectors": {"netflow": {"config": {"bindaddr": "::", "bindport": "9995"}}}})
    assert [(lst.address, lst.port, lst.protocol) for lst in settings.collectors.listeners] == [
        ("::", 9995, "netflow"),
        ("::", 4739, "netflow"),
        ("::", 6343, "sflow"),
    ]

    on_ipfix_port = parse_config({"collectors": {"netflow": {"config": {"bindport": 4739}}}})
    assert [lst.port for lst in on_ipfix_port.collectors.listeners] == [4739, 6343]


def test_explicit_listeners_take_bindaddr_as_default_address() -> None:
    settings = parse_config(
        {
            "collectors": {
                "netflow": {"config": {"bindaddr": "127.0.0.1"}},
                "listeners": [{"port": 2056}, {"address": "::1", "port": 6343, "protocol": "sflow"}],
            }
        }
    )
    assert [(lst.address, lst.port, lst.protocol) for lst in settings.collectors.listeners] == [
        ("127.0.0.1", 2056, "netflow"),
        ("::1", 6343, "sflow"),
    ]


def test_exporter_overrides_are_parsed() -> None:
    settings = parse_config(
        {
            "collectors": {
                "exporters": {
                    "192.0.2.10": {"name": "edge-1", "sampling_rate": 1024, "sampling_byte_order": "little"},
                    "2001:DB8::1": {},
                }
            }
        }
    )
    exporters = settings.collectors.exporters
    assert set(exporters) == {"192.0.2.10", "2001:db8::1"}  # keys normalised
    edge = exporters["192.0.2.10"]
    assert (edge.name, edge.sampling_rate, edge.little_endian_sampling) == ("edge-1", 1024, True)
    other = exporters["2001:db8::1"]
    assert (other.name, other.sampling_rate, other.sampling_byte_order) == (None, None, "big")


@pytest.mark.parametrize(("host", "embedded"), [(None, True), ("", True), ("localhost", False)])
def test_clickhouse_host_chooses_the_store(host: str | None, embedded: bool) -> None:
    assert parse_config({"clickhouse": {"host": host}}).clickhouse.embedded is embedded


def test_debug_lowers_log_level_unless_set() -> None:
    assert parse_config({"debug": True}).log_level == "debug"
    assert parse_config({"debug": True, "log_level": "warning"}).log_level == "warning"


def test_enrich_accepts_none_a_list_and_the_originals_smtp() -> None:
    assert parse_config({"enrich": "none"}).enrich == frozenset()
    assert parse_config({"enrich": ["ptr", "bgp"]}).enrich == frozenset({"ptr", "bgp"})
    assert parse_config({"enrich": "geoip,smtp"}).enrich == frozenset({"geoip", "snmp"})


def test_x_keys_are_free_for_anchors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "config.yaml",
        """\
        x-loopback: &loopback 127.0.0.1
        metrics: {listen: "127.0.0.1:19601"}
        collectors:
          netflow: {config: {bindaddr: *loopback}}
        """,
    )
    assert load_config(path).collectors.listeners[0].address == "127.0.0.1"


# ----------------------------------------------------------------- errors


def test_several_errors_one_line_each(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "config.yaml",
        """\
        insert:
          batch_size: abc
        collectors:
          netflow:
            config:
              bindprt: 2055
        my_prefixes:
          - 84.54.49.0/24
          - 84.54.49.1/24
        enrich: geoip, bpg
        clickhose:
          host: db
        """,
    )
    assert problems_of(load_config, path) == [
        f"{path}: $.insert.batch_size: 'abc' is not of type 'integer'",
        f"{path}: $.collectors.netflow.config.bindprt: unknown key (did you mean 'bindport'?)",
        f"{path}: $.my_prefixes[1]: '84.54.49.1/24' is not an IPv4 or IPv6 network in CIDR notation: "
        "host bits are set (did you mean 84.54.49.0/24?)",
        f"{path}: $.enrich: 'geoip, bpg' is not a comma-separated list of geoip, bgp, snmp, ptr, or none",
        f"{path}: $.clickhose: unknown key (did you mean 'clickhouse'?)",
    ]


def test_bad_cidr_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", "my_prefixes: [84.54.49.0/24, 84.54.490.0/24, 10.0.0.0]\n")
    assert problems_of(load_config, path) == [
        f"{path}: $.my_prefixes[1]: '84.54.490.0/24' is not an IPv4 or IPv6 network in CIDR notation",
        f"{path}: $.my_prefixes[2]: '10.0.0.0' is not an IPv4 or IPv6 network in CIDR notation: "
        "the /prefix-length is missing",
    ]


def test_unknown_key_is_named_with_its_path() -> None:
    assert problems_of(parse_config, {"storage": {"ttl": 30}}, "c.yaml") == [
        "c.yaml: $.storage.ttl: unknown key (did you mean 'ttl_days'?)"
    ]
    assert problems_of(parse_config, {"collectors": {"exporters": {"10.0.0.1": {"rate": 2}}}}, "c.yaml") == [
        "c.yaml: $.collectors.exporters['10.0.0.1'].rate: unknown key "
        "(expected one of: name, sampling_rate, sampling_byte_order)"
    ]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "config.yaml",
        """\
        insert:
          batch_size: 10
         flush_interval_ms: 5
        """,
    )
    [problem] = problems_of(load_config, path)
    assert problem.startswith(f"{path}: line 3, column 2: YAML syntax error: ")


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", "insert:\n  batch_size: 10\ninsert:\n  batch_size: 20\n")
    assert problems_of(load_config, path) == [f"{path}: line 3: duplicate key 'insert' (first on line 1)"]


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert problems_of(load_config, path) == [f"{path}: file not found"]


def test_conditional_requirements_say_why() -> None:
    problems = problems_of(
        parse_config,
        {"bgp": {"bgp_listener": {"enabled": True, "asn": 65001}}, "snmp": {"enabled": True}},
        "c.yaml",
    )
    assert problems == [
        "c.yaml: $.bgp.bgp_listener: 'peer_ip' is a required property (needed when enabled is true)",
        "c.yaml: $.bgp.bgp_listener: 'remote_asn' is a required property (needed when enabled is true)",
        "c.yaml: $.bgp.bgp_listener.router_id: required when listen_ip is not an IPv4 address "
        "(the BGP identifier is an IPv4 address)",
        "c.yaml: $.snmp: 'target' is a required property (needed when enabled is true)",
    ]


def test_addresses_and_zones_are_checked() -> None:
    problems = problems_of(
        parse_config,
        {
            "api": {"listen": "::1:9600"},
            "timezone": "Mars/Base",
            "collectors": {
                "listeners": [{"port": 2055}, {"address": "0.0.0.0", "port": 2055}],
                "exporters": {"10.0.0.300": {}},
            },
            "insert": {"batch_size": None},
        },
        "c.yaml",
    )
    assert problems == [
        "c.yaml: $.api.listen: '::1:9600' is not host:port: "
        "an IPv6 address goes in brackets, as in [::1]:9600",
        "c.yaml: $.timezone: 'Mars/Base' is not an IANA time zone such as Europe/Athens: unknown time zone",
        "c.yaml: $.collectors.listeners[1]: same address and port as listeners[0]",
        "c.yaml: $.collectors.exporters['10.0.0.300']: key '10.0.0.300' is not an IPv4 or IPv6 address",
        "c.yaml: $.insert.batch_size: null (empty value) is not of type 'integer'",
    ]


def test_rule_errors_one_line_each(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "detection.yml",
        """\
        - name: scan
          proto: sctp
          time_window: 60 s
          action: alert,ban
          blackhole_communities: ["65001:65536", "65001:666:1"]
        - name: scan
          unique_dst_ip: 5
          min_flows: 10
          time_window: 0s
          action: alert
        - proto: tcp
          min_flows: 10
        """,
    )
    assert problems_of(load_rules, path) == [
        f"{path}: $[0]: rule 'scan': sets no threshold (a min_* or unique_* key): every key would match",
        f"{path}: $[0].proto: rule 'scan': 'sctp' is not any, tcp, udp, icmp, icmpv6 or a protocol number",
        f"{path}: $[0].time_window: rule 'scan': '60 s' is not a duration such as 60s, 1m30s or 500ms, "
        "or whole seconds",
        f"{path}: $[0].action: rule 'scan': 'alert,ban' is not a comma-separated list of "
        "alert, blackhole, clickhouse, slack, webhook",
        f"{path}: $[0].blackhole_communities[0]: rule 'scan': '65001:65536' is not a BGP community (ASN:VALUE, "
        "a:b:c, blackhole, no-export or no-advertise): the value after the AS number is 0-65535 (RFC 1997); "
        "write a large community a:b:c for more",
        f"{path}: $[1].name: 'scan' is already the name of $[0]",
        f"{path}: $[1].unique_dst_ip: rule 'scan': unknown key (did you mean 'unique_dst_ips'?)",
        f"{path}: $[1].time_window: rule 'scan': must be longer than 0",
        f"{path}: $[2]: 'action' is a required property",
        f"{path}: $[2]: 'name' is a required property",
        f"{path}: $[2]: 'time_window' is a required property",
    ]


def test_rules_mapping_errors_have_the_rules_path() -> None:
    assert problems_of(parse_rules, {"rules": [{"name": "a", "action": "alert", "min_flows": 1}]}, "d.yml") == [
        "d.yml: $.rules[0]: rule 'a': 'time_window' is a required property"
    ]


def test_communities_are_never_read_as_base_60(tmp_path: Path) -> None:
    """YAML 1.1 reads an unquoted 65001:59 as the number 3900119; it is a community."""
    path = write(
        tmp_path,
        "detection.yml",
        """\
        - {name: a, action: "alert,blackhole", min_flows: 5, blackhole_count: 5, blackhole_time: 1h,
           time_window: 1m, blackhole_communities: [65001:59, 65001:666]}
        """,
    )
    assert load_rules(path)[0]["blackhole_communities"] == ["65001:59", "65001:666"]


# ----------------------------------------------------------------- values and schemas


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("60s", 60.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("0", 0.0),
        ("1.5m", 90.0),
        (45, 45.0),
    ],
)
def test_durations_use_gos_syntax(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["60", "60 s", "s", "-1s", "1d", ""])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def _properties(node: Any, where: str = "$") -> list[tuple[str, dict[str, Any], bool]]:
    """Every (path, property schema, required?) in a schema, $defs included."""
    found: list[tuple[str, dict[str, Any], bool]] = []
    if isinstance(node, dict):
        required = set(node.get("required", ()))
        for name, sub in node.get("properties", {}).items():
            found.append((f"{where}.{name}", sub, name in required))
        for key, sub in node.items():
            if key != "if":  # conditions name properties, they do not define them
                found.extend(_properties(sub, f"{where}/{key}"))
    elif isinstance(node, list):
        for index, sub in enumerate(node):
            found.extend(_properties(sub, f"{where}[{index}]"))
    return found


@pytest.mark.parametrize("name", [CONFIG_SCHEMA, RULES_SCHEMA])
def test_schemas_describe_and_default_every_property(name: str) -> None:
    root = dict(load_schema(name))
    Draft202012Validator.check_schema(root)
    assert root["$schema"] == "https://json-schema.org/draft/2020-12/schema" and root["$id"]
    for where, schema, required in _properties(root):
        assert schema.get("description"), f"{where} has no description"
        if not required:
            assert "default" in schema, f"{where} has no default"
            # A default must itself be valid, or the defaults would fail their own schema.
            validator = Draft202012Validator({**schema, "$defs": root.get("$defs", {})})
            assert not list(validator.iter_errors(schema["default"])), f"{where} default is invalid"


def test_schema_files_are_plain_json() -> None:
    for name in (CONFIG_SCHEMA, RULES_SCHEMA):
        json.loads((REPO / "schemas" / name).read_text(encoding="utf-8"))


def test_gobgp_api_takes_host_port_or_a_unix_socket() -> None:
    assert parse_config({"bgp": {"gobgp": {"api": "unix:///run/gobgpd.sock"}}}).bgp.gobgp.api == "unix:///run/gobgpd.sock"
    assert parse_config({"bgp": {"gobgp": {"api": "[::1]:50051"}}}).bgp.gobgp.port == 50051
    with pytest.raises(ConfigError, match=r"\$\.bgp\.gobgp\.api"):
        parse_config({"bgp": {"gobgp": {"api": "gobgp"}}})


# ----------------------------------------------------------------- collector keys


def test_collector_limits_default_to_the_decoders_own() -> None:
    """The schema holds the config defaults; the decoder's constants must say the same."""
    from appliance.flowenricher.decode.netflow import MAX_CLOCK_SKEW_S
    from appliance.flowenricher.decode.stats import MAX_EXPORTERS
    from appliance.flowenricher.decode.templates import MAX_TEMPLATES
    from appliance.flowenricher.wiring import service_settings

    col = Settings.default().collectors
    assert (col.max_templates, col.max_exporters, col.max_clock_skew_s) == (MAX_TEMPLATES, MAX_EXPORTERS,
                                                                            MAX_CLOCK_SKEW_S)
    assert col.allowed_exporters == () and col.template_state and not col.debug
    worker = service_settings(Settings.default()).worker
    assert worker.state_dir == str(Path("data") / "decoder-state")
    assert worker.allowed_exporters == () and worker.debug is False


def test_collector_keys_reach_the_workers() -> None:
    from appliance.flowenricher.wiring import service_settings

    cfg = parse_config({"collectors": {
        "netflow": {"config": {"debug": True}},
        "allowed_exporters": ["192.0.2.10", "198.51.100.0/24", "2001:db8::/32"],
        "max_templates": 500, "max_exporters": 50, "max_clock_skew": "1m30s", "template_state": False}})
    worker = service_settings(cfg).worker
    assert worker.allowed_exporters == ("192.0.2.10/32", "198.51.100.0/24", "2001:db8::/32")
    assert (worker.max_templates, worker.max_exporters, worker.max_clock_skew_s) == (500, 50, 90.0)
    assert worker.state_dir is None and worker.debug is True


def test_allowed_exporters_mistakes_are_named() -> None:
    problems = problems_of(parse_config, {"collectors": {
        "allowed_exporters": ["192.0.2.1/24", "router-1", "10.0.0.0/8", "10.0.0.0/8"], "max_clock_skew": "2 h"}})
    assert problems == [
        "config: $.collectors.allowed_exporters[0]: '192.0.2.1/24' is not an IP address or network such as "
        "192.0.2.0/24: host bits are set (did you mean 192.0.2.0/24?)",
        "config: $.collectors.allowed_exporters[1]: 'router-1' is not an IP address or network such as 192.0.2.0/24",
        "config: $.collectors.allowed_exporters[3]: same network as allowed_exporters[2]",
        "config: $.collectors.max_clock_skew: '2 h' is not a duration such as 60s, 1m30s or 500ms, or whole seconds",
    ]


def test_kafka_input_needs_brokers(tmp_path: Path) -> None:
    """The original's kafka block validates as written (enabled: false); enabled: true
    without a broker is refused by the loader that validate, run and the API all use,
    and with one it validates."""
    original = (ORIGINAL / "config.original.yaml").read_text()
    assert "kafka:\n  enabled: false\n" in original
    assert not load_config(write(tmp_path, "original.yaml", original)).kafka.enabled
    path = write(tmp_path, "config.yaml", "kafka: {enabled: true, brokers: []}\n")
    expected = f"{path}: $.kafka.brokers: kafka.enabled needs at least one broker (host:port)"
    assert expected in problems_of(load_config, path)
    accepted = load_config(write(tmp_path, "ok.yaml", "kafka: {enabled: true, brokers: ['127.0.0.1:9092']}\n"))
    assert accepted.kafka.brokers == ("127.0.0.1:9092",)

    from appliance.api.configfiles import Parsed, SettingsFiles
    from appliance.api.errors import Invalid

    files = SettingsFiles(Settings.default(), None, None, [], None, None)
    with pytest.raises(Invalid) as refused:
        files.validate_config(Parsed({"kafka": {"enabled": True}}, None))
    [problem] = refused.value.problems
    assert problem.path == "$.kafka.brokers" and problem.reason.startswith("kafka.enabled needs at least one broker")


def test_validate_and_run_refuse_kafka_without_brokers(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = write(tmp_path, "config.yaml", "kafka: {enabled: true}\n")
    for command in ("validate", "run"):
        done = subprocess.run([sys.executable, "-m", "appliance.flowenricher.cli", command, "--config", str(path)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 2, (command, done.stderr)
        assert f"{path}: $.kafka.brokers: kafka.enabled needs at least one broker" in done.stderr


@pytest.mark.parametrize("expression, reason", [
    ("cityHash64(src_host) % 16", "is not supported: use f(column)"),
    ("toYYYYMM(src_port)", "'src_port' is not a DateTime flow column"),
])
def test_validate_and_run_refuse_a_partition_the_writer_cannot_bound(tmp_path: Path, expression: str,
                                                                      reason: str) -> None:
    """`run` splits inserts by day to stay within the store's partitions per insert, so it
    refuses a PARTITION BY it cannot bound; `validate` must say so too, with the path."""
    import subprocess
    import sys

    path = write(tmp_path, "config.yaml", f"storage: {{partition_by: '{expression}'}}\n")
    for command in ("validate", "run"):
        done = subprocess.run([sys.executable, "-m", "appliance.flowenricher.cli", command, "--config", str(path)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 2, (command, done.stderr)
        assert f"{path}: $.storage.partition_by: " in done.stderr and reason in done.stderr, (command, done.stderr)
