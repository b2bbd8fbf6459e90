"""A BGP lab for tests: GoBGP and BIRD 2 peering inside a network namespace of the test.

What runs (real daemons, Debian's ``gobgpd`` 3.10 and ``bird2``):

* one namespace (:mod:`support.netns`, unique name, deleted at the end) whose loopback
  holds 10.255.0.1 and fd00:255::1 (gobgpd) and 10.255.0.2 and fd00:255::2 (BIRD).
  Not 127.0.0.0/8: GoBGP treats a next hop there as a withdrawal;
* gobgpd with a config file: one IPv4 session (ipv4-unicast) and one IPv6 session
  (ipv6-unicast) with BIRD, passive, so BIRD's connect timers alone decide how fast a
  session comes back;
* BIRD 2 with ``strict bind yes`` (it shares port 179 with gobgpd on the same loopback),
  its control socket in the lab's directory, and two static protocols whose routes carry
  an AS path (``bgp_path.prepend``), communities and local preference, exported to
  gobgpd with ``next hop self``.  iBGP by default (both AS 65000), because LOCAL_PREF is
  only carried over iBGP and a router's full table reaches the appliance that way.

How the test process reaches GoBGP's gRPC API from the root namespace: gobgpd listens on
a **Unix socket** in the lab's directory (``--api-hosts unix://...``), which a process
in any namespace can connect to.  That avoids a veth pair into the root namespace,
whose addresses would be visible to (and could clash with) everything else on the
machine; the client code is the same as over TCP.

Routes are changed with :meth:`BgpLab.set_routes` (BIRD's config is rewritten and
reloaded with ``birdc configure``); gobgpd can be killed and restarted by PID
(:meth:`BgpLab.kill_gobgpd`, :meth:`BgpLab.start_gobgpd`).  Everything stops, by PID,
and the namespace is deleted when the lab closes, failures included (the
:func:`bgp_lab_fixture` finalizer).
"""

from __future__ import annotations

import ipaddress
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.flowenricher.bgp.client import GoBgpClient, GoBgpError

from .netns import Namespace, Spawned, TestNetwork, require_netns, sweep_stale

GOBGPD = "/usr/bin/gobgpd"
BIRD = "/usr/sbin/bird"
BIRDC = "/usr/sbin/birdc"

GOBGP_V4, BIRD_V4 = "10.255.0.1", "10.255.0.2"
GOBGP_V6, BIRD_V6 = "fd00:255::1", "fd00:255::2"


def unavailable_reason() -> str | None:
    """Why the lab cannot run here (daemons missing, no namespaces), or None."""
    for binary, package in ((GOBGPD, "gobgpd"), (BIRD, "bird2"), (BIRDC, "bird2")):
        if shutil.which(binary) is None:
            return f"{binary} is not installed (Debian package {package})"
    return None


@dataclass(frozen=True)
class StaticRoute:
    """A route BIRD announces: AS path nearest AS first, communities as "ASN:VALUE"."""

    prefix: str
    as_path: tuple[int, ...] = ()
    communities: tuple[str, ...] = ()
    local_pref: int | None = None

    def bird(self) -> str:
        """The route in BIRD's static protocol syntax (prepending builds the path from
        its origin end)."""
        net = ipaddress.ip_network(self.prefix, strict=True)
        actions = [f"bgp_path.prepend({asn});" for asn in reversed(self.as_path)]
        for community in self.communities:
            high, low = community.split(":")
            actions.append(f"bgp_community.add(({int(high)},{int(low)}));")
        if self.local_pref is not None:
            actions.append(f"bgp_local_pref = {int(self.local_pref)};")
        block = f" {{ {' '.join(actions)} }}" if actions else ""
        return f"  route {net} blackhole{block};\n"


class BgpLab:
    """gobgpd and BIRD in one namespace of `net` (see the module docstring)."""

    def __init__(self, net: TestNetwork, gobgp_asn: int = 65000, bird_asn: int = 65000) -> None:
        self.net = net
        self.gobgp_asn = gobgp_asn
        self.bird_asn = bird_asn
        # Unix socket paths are limited to 108 bytes: pytest's tmp_path can be longer.
        self.dir = Path(tempfile.mkdtemp(prefix="bgplab-"))
        self.api_socket = self.dir / "gobgp.sock"
        self.bird_socket = self.dir / "bird.ctl"
        self.ns: Namespace | None = None
        self.gobgpd: Spawned | None = None
        self.bird: Spawned | None = None
        self._starts = 0

    @property
    def api_target(self) -> str:
        """GoBGP's gRPC address for :class:`GoBgpClient` and the RIB mirror."""
        return f"unix://{self.api_socket}"

    def start(self, routes: Iterable[StaticRoute] = (), gobgpd: bool = True, timeout: float = 10.0) -> None:
        """Namespace, addresses, BIRD with `routes`, and gobgpd unless told not to;
        `timeout` for each daemon to come up (BIRD parses a full table for minutes)."""
        self.ns = self.net.namespace("bgp", ipv6=True)
        for addr in (f"{GOBGP_V4}/32", f"{BIRD_V4}/32", f"{GOBGP_V6}/128", f"{BIRD_V6}/128"):
            self.ns.ip("addr", "add", addr, "dev", "lo", *(["nodad"] if ":" in addr else []))
        self._write_gobgp_config()
        self.write_bird_config(routes)
        self.bird = self.net.spawn(self.ns, [BIRD, "-f", "-c", str(self.dir / "bird.conf"), "-s",
                                             str(self.bird_socket)], name="bird")
        self.bird.wait_for(self.bird_socket.exists, timeout, "BIRD's control socket")
        if gobgpd:
            self.start_gobgpd(timeout)

    # gobgpd

    def _write_gobgp_config(self) -> None:
        neighbors = []
        for peer, local, family in ((BIRD_V4, GOBGP_V4, "ipv4-unicast"), (BIRD_V6, GOBGP_V6, "ipv6-unicast")):
            neighbors.append(f"""
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{peer}"
    peer-as = {self.bird_asn}
  [neighbors.transport.config]
    local-address = "{local}"
    passive-mode = true
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "{family}"
""")
        (self.dir / "gobgpd.toml").write_text(f"""[global.config]
  as = {self.gobgp_asn}
  router-id = "{GOBGP_V4}"
  local-address-list = ["{GOBGP_V4}", "{GOBGP_V6}"]
  port = 179
{"".join(neighbors)}""")

    def start_gobgpd(self, timeout: float = 15.0) -> Spawned:
        """Start gobgpd and wait until its API answers with BGP started."""
        assert self.ns is not None, "start() the lab first"
        self.api_socket.unlink(missing_ok=True)  # left behind by a killed gobgpd
        self._starts += 1
        self.gobgpd = self.net.spawn(self.ns, [GOBGPD, "-f", str(self.dir / "gobgpd.toml"), "--api-hosts",
                                               self.api_target, "--pprof-disable", "-p", "-l", "info"],
                                     name=f"gobgpd-{self._starts}")
        with GoBgpClient(self.api_target, timeout=1.0) as client:

            def started() -> bool:
                if not self.api_socket.exists():
                    return False
                try:
                    return client.started_asn() == self.gobgp_asn
                except GoBgpError:
                    return False

            self.gobgpd.wait_for(started, timeout, "GoBGP API with BGP started")
        return self.gobgpd

    def kill_gobgpd(self) -> None:
        """SIGKILL gobgpd (by PID): its sessions drop at once, as in a crash."""
        if self.gobgpd is not None:
            self.gobgpd.stop(signal.SIGKILL, timeout=5)
            self.gobgpd = None

    # BIRD

    def write_bird_config(self, routes: Iterable[StaticRoute]) -> Path:
        """BIRD's config announcing `routes` (written as a stream: a full table fits)."""
        path = self.dir / "bird.conf"
        ebgp = self.gobgp_asn != self.bird_asn
        sessions = ""
        for name, family, local, peer in (("gobgp4", "ipv4", BIRD_V4, GOBGP_V4), ("gobgp6", "ipv6", BIRD_V6, GOBGP_V6)):
            sessions += f"""
protocol bgp {name} {{
  strict bind yes;
  local {local} as {self.bird_asn};
  neighbor {peer} as {self.gobgp_asn};
  {"multihop 2;" if ebgp else ""}
  connect delay time 1;
  connect retry time 1;
  error wait time 1, 2;
  {family} {{ import all; export all; next hop self; }};
}}
"""
        with path.open("w") as out:
            out.write(f"router id {BIRD_V4};\nlog stderr all;\nprotocol device {{ scan time 10; }}\n")
            out.write("protocol static routes4 {\n  ipv4;\n")
            ipv6: list[StaticRoute] = []
            for route in routes:
                if ":" in route.prefix:
                    ipv6.append(route)
                else:
                    out.write(route.bird())
            out.write("}\nprotocol static routes6 {\n  ipv6;\n")
            out.writelines(route.bird() for route in ipv6)
            out.write("}\n")
            out.write(sessions)
        return path

    def birdc(self, *command: str, timeout: float = 30.0) -> str:
        """A birdc command on the lab's BIRD; its output (raises on failure)."""
        done = subprocess.run([BIRDC, "-s", str(self.bird_socket), *command], capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"birdc {' '.join(command)}: exit {done.returncode}: {done.stdout}{done.stderr}")
        return done.stdout

    def route(self, prefix: str) -> str:
        """BIRD's ``show route PREFIX all`` (what the router would hold), "" without one."""
        try:
            out = self.birdc("show", "route", prefix, "all")
        except RuntimeError as err:
            if "Network not found" in str(err):
                return ""
            raise
        return out if prefix.split("/")[0] in out else ""

    def set_routes(self, routes: Iterable[StaticRoute]) -> None:
        """Announce exactly `routes` from now on (BIRD sends the differences)."""
        self.write_bird_config(routes)
        out = self.birdc("configure")
        if "Reconfigured" not in out and "Reconfiguration in progress" not in out:
            raise RuntimeError(f"BIRD refused its new config:\n{out}")

    def wait_established(self, timeout: float = 20.0) -> None:
        """Wait until both BGP sessions are Established (seen from BIRD)."""
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            out = self.birdc("show", "protocols")
            sessions = [line for line in out.splitlines() if line.startswith(("gobgp4", "gobgp6"))]
            if len(sessions) == 2 and all("Established" in line for line in sessions):
                return
            time.sleep(0.1)
        gobgpd = self.gobgpd.describe() if self.gobgpd else "(gobgpd not running)"
        raise TimeoutError(f"BGP sessions not established within {timeout} s:\n{out}\n{gobgpd}")

    def close(self) -> None:
        try:
            self.net.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(name="bgp_lab")
def bgp_lab_fixture(tmp_path: Path) -> Iterator[BgpLab]:
    """The ``bgp_lab`` fixture: a :class:`BgpLab`, not started; skips when namespaces or
    the daemons are missing.  A test module imports this function to use it."""
    require_netns()
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    sweep_stale()
    lab = BgpLab(TestNetwork(tmp_path / "net"))
    try:
        yield lab
    finally:
        lab.close()



def wait_until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what}")
        time.sleep(0.05)
