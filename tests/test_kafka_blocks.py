"""The records a collector produces (kafka/blocks.py): lossless round trip, hostile records
counted and never raised, the destination partition key, the origin that names a record
(version 2, version 1 still read), the collector's spool frames (kafka/output.py) and the
storer's window of origins (kafka/input.py)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import sample_batch

from appliance.flowenricher.batch import DictColumn, FlowBatch, ListColumn, str_to_addr
from appliance.flowenricher.config import parse_config
from appliance.flowenricher.errors import ConfigError
from appliance.flowenricher.kafka import blocks as b
from appliance.flowenricher.kafka.input import DedupWindow
from appliance.flowenricher.kafka.output import UNSPLIT, BatchNumbers, pack_frames, unpack_frames

ORIGIN = b.Origin(bytes(range(16)), 7, 6, 3)


def _same(x: FlowBatch, y: FlowBatch) -> None:
    assert x.n == y.n and sorted(x.set_columns()) == sorted(y.set_columns())
    for name in x.set_columns():
        u, v = x[name], y[name]
        if isinstance(u, np.ndarray):
            assert u.dtype == v.dtype and np.array_equal(u, v), name
        elif isinstance(u, DictColumn):
            assert u.strings() == v.strings(), name
        else:
            assert isinstance(u, ListColumn)
            assert [u.row(i) for i in range(x.n)] == [v.row(i) for i in range(y.n)], name


def test_round_trip_keeps_every_column_and_type() -> None:
    batch = sample_batch(3000, seed=4)
    _same(batch, b.decode_record(b.encode_record(batch)))
    _same(FlowBatch(0), b.decode_record(b.encode_record(FlowBatch(0))))


def test_big_batches_are_cut_under_the_record_limit() -> None:
    batch = sample_batch(20_000, seed=5)
    records = b.encode_records(batch, max_bytes=200_000)
    assert len(records) > 1 and all(len(r) <= 200_000 for r in records)
    _same(batch, FlowBatch.concat([b.decode_record(r) for r in records]))


def test_origin_is_carried_and_version_1_still_reads() -> None:
    batch = sample_batch(500, seed=8)
    v1, v2 = b.encode_record(batch), b.encode_record(batch, ORIGIN)
    assert (v1[3], v2[3]) == (1, 2)
    _same(batch, b.decode_record(v1))
    _same(batch, b.decode_record(v2))
    assert b.record_origin(v1) is None
    packed = b.record_origin(v2)
    assert packed is not None and b.parse_origin(packed) == ORIGIN
    assert b.record_rows(v1) == b.record_rows(v2) == 500
    with pytest.raises(b.RecordError, match="origin"):
        b.record_origin(v2[:20])


def test_cut_records_have_their_own_origins_the_same_each_time() -> None:
    batch = sample_batch(20_000, seed=5)
    records = b.encode_records(batch, max_bytes=200_000, origin=ORIGIN)
    origins = [b.parse_origin(b.record_origin(r) or b"") for r in records]
    assert len(records) > 1 and len(set(origins)) == len(records)
    starts = [o.first_row for o in origins]
    assert starts == [0, *np.cumsum([b.record_rows(r) for r in records])[:-1].tolist()]
    assert b.encode_records(batch, max_bytes=200_000, origin=ORIGIN) == records


def test_spool_frames_keep_records_and_partitions_as_they_are() -> None:
    records = b.encode_records(sample_batch(3000, seed=9), max_bytes=100_000, origin=ORIGIN)
    frames = [(i % 4, r) for i, r in enumerate(records)]
    assert unpack_frames(pack_frames(frames)) == frames
    legacy = b.encode_record(sample_batch(5, seed=1))  # a spool file of the version before frames
    assert unpack_frames(legacy) == [(UNSPLIT, legacy)]
    with pytest.raises(b.RecordError, match="past the end"):
        unpack_frames(pack_frames(frames)[:-1])


def test_batch_numbers_continue_after_a_restart_never_reused(tmp_path: Path) -> None:
    first = BatchNumbers(str(tmp_path / "origin"))
    used = [first.next() for _ in range(5)]
    again = BatchNumbers(str(tmp_path / "origin"))  # a kill -9 after five batches
    assert again.collector == first.collector
    assert again.next() > max(used)
    (tmp_path / "bad").write_text("{}")
    with pytest.raises(RuntimeError, match="bad: not a collector origin file"):
        BatchNumbers(str(tmp_path / "bad"))


def test_window_drops_a_copy_within_its_size_and_judges_a_reread_the_same() -> None:
    window = DedupWindow(size=10, slack=5)
    a, c = b"a" * 36, b"c" * 36
    assert [window.copy(o, k) for o, k in [(0, a), (4, a), (12, c)]] == [False, True, False]
    # Offsets 4 and 12 read again (a seek back within the slack): the same answers.
    assert [window.copy(4, a), window.copy(12, c)] == [True, False]
    assert [window.copy(15, a), window.copy(25, a), window.copy(36, a)] == [False, True, False]


def test_a_column_of_a_newer_collector_is_skipped() -> None:
    record = b.encode_record(sample_batch(10, seed=1))
    magic, version, n, count = b._HEAD.unpack_from(record, 0)
    extra = bytes([9]) + b"new_thing" + struct.pack("<BI", 1, 3 * n) + bytes(3 * n)
    patched = b._HEAD.pack(magic, version, n, count + 1) + record[b._HEAD.size:] + extra
    _same(sample_batch(10, seed=1), b.decode_record(patched))


@pytest.mark.parametrize("mutate", [
    lambda r: r[:-1],  # truncated
    lambda r: r + b"\0",  # trailing bytes
    lambda r: b"XYZ" + r[3:],  # not ours
    lambda r: r[:3] + bytes([3]) + r[4:],  # another version
    lambda r: r[:4] + struct.pack("<I", 11) + r[8:],  # rows disagree with the columns
])
def test_malformed_records_are_refused(mutate: object) -> None:
    record = b.encode_record(sample_batch(10, seed=2))
    with pytest.raises(b.RecordError):
        b.decode_record(mutate(record))  # type: ignore[operator]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 2000))
def test_hostile_records_are_counted_never_raised(noise: bytes, cut: int) -> None:
    good = b.encode_record(sample_batch(3, seed=3))
    decoder = b.BlockDecoder()
    batch = decoder.decode([noise, good[:cut] + noise, good, None])
    assert batch.n >= 3
    assert decoder.stats.dropped["kafka"][b.MALFORMED] >= 1


def test_address_partitions_is_stable_and_keeps_a_destination_together() -> None:
    rows = np.frombuffer(b"".join(str_to_addr(a) for a in ("192.0.2.1", "2001:db8::1", "198.51.100.7")),
                         np.uint8).reshape(-1, 16)
    # Fixed values: a change of the key would move every destination to another storer
    # while collectors of the old and new versions run side by side.
    by_dst = FlowBatch(3, {"dst_addr": rows})
    again = FlowBatch(3, {"dst_addr": rows.copy()})
    assert b.address_partitions(by_dst, 12).tolist() == b.address_partitions(again, 12).tolist()
    assert b.address_partitions(by_dst, 1000).tolist() == EXPECTED_1000
    # The source key is the same hash of the other column (one definition).
    by_src = FlowBatch(3, {"src_addr": rows, "dst_addr": rows[::-1].copy()})
    assert b.address_partitions(by_src, 1000, column="src_addr").tolist() == EXPECTED_1000
    with pytest.raises(ValueError, match="not 'proto'"):
        b.address_partitions(by_src, 6, column="proto")
    batch = sample_batch(5000, seed=6)
    seen: dict[bytes, int] = {}
    for partition, part in b.split_by_partition(batch, 6):
        for row in part["dst_addr"]:
            assert seen.setdefault(row.tobytes(), partition) == partition
    assert sum(p.n for _, p in b.split_by_partition(batch, 6)) == batch.n
    assert len({p for _, p in b.split_by_partition(batch, 6)}) == 6
    sources: dict[bytes, int] = {}
    for partition, part in b.split_by_partition(batch, 6, column="src_addr"):
        for row in part["src_addr"]:
            assert sources.setdefault(row.tobytes(), partition) == partition


EXPECTED_1000 = [902, 465, 999]  # 192.0.2.1, 2001:db8::1, 198.51.100.7


def test_config_roles() -> None:
    assert parse_config({}).kafka.role == "store"
    collect = parse_config({"kafka": {"enabled": True, "role": "collect", "brokers": ["127.0.0.1:9092"]}})
    assert collect.kafka.role == "collect"
    assert parse_config({"kafka": {"format": "flowenricher"}}).kafka.records_per_poll() == 100
    assert parse_config({}).kafka.records_per_poll() == 50_000
    with pytest.raises(ConfigError) as err:
        parse_config({"kafka": {"enabled": True, "role": "collect", "brokers": ["127.0.0.1:9092"],
                                "start_from": "latest"}})
    assert "config: $.kafka.start_from: start_from is a consumer setting (role store); role collect produces" \
        in str(err.value)
    with pytest.raises(ConfigError, match="dedup_window_records is a consumer setting"):
        parse_config({"kafka": {"enabled": True, "role": "collect", "brokers": ["127.0.0.1:9092"],
                                "dedup_window_records": 5}})
    assert parse_config({}).kafka.dedup_window_records == 10_000
    assert "dedup_window_records" not in collect.kafka.model_dump()


def test_detection_topic_is_a_storer_setting() -> None:
    assert parse_config({}).kafka.detection_topic is None
    store = parse_config({"kafka": {"enabled": True, "brokers": ["127.0.0.1:9092"], "detection_topic": "det"}})
    assert store.kafka.detection_topic == "det"
    with pytest.raises(ConfigError) as err:
        parse_config({"kafka": {"enabled": True, "role": "collect", "brokers": ["127.0.0.1:9092"],
                                "detection_topic": "det"}})
    assert "config: $.kafka.detection_topic: detection_topic is a consumer setting (role store)" in str(err.value)
    with pytest.raises(ConfigError, match=r"\$\.kafka\.detection_topic"):
        parse_config({"kafka": {"detection_topic": ""}})
