"""Which flow columns may label the Prometheus traffic counters (``metrics.traffic``).

Defined here, in the core package, so the config's validation (``flowenricher
validate``, the API, ``run``) and the counters themselves (traffic_metrics.py)
apply the same rule with the same words.
"""

from __future__ import annotations

from collections.abc import Sequence

from .columns import BY_NAME, Kind

# Measures and times: a label per value would be one series per flow.
NOT_LABELS = frozenset({"bytes", "packets", "timestamp_start", "timestamp_end", "received_at"})

LabelProblem = tuple[tuple[str | int, ...], str]


def label_problems(labels: Sequence[object], max_series: object) -> list[LabelProblem]:
    """What is wrong with `labels` and `max_series`, each with its path under
    ``metrics.traffic`` (``("labels", 1)``).  Values of the wrong type are left to the
    schema, which reports them on its own."""
    problems: list[LabelProblem] = []
    cap = max_series if isinstance(max_series, int) and not isinstance(max_series, bool) else None
    if cap is not None and cap < 1:
        problems.append((("max_series",), f"must be at least 1, got {cap}"))
    names = [name for name in labels if isinstance(name, str)]
    for index, name in enumerate(labels):
        if not isinstance(name, str):
            continue
        column = BY_NAME.get(name)
        if column is None or name in NOT_LABELS or column.kind is Kind.UINT_LIST:
            problems.append((("labels", index), f"{name!r} is not a flow column that can be a label"))
        elif column.kind is Kind.ADDR:
            problems.append((("labels", index), f"{name!r} is an address: one series per address is what the "
                                                "cardinality cap exists to prevent (ask the API's top N instead)"))
        elif list(labels).index(name) != index:
            problems.append((("labels", index), f"{name!r} is listed twice"))
    if names and cap is not None and cap >= 1 and (cap + 1) ** len(names) >= 2**62:
        # One integer per flow holds the label combination (traffic_metrics.py): it must fit in int64.
        problems.append((("labels",), f"{len(names)} labels with max_series {cap} are too many "
                                      "combinations to count"))
    return problems
