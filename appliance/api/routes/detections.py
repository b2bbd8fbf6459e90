"""``/api/v1/detections``: what the detection engine found, by rule, key and time."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ..deps import Context, FlowFilters, Reader
from ..errors import ERROR_RESPONSES, ErrorBody
from ..schemas import DetectionsResponse

router = APIRouter(prefix="/api/v1/detections", tags=["detections"],
                   responses={**ERROR_RESPONSES, 503: {"model": ErrorBody, "description": "The flow store is down"}})


@router.get("", response_model=DetectionsResponse)
def detections(ctx: Context, _: Reader, filters: FlowFilters,
               rule: Annotated[str | None, Query(max_length=128, description="Only this rule's detections.")] = None,
               key: Annotated[str | None, Query(max_length=128, description=(
                   "Only detections of this key (the address the rule counted per)."))] = None,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> DetectionsResponse:
    """Detections in the time range, newest first (none while the detections table does not exist)."""
    return DetectionsResponse(detections=ctx.detections(filters, rule, key, limit))
