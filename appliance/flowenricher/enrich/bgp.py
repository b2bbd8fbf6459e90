"""BGP enrichment: the columns a flow gets from the best route to its addresses, with
pmacct's meaning of the column names (``nfacctd_as: bgp``, ``bgp_peer_src_as_type: bgp``).

From the route to **dst_addr** (the path the flow's packets take from here):

* ``dst_as_path``: the AS path, nearest AS first (the stored ``as_path`` column, pmacct's
  ``as_path``, renders it as strings);
* ``peer_dst_as``: the first AS of that path, the neighbour AS the flow leaves to;
* ``dst_as``: the origin AS, the last AS of the path.  A route's origin overrides what
  GeoIP put in the column (the route is what the router uses; the database can be
  older); without a route, or when the origin is unknown (an AS_SET of several ASes),
  GeoIP's value stays.  This stage writes no AS names: the pipeline names each AS
  column from the number finally stored (enrich/pipeline.py);
* ``dst_communities``: the route's standard communities (``asn << 16 | value``);
* ``local_pref``: its LOCAL_PREF (0 when the route has none, as learned over eBGP);
* ``bgp_next_hop``: its BGP next hop (zeros: none).

From the route to **src_addr**, read as the path back to the source:

* ``src_as``: its origin AS, overriding GeoIP's as for ``dst_as``;
* ``peer_src_as``: its first AS, the neighbour AS the flow most likely came from.  This
  assumes symmetric routing, as pmacct does with ``bgp_peer_src_as_type: bgp``;
  traffic entering through another upstream than the one we would send it back to is
  attributed to the latter.  So when the exporter sent the real previous AS
  (bgpPrevAdjacentAsNumber, IPFIX element 129), that value is kept.

A route with an empty AS path is one of our own AS's (originated here or learned over
iBGP without a path): its origin is `local_asn` when configured, else the existing value
is kept, and its neighbour AS is 0, since the flow does not cross a neighbour.  Where
there is no route, every column keeps what it had (defaults, or what the exporter sent:
NetFlow/IPFIX can carry the AS numbers and the BGP next hop).  The stage counts, per distinct address looked up, whether a
route was found (``flowenricher_bgp_lookups_total{result="route"|"no_route"}``); with no
table at all (GoBGP down at start, empty prefix file) it counts ``result="no_table"`` and
changes nothing.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter

from ..batch import FlowBatch, ListColumn
from ..bgp.rib import RibView, Rows
from .base import AddressSet


class RouteSource(Protocol):
    """Where the routes come from: the GoBGP mirror or the JSON prefix file."""

    def view(self) -> RibView: ...

    def close(self) -> None: ...


class BgpStage:
    """Fills the BGP columns of each batch from `source` (see the module docstring)."""

    name = "bgp"
    # It replaces AS numbers GeoIP (or the exporter) set; the pipeline then names every
    # AS column from the number stored, so no name of the replaced number stays.
    writes_as_numbers = True

    def __init__(self, source: RouteSource, registry: CollectorRegistry | None = None,
                 local_asn: int | None = None, close_source: bool = True) -> None:
        self.source = source
        self.local_asn = local_asn or 0
        self._close_source = close_source
        self._lookups = Counter("flowenricher_bgp_lookups", "Distinct flow addresses looked up in the BGP RIB",
                                ["result"], registry=registry)

    def enrich(self, batch: FlowBatch, addrs: AddressSet) -> None:
        view = self.source.view()
        if not len(view):
            self._lookups.labels("no_table").inc(len(addrs))
            return
        rows = view.lookup(addrs.addrs)
        found = rows >= 0
        hits = int(np.count_nonzero(found))
        self._lookups.labels("route").inc(hits)
        self._lookups.labels("no_route").inc(len(rows) - hits)
        if not hits:
            return
        dst, src = found[addrs.dst], found[addrs.src]
        neighbor = view.uint_column("neighbor_as", rows)
        origin = self._origins(view, rows)
        _fill(batch, "peer_dst_as", dst, neighbor[addrs.dst])
        _fill(batch, "local_pref", dst, view.uint_column("local_pref", rows)[addrs.dst])
        _fill(batch, "bgp_next_hop", dst, view.next_hops(rows)[addrs.dst])
        _fill(batch, "dst_as", dst & (origin[addrs.dst] > 0), origin[addrs.dst])
        _fill(batch, "src_as", src & (origin[addrs.src] > 0), origin[addrs.src])
        # The exporter's bgpPrevAdjacentAsNumber, when it sends one, is what the router
        # saw; the guess from the route back to the source only fills the gaps.
        _fill(batch, "peer_src_as", src & (np.asarray(batch["peer_src_as"]) == 0), neighbor[addrs.src])
        dst_rows = rows[addrs.dst]
        for column, name in (("dst_as_path", "as_path"), ("dst_communities", "communities")):
            from_rib = view.list_column(name, dst_rows)
            batch[column] = _choose_lists(dst, from_rib, batch[column]) if column in batch else from_rib

    def _origins(self, view: RibView, rows: Rows) -> npt.NDArray[np.uint32]:
        """Origin AS per looked-up address; our own AS for routes with an empty path
        when it is configured (0 means: keep the column's value)."""
        origin = view.uint_column("origin_as", rows)
        if self.local_asn:  # an empty path is the only one whose neighbour AS is 0 (AS 0 is invalid)
            empty_path = (rows >= 0) & (view.uint_column("neighbor_as", rows) == 0)
            origin[empty_path] = self.local_asn
        return origin

    def close(self) -> None:
        if self._close_source:
            self.source.close()


def _fill(batch: FlowBatch, column: str, where: npt.NDArray[np.bool_], values: npt.NDArray[np.generic]) -> None:
    """Set `column` to `values` where `where` holds; other flows keep what they had."""
    if not where.any():
        return
    current = np.asarray(batch[column])
    mask = where[:, None] if current.ndim == 2 else where
    batch[column] = np.where(mask, values, current).astype(current.dtype)


def _choose_lists(where: npt.NDArray[np.bool_], first: ListColumn, second: ListColumn) -> ListColumn:
    """Row i of `first` where `where[i]`, else row i of `second`, without a Python loop."""
    first_len = np.diff(first.offsets).astype(np.int64)
    second_len = np.diff(second.offsets).astype(np.int64)
    lengths = np.where(where, first_len, second_len)
    offsets = np.zeros(len(lengths) + 1, dtype=np.uint64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.zeros(int(offsets[-1]), dtype=np.uint32)
    for source, mask, source_len in ((first, where, first_len), (second, ~where, second_len)):
        take = np.repeat(mask, source_len)  # the source's elements that belong to chosen rows
        if not take.any():
            continue
        # Each chosen element moves by (its row's start in the output - its row's start in the source).
        move = np.repeat(offsets[:-1].astype(np.int64) - source.offsets[:-1].astype(np.int64), source_len)
        values[(np.arange(len(source.values)) + move)[take]] = source.values[take]
    return ListColumn(offsets, values)
