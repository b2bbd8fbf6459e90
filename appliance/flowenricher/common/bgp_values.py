"""The BGP values of a blackhole route: its prefix, its next hop and its communities.

Every edge where such a value enters parses it here, once: the config and rules
validation (the ``bgp-community`` and next-hop formats of config.py), the API models,
the blackhole manager, the GoBGP announcer and the tests' GoBGP double.  So a value
that cannot be announced is refused where it is written, with the same words
everywhere, instead of being accepted and then refused by GoBGP or by the router.

Why the checks are here and not left to GoBGP: gobgpd 3.10 takes almost anything
(measured with ``AddPath``: a /33, host bits set, an IPv6 prefix with an IPv4 next hop,
a multicast next hop), and the router then rejects the route or, for a malformed
prefix, resets the BGP session (BIRD: "invalid network field").

Communities (``COMMUNITY_SYNTAX``):

* standard, RFC 1997: ``ASN:VALUE``, both parts 0-65535;
* large, RFC 8092: ``a:b:c``, each part 0-4294967295;
* a two-part community whose first part is a 32-bit AS number (above 65535), such as
  the original flowenricher's ``216285:666``, cannot be a standard community: it is
  announced as the large community ``216285:666:0`` (the usual mapping of
  ``ASN:VALUE`` for 4-byte ASNs; docs/blackholing.md);
* the well-known names ``blackhole`` (65535:666, RFC 7999), ``no-export`` (65535:65281)
  and ``no-advertise`` (65535:65282) of RFC 1997.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

U16 = 0xFFFF
U32 = 0xFFFFFFFF

WELL_KNOWN: dict[str, tuple[int, int]] = {
    "blackhole": (65535, 666),  # RFC 7999 BLACKHOLE
    "no-export": (65535, 65281),  # RFC 1997 NO_EXPORT (0xFFFFFF01)
    "no-advertise": (65535, 65282),  # RFC 1997 NO_ADVERTISE (0xFFFFFF02)
}

COMMUNITY_SYNTAX = ("ASN:VALUE (RFC 1997, e.g. 65535:666), a large community a:b:c (RFC 8092) or one of "
                    + ", ".join(WELL_KNOWN))

DISCARD_NEXT_HOP_V4 = "192.0.2.1"
"""Default IPv4 next hop of blackhole routes (TEST-NET-1, RFC 5737: never a real host)."""
DISCARD_NEXT_HOP_V6 = "100::1"
"""Default IPv6 next hop of blackhole routes, from the discard-only prefix 100::/64 (RFC 6666)."""


class BgpValueError(ValueError):
    """A prefix, next hop or community that cannot be announced.

    `value` is the text as given, `reason` what is wrong with it (the words every edge
    shows: the config validator after the field's path, the API in its 422 detail).
    """

    def __init__(self, what: str, value: object, reason: str) -> None:
        super().__init__(f"{value!r} is not {what}: {reason}")
        self.value = value
        self.reason = reason


# --------------------------------------------------------------------------- communities


@dataclass(frozen=True, slots=True)
class Community:
    """A parsed community: `text` as the operator wrote it (what the API echoes back),
    `parts` as announced: two (standard, RFC 1997) or three (large, RFC 8092)."""

    text: str
    parts: tuple[int, ...]

    @property
    def large(self) -> bool:
        return len(self.parts) == 3

    @property
    def value(self) -> int:
        """The 32-bit value of a standard community (``asn << 16 | value``)."""
        if self.large:
            raise ValueError(f"{self.text!r} is a large community, it has no 32-bit value")
        return self.parts[0] << 16 | self.parts[1]

    def __str__(self) -> str:
        """The community as announced: ``a:b`` or ``a:b:c``."""
        return ":".join(str(part) for part in self.parts)


def _number(part: str) -> int | None:
    return int(part) if part.isascii() and part.isdigit() and len(part) <= 10 else None


def parse_community(text: object) -> Community:
    """The community `text` (see the module docstring); BgpValueError says why not."""
    what = "a BGP community"
    if not isinstance(text, str):
        raise BgpValueError(what, text, f"a community is text, {COMMUNITY_SYNTAX}")
    name = text.strip().lower()
    if name in WELL_KNOWN:
        return Community(text, WELL_KNOWN[name])
    pieces = text.strip().split(":")
    numbers = [_number(p) for p in pieces]
    if len(pieces) not in (2, 3) or any(n is None for n in numbers):
        raise BgpValueError(what, text, f"write {COMMUNITY_SYNTAX}")
    parts = tuple(n for n in numbers if n is not None)
    if len(parts) == 3:
        if max(parts) > U32:
            raise BgpValueError(what, text, "each part of a large community is 0-4294967295 (RFC 8092)")
        return Community(text, parts)
    asn, value = parts
    if value > U16:
        raise BgpValueError(what, text, "the value after the AS number is 0-65535 (RFC 1997); "
                                        "write a large community a:b:c for more")
    if asn > U32:
        raise BgpValueError(what, text, "an AS number is 0-4294967295")
    if asn > U16:  # a 4-byte ASN: no room in RFC 1997's 16 bits
        return Community(text, (asn, value, 0))
    return Community(text, parts)


def parse_communities(items: Iterable[object]) -> tuple[Community, ...]:
    """Each of `items` parsed; the first bad one raises."""
    return tuple(parse_community(item) for item in items)


def standard_community(text: str) -> int:
    """`text` as the 32-bit value of a standard community (what enrichment stores and
    GoBGP's CommunitiesAttribute carries); a large one is refused."""
    community = parse_community(text)
    if community.large:
        raise BgpValueError("a standard BGP community", text,
                            "it is a large community (RFC 8092); only ASN:VALUE with both parts 0-65535 fits here")
    return community.value


def community_text(value: int) -> str:
    """A standard community's 32-bit value as ``ASN:VALUE``."""
    return f"{value >> 16}:{value & U16}"


# --------------------------------------------------------------------------- prefixes


def parse_prefix(text: object) -> IPNetwork:
    """A blackhole prefix: ``a.b.c.d/len`` or ``x::/len`` with its host bits clear, or a
    bare address (its host route)."""
    what = "an IP prefix"
    if not isinstance(text, str):
        raise BgpValueError(what, text, "a prefix is text such as 203.0.113.9/32 or 2001:db8::9/128")
    value = text.strip()
    if "/" not in value:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise BgpValueError(what, text, "neither an address nor address/length") from None
        return ipaddress.ip_network(f"{address}/{address.max_prefixlen}")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as err:
        try:
            wider = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise BgpValueError(what, text, str(err)) from None
        raise BgpValueError(what, text, f"host bits are set (did you mean {wider}?)") from None


# --------------------------------------------------------------------------- next hops


def parse_next_hop(text: object, family: int | None = None) -> IPAddress:
    """A next hop of a blackhole route, of `family` (4, 6) when given.

    Refused: the unspecified, loopback, multicast and IPv6 link-local addresses, which a
    router cannot resolve to a discard route (gobgpd takes them; the route is useless).
    """
    what = "a BGP next hop" if family is None else f"an IPv{family} BGP next hop"
    if not isinstance(text, str):
        raise BgpValueError(what, text, "a next hop is an IP address as text")
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise BgpValueError(what, text, "not an IP address") from None
    if family is not None and address.version != family:
        raise BgpValueError(what, text, f"it is an IPv{address.version} address")
    for bad, name in ((address.is_unspecified, "the unspecified address"), (address.is_loopback, "a loopback address"),
                      (address.is_multicast, "a multicast address"),
                      (address.version == 6 and address.is_link_local, "a link-local address")):
        if bad:
            raise BgpValueError(what, text, f"{name} cannot be a next hop")
    return address


def next_hop_for(prefix: IPNetwork, text: object) -> IPAddress:
    """The next hop `text` for a route to `prefix`: of the prefix's family (RFC 4760
    allows others, but routers refuse them: BIRD says "mismatched address family")."""
    try:
        return parse_next_hop(text, prefix.version)
    except BgpValueError as err:
        raise BgpValueError(f"a next hop for {prefix}", text, err.reason) from None


@dataclass(frozen=True, slots=True)
class BlackholeRoute:
    """One blackhole route, every value parsed: what the announcer hands GoBGP."""

    prefix: IPNetwork
    next_hop: IPAddress
    communities: tuple[Community, ...]

    @classmethod
    def parse(cls, prefix: object, next_hop: object, communities: Iterable[object]) -> BlackholeRoute:
        net = parse_prefix(prefix)
        return cls(net, next_hop_for(net, next_hop), parse_communities(communities))
