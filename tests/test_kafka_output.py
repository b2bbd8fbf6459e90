"""The collector's Kafka output with no broker to reach (kafka/output.py): flows go to
the spool, its limit drops the oldest blocks and says so, and a restart takes the spool
over.  Real client (confluent-kafka) pointed at a loopback port nothing listens on; the
whole path with a real broker is in tests/test_kafka_collect.py."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from support import free_port, sample_batch

from appliance.flowenricher.kafka.blocks import decode_record
from appliance.flowenricher.kafka.output import UNSPLIT, KafkaOutput, KafkaOutputSettings, unpack_frames


def _output(spool: Path, max_bytes: int, registry: CollectorRegistry) -> KafkaOutput:
    import socket

    nobody = f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    settings = KafkaOutputSettings((nobody,), "flows", str(spool), spool_max_bytes=max_bytes)
    return KafkaOutput(settings, registry=registry)


def test_unreachable_brokers_spool_then_overflow_is_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    output = _output(tmp_path / "spool", 10**9, registry)
    batches = [sample_batch(2000, seed=i) for i in range(3)]
    for batch in batches:
        output.process(batch)
    output.idle(0.0)
    assert output.spool.stats().rows == 6000
    text = generate_latest(registry).decode()
    assert "flowenricher_kafka_spooled_flows_total 6000.0" in text
    assert "flowenricher_kafka_spool_rows 6000.0" in text
    # No partition count yet: each batch is spooled whole, to be split when replayed.
    frames = [unpack_frames(output.spool.read(e)) for e in output.spool.entries()]
    assert [[(p, decode_record(r).n) for p, r in f] for f in frames] == [[(UNSPLIT, 2000)]] * 3

    # A restart takes the files over; a spool over its limit drops the oldest, counted and logged.
    registry = CollectorRegistry()
    one_block = output.spool.entries()[0].size
    with caplog.at_level(logging.ERROR):
        again = _output(tmp_path / "spool", int(one_block * 2.5), registry)
        assert again.spool.stats().rows == 6000
        again.process(sample_batch(2000, seed=9))
    text = generate_latest(registry).decode()
    assert 'flowenricher_kafka_rows_dropped_total{reason="size"} 4000.0' in text
    assert "DROPPED 4000 rows" in caplog.text
    assert again.spool.stats().rows == 4000


def test_records_purged_at_shutdown_are_spooled_as_they_were(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Records in the producer's memory at shutdown are purged and spooled byte for byte:
    sent again after a restart, they carry the origins of the first copy, which may have
    reached a broker (the storers drop such a copy: tests/test_kafka_dedup.py)."""
    from appliance.flowenricher.kafka import output as module

    monkeypatch.setattr(module, "FLUSH_S", 0.5)
    output = _output(tmp_path / "spool", 10**9, CollectorRegistry())
    output._partitions = 4  # as if the metadata had been read before the brokers went away
    sent: list[tuple[int, bytes]] = []
    real = output._producer

    class Recording:  # the real producer; records what it was given
        def produce(self, topic: str, value: bytes, partition: int, on_delivery: Any) -> None:
            sent.append((partition, value))
            real.produce(topic, value, partition=partition, on_delivery=on_delivery)

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def __len__(self) -> int:
            return len(real)

    output._producer = Recording()  # type: ignore[assignment]
    output.process(sample_batch(3000, seed=1))
    assert len(sent) >= 4 and output.spool.stats().rows == 0
    output.finish()
    spooled = [frame for e in output.spool.entries() for frame in unpack_frames(output.spool.read(e))]
    assert sorted(spooled) == sorted(sent)
