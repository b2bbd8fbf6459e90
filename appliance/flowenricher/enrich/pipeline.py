"""The enrichment pipeline: runs the configured stages over each batch, in order.

Order matters and is fixed here: networks (direction) and geoip first, then bgp, whose
origin AS from a real route overrides the database's; then snmp; ptr last, so the
names it queues for ``ptr_cache`` can carry the ASN and country already found.  Right
after the last stage that writes AS numbers, every AS name column is set from the number
stored beside it (one ASN -> organisation table, see Enricher), so a number one stage
replaced never keeps the name another stage gave the old number.  A
stage that fails on a batch is logged (rate-limited) and counted, and the batch goes
on to storage with that stage's columns at their defaults: enrichment must never cost
a flow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from ..batch import FlowBatch
from ..common.ratelimit import RateLimitedLog
from .base import AddressSet, Stage, spread_strings

log = logging.getLogger(__name__)

AsName = Callable[[int], str]
# (AS number column, the column naming it): every AS the flows table stores.
AS_NAME_COLUMNS = (("src_as", "src_as_name"), ("dst_as", "dst_as_name"),
                   ("peer_src_as", "peer_src_as_name"), ("peer_dst_as", "peer_dst_as_name"))


class Enricher:
    """Applies `stages` to batches.

    `as_name` (the GeoIP stage's ASN -> organisation table) names every AS number column
    once the last stage with a true ``writes_as_numbers`` attribute has run (after all
    stages when none has): the name is always that of the number stored beside it, ""
    for a number the table does not know, whichever stage (or the exporter) set it.
    """

    def __init__(self, stages: Sequence[Stage], registry: CollectorRegistry | None = None,
                 as_name: AsName | None = None) -> None:
        self.stages = list(stages)
        self._as_name = as_name
        self._name_after = max((i for i, s in enumerate(self.stages) if getattr(s, "writes_as_numbers", False)),
                               default=len(self.stages) - 1)
        self._errors = Counter("flowenricher_enrich_errors", "Batches a stage failed on (columns left empty)",
                               ["stage"], registry=registry)
        self._seconds = Histogram("flowenricher_enrich_seconds", "Time per batch in each enrichment stage",
                                  ["stage"], registry=registry,
                                  buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self._flows = Counter("flowenricher_enriched_flows", "Flows that went through enrichment",
                              registry=registry)
        self._error_log = RateLimitedLog(log, 10.0)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def enrich(self, batch: FlowBatch) -> None:
        if not self.stages or not batch.n:
            return
        addrs = AddressSet.of(batch)
        for i, stage in enumerate(self.stages):
            started = time.perf_counter()
            try:
                stage.enrich(batch, addrs)
            except Exception as err:  # a stage bug must not lose the batch
                self._errors.labels(stage.name).inc()
                self._error_log.exception("enrichment stage %s failed on a batch of %d flows: %s",
                                          stage.name, batch.n, err)
            self._seconds.labels(stage.name).observe(time.perf_counter() - started)
            if i == self._name_after and self._as_name is not None:
                self._name_ases(batch, addrs)
        self._flows.inc(batch.n)

    def _name_ases(self, batch: FlowBatch, addrs: AddressSet) -> None:
        """Each AS name column from the AS number column beside it, one name lookup per
        distinct AS.  A stage sets an AS number per address, so the distinct numbers are
        usually found among the batch's few thousand addresses rather than by sorting every
        flow; numbers that differ between flows of one address (an exporter's) take the
        per-flow way."""
        assert self._as_name is not None
        for (column, target), index in zip(AS_NAME_COLUMNS, (addrs.src, addrs.dst, addrs.src, addrs.dst), strict=True):
            if column not in batch:
                continue
            numbers = np.asarray(batch[column])
            per_addr = np.zeros(len(addrs), numbers.dtype)
            per_addr[index] = numbers  # the value of any one flow holding the address
            if np.array_equal(per_addr[index], numbers):
                uniq, inverse = np.unique(per_addr, return_inverse=True)
                codes = inverse.ravel()[index]
            else:
                uniq, inverse = np.unique(numbers, return_inverse=True)
                codes = inverse.ravel()
            names = [self._as_name(int(a)) if a else "" for a in uniq.tolist()]
            batch[target] = spread_strings(names, codes.astype(np.intp))

    def close(self) -> None:
        for stage in reversed(self.stages):
            try:
                stage.close()
            except Exception:
                log.exception("closing enrichment stage %s", stage.name)
