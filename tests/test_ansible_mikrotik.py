"""The mikrotik role (site.yml's Router play) against the RouterOS simulator, over API-SSL.

The entries the role owns follow the appliance's address: converged with address A, then
with B (then an IPv6 C), the router holds only the newest address's flow target, SNMP
addresses and BGP neighbour, while entries the operator made by hand (a flow target to
another collector on the same port, an SNMP community, an address list entry) survive.
RouterOS has no comment on a flow target (and the simulator refuses one, as
community.routeros's field list for the path has none), so the role records its target
addresses in an address list; a role that matched its target by the current address only
leaves A's target exporting forever, and this test fails on it.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import librouteros
import pytest
import yaml
from support.files import self_signed
from support.routeros_sim import RouterOsSim

REPO = Path(__file__).resolve().parent.parent
API_PASSWORD = "change-me-routeros-api"  # inventory.example's vault example
COMMUNITY = "change-me-snmp-community"

pytestmark = pytest.mark.skipif(shutil.which("ansible-playbook") is None, reason="ansible is not installed (test extra)")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("cert"), "router", "router", "IP:127.0.0.1")


@pytest.fixture
def router(certificate: tuple[Path, Path]) -> Iterator[RouterOsSim]:
    with RouterOsSim(users={"flowenricher": API_PASSWORD}, tls=certificate, version="7.20.1") as server:
        yield server


def _inventory(tmp_path: Path, server: RouterOsSim, cert: Path) -> Path:
    """inventory.example as an operator copies it, its vault filled in from the example,
    the router pointed at the simulator."""
    inv = tmp_path / "inventory"
    shutil.copytree(REPO / "inventory.example", inv)
    vault = inv / "group_vars" / "all"
    (vault / "vault.yml").write_text((vault / "vault.yml.example").read_text())
    (inv / "group_vars" / "mikrotik.yml").write_text(yaml.safe_dump({
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "mikrotik_api_host": "127.0.0.1", "mikrotik_api_port": server.port, "mikrotik_api_ca_path": str(cert),
        "mikrotik_api_user": "flowenricher"}))
    return inv


def _converge(inv: Path, address: str) -> dict[str, int]:
    """site.yml limited to the router, with the appliance at `address`; the recap's counts."""
    main = inv / "group_vars" / "all" / "main.yml"
    values = yaml.safe_load(main.read_text())
    values["appliance_address"] = address
    values["flowenricher_bgp_listener"]["listen_ip"] = address
    main.write_text(yaml.safe_dump(values))
    done = subprocess.run(["ansible-playbook", "-i", str(inv), "site.yml", "--limit", "edge-1"],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1"})
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    recap = re.search(r"edge-1\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", done.stdout)
    assert recap, done.stdout[-3000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, recap.groups()), strict=True))


def _api(server: RouterOsSim, cert: Path) -> librouteros.Api:
    ctx = ssl.create_default_context(cafile=str(cert))
    return librouteros.connect(server.host, "flowenricher", API_PASSWORD, port=server.port, timeout=5,
                               ssl_wrapper=lambda s: ctx.wrap_socket(s, server_hostname="127.0.0.1"))


def _owned(server: RouterOsSim) -> dict[str, object]:
    menus = server.snapshot()
    communities = {c["name"]: c for c in menus["/snmp/community"]}
    return {
        "targets": sorted((t["dst-address"], t["port"]) for t in menus["/ip/traffic-flow/target"]),
        "records": sorted(f"{e['list']} {e['address']}" for e in
                          menus["/ip/firewall/address-list"] + menus["/ipv6/firewall/address-list"]),
        "community": communities[COMMUNITY]["addresses"],
        "factory": communities["public"]["addresses"],
        "bgp": [c["remote.address"] for c in menus["/routing/bgp/connection"]],
        "by hand": sorted(n for n, c in communities.items() if c.get("comment") == "by hand"),
    }


def test_entries_the_role_owns_follow_the_appliance_address(tmp_path: Path, router: RouterOsSim,
                                                           certificate: tuple[Path, Path]) -> None:
    cert = certificate[0]
    api = _api(router, cert)
    # the operator's own: a second collector on the same port, a community, an address list
    api.path("ip", "traffic-flow", "target").add(**{"dst-address": "198.51.100.77", "port": "2055"})
    api.path("snmp", "community").add(name="noc-monitoring", addresses="198.51.100.0/24", comment="by hand")
    api.path("ip", "firewall", "address-list").add(list="admins", address="198.51.100.5", comment="by hand")
    inv = _inventory(tmp_path, router, cert)

    first = _converge(inv, "192.0.2.10")
    assert first["changed"] > 0
    assert _owned(router) == {
        "targets": [("192.0.2.10", "2055"), ("198.51.100.77", "2055")],
        "records": ["admins 198.51.100.5", "flowenricher-flow-target 192.0.2.10"],
        "community": "192.0.2.10/32", "factory": "192.0.2.10/32", "bgp": ["192.0.2.10"],
        "by hand": ["noc-monitoring"],
    }

    assert _converge(inv, "192.0.2.20") != {}
    assert _owned(router) == {
        "targets": [("192.0.2.20", "2055"), ("198.51.100.77", "2055")],  # A's target is gone, the operator's stays
        "records": ["admins 198.51.100.5", "flowenricher-flow-target 192.0.2.20"],
        "community": "192.0.2.20/32", "factory": "192.0.2.20/32", "bgp": ["192.0.2.20"],
        "by hand": ["noc-monitoring"],
    }
    assert _converge(inv, "192.0.2.20")["changed"] == 0  # and a second run with B changes nothing

    _converge(inv, "2001:db8::20")  # the other family: the IPv4 record goes, an IPv6 one comes
    owned = _owned(router)
    assert owned["targets"] == [("198.51.100.77", "2055"), ("2001:db8::20", "2055")]
    assert owned["records"] == ["admins 198.51.100.5", "flowenricher-flow-target 2001:db8::20/128"]
    assert (owned["community"], owned["bgp"]) == ("2001:db8::20/128", ["2001:db8::20"])


def test_the_simulator_refuses_a_comment_on_a_flow_target(router: RouterOsSim,
                                                          certificate: tuple[Path, Path]) -> None:
    """Why the role cannot mark its target: RouterOS has no such field (nor does
    community.routeros's list of the path's fields), and the simulator is as strict."""
    targets = _api(router, certificate[0]).path("ip", "traffic-flow", "target")
    with pytest.raises(librouteros.exceptions.TrapError, match="unknown parameter comment"):
        targets.add(**{"dst-address": "192.0.2.10", "comment": "flowenricher"})
    from ansible_collections.community.routeros.plugins.module_utils._api_data import (  # type: ignore[import-untyped]
        PATHS,
    )

    assert "comment" not in PATHS[("ip", "traffic-flow", "target")].unversioned.fields
    assert "comment" in PATHS[("ip", "firewall", "address-list")].unversioned.fields
