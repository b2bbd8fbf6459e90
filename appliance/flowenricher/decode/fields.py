"""Information elements the NetFlow v9 / IPFIX decoders understand, and what each feeds.

Element ids are shared by NetFlow v9 (RFC 3954 §8) and IPFIX (IANA "IPFIX Information
Elements" registry, RFC 7012); v9 field types 1-127 are the same numbers.  Each entry
says which flow column the element fills and how its bytes are read.  When a template
carries several elements for one column (octetDeltaCount and postOctetDeltaCount, say),
the one listed first in :data:`PREFERENCE` wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Conv(Enum):
    """How an element's bytes become a column value."""

    UINT = "uint"  # unsigned big-endian, any length 1..8 (RFC 7011 §6.2 reduced-size encoding)
    ADDR4 = "addr4"  # IPv4 address -> IPv4-mapped IPv6 bytes
    ADDR6 = "addr6"  # IPv6 address
    MAC = "mac"  # 6 bytes -> uint64
    ICMP_TYPECODE = "icmp_typecode"  # type * 256 + code -> icmp_type, icmp_code
    STRING = "string"  # options data only (interface names)
    UPTIME_MS = "uptime_ms"  # milliseconds of exporter uptime (sysUpTime-relative)
    SECONDS = "seconds"  # unix seconds
    MILLISECONDS = "milliseconds"  # unix milliseconds
    NTP_US = "ntp_us"  # NTP 64-bit timestamp (RFC 7011 §6.1.9), microsecond precision
    NTP_NS = "ntp_ns"  # NTP 64-bit timestamp, nanosecond precision
    DELTA_US = "delta_us"  # microseconds before the export time
    SECTION = "section"  # the leading bytes of the observed packet, any length (parsed, see netflow)


@dataclass(frozen=True)
class Element:
    """What one information element id means to us: a target and a conversion."""

    ie: int
    name: str
    target: str  # a flow column, or a pseudo-target starting with "_" (see below)
    conv: Conv


# Pseudo-targets that are not columns: timestamps (resolved per header), sampling, ICMP,
# and the options-data keys.
_START, _END = "_start", "_end"
SAMPLING_INTERVAL = "_sampling_interval"
SAMPLER_ID = "_sampler_id"
ICMP = "_icmp"
INTERFACE_NAME = "_interface_name"
SYSTEM_INIT_MS = "_system_init_ms"
SAMPLING_SIZE = "_sampling_size"
SAMPLING_POPULATION = "_sampling_population"
# Packet sections: a copy of the observed packet's first bytes, from its Ethernet header
# or from its IP header.  Records carrying one are packet reports (PSAMP, RFC 5476/5477)
# that often hold no address or port field: those are read from the copy.  Each section
# target comes with the length of every record's copy under SECTION_LENGTH[target].
L2_SECTION = "_l2_section"
IP_SECTION = "_ip_section"
SECTION_LENGTH = {L2_SECTION: "_l2_section_length", IP_SECTION: "_ip_section_length"}
L2_SECTION_OFFSET = "_l2_section_offset"  # where the copy starts in the frame: parsed only at 0
FRAME_SIZE = "_frame_size"  # the observed frame's length on the wire
FRAME_TYPE = "_frame_type"  # what the L2 copy holds: 1 Ethernet (IEEE 802.3), 2 IEEE 802.11

ELEMENTS: tuple[Element, ...] = (
    Element(1, "octetDeltaCount", "bytes", Conv.UINT),
    Element(2, "packetDeltaCount", "packets", Conv.UINT),
    Element(85, "octetTotalCount", "bytes", Conv.UINT),
    Element(86, "packetTotalCount", "packets", Conv.UINT),
    Element(23, "postOctetDeltaCount", "bytes", Conv.UINT),
    Element(24, "postPacketDeltaCount", "packets", Conv.UINT),
    Element(4, "protocolIdentifier", "proto", Conv.UINT),
    Element(5, "ipClassOfService", "tos", Conv.UINT),
    Element(6, "tcpControlBits", "tcpflags", Conv.UINT),
    Element(7, "sourceTransportPort", "src_port", Conv.UINT),
    Element(8, "sourceIPv4Address", "src_addr", Conv.ADDR4),
    Element(9, "sourceIPv4PrefixLength", "src_mask", Conv.UINT),
    Element(10, "ingressInterface", "input_interface", Conv.UINT),
    Element(252, "ingressPhysicalInterface", "input_interface", Conv.UINT),
    Element(11, "destinationTransportPort", "dst_port", Conv.UINT),
    Element(12, "destinationIPv4Address", "dst_addr", Conv.ADDR4),
    Element(13, "destinationIPv4PrefixLength", "dst_mask", Conv.UINT),
    Element(14, "egressInterface", "output_interface", Conv.UINT),
    Element(253, "egressPhysicalInterface", "output_interface", Conv.UINT),
    Element(15, "ipNextHopIPv4Address", "next_hop", Conv.ADDR4),
    Element(62, "ipNextHopIPv6Address", "next_hop", Conv.ADDR6),
    Element(16, "bgpSourceAsNumber", "src_as", Conv.UINT),
    Element(17, "bgpDestinationAsNumber", "dst_as", Conv.UINT),
    Element(18, "bgpNextHopIPv4Address", "bgp_next_hop", Conv.ADDR4),
    Element(63, "bgpNextHopIPv6Address", "bgp_next_hop", Conv.ADDR6),
    Element(128, "bgpNextAdjacentAsNumber", "peer_dst_as", Conv.UINT),
    Element(129, "bgpPrevAdjacentAsNumber", "peer_src_as", Conv.UINT),
    Element(21, "flowEndSysUpTime", _END, Conv.UPTIME_MS),
    Element(22, "flowStartSysUpTime", _START, Conv.UPTIME_MS),
    Element(150, "flowStartSeconds", _START, Conv.SECONDS),
    Element(151, "flowEndSeconds", _END, Conv.SECONDS),
    Element(152, "flowStartMilliseconds", _START, Conv.MILLISECONDS),
    Element(153, "flowEndMilliseconds", _END, Conv.MILLISECONDS),
    Element(154, "flowStartMicroseconds", _START, Conv.NTP_US),
    Element(155, "flowEndMicroseconds", _END, Conv.NTP_US),
    Element(156, "flowStartNanoseconds", _START, Conv.NTP_NS),
    Element(157, "flowEndNanoseconds", _END, Conv.NTP_NS),
    Element(158, "flowStartDeltaMicroseconds", _START, Conv.DELTA_US),
    Element(159, "flowEndDeltaMicroseconds", _END, Conv.DELTA_US),
    Element(27, "sourceIPv6Address", "src_addr", Conv.ADDR6),
    Element(28, "destinationIPv6Address", "dst_addr", Conv.ADDR6),
    Element(29, "sourceIPv6PrefixLength", "src_mask", Conv.UINT),
    Element(30, "destinationIPv6PrefixLength", "dst_mask", Conv.UINT),
    Element(32, "icmpTypeCodeIPv4", ICMP, Conv.ICMP_TYPECODE),
    Element(139, "icmpTypeCodeIPv6", ICMP, Conv.ICMP_TYPECODE),
    Element(176, "icmpTypeIPv4", "icmp_type", Conv.UINT),
    Element(177, "icmpCodeIPv4", "icmp_code", Conv.UINT),
    Element(178, "icmpTypeIPv6", "icmp_type", Conv.UINT),
    Element(179, "icmpCodeIPv6", "icmp_code", Conv.UINT),
    Element(34, "samplingInterval", SAMPLING_INTERVAL, Conv.UINT),
    Element(305, "samplingPacketInterval", SAMPLING_INTERVAL, Conv.UINT),
    Element(50, "samplerRandomInterval", SAMPLING_INTERVAL, Conv.UINT),
    Element(309, "samplingSize", SAMPLING_SIZE, Conv.UINT),
    Element(310, "samplingPopulation", SAMPLING_POPULATION, Conv.UINT),
    Element(48, "samplerId", SAMPLER_ID, Conv.UINT),
    Element(302, "selectorId", SAMPLER_ID, Conv.UINT),
    Element(56, "sourceMacAddress", "src_mac", Conv.MAC),
    Element(81, "postSourceMacAddress", "src_mac", Conv.MAC),
    Element(80, "destinationMacAddress", "dst_mac", Conv.MAC),
    Element(57, "postDestinationMacAddress", "dst_mac", Conv.MAC),
    Element(58, "vlanId", "src_vlan", Conv.UINT),
    Element(243, "dot1qVlanId", "src_vlan", Conv.UINT),
    Element(59, "postVlanId", "dst_vlan", Conv.UINT),
    Element(254, "postdot1qVlanId", "dst_vlan", Conv.UINT),
    Element(60, "ipVersion", "ip_version", Conv.UINT),
    Element(89, "forwardingStatus", "forwarding_status", Conv.UINT),
    Element(225, "postNATSourceIPv4Address", "post_nat_src_addr", Conv.ADDR4),
    Element(226, "postNATDestinationIPv4Address", "post_nat_dst_addr", Conv.ADDR4),
    Element(281, "postNATSourceIPv6Address", "post_nat_src_addr", Conv.ADDR6),
    Element(282, "postNATDestinationIPv6Address", "post_nat_dst_addr", Conv.ADDR6),
    Element(227, "postNAPTSourceTransportPort", "post_nat_src_port", Conv.UINT),
    Element(228, "postNAPTDestinationTransportPort", "post_nat_dst_port", Conv.UINT),
    Element(82, "interfaceName", INTERFACE_NAME, Conv.STRING),
    Element(160, "systemInitTimeMilliseconds", SYSTEM_INIT_MS, Conv.MILLISECONDS),
    Element(315, "dataLinkFrameSection", L2_SECTION, Conv.SECTION),
    Element(104, "layer2packetSectionData", L2_SECTION, Conv.SECTION),
    Element(313, "ipHeaderPacketSection", IP_SECTION, Conv.SECTION),
    Element(102, "layer2packetSectionOffset", L2_SECTION_OFFSET, Conv.UINT),
    Element(312, "dataLinkFrameSize", FRAME_SIZE, Conv.UINT),
    Element(408, "dataLinkFrameType", FRAME_TYPE, Conv.UINT),
)

BY_IE: dict[int, Element] = {e.ie: e for e in ELEMENTS}
# Lower rank wins when a template has two elements for one target.
PREFERENCE: dict[int, int] = {e.ie: rank for rank, e in enumerate(ELEMENTS)}

# Fixed sizes the conversions need; a template giving another size for these is skipped
# (counted) rather than misread.  Strings and sections take any size.
REQUIRED_LENGTH: dict[Conv, tuple[int, ...]] = {
    Conv.ADDR4: (4,),
    Conv.ADDR6: (16,),
    Conv.MAC: (6,),
    Conv.ICMP_TYPECODE: (2,),
    Conv.NTP_US: (8,),
    Conv.NTP_NS: (8,),
    Conv.UINT: (1, 2, 3, 4, 5, 6, 7, 8),
    Conv.UPTIME_MS: (4,),
    Conv.SECONDS: (4,),
    Conv.MILLISECONDS: (8,),
    Conv.DELTA_US: (4,),
}

START, END = _START, _END

# Targets whose elements describe one packet header (IP, then transport).  A template
# that repeats one of their elements reports an encapsulated packet, one occurrence per
# header, outermost first (RFC 7011 §8); see :mod:`.templates` for what is kept.
HEADER_TARGETS: frozenset[str] = frozenset({
    "src_addr", "dst_addr", "src_mask", "dst_mask", "ip_version", "proto", "tos", "tcpflags",
    "src_port", "dst_port", ICMP, "icmp_type", "icmp_code"})
