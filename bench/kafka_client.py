"""The Python Kafka client: confluent-kafka (the product's) against aiokafka, on a real broker.

    python bench/kafka_client.py [--flows 1000000] [--rows 2500] [--partitions 4] [--repeat 2]

Both clients move the same records: flowenricher collector records (kafka/blocks.py),
each one partition's share of a decoded batch (`--rows` flows, cut by `dst_partitions`
as the collector cuts them), produced to a topic of `--partitions` partitions on the
one-node KRaft broker of tests/support/kafka_lab.py, then consumed back by a consumer
group from the earliest offset. The producers run as the product's does: idempotent,
``acks=all``, zstd, ``linger.ms`` 20 (kafka/output.py); the consumers commit nothing and
confluent-kafka's uses cooperative-sticky assignment, as kafka/input.py does.

Each client runs in a process of its own (one per phase and repeat), so its CPU time is
its own: process CPU seconds, every thread (librdkafka's included), per million flows,
from the first record handed to the client to the last delivery report (produce: after
one warm-up record has been delivered, so connections and the idempotent producer id are
in place), or from the partitions' assignment to the last record received (consume: the group's
join is left out; fetching and decompressing start at the assignment; records are not
decoded, which costs the same with either client, bench/kafka_record.py). Rates are flows per wall-clock second.

aiokafka is not a dependency of the product: the bench installs it into a venv of its
own, ``.cache/bench-kafka-client`` (git-ignored; ``--system-site-packages``, so the venv
sees confluent-kafka, numpy and this checkout), on its first run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".cache" / "bench-kafka-client"
AIOKAFKA = "aiokafka[zstd]==0.14.0"
CLIENTS = ("confluent-kafka", "aiokafka")

sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))


def venv_python() -> Path:
    """The bench venv's interpreter, made and given aiokafka on first use."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import aiokafka, cramjam"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", AIOKAFKA], check=True)
    return python


def records(flows: int, rows: int, partitions: int) -> list[tuple[int, bytes, int]]:
    """(partition, record, flows in it) of `flows` decoded IPFIX flows: slices of
    `rows` x `partitions` flows, each cut by destination as a collector cuts its batches."""
    import numpy as np
    from storage_size import batches  # bench/ is the script's directory

    from appliance.flowenricher.kafka.blocks import encode_records, split_by_partition

    out = []
    for batch in batches(flows, 1.0, "ipfix", 1):
        idx = np.arange(batch.n)
        step = rows * partitions
        for start in range(0, batch.n, step):
            for partition, share in split_by_partition(batch.take(idx[start:start + step]), partitions):
                values = encode_records(share)  # several when a share exceeds the record limit
                out += [(partition, value, share.n if i == 0 else 0) for i, value in enumerate(values)]
    return out


# --------------------------------------------------------------------------- the clients

Span = tuple[float, float]
"""(wall seconds, process CPU seconds) of the measured part of a phase."""


def clock() -> Span:
    return time.perf_counter(), time.process_time()


def since(start: Span) -> Span:
    return time.perf_counter() - start[0], time.process_time() - start[1]


def produce_confluent(brokers: str, topic: str, items: list[tuple[int, bytes, int]]) -> Span:
    from confluent_kafka import Producer

    errors: list[str] = []
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all",
                         "compression.type": "zstd", "linger.ms": 20, "queue.buffering.max.messages": 1_000_000,
                         "queue.buffering.max.kbytes": 256 * 1024})

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    producer.produce(topic, b"warm-up", partition=0)  # connections and the idempotent producer id first
    producer.flush(60)
    start = clock()
    for partition, value, _ in items:
        while True:
            try:
                producer.produce(topic, value, partition=partition, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120) != 0 or errors:
        raise RuntimeError(f"confluent-kafka: not delivered: {errors[:3]}")
    return since(start)


def produce_aiokafka(brokers: str, topic: str, items: list[tuple[int, bytes, int]]) -> Span:
    from aiokafka import AIOKafkaProducer  # type: ignore[import-not-found]

    async def run() -> Span:
        producer = AIOKafkaProducer(bootstrap_servers=brokers, enable_idempotence=True, acks="all",
                                    compression_type="zstd", linger_ms=20, max_request_size=4 * 1024 * 1024)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"warm-up", partition=0)
            start = clock()
            pending = [await producer.send(topic, value, partition=partition) for partition, value, _ in items]
            await asyncio.gather(*pending)
            return since(start)
        finally:
            await producer.stop()

    return asyncio.run(run())


def consume_confluent(brokers: str, topic: str, expected: int) -> Span:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"bench-{topic}", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "partition.assignment.strategy": "cooperative-sticky"})
    assigned: list[Span] = []
    # from the assignment: fetching (and zstd) starts then, in librdkafka's threads
    consumer.subscribe([topic], on_assign=lambda _consumer, _partitions: assigned.append(
        assigned[0] if assigned else clock()))
    got, deadline = 0, time.monotonic() + 300
    try:
        while got < expected and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.05):  # returns at 500 records or after 50 ms
                if message.error() is None:
                    got += 1
        span = since(assigned[0]) if assigned else (0.0, 0.0)
    finally:
        consumer.close()
    if got < expected:
        raise RuntimeError(f"confluent-kafka: {got} of {expected} records")
    return span


def consume_aiokafka(brokers: str, topic: str, expected: int) -> Span:
    from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

    assigned: list[Span] = []

    class Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: object) -> None:
            pass

        async def on_partitions_assigned(self, partitions: object) -> None:
            assigned.append(assigned[0] if assigned else clock())  # from the assignment, as above

    async def run() -> Span:
        consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=f"bench-{topic}",
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    max_partition_fetch_bytes=4 * 1024 * 1024)
        consumer.subscribe([topic], listener=Assigned())
        await consumer.start()
        got, deadline = 0, time.monotonic() + 300
        try:
            while got < expected and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=1000, max_records=500)
                got += sum(len(messages) for messages in batches.values())
            span = since(assigned[0]) if assigned else (0.0, 0.0)
        finally:
            await consumer.stop()
        if got < expected:
            raise RuntimeError(f"aiokafka: {got} of {expected} records")
        return span

    return asyncio.run(run())



def child(args: argparse.Namespace) -> None:
    """One client, one phase, in this process: prints its figures as JSON."""
    items = records(args.flows, args.rows, args.partitions)
    flows = sum(n for _, _, n in items)
    if args.phase == "produce":
        produce = produce_confluent if args.client == "confluent-kafka" else produce_aiokafka
        wall, cpu = produce(args.brokers, args.topic, items)
    else:
        consume = consume_confluent if args.client == "confluent-kafka" else consume_aiokafka
        wall, cpu = consume(args.brokers, args.topic, len(items) + 1)  # and the warm-up record
    print(json.dumps({"client": args.client, "phase": args.phase, "records": len(items), "flows": flows,
                      "bytes": sum(len(v) for _, v, _ in items), "wall_s": wall, "cpu_s": cpu}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, default=2500, help="flows per record (one partition's share)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=("produce", "consume"), help=argparse.SUPPRESS)
    parser.add_argument("--brokers", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from support.kafka_lab import KafkaLab, topic_name

    python = venv_python()
    lab = KafkaLab(1)
    results: list[dict[str, Any]] = []
    try:
        lab.start()
        for repeat in range(args.repeat):
            for client in CLIENTS:
                topic = topic_name("bench")
                lab.create_topic(topic, args.partitions)
                for phase in ("produce", "consume"):
                    done = subprocess.run(
                        [str(python), __file__, "--child", "--client", client, "--phase", phase, "--brokers",
                         lab.bootstrap, "--topic", topic, "--flows", str(args.flows), "--rows", str(args.rows),
                         "--partitions", str(args.partitions)],
                        capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
                    if done.returncode != 0:
                        raise RuntimeError(f"{client} {phase}: {done.stderr[-3000:]}")
                    result = json.loads(done.stdout.strip().splitlines()[-1]) | {"repeat": repeat}
                    results.append(result)
                    per_m = 1e6 / result["flows"]
                    print(f"{client:16} {phase:8} run {repeat}: {result['flows'] / result['wall_s']:>10,.0f} flows/s "
                          f"{result['records'] / result['wall_s']:>8,.0f} records/s  "
                          f"{result['cpu_s'] * per_m:6.2f} CPU s per million flows  "
                          f"({result['records']} records, {result['bytes'] / result['flows']:.0f} B/flow raw)",
                          flush=True)
    finally:
        lab.close()


if __name__ == "__main__":
    main()
