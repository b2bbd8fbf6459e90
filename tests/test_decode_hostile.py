"""Nothing a datagram carries stops the decoder, and nothing it carries is stored out of range.

Starts with the datagram of issue 13: 94 bytes of IPFIX whose options record announces
a sampling interval of 2**32 in an 8-byte field.  It made the decoder raise
OverflowError (a uint32 column), the worker died, and the rate stayed in the
exporter's state to fire again after a restart.  Then structure-aware fuzzing: whole
templates, options templates and data composed by tests/support/netflow_strategies.py,
checked for the properties a user relies on.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from support.netflow_strategies import Composed, check_composed, exports
from support.netflow_wire import ipfix_message, ipfix_options_template, ipfix_set, ipfix_template, uint

from appliance.flowenricher.decode.dispatch import FlowDecoder

EXPORTER = "192.0.2.30"
NOW = 1_800_000_000
FIELDS = [(8, 4, 0), (12, 4, 0), (2, 4, 0), (1, 4, 0)]
RECORD = uint(0x0A000001, 4) + uint(0x0A000002, 4) + uint(2, 4) + uint(100, 4)


def _issue_datagram(rate: int = 2**32) -> bytes:
    """Options template (scope ingressInterface, samplingInterval in 8 bytes), its data,
    a flow template and one flow: 94 bytes."""
    options = ipfix_set(3, ipfix_options_template(400, [(10, 4, 0)], [(34, 8, 0)]))
    options_data = ipfix_set(400, uint(1, 4) + uint(rate, 8))
    template = ipfix_set(2, ipfix_template(401, FIELDS))
    return ipfix_message([options, options_data, template, ipfix_set(401, RECORD)], NOW)


def test_issue_94_byte_datagram_is_decoded_and_the_rate_not_kept() -> None:
    packet = _issue_datagram()
    assert len(packet) == 94
    decoder = FlowDecoder()
    batch = decoder.decode([(packet, EXPORTER, NOW)])
    assert batch.n == 1
    assert (batch["sampling_rate"].tolist(), batch["packets"].tolist()) == ([1], [2])
    assert decoder.stats.counts[EXPORTER]["sampling_rate_ignored"] == 1
    assert not decoder.netflow.sampling  # not in the exporter's state
    assert "sampling" not in str(decoder.export_state()["sampling"])  # nor in the saved state
    again = decoder.decode([(ipfix_message([ipfix_set(401, RECORD)], NOW), EXPORTER, NOW)])
    assert again["sampling_rate"].tolist() == [1]
    assert not decoder.stats.total_dropped()


def test_a_believable_rate_in_the_same_shape_is_kept() -> None:
    decoder = FlowDecoder()
    batch = decoder.decode([(_issue_datagram(rate=1000), EXPORTER, NOW)])
    assert (batch["sampling_rate"].tolist(), batch["packets"].tolist()) == ([1000], [2000])


def test_values_wider_than_their_column_are_clamped_and_counted() -> None:
    # Ports in 4 bytes, an 8-byte VLAN, a protocol in 2 bytes: values beyond the column.
    template = ipfix_set(2, ipfix_template(402, [(7, 4, 0), (58, 8, 0), (4, 2, 0), (2, 8, 0)]))
    data = ipfix_set(402, uint(70_000, 4) + uint(2**40, 8) + uint(300, 2) + uint(5, 8))
    decoder = FlowDecoder()
    batch = decoder.decode([(ipfix_message([template, data], NOW), EXPORTER, NOW)])
    row = next(batch.rows())
    assert (row["src_port"], row["src_vlan"], row["proto"], row["packets"]) == (65535, 65535, 255, 5)
    assert decoder.stats.counts[EXPORTER]["value_out_of_range"] == 3


def test_counters_times_rate_saturate_instead_of_wrapping() -> None:
    template = ipfix_set(2, ipfix_template(403, [(34, 4, 0), (2, 8, 0), (1, 8, 0)]))
    data = ipfix_set(403, uint(1000, 4) + uint(2**62, 8) + uint(7, 8))
    decoder = FlowDecoder()
    batch = decoder.decode([(ipfix_message([template, data], NOW), EXPORTER, NOW)])
    assert batch["packets"].tolist() == [2**64 - 1]
    assert batch["bytes"].tolist() == [7000]
    assert decoder.stats.counts[EXPORTER]["value_out_of_range"] == 1


def test_a_failure_in_one_exporters_records_loses_only_those() -> None:
    """An exporter label the decoder cannot use (not an address) fails the second pass of
    its template group: the other exporter's records of that group are still decoded,
    the failure is counted, and the failing exporter's state is forgotten."""
    packet = ipfix_message([ipfix_set(2, ipfix_template(401, FIELDS)), ipfix_set(401, RECORD * 3)], NOW)
    decoder = FlowDecoder()
    batch = decoder.decode([(packet, EXPORTER, NOW), (packet, "not-an-address", NOW)])
    assert batch.n == 3
    dropped = decoder.stats.dropped["not-an-address"]
    assert (dropped["decode_error"], dropped["decode_error_records"]) == (1, 3)
    assert decoder.stats.counts["not-an-address"]["state_resets"] == 1
    assert [key[0] for key, _ in decoder.netflow.templates.items()] == [EXPORTER]
    assert decoder.stats.counts[EXPORTER]["records"] == 3 and decoder.stats.counts["not-an-address"]["records"] == 0


# ----------------------------------------------------------------- structure-aware fuzzing
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exports)
def test_composed_exports_decode_within_their_columns(composed: Composed) -> None:
    check_composed(composed)
