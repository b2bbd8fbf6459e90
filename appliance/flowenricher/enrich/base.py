"""What every enrichment stage shares: the batch's unique addresses and the stage contract.

Enrichment runs once per batch in the storing process (one owner of the GeoIP readers,
the RIB mirror, the DNS and SNMP caches, so memory is paid once, not per worker).  A
batch of 250k flows from a small AS holds a few thousand distinct addresses, so every
stage looks up *unique* addresses and spreads the answers with numpy fancy indexing:
``per_unique[addrs.src]``.  No stage loops over flows in Python.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from ..batch import U8, DictColumn, FlowBatch, addr_is_v4
from ..common.addresses import row_text, stored_int

Index = npt.NDArray[np.intp]


@dataclass
class AddressSet:
    """The distinct addresses of a batch (sources and destinations together).

    ``addrs[src[i]]`` is flow i's source address, ``addrs[dst[i]]`` its destination.
    """

    addrs: U8  # (m, 16), IPv4 as ::ffff:a.b.c.d
    src: Index  # (n,)
    dst: Index  # (n,)

    @classmethod
    def of(cls, batch: FlowBatch) -> AddressSet:
        n = batch.n
        both = np.concatenate([batch["src_addr"], batch["dst_addr"]])
        hi, lo = addr_halves(both)
        # Sorting two uint64 keys is several times faster than np.unique on 16-byte
        # rows; an all-IPv4 batch (one high half) needs only the low half.
        if len(hi) and bool((hi == hi[0]).all()):
            uniq_lo, inverse = np.unique(lo, return_inverse=True)
            halves = np.empty((len(uniq_lo), 2), dtype=">u8")
            halves[:, 0] = hi[0]
            halves[:, 1] = uniq_lo
        else:
            order = np.lexsort((lo, hi))
            s_hi, s_lo = hi[order], lo[order]
            first = np.ones(len(order), dtype=bool)
            first[1:] = (s_hi[1:] != s_hi[:-1]) | (s_lo[1:] != s_lo[:-1])
            inverse = np.empty(len(order), dtype=np.intp)
            inverse[order] = np.cumsum(first) - 1
            halves = np.empty((int(first.sum()), 2), dtype=">u8")
            halves[:, 0] = s_hi[first]
            halves[:, 1] = s_lo[first]
        addrs = halves.view(np.uint8).reshape(-1, 16)
        inverse = inverse.ravel().astype(np.intp)
        return cls(addrs, inverse[:n], inverse[n:])

    def __len__(self) -> int:
        return len(self.addrs)

    @property
    def is_v4(self) -> npt.NDArray[np.bool_]:
        return addr_is_v4(self.addrs)

    def texts(self, idx: Iterable[int] | None = None) -> list[str]:
        """Addresses as text (IPv4 dotted); for the lookups that take strings."""
        rows = self.addrs if idx is None else self.addrs[np.fromiter(idx, np.intp)]
        return [row_text(r) for r in rows]


class Stage(Protocol):
    """One enrichment: fills its columns of a batch in place, never raises for bad data.

    A stage whose source is away (GoBGP down, DNS timing out) leaves its columns at
    their defaults and counts it; it must not block or slow the batch.
    """

    name: str

    def enrich(self, batch: FlowBatch, addrs: AddressSet) -> None: ...

    def close(self) -> None: ...


def spread_strings(per_unique: Sequence[str], index: Index) -> DictColumn:
    """A string column for the flows from one string per unique address.

    ``per_unique[j]`` is the value of unique address j; ``index`` maps each flow to j.
    """
    table: dict[str, int] = {"": 0}
    codes = np.fromiter((table.setdefault(s, len(table)) for s in per_unique), np.uint32, len(per_unique))
    return DictColumn(codes[index] if len(codes) else np.zeros(len(index), np.uint32), list(table))


class StringTable:
    """Strings interned to stable uint32 codes (code 0 is ""), so that a stage can keep
    per-address answers as numpy arrays and build a batch's string columns with numpy
    indexing, not a Python step per address.
    """

    def __init__(self) -> None:
        self._codes: dict[str, int] = {"": 0}
        self.values: list[str] = [""]

    def __len__(self) -> int:
        return len(self.values)

    def code(self, value: str) -> int:
        found = self._codes.get(value)
        if found is None:
            found = self._codes[value] = len(self.values)
            self.values.append(value)
        return found

    def column(self, codes: npt.NDArray[np.uint32], index: Index) -> DictColumn:
        """The column of the flows: ``codes[j]`` is unique address j's string, ``index``
        maps each flow to j.  The dictionary holds only the strings this batch uses."""
        if not len(codes):
            return DictColumn.constant(len(index))
        used, inverse = np.unique(codes, return_inverse=True)
        local = inverse.ravel().astype(np.uint32)
        if used[0] != 0:  # "" first, as DictColumn.constant and spread_strings have it
            used = np.concatenate((np.zeros(1, used.dtype), used))
            local += 1
        values = self.values
        return DictColumn(local[index], [values[c] for c in used.tolist()])


# Special-purpose and private ranges (RFC 6890 and its updates): never looked up in
# GeoIP/ASN databases or the RIB's public view, never sent to a public resolver.
_BOGONS = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "fc00::/7",
    "fe80::/10", "ff00::/8",
)


def _bogon_ranges() -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], npt.NDArray[np.uint64],
                             npt.NDArray[np.uint64]]:
    """Each bogon as [lo, hi] over the address's two 64-bit halves (IPv4 mapped)."""
    lo_hi, lo_lo, hi_hi, hi_lo = [], [], [], []
    for text in _BOGONS:
        net = ipaddress.ip_network(text)
        first, last = stored_int(net.network_address), stored_int(net.broadcast_address)
        lo_hi.append(first >> 64)
        lo_lo.append(first & (2**64 - 1))
        hi_hi.append(last >> 64)
        hi_lo.append(last & (2**64 - 1))
    return (np.array(lo_hi, np.uint64), np.array(lo_lo, np.uint64), np.array(hi_hi, np.uint64),
            np.array(hi_lo, np.uint64))


_BOGON_LO_HI, _BOGON_LO_LO, _BOGON_HI_HI, _BOGON_HI_LO = _bogon_ranges()


def addr_halves(addrs: U8) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """(n, 16) addresses as two big-endian 64-bit halves, for range comparisons."""
    halves = np.ascontiguousarray(addrs).view(">u8").reshape(-1, 2).astype(np.uint64)
    return halves[:, 0], halves[:, 1]


def public_mask(addrs: U8) -> npt.NDArray[np.bool_]:
    """True where an address is globally routable (not private, loopback, doc, ...)."""
    hi, lo = addr_halves(addrs)
    hi = hi[:, None]
    lo = lo[:, None]
    above = (hi > _BOGON_LO_HI) | ((hi == _BOGON_LO_HI) & (lo >= _BOGON_LO_LO))
    below = (hi < _BOGON_HI_HI) | ((hi == _BOGON_HI_HI) & (lo <= _BOGON_HI_LO))
    v4 = addr_is_v4(addrs)
    # IPv6 addresses outside 2000::/3 (global unicast) other than IPv4-mapped are not public.
    global_v6 = (addrs[:, 0] & 0xE0) == 0x20
    bogon: npt.NDArray[np.bool_] = np.any(above & below, axis=1)
    result: npt.NDArray[np.bool_] = ~bogon & (v4 | global_v6)
    return result
