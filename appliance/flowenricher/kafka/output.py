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

**Sent twice, stored once.** Every record carries its origin (kafka/blocks.py, version 2):
this collector's id and the batch's number, both kept in the spool directory
(:class:`BatchNumbers`), with the partition and first row.  The spool keeps records as
they were encoded, each with its partition (:func:`pack_frames`), so a block sent
again after a crash (its records acknowledged, the crash before its file was removed),
or a record purged at shutdown that had in fact reached a broker, carries the same
origin as the first copy, and the storers drop the second one (kafka/input.py,
``kafka.dedup_window_records``).  Batches spooled before the partition count was known
are kept whole with their number and split when replayed; split by the same partition
count, they give the same records (a partition added meanwhile and a crash during their
replay can give a copy other origins).  What can lose a flow: a crash (kill -9, power) with
records in the producer's memory, at most ``buffer_max_bytes``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..batch import FlowBatch
from ..common.private import write_atomic
from ..handoff import Item
from ..storage.spool import Spool, SpoolEntry
from .blocks import (
    MAX_RECORD_BYTES,
    Origin,
    RecordError,
    decode_record,
    encode_record,
    encode_records,
    parse_origin,
    record_origin,
    record_rows,
    split_by_partition,
)

log = logging.getLogger(__name__)

SPOOL_DIR = "kafka-spool"
METADATA_EVERY_S = 5.0
"""How often the topic's partition count is asked for while unknown (every minute once known)."""
REPLAY_IN_FLIGHT = 8
"""Spooled blocks handed to the producer at once during a replay."""
FLUSH_S = 30.0
"""What the producer gets at shutdown to deliver what it holds before the rest is spooled."""
TOKEN = "kafka"  # the spool's file-name token (the spool is the store's design; no insert uses it here)
ORIGIN_FILE = "collector.origin"
"""This collector's id and the batch numbers it reserved, in the spool directory (the
spool ignores names that are not its own)."""
RESERVE = 4096
"""Batch numbers reserved per write of :data:`ORIGIN_FILE`: a restart continues after
the last reservation, so a number is never given twice."""

_FRAMES = b"FES\x01"
_FRAME = struct.Struct("<iI")  # partition (UNSPLIT: not split yet), record length
UNSPLIT = -1
Frame = tuple[int, bytes]
"""A spooled record and its partition (:data:`UNSPLIT`: a whole batch, split when replayed)."""


def pack_frames(frames: list[Frame]) -> bytes:
    """Records and their partitions as one spool block."""
    return b"".join([_FRAMES, *(_FRAME.pack(p, len(r)) + r for p, r in frames)])


def unpack_frames(block: bytes) -> list[Frame]:
    """What :func:`pack_frames` wrote; a bare record (a spool of an earlier version) is one
    unsplit frame.  Raises RecordError for a truncated block."""
    if not block.startswith(_FRAMES):
        return [(UNSPLIT, block)]
    frames, pos = [], len(_FRAMES)
    while pos < len(block):
        if pos + _FRAME.size > len(block):
            raise RecordError(f"spooled block: truncated frame header at byte {pos}")
        partition, size = _FRAME.unpack_from(block, pos)
        pos += _FRAME.size
        if pos + size > len(block):
            raise RecordError(f"spooled block: frame at byte {pos - _FRAME.size} runs past the end")
        frames.append((partition, block[pos:pos + size]))
        pos += size
    return frames


class BatchNumbers:
    """This collector's id (16 random bytes, made once) and its batch numbers, never given
    twice: :data:`RESERVE` numbers at a time are written to `path` before any is used."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open(path, encoding="utf-8") as handle:
                state = json.load(handle)
            self.collector = bytes.fromhex(state["collector"])
            self._next = int(state["reserved"])
            if len(self.collector) != 16 or self._next < 0:
                raise ValueError("collector is not 16 bytes or reserved is negative")
        except FileNotFoundError:
            self.collector, self._next = secrets.token_bytes(16), 0
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise RuntimeError(f"kafka: {path}: not a collector origin file ({err}); move it away to start as a "
                               "new collector") from err
        self._reserved = self._next
        log.info("kafka: collector id %s, batches from %d", self.collector.hex(), self._next)

    def next(self) -> int:
        if self._next >= self._reserved:
            self._reserved = self._next + RESERVE
            write_atomic(Path(self.path), json.dumps({"collector": self.collector.hex(), "reserved": self._reserved}))
        number = self._next
        self._next += 1
        return number


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
        self.numbers = BatchNumbers(os.path.join(settings.spool_dir, ORIGIN_FILE))
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
        number = self.numbers.next()
        if self._partitions is None:  # kept whole under its number, split when replayed
            whole = encode_record(item, Origin(self.numbers.collector, number, 0, 0))
            self._spool([(UNSPLIT, whole)], "partition count not known yet")
            return
        records = self._records(item, number, self._partitions)
        if len(self.spool):
            self._spool(records, "behind spooled blocks")
            return
        rest = self._produce(records)
        if rest:
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

    def _records(self, batch: FlowBatch, number: int, partitions: int) -> list[Frame]:
        """Batch `number` as records, each with its partition and origin."""
        collector = self.numbers.collector
        return [(p, record) for p, rows in split_by_partition(batch, partitions)
                for record in encode_records(rows, self._record_bytes, Origin(collector, number, partitions, p))]

    def _produce(self, frames: list[Frame], replay: _Replay | None = None) -> list[Frame]:
        """Hands `frames` to the producer; returns those it refused (its memory full)."""
        for i, (partition, record) in enumerate(frames):
            try:
                self._producer.produce(self.settings.topic, record, partition=partition,
                                       on_delivery=self._on_delivery(replay))
            except BufferError:
                return frames[i:]
            if replay is not None:
                replay.records += 1
        return []

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
            self._spool([(int(message.partition()), value)], f"delivery failed: {err}")
            if replay is not None:
                replay.records -= 1
                replay.failed = True
                self._replay_done(replay)
        return delivered

    def _spool(self, frames: list[Frame], why: str) -> None:
        """`frames` as one spool block, as they are (a replay sends the same records)."""
        if not len(self.spool):
            log.warning("kafka: spooling flows to %s: %s", self.settings.spool_dir, why)
        rows = sum(record_rows(record) for _, record in frames)
        self.spooled.inc(rows)
        self.spool.push(pack_frames(frames), rows, TOKEN)

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
                frames = self._split(unpack_frames(self.spool.read(entry)), self._partitions)
            except (RecordError, Exception) as err:  # a damaged file: set aside, never replayed blindly
                self.spool.reject(entry, f"not a flowenricher block: {err}")
                continue
            replay = _Replay(entry, 0)
            self._replaying[entry.seq] = replay
            rest = self._produce(frames, replay)
            if rest:  # the producer is full again: the records it did not take wait
                self._requeue_rest(entry, rest)
                return
            if replay.records == 0:
                self._replay_done(replay)

    def _split(self, frames: list[Frame], partitions: int) -> list[Frame]:
        """Spooled frames with every unsplit batch split, under the number it was spooled
        with (a bare record of an earlier version gets a new one)."""
        out: list[Frame] = []
        for partition, record in frames:
            if partition != UNSPLIT:
                out.append((partition, record))
                continue
            origin = record_origin(record)
            number = parse_origin(origin).batch if origin is not None else self.numbers.next()
            out += self._records(decode_record(record), number, partitions)
        return out

    def _requeue_rest(self, entry: SpoolEntry, rest: list[Frame]) -> None:
        """Replace a block partly handed over by the records it did not take.  The rest is
        written before the block is removed: a crash between the two sends records twice,
        under their origins (dropped by the storers), rather than losing them."""
        # Pushed at the end: batches spooled after this block now come before its rest
        # (one block's rows out of order; nothing lost or doubled).
        self.spool.push(pack_frames(rest), sum(record_rows(r) for _, r in rest), TOKEN)
        self.spool.remove(entry)
        self._replaying.pop(entry.seq, None)

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

