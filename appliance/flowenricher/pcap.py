"""Read UDP datagrams out of captures (`decode` and `replay`): classic libpcap and pcapng.

A capture reader is small enough to live here rather than pull in a packet library:
only Ethernet (with 802.1Q/QinQ tags), Linux cooked (SLL) and raw-IP link types, IPv4
(unfragmented) and IPv6 (no extension headers) carrying UDP are needed.  Files are read
in chunks, never whole, so a capture larger than memory decodes; a damaged file raises
CaptureError naming the file and the byte offset of the bad record or block.

Formats: libpcap (https://www.tcpdump.org/manpages/pcap-savefile.5.html), both byte
orders, microsecond or nanosecond timestamps; pcapng (RFC draft-ietf-opsawg-pcapng):
Section Header, Interface Description, Enhanced, Simple and the obsolete Packet blocks,
both byte orders, several sections, each interface with its own link type, timestamp
resolution (if_tsresol) and offset (if_tsoffset); other blocks are skipped.
"""

from __future__ import annotations

import ipaddress
import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from .errors import CaptureError

_LINK_ETHERNET = 1
_LINK_RAW = 101
_LINK_SLL = 113
_LINK_IPV4 = 228
_LINK_IPV6 = 229
_LINK_TYPES = frozenset((_LINK_ETHERNET, _LINK_RAW, _LINK_SLL, _LINK_IPV4, _LINK_IPV6))
_LINK_NAMES = "1 Ethernet, 101 raw IP, 113 Linux cooked, 228 IPv4, 229 IPv6"

_PCAP_MAGIC: dict[bytes, tuple[str, float]] = {  # magic -> (byte order, timestamp fraction unit)
    b"\xd4\xc3\xb2\xa1": ("<", 1e6), b"\x4d\x3c\xb2\xa1": ("<", 1e9),
    b"\xa1\xb2\xc3\xd4": (">", 1e6), b"\xa1\xb2\x3c\x4d": (">", 1e9),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"  # the Section Header Block type reads the same in both byte orders
_PCAPNG_BOM = 0x1A2B3C4D
_BLOCK_IDB, _BLOCK_PB, _BLOCK_SPB, _BLOCK_EPB = 1, 2, 3, 6
_OPT_END, _OPT_TSRESOL, _OPT_TSOFFSET = 0, 9, 14

_CHUNK = 1 << 20
# A record or block longer than this is corruption, not a packet: the largest frame any
# capture tool writes is 256 KiB (libpcap's MAXIMUM_SNAPLEN), and a block adds little.
_MAX_RECORD = 1 << 24


@dataclass(frozen=True)
class UdpDatagram:
    """One UDP payload from a capture, with the addressing the collector would see."""

    timestamp: float
    src: str
    src_port: int
    dst: str
    dst_port: int
    payload: bytes


@dataclass(slots=True)
class UdpBatch:
    """The UDP datagrams of one stretch of a capture, in capture order, as columns."""

    payloads: list[bytes]
    src: list[str]
    src_port: list[int]
    dst: list[str]
    dst_port: list[int]
    timestamps: list[float]

    @classmethod
    def of(cls, datagrams: list[UdpDatagram]) -> UdpBatch:
        return cls([d.payload for d in datagrams], [d.src for d in datagrams], [d.src_port for d in datagrams],
                   [d.dst for d in datagrams], [d.dst_port for d in datagrams], [d.timestamp for d in datagrams])

    def __len__(self) -> int:
        return len(self.payloads)

    def datagrams(self) -> Iterator[UdpDatagram]:
        return map(UdpDatagram, self.timestamps, self.src, self.src_port, self.dst, self.dst_port, self.payloads)

    def for_decoder(self) -> list[tuple[bytes, str, int]]:
        """(payload, exporter address, received at in whole seconds): FlowDecoder's input."""
        return list(zip(self.payloads, self.src, map(int, self.timestamps), strict=True))


def read_udp(path: str | Path) -> Iterator[UdpDatagram]:
    """Yield every UDP datagram in `path`, in capture order; other packets are skipped.

    The file is opened at the first next(); CaptureError names the file and what is
    wrong (missing, a directory, unreadable, not a capture, damaged at some offset),
    after every datagram before the damage was yielded.
    """
    for batch in read_udp_batches(path):
        yield from batch.datagrams()


def read_udp_batches(path: str | Path, chunk: int = _CHUNK) -> Iterator[UdpBatch]:
    """read_udp's datagrams a batch at a time: those of each `chunk` bytes of the file.

    Classic pcap records are split and their headers read with numpy over the whole
    chunk; frames other than Ethernet/cooked/raw IPv4 without options are read one by
    one, as are pcapng blocks.  Memory holds one chunk, whatever the capture's size.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below, after the checks
    except OSError as err:
        raise CaptureError(f"{path}: {err.strerror or err}") from err
    with f:
        reader = _ChunkReader(f, str(path), chunk)
        magic = reader.peek(4)
        if magic in _PCAP_MAGIC:
            yield from _read_pcap(reader, *_PCAP_MAGIC[magic])
        elif magic == _PCAPNG_SHB:
            yield from _read_pcapng(reader)
        elif not magic:
            raise CaptureError(f"{path}: empty file, not a capture")
        else:
            raise CaptureError(f"{path}: not a pcap or pcapng capture (starts with {magic.hex()})")


class _ChunkReader:
    """Hands out byte ranges of a file read in large chunks, and knows their file offsets."""

    def __init__(self, f: BinaryIO, name: str, chunk: int = _CHUNK) -> None:
        self.f = f
        self.name = name
        self.chunk = chunk
        self.buf = b""
        self.pos = 0  # position in buf
        self.base = 0  # file offset of buf[0]

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def _fill(self, n: int) -> bool:
        """Make n bytes available at pos; False when the file ends before."""
        while len(self.buf) - self.pos < n:
            if not self.more(n):
                return False
        return True

    def more(self, n: int = 0) -> bool:
        """Read another chunk (at least n bytes past pos) behind what is left of buf;
        False at the end of the file."""
        try:
            more = self.f.read(max(self.chunk, n - (len(self.buf) - self.pos)))
        except OSError as err:
            raise CaptureError(f"{self.name}: read failed at byte {self.offset}: {err.strerror or err}") from err
        if not more:
            return False
        self.base += self.pos
        self.buf = self.buf[self.pos:] + more
        self.pos = 0
        return True

    def peek(self, n: int) -> bytes:
        self._fill(n)
        return self.buf[self.pos:self.pos + n]

    def take(self, n: int, what: str, item_start: int) -> tuple[bytes, int] | None:
        """(buffer, start) with the next n bytes at buffer[start:]; None at a clean end of
        file; CaptureError naming `item_start` when the file ends inside the item."""
        if not self._fill(n):
            if self.pos == len(self.buf) and self.offset == item_start:
                return None
            raise self.error(f"truncated {what}: {n} bytes needed, {len(self.buf) - self.pos} left", item_start)
        start = self.pos
        self.pos += n
        return self.buf, start

    def error(self, reason: str, at: int | None = None) -> CaptureError:
        return CaptureError(f"{self.name}: {reason} at byte {self.offset if at is None else at}")


def _read_pcap(reader: _ChunkReader, endian: str, frac_unit: float) -> Iterator[UdpBatch]:
    head = reader.take(24, "pcap file header", 0)
    if head is None:
        raise reader.error("truncated pcap file header")
    buf, at = head
    snaplen, linktype = struct.unpack_from(endian + "II", buf, at + 16)
    linktype &= 0xFFFF  # the upper bits carry the FCS length flags, not the link type
    if linktype not in _LINK_TYPES:
        raise CaptureError(f"{reader.name}: unsupported link type {linktype} (supported: {_LINK_NAMES})")
    limit = max(snaplen, 262144)
    incl_of = struct.Struct(endian + "I").unpack_from
    frames = _FrameReader(linktype)
    while True:
        # Split the buffered records: only the captured lengths need reading one by one.
        buf, off, end = reader.buf, reader.pos, len(reader.buf)
        starts: list[int] = []
        bad = need = 0
        while off + 16 <= end:
            incl = incl_of(buf, off + 8)[0]
            if incl > limit:
                bad = incl
                break
            if off + 16 + incl > end:
                need = 16 + incl
                break
            starts.append(off)
            off += 16 + incl
        reader.pos = off
        if starts:
            rec = np.array(starts, dtype=np.int64)
            words = np.frombuffer(buf, np.uint8)
            sec = _gather(words, rec, 4, endian)
            frac = _gather(words, rec + 4, 4, endian)
            incls = _gather(words, rec + 8, 4, endian)
            yield frames.batch(buf, words, rec + 16, incls, sec + frac / frac_unit)
        if bad:
            raise reader.error(f"corrupt record: captured length {bad} exceeds the snapshot length {snaplen}")
        if not reader.more(need):
            left = len(reader.buf) - reader.pos
            if left == 0:
                return
            if left < 16:
                raise reader.error(f"truncated record header: 16 bytes needed, {left} left")
            incl = incl_of(reader.buf, reader.pos + 8)[0]
            raise reader.error(f"truncated record: {incl} bytes needed, {left - 16} left")


def _gather(words: npt.NDArray[np.uint8], at: npt.NDArray[np.int64], size: int, endian: str = ">") -> npt.NDArray[np.int64]:
    """The unsigned `size`-byte integers of `words` at the offsets `at`, in byte order `endian`."""
    value = np.zeros(len(at), dtype=np.int64)
    order = range(size) if endian == ">" else range(size - 1, -1, -1)
    for i in order:
        value = (value << 8) | words[at + i]
    return value


class _FrameReader:
    """The UDP datagrams of many frames of one link type at once (IPv4 without a VLAN tag
    in numpy, anything else through _udp_from_frame), and the dotted-quad text of each
    address seen, kept."""

    def __init__(self, linktype: int) -> None:
        self.linktype = linktype
        self.l3 = 14 if linktype == _LINK_ETHERNET else 16 if linktype == _LINK_SLL else 0
        self.names: dict[int, str] = {}

    def batch(self, buf: bytes, words: npt.NDArray[np.uint8], at: npt.NDArray[np.int64],
              size: npt.NDArray[np.int64], timestamps: npt.NDArray[np.float64]) -> UdpBatch:
        """The datagrams of the frames buf[at[i]:at[i] + size[i]], stamped `timestamps`."""
        last = len(words) - 1
        l3 = self.l3

        def field(rel: npt.NDArray[np.int64] | int, n: int) -> npt.NDArray[np.int64]:
            return _gather(words, np.minimum(at + rel, last - n + 1), n)

        # Frames long enough for an IPv4 header, and whose link layer says IPv4.
        fast = size >= l3 + 20
        if self.linktype == _LINK_ETHERNET:
            fast &= field(12, 2) == 0x0800
        elif self.linktype == _LINK_SLL:
            fast &= field(14, 2) == 0x0800
        else:  # raw IP: anything but version 6 is read as IPv4, as _udp_from_frame does
            fast &= field(0, 1) >> 4 != 6
        ip_at = np.minimum(at + l3, last - 20)  # where fast is False, any place will do
        head = _gather(words, ip_at, 1)
        total = _gather(words, ip_at + 2, 2)
        frag = _gather(words, ip_at + 6, 2)
        proto = _gather(words, ip_at + 9, 1)
        udp = l3 + (head & 0x0F) * 4  # within the frame
        keep = fast & (proto == 17) & (frag & 0x3FFF == 0) & (size >= udp + 8)
        rows = np.flatnonzero(keep)
        udp_at = at[rows] + udp[rows]
        ports = [_gather(words, udp_at + i, 2) for i in (0, 2, 4)]
        first = udp_at + 8
        stop = np.minimum(np.minimum(at[rows] + l3 + total[rows], udp_at + ports[2]), at[rows] + size[rows])
        stop = np.maximum(stop, first)
        src = self._names(_gather(words, ip_at[rows] + 12, 4).tolist())
        dst = self._names(_gather(words, ip_at[rows] + 16, 4).tolist())
        payloads = [buf[a:b] for a, b in zip(first.tolist(), stop.tolist(), strict=True)]
        out = UdpBatch(payloads, src, ports[0].tolist(), dst, ports[1].tolist(), timestamps[rows].tolist())
        if fast.all():
            return out
        # Some frames need reading one by one: merge them in capture order.
        slow = np.flatnonzero(~fast).tolist()
        merged: list[UdpDatagram] = []
        fast_rows = out.datagrams()
        kept_to = np.cumsum(keep).tolist()  # fast datagrams up to each frame
        taken = 0
        for i in slow:
            merged.extend(itertools.islice(fast_rows, kept_to[i] - taken))
            taken = kept_to[i]
            a = int(at[i])
            d = _udp_from_frame(buf[a:a + int(size[i])], self.linktype, float(timestamps[i]))
            if d is not None:
                merged.append(d)
        merged.extend(fast_rows)
        return UdpBatch.of(merged)

    def _names(self, addresses: list[int]) -> list[str]:
        names = self.names
        if len(names) > 65536:  # a capture of many sources: bounded like everything else
            names.clear()
        for a in set(addresses).difference(names):
            names[a] = f"{a >> 24}.{a >> 16 & 0xFF}.{a >> 8 & 0xFF}.{a & 0xFF}"
        return [names[a] for a in addresses]


@dataclass
class _Interface:
    linktype: int
    snaplen: int
    units_per_s: float = 1e6  # if_tsresol's default: microseconds
    offset_s: int = 0


def _read_pcapng(reader: _ChunkReader) -> Iterator[UdpBatch]:
    """The packets of each chunk read as one batch; those before a damaged block, then
    the error."""
    batch: list[UdpDatagram] = []
    base = reader.base
    try:
        for d in _pcapng_datagrams(reader):
            if reader.base != base and batch:
                yield UdpBatch.of(batch)
                batch = []
            base = reader.base
            batch.append(d)
    except CaptureError:
        if batch:
            yield UdpBatch.of(batch)
        raise
    if batch:
        yield UdpBatch.of(batch)


def _pcapng_datagrams(reader: _ChunkReader) -> Iterator[UdpDatagram]:
    endian = "<"
    interfaces: list[_Interface] = []
    u32 = struct.Struct("<I")
    while True:
        start = reader.offset
        head = reader.peek(12)
        if not head:
            return
        if len(head) < 12:
            raise reader.error(f"truncated block header: 12 bytes needed, {len(head)} left", start)
        btype = head[:4]
        if btype == _PCAPNG_SHB:
            (bom,) = struct.unpack_from("<I", head, 8)
            if bom == _PCAPNG_BOM:
                endian = "<"
            elif bom == 0x4D3C2B1A:
                endian = ">"
            else:
                raise reader.error(f"corrupt section header: byte-order magic {head[8:12].hex()}", start)
            u32 = struct.Struct(endian + "I")
            interfaces = []  # interface ids are numbered per section
        (length,) = u32.unpack_from(head, 4)
        if length < 12 or length % 4 or length > _MAX_RECORD:
            raise reader.error(f"corrupt block: length {length} (type {u32.unpack_from(head)[0]:#x})", start)
        item = reader.take(length, "block", start)
        if item is None:  # cannot happen: peek saw 12 bytes
            return
        buf, at = item
        kind = u32.unpack_from(buf, at)[0]
        if u32.unpack_from(buf, at + length - 4)[0] != length:
            raise reader.error(f"corrupt block: trailing length differs from the leading {length} (type {kind:#x})",
                               start)
        body = buf[at + 8:at + length - 4]
        if btype == _PCAPNG_SHB:
            if len(body) < 16:
                raise reader.error("corrupt section header: too short", start)
            major = struct.unpack_from(endian + "H", body, 4)[0]
            if major != 1:
                raise reader.error(f"unsupported pcapng version {major}", start)
        elif kind == _BLOCK_IDB:
            interfaces.append(_interface(reader, body, endian, start))
        elif kind in (_BLOCK_EPB, _BLOCK_PB, _BLOCK_SPB):
            dgram = _packet(reader, kind, body, endian, interfaces, start)
            if dgram is not None:
                yield dgram


def _interface(reader: _ChunkReader, body: bytes, endian: str, start: int) -> _Interface:
    if len(body) < 8:
        raise reader.error("corrupt interface description: too short", start)
    linktype, _reserved, snaplen = struct.unpack_from(endian + "HHI", body)
    iface = _Interface(linktype, snaplen)
    for code, value in _options(body, 8, endian):
        if code == _OPT_TSRESOL and value:
            exp = value[0] & 0x7F
            iface.units_per_s = float(2**exp if value[0] & 0x80 else 10**exp)
        elif code == _OPT_TSOFFSET and len(value) == 8:
            iface.offset_s = struct.unpack(endian + "q", value)[0]
    return iface


def _options(body: bytes, off: int, endian: str) -> Iterator[tuple[int, bytes]]:
    """(code, value) of each option from `off` up to opt_endofopt or the body's end."""
    head = struct.Struct(endian + "HH")
    while off + 4 <= len(body):
        code, size = head.unpack_from(body, off)
        if code == _OPT_END:
            return
        yield code, body[off + 4:off + 4 + size]
        off += 4 + (size + 3) // 4 * 4


def _packet(reader: _ChunkReader, kind: int, body: bytes, endian: str, interfaces: list[_Interface],
            start: int) -> UdpDatagram | None:
    if kind == _BLOCK_SPB:  # no interface id, no timestamp: interface 0
        if len(body) < 4:
            raise reader.error("corrupt simple packet block: too short", start)
        ifid, ts_units, data_at = 0, 0, 4
        caplen = min(struct.unpack_from(endian + "I", body)[0], len(body) - 4)
    else:
        if len(body) < 20:
            raise reader.error("corrupt packet block: too short", start)
        if kind == _BLOCK_EPB:
            ifid, hi, lo, caplen, _orig = struct.unpack_from(endian + "IIIII", body)
        else:  # the obsolete Packet Block: 16-bit interface id and drop count
            ifid, _drops, hi, lo, caplen, _orig = struct.unpack_from(endian + "HHIIII", body)
        ts_units, data_at = hi << 32 | lo, 20
        if caplen > len(body) - 20:
            raise reader.error(f"corrupt packet block: captured length {caplen} exceeds the block", start)
    if ifid >= len(interfaces):
        raise reader.error(f"packet of interface {ifid}, but the section describes {len(interfaces)}", start)
    iface = interfaces[ifid]
    if kind == _BLOCK_SPB and iface.snaplen:
        caplen = min(caplen, iface.snaplen)
    if iface.linktype not in _LINK_TYPES:
        raise reader.error(f"unsupported link type {iface.linktype} of interface {ifid} "
                           f"(supported: {_LINK_NAMES})", start)
    ts = iface.offset_s + ts_units / iface.units_per_s
    return _udp_from_frame(body[data_at:data_at + caplen], iface.linktype, ts)


def _udp_from_frame(frame: bytes, linktype: int, ts: float) -> UdpDatagram | None:
    if linktype == _LINK_ETHERNET:
        off, ethertype = 14, int.from_bytes(frame[12:14], "big")
        while ethertype in (0x8100, 0x88A8) and len(frame) >= off + 4:
            ethertype = int.from_bytes(frame[off + 2 : off + 4], "big")
            off += 4
    elif linktype == _LINK_SLL:
        off, ethertype = 16, int.from_bytes(frame[14:16], "big")
    else:  # raw IP: the version nibble says which
        off = 0
        ethertype = 0x86DD if frame[:1] and frame[0] >> 4 == 6 else 0x0800
    if ethertype == 0x0800 and len(frame) >= off + 20:
        ihl = (frame[off] & 0x0F) * 4
        if frame[off + 9] != 17 or int.from_bytes(frame[off + 6 : off + 8], "big") & 0x3FFF:
            return None  # not UDP, or a fragment
        src = _v4_text(frame[off + 12 : off + 16])
        dst = _v4_text(frame[off + 16 : off + 20])
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


def _v4_text(raw: bytes) -> str:
    return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
