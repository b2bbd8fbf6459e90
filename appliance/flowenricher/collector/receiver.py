"""UDP sockets for flow export: bound with SO_REUSEPORT so every worker process gets its own
socket on the same port and the kernel spreads exporters across workers.

The kernel hashes on the 4-tuple, so all datagrams of one exporter (one source address
and port) reach the same worker: template state stays consistent within a worker.
Kernel drops are read from /proc/net/udp{,6}, the only place Linux reports them per socket.
SO_REUSEPORT would as gladly let another program join the port, so the service first
makes sure nobody holds it (refuse_shared_port) or is about to (claim_port), and
ExporterFilter keeps out sources the operator did not list.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..common.addresses import plain_address, unmapped_network
from ..errors import FlowEnricherError


@dataclass(frozen=True)
class Listener:
    """One address and port to receive on, and what is expected there (for logs only:
    the decoder recognises the protocol from each datagram)."""

    address: str
    port: int
    protocol: str = "netflow"

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.protocol} on udp://{host}:{self.port}"


class BindError(FlowEnricherError):
    """A listener could not be bound (port in use, address not on this host)."""


def open_socket(listener: Listener, receive_buffer: int) -> socket.socket:
    """A non-blocking UDP socket bound to `listener` with SO_REUSEPORT."""
    family = socket.AF_INET6 if ipaddress.ip_address(listener.address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and listener.address == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        _set_receive_buffer(sock, receive_buffer)
        sock.bind((listener.address, listener.port))
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        hint = " (already in use by another program)" if err.errno == errno.EADDRINUSE else ""
        raise BindError(f"cannot listen for {listener}: {err.strerror}{hint}") from err
    return sock


def refuse_shared_port(listener: Listener) -> None:
    """Raise BindError when another socket already holds `listener`'s port.

    Workers bind with SO_REUSEPORT, which would also let them join a socket of a second
    flowenricher (or of any program that set it) on the same port: the kernel would then
    split the exporters between the two, and each would silently see only part of the
    traffic.  A probe bound without SO_REUSEPORT fails with EADDRINUSE whenever any socket,
    reuseport or not, holds the port (a wildcard and a specific address conflict both
    ways), so run this before the workers bind."""
    if listener.port == 0:
        return  # an ephemeral port is never shared
    family = socket.AF_INET6 if ipaddress.ip_address(listener.address).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            if family == socket.AF_INET6 and listener.address == "::":
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            probe.bind((listener.address, listener.port))
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise BindError(f"cannot listen for {listener}: {err.strerror}") from err
            holders = port_holders(listener.port)
            who = "; ".join(f"pid {pid} ({name})" for pid, name in holders) if holders else \
                "another socket (its process is not visible from here)"
            raise BindError(
                f"cannot listen for {listener}: UDP port {listener.port} is already in use by {who}; "
                "refusing to share it (SO_REUSEPORT would split the exporters between both programs, "
                "each seeing part of the flows): stop the other one or choose another port") from err


def claim_port(port: int) -> socket.socket:
    """Hold the right to serve UDP `port` for as long as the returned socket stays open
    (the process's life: the kernel frees it even on SIGKILL).

    refuse_shared_port only sees sockets already bound: two services started together
    both find the port free, then both bind with SO_REUSEPORT and split the exporters.
    The claim is an abstract Unix socket named after the port, which only one process of
    the network namespace can bind, so the second of two racing starts is refused."""
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        claim.bind(f"\0flowenricher-udp-{port}")
    except OSError as err:
        claim.close()
        if err.errno != errno.EADDRINUSE:
            raise BindError(f"cannot claim UDP port {port}: {err.strerror}") from err
        raise BindError(f"UDP port {port} is being taken by another flowenricher starting at the same time "
                        f"(it holds @flowenricher-udp-{port}); refusing to share it: stop the other one "
                        "or choose another port") from err
    return claim


def port_holders(port: int) -> list[tuple[int, str]]:
    """(pid, command name) of the processes with a UDP socket on local `port`, as far as
    /proc shows them (another user's processes need root to be seen)."""
    inodes = {f"socket:[{inode}]" for local, inode, _ in _udp_sockets() if local == port}
    holders: list[tuple[int, str]] = []
    if not inodes:
        return holders
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                holders.append((int(proc.name), _describe_process(int(proc.name))))
        except OSError:  # gone, or not ours to look at
            continue
    return sorted(holders)


def _describe_process(pid: int) -> str:
    """The command line of `pid`; for a multiprocessing child (a flowenricher worker) the
    command of its parent, which is what an operator recognises and stops."""
    proc = Path(f"/proc/{pid}")
    words = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
    text = " ".join(w for w in words if w) or (proc / "comm").read_text().strip()
    if "multiprocessing" in text:
        parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        try:
            return f"a worker of pid {parent}: {_describe_process(parent)}"
        except OSError:
            pass
    return text if len(text) <= 120 else text[:117] + "..."


class ExporterFilter:
    """`collectors.allowed_exporters`: the networks whose datagrams are decoded.

    Verdicts are cached per source address (bounded: cleared when full), so the check
    costs one dict lookup per datagram; a spoofed-source flood only refills the cache."""

    CACHE_MAX = 65536

    def __init__(self, prefixes: Iterable[str]) -> None:
        networks = [ipaddress.ip_network(prefix, strict=False) for prefix in prefixes]
        # Sources are normalised to plain IPv4 (addresses.plain_text), so a network written
        # in the IPv4-mapped form (::ffff:192.0.2.0/120) also admits its IPv4 equivalent.
        self.networks = tuple(networks + [m for m in map(unmapped_network, networks) if m is not None])
        self._verdicts: dict[str, bool] = {}

    def allows(self, exporter: str) -> bool:
        """True when `exporter` (a normalised source address) lies in one of the networks."""
        verdict = self._verdicts.get(exporter)
        if verdict is None:
            try:
                address = ipaddress.ip_address(exporter)
            except ValueError:
                verdict = False
            else:
                verdict = any(address in network for network in self.networks)
            if len(self._verdicts) >= self.CACHE_MAX:
                self._verdicts.clear()
            self._verdicts[exporter] = verdict
        return verdict


def _set_receive_buffer(sock: socket.socket, size: int) -> None:
    """Ask for `size` bytes; as root SO_RCVBUFFORCE passes net.core.rmem_max."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def exporter_key(address: str) -> str:
    """An exporter address as the collector names its sources: an IPv4-mapped IPv6
    address is the IPv4 exporter it stands for (addresses.plain_text is its fast form on
    every datagram).  Raises ValueError for text that is not an address."""
    return str(plain_address(address))


def kernel_drops(ports: set[int]) -> dict[int, int]:
    """Datagrams the kernel dropped (receive buffer full) per local port, all sockets summed."""
    drops = dict.fromkeys(ports, 0)
    for port, _, dropped in _udp_sockets():
        if port in drops:
            drops[port] += dropped
    return drops


def _udp_sockets() -> Iterator[tuple[int, str, int]]:
    """(local port, inode, drops) of every UDP socket in /proc/net/udp{,6}, the only place
    Linux reports drops per socket."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) >= 13:
                yield int(parts[1].rsplit(":", 1)[1], 16), parts[9], int(parts[-1])
