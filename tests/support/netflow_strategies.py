"""Hypothesis strategies that compose NetFlow v9 and IPFIX exports from their parts.

Byte-flipping real packets (decode/mutate.py) never builds a new template: these
strategies do.  They draw templates and options templates from the whole element
registry (the ids decode/fields.py knows, any id 1-500, enterprise elements), every
length including reduced-size encodings and variable length (1- and 3-byte prefixes),
absurd values (0, maxima, 2**32, 2**64-1), template redefinition and withdrawal, sets
in any order and data before its template, over a few messages and domains.  Used by
tests/test_decode_hostile.py (short) and bench/fuzz.py --structured (long).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from appliance.flowenricher.columns import COLUMNS, Kind
from appliance.flowenricher.decode.dispatch import FlowDecoder
from appliance.flowenricher.decode.fields import BY_IE
from appliance.flowenricher.decode.netflow import MAX_CLOCK_SKEW_S, MAX_SAMPLING_RATE
from appliance.flowenricher.decode.stats import DecodeStats
from support.netflow_wire import (
    Field,
    ipfix_message,
    ipfix_options_template,
    ipfix_set,
    ipfix_template,
    uint,
    v9_options_template,
    v9_packet,
    v9_template,
    varlen,
)

VARIABLE = 65535
ABSURD = (0, 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1)
TEMPLATE_IDS = st.integers(256, 263)  # few ids, so that they collide: redefinitions
DOMAINS = st.sampled_from([0, 0, 0, 1, 2])
# Elements that change exporter state from options data (sampling, names, boot time).
STATE_ELEMENTS = (34, 305, 50, 48, 302, 309, 310, 82, 160, 10, 14)

element_ids = st.one_of(st.sampled_from(sorted(BY_IE)), st.sampled_from(sorted(BY_IE)),
                        st.sampled_from(STATE_ELEMENTS), st.integers(1, 500))
lengths = st.one_of(st.sampled_from([1, 2, 4, 8]), st.sampled_from([3, 5, 6, 7, 16, VARIABLE]),
                    st.integers(0, 80))
enterprises = st.one_of(st.just(0), st.just(0), st.just(0), st.integers(1, 2**32 - 1))
fields = st.tuples(element_ids, lengths, enterprises)
option_fields = st.one_of(fields, st.tuples(st.sampled_from(STATE_ELEMENTS), lengths, st.just(0)))


@st.composite
def field_value(draw: st.DrawFn, length: int) -> bytes:
    """One field's bytes: an absurd or arbitrary number, or variable-length bytes."""
    if length == VARIABLE:
        data = draw(st.binary(max_size=200))
        return varlen(data, long_form=draw(st.booleans()))
    if length == 0:
        return b""
    if draw(st.booleans()):
        return uint(draw(st.sampled_from(ABSURD)), length)
    return draw(st.binary(min_size=length, max_size=length))


@st.composite
def records(draw: st.DrawFn, template: list[Field]) -> bytes:
    n = draw(st.integers(0, 3))
    body = b"".join(b"".join(draw(field_value(f[1])) for f in template) for _ in range(n))
    return body + bytes(draw(st.integers(0, 3)))  # padding


def _template_id(known: dict[tuple[int, int], list[Any]], domain: int) -> st.SearchStrategy[int]:
    """Mostly an id already defined in this domain (so data meets its template)."""
    ids = sorted(tid for d, tid in known if d == domain)
    if not ids:
        return TEMPLATE_IDS
    return st.one_of(st.sampled_from(ids), st.sampled_from(ids), st.sampled_from(ids), TEMPLATE_IDS)


@dataclass
class Composed:
    """Datagrams of one exporter, in sending order, and what the test should know."""

    datagrams: list[bytes]
    protocol: str


@st.composite
def ipfix_exports(draw: st.DrawFn) -> Composed:
    """IPFIX messages: templates, options templates, withdrawals and data, shuffled."""
    known: dict[tuple[int, int], list[Field]] = {}
    messages = []
    for _ in range(draw(st.integers(1, 4))):
        domain = draw(DOMAINS)
        sets: list[bytes] = []
        for _ in range(draw(st.integers(1, 5))):
            kind = draw(st.sampled_from(["template", "options", "data", "data", "data", "withdraw"]))
            tid = draw(_template_id(known, domain))
            if kind == "template":
                fs = draw(st.lists(fields, min_size=1, max_size=12))
                known[(domain, tid)] = fs
                sets.append(ipfix_set(2, ipfix_template(tid, fs)))
            elif kind == "options":
                scope = draw(st.lists(fields, min_size=1, max_size=3))
                opts = draw(st.lists(option_fields, max_size=6))
                known[(domain, tid)] = [*scope, *opts]
                sets.append(ipfix_set(3, ipfix_options_template(tid, scope, opts)))
            elif kind == "withdraw":
                which = draw(st.sampled_from([tid, 2, 3]))
                sets.append(ipfix_set(2 if which != 3 else 3, ipfix_template(which, [])))
                known.pop((domain, tid), None)
            else:
                template = known.get((domain, tid)) or draw(st.lists(fields, min_size=1, max_size=8))
                sets.append(ipfix_set(tid, draw(records(template))))
        order = draw(st.permutations(range(len(sets))))
        messages.append(ipfix_message([sets[i] for i in order], draw(st.sampled_from(
            [0, 1_800_000_000, 2**32 - 1, 1_799_999_000])), draw(st.sampled_from(ABSURD[:4])), domain))
    return Composed(messages, "ipfix")


v9_fields = st.tuples(element_ids, st.one_of(st.sampled_from([1, 2, 3, 4, 6, 8, 16]), st.integers(0, 40)))


@st.composite
def v9_exports(draw: st.DrawFn) -> Composed:
    """NetFlow v9 packets: templates, options templates (v9 scopes) and data, shuffled."""
    known: dict[tuple[int, int], list[tuple[int, int]]] = {}
    packets = []
    for _ in range(draw(st.integers(1, 4))):
        domain = draw(DOMAINS)
        sets: list[bytes] = []
        for _ in range(draw(st.integers(1, 5))):
            kind = draw(st.sampled_from(["template", "options", "data", "data", "data"]))
            tid = draw(_template_id(known, domain))
            if kind == "template":
                fs = draw(st.lists(v9_fields, min_size=1, max_size=12))
                known[(domain, tid)] = fs
                sets.append(ipfix_set(0, v9_template(tid, fs)))
            elif kind == "options":
                scope = draw(st.lists(st.tuples(st.integers(0, 6), st.sampled_from([0, 1, 2, 4, 8])),
                                      min_size=1, max_size=2))
                opts = draw(st.lists(st.one_of(v9_fields, st.tuples(st.sampled_from(STATE_ELEMENTS),
                                                                    st.sampled_from([1, 2, 4, 8]))),
                                     max_size=6))
                known[(domain, tid)] = [*scope, *opts]
                sets.append(ipfix_set(1, v9_options_template(tid, scope, opts)))
            else:
                template = known.get((domain, tid)) or draw(st.lists(v9_fields, min_size=1, max_size=8))
                sets.append(ipfix_set(tid, draw(records([(ie, ln, 0) for ie, ln in template]))))
        order = draw(st.permutations(range(len(sets))))
        packets.append(v9_packet([sets[i] for i in order], draw(st.sampled_from([0, 1_800_000_000, 2**32 - 1])),
                                 draw(st.sampled_from(ABSURD[:4])), draw(st.sampled_from(ABSURD[:4])), domain))
    return Composed(packets, "netflow9")


exports = st.one_of(ipfix_exports(), v9_exports())


def check_composed(composed: Composed, received_at: int = 1_800_000_000, per_call: int = 2) -> list[DecodeStats]:
    """Decode one composition, in its order and reversed (data before its templates),
    each on a fresh decoder, checking what a user relies on: every datagram counted, no
    exception (not even a contained one: `decode_error` is a bug to fix), every column
    of its dtype and length, times within the clock skew of reception, rates in range,
    records counted as they come out.  Returns each decoder's stats."""
    return [_check_order(composed.datagrams, received_at, per_call),
            _check_order(composed.datagrams[::-1], received_at, per_call)]


def _check_order(payloads: list[bytes], received_at: int, per_call: int) -> DecodeStats:
    decoder = FlowDecoder(hold_max_sets=64)
    datagrams = [(d, "192.0.2.1", received_at) for d in payloads]
    batches = [decoder.decode(datagrams[i : i + per_call]) for i in range(0, len(datagrams), per_call)]
    batches.append(decoder.tick())
    stats = decoder.stats
    assert stats.total("datagrams") == len(datagrams), "a datagram was not counted"
    errors = stats.total_dropped()["decode_error"]
    assert errors == 0, "an exception was contained: a bug to fix (the log names its type)"
    for batch in batches:
        for column in COLUMNS:
            data = batch[column.name]
            assert len(data) == batch.n, column.name
            if column.kind is Kind.UINT:
                assert data.dtype == column.np_dtype, column.name
            elif column.kind is Kind.ADDR:
                assert data.shape == (batch.n, 16) and data.dtype == np.uint8, column.name
        if batch.n:
            for name in ("timestamp_start", "timestamp_end"):
                off = np.abs(batch[name].astype(np.int64) - received_at)
                assert np.all(off <= MAX_CLOCK_SKEW_S), f"{name} {int(off.max())} s from reception"
            rates = batch["sampling_rate"]
            assert rates.min() >= 1 and rates.max() <= MAX_SAMPLING_RATE, "sampling_rate out of range"
    assert stats.total("records") == sum(b.n for b in batches), "records counted differ from records returned"
    return stats
