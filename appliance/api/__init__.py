"""The control plane: the FastAPI application with the original blackhole calls, the
versioned API, tokens and audit, the status page, and Prometheus traffic counters.

``create_app(ApiDeps(...))`` builds the application (app.py); ``tokens`` holds what
``flowenricher token`` does; ``TrafficMetrics`` counts traffic by configured labels.
"""

from __future__ import annotations

from .app import create_app
from .deps import ApiDeps
from .traffic_metrics import TrafficMetrics

__all__ = ["ApiDeps", "TrafficMetrics", "create_app"]
