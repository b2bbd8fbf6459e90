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
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..batch import FlowBatch
from ..decode.stats import DecodeStats
from .blocks import BlockDecoder
from .goflow2 import GoFlow2Decoder

log = logging.getLogger(__name__)

PENDING = "flowenricher:pending:"
MAX_IN_FLIGHT = 4
"""Blocks per partition handed over and not yet stored, at most; then it is paused."""


@dataclass(frozen=True)
class KafkaInputSettings:
    """What the input needs (built from the config's ``kafka`` block)."""

    brokers: tuple[str, ...]
    topic: str
    group_id: str
    block_records: int = 50_000
    poll_timeout_s: float = 0.2
    start_from: str = "earliest"
    format: str = "goflow2"  # goflow2 (kafka/goflow2.py) or flowenricher (kafka/blocks.py)
    client_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Block:
    """One partition's records handed over as one group (see the module docstring)."""

    partition: int
    first: int
    last: int
    batch: FlowBatch
    token: str


@dataclass
class _Partition:
    in_flight: list[tuple[int, int]] = field(default_factory=list)  # (first, last), in order
    stored: set[tuple[int, int]] = field(default_factory=set)
    replay: list[tuple[int, int]] = field(default_factory=list)  # pending ranges to cut again
    paused: bool = False


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
        self._parts: dict[int, _Partition] = defaultdict(_Partition)
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

    # -- group membership --------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        """A partition taken over: its pending ranges (from whoever had it) are cut again."""
        committed = consumer.committed(partitions, timeout=30)
        for tp in committed:
            state = _Partition(replay=parse_pending(getattr(tp, "metadata", None)))
            self._parts[tp.partition] = state
            if state.replay:
                log.info("kafka: partition %d: replaying pending ranges %s", tp.partition, state.replay)
        consumer.incremental_assign(partitions)

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
        batch = self.decoder.decode([r.value() for r in records])
        return Block(partition, first, last, batch, f"{self.settings.topic}:{partition}:{first}-{last}")

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
        try:
            self._commit_acknowledged()
        finally:
            try:
                self._consumer.close()
            except Exception as err:  # KafkaError: leaving the group timed out; it expires the member
                log.warning("kafka: leaving the group: %s", err)
