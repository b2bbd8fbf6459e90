"""``/health``, ``/metrics`` and the audit log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from appliance.flowenricher.collector_api import Collector

from ..deps import Admin, Context, Reader
from ..errors import ERROR_RESPONSES
from ..schemas import AuditRecord, Health, Liveness

router = APIRouter(tags=["system"])


@router.get("/health/live", response_model=Liveness)
def live() -> Liveness:
    """Liveness: 200 while this process serves requests (a probe that restarts the
    service on failure uses this one, so a store outage does not restart the API)."""
    return Liveness(status="alive")


_NOT_READY: dict[int | str, dict[str, Any]] = {503: {
    "model": Health, "description": "Not ready: the store or the collector does not answer (the body says which)."}}


@router.get("/health/ready", response_model=Health, responses=_NOT_READY)
@router.get("/health", response_model=Health, responses=_NOT_READY)
def ready(ctx: Context, response: Response) -> Health:
    """Readiness for load balancers, systemd and Ansible checks: 200 when the flow store
    answers a query and the collector answers on its control socket (or runs in this
    process), 503 otherwise.  No token needed; nothing revealed beyond which part is down."""
    store = ctx.flows.ping()
    collector = collector_answers(ctx.deps.collector)
    ok = store and collector is not False
    if not ok:
        response.status_code = 503
    return Health(status="ok" if ok else "degraded", store=store, collector=collector)


def collector_answers(collector: Collector | None) -> bool | None:
    """Whether the collector answers a status call; None when this API has none to ask."""
    if collector is None:
        return None
    try:
        collector.status()
    except Exception:  # any failure to answer is "not ready", never a failed probe request
        return False
    return True


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
