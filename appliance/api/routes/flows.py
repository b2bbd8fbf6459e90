"""``/api/v1/flows``: top N and time series over the flows table and its rollups."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from typing import Annotated

from fastapi import APIRouter, Query

from ..deps import Context, FlowFilters, Reader
from ..errors import ERROR_RESPONSES, ErrorBody, Invalid, Problem
from ..queries import MAX_POINTS, TOP_DIMENSIONS, Filters, Metric, auto_step, widen
from ..schemas import SeriesPoint, SeriesResponse, TopResponse, TopRow

router = APIRouter(prefix="/api/v1/flows", tags=["flows"],
                   responses={**ERROR_RESPONSES, 503: {"model": ErrorBody, "description": "The flow store is down"}})

Dimension = Enum("Dimension", {name: name for name in TOP_DIMENSIONS}, type=str)  # type: ignore[misc]
"""The flow columns top N and series may group by (queries.TOP_DIMENSIONS)."""


def _utc(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@router.get("/top", response_model=TopResponse)
def top(ctx: Context, _: Reader, filters: FlowFilters,
        by: Annotated[Dimension, Query(description="The flow column to rank.")],
        metric: Annotated[Metric, Query(description="What to rank by.")] = "bytes",
        limit: Annotated[int, Query(ge=1, le=1000)] = 10) -> TopResponse:
    """The top `limit` values of `by` (source or destination host, AS, country, port,
    protocol, interface, next hop, ...) over the time range."""
    rows, source = ctx.flows.top(by.value, metric, filters, limit)
    return TopResponse(by=by.value, metric=metric, start=_utc(filters.start), end=_utc(filters.end),
                       source=source.name, rows=[TopRow(**row) for row in rows])


@router.get("/series", response_model=SeriesResponse)
def series(ctx: Context, _: Reader, filters: FlowFilters,
           step: Annotated[int | None, Query(ge=1, le=366 * 86400, description=(
               "Seconds per bucket; default: a few hundred points over the range. The range is widened "
               "to whole steps."))] = None,
           metric: Annotated[Metric, Query(description="With `by`: which values get a series.")] = "bytes",
           by: Annotated[Dimension | None, Query(description="One series per top value of this column.")] = None,
           limit: Annotated[int, Query(ge=1, le=100, description="Series with `by`.")] = 10) -> SeriesResponse:
    """Traffic over time, per bucket; from the coarsest rollup that answers exactly."""
    size = step or auto_step(filters.start, filters.end)
    start, end = widen(filters.start, filters.end, size)
    if (end - start) // size > MAX_POINTS:
        raise Invalid("too many points", [Problem(path="query.step",
                                                  reason=f"{(end - start) // size} buckets; at most {MAX_POINTS}")])
    widened = Filters(start, end, filters.direction, filters.exporter)
    points, source = ctx.flows.series(size, metric, widened, by.value if by else None, limit)
    return SeriesResponse(step=size, metric=metric, by=by.value if by else None, start=_utc(start), end=_utc(end),
                          source=source.name, points=[SeriesPoint(**p) for p in points])
