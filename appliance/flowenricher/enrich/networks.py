"""Flow direction from ``my_prefixes`` and the operator's network classification.

Both answer "which of *my* networks is this address in", over a table of tens to a few
thousand prefixes, so a small vectorised longest-prefix match is enough: every unique
address of the batch is compared with every prefix as 128-bit ranges (two uint64
halves), most specific prefix winning.  The big table (the BGP RIB) has its own
structure in rib.py.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..batch import U8, FlowBatch
from ..common.addresses import stored_int
from .base import AddressSet, addr_halves, spread_strings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

INBOUND, OUTBOUND, INTERNAL, TRANSIT = 1, 2, 3, 4
_MASK64 = (1 << 64) - 1
_CHUNK = 4096  # addresses compared at once: bounds the (chunk x prefixes) temporaries


def _range128(net: IPNetwork) -> tuple[int, int]:
    """The first and last address of `net` in the IPv4-mapped IPv6 space of batch columns."""
    return stored_int(net.network_address), stored_int(net.broadcast_address)


class PrefixMatcher:
    """Longest-prefix match of (m, 16) addresses against a small prefix list.

    ``match(addrs)`` returns, per address, the index of the most specific prefix
    containing it, or -1.
    """

    def __init__(self, prefixes: Sequence[IPNetwork]) -> None:
        # Most specific first, so the first hit per address is the longest match.
        order = sorted(range(len(prefixes)), key=lambda i: -_mapped_len(prefixes[i]))
        self._order = np.array(order, dtype=np.intp)
        ranges = [_range128(prefixes[i]) for i in order]
        self._lo_hi = np.array([lo >> 64 for lo, _ in ranges], np.uint64)
        self._lo_lo = np.array([lo & _MASK64 for lo, _ in ranges], np.uint64)
        self._hi_hi = np.array([hi >> 64 for _, hi in ranges], np.uint64)
        self._hi_lo = np.array([hi & _MASK64 for _, hi in ranges], np.uint64)

    def __len__(self) -> int:
        return len(self._order)

    def match(self, addrs: U8) -> npt.NDArray[np.intp]:
        out = np.full(len(addrs), -1, dtype=np.intp)
        if not len(self._order) or not len(addrs):
            return out
        hi_all, lo_all = addr_halves(addrs)
        for start in range(0, len(addrs), _CHUNK):
            hi = hi_all[start:start + _CHUNK, None]
            lo = lo_all[start:start + _CHUNK, None]
            inside = ((hi > self._lo_hi) | ((hi == self._lo_hi) & (lo >= self._lo_lo))) & \
                     ((hi < self._hi_hi) | ((hi == self._hi_hi) & (lo <= self._hi_lo)))
            hit = inside.any(axis=1)
            first = inside.argmax(axis=1)
            out[start:start + _CHUNK] = np.where(hit, self._order[first], -1)
        return out


def _mapped_len(net: IPNetwork) -> int:
    return net.prefixlen + 96 if net.version == 4 else net.prefixlen


@dataclass(frozen=True)
class NetworkInfo:
    """What the operator says about one of their prefixes (config ``networks``)."""

    name: str
    customer: str = ""


class NetworksStage:
    """Fills ``flow_direction`` from my_prefixes and the ``*_net_name``/``*_net_customer``
    columns from the configured networks.

    Direction follows what an AS operator means: inbound enters one of my prefixes from
    outside, outbound leaves them, internal stays inside, transit touches neither (a
    router carrying traffic for others).  Without my_prefixes it stays 0 (unknown),
    since guessing would mislabel every flow.
    """

    name = "networks"

    def __init__(self, my_prefixes: Sequence[IPNetwork], networks: Mapping[IPNetwork, NetworkInfo]) -> None:
        self._mine = PrefixMatcher(list(my_prefixes))
        self._nets = list(networks)
        self._info = [networks[n] for n in self._nets]
        self._net_matcher = PrefixMatcher(self._nets)

    def enrich(self, batch: FlowBatch, addrs: AddressSet) -> None:
        if len(self._mine):
            inside = self._mine.match(addrs.addrs) >= 0
            src_in, dst_in = inside[addrs.src], inside[addrs.dst]
            direction = np.full(batch.n, TRANSIT, dtype=np.uint8)
            direction[~src_in & dst_in] = INBOUND
            direction[src_in & ~dst_in] = OUTBOUND
            direction[src_in & dst_in] = INTERNAL
            batch["flow_direction"] = direction
        if len(self._net_matcher):
            hit = self._net_matcher.match(addrs.addrs)
            names = [self._info[i].name if i >= 0 else "" for i in hit.tolist()]
            customers = [self._info[i].customer if i >= 0 else "" for i in hit.tolist()]
            batch["src_net_name"] = spread_strings(names, addrs.src)
            batch["dst_net_name"] = spread_strings(names, addrs.dst)
            batch["src_net_customer"] = spread_strings(customers, addrs.src)
            batch["dst_net_customer"] = spread_strings(customers, addrs.dst)

    def inside(self, addrs: U8) -> npt.NDArray[np.bool_]:
        """True for addresses in my_prefixes (detection uses it to pick protected victims)."""
        result: npt.NDArray[np.bool_] = self._mine.match(addrs) >= 0
        return result

    def network_of(self, ip: str) -> NetworkInfo | None:
        addr = ipaddress.ip_address(ip)
        best: tuple[int, NetworkInfo] | None = None
        for net, info in zip(self._nets, self._info, strict=True):
            if addr.version == net.version and addr in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, info)
        return best[1] if best else None

    def close(self) -> None:
        return None
