"""What the control plane is built from (:class:`ApiDeps`) and the per-request dependencies.

The service builds one ApiDeps from the running parts (the store, the blackhole
manager, the lookup, the registry) and hands it to ``create_app``; nothing here opens
or starts anything, so a test builds an app around its own parts.  Routes receive the
:class:`AppContext` and the caller's :class:`~.auth.Principal` through the short
``Annotated`` aliases at the end of this module.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, get_args
from zoneinfo import ZoneInfo

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry

from appliance.flowenricher.collector_api import Collector
from appliance.flowenricher.columns import DIRECTION_NAMES
from appliance.flowenricher.config import Settings

from .announcements import Blackholes
from .auth import AuditLog, Principal, ScopeName, TokenStore, audit_context
from .backtests import Backtests
from .configfiles import ApplyConfig, ApplyRules, Rules, SettingsFiles
from .errors import Forbidden, Invalid, Problem, Unauthorized
from .limits import DEFAULT_MAX_BODY
from .queries import Filters
from .repository import FlowRepository, QueryFn


class ScoringModel(Protocol):
    """What the scoring endpoint uses of a model (detect/anomaly.AnomalyModel)."""

    @property
    def threshold(self) -> float: ...

    @property
    def trained_at(self) -> float: ...

    def score(self, vectors: Any) -> Any: ...


class AnomalyService(Protocol):
    """The anomaly scoring the API serves: detect/anomaly.AnomalyScoring in the
    collector's process, remote.RemoteAnomaly in `flowenricher api`."""

    @property
    def model(self) -> ScoringModel | None: ...

    def status(self) -> dict[str, Any]: ...

LookupFn = Callable[[str], Mapping[str, Any]]
"""What ``flowenricher lookup IP`` prints, as a mapping; raises ValueError for a bad address."""
DetectionsFn = Callable[[Filters, str | None, str | None, int], list[dict[str, Any]]]
"""Detections in a time range, by rule and key, newest first, at most `limit`."""


@dataclass
class ApiDeps:
    """Everything the API reads from or acts on.  Optional parts answer 503 when absent.

    `query` runs SQL on the flow store (``FlowStore.query`` or the service's locked
    wrapper); `detections` defaults to the store's ``detections`` table.  `collector` is
    the running collector's operations (collector_api.Collector: in this process or over
    its control socket); routes that need the collector call it.  `config_path`
    and `rules_path` are the files a replacement is saved to; `rules` are the rules
    running now (read from `rules_path` when None).  `apply_config` and `apply_rules`
    hand a validated replacement to the running collector; raising ConfigError from
    them refuses it (422) and leaves everything as it was.
    """

    settings: Settings
    blackholes: Blackholes
    registry: CollectorRegistry
    query: QueryFn | None = None
    config_path: Path | None = None
    rules_path: Path | None = None
    rules: Rules | None = None
    lookup: LookupFn | None = None
    detections: DetectionsFn | None = None
    collector: Collector | None = None
    apply_config: ApplyConfig | None = None
    apply_rules: ApplyRules | None = None
    dev_mode: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY
    clock: Callable[[], float] = time.time
    anomaly: AnomalyService | None = None  # anomaly scoring, when enabled (routes/anomaly.py)


def applied_by(collector: Collector, config_path: Path | None, rules_path: Path | None,
               on_config: Callable[[Settings, list[str]], None] | None = None) -> tuple[ApplyConfig, ApplyRules]:
    """ApiDeps' `apply_config` and `apply_rules` when the collector applies replacements:
    it re-reads the file the API has just saved (the path is sent so that it refuses one
    it does not read), with the checks a file read at start gets.  `on_config` hears of
    each applied config and the keys that wait for the collector's next start."""

    def apply_config(new: Settings) -> None:
        later = collector.apply_config(str(config_path.resolve()) if config_path else None)
        if on_config is not None:
            on_config(new, later)

    def apply_rules(_rules: Rules) -> None:
        collector.reload_rules(str(rules_path.resolve()) if rules_path else None)

    return apply_config, apply_rules


@dataclass
class AppContext:
    """The app's long-lived parts, built once by create_app (``app.state.ctx``)."""

    deps: ApiDeps
    tokens: TokenStore
    audit: AuditLog
    flows: FlowRepository
    files: SettingsFiles
    backtests: Backtests

    @property
    def settings(self) -> Settings:
        """The settings running now (a config replacement changes them)."""
        return self.files.settings

    @property
    def timezone(self) -> ZoneInfo:
        return ZoneInfo(self.settings.timezone)

    def detections(self, filters: Filters, rule: str | None, key: str | None, limit: int) -> list[dict[str, Any]]:
        if self.deps.detections is not None:
            return self.deps.detections(filters, rule, key, limit)
        return self.flows.detections(filters, rule, key, limit)


def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.ctx
    return context


Context = Annotated[AppContext, Depends(get_context)]

bearer = HTTPBearer(auto_error=False, description="An API token from `flowenricher token create`.")
"""Declares the scheme in the OpenAPI document (Swagger's Authorize button); the header
itself is read by :func:`authenticate`, which also takes the token as a Basic password."""


def authenticate(request: Request, needed: ScopeName, challenge: str = "Bearer") -> Principal:
    """The caller, if its token allows `needed`: else 401 (no or unknown token) or 403."""
    context = get_context(request)
    try:
        principal = context.tokens.authenticate(request.headers.get("authorization"))
    except Unauthorized as err:
        raise Unauthorized(err.detail, headers={"WWW-Authenticate": challenge}) from None
    audit = audit_context(request.scope)
    if audit is not None:
        audit.principal = principal
    if not principal.allows(needed):
        raise Forbidden(f"this call needs a token of scope {needed}")
    return principal


def _reader(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    return authenticate(request, "read")


def _admin(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    return authenticate(request, "admin")


def _page_reader(request: Request) -> Principal:
    return authenticate(request, "read", challenge='Basic realm="flowenricher: any user name, the API token as password"')


Reader = Annotated[Principal, Depends(_reader)]
Admin = Annotated[Principal, Depends(_admin)]
PageReader = Annotated[Principal, Depends(_page_reader)]
"""The status page's caller: a browser asks for the token as a Basic password."""


def epoch(value: datetime) -> int:
    """Unix seconds; a time without an offset is UTC (flows are stored in UTC).  Clamped to
    what a ClickHouse DateTime holds (1970 to 2106), so any time is a valid bound."""
    seconds = int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())
    return min(max(seconds, 0), 0xFFFFFFFF)


def time_range(ctx: Context,
               start: Annotated[datetime | None, Query(alias="from", description=(
                   "Start (RFC 3339, or unix seconds), included; default: one hour before `to`. "
                   "Without an offset, UTC."))] = None,
               end: Annotated[datetime | None, Query(alias="to", description=(
                   "End, excluded; default: now, rounded up to the minute."))] = None,
               ) -> tuple[int, int]:
    """The half-open range [from, to) in unix seconds."""
    stop = epoch(end) if end is not None else -(-int(ctx.deps.clock()) // 60) * 60
    first = epoch(start) if start is not None else stop - 3600
    if first >= stop:
        raise Invalid("empty time range", [Problem(path="query.from", reason="must be before `to`")])
    return first, stop


TimeRange = Annotated[tuple[int, int], Depends(time_range)]

Direction = Literal["unknown", "inbound", "outbound", "internal", "transit"]
assert get_args(Direction) == DIRECTION_NAMES, "Direction must list columns.DIRECTION_NAMES in order"


def flow_filters(span: TimeRange,
                 direction: Annotated[Direction | None, Query(description="Only flows of this direction.")] = None,
                 exporter: Annotated[str | None, Query(description="Only flows from this exporter address.",
                                                       max_length=64)] = None) -> Filters:
    if exporter is not None:
        try:
            exporter = str(ipaddress.ip_address(exporter.strip()))
        except ValueError:
            raise Invalid("bad exporter", [Problem(path="query.exporter",
                                                   reason=f"{exporter!r} is not an IP address")]) from None
    index = DIRECTION_NAMES.index(direction) if direction is not None else None
    return Filters(span[0], span[1], index, exporter)


FlowFilters = Annotated[Filters, Depends(flow_filters)]
