"""The Kafka output of `flowenricher run` with ``kafka.role: collect``: the flows the UDP
workers decoded, produced to a topic as column blocks (kafka/blocks.py), partitioned by
destination address, with a spool on disk for when no broker takes them.

The producer is idempotent with ``acks=all`` (librdkafka: a retried send is written once
per partition, in order) and compresses with ZSTD (docs/performance.md: 21 bytes per flow
against 157 raw).  Each batch is split by :func:`~.blocks.address_partitions` (``dst_addr``) and each
partition's rows become one record (more when over :data:`~.blocks.MAX_RECORD_BYTES` or a
quarter of ``kafka.buffer_max_bytes``: a record bigger than the producer's memory could
never be sent), sent to that partition explicitly.

**Broker unreachable.** Records never time out in the producer (``message.timeout.ms``
0): while the brokers are away they wait in its memory, up to ``kafka.buffer_max_bytes``.
When that is full (the producer refuses a record), the rows not taken and every batch
after them go to the spool (storage/spool.py, its own directory, bounded by
``kafka.spool_max_bytes``; beyond it the oldest blocks are dropped, counted in
``flowenricher_kafka_rows_dropped_total{reason="size"}`` and logged).  Nothing bypasses a
non-empty spool, and the spool is replayed only once the producer's memory is empty
(every record before it acknowledged), oldest block first, a few blocks at a time, each
removed once all its records are acknowledged.  So the order of batches is kept, and a
flow is either acknowledged by the brokers, in the producer's memory, or in the spool.

A record the brokers refuse for good (topic deleted, not authorised) is spooled too and
tried again later.  At shutdown the producer gets ``FLUSH_S`` to deliver what it holds;
what it could not is purged and spooled, so a restart replays it.

What can still double a flow: a block removed from the spool only after its records
were acknowledged, so a crash between the two sends it again; and records purged at
shutdown while in flight may have reached the broker.  What can lose one: a crash
(kill -9, power) with records in the producer's memory, at most ``buffer_max_bytes``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..batch import FlowBatch
from ..handoff import Item
from ..storage.spool import Spool, SpoolEntry
from .blocks import MAX_RECORD_BYTES, RecordError, decode_record, encode_record, encode_records, split_by_partition

log = logging.getLogger(__name__)

SPOOL_DIR = "kafka-spool"
METADATA_EVERY_S = 5.0
"""How often the topic's partition count is asked for while unknown (every minute once known)."""
REPLAY_IN_FLIGHT = 8
"""Spooled blocks handed to the producer at once during a replay."""
FLUSH_S = 30.0
"""What the producer gets at shutdown to deliver what it holds before the rest is spooled."""
TOKEN = "kafka"  # the spool's file-name token (the spool is the store's design; no insert uses it here)


@dataclass(frozen=True)
class KafkaOutputSettings:
    """What the output needs (built from the config's ``kafka`` and ``storage`` blocks)."""

    brokers: tuple[str, ...]
    topic: str
    spool_dir: str
    spool_max_bytes: int = 1024 ** 3
    buffer_max_bytes: int = 64 * 1024 * 1024
    client_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Replay:
    entry: SpoolEntry
    records: int
    failed: bool = False


class KafkaOutput:
    """Produces batches to `settings.topic`.  Not thread-safe: everything (put, idle, the
    producer's callbacks, which run inside ``poll``) happens in the one thread of the
    HandOff that owns it."""

    def __init__(self, settings: KafkaOutputSettings, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from confluent_kafka import Producer

        self.settings = settings
        self._clock = clock
        options = {
            "bootstrap.servers": ",".join(settings.brokers),
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "zstd",
            "linger.ms": 20,
            "message.timeout.ms": 0,
            "queue.buffering.max.kbytes": max(1, settings.buffer_max_bytes // 1024),
            "queue.buffering.max.messages": 1_000_000,
            "logger": logging.getLogger("flowenricher.kafka.client"),
            "error_cb": self._client_error,
            **settings.client_options,
        }
        self._producer = Producer(options)
        # A record larger than the producer's memory would be refused however empty it is.
        self._record_bytes = max(4096, min(MAX_RECORD_BYTES, settings.buffer_max_bytes // 4))
        os.makedirs(settings.spool_dir, exist_ok=True)
        self.spool = Spool(settings.spool_dir, settings.spool_max_bytes, 0, registry=registry,
                           metrics_prefix="flowenricher_kafka_")
        self._partitions: int | None = None
        self._metadata_at = float("-inf")
        self._said_at = float("-inf")
        self._replaying: dict[int, _Replay] = {}  # spool seq -> what is in flight of it
        self.produced = Counter("flowenricher_kafka_produced_flows_total",
                                "Flows the brokers acknowledged (acks=all)", registry=registry)
        self.records = Counter("flowenricher_kafka_produced_records_total",
                               "Records the brokers acknowledged", registry=registry)
        self.spooled = Counter("flowenricher_kafka_spooled_flows_total",
                               "Flows written to the spool because the producer could not take them",
                               registry=registry)
        self.replayed = Counter("flowenricher_kafka_replayed_flows_total",
                                "Spooled flows the brokers later acknowledged", registry=registry)
        self.errors = Counter("flowenricher_kafka_delivery_errors_total",
                              "Records the brokers refused for good (spooled, tried again later)", registry=registry)
        self.queued = Gauge("flowenricher_kafka_producer_queued_records",
                            "Records in the producer's memory, not yet acknowledged", registry=registry)
        self.queued.set_function(lambda: len(self._producer))
        self._refresh_metadata(timeout=5.0)

    # -- the HandOff's calls -------------------------------------------------------------

    def process(self, item: Item) -> None:
        """One batch from the workers: produced, or spooled behind what already waits."""
        assert isinstance(item, FlowBatch)
        self._producer.poll(0)
        if not item.n:
            return
        if len(self.spool) or self._partitions is None:
            self._spool(item, "behind spooled blocks" if len(self.spool) else "partition count not known yet")
            return
        rest = self._produce(item, self._partitions)
        if rest is not None:
            self._spool(rest, "the producer's memory is full (brokers unreachable?)")

    def idle(self, now: float) -> None:
        """About every 0.1 s: deliveries, metadata, and the spool's replay."""
        self._producer.poll(0)
        since = self._clock() - self._metadata_at
        if since >= 60.0 or (self._partitions is None and since >= METADATA_EVERY_S):
            self._refresh_metadata(timeout=1.0)
        self.spool.expire()
        self._replay()
        if len(self.spool) and self._clock() - self._said_at >= 10.0:
            self._said_at = self._clock()
            held = self.spool.stats()
            log.info("kafka: %d flows in %d spooled blocks; %d records in the producer's memory, %d blocks replaying",
                     held.rows, held.files, len(self._producer), len(self._replaying))

    def finish(self) -> None:
        """At shutdown: deliver what is held, spool what could not be."""
        left = self._producer.flush(FLUSH_S)
        if left:
            log.warning("kafka: %d records not acknowledged after %.0f s; spooling them", left, FLUSH_S)
            self._producer.purge(in_queue=True, in_flight=True)
            self._producer.poll(1.0)
            self._producer.flush(5.0)
        held = self.spool.stats()
        if held.files:
            log.warning("kafka: %d flows in %d blocks stay in the spool %s for the next start", held.rows,
                        held.files, self.settings.spool_dir)

    # -- producing -----------------------------------------------------------------------

    def _produce(self, batch: FlowBatch, partitions: int, replay: _Replay | None = None) -> FlowBatch | None:
        """Every partition's rows as records; the rows the producer refused (its memory
        full), or None when it took all."""
        pending = [(p, encode_records(rows, self._record_bytes)) for p, rows in split_by_partition(batch, partitions)]
        for i, (partition, records) in enumerate(pending):
            for j, record in enumerate(records):
                try:
                    self._producer.produce(self.settings.topic, record, partition=partition,
                                           on_delivery=self._on_delivery(replay))
                except BufferError:
                    left = [decode_record(r) for r in records[j:]]
                    left += [decode_record(r) for _, rest in pending[i + 1:] for r in rest]
                    return FlowBatch.concat(left)
                if replay is not None:
                    replay.records += 1
        return None

    def _on_delivery(self, replay: _Replay | None) -> Callable[[Any, Any], None]:
        def delivered(err: Any, message: Any) -> None:
            value = message.value() or b""
            if err is None:
                rows = record_rows(value)
                self.records.inc()
                self.produced.inc(rows)
                if replay is not None:
                    self.replayed.inc(rows)
                    replay.records -= 1
                    self._replay_done(replay)
                return
            self.errors.inc()
            log.error("kafka: record to %s[%s] not delivered (%s); spooling it", message.topic(),
                      message.partition(), err)
            try:
                self._spool(decode_record(value), f"delivery failed: {err}")
            except RecordError:  # cannot happen: we encoded it
                log.exception("kafka: an undelivered record does not decode")
            if replay is not None:
                replay.records -= 1
                replay.failed = True
                self._replay_done(replay)
        return delivered

    def _spool(self, batch: FlowBatch, why: str) -> None:
        if not len(self.spool):
            log.warning("kafka: spooling flows to %s: %s", self.settings.spool_dir, why)
        self.spooled.inc(batch.n)
        self.spool.push(encode_record(batch), batch.n, TOKEN)

    def _replay(self) -> None:
        """Hand the oldest spooled blocks to the producer once its memory is empty."""
        if self._partitions is None or (len(self._producer) and not self._replaying):
            return
        for entry in self.spool.entries():
            if len(self._replaying) >= REPLAY_IN_FLIGHT:
                return
            if entry.seq in self._replaying:
                continue
            try:
                batch = decode_record(self.spool.read(entry))
            except (RecordError, Exception) as err:  # a damaged file: set aside, never replayed blindly
                self.spool.reject(entry, f"not a flowenricher block: {err}")
                continue
            replay = _Replay(entry, 0)
            self._replaying[entry.seq] = replay
            rest = self._produce(batch, self._partitions, replay)
            if rest is not None:  # the producer is full again: the rows it did not take wait
                self._requeue_rest(entry, rest)
                return
            if replay.records == 0:
                self._replay_done(replay)

    def _requeue_rest(self, entry: SpoolEntry, rest: FlowBatch) -> None:
        """Replace a block partly handed over by the rows it did not take (same place)."""
        self.spool.remove(entry)
        self._replaying.pop(entry.seq, None)
        # Pushed at the end: batches spooled after this block now come before its rest
        # (one block's rows out of order; nothing lost or doubled).
        self.spool.push(encode_record(rest), rest.n, TOKEN)

    def _replay_done(self, replay: _Replay) -> None:
        if replay.records > 0 or self._replaying.get(replay.entry.seq) is not replay:
            return
        del self._replaying[replay.entry.seq]
        # Every record acknowledged, or (failed) spooled again on its own: the block is done.
        self.spool.remove(replay.entry)
        if not len(self.spool):
            log.info("kafka: spool replayed; producing directly again")

    # -- the brokers ---------------------------------------------------------------------

    def _refresh_metadata(self, timeout: float) -> None:
        self._metadata_at = self._clock()
        try:
            topic = self._producer.list_topics(self.settings.topic, timeout=timeout).topics.get(self.settings.topic)
        except Exception as err:  # KafkaException: no broker answered in time
            if self._partitions is None:
                log.warning("kafka: no metadata for topic %s yet: %s", self.settings.topic, err)
            return
        if topic is None or topic.error is not None or not topic.partitions:
            log.warning("kafka: topic %s unavailable: %s", self.settings.topic, None if topic is None else topic.error)
            return
        count = len(topic.partitions)
        if count != self._partitions:
            log.info("kafka: producing to %s, %d partitions", self.settings.topic, count)
            self._partitions = count

    def _client_error(self, err: Any) -> None:
        """librdkafka's errors (brokers down, a fatal idempotence error): logged; the
        records wait, and the spool takes over when the memory is full."""
        if getattr(err, "fatal", lambda: False)():
            log.error("kafka: fatal producer error: %s", err)
        else:
            log.warning("kafka: %s", err)

    def close(self) -> None:
        self._producer.poll(0)


def record_rows(value: bytes) -> int:
    """The row count in a record's header (0 for anything else)."""
    return int.from_bytes(value[4:8], "little") if len(value) >= 8 else 0
