"""The one definition of the flow columns.

Decoder output, the ClickHouse DDL, the Native insert encoding, `decode --format jsonl`
and the API all derive from :data:`COLUMNS`; nothing else lists column names.  The
names of the original flowenricher's ``pmacct.flows`` table stay queryable: where a
compact type replaces the original one (addresses as ``IPv6``, AS paths as numbers),
the original name is an ``ALIAS`` column that renders the original type.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from .common.addresses import display_sql


class Kind(Enum):
    """How a column is carried in a :class:`~appliance.flowenricher.batch.FlowBatch`."""

    UINT = "uint"  # a numpy unsigned integer array
    ADDR = "addr"  # an (n, 16) uint8 array: IPv6, IPv4 as ::ffff:a.b.c.d
    STR = "str"  # a DictColumn: uint32 codes into a list of strings
    UINT_LIST = "uint_list"  # a ListColumn: offsets plus flat uint32 values


@dataclass(frozen=True)
class Column:
    """One stored flow column: its name, its ClickHouse type and how it is carried."""

    name: str
    ch_type: str
    kind: Kind
    doc: str
    codec: str = ""
    dtype: str = ""  # numpy dtype (little-endian) for UINT columns

    @property
    def np_dtype(self) -> np.dtype[np.generic]:
        if self.kind is Kind.UINT:
            return np.dtype(self.dtype)
        if self.kind is Kind.ADDR:
            return np.dtype(np.uint8)
        raise TypeError(f"column {self.name} is not a numpy column")


def _u(name: str, bits: int, doc: str, codec: str = "") -> Column:
    ch = {8: "UInt8", 16: "UInt16", 32: "UInt32", 64: "UInt64"}[bits]
    return Column(name, ch, Kind.UINT, doc, codec, f"<u{bits // 8}")


def _time(name: str, doc: str) -> Column:
    return Column(name, "DateTime", Kind.UINT, doc, "DoubleDelta, ZSTD(1)", "<u4")


def _addr(name: str, doc: str) -> Column:
    return Column(name, "IPv6", Kind.ADDR, doc, "ZSTD(1)")


def _lc(name: str, doc: str) -> Column:
    return Column(name, "LowCardinality(String)", Kind.STR, doc)


# Order matters only for readability of `SELECT *`; the sort key is in storage.
COLUMNS: tuple[Column, ...] = (
    _time("timestamp_start", "flow start (unix seconds)"),
    _time("timestamp_end", "flow end (unix seconds)"),
    _time("received_at", "when the collector received the datagram"),
    _addr("exporter_address", "address the datagram came from"),
    _u("observation_domain", 32, "IPFIX observation domain id / NetFlow v9 source id", "T64, ZSTD(1)"),
    _lc("flow_protocol", "netflow5, netflow9, ipfix or sflow5"),
    _u("sampling_rate", 32, "1 in N packets sampled; bytes and packets are already scaled by it", "T64, ZSTD(1)"),
    _u("ip_version", 8, "4 or 6"),
    _addr("src_addr", "source address"),
    _addr("dst_addr", "destination address"),
    _u("src_port", 16, "source port", "T64, ZSTD(1)"),
    _u("dst_port", 16, "destination port", "T64, ZSTD(1)"),
    _u("proto", 8, "IP protocol number (6 tcp, 17 udp, ...)"),
    _u("tcpflags", 8, "TCP flags ORed over the flow"),
    _u("tos", 8, "IP type of service / traffic class"),
    _u("icmp_type", 8, "ICMP type (ICMPv6 for IPv6)"),
    _u("icmp_code", 8, "ICMP code"),
    _u("packets", 64, "packets, scaled by sampling_rate", "T64, ZSTD(1)"),
    _u("bytes", 64, "bytes, scaled by sampling_rate", "T64, ZSTD(1)"),
    _u("input_interface", 32, "ifIndex the flow entered on", "T64, ZSTD(1)"),
    _u("output_interface", 32, "ifIndex the flow left on", "T64, ZSTD(1)"),
    _lc("input_interface_name", "name of input_interface (options data, else SNMP)"),
    _lc("output_interface_name", "name of output_interface (options data, else SNMP)"),
    _u("src_vlan", 16, "802.1Q VLAN id on ingress"),
    _u("dst_vlan", 16, "802.1Q VLAN id on egress"),
    _u("src_mac", 64, "source MAC address as a number", "ZSTD(1)"),
    _u("dst_mac", 64, "destination MAC address as a number", "ZSTD(1)"),
    _u("src_mask", 8, "source prefix length known to the exporter"),
    _u("dst_mask", 8, "destination prefix length known to the exporter"),
    _addr("next_hop", "IP next hop reported by the exporter"),
    _u("forwarding_status", 8, "RFC 7270 forwardingStatus (64 forwarded, 128+ dropped)"),
    _addr("post_nat_src_addr", "post-NAT source address (IE 225)"),
    _addr("post_nat_dst_addr", "post-NAT destination address (IE 226)"),
    _u("post_nat_src_port", 16, "post-NAT source port (IE 227)", "T64, ZSTD(1)"),
    _u("post_nat_dst_port", 16, "post-NAT destination port (IE 228)", "T64, ZSTD(1)"),
    _addr("tunnel_src_addr", "outer (tunnel) source address of an encapsulated flow, :: if none"),
    _addr("tunnel_dst_addr", "outer (tunnel) destination address of an encapsulated flow, :: if none"),
    # Enrichment (filled by the enrichment stage; decoders leave the defaults).
    _u("src_as", 32, "origin AS of the source address", "T64, ZSTD(1)"),
    _u("dst_as", 32, "origin AS of the destination address", "T64, ZSTD(1)"),
    _lc("src_as_name", "organisation of src_as"),
    _lc("dst_as_name", "organisation of dst_as"),
    _u("peer_src_as", 32, "neighbour AS the flow came from (pmacct meaning)", "T64, ZSTD(1)"),
    _u("peer_dst_as", 32, "neighbour AS the flow leaves to (first AS of the path)", "T64, ZSTD(1)"),
    _lc("peer_src_as_name", "organisation of peer_src_as"),
    _lc("peer_dst_as_name", "organisation of peer_dst_as"),
    Column("dst_as_path", "Array(UInt32)", Kind.UINT_LIST, "BGP AS path towards dst_addr"),
    Column("dst_communities", "Array(UInt32)", Kind.UINT_LIST, "BGP standard communities of the route to dst_addr"),
    _u("local_pref", 32, "BGP local preference of the route to dst_addr"),
    _addr("bgp_next_hop", "BGP next hop of the route to dst_addr"),
    _lc("src_host_country", "ISO country code of src_addr"),
    _lc("dst_host_country", "ISO country code of dst_addr"),
    _lc("src_host_city", "city of src_addr"),
    _lc("dst_host_city", "city of dst_addr"),
    _lc("src_net_name", "configured network name of src_addr"),
    _lc("dst_net_name", "configured network name of dst_addr"),
    _lc("src_net_customer", "customer of the configured network holding src_addr"),
    _lc("dst_net_customer", "customer of the configured network holding dst_addr"),
    _lc("src_host_ptr", "reverse DNS name of src_addr, when already resolved (see ptr_cache)"),
    _lc("dst_host_ptr", "reverse DNS name of dst_addr, when already resolved (see ptr_cache)"),
    _u("flow_direction", 8, "0 unknown, 1 inbound, 2 outbound, 3 internal, 4 transit"),
)

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)

# Where the outer header's addresses of an encapsulated flow go, by the column holding
# the inner header's (the flow's own): src_addr, dst_addr, ports and protocol describe
# one header, the innermost; the tunnel it crossed is kept beside it.
TUNNEL_OF: dict[str, str] = {"src_addr": "tunnel_src_addr", "dst_addr": "tunnel_dst_addr"}

# Columns that keep the original `pmacct.flows` names and types readable.  Each is an
# ALIAS, so it costs nothing on disk.  `ip_protocol` was a second copy of the protocol.
ALIASES: dict[str, tuple[str, str]] = {
    "src_host": ("String", display_sql("src_addr")),
    "dst_host": ("String", display_sql("dst_addr")),
    "as_path": ("Array(String)", "arrayMap(x -> toString(x), dst_as_path)"),
    "ip_protocol": ("UInt8", "proto"),
    "ingested_at": ("DateTime", "received_at"),
}

DIRECTION_NAMES = ("unknown", "inbound", "outbound", "internal", "transit")
