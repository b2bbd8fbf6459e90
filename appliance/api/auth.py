"""API tokens and the audit log, in the state DB next to the blackholes.

A token is ``fe_<id>_<secret>``: `secret` is 32 random bytes (URL-safe base64) and only
its SHA-256 is stored, so a copy of the database grants nothing.  The id finds the row
and :func:`hmac.compare_digest` compares the digests, so a guess learns nothing from the
time it takes.  Scopes: ``read`` reads everything but the audit log; ``admin`` may also
announce, withdraw and replace config and rules.  Tokens are created and revoked with
``flowenricher token`` (see tokens.py) and checked on every request, so a revocation
takes effect at once.

Every call that can change something (POST, PUT, PATCH, DELETE) is written to the
audit table by :class:`AuditMiddleware`, whatever its outcome: who (token id and name,
or nobody), what (method, path, the body with secrets masked), when, and the status.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.to_thread
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import Float, Integer, String, Text, delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.flowenricher.common.ratelimit import RateLimitedLog

from .errors import Unauthorized
from .redact import summarize

log = logging.getLogger(__name__)

ScopeName = Literal["read", "admin"]
SCOPES: tuple[ScopeName, ...] = ("read", "admin")
TOKEN_PREFIX = "fe"
_TOKEN = re.compile(r"^fe_([0-9]{1,12})_([A-Za-z0-9_-]{20,128})$")
_DUMMY_HASH = hashlib.sha256(b"no such token").hexdigest()
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
AUDIT_KEY = "flowenricher.audit"
"""Key of the per-request :class:`AuditContext` in the ASGI scope."""


class _Base(DeclarativeBase):
    pass


class TokenRow(_Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    scope: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the secret part
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class AuditRow(_Base):
    __tablename__ = "api_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    token_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    token_name: Mapped[str] = mapped_column(String(64), default="")
    client: Mapped[str] = mapped_column(String(64), default="")
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(512))
    body: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[int] = mapped_column(Integer)


def ensure_tables(engine: Engine) -> None:
    """Create the token and audit tables if missing (idempotent; the blackhole tables are
    StateDB's, on the same engine)."""
    _Base.metadata.create_all(engine)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's id, name and scope."""

    token_id: int
    name: str
    scope: ScopeName

    def allows(self, needed: ScopeName) -> bool:
        return needed == "read" or self.scope == "admin"


def credential(authorization: str | None) -> str | None:
    """The token in an Authorization header: ``Bearer TOKEN``, or ``Basic`` with the token as
    the password (what a browser sends for the status page after its login prompt)."""
    if not authorization:
        return None
    kind, _, value = authorization.strip().partition(" ")
    kind = kind.lower()
    if kind == "bearer":
        return value.strip() or None
    if kind == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


class TokenStore:
    """Checks tokens against the state DB; thread-safe (one session per call)."""

    def __init__(self, engine: Engine) -> None:
        ensure_tables(engine)
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of a valid, unrevoked token; Unauthorized for anything else."""
        token = credential(authorization)
        match = _TOKEN.match(token) if token else None
        if match is None:
            raise Unauthorized("a valid token is required")
        with self._sessions() as session:
            row = session.get(TokenRow, int(match[1]))
            stored = row.token_hash if row is not None and row.revoked_at is None else _DUMMY_HASH
            if not hmac.compare_digest(stored, hash_secret(match[2])) or row is None:
                raise Unauthorized("a valid token is required")
            scope: ScopeName = "admin" if row.scope == "admin" else "read"
            return Principal(row.id, row.name, scope)

    def active_count(self) -> int:
        with self._sessions() as session:
            count = session.scalar(select(func.count()).select_from(TokenRow).where(TokenRow.revoked_at.is_(None)))
            return int(count or 0)


@dataclass
class AuditContext:
    """Filled in during a request: the middleware reads who it was after the response."""

    principal: Principal | None = None


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    token_id: int | None
    token_name: str
    client: str
    method: str
    path: str
    body: str
    status: int


class AuditLog:
    """Appends audit rows, keeping the newest `max_rows` (pruned every 1000 writes)."""

    def __init__(self, engine: Engine, registry: CollectorRegistry | None = None, max_rows: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        ensure_tables(engine)
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._max_rows = max_rows
        self._clock = clock
        self._errors = Counter("flowenricher_api_audit_errors", "Audit rows that could not be written",
                               registry=registry)
        self._error_log = RateLimitedLog(log, 60.0)

    def record(self, principal: Principal | None, client: str, method: str, path: str, body: str,
               status: int) -> None:
        """Write one row; a failure is counted and logged (rate-limited), never raised."""
        try:
            with self._sessions.begin() as session:
                row = AuditRow(at=self._clock(), token_id=principal.token_id if principal else None,
                               token_name=principal.name if principal else "", client=client[:64],
                               method=method[:8], path=path[:512], body=body, status=status)
                session.add(row)
                session.flush()
                if row.id % 1000 == 0:
                    session.execute(delete(AuditRow).where(AuditRow.id <= row.id - self._max_rows))
        except Exception as err:  # the audit must never break the call it records
            self._errors.inc()
            self._error_log.error("audit: cannot record %s %s (status %d): %s", method, path, status, err)

    def recent(self, limit: int = 100) -> list[AuditEntry]:
        with self._sessions() as session:
            rows = session.scalars(select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)).all()
            return [_entry(r) for r in rows]


def _entry(row: AuditRow) -> AuditEntry:
    return AuditEntry(row.id, row.at, row.token_id, row.token_name, row.client, row.method, row.path, row.body,
                      row.status)


@dataclass
class _Captured:
    body: bytearray = field(default_factory=bytearray)
    size: int = 0
    status: int = 500


class AuditMiddleware:
    """ASGI middleware: records every mutating request in the audit log after it finished.

    It sits outside the body-size limit and the error handlers, so refused, invalid and
    unauthenticated attempts are recorded with the status they got.
    """

    def __init__(self, app: ASGIApp, audit: AuditLog, keep_body: int = 4096) -> None:
        self.app = app
        self.audit = audit
        self.keep_body = keep_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING:
            await self.app(scope, receive, send)
            return
        context = AuditContext()
        scope[AUDIT_KEY] = context
        captured = _Captured()

        async def receive_and_keep() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunk: bytes = message.get("body", b"")
                captured.size += len(chunk)
                room = self.keep_body - len(captured.body)
                if room > 0:
                    captured.body.extend(chunk[:room])
            return message

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured.status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive_and_keep, send_and_note)
        finally:
            query = scope.get("query_string", b"").decode("latin-1")
            path = scope.get("path", "") + (f"?{query}" if query else "")
            client = scope.get("client") or ("", 0)
            body = summarize(bytes(captured.body))
            if captured.size > len(captured.body) and body:
                body += f" [{captured.size} bytes received]"
            with anyio.CancelScope(shield=True):  # a client that hung up is still recorded
                await anyio.to_thread.run_sync(self.audit.record, context.principal, str(client[0]),
                                               scope["method"], path, body, captured.status)


def audit_context(scope: MutableMapping[str, Any]) -> AuditContext | None:
    context = scope.get(AUDIT_KEY)
    return context if isinstance(context, AuditContext) else None

