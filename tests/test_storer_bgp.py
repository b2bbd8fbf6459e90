"""BGP enrichment on storers (docs/scale-out.md, "BGP on storers"): the appliance's gobgpd
reflects the router's table to each storer's gobgpd, and a storer's RIB mirror enriches
its flows from its own gobgpd.

Real daemons in a network namespace of the test (tests/support/bgp_lab.py): BIRD stands in
for the router and announces routes over iBGP to the appliance's gobgpd; a second gobgpd,
the storer's, listens on no port and connects to the appliance's as a route-reflector
client. Both gobgpd configs are rendered by ansible-playbook from the gobgp role's
template, with the sessions derived from an inventory by the role's filter
(ansible/plugins/filter/flowenricher_gobgp.py), and checked by the role's
`gobgpd --dry-run` gate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from support.bgp_lab import BIRD_V4, GOBGP_V4, GOBGPD, BgpLab, StaticRoute, bgp_lab_fixture  # noqa: F401 (fixture)
from support.bgp_lab import wait_until as lab_wait_until
from support.netns import Spawned
from test_enrich_bgp import batch_of, columns

from appliance.flowenricher.bgp.client import GoBgpClient, GoBgpError
from appliance.flowenricher.bgp.mirror import RibMirror
from appliance.flowenricher.enrich.base import AddressSet
from appliance.flowenricher.enrich.bgp import BgpStage

REPO = Path(__file__).resolve().parent.parent
STORER_V4 = "10.255.0.3"
ASN = 65000

pytestmark = pytest.mark.skipif(shutil.which("ansible-playbook") is None, reason="ansible is not installed")

ROUTES = [
    StaticRoute("203.0.113.0/24", (64500, 15169), ("65000:100",), 200),
    StaticRoute("198.51.100.128/25", (64501, 64496, 64497), (), 50),
]

RENDER = [{
    "name": "gobgpd's config for the appliance and a storer, as the gobgp role writes it",
    "hosts": "appliance:storers",
    "gather_facts": False,
    "tasks": [
        {"name": "The gobgp role's preflight (its defaults stay visible)",
         "ansible.builtin.include_role": {"name": "gobgp", "tasks_from": "preflight", "public": True}},
        {"name": "The role's template and gate (configure.yml)",
         "ansible.builtin.template": {"src": str(REPO / "roles" / "gobgp" / "templates" / "gobgpd.conf.j2"),
                                      "dest": "{{ out }}/{{ inventory_hostname }}.toml", "mode": "0644",
                                      "validate": f"{GOBGPD} --config-type toml --dry-run -f %s"}},
    ],
}]


def render_configs(workdir: Path) -> dict[str, Path]:
    """gobgpd.conf of the appliance `flowenricher-1` and the storer `storer-1`."""
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = {"all": {"children": {
        "appliance": {"hosts": {"flowenricher-1": {**local, "flowenricher_bgp_listener": {
            "enabled": True, "listen_ip": GOBGP_V4, "peer_ip": BIRD_V4, "asn": ASN, "remote_asn": ASN}}}},
        "storers": {"hosts": {"storer-1": {**local, "ansible_host": "192.0.2.31", "gobgp_address": STORER_V4,
                                           "flowenricher_bgp_listener": {"enabled": False}}}},
    }}}
    (workdir / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (workdir / "render.yml").write_text(yaml.safe_dump(RENDER, sort_keys=False))
    out = workdir / "out"
    out.mkdir()
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1", "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
           "ANSIBLE_FILTER_PLUGINS": str(REPO / "ansible" / "plugins" / "filter"),
           "ANSIBLE_LOCALHOST_WARNING": "False"}
    done = subprocess.run(["ansible-playbook", "-i", "hosts.yml", "-e", json.dumps({"out": str(out)}), "render.yml"],
                          cwd=workdir, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return {"appliance": out / "flowenricher-1.toml", "storer": out / "storer-1.toml"}


def start_gobgpd(lab: BgpLab, config: Path, name: str) -> tuple[Spawned, str]:
    """gobgpd with `config` in the lab's namespace, its API on a Unix socket; waits for its API."""
    assert lab.ns is not None
    socket = lab.dir / f"{name}.sock"
    target = f"unix://{socket}"
    daemon = lab.net.spawn(lab.ns, [GOBGPD, "-f", str(config), "--api-hosts", target, "--pprof-disable", "-p",
                                    "-l", "info"], name=name)
    with GoBgpClient(target, timeout=1.0) as client:

        def started() -> bool:
            try:
                return socket.exists() and client.started_asn() == ASN
            except GoBgpError:
                return False

        daemon.wait_for(started, 15, f"{name}'s API with BGP started")
    return daemon, target


def test_a_storer_enriches_from_the_routes_the_appliance_reflects(bgp_lab: BgpLab, tmp_path: Path) -> None:
    configs = render_configs(tmp_path)
    storer_config = configs["storer"].read_text()
    assert "port = -1" in storer_config  # the storer's gobgpd listens on no port
    assert "route-reflector-client = true" in configs["appliance"].read_text()

    bgp_lab.start(ROUTES, gobgpd=False)  # the namespace and BIRD (the router)
    assert bgp_lab.ns is not None
    bgp_lab.ns.ip("addr", "add", f"{STORER_V4}/32", "dev", "lo")
    start_gobgpd(bgp_lab, configs["appliance"], "gobgpd-appliance")
    storer, storer_api = start_gobgpd(bgp_lab, configs["storer"], "gobgpd-storer")

    registry = CollectorRegistry()
    mirror = RibMirror(storer_api, registry, max_backoff_s=1.0)
    stage = BgpStage(mirror, registry, local_asn=ASN)
    mirror.start()
    try:
        lab_wait_until(lambda: len(mirror.view()) == len(ROUTES), "the reflected routes in the storer's mirror",
                       timeout=60)
        batch = batch_of([("198.51.100.200", "203.0.113.77")])
        stage.enrich(batch, AddressSet.of(batch))
        got = columns(batch)[0]
        # As on the appliance: the router's AS path, communities and LOCAL_PREF, its next hop.
        assert (got["dst_as_path"], got["peer_dst_as"], got["dst_as"], got["local_pref"], got["bgp_next_hop"]) == (
            [64500, 15169], 64500, 15169, 200, BIRD_V4)
        assert (got["src_as"], got["peer_src_as"]) == (64497, 64501)

        bgp_lab.set_routes(ROUTES[1:])  # the router withdraws 203.0.113.0/24
        lab_wait_until(lambda: len(mirror.view()) == len(ROUTES) - 1, "the withdrawal on the storer", timeout=30)
        batch = batch_of([("198.51.100.200", "203.0.113.77")])
        stage.enrich(batch, AddressSet.of(batch))
        got = columns(batch)[0]
        assert (got["dst_as_path"], got["peer_dst_as"], got["bgp_next_hop"]) == ([], 0, "")
        assert got["src_as"] == 64497  # the other route stays
    finally:
        stage.close()
    assert storer.alive()
