"""common/sql.py against the real engine: what a literal says is what ClickHouse (chDB) reads.

Strings are compared as bytes (``hex``), so an escape that ClickHouse reads differently
from how it was meant (a control byte, a backslash, NUL, a byte above 0x7F, a character
outside the BMP) shows as a different hex string, not as two texts that print alike.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.flowenricher.common import sql
from appliance.flowenricher.storage.embedded import EmbeddedStore
from appliance.flowenricher.storage.settings import StoreSettings


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStore]:
    s = EmbeddedStore.open(StoreSettings(path=str(tmp_path_factory.mktemp("sql") / "data")))
    try:
        yield s
    finally:
        s.close()


def _one(store: EmbeddedStore, expression: str) -> str:
    return store.query(f"SELECT {expression}", "TSVRaw").decode().rstrip("\n")


def _hexes(store: EmbeddedStore, literals: list[str]) -> list[str]:
    """hex() of each literal, read in one query (one line each)."""
    out = store.query("SELECT arrayJoin([" + ", ".join(f"hex({x})" for x in literals) + "])", "TSVRaw")
    return out.decode().splitlines()


def test_every_byte_alone_and_together(store: EmbeddedStore) -> None:
    every = bytes(range(256))
    literals = [sql.string(bytes([b])) for b in range(256)] + [sql.string(every)]
    assert _hexes(store, literals) == [f"{b:02X}" for b in range(256)] + [every.hex().upper()]


def test_every_code_point_below_256_as_text(store: EmbeddedStore) -> None:
    """chr(0)..chr(255) as str: stored as their UTF-8, including NUL and the C1 controls."""
    texts = [chr(c) for c in range(256)] + ["".join(chr(c) for c in range(256))]
    assert _hexes(store, [sql.string(t) for t in texts]) == [t.encode().hex().upper() for t in texts]


def test_no_control_byte_reaches_the_statement_raw() -> None:
    """A statement is logged and passed on as text: no raw NUL, newline or escape in it."""
    assert "\0" not in sql.string("a\0b") and "\0" not in sql.string(b"\0")
    assert all(ord(c) >= 0x20 and c != "\x7f" for c in sql.string("".join(map(chr, range(0x80)))))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(), min_size=1, max_size=20))
def test_random_text_round_trips(store: EmbeddedStore, texts: list[str]) -> None:
    assert _hexes(store, [sql.string(t) for t in texts]) == [t.encode().hex().upper() for t in texts]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64))
def test_surrogateescape_text_is_stored_as_its_bytes(store: EmbeddedStore, raw: bytes) -> None:
    """A name decoded with surrogateescape (os.fsdecode) is stored as the bytes it was."""
    text = raw.decode("utf-8", "surrogateescape")
    assert _hexes(store, [sql.string(text)]) == [raw.hex().upper()]
    assert text == os.fsdecode(raw) or os.fsencode(text) == raw


def test_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValueError, match="lone surrogate at 1"):
        sql.string("a\ud800")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(allow_nan=False), min_size=1, max_size=20))
def test_floats_keep_every_bit(store: EmbeddedStore, values: list[float]) -> None:
    literals = [f"toFloat64({sql.number(v)})" for v in values]  # hex() of a float: its bytes in memory
    assert _hexes(store, literals) == [struct.pack("<d", v).hex().upper() for v in values]


def test_nan_and_infinities(store: EmbeddedStore) -> None:
    assert [sql.number(v) for v in (math.nan, math.inf, -math.inf)] == ["nan", "inf", "-inf"]
    assert _one(store, f"isNaN({sql.number(math.nan)}), {sql.number(math.inf)} > 1e308, "
                       f"{sql.number(-math.inf)} < -1e308") == "1\t1\t1"


@pytest.mark.parametrize("value", [0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 2**127, -(2**127),
                                   2**128 - 1, 2**255, -(2**255), 2**256 - 1])
def test_integers_exactly(store: EmbeddedStore, value: int) -> None:
    assert _one(store, f"toString({sql.number(value)})") == str(value)


def test_an_integer_no_type_holds_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        sql.number(2**256)


def test_values_of_each_kind(store: EmbeddedStore) -> None:
    assert sql.string("") == "''"
    assert _one(store, f"{sql.literal(None)} IS NULL, {sql.literal(True)}, {sql.literal(False)}") == "1\ttrue\tfalse"
    nullable, texts, empty = sql.literal([1, None, 3]), sql.literal(["a'", "\\"]), sql.literal([])
    assert _one(store, f"toTypeName({nullable}), hex(arrayStringConcat({texts}, '|')), length({empty})") == (
        "Array(Nullable(UInt8))\t" + b"a'|\\".hex().upper() + "\t0")
    key, mapping, raw = sql.string("k'"), sql.literal({"k'": 1.5}), sql.literal(b"\xff\x00")
    assert _one(store, f"{mapping}[{key}], length({sql.literal({})}), {raw} = unhex('FF00')") == "1.5\t0\t1"
    with pytest.raises(TypeError, match="no SQL literal for a object"):
        sql.literal(object())


def test_datetimes_are_instants(store: EmbeddedStore) -> None:
    athens = timezone(timedelta(hours=2))
    moment = datetime(2026, 3, 29, 3, 30, 15, 123456, tzinfo=athens)
    micros = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert _one(store, f"toUnixTimestamp64Micro({sql.literal(moment)})") == str(micros)
    assert sql.unix_seconds(moment) == str(micros // 1_000_000)
    assert sql.unix_seconds(moment, 3) == f"{micros // 1_000_000}.{micros % 1_000_000 // 1000:03d}"
    assert sql.unix_seconds(1_700_000_000.5, 3) == "1700000000.500"
    with pytest.raises(ValueError, match="no time zone"):
        sql.literal(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="before 1970"):
        sql.unix_seconds(datetime(1969, 12, 31, tzinfo=UTC))


def test_numpy_scalars_are_numbers() -> None:
    assert sql.literal(np.uint64(2**64 - 1)) == str(2**64 - 1)
    assert sql.literal(np.float32(1.5)) == "1.5"
