"""What the storers' detection exchange (``kafka.detection_topic``, kafka/detection.py)
costs a storer: CPU seconds per million flows to produce its flows to the detection topic
(once per rule key) and to consume them back, against the detection engine's own work.

    python bench/kafka_detection.py [--flows 1000000] [--batch 20000] [--keys src dst]

A one-node Kafka broker (tests/support/kafka_lab.py) with a 6-partition topic; one
exchange in this process.  Batches come from the traffic generator (normal traffic, the
columns a decoder sets) with a direction, as after enrichment.  Phases, each timed with
``time.process_time`` (this process, librdkafka's threads included; the broker's JVM is
not counted):

* produce: ``DetectionExchange.process`` on every batch, then the producer flushed;
* consume: the exchange's ``poll`` until every produced row is back, into a target that
  only counts rows (the consumer, the record decode and the regrouping by key);
* engine: ``DetectionEngine.process`` of the same batches with the shipped rules, as a
  storer without the exchange runs it (the work the exchange moves, not adds).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Collection
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.kafka_lab import KafkaLab, topic_name

from appliance.flowenricher.batch import FlowBatch
from appliance.flowenricher.detect import DetectionEngine, load_rule_set
from appliance.flowenricher.detect.rules import Rule
from appliance.flowenricher.generate.traffic import TrafficGenerator
from appliance.flowenricher.kafka.detection import DetectionExchange, DetectionExchangeSettings

RULES = Path(__file__).resolve().parent.parent / "appliance" / "flowenricher" / "examples" / "detection.yml"


class Counting:
    """A detection target that only counts what it is handed."""

    def __init__(self, rules: list[Rule]) -> None:
        self._rules = rules
        self.rows = 0

    @property
    def rules(self) -> list[Rule]:
        return self._rules

    def process(self, batch: FlowBatch, keys: Collection[str] | None = None) -> None:
        self.rows += batch.n


def make_batches(flows: int, size: int) -> list[FlowBatch]:
    gen = TrafficGenerator(scenario="normal", seed=3)
    now = int(time.time())
    out = []
    for i in range(0, flows, size):
        batch = gen.batch(min(size, flows - i), now * 1000, 1000).to_flow_batch()
        batch["received_at"] = np.full(batch.n, now, dtype=np.uint32)
        batch["flow_direction"] = np.ones(batch.n, dtype=np.uint8)
        out.append(batch)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--keys", nargs="+", default=["src", "dst"], choices=["src", "dst"],
                        help="the rule keys the loaded rules use (one produced copy per key)")
    args = parser.parse_args()
    rules = [r for r in load_rule_set(RULES) if r.key in args.keys]
    batches = make_batches(args.flows, args.batch)
    per_m = 1e6 / args.flows

    engine = DetectionEngine(rules, [])
    began = time.process_time()
    for batch in batches:
        engine.process(batch)
    engine_s = time.process_time() - began

    lab = KafkaLab(1)
    try:
        lab.start()
        topic = topic_name("detection")
        lab.create_topic(topic, 6)
        target = Counting(rules)
        exchange = DetectionExchange(DetectionExchangeSettings(tuple(lab.brokers), topic, topic_name("bench")), target)
        keys = len({r.key for r in rules})
        try:
            began = time.process_time()
            for batch in batches:
                exchange.process(batch)
            assert exchange._producer.flush(120) == 0
            produce_s = time.process_time() - began
            began, wall = time.process_time(), time.monotonic()
            while target.rows < args.flows * keys and time.monotonic() - wall < 300:
                exchange.poll()
            consume_s = time.process_time() - began
            assert target.rows == args.flows * keys, f"{target.rows} rows back of {args.flows * keys}"
        finally:
            exchange.close()
    finally:
        lab.close()
    print(f"flows {args.flows:,} in batches of {args.batch:,}; rules {len(rules)} over keys "
          f"{'+'.join(sorted({r.key for r in rules}))} ({keys} copies produced)")
    print("| phase | CPU s | s per million flows |")
    print("|---|---|---|")
    for name, seconds in (("produce (exchange.process + flush)", produce_s),
                          ("consume (poll, decode, regroup)", consume_s),
                          ("produce + consume", produce_s + consume_s),
                          ("engine.process (without the exchange)", engine_s)):
        print(f"| {name} | {seconds:.2f} | {seconds * per_m:.2f} |")


if __name__ == "__main__":
    main()
