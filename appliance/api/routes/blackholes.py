"""``/api/v1/blackholes``: active blackholes and their history, with the rule and the
evidence that caused each, and each one's state; manual announce and withdraw.

The list of active blackholes also shows the ones that failed lately (GoBGP refused
them: state ``failed`` with its reason), so a refusal is seen where the operator looks
for what is in force; the original ``/blackholes`` lists only what is in force."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Path, Query

from appliance.flowenricher.blackhole.state import RECENT_HISTORY, recent_failures

from .. import announcements
from ..deps import Admin, Context, Reader
from ..errors import ERROR_RESPONSES, ErrorBody, Invalid, Problem
from ..schemas import Blackhole, BlackholeRequest, RuleBlackholeRequest, normalise_prefix

router = APIRouter(prefix="/api/v1/blackholes", tags=["blackholes"], responses=ERROR_RESPONSES)


@router.get("", response_model=list[Blackhole])
def active(ctx: Context, _: Reader) -> list[Blackhole]:
    """Blackholes active now, oldest first, then those that failed in the last day (state
    ``failed``, with GoBGP's reason) unless their prefix was asked for again since."""
    zone = ctx.timezone
    manager = ctx.deps.blackholes
    current = manager.active()
    failed = recent_failures(manager.state.history(RECENT_HISTORY), current, time.time())
    return [Blackhole.of(bh, zone) for bh in [*current, *reversed(failed)]]


@router.get("/history", response_model=list[Blackhole])
def history(ctx: Context, _: Reader,
            limit: Annotated[int, Query(ge=1, le=10_000, description="Most rows, newest first.")] = 100,
            ) -> list[Blackhole]:
    """Active and withdrawn blackholes, newest first, with their rule and evidence."""
    zone = ctx.timezone
    return [Blackhole.of(bh, zone) for bh in ctx.deps.blackholes.state.history(limit)]


@router.post("", response_model=Blackhole,
             responses={409: {"model": ErrorBody, "description": "Refused by a safety rule (named in detail)"}})
def announce(body: BlackholeRequest, ctx: Context, principal: Admin) -> Blackhole:
    """Blackhole a prefix, optionally for a limited time."""
    blackhole, dry_run = announcements.announce(ctx.deps.blackholes, principal, body.prefix, body.next_hop,
                                                body.communities, body.duration_s)
    return Blackhole.of(blackhole, ctx.timezone, dry_run=dry_run)


@router.post("/requests", response_model=Blackhole,
             responses={409: {"model": ErrorBody, "description": "Refused by a safety rule (named in detail)"}})
def rule_request(body: RuleBlackholeRequest, ctx: Context, principal: Admin) -> Blackhole:
    """A rule's blackhole request from a storer whose ``blackhole.owner`` is this host:
    decided by this host's manager and safety policy, as its own rules' requests are.
    The same prefix again extends the active blackhole."""
    blackhole, dry_run = announcements.request_for_rule(ctx.deps.blackholes, principal, body.prefix, body.next_hop,
                                                        body.communities, body.duration_s, body.rule, body.evidence)
    return Blackhole.of(blackhole, ctx.timezone, dry_run=dry_run)


@router.delete("/{prefix:path}", response_model=Blackhole,
               responses={404: {"model": ErrorBody, "description": "The prefix is not blackholed"}})
def withdraw(prefix: Annotated[str, Path(description="The prefix, e.g. 149.202.68.236/32")], ctx: Context,
             principal: Admin) -> Blackhole:
    """Withdraw an active blackhole."""
    try:
        normalised = normalise_prefix(prefix)
    except ValueError as err:
        raise Invalid("the prefix is not valid", [Problem(path="path.prefix", reason=str(err))]) from err
    withdrawn = announcements.withdraw(ctx.deps.blackholes, principal, normalised)
    return Blackhole.of(withdrawn, ctx.timezone)
