"""Flow fields read from the first bytes of a sampled packet (sFlow raw packet header).

sFlow agents copy the leading bytes of a sampled frame (128 by default) rather than
parsing it, so the collector has to walk Ethernet, VLAN tags, IPv4/IPv6 and the
transport header itself.  The copy is cut at an arbitrary byte, so every parser here
reads only what is present and never raises: a layer that is cut short leaves the later
fields at zero.
"""

from __future__ import annotations

import struct

# What the parsers return, one plain tuple per packet (no object per record):
# (ip_version, src_addr, dst_addr, proto, tos, tcpflags, src_port, dst_port,
#  icmp_type, icmp_code), addresses as 16 bytes (IPv4 as ::ffff:a.b.c.d).
L3Fields = tuple[int, bytes, bytes, int, int, int, int, int, int, int]
# (src_mac, dst_mac, vlan, l3); MACs as 48-bit numbers, vlan 0 when untagged.
EthernetFields = tuple[int, int, int, L3Fields | None]

V4_MAPPED = bytes(10) + b"\xff\xff"

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
# IEEE 802.1Q customer tag, 802.1ad service tag, and the pre-standard 0x9100 QinQ tag.
_VLAN_TAGS = frozenset((0x8100, 0x88A8, 0x9100))

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_ICMPV6 = 58
# Transport protocols whose header starts with 16-bit source and destination ports:
# UDP (RFC 768), DCCP (RFC 4340), SCTP (RFC 9260), UDP-Lite (RFC 3828).
_PORT_PROTOS = frozenset((17, 33, 132, 136))
# IPv6 extension headers walked to reach the transport header (RFC 8200 §4): hop-by-hop,
# routing, destination options, and AH (RFC 4302, length in 4-octet units minus 2).
_IPV6_AH = 51
_IPV6_FRAGMENT = 44
_IPV6_EXT = frozenset((0, 43, 60, _IPV6_AH, _IPV6_FRAGMENT))

_ETH = struct.Struct("!HIHIH")  # dst mac (hi 16, lo 32), src mac (hi, lo), ethertype
_TAG = struct.Struct("!HH")  # tag control information, next ethertype
_IPV4 = struct.Struct("!BBHHHBB2x4s4s")  # ver/ihl, tos, total len, id, flags/frag, ttl, proto
_IPV6 = struct.Struct("!IHBx16s16s")  # ver/tc/flow label, payload len, next header
_PORTS = struct.Struct("!HH")


def parse_ethernet(buf: bytes, off: int, end: int) -> EthernetFields | None:
    """Ethernet II (IEEE 802.3) header with any 802.1Q/802.1ad tags, then IP.

    With stacked tags (QinQ) the innermost VLAN id is reported: the outer service tag
    is the carrier's, the inner customer tag is the one the operator configures.
    Returns None when the Ethernet header itself is cut short.
    """
    if end - off < 14:
        return None
    dst_hi, dst_lo, src_hi, src_lo, ethertype = _ETH.unpack_from(buf, off)
    src_mac = (src_hi << 32) | src_lo
    dst_mac = (dst_hi << 32) | dst_lo
    off += 14
    vlan = 0
    while ethertype in _VLAN_TAGS and end - off >= 4:
        tci, ethertype = _TAG.unpack_from(buf, off)
        vlan = tci & 0x0FFF
        off += 4
    l3: L3Fields | None = None
    if ethertype == ETHERTYPE_IPV4:
        l3 = parse_ipv4(buf, off, end)
    elif ethertype == ETHERTYPE_IPV6:
        l3 = parse_ipv6(buf, off, end)
    # Other ethertypes (ARP, MPLS, 802.3 length fields, ...) carry no IP fields we read.
    return src_mac, dst_mac, vlan, l3


def parse_ipv4(buf: bytes, off: int, end: int) -> L3Fields | None:
    """IPv4 header (RFC 791) and the transport header after it, if present.

    Non-first fragments carry no transport header, so their ports stay zero.  A
    tunnel's outer header is all that is read (VXLAN, GRE, IP-in-IP are not descended):
    the outer addresses are the ones the exporter's interfaces saw.
    """
    if end - off < 20:
        return None
    ver_ihl, tos, _total, _ident, frag, _ttl, proto, src, dst = _IPV4.unpack_from(buf, off)
    ihl = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or ihl < 20:
        return None
    sport = dport = flags = itype = icode = 0
    if frag & 0x1FFF == 0:
        sport, dport, flags, itype, icode = _transport(buf, off + ihl, end, proto, PROTO_ICMP)
    return 4, V4_MAPPED + src, V4_MAPPED + dst, proto, tos, flags, sport, dport, itype, icode


def parse_ipv6(buf: bytes, off: int, end: int) -> L3Fields | None:
    """IPv6 header (RFC 8200 §3), its extension headers, then the transport header."""
    if end - off < 40:
        return None
    first, _plen, nxt, src, dst = _IPV6.unpack_from(buf, off)
    if first >> 28 != 6:
        return None
    tclass = (first >> 20) & 0xFF
    off += 40
    fragment_tail = False
    # Each extension header moves `off` forward by at least 8 bytes, so this ends.
    while end - off >= 8 and nxt in _IPV6_EXT:
        hdr_next, hdr_len = buf[off], buf[off + 1]
        if nxt == _IPV6_FRAGMENT:
            # RFC 8200 §4.5: 13-bit offset in bytes 2-3; non-zero means no L4 header here.
            fragment_tail = (int.from_bytes(buf[off + 2 : off + 4], "big") >> 3) != 0
            off += 8
        elif nxt == _IPV6_AH:
            off += (hdr_len + 2) * 4
        else:
            off += (hdr_len + 1) * 8
        nxt = hdr_next
        if fragment_tail:
            break
    sport = dport = flags = itype = icode = 0
    if not fragment_tail and off <= end:
        sport, dport, flags, itype, icode = _transport(buf, off, end, nxt, PROTO_ICMPV6)
    return 6, src, dst, nxt, tclass, flags, sport, dport, itype, icode


def _transport(buf: bytes, off: int, end: int, proto: int, icmp: int) -> tuple[int, int, int, int, int]:
    """(src_port, dst_port, tcp_flags, icmp_type, icmp_code) of the transport header.

    ICMP (RFC 792) and ICMPv6 (RFC 4443) fill type and code and leave the ports zero;
    TCP flags are byte 13 of the TCP header (RFC 9293 §3.1: CWR..FIN).
    """
    avail = end - off
    if proto == PROTO_TCP:
        if avail >= 14:
            sport, dport = _PORTS.unpack_from(buf, off)
            return sport, dport, buf[off + 13], 0, 0
        if avail >= 4:
            sport, dport = _PORTS.unpack_from(buf, off)
            return sport, dport, 0, 0, 0
    elif proto in _PORT_PROTOS:
        if avail >= 4:
            sport, dport = _PORTS.unpack_from(buf, off)
            return sport, dport, 0, 0, 0
    elif proto == icmp and avail >= 2:
        return 0, 0, 0, buf[off], buf[off + 1]
    return 0, 0, 0, 0, 0
