"""The RouterOS API simulator (tests/support/routeros_sim.py) driven by real clients.

librouteros (the library community.routeros uses) is an independent implementation of
the protocol: it encodes the words, logs in and parses replies, so these tests fail if
the simulator's wire format, replies or value handling drift from what RouterOS clients
expect.  The community.routeros modules run through ansible-playbook against it, over
API-SSL, as the `mikrotik` role does.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import librouteros
import pytest
from librouteros.exceptions import FatalError, TrapError
from librouteros.protocol import ApiProtocol, decode_length, encode_length
from librouteros.query import Key, Or
from support.files import self_signed
from support.routeros_sim import BgpRoute, BirdFeed, RouterOsSim, evaluate_chain, format_duration, parse_duration

PASSWORD = "s3cret"


@pytest.fixture
def sim() -> Iterator[RouterOsSim]:
    with RouterOsSim(users={"admin": PASSWORD}) as server:
        yield server


def connect(server: RouterOsSim, **kw: object) -> librouteros.Api:
    return librouteros.connect(server.host, "admin", PASSWORD, port=server.port, timeout=5, **kw)


def raw(server: RouterOsSim) -> ApiProtocol:
    """librouteros's wire layer without its login, for sentences the Api class hides (tags, !empty)."""
    api = librouteros.connect(server.host, "admin", PASSWORD, port=server.port, timeout=5)
    return api.protocol


@pytest.mark.parametrize("length", [0, 1, 0x7F, 0x80, 0x3FFF, 0x4000, 0x1FFFFF, 0x200000, 0xFFFFFFF])
def test_length_encoding_matches_librouteros(length: int) -> None:
    from support.routeros_sim import encode_length as sim_encode

    assert sim_encode(length) == encode_length(length)
    assert decode_length(sim_encode(length)) == length


def test_long_words_cross_the_length_boundaries(sim: RouterOsSim) -> None:
    api = connect(sim)
    for size in (0x7F, 0x80, 0x3FFF, 0x4000, 70_000):
        comment = "c" * size
        new_id = api.path("ip", "route").add(**{"dst-address": f"198.51.100.{size % 250}", "blackhole": True,
                                                  "comment": comment})
        row = next(r for r in api.path("ip", "route") if r[".id"] == new_id)
        assert row["comment"] == comment


def test_login_rejects_a_wrong_password(sim: RouterOsSim) -> None:
    with pytest.raises(TrapError, match="invalid user name or password"):
        librouteros.connect(sim.host, "admin", "wrong", port=sim.port, timeout=5)


def test_commands_before_login_are_fatal(sim: RouterOsSim) -> None:
    with socket.create_connection((sim.host, sim.port), timeout=5) as sock:
        from librouteros.connections import SocketTransport

        proto = ApiProtocol(SocketTransport(sock), "ASCII")
        proto.writeSentence("/ip/route/print")
        with pytest.raises(FatalError, match="not logged in"):
            proto.readSentence()


def test_quit_is_fatal_with_the_routeros_message(sim: RouterOsSim) -> None:
    proto = raw(sim)
    proto.writeSentence("/quit")
    with pytest.raises(FatalError, match="session terminated on request"):
        proto.readSentence()


def test_add_print_set_remove_with_ids_and_normalised_values(sim: RouterOsSim) -> None:
    api = connect(sim)
    routes = api.path("ip", "route")
    first = routes.add(**{"dst-address": "192.0.2.1", "blackhole": "yes", "comment": "nh"})
    second = routes.add(**{"dst-address": "198.51.100.77/24", "gateway": "10.0.0.1"})
    assert first.startswith("*") and second != first
    rows = {r[".id"]: r for r in routes}
    assert rows[first]["dst-address"] == "192.0.2.1/32"          # bare address: host route
    assert rows[first]["blackhole"] is True                      # "true" on the wire
    assert rows[second]["dst-address"] == "198.51.100.0/24"      # canonical network
    assert rows[second]["distance"] == 1 and rows[second]["disabled"] is False

    routes.update(**{".id": first, "comment": "changed", "disabled": "yes"})
    assert {r[".id"]: r for r in routes}[first]["comment"] == "changed"
    routes.remove(first, second)
    assert list(routes) == []


def test_durations_are_printed_as_routeros_does(sim: RouterOsSim) -> None:
    api = connect(sim)
    flow = api.path("ip", "traffic-flow")
    flow.update(**{"active-flow-timeout": "60s", "inactive-flow-timeout": "00:00:15", "enabled": "yes"})
    row = next(iter(flow))
    assert (row["active-flow-timeout"], row["inactive-flow-timeout"], row["enabled"]) == ("1m", "15s", True)
    assert format_duration(parse_duration("1h90m")) == "2h30m"
    assert format_duration(parse_duration("1d00:00:05")) == "1d5s"


def test_errors_are_traps_and_the_session_goes_on(sim: RouterOsSim) -> None:
    api = connect(sim)
    targets = api.path("ip", "traffic-flow", "target")
    with pytest.raises(TrapError, match="invalid value for argument port"):
        targets.add(**{"dst-address": "10.0.0.1", "port": "70000"})
    with pytest.raises(TrapError, match="unknown parameter colour"):
        targets.add(**{"dst-address": "10.0.0.1", "colour": "red"})
    with pytest.raises(TrapError, match="no such item"):
        targets.remove("*99")
    with pytest.raises(TrapError, match="no such command prefix"):
        list(api.path("interface", "wireless"))
    with pytest.raises(TrapError, match="already exists"):
        api.path("snmp", "community").add(name="public")
    with pytest.raises(TrapError, match="read-only"):
        api.path("snmp", "community").add(name="x", default="true")
    assert list(targets) == []  # nothing was half-added


def test_builtin_community_cannot_be_removed(sim: RouterOsSim) -> None:
    api = connect(sim)
    public = next(r for r in api.path("snmp", "community") if r["name"] == "public")
    assert public["default"] is True
    with pytest.raises(TrapError, match="default community"):
        api.path("snmp", "community").remove(public[".id"])


def test_queries_follow_the_stack_machine(sim: RouterOsSim) -> None:
    api = connect(sim)
    routes = api.path("ip", "route")
    for i, comment in enumerate(["a", "b", "c"]):
        routes.add(**{"dst-address": f"203.0.113.{i}", "blackhole": "yes", "comment": comment, "distance": str(i + 1)})
    comment, distance = Key("comment"), Key("distance")
    assert sorted(r["comment"] for r in routes.select(comment).where(Or(comment == "a", comment == "c"))) == ["a", "c"]
    assert [r["comment"] for r in routes.select(comment).where(distance > 2)] == ["c"]
    assert [r["comment"] for r in routes.select(comment).where(comment != "a", distance < 3)] == ["b"]
    # ?-name: items without the property; ?#! negates; raw words through librouteros's rawCmd
    assert [r["comment"] for r in api.rawCmd("/ip/route/print", "?comment=b", "?#!")] == ["a", "c"]
    assert list(api.rawCmd("/ip/route/print", "?-comment")) == []
    counted = list(api.rawCmd("/ip/route/print", "=count-only=", "?blackhole=yes"))
    assert counted == [{"ret": 3}]
    only = list(api.rawCmd("/ip/route/print", "=.proplist=.id,comment"))
    assert all(set(r) == {".id", "comment"} for r in only)


def test_tags_come_back_on_every_reply(sim: RouterOsSim) -> None:
    proto = raw(sim)
    api = librouteros.Api(proto)
    api.path("ip", "route").add(**{"dst-address": "203.0.113.9", "blackhole": "yes"})
    proto.writeSentence("/ip/route/print", ".tag=t1")
    replies = [proto.readSentence(), proto.readSentence()]
    assert [r[0] for r in replies] == ["!re", "!done"]
    assert all(".tag=t1" in words for _, words in replies)
    proto.writeSentence("/ip/route/remove", "=.id=*FF", ".tag=t2")
    trap, done = proto.readSentence(), proto.readSentence()
    assert trap[0] == "!trap" and ".tag=t2" in trap[1] and "=message=no such item" in trap[1]
    assert done == ("!done", (".tag=t2",))


@pytest.mark.parametrize(("version", "empty"), [("7.19.4", True), ("7.16.2", False)])
def test_empty_reply_from_7_18_on(version: str, empty: bool) -> None:
    with RouterOsSim(users={"admin": PASSWORD}, version=version) as server:
        proto = raw(server)
        proto.writeSentence("/ip/route/print")
        first = proto.readSentence()
        assert first[0] == ("!empty" if empty else "!done")
        if empty:
            assert proto.readSentence()[0] == "!done"


def test_versioned_fields() -> None:
    for version, present, absent in (("7.19.4", "afi", "address-families"), ("7.16.2", "address-families", "afi")):
        with RouterOsSim(users={"admin": PASSWORD}, version=version) as server:
            api = connect(server)
            assert next(iter(api.path("system", "resource")))["version"] == f"{version} (stable)"
            conn = api.path("routing", "bgp", "connection")
            conn.add(**{"name": "x", "local.role": "ibgp", "remote.address": "10.0.0.1", present: "ip"})
            with pytest.raises(TrapError, match=f"unknown parameter {absent}"):
                conn.add(**{"name": "y", "local.role": "ibgp", "remote.address": "10.0.0.2", absent: "ip"})


def test_state_file_follows_changes(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with RouterOsSim(users={"admin": PASSWORD}, state_file=state) as server:
        connect(server).path("ip", "route").add(**{"dst-address": "192.0.2.1", "blackhole": "yes"})
        menus = json.loads(state.read_text())["menus"]
    assert [r["dst-address"] for r in menus["/ip/route"]] == ["192.0.2.1/32"]


# ---------------------------------------------------------------- API-SSL and community.routeros

@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("cert"), "router", "router", "IP:127.0.0.1")


def test_api_ssl_with_a_verified_certificate(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with RouterOsSim(users={"admin": PASSWORD}, tls=(cert, key)) as server:
        ctx = ssl.create_default_context(cafile=str(cert))
        api = connect(server, ssl_wrapper=lambda s: ctx.wrap_socket(s, server_hostname="127.0.0.1"))
        assert next(iter(api.path("system", "identity")))["name"] == "MikroTik"
        with pytest.raises((OSError, librouteros.exceptions.ConnectionClosed)):
            connect(server)  # plain API on the API-SSL port: no session


PLAYBOOK = """\
- name: Drive the simulator with community.routeros
  hosts: localhost
  gather_facts: false
  module_defaults:
    group/community.routeros.api:
      hostname: 127.0.0.1
      port: {port}
      username: admin
      password: {password}
      tls: true
      ca_path: {ca}
  tasks:
    - name: Traffic flow
      community.routeros.api_modify:
        path: ip traffic-flow
        data:
          - {{enabled: true, interfaces: all, active-flow-timeout: 1m, inactive-flow-timeout: 15s}}
    - name: Target, only the appliance's
      community.routeros.api_modify:
        path: ip traffic-flow target
        data:
          - {{dst-address: 10.254.0.2, port: 2055, version: ipfix}}
        restrict:
          - {{field: dst-address, values: [10.254.0.2]}}
        handle_absent_entries: remove
        handle_entries_content: remove_as_much_as_possible
    - name: Community
      community.routeros.api_modify:
        path: snmp community
        data:
          - {{name: flowenricher, addresses: 10.254.0.2/32, read-access: true, write-access: false}}
        restrict:
          - {{field: name, values: [flowenricher]}}
        handle_absent_entries: remove
    - name: Factory community disabled
      community.routeros.api_find_and_modify:
        path: snmp community
        find: {{default: true}}
        values: {{disabled: true, read-access: false, write-access: false, addresses: 10.254.0.2/32}}
        require_matches_max: 1
    - name: Read back
      community.routeros.api_info:
        path: ip traffic-flow target
      register: targets
    - name: Show
      ansible.builtin.debug:
        var: targets.result
"""


def _playbook(tmp_path: Path, server: RouterOsSim, cert: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    book = tmp_path / "play.yml"
    book.write_text(PLAYBOOK.format(port=server.port, password=PASSWORD, ca=cert))
    env = {**os.environ, "ANSIBLE_STDOUT_CALLBACK": "json", "ANSIBLE_LOCALHOST_WARNING": "false",
           "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false", "ANSIBLE_PYTHON_INTERPRETER": sys.executable}
    return subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", *extra, str(book)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


def _changed(result: subprocess.CompletedProcess[str]) -> dict[str, bool]:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    plays = json.loads(result.stdout)["plays"]
    return {t["task"]["name"]: t["hosts"]["localhost"].get("changed", False) for t in plays[0]["tasks"]}


@pytest.mark.skipif(shutil.which("ansible-playbook") is None, reason="ansible is not installed (test extra)")
def test_community_routeros_converges_idempotently_and_respects_restrict(
        tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with RouterOsSim(users={"admin": PASSWORD}, tls=(cert, key)) as server:
        api = connect(server, ssl_wrapper=lambda s: ssl.create_default_context(cafile=str(cert)).wrap_socket(
            s, server_hostname="127.0.0.1"))
        other = api.path("ip", "traffic-flow", "target").add(**{"dst-address": "10.9.9.9", "port": "9995"})

        checked = _playbook(tmp_path, server, cert, "--check", "--diff")
        check = _changed(checked)
        assert check["Traffic flow"] and check["Target, only the appliance's"]
        tasks = {t["task"]["name"]: t["hosts"]["localhost"] for t in json.loads(checked.stdout)["plays"][0]["tasks"]}
        diff = tasks["Traffic flow"]["diff"]  # what --diff shows: the router's values before and after
        assert (diff["before"]["enabled"], diff["before"]["active-flow-timeout"]) == (False, "30m")
        assert (diff["after"]["enabled"], diff["after"]["active-flow-timeout"]) == (True, "1m")
        assert next(iter(api.path("ip", "traffic-flow")))["enabled"] is False  # check mode changed nothing

        first = _changed(_playbook(tmp_path, server, cert))
        assert first["Traffic flow"] and first["Target, only the appliance's"] and first["Community"]
        assert first["Factory community disabled"]
        second = _changed(_playbook(tmp_path, server, cert))
        assert not any(second.values()), second

        snap = server.snapshot()
        flow = snap["/ip/traffic-flow"][0]
        assert (flow["enabled"], flow["active-flow-timeout"], flow["inactive-flow-timeout"]) == ("true", "1m", "15s")
        targets = {t["dst-address"]: t for t in snap["/ip/traffic-flow/target"]}
        assert targets["10.254.0.2"]["version"] == "ipfix" and targets["10.254.0.2"]["port"] == "2055"
        assert targets["10.9.9.9"][".id"] == other  # restrict: the operator's own target is untouched
        communities = {c["name"]: c for c in snap["/snmp/community"]}
        assert communities["flowenricher"]["addresses"] == "10.254.0.2/32"
        # the builtin community cannot be removed: it stays, disabled, unreadable, appliance only
        public = communities["public"]
        assert (public["default"], public["disabled"], public["read-access"], public["addresses"]) == (
            "true", "true", "false", "10.254.0.2/32")


def test_command_line_serves_until_sigterm(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    (tmp_path / "pw").write_text(PASSWORD)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "support" / "routeros_sim.py"),
                             "--listen", f"127.0.0.1:{port}", "--password-file", str(tmp_path / "pw"),
                             "--cert", str(cert), "--key", str(key), "--state-file", str(tmp_path / "s.json")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert "API-SSL" in proc.stdout.readline()
        ctx = ssl.create_default_context(cafile=str(cert))
        api = librouteros.connect("127.0.0.1", "admin", PASSWORD, port=port, timeout=5,
                                  ssl_wrapper=lambda s: ctx.wrap_socket(s, server_hostname="127.0.0.1"))
        api.path("snmp").update(enabled="yes")
        assert json.loads((tmp_path / "s.json").read_text())["menus"]["/snmp"][0]["enabled"] == "true"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_bad_arguments_name_the_problem() -> None:
    result = subprocess.run([sys.executable, str(Path(__file__).parent / "support" / "routeros_sim.py"),
                             "--cert", "/nonexistent.pem"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--cert and --key go together" in result.stderr


# ---------------------------------------------------------------- BGP: instance, filters, route table
# The filter rules are the mikrotik role's own (its filter plugin, fed the appliance's
# settings), so a mismatch between what the appliance announces and what the router's
# filter accepts fails here as it would on the router.

REPO = Path(__file__).resolve().parent.parent
BLACKHOLE_CONFIG = {"blackhole": {"communities": ["65001:666", "216285:666"]}}
BLACKHOLE_RULES = [{"name": "scan", "proto": "tcp", "unique_dst_ports": 100, "time_window": "60s",
                    "action": "blackhole", "blackhole_count": 1, "blackhole_time": 600,
                    "blackhole_next_hop": "192.0.2.7", "blackhole_communities": ["65001:777", "no-export"]}]
PEER = "10.254.0.2"


def role_filter_rules(config: object = BLACKHOLE_CONFIG, rules: object = BLACKHOLE_RULES) -> list[str]:
    """The input chain the mikrotik role writes for these appliance settings."""
    path = REPO / "roles" / "mikrotik" / "filter_plugins" / "mikrotik_blackhole.py"
    spec = importlib.util.spec_from_file_location("mikrotik_blackhole", path)
    assert spec is not None and spec.loader is not None
    mikrotik_blackhole = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mikrotik_blackhole)
    rules_text: list[str] = mikrotik_blackhole.filter_rules(mikrotik_blackhole.blackhole_routes(config, rules))
    return rules_text


def route(prefix: str, gw: str, std: tuple[tuple[int, int], ...] = (), large: tuple[tuple[int, int, int], ...] = ()
          ) -> BgpRoute:
    return BgpRoute(ipaddress.ip_network(prefix), ipaddress.ip_address(gw), frozenset(std), frozenset(large))


def bgp_router(server: RouterOsSim, chain_rules: list[str]) -> librouteros.Api:
    api = connect(server)
    for text in chain_rules:
        api.path("routing", "filter", "rule").add(chain="fe-in", rule=text, comment="flowenricher")
    api.path("routing", "bgp", "connection").add(**{"name": "fe", "local.role": "ibgp", "remote.address": PEER,
                                                    "as": "65000", "remote.as": "65000", "input.filter": "fe-in"})
    return api


CONFIG_SET = ((65001, 666),), ((216285, 666, 0),)
ROUTE_CASES = [
    # what the appliance announces with blackhole.communities: accepted, as blackholes
    ("config set, IPv4 /32", route("203.0.113.9/32", "192.0.2.1", *CONFIG_SET), True),
    ("config set plus NO_EXPORT", route("203.0.113.9/32", "192.0.2.1", ((65001, 666), (65535, 65281)),
                                        CONFIG_SET[1]), True),
    ("config set, IPv6 /128 with the IPv6 next hop", route("2001:db8::9/128", "100::1", *CONFIG_SET), True),
    ("the rule's set and next hop", route("203.0.113.9/32", "192.0.2.7", ((65001, 777), (65535, 65281))), True),
    ("the rule's set, IPv6 (next_hop_v6)", route("2001:db8::9/128", "100::1", ((65001, 777), (65535, 65281))), True),
    # anything else is rejected
    ("the default 65535:666 only", route("203.0.113.9/32", "192.0.2.1", ((65535, 666),)), False),
    ("large community missing", route("203.0.113.9/32", "192.0.2.1", CONFIG_SET[0]), False),
    ("216285:666 as a large community with another last part", route("203.0.113.9/32", "192.0.2.1", CONFIG_SET[0],
                                                                      ((216285, 666, 1),)), False),
    ("a next hop the appliance does not use", route("203.0.113.9/32", "192.0.2.99", *CONFIG_SET), False),
    ("IPv6 with the IPv4 rule's next hop family", route("2001:db8::9/128", "100::2", *CONFIG_SET), False),
    ("a /31 (min_prefix_length_v4 is 32)", route("203.0.113.8/31", "192.0.2.1", *CONFIG_SET), False),
    ("an IPv6 /64", route("2001:db8::/64", "100::1", *CONFIG_SET), False),
    ("the rule's set without NO_EXPORT", route("203.0.113.9/32", "192.0.2.7", ((65001, 777),)), False),
]


@pytest.mark.parametrize(("case", "announced", "installed"), ROUTE_CASES, ids=[c[0] for c in ROUTE_CASES])
def test_the_roles_filter_installs_exactly_what_the_appliance_announces(
        sim: RouterOsSim, case: str, announced: BgpRoute, installed: bool) -> None:
    api = bgp_router(sim, role_filter_rules())
    sim.state.feed(PEER, [announced])
    table = ("ip" if announced.dst.version == 4 else "ipv6", "route")
    bgp = [r for r in api.path(*table) if r.get("bgp")]
    assert len(bgp) == (1 if installed else 0), (case, bgp)
    if installed:
        assert (bgp[0]["dst-address"], bgp[0]["gateway"]) == (str(announced.dst), str(announced.gw))
        assert bgp[0]["blackhole"] is True and bgp[0]["active"] is True and bgp[0]["dynamic"] is True


def test_routes_follow_withdrawals_filter_changes_and_stay_read_only(sim: RouterOsSim) -> None:
    api = bgp_router(sim, role_filter_rules())
    sim.state.feed(PEER, [route("203.0.113.9/32", "192.0.2.1", *CONFIG_SET),
                          route("203.0.113.10/32", "192.0.2.1", ((65535, 666),))])
    routes = api.path("ip", "route")
    assert [r["dst-address"] for r in routes if r.get("bgp")] == ["203.0.113.9/32"]
    installed = next(r for r in routes if r.get("bgp"))
    with pytest.raises(TrapError, match="dynamic"):
        routes.remove(installed[".id"])
    # a filter for the default community only (the role's old filter) drops the configured one
    rules = api.path("routing", "filter", "rule")
    for rule in list(rules):
        rules.remove(rule[".id"])
    rules.add(chain="fe-in", rule="if (afi ipv4 && dst-len == 32 && bgp-communities includes 65535:666) "
                                  "{ set blackhole yes; accept; }")
    assert [r["dst-address"] for r in routes if r.get("bgp")] == ["203.0.113.10/32"]
    sim.state.feed(PEER, [])  # everything withdrawn
    assert [r for r in routes if r.get("bgp")] == []


def test_routes_from_a_peer_without_a_connection_are_not_installed(sim: RouterOsSim) -> None:
    api = bgp_router(sim, role_filter_rules())
    sim.state.feed("10.9.9.9", [route("203.0.113.9/32", "192.0.2.1", *CONFIG_SET)])
    assert [r for r in api.path("ip", "route") if r.get("bgp")] == []


@pytest.mark.parametrize(("rule", "reason"), [
    ("if (bgp-communities includes 216285:666) { accept }", "216285:666"),       # not a 16-bit community
    ("if (bgp-large-communities includes 65001:666) { accept }", "65001:666"),   # not a:b:c
    ("if (bgp-path-regexp 64500) { accept }", "unsupported matcher"),
    ("if (afi ipv4 { accept }", "syntax error"),
    ("if (afi ipv4) { set distance 5; accept }", "unsupported action"),
])
def test_filter_rules_outside_the_subset_are_refused(sim: RouterOsSim, rule: str, reason: str) -> None:
    rules = connect(sim).path("routing", "filter", "rule")
    with pytest.raises(TrapError, match=f"invalid value for argument rule.*{reason}"):
        rules.add(chain="x", rule=rule)
    assert list(rules) == []


def test_evaluation_order_fallthrough_else_and_any() -> None:
    v4 = route("203.0.113.9/32", "192.0.2.1", ((65001, 666),))
    assert evaluate_chain(["if (dst-len < 32) { reject; }", "accept;"], v4) == (True, False)
    assert evaluate_chain(["if (dst in 203.0.113.0/24) { set blackhole yes; } else { reject; }", "accept;"],
                          v4) == (True, True)
    assert evaluate_chain(["if (!(bgp-communities any 65535:666,65001:666)) { reject; }", "accept"], v4) == (True, False)
    assert evaluate_chain(["if (bgp-communities includes 65535:666,65001:666) { accept; }"], v4) == (False, False)
    assert evaluate_chain(["if (bgp-communities includes blackhole) { accept; }"],
                          route("203.0.113.9/32", "192.0.2.1", ((65535, 666),))) == (True, False)
    assert evaluate_chain([], v4) == (False, False)  # the chain's end rejects


def test_bgp_instance_is_required_from_7_20() -> None:
    conn = {"name": "fe", "local.role": "ibgp", "remote.address": PEER, "as": "65000"}
    with RouterOsSim(users={"admin": PASSWORD}, version="7.20.2") as server:
        api = connect(server)
        connections = api.path("routing", "bgp", "connection")
        with pytest.raises(TrapError, match="instance not specified"):
            connections.add(**conn)
        with pytest.raises(TrapError, match="does not match any value of instance"):
            connections.add(**conn, instance="")   # what the role sent before
        api.path("routing", "bgp", "instance").add(name="flowenricher", **{"as": "65000"})
        connections.add(**conn, instance="flowenricher")
        assert [c["instance"] for c in connections] == ["flowenricher"]
    with RouterOsSim(users={"admin": PASSWORD}, version="7.19.4") as server, \
            pytest.raises(TrapError, match="no such command prefix"):
        list(connect(server).path("routing", "bgp", "instance"))


BIRD_CONF = """\
router id 10.0.0.1;
protocol device {{ scan time 10; }}
protocol static r4 {{ ipv4;
  route 203.0.113.9/32 blackhole {{ bgp_next_hop = 192.0.2.1; bgp_community.add((65001,666));
                                   bgp_community.add((65535,65281)); bgp_large_community.add((216285,666,0)); }};
  route 203.0.113.10/32 blackhole {{ bgp_next_hop = 192.0.2.1; bgp_community.add((65535,666)); }};
}}
protocol static r6 {{ ipv6;
  route 2001:db8::9/128 blackhole {{ bgp_next_hop = 100::1; bgp_community.add((65001,666));
                                    bgp_large_community.add((216285,666,0)); }};
}}
"""


def test_bird_feeds_the_route_table_through_the_filter(sim: RouterOsSim, tmp_path: Path) -> None:
    """BIRD's own `show route all` output (routes carrying BGP attributes) read by the feed."""
    if shutil.which("bird") is None or shutil.which("birdc") is None:
        pytest.skip("BIRD is not installed (Debian package bird2)")
    (tmp_path / "bird.conf").write_text(BIRD_CONF.format())
    ctl, pid = tmp_path / "bird.ctl", tmp_path / "bird.pid"
    subprocess.run(["bird", "-c", str(tmp_path / "bird.conf"), "-s", str(ctl), "-P", str(pid)], check=True, timeout=30)
    try:
        api = bgp_router(sim, role_filter_rules())
        feed = BirdFeed(sim.state, ctl, ["r4", "r6"], PEER)
        for _ in range(50):
            feed.poll()
            if len(sim.state.received.get(PEER, {})) == 3:
                break
            time.sleep(0.1)
        assert sorted(sim.state.received[PEER]) == ["2001:db8::9/128", "203.0.113.10/32", "203.0.113.9/32"]
        v4 = [(r["dst-address"], r["bgp.large-communities"]) for r in api.path("ip", "route") if r.get("bgp")]
        v6 = [(r["dst-address"], r["gateway"]) for r in api.path("ipv6", "route") if r.get("bgp")]
        assert v4 == [("203.0.113.9/32", "216285:666:0")]   # 203.0.113.10 has only 65535:666
        assert v6 == [("2001:db8::9/128", "100::1")]
    finally:
        os.kill(int(pid.read_text()), signal.SIGTERM)
