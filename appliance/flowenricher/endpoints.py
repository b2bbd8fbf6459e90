"""Settings of the two HTTP endpoints the service opens (``metrics.*`` and ``api.*``):
keys, defaults, bounds and checks written once.

The API's block lives here rather than in appliance.api because `flowenricher run` reads
it to decide whether to start the API, and the core never imports the API package.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from .common.settings_base import (
    Duration,
    FilePath,
    HostPort,
    Section,
    field_default,
    parse_duration,
    split_host_port,
)
from .traffic_labels import label_problems

Problems = list[tuple[tuple[str | int, ...], str]]


class TrafficSettings(Section):
    """Traffic counters (bytes, packets, flows) by chosen flow columns, for Prometheus
    users. Off while `labels` is empty."""

    labels: tuple[str, ...] = Field((), description=(
        "Flow column names to label the counters with (e.g. src_host_country, dst_as_name, proto, "
        "input_interface_name, flow_direction); address columns are refused."), json_schema_extra={
            "items": {"type": "string", "minLength": 1}})
    max_series: int = Field(1000, ge=1, description=(
        "Values kept per label (and series in all); beyond it a value counts as \"other\", so a scan cannot explode "
        "the metrics."))


class _Listening:
    """`host` and `port` of a block's ``listen`` (host:port, checked by the schema)."""

    listen: str

    @property
    def host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.listen)[1]


class MetricsSettings(_Listening, Section):
    """Prometheus metrics endpoint."""

    listen: HostPort = Field("127.0.0.1:9601", description="host:port of /metrics; loopback by default because the "
                             "metrics reveal the network.")
    traffic: TrafficSettings = Field(default_factory=TrafficSettings)

    @property
    def traffic_labels(self) -> tuple[str, ...]:
        return self.traffic.labels

    @property
    def traffic_max_series(self) -> int:
        return self.traffic.max_series


class BacktestApiSettings(Section):
    """Backtests started through the API (POST /api/v1/backtest): each runs in a process
    of its own, and these bound what one caller can make the appliance spend."""

    max_range_s: Duration = Field(parse_duration("168h"), alias="max_range", description=(
        "Longest range one backtest may replay (a longer one is refused with 422)."))
    max_running: int = Field(1, ge=1, description=(
        "Backtests running at once; one more is refused with 429 until one ends."))
    max_wall_time_s: Duration = Field(parse_duration("4h"), alias="max_wall_time", description=(
        "Longest a backtest may run; it is then stopped and marked failed."))
    kept: int = Field(20, ge=1, description="Finished backtests whose reports are kept (newest first) in memory.")


class ApiSettings(_Listening, Section):
    """The control plane's HTTP API (the original's /announce, /withdraw, /blackholes,
    plus the versioned API)."""

    listen: HostPort = Field("127.0.0.1:9600", description="host:port of the API; port 9600 as in the original, "
                             "loopback by default because it can announce routes.")
    enabled: bool = Field(True, description="Serve the control plane inside `flowenricher run`.")
    dev_mode: bool = Field(False, description=(
        "Development mode: insecure settings (no token or plain HTTP on a non-loopback address, empty ClickHouse "
        "password on a remote server, SNMP community public) are warned about instead of refused."))
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body accepted (413 beyond it).")
    backtest: BacktestApiSettings = Field(default_factory=BacktestApiSettings, description=(
        "Limits of the backtests started through the API."))
    tls_cert: FilePath | None = Field(None, description=(
        "PEM certificate (with its chain) the API serves HTTPS with; needs tls_key. Without it the API speaks plain "
        "HTTP, which is refused on a listen address beyond loopback unless allow_plain_http is set."))
    tls_key: FilePath | None = Field(None, description=(
        "PEM private key of tls_cert, unencrypted: keep it readable by the service's user only."))
    allow_plain_http: bool = Field(False, description=(
        "Serve plain HTTP on a listen address beyond loopback: tokens then cross the network in clear. Only for a "
        "TLS-terminating reverse proxy reaching the API over a link nobody else can read."))

    @property
    def tls(self) -> tuple[Path, Path] | None:
        """(certificate, key) when the API serves HTTPS."""
        return (self.tls_cert, self.tls_key) if self.tls_cert is not None and self.tls_key is not None else None


def api_problems(api: Mapping[str, Any]) -> Problems:
    """A certificate without its key (or a key without its certificate) would serve plain
    HTTP while the operator believes the API is on HTTPS."""
    cert, key = api.get("tls_cert"), api.get("tls_key")
    if (cert is None) != (key is None):
        given, missing = ("tls_cert", "tls_key") if key is None else ("tls_key", "tls_cert")
        return [((missing,), f"required with {given}: the API serves HTTPS with both or neither")]
    return []


def metrics_problems(metrics: Mapping[str, Any]) -> Problems:
    """The labels of the Prometheus traffic counters (traffic_labels.py holds the rule)."""
    traffic = metrics.get("traffic")
    traffic = traffic if isinstance(traffic, Mapping) else {}
    labels = traffic.get("labels", [])
    max_series = traffic.get("max_series", field_default(TrafficSettings, "max_series"))
    if not isinstance(labels, list):
        return []  # the schema reports it
    valid_cap = isinstance(max_series, int) and not isinstance(max_series, bool) and max_series >= 1
    return [(("traffic", *path), message) for path, message in label_problems(labels, max_series if valid_cap else None)]
