"""Flow times are right whatever the exporter's uptime or clock.

flowStart/EndSysUpTime (IE 22/21) are 32-bit milliseconds: they wrap every 49.7 days, so
an exporter up 60 days must be unwrapped against the export time, not landed 49.7 days in
the past (softflowd issue #52; MikroTik sends IE 160 in its data records, goflow2 PR
#406).  Exporter clocks that are plainly wrong give way to the reception time, counted.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.netflow_wire import (
    ipfix_message,
    ipfix_options_template,
    ipfix_set,
    ipfix_template,
    uint,
    v5_packet,
    v9_options_template,
    v9_packet,
    v9_template,
)
from support.stores import STORE_KINDS, migrated_store

from appliance.flowenricher.batch import FlowBatch
from appliance.flowenricher.decode.dispatch import FlowDecoder
from appliance.flowenricher.decode.netflow import MAX_CLOCK_SKEW_S, ExporterQuirks
from appliance.flowenricher.storage.base import FlowStore

EXPORTER = "192.0.2.10"
DAY_MS = 86_400_000
NOW = 1_800_000_000  # unix seconds, 2027-01-15
UP_60_DAYS_MS = 60 * DAY_MS  # more than 2**32 ms (49.7 days)
FLOW_FIELDS = [(8, 4, 0), (12, 4, 0), (2, 4, 0), (1, 4, 0), (22, 4, 0), (21, 4, 0)]


def _flow(start_uptime: int, end_uptime: int) -> bytes:
    return uint(0x0A000001, 4) + uint(0x0A000002, 4) + uint(3, 4) + uint(300, 4) + \
        uint(start_uptime, 4) + uint(end_uptime, 4)


def _ipfix_up_60_days(in_data: bool, now: int = NOW) -> list[bytes]:
    """An IPFIX exporter booted 60 days before `now`; a flow from now-40 s to now-10 s."""
    init_ms = now * 1000 - UP_60_DAYS_MS
    start, end = UP_60_DAYS_MS - 40_000, UP_60_DAYS_MS - 10_000  # uptime, beyond 2**32: wraps
    if in_data:  # MikroTik: IE 160 inside every data record
        tmpl = ipfix_set(2, ipfix_template(300, [(160, 8, 0), *FLOW_FIELDS]))
        data = ipfix_set(300, uint(init_ms, 8) + _flow(start, end))
        return [ipfix_message([tmpl, data], now)]
    opt = ipfix_set(3, ipfix_options_template(301, [(149, 4, 0)], [(160, 8, 0)]))
    opt_data = ipfix_set(301, uint(0, 4) + uint(init_ms, 8))
    tmpl = ipfix_set(2, ipfix_template(300, FLOW_FIELDS))
    return [ipfix_message([opt, opt_data, tmpl], now), ipfix_message([ipfix_set(300, _flow(start, end))], now)]


def _decode(packets: list[bytes], received_at: int = NOW, **kwargs: object) -> tuple[FlowBatch, FlowDecoder]:
    decoder = FlowDecoder(**kwargs)  # type: ignore[arg-type]
    batch = decoder.decode([(p, EXPORTER, received_at) for p in packets])
    return batch, decoder


@pytest.mark.parametrize("in_data", [False, True], ids=["options-ie160", "in-data-ie160"])
def test_ipfix_exporter_up_60_days(in_data: bool) -> None:
    # Skew check off: the unwrapping alone must be right, not rescued by reception time.
    batch, decoder = _decode(_ipfix_up_60_days(in_data), max_clock_skew_s=0)
    assert batch.n == 1
    assert batch["timestamp_start"].tolist() == [NOW - 40]
    assert batch["timestamp_end"].tolist() == [NOW - 10]
    assert decoder.stats.total("time_implausible") == 0


def test_ipfix_in_data_boot_time_is_remembered_for_the_exporter() -> None:
    """A later template without IE 160 still uses the boot time the records announced."""
    decoder = FlowDecoder(max_clock_skew_s=0)
    decoder.decode([(p, EXPORTER, NOW) for p in _ipfix_up_60_days(in_data=True)])
    tmpl = ipfix_set(2, ipfix_template(302, FLOW_FIELDS))
    data = ipfix_set(302, _flow(UP_60_DAYS_MS - 5_000, UP_60_DAYS_MS - 1_000))
    batch = decoder.decode([(ipfix_message([tmpl, data], NOW), EXPORTER, NOW)])
    assert batch["timestamp_start"].tolist() == [NOW - 5]


def test_v9_exporter_up_60_days_and_records_after_the_header() -> None:
    uptime = UP_60_DAYS_MS % 2**32
    tmpl = ipfix_set(0, v9_template(260, [(f[0], f[1]) for f in FLOW_FIELDS]))
    # One flow 30 s old (its uptime before the wrap), one stamped 0.5 s after the header.
    data = ipfix_set(260, _flow(uptime - 30_000, uptime - 20_000) + _flow(uptime + 200, uptime + 500))
    batch, _ = _decode([v9_packet([tmpl, data], NOW, UP_60_DAYS_MS)], max_clock_skew_s=0)
    assert batch["timestamp_start"].tolist() == [NOW - 30, NOW]
    assert batch["timestamp_end"].tolist() == [NOW - 20, NOW]


def test_v5_record_slightly_after_the_header_is_not_49_days_old() -> None:
    packet = v5_packet([{"first": 10_000_100, "last": 10_000_400}], NOW, 10_000_000)
    batch, _ = _decode([packet], max_clock_skew_s=0)
    assert batch["timestamp_start"].tolist() == [NOW]


@pytest.mark.parametrize(("clock", "label"), [(1_000, "1970"), (NOW - 101 * 86_400, "101 days behind"),
                                              (NOW + 101 * 86_400, "101 days ahead")])
def test_implausible_exporter_clock_gets_the_reception_time(clock: int, label: str) -> None:
    tmpl = ipfix_set(0, v9_template(260, [(f[0], f[1]) for f in FLOW_FIELDS]))
    data = ipfix_set(260, _flow(50_000, 60_000) * 3)
    batch, decoder = _decode([v9_packet([tmpl, data], clock, 70_000)])
    assert batch["timestamp_start"].tolist() == [NOW] * 3, label
    assert batch["timestamp_end"].tolist() == [NOW] * 3
    assert decoder.stats.counts[EXPORTER]["time_implausible"] == 3


def test_times_within_the_skew_are_kept() -> None:
    """A flow that started an hour ago (a long flow's active timeout) is believed."""
    tmpl = ipfix_set(0, v9_template(260, [(f[0], f[1]) for f in FLOW_FIELDS]))
    data = ipfix_set(260, _flow(100_000, 3_700_000))
    batch, decoder = _decode([v9_packet([tmpl, data], NOW, 3_700_000)])
    assert MAX_CLOCK_SKEW_S > 3600
    assert batch["timestamp_start"].tolist() == [NOW - 3600]
    assert decoder.stats.total("time_implausible") == 0


def test_absolute_times_out_of_range_are_counted() -> None:
    """flowStartMilliseconds of 2**64-1 and flowEndSeconds of 0: reception time instead."""
    tmpl = ipfix_set(2, ipfix_template(300, [(8, 4, 0), (152, 8, 0), (151, 4, 0)]))
    data = ipfix_set(300, uint(1, 4) + uint(2**64 - 1, 8) + uint(0, 4))
    batch, decoder = _decode([ipfix_message([tmpl, data], NOW)])
    assert batch["timestamp_start"].tolist() == [NOW]
    assert decoder.stats.total("time_implausible") == 1


# ------------------------------------------------------------- RouterOS v6 sampling quirk
LE = {EXPORTER: ExporterQuirks(little_endian_sampling=True)}


@pytest.mark.parametrize("length", [2, 4])
def test_little_endian_sampling_in_options_data(length: int) -> None:
    opt = ipfix_set(1, v9_options_template(270, [(1, 4)], [(34, length)]))
    opt_data = ipfix_set(270, uint(0, 4) + (1000).to_bytes(length, "little"))
    tmpl = ipfix_set(0, v9_template(260, [(f[0], f[1]) for f in FLOW_FIELDS]))
    data = ipfix_set(260, _flow(50_000, 60_000))
    batch, decoder = _decode([v9_packet([opt, opt_data, tmpl, data], NOW, 70_000)], quirks=LE)
    assert batch["sampling_rate"].tolist() == [1000]  # not x65,536 for the 2-byte field
    assert batch["packets"].tolist() == [3000]
    assert decoder.stats.total("sampling_rate_ignored") == 0


@pytest.mark.parametrize("length", [2, 4])
def test_little_endian_sampling_in_data_records(length: int) -> None:
    tmpl = ipfix_set(2, ipfix_template(300, [(34, length, 0), *FLOW_FIELDS]))
    data = ipfix_set(300, (512).to_bytes(length, "little") + _flow(50_000, 60_000))
    batch, _ = _decode([ipfix_message([tmpl, data], NOW)], quirks=LE)
    assert batch["sampling_rate"].tolist() == [512]


def test_little_endian_sampling_in_the_v5_header() -> None:
    sampling = struct.unpack("<H", struct.pack(">H", 100))[0]  # 100, as RouterOS v6 sends it
    packet = v5_packet([{"first": 50_000, "last": 60_000}], NOW, 70_000, sampling=sampling)
    batch, _ = _decode([packet], quirks=LE)
    assert batch["sampling_rate"].tolist() == [100]
    plain, _ = _decode([packet])
    assert plain["sampling_rate"].tolist() == [(100 << 8) & 0x3FFF]  # what the quirk fixes


# -------------------------------------------------------------- through both flow stores
@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FlowStore]:
    """A migrated store of each kind (as in test_storage_backends)."""
    with migrated_store(request.param, tmp_path) as opened:
        yield opened


def test_60_day_exporter_flows_are_stored_with_todays_time(store: FlowStore) -> None:
    now = int(time.time())
    batch, _ = _decode(_ipfix_up_60_days(in_data=False, now=now), received_at=now)
    store.insert(batch)
    rows = store.query("SELECT toUInt32(timestamp_start), toUInt32(timestamp_end) FROM flowenricher.flows",
                       "TabSeparated").decode().split()
    start, end = int(rows[0]), int(rows[1])
    assert abs(start - (now - 40)) <= 2 and abs(end - (now - 10)) <= 2
