"""The one definition of the stored address form (common/addresses.py) and of
rate-limited logging (common/ratelimit.py).

Addresses: every helper is checked against :mod:`ipaddress` on generated IPv4, IPv6,
IPv4-mapped and IPv4-compatible addresses and on the spellings of a mapped address a
socket, an operator or another tool may produce; the SQL display expression runs on the
real ClickHouse engine (chDB) and must show each stored address as the Python side
reads it back.  Rate limiting runs on a fake clock, and from many threads at once; the
decoder's drop log shows that a caller's keys (exporter, reason) reach it.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import chdb
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from appliance.api.queries import address_literal
from appliance.flowenricher.columns import ALIASES
from appliance.flowenricher.common.addresses import (
    V4_MAPPED,
    display_sql,
    plain_address,
    plain_text,
    row_text,
    rows_are_v4,
    stored_bytes,
    stored_int,
    stored_text,
    unmapped_network,
    v4_rows,
)
from appliance.flowenricher.common.ratelimit import RateLimitedLog, Throttle
from appliance.flowenricher.decode.stats import DecodeStats

_chdb_query: Callable[[str, str], Any] = chdb.query  # untyped in chDB

V4 = st.ip_addresses(v=4).map(lambda a: ipaddress.IPv4Address(int(a)))
V6 = st.ip_addresses(v=6).map(lambda a: ipaddress.IPv6Address(int(a)))
MAPPED = V4.map(lambda a: ipaddress.IPv6Address((0xFFFF << 32) | int(a)))
COMPATIBLE = st.integers(0, 2**32 - 1).map(ipaddress.IPv6Address)  # ::/96, deprecated IPv4-compatible
NEAR_MAPPED = st.integers(0, 2**48 - 1).map(ipaddress.IPv6Address)  # ::/80: the mapped range and its neighbours
ANY = st.one_of(V4, V6, MAPPED, COMPATIBLE, NEAR_MAPPED)


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _expected_plain(address: Address) -> Address:
    """What ipaddress says an address stands for (an IPv4-mapped one: its IPv4 address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _spellings(v4: ipaddress.IPv4Address) -> list[str]:
    """Ways to write the IPv4-mapped form of `v4`."""
    hi, lo = int(v4) >> 16, int(v4) & 0xFFFF
    return [
        f"::ffff:{v4}", f"::FFFF:{v4}", f"0:0:0:0:0:ffff:{v4}", f"0000:0000:0000:0000:0000:FFFF:{v4}",
        f"::ffff:{hi:x}:{lo:x}", f"0:0:0:0:0:FFFF:{hi:04X}:{lo:04X}", f"::0:ffff:{v4}",
    ]


NOT_ADDRESS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "::ffff:1.2.3", "::ffff:300.1.2.3", "::ffff:1.2.3.4.5", "::fffff:1.2.3.4",
                     "1.2.3.4:80", "[::1]", "::ffff:1.2.3.4/96", "gggg::1", "1:2:3:4:5:6:7:8:9", "localhost"]),
).filter(lambda text: not _is_address(text))


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip())
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------ writing the stored form


@given(ANY)
def test_stored_bytes_text_and_int_are_the_mapped_form(address: Address) -> None:
    plain = _expected_plain(address)
    raw = stored_bytes(address)
    assert len(raw) == 16
    if plain.version == 4:
        assert raw == V4_MAPPED + plain.packed
        assert ipaddress.IPv6Address(raw).ipv4_mapped == plain
        assert stored_text(address) == f"::ffff:{plain}"
    else:
        assert raw == plain.packed
        assert stored_text(address) == str(plain)
    assert ipaddress.IPv6Address(stored_text(address)).packed == raw
    assert stored_int(address) == int(ipaddress.IPv6Address(raw))
    # Text in, same answer (surrounding blanks allowed, as from a form or a config file).
    assert stored_bytes(f" {address} ") == raw
    assert stored_text(str(address)) == stored_text(address)


@given(V4)
def test_every_spelling_of_a_mapped_address_is_stored_alike(v4: ipaddress.IPv4Address) -> None:
    for text in _spellings(v4):
        assert stored_bytes(text) == V4_MAPPED + v4.packed, text
        assert stored_text(text) == f"::ffff:{v4}", text
        assert plain_address(text) == v4, text


@given(NOT_ADDRESS)
def test_text_that_is_no_address_is_refused_by_the_writers(text: str) -> None:
    for write in (stored_bytes, stored_text, stored_int, plain_address):
        with pytest.raises(ValueError):
            write(text)


# ------------------------------------------------------------------ reading it back


@given(ANY)
def test_plain_address_reads_the_stored_form_back(address: Address) -> None:
    plain = _expected_plain(address)
    assert plain_address(address) == plain
    assert plain_address(str(address)) == plain
    assert plain_address(stored_bytes(address)) == plain
    assert plain_address(stored_text(address)) == plain
    assert row_text(stored_bytes(address)) == str(plain)
    assert row_text(np.frombuffer(stored_bytes(address), np.uint8)) == str(plain)


@given(V4)
def test_plain_text_unmaps_every_spelling(v4: ipaddress.IPv4Address) -> None:
    for text in _spellings(v4):
        assert plain_text(text) == str(v4), text
    assert plain_text(str(v4)) == str(v4)


@given(st.one_of(V6, COMPATIBLE, NEAR_MAPPED))
def test_plain_text_leaves_other_addresses_as_written(v6: ipaddress.IPv6Address) -> None:
    assume(v6.ipv4_mapped is None)
    for text in (str(v6), v6.exploded, v6.exploded.upper()):
        assert plain_text(text) == text


@given(NOT_ADDRESS)
def test_plain_text_leaves_text_that_is_no_address_unchanged(text: str) -> None:
    assert plain_text(text) == text


def _address_like_text() -> st.SearchStrategy[str]:
    """Text made of what addresses are made of, near the mapped form: mostly not
    addresses, some of them mapped ones (with leading zeros, short groups, bad octets)."""
    octet = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["01", "00", "007", "", "1e2"]))
    dotted = st.lists(octet, min_size=3, max_size=5).map(".".join)
    head = st.sampled_from(["::ffff:", "::FFFF:", "0:0:0:0:0:ffff:", "::0:ffff:", "::fffe:", "::", ":ffff:", "ffff::",
                            "::ffff::", "0::ffff:", ""])
    hexy = st.text(alphabet="0123456789abcdefABCDEF:.", max_size=30)
    return st.one_of(st.tuples(head, dotted).map("".join), st.tuples(head, hexy).map("".join), hexy)


@given(_address_like_text())
def test_plain_text_agrees_with_ipaddress_on_address_like_text(text: str) -> None:
    try:
        parsed = ipaddress.ip_address(text)
    except ValueError:
        assert plain_text(text) == text
        return
    mapped = parsed.ipv4_mapped if isinstance(parsed, ipaddress.IPv6Address) else None
    assert plain_text(text) == (text if mapped is None else str(mapped))


@given(st.lists(ANY, max_size=40))
def test_rows_of_many_addresses(addresses: list[Address]) -> None:
    rows = np.frombuffer(b"".join(stored_bytes(a) for a in addresses), np.uint8).reshape(-1, 16)
    expected = [_expected_plain(a) for a in addresses]
    assert rows_are_v4(rows).tolist() == [p.version == 4 for p in expected]
    assert [row_text(r) for r in rows] == [str(p) for p in expected]
    v4 = [int(p) for p in expected if p.version == 4]
    built = v4_rows(np.array(v4, dtype=np.uint32))
    assert built.shape == (len(v4), 16) and built.dtype == np.uint8
    assert built.tobytes() == b"".join(V4_MAPPED + ipaddress.IPv4Address(v).packed for v in v4)


@given(V4, st.integers(0, 32))
def test_a_mapped_network_unmaps_to_its_ipv4_network(v4: ipaddress.IPv4Address, length: int) -> None:
    net4 = ipaddress.IPv4Network((v4, length), strict=False)
    mapped = ipaddress.IPv6Network((stored_int(net4.network_address), length + 96))
    assert unmapped_network(mapped) == net4
    assert ipaddress.IPv6Address(stored_int(net4.broadcast_address)) == mapped.broadcast_address
    assert unmapped_network(net4) is None


@given(V6, st.integers(0, 128))
def test_other_networks_do_not_unmap(v6: ipaddress.IPv6Address, length: int) -> None:
    net = ipaddress.IPv6Network((v6, length), strict=False)
    inside_mapped = length >= 96 and net.network_address.ipv4_mapped is not None
    assert (unmapped_network(net) is not None) == inside_mapped


def test_a_network_wider_than_the_mapped_range_does_not_unmap() -> None:
    assert unmapped_network(ipaddress.IPv6Network("::ffff:0:0/95", strict=False)) is None
    assert unmapped_network(ipaddress.IPv6Network("::ffff:0:0/96")) == ipaddress.IPv4Network("0.0.0.0/0")


# ------------------------------------------------------------------ the SQL display expression


def _clickhouse_row(expressions: list[str]) -> list[str]:
    """One SELECT of `expressions` on chDB, the values as text."""
    result = _chdb_query("SELECT " + ", ".join(expressions), "CSV")
    rows = list(csv.reader(io.StringIO(result.data())))
    assert len(rows) == 1, rows
    return rows[0]


def _is_compatible(address: Address) -> bool:
    return address.version == 6 and int(address) < 2**32


@settings(max_examples=40, deadline=None)
@given(st.lists(ANY, min_size=1, max_size=60))
def test_clickhouse_shows_a_stored_address_as_python_reads_it(
        addresses: list[Address]) -> None:
    shown = _clickhouse_row([display_sql(f"toIPv6('{stored_text(a)}')") for a in addresses])
    for address, text in zip(addresses, shown, strict=True):
        plain = plain_address(address)
        assert ipaddress.ip_address(text) == plain, (address, text)
        if not _is_compatible(plain):
            # ClickHouse writes ::a.b.c.d with a dotted tail where Python writes hex groups.
            assert text == str(plain), (address, text)


@settings(max_examples=20, deadline=None)
@given(st.lists(V4, min_size=1, max_size=10))
def test_the_api_literal_of_any_spelling_is_the_stored_address(v4s: list[ipaddress.IPv4Address]) -> None:
    texts = [text for v4 in v4s for text in [str(v4), *_spellings(v4)]]
    shown = _clickhouse_row([display_sql(address_literal(text)) for text in texts])
    assert shown == [plain_text(text) for text in texts]
    assert set(shown) == {str(v4) for v4 in v4s}


def test_the_host_aliases_of_the_flow_columns_are_the_display_expression() -> None:
    assert ALIASES["src_host"] == ("String", display_sql("src_addr"))
    assert ALIASES["dst_host"] == ("String", display_sql("dst_addr"))
    assert _clickhouse_row([display_sql("toIPv6('::ffff:192.0.2.1')"), display_sql("toIPv6('2001:db8::1')")]) == [
        "192.0.2.1", "2001:db8::1"]


# ------------------------------------------------------------------ rate-limited logging


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logger(caplog: pytest.LogCaptureFixture) -> Iterator[logging.Logger]:
    log = logging.getLogger("test.common.ratelimit")
    with caplog.at_level(logging.DEBUG, logger=log.name):
        yield log


def _messages(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "test.common.ratelimit"]


def test_repeats_within_the_interval_are_counted_and_told_with_the_next(
        logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limited = RateLimitedLog(logger, 60.0, clock=clock)
    assert limited.warning("store away: %s", "refused") is True
    for step in range(5):
        clock.now += 11.0
        assert limited.warning("store away: %s", f"try {step}") is False
    assert _messages(caplog) == [(logging.WARNING, "store away: refused")]
    clock.now = 1000.0 + 60.0  # the interval is over exactly now
    assert limited.warning("store away: %s", "timeout") is True
    clock.now += 60.0
    assert limited.error("store away: %s", "again") is True
    assert _messages(caplog) == [
        (logging.WARNING, "store away: refused"),
        (logging.WARNING, "store away: timeout (5 similar messages suppressed)"),
        (logging.ERROR, "store away: again"),
    ]


def test_keys_are_independent(logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limited = RateLimitedLog(logger, 10.0, clock=clock)
    assert limited.warning("drop %s", "a", key=("192.0.2.1", "hold_overflow"))
    assert limited.warning("drop %s", "b", key=("192.0.2.1", "template_missing"))
    assert limited.warning("drop %s", "c", key=("192.0.2.2", "hold_overflow"))
    assert not limited.warning("drop %s", "d", key=("192.0.2.1", "hold_overflow"))
    assert not limited.warning("drop %s", "e", key=("192.0.2.1", "hold_overflow"))
    assert not limited.warning("drop %s", "f", key=("192.0.2.2", "hold_overflow"))
    clock.now += 10.0
    assert limited.warning("drop %s", "g", key=("192.0.2.1", "hold_overflow"))
    assert limited.warning("drop %s", "h", key=("192.0.2.2", "hold_overflow"))
    assert limited.warning("drop %s", "i", key=("192.0.2.1", "template_missing"))
    assert [m for _, m in _messages(caplog)] == [
        "drop a", "drop b", "drop c",
        "drop g (2 similar messages suppressed)", "drop h (1 similar messages suppressed)", "drop i"]


def test_a_zero_interval_logs_everything(logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(logger, 0.0, clock=FakeClock())
    assert all(limited.warning("debug %d", i) for i in range(5))
    assert [m for _, m in _messages(caplog)] == [f"debug {i}" for i in range(5)]


def test_the_throttle_counts_resets_and_takes_a_given_time() -> None:
    clock = FakeClock()
    throttle = Throttle(60.0, clock=clock)
    assert throttle.allow("pool") == 0
    assert throttle.allow("pool") is None
    assert throttle.allow("pool", now=clock.now + 59.9) is None
    assert throttle.allow("pool", now=clock.now + 60.0) == 2
    throttle.reset("pool")
    assert throttle.allow("pool", now=clock.now + 61.0) == 0
    with pytest.raises(ValueError):
        Throttle(-1.0)
    with pytest.raises(ValueError):
        Throttle(1.0, max_keys=0)


def test_keys_are_bounded() -> None:
    clock = FakeClock()
    throttle = Throttle(10.0, clock=clock, max_keys=3)
    for key in "abc":
        assert throttle.allow(key) == 0
    assert throttle.allow("a") is None
    clock.now += 5.0
    assert throttle.allow("d") == 0  # none is over: all forgotten, so "a" may speak again
    assert throttle.allow("a") == 0
    assert throttle.allow("b") == 0
    assert throttle.allow("b") is None
    clock.now += 10.0  # d, a and b are over: forgotten to make room for e (c went before)
    assert throttle.allow("e") == 0
    assert throttle.allow("e") is None
    assert throttle.allow("c") == 0
    assert len(throttle._next_at) <= 3 and len(throttle._suppressed) <= 3


def test_many_threads_one_message_and_an_exact_count(logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limited = RateLimitedLog(logger, 60.0, clock=clock)
    threads, calls, keys = 8, 2000, 4
    told: list[bool] = []
    start = threading.Barrier(threads)
    lock = threading.Lock()

    def hammer(worker: int) -> None:
        start.wait()
        mine = [limited.warning("failed in %d", worker, key=i % keys) for i in range(calls)]
        with lock:
            told.extend(mine)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
    try:
        pool = [threading.Thread(target=hammer, args=(w,)) for w in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert told.count(True) == keys
    assert len(_messages(caplog)) == keys
    clock.now += 60.0
    for key in range(keys):
        assert limited.warning("later", key=key)
    per_key = threads * calls // keys - 1
    assert [m for _, m in _messages(caplog)[keys:]] == [f"later ({per_key} similar messages suppressed)"] * keys


def test_an_exception_is_logged_with_its_traceback_once(logger: logging.Logger,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(logger, 10.0, clock=FakeClock())
    for _ in range(3):
        try:
            raise RuntimeError("stage bug")
        except RuntimeError as err:
            limited.exception("stage failed: %s", err)
    records = [r for r in caplog.records if r.name == logger.name]
    assert [r.getMessage() for r in records] == ["stage failed: stage bug"]
    assert records[0].levelno == logging.ERROR
    assert records[0].exc_info is not None and records[0].exc_info[0] is RuntimeError


def test_decoder_drops_are_told_once_per_exporter_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    stats = DecodeStats(log_interval_s=3600.0)
    with caplog.at_level(logging.WARNING, logger="appliance.flowenricher.decode.stats"):
        for _ in range(3):
            stats.drop("192.0.2.1", "template_missing")
            stats.drop("192.0.2.1", "hold_overflow")
            stats.drop("192.0.2.2", "template_missing")
    told = [r.getMessage() for r in caplog.records if r.name == "appliance.flowenricher.decode.stats"]
    assert told == ["exporter 192.0.2.1: dropped (template_missing); 1 so far",
                    "exporter 192.0.2.1: dropped (hold_overflow); 1 so far",
                    "exporter 192.0.2.2: dropped (template_missing); 1 so far"]
    assert stats.dropped["192.0.2.1"]["template_missing"] == 3
    debug = DecodeStats(log_interval_s=0.0)  # collectors.debug: every drop is told
    with caplog.at_level(logging.WARNING, logger="appliance.flowenricher.decode.stats"):
        caplog.clear()
        for _ in range(3):
            debug.drop("192.0.2.1", "template_missing")
    assert len([r for r in caplog.records if r.name == "appliance.flowenricher.decode.stats"]) == 3
