"""goflow2's protobuf flows (``flowpb.FlowMessage``) as FlowBatches.

goflow2 (github.com/netsampler/goflow2, v2) publishes one Kafka record per flow with
``-transport=kafka -format=bin``: the protobuf message behind its length as a varint,
which goflow2 v2 always writes.  cloudflare's flow-pipeline and bwNetFlow consume the
same messages.  This module turns a list of such record values into one FlowBatch, so an
operator who already runs goflow2 collectors can point flowenricher's storing side at
their topic and get the same enrichment, detection and tables as its own collector.

The message type is declared here from the field numbers and types goflow2 publishes
in ``pb/flow.proto`` (facts of the wire format, not its file): only the fields that have
a flow column are declared, and protobuf skips the others as unknown fields.  The
parsing is the protobuf runtime's (upb, C); what is Python here is one list
comprehension per column over the parsed messages.

Mapping to the columns (columns.py), where goflow2 and flowenricher differ:

* goflow2 reports the packets and bytes the exporter counted and the sampling rate
  beside them; flowenricher's columns hold them scaled by the rate (as its own decoders
  do), so they are multiplied here.  A rate of 0 means unknown and counts as 1; a rate
  above the decoders' MAX_SAMPLING_RATE is ignored (counted ``sampling_rate_ignored``).
* times are nanoseconds in goflow2, seconds here; a flow without a start time takes the
  reception time, and times farther than the decoders' MAX_CLOCK_SKEW_S from reception
  are replaced by it (counted ``time_implausible``), as for NetFlow.
* exporter_address is goflow2's sampler address: the datagram's source for NetFlow and
  IPFIX, as flowenricher's own collector records it, but the agent address carried
  inside the datagram for sFlow.
* src_as, dst_as and the BGP fields goflow2 may carry from the exporter are not taken:
  enrichment fills them from flowenricher's own RIB, the same way for every input.

Hostile records never raise: a value that does not parse as a FlowMessage, lacks the
length prefix or has trailing bytes is dropped and counted ``goflow2_malformed``; an
address of a length other than 0, 4 or 16 bytes drops the record as
``goflow2_bad_address``; a port, protocol or other value wider than its column is
clamped and counted ``value_out_of_range``.  Counters go to the same DecodeStats as the
UDP decoders, under the exporter (goflow2's sampler address) when it is readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError as ProtobufDecodeError

from ..batch import DictColumn, FlowBatch
from ..columns import BY_NAME
from ..common.addresses import V4_MAPPED, row_text
from ..decode import stats as S

__all__ = ["FIELDS", "FlowMessage", "GoFlow2Decoder", "S", "frame", "unframe"]
from ..decode.netflow import MAX_CLOCK_SKEW_S, MAX_SAMPLING_RATE
from ..decode.stats import DecodeStats
from ..storage.native import varint

MALFORMED = "goflow2_malformed"
BAD_ADDRESS = "goflow2_bad_address"
UNKNOWN_EXPORTER = "goflow2"  # the DecodeStats label of records whose exporter is unreadable

# FlowMessage.FlowType -> flow_protocol (columns.py's names).
FLOW_TYPES = {1: "sflow5", 2: "netflow5", 3: "netflow9", 4: "ipfix"}

_U32, _U64, _BYTES = (descriptor_pb2.FieldDescriptorProto.TYPE_UINT32, descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
                      descriptor_pb2.FieldDescriptorProto.TYPE_BYTES)
# (goflow2 field, number, wire type): the subset of flowpb.FlowMessage with a column here.
# `type` is an enum in goflow2; enums share the varint encoding, so uint32 reads it.
FIELDS: tuple[tuple[str, int, int], ...] = (
    ("type", 1, _U32),
    ("sampling_rate", 3, _U64),
    ("src_addr", 6, _BYTES),
    ("dst_addr", 7, _BYTES),
    ("bytes", 9, _U64),
    ("packets", 10, _U64),
    ("sampler_address", 11, _BYTES),
    ("next_hop", 12, _BYTES),
    ("src_net", 16, _U32),
    ("dst_net", 17, _U32),
    ("in_if", 18, _U32),
    ("out_if", 19, _U32),
    ("proto", 20, _U32),
    ("src_port", 21, _U32),
    ("dst_port", 22, _U32),
    ("ip_tos", 23, _U32),
    ("forwarding_status", 24, _U32),
    ("tcp_flags", 26, _U32),
    ("src_mac", 27, _U64),
    ("dst_mac", 28, _U64),
    ("etype", 30, _U32),
    ("icmp_type", 31, _U32),
    ("icmp_code", 32, _U32),
    ("src_vlan", 33, _U32),
    ("dst_vlan", 34, _U32),
    ("observation_domain_id", 70, _U32),
    ("time_received_ns", 110, _U64),
    ("time_flow_start_ns", 111, _U64),
    ("time_flow_end_ns", 112, _U64),
)

# goflow2 field -> flow column, for the numbers copied as they are (clamped to the column).
_NUMBERS: dict[str, str] = {
    "src_net": "src_mask", "dst_net": "dst_mask", "in_if": "input_interface", "out_if": "output_interface",
    "proto": "proto", "src_port": "src_port", "dst_port": "dst_port", "ip_tos": "tos",
    "forwarding_status": "forwarding_status", "tcp_flags": "tcpflags", "src_mac": "src_mac", "dst_mac": "dst_mac",
    "icmp_type": "icmp_type", "icmp_code": "icmp_code", "src_vlan": "src_vlan", "dst_vlan": "dst_vlan",
    "observation_domain_id": "observation_domain",
}
_ETHERTYPE_V4, _ETHERTYPE_V6 = 0x0800, 0x86DD
_NS = 1_000_000_000


def _message_class() -> Any:
    """FlowMessage built from :data:`FIELDS` in a pool of its own (so it cannot clash with
    a generated flowpb module another library may load)."""
    file = descriptor_pb2.FileDescriptorProto(name="flowenricher_goflow2_flow.proto", package="flowpb",
                                              syntax="proto3")
    message = file.message_type.add(name="FlowMessage")
    for name, number, kind in FIELDS:
        message.field.add(name=name, number=number, type=kind,
                          label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("flowpb.FlowMessage"))


FlowMessage = _message_class()


def frame(message: bytes) -> bytes:
    """`message` behind its length as a varint, as goflow2 v2 writes a Kafka record (the
    inverse of :func:`unframe`; used by tests and benchmarks to build records).  The
    varint is protobuf's, unsigned LEB128, which ClickHouse's VarUInt also is."""
    return varint(len(message)) + message


def unframe(record: bytes) -> memoryview | None:
    """The message inside one record, or None when the varint length is missing, longer
    than 10 bytes, or does not equal what follows it."""
    length = shift = 0
    for i in range(min(len(record), 10)):
        byte = record[i]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            body = i + 1
            return memoryview(record)[body:] if len(record) - body == length else None
        shift += 7
    return None


class GoFlow2Decoder:
    """Record values of a goflow2 topic -> FlowBatch, counting what it drops in `stats`."""

    def __init__(self, stats: DecodeStats | None = None, max_clock_skew_s: int = MAX_CLOCK_SKEW_S) -> None:
        self.stats = stats if stats is not None else DecodeStats()
        self.max_clock_skew_s = max_clock_skew_s

    def decode(self, records: Sequence[bytes]) -> FlowBatch:
        """One batch of the records' flows, in record order (dropped ones left out)."""
        parse = FlowMessage.FromString
        messages: list[Any] = []
        malformed = 0
        for record in records:
            body = unframe(record) if isinstance(record, (bytes, bytearray)) else None
            if body is None:
                malformed += 1
                continue
            try:
                messages.append(parse(body))
            except (ProtobufDecodeError, RuntimeError, ValueError):
                malformed += 1
        if malformed:
            self.stats.drop(UNKNOWN_EXPORTER, MALFORMED, malformed, "record is not a length-prefixed FlowMessage")
        if not messages:
            return FlowBatch(0)

        exporters = [m.sampler_address for m in messages]
        keep, exporter_rows = _addresses(exporters)
        src_ok, src_rows = _addresses([m.src_addr for m in messages])
        dst_ok, dst_rows = _addresses([m.dst_addr for m in messages])
        hop_ok, hop_rows = _addresses([m.next_hop for m in messages])
        keep &= src_ok & dst_ok & hop_ok
        if not keep.all():
            bad = ~keep
            for i in np.flatnonzero(bad).tolist():
                label = row_text(exporter_rows[i]) if exporters[i] and len(exporters[i]) in (4, 16) \
                    else UNKNOWN_EXPORTER
                self.stats.drop(label, BAD_ADDRESS, 1, "an address of neither 4 nor 16 bytes")
            messages = [m for m, k in zip(messages, keep.tolist(), strict=True) if k]
            exporter_rows, src_rows, dst_rows, hop_rows = (a[keep] for a in (exporter_rows, src_rows, dst_rows,
                                                                                hop_rows))
            if not messages:
                return FlowBatch(0)

        n = len(messages)
        batch = FlowBatch(n)
        batch["exporter_address"] = exporter_rows
        batch["src_addr"] = src_rows
        batch["dst_addr"] = dst_rows
        batch["next_hop"] = hop_rows
        labels = _labels(exporter_rows)

        for field, column in _NUMBERS.items():
            values = np.fromiter((getattr(m, field) for m in messages), np.uint64, n)
            batch[column] = self._fit(column, values, labels)

        types = np.fromiter((m.type for m in messages), np.uint32, n)
        names = ["", *FLOW_TYPES.values()]
        batch["flow_protocol"] = DictColumn(np.where(types <= len(FLOW_TYPES), types, 0).astype(np.uint32), names)

        etype = np.fromiter((m.etype for m in messages), np.uint32, n)
        v4 = (src_rows[:, :12] == np.frombuffer(V4_MAPPED, np.uint8)).all(axis=1)
        batch["ip_version"] = np.where(etype == _ETHERTYPE_V6, 6,
                                       np.where((etype == _ETHERTYPE_V4) | v4, 4, 6)).astype(np.uint8)

        rate = np.fromiter((m.sampling_rate for m in messages), np.uint64, n)
        ignored = rate > MAX_SAMPLING_RATE
        if ignored.any():
            self._note(labels, ignored, S.SAMPLING_IGNORED)
        rate = np.where((rate == 0) | ignored, 1, rate).astype(np.uint64)
        batch["sampling_rate"] = rate.astype(np.uint32)
        for field in ("packets", "bytes"):
            counted = np.fromiter((getattr(m, field) for m in messages), np.uint64, n)
            with np.errstate(over="ignore"):
                scaled = counted * rate
            wrapped = (rate > 1) & (scaled // rate != counted)
            if wrapped.any():
                self._note(labels, wrapped, S.VALUE_OUT_OF_RANGE)
                scaled = np.where(wrapped, np.iinfo(np.uint64).max, scaled)
            batch[field] = scaled

        received = np.fromiter((m.time_received_ns for m in messages), np.uint64, n) // _NS
        start = np.fromiter((m.time_flow_start_ns for m in messages), np.uint64, n) // _NS
        end = np.fromiter((m.time_flow_end_ns for m in messages), np.uint64, n) // _NS
        start = np.where(start == 0, np.where(end == 0, received, end), start)
        end = np.where(end == 0, start, end)
        if self.max_clock_skew_s > 0:
            recv, skew = received.astype(np.int64), self.max_clock_skew_s
            bad = (recv > 0) & ((np.abs(start.astype(np.int64) - recv) > skew)
                                | (np.abs(end.astype(np.int64) - recv) > skew))
            if bad.any():
                self._note(labels, bad, S.TIME_IMPLAUSIBLE)
                start, end = np.where(bad, received, start), np.where(bad, received, end)
        top = np.uint64(0xFFFFFFFF)
        batch["received_at"] = np.minimum(received, top)
        batch["timestamp_start"] = np.minimum(start, top)
        batch["timestamp_end"] = np.minimum(end, top)
        for label in set(labels):
            self.stats.count(label, S.RECORDS, labels.count(label))
        return batch

    def _fit(self, column: str, values: npt.NDArray[np.uint64], labels: list[str]) -> npt.NDArray[Any]:
        dtype = BY_NAME[column].np_dtype
        top = int(np.iinfo(dtype).max)  # type: ignore[type-var]
        wide = values > top
        if wide.any():
            self._note(labels, wide, S.VALUE_OUT_OF_RANGE)
            values = np.minimum(values, top)
        return values.astype(dtype)

    def _note(self, labels: list[str], mask: npt.NDArray[np.bool_], name: str) -> None:
        for i in np.flatnonzero(mask).tolist():
            self.stats.note(labels[i], name, 1, f"goflow2 record {i}")


def _addresses(values: list[bytes]) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint8]]:
    """(n, 16) address rows (IPv4 mapped, empty = ::) and which values had a valid length."""
    ok = np.fromiter((len(v) in (0, 4, 16) for v in values), np.bool_, len(values))
    blank = bytes(16)
    joined = b"".join(V4_MAPPED + v if len(v) == 4 else v if len(v) == 16 else blank for v in values)
    return ok, np.frombuffer(joined, dtype=np.uint8).reshape(len(values), 16).copy()


def _labels(rows: npt.NDArray[np.uint8]) -> list[str]:
    """The DecodeStats label of each record: its exporter's text (goflow2 when none)."""
    cache: dict[bytes, str] = {}
    out = []
    for row in rows:
        key = row.tobytes()
        label = cache.get(key)
        if label is None:
            label = row_text(row) if any(key) else UNKNOWN_EXPORTER
            cache[key] = label
        out.append(label)
    return out
