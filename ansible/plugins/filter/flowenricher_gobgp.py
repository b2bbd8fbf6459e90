"""Ansible filters: the gobgpd sessions of the appliance and of each storer, derived from
the inventory (docs/scale-out.md, "BGP on storers").

The appliance's gobgpd holds the router session (the original ``bgp.bgp_listener``
block) and is an iBGP route reflector for the storers: each storer's own gobgpd (no
listening port) connects to it as a route-reflector client, so it receives the router's
table as the appliance has it, and the storer's flowenricher mirrors its local gobgpd as
the appliance's does. roles/gobgp/templates/gobgpd.conf.j2 renders what these return.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

STORER_ADDRESS_KEYS = ("gobgp_address", "ansible_host")
"""Where a storer's address, as the appliance's gobgpd sees it, is read from its host
variables: gobgp_address when the BGP address differs from the SSH one, else ansible_host."""


class SessionError(ValueError):
    """The inventory does not describe the sessions; the message names the variable."""


def storer_addresses(names: list[str], hostvars: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Each storer's address (name -> address), from its gobgp_address or ansible_host."""
    found = {}
    for name in names:
        host = hostvars[name]
        address = next((str(host.get(key)) for key in STORER_ADDRESS_KEYS if host.get(key)), "")
        found[name] = _address(address, f"storer {name}: gobgp_address (or ansible_host)")
    return found


def sessions(listener: Mapping[str, Any], storers: Mapping[str, str], storer: str = "",
             afi_safis: list[str] | None = None, passive: bool = False) -> dict[str, Any]:
    """gobgpd's global settings and neighbours for the appliance (`storer` "") or for the
    storer named `storer`; `listener` is the appliance's bgp_listener block, `storers`
    what storer_addresses returns, `passive` the router session's passive mode."""
    families = list(afi_safis or ["ipv4-unicast", "ipv6-unicast"])
    where = "flowenricher_bgp_listener (the appliance's)"
    listen_ip = _address(listener.get("listen_ip"), f"{where}.listen_ip")
    asn = _asn(listener.get("local_asn") or listener.get("asn"), f"{where}.asn")
    router_id = str(listener.get("router_id") or listen_ip)
    if not _is_address(router_id) or ipaddress.ip_address(router_id).version != 4:
        raise SessionError(f"{where}.router_id: {router_id!r} is not an IPv4 address (the BGP identifier)")
    if storer:
        if storer not in storers:
            raise SessionError(f"storer {storer}: not in the storers group")
        own = storers[storer]
        if ipaddress.ip_address(own).version != 4:
            raise SessionError(f"storer {storer}: gobgp_address {own!r}: the storer's BGP identifier is its "
                               "address, which must be IPv4")
        # No listening port: the storer connects to the appliance, nobody connects to it.
        return {"as": asn, "router_id": own, "port": -1, "local_addresses": [], "neighbors": [{
            "address": listen_ip, "peer_as": asn, "local_address": own, "passive": False,
            "description": "appliance (route reflector)", "rr_client": False, "afi_safis": families}]}
    peer_ip = _address(listener.get("peer_ip"), f"{where}.peer_ip")
    remote_asn = _asn(listener.get("remote_asn"), f"{where}.remote_asn")
    neighbors = [{"address": peer_ip, "peer_as": remote_asn, "local_address": listen_ip, "passive": passive,
                  "description": "router", "rr_client": False, "afi_safis": families}]
    neighbors += [{"address": address, "peer_as": asn, "local_address": listen_ip, "passive": True,
                   "description": f"storer {name}", "rr_client": True, "afi_safis": families}
                  for name, address in storers.items()]
    return {"as": asn, "router_id": router_id, "port": 179, "local_addresses": [listen_ip], "neighbors": neighbors,
            "cluster_id": router_id}


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _address(value: Any, what: str) -> str:
    if value is None or not _is_address(str(value)):
        raise SessionError(f"{what}: {value!r} is not an IP address")
    return str(ipaddress.ip_address(str(value)))


def _asn(value: Any, what: str) -> int:
    try:
        asn = int(str(value))
    except ValueError:
        asn = -1
    if isinstance(value, bool) or not 0 < asn < 2**32:
        raise SessionError(f"{what}: {value!r} is not an AS number")
    return asn


class FilterModule:
    """Registers the filters under the names the roles use."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"flowenricher_gobgp_storers": storer_addresses, "flowenricher_gobgp_sessions": sessions}
