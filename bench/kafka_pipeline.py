"""Collector -> Kafka -> storers against the single process, in the same run.

    python bench/kafka_pipeline.py [--fps 20000] [--seconds 10] [--storers 1 2]

Each path gets the same offered load: `flowenricher generate` sending IPFIX over loopback
at `--fps` for `--seconds`.  The single process is `flowenricher run` with the embedded
store; the Kafka path is one `run` with ``kafka.role: collect`` and N storers
(``format: flowenricher``, each with its own embedded store) on a one-node broker of
tests/support/kafka_lab.py, topic of 4 partitions.  Every process is started, measured
and stopped by its PID.

Figures: flows sent (generate's own count) and stored (the storers'
``flowenricher_store_rows_inserted_total``, polled every 0.2 s), the stored rate from the
first datagram to the last row, and an estimate of datagram-to-row latency: flow i left
the sender at about start + i/rate, and counts as stored at the first poll at which the
stored total exceeds i (so the latency has a resolution of the poll interval, and
assumes flows are stored about in the order they were sent).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import stop_pids
from support.kafka_lab import KafkaLab, topic_name

FLOWENRICHER = [sys.executable, "-m", "appliance.cli"]


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def inserted(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return 0.0
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "flowenricher_store_rows_inserted_total")


def start(workdir: Path, name: str, config: str) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(config)
    log = (workdir / f"{name}.log").open("ab")
    return subprocess.Popen([*FLOWENRICHER, "run", "--config", str(workdir / "config.yaml")], cwd=workdir,
                            stdout=log, stderr=subprocess.STDOUT)


def wait_log(workdir: Path, name: str, text: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in (workdir / f"{name}.log").read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not get to {text!r}:\n{(workdir / f'{name}.log').read_text()[-3000:]}")
        time.sleep(0.2)


def measure(udp: int, metric_ports: list[int], fps: int, seconds: float) -> dict[str, float]:
    """Send, then poll the stored totals until they stop growing for 10 s."""
    started = time.time()
    sender = subprocess.Popen([*FLOWENRICHER, "generate", "--to", f"127.0.0.1:{udp}", "--fps", str(fps),
                               "--duration", str(seconds), "--protocol", "ipfix"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    curve: list[tuple[float, float]] = []
    last_change, last = time.time(), -1.0
    while True:
        total = sum(inserted(p) for p in metric_ports)
        now = time.time()
        curve.append((now, total))
        if total != last:
            last, last_change = total, now
        if sender.poll() is not None and now - last_change > 10:
            break
        time.sleep(0.2)
    report = json.loads((sender.stdout.read() if sender.stdout else b"{}").decode().strip().splitlines()[-1])
    sent = int(report["flows"])
    times = np.array([t for t, _ in curve])
    totals = np.array([v for _, v in curve])
    done_at = times[np.searchsorted(totals, totals[-1])]
    k = min(sent, int(totals[-1]))
    index = np.arange(k)
    sent_at = started + index / max(report["flows_per_s"], 1.0)
    stored_at = times[np.searchsorted(totals, index + 1)]
    latency = stored_at - sent_at
    return {"sent": sent, "stored": int(totals[-1]), "flows_per_s": totals[-1] / max(done_at - started, 1e-9),
            "p50_s": float(np.percentile(latency, 50)) if k else float("nan"),
            "p99_s": float(np.percentile(latency, 99)) if k else float("nan")}


def store_block(workdir: Path, metrics: int) -> str:
    return (f"storage: {{path: {workdir / 'data'}}}\ninsert: {{batch_size: 50000, flush_interval_ms: 500}}\n"
            f"metrics: {{listen: \"127.0.0.1:{metrics}\"}}\napi: {{enabled: false}}\nenrich: none\n")


def single(root: Path, fps: int, seconds: float) -> dict[str, float]:
    udp, metrics = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    work = root / "single"
    proc = start(work, "run", f"collectors: {{listeners: [{{address: 127.0.0.1, port: {udp}}}]}}\n"
                 + store_block(work, metrics))
    try:
        wait_log(work, "run", "listening:", proc)
        return measure(udp, [metrics], fps, seconds)
    finally:
        stop_pids([proc], timeout=60)


def through_kafka(root: Path, lab: KafkaLab, storers: int, fps: int, seconds: float) -> dict[str, float]:
    topic = topic_name("bench")
    lab.create_topic(topic, 4)
    brokers = json.dumps(lab.brokers)
    udp = free_port(socket.SOCK_DGRAM)
    work = root / f"kafka{storers}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        collector = start(work / "collector", "run", (
            f"collectors: {{listeners: [{{address: 127.0.0.1, port: {udp}}}]}}\n"
            f"kafka: {{enabled: true, role: collect, brokers: {brokers}, topic: {topic}}}\n"
            f"storage: {{path: {work / 'collector' / 'data'}}}\n"
            f"metrics: {{listen: \"127.0.0.1:{free_port(socket.SOCK_STREAM)}\"}}\napi: {{enabled: false}}\n"))
        procs.append(collector)
        ports = []
        for i in range(storers):
            port = free_port(socket.SOCK_STREAM)
            ports.append(port)
            d = work / f"storer{i}"
            proc = start(d, "run", f"kafka: {{enabled: true, brokers: {brokers}, topic: {topic}, group_id: g, "
                         f"format: flowenricher}}\n" + store_block(d, port))
            procs.append(proc)
            wait_log(d, "run", "consuming topic", proc)
        wait_log(work / "collector", "run", "listening:", collector)
        time.sleep(3)  # the group settles
        return measure(udp, ports, fps, seconds)
    finally:
        stop_pids(procs, timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fps", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--storers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kafka-pipeline-"))
    print(f"load average {os.getloadavg()[0]:.1f}; {args.fps} flows/s offered for {args.seconds:g} s")
    results = {"single process": single(root, args.fps, args.seconds)}
    lab = KafkaLab(1)
    try:
        lab.start()
        for n in args.storers:
            results[f"collector + {n} storer(s)"] = through_kafka(root, lab, n, args.fps, args.seconds)
    finally:
        lab.close()
    base = results["single process"]["flows_per_s"]
    for name, r in results.items():
        print(f"{name:<24} sent {r['sent']:>8} stored {r['stored']:>8}  {r['flows_per_s']:>9.0f} flows/s "
              f"({r['flows_per_s'] / base:.2f}x)  latency p50 {r['p50_s']:.2f} s p99 {r['p99_s']:.2f} s")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
