"""Flow fields read from the first bytes of a packet: sFlow raw headers, IPFIX packet sections.

Exporters copy the leading bytes of a frame (sFlow raw packet header, IPFIX
dataLinkFrameSection and friends) rather than parsing it, so the collector walks
Ethernet, VLAN tags, MPLS label stacks, IPv4/IPv6 and the transport header itself.  The
copy is cut at an arbitrary byte, so every walk reads only what is present and never
raises: a layer that is cut short leaves the later fields at zero.

One walk serves both callers.  It yields a :class:`HeaderLayout`: where each field sits,
and (when asked) the tests on the frame's bytes and length that led there.  sFlow reads
one packet's values from its layout (:func:`parse_ethernet` and friends).  IPFIX sections
arrive by the thousand with a handful of distinct layouts, so :func:`read_sections` walks
one frame per layout and extracts the fields of every frame that passes the same tests
with numpy, instead of walking each frame in Python.

What is reported: the MACs and VLAN of the outermost Ethernet header (what the
exporter's interface saw), and the first IP header found, through VLAN tags, MPLS label
stacks and Ethernet pseudowires.  IP tunnels (IP-in-IP, GRE, VXLAN, SRv6) are not
descended: their outer addresses are the ones the exporter routed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ..common.addresses import V4_MAPPED, V4_MAPPED_ROW

# What the one-packet parsers return, one plain tuple per packet:
# (ip_version, src_addr, dst_addr, proto, tos, tcpflags, src_port, dst_port,
#  icmp_type, icmp_code), addresses as 16 bytes (IPv4 as ::ffff:a.b.c.d).
L3Fields = tuple[int, bytes, bytes, int, int, int, int, int, int, int]
# (src_mac, dst_mac, vlan, l3); MACs as 48-bit numbers, vlan 0 when untagged.
EthernetFields = tuple[int, int, int, L3Fields | None]

# Where a packet copy starts.
LINK_ETHERNET = 1  # at the Ethernet header (sFlow header protocol 1, IPFIX IE 315 and IE 104)
LINK_IPV4 = 4  # at an IPv4 header (sFlow header protocol 11)
LINK_IPV6 = 6  # at an IPv6 header (sFlow header protocol 12)
LINK_IP = 0  # at an IPv4 or IPv6 header, told apart by the version (IPFIX IE 313)

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
# IEEE 802.1Q customer tag, 802.1ad service tag, and the pre-standard 0x9100 QinQ tag.
_VLAN_TAGS = frozenset((0x8100, 0x88A8, 0x9100))
# MPLS unicast and multicast (RFC 5332).
_MPLS = frozenset((0x8847, 0x8848))
# Label stack entries walked before giving up (RFC 3032 puts no bound on the depth).
_MAX_LABELS = 16
# Ethernet headers walked: the outer one and one pseudowire inside MPLS (RFC 4448).
_MAX_ETHERNET = 2

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_ICMPV6 = 58
# Transport protocols whose header starts with 16-bit source and destination ports:
# UDP (RFC 768), DCCP (RFC 4340), SCTP (RFC 9260), UDP-Lite (RFC 3828).
_PORT_PROTOS = frozenset((17, 33, 132, 136))
# IPv6 extension headers walked to reach the transport header (RFC 8200 §4): hop-by-hop,
# routing (any type, so SRv6's segment routing header, RFC 8754, too), destination
# options; AH (RFC 4302) counts its length in 4-octet units minus 2; fragment is 8 bytes.
_IPV6_AH = 51
_IPV6_FRAGMENT = 44
_IPV6_GENERIC = frozenset((0, 43, 60))

# How the transport header is read, by protocol class.  Each class is a set of protocol
# numbers, so that frames of, say, UDP and SCTP share one layout.
_CLASS_TCP, _CLASS_PORTS, _CLASS_ICMP, _CLASS_EXT, _CLASS_AH, _CLASS_FRAGMENT = range(6)
_V4_CLASSES = (frozenset((PROTO_TCP,)), _PORT_PROTOS, frozenset((PROTO_ICMP,)))
_V6_CLASSES = (frozenset((PROTO_TCP,)), _PORT_PROTOS, frozenset((PROTO_ICMPV6,)),
               _IPV6_GENERIC, frozenset((_IPV6_AH,)), frozenset((_IPV6_FRAGMENT,)))
_V4_KNOWN = frozenset().union(*_V4_CLASSES)
_V6_KNOWN = frozenset().union(*_V6_CLASSES)

# What a layout reads from the transport header.
L4_NONE, L4_PORTS, L4_PORTS_FLAGS, L4_ICMP = range(4)

_MACS = struct.Struct("!HIHI")  # destination MAC (high 16, low 32 bits), source MAC
_U16 = struct.Struct("!H")
_IPV4 = struct.Struct("!xB10x4s4s")  # type of service, source, destination
_IPV6 = struct.Struct("!I4x16s16s")  # version/traffic class/flow label, source, destination
_PORT_PAIR = struct.Struct("!HH")


class Guard(NamedTuple):
    """A test a walk made on a frame: `(value at offset) & mask` is (not) one of `values`."""

    offset: int
    width: int  # 1 or 2 bytes, big-endian
    mask: int
    values: int | frozenset[int]
    inside: bool


class HeaderLayout:
    """Where a frame's flow fields sit, found by one walk: offsets from its first byte.

    Offsets are -1 for what the frame does not hold.  Plain attributes with class
    defaults keep one walk per sFlow sample cheap: only what was found is set.
    """

    ethernet = -1  # outer Ethernet header (destination MAC first)
    vlan = -1  # tag control information of the reported VLAN tag
    ip_version = 0
    ip = -1  # IP header
    proto = -1  # the byte holding the transport protocol number
    transport = -1  # transport header
    l4 = L4_NONE  # what the transport header gives

    def __init__(self, buf: bytes, base: int, end: int) -> None:
        self._buf, self._base, self._end = buf, base, end

    # The walk reads the frame only through these, so that GuardedLayout sees every test.
    def has(self, rel: int, size: int) -> bool:
        """Whether the frame holds `size` bytes at `rel`."""
        return self._base + rel + size <= self._end

    def byte(self, rel: int, mask: int = 0xFF) -> int:
        return self._buf[self._base + rel] & mask

    def word(self, rel: int) -> int:
        at = self._base + rel
        return (self._buf[at] << 8) | self._buf[at + 1]

    def nonzero(self, rel: int, mask: int) -> bool:
        """Whether the 16-bit value at `rel`, masked, is not zero (fragment offsets)."""
        at = self._base + rel
        return ((self._buf[at] << 8) | self._buf[at + 1]) & mask != 0

    def protocol_class(self, rel: int, classes: tuple[frozenset[int], ...], known: frozenset[int]) -> int:
        """Index of the class holding the protocol number at `rel`, -1 for none."""
        value = self._buf[self._base + rel]
        for i, members in enumerate(classes):
            if value in members:
                return i
        return -1


class GuardedLayout(HeaderLayout):
    """A layout that also keeps every test its walk made on the frame's bytes and length.

    Any frame passing the same tests is walked the same way, so the same offsets hold
    for it: that is what lets :func:`read_sections` walk one frame per layout.
    """

    def __init__(self, buf: bytes, base: int, end: int) -> None:
        super().__init__(buf, base, end)
        self.guards: list[Guard] = []
        self.min_length = 0
        self.max_length = 1 << 30  # longer frames walk the same way unless a test said otherwise

    def has(self, rel: int, size: int) -> bool:
        present = super().has(rel, size)
        if present:
            self.min_length = max(self.min_length, rel + size)
        else:
            self.max_length = min(self.max_length, rel + size - 1)
        return present

    def byte(self, rel: int, mask: int = 0xFF) -> int:
        value = super().byte(rel, mask)
        self.guards.append(Guard(rel, 1, mask, value, True))
        return value

    def word(self, rel: int) -> int:
        value = super().word(rel)
        self.guards.append(Guard(rel, 2, 0xFFFF, value, True))
        return value

    def nonzero(self, rel: int, mask: int) -> bool:
        set_ = super().nonzero(rel, mask)
        self.guards.append(Guard(rel, 2, mask, 0, not set_))
        return set_

    def protocol_class(self, rel: int, classes: tuple[frozenset[int], ...], known: frozenset[int]) -> int:
        i = super().protocol_class(rel, classes, known)
        self.guards.append(Guard(rel, 1, 0xFF, classes[i], True) if i >= 0 else Guard(rel, 1, 0xFF, known, False))
        return i


def walk(buf: bytes, off: int, end: int, link: int) -> HeaderLayout:
    """The layout of the packet copy `buf[off:end]`, which starts at `link`."""
    layout = HeaderLayout(buf, off, end)
    _walk_link(layout, link)
    return layout


def walk_guarded(buf: bytes, link: int) -> GuardedLayout:
    """The layout of the packet copy `buf`, with the tests that select it."""
    layout = GuardedLayout(buf, 0, len(buf))
    _walk_link(layout, link)
    return layout


def _walk_link(layout: HeaderLayout, link: int) -> None:
    if link == LINK_ETHERNET:
        _walk_ethernet(layout, 0, 0)
    elif link == LINK_IPV4:
        _walk_ipv4(layout, 0)
    elif link == LINK_IPV6:
        _walk_ipv6(layout, 0)
    elif layout.has(0, 1):
        version = layout.byte(0, 0xF0)
        if version == 0x40:
            _walk_ipv4(layout, 0)
        elif version == 0x60:
            _walk_ipv6(layout, 0)


def _walk_ethernet(layout: HeaderLayout, pos: int, depth: int) -> None:
    """Ethernet II (IEEE 802.3) with any 802.1Q/802.1ad tags, then what the ethertype says.

    With stacked tags (QinQ) the innermost VLAN id is reported: the outer service tag
    is the carrier's, the inner customer tag is the one the operator configures.  An
    Ethernet frame inside an MPLS pseudowire (depth 1) gives neither MACs nor VLAN.
    """
    if not layout.has(pos, 14):
        return
    if depth == 0:
        layout.ethernet = pos
    ethertype = layout.word(pos + 12)
    pos += 14
    while ethertype in _VLAN_TAGS and layout.has(pos, 4):
        if depth == 0:
            layout.vlan = pos
        ethertype = layout.word(pos + 2)
        pos += 4
    if ethertype == ETHERTYPE_IPV4:
        _walk_ipv4(layout, pos)
    elif ethertype == ETHERTYPE_IPV6:
        _walk_ipv6(layout, pos)
    elif ethertype in _MPLS:
        _walk_mpls(layout, pos, depth)
    # Other ethertypes (ARP, LLDP, 802.3 length fields, ...) carry no IP fields we read.


def _walk_mpls(layout: HeaderLayout, pos: int, depth: int) -> None:
    """An MPLS label stack (RFC 3032) down to its bottom entry, then its payload.

    Nothing in the stack names the payload; the first nibble after it does by
    convention (RFC 4928): 4 and 6 are IP versions, 0 is the pseudowire control word
    (RFC 4385) before an Ethernet frame (RFC 4448), 1 an associated channel (OAM, not
    user traffic).  Anything else is taken as an Ethernet pseudowire without control
    word, the remaining case of RFC 4448.
    """
    for _ in range(_MAX_LABELS):
        if not layout.has(pos, 4):
            return
        bottom = layout.byte(pos + 2, 0x01)
        pos += 4
        if bottom:
            break
    else:
        return
    if not layout.has(pos, 1):
        return
    nibble = layout.byte(pos, 0xF0)
    if nibble == 0x40:
        _walk_ipv4(layout, pos)
    elif nibble == 0x60:
        _walk_ipv6(layout, pos)
    elif nibble != 0x10 and depth + 1 < _MAX_ETHERNET:
        _walk_ethernet(layout, pos + 4 if nibble == 0 else pos, depth + 1)


def _walk_ipv4(layout: HeaderLayout, pos: int) -> None:
    """IPv4 header (RFC 791) and the transport header after it, if present.

    Non-first fragments carry no transport header, so their ports stay zero.
    """
    if not layout.has(pos, 20):
        return
    version_ihl = layout.byte(pos)
    ihl = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or ihl < 20:
        return
    layout.ip_version, layout.ip, layout.proto = 4, pos, pos + 9
    if layout.nonzero(pos + 6, 0x1FFF):
        return
    _walk_transport(layout, pos + ihl, layout.protocol_class(pos + 9, _V4_CLASSES, _V4_KNOWN))


def _walk_ipv6(layout: HeaderLayout, pos: int) -> None:
    """IPv6 header (RFC 8200 §3), its extension headers, then the transport header.

    An extension header cut short ends the walk: the protocol reported is then that
    header's number, as it is for a non-first fragment's payload.
    """
    if not layout.has(pos, 40) or layout.byte(pos, 0xF0) != 0x60:
        return
    layout.ip_version, layout.ip = 6, pos
    at = pos + 6  # where the current next-header value sits
    pos += 40
    while True:
        kind = layout.protocol_class(at, _V6_CLASSES, _V6_KNOWN)
        if kind < _CLASS_EXT or not layout.has(pos, 8):
            break
        at = pos
        if kind == _CLASS_FRAGMENT:
            # RFC 8200 §4.5: 13-bit offset in bytes 2-3; non-zero means no L4 header here.
            if layout.nonzero(pos + 2, 0xFFF8):
                layout.proto = at
                return
            pos += 8
        elif kind == _CLASS_AH:
            pos += (layout.byte(pos + 1) + 2) * 4
        else:
            pos += (layout.byte(pos + 1) + 1) * 8
    layout.proto = at
    _walk_transport(layout, pos, kind)


def _walk_transport(layout: HeaderLayout, pos: int, kind: int) -> None:
    """Ports of TCP, UDP and the like, TCP flags, ICMP type and code.

    ICMP (RFC 792) and ICMPv6 (RFC 4443) fill type and code and leave the ports zero;
    TCP flags are byte 13 of the TCP header (RFC 9293 §3.1: CWR..FIN).
    """
    layout.transport = pos
    if kind == _CLASS_TCP:
        if layout.has(pos, 14):
            layout.l4 = L4_PORTS_FLAGS
        elif layout.has(pos, 4):
            layout.l4 = L4_PORTS
    elif kind == _CLASS_PORTS:
        if layout.has(pos, 4):
            layout.l4 = L4_PORTS
    elif kind == _CLASS_ICMP and layout.has(pos, 2):
        layout.l4 = L4_ICMP


# ------------------------------------------------------------------ one packet (sFlow)

def parse_ethernet(buf: bytes, off: int, end: int) -> EthernetFields | None:
    """MACs, VLAN and IP fields of an Ethernet frame; None when its header is cut short."""
    if end - off < 14:
        return None
    layout = HeaderLayout(buf, off, end)
    _walk_ethernet(layout, 0, 0)
    dst_hi, dst_lo, src_hi, src_lo = _MACS.unpack_from(buf, off)
    vlan = _U16.unpack_from(buf, off + layout.vlan)[0] & 0x0FFF if layout.vlan >= 0 else 0
    return (src_hi << 32) | src_lo, (dst_hi << 32) | dst_lo, vlan, read_l3(buf, off, layout)


def parse_ipv4(buf: bytes, off: int, end: int) -> L3Fields | None:
    """IP fields of a packet starting at its IPv4 header; None when that is cut short."""
    layout = HeaderLayout(buf, off, end)
    _walk_ipv4(layout, 0)
    return read_l3(buf, off, layout)


def parse_ipv6(buf: bytes, off: int, end: int) -> L3Fields | None:
    """IP fields of a packet starting at its IPv6 header; None when that is cut short."""
    layout = HeaderLayout(buf, off, end)
    _walk_ipv6(layout, 0)
    return read_l3(buf, off, layout)


def read_l3(buf: bytes, off: int, layout: HeaderLayout) -> L3Fields | None:
    """The IP and transport fields `layout` locates in the frame at `buf[off:]`."""
    version = layout.ip_version
    if not version:
        return None
    ip = off + layout.ip
    if version == 4:
        tos, src, dst = _IPV4.unpack_from(buf, ip)
        src, dst = V4_MAPPED + src, V4_MAPPED + dst
    else:
        first, src, dst = _IPV6.unpack_from(buf, ip)
        tos = (first >> 20) & 0xFF
    sport = dport = flags = icmp_type = icmp_code = 0
    kind = layout.l4
    if kind:
        l4 = off + layout.transport
        if kind == L4_ICMP:
            icmp_type, icmp_code = buf[l4], buf[l4 + 1]
        else:
            sport, dport = _PORT_PAIR.unpack_from(buf, l4)
            if kind == L4_PORTS_FLAGS:
                flags = buf[l4 + 13]
    return version, src, dst, buf[off + layout.proto], tos, flags, sport, dport, icmp_type, icmp_code


# ------------------------------------------------------------ many packets (IPFIX)

U8 = npt.NDArray[np.uint8]
# Distinct layouts walked per call before the rest is walked frame by frame: frames
# crafted to differ in every test would otherwise cost one pass over all frames each.
MAX_LAYOUTS = 64


@dataclass
class HeaderColumns:
    """The fields of many packet copies, one array each (zero where a frame lacks them)."""

    n: int
    ip_version: npt.NDArray[np.uint8] = field(init=False)
    src_addr: U8 = field(init=False)
    dst_addr: U8 = field(init=False)
    proto: npt.NDArray[np.uint8] = field(init=False)
    tos: npt.NDArray[np.uint8] = field(init=False)
    tcpflags: npt.NDArray[np.uint8] = field(init=False)
    src_port: npt.NDArray[np.uint16] = field(init=False)
    dst_port: npt.NDArray[np.uint16] = field(init=False)
    icmp_type: npt.NDArray[np.uint8] = field(init=False)
    icmp_code: npt.NDArray[np.uint8] = field(init=False)
    ip_length: npt.NDArray[np.uint32] = field(init=False)  # IP header plus payload, 0 without IP
    src_mac: npt.NDArray[np.uint64] = field(init=False)
    dst_mac: npt.NDArray[np.uint64] = field(init=False)
    vlan: npt.NDArray[np.uint16] = field(init=False)

    def __post_init__(self) -> None:
        n = self.n
        for name in ("ip_version", "proto", "tos", "tcpflags", "icmp_type", "icmp_code"):
            setattr(self, name, np.zeros(n, np.uint8))
        for name in ("src_port", "dst_port", "vlan"):
            setattr(self, name, np.zeros(n, np.uint16))
        self.src_addr = np.zeros((n, 16), np.uint8)
        self.dst_addr = np.zeros((n, 16), np.uint8)
        self.ip_length = np.zeros(n, np.uint32)
        self.src_mac = np.zeros(n, np.uint64)
        self.dst_mac = np.zeros(n, np.uint64)


def read_sections(frames: U8, lengths: npt.NDArray[Any], link: int,
                  max_layouts: int = MAX_LAYOUTS) -> HeaderColumns:
    """The fields of `n` packet copies: row i of `frames` holds `lengths[i]` bytes of one.

    Cost: one Python walk per distinct layout (a few in real traffic: tagged or not,
    TCP or UDP, IPv4 or IPv6), then a few numpy operations per field over the frames
    sharing it; past `max_layouts`, one walk per remaining frame.
    """
    n = len(frames)
    out = HeaderColumns(n)
    lengths = np.minimum(lengths.astype(np.int64), frames.shape[1])
    pending = np.arange(n)
    walked = 0
    while pending.size:
        if walked >= max_layouts:
            for row in pending.tolist():
                raw = frames[row, : int(lengths[row])].tobytes()
                _store_one(out, row, raw, walk(raw, 0, len(raw), link))
            break
        first = int(pending[0])
        layout = walk_guarded(frames[first, : int(lengths[first])].tobytes(), link)
        walked += 1
        match = _matching(layout, frames, lengths, pending)
        _store(out, frames, pending[match], layout)
        pending = pending[~match]
    return out


def _matching(layout: GuardedLayout, frames: U8, lengths: npt.NDArray[np.int64],
              rows: npt.NDArray[np.intp]) -> npt.NDArray[np.bool_]:
    """Which of `rows` pass every test `layout` was walked through."""
    size = lengths[rows]
    ok: npt.NDArray[np.bool_] = (size >= layout.min_length) & (size <= layout.max_length)
    for g in layout.guards:
        value = frames[rows, g.offset].astype(np.uint16)
        if g.width == 2:
            value = (value << 8) | frames[rows, g.offset + 1]
        if g.mask != (1 << (8 * g.width)) - 1:
            value &= g.mask
        hit = value == g.values if isinstance(g.values, int) else np.isin(value, tuple(g.values))
        ok &= hit if g.inside else ~hit
    return ok


def _number_column(frames: U8, rows: npt.NDArray[np.intp], at: int, size: int) -> npt.NDArray[np.uint64]:
    """Big-endian numbers of `size` bytes at offset `at` of each row."""
    value = np.zeros(len(rows), dtype=np.uint64)
    for i in range(size):
        value = (value << np.uint64(8)) | frames[rows, at + i]
    return value


def _store(out: HeaderColumns, frames: U8, rows: npt.NDArray[np.intp], layout: HeaderLayout) -> None:
    """Copy the fields `layout` locates from `rows` of `frames` into `out`."""
    if layout.ethernet >= 0:
        out.dst_mac[rows] = _number_column(frames, rows, layout.ethernet, 6)
        out.src_mac[rows] = _number_column(frames, rows, layout.ethernet + 6, 6)
    if layout.vlan >= 0:
        out.vlan[rows] = _number_column(frames, rows, layout.vlan, 2) & np.uint64(0x0FFF)
    if not layout.ip_version:
        return
    ip = layout.ip
    out.ip_version[rows] = layout.ip_version
    out.proto[rows] = frames[rows, layout.proto]
    if layout.ip_version == 4:
        out.src_addr[rows, :12] = V4_MAPPED_ROW
        out.dst_addr[rows, :12] = V4_MAPPED_ROW
        out.src_addr[rows, 12:] = frames[rows, ip + 12 : ip + 16]
        out.dst_addr[rows, 12:] = frames[rows, ip + 16 : ip + 20]
        out.tos[rows] = frames[rows, ip + 1]
        out.ip_length[rows] = _number_column(frames, rows, ip + 2, 2)
    else:
        out.src_addr[rows] = frames[rows, ip + 8 : ip + 24]
        out.dst_addr[rows] = frames[rows, ip + 24 : ip + 40]
        out.tos[rows] = ((frames[rows, ip] & 0x0F) << 4) | (frames[rows, ip + 1] >> 4)
        out.ip_length[rows] = _number_column(frames, rows, ip + 4, 2) + np.uint64(40)
    l4 = layout.transport
    if layout.l4 == L4_ICMP:
        out.icmp_type[rows] = frames[rows, l4]
        out.icmp_code[rows] = frames[rows, l4 + 1]
    elif layout.l4 != L4_NONE:
        out.src_port[rows] = _number_column(frames, rows, l4, 2)
        out.dst_port[rows] = _number_column(frames, rows, l4 + 2, 2)
        if layout.l4 == L4_PORTS_FLAGS:
            out.tcpflags[rows] = frames[rows, l4 + 13]


def _store_one(out: HeaderColumns, row: int, raw: bytes, layout: HeaderLayout) -> None:
    """Row `row` of `out` from one walked frame (the path past `max_layouts`)."""
    if layout.ethernet >= 0:
        dst_hi, dst_lo, src_hi, src_lo = _MACS.unpack_from(raw, layout.ethernet)
        out.dst_mac[row] = (dst_hi << 32) | dst_lo
        out.src_mac[row] = (src_hi << 32) | src_lo
    if layout.vlan >= 0:
        out.vlan[row] = _U16.unpack_from(raw, layout.vlan)[0] & 0x0FFF
    l3 = read_l3(raw, 0, layout)
    if l3 is None:
        return
    (out.ip_version[row], src, dst, out.proto[row], out.tos[row], out.tcpflags[row], out.src_port[row],
     out.dst_port[row], out.icmp_type[row], out.icmp_code[row]) = l3
    out.src_addr[row] = np.frombuffer(src, np.uint8)
    out.dst_addr[row] = np.frombuffer(dst, np.uint8)
    if layout.ip_version == 4:
        out.ip_length[row] = _U16.unpack_from(raw, layout.ip + 2)[0]
    else:
        out.ip_length[row] = _U16.unpack_from(raw, layout.ip + 4)[0] + 40
