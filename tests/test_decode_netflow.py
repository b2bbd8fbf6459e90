"""NetFlow v5/v9 and IPFIX decoding against real exporter captures.

Record counts are Wireshark's (tests/data/pcaps/README.md); field values are checked
against tshark, an independent decoder, run on the same captures.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from appliance.flowenricher.batch import FlowBatch
from appliance.flowenricher.decode.dispatch import FlowDecoder
from appliance.flowenricher.decode.netflow import ExporterQuirks
from appliance.flowenricher.pcap import read_udp

PCAPS = Path(__file__).parent / "data" / "pcaps"

# (files in order, flow records, options records) as Wireshark counts them.
CASES = [
    (["akvorado-netflow__template", "akvorado-netflow__data"], 4, 0),
    (["akvorado-netflow__datalink-template", "akvorado-netflow__datalink-data"], 1, 0),
    (["akvorado-netflow__ethernet-over-mpls-with-control-word-template",
      "akvorado-netflow__ethernet-over-mpls-with-control-word-data"], 10, 0),
    (["akvorado-netflow__icmp-template", "akvorado-netflow__icmp-data"], 4, 0),
    (["akvorado-netflow__ipfix-srv6-template", "akvorado-netflow__ipfix-srv6-data"], 1, 0),
    (["akvorado-netflow__ipfixprobe-templates", "akvorado-netflow__ipfixprobe-data"], 4, 0),
    (["akvorado-netflow__mpls"], 2, 1),
    (["akvorado-netflow__multiplesamplingrates-template",
      "akvorado-netflow__multiplesamplingrates-options-template",
      "akvorado-netflow__multiplesamplingrates-options-data",
      "akvorado-netflow__multiplesamplingrates-data"], 12, 2),
    (["akvorado-netflow__nfv5"], 29, 0),
    (["akvorado-netflow__options-template", "akvorado-netflow__options-data"], 0, 4),
    (["akvorado-netflow__physicalinterfaces"], 8, 1),
    (["akvorado-netflow__samplingrate-template", "akvorado-netflow__samplingrate-data"], 6, 0),
    (["mikrotik-netflow5"], 30, 0),
    (["pmacct-104-ipfix-ipv6-cisco-sampling-option"], 3, 1),
]


def decode_files(names: list[str], decoder: FlowDecoder | None = None) -> tuple[FlowBatch, FlowDecoder]:
    decoder = decoder or FlowDecoder()
    batches = []
    for name in names:
        datagrams = [(d.payload, d.src, int(d.timestamp)) for d in read_udp(PCAPS / f"{name}.pcap")]
        batches.append(decoder.decode(datagrams))
    return FlowBatch.concat(batches), decoder


@pytest.mark.parametrize(("names", "records", "options"), CASES, ids=[c[0][-1] for c in CASES])
def test_capture_decodes_to_wiresharks_record_counts(names: list[str], records: int, options: int) -> None:
    batch, decoder = decode_files(names)
    assert batch.n == records
    assert decoder.stats.total("options_records") == options
    assert not decoder.stats.total_dropped()
    assert decoder.netflow.held() == 0


def test_data_before_template_is_held_then_decoded() -> None:
    """The data set alone has no template: it waits, then decodes once the template comes."""
    decoder = FlowDecoder()
    first, _ = decode_files(["akvorado-netflow__data"], decoder)
    assert first.n == 0
    assert decoder.netflow.held() == 1
    later, _ = decode_files(["akvorado-netflow__template"], decoder)
    assert later.n == 4  # released by the template's arrival
    assert decoder.netflow.held() == 0
    assert decoder.stats.total("held_sets_decoded") == 1


def test_data_set_before_its_template_in_the_same_packet() -> None:
    """Wireshark decodes 10 records: it skips the first set, whose template comes later in
    the same datagram.  We hold that set and decode it when the template arrives: 11 more."""
    batch, decoder = decode_files(["akvorado-netflow__data+templates"])
    assert batch.n == 21
    assert decoder.stats.total("options_records") == 1
    assert not decoder.stats.total_dropped()


def test_held_sets_expire_and_are_counted() -> None:
    decoder = FlowDecoder(hold_max_age_s=0.0)
    decode_files(["akvorado-netflow__data"], decoder)
    decoder.netflow.release_all(now=1e12)
    assert decoder.netflow.held() == 0
    assert decoder.stats.total_dropped()["template_missing"] == 1


def test_hold_is_bounded_by_count() -> None:
    decoder = FlowDecoder(hold_max_sets=1)
    decode_files(["akvorado-netflow__data", "akvorado-netflow__data"], decoder)
    assert decoder.netflow.held() == 1
    assert decoder.stats.total_dropped()["hold_overflow"] == 1


def test_netflow_v5_fields() -> None:
    batch, _ = decode_files(["akvorado-netflow__nfv5"])
    row = next(batch.rows())
    assert (row["src_addr"], row["dst_addr"], row["next_hop"]) == ("161.202.212.212", "202.152.70.24", "61.6.255.150")
    assert (row["src_port"], row["dst_port"], row["proto"], row["tcpflags"]) == (30104, 11963, 6, 0x18)
    assert (row["packets"], row["bytes"], row["input_interface"], row["output_interface"]) == (1, 133, 117, 86)
    assert (row["src_as"], row["dst_as"], row["src_mask"], row["dst_mask"]) == (36351, 10101, 19, 24)
    assert row["flow_protocol"] == "netflow5"
    assert row["ip_version"] == 4


def test_uptime_relative_timestamps() -> None:
    """MikroTik (and every v5/v9 exporter) stamps flows in uptime milliseconds: the flow's
    wall-clock start is the header's unix time minus (sys_uptime - first_switched)."""
    # This capture's exporter clock is 8 hours behind its capture clock: with the skew
    # check off, the header arithmetic shows; with it on, the reception time replaces it.
    batch, _ = decode_files(["akvorado-netflow__nfv5"], FlowDecoder(max_clock_skew_s=0))
    rows = list(batch.rows())
    assert rows[1]["timestamp_end"] - rows[1]["timestamp_start"] == 9
    assert all(r["timestamp_start"] <= r["timestamp_end"] for r in rows)
    assert all(abs(r["timestamp_end"] - 1680626664) < 120 for r in rows)
    checked, decoder = decode_files(["akvorado-netflow__nfv5"])
    assert checked["timestamp_start"].tolist() == checked["received_at"].tolist()
    assert decoder.stats.total("time_implausible") == 29


def test_sampling_rate_by_sampler_id_from_options() -> None:
    batch, _ = decode_files(CASES[7][0])
    rates = Counter(batch["sampling_rate"].tolist())
    assert set(rates) == {2000, 4000}  # two samplers announced in options data
    row = next(batch.rows())
    assert row["packets"] == 18 * 4000 and row["bytes"] == 1348 * 4000


def test_sampling_rate_inside_the_record() -> None:
    batch, _ = decode_files(["akvorado-netflow__samplingrate-template", "akvorado-netflow__samplingrate-data"])
    assert set(batch["sampling_rate"].tolist()) == {2048}
    assert batch["packets"].tolist()[0] == 2048


def test_cisco_random_sampling_option_n_out_of_population() -> None:
    """Cisco announces samplingPacketInterval 1 with samplingPopulation 256: 1 in 256."""
    batch, _ = decode_files(["pmacct-104-ipfix-ipv6-cisco-sampling-option"])
    assert set(batch["sampling_rate"].tolist()) == {256}
    assert set(batch["ip_version"].tolist()) == {6}


def test_exporter_sampling_override_and_little_endian_quirk() -> None:
    forced, _ = decode_files(["mikrotik-netflow5"], FlowDecoder(quirks={"192.0.2.1": ExporterQuirks(sampling_rate=10)}))
    assert set(forced["sampling_rate"].tolist()) == {10}
    little_endian = {"238.0.0.1": ExporterQuirks(little_endian_sampling=True)}
    swapped, decoder = decode_files(CASES[7][0], FlowDecoder(quirks=little_endian))
    # This capture is big-endian: 2000 and 4000 read as little-endian 32-bit are 0xD0070000
    # and 0xA00F0000, absurd rates that are ignored (counted), never kept or applied.
    assert set(swapped["sampling_rate"].tolist()) == {1}
    assert decoder.stats.total("sampling_rate_ignored") == 2


def test_icmp_type_and_code() -> None:
    batch, _ = decode_files(["akvorado-netflow__icmp-template", "akvorado-netflow__icmp-data"])
    got = [(r["proto"], r["icmp_type"], r["icmp_code"]) for r in batch.rows()]
    assert got == [(58, 128, 0), (58, 129, 0), (1, 8, 0), (1, 0, 0)]


def test_ipv6_and_forwarding_status() -> None:
    batch, _ = decode_files(["akvorado-netflow__mpls"])
    rows = list(batch.rows())
    assert rows[0]["src_addr"] == "fd00::1:0:1:7:1"
    assert rows[1]["dst_addr"] == "fd00::1:0:1:6:1"
    assert {r["forwarding_status"] for r in rows} == {66}


def test_ipfix_template_withdrawal() -> None:
    """RFC 7011 §8.1: a template record with field count 0 withdraws the template."""
    _batch, decoder = decode_files(["akvorado-netflow__ipfixprobe-templates"])
    assert len(decoder.netflow.templates) == 2
    header = bytes.fromhex("000a") + (16 + 8).to_bytes(2, "big") + bytes(8) + (1).to_bytes(4, "big")
    withdraw_all = (2).to_bytes(2, "big") + (8).to_bytes(2, "big") + (2).to_bytes(2, "big") + bytes(2)
    decoder.decode([(header + withdraw_all, "127.0.0.1", 0)])
    assert len(decoder.netflow.templates) == 0
    assert decoder.stats.total("template_withdrawals") == 2


def _tshark_fields(files: list[str], fields: list[str], port: int) -> list[list[str]]:
    paths = [str(PCAPS / f"{f}.pcap") for f in files]
    merged = subprocess.run(["mergecap", "-a", "-F", "pcap", "-w", "-", *paths], capture_output=True,
                            check=True).stdout
    cmd = ["tshark", "-r", "-", "-d", f"udp.port=={port},cflow", "-T", "fields", "-E", "separator=|"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, input=merged, capture_output=True, check=True).stdout.decode()
    columns: list[list[str]] = [[] for _ in fields]
    for line in out.splitlines():
        for i, value in enumerate(line.split("|")):
            if value:
                columns[i].extend(value.split(","))
    return columns


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
@pytest.mark.parametrize(("files", "port", "v6", "counters"), [
    (["akvorado-netflow__nfv5"], 9990, False, True),
    (["mikrotik-netflow5"], 2055, False, True),
    (["akvorado-netflow__template", "akvorado-netflow__data"], 2055, False, True),
    (["akvorado-netflow__physicalinterfaces"], 2055, False, True),
    # ipfixprobe exports biflows: tshark lists the reverse-direction counters (enterprise
    # elements we skip) beside the forward ones, so only addresses and ports compare.
    (["akvorado-netflow__ipfixprobe-templates", "akvorado-netflow__ipfixprobe-data"], 4739, False, False),
    (["pmacct-104-ipfix-ipv6-cisco-sampling-option"], 9992, True, True),
    (CASES[7][0], 2055, True, True),
])
def test_fields_agree_with_tshark(files: list[str], port: int, v6: bool, counters: bool) -> None:
    addr = "srcaddrv6" if v6 else "srcaddr"
    dst = "dstaddrv6" if v6 else "dstaddr"
    src_ips, dst_ips, sports, dports, octets, packets = _tshark_fields(
        files, [f"cflow.{addr}", f"cflow.{dst}", "cflow.srcport", "cflow.dstport", "cflow.octets", "cflow.packets"],
        port)
    batch, _ = decode_files(files)
    rows = list(batch.rows())
    assert [r["src_addr"] for r in rows] == src_ips
    assert [r["dst_addr"] for r in rows] == dst_ips
    assert [str(r["src_port"]) for r in rows] == sports
    assert [str(r["dst_port"]) for r in rows] == dports
    if not counters:
        return
    assert [str(r["bytes"] // r["sampling_rate"]) for r in rows] == octets
    assert [str(r["packets"] // r["sampling_rate"]) for r in rows] == packets
