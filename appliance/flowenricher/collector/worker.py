"""A receiving worker process: receive datagrams, decode them in batches, hand the
batches to the service process.

Batching datagrams (up to `max_datagrams` or `max_delay_s`) is what makes decoding
columnar: one decode call turns thousands of datagrams into one FlowBatch.  Each worker
has its own pipe to the service, fed by a sender thread through a bounded outbox: when
the writer falls behind, the worker blocks, the socket buffers fill and the kernel drops
(counted), rather than memory growing without limit.  A pipe per worker (not one shared
queue) is what lets the service survive a worker killed at any moment: a shared queue's
lock or a half-written message would stay behind and stall every other worker.

What a worker keeps across restarts is its decoder state (templates, sampling rates),
saved under ``<storage.path>/decoder-state/`` when it changed and at stop, and loaded at
start from every worker's file: after a restart the kernel's SO_REUSEPORT hash may send
an exporter to another worker, and templates are keyed by exporter, so the union is safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from ..common.addresses import plain_text
from ..common.private import private_dir
from ..decode.dispatch import Datagram, FlowDecoder, load_state, save_state
from ..decode.netflow import HOLD_MAX_AGE_S, HOLD_MAX_SETS, MAX_CLOCK_SKEW_S, ExporterQuirks
from ..decode.stats import DATAGRAMS, MAX_EXPORTERS, OPTIONS_RECORDS, TEMPLATE_WITHDRAWALS, TEMPLATES, DecodeStats
from ..decode.templates import MAX_TEMPLATES
from ..logs import configure_logging
from .receiver import BindError, ExporterFilter, Listener, open_socket

log = logging.getLogger(__name__)

# Messages a worker sends to the service: (kind, worker id, payload).
READY, FLOWS, STATS, DONE, FAILED = "ready", "flows", "stats", "done", "failed"
# Datagrams from sources outside collectors.allowed_exporters: one exporter label for all
# of them (a spoofed-source flood must not create a label per address) and their reason.
UNLISTED = "unlisted"
NOT_ALLOWED = "exporter_not_allowed"
WORKER_ERROR = "worker_error"  # drop reason: datagrams lost to an unexpected error in the worker
DECODER_STATE_DIR = "decoder-state"  # under storage.path
STATE_FILE = "worker-{}.json"
# Unexpected errors a worker survives before it exits to be restarted afresh by the service.
MAX_ERRORS, ERROR_WINDOW_S = 5, 60.0


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs; plain data so it crosses the process boundary."""

    listeners: tuple[Listener, ...]
    receive_buffer_bytes: int = 32 << 20
    quirks: Mapping[str, ExporterQuirks] = field(default_factory=dict)
    hold_max_sets: int = HOLD_MAX_SETS
    hold_max_age_s: float = HOLD_MAX_AGE_S
    max_templates: int = MAX_TEMPLATES
    max_exporters: int = MAX_EXPORTERS
    max_clock_skew_s: float = MAX_CLOCK_SKEW_S
    allowed_exporters: tuple[str, ...] = ()  # networks; empty admits every source
    state_dir: str | None = None  # decoder state files; None: not kept across restarts
    state_interval_s: float = 5.0  # between saves of a changed decoder state (the first change: within a second)
    debug: bool = False  # collectors.netflow.config.debug: every drop and a summary per batch logged
    log_level: int = logging.INFO  # the service's, set when it starts the worker
    max_datagrams: int = 2048
    max_delay_s: float = 0.1
    stats_interval_s: float = 1.0
    outbox_batches: int = 8  # decoded batches waiting for the pipe to the service


class OutboxClosed(Exception):
    """The service no longer reads this worker's pipe (it stopped or died)."""


class Outbox:
    """Messages to the service, written to the pipe by a thread so that decoding goes on
    while a large batch is in transit; at most `max_messages` wait."""

    def __init__(self, conn: Connection, max_messages: int) -> None:
        self._conn = conn
        self._queue: queue.Queue[tuple[str, int, Any] | None] = queue.Queue(max(1, max_messages))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._send, name="flowenricher-outbox", daemon=True)
        self._thread.start()

    def put(self, message: tuple[str, int, Any]) -> None:
        """Queue `message`, waiting while the outbox is full; OutboxClosed once the pipe broke."""
        while True:
            if self._error is not None:
                raise OutboxClosed(str(self._error))
            try:
                self._queue.put(message, timeout=0.5)
                return
            except queue.Full:
                continue

    def depth(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 30.0) -> None:
        """Send what is queued, then close the pipe (the service reads end of file)."""
        if self._error is None and self._thread.is_alive():
            with contextlib.suppress(queue.Full):  # the service stopped reading: close anyway
                self._queue.put(None, timeout=timeout)
            self._thread.join(timeout)
        self._conn.close()

    def _send(self) -> None:
        while (message := self._queue.get()) is not None:
            try:
                self._conn.send(message)
            except (OSError, ValueError) as err:  # broken pipe: the service is gone
                self._error = err
                return


def run_worker(worker_id: int, settings: WorkerSettings, out: Connection, stop: Event) -> None:
    """Process entry point.  Exits after `stop` is set, once its sockets are drained; exits
    with status 1 after repeated unexpected errors (the service starts it again)."""
    configure_logging(settings.log_level)
    if settings.debug:
        logging.getLogger(__package__).setLevel(logging.DEBUG)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service decides when to stop
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        sockets = [open_socket(listener, settings.receive_buffer_bytes) for listener in settings.listeners]
    except BindError as err:
        out.send((FAILED, worker_id, str(err)))
        out.close()
        return
    outbox = Outbox(out, settings.outbox_batches)
    code = 0
    try:
        outbox.put((READY, worker_id, [str(x) for x in settings.listeners]))
        code = Worker(worker_id, settings, sockets, outbox).run(stop)
    except OutboxClosed as err:
        log.error("worker %d: the service stopped reading (%s); exiting", worker_id, err)
        code = 1
    finally:
        for sock in sockets:
            sock.close()
        outbox.close()
    if code:
        sys.exit(code)


class Worker:
    """The receive-decode loop of one worker process, and its decoder state on disk."""

    def __init__(self, worker_id: int, settings: WorkerSettings, sockets: list[socket.socket],
                 outbox: Outbox) -> None:
        self.id = worker_id
        self.settings = settings
        self.sockets = sockets
        self.outbox = outbox
        self.stats = (DecodeStats(log_interval_s=0.0, max_exporters=settings.max_exporters) if settings.debug
                      else DecodeStats(max_exporters=settings.max_exporters))
        self.decoder = FlowDecoder(self.stats, settings.quirks, settings.hold_max_sets, settings.hold_max_age_s,
                                   max_templates=settings.max_templates,
                                   max_clock_skew_s=settings.max_clock_skew_s)
        allowed = ExporterFilter(settings.allowed_exporters) if settings.allowed_exporters else None
        self.admit = allowed.allows if allowed is not None else None
        self.pending: list[Datagram] = []
        self.errors: deque[float] = deque(maxlen=MAX_ERRORS)
        self.state_path = Path(settings.state_dir) / STATE_FILE.format(worker_id) if settings.state_dir else None
        self.saved_state: tuple[int, ...] | None = None
        now = time.monotonic()
        self.last_flush = self.last_stats = self.last_state = now
        self.service_pid = os.getppid()  # the service that started us: gone when this changes

    def run(self, stop: Event) -> int:
        """Receive until `stop`; then drain, decode, save and report.  The exit status."""
        if self.state_path is not None:
            self.load_states(self.state_path.parent)
        poller = select.poll()
        by_fd = {s.fileno(): s for s in self.sockets}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        limit = self.settings.max_datagrams * 4
        while not stop.is_set():
            if os.getppid() != self.service_pid:
                # The service was killed (SIGKILL, OOM): an orphan would keep the port for
                # seconds, decoding into a dead pipe and making a restart refuse the port.
                log.error("worker %d: the service (pid %d) is gone; exiting", self.id, self.service_pid)
                self.save_state(force=True)
                return 1
            try:
                for fd, _ in poller.poll(20):
                    self.receive(by_fd[fd], limit)
                self.housekeeping(time.monotonic())
            except OutboxClosed:
                raise
            except Exception:
                if not self.survive():
                    return 1
        # Stopping: take what the kernel still holds for us, decode it, report, leave.
        try:
            for sock in self.sockets:
                self.receive(sock, 1 << 30)
            self.flush()
            self.decoder.finish()  # sets still waiting for a template are lost now: count them
        except OutboxClosed:
            raise
        except Exception:
            log.exception("worker %d: unexpected error while stopping", self.id)
        self.save_state(force=True)
        self.report()
        self.outbox.put((DONE, self.id, None))
        return 0

    def survive(self) -> bool:
        """Log the exception being handled; False when errors come too often to go on."""
        now = time.monotonic()
        self.errors.append(now)
        if len(self.errors) == MAX_ERRORS and now - self.errors[0] < ERROR_WINDOW_S:
            log.exception("worker %d: unexpected error, the %dth within %.0f s; exiting to be restarted",
                          self.id, MAX_ERRORS, ERROR_WINDOW_S)
            return False
        log.exception("worker %d: unexpected error; carrying on", self.id)
        return True

    def housekeeping(self, now: float) -> None:
        s = self.settings
        if len(self.pending) >= s.max_datagrams or now - self.last_flush >= s.max_delay_s:
            self.flush()
        if now - self.last_stats >= s.stats_interval_s:
            self.last_stats = now
            self.report()
            # The first templates are saved within a second, later changes every state_interval_s.
            due = self.saved_state is None or now - self.last_state >= s.state_interval_s
            if due and self.save_state():
                self.last_state = now

    def receive(self, sock: socket.socket, limit: int) -> None:
        """Take up to `limit` datagrams from `sock` into `pending`; sources outside the
        allow list are counted and dropped here, before any decoding."""
        now = int(time.time())
        recv = sock.recvfrom
        pending = self.pending
        admit = self.admit
        for _ in range(limit):
            try:
                data, addr = recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            exporter = plain_text(addr[0])
            if admit is not None and not admit(exporter):
                self.stats.count(UNLISTED, DATAGRAMS)
                self.stats.drop(UNLISTED, NOT_ALLOWED,
                                detail=f"datagram from {exporter}, not in collectors.allowed_exporters")
                continue
            pending.append((data, exporter, now))

    def flush(self) -> None:
        """Decode what is pending (or release held sets) and send the flows."""
        datagrams, self.pending = self.pending, []
        self.last_flush = time.monotonic()
        dropped_before = self.stats.total_dropped() if self.settings.debug and datagrams else None
        try:
            batch = self.decoder.decode(datagrams) if datagrams else self.decoder.tick()
        except Exception:
            # The decoder contains what a datagram can cause; if it still raises, say which
            # datagrams were lost with it, then let the loop log the error.
            for exporter, n in Counter(d[1] for d in datagrams).items():
                self.stats.drop(exporter, WORKER_ERROR, n, detail="unexpected error while decoding")
            raise
        if dropped_before is not None:
            self.log_batch(datagrams, batch.n, self.stats.total_dropped() - dropped_before)
        if batch.n:
            self.outbox.put((FLOWS, self.id, batch))

    def log_batch(self, datagrams: list[Datagram], flows: int, dropped: Counter[str]) -> None:
        """collectors.netflow.config.debug: what one batch held, at DEBUG."""
        per_exporter = Counter(d[1] for d in datagrams)
        shown = ", ".join(f"{exporter}: {n}" for exporter, n in per_exporter.most_common(10))
        more = f", +{len(per_exporter) - 10} more" if len(per_exporter) > 10 else ""
        lost = ", ".join(f"{reason}={n}" for reason, n in sorted(dropped.items()) if n) or "none"
        log.debug("worker %d: batch of %d datagrams from %d exporters (%s%s) -> %d flows; dropped: %s",
                  self.id, len(datagrams), len(per_exporter), shown, more, flows, lost)

    def report(self) -> None:
        self.outbox.put((STATS, self.id, (self.stats.snapshot(), self.outbox.depth())))

    # ------------------------------------------------------------ decoder state

    def load_states(self, folder: Path) -> None:
        """Every worker's saved state, this worker's own last so that it wins."""
        own = folder / STATE_FILE.format(self.id)
        files = [p for p in sorted(folder.glob(STATE_FILE.format("*"))) if p != own] + [own]
        loaded = []
        for path in files:
            if not path.exists():
                continue
            try:
                if load_state(self.decoder, path):
                    loaded.append(path.name)
            except Exception as err:  # a damaged file costs its templates, never the worker
                log.warning("worker %d: decoder state %s not loaded: %s", self.id, path, err)
        if loaded:
            log.info("worker %d: decoder state (templates, sampling) restored from %s in %s", self.id,
                     ", ".join(loaded), folder)
        self.saved_state = None  # write the union to this worker's own file at the next save

    def save_state(self, force: bool = False) -> bool:
        """Write the decoder state if templates or options came since the last save (or
        `force`); True when written."""
        if self.state_path is None:
            return False
        marker = tuple(self.stats.total(name) for name in (TEMPLATES, TEMPLATE_WITHDRAWALS, OPTIONS_RECORDS))
        if not force and (marker == self.saved_state or not any(marker)):
            return False
        try:
            private_dir(self.state_path.parent)
            save_state(self.decoder, self.state_path)
        except Exception as err:
            log.warning("worker %d: decoder state not saved to %s: %s", self.id, self.state_path, err)
            return False
        self.saved_state = marker
        return True
