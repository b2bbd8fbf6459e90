"""What a BGP route is inside flowenricher: its prefix key and the attributes enrichment uses.

Shared by the GoBGP client (which decodes them from the gRPC API), the RIB (which stores
them in columns) and the JSON prefix file, so all three agree on two conventions:

* a prefix is an 18-byte *key*: family (4 or 6), the network as 16 bytes in the flow
  columns' address form (IPv4 as ``::ffff:a.b.c.d``), the prefix length in its own family.
  Byte order is numeric order, so sorted keys list a prefix before the prefixes inside it;
* the AS path is the flat list of AS numbers a flow's packets cross, nearest first: the
  *neighbour AS* is its first element and the *origin AS* its last (pmacct's meaning of
  ``peer_dst_as`` and ``dst_as``).  Confederation segments (RFC 5065) are internal to the
  neighbour's confederation and left out, as they do not count in the path length.  An
  AS_SET (aggregation, RFC 4271 §5.1.2) has no order, so it only names the origin when it
  has a single member; otherwise the origin is unknown (0).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..common.addresses import V4_MAPPED as V4_MAPPED
from ..common.bgp_values import community_text as community_text
from ..common.bgp_values import standard_community

V4 = 4
V6 = 6
KEY_LEN = 18

AS_SET, AS_SEQUENCE, AS_CONFED_SEQUENCE, AS_CONFED_SET = 1, 2, 3, 4
"""AS path segment types (RFC 4271 §4.3, RFC 5065 §3)."""

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

parse_community = standard_community
"""A standard community's text as its 32-bit value, how enrichment stores communities
(the one definition of the syntax is common/bgp_values.py)."""


@dataclass(frozen=True, slots=True)
class RouteAttributes:
    """The attributes of one best path that enrichment stores (RFC 4271 names).

    `next_hop` is 16 bytes in the address form of the flow columns (zeros: none);
    `local_pref` is 0 when the path does not carry LOCAL_PREF (eBGP-learned);
    `communities` are RFC 1997 standard communities as ``asn << 16 | value``.
    """

    as_path: tuple[int, ...] = ()
    origin_as: int = 0
    neighbor_as: int = 0
    next_hop: bytes = bytes(16)
    local_pref: int = 0
    communities: tuple[int, ...] = ()


RouteParts = tuple[tuple[int, ...], int, int, bytes, int, tuple[int, ...]]
"""A route's attributes as a plain tuple, in :class:`RouteAttributes`' field order (AS
path, origin AS, neighbour AS, next hop, LOCAL_PREF, communities): what a table listing
carries per prefix into the RIB's builder.  A frozen dataclass per prefix of a full table
would cost about a second of the load for an object that is dropped at once."""


def route_parts(route: RouteAttributes) -> RouteParts:
    """`route` as :data:`RouteParts`."""
    return route.as_path, route.origin_as, route.neighbor_as, route.next_hop, route.local_pref, route.communities


def flatten_as_path(segments: Iterable[tuple[int, Sequence[int]]]) -> tuple[tuple[int, ...], int, int]:
    """(path, origin AS, neighbour AS) from AS path segments given as (type, numbers).

    See the module docstring for the rules; an empty path (a route of our own AS) has
    neither origin nor neighbour (0, 0).
    """
    path: list[int] = []
    last_type = 0
    last_numbers: Sequence[int] = ()
    for seg_type, numbers in segments:
        if seg_type in (AS_CONFED_SEQUENCE, AS_CONFED_SET) or not numbers:
            continue
        path.extend(numbers)
        last_type, last_numbers = seg_type, numbers
    if not path:
        return (), 0, 0
    origin = 0 if last_type == AS_SET and len(set(last_numbers)) > 1 else path[-1]
    return tuple(path), origin, path[0]


def prefix_key(network: bytes, length: int) -> bytes:
    """The key of a prefix from its packed network (4 or 16 bytes) and length.

    Raises ValueError for a length outside the family or host bits set past it.
    """
    if len(network) == 4:
        family, bits, addr = V4, 32, V4_MAPPED + network
    elif len(network) == 16:
        family, bits, addr = V6, 128, network
    else:
        raise ValueError(f"a network is 4 or 16 bytes, not {len(network)}")
    if not 0 <= length <= bits:
        raise ValueError(f"prefix length {length} is outside 0-{bits}")
    value = int.from_bytes(network, "big")
    if value & ((1 << (bits - length)) - 1):
        raise ValueError(f"host bits set past /{length}")
    return bytes((family,)) + addr + bytes((length,))


def key_from_text(prefix: str) -> bytes:
    """The key of ``"a.b.c.d/len"`` or ``"x::/len"`` (strict: no host bits)."""
    net = ipaddress.ip_network(prefix, strict=True)
    return prefix_key(net.network_address.packed, net.prefixlen)


def key_to_network(key: bytes) -> IPNetwork:
    """The prefix a key stands for."""
    if len(key) != KEY_LEN:
        raise ValueError(f"a prefix key is {KEY_LEN} bytes, not {len(key)}")
    if key[0] == V4:
        return ipaddress.IPv4Network((key[13:17], key[17]))
    return ipaddress.IPv6Network((key[1:17], key[17]))


def address_bytes(text: str) -> bytes:
    """An address as the 16 bytes of the flow columns (IPv4 mapped); empty text: zeros."""
    if not text:
        return bytes(16)
    try:
        return V4_MAPPED + socket.inet_pton(socket.AF_INET, text)
    except OSError:
        return socket.inet_pton(socket.AF_INET6, text)


def address_text(raw: bytes) -> str:
    """The inverse of :func:`address_bytes` ("" for zeros)."""
    if raw == bytes(16):
        return ""
    if raw[:12] == V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)
