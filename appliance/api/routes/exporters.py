"""``/api/v1/exporters``: the routers sending flows, their traffic, protocols, sampling,
interfaces and decoder counters."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter

from ..deps import Context, FlowFilters, Reader
from ..errors import ERROR_RESPONSES, ErrorBody
from ..schemas import Exporter, ExportersResponse

router = APIRouter(prefix="/api/v1/exporters", tags=["exporters"],
                   responses={**ERROR_RESPONSES, 503: {"model": ErrorBody, "description": "The flow store is down"}})


@router.get("", response_model=ExportersResponse)
def exporters(ctx: Context, _: Reader, filters: FlowFilters) -> ExportersResponse:
    """Per exporter over the time range: flows, bytes, packets, first and last flow,
    protocols and sampling rates seen; interface names (SNMP where configured, else from
    flows); decoder counters since the service started."""
    seen = ctx.flows.interfaces(filters)
    collector = ctx.deps.collector
    snmp = (collector.interface_names() or {}) if collector is not None else {}
    counters = collector.exporter_counters() if collector is not None else {}
    out = []
    for row in ctx.flows.exporters(filters):
        address = row["exporter"]
        names = {str(index): name for index, name in sorted(seen.get(address, {}).items())}
        names.update({str(index): name for index, name in snmp.get(address, {}).items() if name})
        out.append(Exporter(**row, interfaces=names, counters=dict(counters.get(address, {}))))
    return ExportersResponse(start=datetime.fromtimestamp(filters.start, UTC),
                             end=datetime.fromtimestamp(filters.end, UTC), exporters=out)
