"""UDP sockets for flow export: bound with SO_REUSEPORT so every worker process gets its own
socket on the same port and the kernel spreads exporters across workers.

The kernel hashes on the 4-tuple, so all datagrams of one exporter (one source address
and port) reach the same worker: template state stays consistent within a worker.
Kernel drops are read from /proc/net/udp{,6}, the only place Linux reports them per socket.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

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


def _set_receive_buffer(sock: socket.socket, size: int) -> None:
    """Ask for `size` bytes; as root SO_RCVBUFFORCE passes net.core.rmem_max."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def normalise_exporter(address: str) -> str:
    """'::ffff:192.0.2.1' (a v4 exporter on a dual-stack socket) -> '192.0.2.1'."""
    if address.startswith("::ffff:") and "." in address:
        return address[7:]
    return address


def kernel_drops(ports: set[int]) -> dict[int, int]:
    """Datagrams the kernel dropped (receive buffer full) per local port, all sockets summed."""
    drops = dict.fromkeys(ports, 0)
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 13:
                continue
            port = int(parts[1].rsplit(":", 1)[1], 16)
            if port in drops:
                drops[port] += int(parts[-1])
    return drops
