"""Templates of NetFlow v9 and IPFIX, compiled once into columnar record decoders.

A template is compiled into a numpy structured dtype whose fields sit at the template's
offsets, so all records of every data set using it (across many datagrams) are turned
into column arrays with one ``np.frombuffer`` and one conversion per column.  Templates
with variable-length fields (RFC 7011 §7) are first normalised record by record into a
fixed layout (a Python loop, a few microseconds a record); they are rare in flow export
(interface names in options data, packet sections in packet reports), so that slower
path is acceptable.

Templates are scoped per exporter address and observation domain (RFC 7011 §8, RFC 3954
§5.1 source id): :class:`TemplateCache` keys them by (exporter, domain, template id).

Encapsulated packets.  Some exporters report a tunnelled packet with the header elements
repeated: sourceIPv4Address, destinationIPv4Address, protocolIdentifier (or the IPv6
forms 27/28) once for the outer header and once for the inner one.  A Cisco ASR 9000
(IOS XR) does: the pmacct capture in tests/data/pcaps defines template 340 as its usual
IPv6 record followed by 8, 12, 7, 11, 4, 6, 5 (an inner IPv4 header) and 341 with the
IPv6 elements twice.  RFC 7011 §8 fixes the order: occurrences of one element follow the
Metering Process's order of treatment, and its own example is an IPv4-in-IPv4 packet
whose first sourceIPv4Address is the outer header's and whose second is the inner
header's.  So when a template repeats any element of
:data:`~.fields.HEADER_TARGETS`, each of those columns takes its LAST occurrence in the
template (the innermost header: the traffic's own addresses, protocol and ports, which
must come from one header), and the FIRST source and destination address go to the
tunnel columns (:data:`~appliance.flowenricher.columns.TUNNEL_OF`).  Both address forms
count as one column, so a v4 outer and a v6 inner header (8, 12, 4, 27, 28, 4) give an
IPv6 flow in an IPv4 tunnel; ``ip_version`` is then taken from the kept address, not
from a single ipVersion element that could describe either header.  An element that
occurs once is used as it is.  A template with both address forms once each and no
repeated element is dual-stack or a tunnel of one version carrying the other: each
record decides (both set: the first is the tunnel's; one set: a plain flow of that
version).  Other templates are unchanged: where several elements fill one column, the
preferred one wins.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ..batch import addr_is_v4
from ..columns import TUNNEL_OF
from .fields import BY_IE, HEADER_TARGETS, PREFERENCE, REQUIRED_LENGTH, SECTION_LENGTH, Conv

VARIABLE = 65535
_STRING_WIDTH = 64  # variable-length strings are cut to this in the normalised layout
# Packet sections are cut to this: enough for Ethernet, tags, an MPLS stack with an
# Ethernet pseudowire, IPv6 with extension headers and the transport header.
SECTION_WIDTH = 256


@dataclass(frozen=True)
class FieldSpec:
    """One template field: element id, length (65535 = variable), enterprise number."""

    ie: int
    length: int
    enterprise: int = 0


@dataclass(frozen=True)
class Extract:
    """Where a used element sits in the (normalised) record and what it fills."""

    name: str  # the structured-dtype field name
    target: str
    conv: Conv
    ie: int
    length: int
    length_name: str = ""  # sections of variable length: the field holding each record's length


@dataclass
class CompiledTemplate:
    """A template ready to decode records: fixed-layout dtype plus the extracts.

    `variable` templates carry `wire_fields`, used to normalise each record into the
    fixed `dtype` layout before the columnar step: per wire field, its length (65535 for
    variable), and where its bytes go (offset, room) and where its length goes (offset),
    -1 for nowhere.
    """

    fields: tuple[FieldSpec, ...]
    scope_count: int
    dtype: np.dtype[np.void]
    extracts: tuple[Extract, ...]
    variable: bool
    min_record_length: int
    enterprise_fields: int
    unusable_fields: int
    wire_fields: tuple[tuple[int, int, int, int], ...] = field(default=())
    carries_section: bool = False  # records hold a copy of the packet's first bytes (fields.L2_SECTION)
    # Address columns given once as IPv4 and once as IPv6: which is the flow's and which the
    # tunnel's is decided per record (see _settle_tunnel); the first form sits in the tunnel column.
    undecided: tuple[str, ...] = ()

    @property
    def record_length(self) -> int:
        return self.dtype.itemsize

    @property
    def is_options(self) -> bool:
        return self.scope_count > 0

    def records(self, body: bytes | memoryview) -> tuple[bytes, int]:
        """Fixed-layout bytes for the records in one set body, and how many there are.

        Trailing bytes shorter than a record are padding (RFC 7011 §3.3.1).
        """
        if not self.variable:
            n = len(body) // self.record_length
            return bytes(body[: n * self.record_length]), n
        return self._normalise(bytes(body))

    def _normalise(self, body: bytes) -> tuple[bytes, int]:
        out = bytearray()
        off, n, end = 0, 0, len(body)
        width, min_length, wire = self.record_length, self.min_record_length, self.wire_fields
        while end - off >= min_length > 0:
            rec = bytearray(width)
            for length, dst, room, length_dst in wire:
                if length == VARIABLE:
                    if off >= end:
                        return bytes(out), n
                    length = body[off]
                    off += 1
                    if length == 255:  # RFC 7011 §7: a 3-byte length
                        if off + 2 > end:
                            return bytes(out), n
                        length = (body[off] << 8) | body[off + 1]
                        off += 2
                if off + length > end:
                    return bytes(out), n
                if dst >= 0:
                    kept = length if length < room else room
                    rec[dst : dst + kept] = body[off : off + kept]
                    if length_dst >= 0:
                        rec[length_dst : length_dst + 2] = kept.to_bytes(2, "little")
                off += length
            out += rec
            n += 1
        return bytes(out), n

    def decode(self, data: bytes, n: int) -> dict[str, npt.NDArray[Any]]:
        """Raw arrays per extract target (targets may repeat: first by preference wins)."""
        rec = np.frombuffer(data, dtype=self.dtype, count=n)
        out: dict[str, npt.NDArray[Any]] = {}
        for ex in self.extracts:
            if ex.target in out:
                continue
            out[ex.target] = convert(rec[ex.name], ex.conv, ex.length)
            if ex.conv is Conv.SECTION:
                out[SECTION_LENGTH[ex.target]] = (rec[ex.length_name] if ex.length_name else
                                                  np.full(n, min(ex.length, SECTION_WIDTH), np.uint16))
        if self.undecided:
            for column in self.undecided:
                _settle_tunnel(out, column)
            out["ip_version"] = np.where(addr_is_v4(out[self.undecided[0]]), 4, 6).astype(np.uint8)
        return out


def _settle_tunnel(out: dict[str, npt.NDArray[Any]], column: str) -> None:
    """Per record, for an address column a template gives in both forms (IPv4 first, say,
    then IPv6): both set is a tunnel (the first is its outer header, RFC 7011 §8 order);
    one set is a plain flow of that version, as dual-stack templates send, and the
    tunnel column stays ::."""
    outer, inner = out[TUNNEL_OF[column]], out[column]
    outer_set, inner_set = _is_set(outer), _is_set(inner)
    out[column] = np.where((outer_set & ~inner_set)[:, None], outer, inner)
    out[TUNNEL_OF[column]] = np.where((outer_set & inner_set)[:, None], outer, np.uint8(0))


def _is_set(addr: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """Addresses other than :: and 0.0.0.0 (IPv4-mapped), the values of an absent one."""
    unset = ~addr[:, 12:].any(axis=1) & (~addr[:, :12].any(axis=1) | addr_is_v4(addr))
    return ~unset


def convert(col: npt.NDArray[Any], conv: Conv, length: int) -> npt.NDArray[Any]:
    """One field's values (a strided view of the records) to a plain array."""
    if conv in (Conv.ADDR6,):
        return np.ascontiguousarray(col)  # (n, 16) uint8
    if conv is Conv.ADDR4:
        from ..batch import ipv4_to_addr

        return ipv4_to_addr(col.astype(np.uint32))
    if conv in (Conv.STRING, Conv.SECTION):
        return col  # (n, width) uint8: strings for the options handler, sections for the packet parser
    if conv is Conv.MAC or (conv is Conv.UINT and length not in (1, 2, 4, 8)):
        raw = col.astype(np.uint64)  # (n, length) bytes, big-endian
        acc = np.zeros(len(col), dtype=np.uint64)
        for i in range(raw.shape[1]):
            acc = (acc << np.uint64(8)) | raw[:, i]
        return acc
    return col.astype(col.dtype.newbyteorder("="))


def _field_format(conv: Conv, length: int) -> tuple[Any, int]:
    if conv in (Conv.ADDR6, Conv.MAC) or (conv is Conv.UINT and length not in (1, 2, 4, 8)):
        return (np.uint8, (length,)), length
    if conv is Conv.STRING:
        width = _STRING_WIDTH if length == VARIABLE else length
        return (np.uint8, (width,)), width
    if conv is Conv.SECTION:
        width = min(length, SECTION_WIDTH)  # VARIABLE is more than the width
        return (np.uint8, (width,)), width
    if conv in (Conv.NTP_US, Conv.NTP_NS, Conv.MILLISECONDS) or length == 8:
        return np.dtype(">u8"), 8
    return np.dtype(f">u{length}"), length


def compile_template(fields: tuple[FieldSpec, ...], scope_count: int = 0) -> CompiledTemplate:
    """Compile a template's field list (see the module docstring)."""
    variable = any(f.length == VARIABLE for f in fields)
    names: list[str] = []
    formats: list[Any] = []
    offsets: list[int] = []
    extracts: list[Extract] = []
    wire: list[tuple[int, int, int, int]] = []
    enterprise = unusable = 0
    wire_off = 0  # offset in the wire record (fixed templates)
    norm_off = 0  # offset in the normalised record (variable templates)
    for i, spec in enumerate(fields):
        element = BY_IE.get(spec.ie) if spec.enterprise == 0 else None
        if spec.enterprise:
            enterprise += 1
        usable = element is not None and (
            element.conv is Conv.STRING
            or (element.conv is Conv.SECTION and spec.length > 0)
            or spec.length in REQUIRED_LENGTH.get(element.conv, ())
        )
        if element is not None and not usable:
            unusable += 1
        dst = room = length_dst = -1
        if usable and element is not None:
            name = f"f{i}"
            fmt, room = _field_format(element.conv, spec.length)
            dst = norm_off if variable else wire_off
            names.append(name)
            formats.append(fmt)
            offsets.append(dst)
            length_name = ""
            if variable:
                norm_off += room
                if element.conv is Conv.SECTION and spec.length == VARIABLE:
                    # Each record's copy has its own length: it is kept beside the bytes.
                    length_name, length_dst = f"{name}_length", norm_off
                    names.append(length_name)
                    formats.append(np.dtype("<u2"))
                    offsets.append(length_dst)
                    norm_off += 2
            extracts.append(Extract(name, element.target, element.conv, spec.ie, spec.length, length_name))
        wire.append((spec.length, dst, room, length_dst))
        if spec.length != VARIABLE:
            wire_off += spec.length
    itemsize = norm_off if variable else wire_off
    extracts, undecided = _innermost_header(extracts)
    extracts.sort(key=lambda e: PREFERENCE.get(e.ie, 1 << 30))
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets,
                      "itemsize": max(itemsize, 1)})
    min_len = sum(1 if f.length == VARIABLE else f.length for f in fields)
    return CompiledTemplate(
        fields=fields,
        scope_count=scope_count,
        dtype=dtype,
        extracts=tuple(extracts),
        variable=variable,
        min_record_length=min_len,
        enterprise_fields=enterprise,
        unusable_fields=unusable,
        wire_fields=tuple(wire) if variable else (),
        carries_section=any(ex.conv is Conv.SECTION for ex in extracts),
        undecided=undecided,
    )


def _innermost_header(extracts: list[Extract]) -> tuple[list[Extract], tuple[str, ...]]:
    """The extracts of an encapsulated template reduced to one header plus the tunnel's
    addresses (see the module docstring), and the address columns left to decide per
    record (:func:`_two_forms`); any other template's extracts unchanged.

    `extracts` are in template order.  Decided once per template, so it costs nothing
    per record: the columnar step then reads exactly one field per header column.
    """
    header = [ex.ie for ex in extracts if ex.target in HEADER_TARGETS]
    if len(set(header)) == len(header):
        return _two_forms(extracts)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, ex in enumerate(extracts):
        if ex.target in HEADER_TARGETS:
            first.setdefault(ex.target, i)
            last[ex.target] = i
    has_address = "src_addr" in last or "dst_addr" in last
    kept: list[Extract] = []
    for i, ex in enumerate(extracts):
        if ex.target not in HEADER_TARGETS:
            kept.append(ex)
        elif ex.target == "ip_version" and has_address:
            continue  # which header it describes is unknown: the kept address says it
        elif last[ex.target] == i:
            kept.append(ex)
        elif first[ex.target] == i and ex.target in TUNNEL_OF:
            kept.append(replace(ex, target=TUNNEL_OF[ex.target]))
    return kept, ()


def _two_forms(extracts: list[Extract]) -> tuple[list[Extract], tuple[str, ...]]:
    """A template with no repeated element that gives an address column in both forms
    (IPv4 and IPv6, once each) is either dual-stack (one form set per record) or a tunnel
    of one version carrying the other (both set): only the records tell.  The first form
    goes to the tunnel column and the record decides (CompiledTemplate.undecided), with
    ``ip_version`` from the address kept."""
    undecided: list[str] = []
    kept = list(extracts)
    for column, tunnel in TUNNEL_OF.items():
        forms = [i for i, ex in enumerate(kept) if ex.target == column]
        if len(forms) == 2 and kept[forms[0]].conv is not kept[forms[1]].conv:
            kept[forms[0]] = replace(kept[forms[0]], target=tunnel)
            undecided.append(column)
    if undecided:
        kept = [ex for ex in kept if ex.target != "ip_version"]
    return kept, tuple(undecided)


TemplateKey = tuple[str, int, int]  # exporter, observation domain, template id


# Default bound of live templates: a thousand exporters with 64 templates each (real
# exporters send 2 to 30) fit; at about 200 bytes a live entry (compiled templates are
# shared) the cache stays under 15 MB however many ids a hostile sender invents.
MAX_TEMPLATES = 65_536


class TemplateCache:
    """Live templates per (exporter, domain, id); identical definitions share one compile.

    At most `max_templates` live entries: defining one more evicts the least recently
    defined, so a sender cycling template ids or spoofing exporter addresses cannot grow
    memory.  Exporters resend their templates periodically (UDP gives no other way,
    RFC 7011 §8.4), so a template in use is never the least recently defined for long;
    reads do not refresh, which keeps the per-data-set lookup a plain dict get.
    `evicted` counts the evictions.
    """

    def __init__(self, max_templates: int = MAX_TEMPLATES) -> None:
        if max_templates < 1:
            raise ValueError(f"max_templates must be at least 1, not {max_templates}")
        self.max_templates = max_templates
        self.evicted = 0
        self._live: OrderedDict[TemplateKey, CompiledTemplate] = OrderedDict()
        self._by_domain: dict[tuple[str, int], set[int]] = {}  # template ids per exporter+domain
        self._compiled: dict[tuple[tuple[FieldSpec, ...], int], CompiledTemplate] = {}

    def __len__(self) -> int:
        return len(self._live)

    def get(self, key: TemplateKey) -> CompiledTemplate | None:
        return self._live.get(key)

    def define(self, key: TemplateKey, fields: tuple[FieldSpec, ...], scope_count: int = 0
               ) -> tuple[CompiledTemplate, bool]:
        """Install a template; returns it and whether it is new or changed."""
        ck = (fields, scope_count)
        tmpl = self._compiled.get(ck)
        if tmpl is None:
            tmpl = compile_template(fields, scope_count)
            if len(self._compiled) > 4096:  # a misbehaving exporter cycling definitions
                self._compiled.clear()
            self._compiled[ck] = tmpl
        previous = self._live.get(key)
        self._live[key] = tmpl
        self._live.move_to_end(key)
        self._by_domain.setdefault(key[:2], set()).add(key[2])
        while len(self._live) > self.max_templates:
            old, _ = self._live.popitem(last=False)
            self._unindex(old)
            self.evicted += 1
        return tmpl, previous is not tmpl

    def _unindex(self, key: TemplateKey) -> None:
        ids = self._by_domain.get(key[:2])
        if ids is not None:
            ids.discard(key[2])
            if not ids:
                del self._by_domain[key[:2]]

    def withdraw(self, key: TemplateKey) -> bool:
        if self._live.pop(key, None) is None:
            return False
        self._unindex(key)
        return True

    def withdraw_domain(self, exporter: str, domain: int, options: bool | None = None) -> int:
        """Withdraw all templates (or all options / data templates) of one domain."""
        doomed = [(exporter, domain, tid) for tid in self._by_domain.get((exporter, domain), ())
                  if options is None or self._live[(exporter, domain, tid)].is_options == options]
        for k in doomed:
            self.withdraw(k)
        return len(doomed)

    def keys(self) -> list[TemplateKey]:
        return list(self._live)

    def items(self) -> list[tuple[TemplateKey, CompiledTemplate]]:
        return list(self._live.items())
