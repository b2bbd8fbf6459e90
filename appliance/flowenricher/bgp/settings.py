"""Settings of BGP (``bgp.*``): the router session GoBGP holds and how flowenricher reaches
GoBGP; keys, defaults, bounds and cross-field checks written once.

``router_id`` falls back to ``listen_ip`` and ``local_asn`` to ``asn``, as the original
documented.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, WithJsonSchema, model_validator

from ..common.settings_base import Asn, Duration, FilePath, IpAddress, Section, formatted, parse_duration, split_host_port

Problems = list[tuple[tuple[str | int, ...], str]]


class BgpListenerSettings(Section):
    """The original BGP session block: the router session (routes in for AS-path
    enrichment, blackholes out). GoBGP holds it; the deployment renders GoBGP's
    configuration from these keys."""

    schema_extra = {"if": {"properties": {"enabled": {"const": True}}, "required": ["enabled"]},
                    "then": {"title": "needed when enabled is true", "required": ["peer_ip", "remote_asn"]}}

    enabled: bool = Field(False, description="Hold the BGP session with the router. Without it there is no AS-path "
                          "enrichment from BGP and no blackholing.")
    listen_ip: IpAddress | None = Field(None, description="Local address of the session (bound and used as TCP "
                                        "source).")
    router_id: Annotated[str, formatted("router-id", "an IPv4 address (the BGP identifier) or empty")] | None = Field(
        None, description=(
        "BGP identifier (an IPv4 address). Empty or absent: listen_ip, which must then be IPv4."))
    peer_ip: IpAddress | None = Field(None, description="The router's address.")
    asn: Asn | None = Field(None, description="This side's AS number (4-byte ASNs allowed). `local_asn` takes "
                            "precedence when both are set.")
    local_asn: Asn | None = Field(None, description="This side's AS number in the session; absent: `asn`.")
    remote_asn: Asn | None = Field(None, description="The router's AS number; equal to the local AS for iBGP.")
    max_peers: int = Field(2, ge=1, description="Most BGP sessions accepted (the original allowed several routers).")

    @model_validator(mode="after")
    def _fallbacks(self) -> BgpListenerSettings:
        fallback = self.listen_ip if self.listen_ip and ipaddress.ip_address(self.listen_ip).version == 4 else None
        self.derive(router_id=self.router_id or fallback,
                    local_asn=self.local_asn if self.local_asn is not None else self.asn)
        return self


GOBGP_API_SCHEMA = {"anyOf": [{"x-flowenricher-def": "hostPort"},
                              {"type": "string", "pattern": "^unix:///.+",
                               "title": "unix:///absolute/path of GoBGP's API socket"}]}


class GoBgpSettings(Section):
    """GoBGP, which holds the BGP sessions for flowenricher."""

    api: Annotated[str, WithJsonSchema(GOBGP_API_SCHEMA)] = Field("127.0.0.1:50051", description=(
        "GoBGP's gRPC address: host:port, or unix:///path of its API socket (gobgpd --api-hosts unix://...): "
        "flowenricher mirrors the RIB from it and the control plane announces and withdraws blackholes through it."))
    stale_after_s: Duration = Field(parse_duration("1h"), alias="stale_after", description=(
        "How long the mirrored RIB keeps answering while GoBGP is unreachable; after it, BGP columns stay empty until "
        "GoBGP is back."))
    dump_limit: int = Field(100000, ge=0, description=(
        "Largest table (prefixes) loaded from GoBGP's WatchEvent dump; larger ones are read with ListPath (gobgpd "
        "cannot send a dump over 256 MiB)."))

    @property
    def host(self) -> str:
        """The API's host; empty for a unix socket."""
        return "" if self.api.startswith("unix://") else split_host_port(self.api)[0]

    @property
    def port(self) -> int:
        """The API's port; 0 for a unix socket."""
        return 0 if self.api.startswith("unix://") else split_host_port(self.api)[1]


class BgpSettings(Section):
    """BGP: the router session that GoBGP holds, and how flowenricher reaches GoBGP."""

    listener: BgpListenerSettings = Field(default_factory=BgpListenerSettings, alias="bgp_listener")
    gobgp: GoBgpSettings = Field(default_factory=GoBgpSettings)
    prefix_file: FilePath | None = Field(None, description=(
        "A JSON prefix table (list of {prefix, as_path, next_hop, local_pref, communities}) used for BGP enrichment "
        "instead of GoBGP's RIB, as the original allowed; reloaded when it changes. Null: the RIB mirrored from GoBGP "
        "(bgp.gobgp.api)."))


def bgp_problems(bgp: Mapping[str, Any]) -> Problems:
    """An enabled session needs a usable BGP identifier and this side's AS number."""
    session = bgp.get("bgp_listener")
    if not isinstance(session, Mapping) or session.get("enabled") is not True:
        return []
    problems: Problems = []
    router_id, listen_ip = session.get("router_id"), session.get("listen_ip")
    if not router_id:
        try:
            usable = isinstance(listen_ip, str) and ipaddress.ip_address(listen_ip).version == 4
        except ValueError:
            usable = True  # the schema reports the bad address
        if not usable:
            problems.append((("bgp_listener", "router_id"), "required when listen_ip is not an IPv4 address "
                                                            "(the BGP identifier is an IPv4 address)"))
    if session.get("asn") is None and session.get("local_asn") is None:
        problems.append((("bgp_listener",), "'asn' or 'local_asn' is required (this side's AS number)"))
    return problems
