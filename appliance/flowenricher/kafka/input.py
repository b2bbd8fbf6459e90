"""The Kafka input of `flowenricher run` (``kafka.enabled``, ``kafka.role: store``): flows
consumed from a topic in a consumer group, stored exactly once.  The records are goflow2's
FlowMessages (kafka/goflow2.py) or the column blocks a flowenricher ``collect`` process
produces (kafka/blocks.py), by ``kafka.format``.

Each poll takes up to ``kafka.block_records`` records (a flowenricher record holds many
flows: the limit counts records, not flows); each partition's records form one
*block* with a deterministic name ``<topic>:<partition>:<first>-<last>``.  A block is
decoded (kafka/goflow2.py), handed to the service like a batch from the UDP workers
(enrichment, detection, the writer), and given to the writer as a
:class:`~..handoff.Grouped` under that name, which becomes the ClickHouse
``insert_deduplication_token`` of its rows.

Exactly once, by this protocol per partition:

1. before a block is handed over, its range is committed to the group as *pending*: the
   committed offset stays at the first record not yet stored, and the commit's metadata
   lists the ranges in flight (``flowenricher:pending:100-199,200-299``);
2. once the store acknowledged a block (writer.add_group's callback), the committed
   offset moves past every block stored so far in order, with the ranges still in
   flight as metadata;
3. whoever owns the partition next (this process after a restart, or another member
   of the group after a rebalance or a kill -9) reads that metadata and consumes the
   pending ranges again **with the same cuts**, so their blocks carry the same tokens
   and the store keeps one copy of each, whether or not the first attempt reached it.

So a crash at any point costs neither a flow (nothing is committed before the store has
it) nor a duplicate (anything sent again has the token it had).  Blocks in flight per
partition are bounded (:data:`MAX_IN_FLIGHT`): with the store away the partition is paused
and Kafka holds the backlog, not this process.

The flows of a re-consumed range are seen again by detection (at least once there): a
detection window straddling a crash may count them twice.

**Records a collector sent twice** (``format: flowenricher``) have new offsets, so the
protocol above would store them twice.  Each carries its origin (kafka/blocks.py), and a
record whose origin is among the previous ``kafka.dedup_window_records`` records of its
partition (by offset) is dropped before decoding (:class:`DedupWindow`), counted in
``flowenricher_kafka_duplicate_records_total`` and ``..._duplicate_flows_total``.  The
decision depends only on the topic: on assignment the window is read back from the
records before the committed offset (:meth:`KafkaInput._fill_windows`), so a restarted
storer or the next owner drops what the previous one dropped, and a re-consumed range
is cut into the same blocks with the same rows.  Copies further apart than the window,
or a window the read-back could not finish (:data:`WINDOW_READ_S`; records expired by
retention), are stored twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..batch import FlowBatch
from ..decode.stats import DecodeStats
from .blocks import BlockDecoder, RecordError, record_origin, record_rows
from .goflow2 import GoFlow2Decoder

log = logging.getLogger(__name__)

PENDING = "flowenricher:pending:"
MAX_IN_FLIGHT = 4
"""Blocks per partition handed over and not yet stored, at most; then it is paused."""
WINDOW_READ_S = 30.0
"""How long an assignment may spend reading the deduplication windows back."""


@dataclass(frozen=True)
class KafkaInputSettings:
    """What the input needs (built from the config's ``kafka`` block, whose model holds the
    defaults: the two sizes have none here)."""

    brokers: tuple[str, ...]
    topic: str
    group_id: str
    block_records: int = field(kw_only=True)  # records per poll (KafkaSettings.records_per_poll)
    poll_timeout_s: float = 0.2
    start_from: str = "earliest"
    format: str = "goflow2"  # goflow2 (kafka/goflow2.py) or flowenricher (kafka/blocks.py)
    dedup_window_records: int = field(kw_only=True)  # flowenricher records: a copy within this many is dropped; 0: off
    client_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Block:
    """One partition's records handed over as one group (see the module docstring)."""

    partition: int
    first: int
    last: int
    batch: FlowBatch
    token: str


class DedupWindow:
    """The origins of a partition's latest records: :meth:`copy` says whether a record's
    origin was seen within the `size` offsets before it.  Entries are kept `slack`
    offsets longer, so a poll read again (a seek back) is judged as it was the first time."""

    def __init__(self, size: int, slack: int) -> None:
        self.size, self.slack = size, slack
        self._entries: deque[tuple[int, bytes]] = deque()
        self._latest: dict[bytes, int] = {}  # origin -> its latest offset among the entries

    def copy(self, offset: int, origin: bytes) -> bool:
        """Whether the record at `offset` is a copy; remembers it either way."""
        if self._entries and self._entries[-1][0] >= offset:  # read again: forget from there on
            while self._entries and self._entries[-1][0] >= offset:
                self._entries.pop()
            self._latest = {key: at for at, key in self._entries}
        seen = self._latest.get(origin)
        self._entries.append((offset, origin))
        self._latest[origin] = offset
        while self._entries[0][0] < offset - self.size - self.slack:
            at, key = self._entries.popleft()
            if self._latest.get(key) == at:
                del self._latest[key]
        return seen is not None and seen >= offset - self.size

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class _Partition:
    in_flight: list[tuple[int, int]] = field(default_factory=list)  # (first, last), in order
    stored: set[tuple[int, int]] = field(default_factory=set)
    replay: list[tuple[int, int]] = field(default_factory=list)  # pending ranges to cut again
    paused: bool = False
    window: DedupWindow | None = None  # format flowenricher with a window; else no deduplication


def is_error(message: Any) -> bool:
    """Whether a consumed message is an event rather than a record (logged); raises on a
    fatal client error."""
    error = message.error()
    if error is None:
        return False
    if not error.retriable() and error.fatal():
        raise RuntimeError(f"kafka: {error}")
    log.warning("kafka: %s", error)
    return True


def pending_metadata(ranges: list[tuple[int, int]]) -> str:
    return PENDING + ",".join(f"{a}-{b}" for a, b in ranges) if ranges else ""


def parse_pending(metadata: str | None) -> list[tuple[int, int]]:
    """The ranges a commit's metadata lists as in flight ([] for anything else)."""
    if not metadata or not metadata.startswith(PENDING):
        return []
    ranges = []
    for item in metadata[len(PENDING):].split(","):
        first, _, last = item.partition("-")
        if first.isdigit() and last.isdigit() and int(first) <= int(last):
            ranges.append((int(first), int(last)))
    return ranges


class KafkaInput:
    """Consumes `settings.topic` as a member of `settings.group_id`.  Not thread-safe: the
    service loop calls :meth:`poll`; the writer thread calls the stored-callbacks, which
    only queue work for the next :meth:`poll`."""

    def __init__(self, settings: KafkaInputSettings, stats: DecodeStats | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        from confluent_kafka import Consumer

        self.settings = settings
        self.decoder: GoFlow2Decoder | BlockDecoder = (BlockDecoder(stats) if settings.format == "flowenricher"
                                                       else GoFlow2Decoder(stats))
        self._dedup = settings.format == "flowenricher" and settings.dedup_window_records > 0
        self._parts: dict[int, _Partition] = defaultdict(self._new_partition)
        self._acks: list[tuple[int, tuple[int, int]]] = []
        self._acks_lock = threading.Lock()
        options = {
            "bootstrap.servers": ",".join(settings.brokers),
            "group.id": settings.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": settings.start_from,
            "partition.assignment.strategy": "cooperative-sticky",
            "logger": logging.getLogger("flowenricher.kafka.client"),
            **settings.client_options,
        }
        self._closing = False
        self._failure: str | None = None  # what an assignment could not do; poll() raises it
        self._consumer = Consumer(options)
        self._consumer.subscribe([settings.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_revoke)
        self.records = Counter("flowenricher_kafka_records_total", "Records consumed from Kafka",
                               registry=registry)
        self.blocks_stored = Counter("flowenricher_kafka_blocks_stored_total",
                                     "Blocks of records the store acknowledged (offsets committed after)",
                                     registry=registry)
        self.in_flight = Gauge("flowenricher_kafka_blocks_in_flight", "Blocks handed over, not yet stored",
                               registry=registry)
        self.in_flight.set_function(lambda: sum(len(p.in_flight) for p in self._parts.values()))
        self.duplicate_records = Counter("flowenricher_kafka_duplicate_records_total",
                                         "Records dropped as copies of one within kafka.dedup_window_records before "
                                         "them (a collector sent them twice)", registry=registry)
        self.duplicate_flows = Counter("flowenricher_kafka_duplicate_flows_total",
                                       "Flows in the records dropped as copies", registry=registry)

    def _new_partition(self, replay: list[tuple[int, int]] | None = None) -> _Partition:
        window = DedupWindow(self.settings.dedup_window_records, self.settings.block_records) if self._dedup else None
        return _Partition(replay=replay or [], window=window)

    # -- group membership --------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        """A partition taken over: its pending ranges (from whoever had it) are cut again.

        Nothing is raised from here: an exception leaving a rebalance callback comes out of
        ``consume`` or ``close`` as a bare KafkaError, which is no Exception subclass (seen
        with confluent-kafka 2.16 when close() ran an assignment whose committed() timed
        out).  A failure is kept and raised by the next :meth:`poll`."""
        from confluent_kafka import KafkaException

        if self._closing:
            return  # leaving the group: nothing will be consumed
        try:
            committed = consumer.committed(partitions, timeout=30)
        except KafkaException as err:
            self._failure = (f"partitions {sorted(tp.partition for tp in partitions)} of {self.settings.topic} "
                             f"assigned, but their committed offsets could not be read: {err}")
            return
        for tp in committed:
            state = self._new_partition(parse_pending(getattr(tp, "metadata", None)))
            self._parts[tp.partition] = state
            if state.replay:
                log.info("kafka: partition %d: replaying pending ranges %s", tp.partition, state.replay)
        if self._dedup:
            try:
                self._fill_windows({tp.partition: tp.offset for tp in committed if tp.offset > 0})
            except Exception as err:  # KafkaException: the windows stay as far as they were read
                log.warning("kafka: reading the deduplication windows back failed (%s); copies of records "
                            "before them may be stored twice", err)
        consumer.incremental_assign(partitions)

    def _fill_windows(self, ends: dict[int, int]) -> None:
        """Each partition's window from the records before `ends` (its committed offset),
        read by a consumer of its own that joins no group and commits nothing."""
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        if not ends:
            return
        started = time.monotonic()
        size = self.settings.dedup_window_records
        reader = Consumer({
            "bootstrap.servers": ",".join(self.settings.brokers),
            "group.id": f"{self.settings.group_id}.window",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "logger": logging.getLogger("flowenricher.kafka.client"),
            **self.settings.client_options,
        })
        left, read = dict(ends), 0
        try:
            reader.assign([TopicPartition(self.settings.topic, p, max(0, end - size)) for p, end in left.items()])
            while left and time.monotonic() - started < WINDOW_READ_S:
                for message in reader.consume(10_000, 0.5):
                    partition = int(message.partition() or 0)
                    error = message.error()
                    end = left.get(partition)
                    if end is None:
                        continue
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            del left[partition]
                        continue
                    offset = int(message.offset() or 0)
                    if offset >= end:
                        del left[partition]
                        continue
                    read += 1
                    window = self._parts[partition].window
                    origin = _origin(message.value())
                    if window is not None and origin is not None:
                        window.copy(offset, origin)
                    if offset == end - 1:
                        del left[partition]
        finally:
            reader.close()
        if left:
            log.warning("kafka: partitions %s: deduplication windows not read back within %.0f s; copies of "
                        "records before them may be stored twice", sorted(left), WINDOW_READ_S)
        log.info("kafka: deduplication windows of partitions %s read back: %d records in %.2f s", sorted(ends),
                 read, time.monotonic() - started)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        """A partition given up: blocks still in flight are the next owner's to replay."""
        for tp in partitions:
            self._parts.pop(tp.partition, None)
        consumer.incremental_unassign(partitions)

    # -- the loop ----------------------------------------------------------------------

    def poll(self) -> list[Block]:
        """Commits what the store acknowledged since the last call, then the next blocks."""
        self._commit_acknowledged()
        messages = self._consumer.consume(self.settings.block_records, self.settings.poll_timeout_s)
        if self._failure is not None:
            raise RuntimeError(f"kafka: {self._failure}")
        by_partition: dict[int, list[Any]] = defaultdict(list)
        for message in messages:
            if is_error(message):
                continue
            by_partition[int(message.partition() or 0)].append(message)
        blocks: list[Block] = []
        for partition, records in by_partition.items():
            blocks += self._cut(partition, records)
        return blocks

    def _cut(self, partition: int, records: list[Any]) -> list[Block]:
        """The partition's records as blocks: pending ranges first, with their cuts."""
        state = self._parts[partition]
        replay_before = list(state.replay)
        blocks: list[Block] = []
        while records:
            if state.replay:
                last = state.replay[0][1]
                if records[0].offset() > last:  # compacted or expired away: nothing to redo
                    state.replay.pop(0)
                    continue
                taken = [r for r in records if r.offset() <= last]
                if taken[-1].offset() < last and len(taken) == len(records):
                    # The range is not all here yet: wait for the rest of it.
                    self._rewind(partition, records[0].offset())
                    break
                state.replay.pop(0)
                records = records[len(taken):]
            else:
                taken, records = records, []
            blocks.append(self._block(partition, taken))
        if blocks:
            ranges = state.in_flight + [(b.first, b.last) for b in blocks]
            if not self._commit(partition, ranges[0][0], ranges):
                # Not recorded as pending (a rebalance under way, the coordinator away):
                # handing them over could store them under cuts the next owner does not
                # know.  Read them again instead; if the partition moves, its next owner does.
                state.replay = replay_before
                self._rewind(partition, blocks[0].first)
                return []
            state.in_flight = ranges
            if len(state.in_flight) >= MAX_IN_FLIGHT and not state.paused:
                self._pause(partition, True)
        self.records.inc(sum(b.last - b.first + 1 for b in blocks))
        return blocks

    def _block(self, partition: int, records: list[Any]) -> Block:
        first, last = records[0].offset(), records[-1].offset()
        window = self._parts[partition].window
        values: list[Any] = [r.value() for r in records] if window is None else self._without_copies(window, records)
        batch = self.decoder.decode(values)
        return Block(partition, first, last, batch, f"{self.settings.topic}:{partition}:{first}-{last}")

    def _without_copies(self, window: DedupWindow, records: list[Any]) -> list[bytes | None]:
        """The values of `records` but those `window` calls copies (counted)."""
        kept = []
        for record in records:
            value = record.value()
            origin = _origin(value)
            if origin is not None and window.copy(record.offset(), origin):
                self.duplicate_records.inc()
                self.duplicate_flows.inc(record_rows(value))
                continue
            kept.append(value)
        return kept

    def stored_callback(self, block: Block) -> Callable[[], None]:
        """What the writer calls (its thread) when `block` is stored."""
        def stored() -> None:
            with self._acks_lock:
                self._acks.append((block.partition, (block.first, block.last)))
        return stored

    def _commit_acknowledged(self) -> None:
        with self._acks_lock:
            acks, self._acks = self._acks, []
        touched: set[int] = set()
        for partition, span in acks:
            state = self._parts.get(partition)
            if state is None or span not in state.in_flight:
                continue  # revoked meanwhile: the next owner replays it (deduplicated)
            state.stored.add(span)
            touched.add(partition)
            self.blocks_stored.inc()
        for partition in touched:
            state = self._parts[partition]
            done_to: int | None = None
            while state.in_flight and state.in_flight[0] in state.stored:
                span = state.in_flight.pop(0)
                state.stored.discard(span)
                done_to = span[1] + 1
            if done_to is not None:
                next_offset = state.in_flight[0][0] if state.in_flight else done_to
                self._commit(partition, next_offset, state.in_flight)
            if state.paused and len(state.in_flight) < MAX_IN_FLIGHT:
                self._pause(partition, False)

    def _commit(self, partition: int, offset: int, in_flight: list[tuple[int, int]]) -> bool:
        """Whether the group took the commit.  One refused during a rebalance
        (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, ...) is logged, not raised: after an
        acknowledgement, the last commit still lists the stored block as pending, so its
        next owner replays it with the same cuts (the store keeps one copy)."""
        from confluent_kafka import KafkaException, TopicPartition

        tp = TopicPartition(self.settings.topic, partition, offset, metadata=pending_metadata(in_flight))
        try:
            self._consumer.commit(offsets=[tp], asynchronous=False)
        except KafkaException as err:
            log.warning("kafka: partition %d: commit refused (%s); its pending ranges stay as last committed",
                        partition, err.args[0] if err.args else err)
            return False
        return True

    def _pause(self, partition: int, pause: bool) -> None:
        from confluent_kafka import TopicPartition

        tp = [TopicPartition(self.settings.topic, partition)]
        (self._consumer.pause if pause else self._consumer.resume)(tp)
        self._parts[partition].paused = pause

    def _rewind(self, partition: int, offset: int) -> None:
        from confluent_kafka import TopicPartition

        self._consumer.seek(TopicPartition(self.settings.topic, partition, offset))

    def close(self) -> None:
        """Commit what was stored, then leave the group (partitions move at once)."""
        self._closing = True
        try:
            self._commit_acknowledged()
        finally:
            try:
                self._consumer.close()
            except Exception as err:  # KafkaException: leaving the group timed out; it expires the member
                log.warning("kafka: leaving the group: %s", err)


def _origin(value: bytes | None) -> bytes | None:
    """A record's origin, None for a record without one (version 1) or that does not parse
    (the decoder counts it as malformed)."""
    if not value:
        return None
    try:
        return record_origin(value)
    except RecordError:
        return None
