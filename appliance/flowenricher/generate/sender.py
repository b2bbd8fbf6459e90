"""Send generated flow export, or a capture's UDP payloads, to a collector at a set rate.

Traffic goes only to the HOST:PORT the caller names.  Rate control sleeps to a schedule
once per small burst of packets (about a millisecond's worth), never per packet, so the
sender's own overhead stays small at hundreds of thousands of flows per second; flows are
generated and encoded in vectorised chunks (~0.1 s of traffic each) with fresh
timestamps and sequence numbers, so a collector sees a live, consistent exporter.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FlowEnricherError
from ..pcap import read_udp
from .encode import ExporterSettings, make_encoder
from .traffic import TrafficGenerator, TrafficProfile

log = logging.getLogger(__name__)

CHUNK_S = 0.1  # traffic generated and encoded per step
BURST_S = 0.001  # packets sent between two looks at the clock
MAX_CHUNK_FLOWS = 200_000


@dataclass
class SendStats:
    """What `generate` sent.  JSON-ready (the CLI prints `vars()` of it)."""

    target: str
    protocol: str
    scenario: str
    flows: int = 0
    packets: int = 0
    bytes: int = 0
    template_packets: int = 0
    send_errors: int = 0  # datagrams the kernel refused (e.g. ICMP port unreachable)
    elapsed_s: float = 0.0
    flows_per_s: float = 0.0
    packets_per_s: float = 0.0
    interrupted: bool = False
    ground_truth: list[dict[str, object]] = field(default_factory=list)


@dataclass
class ReplayStats:
    """What `replay` sent.  JSON-ready."""

    target: str
    file: str
    packets: int = 0
    bytes: int = 0
    send_errors: int = 0
    elapsed_s: float = 0.0
    packets_per_s: float = 0.0
    interrupted: bool = False


def parse_target(to: str) -> tuple[socket.AddressFamily, tuple[str, int] | tuple[str, int, int, int]]:
    """`HOST:PORT` or `[IPV6]:PORT` to a socket family and address (resolved once)."""
    host, sep, port_text = to.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise FlowEnricherError(f"target {to!r}: expected HOST:PORT or [IPV6]:PORT")
    host = host.removeprefix("[").removesuffix("]")
    try:
        info = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_DGRAM)
    except socket.gaierror as err:
        raise FlowEnricherError(f"target {to!r}: cannot resolve {host!r}: {err}") from err
    family, _type, _proto, _name, addr = info[0]
    return family, addr  # type: ignore[return-value]


class _UdpOut:
    """A connected UDP socket that counts, rather than raises, refused datagrams.

    `source_port` fixes the port it sends from, as a router exports from one port: a
    collector that keys NetFlow v9/IPFIX templates by exporter address *and* port (goflow2
    does) then reads a later run's data with the templates an earlier one sent.  None: an
    ephemeral port."""

    def __init__(self, to: str, source_port: int | None = None) -> None:
        family, addr = parse_target(to)
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        try:
            if source_port is not None:
                self.sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", source_port))
            self.sock.connect(addr)
        except OSError as err:
            self.sock.close()
            where = f" from port {source_port}" if source_port is not None else ""
            raise FlowEnricherError(f"cannot send to {to}{where}: {err.strerror or err}") from err
        self.packets = self.bytes = self.errors = 0

    def send(self, packets: Sequence[bytes]) -> None:
        send = self.sock.send
        for p in packets:
            try:
                self.bytes += send(p)
                self.packets += 1
            except OSError:
                # A refused datagram (ICMP port unreachable: no listener yet) or a full
                # device queue must not stop the run: count it.
                self.errors += 1

    def close(self) -> None:
        self.sock.close()


class _Pacer:
    """Sleeps until `done` units of work are due at `rate` units/s (no-op without rate)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate if rate and rate > 0 else None
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def wait_until_due(self, done: float) -> None:
        if self.rate is None:
            return
        delay = self.t0 + done / self.rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def generate(to: str, fps: int = 10_000, duration: float = 10.0, protocol: str = "ipfix",
             scenario: str = "normal", seed: int = 1, *, profile: TrafficProfile | None = None,
             exporter: ExporterSettings | None = None, source_port: int | None = None) -> SendStats:
    """Send `fps` flows/s of the modelled AS for `duration` seconds to `to` (HOST:PORT).

    `fps <= 0` sends as fast as possible for `duration`.  If the machine cannot keep up,
    sending stops at `duration` anyway and `flows_per_s` shows what was achieved.  The
    scenario's ground truth (attackers, victims, ports) is in `ground_truth`.  Ctrl-C
    stops cleanly and returns what was sent so far.  `source_port`: see _UdpOut.
    """
    try:
        gen = TrafficGenerator(profile, scenario, seed)
        encoder = make_encoder(protocol, exporter)
    except ValueError as err:
        raise FlowEnricherError(str(err)) from err
    out = _UdpOut(to, source_port)
    stats = SendStats(to, protocol, scenario, ground_truth=[t.summary() for t in gen.truths])
    limited = fps > 0
    total = round(fps * duration) if limited else math.inf
    chunk = min(max(round(fps * CHUNK_S), 1), MAX_CHUNK_FLOWS) if limited else 50_000
    per_burst = max(1, round(fps / encoder.records_per_packet * BURST_S)) if limited else 64
    pacer = _Pacer(fps if limited else None)
    log.info("sending %s %s traffic to %s: %s flows/s for %.1f s", scenario, protocol, to,
             fps if limited else "max", duration)
    try:
        while stats.flows < total and pacer.elapsed() < duration:
            n = int(min(chunk, total - stats.flows))
            # Flows of this chunk ended during the last chunk interval; export them now.
            now_ms = int(time.time() * 1000)
            span_ms = max(int(1000 * n / fps), 1) if limited else int(1000 * CHUNK_S)
            packets = encoder.encode(gen.batch(n, now_ms - span_ms, span_ms), now_ms)
            counts = encoder.last_record_counts.tolist()
            if not _send_paced(out, packets, counts, per_burst, pacer, stats, duration):
                break
    except KeyboardInterrupt:
        stats.interrupted = True
    finally:
        out.close()
    stats.template_packets = encoder.templates_sent
    _finish(stats, out, pacer.elapsed())
    stats.flows_per_s = round(stats.flows / stats.elapsed_s, 1) if stats.elapsed_s else 0.0
    return stats


def _send_paced(out: _UdpOut, packets: list[bytes], counts: list[int], per_burst: int, pacer: _Pacer,
                stats: SendStats, duration: float) -> bool:
    """Send one chunk burst by burst on schedule; False once `duration` is over.

    Each burst waits until the flows before it are due, so the run ends on time when
    the machine keeps up; the grace covers the sleep overshoot of the final burst.
    """
    for i in range(0, len(packets), per_burst):
        pacer.wait_until_due(stats.flows)
        if pacer.elapsed() >= duration + 0.05:
            return False
        out.send(packets[i:i + per_burst])
        stats.flows += sum(counts[i:i + per_burst])
    return True


def _finish(stats: SendStats | ReplayStats, out: _UdpOut, elapsed: float) -> None:
    stats.packets, stats.bytes, stats.send_errors = out.packets, out.bytes, out.errors
    stats.elapsed_s = round(elapsed, 4)
    stats.packets_per_s = round(out.packets / elapsed, 1) if elapsed > 0 else 0.0


def replay(path: str | Path, to: str, rate_pps: float | None = None, speed: float | None = None,
           source_port: int | None = None) -> ReplayStats:
    """Send every UDP payload of the capture `path` to `to`, in capture order.

    Pace: `rate_pps` packets/s if given; else the capture's own timing divided by `speed`
    (1.0 = real time, 10 = ten times faster) if given; else as fast as possible.
    `source_port`: see _UdpOut.
    """
    datagrams = list(read_udp(path))
    out = _UdpOut(to, source_port)
    stats = ReplayStats(to, str(path))
    pacer = _Pacer(rate_pps)
    burst = max(1, round((rate_pps or 0) * BURST_S)) if rate_pps else 64
    ts0 = datagrams[0].timestamp if datagrams else 0.0
    try:
        if rate_pps is None and speed:
            for d in datagrams:
                delay = pacer.t0 + (d.timestamp - ts0) / speed - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                out.send((d.payload,))
        else:
            payloads = [d.payload for d in datagrams]
            for i in range(0, len(payloads), burst):
                pacer.wait_until_due(i)
                out.send(payloads[i:i + burst])
    except KeyboardInterrupt:
        stats.interrupted = True
    finally:
        out.close()
    _finish(stats, out, pacer.elapsed())
    return stats
