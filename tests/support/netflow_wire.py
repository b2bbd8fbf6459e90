"""NetFlow v5/v9, IPFIX and sFlow datagrams built field by field, for hostile-input tests.

Encoders of the wire formats as the RFCs lay them out (RFC 3954 §5-6, RFC 7011 §3),
kept apart from the decoder so that tests build inputs the decoder has never seen,
including ones no real exporter sends.  Each field is (element id, length, enterprise).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

Field = tuple[int, int, int]  # element id, length (65535: variable), enterprise number (0: IANA)


def uint(value: int, length: int) -> bytes:
    """`value` big-endian in `length` bytes (truncated to fit, as a hostile sender may)."""
    return (value & ((1 << (8 * length)) - 1)).to_bytes(length, "big")


def varlen(data: bytes, long_form: bool = False) -> bytes:
    """RFC 7011 §7 variable-length encoding: 1-byte length, or 255 and a 2-byte length."""
    if long_form or len(data) >= 255:
        return b"\xff" + struct.pack("!H", len(data)) + data
    return bytes([len(data)]) + data


def _field_specs(fields: Sequence[Field]) -> bytes:
    out = b""
    for ie, length, enterprise in fields:
        if enterprise:
            out += struct.pack("!HHI", ie | 0x8000, length, enterprise)
        else:
            out += struct.pack("!HH", ie, length)
    return out


def ipfix_template(tid: int, fields: Sequence[Field]) -> bytes:
    """One template record (RFC 7011 §3.4.1); an empty field list is a withdrawal."""
    return struct.pack("!HH", tid, len(fields)) + _field_specs(fields)


def ipfix_options_template(tid: int, scope: Sequence[Field], options: Sequence[Field]) -> bytes:
    """One options template record (RFC 7011 §3.4.2.2)."""
    return struct.pack("!HHH", tid, len(scope) + len(options), len(scope)) + _field_specs([*scope, *options])


def ipfix_set(set_id: int, body: bytes) -> bytes:
    return struct.pack("!HH", set_id, 4 + len(body)) + body


def ipfix_message(sets: Sequence[bytes], export_time: int, seq: int = 0, domain: int = 0) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), export_time, seq, domain) + body


def v9_template(tid: int, fields: Sequence[tuple[int, int]]) -> bytes:
    return struct.pack("!HH", tid, len(fields)) + b"".join(struct.pack("!HH", *f) for f in fields)


def v9_options_template(tid: int, scope: Sequence[tuple[int, int]], options: Sequence[tuple[int, int]]) -> bytes:
    """RFC 3954 §6.1: lengths in bytes of the scope and option field lists."""
    return (struct.pack("!HHH", tid, 4 * len(scope), 4 * len(options))
            + b"".join(struct.pack("!HH", *f) for f in (*scope, *options)))


def v9_packet(flowsets: Sequence[bytes], unix_secs: int, uptime_ms: int, seq: int = 0, source_id: int = 0,
              count: int | None = None) -> bytes:
    """A v9 export packet; flowsets are ipfix_set() output (same set header layout)."""
    n = len(flowsets) if count is None else count
    return struct.pack("!HHIIII", 9, n, uptime_ms & 0xFFFFFFFF, unix_secs, seq, source_id) + b"".join(flowsets)


def v5_packet(records: Sequence[dict[str, int]], unix_secs: int, uptime_ms: int, seq: int = 0,
              sampling: int = 0, engine: tuple[int, int] = (0, 0)) -> bytes:
    """A v5 packet; each record dict may give src, dst, packets, bytes, first, last (ms)."""
    head = struct.pack("!HHIIIIBBH", 5, len(records), uptime_ms & 0xFFFFFFFF, unix_secs, 0, seq,
                       engine[0], engine[1], sampling)
    body = b""
    for r in records:
        body += struct.pack("!IIIHHIIIIHHBBBBHHBBH", r.get("src", 0x0A000001), r.get("dst", 0x0A000002), 0,
                            1, 2, r.get("packets", 1), r.get("bytes", 100), r.get("first", 0) & 0xFFFFFFFF,
                            r.get("last", 0) & 0xFFFFFFFF, 1000, 80, 0, 0, 6, 0, 0, 0, 24, 24, 0)
    return head + body


def sflow_datagram(seq: int, samples: Sequence[tuple[int, bytes]] = (), sub_agent: int = 0,
                   agent: bytes = b"\xc0\x00\x02\x01", uptime_ms: int = 0) -> bytes:
    """sFlow v5 datagram header ("sample_datagram_v5") with (format, body) samples."""
    out = struct.pack("!II", 5, 1) + agent  # version 5, agent address type 1 (IPv4)
    out += struct.pack("!IIII", sub_agent, seq, uptime_ms, len(samples))
    for fmt, body in samples:
        out += struct.pack("!II", fmt, len(body)) + body + bytes(-len(body) & 3)
    return out
