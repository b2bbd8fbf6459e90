"""The control plane as its own process (``flowenricher api``), beside a running collector.

The collector (``flowenricher run``) stays the one owner of announcements (DESIGN §1:
detection-triggered blackholes must work while the API is down) and of the embedded
store (chDB admits one process per data directory).  This module builds the same
:class:`~.deps.ApiDeps` as the in-process mode (inprocess.py), with the collector's
operations (appliance/flowenricher/collector_api.py) over its control socket
(control.SocketCollector): the blackhole manager, decoder counters and interface names,
live config and rules reloads, metrics and anomaly scoring; and the socket's lookup and
flow queries in the embedded mode.  With a ClickHouse server the API queries it directly.
Tokens and the audit log are in the state DB, which this process opens too (SQLite in
WAL mode with a busy timeout, so both processes write safely).

When no collector answers, what needs it is a 503 (logged once per outage, not per
call); the API keeps serving the rest and picks the collector up when it starts.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector as PrometheusCollector

from appliance.flowenricher import control
from appliance.flowenricher.blackhole.safety import SafetyPolicy
from appliance.flowenricher.blackhole.state import Blackhole, StateDB
from appliance.flowenricher.collector_api import Collector
from appliance.flowenricher.common.private import private_dir
from appliance.flowenricher.config import Settings
from appliance.flowenricher.control import CollectorUnavailable, SocketCollector
from appliance.flowenricher.errors import StoreError

from .deps import ApiDeps, applied_by
from .errors import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

ANSWER_TIMEOUT_S = 30.0
"""How long a request to the collector may take (an announcement waits for GoBGP)."""
QUERY_TIMEOUT_S = 300.0
"""How long a flow query through the collector may take (as `flowenricher sql`)."""


class RemoteCollector(SocketCollector):
    """The running collector as the API process sees it: its operations over the control
    socket (use :meth:`operations`), and the flow queries and lookups it answers there.
    No collector answering is a 503 (Unavailable), logged when the outage starts and when
    it ends, never per call."""

    def __init__(self, data_dir: str, timeout_s: float = ANSWER_TIMEOUT_S,
                 query_timeout_s: float = QUERY_TIMEOUT_S) -> None:
        super().__init__(data_dir, timeout_s)
        self.query_timeout_s = query_timeout_s
        self._lock = threading.Lock()
        self._down: bool | None = None  # None: not asked yet

    def query(self, sql: str, fmt: str) -> bytes:
        """A flow query run by the collector (the embedded store lives in its process)."""
        return self._running(lambda: control.query_running(self.data_dir, sql, fmt, self.query_timeout_s))

    def lookup(self, ip: str) -> dict[str, Any]:
        return self._running(lambda: control.lookup_running(self.data_dir, ip, self.timeout_s))

    def _running(self, ask: Callable[[], T | None]) -> T:
        """`ask`'s answer; None from it means no collector listens (503, like an outage)."""
        try:
            result = ask()
            if result is None:
                raise CollectorUnavailable(f"no collector answers on {self.where}")
        except CollectorUnavailable as err:
            raise self.unavailable(err) from err
        self.answered()
        return result

    def unavailable(self, err: CollectorUnavailable) -> Unavailable:
        with self._lock:
            was_down, self._down = self._down, True
        if not was_down:
            log.warning("collector: %s; what needs it answers 503 until it does", err)
        return Unavailable("the collector (flowenricher run) is not answering; see the API's log")

    def answered(self) -> None:
        with self._lock:
            was_down, self._down = self._down, False
        if was_down:
            log.info("collector: answering again on %s", self.where)


class CollectorMetrics(PrometheusCollector):
    """The collector's Prometheus metrics in this process's registry, read at each
    scrape, so ``/metrics`` and the status page's ingest counters show the collector's
    as they do in-process.  None while no collector answers (the API's own metrics stay)."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def describe(self) -> list[Metric]:
        return []  # names unknown until scraped; nothing for the registry to reserve

    def collect(self) -> Iterator[Metric]:
        try:
            text = self.collector.metrics()
        except Unavailable:
            return
        yield from text_string_to_metric_families(text)


class CollectorState(StateDB):
    """The state DB opened in the API process: tokens and the audit log are read and
    written here; the blackhole history comes from the collector, which owns it."""

    def __init__(self, url: str, collector: Collector) -> None:
        super().__init__(url)
        self.collector = collector

    def history(self, limit: int = 100) -> list[Blackhole]:
        return self.collector.blackhole_history(limit)


class RemoteBlackholes:
    """The collector's blackhole manager over its control socket, with the surface the
    API uses (announcements.Blackholes).  A refusal by the safety policy comes back as
    the same Refused, with the policy's sentence, so the API answers the same 409.

    `policy` is the collector's as far as the API needs it (whether it is a dry run):
    built from the config, kept in step with replacements and with what each
    announcement's answer says.
    """

    def __init__(self, collector: Collector, state: CollectorState, policy: SafetyPolicy) -> None:
        self.collector = collector
        self.state = state
        self.policy = policy

    def announce(self, prefix: str, next_hop: str | None = None, communities: Sequence[str] | None = None,
                 duration_s: float | None = None, source: str = "api", rule: str = "",
                 evidence: dict[str, Any] | None = None, role: str = "manual") -> Blackhole:
        answer = self.collector.blackhole_announce(prefix, next_hop,
                                                   list(communities) if communities is not None else None,
                                                   duration_s, source, rule, evidence, role)
        if answer.dry_run != self.policy.settings.dry_run:
            self.policy = SafetyPolicy(dataclasses.replace(self.policy.settings, dry_run=answer.dry_run))
        return answer.blackhole

    def withdraw(self, prefix: str, reason: str = "api") -> Blackhole | None:
        return self.collector.blackhole_withdraw(prefix, reason)

    def active(self) -> list[Blackhole]:
        return self.collector.blackhole_active()


class _RemoteModel:
    """The collector's model as the scoring endpoint sees it: each score() asks the
    collector, which answers the model's threshold and training time with the scores."""

    def __init__(self, collector: Collector) -> None:
        self._collector = collector
        self.threshold = 0.0
        self.trained_at = 0.0

    def score(self, vectors: Any) -> Any:
        answer = _anomaly_call(lambda: self._collector.anomaly_score([[float(x) for x in v] for v in vectors]))
        self.threshold, self.trained_at = answer.threshold, answer.trained_at
        return np.asarray(answer.scores, dtype=np.float64)


class RemoteAnomaly:
    """Anomaly scoring for `flowenricher api`: the model lives in the collector (it trains
    it from the flows), so scores are computed there; no scoring there is a 503."""

    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    @property
    def model(self) -> _RemoteModel:
        """The collector's model; 503 (Unavailable) when it scores nothing or has no model
        yet, as the endpoint answers in-process.  One round trip on the control socket."""
        found = _RemoteModel(self._collector)
        found.score([])  # asks the collector: its threshold and training time, or why not
        return found

    def status(self) -> dict[str, Any]:
        return _anomaly_call(self._collector.anomaly_status)


def _anomaly_call(ask: Callable[[], T]) -> T:
    """An anomaly operation on the collector; its refusal (scoring off, no model yet) is a
    503 as in-process."""
    try:
        return ask()
    except StoreError as err:
        raise Unavailable(str(err)) from err


@dataclasses.dataclass
class RemoteApi:
    """The API process's parts: the ApiDeps for create_app, and what to close at exit."""

    deps: ApiDeps
    collector: RemoteCollector
    closers: list[Callable[[], None]]

    def close(self) -> None:
        for close in reversed(self.closers):
            try:
                close()
            except Exception:
                log.exception("closing %s", close)


def remote_deps(cfg: Settings, config_path: Path | None, rules_path: Path | None,
                registry: CollectorRegistry | None = None, collector: RemoteCollector | None = None) -> RemoteApi:
    """ApiDeps over the collector that runs with `cfg`'s data directory (its control
    socket is ``<storage.path>/flowenricher.sock``)."""
    from appliance.flowenricher.wiring import safety_settings, store_settings

    collector = collector or RemoteCollector(str(cfg.storage.path))
    operations = collector.operations()
    private_dir(cfg.storage.path)  # 0700 when new, as `run` makes it
    state = CollectorState(cfg.storage.state_db, operations)
    closers: list[Callable[[], None]] = [state.close]
    blackholes = RemoteBlackholes(operations, state, SafetyPolicy(safety_settings(cfg)))
    store = store_settings(cfg)
    query: Callable[[str, str], bytes]
    if store.embedded:
        query = collector.query
    else:  # a ClickHouse server: no need to go through the collector
        from appliance.flowenricher.storage.server import ServerStore

        server = ServerStore(store)
        closers.append(server.close)
        query = server.query

    def config_applied(new: Settings, later: list[str]) -> None:
        blackholes.policy = SafetyPolicy(safety_settings(new))  # the collector's, as it now is
        if later:
            log.warning("config saved; %s take effect at the collector's next start", ", ".join(later))

    apply_config, apply_rules = applied_by(operations, config_path, rules_path, config_applied)

    registry = registry or CollectorRegistry()
    registry.register(CollectorMetrics(operations))
    deps = ApiDeps(
        settings=cfg, blackholes=blackholes, registry=registry, query=query, config_path=config_path,
        rules_path=rules_path, lookup=collector.lookup, collector=operations, apply_config=apply_config,
        apply_rules=apply_rules, dev_mode=cfg.api.dev_mode, max_body_bytes=cfg.api.max_body_bytes,
        anomaly=RemoteAnomaly(operations),
    )
    return RemoteApi(deps, collector, closers)


def check_collector(collector: RemoteCollector, config_path: Path | None, rules_path: Path | None) -> bool:
    """Ask the collector once at start; warn when it runs with other files than this API
    (replacements would be saved where it does not read them, and it refuses them).
    False when no collector answers (logged; the API starts anyway)."""
    try:
        status = collector.operations().status()
    except Unavailable:
        return False
    for what, mine in (("config", config_path), ("rules", rules_path)):
        theirs = status.get(what)
        if (mine is None) != (theirs is None) or (mine is not None and Path(str(theirs)).resolve() != mine.resolve()):
            log.warning("collector (pid %s) runs with %s %s, this API with %s: replacing it through the API "
                        "will be refused", status.get("pid"), what, theirs, mine)
    log.info("collector: pid %s answers on %s", status.get("pid"), collector.where)
    return True


def serve_api(cfg: Settings, config_path: Path | None, rules_path: Path | None) -> int:
    """``flowenricher api``: serve the API on api.listen until SIGTERM or SIGINT."""
    from .app import create_app
    from .server import ApiServer

    remote = remote_deps(cfg, config_path, rules_path)
    try:
        app = create_app(remote.deps)
        check_collector(remote.collector, config_path, rules_path)
        server = ApiServer(app, cfg.api.host, cfg.api.port, cfg.api.tls)
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            server.start()
            while not stop.wait(0.5):
                pass
            log.info("stopping the API")
        finally:
            server.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        remote.close()
    return 0
