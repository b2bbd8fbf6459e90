"""Creating, listing and revoking API tokens: what ``flowenricher token`` does.

The command opens the state DB named by the config and calls these functions; the
running API checks tokens on every request, so a new token works and a revoked one
stops working without a restart.  The secret is shown once, at creation: only its
SHA-256 is stored (see auth.py).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from appliance.flowenricher.errors import FlowEnricherError

from .auth import SCOPES, TOKEN_PREFIX, ScopeName, TokenRow, ensure_tables, hash_secret


class TokenError(FlowEnricherError):
    """A token request that cannot be done (unknown scope, nothing to revoke)."""


@dataclass(frozen=True)
class IssuedToken:
    """A new token; `token` is the only copy of the secret, print it once."""

    id: int
    name: str
    scope: ScopeName
    token: str


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    scope: str
    created_at: float
    revoked_at: float | None


def create_token(engine: Engine, scope: str, name: str | None = None) -> IssuedToken:
    """Store a new token of `scope` ("read" or "admin"); `name` defaults to ``<scope>-<id>``."""
    if scope not in SCOPES:
        raise TokenError(f"token scope {scope!r} is not one of: {', '.join(SCOPES)}")
    if name is not None and not 0 < len(name) <= 64:
        raise TokenError("token name: 1 to 64 characters")
    ensure_tables(engine)
    secret = secrets.token_urlsafe(32)
    with sessionmaker(engine, expire_on_commit=False).begin() as session:
        row = TokenRow(name=name or "", scope=scope, token_hash=hash_secret(secret), created_at=time.time())
        session.add(row)
        session.flush()
        if not name:
            row.name = f"{scope}-{row.id}"
        issued = IssuedToken(row.id, row.name, "admin" if scope == "admin" else "read",
                             f"{TOKEN_PREFIX}_{row.id}_{secret}")
    return issued


def revoke_token(engine: Engine, which: str) -> list[int]:
    """Revoke the active token with id `which`, or every active token named `which`;
    returns the ids revoked.  Raises TokenError when none matches."""
    ensure_tables(engine)
    with sessionmaker(engine).begin() as session:
        query = select(TokenRow).where(TokenRow.revoked_at.is_(None))
        matches = TokenRow.id == int(which) if which.isdigit() else TokenRow.name == which
        query = query.where(matches)
        rows = session.scalars(query).all()
        if not rows:
            raise TokenError(f"no active token with id or name {which!r}")
        now = time.time()
        for row in rows:
            row.revoked_at = now
        return [row.id for row in rows]


def list_tokens(engine: Engine) -> list[TokenInfo]:
    """Every token, active and revoked, oldest first (no secrets: none are stored)."""
    ensure_tables(engine)
    with sessionmaker(engine).begin() as session:
        rows = session.scalars(select(TokenRow).order_by(TokenRow.id)).all()
        return [TokenInfo(r.id, r.name, r.scope, r.created_at, r.revoked_at) for r in rows]
