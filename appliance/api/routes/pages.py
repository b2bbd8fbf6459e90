"""The pages a browser opens: the status page at ``/`` and the OpenAPI docs at ``/docs``
and ``/redoc``, whose JavaScript and CSS come from ``static/`` (no CDN: the appliance
is offline)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from .. import status
from ..deps import Context, PageReader
from ..errors import ERROR_RESPONSES
from ..queries import Filters
from .backtest import job_view
from .system import collector_answers

router = APIRouter(include_in_schema=False)

STATIC = "/static"
TITLE = "flowenricher API"

DOCS_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline' blob:; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
               "frame-ancestors 'none'")
"""Content-Security-Policy of /docs and /redoc: the browser fetches nothing from another
host.  Swagger UI and ReDoc need inline scripts and styles and ReDoc a blob: worker;
ReDoc's footer links a logo on its CDN, which this keeps the browser from requesting."""
STATUS_POLICY = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
"""The status page has no script, image or font at all."""


def _with_policy(response: HTMLResponse, policy: str) -> HTMLResponse:
    response.headers["Content-Security-Policy"] = policy
    return response


@router.get("/", response_class=HTMLResponse, responses=ERROR_RESPONSES)
async def status_page(ctx: Context, _: PageReader) -> HTMLResponse:
    """The status page.  Browsers are asked for the API token as a Basic password.

    Always 200 with the page once the caller is allowed: what is down (the store, the
    collector) is what the page is for, shown in it; probes read /health/ready."""
    flows = ctx.flows

    def top(by: str, filters: Filters) -> list[dict[str, object]]:
        rows, _ = flows.top(by, "bytes", filters, 10)
        return rows

    def series(step: int, filters: Filters) -> list[dict[str, object]]:
        rows, _ = flows.series(step, "bytes", filters, None, 10)
        return rows

    sources = status.Sources(
        store_ok=flows.ping, collector_ok=lambda: collector_answers(ctx.deps.collector),
        blackholes=ctx.deps.blackholes.active, registry=ctx.deps.registry, exporters=flows.exporters,
        series=series, drops=flows.drops, detection_counts=flows.detection_counts, top=top,
        detections=lambda filters: ctx.detections(filters, None, None, 10),
        backtests=lambda: [job_view(job, ctx, False).model_dump(by_alias=True) for job in ctx.backtests.recent()])
    view = await run_in_threadpool(status.collect, ctx.deps.clock(), ctx.timezone, sources)
    return _with_policy(HTMLResponse(status.render(view)), STATUS_POLICY)


@router.get("/docs", response_class=HTMLResponse)
def swagger() -> HTMLResponse:
    return _with_policy(get_swagger_ui_html(
        openapi_url="/openapi.json", title=f"{TITLE} - Swagger UI",
        swagger_js_url=f"{STATIC}/swagger-ui-bundle.js", swagger_css_url=f"{STATIC}/swagger-ui.css",
        swagger_favicon_url=f"{STATIC}/favicon-32x32.png",
        swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},
    ), DOCS_POLICY)


@router.get("/redoc", response_class=HTMLResponse)
def redoc() -> HTMLResponse:
    return _with_policy(get_redoc_html(openapi_url="/openapi.json", title=f"{TITLE} - ReDoc",
                                       redoc_js_url=f"{STATIC}/redoc.standalone.js",
                                       redoc_favicon_url=f"{STATIC}/favicon-32x32.png", with_google_fonts=False),
                        DOCS_POLICY)
