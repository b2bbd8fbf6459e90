"""NetFlow v5, NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) decoding, columnar.

One :meth:`NetFlowDecoder.decode` call takes many datagrams.  A first pass walks each
datagram's header and set headers only (a few struct calls per datagram), handles
templates and options data at once (they are few and change state), and files every
data set under its compiled template.  A second pass turns all sets of one template
into column arrays in one go (see :mod:`.templates`).  No Python object is made per
flow record.

Exporter state kept here, per exporter address and observation domain: templates,
sampling rates from options data (keyed by sampler id, 0 for "any"), interface names
from options data, the system init time IPFIX exporters such as RouterOS announce for
uptime-relative timestamps, and sequence numbers (to count what was lost on the way).
All of it is bounded, and can be saved and loaded (:meth:`NetFlowDecoder.export_state`).

A template that repeats header elements (a tunnel's outer and inner header) yields the
inner header's addresses, protocol and ports together and the outer addresses in the
tunnel columns, never a mix: RFC 7011 §8 puts the outer header first (see :mod:`.templates`).

Nothing a datagram carries may raise out of :meth:`NetFlowDecoder.decode`: a value too
wide for its column is clamped and counted, an absurd sampling rate or boot time is
ignored and counted, and any exception at all is contained to its datagram (first pass)
or to its exporter and domain (second pass), counted as ``decode_error``, and the state
of that exporter and domain is forgotten so that the same input cannot fire again.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..batch import DictColumn, FlowBatch, str_to_addr
from ..columns import BY_NAME, Kind
from ..errors import FlowEnricherError
from . import fields as F
from . import stats as S
from .bounded import BoundedDict
from .packet_headers import LINK_ETHERNET, LINK_IP, read_sections
from .sequence import MAX_GAP_DATAGRAMS, MAX_GAP_RECORDS, RESET, SequenceTracker
from .stats import DecodeStats
from .templates import (
    MAX_TEMPLATES,
    VARIABLE,
    CompiledTemplate,
    FieldSpec,
    TemplateCache,
    TemplateKey,
    compile_template,
)

PROTOCOLS = ("netflow5", "netflow9", "ipfix")
_NF5, _NF9, _IPFIX = 0, 1, 2
V9_SCOPE = 0xFFFFFFFF  # pseudo enterprise number marking a NetFlow v9 scope field
_V9_SCOPE_INTERFACE = 2  # RFC 3954 §6.1 scope field type "Interface"
NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01

_V5_HEADER = struct.Struct("!HHIIIIBBH")
_V9_HEADER = struct.Struct("!HHIIII")
_IPFIX_HEADER = struct.Struct("!HHIII")
_SET = struct.Struct("!HH")

# A NetFlow v5 record, expressed as the template it is: the same compiled path serves it.
_V5_TEMPLATE = compile_template(tuple(FieldSpec(ie, ln) for ie, ln in (
    (8, 4), (12, 4), (15, 4), (10, 2), (14, 2), (2, 4), (1, 4), (22, 4), (21, 4), (7, 2), (11, 2),
    (210, 1), (6, 1), (4, 1), (5, 1), (16, 2), (17, 2), (9, 1), (13, 1), (210, 2))))


@dataclass(frozen=True)
class ExporterQuirks:
    """Per-exporter overrides from the config (`collectors.exporters`)."""

    sampling_rate: int | None = None  # forces this rate
    little_endian_sampling: bool = False  # RouterOS v6 sends the sampling interval LE


@dataclass
class _SetContext:
    exporter: str
    domain: int
    protocol: int
    export_secs: int
    uptime_ms: int  # -1 where the header has none (IPFIX)
    received_at: int
    default_rate: int  # sampling known when the set arrived (0 = unknown)


@dataclass
class _Group:
    """All data sets of one compiled template seen in this decode call."""

    template: CompiledTemplate
    chunks: list[bytes] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    contexts: list[_SetContext] = field(default_factory=list)


@dataclass
class _Held:
    body: bytes
    context: _SetContext
    since: float


_PLAUSIBLE_INIT_MS = (631_152_000_000, 4_102_444_800_000)  # 1990-01-01 .. 2100-01-01, in ms
_UINT64_MAX = (1 << 64) - 1
_WRAP = 1 << 32  # sysUpTime and flow*SysUpTime are 32-bit milliseconds: they wrap every 49.7 days
_TIME_BOUND = 1 << 40  # seconds: times beyond are nonsense, kept small enough for int64 arithmetic

# A sampling rate above this is taken as corrupt and ignored (counted): sFlow agents on
# the fastest ports sample 1 in 65,536 or 131,072; 2**24 leaves room above that, and
# keeps packets and bytes times the rate far from 64-bit saturation for real counters.
MAX_SAMPLING_RATE = 1 << 24
# Flow times farther than this from the reception time are replaced by it (counted
# `time_implausible`).  Two hours: more than the longest active timeout exporters offer
# (Cisco's maximum is 60 minutes) plus our own holding of early data sets, yet it catches
# every clock error we know of: uptime wraps (49.7 days), clocks left in 1970, wrong dates.
MAX_CLOCK_SKEW_S = 7200
HOLD_MAX_SETS = 10_000
"""Data sets held for a late template, at most, over all exporters (collectors.template_hold)."""
HOLD_MAX_AGE_S = 60.0
"""Seconds a held data set waits for its template."""
# Bounds of the per-exporter state other than templates (sampling rates, boot times,
# sequence streams: entries per exporter and domain; interface names: names in all).
MAX_STATE = 65_536
MAX_INTERFACE_NAMES = 262_144  # about 40 MB at most; large routers have a few thousand
MAX_SAMPLERS = 256  # sampler ids per exporter and domain (real exporters use a handful)
STATE_VERSION = 1


class DecoderStateError(FlowEnricherError):
    """A saved decoder state (templates file) is refused: `path` says where it is wrong."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"decoder state, {path}: {problem}")
        self.path = path
        self.problem = problem


class NetFlowDecoder:
    """Decodes NetFlow v5/v9 and IPFIX datagrams into FlowBatches, keeping exporter state."""

    def __init__(self, stats: DecodeStats, quirks: Mapping[str, ExporterQuirks] | None = None,
                 hold_max_sets: int = HOLD_MAX_SETS, hold_max_age_s: float = HOLD_MAX_AGE_S, *,
                 max_templates: int = MAX_TEMPLATES, max_clock_skew_s: float = MAX_CLOCK_SKEW_S,
                 max_state: int = MAX_STATE, max_interface_names: int = MAX_INTERFACE_NAMES) -> None:
        if max_clock_skew_s < 0:
            raise ValueError(f"max_clock_skew_s must be 0 (off) or more, not {max_clock_skew_s}")
        self.stats = stats
        self.quirks = dict(quirks or {})
        self.max_state = max_state
        self.templates = TemplateCache(max_templates)
        self.max_clock_skew_s = max_clock_skew_s
        # (exporter, domain) -> {sampler id: rate}; 0 is the exporter's rate for any sampler.
        self.sampling: BoundedDict[tuple[str, int], dict[int, int]] = BoundedDict(max_state)
        # (exporter, domain) -> {ifIndex: name}; at most max_interface_names names in all
        # (so as many domains at most), the domain named first forgotten first.
        self.interface_names: dict[tuple[str, int], dict[int, str]] = {}
        self.max_interface_names = max_interface_names
        self._names_total = 0
        self._named_exporters: dict[str, int] = {}  # domains with names, per exporter
        self.system_init_ms: BoundedDict[tuple[str, int], int] = BoundedDict(max_state)
        self.sequences = {_NF5: SequenceTracker(MAX_GAP_RECORDS, max_state),
                          _NF9: SequenceTracker(MAX_GAP_DATAGRAMS, max_state),
                          _IPFIX: SequenceTracker(MAX_GAP_RECORDS, max_state)}
        self._v9_sequences = self.sequences[_NF9]
        self._ipfix_sequences = self.sequences[_IPFIX]
        self.hold_max_sets = hold_max_sets
        self.hold_max_age_s = hold_max_age_s
        self._held: dict[TemplateKey, deque[_Held]] = {}
        self._held_count = 0
        self._last_expiry = 0.0
        self._addr_cache: dict[str, bytes] = {}
        self._touched: list[_Group] = []  # groups given sets by the datagram being read
        self._evicted_seen = 0

    # ------------------------------------------------------------------- state file
    def export_state(self) -> dict[str, Any]:
        """Templates, sampling rates, interface names and boot times, as plain JSON data.

        Like nfacctd's templates file: a restarted collector that loads it decodes data
        sets at once instead of holding them until each exporter resends its templates.
        Templates are listed least recently used first, so loading keeps their order.
        """
        return {
            "version": STATE_VERSION,
            "templates": [{"exporter": e, "domain": d, "id": t, "scope_count": tmpl.scope_count,
                           "fields": [[f.ie, f.length, f.enterprise] for f in tmpl.fields]}
                          for (e, d, t), tmpl in self.templates.items()],
            "sampling": [{"exporter": e, "domain": d, "sampler": sampler, "rate": rate}
                         for (e, d), table in self.sampling.items() for sampler, rate in table.items()],
            "interface_names": [{"exporter": e, "domain": d, "ifindex": i, "name": name}
                                for (e, d), table in self.interface_names.items() for i, name in table.items()],
            "system_init_ms": [{"exporter": e, "domain": d, "ms": ms}
                               for (e, d), ms in self.system_init_ms.items()],
        }

    def import_state(self, state: Any) -> None:
        """Add a state from :meth:`export_state` (a saved file, so untrusted input).

        Everything is checked before anything is applied: a state that is corrupt,
        from another version or hostile raises DecoderStateError naming the first
        problem and its place, and the decoder is left as it was.
        """
        v = _StateReader(state)
        staged = v.read(self)
        for key, specs, scope_count in staged.templates:
            self.templates.define(key, specs, scope_count)
        self._evicted_seen = self.templates.evicted
        for (exporter, domain, sampler), rate in staged.sampling:
            table = self.sampling.get((exporter, domain))
            if table is None:
                table = self.sampling[(exporter, domain)] = {}
            if sampler in table or len(table) < MAX_SAMPLERS:
                table[sampler] = rate
        for (exporter, domain, ifindex), name in staged.names:
            self._set_name((exporter, domain), ifindex, name)
        for scope, ms in staged.init:
            self.system_init_ms[scope] = ms

    # ----------------------------------------------------------------- first pass
    def decode(self, datagrams: Sequence[tuple[bytes, str, int]]) -> FlowBatch:
        """Decode `(payload, exporter address, received_at)` datagrams into one batch."""
        groups: dict[int, _Group] = {}
        for payload, exporter, received_at in datagrams:
            self.stats.count(exporter, S.DATAGRAMS)
            if len(payload) < 4:
                self.stats.drop(exporter, "truncated_header", detail=f"{len(payload)} bytes")
                continue
            version = (payload[0] << 8) | payload[1]
            self._touched.clear()
            try:
                if version == 9:
                    self._v9(payload, exporter, received_at, groups)
                elif version == 10:
                    self._ipfix(payload, exporter, received_at, groups)
                elif version == 5:
                    self._v5(payload, exporter, received_at, groups)
                else:
                    self.stats.drop(exporter, "bad_version", detail=str(version))
            except Exception as err:  # no datagram may stop the worker: the parsers check
                # every length, so any exception (struct.error included) is a missed check
                self._withdraw_touched()
                self._contain(exporter, _domain_of(payload, version), err)
        if self._held:  # templates that came in this call release sets held before
            for key in [k for k in self._held if self.templates.get(k) is not None]:
                self._release(groups, key)
        self._expire_held()
        return self._assemble(groups)

    def _withdraw_touched(self) -> None:
        """Take back the sets a failing datagram already filed: it is dropped whole."""
        for group in reversed(self._touched):
            group.chunks.pop()
            n = group.counts.pop()
            ctx = group.contexts.pop()
            self.stats.count(ctx.exporter, S.RECORDS, -n)
            self.stats.drop(ctx.exporter, S.DECODE_ERROR_RECORDS, n)
        self._touched.clear()

    def _contain(self, exporter: str, domain: int | None, err: Exception) -> None:
        """Count an unexpected failure and forget the state that led to it."""
        self.stats.drop(exporter, S.DECODE_ERROR, detail=f"domain {domain}: {type(err).__name__}: {err}")
        if domain is not None:
            self.forget(exporter, domain)

    def forget(self, exporter: str, domain: int) -> None:
        """Drop everything learnt from one exporter and domain (templates, rates, names, ...)."""
        scope = (exporter, domain)
        self.templates.withdraw_domain(exporter, domain)
        self.sampling.pop(scope, None)
        self._drop_names(scope)
        self.system_init_ms.pop(scope, None)
        for tracker in self.sequences.values():
            tracker.streams.pop(scope, None)
        self.stats.count(exporter, S.STATE_RESETS)

    def _v5(self, p: bytes, exporter: str, received_at: int, groups: dict[int, _Group]) -> None:
        if len(p) < _V5_HEADER.size:
            self.stats.drop(exporter, "truncated_header")
            return
        _, count, uptime, secs, _nsecs, seq, eng_type, eng_id, sampling = _V5_HEADER.unpack_from(p)
        body = p[_V5_HEADER.size:]
        if count == 0 or count > 30 or len(body) < count * 48:
            self.stats.drop(exporter, "bad_count" if count > 30 or count == 0 else "truncated_records")
            return
        quirks = self.quirks.get(exporter)
        if quirks is not None and quirks.little_endian_sampling:
            sampling = ((sampling & 0xFF) << 8) | (sampling >> 8)
        rate = sampling & 0x3FFF  # top two bits are the sampling mode
        domain = (eng_type << 8) | eng_id
        ctx = _SetContext(exporter, domain, _NF5, secs, uptime, received_at,
                          self._forced_rate(exporter) or rate)
        self._add(groups, _V5_TEMPLATE, body[: count * 48], count, ctx)
        self._sequence(_NF5, exporter, domain, seq, count)  # flow_sequence counts flows

    def _v9(self, p: bytes, exporter: str, received_at: int, groups: dict[int, _Group]) -> None:
        if len(p) < _V9_HEADER.size:
            self.stats.drop(exporter, "truncated_header")
            return
        _, _count, uptime, secs, seq, domain = _V9_HEADER.unpack_from(p)
        lost = self._v9_sequences.observe((exporter, domain), seq, 1)  # RFC 3954 §5.1: counts packets
        if lost:
            self._sequence(_NF9, exporter, domain, seq, 1, lost)
        off, end = _V9_HEADER.size, len(p)
        while off + 4 <= end:
            set_id, length = _SET.unpack_from(p, off)
            if length < 4 or off + length > end:
                self.stats.drop(exporter, "bad_set_length", detail=f"set {set_id} length {length}")
                return
            if set_id == 0:
                self._v9_templates(p, off + 4, off + length, exporter, domain)
            elif set_id == 1:
                self._v9_options_templates(p, off + 4, off + length, exporter, domain)
            elif set_id >= 256:
                ctx = _SetContext(exporter, domain, _NF9, secs, uptime, received_at, 0)
                self._data(groups, (exporter, domain, set_id), p[off + 4 : off + length], ctx)
            else:
                self.stats.drop(exporter, "unknown_set_id", detail=str(set_id))
            off += length

    def _ipfix(self, p: bytes, exporter: str, received_at: int, groups: dict[int, _Group]) -> None:
        if len(p) < _IPFIX_HEADER.size:
            self.stats.drop(exporter, "truncated_header")
            return
        _, msg_len, export_time, seq, domain = _IPFIX_HEADER.unpack_from(p)
        if msg_len < _IPFIX_HEADER.size or msg_len > len(p):
            self.stats.drop(exporter, "bad_message_length", detail=f"{msg_len} vs {len(p)} received")
            return
        off, end = _IPFIX_HEADER.size, msg_len
        records = 0  # RFC 7011 §3.1: the sequence number counts data records (options ones too)
        while off + 4 <= end:
            set_id, length = _SET.unpack_from(p, off)
            if length < 4 or off + length > end:
                self.stats.drop(exporter, "bad_set_length", detail=f"set {set_id} length {length}")
                return
            if set_id in (2, 3):
                self._ipfix_templates(p, off + 4, off + length, exporter, domain, set_id == 3)
            elif set_id >= 256:
                ctx = _SetContext(exporter, domain, _IPFIX, export_time, -1, received_at, 0)
                n = self._data(groups, (exporter, domain, set_id), p[off + 4 : off + length], ctx)
                records = -1 if n < 0 or records < 0 else records + n
            else:
                self.stats.drop(exporter, "unknown_set_id", detail=str(set_id))
            off += length
        lost = self._ipfix_sequences.observe((exporter, domain), seq, records)
        if lost:
            self._sequence(_IPFIX, exporter, domain, seq, records, lost)

    def _sequence(self, protocol: int, exporter: str, domain: int, seq: int, advance: int,
                  lost: int | None = None) -> None:
        if lost is None:
            lost = self.sequences[protocol].observe((exporter, domain), seq, advance)
        if lost:
            self.stats.count(exporter, S.SEQUENCE_RESETS if lost == RESET else S.SEQUENCE_LOST,
                             1 if lost == RESET else lost)

    # ------------------------------------------------------------------ templates
    def _v9_templates(self, p: bytes, off: int, end: int, exporter: str, domain: int) -> None:
        while off + 4 <= end:
            tid, count = _SET.unpack_from(p, off)
            off += 4
            if tid < 256 or off + 4 * count > end:
                if tid != 0 or count != 0:  # zero bytes are padding
                    self.stats.drop(exporter, "bad_template", detail=f"template {tid}")
                return
            specs = tuple(FieldSpec(*_SET.unpack_from(p, off + 4 * i)) for i in range(count))
            off += 4 * count
            self._define(exporter, domain, tid, specs, 0)

    def _v9_options_templates(self, p: bytes, off: int, end: int, exporter: str, domain: int) -> None:
        while off + 6 <= end:
            tid, scope_len, opt_len = struct.unpack_from("!HHH", p, off)
            off += 6
            if tid < 256 or scope_len % 4 or opt_len % 4 or off + scope_len + opt_len > end:
                if tid != 0:
                    self.stats.drop(exporter, "bad_options_template", detail=f"template {tid}")
                return
            scope = []
            for i in range(scope_len // 4):
                stype, slen = _SET.unpack_from(p, off + 4 * i)
                # v9 scope types collide with element ids: only "Interface" keys anything.
                scope.append(FieldSpec(10, slen) if stype == _V9_SCOPE_INTERFACE
                             else FieldSpec(stype, slen, V9_SCOPE))
            off += scope_len
            opts = [FieldSpec(*_SET.unpack_from(p, off + 4 * i)) for i in range(opt_len // 4)]
            off += opt_len
            self._define(exporter, domain, tid, tuple(scope + opts), max(len(scope), 1))

    def _ipfix_templates(self, p: bytes, off: int, end: int, exporter: str, domain: int,
                         options: bool) -> None:
        while off + 4 <= end:
            tid, count = _SET.unpack_from(p, off)
            off += 4
            scope_count = 0
            if count == 0:  # RFC 7011 §8.1: template withdrawal
                if tid in (2, 3):
                    n = self.templates.withdraw_domain(exporter, domain, options=tid == 3)
                else:
                    n = int(self.templates.withdraw((exporter, domain, tid)))
                self.stats.count(exporter, S.TEMPLATE_WITHDRAWALS, n)
                continue
            if tid < 256:
                if tid != 0:
                    self.stats.drop(exporter, "bad_template", detail=f"template {tid}")
                return
            if options:
                if off + 2 > end:
                    self.stats.drop(exporter, "bad_options_template", detail=f"template {tid}")
                    return
                (scope_count,) = struct.unpack_from("!H", p, off)
                off += 2
                if scope_count == 0 or scope_count > count:
                    self.stats.drop(exporter, "bad_options_template", detail=f"template {tid}")
                    return
            specs = []
            for _ in range(count):
                if off + 4 > end:
                    self.stats.drop(exporter, "bad_template", detail=f"template {tid} truncated")
                    return
                ie, length = _SET.unpack_from(p, off)
                off += 4
                enterprise = 0
                if ie & 0x8000:  # enterprise-specific element: number follows
                    if off + 4 > end:
                        self.stats.drop(exporter, "bad_template", detail=f"template {tid} truncated")
                        return
                    (enterprise,) = struct.unpack_from("!I", p, off)
                    off += 4
                    ie &= 0x7FFF
                specs.append(FieldSpec(ie, length, enterprise))
            self._define(exporter, domain, tid, tuple(specs), scope_count)

    def _define(self, exporter: str, domain: int, tid: int, specs: tuple[FieldSpec, ...],
                scope_count: int) -> None:
        if sum(s.length for s in specs) == 0:  # would make records of zero bytes
            self.stats.drop(exporter, "bad_template", detail=f"template {tid}: records of zero length")
            return
        key = (exporter, domain, tid)
        tmpl, changed = self.templates.define(key, specs, scope_count)
        self.stats.count(exporter, S.TEMPLATES)
        if self.templates.evicted != self._evicted_seen:  # counted on the exporter that caused it
            self.stats.note(exporter, S.TEMPLATES_EVICTED, self.templates.evicted - self._evicted_seen,
                            detail=f"template cache full ({self.templates.max_templates})")
            self._evicted_seen = self.templates.evicted
        if changed and tmpl.enterprise_fields:
            self.stats.count(exporter, S.ENTERPRISE_FIELDS, tmpl.enterprise_fields)
        if changed and tmpl.unusable_fields:
            self.stats.count(exporter, "template_fields_unusable", tmpl.unusable_fields)

    # ----------------------------------------------------------------------- data
    def _data(self, groups: dict[int, _Group], key: TemplateKey, body: bytes, ctx: _SetContext) -> int:
        """File one data set; returns its record count, -1 when held for its template."""
        tmpl = self.templates.get(key)
        if tmpl is None:
            self._hold(key, body, ctx)
            return -1
        if key in self._held:
            self._release(groups, key)
        data, n = tmpl.records(body)
        if n == 0:
            if body.strip(b"\x00"):
                self.stats.drop(ctx.exporter, "short_data_set", detail=f"template {key[2]}")
            return 0
        if tmpl.is_options:
            self._options_data(tmpl, data, n, ctx)
            return n
        rates = self.sampling.get((ctx.exporter, ctx.domain))
        ctx.default_rate = self._forced_rate(ctx.exporter) or (rates.get(0, 0) if rates else 0)
        self._add(groups, tmpl, data, n, ctx)
        return n

    def _add(self, groups: dict[int, _Group], tmpl: CompiledTemplate, data: bytes, n: int,
             ctx: _SetContext) -> None:
        group = groups.get(id(tmpl))
        if group is None:
            group = groups[id(tmpl)] = _Group(tmpl)
        group.chunks.append(data)
        group.counts.append(n)
        group.contexts.append(ctx)
        self._touched.append(group)
        self.stats.count(ctx.exporter, S.RECORDS, n)

    def _options_data(self, tmpl: CompiledTemplate, data: bytes, n: int, ctx: _SetContext) -> None:
        cols = tmpl.decode(data, n)
        self.stats.count(ctx.exporter, S.OPTIONS_RECORDS, n)
        scope = (ctx.exporter, ctx.domain)
        rates = cols.get(F.SAMPLING_INTERVAL)
        if rates is not None:
            rates = self._fix_sampling_order(ctx.exporter, rates, _length_of(tmpl, F.SAMPLING_INTERVAL))
        size, population = cols.get(F.SAMPLING_SIZE), cols.get(F.SAMPLING_POPULATION)
        if size is not None and population is not None:
            # RFC 5477 random n-out-of-N: the rate is N / n (Cisco sends interval 1 beside it).
            by_ratio = population.astype(np.uint64) // np.maximum(size.astype(np.uint64), 1)
            rates = by_ratio if rates is None else np.where(rates > 1, rates, by_ratio)
        if rates is not None:
            rates = rates.astype(np.uint64)
            absurd = rates > MAX_SAMPLING_RATE
            if absurd.any():  # never kept: it would scale every later flow of the exporter
                self.stats.note(ctx.exporter, S.SAMPLING_IGNORED, int(absurd.sum()),
                                detail=f"domain {ctx.domain}: options data rate {int(rates[absurd][0])}")
            samplers = cols.get(F.SAMPLER_ID)
            table = self.sampling.get(scope)
            for i in np.flatnonzero((rates > 0) & ~absurd).tolist():
                if table is None:
                    table = self.sampling[scope] = {}
                sampler = int(samplers[i]) if samplers is not None else 0
                if sampler in table or len(table) < MAX_SAMPLERS:
                    table[sampler] = int(rates[i])
        names = cols.get(F.INTERFACE_NAME)
        ifindex = cols.get("input_interface")
        if ifindex is None:
            ifindex = cols.get("output_interface")
        if names is not None and ifindex is not None:
            for i in range(n):
                text = bytes(names[i]).split(b"\x00", 1)[0].decode("utf-8", "replace")
                self._set_name(scope, int(ifindex[i]), text)
        init = cols.get(F.SYSTEM_INIT_MS)
        if init is not None and n:
            self._remember_init(scope, int(init[-1]))

    def _remember_init(self, scope: tuple[str, int], value: int) -> bool:
        """Keep a boot time if believable (1990 to 2100), else count it ignored.

        A corrupt or hostile value (found by fuzzing: 2**63 and up) would otherwise
        overflow the int64 time arithmetic of every later record of this exporter.
        """
        if _PLAUSIBLE_INIT_MS[0] <= value <= _PLAUSIBLE_INIT_MS[1]:
            self.system_init_ms[scope] = value
            return True
        self.stats.note(scope[0], S.VALUE_OUT_OF_RANGE, detail=f"domain {scope[1]}: systemInitTime {value}")
        return False

    def _set_name(self, scope: tuple[str, int], ifindex: int, name: str) -> None:
        table = self.interface_names.get(scope)
        if table is None:
            table = self.interface_names[scope] = {}
            self._named_exporters[scope[0]] = self._named_exporters.get(scope[0], 0) + 1
        if ifindex not in table:
            self._names_total += 1
        table[ifindex] = name
        while self._names_total > self.max_interface_names and len(self.interface_names) > 1:
            oldest = next(iter(self.interface_names))
            self._drop_names(oldest)
            self.stats.note(oldest[0], S.STATE_EVICTED, detail="interface names over their bound")
        if self._names_total > self.max_interface_names:  # one domain alone is over the bound
            del table[ifindex]
            self._names_total -= 1

    def _drop_names(self, scope: tuple[str, int]) -> None:
        table = self.interface_names.pop(scope, None)
        if table is None:
            return
        self._names_total -= len(table)
        left = self._named_exporters.get(scope[0], 0) - 1
        if left > 0:
            self._named_exporters[scope[0]] = left
        else:
            self._named_exporters.pop(scope[0], None)

    def _forced_rate(self, exporter: str) -> int:
        quirks = self.quirks.get(exporter)
        return quirks.sampling_rate or 0 if quirks is not None else 0

    def _fix_sampling_order(self, exporter: str, rates: npt.NDArray[Any], length: int) -> npt.NDArray[Any]:
        """Undo RouterOS v6's little-endian sampling interval, whatever the field's length.

        The bytes are reversed within the field's own length: a 2-byte field swapped as
        a 4-byte one would multiply the rate by 65,536.
        """
        quirks = self.quirks.get(exporter)
        if quirks is None or not quirks.little_endian_sampling or length in (0, VARIABLE):
            return rates
        values = rates.astype(np.uint64)
        swapped = np.zeros(len(values), dtype=np.uint64)
        for i in range(min(length, 8)):
            swapped = (swapped << np.uint64(8)) | ((values >> np.uint64(8 * i)) & np.uint64(0xFF))
        return swapped

    # -------------------------------------------------------------- held data sets
    def _hold(self, key: TemplateKey, body: bytes, ctx: _SetContext) -> None:
        """Park a data set whose template has not arrived yet (RFC 7011 §8 allows it)."""
        if self.hold_max_sets <= 0:
            self.stats.drop(ctx.exporter, "template_missing", detail=f"template {key[2]}")
            return
        while self._held_count >= self.hold_max_sets:
            oldest = min(self._held, key=lambda k: self._held[k][0].since)
            victim = self._held[oldest].popleft()
            self._held_count -= 1
            if not self._held[oldest]:
                del self._held[oldest]
            self.stats.drop(victim.context.exporter, "hold_overflow", detail=f"template {oldest[2]}")
        self._held.setdefault(key, deque()).append(_Held(bytes(body), ctx, time.monotonic()))
        self._held_count += 1
        self.stats.count(ctx.exporter, S.HELD)

    def _release(self, groups: dict[int, _Group], key: TemplateKey) -> None:
        queue = self._held.pop(key, None)
        if not queue:
            return
        self._held_count -= len(queue)
        for held in queue:
            self.stats.count(held.context.exporter, S.HELD_DECODED)
            try:
                self._data(groups, key, held.body, held.context)
            except Exception as err:  # as in decode(): contained, counted, forgotten
                self._contain(held.context.exporter, held.context.domain, err)
                # The template is forgotten now: the queue's other sets are held again
                # (and expire, counted) unless the exporter sends it anew.

    def release_all(self, now: float | None = None) -> FlowBatch:
        """Decode every held set whose template is known now (called on each tick)."""
        groups: dict[int, _Group] = {}
        for key in [k for k in self._held if self.templates.get(k) is not None]:
            self._release(groups, key)
        self._expire_held(now)
        return self._assemble(groups)

    def held(self) -> int:
        return self._held_count

    def _expire_held(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now - self._last_expiry < 1.0 and now >= self._last_expiry:
            return
        self._last_expiry = now
        for key in list(self._held):
            queue = self._held[key]
            while queue and now - queue[0].since > self.hold_max_age_s:
                victim = queue.popleft()
                self._held_count -= 1
                self.stats.drop(victim.context.exporter, "template_missing",
                                detail=f"template {key[2]} never arrived")
            if not queue:
                del self._held[key]

    def flush_held(self) -> None:
        """Count every still-held set as lost (at shutdown or end of a capture)."""
        for key, queue in self._held.items():
            for victim in queue:
                self.stats.drop(victim.context.exporter, "template_missing",
                                detail=f"template {key[2]} never arrived")
        self._held.clear()
        self._held_count = 0

    # ---------------------------------------------------------------- second pass
    def _assemble(self, groups: dict[int, _Group]) -> FlowBatch:
        batches = []
        for group in groups.values():
            try:
                batches.append(self._group_batch(group))
            except Exception:  # find the exporter and domain at fault
                batches.extend(self._split_group(group))
        if not batches:
            return FlowBatch(0)
        return FlowBatch.concat(batches)

    def _split_group(self, group: _Group) -> list[FlowBatch]:
        """Decode a failed group again per exporter and domain: only the guilty one is lost."""
        parts: dict[tuple[str, int], _Group] = {}
        for chunk, count, ctx in zip(group.chunks, group.counts, group.contexts, strict=True):
            part = parts.setdefault((ctx.exporter, ctx.domain), _Group(group.template))
            part.chunks.append(chunk)
            part.counts.append(count)
            part.contexts.append(ctx)
        batches = []
        for (exporter, domain), part in parts.items():
            try:
                batches.append(self._group_batch(part))
            except Exception as err:  # contained: counted, state forgotten
                n = sum(part.counts)
                self.stats.count(exporter, S.RECORDS, -n)
                self.stats.drop(exporter, S.DECODE_ERROR_RECORDS, n)
                self._contain(exporter, domain, err)
        return batches

    def _addr(self, exporter: str) -> bytes:
        raw = self._addr_cache.get(exporter)
        if raw is None:
            if len(self._addr_cache) >= self.max_state:
                self._addr_cache.clear()
            raw = self._addr_cache[exporter] = str_to_addr(exporter)
        return raw

    def _group_batch(self, group: _Group) -> FlowBatch:
        tmpl = group.template
        counts = np.asarray(group.counts, dtype=np.int64)
        n = int(counts.sum())
        cols = tmpl.decode(b"".join(group.chunks), n)
        if tmpl.carries_section:
            _from_section(cols, n)
        ctxs = group.contexts
        # Per-set context, then one index per record into it.
        per_set = np.repeat(np.arange(len(ctxs)), counts)
        exporters = sorted({c.exporter for c in ctxs})
        exp_index = {e: i for i, e in enumerate(exporters)}
        set_exp = np.fromiter((exp_index[c.exporter] for c in ctxs), np.intp, len(ctxs))
        set_dom = np.fromiter((c.domain for c in ctxs), np.uint32, len(ctxs))
        set_secs = np.fromiter((c.export_secs for c in ctxs), np.int64, len(ctxs))
        set_up = np.fromiter((c.uptime_ms for c in ctxs), np.int64, len(ctxs))
        set_recv = np.fromiter((c.received_at for c in ctxs), np.int64, len(ctxs))
        set_rate = np.fromiter((c.default_rate for c in ctxs), np.uint64, len(ctxs))
        set_proto = np.fromiter((c.protocol for c in ctxs), np.uint32, len(ctxs))
        rec_exp = set_exp[per_set]
        rec_dom = set_dom[per_set]
        at = _Records(rec_exp, exporters)

        out = FlowBatch(n)
        for target, values in cols.items():
            if not target.startswith("_"):
                out[target] = self._fit(target, values, at)
        addr_table = np.frombuffer(b"".join(self._addr(e) for e in exporters), np.uint8).reshape(-1, 16)
        out["exporter_address"] = addr_table[rec_exp]
        out["observation_domain"] = rec_dom
        recv = set_recv[per_set]
        out["received_at"] = np.clip(recv, 0, 0xFFFFFFFF)
        out["flow_protocol"] = DictColumn(set_proto[per_set], list(PROTOCOLS))
        if "ip_version" not in cols:
            out["ip_version"] = np.full(n, _ip_version(tmpl), np.uint8)

        init = None  # boot times: needed for uptime fields, remembered when records carry them
        if F.SYSTEM_INIT_MS in cols or _uses(tmpl, F.Conv.UPTIME_MS):
            init = self._init_times(tmpl, cols, ctxs, per_set, at)
        start, end = self._times(tmpl, cols, set_secs[per_set], set_up[per_set], init, recv, at)
        out["timestamp_start"] = start
        out["timestamp_end"] = end

        rate = self._rates(tmpl, cols, set_rate[per_set], rec_dom, at)
        out["sampling_rate"] = rate
        for name in ("packets", "bytes"):
            if name in cols:
                out[name] = self._scaled(name, cols[name], rate, at)

        self._icmp(out, cols)
        self._names(out, rec_exp, rec_dom, exporters)
        return out

    def _fit(self, name: str, values: npt.NDArray[Any], at: _Records) -> npt.NDArray[Any]:
        """A field's values in its column's range: wider values are clamped and counted."""
        column = BY_NAME[name]
        if column.kind is not Kind.UINT or values.dtype.itemsize <= column.np_dtype.itemsize:
            return values
        limit = (1 << (8 * column.np_dtype.itemsize)) - 1
        over = values > limit
        if not over.any():
            return values
        self._note(at, S.VALUE_OUT_OF_RANGE, over, f"column {name}: {int(values[over][0])} > {limit}")
        clamped: npt.NDArray[Any] = np.minimum(values, limit)
        return clamped

    def _scaled(self, name: str, values: npt.NDArray[Any], rate: npt.NDArray[np.uint64],
                at: _Records) -> npt.NDArray[np.uint64]:
        """Counter times sampling rate, saturating at 2**64 - 1 instead of wrapping."""
        v = values.astype(np.uint64)
        product = v * rate
        if not len(v) or int(v.max()) * int(rate.max()) <= _UINT64_MAX:
            return product
        over = v > np.uint64(_UINT64_MAX) // rate  # rate is never 0 (see _rates)
        if over.any():
            self._note(at, S.VALUE_OUT_OF_RANGE, over, f"column {name}: saturated at 2**64-1")
            product = np.where(over, np.uint64(_UINT64_MAX), product)
        return product

    def _note(self, at: _Records, name: str, mask: npt.NDArray[np.bool_], detail: str) -> None:
        """Count the records of `mask` under `name`, per exporter."""
        per_exporter = np.bincount(at.exporter[mask], minlength=len(at.exporters))
        for i in np.flatnonzero(per_exporter).tolist():
            self.stats.note(at.exporters[i], name, int(per_exporter[i]), detail)

    def _init_times(self, tmpl: CompiledTemplate, cols: dict[str, npt.NDArray[Any]],
                    ctxs: list[_SetContext], per_set: npt.NDArray[np.intp], at: _Records
                    ) -> npt.NDArray[np.int64]:
        """systemInitTimeMilliseconds per record (0: unknown), IPFIX only.

        From the record itself when its template carries IE 160 (MikroTik sends it in
        data records), else what options data or earlier records announced.  A
        believable value in a record is remembered for its exporter and domain.
        """
        known = self.system_init_ms
        if known:  # looked up once per distinct exporter and domain of the group
            scopes: dict[tuple[str, int, int], int] = {}
            for c in ctxs:
                scopes.setdefault((c.exporter, c.domain, c.protocol), len(scopes))
            values = np.array([known.get((e, d), 0) if p == _IPFIX else 0 for e, d, p in scopes], np.int64)
            set_scope = np.fromiter((scopes[(c.exporter, c.domain, c.protocol)] for c in ctxs), np.intp, len(ctxs))
            init = values[set_scope][per_set]
        else:
            init = np.zeros(len(per_set), dtype=np.int64)
        in_record = cols.get(F.SYSTEM_INIT_MS)
        if in_record is None:
            return init
        values = in_record.astype(np.uint64)
        good = (values >= _PLAUSIBLE_INIT_MS[0]) & (values <= _PLAUSIBLE_INIT_MS[1])
        if not good.all():
            self._note(at, S.VALUE_OUT_OF_RANGE, ~good, "systemInitTime in a data record outside 1990-2100")
        init = np.where(good, values.astype(np.int64), init)
        last: dict[tuple[str, int], int] = {}
        for i in np.flatnonzero(good).tolist()[::-1]:
            ctx = ctxs[int(per_set[i])]
            last.setdefault((ctx.exporter, ctx.domain), int(values[i]))
        for scope, value in last.items():
            known[scope] = value
        return init

    def _times(self, tmpl: CompiledTemplate, cols: dict[str, npt.NDArray[Any]], secs: npt.NDArray[np.int64],
               uptime: npt.NDArray[np.int64], init: npt.NDArray[np.int64] | None, recv: npt.NDArray[np.int64],
               at: _Records) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        convs = {e.target: e.conv for e in tmpl.extracts}
        result: dict[str, npt.NDArray[np.int64] | None] = {}
        for target in (F.START, F.END):
            values = cols.get(target)
            conv = convs.get(target)
            if values is None or conv is None:
                result[target] = None
                continue
            v = values.astype(np.int64)
            if conv is F.Conv.UPTIME_MS:
                result[target] = _uptime_to_unix(v, secs, uptime, init)
            elif conv is F.Conv.SECONDS:
                result[target] = v
            elif conv is F.Conv.MILLISECONDS:
                result[target] = (values.astype(np.uint64) // np.uint64(1000)).astype(np.int64)
            elif conv in (F.Conv.NTP_US, F.Conv.NTP_NS):
                result[target] = (values.astype(np.uint64) >> np.uint64(32)).astype(np.int64) - NTP_EPOCH_OFFSET
            else:  # DELTA_US
                result[target] = secs - (values.astype(np.uint64) // np.uint64(1_000_000)).astype(np.int64)
        start, end = result[F.START], result[F.END]
        if start is None:
            start = end if end is not None else secs
        if end is None:
            end = start
        start = np.clip(start, -_TIME_BOUND, _TIME_BOUND)
        end = np.clip(end, -_TIME_BOUND, _TIME_BOUND)
        if self.max_clock_skew_s > 0:
            # A datagram with no reception time (0: synthetic or offline input) is not checked.
            skew = self.max_clock_skew_s
            bad = (recv > 0) & ((np.abs(start - recv) > skew) | (np.abs(end - recv) > skew))
            if bad.any():
                first = int(np.argmax(bad))
                self._note(at, S.TIME_IMPLAUSIBLE, bad,
                           f"flow {int(start[first])}..{int(end[first])} received at {int(recv[first])}")
                start = np.where(bad, recv, start)
                end = np.where(bad, recv, end)
        return np.clip(start, 0, 0xFFFFFFFF), np.clip(end, 0, 0xFFFFFFFF)

    def _rates(self, tmpl: CompiledTemplate, cols: dict[str, npt.NDArray[Any]], default: npt.NDArray[np.uint64],
               rec_dom: npt.NDArray[np.uint32], at: _Records) -> npt.NDArray[np.uint64]:
        """Sampling rate per record: forced by config, else in the record, else by sampler id
        from options data, else the exporter's rate from options data, else 1.  A rate in a
        record above MAX_SAMPLING_RATE is ignored and counted."""
        rate = default
        exporters, rec_exp = at.exporters, at.exporter
        samplers = cols.get(F.SAMPLER_ID)
        if samplers is not None and self.sampling:
            keys = np.stack([rec_exp.astype(np.uint64), rec_dom.astype(np.uint64),
                             samplers.astype(np.uint64)], axis=1)
            uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
            looked = np.array([self.sampling.get((exporters[int(e)], int(d)), {}).get(int(s), 0)
                               for e, d, s in uniq], dtype=np.uint64)
            by_sampler = looked[inverse.ravel()]
            rate = np.where(by_sampler > 0, by_sampler, rate)
        in_record = cols.get(F.SAMPLING_INTERVAL)
        if in_record is not None:
            length = _length_of(tmpl, F.SAMPLING_INTERVAL)
            fixed = in_record.astype(np.uint64)
            for i, exporter in enumerate(exporters):
                if self.quirks.get(exporter) is not None:
                    mask = rec_exp == i
                    fixed[mask] = self._fix_sampling_order(exporter, in_record[mask], length)
            absurd = fixed > MAX_SAMPLING_RATE
            if absurd.any():
                self._note(at, S.SAMPLING_IGNORED, absurd, f"rate {int(fixed[absurd][0])} in a data record")
                fixed = np.where(absurd, np.uint64(0), fixed)
            rate = np.where(fixed > 0, fixed, rate)
        forced = np.array([self._forced_rate(e) for e in exporters], dtype=np.uint64)[rec_exp]
        rate = np.where(forced > 0, forced, rate)
        return np.where(rate > 0, rate, np.uint64(1)).astype(np.uint64)

    @staticmethod
    def _icmp(out: FlowBatch, cols: dict[str, npt.NDArray[Any]]) -> None:
        typecode = cols.get(F.ICMP)
        if typecode is None and "icmp_type" not in cols and "dst_port" in cols and "proto" in cols:
            # NetFlow v5/v9 exporters put ICMP type * 256 + code in the destination port.
            proto = cols["proto"]
            is_icmp = (proto == 1) | (proto == 58)
            if is_icmp.any():
                typecode = np.where(is_icmp, cols["dst_port"], 0)
        if typecode is not None:
            tc = typecode.astype(np.uint16)
            out["icmp_type"] = (tc >> 8).astype(np.uint8)
            out["icmp_code"] = (tc & 0xFF).astype(np.uint8)

    def _names(self, out: FlowBatch, rec_exp: npt.NDArray[np.intp], rec_dom: npt.NDArray[np.uint32],
               exporters: list[str]) -> None:
        """Interface names from options data, vectorised over unique (exporter, domain, ifindex)."""
        if not self._named_exporters or not any(e in self._named_exporters for e in exporters):
            return
        for column, name_column in (("input_interface", "input_interface_name"),
                                    ("output_interface", "output_interface_name")):
            if column not in out:
                continue
            keys = np.stack([rec_exp.astype(np.uint64), rec_dom.astype(np.uint64),
                             out[column].astype(np.uint64)], axis=1)
            uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
            values = [""]
            codes = np.zeros(len(uniq), dtype=np.uint32)
            for j, (e, d, idx) in enumerate(uniq):
                name = self.interface_names.get((exporters[int(e)], int(d)), {}).get(int(idx), "")
                if name:
                    codes[j] = len(values)
                    values.append(name)
            out[name_column] = DictColumn(codes[inverse.ravel()], values)


@dataclass
class _StagedState:
    templates: list[tuple[TemplateKey, tuple[FieldSpec, ...], int]] = field(default_factory=list)
    sampling: list[tuple[tuple[str, int, int], int]] = field(default_factory=list)
    names: list[tuple[tuple[str, int, int], str]] = field(default_factory=list)
    init: list[tuple[tuple[str, int], int]] = field(default_factory=list)


_STATE_KEYS = {"version", "templates", "sampling", "interface_names", "system_init_ms"}
_MAX_NAME = 1024  # characters of an interface name in a state file
_MAX_FIELDS = 16_383  # a template set of 65,535 bytes holds at most this many 4-byte fields


class _StateReader:
    """Checks a decoder state from a file, field by field, naming where it is wrong."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def read(self, decoder: NetFlowDecoder) -> _StagedState:
        state = self.state
        if not isinstance(state, dict):
            raise DecoderStateError("$", f"must be an object, not {type(state).__name__}")
        unknown = sorted(set(state) - _STATE_KEYS)
        if unknown:
            raise DecoderStateError("$", f"unknown keys {unknown}")
        if state.get("version") != STATE_VERSION:
            raise DecoderStateError("$.version", f"must be {STATE_VERSION}, not {state.get('version')!r}")
        out = _StagedState()
        bounds = {"templates": decoder.templates.max_templates, "sampling": MAX_STATE * MAX_SAMPLERS,
                  "interface_names": decoder.max_interface_names, "system_init_ms": MAX_STATE}
        for name, bound in bounds.items():
            items = state.get(name, [])
            if not isinstance(items, list):
                raise DecoderStateError(f"$.{name}", "must be a list")
            if len(items) > bound:
                raise DecoderStateError(f"$.{name}", f"{len(items)} entries, more than the bound of {bound}")
        for i, item in enumerate(state.get("templates", [])):
            where = f"$.templates[{i}]"
            exporter, domain = self._scope(item, where, ("id", "scope_count", "fields"))
            tid = self._int(item, "id", where, 256, 0xFFFF)
            raw = item["fields"]
            if not isinstance(raw, list) or not 1 <= len(raw) <= _MAX_FIELDS:
                raise DecoderStateError(f"{where}.fields", f"must be a list of 1 to {_MAX_FIELDS} fields")
            specs = []
            for j, f in enumerate(raw):
                fw = f"{where}.fields[{j}]"
                if not isinstance(f, list) or len(f) != 3 or not all(_is_int(x) for x in f):
                    raise DecoderStateError(fw, "must be [element id, length, enterprise number]")
                ie, length, enterprise = f
                if not (0 <= ie <= 0xFFFF and 0 <= length <= 0xFFFF and 0 <= enterprise <= 0xFFFFFFFF):
                    raise DecoderStateError(fw, f"{f} out of range (16-bit id and length, 32-bit enterprise)")
                specs.append(FieldSpec(ie, length, enterprise))
            scope_count = self._int(item, "scope_count", where, 0, len(specs))
            if sum(sp.length for sp in specs) == 0:
                raise DecoderStateError(f"{where}.fields", "records of zero length")
            out.templates.append(((exporter, domain, tid), tuple(specs), scope_count))
        for i, item in enumerate(state.get("sampling", [])):
            where = f"$.sampling[{i}]"
            exporter, domain = self._scope(item, where, ("sampler", "rate"))
            sampler = self._int(item, "sampler", where, 0, _UINT64_MAX)
            rate = self._int(item, "rate", where, 1, MAX_SAMPLING_RATE)
            out.sampling.append(((exporter, domain, sampler), rate))
        for i, item in enumerate(state.get("interface_names", [])):
            where = f"$.interface_names[{i}]"
            exporter, domain = self._scope(item, where, ("ifindex", "name"))
            ifindex = self._int(item, "ifindex", where, 0, _UINT64_MAX)
            name = item["name"]
            if not isinstance(name, str) or len(name) > _MAX_NAME:
                raise DecoderStateError(f"{where}.name", f"must be text of at most {_MAX_NAME} characters")
            out.names.append(((exporter, domain, ifindex), name))
        for i, item in enumerate(state.get("system_init_ms", [])):
            where = f"$.system_init_ms[{i}]"
            scope = self._scope(item, where, ("ms",))
            out.init.append((scope, self._int(item, "ms", where, *_PLAUSIBLE_INIT_MS)))
        return out

    def _scope(self, item: Any, where: str, keys: tuple[str, ...]) -> tuple[str, int]:
        if not isinstance(item, dict):
            raise DecoderStateError(where, "must be an object")
        wanted = {"exporter", "domain", *keys}
        if set(item) != wanted:
            raise DecoderStateError(where, f"keys must be {sorted(wanted)}, not {sorted(item)}")
        exporter = item["exporter"]
        try:
            if not isinstance(exporter, str):
                raise ValueError(exporter)
            str_to_addr(exporter)
        except ValueError:
            raise DecoderStateError(f"{where}.exporter", f"{exporter!r} is no IP address") from None
        return exporter, self._int(item, "domain", where, 0, 0xFFFFFFFF)

    @staticmethod
    def _int(item: dict[str, Any], key: str, where: str, low: int, high: int) -> int:
        value = item[key]
        if not _is_int(value) or not low <= value <= high:
            raise DecoderStateError(f"{where}.{key}", f"must be an integer from {low} to {high}, not {value!r}")
        return int(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class _Records:
    """Which exporter each record of a group came from: `exporters[exporter[i]]`."""

    exporter: npt.NDArray[np.intp]
    exporters: list[str]


def _uptime_to_unix(v: npt.NDArray[np.int64], secs: npt.NDArray[np.int64], uptime: npt.NDArray[np.int64],
                    init: npt.NDArray[np.int64] | None) -> npt.NDArray[np.int64]:
    """sysUpTime-relative milliseconds (IE 21/22) to unix seconds.

    A record's time is the export time minus how long before the export it was, and
    that difference is taken modulo 2**32 as a signed number: the 32-bit uptime wraps
    every 49.7 days, and a record stamped a little after the export time (clocks read
    at different moments) is a little in the future, not 49.7 days in the past.  The
    exporter's uptime at export comes from the v5/v9 header (RFC 3954 §5.1), or for
    IPFIX from systemInitTimeMilliseconds (IE 160): export time minus boot time, which
    may well exceed 2**32.  Without either, the export time stands in.
    """
    export_ms = secs * 1000
    has_uptime = uptime >= 0
    if init is None:
        init = np.zeros(len(v), dtype=np.int64)
    reference = np.where(has_uptime, uptime, export_ms - init)
    ago = (reference - v) & (_WRAP - 1)
    ago = np.where(ago >= _WRAP // 2, ago - _WRAP, ago)
    known = has_uptime | (init > 0)
    return np.where(known, (export_ms - ago) // 1000, secs)


def _length_of(tmpl: CompiledTemplate, target: str) -> int:
    """The wire length of the field that fills `target` (the preferred one), 0 if none."""
    for ex in tmpl.extracts:
        if ex.target == target:
            return ex.length
    return 0


def _uses(tmpl: CompiledTemplate, conv: F.Conv) -> bool:
    return any(ex.conv is conv for ex in tmpl.extracts)


def _domain_of(payload: bytes, version: int) -> int | None:
    """The observation domain a datagram's header names (v5: engine type and id)."""
    if version == 9 and len(payload) >= _V9_HEADER.size:
        return int.from_bytes(payload[16:20], "big")
    if version == 10 and len(payload) >= _IPFIX_HEADER.size:
        return int.from_bytes(payload[12:16], "big")
    if version == 5 and len(payload) >= _V5_HEADER.size:
        return (payload[20] << 8) | payload[21]
    return None


def _from_section(cols: dict[str, npt.NDArray[Any]], n: int) -> None:
    """Fill from each record's packet copy (IE 315, 104, 313) the columns its template lacks.

    Such records are packet reports (PSAMP, RFC 5476): one sampled packet each, often
    with no address or port field at all.  A field the template carries always wins.
    Without counters in the template, a record counts one packet of the IP packet's
    length, as octetDeltaCount counts octets (IP header and payload, RFC 7012), else the
    frame's size (IE 312).  Cost: see `packet_headers.read_sections`.
    """
    if F.L2_SECTION in cols:
        frames, lengths, link = cols[F.L2_SECTION], cols[F.SECTION_LENGTH[F.L2_SECTION]], LINK_ETHERNET
        # Only a copy from the frame's first byte (IE 102) of an Ethernet frame (IE 408) is walked.
        offset, frame_type = cols.get(F.L2_SECTION_OFFSET), cols.get(F.FRAME_TYPE)
        if offset is not None:
            lengths = np.where(offset == 0, lengths, 0)
        if frame_type is not None:
            lengths = np.where(frame_type == 1, lengths, 0)
    else:
        frames, lengths, link = cols[F.IP_SECTION], cols[F.SECTION_LENGTH[F.IP_SECTION]], LINK_IP
    found = read_sections(frames, lengths, link)
    fill: dict[str, npt.NDArray[Any]] = {
        "proto": found.proto, "tos": found.tos, "tcpflags": found.tcpflags,
        "src_port": found.src_port, "dst_port": found.dst_port}
    if "src_addr" not in cols and "dst_addr" not in cols:  # the addresses and their version go together
        fill.update(src_addr=found.src_addr, dst_addr=found.dst_addr, ip_version=found.ip_version)
    if F.ICMP not in cols:
        fill.update(icmp_type=found.icmp_type, icmp_code=found.icmp_code)
    if link == LINK_ETHERNET:
        fill.update(src_mac=found.src_mac, dst_mac=found.dst_mac, src_vlan=found.vlan)
    for name, values in fill.items():
        cols.setdefault(name, values)
    if "packets" not in cols:
        cols["packets"] = np.ones(n, dtype=np.uint64)
    if "bytes" not in cols:
        size = cols.get(F.FRAME_SIZE)
        ip_length = found.ip_length.astype(np.uint64)
        cols["bytes"] = ip_length if size is None else np.where(ip_length > 0, ip_length, size.astype(np.uint64))


def _ip_version(tmpl: CompiledTemplate) -> int:
    for ex in tmpl.extracts:
        if ex.target in ("src_addr", "dst_addr"):
            return 6 if ex.conv is F.Conv.ADDR6 else 4
    return 0
