"""The collector's pieces in this process, on real loopback sockets: the exporter allow
list, debug logging, the port refusal, bounded and monotonic worker counters, the
wildcard warning and the shared log format."""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from support import free_port

from appliance.flowenricher.collector.receiver import BindError, ExporterFilter, Listener, open_socket, refuse_shared_port
from appliance.flowenricher.collector.worker import NOT_ALLOWED, UNLISTED, Outbox, Worker, WorkerSettings
from appliance.flowenricher.decode.stats import DATAGRAMS, OTHER
from appliance.flowenricher.generate.encode import build_packets
from appliance.flowenricher.metrics import WorkerSnapshots
from appliance.flowenricher.service import _warn_if_open

V5 = build_packets("v5", 1, records_per_packet=1)[0]  # one NetFlow v5 datagram with one flow


@pytest.fixture
def listener() -> Iterator[tuple[Listener, socket.socket]]:
    lst = Listener("127.0.0.1", free_port())
    sock = open_socket(lst, 1 << 20)
    try:
        yield lst, sock
    finally:
        sock.close()


def make_worker(sock: socket.socket, **settings: object) -> Worker:
    reader, writer = multiprocessing.Pipe(duplex=False)
    worker = Worker(0, WorkerSettings(listeners=(), **settings), [sock], Outbox(writer, 4))  # type: ignore[arg-type]
    reader.close()
    return worker


def send_from(source: str, port: int, payload: bytes, n: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        for _ in range(n):
            s.sendto(payload, ("127.0.0.1", port))


def receive_all(worker: Worker, sock: socket.socket, expected: int) -> None:
    """Drain `sock` until `expected` datagrams were taken (kept or refused)."""
    for _ in range(200):
        worker.receive(sock, 1000)
        taken = len(worker.pending) + worker.stats.counts[UNLISTED][DATAGRAMS]
        if taken >= expected:
            return
        time.sleep(0.01)
    raise AssertionError(f"only {taken} of {expected} datagrams arrived")


def test_unlisted_sources_are_dropped_before_decoding_and_logged_at_a_limited_rate(
        listener: tuple[Listener, socket.socket], caplog: pytest.LogCaptureFixture) -> None:
    lst, sock = listener
    worker = make_worker(sock, allowed_exporters=("127.0.0.2/32", "2001:db8::/32"))
    with caplog.at_level(logging.WARNING):
        send_from("127.0.0.1", lst.port, V5, 5)
        send_from("127.0.0.2", lst.port, V5, 3)
        receive_all(worker, sock, 8)

    assert [d[1] for d in worker.pending] == ["127.0.0.2"] * 3  # only the listed exporter is decoded
    assert worker.stats.dropped[UNLISTED][NOT_ALLOWED] == 5
    assert worker.stats.counts[UNLISTED][DATAGRAMS] == 5
    assert "127.0.0.1" not in worker.stats.counts  # no label per refused source
    refused = [r.getMessage() for r in caplog.records if NOT_ALLOWED in r.getMessage()]
    assert len(refused) == 1 and "127.0.0.1" in refused[0] and "collectors.allowed_exporters" in refused[0]


def test_debug_logs_every_drop_and_a_summary_per_batch(
        listener: tuple[Listener, socket.socket], caplog: pytest.LogCaptureFixture) -> None:
    """collectors.netflow.config.debug: no rate limit on drops, one DEBUG line per batch."""
    lst, sock = listener
    worker = make_worker(sock, allowed_exporters=("127.0.0.2",), debug=True)
    with caplog.at_level(logging.DEBUG):
        send_from("127.0.0.1", lst.port, V5, 4)
        send_from("127.0.0.2", lst.port, V5, 2)
        send_from("127.0.0.2", lst.port, b"\x00\x63garbage", 3)  # version 99: bad_version
        receive_all(worker, sock, 9)
        worker.flush()

    messages = [r.getMessage() for r in caplog.records]
    assert sum(NOT_ALLOWED in m and "127.0.0.1" in m for m in messages) == 4
    assert sum("bad_version" in m and "0063" in m for m in messages) == 3
    [summary] = [r for r in caplog.records if "batch of" in r.getMessage()]
    assert summary.levelno == logging.DEBUG
    assert "batch of 5 datagrams from 1 exporters (127.0.0.2: 5) -> 2 flows; dropped: bad_version=3" \
        in summary.getMessage()


def test_exporter_filter_takes_addresses_networks_and_both_families() -> None:
    allowed = ExporterFilter(["192.0.2.10", "198.51.100.0/24", "2001:db8:1::/48"])
    assert allowed.allows("192.0.2.10") and allowed.allows("198.51.100.77")
    assert allowed.allows("2001:db8:1:ffff::1")
    assert not allowed.allows("192.0.2.11") and not allowed.allows("2001:db8:2::1")
    assert not allowed.allows("not an address")
    for i in range(ExporterFilter.CACHE_MAX + 10):  # a spoofed-source flood: the cache stays bounded
        allowed.allows(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(allowed._verdicts) <= ExporterFilter.CACHE_MAX


@pytest.mark.parametrize("reuseport", [False, True])
def test_a_port_held_by_another_program_is_refused_naming_its_pid(reuseport: bool) -> None:
    """With or without SO_REUSEPORT on the other socket: the workers' own SO_REUSEPORT
    bind would succeed beside a reuseport socket, so the probe must not."""
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        if reuseport:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", port))
        for address in ("127.0.0.1", "0.0.0.0"):  # a wildcard conflicts with a specific address
            with pytest.raises(BindError) as refused:
                refuse_shared_port(Listener(address, port))
            text = str(refused.value)
            assert f"UDP port {port} is already in use by pid {os.getpid()}" in text
            assert "choose another port" in text
    refuse_shared_port(Listener("127.0.0.1", port))  # free again: accepted


def test_counters_of_a_dead_worker_are_kept_and_labels_are_bounded() -> None:
    snaps = WorkerSnapshots(max_exporters=3)
    snaps.update(0, {"counts": {"10.0.0.1": {"datagrams": 10}, "10.0.0.2": {"datagrams": 5}},
                     "dropped": {"10.0.0.1": {"bad_version": 2}}})
    snaps.update(1, {"counts": {"10.0.0.3": {"datagrams": 7}, "10.0.0.4": {"datagrams": 1}}, "dropped": {}})
    counts, dropped = snaps.totals()
    assert set(counts) == {"10.0.0.1", "10.0.0.2", "10.0.0.3", OTHER}
    assert counts[OTHER]["datagrams"] == 1
    before = snaps.total("datagrams")

    snaps.retire(0)  # worker 0 died; its replacement starts from zero
    snaps.update(0, {"counts": {"10.0.0.1": {"datagrams": 1}, "10.0.0.9": {"datagrams": 4}}, "dropped": {}})
    counts, dropped = snaps.totals()
    assert counts["10.0.0.1"]["datagrams"] == 11 and dropped["10.0.0.1"]["bad_version"] == 2
    assert counts["10.0.0.2"]["datagrams"] == 5  # still exported, not lost with the dead worker
    assert counts[OTHER]["datagrams"] == 5  # 10.0.0.4 and the new 10.0.0.9
    assert snaps.total("datagrams") == before + 5
    assert len(counts) == 4  # three exporters and "other", whatever the workers report


def test_wildcard_listener_without_allow_list_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        _warn_if_open(WorkerSettings(listeners=(Listener("0.0.0.0", 2055), Listener("127.0.0.1", 4739))))
        _warn_if_open(WorkerSettings(listeners=(Listener("::", 2055),), allowed_exporters=("192.0.2.1/32",)))
        _warn_if_open(WorkerSettings(listeners=(Listener("127.0.0.1", 2055),)))
    [warning] = [r.getMessage() for r in caplog.records]
    assert "udp://0.0.0.0:2055" in warning and "collectors.allowed_exporters" in warning
    assert "4739" not in warning


def test_log_lines_carry_time_and_level() -> None:
    """The one format, in a fresh process as a spawned worker is."""
    code = ("import logging; from appliance.flowenricher.logs import configure_logging; configure_logging(20); "
            "logging.getLogger('appliance.flowenricher.collector.worker').info('worker 0: hello'); "
            "logging.getLogger('x').debug('not shown')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO appliance\.flowenricher\.collector\.worker: "
                        r"worker 0: hello\n", done.stderr), done.stderr


def test_an_unexpected_error_is_logged_and_the_worker_carries_on(
        listener: tuple[Listener, socket.socket], caplog: pytest.LogCaptureFixture) -> None:
    """Fault injection: the decoder raising (nothing a datagram does should make it) costs
    that batch, counted as worker_error, and the next batch is decoded and sent; errors
    coming too often make the worker exit with status 1, for the service to restart it."""
    lst, sock = listener
    reader, writer = multiprocessing.Pipe(duplex=False)
    worker = Worker(0, WorkerSettings(listeners=(), max_delay_s=0.05), [sock], Outbox(writer, 4))
    real_decode, failures = worker.decoder.decode, [1]

    def decode_failing_once(datagrams: list[tuple[bytes, str, int]]) -> object:
        if datagrams and failures:
            failures.pop()
            raise RuntimeError("injected")
        return real_decode(datagrams)

    worker.decoder.decode = decode_failing_once  # type: ignore[assignment,method-assign]
    stop = multiprocessing.Event()
    with caplog.at_level(logging.WARNING):
        running = threading.Thread(target=worker.run, args=(stop,))
        running.start()
        send_from("127.0.0.1", lst.port, V5, 3)
        time.sleep(0.5)
        send_from("127.0.0.1", lst.port, V5, 2)
        flows = 0
        deadline = time.monotonic() + 10
        while flows < 2 and time.monotonic() < deadline:
            if reader.poll(0.1):
                kind, _, payload = reader.recv()
                flows += payload.n if kind == "flows" else 0
        stop.set()
        running.join(10)
    assert flows == 2
    assert worker.stats.dropped["127.0.0.1"]["worker_error"] == 3
    [logged] = [r for r in caplog.records if "unexpected error; carrying on" in r.getMessage()]
    assert logged.exc_info is not None and "injected" in str(logged.exc_info[1])

    verdicts = []
    for _ in range(4):  # with the first, five errors within a minute: give up, to be started afresh
        try:
            raise RuntimeError("again")
        except RuntimeError:
            verdicts.append(worker.survive())
    assert verdicts == [True, True, True, False]
