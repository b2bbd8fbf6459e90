"""How long a storer takes to read its deduplication window back when it is assigned a
partition (kafka/input.py, ``KafkaInput._fill_windows``): the records before the committed
offset are fetched whole (Kafka has no partial fetch), and only their headers are read.

    python bench/kafka_window.py [--records 10000] [--rows 200 1000] [--partitions 1]

A one-node Kafka broker from tests/support/kafka_lab.py (the jars are fetched into .cache
on first use); a topic of `--partitions` partitions, each holding `--records` collector
records (kafka/blocks.py, version 2) of `--rows` flows decoded from generated IPFIX,
produced with ZSTD as a collector does.  Then the window of every partition is read back
from the end, as an assignment after a restart does, and the wall time, the records read and
their size are printed.  One line per `--rows`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np
from storage_size import batches  # bench/ is the script's directory
from support.kafka_lab import KafkaLab, topic_name

from appliance.flowenricher.batch import FlowBatch
from appliance.flowenricher.kafka.blocks import Origin, encode_record
from appliance.flowenricher.kafka.input import KafkaInput, KafkaInputSettings


def fill(lab: KafkaLab, topic: str, partitions: int, records: int, rows: int) -> int:
    """`records` records of `rows` flows on each partition; their total size in bytes (raw)."""
    from confluent_kafka import Producer

    flows = FlowBatch.concat(list(batches(max(rows * 20, 20_000), 1.0, "ipfix", 1)))
    producer = Producer({"bootstrap.servers": lab.bootstrap, "enable.idempotence": True, "acks": "all",
                         "compression.type": "zstd", "linger.ms": 20})
    size = 0
    for number in range(records):
        start = (number * rows) % (flows.n - rows)
        batch = flows.take(np.arange(start, start + rows))
        for partition in range(partitions):
            value = encode_record(batch, Origin(b"b" * 16, number, partitions, partition))
            size += len(value)
            while True:
                try:
                    producer.produce(topic, value, partition=partition)
                    break
                except BufferError:
                    producer.poll(0.1)
    assert producer.flush(120) == 0
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000, help="records per partition, and the window")
    parser.add_argument("--rows", type=int, nargs="+", default=[200, 1000], help="flows per record")
    parser.add_argument("--partitions", type=int, default=1)
    args = parser.parse_args()
    lab = KafkaLab(1)
    try:
        lab.start()
        for rows in args.rows:
            topic = topic_name("window")
            lab.create_topic(topic, args.partitions)
            size = fill(lab, topic, args.partitions, args.records, rows)
            settings = KafkaInputSettings((lab.bootstrap,), topic, "bench", format="flowenricher",
                                          block_records=100, dedup_window_records=args.records)
            reader = KafkaInput(settings)
            ends = dict.fromkeys(range(args.partitions), args.records)
            started = time.monotonic()
            reader._fill_windows(ends)
            took = time.monotonic() - started
            held = sum(len(reader._parts[p].window or ()) for p in ends)
            reader.close()
            print(f"rows/record {rows}: {held} records ({size / 1e6:.0f} MB raw) read back from "
                  f"{args.partitions} partition(s) in {took:.2f} s")
    finally:
        lab.close()


if __name__ == "__main__":
    main()
