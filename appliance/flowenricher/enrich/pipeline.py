"""The enrichment pipeline: runs the configured stages over each batch, in order.

Order matters and is fixed here: networks (direction) and geoip first, then bgp, whose
origin AS from a real route overrides the database's; then snmp; ptr last, so the
names it queues for ``ptr_cache`` can carry the ASN and country already found.  A
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
from .base import AddressSet, Stage, spread_strings

log = logging.getLogger(__name__)

AsName = Callable[[int], str]


class Enricher:
    """Applies `stages` to batches; `as_name` names the peer AS columns (from geoip)."""

    def __init__(self, stages: Sequence[Stage], registry: CollectorRegistry | None = None,
                 as_name: AsName | None = None) -> None:
        self.stages = list(stages)
        self._as_name = as_name
        self._errors = Counter("flowenricher_enrich_errors", "Batches a stage failed on (columns left empty)",
                               ["stage"], registry=registry)
        self._seconds = Histogram("flowenricher_enrich_seconds", "Time per batch in each enrichment stage",
                                  ["stage"], registry=registry,
                                  buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self._flows = Counter("flowenricher_enriched_flows", "Flows that went through enrichment",
                              registry=registry)
        self._last_error_log = 0.0

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def enrich(self, batch: FlowBatch) -> None:
        if not self.stages or not batch.n:
            return
        addrs = AddressSet.of(batch)
        for stage in self.stages:
            started = time.perf_counter()
            try:
                stage.enrich(batch, addrs)
            except Exception as err:  # a stage bug must not lose the batch
                self._errors.labels(stage.name).inc()
                now = time.monotonic()
                if now - self._last_error_log > 10:
                    self._last_error_log = now
                    log.exception("enrichment stage %s failed on a batch of %d flows: %s", stage.name, batch.n, err)
            self._seconds.labels(stage.name).observe(time.perf_counter() - started)
        if self._as_name is not None:
            self._name_peers(batch)
        self._flows.inc(batch.n)

    def _name_peers(self, batch: FlowBatch) -> None:
        """peer_src_as_name / peer_dst_as_name from the AS numbers the stages set."""
        assert self._as_name is not None
        for column, target in (("peer_src_as", "peer_src_as_name"), ("peer_dst_as", "peer_dst_as_name")):
            if column not in batch:
                continue
            asns = batch[column]
            uniq, inverse = np.unique(asns, return_inverse=True)
            names = [self._as_name(int(a)) if a else "" for a in uniq.tolist()]
            batch[target] = spread_strings(names, inverse.ravel().astype(np.intp))

    def close(self) -> None:
        for stage in reversed(self.stages):
            try:
                stage.close()
            except Exception:
                log.exception("closing enrichment stage %s", stage.name)
