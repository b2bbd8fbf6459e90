"""Request and response models of the API (what the OpenAPI document describes).

Inputs are strict: unknown keys are rejected (a typo such as ``nexthop`` must not
silently mean the default next hop), prefixes must have their host bits clear, and a
next hop must be of the prefix's address family.  Every such problem is a 422 naming
the field.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from appliance.flowenricher.blackhole.state import Blackhole as StoredBlackhole
from appliance.flowenricher.blackhole.state import BlackholeState
from appliance.flowenricher.common.bgp_values import COMMUNITY_SYNTAX, next_hop_for, parse_community, parse_prefix

from .queries import Metric


def normalise_prefix(text: str) -> str:
    """A blackhole prefix as the manager stores it (common/bgp_values.py: a bare address
    is its host route, host bits must be clear).  Raises ValueError saying what is wrong."""
    return str(parse_prefix(text))


def check_community(text: str) -> str:
    """A community of common/bgp_values.py (standard, large, well-known name, or a
    32-bit ASN:VALUE announced as large), kept as written so answers echo it back."""
    parse_community(text)
    return text


Community = Annotated[str, AfterValidator(check_community)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnnounceRequest(_Strict):
    """The original ``POST /announce`` body."""

    prefix: str = Field(description="Prefix to blackhole; a bare address means its host route (/32, /128).",
                        examples=["149.202.68.236/32"])
    next_hop: str | None = Field(None, description="Next hop of the blackhole route, of the prefix's address "
                                 "family; default: the configured discard next hop of that family.",
                                 examples=["192.0.2.1"])
    communities: list[Community] | None = Field(
        None, description=f"BGP communities: {COMMUNITY_SYNTAX}; an ASN:VALUE whose ASN needs 32 bits is "
        "announced as the large community ASN:VALUE:0 and echoed back as written.  Default: the configured ones.",
        examples=[["216285:666"]], max_length=32)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return normalise_prefix(value)

    @field_validator("next_hop")
    @classmethod
    def _next_hop(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        prefix = info.data.get("prefix")
        if not isinstance(prefix, str):  # the prefix is refused on its own
            return value
        return str(next_hop_for(parse_prefix(prefix), value))


class WithdrawRequest(_Strict):
    """The original ``POST /withdraw`` body."""

    prefix: str = Field(description="The blackholed prefix (a bare address means its host route).",
                        examples=["149.202.68.236/32"])

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return normalise_prefix(value)


class BlackholeRequest(AnnounceRequest):
    """``POST /api/v1/blackholes``: the original fields plus a lifetime."""

    duration_s: float | None = Field(None, gt=0, le=366 * 86400,
                                     description="Seconds until it is withdrawn; default: the configured lifetime "
                                     "of manual blackholes (none: until withdrawn).")


class RuleBlackholeRequest(_Strict):
    """``POST /api/v1/blackholes/requests``: a rule's blackhole request from a storer that
    sends them to this host (its ``blackhole.owner``), as its own manager would take it."""

    prefix: str = Field(description="The key's host route (or prefix) to blackhole.", examples=["203.0.113.9/32"])
    next_hop: str | None = Field(None, description="The rule's blackhole_next_hop; it serves addresses of its own "
                                 "family, the others get the configured next hop of theirs.")
    communities: list[Community] = Field(default_factory=list, max_length=32,
                                         description="The rule's communities; empty: the configured ones.")
    duration_s: float = Field(ge=0, le=366 * 86400, description="The rule's blackhole_time; 0: none asked (the "
                              "safety policy's lifetime for the pool, if any).")
    rule: str = Field(min_length=1, max_length=256, description="The rule that fired.")
    evidence: dict[str, Any] = Field(description="The detection (its key kind under \"key\": src or dst, the "
                                     "flows behind it), kept with the blackhole.")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return normalise_prefix(value)


class OriginalBlackhole(BaseModel):
    """One entry of the original ``GET /blackholes`` map."""

    prefix: str
    next_hop: str
    communities: list[str]
    timestamp: str = Field(description="When it was announced, RFC 3339 with the configured time zone's offset.",
                           examples=["2025-07-29T19:04:56.624057+03:00"])


class WithdrawResult(BaseModel):
    prefix: str
    status: Literal["withdrawn"] = "withdrawn"


def _time(epoch: float | None, zone: tzinfo) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).astimezone(zone)


def rfc3339(epoch: float, zone: tzinfo) -> str:
    return datetime.fromtimestamp(epoch, UTC).astimezone(zone).isoformat()


class Blackhole(BaseModel):
    """A blackhole as the versioned API shows it: with who asked for it and why."""

    id: int
    prefix: str
    next_hop: str
    communities: list[str]
    source: str = Field(description='"api" (a manual request) or "rule" (a detection).')
    rule: str = Field(description="The detection rule that asked for it; empty for manual ones.")
    evidence: dict[str, Any] = Field(description="What the detection saw (key, counts, sample flows), or "
                                     "who asked through the API.")
    created_at: datetime
    expires_at: datetime | None
    withdrawn_at: datetime | None
    announced: bool = Field(description="GoBGP confirmed the announcement (false while it is retried).")
    state: BlackholeState = Field(
        description="requested: GoBGP has not taken it yet (unreachable: retried); announced: GoBGP took it; "
        "confirmed: GoBGP sends it to every Established router peer (its adj-RIB-out); verified: the router's "
        "route table holds it as active (with blackhole.router_api); failed: refused for good (see reason), "
        "never retried; withdrawn.")
    confirmed_at: datetime | None = Field(None, description="When it was last confirmed; null: not confirmed now.")
    verified_at: datetime | None = Field(None, description="When the router was seen holding it; null: not "
                                         "verified now.")
    reason: str = Field("", description="Why it failed (GoBGP's answer) or why it was withdrawn; empty otherwise.")
    dry_run: bool = Field(False, description="Dry-run mode: logged, not announced.")

    @classmethod
    def of(cls, bh: StoredBlackhole, zone: tzinfo, dry_run: bool = False) -> Blackhole:
        created = _time(bh.created_at, zone)
        assert created is not None
        return cls(id=bh.id, prefix=bh.prefix, next_hop=bh.next_hop, communities=list(bh.communities),
                   source=bh.source, rule=bh.rule, evidence=bh.evidence, created_at=created,
                   expires_at=_time(bh.expires_at, zone), withdrawn_at=_time(bh.withdrawn_at, zone),
                   announced=bh.announced, state=bh.state, reason=bh.failed_reason or bh.withdraw_reason,
                   confirmed_at=_time(bh.confirmed_at, zone), verified_at=_time(bh.verified_at, zone),
                   dry_run=dry_run)


class TopRow(BaseModel):
    key: str = Field(description="The dimension's value as text (addresses dotted or IPv6, directions by name).")
    bytes: int
    packets: int
    flows: int


class TopResponse(BaseModel):
    by: str
    metric: Metric
    start: datetime = Field(serialization_alias="from", description="Start of the range (included).")
    end: datetime = Field(serialization_alias="to", description="End of the range (excluded).")
    source: str = Field(description='The table that answered: "flows" or a rollup ("1m", "5m", "1h").')
    rows: list[TopRow]


class SeriesPoint(BaseModel):
    t: int = Field(description="Bucket start, unix seconds.")
    key: str | None = Field(None, description="The `by` dimension's value, when grouping.")
    bytes: int
    packets: int
    flows: int


class SeriesResponse(BaseModel):
    step: int = Field(description="Seconds per bucket.")
    metric: Metric
    by: str | None
    start: datetime = Field(serialization_alias="from", description="Start of the range (included).")
    end: datetime = Field(serialization_alias="to", description="End of the range (excluded).")
    source: str
    points: list[SeriesPoint] = Field(description="Buckets with traffic, oldest first; empty buckets are absent.")


class Exporter(BaseModel):
    exporter: str
    flows: int
    bytes: int
    packets: int
    first_seen: int
    last_seen: int
    protocols: list[str]
    sampling_rates: list[int]
    interfaces: dict[str, str] = Field(description="ifindex -> name: SNMP names when known, else names from flows.")
    counters: dict[str, int] = Field(description="Decoder counters of this exporter since the service started.")


class ExportersResponse(BaseModel):
    start: datetime = Field(serialization_alias="from", description="Start of the range (included).")
    end: datetime = Field(serialization_alias="to", description="End of the range (excluded).")
    exporters: list[Exporter]


class DetectionsResponse(BaseModel):
    detections: list[dict[str, Any]] = Field(description="Rows of the detections table, newest first.")


class ConfigView(BaseModel):
    path: str | None
    config: dict[str, Any] = Field(description="The config as written; secrets shown as ********.")
    effective: dict[str, Any] = Field(description="The config as it runs, every default filled in.")


class RulesView(BaseModel):
    path: str | None
    rules: list[dict[str, Any]]


class Validated(BaseModel):
    valid: bool = True
    detail: str


class Health(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="ok: ready (HTTP 200); degraded: not ready (HTTP 503).")
    store: bool = Field(description="The flow store answers a query now.")
    collector: bool | None = Field(None, description="The collector answers (its control socket, or this process); "
                                                     "null: this API has no collector to ask.")


class Liveness(BaseModel):
    status: Literal["alive"]


class AuditRecord(BaseModel):
    id: int
    at: datetime
    token_id: int | None
    token_name: str
    client: str
    method: str
    path: str
    body: str
    status: int



RulesDocument = list[Any] | dict[str, Any]
"""A detection.yml document as JSON: a list of rules, or ``{"rules": [...]}``."""


class BacktestRequest(_Strict):
    """``POST /api/v1/backtest``: the range to replay and the rules to replay it through."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: datetime = Field(alias="from", description="Start of the range (RFC 3339, or unix seconds), included; "
                            "without an offset, UTC.", examples=["2026-12-01T00:00:00Z"])
    end: datetime = Field(alias="to", description="End of the range, excluded; at most api.backtest.max_range "
                          "after `from`.", examples=["2026-12-02T00:00:00Z"])
    rules: RulesDocument | None = Field(None, description=(
        "A detection rules document (as PUT /api/v1/rules takes, validated the same way); default: the rules "
        "running now."))
    compare: RulesDocument | None = Field(None, description=(
        "A second rules document replayed beside `rules` over the same flows; the report lists the (rule, key) "
        "pairs found only by one of them and by both."))
    tune: int | None = Field(None, ge=0, le=1_000_000, description=(
        "Also tune the rules: per threshold, the value that at most this many keys a day reached."))


class BacktestProgress(BaseModel):
    replayed_s: int = Field(description="Seconds of the range replayed so far.")
    share: float = Field(description="Share of the range replayed, 0 to 1.")
    flows: int = Field(description="Flows replayed so far.")
    elapsed_s: float = Field(description="Wall time since the job was started.")


class BacktestJob(BaseModel):
    """A backtest job; `report` (the lines of ``flowenricher backtest --format jsonl``) once done."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    state: Literal["queued", "running", "done", "failed", "cancelled"] = Field(description=(
        "queued: its process is starting; running: replaying; done, failed (see `error`) or cancelled."))
    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")
    rules: str = Field(description="Which rules: the running rules' file, or the request's document.")
    compare: str | None = None
    tune: int | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: BacktestProgress
    detections: dict[str, int] = Field(description="Detections per rule (of `rules`), once done.")
    error: str | None = None
    url: str = Field(description="This job's address in the API.")
    report: list[dict[str, Any]] | None = Field(None, description=(
        "Once done: the summary line, one line per rule (per rules set), tuning and compare lines; left out of "
        "the list of jobs."))
