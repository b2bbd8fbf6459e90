"""Malformed datagrams never crash a decoder: every one is decoded or counted.

Mutations of real captures (truncation, byte flips, inflated lengths and counts) reach
deeper into the parsers than random bytes do.  A longer run of the same mutator lives in
bench/fuzz.py (figures in docs/performance.md).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.flowenricher.decode.dispatch import FlowDecoder
from appliance.flowenricher.decode.mutate import mutate_datagram
from appliance.flowenricher.generate.encode import build_packets
from appliance.flowenricher.pcap import read_udp

PCAPS = Path(__file__).parent / "data" / "pcaps"
SEEDS = [d.payload for p in sorted(PCAPS.glob("*.pcap")) for d in read_udp(p)]


def _primed_decoder() -> FlowDecoder:
    """A decoder that knows every capture's templates, so mutated data sets are parsed."""
    decoder = FlowDecoder(hold_max_sets=64)
    decoder.decode([(p, "192.0.2.1", 0) for p in SEEDS])
    return decoder


DECODER = _primed_decoder()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(SEEDS) - 1), st.randoms(use_true_random=False))
def test_mutated_real_datagrams_never_raise(index: int, rnd: object) -> None:
    payload = mutate_datagram(SEEDS[index], rnd)  # type: ignore[arg-type]
    before = DECODER.stats.total("datagrams")
    batch = DECODER.decode([(payload, "192.0.2.1", 0)])
    assert DECODER.stats.total("datagrams") == before + 1
    assert batch.n >= 0
    for name in batch.set_columns():
        assert len(batch[name]) == batch.n


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_raise(payload: bytes) -> None:
    DECODER.decode([(payload, "192.0.2.2", 0)])


def test_malformed_are_counted_by_reason() -> None:
    decoder = FlowDecoder()
    decoder.decode([(b"\x00\x09", "192.0.2.3", 0), (b"\x00\x07" + bytes(30), "192.0.2.3", 0),
                    (b"\x00\x0a\x00\x05" + bytes(12), "192.0.2.3", 0), (b"\xff" * 40, "192.0.2.3", 0)])
    dropped = decoder.stats.dropped["192.0.2.3"]
    assert dropped["truncated_header"] == 1
    assert dropped["bad_version"] == 2  # NetFlow v7, and something that is no flow protocol
    assert dropped["bad_message_length"] == 1


@pytest.mark.parametrize("init_ms", [2**63 + 5, 2**64 - 1, 1])
def test_implausible_system_init_time_is_ignored(init_ms: int) -> None:
    """Found by bench/fuzz.py: an options record announcing systemInitTimeMilliseconds of
    2**63 or more overflowed the time arithmetic of the exporter's next data records."""
    now_ms = 1_800_000_000_000
    template, *data = build_packets("ipfix", 60, now_ms=now_ms)
    hostile = template[:-8] + struct.pack("!Q", init_ms)  # the options record ends the packet
    batch = FlowDecoder().decode([(p, "192.0.2.9", 0) for p in (hostile, *data)])
    assert batch.n == 60
    # Without a believable boot time, IPFIX flows fall back to the export time.
    assert set(batch["timestamp_end"].tolist()) == {now_ms // 1000}
