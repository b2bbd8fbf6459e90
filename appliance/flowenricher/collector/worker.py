"""A receiving worker process: receive datagrams, decode them in batches, hand the
batches to the service process.

Batching datagrams (up to `max_datagrams` or `max_delay_s`) is what makes decoding
columnar: one decode call turns thousands of datagrams into one FlowBatch.  The queue to
the service is bounded: when the writer falls behind, workers block, the socket buffers
fill and the kernel drops (counted), rather than memory growing without limit.
"""

from __future__ import annotations

import logging
import select
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

from ..decode.dispatch import Datagram, FlowDecoder
from ..decode.netflow import ExporterQuirks
from ..decode.stats import DecodeStats
from .receiver import BindError, Listener, normalise_exporter, open_socket

log = logging.getLogger(__name__)

# Messages a worker puts on the queue: (kind, worker id, payload).
READY, FLOWS, STATS, DONE, FAILED = "ready", "flows", "stats", "done", "failed"


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs; plain data so it crosses the process boundary."""

    listeners: tuple[Listener, ...]
    receive_buffer_bytes: int = 32 << 20
    quirks: Mapping[str, ExporterQuirks] = field(default_factory=dict)
    hold_max_sets: int = 10_000
    hold_max_age_s: float = 60.0
    max_datagrams: int = 2048
    max_delay_s: float = 0.1
    stats_interval_s: float = 1.0


def run_worker(worker_id: int, settings: WorkerSettings, out: Queue[Any], stop: Event) -> None:
    """Process entry point.  Exits after `stop` is set, once its sockets are drained."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service decides when to stop
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        sockets = [open_socket(listener, settings.receive_buffer_bytes) for listener in settings.listeners]
    except BindError as err:
        out.put((FAILED, worker_id, str(err)))
        return
    out.put((READY, worker_id, [str(x) for x in settings.listeners]))
    stats = DecodeStats()
    decoder = FlowDecoder(stats, settings.quirks, settings.hold_max_sets, settings.hold_max_age_s)
    poller = select.poll()
    by_fd = {s.fileno(): s for s in sockets}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    pending: list[Datagram] = []
    last_flush = last_stats = time.monotonic()

    def flush() -> None:
        nonlocal pending, last_flush
        batch = decoder.decode(pending) if pending else decoder.tick()
        pending = []
        last_flush = time.monotonic()
        if batch.n:
            out.put((FLOWS, worker_id, batch))

    while not stop.is_set():
        for fd, _ in poller.poll(20):
            _drain(by_fd[fd], pending, settings.max_datagrams * 4)
        now = time.monotonic()
        if len(pending) >= settings.max_datagrams or now - last_flush >= settings.max_delay_s:
            flush()
        if now - last_stats >= settings.stats_interval_s:
            last_stats = now
            out.put((STATS, worker_id, stats.snapshot()))
    # Stopping: take what the kernel still holds for us, decode it, report, leave.
    for sock in sockets:
        _drain(sock, pending, 1 << 30)
        sock.close()
    flush()
    decoder.finish()  # sets still waiting for a template are lost now: count them
    out.put((STATS, worker_id, stats.snapshot()))
    out.put((DONE, worker_id, None))


def _drain(sock: Any, pending: list[Datagram], limit: int) -> None:
    now = int(time.time())
    recv = sock.recvfrom
    for _ in range(limit):
        try:
            data, addr = recv(65535)
        except (BlockingIOError, InterruptedError):
            return
        pending.append((data, normalise_exporter(addr[0]), now))
