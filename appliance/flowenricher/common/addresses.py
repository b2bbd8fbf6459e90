"""The one definition of how flowenricher stores an IP address, and how it reads one back.

Every address column holds 16 bytes (ClickHouse ``IPv6``): an IPv6 address as itself and
an IPv4 address in its IPv4-mapped form ``::ffff:a.b.c.d`` (RFC 4291 §2.5.5.2), so one
column and one comparison serve both families.  The same convention meets the outside at
several edges, each of which used to spell it out on its own:

* Python values going into a column or a SQL statement (:func:`stored_bytes`,
  :func:`stored_text`, :func:`stored_int`);
* 16-byte rows and (n, 16) numpy arrays coming out of decoders and going into
  enrichment (:data:`V4_MAPPED`, :func:`v4_rows`, :func:`rows_are_v4`, :func:`row_text`);
* text from a dual-stack socket or a column, where an IPv4 peer appears as
  ``::ffff:192.0.2.1`` in any of its spellings (:func:`plain_address`, :func:`plain_text`);
* networks written in the mapped form (:func:`unmapped_network`);
* the SQL expression that shows a column the way :func:`row_text` does
  (:func:`display_sql`).

An IPv4-mapped address and the IPv4 address it stands for are one host here: reading
always gives the plain IPv4 form back, writing always gives the mapped one.
"""

from __future__ import annotations

import functools
import ipaddress
import re

import numpy as np
import numpy.typing as npt

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
U8 = npt.NDArray[np.uint8]

V4_MAPPED = bytes(10) + b"\xff\xff"
"""The 12 bytes in front of an IPv4 address in the 16-byte form (::ffff:0:0/96)."""

V4_MAPPED_ROW: U8 = np.frombuffer(V4_MAPPED, dtype=np.uint8)
""":data:`V4_MAPPED` as a (12,) uint8 array, for filling and comparing (n, 16) rows."""
V4_MAPPED_ROW.flags.writeable = False

_MAPPED_TEXT = "::ffff:"  # how Python and ClickHouse both spell the prefix of a mapped address
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # 0-255 without leading zeros, as ipaddress reads
_KERNEL_MAPPED = re.compile(rf"::ffff:({_OCTET}(?:\.{_OCTET}){{3}})")  # how inet_ntop writes a mapped address


def _address(value: IPAddress | str) -> IPAddress:
    """`value` as an address object; text is stripped (ValueError when it is no address)."""
    if isinstance(value, str):
        return ipaddress.ip_address(value.strip())
    return value


def stored_bytes(address: IPAddress | str) -> bytes:
    """The 16 bytes an address column holds for `address` (IPv4 mapped).

    Raises ValueError for text that is not an IPv4 or IPv6 address.
    """
    ip = _address(address)
    return V4_MAPPED + ip.packed if ip.version == 4 else ip.packed


def stored_int(address: IPAddress | str) -> int:
    """The 128-bit number of :func:`stored_bytes` (range comparisons over both families)."""
    return int.from_bytes(stored_bytes(address), "big")


def stored_text(address: IPAddress | str | bytes) -> str:
    """`address` as the text of an IPv6 column value: ``::ffff:a.b.c.d`` for IPv4 (given
    plain, mapped in any spelling, or as 16 bytes), else IPv6 text.

    Raises ValueError for text that is not an IPv4 or IPv6 address.
    """
    ip = plain_address(address)
    return f"{_MAPPED_TEXT}{ip}" if ip.version == 4 else str(ip)


def plain_address(address: IPAddress | str | bytes) -> IPAddress:
    """The address `address` stands for: an IPv4-mapped IPv6 address (as text in any
    spelling, an object or 16 bytes) is its IPv4 address, anything else itself.

    Raises ValueError for text that is not an address or bytes not 4 or 16 long.
    """
    ip = ipaddress.ip_address(address) if isinstance(address, bytes) else _address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def plain_text(address: str) -> str:
    """Text from a dual-stack socket or a column with an IPv4 peer shown dotted:
    ``::ffff:192.0.2.1`` -> ``192.0.2.1``, also ``::FFFF:...``, ``0:0:0:0:0:ffff:...``
    and the hex form ``::ffff:c000:201``.  Any other text, an address or not, comes back
    unchanged.

    The collector calls this for every datagram, so what a socket gives costs no parse:
    the kernel's spelling of a mapped address is checked by one regular expression, and
    text that cannot be mapped (no colon; or neither a dot nor an ``ffff`` group, which
    every spelling of a mapped address has) is returned at once.  Other spellings are
    parsed, and the answers cached (bounded).
    """
    kernel = _KERNEL_MAPPED.fullmatch(address)
    if kernel is not None:
        return kernel.group(1)
    if ":" not in address or ("." not in address and "ffff" not in address.lower()):
        return address
    return _plain_text_of_v6(address)


@functools.lru_cache(maxsize=4096)
def _plain_text_of_v6(address: str) -> str:
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    mapped = ip.ipv4_mapped
    return address if mapped is None else str(mapped)


def unmapped_network(network: IPNetwork) -> ipaddress.IPv4Network | None:
    """The IPv4 network an IPv4-mapped IPv6 network (inside ::ffff:0:0/96) stands for,
    None for any other network."""
    if network.version != 6 or network.prefixlen < 96:
        return None
    mapped = ipaddress.IPv6Address(network.network_address).ipv4_mapped
    if mapped is None:
        return None
    return ipaddress.IPv4Network((mapped, network.prefixlen - 96))


def row_text(row: U8 | bytes) -> str:
    """One 16-byte address (a (16,) row or bytes) as text: dotted quad for IPv4-mapped."""
    raw = bytes(row)
    if raw[:12] == V4_MAPPED:
        return str(ipaddress.IPv4Address(raw[12:]))
    return str(ipaddress.IPv6Address(raw))


def v4_rows(values: npt.NDArray[np.uint32]) -> U8:
    """IPv4 addresses (host-order uint32) as (n, 16) IPv4-mapped rows."""
    out = np.empty((len(values), 16), dtype=np.uint8)
    out[:, :12] = V4_MAPPED_ROW
    out[:, 12:] = values.astype(">u4").view(np.uint8).reshape(-1, 4)
    return out


def rows_are_v4(rows: U8) -> npt.NDArray[np.bool_]:
    """Which of the (n, 16) rows are IPv4 (mapped)."""
    result: npt.NDArray[np.bool_] = np.all(rows[:, :12] == V4_MAPPED_ROW, axis=1)
    return result


def display_sql(column: str) -> str:
    """A ClickHouse expression rendering the IPv6 column `column` as text, IPv4 dotted.

    ClickHouse writes a mapped address as ``::ffff:a.b.c.d`` (as Python does); dropping
    that prefix gives the text :func:`plain_text` and :func:`row_text` give.  (Other
    addresses are IPv6 text; for the deprecated IPv4-compatible ``::a.b.c.d`` ClickHouse
    keeps the dotted tail where Python writes hex groups: the same address either way.)
    `column` is spliced as is: pass a column name or an expression, never client text.
    """
    return f"replaceRegexpOne(IPv6NumToString({column}), '^{_MAPPED_TEXT}', '')"
