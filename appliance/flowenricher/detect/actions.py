"""What a detection does: the destinations behind a rule's `action` names.

- ``alert``: one JSON line per detection appended to detections.log (synchronous: a
  local append is fast, and alerts must be written even when everything else is down);
- ``clickhouse``: rows in the ``detections`` table, through a callable that executes
  SQL (the storage layer owns the connection).  Every detection is written there,
  whatever its rule's actions (engine.RECORDED): the table is the record the status page
  and /api/v1/detections read, and a rule that only alerts must show there too.  Naming
  ``clickhouse`` in a rule is accepted (the original's rules files do) and changes nothing;
- ``slack`` and ``webhook``: an HTTP POST from a background thread, retried with
  exponential backoff, failures counted;
- ``blackhole``: a request to the blackhole manager (:class:`BlackholeSink`), from a
  background thread too, so a slow GoBGP never holds up ingest.

Every class takes its destination as constructor arguments; the service builds them
from config (see :func:`build_actions`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from ..common.private import open_private
from ..common.ratelimit import RateLimitedLog
from ..storage.tables import DETECTIONS
from .detection import Detection
from .engine import Action
from .outbox import DeliveryMetrics, Outbox, PermanentError
from .rules import Rule

__all__ = [
    "AlertLog",
    "BlackholeAction",
    "BlackholeNotifier",
    "BlackholeSink",
    "ClickHouseDetections",
    "SlackNotifier",
    "WebhookNotifier",
    "build_actions",
    "detection_row",
    "insert_detections_sql",
]

log = logging.getLogger(__name__)

USER_AGENT = "flowenricher-detection/1"


# --------------------------------------------------------------------------- alert


class AlertLog:
    """detections.log: one JSON object per line (see Detection.to_dict).

    The file is opened for each write, in append mode, so logrotate can move it away
    at any time; a failed write (disk full, permissions) is counted and logged at a
    limited rate, never raised into the engine.
    """

    name = "alert"

    def __init__(self, path: str | os.PathLike[str], metrics: DeliveryMetrics, samples: int = 5) -> None:
        self.path = Path(path)
        self._metrics = metrics
        self._samples = samples
        self._lock = threading.Lock()
        self._warn = RateLimitedLog(log, 60.0)

    def handle(self, rule: Rule, detection: Detection) -> None:
        line = json.dumps(detection.to_dict(self._samples), separators=(",", ":"), ensure_ascii=False)
        try:
            with self._lock, open_private(self.path, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        except OSError as err:
            self._metrics.failures.labels(self.name).inc()
            self._metrics.dropped.labels(self.name, "refused").inc()
            self._warn.warning("alert: cannot append to %s: %s", self.path, err)
            return
        self._metrics.delivered.labels(self.name).inc()

    def close(self) -> None:
        return None


# --------------------------------------------------------------------------- clickhouse

def detection_row(d: Detection, samples: int = 5) -> dict[str, object]:
    """`d` as a row of the detections table (column name -> value; the table's renderers
    write addresses in their stored form)."""
    return {
        "detected_at": d.detected_at, "rule": d.rule, "key": d.key, "address": d.address,
        "dst_addr": d.dst_addr, "dst_port": d.dst_port, "window_s": d.window_s, "flows": d.flows,
        "packets": d.packets, "bytes": d.bytes, "pps": d.pps, "bps": d.bps, "syn_ratio": d.syn_ratio,
        "unique_dst_ips": d.unique_dst_ips, "unique_dst_ports": d.unique_dst_ports,
        "unique_src_ips": d.unique_src_ips, "first_seen": int(d.first_seen), "last_seen": int(d.last_seen),
        "anomaly_score": d.anomaly_score, "actions": list(d.actions), "blackhole": d.blackhole,
        "samples": json.dumps(list(d.samples[:samples]), separators=(",", ":")),
    }


def insert_detections_sql(database: str, detections: Sequence[Detection], samples: int = 5) -> str:
    """One INSERT ... VALUES statement for `detections`."""
    return DETECTIONS.insert_sql(database, [detection_row(d, samples) for d in detections])


class ClickHouseDetections:
    """The detections table: every detection (not only those of rules naming
    ``clickhouse``, see the module doc) inserted in groups from a background thread.

    `execute` runs one SQL statement on the store (embedded chDB or a server); an
    exception from it is a failed attempt, retried with backoff.
    """

    name = "clickhouse"

    def __init__(self, execute: Callable[[str], object], database: str, metrics: DeliveryMetrics, *,
                 capacity: int = 10000, attempts: int = 6, backoff_s: float = 1.0) -> None:
        self.database = database
        self._execute = execute
        self._outbox: Outbox[Detection] = Outbox(self.name, self._insert, metrics, capacity=capacity,
                                                 batch_size=500, attempts=attempts, backoff_s=backoff_s)

    def _insert(self, detections: list[Detection]) -> None:
        self._execute(insert_detections_sql(self.database, detections))

    def handle(self, rule: Rule, detection: Detection) -> None:
        self._outbox.put(detection)

    def flush(self, timeout_s: float = 5.0) -> bool:
        return self._outbox.flush(timeout_s)

    def close(self) -> None:
        self._outbox.close()


# --------------------------------------------------------------------------- HTTP


def _post_json(url: str, body: Mapping[str, Any], headers: Mapping[str, str], timeout_s: float) -> None:
    """POST `body` as JSON; a 4xx answer other than 408/429 is a PermanentError."""
    data = json.dumps(body, separators=(",", ":")).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": USER_AGENT, **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            answer.read()
    except urllib.error.HTTPError as err:
        if 400 <= err.code < 500 and err.code not in (408, 429):
            raise PermanentError(f"HTTP {err.code} {err.reason}") from err
        raise


def url_problem(url: str) -> str | None:
    """Why `url` cannot receive detections, or None; config validation applies it too."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as err:
        return f"{url!r} is not a URL: {err}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http(s) URL with a host"
    return None


def _where(url: str) -> str:
    """Scheme and host of `url`: enough to tell endpoints apart in logs, without the secret
    path of a Slack webhook."""
    problem = url_problem(url)
    if problem is not None:
        raise ValueError(problem)
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}"


class WebhookNotifier:
    """``webhook``: each detection POSTed as JSON (Detection.to_dict) to `url`."""

    name = "webhook"

    def __init__(self, url: str, metrics: DeliveryMetrics, *, headers: Mapping[str, str] | None = None,
                 timeout_s: float = 5.0, capacity: int = 1000, attempts: int = 6, backoff_s: float = 1.0,
                 samples: int = 5) -> None:
        self.url = url
        self.where = _where(url)
        self._headers = dict(headers or {})
        self._timeout_s = timeout_s
        self._samples = samples
        self._outbox: Outbox[Detection] = Outbox(self.name, self._send, metrics, capacity=capacity,
                                                 attempts=attempts, backoff_s=backoff_s)

    def _send(self, detections: list[Detection]) -> None:
        for detection in detections:
            _post_json(self.url, detection.to_dict(self._samples), self._headers, self._timeout_s)

    def handle(self, rule: Rule, detection: Detection) -> None:
        self._outbox.put(detection)

    def flush(self, timeout_s: float = 5.0) -> bool:
        return self._outbox.flush(timeout_s)

    def close(self) -> None:
        self._outbox.close()


class SlackNotifier(WebhookNotifier):
    """``slack``: a Slack incoming webhook gets ``{"text": ...}``, one line per detection."""

    name = "slack"

    def _send(self, detections: list[Detection]) -> None:
        for detection in detections:
            _post_json(self.url, {"text": f":rotating_light: {detection.summary()}"}, self._headers, self._timeout_s)


# --------------------------------------------------------------------------- blackhole


class BlackholeSink(Protocol):
    """The blackhole manager's entry point for detections (it owns safety and state).

    `prefix` is the key's host route; `evidence["key"]` says whether it is a source
    ("src") or a victim ("dst").  `next_hop` is the rule's blackhole_next_hop as
    validated (common/bgp_values.py): it serves addresses of its own family, and the
    manager gives the others the configured next hop of theirs, so a rule in the
    original format (one IPv4 next hop) also blackholes IPv6 addresses correctly.  It
    must not raise for a refused request.
    """

    def request(self, prefix: str, next_hop: str | None, communities: list[str], duration_s: float, rule: str,
                evidence: dict[str, Any]) -> None: ...


def request_blackhole(sink: BlackholeSink, rule: Rule, detection: Detection, samples: int) -> None:
    """Hand one detection to `sink` as the blackhole request of `rule` (its next hop,
    communities and duration; the detection with `samples` sample flows as evidence):
    the one place a detection becomes a request, for the service and for backtests."""
    sink.request(detection.prefix, rule.blackhole_next_hop, list(rule.blackhole_communities),
                 rule.blackhole_time_s, rule.name, detection.to_dict(samples))


class BlackholeAction:
    """``blackhole``: detections whose flows reached the rule's blackhole_count go to the
    sink, from a background thread.  A local manager is tried once (it persists a request
    before announcing it and retries GoBGP itself); a remote owner (blackhole/owner.py)
    is retried `attempts` times while it cannot be reached."""

    name = "blackhole"

    def __init__(self, sink: BlackholeSink, metrics: DeliveryMetrics, *, samples: int = 3,
                 capacity: int = 1000, attempts: int = 1) -> None:
        self._sink = sink
        self._samples = samples
        self._outbox: Outbox[tuple[Rule, Detection]] = Outbox(self.name, self._request, metrics, capacity=capacity,
                                                              attempts=attempts)

    def _request(self, items: list[tuple[Rule, Detection]]) -> None:
        for rule, detection in items:
            request_blackhole(self._sink, rule, detection, self._samples)

    def handle(self, rule: Rule, detection: Detection) -> None:
        if detection.blackhole:
            self._outbox.put((rule, detection))

    def flush(self, timeout_s: float = 5.0) -> bool:
        return self._outbox.flush(timeout_s)

    def close(self) -> None:
        self._outbox.close()


class BlackholeNotifier:
    """Tells the operator what the blackhole manager did (announce, withdraw, failed,
    cap reached) through the alert channels of ``detection``: one JSON line in the
    alert log (``"event": "blackhole"``, beside the detections), a Slack message and a
    POST to each webhook, from a background thread with the detections' retries."""

    name = "blackhole-notice"

    def __init__(self, *, alerts_log: str | os.PathLike[str] | None = None, slack_webhook: str | None = None,
                 webhooks: Sequence[str | Mapping[str, Any]] = (), timeout_s: float = 5.0) -> None:
        # Delivery counters of its own, on no registry: build_actions registers the
        # detections' (same names) on the service's registry.
        metrics = DeliveryMetrics(None)
        self._log_path = Path(alerts_log) if alerts_log is not None else None
        self._slack = slack_webhook
        self._hooks = [(item, {}) if isinstance(item, str) else (str(item["url"]), dict(item.get("headers") or {}))
                       for item in webhooks]
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._outbox: Outbox[dict[str, Any]] | None = None
        if self._slack or self._hooks:
            self._outbox = Outbox(self.name, self._send, metrics)

    def blackhole_notice(self, action: str, prefix: str, source: str, rule: str, reason: str) -> None:
        notice = {"event": "blackhole", "action": action, "prefix": prefix, "source": source, "rule": rule,
                  "reason": reason, "time": datetime.now(UTC).isoformat(timespec="milliseconds")}
        if self._log_path is not None:
            try:
                with self._lock, open_private(self._log_path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(notice, separators=(",", ":")) + "\n")
            except OSError as err:
                log.warning("blackhole notice: cannot write %s: %s", self._log_path, err)
        if self._outbox is not None:
            self._outbox.put(notice)

    def _send(self, notices: list[dict[str, Any]]) -> None:
        for notice in notices:
            if self._slack:
                text = f":no_entry: blackhole {notice['action']} {notice['prefix']}"
                text += f" ({notice['rule'] or notice['source']})" + (f": {notice['reason']}" if notice["reason"] else "")
                _post_json(self._slack, {"text": text}, {}, self._timeout_s)
            for url, headers in self._hooks:
                _post_json(url, notice, headers, self._timeout_s)

    def flush(self, timeout_s: float = 5.0) -> bool:
        return self._outbox.flush(timeout_s) if self._outbox is not None else True

    def close(self) -> None:
        if self._outbox is not None:
            self._outbox.close()


# --------------------------------------------------------------------------- wiring


def build_actions(registry: CollectorRegistry | None, *, alerts_log: str | os.PathLike[str] | None = None,
                  clickhouse: tuple[Callable[[str], object], str] | None = None, slack_webhook: str | None = None,
                  webhooks: Sequence[str | Mapping[str, Any]] = (),
                  blackhole_sink: BlackholeSink | None = None, blackhole_attempts: int = 1) -> list[Action]:
    """The configured actions, sharing one set of delivery counters on `registry`.

    `clickhouse` is (execute, database); `webhooks` items are URLs or
    ``{"url": ..., "headers": {...}}``.
    """
    metrics = DeliveryMetrics(registry)
    actions: list[Action] = []
    if alerts_log is not None:
        actions.append(AlertLog(alerts_log, metrics))
    if clickhouse is not None:
        actions.append(ClickHouseDetections(clickhouse[0], clickhouse[1], metrics))
    if slack_webhook:
        actions.append(SlackNotifier(slack_webhook, metrics))
    for item in webhooks:
        if isinstance(item, str):
            actions.append(WebhookNotifier(item, metrics))
        else:
            actions.append(WebhookNotifier(str(item["url"]), metrics, headers=item.get("headers")))
    if blackhole_sink is not None:
        actions.append(BlackholeAction(blackhole_sink, metrics, attempts=blackhole_attempts))
    return actions
