"""Python values as ClickHouse SQL literals: the one place that knows how ClickHouse reads them.

Every statement the appliance builds as text (INSERT ... VALUES of the side tables, API
filters, settings) renders values through here, so one escaping rule holds everywhere:

* a string literal escapes the backslash and the quote, and writes every control byte
  (0x00-0x1F, 0x7F) as ``\\xHH``, which ClickHouse's lexer reads back as that byte.  The
  engine would read most of them raw too; escaped, a statement never carries a raw NUL,
  newline or terminal escape into anything that shows or passes it on as text (a log
  line, a C string, a terminal).  Other text stays as it is (UTF-8), so statements stay
  readable;
* ``bytes`` are a String of exactly those bytes (non-ASCII ones as ``\\xHH`` too);
* a ``str`` holding the surrogates of Python's ``surrogateescape`` (U+DC80-U+DCFF, what
  ``os.fsdecode`` makes of undecodable bytes) stands for the bytes they escape, so a
  name read from outside with that handler is stored as the bytes it was; any other
  lone surrogate has no UTF-8 form and is a ValueError;
* integers are exact (beyond 64 bits as a wide integer type, not a rounded Float64);
  floats keep every digit (``repr``); NaN and the infinities are ClickHouse's ``nan``,
  ``inf`` and ``-inf``;
* ``None`` is ``NULL``, a bool ``true``/``false``, a list or tuple an array, a mapping a
  ``map(...)``, a timezone-aware ``datetime`` a ``DateTime64(6, 'UTC')``.

Only literals are made here; identifiers (tables, columns) are never client text and are
written as they are.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

__all__ = ["array", "boolean", "literal", "map_literal", "map_values", "number", "string", "unix_seconds"]

_ESCAPES: dict[int, str] = {c: f"\\x{c:02X}" for c in (*range(0x20), 0x7F)}
_ESCAPES[ord("\\")] = "\\\\"
_ESCAPES[ord("'")] = "\\'"
_TEXT_TABLE = {c: e for c, e in _ESCAPES.items()} | {0xDC80 + b: f"\\x{0x80 + b:02X}" for b in range(0x80)}
"""str.translate table: control characters escaped, surrogateescape'd bytes written as the byte."""
_BYTE_TEXT = [_ESCAPES.get(b, chr(b)) if b < 0x80 else f"\\x{b:02X}" for b in range(256)]


def string(value: str | bytes | bytearray | memoryview) -> str:
    """`value` as a ClickHouse String literal holding exactly its text (UTF-8) or bytes.

    Raises ValueError for a lone surrogate outside surrogateescape's range (no UTF-8 form).
    """
    if isinstance(value, bytes | bytearray | memoryview):
        return "'" + "".join(_BYTE_TEXT[b] for b in bytes(value)) + "'"
    text = value.translate(_TEXT_TABLE)
    if text.isascii():
        return "'" + text + "'"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"text with a lone surrogate at {err.start} has no UTF-8 form: {value[err.start]!r}") from None
    return "'" + text + "'"


def number(value: float | numbers.Real) -> str:
    """An integer exactly; a float with every digit, NaN and the infinities as ClickHouse
    names them (numpy scalars too: they are what the flow arrays hold)."""
    if isinstance(value, float):  # the common case first: repr spells nan, inf, -inf as ClickHouse does
        return repr(value)
    if isinstance(value, bool):
        return boolean(value)
    if isinstance(value, numbers.Integral):
        return _integer(int(value))
    return repr(float(value))


_WIDE_INTEGERS = (("Int128", -(2**127), 2**127), ("UInt128", 0, 2**128), ("Int256", -(2**255), 2**255),
                  ("UInt256", 0, 2**256))


def _integer(value: int) -> str:
    """ClickHouse reads a bare integer literal beyond 64 bits as a Float64 (rounded): a
    wider one is written as text converted to the narrowest wide type that holds it."""
    if -(2**63) <= value < 2**64:
        return str(value)
    for name, low, high in _WIDE_INTEGERS:
        if low <= value < high:
            return f"to{name}('{value}')"
    raise ValueError(f"{value} does not fit any ClickHouse integer type")


def boolean(value: bool) -> str:
    return "true" if value else "false"


def unix_seconds(value: datetime | int | float, scale: int = 0) -> str:
    """A time as the number of unix seconds with `scale` decimals: what a ``DateTime``
    (scale 0) or ``DateTime64(scale)`` column reads in VALUES, whatever the store's time
    zone.  A ``datetime`` must carry its time zone (a naive one means a different instant
    on every host): ValueError otherwise."""
    if isinstance(value, datetime):
        whole, micros = divmod(_micros(value), 1_000_000)
        if scale <= 0:
            return str(whole)
        return f"{whole}.{micros:06d}"[: len(str(whole)) + 1 + min(int(scale), 6)]
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{seconds} is not a time a ClickHouse DateTime holds")
    if scale <= 0:
        return str(int(seconds))
    return f"{seconds:.{int(scale)}f}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(value: datetime) -> int:
    """Microseconds since the epoch, exactly (no float on the way); ValueError for a naive datetime."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{value.isoformat()} has no time zone; give an aware datetime")
    micros = (value - _EPOCH) // timedelta(microseconds=1)
    if micros < 0:
        raise ValueError(f"{value.isoformat()} is before 1970: no ClickHouse DateTime holds it")
    return micros


def array(values: object) -> str:
    """A list or tuple as an array literal, each item through :func:`literal`."""
    if not isinstance(values, list | tuple):
        raise TypeError(f"an array needs a list or tuple, not {type(values).__name__}")
    return "[" + ", ".join(literal(v) for v in values) + "]"


def map_literal(values: Mapping[object, object]) -> str:
    """A mapping as ``map(key, value, ...)``, keys and values through :func:`literal`;
    valid anywhere (a SELECT reads ``{...}`` as a query parameter)."""
    return "map(" + ", ".join(f"{literal(k)}, {literal(v)}" for k, v in values.items()) + ")"


def map_values(values: Mapping[object, object]) -> str:
    """A mapping as ``{key: value, ...}``: how the VALUES of an INSERT write a Map, read as
    data without evaluating an expression per row (anomaly scores insert thousands).
    Only for VALUES: elsewhere use :func:`map_literal`."""
    return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in values.items()) + "}"


def literal(value: object) -> str:
    """Any value the inserts and queries use as a literal of its own type (see module doc).

    Raises TypeError for a value with no literal form (an object is never rendered via
    ``str``, which would hide a caller's mistake inside a string).
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return boolean(value)
    if isinstance(value, numbers.Real):
        return number(value)
    if isinstance(value, str | bytes | bytearray | memoryview):
        return string(value)
    if isinstance(value, datetime):
        return f"fromUnixTimestamp64Micro(toInt64({_micros(value)}), 'UTC')"
    if isinstance(value, list | tuple):
        return array(value)
    if isinstance(value, Mapping):
        return map_literal(value)
    raise TypeError(f"no SQL literal for a {type(value).__name__}")
