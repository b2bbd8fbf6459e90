"""`flowenricher lookup IP` and the API's lookup: everything known about one address.

The answer comes from the same components that enrich flows (networks, GeoIP/ASN
databases, the BGP RIB, the PTR resolver), so what `lookup` says is what the flows
carry.  Inside the running service they are the live instances; the command line asks
the service over its control socket and, when none runs, builds its own from the config.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .common.addresses import stored_bytes
from .enrich.networks import NetworksStage

BgpLookup = Callable[[str], dict[str, Any] | None]
GeoLookup = Callable[[str], dict[str, object]]
PtrLookup = Callable[[str], str | None]


@dataclass
class Lookup:
    """Combines the sources that are configured; a missing one is simply absent."""

    networks: NetworksStage
    geo: GeoLookup | None = None
    bgp: BgpLookup | None = None
    ptr: PtrLookup | None = None

    def __call__(self, ip: str) -> dict[str, Any]:
        try:
            addr = ipaddress.ip_address(ip.strip())
        except ValueError:
            raise ValueError(f"lookup: {ip!r} is not an IPv4 or IPv6 address") from None
        text = str(addr)
        row = np.frombuffer(stored_bytes(addr), dtype=np.uint8).reshape(1, 16)
        out: dict[str, Any] = {"ip": text, "version": addr.version, "mine": bool(self.networks.inside(row)[0])}
        net = self.networks.network_of(text)
        out["network"] = {"name": net.name, "customer": net.customer} if net else None
        errors: dict[str, str] = {}
        if self.geo is not None:
            try:
                out["geo"] = self.geo(text)
            except Exception as err:  # one source failing must not hide the others
                errors["geo"] = str(err)
        if self.bgp is not None:
            try:
                out["bgp"] = self.bgp(text)
            except Exception as err:
                errors["bgp"] = str(err)
        if self.ptr is not None:
            try:
                out["ptr"] = self.ptr(text)
            except Exception as err:
                errors["ptr"] = str(err)
        if errors:
            out["errors"] = errors
        return out


def render(info: dict[str, Any]) -> str:
    """The human form of a lookup answer, one `key: value` per line."""
    lines = [f"ip: {info['ip']}" + ("  (in my_prefixes)" if info.get("mine") else "")]
    net = info.get("network")
    if net:
        lines.append(f"network: {net['name']}" + (f" (customer {net['customer']})" if net.get("customer") else ""))
    bgp = info.get("bgp")
    if bgp:
        lines.append(f"prefix: {bgp.get('prefix', '')}")
        lines.append(f"as path: {' '.join(str(a) for a in bgp.get('as_path', [])) or '(local)'}")
        lines.append(f"origin AS: {bgp.get('origin_as', 0)}  neighbour AS: {bgp.get('neighbor_as', 0)}")
        lines.append(f"next hop: {bgp.get('next_hop', '')}  local pref: {bgp.get('local_pref', 0)}")
        if bgp.get("communities"):
            lines.append(f"communities: {' '.join(bgp['communities'])}")
    elif "bgp" in info:
        lines.append("prefix: (no route)")
    geo = info.get("geo")
    if isinstance(geo, dict):
        if geo.get("asn"):
            lines.append(f"AS (database): {geo['asn']} {geo.get('as_name', '')}".rstrip())
        place = ", ".join(str(x) for x in (geo.get("city"), geo.get("country")) if x)
        if place:
            lines.append(f"location: {place}")
    if "ptr" in info:
        lines.append(f"ptr: {info['ptr'] or '(none)'}")
    for source, err in info.get("errors", {}).items():
        lines.append(f"{source}: error: {err}")
    return "\n".join(lines)
