"""A real Net-SNMP agent (Debian's ``snmpd``) on loopback, serving this machine's IF-MIB.

The agent reads only the configuration written here (``-C -c``): a read-only v2c
community limited to loopback, and one SNMPv3 user (authPriv, SHA + AES-128) created
with ``createUser``.  Its persistent state (engine id, the localized v3 keys) goes to the
test's own directory (``persistentDir``), never to /var/lib/snmp.  SMUX and AgentX are
off, so several agents (other tests, other runs) never compete for ports 199 or 705.

It is ready when the kernel lists a UDP socket of *its* process on the port (socket
inodes of ``/proc/<pid>/fd`` matched in ``/proc/net/udp``/``udp6``), so a port taken by
someone else is an error, not a false start.  It is stopped by its own PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

SNMPD = "/usr/sbin/snmpd"


@dataclass(frozen=True)
class V3User:
    """An authPriv user with SHA authentication and AES-128 privacy."""

    name: str = "fe-test"
    auth_key: str = "fe-auth-pass-1"
    priv_key: str = "fe-priv-pass-1"


def unavailable_reason() -> str | None:
    if not os.access(SNMPD, os.X_OK):
        return f"{SNMPD} is not installed (Debian package snmpd)"
    return None


def ipv6_loopback() -> bool:
    """True when ::1 can be bound here (IPv6 may be disabled in a container)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def free_udp_port(ipv6: bool = True) -> int:
    """A UDP port free on 127.0.0.1 (and on ::1 when `ipv6`) at the time of asking."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s4:
            s4.bind(("127.0.0.1", 0))
            port: int = s4.getsockname()[1]
            if not ipv6:
                return port
            try:
                with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s6:
                    s6.bind(("::1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no UDP port free on both 127.0.0.1 and ::1")


def sys_interfaces() -> dict[int, str]:
    """ifIndex -> name of this network namespace's interfaces, from /sys (ground truth)."""
    out: dict[int, str] = {}
    for entry in Path("/sys/class/net").iterdir():
        with contextlib.suppress(OSError, ValueError):  # an interface removed while reading
            out[int((entry / "ifindex").read_text())] = entry.name
    return out


class SnmpAgent:
    """``snmpd -f`` on 127.0.0.1:`port` (and [::1]:`port` when `ipv6`), files under `workdir`."""

    def __init__(self, workdir: Path, port: int | None = None, community: str = "fe-test-ro",
                 user: V3User | None = None, ipv6: bool | None = None) -> None:
        self.workdir = workdir
        self.ipv6 = ipv6_loopback() if ipv6 is None else ipv6
        self.port = port if port is not None else free_udp_port(self.ipv6)
        self.community = community
        self.user = user or V3User()
        self.popen: subprocess.Popen[bytes] | None = None
        self.conf = workdir / "snmpd.conf"
        self.pidfile = workdir / "snmpd.pid"
        self.logfile = workdir / "snmpd.log"
        self.state_dir = workdir / "persistent"

    @property
    def pid(self) -> int:
        assert self.popen is not None, "agent not started"
        return self.popen.pid

    def _config(self) -> str:
        lines = [
            f"[snmp] persistentDir {self.state_dir}",
            "master no",  # no AgentX socket
            f"rocommunity {self.community} 127.0.0.1",
            f'createUser {self.user.name} SHA "{self.user.auth_key}" AES "{self.user.priv_key}"',
            f"rouser {self.user.name} authpriv",
        ]
        if self.ipv6:
            lines.insert(3, f"rocommunity6 {self.community} ::1")
        return "\n".join(lines) + "\n"

    def start(self, timeout_s: float = 10.0) -> SnmpAgent:
        if self.popen is not None:
            raise RuntimeError("agent already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(exist_ok=True)
        self.conf.write_text(self._config())
        listen = f"udp:127.0.0.1:{self.port}" + (f",udp6:[::1]:{self.port}" if self.ipv6 else "")
        env = dict(os.environ, SNMP_PERSISTENT_DIR=str(self.state_dir), MIBS="", MIBDIRS=str(self.state_dir))
        argv = [SNMPD, "-f", "-Lo", "-C", "-c", str(self.conf), "-p", str(self.pidfile), "-I", "-smux", listen]
        with self.logfile.open("wb") as log:
            self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self._listening():
            if self.popen.poll() is not None:
                raise RuntimeError(f"snmpd exited with {self.popen.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"snmpd did not listen on UDP port {self.port} within {timeout_s} s:\n{self.log()}")
            time.sleep(0.02)
        return self

    def _listening(self) -> bool:
        assert self.popen is not None
        inodes = set()
        with contextlib.suppress(OSError):  # the process may be exiting
            for fd in os.listdir(f"/proc/{self.popen.pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{self.popen.pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
        tables = ["/proc/net/udp"] + (["/proc/net/udp6"] if self.ipv6 else [])
        return all(self._bound_in(table, inodes) for table in tables)

    def _bound_in(self, table: str, inodes: set[str]) -> bool:
        want = f":{self.port:04X}"
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(want) and fields[9] in inodes:
                return True
        return False

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM by PID, then SIGKILL to the session it leads (idempotent)."""
        popen = self.popen
        if popen is None or popen.poll() is not None:
            return
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(timeout_s)

    def __enter__(self) -> SnmpAgent:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
