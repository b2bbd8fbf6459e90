"""Ansible filter: the URL on which the appliance itself reaches its API's probes.

The units' start check (``/health/live``, flowenricher role) and the api role's readiness
check (``/health/ready``) both ask the API on the host it runs on, at the address and
port of the ``api`` section of the config.yaml the role writes: https when it has
``tls_cert`` and ``tls_key`` (the service refuses one without the other), a wildcard
listen address asked on loopback, an IPv6 address in brackets.  ``host:port`` is parsed
by the appliance's own ``split_host_port``, so the probe reads it as the service does.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
DEFAULT_LISTEN = "127.0.0.1:9600"  # the API's default api.listen (appliance/flowenricher/endpoints.py)
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def _split_host_port(value: str) -> tuple[str, int]:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from appliance.flowenricher.common.settings_base import split_host_port

    return split_host_port(value)


def api_probe_url(api: Mapping[str, Any] | None, path: str = "/health/live") -> str:
    """``scheme://host:port/path`` for a probe on the appliance of the API configured by
    `api` (config.yaml's ``api`` section; missing keys take the service's defaults).
    Raises ValueError naming the listen value when it is not ``host:port``."""
    api = api or {}
    listen = str(api.get("listen") or DEFAULT_LISTEN)
    try:
        host, port = _split_host_port(listen)
    except ValueError as err:
        raise ValueError(f"api.listen {listen!r}: {err}") from None
    host = _LOOPBACK.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if api.get("tls_cert") and api.get("tls_key") else "http"
    return f"{scheme}://{host}:{port}/{path.lstrip('/')}"


class FilterModule:
    """Registers the filter under the name the roles use."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"flowenricher_api_probe_url": api_probe_url}
