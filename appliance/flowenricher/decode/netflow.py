"""NetFlow v5, NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) decoding, columnar.

One :meth:`NetFlowDecoder.decode` call takes many datagrams.  A first pass walks each
datagram's header and set headers only (a few struct calls per datagram), handles
templates and options data at once (they are few and change state), and files every
data set under its compiled template.  A second pass turns all sets of one template
into column arrays in one go (see :mod:`.templates`).  No Python object is made per
flow record.

Exporter state kept here, per exporter address and observation domain: templates,
sampling rates from options data (keyed by sampler id, 0 for "any"), interface names
from options data, and the system init time IPFIX exporters such as RouterOS announce
for uptime-relative timestamps.
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
from . import fields as F
from . import stats as S
from .packet_headers import LINK_ETHERNET, LINK_IP, read_sections
from .stats import DecodeStats
from .templates import CompiledTemplate, FieldSpec, TemplateCache, TemplateKey, compile_template

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


class NetFlowDecoder:
    """Decodes NetFlow v5/v9 and IPFIX datagrams into FlowBatches, keeping exporter state."""

    def __init__(self, stats: DecodeStats, quirks: Mapping[str, ExporterQuirks] | None = None,
                 hold_max_sets: int = 10_000, hold_max_age_s: float = 60.0) -> None:
        self.stats = stats
        self.quirks = dict(quirks or {})
        self.templates = TemplateCache()
        self.sampling: dict[tuple[str, int, int], int] = {}
        self.interface_names: dict[tuple[str, int], dict[int, str]] = {}
        self.system_init_ms: dict[tuple[str, int], int] = {}
        self.hold_max_sets = hold_max_sets
        self.hold_max_age_s = hold_max_age_s
        self._held: dict[TemplateKey, deque[_Held]] = {}
        self._held_count = 0
        self._last_expiry = 0.0
        self._addr_cache: dict[str, bytes] = {}

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
            try:
                if version == 9:
                    self._v9(payload, exporter, received_at, groups)
                elif version == 10:
                    self._ipfix(payload, exporter, received_at, groups)
                elif version == 5:
                    self._v5(payload, exporter, received_at, groups)
                else:
                    self.stats.drop(exporter, "bad_version", detail=str(version))
            except (struct.error, ValueError, IndexError) as err:
                self.stats.drop(exporter, "malformed", detail=str(err))
        if self._held:  # templates that came in this call release sets held before
            for key in [k for k in self._held if self.templates.get(k) is not None]:
                self._release(groups, key)
        self._expire_held()
        return self._assemble(groups)

    def _v5(self, p: bytes, exporter: str, received_at: int, groups: dict[int, _Group]) -> None:
        if len(p) < _V5_HEADER.size:
            self.stats.drop(exporter, "truncated_header")
            return
        _, count, uptime, secs, _nsecs, _seq, eng_type, eng_id, sampling = _V5_HEADER.unpack_from(p)
        body = p[_V5_HEADER.size:]
        if count == 0 or count > 30 or len(body) < count * 48:
            self.stats.drop(exporter, "bad_count" if count > 30 or count == 0 else "truncated_records")
            return
        quirks = self.quirks.get(exporter)
        if quirks is not None and quirks.little_endian_sampling:
            sampling = ((sampling & 0xFF) << 8) | (sampling >> 8)
        rate = sampling & 0x3FFF  # top two bits are the sampling mode
        ctx = _SetContext(exporter, (eng_type << 8) | eng_id, _NF5, secs, uptime, received_at,
                          self._forced_rate(exporter) or rate)
        self._add(groups, _V5_TEMPLATE, body[: count * 48], count, ctx)

    def _v9(self, p: bytes, exporter: str, received_at: int, groups: dict[int, _Group]) -> None:
        if len(p) < _V9_HEADER.size:
            self.stats.drop(exporter, "truncated_header")
            return
        _, _count, uptime, secs, _seq, domain = _V9_HEADER.unpack_from(p)
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
        _, msg_len, export_time, _seq, domain = _IPFIX_HEADER.unpack_from(p)
        if msg_len < _IPFIX_HEADER.size or msg_len > len(p):
            self.stats.drop(exporter, "bad_message_length", detail=f"{msg_len} vs {len(p)} received")
            return
        off, end = _IPFIX_HEADER.size, msg_len
        while off + 4 <= end:
            set_id, length = _SET.unpack_from(p, off)
            if length < 4 or off + length > end:
                self.stats.drop(exporter, "bad_set_length", detail=f"set {set_id} length {length}")
                return
            if set_id in (2, 3):
                self._ipfix_templates(p, off + 4, off + length, exporter, domain, set_id == 3)
            elif set_id >= 256:
                ctx = _SetContext(exporter, domain, _IPFIX, export_time, -1, received_at, 0)
                self._data(groups, (exporter, domain, set_id), p[off + 4 : off + length], ctx)
            else:
                self.stats.drop(exporter, "unknown_set_id", detail=str(set_id))
            off += length

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
        if changed and tmpl.enterprise_fields:
            self.stats.count(exporter, S.ENTERPRISE_FIELDS, tmpl.enterprise_fields)
        if changed and tmpl.unusable_fields:
            self.stats.count(exporter, "template_fields_unusable", tmpl.unusable_fields)

    # ----------------------------------------------------------------------- data
    def _data(self, groups: dict[int, _Group], key: TemplateKey, body: bytes, ctx: _SetContext) -> None:
        tmpl = self.templates.get(key)
        if tmpl is None:
            self._hold(key, body, ctx)
            return
        if key in self._held:
            self._release(groups, key)
        data, n = tmpl.records(body)
        if n == 0:
            if body.strip(b"\x00"):
                self.stats.drop(ctx.exporter, "short_data_set", detail=f"template {key[2]}")
            return
        if tmpl.is_options:
            self._options_data(tmpl, data, n, ctx)
            return
        ctx.default_rate = self._forced_rate(ctx.exporter) or self.sampling.get(
            (ctx.exporter, ctx.domain, 0), 0)
        self._add(groups, tmpl, data, n, ctx)

    def _add(self, groups: dict[int, _Group], tmpl: CompiledTemplate, data: bytes, n: int,
             ctx: _SetContext) -> None:
        group = groups.get(id(tmpl))
        if group is None:
            group = groups[id(tmpl)] = _Group(tmpl)
        group.chunks.append(data)
        group.counts.append(n)
        group.contexts.append(ctx)
        self.stats.count(ctx.exporter, S.RECORDS, n)

    def _options_data(self, tmpl: CompiledTemplate, data: bytes, n: int, ctx: _SetContext) -> None:
        cols = tmpl.decode(data, n)
        self.stats.count(ctx.exporter, S.OPTIONS_RECORDS, n)
        scope = (ctx.exporter, ctx.domain)
        rates = cols.get(F.SAMPLING_INTERVAL)
        if rates is not None:
            rates = self._fix_sampling_order(ctx.exporter, rates)
        size, population = cols.get(F.SAMPLING_SIZE), cols.get(F.SAMPLING_POPULATION)
        if size is not None and population is not None:
            # RFC 5477 random n-out-of-N: the rate is N / n (Cisco sends interval 1 beside it).
            by_ratio = population.astype(np.uint64) // np.maximum(size.astype(np.uint64), 1)
            rates = by_ratio if rates is None else np.where(rates > 1, rates, by_ratio)
        if rates is not None:
            samplers = cols.get(F.SAMPLER_ID)
            for i in range(n):
                sampler = int(samplers[i]) if samplers is not None else 0
                self.sampling[(ctx.exporter, ctx.domain, sampler)] = int(rates[i])
        names = cols.get(F.INTERFACE_NAME)
        ifindex = cols.get("input_interface")
        if ifindex is None:
            ifindex = cols.get("output_interface")
        if names is not None and ifindex is not None:
            table = self.interface_names.setdefault(scope, {})
            for i in range(n):
                text = bytes(names[i]).split(b"\x00", 1)[0].decode("utf-8", "replace")
                table[int(ifindex[i])] = text
        init = cols.get(F.SYSTEM_INIT_MS)
        if init is not None and n:
            # Only a boot time between 1990 and 2100 is believed: a corrupt or hostile
            # value (found by fuzzing: 2**63 and up) would overflow the int64 time
            # arithmetic of every later record of this exporter.
            value = int(init[-1])
            if _PLAUSIBLE_INIT_MS[0] <= value <= _PLAUSIBLE_INIT_MS[1]:
                self.system_init_ms[scope] = value

    def _forced_rate(self, exporter: str) -> int:
        quirks = self.quirks.get(exporter)
        return quirks.sampling_rate or 0 if quirks is not None else 0

    def _fix_sampling_order(self, exporter: str, rates: npt.NDArray[Any]) -> npt.NDArray[Any]:
        quirks = self.quirks.get(exporter)
        if quirks is not None and quirks.little_endian_sampling:
            return rates.astype(np.uint32).byteswap()
        return rates

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
            self._data(groups, key, held.body, held.context)

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
        batches = [self._group_batch(g) for g in groups.values()]
        if not batches:
            return FlowBatch(0)
        return FlowBatch.concat(batches)

    def _addr(self, exporter: str) -> bytes:
        raw = self._addr_cache.get(exporter)
        if raw is None:
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
        set_recv = np.fromiter((c.received_at for c in ctxs), np.uint32, len(ctxs))
        set_rate = np.fromiter((c.default_rate for c in ctxs), np.uint32, len(ctxs))
        set_proto = np.fromiter((c.protocol for c in ctxs), np.uint32, len(ctxs))
        rec_exp = set_exp[per_set]
        rec_dom = set_dom[per_set]

        out = FlowBatch(n)
        for target, values in cols.items():
            if not target.startswith("_"):
                out[target] = values
        addr_table = np.frombuffer(b"".join(self._addr(e) for e in exporters), np.uint8).reshape(-1, 16)
        out["exporter_address"] = addr_table[rec_exp]
        out["observation_domain"] = rec_dom
        out["received_at"] = set_recv[per_set]
        out["flow_protocol"] = DictColumn(set_proto[per_set], list(PROTOCOLS))
        if "ip_version" not in cols:
            out["ip_version"] = np.full(n, _ip_version(tmpl), np.uint8)

        start, end = self._times(tmpl, cols, set_secs[per_set], set_up[per_set], rec_exp, rec_dom, exporters)
        out["timestamp_start"] = start
        out["timestamp_end"] = end

        rate = self._rates(cols, set_rate[per_set], rec_exp, rec_dom, exporters)
        out["sampling_rate"] = rate
        if "packets" in cols:
            out["packets"] = cols["packets"].astype(np.uint64) * rate
        if "bytes" in cols:
            out["bytes"] = cols["bytes"].astype(np.uint64) * rate

        self._icmp(out, cols)
        self._names(out, rec_exp, rec_dom, exporters)
        return out

    def _times(self, tmpl: CompiledTemplate, cols: dict[str, npt.NDArray[Any]], secs: npt.NDArray[np.int64],
               uptime: npt.NDArray[np.int64], rec_exp: npt.NDArray[np.intp], rec_dom: npt.NDArray[np.uint32],
               exporters: list[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
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
                result[target] = self._uptime_to_unix(v, secs, uptime, rec_exp, rec_dom, exporters)
            elif conv is F.Conv.SECONDS:
                result[target] = v
            elif conv is F.Conv.MILLISECONDS:
                result[target] = v // 1000
            elif conv in (F.Conv.NTP_US, F.Conv.NTP_NS):
                result[target] = (values.astype(np.uint64) >> np.uint64(32)).astype(np.int64) - NTP_EPOCH_OFFSET
            else:  # DELTA_US
                result[target] = secs - v // 1_000_000
        start, end = result[F.START], result[F.END]
        if start is None:
            start = end if end is not None else secs
        if end is None:
            end = start
        return np.clip(start, 0, 0xFFFFFFFF), np.clip(end, 0, 0xFFFFFFFF)

    def _uptime_to_unix(self, v: npt.NDArray[np.int64], secs: npt.NDArray[np.int64],
                        uptime: npt.NDArray[np.int64], rec_exp: npt.NDArray[np.intp],
                        rec_dom: npt.NDArray[np.uint32], exporters: list[str]) -> npt.NDArray[np.int64]:
        """sysUpTime-relative milliseconds to unix seconds.

        NetFlow v5/v9 headers carry the exporter's uptime and clock (RFC 3954 §5.1): the
        flow started (uptime - first) ms before the header's unix seconds, modulo the
        32-bit wrap.  IPFIX has no uptime in its header: RouterOS and others announce
        systemInitTimeMilliseconds (IE 160) in options data; without it, export time.
        """
        has_uptime = uptime >= 0
        ago_ms = (uptime - v) & 0xFFFFFFFF
        out = np.where(has_uptime, secs - ago_ms // 1000, secs)
        if not has_uptime.all() and self.system_init_ms:
            init = np.zeros(len(v), dtype=np.int64)
            for i, exporter in enumerate(exporters):
                for (exp, dom), ms in self.system_init_ms.items():
                    if exp == exporter:
                        init[(rec_exp == i) & (rec_dom == dom)] = ms
            known = ~has_uptime & (init > 0)
            out = np.where(known, (init + v) // 1000, out)
        return out

    def _rates(self, cols: dict[str, npt.NDArray[Any]], default: npt.NDArray[np.uint32],
               rec_exp: npt.NDArray[np.intp], rec_dom: npt.NDArray[np.uint32],
               exporters: list[str]) -> npt.NDArray[np.uint64]:
        """Sampling rate per record: forced by config, else in the record, else by sampler id
        from options data, else the exporter's rate from options data, else 1."""
        rate = default.astype(np.uint64)
        samplers = cols.get(F.SAMPLER_ID)
        if samplers is not None and self.sampling:
            keys = np.stack([rec_exp.astype(np.uint64), rec_dom.astype(np.uint64),
                             samplers.astype(np.uint64)], axis=1)
            uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
            looked = np.array([self.sampling.get((exporters[int(e)], int(d), int(s)), 0)
                               for e, d, s in uniq], dtype=np.uint64)
            by_sampler = looked[inverse.ravel()]
            rate = np.where(by_sampler > 0, by_sampler, rate)
        in_record = cols.get(F.SAMPLING_INTERVAL)
        if in_record is not None:
            fixed = np.empty(len(in_record), dtype=np.uint64)
            for i, exporter in enumerate(exporters):
                mask = rec_exp == i
                fixed[mask] = self._fix_sampling_order(exporter, in_record[mask]).astype(np.uint64)
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
        if not self.interface_names or not any(e == k[0] for k in self.interface_names for e in exporters):
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
