"""Decoder state: sequence-number losses, bounds on everything senders can grow, and the
templates file a restarted collector loads so that data decodes before the next refresh."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
from support.netflow_wire import (
    ipfix_message,
    ipfix_options_template,
    ipfix_set,
    ipfix_template,
    sflow_datagram,
    uint,
    v5_packet,
    v9_packet,
    v9_template,
)

from appliance.flowenricher.decode.dispatch import FlowDecoder, load_state, save_state
from appliance.flowenricher.decode.netflow import DecoderStateError
from appliance.flowenricher.decode.sequence import CONFIRM_AFTER
from appliance.flowenricher.decode.stats import DecodeStats

EXPORTER = "192.0.2.20"
NOW = 1_800_000_000
FIELDS = [(8, 4, 0), (12, 4, 0), (2, 4, 0), (1, 4, 0)]
RECORD = uint(0x0A000001, 4) + uint(0x0A000002, 4) + uint(1, 4) + uint(64, 4)


def _feed(decoder: FlowDecoder, packets: list[bytes]) -> int:
    return sum(decoder.decode([(p, EXPORTER, NOW)]).n for p in packets)


def _counts(decoder: FlowDecoder) -> tuple[int, int]:
    c = decoder.stats.counts[EXPORTER]
    return c["sequence_lost"], c["sequence_resets"]


# ------------------------------------------------------------------- sequence numbers
def _v9(seq: int) -> bytes:
    tmpl = ipfix_set(0, v9_template(260, [(f[0], f[1]) for f in FIELDS]))
    return v9_packet([tmpl, ipfix_set(260, RECORD * 2)], NOW, 1000, seq=seq, source_id=7)


def _ipfix(seq: int, records: int = 3) -> bytes:
    tmpl = ipfix_set(2, ipfix_template(300, FIELDS))
    return ipfix_message([tmpl, ipfix_set(300, RECORD * records)], NOW, seq=seq, domain=3)


def _v5(seq: int) -> bytes:
    return v5_packet([{"first": 1, "last": 2}] * 10, NOW, 1000, seq=seq)


def _sflow(seq: int) -> bytes:
    return sflow_datagram(seq, sub_agent=2)


TAIL = CONFIRM_AFTER + 2  # datagrams after a hole, so that it is confirmed lost


@pytest.mark.parametrize(("build", "step", "unit"), [(_v9, 1, "packets"), (_ipfix, 3, "records"),
                                                     (_v5, 10, "flows"), (_sflow, 1, "datagrams")],
                         ids=["v9", "ipfix", "v5", "sflow"])
def test_sequence_gap_is_counted_lost(build: object, step: int, unit: str) -> None:
    decoder = FlowDecoder()
    numbers = [0, 1, 2, 5, *range(6, 6 + TAIL)]  # 3 and 4 never arrive
    _feed(decoder, [build(n * step) for n in numbers])  # type: ignore[operator]
    assert _counts(decoder) == (2 * step, 0), unit


@pytest.mark.parametrize(("build", "step"), [(_v9, 1), (_ipfix, 3), (_v5, 10), (_sflow, 1)],
                         ids=["v9", "ipfix", "v5", "sflow"])
def test_reordering_by_a_few_is_not_loss(build: object, step: int) -> None:
    decoder = FlowDecoder()
    numbers = [0, 1, 3, 2, 4, 7, 5, 6, *range(8, 8 + TAIL)]
    _feed(decoder, [build(n * step) for n in numbers])  # type: ignore[operator]
    assert _counts(decoder) == (0, 0)


@pytest.mark.parametrize(("build", "step"), [(_v9, 1), (_ipfix, 3), (_v5, 10), (_sflow, 1)],
                         ids=["v9", "ipfix", "v5", "sflow"])
def test_exporter_restart_is_a_reset_not_loss(build: object, step: int) -> None:
    decoder = FlowDecoder()
    numbers = [5000, 5001, 5002, 0, 1, *range(2, 2 + TAIL)]
    _feed(decoder, [build(n * step) for n in numbers])  # type: ignore[operator]
    assert _counts(decoder) == (0, 1)


def test_ipfix_sequence_counts_options_records_too() -> None:
    opt = ipfix_set(3, ipfix_options_template(301, [(149, 4, 0)], [(34, 4, 0)]))
    first = ipfix_message([opt, ipfix_set(301, uint(3, 4) + uint(100, 4))], NOW, seq=0, domain=3)
    decoder = FlowDecoder()
    _feed(decoder, [first, *(_ipfix(1 + 3 * i) for i in range(TAIL))])
    assert _counts(decoder) == (0, 0)


def test_sequences_are_per_domain() -> None:
    decoder = FlowDecoder()
    a = [_ipfix(3 * i) for i in range(TAIL)]
    b = [ipfix_message([ipfix_set(2, ipfix_template(300, FIELDS)), ipfix_set(300, RECORD)], NOW,
                       seq=1000 + i, domain=4) for i in range(TAIL)]
    _feed(decoder, [p for pair in zip(a, b, strict=True) for p in pair])
    assert _counts(decoder) == (0, 0)


# --------------------------------------------------------------------------- bounds
def test_template_cache_is_bounded_by_least_recently_defined() -> None:
    decoder = FlowDecoder(max_templates=1000)
    for first in range(0, 100_000, 500):  # 100k distinct (domain, template id), 500 a message
        domain, tid = divmod(first, 50_000)
        sets = [ipfix_set(2, b"".join(ipfix_template(256 + t, FIELDS) for t in range(tid, tid + 500)))]
        decoder.decode([(ipfix_message(sets, NOW, domain=domain), EXPORTER, NOW)])
    assert len(decoder.netflow.templates) == 1000
    assert decoder.stats.counts[EXPORTER]["templates_evicted"] == 99_000
    newest = ipfix_message([ipfix_set(256 + 49_999, RECORD)], NOW, domain=1)
    oldest = ipfix_message([ipfix_set(256, RECORD)], NOW, domain=0)
    assert decoder.decode([(newest, EXPORTER, NOW)]).n == 1  # the last defined is still there
    assert decoder.decode([(oldest, EXPORTER, NOW)]).n == 0  # the first was evicted: held


def test_100k_exporters_keep_state_and_labels_bounded() -> None:
    decoder = FlowDecoder(DecodeStats(max_exporters=500), max_templates=2000, max_state=1000)
    opt = ipfix_set(3, ipfix_options_template(301, [(149, 4, 0)], [(34, 4, 0), (160, 8, 0)]))

    def flood(first: int, count: int) -> None:
        for call in range(first, first + count, 1000):
            datagrams = []
            for i in range(call, call + 1000):
                opt_data = ipfix_set(301, uint(0, 4) + uint(100, 4) + uint(NOW * 1000 - 5000, 8))
                packet = ipfix_message([opt, opt_data, ipfix_set(2, ipfix_template(300, FIELDS)),
                                        ipfix_set(300, RECORD)], NOW, seq=i, domain=i)
                datagrams.append((packet, f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", NOW))
            assert decoder.decode(datagrams).n == 1000

    flood(0, 90_000)
    # Every bound is reached long before: memory then turns over (all state allocated
    # after 95k replaces what was allocated after 90k) and may not grow.
    tracemalloc.start()
    flood(90_000, 5_000)
    turned_over, _ = tracemalloc.get_traced_memory()
    flood(95_000, 5_000)
    grown = tracemalloc.get_traced_memory()[0] - turned_over
    tracemalloc.stop()
    nf = decoder.netflow
    assert len(nf.templates) == 2000
    assert len(nf.sampling) == len(nf.system_init_ms) == 1000
    assert all(len(t.streams) <= 1000 for t in nf.sequences.values())
    assert len(decoder.stats.counts) == 501  # 500 exporters and "other"
    assert decoder.stats.counts["other"]["exporters_folded"] == 500  # remembered up to the bound
    assert decoder.stats.counts["other"]["datagrams"] == 99_500
    assert grown < 100_000, f"memory grew by {grown} bytes for the last 5k exporters"


def test_interface_names_are_bounded_in_total() -> None:
    decoder = FlowDecoder()
    nf = decoder.netflow
    nf.max_interface_names = 100
    opt = ipfix_set(3, ipfix_options_template(301, [(10, 4, 0)], [(82, 16, 0)]))
    for domain in range(30):
        names = b"".join(uint(i, 4) + f"eth{i}".encode().ljust(16, b"\0") for i in range(10))
        decoder.decode([(ipfix_message([opt, ipfix_set(301, names)], NOW, domain=domain), EXPORTER, NOW)])
    assert sum(len(t) for t in nf.interface_names.values()) == 100
    assert sorted(d for _, d in nf.interface_names) == list(range(20, 30))  # the oldest forgotten


# ---------------------------------------------------------------------- templates file
def _state_packets() -> tuple[bytes, bytes]:
    opt = ipfix_set(3, ipfix_options_template(301, [(149, 4, 0)], [(34, 4, 0)]))
    names = ipfix_set(3, ipfix_options_template(302, [(10, 4, 0)], [(82, 65535, 0)]))
    setup = ipfix_message([opt, ipfix_set(301, uint(0, 4) + uint(50, 4)), names,
                           ipfix_set(302, uint(1, 4) + b"\x04ge-0"),
                           ipfix_set(2, ipfix_template(300, [*FIELDS, (10, 4, 0)]))], NOW, domain=9)
    data = ipfix_message([ipfix_set(300, RECORD + uint(1, 4))], NOW, domain=9)
    return setup, data


def test_data_after_a_restart_decodes_before_the_next_template(tmp_path: Path) -> None:
    setup, data = _state_packets()
    first = FlowDecoder()
    first.decode([(setup, EXPORTER, NOW)])
    path = tmp_path / "templates.json"
    save_state(first, path)
    assert json.loads(path.read_text())["version"] == 1

    restarted = FlowDecoder()
    assert load_state(restarted, path)
    batch = restarted.decode([(data, EXPORTER, NOW)])
    assert batch.n == 1 and restarted.netflow.held() == 0
    row = next(batch.rows())
    assert (row["sampling_rate"], row["packets"], row["input_interface_name"]) == (50, 50, "ge-0")
    assert restarted.export_state() == first.export_state()

    cold = FlowDecoder()  # without the file the set waits for its template
    assert cold.decode([(data, EXPORTER, NOW)]).n == 0 and cold.netflow.held() == 1


def test_missing_state_file_is_not_an_error(tmp_path: Path) -> None:
    assert load_state(FlowDecoder(), tmp_path / "absent.json") is False


def _valid_state() -> dict[str, object]:
    decoder = FlowDecoder()
    decoder.decode([(_state_packets()[0], EXPORTER, NOW)])
    return decoder.export_state()


def _hostile(path: str, value: object) -> dict[str, object]:
    state = json.loads(json.dumps(_valid_state()))
    *parents, last = path.split(".")
    node = state
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return state  # type: ignore[no-any-return]


@pytest.mark.parametrize(("where", "value", "message"), [
    ("version", 2, "$.version: must be 1"),
    ("templates.0.fields.0", [8, 70000, 0], "$.templates[0].fields[0]: [8, 70000, 0] out of range"),
    ("templates.0.fields", [[8, 0, 0]], "$.templates[0].fields: records of zero length"),
    ("templates.0.id", 7, "$.templates[0].id: must be an integer from 256 to 65535, not 7"),
    ("templates.0.scope_count", 99, "$.templates[0].scope_count: must be an integer"),
    ("templates.0.exporter", "not-an-address", "$.templates[0].exporter: 'not-an-address' is no IP address"),
    ("sampling.0.rate", 2**32, "$.sampling[0].rate: must be an integer from 1 to 16777216"),
    ("system_init_ms.0", {"exporter": EXPORTER, "domain": 9, "ms": 2**63}, "$.system_init_ms[0].ms"),
    ("interface_names.0.name", ["x"], "$.interface_names[0].name: must be text"),
    ("templates.0.domain", True, "$.templates[0].domain: must be an integer"),
])
def test_hostile_state_is_refused_and_changes_nothing(where: str, value: object, message: str) -> None:
    if where.startswith("system_init_ms"):
        state = _valid_state()
        state["system_init_ms"] = [value]
    else:
        state = _hostile(where, value)
    decoder = FlowDecoder()
    with pytest.raises(DecoderStateError) as err:
        decoder.import_state(state)
    assert message in str(err.value)
    assert decoder.export_state() == FlowDecoder().export_state()  # nothing applied


def test_corrupt_state_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "templates.json"
    path.write_text('{"version": 1, "templates": [')
    with pytest.raises(DecoderStateError, match=f"{path}: not JSON"):
        load_state(FlowDecoder(), path)
    path.write_text(json.dumps({"version": 1, "templates": [{"exporter": EXPORTER}]}))
    with pytest.raises(DecoderStateError, match=r"templates\.json: \$\.templates\[0\]: keys must be"):
        load_state(FlowDecoder(), path)
