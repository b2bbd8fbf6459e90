"""The original flowenricher's calls, kept exactly: ``POST /announce``, ``POST /withdraw``,
``GET /blackholes`` (../shared/examples/README.md).

Same paths, bodies and answers as the Go program, so scripts written for it keep
working; they now need the bearer token (admin for the two that change routes).
"""

from __future__ import annotations

from fastapi import APIRouter

from appliance.flowenricher.blackhole.state import IN_GOBGP

from .. import announcements
from ..deps import Admin, Context, Reader
from ..errors import ERROR_RESPONSES, ErrorBody
from ..schemas import AnnounceRequest, OriginalBlackhole, WithdrawRequest, WithdrawResult, rfc3339

router = APIRouter(tags=["original"], responses=ERROR_RESPONSES)


@router.post("/announce", response_model=OriginalBlackhole,
             responses={409: {"model": ErrorBody, "description": "Refused by a safety rule (named in detail)"}})
def announce(body: AnnounceRequest, ctx: Context, principal: Admin) -> OriginalBlackhole:
    """Blackhole a prefix now (through the blackhole manager and its safety rules)."""
    blackhole, _ = announcements.announce(ctx.deps.blackholes, principal, body.prefix, body.next_hop,
                                          body.communities)
    return OriginalBlackhole(prefix=blackhole.prefix, next_hop=blackhole.next_hop,
                             communities=list(blackhole.communities),
                             timestamp=rfc3339(blackhole.created_at, ctx.timezone))


@router.post("/withdraw", response_model=WithdrawResult,
             responses={404: {"model": ErrorBody, "description": "The prefix is not blackholed"}})
def withdraw(body: WithdrawRequest, ctx: Context, principal: Admin) -> WithdrawResult:
    """Withdraw a blackhole now."""
    withdrawn = announcements.withdraw(ctx.deps.blackholes, principal, body.prefix)
    return WithdrawResult(prefix=withdrawn.prefix)


@router.get("/blackholes", response_model=dict[str, OriginalBlackhole])
def blackholes(ctx: Context, _: Reader) -> dict[str, OriginalBlackhole]:
    """Blackholes GoBGP holds (announced, confirmed or verified): prefix -> {prefix,
    next_hop, communities, timestamp}, communities as written.  One still queued for an
    unreachable GoBGP, or failed, is not listed: /api/v1/blackholes shows every state."""
    zone = ctx.timezone
    return {
        bh.prefix: OriginalBlackhole(prefix=bh.prefix, next_hop=bh.next_hop, communities=list(bh.communities),
                                     timestamp=rfc3339(bh.created_at, zone))
        for bh in ctx.deps.blackholes.active() if bh.state in IN_GOBGP
    }
