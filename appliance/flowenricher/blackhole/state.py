"""The persisted set of blackholes (SQLAlchemy; SQLite by default).

A blackhole row lives from its announcement until it is withdrawn; ``withdrawn_at``
stays NULL while it is active.  Expiry is a time in the row, not a timer in memory,
so a restart of flowenricher finds what is still due and what expired while it was
down (FastNetMon's users lost bans on restart; this is the fix).

A blackhole GoBGP refused for good is *failed*: withdrawn at the moment of the refusal
(so it holds no slot of the active cap and is never retried) with ``failed_reason``
set to GoBGP's reason.  :attr:`Blackhole.state` names where a row stands.

"Announced" only says GoBGP took the route.  Two later proofs are kept as times in the
row, set when seen and cleared when lost: ``confirmed_at`` (the route is in GoBGP's
adj-RIB-out towards every Established router peer: it was sent) and ``verified_at``
(the router's own route table holds it as active, read over the RouterOS API).
``waiting_since`` is when the current wait for confirmation began (the request, a
re-announcement, or the loss of a confirmation); ``unconfirmed_at`` when that wait was
told as too long.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import JSON, Float, Integer, String, create_engine, event, func, inspect, select, text, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from ..common.private import private_file


class _Base(DeclarativeBase):
    pass


class BlackholeRow(_Base):
    __tablename__ = "blackholes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(64), index=True)
    next_hop: Mapped[str] = mapped_column(String(64))
    communities: Mapped[list[str]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(16))  # "api" or "rule"
    rule: Mapped[str] = mapped_column(String(128), default="")
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: until withdrawn
    withdrawn_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    withdraw_reason: Mapped[str] = mapped_column(String(64), default="")
    announced: Mapped[bool] = mapped_column(default=False)  # GoBGP confirmed the last announcement
    failed_reason: Mapped[str] = mapped_column(String(512), default="")  # set: refused for good
    role: Mapped[str] = mapped_column(String(16), default="")  # "source" or "victim" (safety.pool_of)
    confirmed_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # in adj-RIB-out of every peer
    verified_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # active in the router's table
    waiting_since: Mapped[float | None] = mapped_column(Float, nullable=True)  # start of the wait to confirm
    unconfirmed_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # the wait was told as too long


_ADDED_COLUMNS = {"failed_reason": "VARCHAR(512) NOT NULL DEFAULT ''", "role": "VARCHAR(16) NOT NULL DEFAULT ''",
                  "confirmed_at": "FLOAT", "verified_at": "FLOAT", "waiting_since": "FLOAT", "unconfirmed_at": "FLOAT"}
"""Columns added after the first release: added to an existing state DB when it is opened
(create_all makes missing tables only)."""

RECENT_HISTORY = 1000
"""The latest rows :func:`recent_failures` looks through."""

FAILED_VISIBLE_S = 86400.0
"""How long a failed blackhole stays listed with the active ones (``/api/v1/blackholes``)
unless a newer request for its prefix replaces it; the history keeps it."""


BlackholeState = Literal["requested", "announced", "confirmed", "verified", "failed", "withdrawn"]

IN_GOBGP: frozenset[BlackholeState] = frozenset({"announced", "confirmed", "verified"})
"""The states of a route GoBGP holds (what the original ``/blackholes`` lists)."""


@dataclass(frozen=True)
class Blackhole:
    """A plain copy of a row, safe to hand to other threads and the API."""

    id: int
    prefix: str
    next_hop: str
    communities: tuple[str, ...]
    source: str
    rule: str
    evidence: dict[str, Any]
    created_at: float
    expires_at: float | None
    withdrawn_at: float | None
    announced: bool
    failed_reason: str = ""
    withdraw_reason: str = ""
    role: str = ""
    confirmed_at: float | None = None
    verified_at: float | None = None
    waiting_since: float | None = None
    unconfirmed_at: float | None = None

    @property
    def state(self) -> BlackholeState:
        """``requested`` (GoBGP has not taken it yet: queued and retried), ``announced``
        (GoBGP took it), ``confirmed`` (GoBGP sends it to every Established router
        peer), ``verified`` (the router holds it as an active route), ``failed`` (refused
        for good, see `failed_reason`) or ``withdrawn``."""
        if self.failed_reason:
            return "failed"
        if self.withdrawn_at is not None:
            return "withdrawn"
        if not self.announced:
            return "requested"
        if self.verified_at is not None:
            return "verified"
        return "confirmed" if self.confirmed_at is not None else "announced"

    @classmethod
    def of(cls, row: BlackholeRow) -> Blackhole:
        return cls(row.id, row.prefix, row.next_hop, tuple(row.communities), row.source, row.rule,
                   json.loads(json.dumps(row.evidence)), row.created_at, row.expires_at, row.withdrawn_at,
                   row.announced, row.failed_reason or "", row.withdraw_reason or "", row.role or "",
                   row.confirmed_at, row.verified_at, row.waiting_since, row.unconfirmed_at)


def recent_failures(history: list[Blackhole], active: list[Blackhole], now: float,
                    window_s: float = FAILED_VISIBLE_S) -> list[Blackhole]:
    """The failed blackholes of `history` (newest first) that are still news: failed in
    the last `window_s` seconds, for a prefix that is not active and has no newer row."""
    seen = {bh.prefix for bh in active}
    out = []
    for bh in history:
        if bh.prefix in seen:
            continue
        seen.add(bh.prefix)
        if bh.state == "failed" and bh.withdrawn_at is not None and now - bh.withdrawn_at <= window_s:
            out.append(bh)
    return out


class StateDB:
    """Active and past blackholes.  Thread-safe: each call runs in its own session."""

    def __init__(self, url: str) -> None:
        self.url = url
        _private_sqlite_file(url)
        self.engine: Engine = create_engine(url, future=True)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        _Base.metadata.create_all(self.engine)
        self._add_columns()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _add_columns(self) -> None:
        present = {column["name"] for column in inspect(self.engine).get_columns(BlackholeRow.__tablename__)}
        with self.engine.begin() as connection:
            for name, ddl in _ADDED_COLUMNS.items():
                if name not in present:
                    connection.execute(text(f"ALTER TABLE {BlackholeRow.__tablename__} ADD COLUMN {name} {ddl}"))

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def active(self) -> list[Blackhole]:
        with self.session() as s:
            rows = s.scalars(select(BlackholeRow).where(BlackholeRow.withdrawn_at.is_(None))
                             .order_by(BlackholeRow.id)).all()
            return [Blackhole.of(r) for r in rows]

    def find_active(self, prefix: str) -> Blackhole | None:
        with self.session() as s:
            row = s.scalars(select(BlackholeRow).where(BlackholeRow.prefix == prefix,
                                                       BlackholeRow.withdrawn_at.is_(None))).first()
            return Blackhole.of(row) if row else None

    def add(self, **values: Any) -> Blackhole:
        with self.session() as s:
            row = BlackholeRow(**values)
            s.add(row)
            s.flush()
            return Blackhole.of(row)

    def update(self, row_id: int, **values: Any) -> None:
        with self.session() as s:
            row = s.get(BlackholeRow, row_id)
            if row is not None:
                for key, value in values.items():
                    setattr(row, key, value)

    def claim_withdrawal(self, row_id: int, now: float, reason: str) -> bool:
        """Mark an active row withdrawn; True only for the one caller that did it.

        The collector's manager and `flowenricher blackhole expire` (a systemd timer) may
        expire the same row at the same moment, from two processes on one SQLite file.
        A conditional UPDATE is atomic there (SQLite serialises writers), so exactly one
        of them claims the row and withdraws the route; the other sees 0 rows changed.
        """
        with self.session() as s:
            result = s.execute(update(BlackholeRow)
                               .where(BlackholeRow.id == row_id, BlackholeRow.withdrawn_at.is_(None))
                               .values(withdrawn_at=now, withdraw_reason=reason))
            return bool(getattr(result, "rowcount", 0) == 1)

    def created_since(self, since: float) -> int:
        """New blackholes stored at or after `since`: the per-minute limit's window, read
        from the DB so that a restart or a reload cannot reset it."""
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(BlackholeRow)
                                .where(BlackholeRow.created_at >= since)) or 0)

    def bans_since(self, prefix: str, since: float) -> int:
        """Source bans of `prefix` created at or after `since` (repeat-offender escalation)."""
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(BlackholeRow)
                                .where(BlackholeRow.prefix == prefix, BlackholeRow.role == "source",
                                       BlackholeRow.created_at >= since)) or 0)

    def history(self, limit: int = 100) -> list[Blackhole]:
        with self.session() as s:
            rows = s.scalars(select(BlackholeRow).order_by(BlackholeRow.id.desc()).limit(limit)).all()
            return [Blackhole.of(r) for r in rows]

    def close(self) -> None:
        self.engine.dispose()


def _private_sqlite_file(url: str) -> None:
    """Create a SQLite state file 0600 before SQLite opens it (SQLite gives its -wal, -shm
    and -journal files the database file's mode): it holds the audit bodies and the token
    hashes.  Siblings an older version left wider are tightened too."""
    database = make_url(url).database if url.startswith("sqlite") else None
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    private_file(database)
    for suffix in ("-wal", "-shm", "-journal"):
        sibling = Path(database + suffix)
        with contextlib.suppress(OSError):  # absent, or not ours
            if sibling.stat().st_mode & 0o077:
                sibling.chmod(0o600)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: the API and the service read while the manager writes; synchronous=FULL so a
    # power cut never loses an announcement that was logged as made.  The API may run as
    # its own process (`flowenricher api`: tokens, audit) beside the collector on this
    # file: a writer waits up to 10 s for the other's write to finish instead of failing
    # with "database is locked" (said here, not left to the driver's default).
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()
