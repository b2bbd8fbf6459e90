"""``/api/v1/lookup/{ip}``: what the appliance knows about an address, as ``flowenricher lookup``."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from fastapi import APIRouter, Path

from ..deps import Context, Reader
from ..errors import ERROR_RESPONSES, ErrorBody, Invalid, Problem, Unavailable

router = APIRouter(prefix="/api/v1/lookup", tags=["lookup"],
                   responses={**ERROR_RESPONSES, 503: {"model": ErrorBody, "description": "No lookup is configured"}})


@router.get("/{ip}", response_model=dict[str, Any])
def lookup(ip: Annotated[str, Path(description="An IPv4 or IPv6 address.", max_length=64)], ctx: Context,
           _: Reader) -> dict[str, Any]:
    """Prefix, origin AS and organisation, AS path, next hop, country and city, PTR name."""
    try:
        address = str(ipaddress.ip_address(ip.strip()))
    except ValueError:
        raise Invalid("not an address", [Problem(path="path.ip", reason=f"{ip!r} is not an IP address")]) from None
    if ctx.deps.lookup is None:
        raise Unavailable("no lookup is configured in this service")
    try:
        return dict(ctx.deps.lookup(address))
    except ValueError as err:
        raise Invalid("lookup refused the address", [Problem(path="path.ip", reason=str(err))]) from err
