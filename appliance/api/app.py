"""The control plane's FastAPI application: ``create_app(deps)``.

Building the app opens nothing and starts nothing: it reads the parts it is given
(ApiDeps), creates the token and audit tables in the state DB if missing, and refuses
insecure settings outside dev mode (hardening.py).  Serving it is the caller's job
(server.py runs uvicorn in a thread for ``flowenricher run``; the appliance's own
service runs uvicorn directly).

Middleware, outermost first: the audit log (so every mutating call is recorded with
the status it finally got, 413 included), then the body size limit, then FastAPI's
error handlers, which give every error one JSON shape (errors.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from importlib import metadata
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .auth import AuditLog, AuditMiddleware, TokenStore
from .backtests import Backtests
from .configfiles import SettingsFiles
from .deps import ApiDeps, AppContext
from .errors import install_handlers
from .hardening import check_startup
from .limits import BodyLimit
from .queries import Tables
from .repository import FlowRepository
from .routes import (
    anomaly,
    backtest,
    blackholes,
    configuration,
    detections,
    exporters,
    flows,
    lookup,
    original,
    pages,
    system,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"

DESCRIPTION = """\
The flowenricher appliance's control plane.

* The original flowenricher calls, unchanged: `POST /announce`, `POST /withdraw`, `GET /blackholes`.
* `/api/v1`: blackholes with their history and evidence, lookups, top N and time series
  of flows, detections, exporters, config and rules (validated against the JSON Schemas),
  backtests of rules over stored flows (jobs with progress, cancellable).

Every call but `/health` needs a token (`Authorization: Bearer fe_...`), created with
`flowenricher token create --scope read|admin`; calls that change something need an
admin token and are recorded in the audit log.  Errors have one shape:
`{"error", "detail", "problems": [{"path", "reason"}]}`.
"""


def _version() -> str:
    try:
        return metadata.version("flowenricher")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def create_app(deps: ApiDeps) -> FastAPI:
    """The API over `deps`.  Raises ConfigError when the settings keep a default secret
    and `deps.dev_mode` is off (see hardening.py).

    Metrics register on `deps.registry`: build one app per registry.
    """
    engine = deps.blackholes.state.engine
    tokens = TokenStore(engine)
    check_startup(deps.settings, tokens.active_count(), deps.dev_mode)
    ch = deps.settings.clickhouse
    files = SettingsFiles(deps.settings, deps.config_path, deps.rules_path, deps.rules, deps.apply_config,
                          deps.apply_rules)
    context = AppContext(
        deps=deps,
        tokens=tokens,
        audit=AuditLog(engine, deps.registry),
        flows=FlowRepository(deps.query, Tables(ch.database, ch.table), deps.registry),
        files=files,
        backtests=Backtests(lambda: files.settings, deps.clock),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        context.backtests.close()  # no backtest process outlives the API

    app = FastAPI(title="flowenricher", version=_version(), description=DESCRIPTION, docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json", lifespan=lifespan)
    app.state.ctx = context
    install_handlers(app)
    for module in (original, blackholes, lookup, flows, detections, anomaly, backtest, exporters, configuration,
                   system, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(BodyLimit, max_bytes=deps.max_body_bytes)
    app.add_middleware(AuditMiddleware, audit=context.audit)
    return app
