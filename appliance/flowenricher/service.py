"""The `flowenricher run` service: worker processes receive and decode, this process
stores (or, with ``kafka.role: collect``, produces the decoded batches to Kafka: see
``_run_collector``; with ``kafka.role: store`` it consumes them instead of workers).

Data flow: N worker processes (SO_REUSEPORT on every listener) -> a pipe per worker,
each fed from a bounded outbox of FlowBatches -> this process's loop (enrichment) -> two
threads of their own, each fed
through a bounded hand-off (handoff.py): WriterThread (BatchWriter) -> store (chDB
embedded or a ClickHouse server), with the spool in between when the store is away; and
the consumers (detection, anomaly scoring, traffic metrics).  A third thread calls the
tickers once a second.  This process also serves /metrics and the control socket used
by `flowenricher sql`, `lookup` and `flowenricher api`.  SIGTERM or SIGINT: workers drain their
sockets and send what they hold, the writer flushes, then the store closes.

A worker that dies (SIGKILL, the OOM killer, a bug) is started again after a back-off,
its counters kept (metrics.WorkerSnapshots.retire); only a port that cannot be bound at
start, or one another program already holds (collector/receiver.refuse_shared_port),
stops the service.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge

from .batch import FlowBatch
from .collector.receiver import claim_port, kernel_drops, refuse_shared_port
from .collector.worker import DONE, FAILED, FLOWS, READY, STATS, WorkerSettings, run_worker
from .collector_local import LocalCollector
from .common.private import private_dir
from .control import ControlServer, LookupFn
from .detect.actions import BlackholeSink
from .enrich.pipeline import Enricher
from .errors import FlowEnricherError, StoreError
from .handoff import Grouped, HandOff, HandOffStopped
from .kafka.input import KafkaInput, KafkaInputSettings
from .kafka.output import KafkaOutput, KafkaOutputSettings
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
    kafka: KafkaInputSettings | None = None  # flows from a Kafka topic instead of UDP (kafka/input.py)
    kafka_output: KafkaOutputSettings | None = None  # role collect: decoded flows to Kafka, no store (kafka/output.py)


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
    # What the collector's operations act on (collector_local.LocalCollector), for the API:
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
        self.snapshots = WorkerSnapshots(settings.worker.max_exporters)
        self.registry = CollectorRegistry()
        self._stop = threading.Event()
        self.rows_received = 0
        self.restarts = 0
        self._depths: dict[int, int] = {}  # batches waiting in each worker's outbox, as last reported
        self._started = False  # every worker has been ready once: from then on bind failures are retried

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def run(self) -> int:
        cfg = self.settings
        if cfg.kafka_output is not None:
            return self._run_collector(cfg.kafka_output)
        if cfg.kafka is None:
            self._claim_listeners()
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
        if store.engine_memory_bytes() is not None:
            Gauge("flowenricher_store_engine_bytes", "Bytes the embedded engine (chDB) holds by its memory tracker",
                  registry=self.registry).set_function(lambda: store.engine_memory_bytes() or 0)
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

            def consume(batch: FlowBatch | Grouped) -> None:
                assert isinstance(batch, FlowBatch)  # only the writer is handed groups
                for consumer in consumers:
                    consumer.process(batch)

            handoffs.append(HandOff("consumers", consume, max(cfg.store.batch_size, 1), registry=self.registry).start())
        # Always on: `sql` needs it in the embedded mode, `lookup` in both.
        private_dir(cfg.store.path)
        control = ControlServer(cfg.store.path, locked.query, runtime.lookup, LocalCollector(runtime, self.registry))
        control.start()

        # With a Kafka input the flows come from the topic: no UDP workers.
        workers, stop, metrics_server = self._workers_and_metrics(0 if cfg.kafka is not None else None)
        for slot in workers:
            slot.start()
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        exit_code = 0
        kafka: KafkaInput | None = None
        try:
            ticking.start()
            if cfg.kafka is not None:
                kafka = KafkaInput(cfg.kafka, registry=self.registry)
                log.info("consuming topic %s of %s as group %s", cfg.kafka.topic, ",".join(cfg.kafka.brokers),
                         cfg.kafka.group_id)
                exit_code = self._kafka_loop(kafka, handoffs, runtime)
            else:
                exit_code = self._loop(workers, stop, handoffs, runtime)
        finally:
            ticks_done.set()
            if ticking.is_alive():
                ticking.join(timeout=30)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            stop.set()
            for slot in workers:
                slot.end()
            for handoff in reversed(handoffs):  # detections (which may write to the store) first
                handoff.close()
            if kafka is not None:  # after the writer's last flush: commits what it stored
                kafka.close()
            runtime.close()
            control.stop()
            if metrics_server is not None:
                metrics_server.shutdown()
            with writer_store_lock:
                store.close()
            log.info("stopped: %d flows received, stored or spooled", self.rows_received)
        return exit_code

    def _claim_listeners(self) -> None:
        """Fail before anything runs if a port is taken (by anyone: see refuse_shared_port)
        or an address is not ours."""
        cfg = self.settings
        for listener in cfg.worker.listeners:
            refuse_shared_port(listener)
        # Kept open until the process ends: a second service starting at the same
        # moment passed the check above too, and is refused here.
        self._port_claims = [claim_port(port) for port in sorted({lst.port for lst in cfg.worker.listeners} - {0})]
        _warn_if_open(cfg.worker)

    def _workers_and_metrics(self, n: int | None) -> tuple[list[_WorkerSlot], Any, Any]:
        """`n` worker slots (None: the configured count), not started; the collector's
        metrics registered and served.  Returns the slots, their stop event and the
        metrics server (None when metrics are off)."""
        cfg = self.settings
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        if n is None:
            n = cfg.workers or os.cpu_count() or 1
        worker_settings = dataclasses.replace(cfg.worker, log_level=logging.getLogger().getEffectiveLevel(),
                                              outbox_batches=max(2, cfg.queue_batches // max(n, 1)))
        workers = [_WorkerSlot(i, _spawner(ctx, worker_settings, stop)) for i in range(n)]
        ports = {listener.port for listener in cfg.worker.listeners}
        self.registry.register(CollectorMetrics(self.snapshots, lambda: kernel_drops(ports),
                                                lambda: sum(self._depths.values()), lambda: self.restarts))
        metrics_server = serve(self.registry, cfg.metrics_listen) if cfg.metrics_listen else None
        if metrics_server is not None:
            log.info("metrics on http://%s/metrics", cfg.metrics_listen)
        return workers, stop, metrics_server

    def _run_collector(self, output_settings: KafkaOutputSettings) -> int:
        """Role collect: the UDP workers' batches, not enriched, to the Kafka output in a
        thread of its own (kafka/output.py); no store, no enrichment, no detection."""
        cfg = self.settings
        self._claim_listeners()
        output = KafkaOutput(output_settings, registry=self.registry)
        producing = HandOff("producer", output.process, max(cfg.store.batch_size, 1), idle=output.idle,
                            finish=output.finish, registry=self.registry).start()
        workers, stop, metrics_server = self._workers_and_metrics(None)
        log.info("producing to topic %s of %s (role collect: no store, enrichment, detection or API here)",
                 output_settings.topic, ",".join(output_settings.brokers))
        for slot in workers:
            slot.start()
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        exit_code = 0
        try:
            exit_code = self._loop(workers, stop, [producing], Runtime())
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            stop.set()
            for slot in workers:
                slot.end()
            producing.close()
            output.close()
            if metrics_server is not None:
                metrics_server.shutdown()
            log.info("stopped: %d flows received, produced or spooled", self.rows_received)
        return exit_code

    def _loop(self, workers: list[_WorkerSlot], stop: Any, handoffs: list[HandOff], runtime: Runtime) -> int:
        exit_code = 0
        stopping_since: float | None = None
        while not all(slot.done for slot in workers):
            if self._stop.is_set() and stopping_since is None:
                log.info("stopping: draining workers and flushing")
                stop.set()
                stopping_since = time.monotonic()
            if stopping_since is not None and time.monotonic() - stopping_since > 30:
                log.error("workers did not finish within 30 s; stopping anyway")
                break
            pipes = {slot.conn: slot for slot in workers if slot.conn is not None}
            if pipes:
                readable = wait(list(pipes), timeout=0.1)
            else:
                readable = []
                time.sleep(0.1)
            for conn in readable:
                slot = pipes[conn]  # type: ignore[index]
                try:
                    kind, worker_id, payload = slot.conn.recv()  # type: ignore[union-attr]
                except (EOFError, OSError):  # the worker exited (or was killed): nothing more will come
                    slot.close_pipe()
                    continue
                except Exception:  # a message that does not unpickle: skip it, keep the worker
                    log.exception("worker %d: unreadable message", slot.id)
                    continue
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
                    snapshot, self._depths[worker_id] = payload
                    self.snapshots.update(worker_id, snapshot)
                elif kind == READY:
                    slot.ready()
                    if not self._started and all(w.is_ready for w in workers):
                        self._started = True
                        for listener in payload:
                            log.info("listening: %s (%d workers)", listener, len(workers))
                elif kind == DONE:
                    slot.finished = True
                elif kind == FAILED:
                    slot.bind_failed = True
                    if not self._started:  # at start, a port that cannot be bound stops the service
                        log.error("worker %d: %s", worker_id, payload)
                        exit_code = 1
                        self._stop.set()
                    else:
                        log.error("worker %d: %s; trying again", worker_id, payload)
            for slot in workers:
                if slot.exited():
                    self._worker_exited(slot, stopping=stopping_since is not None)
                elif slot.proc is None and not slot.done:  # waiting to be started again
                    if stopping_since is not None:
                        slot.done = True
                    elif slot.restart_due(time.monotonic()):
                        slot.start()
                        log.info("worker %d started again (pid %s)", slot.id, slot.pid)
        return exit_code

    def _kafka_loop(self, kafka: KafkaInput, handoffs: list[HandOff], runtime: Runtime) -> int:
        """Blocks from the topic, each through enrichment to the consumers and, as one
        group with its token, to the writer (handoffs[0]); until stopped."""
        writer, others = handoffs[0], handoffs[1:]
        while not self._stop.is_set():
            blocks = kafka.poll()
            # The decoder's counters, published like a UDP worker's (id -1: the input).
            self.snapshots.update(-1, kafka.decoder.stats.snapshot())
            for block in blocks:
                batch = block.batch
                self.rows_received += batch.n
                if batch.n:
                    runtime.enricher.enrich(batch)
                try:
                    writer.put(Grouped(batch, block.token, kafka.stored_callback(block)))
                    for handoff in others:
                        handoff.put(batch)
                except HandOffStopped as err:
                    log.error("%s; stopping", err)
                    return 1
        log.info("stopping: flushing what was consumed")
        return 0

    def _worker_exited(self, slot: _WorkerSlot, stopping: bool) -> None:
        """A worker's pipe is closed and its process gone: done if it was told to stop,
        else its counters are kept and it is started again after a back-off."""
        how = slot.reap()
        self._depths.pop(slot.id, None)
        if slot.finished or stopping or self._stop.is_set():
            slot.done = True
            if not slot.finished:
                log.warning("worker %d %s while stopping", slot.id, how)
            return
        self.snapshots.retire(slot.id)
        self.restarts += 1
        delay = slot.schedule_restart(time.monotonic())
        if not slot.bind_failed:
            log.error("worker %d %s; starting it again in %.1f s (%d restarts so far)", slot.id, how, delay,
                      self.restarts)


# A worker that dies again soon after its start waits longer before the next one, up to
# the last step; one that ran for RESTART_RESET_S starts the sequence afresh.
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
RESTART_RESET_S = 60.0


class _WorkerSlot:
    """One worker position (its id, hence its state file): the current process, its pipe,
    and when to start it again after it died."""

    def __init__(self, worker_id: int, spawn: Callable[[int], tuple[Any, Connection]]) -> None:
        self.id = worker_id
        self._spawn = spawn
        self.proc: Any = None
        self.conn: Connection | None = None
        self.pid: int | None = None
        self.started_at = 0.0
        self.restart_at: float | None = None
        self.deaths = 0  # in a row, each soon after its start
        self.is_ready = False
        self.finished = False  # sent DONE
        self.bind_failed = False
        self.done = False  # nothing more to wait for

    def start(self) -> None:
        self.proc, self.conn = self._spawn(self.id)
        self.pid = self.proc.pid
        self.started_at = time.monotonic()
        self.restart_at = None
        self.finished = self.bind_failed = False
        log.debug("worker %d: pid %s", self.id, self.pid)

    def ready(self) -> None:
        self.is_ready = True
        log.info("worker %d ready (pid %s)", self.id, self.pid)

    def close_pipe(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def exited(self) -> bool:
        """The pipe reached its end and the process is gone (or the process is gone and
        its pipe has nothing left to read)."""
        if self.proc is None or self.proc.exitcode is None:
            return False
        if self.conn is not None and self.conn.poll():
            return False  # read what it sent before it went
        self.close_pipe()
        return True

    def reap(self) -> str:
        """Forget the exited process; how it ended, in words."""
        code = self.proc.exitcode
        self.proc.join(timeout=1)
        self.proc = None
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"(pid {self.pid}) was killed by {name}"
        return f"(pid {self.pid}) exited with status {code}"

    def schedule_restart(self, now: float) -> float:
        self.deaths = 1 if now - self.started_at >= RESTART_RESET_S else self.deaths + 1
        delay = RESTART_BACKOFF_S[min(self.deaths, len(RESTART_BACKOFF_S)) - 1]
        self.restart_at = now + delay
        return delay

    def restart_due(self, now: float) -> bool:
        return self.restart_at is not None and now >= self.restart_at

    def end(self) -> None:
        """Wait a little for the process, then kill it (service shutdown)."""
        if self.proc is not None:
            self.proc.join(timeout=5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(timeout=5)
        self.close_pipe()


def _spawner(ctx: Any, settings: WorkerSettings, stop: Any) -> Callable[[int], tuple[Any, Connection]]:
    """Starts worker `i` with a pipe of its own; the service keeps only the reading end, so
    the pipe reads end of file once the worker is gone, however it went."""

    def spawn(worker_id: int) -> tuple[Any, Connection]:
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=run_worker, args=(worker_id, settings, writer, stop),
                           name=f"flowenricher-worker-{worker_id}", daemon=True)
        proc.start()
        writer.close()
        return proc, reader

    return spawn


def _warn_if_open(settings: WorkerSettings) -> None:
    """Listening on every address is the default (routers must reach the collector), but
    without an allow list anyone who reaches the port can feed flows: say so."""
    if settings.allowed_exporters:
        return
    wildcard = [str(x) for x in settings.listeners if x.address in ("0.0.0.0", "::")]
    if wildcard:
        log.warning("listening for %s on every address and collectors.allowed_exporters is empty: any host that "
                    "reaches these ports can send flows; list your exporters' addresses there", ", ".join(wildcard))


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
