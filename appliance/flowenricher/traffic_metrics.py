"""Traffic counters for Prometheus: bytes, packets and flows by operator-chosen labels.

For operators who graph in Prometheus rather than ClickHouse (as rkosegi's
netflow-collector offers): ``flowenricher_traffic_{bytes,packets,flows}_total`` with one
label per configured flow column, e.g. source country, destination AS organisation,
protocol, input interface, direction.

A scan or a spoofed flood must not explode the series count, so there are two caps.
Each label keeps at most `max_series` distinct values; later new values read "other".
The whole set keeps at most `max_series` series; flows of a new label combination
beyond it go to the series whose labels are all "other".  Flows affected by either cap
are counted in ``flowenricher_traffic_capped_flows_total``.  Addresses cannot be
labels: one series per address is what the caps exist to prevent; the API's top N
answers that question.

Per batch the work is numpy: label values are mapped to small per-label codes (a
sorted lookup table for numbers, the batch's string dictionary for strings), combined
into one integer per flow, grouped with ``np.unique`` and summed with ``np.bincount``.
Python loops run over a batch's distinct strings and at scrape time only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .batch import DictColumn, FlowBatch
from .columns import DIRECTION_NAMES
from .documents import json_path
from .errors import ConfigError
from .traffic_labels import label_problems

OTHER = "other"
EMPTY = "unknown"

I64 = npt.NDArray[np.int64]


def _find(keys: I64, values: I64, query: I64) -> tuple[npt.NDArray[np.bool_], I64]:
    """For each of `query`: whether it is in the sorted `keys`, and its value where it is."""
    if not len(keys):
        return np.zeros(len(query), dtype=bool), np.zeros(len(query), dtype=np.int64)
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return keys[pos] == query, values[pos]


def _merge(keys: I64, values: I64, new_keys: I64, first_value: int) -> tuple[I64, I64]:
    """`keys` (sorted) and their values with `new_keys` added, numbered from `first_value`."""
    merged = np.concatenate([keys, new_keys])
    numbered = np.concatenate([values, np.arange(first_value, first_value + len(new_keys), dtype=np.int64)])
    order = np.argsort(merged, kind="stable")
    return merged[order], numbered[order]


class _LabelCodes:
    """Value -> small code for one label (code 0 is "other"), at most `cap` values."""

    def __init__(self, column: str, cap: int) -> None:
        self.column = column
        self.cap = cap
        self.names: list[str] = [OTHER]
        self._by_text: dict[str, int] = {}
        self._numbers = np.zeros(0, dtype=np.int64)  # sorted known numbers
        self._number_codes = np.zeros(0, dtype=np.int64)
        self.capped = False

    def codes(self, data: Any) -> I64:
        """One code per flow for this label's column `data`."""
        if isinstance(data, DictColumn):
            used, inverse = np.unique(data.codes, return_inverse=True)
            mapped = np.array([self._code_of_text(data.values[int(c)]) for c in used], dtype=np.int64)
            return mapped[inverse.ravel()]
        values = np.asarray(data).astype(np.int64)
        uniq, inverse = np.unique(values, return_inverse=True)
        return self._codes_of_numbers(uniq)[inverse.ravel()]

    def _code_of_text(self, text: str) -> int:
        code = self._by_text.get(text)
        if code is None:
            if len(self.names) > self.cap:
                self.capped = True
                return 0
            code = len(self.names)
            self._by_text[text] = code
            self.names.append(text or EMPTY)
        return code

    def _codes_of_numbers(self, uniq: I64) -> I64:
        hit, codes = _find(self._numbers, self._number_codes, uniq)
        fresh = uniq[~hit]
        if len(fresh):
            room = max(self.cap + 1 - len(self.names), 0)
            admitted = fresh[:room]
            self.capped |= len(fresh) > room
            start = len(self.names)
            self.names.extend(self._render(int(v)) for v in admitted)
            self._numbers, self._number_codes = _merge(self._numbers, self._number_codes, admitted, start)
            hit, codes = _find(self._numbers, self._number_codes, uniq)
        return np.where(hit, codes, 0)

    def _render(self, value: int) -> str:
        if self.column == "flow_direction" and value < len(DIRECTION_NAMES):
            return DIRECTION_NAMES[value]
        return str(value)


def check_labels(labels: Sequence[str], max_series: int) -> None:
    """Raise ConfigError naming each label that cannot be one (the rule config validation
    applies too: traffic_labels.py)."""
    problems = [f"config: {json_path(('metrics', 'traffic', *path))}: {message}"
                for path, message in label_problems(labels, max_series)]
    if problems:
        raise ConfigError(problems)


class TrafficMetrics(Collector):
    """Counts a batch's bytes, packets and flows by `labels` (flow column names).

    The service calls :meth:`observe` with every enriched batch; Prometheus reads it
    through the registry it was given.  Thread-safe.
    """

    def __init__(self, labels: Sequence[str], max_series: int = 1000, registry: CollectorRegistry | None = None,
                 prefix: str = "flowenricher_traffic") -> None:
        check_labels(labels, max_series)
        self.labels = tuple(labels)
        self.max_series = max_series
        self.prefix = prefix
        self._lock = threading.Lock()
        self._codes = [_LabelCodes(name, max_series) for name in self.labels]
        self._radix = max_series + 1
        # Series are known combined keys (sorted) and their slots; slot 0 is all-"other".
        self._keys = np.zeros(1, dtype=np.int64)
        self._slots = np.zeros(1, dtype=np.int64)
        self._slot_keys: list[int] = [0]
        self._totals = np.zeros((max_series + 1, 3), dtype=np.uint64)  # bytes, packets, flows
        self.capped_flows = 0
        if registry is not None:
            registry.register(self)

    def observe(self, batch: FlowBatch) -> None:
        n = batch.n
        if not n:
            return
        with self._lock:
            key = np.zeros(n, dtype=np.int64)
            partial = np.zeros(n, dtype=bool)
            for codes in self._codes:
                per_flow = codes.codes(batch[codes.column])
                if codes.capped:
                    partial |= per_flow == 0
                key = key * self._radix + per_flow
            uniq, inverse = np.unique(key, return_inverse=True)
            inverse = inverse.ravel()
            sums = np.stack([
                np.bincount(inverse, weights=batch["bytes"].astype(np.float64), minlength=len(uniq)),
                np.bincount(inverse, weights=batch["packets"].astype(np.float64), minlength=len(uniq)),
                np.bincount(inverse, minlength=len(uniq)).astype(np.float64),
            ], axis=1).round().astype(np.uint64)
            slots = self._slots_of(uniq)
            np.add.at(self._totals, slots, sums)
            overflowed = (slots == 0) & (uniq != 0)
            self.capped_flows += int(sums[overflowed, 2].sum()) + int(partial[~overflowed[inverse]].sum())

    def process(self, batch: FlowBatch) -> None:
        """The service's BatchConsumer entry point (service.Runtime.consumers): observe."""
        self.observe(batch)

    def _slots_of(self, uniq: I64) -> I64:
        """The series slot of each combined key, admitting new series while there is room."""
        hit, slots = _find(self._keys, self._slots, uniq)
        fresh = uniq[~hit]
        if len(fresh):
            admitted = fresh[:max(self.max_series + 1 - len(self._slot_keys), 0)]
            start = len(self._slot_keys)
            self._slot_keys.extend(int(k) for k in admitted)
            self._keys, self._slots = _merge(self._keys, self._slots, admitted, start)
            hit, slots = _find(self._keys, self._slots, uniq)
        return np.where(hit, slots, 0)

    def _label_values(self, key: int) -> list[str]:
        values = []
        for codes in reversed(self._codes):
            key, code = divmod(key, self._radix)
            values.append(codes.names[code])
        return values[::-1]

    def collect(self) -> Iterator[Any]:
        names = list(self.labels)
        with self._lock:
            rows = [(self._label_values(k), self._totals[slot].tolist()) for slot, k in enumerate(self._slot_keys)]
            capped = self.capped_flows
        families = [
            CounterMetricFamily(f"{self.prefix}_bytes", "Bytes of flows, by the configured labels", labels=names),
            CounterMetricFamily(f"{self.prefix}_packets", "Packets of flows, by the configured labels", labels=names),
            CounterMetricFamily(f"{self.prefix}_flows", "Flows, by the configured labels", labels=names),
        ]
        for values, totals in rows:
            if totals[2] == 0:
                continue  # the all-"other" series before anything overflowed
            for family, total in zip(families, totals, strict=True):
                family.add_metric(values, total)
        yield from families
        yield CounterMetricFamily(f"{self.prefix}_capped_flows",
                                  "Flows whose labels were (partly) replaced by 'other' by the cardinality caps",
                                  value=capped)
        yield GaugeMetricFamily(f"{self.prefix}_series", "Label combinations counted now",
                                value=sum(1 for _, totals in rows if totals[2]))
