"""Backtests started through the API (``/api/v1/backtest``): jobs with a state, progress
and, once done, the report ``flowenricher backtest --format jsonl`` prints.

Each job runs in a child process (multiprocessing, spawn; backtest_process.py), not in a
thread of the API:

- Cancellable: a thread cannot be stopped in the middle of a store query or a numpy
  call, a process is killed at once (SIGKILL), and what it held (memory, its connection
  to the store or to the collector's control socket) goes with it.
- Memory: the replay's windows and slices, and chDB's caches when the child opens the
  store itself, live in the child and are returned to the system when it ends; the API's
  process, which is the collector itself when the API runs inside ``flowenricher run``,
  does not grow by what a backtest reads.
- Spawn, not fork: the API's process has threads (uvicorn's, the collector's) and, in
  the collector, chDB; a forked child could inherit a lock another thread held.

Where the child reads the flows is backtest.store_query, the CLI's: with the embedded
store it asks the running collector over its control socket (chDB admits one process per
data directory, and the collector holds it), which works in both API modes, since
``flowenricher run`` serves that socket whether the API runs inside it or beside it
(``flowenricher api``); with a ClickHouse server the child connects itself.  With the
embedded store and no collector running, the child opens the store itself, as the CLI
does; a collector started meanwhile then waits for the data directory until the
backtest ends.

Bounds (api.backtest): the range (checked by the route, 422), the number running at once
(429 beyond it), the wall time (the child is killed, the job failed).  Jobs are kept in
this process's memory only: the newest ``kept`` finished ones, and every unfinished one;
a restart forgets them (and kills their children with the API).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Literal

from appliance.flowenricher import backtest_process
from appliance.flowenricher.common.settings_base import format_duration
from appliance.flowenricher.config import Settings

from .errors import NotFound, TooMany

log = logging.getLogger(__name__)

State = Literal["queued", "running", "done", "failed", "cancelled"]
FINAL: frozenset[str] = frozenset({"done", "failed", "cancelled"})
POLL_S = 0.5
"""How often a job's watcher looks at the wall-time limit while the child is silent."""
KILL_WAIT_S = 10.0


@dataclass
class Job:
    """One backtest: what was asked, where it is, and its report once done."""

    id: str
    start: int
    end: int
    rules: str
    compare: str | None
    tune: int | None
    created_at: float
    state: State = "queued"
    started_at: float | None = None  # when the child's store answered
    finished_at: float | None = None
    replayed_s: int = 0
    flows: int = 0
    error: str | None = None
    report: list[dict[str, Any]] | None = None
    pid: int | None = None
    _began: float = field(default_factory=time.monotonic, repr=False)
    _ended: float | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in FINAL

    def elapsed_s(self) -> float:
        return (self._ended if self._ended is not None else time.monotonic()) - self._began

    def detections(self) -> dict[str, int]:
        """Detections per rule of the first rules set, from the report (empty before it)."""
        if self.report is None or not self.report:
            return {}
        first = self.report[0].get("rules_files", [None])[0]
        return {line["rule"]: int(line["detections"]) for line in self.report
                if line.get("kind") == "rule" and line.get("rules_file") == first}


@dataclass
class _Running:
    process: Any  # multiprocessing's SpawnProcess (its type is not exported)
    conn: Connection


class Backtests:
    """The jobs of one API process.  Thread-safe: routes call it from the thread pool,
    and each job has a watcher thread reading its child."""

    def __init__(self, settings: Callable[[], Settings], clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}  # in creation order
        self._running: dict[str, _Running] = {}
        self._context = mp.get_context("spawn")

    # ------------------------------------------------------------------ queries

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no backtest {job_id!r} (finished ones are kept while they are among the newest "
                           "api.backtest.kept)")
        return job

    def recent(self) -> list[Job]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._jobs.values()))

    # ------------------------------------------------------------------ changes

    def start(self, rule_sets: backtest_process.RuleSets, start: int, end: int, tune: int | None,
              rules_name: str, compare_name: str | None) -> Job:
        """A new job, its child started; TooMany when api.backtest.max_running are running."""
        cfg = self._settings()
        limits = cfg.api.backtest
        with self._lock:
            running = sum(1 for job in self._jobs.values() if not job.finished)
            if running >= limits.max_running:
                raise TooMany(f"{running} backtest{'s are' if running > 1 else ' is'} running, the most "
                              f"api.backtest.max_running ({limits.max_running}) allows: wait for it to end or "
                              "cancel one (DELETE /api/v1/backtest/ID)")
            job = Job(id=uuid.uuid4().hex[:16], start=start, end=end, rules=rules_name, compare=compare_name,
                      tune=tune, created_at=self._clock())
            parent, child = self._context.Pipe(duplex=False)
            process = self._context.Process(target=backtest_process.run, name=f"backtest-{job.id}", daemon=True,
                                            args=(child, cfg, rule_sets, start, end, tune))
            process.start()
            child.close()  # the child's end is the child's: EOF here when it exits
            job.pid = process.pid
            self._jobs[job.id] = job
            self._running[job.id] = _Running(process, parent)
        log.info("backtest %s started (pid %s): %s..%s, rules %s", job.id, job.pid, start, end, rules_name)
        threading.Thread(target=self._watch, args=(job, limits.max_wall_time_s), name=f"backtest-{job.id}",
                         daemon=True).start()
        return job

    def cancel(self, job_id: str) -> Job:
        """Stop a job: its child is killed and gone when this returns.  A finished job is
        left as it is."""
        job = self.get(job_id)
        if self._finish(job, "cancelled", None):
            log.info("backtest %s cancelled", job.id)
        return job

    def close(self) -> None:
        """Kill every child (the API stops)."""
        for job in self.recent():
            self._finish(job, "cancelled", "the API stopped")

    # ------------------------------------------------------------------ internals

    def _finish(self, job: Job, state: State, error: str | None,
                report: list[dict[str, Any]] | None = None) -> bool:
        """Put `job` in a final state (False if it already was one) and end its child."""
        with self._lock:
            if job.finished:
                return False
            job.state, job.error, job.report = state, error, report
            job.finished_at = self._clock()
            job._ended = time.monotonic()
            running = self._running.pop(job.id, None)
            self._evict()
        if running is not None:
            if running.process.is_alive():
                running.process.kill()
            running.process.join(KILL_WAIT_S)
            running.conn.close()
        return True

    def _evict(self) -> None:
        """Forget the oldest finished jobs beyond api.backtest.kept (lock held)."""
        kept = self._settings().api.backtest.kept
        finished = [job_id for job_id, job in self._jobs.items() if job.finished]
        for job_id in finished[:max(len(finished) - kept, 0)]:
            del self._jobs[job_id]

    def _watch(self, job: Job, limit_s: float) -> None:
        """Read the child's messages until it reports or ends; stop it at the wall-time limit."""
        with self._lock:
            running = self._running.get(job.id)
        if running is None:
            return
        conn = running.conn
        while not job.finished:
            left = limit_s - job.elapsed_s()
            if left <= 0:
                self._finish(job, "failed", f"stopped at the wall-time limit, api.backtest.max_wall_time "
                                            f"({format_duration(limit_s)})")
                return
            try:
                if not conn.poll(min(left, POLL_S)):
                    continue
                message = conn.recv()
            except (EOFError, OSError):  # the child ended (or was killed by cancel)
                running.process.join(KILL_WAIT_S)
                self._finish(job, "failed", f"the backtest process ended without a report "
                                            f"(exit code {running.process.exitcode})")
                return
            kind = message[0]
            if kind == "running":
                with self._lock:
                    if not job.finished:
                        job.state, job.started_at = "running", self._clock()
            elif kind == "progress":
                with self._lock:
                    job.replayed_s, job.flows = int(message[1]), int(message[3])
            elif kind == "done":
                lines: list[dict[str, Any]] = message[1]
                with self._lock:
                    job.flows = int(lines[0].get("flows", job.flows)) if lines else job.flows
                    job.replayed_s = job.end - job.start
                self._finish(job, "done", None, lines)
                log.info("backtest %s done: %s flows in %.1f s", job.id, job.flows, job.elapsed_s())
            elif kind == "failed":
                self._finish(job, "failed", str(message[1]))
                log.warning("backtest %s failed: %s", job.id, message[1])
