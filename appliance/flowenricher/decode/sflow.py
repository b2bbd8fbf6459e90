"""sFlow version 5 decoder: flow samples of many datagrams into one FlowBatch.

Every flow sample becomes one flow row standing for `sampling_rate` packets; counter
samples are only counted.  Layouts follow "sFlow Version 5" (sflow.org,
https://sflow.org/sflow_version_5.txt, July 2004), an XDR (RFC 4506) encoding: every
field is a big-endian 32-bit word, and opaque data is padded to a multiple of 4 bytes.

sFlow carries far fewer records per second than NetFlow, so samples are walked one by
one in Python, but values go straight into one flat list per batch and become numpy
columns once per :meth:`SFlowDecoder.decode` call.

A malformed datagram (truncated, wrong version, lengths or counts that do not fit) is
dropped whole, counted under a ``sflow_*`` reason, and decoding goes on with the next
one: the flow samples already read from it are discarded too, because once one length
is wrong the others of that datagram cannot be trusted.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from ..batch import ColumnData, DictColumn, FlowBatch, str_to_addr
from ..common.addresses import V4_MAPPED
from ..errors import DecodeError
from .netflow import MAX_SAMPLING_RATE
from .packet_headers import L3Fields, parse_ethernet, parse_ipv4, parse_ipv6
from .sequence import MAX_GAP_DATAGRAMS, RESET, SequenceTracker
from .stats import (
    COUNTER_SAMPLES,
    DATAGRAMS,
    DECODE_ERROR,
    RECORDS,
    SAMPLING_IGNORED,
    SEQUENCE_LOST,
    SEQUENCE_RESETS,
    DecodeStats,
)

FLOW_PROTOCOL = "sflow5"

# Drop reasons (DecodeStats.dropped), one datagram each.
TRUNCATED = "sflow_truncated"  # a structure runs past the end of the datagram
BAD_VERSION = "sflow_bad_version"  # not sFlow v5 (v2/v4 have another layout)
BAD_ADDRESS = "sflow_bad_address_type"  # agent address type other than 0, 1, 2
BAD_LENGTH = "sflow_bad_length"  # a record does not fit its sample, or its format
BAD_COUNT = "sflow_bad_count"  # more samples/records announced than bytes can hold
# Counted (not dropped): samples of enterprise-specific or unknown formats, skipped by length.
SKIPPED_SAMPLES = "sflow_samples_skipped"

# Sample formats (enterprise 0, so the data_format word equals the format number).
_FLOW_SAMPLE, _COUNTER_SAMPLE, _FLOW_SAMPLE_EXPANDED, _COUNTER_SAMPLE_EXPANDED = 1, 2, 3, 4
# Flow record formats ("Flow Data Types" in the spec).
_RAW_HEADER, _SAMPLED_ETHERNET, _SAMPLED_IPV4, _SAMPLED_IPV6 = 1, 2, 3, 4
_EXTENDED_SWITCH, _EXTENDED_ROUTER = 1001, 1002
# header_protocol of the raw packet header record.
_HEADER_ETHERNET, _HEADER_IPV4, _HEADER_IPV6 = 1, 11, 12

# Spec, "address": type 0 UNKNOWN carries no bytes, 1 IP_V4 four, 2 IP_V6 sixteen.
_ADDRESS_LENGTH = {0: 0, 1: 4, 2: 16}

_PAIR = struct.Struct("!II")  # version + agent address type; data_format + length
_DATAGRAM_TAIL = struct.Struct("!IIII")  # sub_agent_id, sequence, uptime, sample count
# flow_sample: sequence, source_id, sampling_rate, sample_pool, drops, input, output, records
_FLOW = struct.Struct("!IIIIIIII")
# flow_sample_expanded: sequence, source_id type and index, sampling_rate, sample_pool,
# drops, input format and value, output format and value, records
_FLOW_EXPANDED = struct.Struct("!IIIIIIIIIII")
_RAW = struct.Struct("!IIII")  # header_protocol, frame_length, stripped, header length
_ETHERNET = struct.Struct("!IHI2xHI2xI")  # length, src_mac, dst_mac (mac[6] padded to 8), type
_IPV4 = struct.Struct("!II4s4sIIII")  # length, protocol, src, dst, ports, tcp_flags, tos
_IPV6 = struct.Struct("!II16s16sIIII")  # length, protocol, src, dst, ports, flags, priority
_SWITCH = struct.Struct("!IIII")  # src_vlan, src_priority, dst_vlan, dst_priority
_U32 = struct.Struct("!I")
_MASKS = struct.Struct("!II")

# Spec, "Input/output port information": in the compact form the top 2 bits give the
# format of the low 30 bits.  0 = ifIndex, where 0x3FFFFFFF means "the device itself"
# (packet from or to a local process); 1 = discarded, value is a reason; 2 = sent to
# several interfaces, value is their count (0 unknown).
_IF_MASK = 0x3FFFFFFF
_IF_LOCAL = 0x3FFFFFFF
_IF_INDEX, _IF_DISCARDED, _IF_MULTIPLE = 0, 1, 2

# RFC 7270 §4.12 forwardingStatus (IANA registry): 64 forwarded (unknown reason), 128 +
# reason for dropped.
_FORWARDED = 64
_DROPPED = 128
# sFlow discard reasons (spec, format 1 of the output interface) -> RFC 7270 drop codes.
# 0..255 are ICMP destination-unreachable codes (RFC 792, RFC 1812 §5.2.7.1).
_DISCARD_STATUS = {
    0: 131, 1: 131, 6: 131, 7: 131, 11: 131, 12: 131,  # net/host unreachable: Unroutable
    4: 133,  # fragmentation needed and DF set
    9: 129, 10: 129, 13: 129,  # administratively prohibited: ACL deny
    257: 137,  # TTL exceeded: Bad TTL
    258: 129,  # ACL
    260: 139,  # RED: WRED
    261: 138,  # traffic shaping / rate limiting: Policer
    262: 133,  # packet too big for a protocol that cannot fragment
}  # anything else (256 unknown, 259 no buffer space, ...) -> 128 Dropped: unknown

# The integer fields of one sample, in the order they are appended to the flat row list.
# `_frame_length` is not a column: it becomes `bytes` once multiplied by the rate.
_UINT_FIELDS = (
    "received_at", "observation_domain", "sampling_rate", "ip_version", "src_port",
    "dst_port", "proto", "tcpflags", "tos", "icmp_type", "icmp_code", "_frame_length",
    "input_interface", "output_interface", "src_vlan", "dst_vlan", "src_mac", "dst_mac",
    "src_mask", "dst_mask", "forwarding_status",
)
_WIDTH = len(_UINT_FIELDS)
# The address fields of one sample, 16 bytes each, appended to one bytearray.
_ADDR_FIELDS = ("exporter_address", "src_addr", "dst_addr", "next_hop")
_ZERO16 = bytes(16)
_EXPORTER_CACHE_MAX = 4096


class SFlowDecoder:
    """Decodes sFlow v5 datagrams; keeps no state across calls but an address cache and
    the datagram sequence number of each agent and sub-agent (to count losses)."""

    def __init__(self, stats: DecodeStats) -> None:
        self._stats = stats
        self._exporters: dict[str, bytes] = {}
        self.sequences = SequenceTracker(MAX_GAP_DATAGRAMS)

    def decode(self, datagrams: Sequence[tuple[bytes, str, int]]) -> FlowBatch:
        """datagrams: (payload, exporter address text, received_at unix seconds).

        Returns one batch holding the flow samples of every well-formed datagram.
        Never raises on bad input: losses are counted in the stats.
        """
        rows: list[int] = []
        addrs = bytearray()
        # Per exporter: datagrams, flow samples, counter samples, skipped samples, absurd
        # rates; added to the stats once per call rather than once per datagram.
        tally: dict[str, list[int]] = {}
        for payload, exporter, received_at in datagrams:
            counts = tally.get(exporter)
            if counts is None:
                counts = tally[exporter] = [0, 0, 0, 0, 0]
            counts[0] += 1
            row_mark, addr_mark = len(rows), len(addrs)
            try:
                flows, counters, skipped, absurd = self._datagram(
                    payload, self._exporter_bytes(exporter), int(received_at), rows, addrs)
            except DecodeError as err:
                del rows[row_mark:], addrs[addr_mark:]
                self._stats.drop(exporter, err.reason, 1, str(err))
                continue
            except (struct.error, IndexError, ValueError) as err:  # a bounds check missed
                del rows[row_mark:], addrs[addr_mark:]
                self._stats.drop(exporter, TRUNCATED, 1, f"{type(err).__name__}: {err}")
                continue
            except Exception as err:  # no datagram may stop the worker
                del rows[row_mark:], addrs[addr_mark:]
                self._stats.drop(exporter, DECODE_ERROR, 1, f"{type(err).__name__}: {err}")
                continue
            self._sequence(payload, exporter)
            counts[1] += flows
            counts[2] += counters
            counts[3] += skipped
            counts[4] += absurd
        for exporter, (n_dgrams, n_flows, n_counters, n_skipped, n_absurd) in tally.items():
            self._stats.count(exporter, DATAGRAMS, n_dgrams)
            if n_flows:
                self._stats.count(exporter, RECORDS, n_flows)
            if n_counters:
                self._stats.count(exporter, COUNTER_SAMPLES, n_counters)
            if n_skipped:
                self._stats.count(exporter, SKIPPED_SAMPLES, n_skipped)
            if n_absurd:
                self._stats.note(exporter, SAMPLING_IGNORED, n_absurd,
                                 f"sFlow sampling rate above {MAX_SAMPLING_RATE}: samples stored unsampled")
        return _to_batch(rows, addrs)

    def _sequence(self, data: bytes, exporter: str) -> None:
        """Track the datagram sequence number per agent address and sub-agent (spec:
        "Incremented with each sample datagram generated by a sub-agent")."""
        addr_len = _ADDRESS_LENGTH[_U32.unpack_from(data, 4)[0]]  # checked by _datagram
        off = 8 + addr_len
        sub_agent, sequence = _PAIR.unpack_from(data, off)
        agent = f"{exporter}/{data[8:off].hex()}"
        lost = self.sequences.observe((agent, sub_agent), sequence, 1)
        if lost == RESET:
            self._stats.count(exporter, SEQUENCE_RESETS)
        elif lost:
            self._stats.count(exporter, SEQUENCE_LOST, lost)

    def _exporter_bytes(self, exporter: str) -> bytes:
        """The exporter's address as 16 bytes; text that is no address gives zeros."""
        packed = self._exporters.get(exporter)
        if packed is None:
            try:
                packed = str_to_addr(exporter)
            except ValueError:
                packed = _ZERO16
            if len(self._exporters) >= _EXPORTER_CACHE_MAX:
                self._exporters.clear()
            self._exporters[exporter] = packed
        return packed

    def _datagram(self, data: bytes, exporter: bytes, received_at: int,
                  rows: list[int], addrs: bytearray) -> tuple[int, int, int, int]:
        """Walk one datagram ("sample_datagram_v5" in the spec).

        Appends one row per flow sample; returns (flow samples, counter samples,
        skipped samples, samples whose absurd rate was ignored).  Raises DecodeError
        when the datagram is malformed.
        """
        size = len(data)
        if size < 8:
            raise DecodeError(TRUNCATED, f"{size} bytes, shorter than the sFlow header")
        version, addr_type = _PAIR.unpack_from(data, 0)
        if version != 5:
            raise DecodeError(BAD_VERSION, f"version {version}")
        addr_len = _ADDRESS_LENGTH.get(addr_type)
        if addr_len is None:
            raise DecodeError(BAD_ADDRESS, f"agent address type {addr_type}")
        off = 8 + addr_len  # the agent address is not stored: exporter_address is the UDP source
        if size - off < 16:
            raise DecodeError(TRUNCATED, "datagram header")
        sub_agent, _sequence, _uptime, n_samples = _DATAGRAM_TAIL.unpack_from(data, off)
        off += 16
        if n_samples * 8 > size - off:  # each sample is at least its 8-byte header
            raise DecodeError(BAD_COUNT, f"{n_samples} samples in {size - off} bytes")
        flows = counters = skipped = absurd = 0
        for _ in range(n_samples):
            if size - off < 8:
                raise DecodeError(TRUNCATED, "sample header")
            data_format, length = _PAIR.unpack_from(data, off)
            off += 8
            end = off + length
            if end > size:
                raise DecodeError(TRUNCATED, f"sample of {length} bytes, {size - off} left")
            if data_format in (_FLOW_SAMPLE, _FLOW_SAMPLE_EXPANDED):
                absurd += self._flow_sample(data, off, end, data_format == _FLOW_SAMPLE_EXPANDED,
                                            exporter, received_at, sub_agent, rows, addrs)
                flows += 1
            elif data_format in (_COUNTER_SAMPLE, _COUNTER_SAMPLE_EXPANDED):
                counters += 1
            else:
                skipped += 1  # enterprise-specific or future sample format
            off = end + (-length & 3)  # XDR opaque padding (RFC 4506 §4.10)
        return flows, counters, skipped, absurd

    def _flow_sample(self, data: bytes, off: int, end: int, expanded: bool, exporter: bytes,
                     received_at: int, sub_agent: int, rows: list[int], addrs: bytearray) -> bool:
        """Decode one flow sample (format 1) or expanded flow sample (format 3) into a row;
        True when its sampling rate was absurd and ignored."""
        if expanded:
            if end - off < _FLOW_EXPANDED.size:
                raise DecodeError(BAD_LENGTH, "expanded flow sample shorter than its header")
            (_seq, _src_type, _src_index, rate, _pool, _drops, in_format, in_value,
             out_format, out_value, n_records) = _FLOW_EXPANDED.unpack_from(data, off)
            off += _FLOW_EXPANDED.size
        else:
            if end - off < _FLOW.size:
                raise DecodeError(BAD_LENGTH, "flow sample shorter than its header")
            _seq, _src, rate, _pool, _drops, inp, out, n_records = _FLOW.unpack_from(data, off)
            off += _FLOW.size
            in_format, in_value = inp >> 30, inp & _IF_MASK
            out_format, out_value = out >> 30, out & _IF_MASK
            # The "device itself" marker exists only in the 30-bit form; it is no ifIndex
            # SNMP could name, so it reads as 0 (no interface), like "unknown".
            if in_value == _IF_LOCAL:
                in_value = 0
            if out_format == _IF_INDEX and out_value == _IF_LOCAL:
                out_value = 0
        # One sample stands for `rate` packets: a rate above what any agent uses (the
        # NetFlow decoder's bound) is corrupt or forged, and 0 is meaningless; both are
        # stored as unsampled, so one datagram cannot add exabytes to the traffic.
        absurd = bool(rate > MAX_SAMPLING_RATE)
        if absurd or rate == 0:
            rate = 1
        input_if = in_value if in_format == _IF_INDEX else 0
        # Output: a single ifIndex means forwarded there (0 = not known: status unknown);
        # several interfaces (broadcast/multicast) report no single index but forwarded;
        # a discard reports no interface and maps the reason to RFC 7270 status 128-143.
        if out_format == _IF_INDEX:
            output_if, status = out_value, (_FORWARDED if out_value else 0)
        elif out_format == _IF_MULTIPLE:
            output_if, status = 0, _FORWARDED
        elif out_format == _IF_DISCARDED:
            output_if, status = 0, _DISCARD_STATUS.get(out_value, _DROPPED)
        else:
            output_if, status = 0, 0

        if n_records * 8 > end - off:
            raise DecodeError(BAD_COUNT, f"{n_records} flow records in {end - off} bytes")
        # What the records say, merged after the loop since their order is free: the raw
        # header wins over the agent's own parse (sampled IPv4/IPv6/Ethernet records),
        # and the extended switch VLANs over a tag read in the header.
        raw_l3: L3Fields | None = None
        sampled_l3: L3Fields | None = None
        raw_length = ethernet_length = sampled_length = -1
        src_mac = dst_mac = 0
        macs_from_header = False
        header_vlan = switch_src_vlan = switch_dst_vlan = 0
        next_hop = _ZERO16
        src_mask = dst_mask = 0
        for _ in range(n_records):
            if end - off < 8:
                raise DecodeError(BAD_LENGTH, "flow record header past the sample end")
            record_format, record_length = _PAIR.unpack_from(data, off)
            roff = off + 8
            rend = roff + record_length
            if rend > end:
                raise DecodeError(BAD_LENGTH, f"flow record {record_format} past the sample end")
            if record_format == _RAW_HEADER:
                if record_length < _RAW.size:
                    raise DecodeError(BAD_LENGTH, "raw packet header record")
                header_proto, frame_length, _stripped, header_length = _RAW.unpack_from(data, roff)
                hoff = roff + _RAW.size
                hend = hoff + header_length
                if hend > rend:
                    raise DecodeError(BAD_LENGTH, "sampled header longer than its record")
                if raw_length < 0:  # the first raw header of a sample is the one used
                    raw_length = frame_length
                    if header_proto == _HEADER_ETHERNET:
                        eth = parse_ethernet(data, hoff, hend)
                        if eth is not None:
                            src_mac, dst_mac, header_vlan, raw_l3 = eth
                            macs_from_header = True
                    elif header_proto == _HEADER_IPV4:
                        raw_l3 = parse_ipv4(data, hoff, hend)
                    elif header_proto == _HEADER_IPV6:
                        raw_l3 = parse_ipv6(data, hoff, hend)
                    # Other link types (MPLS, PPP, 802.11, ...): counts and interfaces only.
            elif record_format == _SAMPLED_ETHERNET:
                if record_length < _ETHERNET.size:
                    raise DecodeError(BAD_LENGTH, "sampled Ethernet record")
                length, s_hi, s_lo, d_hi, d_lo, _type = _ETHERNET.unpack_from(data, roff)
                ethernet_length = length
                if not macs_from_header:
                    src_mac, dst_mac = (s_hi << 32) | s_lo, (d_hi << 32) | d_lo
            elif record_format == _SAMPLED_IPV4:
                if record_length < _IPV4.size:
                    raise DecodeError(BAD_LENGTH, "sampled IPv4 record")
                length, proto, src, dst, sport, dport, flags, tos = _IPV4.unpack_from(data, roff)
                sampled_length = length
                # Ports are kept as sent ("or equivalent" for other protocols): the spec
                # does not say where an agent puts ICMP type and code.
                sampled_l3 = (4, V4_MAPPED + src, V4_MAPPED + dst, proto & 0xFF, tos & 0xFF,
                              flags & 0xFF, sport & 0xFFFF, dport & 0xFFFF, 0, 0)
            elif record_format == _SAMPLED_IPV6:
                if record_length < _IPV6.size:
                    raise DecodeError(BAD_LENGTH, "sampled IPv6 record")
                length, proto, src, dst, sport, dport, flags, prio = _IPV6.unpack_from(data, roff)
                sampled_length = length
                sampled_l3 = (6, src, dst, proto & 0xFF, prio & 0xFF, flags & 0xFF,
                              sport & 0xFFFF, dport & 0xFFFF, 0, 0)
            elif record_format == _EXTENDED_SWITCH:
                if record_length < _SWITCH.size:
                    raise DecodeError(BAD_LENGTH, "extended switch record")
                switch_src_vlan, _sp, switch_dst_vlan, _dp = _SWITCH.unpack_from(data, roff)
            elif record_format == _EXTENDED_ROUTER:
                next_hop, src_mask, dst_mask = _extended_router(data, roff, rend)
            # Anything else (extended gateway 1003, user 1004, enterprise formats, ...) is
            # skipped by its length; the gateway's AS data comes from our own BGP view.
            off = rend + (-record_length & 3)

        l3 = raw_l3 if raw_l3 is not None else sampled_l3
        if l3 is None:
            ip_version, src_addr, dst_addr = 0, _ZERO16, _ZERO16
            proto = tos = flags = sport = dport = icmp_type = icmp_code = 0
        else:
            ip_version, src_addr, dst_addr, proto, tos, flags, sport, dport, icmp_type, icmp_code = l3
        if raw_length >= 0:
            frame_length = raw_length
        elif ethernet_length >= 0:
            frame_length = ethernet_length
        else:
            frame_length = max(sampled_length, 0)
        # VLAN ids are 12 bits (IEEE 802.1Q); agents send 0 or 0xFFFFFFFF when unknown.
        src_vlan = switch_src_vlan if 0 < switch_src_vlan < 4096 else header_vlan
        dst_vlan = switch_dst_vlan if 0 < switch_dst_vlan < 4096 else 0
        rows.extend((received_at, sub_agent, rate, ip_version, sport, dport, proto, flags, tos,
                     icmp_type, icmp_code, frame_length, input_if, output_if, src_vlan, dst_vlan,
                     src_mac, dst_mac, src_mask, dst_mask, status))
        addrs += exporter
        addrs += src_addr
        addrs += dst_addr
        addrs += next_hop
        return absurd


def _extended_router(data: bytes, off: int, end: int) -> tuple[bytes, int, int]:
    """Extended router data (format 1002): next hop address, source and destination masks."""
    if end - off < 4:
        raise DecodeError(BAD_LENGTH, "extended router record")
    (addr_type,) = _U32.unpack_from(data, off)
    addr_len = _ADDRESS_LENGTH.get(addr_type)
    if addr_len is None:
        raise DecodeError(BAD_ADDRESS, f"next hop address type {addr_type}")
    off += 4
    if end - off < addr_len + _MASKS.size:
        raise DecodeError(BAD_LENGTH, "extended router record")
    raw = data[off : off + addr_len]
    next_hop = V4_MAPPED + raw if addr_len == 4 else (raw if addr_len == 16 else _ZERO16)
    src_mask, dst_mask = _MASKS.unpack_from(data, off + addr_len)
    # Prefix lengths are at most 128; anything larger is a broken exporter, read as unknown.
    return next_hop, (src_mask if src_mask <= 128 else 0), (dst_mask if dst_mask <= 128 else 0)


def _to_batch(rows: list[int], addrs: bytearray) -> FlowBatch:
    """Turn the flat per-sample lists into columns: one numpy conversion per batch."""
    n = len(rows) // _WIDTH
    table = np.array(rows, dtype=np.uint64).reshape(n, _WIDTH)
    columns: dict[str, ColumnData] = {}
    for i, name in enumerate(_UINT_FIELDS):
        if not name.startswith("_"):
            columns[name] = np.ascontiguousarray(table[:, i])
    received = table[:, _UINT_FIELDS.index("received_at")]
    columns["timestamp_start"] = received.copy()
    columns["timestamp_end"] = received.copy()
    # One sampled packet stands for `sampling_rate` packets (spec, "sampling_rate"), which
    # _flow_sample keeps within 1..MAX_SAMPLING_RATE.
    rate = table[:, _UINT_FIELDS.index("sampling_rate")]
    columns["packets"] = rate
    columns["bytes"] = table[:, _UINT_FIELDS.index("_frame_length")] * rate
    addr_table = np.frombuffer(bytes(addrs), dtype=np.uint8).reshape(n, len(_ADDR_FIELDS), 16)
    for i, name in enumerate(_ADDR_FIELDS):
        columns[name] = np.ascontiguousarray(addr_table[:, i])
    columns["flow_protocol"] = DictColumn.constant(n, FLOW_PROTOCOL)
    return FlowBatch(n, columns)
