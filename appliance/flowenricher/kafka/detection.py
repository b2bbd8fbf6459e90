"""The detection exchange of storers (``kafka.detection_topic``): every flow of a rule's key
reaches one detection engine, whichever storer read it.

Storers share the flows topic by partition.  A collector partitions it by destination
address, so a rule keyed by destination (``key: dst``) sees all of a destination's flows
on one storer, but a rule keyed by source sees only each storer's share of a source; and
goflow2 spreads its records over the partitions without regard to any address, so there
even destination rules see a share.  With the exchange each storer, after enriching what
it read, produces the columns the rules read (:data:`~..detect.engine.EVALUATED_COLUMNS`)
to the detection topic once per key the loaded rules use: rows split by a hash of the
source address under the record key ``src``, and by the destination under ``dst``
(:func:`~.blocks.address_partitions`, the collectors' one hash).  Each storer also
consumes that topic as a member of the consumer group ``<kafka.group_id>-detection`` and
counts each record into the rules of its key only (``DetectionEngine.process(batch,
keys=...)``).  So one key's flows all land on one partition, hence one engine, and each
flow is counted once per key.

Anomaly scoring (detect/anomaly.py) reduces flows per source, so with the exchange it is
fed from it too (``sources``): it gets the records keyed ``src``, produced whenever it is
there even if no rule is keyed by source, and so sees every flow of each of its sources
on one storer, the one whose engine asks it for those sources' scores.

Delivery is at least once, as detection already is over the flows topic: offsets are
committed automatically after records were handed to the engine, so a storer killed
between the two leaves the next owner to count a few records again.  Rows the producer
could not take (the brokers away longer than its memory lasts) and rows produced while
the topic's partition count is unknown are not counted, and are counted in
``flowenricher_kafka_detection_rows_dropped_total``: storage is not affected.  Records
are :mod:`.blocks` records, whatever the flows topic's format (goflow2 or flowenricher):
the exchange carries enriched batches, not what the collectors sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter

from ..batch import FlowBatch
from ..detect.engine import EVALUATED_COLUMNS
from ..detect.rules import Rule
from ..errors import KafkaTopicError
from .blocks import MAX_RECORD_BYTES, RecordError, decode_record, encode_records, record_rows, split_by_partition
from .input import is_error

log = logging.getLogger(__name__)

KEY_COLUMNS = {"src": "src_addr", "dst": "dst_addr"}
"""A rule's ``key`` -> the address column its rows are partitioned by (the record key is
the rule key, as bytes)."""
GROUP_SUFFIX = "-detection"
"""The exchange's consumer group is ``kafka.group_id`` + this."""
METADATA_EVERY_S = 60.0
PRODUCER_MEMORY_KB = 64 * 1024
"""What the exchange's producer holds while the brokers do not take records (librdkafka's
default is 1 GB); beyond it rows are dropped and counted (``producer_full``)."""
RECORD_TIMEOUT_MS = 300_000
"""A record not delivered within this is dropped and counted (``not_delivered``): flows
older than a rule's window would not be counted anyway."""
POLL_RECORDS = 500
POLL_TIMEOUT_S = 0.2


class DetectionTarget(Protocol):
    """What the exchange feeds: the detection engine (detect/engine.DetectionEngine)."""

    @property
    def rules(self) -> list[Rule]: ...

    def process(self, batch: FlowBatch, keys: Collection[str] | None = None) -> None: ...


class SourceConsumer(Protocol):
    """What reads every flow of a source (detect/anomaly.AnomalyScoring)."""

    def process(self, batch: FlowBatch) -> None: ...


@dataclass(frozen=True)
class DetectionExchangeSettings:
    """What the exchange needs (built from the config's ``kafka`` block)."""

    brokers: tuple[str, ...]
    topic: str
    group_id: str  # the flows' group; the exchange's is this + GROUP_SUFFIX
    start_from: str = "earliest"
    metadata_timeout_s: float = 10.0
    client_options: dict[str, Any] = field(default_factory=dict)


class DetectionExchange:
    """Produces each enriched batch to the detection topic (:meth:`process`, the service's
    consumer thread) and feeds the engine from it (:meth:`start`: a thread of its own).
    Refuses to start when the brokers answer that the topic does not exist."""

    def __init__(self, settings: DetectionExchangeSettings, engine: DetectionTarget,
                 registry: CollectorRegistry | None = None, sources: SourceConsumer | None = None) -> None:
        from confluent_kafka import Consumer, Producer

        self.settings = settings
        self.engine = engine
        self.sources = sources
        common = {"bootstrap.servers": ",".join(settings.brokers),
                  "logger": logging.getLogger("flowenricher.kafka.client"), **settings.client_options}
        self._producer = Producer({**common, "compression.type": "zstd", "linger.ms": 20,
                                   "queue.buffering.max.kbytes": PRODUCER_MEMORY_KB,
                                   "message.timeout.ms": RECORD_TIMEOUT_MS, "allow.auto.create.topics": False})
        self._partitions: int | None = None
        self._metadata_at = float("-inf")
        self.produced = Counter("flowenricher_kafka_detection_produced_rows_total",
                                "Rows produced to the detection topic (once per rule key)", ["key"], registry=registry)
        self.consumed = Counter("flowenricher_kafka_detection_consumed_rows_total",
                                "Rows of the detection topic handed to the detection engine", ["key"],
                                registry=registry)
        self.dropped = Counter("flowenricher_kafka_detection_rows_dropped_total",
                               "Rows not produced to the detection topic (not detected on)", ["reason"],
                               registry=registry)
        self.malformed = Counter("flowenricher_kafka_detection_malformed_records_total",
                                 "Records of the detection topic that are not flowenricher blocks of a rule key",
                                 registry=registry)
        self._refresh_metadata(settings.metadata_timeout_s, at_start=True)
        self._consumer = Consumer({
            **common,
            "group.id": settings.group_id + GROUP_SUFFIX,
            "enable.auto.commit": True,
            "auto.offset.reset": settings.start_from,
            "partition.assignment.strategy": "cooperative-sticky",
            "allow.auto.create.topics": False,
        })
        self._consumer.subscribe([settings.topic])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- producing (the service's consumers thread) ---------------------------------------

    def process(self, batch: FlowBatch) -> None:
        """`batch` (enriched) to the topic, once per key the engine's rules use."""
        self._producer.poll(0)
        if time.monotonic() - self._metadata_at >= METADATA_EVERY_S:
            self._refresh_metadata(timeout=1.0)
        if not batch.n:
            return
        keys = sorted({rule.key for rule in self.engine.rules} | ({"src"} if self.sources is not None else set()))
        if not keys:
            return
        partitions = self._partitions
        if partitions is None:
            self.dropped.labels("no_metadata").inc(batch.n * len(keys))
            return
        rows = FlowBatch(batch.n, {name: batch[name] for name in EVALUATED_COLUMNS if name in batch})
        for key in keys:
            for partition, part in split_by_partition(rows, partitions, KEY_COLUMNS[key]):
                for record in encode_records(part, MAX_RECORD_BYTES):
                    try:
                        self._producer.produce(self.settings.topic, record, key=key.encode(), partition=partition,
                                               on_delivery=self._delivered)
                    except BufferError:
                        self.dropped.labels("producer_full").inc(record_rows(record))

    def _delivered(self, err: Any, message: Any) -> None:
        rows = record_rows(message.value() or b"")
        if err is None:
            self.produced.labels((message.key() or b"").decode(errors="replace")).inc(rows)
        else:
            self.dropped.labels("not_delivered").inc(rows)
            log.warning("kafka: detection record to %s[%s] not delivered: %s", message.topic(),
                        message.partition(), err)

    def _refresh_metadata(self, timeout: float, at_start: bool = False) -> None:
        self._metadata_at = time.monotonic()
        topic_name = self.settings.topic
        try:
            topic = self._producer.list_topics(topic_name, timeout=timeout).topics.get(topic_name)
        except Exception as err:  # KafkaException: no broker answered in time
            if self._partitions is None:
                log.warning("kafka: no metadata for the detection topic %s yet (%s); its rows are not "
                            "detected on until it comes", topic_name, err)
            return
        if topic is None or topic.error is not None or not topic.partitions:
            why = "missing" if topic is None else str(topic.error)
            if at_start:
                raise KafkaTopicError(
                    f"kafka.detection_topic: topic {topic_name!r} is not usable on {','.join(self.settings.brokers)}: "
                    f"{why} (create it with as many partitions as the flows topic, or remove detection_topic)")
            log.error("kafka: detection topic %s unavailable: %s", topic_name, why)
            return
        count = len(topic.partitions)
        if count != self._partitions:
            log.info("kafka: detection exchange on %s, %d partitions", topic_name, count)
            self._partitions = count

    # -- consuming (a thread of its own) --------------------------------------------------

    def start(self) -> DetectionExchange:
        self._thread = threading.Thread(target=self._consume, name="flowenricher-detection-exchange", daemon=True)
        self._thread.start()
        return self

    def _consume(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # a bug here must not end detection for good
                log.exception("kafka: detection exchange")
                self._stop.wait(1.0)

    def poll(self) -> int:
        """One poll of the topic into the engine; the rows handed over."""
        messages = self._consumer.consume(POLL_RECORDS, POLL_TIMEOUT_S)
        by_key: dict[str, list[FlowBatch]] = {key: [] for key in KEY_COLUMNS}
        for message in messages:
            if is_error(message):
                continue
            key = (message.key() or b"").decode(errors="replace")
            try:
                if key not in by_key:
                    raise RecordError(f"record key {key!r} is not a rule key")
                by_key[key].append(decode_record(message.value() or b""))
            except RecordError as err:
                self.malformed.inc()
                log.warning("kafka: detection topic %s[%s] offset %s: %s", message.topic(), message.partition(),
                            message.offset(), err)
        handed = 0
        for key, batches in by_key.items():
            batch = FlowBatch.concat(batches)
            if batch.n:
                if any(rule.key == key for rule in self.engine.rules):
                    self.engine.process(batch, keys=(key,))
                if key == "src" and self.sources is not None:
                    self.sources.process(batch)
                self.consumed.labels(key).inc(batch.n)
                handed += batch.n
        return handed

    def close(self) -> None:
        """Deliver what was produced (a few seconds at most), stop feeding the engine and
        leave the group (its partitions move to the other storers at once)."""
        left = self._producer.flush(5.0)
        if left:
            log.warning("kafka: %d detection records not delivered at shutdown", left)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self._consumer.close()
        except Exception as err:  # KafkaError: leaving the group timed out; it expires the member
            log.warning("kafka: leaving the detection group: %s", err)
