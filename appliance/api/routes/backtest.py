"""``/api/v1/backtest``: replay stored flows through the running rules or a rules
document, as ``flowenricher backtest`` does, as a job (backtests.py runs it).

Starting and cancelling need an admin token (a backtest costs the appliance CPU and
reads); reading jobs and reports needs a read token, as the detections do.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from appliance.flowenricher.common.settings_base import format_duration

from ..backtests import Job
from ..configfiles import Parsed
from ..deps import Admin, AppContext, Context, Reader, epoch
from ..errors import ERROR_RESPONSES, ErrorBody, Invalid, Problem
from ..schemas import BacktestJob, BacktestProgress, BacktestRequest, RulesDocument

router = APIRouter(prefix="/api/v1", tags=["backtest"], responses=ERROR_RESPONSES)

PATH = "/api/v1/backtest"


def job_view(job: Job, ctx: AppContext, with_report: bool) -> BacktestJob:
    zone = ctx.timezone

    def when(value: float | None) -> datetime | None:
        return None if value is None else datetime.fromtimestamp(value, UTC).astimezone(zone)

    span = max(job.end - job.start, 1)
    return BacktestJob(
        id=job.id, state=job.state, start=when(job.start), end=when(job.end), rules=job.rules, compare=job.compare,
        tune=job.tune, created_at=when(job.created_at), started_at=when(job.started_at),
        finished_at=when(job.finished_at),
        progress=BacktestProgress(replayed_s=job.replayed_s, share=round(min(job.replayed_s / span, 1.0), 4),
                                  flows=job.flows, elapsed_s=round(job.elapsed_s(), 3)),
        detections=job.detections(), error=job.error, url=f"{PATH}/{job.id}",
        report=job.report if with_report else None)


def _rules(ctx: AppContext, document: RulesDocument, field: str) -> list[dict[str, Any]]:
    """A rules document validated as PUT /api/v1/rules validates one, problems under `$.field`."""
    try:
        return ctx.files.validate_rules(Parsed(document, None))
    except Invalid as err:
        problems = [Problem(path=f"$.{field}{p.path[1:]}" if p.path.startswith("$") else f"$.{field}: {p.path}",
                            reason=p.reason) for p in err.problems]
        raise Invalid(f"{field}: the rules document does not validate", problems) from err


_STARTED: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorBody, "description": "As many backtests as api.backtest.max_running allows are running"}}


@router.post("/backtest", response_model=BacktestJob, status_code=202, responses=_STARTED)
def start(body: BacktestRequest, ctx: Context, _: Admin, response: Response) -> BacktestJob:
    """Start a backtest of [from, to): the stored flows replayed through the rules (blackholes in dry run:
    nothing is announced).  Answers at once with the job; follow it at its `url`."""
    first, stop = epoch(body.start), epoch(body.end)
    limits = ctx.settings.api.backtest
    if stop <= first:
        raise Invalid("empty time range", [Problem(path="$.to", reason="must be after `from`")])
    if stop - first > limits.max_range_s:
        raise Invalid("the range is too long", [Problem(
            path="$.to", reason=f"the range is {format_duration(stop - first)}; at most "
            f"{format_duration(limits.max_range_s)} (api.backtest.max_range) after `from`")])
    if body.rules is not None:
        rules, name = _rules(ctx, body.rules, "rules"), "request"
    else:
        rules = ctx.files.rules
        if not rules:
            raise Invalid("no rules to backtest", [Problem(
                path="$.rules", reason="the service runs without detection rules: send a rules document")])
        name = str(ctx.files.rules_path) if ctx.files.rules_path else "running rules"
    rule_sets = [(name, rules)]
    compare_name = None
    if body.compare is not None:
        compare_name = "compare"
        rule_sets.append((compare_name, _rules(ctx, body.compare, "compare")))
    job = ctx.backtests.start(rule_sets, first, stop, body.tune, name, compare_name)
    response.headers["Location"] = f"{PATH}/{job.id}"
    return job_view(job, ctx, False)


@router.get("/backtest", response_model=list[BacktestJob])
def recent(ctx: Context, _: Reader) -> list[BacktestJob]:
    """Recent backtests, newest first (without their reports)."""
    return [job_view(job, ctx, False) for job in ctx.backtests.recent()]


_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "No such backtest (or "
                                                     "no longer kept)"}}


@router.get("/backtest/{job_id}", response_model=BacktestJob, responses=_NOT_FOUND)
def one(job_id: str, ctx: Context, _: Reader) -> BacktestJob:
    """A backtest's state and progress, and its report once done."""
    return job_view(ctx.backtests.get(job_id), ctx, True)


@router.delete("/backtest/{job_id}", response_model=BacktestJob, responses=_NOT_FOUND)
async def cancel(job_id: str, ctx: Context, _: Admin) -> BacktestJob:
    """Cancel a backtest: its process is stopped before this answers.  A finished one is left as it is."""
    job = await run_in_threadpool(ctx.backtests.cancel, job_id)
    return job_view(job, ctx, False)
