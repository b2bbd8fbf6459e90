"""The blackhole manager's actions as rows of ``blackhole_events`` in the flow store.

The state DB stays the one owner of what is active (DESIGN §1); this is its history
where Grafana can read it (active and past blackholes, with rule and reason, on the
security dashboard).  Rows go out from a background thread with retries, so a slow or
absent ClickHouse never holds up an announcement: the manager only queues.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..detect.outbox import DeliveryMetrics, Outbox
from ..storage.tables import BLACKHOLE_EVENTS

log = logging.getLogger(__name__)

ACTIONS = ("announce", "withdraw", "expire", "refused", "failed", "confirm", "verify", "unconfirmed", "lost")
"""confirm: in GoBGP's adj-RIB-out towards every Established router peer; verify: active
in the router's table; unconfirmed: not confirmed within blackhole.confirm_timeout; lost:
a confirmation or verification no longer holds (the reason says which)."""
SOURCES = ("detection", "api")
_SOURCE_NAMES = {"api": "api", "detection": "detection", "rule": "detection"}  # the state DB says "rule"


@dataclass(frozen=True)
class BlackholeEvent:
    """One row of ``blackhole_events``; `ts` and `expires_at` are unix seconds."""

    ts: float
    action: str
    prefix: str
    next_hop: str
    communities: tuple[str, ...]
    rule: str
    reason: str
    expires_at: float | None
    dry_run: bool
    source: str

    def row(self) -> dict[str, object]:
        """The event as a row of the table (storage/tables.py: BLACKHOLE_EVENTS)."""
        return {"ts": self.ts, "action": self.action, "prefix": self.prefix, "next_hop": self.next_hop,
                "communities": list(self.communities), "rule": self.rule, "reason": self.reason,
                "expires_at": None if self.expires_at is None else int(self.expires_at), "dry_run": int(self.dry_run),
                "source": self.source}


def insert_events_sql(database: str, events: Sequence[BlackholeEvent]) -> str:
    """One INSERT ... VALUES statement for `events`."""
    return BLACKHOLE_EVENTS.insert_sql(database, [e.row() for e in events])


class BlackholeEvents:
    """Queues events and inserts them in groups; `execute` runs one statement on the store.

    Give it the manager's ``events=`` argument; `manager_action` translates the
    manager's log actions into the table's (an extension and a dry-run announcement are
    announcements, a withdrawal for expiry an ``expire``; the others keep their names).
    """

    def __init__(self, execute: Callable[[str], object], database: str, metrics: DeliveryMetrics | None = None,
                 *, clock: Callable[[], float] = time.time, capacity: int = 10000, attempts: int = 6,
                 backoff_s: float = 1.0) -> None:
        self.database = database
        self._execute = execute
        self._clock = clock
        self._outbox: Outbox[BlackholeEvent] = Outbox(
            "blackhole_events", self._insert, metrics or DeliveryMetrics(None), capacity=capacity, batch_size=500,
            attempts=attempts, backoff_s=backoff_s)

    def _insert(self, events: list[BlackholeEvent]) -> None:
        self._execute(insert_events_sql(self.database, events))

    def record(self, action: str, prefix: str, next_hop: str, communities: Sequence[str], *, source: str,
               rule: str = "", reason: str = "", expires_at: float | None = None, dry_run: bool = False) -> bool:
        """Queue one event; False when the queue is full (counted by the outbox).

        Raises ValueError for an action or source the table does not know: a caller's
        bug, not something to store.
        """
        if action not in ACTIONS:
            raise ValueError(f"blackhole event: action {action!r} is not one of {', '.join(ACTIONS)}")
        if source not in _SOURCE_NAMES:
            raise ValueError(f"blackhole event for {prefix}: source {source!r} is not one of api, detection, rule")
        event = BlackholeEvent(self._clock(), action, prefix, next_hop, tuple(communities), rule, reason, expires_at,
                               dry_run, _SOURCE_NAMES[source])
        return self._outbox.put(event)

    def manager_action(self, action: str, prefix: str, next_hop: str, communities: Sequence[str], source: str,
                       rule: str, expires_at: float | None, reason: str = "", evidence: object = None) -> None:
        """The manager's ``_log`` call, as an event (an extension is a new announcement,
        with its new expiry; a withdrawal because of expiry is an ``expire``)."""
        del evidence  # in blackholes.txt; the table keeps the reason
        dry_run = action == "dry-run-announce"
        if action in ("extend", "dry-run-announce"):
            reason = reason or ("extended" if action == "extend" else "dry run")
            action = "announce"
        elif action == "withdraw" and reason == "expired":
            action = "expire"
        if source not in _SOURCE_NAMES:
            log.warning("blackhole event for %s: unknown source %r, stored as api", prefix, source)
            source = "api"
        self.record(action, prefix, next_hop, communities, source=source, rule=rule, reason=reason,
                    expires_at=expires_at, dry_run=dry_run)

    def flush(self, timeout_s: float = 5.0) -> bool:
        return self._outbox.flush(timeout_s)

    def close(self) -> None:
        self._outbox.close()

