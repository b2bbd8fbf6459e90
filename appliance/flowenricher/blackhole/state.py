"""The persisted set of blackholes (SQLAlchemy; SQLite by default).

A blackhole row lives from its announcement until it is withdrawn; ``withdrawn_at``
stays NULL while it is active.  Expiry is a time in the row, not a timer in memory,
so a restart of flowenricher finds what is still due and what expired while it was
down (FastNetMon's users lost bans on restart; this is the fix).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, Float, Integer, String, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


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

    @classmethod
    def of(cls, row: BlackholeRow) -> Blackhole:
        return cls(row.id, row.prefix, row.next_hop, tuple(row.communities), row.source, row.rule,
                   json.loads(json.dumps(row.evidence)), row.created_at, row.expires_at, row.withdrawn_at,
                   row.announced)


class StateDB:
    """Active and past blackholes.  Thread-safe: each call runs in its own session."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, future=True)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        _Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

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

    def history(self, limit: int = 100) -> list[Blackhole]:
        with self.session() as s:
            rows = s.scalars(select(BlackholeRow).order_by(BlackholeRow.id.desc()).limit(limit)).all()
            return [Blackhole.of(r) for r in rows]

    def close(self) -> None:
        self.engine.dispose()


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
