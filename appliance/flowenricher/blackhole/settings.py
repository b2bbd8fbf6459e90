"""Settings of blackholing (``blackhole.*``): limits, defaults, the allow list and the
router API that verifies announcements; keys, defaults, bounds and checks written once.

The allow list (``never``) holds addresses, prefixes and ``{prefix, until}`` entries;
BlackholeSettings.never is the permanent ones and never_until the lapsing ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from ..common.settings_base import Duration, FilePath, SchemaGenerator, Section, Url, formatted, parse_duration
from ..default_secrets import is_loopback

Problems = list[tuple[tuple[str | int, ...], str]]


def until_epoch(value: object) -> float:
    """Epoch seconds of an allow-list entry's `until` (ISO 8601 with a time zone)."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 time such as 2026-12-31T00:00:00Z") from None
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone (write Z or +01:00): the appliance runs in UTC")
    return moment.timestamp()


class RouterApiSettings(Section):
    """The router's RouterOS API, read (never written) to verify that each confirmed
    blackhole is an active route in the router's table: the state verified. null:
    blackholes are not verified on the router, confirmed is the last state. The user needs
    only the read policy."""

    host: str = Field(min_length=1, description="The router's address or name.")
    port: int | None = Field(None, ge=1, le=65535, description="API port; null: 8728, or 8729 with tls.")
    username: str = Field(min_length=1, description="A RouterOS user with the read policy.")
    password: str = Field("", repr=False, description="Its password; never logged.")
    tls: bool = Field(False, description="Use API-SSL (port 8729).")
    ca_file: FilePath | None = Field(None, description="CA certificate that signed the router's API-SSL certificate; "
                                     "null: the system's CAs. Only with tls.")
    timeout_s: Duration = Field(parse_duration("3s"), alias="timeout", description="Longest wait for the router's answer.")
    interval_s: Duration = Field(parse_duration("30s"), alias="interval", description=(
        "How often verified blackholes are read again (a route the router dropped falls back to confirmed and is "
        "told)."))

    @model_validator(mode="after")
    def _port(self) -> RouterApiSettings:
        if self.port is None:
            self.derive(port=8729 if self.tls else 8728)
        return self


class OwnerSettings(Section):
    """Where a storer sends its rules' blackhole requests when another host owns the
    announcements (a scale-out with several storers: one blackhole manager, one GoBGP
    session to the router).  The owner is a `flowenricher run` with the API enabled; it
    applies its own safety policy to every request."""

    url: Url = Field(description=(
        "The owner's API, e.g. https://appliance.example.net:9600; requests go to /api/v1/blackholes/requests. "
        "https unless the owner is on this machine."))
    token_file: FilePath = Field(description=(
        "File holding an admin token of the owner (`flowenricher token create --scope admin` there), readable by the "
        "service's user only."))
    ca_file: FilePath | None = Field(None, description=(
        "CA certificate that signed the owner's API certificate; null: the system's CAs."))
    timeout_s: Duration = Field(parse_duration("5s"), alias="timeout", description=(
        "Longest wait for the owner's answer to one request."))
    attempts: int = Field(8, ge=1, le=100, description=(
        "Tries per request while the owner cannot be reached (waiting 1 s, then twice as long each time, at most "
        "60 s); then the request is dropped and counted. A refusal by the owner's safety policy is not retried."))


class NeverEntry(Section):
    """An allow-list entry that may lapse."""

    prefix: Annotated[str, formatted("ip-prefix", "an address or prefix")] = Field(
        description="The address or prefix never blackholed.")
    until: str | None = Field(None, min_length=1, description="When the entry stops protecting (ISO 8601 with a time "
                              "zone, e.g. 2026-12-31T00:00:00Z); null: never.")
    comment: str = Field("", description="Why the entry is there (for the operator; not used).")


_NEVER_ITEM: dict[str, Any] = {
    **NeverEntry.model_json_schema(schema_generator=SchemaGenerator),
    "type": ["string", "object"], "minLength": 1, "title": "an address or prefix, or {prefix, until}",
}
"""An entry as the schema states it: a string (checked as ip-prefix by the format of the
manager, which accepts what it can announce) or a NeverEntry object."""
Community = Annotated[str, formatted("bgp-community", "a BGP community (ASN:VALUE, a:b:c, blackhole, no-export or "
                                                      "no-advertise)")]


class BlackholeSettings(Section):
    """Blackholing through GoBGP, automatic (rules with the blackhole action) and manual
    (API). The limits below (never-blackholed addresses, shortest prefixes, active and
    per-minute caps, longest duration) apply to both: no rule or API call can pass them."""

    dry_run: bool = Field(False, description="Log what would be announced, announce nothing.")
    max_active: int = Field(100, ge=0, description=(
        "Blackholes active at once, at most: the former single cap. Now the cap of each pool whose own key is not set "
        "(max_active_sources, max_active_victims), so a config that sets only max_active keeps its limit on bans."))
    max_active_sources: int | None = Field(None, ge=0, description=(
        "Source bans (attackers, outside my_prefixes; manual blackholes outside my_prefixes too) active at once, at "
        "most. null (not set): max_active. Bans never take a victim's slot."))
    max_active_victims: int = Field(20, ge=0, description=(
        "Victim blackholes (destinations inside my_prefixes, RTBH of an address under attack) active at once, at "
        "most: a pool of their own, so scanner bans can never starve a victim's RTBH."))
    no_export: bool = Field(True, description=(
        "Add NO_EXPORT (RFC 1997, 65535:65281) to every blackhole announcement, so the router never passes one on to "
        "another AS. Turn off only if your upstream's RTBH service needs the route exported."))
    max_duration_limit_s: Duration = Field(parse_duration("168h"), alias="max_duration", description=(
        "Longest a blackhole may last; longer requests are shortened to it, and a source ban without an expiry gets "
        "it. 0: no maximum."))
    repeat_factor: float = Field(2, ge=1, description=(
        "Escalation for repeat offenders: a source banned again within repeat_window gets its ban multiplied by this "
        "once per earlier ban in the window, at most max_duration. 1: no escalation."))
    repeat_window_s: Duration = Field(parse_duration("24h"), alias="repeat_window", description=(
        "How far back earlier bans of the same source count for repeat_factor. 0: no escalation."))
    max_per_minute: int = Field(10, ge=0, description="New blackholes per minute, at most.")
    min_prefix_length_v4: int = Field(32, ge=0, le=32, description=(
        "Shortest IPv4 prefix that may be blackholed (32: host routes only). Lower it only on purpose."))
    min_prefix_length_v6: int = Field(128, ge=0, le=128, description=(
        "Shortest IPv6 prefix that may be blackholed (128: host routes only)."))
    allow_list: tuple[Any, ...] = Field((), alias="never", description=(
        "Addresses or prefixes never blackholed (the allow list), besides the ones the appliance adds itself (router "
        "peer, BGP listener, resolver, the API and metrics addresses). An entry is an address or prefix, or {prefix, "
        "until} for one that lapses at a time (ISO 8601 with a time zone, e.g. 2026-12-31T00:00:00Z)."),
        json_schema_extra={"items": _NEVER_ITEM})
    next_hop_v4: Annotated[str, formatted("bgp-next-hop-v4", "an IPv4 next hop")] = Field("192.0.2.1", description=(
        "IPv4 next hop of blackhole routes to IPv4 addresses when a rule or call gives none (the router routes it to "
        "a discard route; a rule's blackhole_next_hop serves only addresses of its own family). Default: 192.0.2.1 "
        "(TEST-NET-1, RFC 5737). Not unspecified, loopback or multicast."))
    next_hop_v6: Annotated[str, formatted("bgp-next-hop-v6", "an IPv6 next hop")] = Field("100::1", description=(
        "IPv6 next hop of blackhole routes to IPv6 addresses when none of that family is given, including every IPv6 "
        "address caught by a rule in the original format (whose blackhole_next_hop is IPv4). Default: 100::1, from "
        "the discard-only prefix 100::/64 of RFC 6666. Must be IPv6: a router refuses an IPv6 route with an IPv4 next "
        "hop."))
    communities: tuple[Community, ...] = Field(("65535:666",), description=(
        "Communities of blackhole routes when none are given (RFC 7999 BLACKHOLE). Standard ASN:VALUE (RFC 1997, both "
        "parts 0-65535), large a:b:c (RFC 8092, each part 0-4294967295), or the names blackhole, no-export, "
        "no-advertise; an ASN:VALUE whose AS number needs 32 bits (216285:666) is announced as the large community "
        "216285:666:0 (docs/blackholing.md)."))
    manual_duration_s: Duration = Field(0, alias="manual_duration", description=(
        "Expiry of manual (API) blackholes; 0: until withdrawn."))
    log_file: FilePath = Field(Path("blackholes.txt"), description=(
        "Audit trail of every announcement and withdrawal (JSON lines), as the original's blackholes.txt."))
    reconcile_interval_s: Duration = Field(parse_duration("5s"), alias="reconcile_interval", description=(
        "How often what GoBGP holds is compared with the active blackholes (fixes a restart of either side)."))
    confirm_timeout_s: Duration = Field(parse_duration("10s"), alias="confirm_timeout", description=(
        "How long an announced blackhole may take to be confirmed (in GoBGP's adj-RIB-out towards every Established "
        "router peer) before it is an alert on the alert channels and counted in "
        "flowenricher_blackhole_unconfirmed_total. It stays announced and keeps being checked."))
    router_api: RouterApiSettings | None = Field(None)
    owner: OwnerSettings | None = Field(None, description=(
        "Send the rules' blackhole requests to the host that owns announcements instead of announcing from here "
        "(a storer in a scale-out); null: this process owns them."))

    @property
    def max_duration_s(self) -> float | None:
        """The longest a blackhole may last; None: no maximum."""
        return self.max_duration_limit_s or None

    @property
    def never(self) -> tuple[str, ...]:
        """The allow list's permanent entries."""
        return tuple(item if isinstance(item, str) else str(item["prefix"]) for item in self.allow_list
                     if isinstance(item, str) or not item.get("until"))

    @property
    def never_until(self) -> tuple[tuple[str, float], ...]:
        """The allow list's lapsing entries: (prefix, epoch seconds)."""
        return tuple((str(item["prefix"]), until_epoch(item["until"])) for item in self.allow_list
                     if not isinstance(item, str) and item.get("until"))


def blackhole_problems(bh: Mapping[str, Any]) -> Problems:
    """The allow list's lapsing entries must say when in a form that cannot be misread; a
    router API certificate only with TLS."""
    problems: Problems = []
    never = bh.get("never")
    for index, item in enumerate(never if isinstance(never, list) else []):
        if isinstance(item, Mapping) and item.get("until") is not None:
            try:
                until_epoch(item["until"])
            except ValueError as err:
                problems.append((("never", index, "until"), str(err)))
    api = bh.get("router_api")
    if isinstance(api, Mapping) and api.get("ca_file") and not api.get("tls"):
        problems.append((("router_api", "ca_file"),
                         "is set, but tls is not: the plain API (port 8728) uses no certificate"))
    owner = bh.get("owner")
    url = owner.get("url") if isinstance(owner, Mapping) else None
    if isinstance(url, str) and url.startswith(("http://", "https://")):  # otherwise the schema reports it
        problems += [(("owner", "url"), problem) for problem in owner_url_problems(url)]
    return problems


def owner_url_problems(url: str) -> list[str]:
    """An owner URL the storer can send to: http(s) with a host, nothing but a base path,
    and https unless the owner is on this machine (the admin token travels with every
    request)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as err:
        return [f"{url!r} is not a URL: {err}"]
    if not parts.hostname:
        return [f"{url!r} has no host"]
    if parts.query or parts.fragment:
        return [f"{url!r}: give the owner's base URL, without a query or fragment"]
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return [f"{url!r} is plain HTTP to another machine, so the admin token would cross the network in clear; "
                "use https (the owner's api.tls_cert)"]
    return []
