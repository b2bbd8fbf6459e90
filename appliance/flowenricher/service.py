"""The `flowenricher run` service: worker processes receive and decode, this process
stores.

Data flow: N worker processes (SO_REUSEPORT on every listener) -> bounded queue of
FlowBatches -> this process's loop (enrichment) -> two threads of their own, each fed
through a bounded hand-off (handoff.py): WriterThread (BatchWriter) -> store (chDB
embedded or a ClickHouse server), with the spool in between when the store is away; and
the consumers (detection, anomaly scoring, traffic metrics).  A third thread calls the
tickers once a second.  This process also serves /metrics and the control socket used
by `flowenricher sql`, `lookup` and `flowenricher api`.  SIGTERM or SIGINT: workers drain their
sockets and send what they hold, the writer flushes, then the store closes.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from .batch import FlowBatch
from .collector.receiver import kernel_drops, open_socket
from .collector.worker import DONE, FAILED, FLOWS, READY, STATS, WorkerSettings, run_worker
from .control import ControlServer, LookupFn, collector_requests
from .detect.actions import BlackholeSink
from .enrich.pipeline import Enricher
from .errors import FlowEnricherError, StoreError
from .handoff import HandOff, HandOffStopped
from .metrics import CollectorMetrics, WorkerSnapshots, serve
from .storage import open_store
from .storage.base import FlowStore
from .storage.settings import StoreSettings
from .storage.spool import Spool
from .storage.writer import BatchWriter
from .storage.writer_thread import WriterThread

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSettings:
    """What the service needs, built from the validated config (see cli.py)."""

    worker: WorkerSettings
    store: StoreSettings
    workers: int = 0  # 0: one per CPU
    metrics_listen: str | None = "127.0.0.1:9601"
    queue_batches: int = 32  # decoded batches in flight from the workers: about 1 s at 300k flows/s


class _LockedStore:
    """The store shared by the writer (main thread) and the control socket (its thread)."""

    def __init__(self, store: FlowStore) -> None:
        self.store = store
        self.lock = threading.Lock()

    def query(self, sql: str, fmt: str) -> bytes:
        with self.lock:
            return self.store.query(sql, fmt)


class BatchConsumer(Protocol):
    """Sees every batch after enrichment (the detection engine, traffic metrics)."""

    def process(self, batch: FlowBatch) -> None: ...


@dataclass
class Runtime:
    """What runs in the storing process around the store: enrichment before it, consumers
    after it, tickers about once a second (detection windows, blackhole expiry) and
    closers at shutdown, in reverse order.  Built once the store is open (the PTR stage
    writes ptr_cache through it); stages hold caches and threads, so they live here, in
    the one storing process, not in the spawned workers."""

    enricher: Enricher = field(default_factory=lambda: Enricher([]))
    consumers: list[BatchConsumer] = field(default_factory=list)
    tickers: list[Callable[[float], None]] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)
    lookup: LookupFn | None = None  # `flowenricher lookup` through the control socket
    blackholes: BlackholeSink | None = None  # the blackhole manager, when BGP mitigation is on
    # What the control socket also answers, for the API in its own process (control.collector_requests):
    exporter_counters: Callable[[], Mapping[str, Mapping[str, int]]] | None = None
    interfaces: Callable[[], Mapping[str, Mapping[int, str]]] | None = None  # SNMP names per exporter
    reload_config: Callable[[], list[str]] | None = None  # re-read and apply the config file live
    reload_rules: Callable[[], int] | None = None  # re-read the rules file into the detection engine
    config_path: Path | None = None
    rules_path: Path | None = None
    anomaly: Any = None  # detect/anomaly.AnomalyScoring when anomaly.enabled (its scoring endpoint)

    def close(self) -> None:
        for close in reversed(self.closers):
            try:
                close()
            except Exception:
                log.exception("shutting down %s", close)
        self.enricher.close()


QueryFn = Callable[[str, str], bytes]
"""Runs one statement on the store (sql, output format), serialised with the writer."""

RuntimeFactory = Callable[[CollectorRegistry, QueryFn], Runtime]


class CollectorService:
    """Runs until stopped; `run()` returns the process exit code."""

    def __init__(self, settings: ServiceSettings, build_runtime: RuntimeFactory | None = None) -> None:
        self.settings = settings
        self._build_runtime = build_runtime
        self.snapshots = WorkerSnapshots()
        self.registry = CollectorRegistry()
        self._stop = threading.Event()
        self.rows_received = 0

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def run(self) -> int:
        cfg = self.settings
        # Fail before anything runs if a port is taken or an address is not ours.
        for listener in cfg.worker.listeners:
            open_socket(listener, 1 << 16).close()
        store = open_store(cfg.store)
        migrated = True
        try:
            applied = store.migrate()
            if applied:
                log.info("storage: applied migrations %s", applied)
        except StoreError as err:
            if cfg.store.embedded:
                raise  # a local engine that cannot start will not get better by waiting
            # A ClickHouse server that is down must not stop flow collection: flows go to
            # the spool and the writer migrates before its first successful insert.
            log.warning("storage: %s; collecting into the spool until the server answers", err)
            migrated = False
        where = f"embedded chDB in {os.path.abspath(cfg.store.path)}" if cfg.store.embedded else \
            f"ClickHouse at {cfg.store.host}:{cfg.store.port}"
        log.info("storage: %s, table %s", where, cfg.store.qualified_table)
        spool = Spool(cfg.store.spool_path, cfg.store.spool_max_bytes, cfg.store.spool_max_age_s,
                      registry=self.registry)
        writer = BatchWriter(store, cfg.store, spool, registry=self.registry, migrated=migrated)
        locked = _LockedStore(store)
        try:
            runtime = self._build_runtime(self.registry, locked.query) if self._build_runtime else Runtime()
        except BaseException:
            store.close()
            raise
        if runtime.enricher.stages:
            log.info("enrichment: %s", ", ".join(runtime.enricher.names))
        writer_store_lock = locked.lock
        storing = WriterThread(writer, writer_store_lock, max_pending_rows=max(cfg.store.batch_size, 1),
                               registry=self.registry).start()
        # Tickers (detection windows, blackhole expiry and reconcile with GoBGP, stats)
        # run in a thread of their own, about once a second: a GoBGP that is slow to
        # answer must not hold up the loop that takes batches from the workers.
        ticks_done = threading.Event()
        ticking = threading.Thread(target=_tick, args=(runtime.tickers, ticks_done), name="flowenricher-ticks",
                                   daemon=True)
        handoffs: list[HandOff] = [storing]
        if runtime.consumers:
            consumers = runtime.consumers

            def consume(batch: FlowBatch) -> None:
                for consumer in consumers:
                    consumer.process(batch)

            handoffs.append(HandOff("consumers", consume, max(cfg.store.batch_size, 1), registry=self.registry).start())
        # Always on: `sql` needs it in the embedded mode, `lookup` in both.
        os.makedirs(cfg.store.path, exist_ok=True)
        control = ControlServer(cfg.store.path, locked.query, runtime.lookup, collector_requests(runtime, self.registry))
        control.start()

        ctx = mp.get_context("spawn")
        out: Any = ctx.Queue(maxsize=cfg.queue_batches)
        stop = ctx.Event()
        n = cfg.workers or os.cpu_count() or 1
        procs = [ctx.Process(target=run_worker, args=(i, cfg.worker, out, stop), name=f"flowenricher-worker-{i}",
                             daemon=True) for i in range(n)]
        ports = {listener.port for listener in cfg.worker.listeners}
        self.registry.register(CollectorMetrics(self.snapshots, lambda: kernel_drops(ports), out.qsize))
        metrics_server = serve(self.registry, cfg.metrics_listen) if cfg.metrics_listen else None
        if metrics_server is not None:
            log.info("metrics on http://%s/metrics", cfg.metrics_listen)
        for proc in procs:
            proc.start()
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        exit_code = 0
        try:
            ticking.start()
            exit_code = self._loop(out, procs, stop, handoffs, runtime)
        finally:
            ticks_done.set()
            if ticking.is_alive():
                ticking.join(timeout=30)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            stop.set()
            for proc in procs:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
            for handoff in reversed(handoffs):  # detections (which may write to the store) first
                handoff.close()
            runtime.close()
            control.stop()
            if metrics_server is not None:
                metrics_server.shutdown()
            with writer_store_lock:
                store.close()
            log.info("stopped: %d flows received, stored or spooled", self.rows_received)
        return exit_code

    def _loop(self, out: Any, procs: list[Any], stop: Any, handoffs: list[HandOff], runtime: Runtime) -> int:
        ready: set[int] = set()
        done: set[int] = set()
        exit_code = 0
        stopping_since: float | None = None
        while len(done) < len(procs):
            if self._stop.is_set() and stopping_since is None:
                log.info("stopping: draining workers and flushing")
                stop.set()
                stopping_since = time.monotonic()
            if stopping_since is not None and time.monotonic() - stopping_since > 30:
                log.error("workers did not finish within 30 s; stopping anyway")
                break
            try:
                kind, worker_id, payload = out.get(timeout=0.1)
            except queue.Empty:
                kind = None
            if kind == FLOWS:
                batch: FlowBatch = payload
                self.rows_received += batch.n
                runtime.enricher.enrich(batch)
                for handoff in handoffs:
                    try:
                        handoff.put(batch)
                    except HandOffStopped as err:
                        log.error("%s; stopping", err)
                        exit_code = 1
                        self._stop.set()
            elif kind == STATS:
                self.snapshots.update(worker_id, payload)
            elif kind == READY:
                ready.add(worker_id)
                if len(ready) == len(procs):
                    for listener in payload:
                        log.info("listening: %s (%d workers)", listener, len(procs))
            elif kind == DONE:
                done.add(worker_id)
            elif kind == FAILED:
                log.error("worker %d: %s", worker_id, payload)
                exit_code = 1
                self._stop.set()
                done.add(worker_id)
            if not self._stop.is_set() and any(not p.is_alive() for p in procs if p.pid) and \
                    len(done) < len(procs) and kind is None:
                dead = [p.name for p in procs if not p.is_alive()]
                if dead:
                    log.error("worker died: %s; stopping", ", ".join(dead))
                    exit_code = 1
                    self._stop.set()
                    done.update(i for i, p in enumerate(procs) if not p.is_alive())
        return exit_code


def _tick(tickers: list[Callable[[float], None]], done: threading.Event) -> None:
    """Call every ticker about once a second until `done`; a ticker that raises is logged
    and called again at the next tick."""
    next_tick = time.time()
    while not done.is_set():
        now = time.time()
        if now >= next_tick:
            next_tick = now + 1.0 if now - next_tick > 1.0 else next_tick + 1.0
            for tick in tickers:
                try:
                    tick(now)
                except Exception:
                    log.exception("ticker %s failed", getattr(tick, "__qualname__", tick))
        done.wait(max(0.0, next_tick - time.time()))


def run_service(settings: ServiceSettings, build_runtime: RuntimeFactory | None = None) -> int:
    try:
        return CollectorService(settings, build_runtime).run()
    except FlowEnricherError as err:
        log.error("%s", err)
        return 1
