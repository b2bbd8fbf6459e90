"""Write UDP payloads into a classic libpcap capture (Ethernet, IPv4 or IPv6, UDP).

Generated datagrams go through a capture so that independent decoders (tshark) and
`flowenricher decode`/`replay` can read exactly what the generator would send.  Format:
the libpcap file format (microsecond timestamps, link type 1 = Ethernet); IPv4 header
per RFC 791 with its checksum, UDP per RFC 768 (checksum 0: "not computed" on IPv4;
IPv6 requires one, RFC 8200 §8.1, so it is computed there).
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Iterable
from pathlib import Path

_ETH = bytes.fromhex("020000000002" "020000000001")
_MAX_PAYLOAD = 65535 - 8 - 20


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(payload: bytes, src: str, src_port: int, dst: str, dst_port: int, ident: int = 0) -> bytes:
    """One Ethernet frame carrying `payload` in UDP from src:src_port to dst:dst_port."""
    if len(payload) > _MAX_PAYLOAD:
        raise ValueError(f"UDP payload of {len(payload)} bytes does not fit in one datagram")
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:
        raise ValueError(f"pcap writer: {src} and {dst} are of different IP versions")
    ulen = 8 + len(payload)
    if s.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, ident & 0xFFFF, 0x4000, 64, 17, 0,
                         s.packed, d.packed)
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        udp = struct.pack("!HHHH", src_port, dst_port, ulen, 0)
        return _ETH + b"\x08\x00" + ip + udp + payload
    pseudo = s.packed + d.packed + struct.pack("!IxxxB", ulen, 17)
    udp0 = struct.pack("!HHHH", src_port, dst_port, ulen, 0)
    csum = _checksum(pseudo + udp0 + payload) or 0xFFFF
    udp = struct.pack("!HHHH", src_port, dst_port, ulen, csum)
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, ulen, 17, 64, s.packed, d.packed)
    return _ETH + b"\x86\xdd" + ip6 + udp + payload


def write_pcap(path: str | Path, payloads: Iterable[bytes], *, src: str = "127.0.0.1",
               src_port: int = 50000, dst: str = "127.0.0.1", dst_port: int = 2055,
               start: float | None = None, interval: float = 0.001,
               timestamps: Iterable[float] | None = None) -> int:
    """Write each payload as one UDP packet; returns how many were written.

    Times are `timestamps` when given, else `start` (default: now, the time the generator
    writes into the exports it builds, so a decoder sees them as received when they were
    sent) plus `interval` per packet.
    """
    start = time.time() if start is None else start
    times = iter(timestamps) if timestamps is not None else None
    count = 0
    with open(path, "wb") as out:
        # Global header: magic, version 2.4, thiszone, sigfigs, snaplen, link type Ethernet.
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for i, payload in enumerate(payloads):
            ts = next(times) if times is not None else start + i * interval
            frame = udp_frame(payload, src, src_port, dst, dst_port, ident=i)
            sec = int(ts)
            usec = min(round((ts - sec) * 1e6), 999_999)
            out.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
            out.write(frame)
            count += 1
    return count
