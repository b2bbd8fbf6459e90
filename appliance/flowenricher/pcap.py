"""Read UDP datagrams out of classic libpcap captures (`decode` and `replay`).

A capture reader is ~60 lines, so it lives here rather than pulling in a packet library:
only Ethernet (with 802.1Q/QinQ tags), Linux cooked (SLL) and raw-IP link types, IPv4
(unfragmented) and IPv6 (no extension headers) carrying UDP are needed.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import CaptureError

_LINK_ETHERNET = 1
_LINK_RAW = 101
_LINK_SLL = 113
_LINK_IPV4 = 228
_LINK_IPV6 = 229


@dataclass(frozen=True)
class UdpDatagram:
    """One UDP payload from a capture, with the addressing the collector would see."""

    timestamp: float
    src: str
    src_port: int
    dst: str
    dst_port: int
    payload: bytes


def read_udp(path: str | Path) -> Iterator[UdpDatagram]:
    """Yield every UDP datagram in `path`, in capture order; others are skipped."""
    data = Path(path).read_bytes()
    if len(data) < 24:
        raise CaptureError(f"{path}: too short to be a pcap file")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    elif magic == b"\x0a\x0d\x0d\x0a":
        raise CaptureError(f"{path}: pcapng is not supported; convert with `editcap -F pcap`")
    else:
        raise CaptureError(f"{path}: not a pcap file (magic {magic.hex()})")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    (linktype,) = struct.unpack_from(endian + "I", data, 20)
    rec = struct.Struct(endian + "IIII")
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = rec.unpack_from(data, off)
        off += 16
        frame = data[off : off + incl]
        off += incl
        if len(frame) < incl:
            raise CaptureError(f"{path}: truncated record at byte {off - incl - 16}")
        ts = sec + frac / (1e9 if nano else 1e6)
        dgram = _udp_from_frame(frame, linktype, ts)
        if dgram is not None:
            yield dgram


def _udp_from_frame(frame: bytes, linktype: int, ts: float) -> UdpDatagram | None:
    if linktype == _LINK_ETHERNET:
        off, ethertype = 14, int.from_bytes(frame[12:14], "big")
        while ethertype in (0x8100, 0x88A8) and len(frame) >= off + 4:
            ethertype = int.from_bytes(frame[off + 2 : off + 4], "big")
            off += 4
    elif linktype == _LINK_SLL:
        off, ethertype = 16, int.from_bytes(frame[14:16], "big")
    elif linktype in (_LINK_RAW, _LINK_IPV4, _LINK_IPV6):
        off = 0
        ethertype = 0x86DD if frame[:1] and frame[0] >> 4 == 6 else 0x0800
    else:
        raise CaptureError(f"unsupported pcap link type {linktype}")
    if ethertype == 0x0800 and len(frame) >= off + 20:
        ihl = (frame[off] & 0x0F) * 4
        if frame[off + 9] != 17 or int.from_bytes(frame[off + 6 : off + 8], "big") & 0x3FFF:
            return None  # not UDP, or a fragment
        src = str(ipaddress.IPv4Address(frame[off + 12 : off + 16]))
        dst = str(ipaddress.IPv4Address(frame[off + 16 : off + 20]))
        total = int.from_bytes(frame[off + 2 : off + 4], "big")
        udp, end = off + ihl, off + total
    elif ethertype == 0x86DD and len(frame) >= off + 40:
        if frame[off + 6] != 17:
            return None
        src = str(ipaddress.IPv6Address(frame[off + 8 : off + 24]))
        dst = str(ipaddress.IPv6Address(frame[off + 24 : off + 40]))
        udp = off + 40
        end = udp + int.from_bytes(frame[off + 4 : off + 6], "big")
    else:
        return None
    if len(frame) < udp + 8:
        return None
    sport, dport, ulen = struct.unpack_from("!HHH", frame, udp)
    payload = frame[udp + 8 : min(end, udp + ulen, len(frame))]
    return UdpDatagram(ts, src, sport, dst, dport, payload)
