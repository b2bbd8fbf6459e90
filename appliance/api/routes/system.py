"""``/health``, ``/metrics`` and the audit log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import Admin, Context, Reader
from ..errors import ERROR_RESPONSES
from ..schemas import AuditRecord, Health

router = APIRouter(tags=["system"])


@router.get("/health", response_model=Health)
def health(ctx: Context) -> Health:
    """Liveness for load balancers and systemd checks; no token needed, nothing revealed
    beyond whether the store answers."""
    store = ctx.flows.ping()
    return Health(status="ok" if store else "degraded", store=store)


@router.get("/metrics", responses={**ERROR_RESPONSES, 200: {
    "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
    "description": "Prometheus text format"}}, response_class=Response)
def metrics(ctx: Context, _: Reader) -> Response:
    """The service's Prometheus metrics (the same registry as ``metrics.listen``)."""
    return Response(generate_latest(ctx.deps.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/audit", response_model=list[AuditRecord], responses=ERROR_RESPONSES, tags=["system"])
def audit(ctx: Context, _: Admin,
          limit: Annotated[int, Query(ge=1, le=10_000, description="Most rows, newest first.")] = 100,
          ) -> list[AuditRecord]:
    """Recent mutating calls: who, what, when and the answer's status."""
    zone = ctx.timezone
    return [AuditRecord(id=e.id, at=datetime.fromtimestamp(e.at, UTC).astimezone(zone), token_id=e.token_id,
                        token_name=e.token_name, client=e.client, method=e.method, path=e.path, body=e.body,
                        status=e.status)
            for e in ctx.audit.recent(limit)]
