"""Settings of the enrichments (``geoip``, ``dns``, ``snmp``, ``networks`` and the
top-level ``enrich`` list): keys, defaults, bounds and cross-field checks, written once.

An SNMP agent listed in ``snmp.targets`` takes every key it does not give from the snmp
block; SnmpSettings.targets is that merge, with ``snmp.target`` first.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from ..common.settings_base import (
    NETWORK_SCHEMA,
    Duration,
    FilePath,
    IpAddress,
    IPNetwork,
    Port,
    Section,
    field_default,
    parse_duration,
    seconds_or_none,
    split_list,
)
from ..default_secrets import snmp_community_problem
from .snmp_credentials import credential_problems

Problems = list[tuple[tuple[str | int, ...], str]]
SnmpVersion = Literal["2c", "3"]
AuthProtocol = Literal["none", "md5", "sha", "sha224", "sha256", "sha384", "sha512"]
PrivProtocol = Literal["none", "des", "3des", "aes", "aes192", "aes256"]
ENRICHMENTS = ("geoip", "bgp", "snmp", "ptr")
DEFAULT_ENRICHMENTS = ("geoip", "bgp")

DEV_MODE_HINT = " (api.dev_mode: true allows it with a warning; never in production)"
"""What an insecure setting refused outside development mode says about the way out."""


class GeoIpSettings(Section):
    """MaxMind-format databases (GeoLite2, or DB-IP lite which needs no account). Absent
    databases disable that part of the geoip enrichment."""

    asn_db: FilePath | None = Field(None, description="ASN database (.mmdb): origin AS number and organisation.")
    city_db: FilePath | None = Field(None, description="City or country database (.mmdb): country and city.")
    reload_interval_s: Duration = Field(parse_duration("60s"), alias="reload_interval", description=(
        "How often the database files are checked for a change (a new file is loaded without a restart; a file that "
        "fails to load keeps the previous one)."))
    cache_size: int = Field(262144, ge=0, description=(
        "Addresses whose answers are kept between batches (those not seen for longest dropped first; about 120 bytes "
        "each). Keep it above the distinct public addresses of a few minutes of traffic: a miss costs a database "
        "lookup."))


class DnsSettings(Section):
    """Reverse DNS (PTR) lookups for the ptr enrichment."""

    nameserver: IpAddress | None = Field(None, description="Resolver address for PTR lookups; null: the system's "
                                         "resolvers.")
    port: Port = Field(53, description="Port of `nameserver`.")
    timeout_s: float = Field(2, gt=0, alias="timeout", description="Seconds to wait for one PTR answer.")
    max_inflight: int = Field(64, ge=1, description="PTR queries outstanding at once.")
    rate_per_s: float = Field(200, gt=0, description="PTR queries sent per second at most: new addresses beyond it "
                              "wait in the backlog.")
    backlog: int = Field(10000, ge=1, description="Addresses waiting for a query; beyond it new ones are dropped "
                         "(counted) and tried again when seen again.")
    cache_size: int = Field(262144, ge=1, description="Addresses whose PTR answer (or failure) is cached.")
    min_ttl_s: Duration = Field(parse_duration("5m"), alias="min_ttl",
        description="Shortest time an answer is cached, whatever its "
                                "TTL.")
    max_ttl_s: Duration = Field(parse_duration("24h"), alias="max_ttl",
        description="Longest time an answer is cached, whatever its TTL.")
    negative_ttl_s: Duration = Field(parse_duration("1h"), alias="negative_ttl",
        description="How long a failure (NXDOMAIN, no answer, "
                                     "SERVFAIL, timeout) is cached.")
    private: bool = Field(True, description="Also look up private and special-purpose addresses (an operator's resolver "
                          "often holds their reverse zones).")


_INHERITED = " Null or absent: the snmp block's."


class SnmpTargetEntry(Section):
    """One SNMP agent and the exporter whose interfaces it names."""

    exporter: IpAddress = Field(description="The flow exporter's address (as the flows carry it) whose ifIndex numbers "
                                "this agent names.")
    host: str | None = Field(None, min_length=1, description="Agent address; absent: the exporter's address.")
    port: Port | None = Field(None, description="SNMP UDP port of the agent." + _INHERITED)
    version: SnmpVersion | None = Field(None, description="SNMP version." + _INHERITED)
    community: str | None = Field(None, repr=False, description="SNMP v2c community; never logged." + _INHERITED)
    user: str | None = Field(None, description="SNMPv3 user name." + _INHERITED)
    auth_protocol: AuthProtocol | None = Field(None, description="SNMPv3 authentication protocol." + _INHERITED)
    auth_key: str | None = Field(None, repr=False, description="SNMPv3 authentication pass phrase; never logged."
                                 + _INHERITED)
    priv_protocol: PrivProtocol | None = Field(None, description="SNMPv3 privacy protocol." + _INHERITED)
    priv_key: str | None = Field(None, repr=False, description="SNMPv3 privacy pass phrase; never logged." + _INHERITED)


@dataclass(frozen=True, slots=True)
class SnmpTargetSettings:
    """One SNMP agent naming the interfaces of one flow exporter, every key resolved."""

    exporter: str
    host: str
    port: int
    version: str
    community: str = field(repr=False)
    user: str | None
    auth_protocol: str
    auth_key: str | None = field(repr=False)
    priv_protocol: str
    priv_key: str | None = field(repr=False)


_AGENT_KEYS = ("port", "version", "community", "user", "auth_protocol", "auth_key", "priv_protocol", "priv_key")
_CREDENTIALS = ("version", "community", "user", "auth_protocol", "auth_key", "priv_protocol", "priv_key")


class SnmpSettings(Section):
    """SNMP polling of the router's IF-MIB for interface names (the snmp enrichment)."""

    schema_extra = {"if": {"properties": {"enabled": {"const": True}}, "required": ["enabled"]},
                    "then": {"title": "needed when enabled is true", "required": ["target"]}}

    enabled: bool = Field(False, description="Poll the router.")
    target: str | None = Field(None, min_length=1, description="Router host name or address.")
    community: str = Field("public", repr=False, description="SNMP v2c community; never logged.")
    port: Port = Field(161, description="SNMP UDP port.")
    timeout_s: float = Field(2, gt=0, alias="timeout", description="Seconds to wait for each reply.")
    retries: int = Field(3, ge=0, description="Retries after a timeout.")
    version: SnmpVersion = Field("2c", description="SNMP version for `target`.")
    user: str | None = Field(None, description="SNMPv3 user name (version 3).")
    auth_protocol: AuthProtocol = Field("sha", description="SNMPv3 authentication protocol.")
    auth_key: str | None = Field(None, repr=False, description="SNMPv3 authentication pass phrase; never logged.")
    priv_protocol: PrivProtocol = Field("aes", description="SNMPv3 privacy protocol.")
    priv_key: str | None = Field(None, repr=False, description="SNMPv3 privacy pass phrase; never logged.")
    interval_s: Duration = Field(parse_duration("5m"), alias="interval",
        description="How often each agent's interface table is walked "
                                 "again.")
    agents: tuple[SnmpTargetEntry, ...] = Field((), alias="targets", description=(
        "More agents, one per exporter (the `target` above is the first, named after its own address). Keys not given "
        "are taken from the snmp block."))

    @property
    def targets(self) -> tuple[SnmpTargetSettings, ...]:
        """`target` (when enabled) first, then each of `targets`, completed from the block."""
        block = {key: getattr(self, key) for key in _AGENT_KEYS}
        items: list[dict[str, Any]] = []
        if self.enabled and self.target:
            items.append({"exporter": self.target, "host": self.target, **block})
        for entry in self.agents:
            own = {key: getattr(entry, key) for key in _AGENT_KEYS if getattr(entry, key) is not None}
            items.append({**block, **own, "exporter": entry.exporter, "host": entry.host or entry.exporter})
        return tuple(SnmpTargetSettings(**item) for item in items)


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    """One entry of the operator's network classification (``networks``)."""

    prefix: IPNetwork
    name: str
    customer: str


NETWORKS_SCHEMA: dict[str, Any] = {
    "description": "The operator's network classification: prefix -> name (or {name, customer}). Flows get "
                   "src/dst_net_name and src/dst_net_customer from the most specific match, so traffic can be viewed "
                   "per network and per customer.",
    "type": "object",
    "default": {},
    "propertyNames": NETWORK_SCHEMA,
    "additionalProperties": {"oneOf": [
        {"type": "string", "minLength": 1, "description": "The network's name."},
        {"type": "object", "additionalProperties": False, "required": ["name"], "description": "The network's name "
         "and customer.", "properties": {
             "name": {"type": "string", "minLength": 1, "description": "The network's name."},
             "customer": {"type": "string", "default": "", "description": "The customer it belongs to (hosting)."}}},
    ]},
}
"""``networks`` as the schema states it (a mapping whose values are a name or an object)."""


def parse_networks(value: Mapping[str, Any]) -> tuple[NetworkSettings, ...]:
    """The checked ``networks`` mapping as typed entries."""
    return tuple(
        NetworkSettings(ipaddress.ip_network(prefix), *((item, "") if isinstance(item, str)
                                                        else (item["name"], item.get("customer", ""))))
        for prefix, item in value.items())


ENRICH_SCHEMA: dict[str, Any] = {
    "description": "Enrichments applied to each flow, comma-separated as in the original (\"geoip, bgp, snmp, ptr\") or "
                   "as a list: geoip (country, city, ASN and organisation from the databases), bgp (AS path, next hop, "
                   "peer AS from the RIB), snmp (interface names), ptr (reverse DNS; costly: every new address is a "
                   "query), or none. The original's comment spelled snmp \"smtp\"; smtp is read as snmp.",
    "type": ["string", "array"],
    "pattern": r"^\s*(none|(geoip|bgp|snmp|smtp|ptr)\s*(,\s*(geoip|bgp|snmp|smtp|ptr)\s*)*)\s*$",
    "title": "a comma-separated list of geoip, bgp, snmp, ptr, or none",
    "items": {"enum": ["geoip", "bgp", "snmp", "smtp", "ptr"]},
    "uniqueItems": True,
    "default": ", ".join(DEFAULT_ENRICHMENTS),
}


def parse_enrich(value: object) -> frozenset[str]:
    """The enrichments named by ``enrich`` ("geoip, bgp" or a list)."""
    if isinstance(value, frozenset | set):
        return frozenset(value)
    items = set(split_list(value if isinstance(value, str) else list(value))) - {"none"}  # type: ignore[call-overload]
    # The original's own comment lists "smtp" among the values; it means snmp.
    return frozenset("snmp" if item == "smtp" else item for item in items)


def dns_problems(dns: Mapping[str, Any]) -> Problems:
    """The answer cache's TTL bounds must leave room between them."""
    low = seconds_or_none(dns.get("min_ttl", field_default(DnsSettings, "min_ttl")))
    high = seconds_or_none(dns.get("max_ttl", field_default(DnsSettings, "max_ttl")))
    if low is not None and high is not None and low > high:
        key = "min_ttl" if "min_ttl" in dns else "max_ttl"
        return [((key,), f"min_ttl ({low:g}s) is longer than max_ttl ({high:g}s)")]
    return []


def snmp_problems(snmp: Mapping[str, Any], dev_mode: bool) -> Problems:
    """Each agent's credentials (snmp.target with the block's, each of snmp.targets with
    its own over the block's) by the rule the poller uses, and outside dev mode no default
    community for an agent on the network; an exporter listed twice; a poll interval of 0.
    A snmp.target that is a host name is resolved at start."""
    from ..documents import json_path  # documents names paths for every block: imported late

    problems: Problems = []
    block = {key: snmp.get(key, field_default(SnmpSettings, key)) for key in _CREDENTIALS}
    agents: list[tuple[tuple[str | int, ...], object, object, dict[str, Any]]] = []
    if snmp.get("enabled") is True and snmp.get("target"):
        agents.append(((), snmp.get("target"), snmp.get("target"), {}))
    targets = snmp.get("targets")
    for index, entry in enumerate(targets if isinstance(targets, list) else []):
        if isinstance(entry, Mapping):
            own = {key: value for key, value in entry.items() if key in _CREDENTIALS and value is not None}
            exporter = entry.get("exporter")
            agents.append((("targets", index), exporter, entry.get("host") or exporter, own))
    seen: dict[str, tuple[str | int, ...]] = {}
    for where, exporter, host, own in agents:
        merged = {**block, **own}
        if not all(isinstance(merged[key], str | None) for key in _CREDENTIALS):
            continue  # the schema reports the type
        texts = {key: str(merged[key] or "") for key in _CREDENTIALS}
        found = credential_problems(**texts)
        open_community = snmp_community_problem(str(host), texts["version"], texts["community"])
        if open_community is not None and not dev_mode:
            found.append(("community", f"{open_community}{DEV_MODE_HINT}"))
        for key, reason in found:
            if where == () or key in own:
                problems.append(((*where, key), reason))
            else:
                problems.append((where, f"{key} (from snmp.{key}): {reason}"))
        try:
            address = str(ipaddress.ip_address(str(exporter)))
        except ValueError:
            continue  # a host name (resolved at start) or a bad address (the schema reports it)
        first = seen.setdefault(address, where)
        if first != where:
            problems.append(((*where, "exporter") if where != () else ("target",),
                             f"exporter {address} is already polled by {json_path(('snmp', *first))}"))
    if seconds_or_none(snmp.get("interval", field_default(SnmpSettings, "interval"))) == 0:
        problems.append((("interval",), "must be longer than 0"))
    return problems
