"""config.yaml as one typed Settings: the composition of every package's settings.

Each block of the file is owned by the package that uses it (collector/settings.py,
storage/settings.py, bgp/settings.py, enrich/settings.py, detect/settings.py,
blackhole/settings.py, endpoints.py): its keys, defaults, bounds and the cross-field
checks JSON Schema cannot say.  This module puts them together, checks a document
through documents.py (the generated schema first, then each block's checks: every
problem at once, ``FILE: $.path: reason``) and builds the Settings the service runs on.
``flowenricher validate``, ``run``, the API's validate and PUT and the Ansible role's gate
all come through parse_config/load_config, so a file gets one verdict everywhere.

Relative paths (``storage.path``, the GeoIP databases, ``detection.rules_config``) stay
relative to the working directory of the process, as in the original; the deployment sets
the service's working directory.  Without ``clickhouse.host`` (or with an empty one) the
store is embedded; the original's ``host: localhost`` keeps meaning a ClickHouse server
on this machine.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from pydantic import Field, PrivateAttr, ValidationError, WithJsonSchema, field_validator, model_validator

from .bgp.settings import BgpListenerSettings, BgpSettings, GoBgpSettings, bgp_problems
from .blackhole.settings import BlackholeSettings, RouterApiSettings, blackhole_problems
from .collector.settings import (
    CollectorSettings,
    ExporterSettings,
    KafkaSettings,
    ListenerSettings,
    TemplateHoldSettings,
    collector_problems,
    kafka_problems,
)
from .common.settings_base import (
    Asn,
    Network,
    SchemaGenerator,
    Section,
    field_default,
    formatted,
    parse_duration,
    split_host_port,
)
from .default_secrets import (
    clickhouse_password_problem,
    is_loopback,
    plain_http_problem,
    snmp_community_problem,
)
from .detect.settings import AnomalySettings, DetectionSettings, anomaly_problems, detection_problems
from .documents import (
    CONFIG_SCHEMA,
    MAX_DOCUMENT_BYTES,
    MAX_DOCUMENT_DEPTH,
    MAX_DOCUMENT_VALUES,
    RULES_SCHEMA,
    Problem,
    json_path,
    load_schema,
    parse_json,
    parse_yaml,
    raise_if_problems,
    read_yaml_file,
    schema_path,
    schema_problems,
)
from .endpoints import ApiSettings, MetricsSettings, api_problems, metrics_problems
from .enrich.settings import (
    DEFAULT_ENRICHMENTS,
    DEV_MODE_HINT,
    ENRICH_SCHEMA,
    NETWORKS_SCHEMA,
    DnsSettings,
    GeoIpSettings,
    NetworkSettings,
    SnmpSettings,
    SnmpTargetSettings,
    dns_problems,
    parse_enrich,
    parse_networks,
    snmp_problems,
)
from .errors import ConfigError
from .storage.settings import (
    ClickHouseSettings,
    InsertSettings,
    StorageSettings,
    clickhouse_problems,
    storage_problems,
)

__all__ = [
    "CONFIG_SCHEMA",
    "MAX_DOCUMENT_BYTES",
    "MAX_DOCUMENT_DEPTH",
    "MAX_DOCUMENT_VALUES",
    "RULES_SCHEMA",
    "AnomalySettings",
    "ApiSettings",
    "BgpListenerSettings",
    "BgpSettings",
    "BlackholeSettings",
    "ClickHouseSettings",
    "CollectorSettings",
    "DetectionSettings",
    "DnsSettings",
    "ExporterSettings",
    "GeoIpSettings",
    "GoBgpSettings",
    "InsertSettings",
    "KafkaSettings",
    "ListenerSettings",
    "MetricsSettings",
    "NetworkSettings",
    "RouterApiSettings",
    "Settings",
    "SnmpSettings",
    "SnmpTargetSettings",
    "StorageSettings",
    "TemplateHoldSettings",
    "checked_at_start",
    "config_schema",
    "json_path",
    "load_config",
    "load_rules",
    "load_schema",
    "parse_actions",
    "parse_config",
    "parse_duration",
    "parse_json",
    "parse_rules",
    "parse_yaml",
    "schema_path",
    "split_host_port",
    "validation_problems",
]

log = logging.getLogger(__name__)

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class Settings(Section):
    """Configuration of the flowenricher appliance. The original flowenricher config.yaml
    validates unchanged; new keys extend it, and every key has a default, so an empty file
    runs the embedded default (chDB store in ./data, flows received on 0.0.0.0). Unknown
    keys are rejected so that typos are caught; only top-level keys starting with 'x-' are
    free (operator notes, YAML anchors). Relative paths are relative to the working
    directory of the process, as in the original. Values with a 'format' (ip-address,
    ip-network, ip-prefix, host-port, timezone, bgp-community, bgp-next-hop) are checked by
    flowenricher's own validator (`flowenricher validate`); other validators treat the
    formats as annotations."""

    schema_extra = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                    "$id": "urn:flowenricher:schema:config",
                    "title": "flowenricher config.yaml",
                    "patternProperties": {"^x-": {"description": "Free key for operator notes and YAML anchors "
                                                                 "(`x-common: &common ...`); flowenricher ignores it."}}}

    collectors: CollectorSettings = Field(default_factory=CollectorSettings)
    bgp: BgpSettings = Field(default_factory=BgpSettings)
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    insert: InsertSettings = Field(default_factory=InsertSettings)
    geoip: GeoIpSettings = Field(default_factory=GeoIpSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    dns: DnsSettings = Field(default_factory=DnsSettings)
    timezone: Annotated[str, formatted("timezone", "an IANA time zone such as Europe/Athens")] = Field(
        "UTC", description="IANA time zone used to show times to the operator (logs, API, detections.log); flows are "
                           "stored in UTC.")
    debug: bool = Field(False, description="The original debug switch: lowers log_level to debug unless log_level is "
                                           "set.")
    log_level: LogLevel = Field("info", description="Log level of the service.")
    enrich: Annotated[frozenset[str], WithJsonSchema(ENRICH_SCHEMA)] = Field(
        frozenset(DEFAULT_ENRICHMENTS), json_schema_extra={"default": ENRICH_SCHEMA["default"]})
    my_asn: Asn | None = Field(None, description="The operator's AS number: flows to or from it are the network's own "
                                                 "traffic.")
    my_prefixes: tuple[Network, ...] = Field((), description=(
        "The operator's prefixes (CIDR, host bits clear). They decide flow direction, which destinations detection "
        "rules protect, and which sources are never blackholed."))
    snmp: SnmpSettings = Field(default_factory=SnmpSettings)
    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    anomaly: AnomalySettings = Field(default_factory=AnomalySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    network_names: Annotated[dict[str, Any], WithJsonSchema(NETWORKS_SCHEMA)] = Field(
        default_factory=dict, alias="networks")
    blackhole: BlackholeSettings = Field(default_factory=BlackholeSettings)

    _source: Path | None = PrivateAttr(None)
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @field_validator("enrich", mode="before")
    @classmethod
    def _enrichments(cls, value: object) -> object:
        return parse_enrich(value) if isinstance(value, str | list | tuple | set | frozenset) else value

    @model_validator(mode="after")
    def _derived(self) -> Settings:
        if self.anomaly.model_path is None:
            self.derive(anomaly=self.anomaly.model_copy(
                update={"model_path": self.storage.path / "anomaly-model.joblib"}))
        if "log_level" not in self.model_fields_set and self.debug:
            self.derive(log_level="debug")
        return self

    def __eq__(self, other: object) -> bool:
        """Two files meaning the same thing give equal settings (where they came from and
        how they were written take no part)."""
        if not isinstance(other, Settings):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in type(self).model_fields)

    __hash__ = None  # type: ignore[assignment]

    @property
    def networks(self) -> tuple[NetworkSettings, ...]:
        """The operator's network classification, typed."""
        return parse_networks(self.network_names)

    @property
    def source(self) -> Path | None:
        """The file the settings were read from (None: a document from the API or a test)."""
        return self._source

    @property
    def raw(self) -> dict[str, Any]:
        """The document as written (checked, no defaults)."""
        return self._raw

    @property
    def effective(self) -> dict[str, Any]:
        """The document with every default and derived value filled in (what `GET config`
        shows), in the file's own syntax."""
        effective: dict[str, Any] = self.model_dump(mode="json", by_alias=True)
        effective["enrich"] = ", ".join(sorted(self.enrich)) or "none"
        return effective

    @classmethod
    def default(cls) -> Settings:
        """The embedded default: what an empty config file means."""
        return parse_config({})


# --------------------------------------------------------------------------- schema


def config_schema() -> dict[str, Any]:
    """The JSON Schema of config.yaml, generated from the settings models
    (schemas/flowenricher.config.schema.json is this, written by tools/gen_schemas.py)."""
    schema = Settings.model_json_schema(schema_generator=SchemaGenerator)
    return {key: schema[key] for key in ("$schema", "$id", "title") if key in schema} | {
        key: value for key, value in schema.items() if key not in ("$schema", "$id", "title")}


# --------------------------------------------------------------------------- checks

_BLOCK_CHECKS: tuple[tuple[str, Callable[[Mapping[str, Any]], list[tuple[tuple[str | int, ...], str]]]], ...] = (
    ("collectors", collector_problems),
    ("clickhouse", clickhouse_problems),
    ("storage", storage_problems),
    ("kafka", kafka_problems),
    ("anomaly", anomaly_problems),
    ("bgp", bgp_problems),
    ("metrics", metrics_problems),
    ("api", api_problems),
    ("detection", detection_problems),
    ("dns", dns_problems),
    ("blackhole", blackhole_problems),
)
"""Each block's cross-field checks, run on the raw block (defensive about types, which
the schema reports on its own)."""


def _block(document: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = document.get(key)
    return value if isinstance(value, Mapping) else {}


def config_problems(raw: Mapping[str, Any]) -> list[Problem]:
    problems = [Problem((key, *path), message) for key, check in _BLOCK_CHECKS
                for path, message in check(_block(raw, key))]
    dev_mode = _block(raw, "api").get("dev_mode") is True
    problems += [Problem(("snmp", *path), message) for path, message in snmp_problems(_block(raw, "snmp"), dev_mode)]
    clickhouse = _block(raw, "clickhouse")
    host, password = clickhouse.get("host"), clickhouse.get("password", "")
    problem = (clickhouse_password_problem(host, password)
               if not dev_mode and isinstance(host, str | None) and isinstance(password, str) else None)
    if problem is not None:
        problems.append(Problem(("clickhouse", "password"), f"{problem}{DEV_MODE_HINT}"))
    api = _block(raw, "api")
    listen = api.get("listen", field_default(ApiSettings, "listen"))
    try:
        host = split_host_port(listen)[0] if isinstance(listen, str) else None
    except ValueError:
        host = None  # the schema reports it
    tls = api.get("tls_cert") is not None and api.get("tls_key") is not None
    problem = (plain_http_problem(listen, host, tls, api.get("allow_plain_http") is True)
               if not dev_mode and isinstance(listen, str) and host is not None else None)
    if problem is not None:
        problems.append(Problem(("api", "listen"), f"{problem}{DEV_MODE_HINT}"))
    api_enabled = api.get("enabled", field_default(ApiSettings, "enabled"))
    if _block(raw, "blackhole").get("owner") is not None and api_enabled is not False:
        problems.append(Problem(("blackhole", "owner"), "is set, so this process announces nothing and serves no "
                                "control plane (the owner's API is the one): set api.enabled: false"))
    return problems


# --------------------------------------------------------------------------- config


def load_config(path: str | os.PathLike[str]) -> Settings:
    """Read, validate and type the config file at `path`.

    Raises ConfigError listing every problem, one line each (``FILE: $.path: reason``).
    An empty file is the embedded default.
    """
    document = read_yaml_file(path)
    return _parse_config(document, os.fspath(path), Path(path))


def parse_config(document: object, source: str = "config") -> Settings:
    """Validate and type a config document already parsed (the API, tests); `source`
    names it in the problems."""
    return _parse_config(document, source, None)


def _parse_config(document: object, source: str, path: Path | None) -> Settings:
    raw = {} if document is None else document
    problems = schema_problems(CONFIG_SCHEMA, raw)
    if isinstance(raw, dict):
        problems += config_problems(raw)
    raise_if_problems(source, raw, problems)
    assert isinstance(raw, dict)  # the schema requires an object
    typed = {key: value for key, value in raw.items() if not str(key).startswith("x-")}
    try:
        settings = Settings.model_validate(typed)
    except ValidationError as err:
        # The schema and the models are one definition; a document one accepts and the
        # other refuses is a bug, reported like any problem rather than as a traceback.
        raise_if_problems(source, raw, [Problem(tuple(e["loc"]), e["msg"])
                                        for e in err.errors()])
        raise
    settings._source = path
    settings._raw = copy.deepcopy(cast("dict[str, Any]", raw))
    return settings


def checked_at_start(settings: Settings) -> list[str]:
    """What `settings` asks of this machine, which only `run` can check when it starts
    (``flowenricher validate`` says so rather than pretend it checked them)."""
    notes = []
    if "geoip" in settings.enrich:
        for key in ("asn_db", "city_db"):
            db = getattr(settings.geoip, key)
            if db is not None:
                notes.append(f"$.geoip.{key}: {str(db)!r} is opened and checked as a MaxMind database")
    if "snmp" in settings.enrich:
        for target in settings.snmp.targets:
            try:
                ipaddress.ip_address(target.exporter)
            except ValueError:
                notes.append(f"$.snmp.target: the host name {target.exporter!r} is resolved to the exporter's "
                             "address")
    if "ptr" in settings.enrich and settings.dns.nameserver is None:
        notes.append("$.dns.nameserver: not set: the system's resolver (/etc/resolv.conf) must be configured")
    if not is_loopback(settings.api.host) and not settings.api.dev_mode:
        # Whether `run` serves it or `flowenricher api` does (api.enabled: false).
        notes.append(f"$.api.listen: {settings.api.listen} is beyond this machine: the API refuses to start "
                     "until an API token exists (`flowenricher token create`)")
    if settings.api.tls is not None:
        notes.append(f"$.api.tls_cert: {str(settings.api.tls_cert)!r} and $.api.tls_key are read as PEM "
                     "certificate and key when the API starts")
    return notes


# --------------------------------------------------------------------------- secrets
# The default-secrets findings of a whole Settings (default_secrets.py holds each rule).


def insecure_settings(settings: Settings) -> list[str]:
    """Every finding above in `settings`, one line each (``$.key: reason``): the ones the
    config alone decides, whichever process (``run``, ``api``) reads it."""
    problems = []
    api = settings.api
    problem = plain_http_problem(api.listen, api.host, api.tls is not None, api.allow_plain_http)
    if problem is not None:
        problems.append(f"$.api.listen: {problem}")
    ch = settings.clickhouse
    problem = clickhouse_password_problem(ch.host, ch.password)
    if problem is not None:
        problems.append(f"$.clickhouse.password: {problem}")
    for index, target in enumerate(settings.snmp.targets):
        problem = snmp_community_problem(target.host, target.version, target.community)
        if problem is not None:
            problems.append(f"$.snmp (target {index}, {target.host}): {problem}")
    return problems


def warn_in_dev_mode(settings: Settings, source: str) -> None:
    """What `run` does with the findings at start, API or not: warn in dev mode, refuse
    otherwise (config validation refused them already; this keeps the refusal true for
    settings made some other way)."""
    problems = insecure_settings(settings)
    if problems and not settings.api.dev_mode:
        raise ConfigError([*(f"{source}: {line}" for line in problems),
                           "(api.dev_mode: true allows these with a warning; never in production)"])
    for line in problems:  # warnings, not problems of the file: not worded as the refusals are
        log.warning("dev mode, would refuse to start: %s", line)


# --------------------------------------------------------------------------- rules
# The rules file is the detection engine's (detect/rules_file.py); named here too because
# the entry points read both files.

from .detect.rules_file import load_rules, parse_actions, parse_rules  # noqa: E402


def validation_problems(config: Callable[[], Settings] | None,
                        rules: Callable[[float | None], object] | None) -> tuple[Settings | None, list[str]]:
    """`flowenricher validate`'s verdict on a config and a rules document, each read by its
    callable (a file for the CLI, the inventory's rendered values for the Ansible role's
    preflight), so both gates give one verdict: the config's settings (None when it was
    not given or refused) and every problem of both, one line each. `rules` is called with
    the config's ``detection.flow_cache_max_window`` in seconds, or the default config's
    when there is no config, as ``run --rules`` would take it."""
    problems: list[str] = []
    settings: Settings | None = None
    max_window_s: float | None = Settings.default().detection.flow_cache_max_window_s
    if config is not None:
        try:
            settings = config()
            max_window_s = settings.detection.flow_cache_max_window_s
        except ConfigError as err:
            problems.extend(err.problems)
    if rules is not None:
        try:
            rules(max_window_s)
        except ConfigError as err:
            problems.extend(err.problems)
    return settings, problems
