"""The control plane: the FastAPI application with the original blackhole calls, the
versioned API, tokens and audit, and the status page.

``create_app(ApiDeps(...))`` builds the application (app.py); ``tokens`` holds what
``flowenricher token`` does.  The Prometheus traffic counters are the collector's
(appliance/flowenricher/traffic_metrics.py): the core package imports nothing of this
one; appliance/cli.py, above both, serves it (inprocess.py inside `run`, remote.py as
`flowenricher api`).
"""

from __future__ import annotations

from .app import create_app
from .deps import ApiDeps

__all__ = ["ApiDeps", "create_app"]
