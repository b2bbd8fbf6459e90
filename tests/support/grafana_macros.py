"""What Grafana and its ClickHouse plugin do to a panel's SQL before ClickHouse sees it.

Grafana cannot run on this machine, so the dashboard tests turn each query into the
statement the plugin would send and run that on chDB.  Two stages, in Grafana's order:

1. The browser (the plugin's ``applyTemplateVariables``, grafana-clickhouse-datasource
   v4, ``src/data/CHDatasource.ts``): ``$__conditionalAll(condition, $var)`` becomes
   ``1=1`` when the variable is set to "All" (or empty), then Grafana's template service
   replaces ``$var``, ``${var}``, ``${var:format}`` and ``[[var]]``.  The plugin's own
   formatter quotes multi-value variables as ``'a','b'`` and leaves a single value bare.
   "All" without an ``allValue`` stands for every option the variable offers.
2. The plugin's backend (``pkg/macros/macros.go``, the same v4 plugin): the time macros,
   with the dashboard's range in UTC seconds and the panel's interval:

   ========================  ====================================================
   ``$__timeFilter(c)``      ``c >= toDateTime(from) AND c <= toDateTime(to)``
   ``$__timeFilter_ms(c)``   the same with ``fromUnixTimestamp64Milli(ms)``
   ``$__dateFilter(c)``      ``c >= toDate('YYYY-MM-DD') AND c <= toDate(...)``
   ``$__dateTimeFilter(d, t)`` / ``$__dt``  both of the above, ANDed
   ``$__fromTime``           ``toDateTime(from)`` (``$__toTime`` likewise)
   ``$__fromTime_ms``        ``fromUnixTimestamp64Milli(from_ms)`` (``_ms`` likewise)
   ``$__timeInterval(c)``    ``toStartOfInterval(toDateTime(c), INTERVAL n second)``
   ``$__timeInterval_ms(c)`` ``toStartOfInterval(toDateTime64(c, 3), INTERVAL n millisecond)``
   ``$__interval_s``         ``n``: the interval in whole seconds, at least 1
   ========================  ====================================================

Older 4.x releases write ``toDateTime(intDiv(ms, 1000))`` and ``toStartOfInterval(c, ...)``
without the ``toDateTime`` around the column: the same values for the DateTime and
DateTime64 columns these dashboards use.

The interval is Grafana's: the range divided by the panel's data points, rounded to a
"nice" step (``roundInterval`` in ``@grafana/data``), never below the panel's
``interval`` (its minimum).  Anything still starting with ``$`` afterwards is an
unknown macro or variable and raises, so a typo fails the test instead of reaching SQL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

ALL = "$__all"
"""The value Grafana stores when a variable is set to "All"."""

# Grafana's ladder of "nice" intervals (milliseconds): below the first bound, the value.
_NICE_MS: tuple[tuple[int, int], ...] = (
    (10, 1), (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000),
    (3500, 2000), (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000),
    (90000, 60000), (210000, 120000), (450000, 300000), (750000, 600000), (1050000, 900000),
    (1500000, 1200000), (2700000, 1800000), (5400000, 3600000), (9000000, 7200000),
    (16200000, 10800000), (27000000, 21600000), (86400000, 43200000), (604800000, 86400000),
    (1814400000, 604800000), (3628800000, 2592000000),
)
_YEAR_MS = 31536000000
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


class TemplateError(ValueError):
    """A query that Grafana or the plugin would not turn into SQL (names what and where)."""


@dataclass(frozen=True)
class TimeRange:
    """The dashboard's time range, UTC, in milliseconds as Grafana holds it."""

    from_ms: int
    to_ms: int

    @classmethod
    def last(cls, seconds: int, now_s: int) -> TimeRange:
        """``now-<seconds>`` to ``now``."""
        return cls((now_s - seconds) * 1000, now_s * 1000)

    @property
    def seconds(self) -> float:
        return (self.to_ms - self.from_ms) / 1000


def round_interval_ms(interval_ms: float) -> int:
    for bound, nice in _NICE_MS:
        if interval_ms < bound:
            return nice
    return _YEAR_MS


def parse_duration_s(text: str) -> float:
    """A Grafana interval such as ``1m``, ``30s`` or ``>1m`` (the ``>`` is Grafana's
    "at least" prefix for a panel's minimum interval) in seconds."""
    m = re.fullmatch(r">?\s*(\d+)\s*(ms|s|m|h|d|w|y)?", text.strip())
    if m is None:
        raise TemplateError(f"interval {text!r}: expected a number and a unit (ms, s, m, h, d, w, y)")
    return int(m.group(1)) * _UNIT_S[m.group(2) or "s"]


def interval_s(time_range: TimeRange, max_data_points: int = 1000, min_interval: str | None = None) -> float:
    """The panel interval Grafana computes: range / data points, rounded, at least the minimum."""
    ms = round_interval_ms((time_range.to_ms - time_range.from_ms) / max(1, max_data_points))
    if min_interval:
        ms = max(ms, int(parse_duration_s(min_interval) * 1000))
    return ms / 1000


@dataclass(frozen=True)
class Selection:
    """What one dashboard variable is set to.

    ``options`` are the values it offers (its query's answer, or a custom list);
    ``chosen`` the selected values, or ``(ALL,)`` for "All".  ``all_value`` is the
    variable's ``allValue`` when it sets one.  ``multi`` variables are always a list for
    the plugin's formatter, so even one value is quoted.
    """

    options: tuple[str, ...]
    chosen: tuple[str, ...]
    multi: bool = True
    all_value: str | None = None
    texts: Mapping[str, str] | None = None

    @property
    def is_all(self) -> bool:
        return self.chosen in ((ALL,), ("",), ())

    def values(self) -> list[str]:
        if self.chosen == (ALL,):
            if self.all_value is not None:
                return [self.all_value]
            return list(self.options)
        return list(self.chosen)


def _escape_single(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _format(name: str, selection: Selection, fmt: str | None) -> str:
    if selection.chosen == (ALL,) and selection.all_value is not None and fmt in (None, "raw"):
        return selection.all_value  # Grafana inserts a custom all value as it is
    values = selection.values()
    if fmt is None:  # the plugin's formatter
        if selection.multi or len(values) != 1:
            return "'" + "','".join(values) + "'"
        return values[0]
    if fmt == "raw":
        return ",".join(values)
    if fmt == "csv":
        return ",".join(values)
    if fmt == "singlequote":
        return ",".join(f"'{_escape_single(v)}'" for v in values)
    if fmt == "sqlstring":
        return ",".join("'" + v.replace("'", "''") + "'" for v in values)
    if fmt == "text":
        texts = selection.texts or {}
        return " + ".join(texts.get(v, v) for v in values)
    raise TemplateError(f"variable {name}: format {fmt!r} is not one these tests know")


_CONDITIONAL_ALL = "$__conditionalAll("


def _macro_args(sql: str, open_paren: int, where: str) -> tuple[list[str], int]:
    """Arguments of the call whose '(' is at `open_paren` (split on top-level commas)
    and the index after its ')'."""
    depth = 0
    args: list[str] = []
    start = open_paren + 1
    quote = False
    for i in range(open_paren, len(sql)):
        ch = sql[i]
        if ch == "'" and sql[i - 1] != "\\":
            quote = not quote
        if quote:
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(sql[start:i])
                return args, i + 1
        elif ch == "," and depth == 1:
            args.append(sql[start:i])
            start = i + 1
    raise TemplateError(f"{where}: unbalanced parentheses after {sql[max(0, open_paren - 20):open_paren + 1]!r}")


def conditional_all(sql: str, variables: Mapping[str, Selection], where: str = "query") -> str:
    """The plugin's ``$__conditionalAll(condition, $var)``: the condition, or 1=1 for "All"."""
    while (at := sql.rfind(_CONDITIONAL_ALL)) != -1:
        args, end = _macro_args(sql, at + len(_CONDITIONAL_ALL) - 1, where)
        if len(args) != 2:
            raise TemplateError(f"{where}: $__conditionalAll takes 2 arguments, got {len(args)}")
        m = re.fullmatch(r"\s*\$\{?(\w+)\}?\s*", args[1])
        if m is None or m.group(1) not in variables:
            raise TemplateError(f"{where}: $__conditionalAll names no dashboard variable: {args[1]!r}")
        phrase = "1=1" if variables[m.group(1)].is_all else args[0]
        sql = sql[:at] + phrase + sql[end:]
    return sql


_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)(?::(\w+))?\]\]|\$(\w+)")


def interpolate(sql: str, variables: Mapping[str, Selection], where: str = "query") -> str:
    """Grafana's template service: every known variable replaced, others left alone."""

    def replace(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3) or m.group(5)
        fmt = m.group(2) or m.group(4)
        if name not in variables:
            if m.group(1) or m.group(3):
                raise TemplateError(f"{where}: unknown variable {m.group(0)}")
            return m.group(0)  # $__timeFilter and the like: the backend's macros
        return _format(name, variables[name], fmt)

    return _VARIABLE.sub(replace, conditional_all(sql, variables, where))


def _datetime(ms: int) -> str:
    return f"toDateTime({ms // 1000})"


def _datetime64(ms: int) -> str:
    return f"fromUnixTimestamp64Milli({ms})"


def _date(ms: int) -> str:
    return "toDate('" + datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d") + "')"


def _one(name: str, args: Sequence[str], where: str) -> str:
    if len(args) != 1 or not args[0].strip():
        raise TemplateError(f"{where}: $__{name} expects 1 argument, received {len(args)}")
    return args[0].strip()


def expand_macros(sql: str, time_range: TimeRange, interval: float, where: str = "query") -> str:
    """The plugin backend's macros (see the module docstring) for one range and interval."""
    f, t = time_range.from_ms, time_range.to_ms
    seconds = max(int(interval), 1)
    millis = max(int(interval * 1000), 1)
    simple = {
        "fromTime": _datetime(f), "toTime": _datetime(t),
        "fromTime_ms": _datetime64(f), "toTime_ms": _datetime64(t),
        "interval_s": str(seconds),
    }

    def with_args(name: str, args: list[str]) -> str:
        if name == "timeFilter":
            c = _one(name, args, where)
            return f"{c} >= {_datetime(f)} AND {c} <= {_datetime(t)}"
        if name == "timeFilter_ms":
            c = _one(name, args, where)
            return f"{c} >= {_datetime64(f)} AND {c} <= {_datetime64(t)}"
        if name == "dateFilter":
            c = _one(name, args, where)
            return f"{c} >= {_date(f)} AND {c} <= {_date(t)}"
        if name in ("dateTimeFilter", "dt"):
            if len(args) != 2:
                raise TemplateError(f"{where}: $__{name} expects 2 arguments, received {len(args)}")
            d, c = args[0].strip(), args[1].strip()
            return (f"({d} >= {_date(f)} AND {d} <= {_date(t)}) AND "
                    f"({c} >= {_datetime(f)} AND {c} <= {_datetime(t)})")
        if name == "timeInterval":
            return f"toStartOfInterval(toDateTime({_one(name, args, where)}), INTERVAL {seconds} second)"
        if name == "timeInterval_ms":
            return f"toStartOfInterval(toDateTime64({_one(name, args, where)}, 3), INTERVAL {millis} millisecond)"
        raise TemplateError(f"{where}: unknown macro $__{name}")

    out: list[str] = []
    pos = 0
    for m in re.finditer(r"\$__(\w+)", sql):
        if m.start() < pos:
            continue
        out.append(sql[pos:m.start()])
        name = m.group(1)
        if name in simple:
            out.append(simple[name])
            pos = m.end()
        elif m.end() < len(sql) and sql[m.end()] == "(":
            args, pos = _macro_args(sql, m.end(), where)
            out.append(with_args(name, args))
        else:
            raise TemplateError(f"{where}: unknown macro $__{name}")
    out.append(sql[pos:])
    return "".join(out)


def render(sql: str, time_range: TimeRange, interval: float, variables: Mapping[str, Selection],
           where: str = "query") -> str:
    """The SQL the plugin sends for `sql`: variables first (browser), then macros (backend)."""
    text = expand_macros(interpolate(sql, variables, where), time_range, interval, where)
    left = re.search(r"\$\{?\w+|\[\[\w+", text)
    if left:
        raise TemplateError(f"{where}: {left.group(0)} is neither a macro nor a dashboard variable")
    return text
