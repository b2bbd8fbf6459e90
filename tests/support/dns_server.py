"""A real DNS server on loopback for the PTR tests: two Debian ``dnsmasq`` processes.

The *front* one, which the tests query, answers from its own configuration: a PTR
record per address given, NXDOMAIN for any other name inside the reverse zones given
(``--local``, dnsmasq's "answer only from local data"), each answer with the TTL given
(``--local-ttl``).  Every other name is forwarded to the *upstream* dnsmasq, which holds
PTR records for the addresses meant to fail: the front validates DNSSEC with the real
root trust anchor, the upstream's unsigned answers cannot be proven, and the front
answers SERVFAIL, as a validating resolver does for a broken delegation.  Names known to
neither server are REFUSED by the upstream, and the front passes that on.

The front logs every query it receives (``--log-queries``) to a file, so a test counts
the queries that really reached the server.  Each process reads no other configuration
(``--conf-file=/dev/null --no-resolv --no-hosts``), binds only 127.0.0.1 on a free port,
and is stopped by its own PID; :meth:`DnsServer.pause` (SIGSTOP) makes the server "hang"
with its socket open, so queries time out instead of being refused.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query
import dns.rcode

DNSMASQ = "/usr/sbin/dnsmasq"

# The DS record of the root zone's key-signing key (KSK-2017, key tag 20326), as IANA
# publishes it.  Any anchor the upstream cannot back would do; the real one keeps the
# front's refusal honest: it is exactly what validation would say about these answers.
ROOT_TRUST_ANCHOR = ".,20326,8,2,E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D"


def unavailable_reason() -> str | None:
    if not os.access(DNSMASQ, os.X_OK):
        return f"{DNSMASQ} is not installed (Debian package dnsmasq-base)"
    return None


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both) when asked."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                    tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")


def reverse_zone(network: str) -> str:
    """The reverse zone of a network: ``198.51.100.0/24`` -> ``100.51.198.in-addr.arpa``.

    Only prefixes on a label boundary (octets for IPv4, nibbles for IPv6) have one.
    """
    net = ipaddress.ip_network(network)
    step = 8 if net.version == 4 else 4
    if net.prefixlen % step:
        raise ValueError(f"{network}: a reverse zone needs a prefix length that is a multiple of {step}")
    labels = net.network_address.reverse_pointer.split(".")
    return ".".join(labels[(net.max_prefixlen - net.prefixlen) // step :])


class Dnsmasq:
    """One ``dnsmasq --no-daemon`` on 127.0.0.1, started and stopped by PID."""

    def __init__(self, workdir: Path, label: str, options: Sequence[str]) -> None:
        self.workdir = workdir
        self.label = label
        self.options = list(options)
        self.port = 0
        self.popen: subprocess.Popen[bytes] | None = None
        self.output = workdir / f"{label}.out"

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"dnsmasq {self.label} not started"
        return self.popen.pid

    def start(self, timeout_s: float = 10.0, attempts: int = 3) -> None:
        """Start on a free port; another port is tried if the one chosen was taken meanwhile."""
        if self.popen is not None:
            raise RuntimeError(f"dnsmasq {self.label} already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(attempts):
            self.port = free_port()
            argv = [
                DNSMASQ, "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                f"--pid-file={self.workdir / (self.label + '.pid')}", *self.options,
            ]
            with self.output.open("wb") as out:
                self.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              start_new_session=True)
            deadline = time.monotonic() + timeout_s
            while not self._answers():
                if self.popen.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"dnsmasq {self.label} did not answer on port {self.port} within "
                                       f"{timeout_s} s:\n{self.log()}")
                time.sleep(0.02)
            else:
                return
            self.popen.wait()
            if "Address already in use" not in self.log() or attempt == attempts - 1:
                raise RuntimeError(f"dnsmasq {self.label} exited with {self.popen.returncode}:\n{self.log()}")
            self.popen = None

    def _answers(self) -> bool:
        """True once the server answers a query (dnsmasq serves version.bind in class CH)."""
        query = dns.message.make_query("version.bind", "TXT", "CH")
        try:
            dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.05)
        except (OSError, dns.exception.DNSException):
            return False
        return True

    def log(self) -> str:
        try:
            return self.output.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no output)"

    def signal(self, signum: signal.Signals) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signum)

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM by PID (after SIGCONT, in case it is paused), then SIGKILL (idempotent)."""
        popen = self.popen
        if popen is None or popen.poll() is not None:
            return
        popen.send_signal(signal.SIGCONT)
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(timeout_s)


class DnsServer:
    """The front and upstream dnsmasq (see the module docstring); the tests query the front.

    `names`: address -> PTR name.  `zones`: networks whose reverse zone the front owns
    (NXDOMAIN for addresses without a name).  `servfail`: addresses answered SERVFAIL.
    `ttl`: the TTL of the front's answers, in seconds.
    """

    def __init__(self, workdir: Path, names: Mapping[str, str], zones: Sequence[str] = (),
                 servfail: Sequence[str] = (), ttl: int = 600) -> None:
        self.workdir = workdir
        self.names = dict(names)
        self.query_log = workdir / "queries.log"
        upstream_options = [f"--ptr-record={_ptr_name(ip)},servfail.invalid" for ip in servfail]
        self.upstream = Dnsmasq(workdir, "upstream", upstream_options)
        self._front_options = [
            *(f"--ptr-record={_ptr_name(ip)},{name}" for ip, name in names.items()),
            *(f"--local=/{reverse_zone(net)}/" for net in zones),
            f"--local-ttl={ttl}", "--log-queries", f"--log-facility={self.query_log}",
            "--dnssec", f"--trust-anchor={ROOT_TRUST_ANCHOR}",
        ]
        self.front: Dnsmasq | None = None

    @property
    def port(self) -> int:
        assert self.front is not None, "DNS server not started"
        return self.front.port

    @property
    def nameserver(self) -> str:
        """The front's address as ``host:port``, the form PtrResolver takes."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> DnsServer:
        self.upstream.start()
        self.front = Dnsmasq(self.workdir, "front", [*self._front_options, f"--server=127.0.0.1#{self.upstream.port}"])
        try:
            self.front.start()
        except Exception:
            self.upstream.stop()
            raise
        return self

    def stop(self) -> None:
        if self.front is not None:
            self.front.stop()
        self.upstream.stop()

    def pause(self) -> None:
        """SIGSTOP the front: its socket stays open and queries go unanswered."""
        assert self.front is not None
        self.front.signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.front is not None
        self.front.signal(signal.SIGCONT)

    def ptr_queries(self) -> list[str]:
        """The PTR names the front received, in order (from its query log)."""
        try:
            lines = self.query_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            _, marker, rest = line.partition(" query[PTR] ")
            if marker:
                out.append(rest.split(" ", 1)[0])
        return out

    def queries_for(self, ip: str) -> int:
        """How many PTR queries for `ip` reached the server."""
        return self.ptr_queries().count(_ptr_name(ip))

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _ptr_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer
