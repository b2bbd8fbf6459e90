"""Generated flow records as numpy columns, the one input every exporter encoder reads.

Column names follow :mod:`appliance.flowenricher.columns` where a column exists there, so a
test can compare what a decoder returns with what was generated, column by column.
Addresses are (n, 16) uint8 rows: IPv6, and IPv4 as IPv4-mapped ``::ffff:a.b.c.d``, the
convention of the decoder's FlowBatch; `ip_version` says which one a row is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from ..batch import FlowBatch, addr_to_str
from ..common.addresses import V4_MAPPED_ROW, stored_bytes
from ..common.addresses import v4_rows as v4_rows

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]

# Direction codes of the `flow_direction` column (columns.DIRECTION_NAMES).
INBOUND, OUTBOUND = 1, 2


@dataclass
class Flows:
    """`n` unidirectional flow records, one numpy array per field.

    Counters are uint32 because NetFlow v5 and the RouterOS-like v9/IPFIX templates carry
    them in 4 bytes.  Times are unix milliseconds; encoders turn them into the exporter's
    uptime-relative values.  `label` is 0 for normal traffic and k for rows produced by the
    scenario's k-th attack (`TrafficGenerator.truths[k - 1]`): the ground truth per row.
    """

    src_addr: U8
    dst_addr: U8
    next_hop: U8
    post_nat_src_addr: U8
    post_nat_dst_addr: U8
    src_port: U16
    dst_port: U16
    post_nat_src_port: U16
    post_nat_dst_port: U16
    proto: U8
    tcpflags: U8
    tos: U8
    packets: U32
    bytes: U32
    input_interface: U32
    output_interface: U32
    src_mask: U8
    dst_mask: U8
    ip_version: U8
    flow_direction: U8
    start_ms: U64
    end_ms: U64
    label: U8

    def __len__(self) -> int:
        return len(self.proto)

    @classmethod
    def empty(cls, n: int) -> Flows:
        """`n` all-zero rows (IPv4 unspecified addresses), for builders to fill in."""
        dtypes = _FIELD_DTYPES
        kw: dict[str, Any] = {}
        for name, dt in dtypes.items():
            if dt == "addr":
                arr = np.zeros((n, 16), dtype=np.uint8)
                arr[:, :12] = V4_MAPPED_ROW
                kw[name] = arr
            else:
                kw[name] = np.zeros(n, dtype=dt)
        kw["ip_version"][:] = 4
        return cls(**kw)

    def take(self, idx: npt.NDArray[np.intp] | npt.NDArray[np.bool_] | slice) -> Flows:
        """The rows selected by `idx` (an index array, a mask or a slice)."""
        return Flows(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @staticmethod
    def concat(parts: Sequence[Flows]) -> Flows:
        """All rows of `parts`, in order."""
        if not parts:
            return Flows.empty(0)
        if len(parts) == 1:
            return parts[0]
        return Flows(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                        for f in fields(Flows)})

    @property
    def is_v6(self) -> npt.NDArray[np.bool_]:
        v6: npt.NDArray[np.bool_] = self.ip_version == 6
        return v6

    def to_flow_batch(self) -> FlowBatch:
        """The rows as the decoder's FlowBatch (times in seconds), as if decoded unsampled.

        Lets later stages (enrichment, detection) be fed generated traffic directly.
        """
        cols: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)
                                if f.name not in ("start_ms", "end_ms", "label")}
        cols["timestamp_start"] = (self.start_ms // 1000).astype(np.uint32)
        cols["timestamp_end"] = (self.end_ms // 1000).astype(np.uint32)
        return FlowBatch(len(self), cols)

    def row(self, i: int) -> dict[str, object]:
        """Row `i` as plain Python values, addresses as text (for tests and messages)."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)[i]
            out[f.name] = addr_to_str(value) if value.ndim else int(value)
        return out


_FIELD_DTYPES: dict[str, Any] = {
    "src_addr": "addr", "dst_addr": "addr", "next_hop": "addr",
    "post_nat_src_addr": "addr", "post_nat_dst_addr": "addr",
    "src_port": np.uint16, "dst_port": np.uint16,
    "post_nat_src_port": np.uint16, "post_nat_dst_port": np.uint16,
    "proto": np.uint8, "tcpflags": np.uint8, "tos": np.uint8,
    "packets": np.uint32, "bytes": np.uint32,
    "input_interface": np.uint32, "output_interface": np.uint32,
    "src_mask": np.uint8, "dst_mask": np.uint8, "ip_version": np.uint8, "flow_direction": np.uint8,
    "start_ms": np.uint64, "end_ms": np.uint64, "label": np.uint8,
}


def text_rows(addresses: Sequence[str]) -> U8:
    """Addresses given as text (IPv4 or IPv6) as (n, 16) rows."""
    raw = b"".join(stored_bytes(a) for a in addresses)
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, 16).copy()


def rows_to_text(rows: U8) -> list[str]:
    """(n, 16) rows as text addresses (dotted quad for IPv4-mapped rows)."""
    return [addr_to_str(r) for r in rows]


def random_in_prefix(rng: np.random.Generator, prefix: ipaddress.IPv6Network, n: int) -> U8:
    """`n` random IPv6 addresses inside `prefix`, as (n, 16) rows."""
    base = np.frombuffer(prefix.network_address.packed, dtype=np.uint8)
    mask = np.frombuffer(prefix.netmask.packed, dtype=np.uint8)
    rand = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    return (base & mask) | (rand & ~mask)
