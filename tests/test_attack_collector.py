"""Attacks on the collector that the structure-aware fuzzer does not compose.

Breaks found by a hostile review of issue 13, kept as regression cases: sFlow sampling
rates (the fuzzer builds no sFlow: composed here too), an allow list written with
IPv4-mapped IPv6 networks, workers outliving a SIGKILL of the service and holding its
port, two services started together sharing one port.  Attacks that held are kept as
well: a SIGKILL while flows wait in the spool, one datagram of 150 days.  Real processes
(the console script) on loopback, the embedded store or the ClickHouse HTTP stand-in.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import free_port
from support.clickhouse_http import ClickHouseHTTPStandIn
from support.netflow_strategies import Composed, check_composed
from support.netflow_wire import ipfix_message, ipfix_set, ipfix_template, sflow_datagram, uint
from test_collector_service import Collector, send

from appliance.flowenricher.collector.receiver import ExporterFilter
from appliance.flowenricher.config import load_config
from appliance.flowenricher.control import query_running
from appliance.flowenricher.decode.dispatch import FlowDecoder
from appliance.flowenricher.decode.netflow import MAX_SAMPLING_RATE
from appliance.flowenricher.decode.stats import SAMPLING_IGNORED
from appliance.flowenricher.errors import ConfigError
from appliance.flowenricher.generate.encode import build_packets
from appliance.flowenricher.storage.settings import StoreSettings
from appliance.flowenricher.storage.spool import list_files

RECEIVED = 1_800_000_000


def _flow_sample(rate: int, frame_length: int) -> bytes:
    """An sFlow flow sample (format 1) with one sampled-IPv4 record (format 3)."""
    ipv4 = struct.pack("!II4s4sIIII", frame_length, 6, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]),
                       40000, 443, 0x18, 0)
    record = struct.pack("!II", 3, len(ipv4)) + ipv4
    return struct.pack("!IIIIIIII", 1, 7, rate, 0, 0, 1, 2, 1) + record


def test_sflow_absurd_sampling_rate_is_ignored_and_counted_like_netflow() -> None:
    """One spoofed sample with rate 2**32-1 and a 4 GB frame stored 1.8e19 bytes: the
    traffic graphs and the DDoS detection would see exabytes from one datagram.  NetFlow
    ignores rates above MAX_SAMPLING_RATE (counted); sFlow must do the same."""
    decoder = FlowDecoder()
    batch = decoder.decode([(sflow_datagram(1, [(1, _flow_sample(2**32 - 1, 1500))]), "192.0.2.9", RECEIVED),
                            (sflow_datagram(2, [(1, _flow_sample(1024, 1500))]), "192.0.2.9", RECEIVED)])
    assert batch.n == 2
    assert batch["sampling_rate"].tolist() == [1, 1024]
    assert batch["packets"].tolist() == [1, 1024]
    assert batch["bytes"].tolist() == [1500, 1500 * 1024]
    assert int(batch["sampling_rate"].max()) <= MAX_SAMPLING_RATE
    assert decoder.stats.counts["192.0.2.9"][SAMPLING_IGNORED] == 1  # kept, counted
    assert not decoder.stats.total_dropped()


def test_sflow_rate_zero_is_stored_as_unsampled() -> None:
    """packets already counted a rate of 0 as 1; the stored sampling_rate said 0, so a
    query dividing by it (or checking rate >= 1, as the NetFlow rows guarantee) broke."""
    decoder = FlowDecoder()
    batch = decoder.decode([(sflow_datagram(1, [(1, _flow_sample(0, 100))]), "192.0.2.9", RECEIVED)])
    assert batch["sampling_rate"].tolist() == [1]
    assert batch["packets"].tolist() == [1] and batch["bytes"].tolist() == [100]
    assert np.all(batch["sampling_rate"] >= 1)


def test_allow_list_with_ipv4_mapped_networks_admits_their_ipv4_exporters() -> None:
    """Sources on a dual-stack socket are normalised to plain IPv4 ('::ffff:192.0.2.1' ->
    '192.0.2.1'), so an allow list written in the mapped form validated and then
    silently dropped every datagram of the exporters it names."""
    allowed = ExporterFilter(["::ffff:192.0.2.0/120", "2001:db8::/32"])
    assert allowed.allows("192.0.2.1")
    assert allowed.allows("192.0.2.255")
    assert not allowed.allows("192.0.3.1")
    assert allowed.allows("2001:db8::5")
    assert not allowed.allows("::ffff:c000:301")  # 192.0.3.1, mapped: outside all the same


class ServerCollector(Collector):
    """`flowenricher run` storing into the ClickHouse server on 127.0.0.1:`server_port`,
    its spool in `<workdir>/data/spool`."""

    def __init__(self, workdir: Path, port: int, server_port: int, name: str = "service") -> None:
        super().__init__(workdir, port, name, extra=f"clickhouse: {{host: 127.0.0.1, port: {server_port}}}\n")


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone: it holds no socket)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_service_killed_with_sigkill_starts_again_at_once(tmp_path: Path, collectors: list[Collector]) -> None:
    """The workers outlived a SIGKILL of the service by about 3 s, holding the port:
    started again at once (by hand, a container, a supervisor faster than systemd's
    RestartSec), the service refused the port, naming "a worker of pid 1"."""
    port = free_port()
    first = Collector(tmp_path, port)
    collectors.append(first)
    first.wait_listening()
    send(port, build_packets("ipfix", 3000, seed=11), sockets=4)
    first.wait_stored(12_000)
    first.wait_for(lambda: list((first.data / "decoder-state").glob("worker-*.json")), 10,
                   "the templates saved")  # by the worker(s) the exporters' ports hashed to
    workers = [first.worker_pid(0), first.worker_pid(1)]
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=10)

    again = Collector(tmp_path, port, name="again")  # at once, as a supervisor would
    collectors.append(again)
    again.wait_listening()  # exited 1 here: "already in use by pid ... (a worker of pid 1 ...)"
    assert not [pid for pid in workers if _alive(pid)], "the old workers still run beside the new service"
    send(port, build_packets("ipfix", 3000, seed=12)[1:], sockets=4)  # data only: templates restored
    again.wait_stored(24_000)


def _server_count(standin: ClickHouseHTTPStandIn) -> int:
    body, _ = standin.execute(b"SELECT count() FROM flowenricher.flows", {"database": "default"})
    return int(body.decode().strip() or 0)


def _spooled_rows(data: Path) -> int:
    """Rows queued in the running service's spool, read as `flowenricher spool list` reads
    them (constructing a Spool here would remove the temporary file the service is writing)."""
    files = list_files(StoreSettings(path=str(data)).spool_path)
    return sum(f.rows for f in files if f.state == "queued")


def test_service_killed_while_spooling_loses_nothing_and_stores_nothing_twice(
        tmp_path: Path, collectors: list[Collector]) -> None:
    """ClickHouse (the HTTP stand-in) goes away, flows go to the spool, the whole service
    is killed with SIGKILL, ClickHouse comes back, the service is started again: every
    flow sent is stored once (rows stored + spooled = rows sent at each step)."""
    with ClickHouseHTTPStandIn(str(tmp_path / "server")) as standin:
        port = free_port()
        first = ServerCollector(tmp_path, port, standin.port)
        collectors.append(first)
        first.wait_listening()
        send(port, build_packets("ipfix", 3000, seed=21), sockets=4)
        first.wait_for(lambda: _server_count(standin) == 12_000, 30, "12,000 flows on the server")

        standin.stop()
        send(port, build_packets("ipfix", 3000, seed=22), sockets=4)
        first.wait_for(lambda: _spooled_rows(first.data) == 12_000, 30, "12,000 flows spooled")
        assert _server_count(standin) == 12_000
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(timeout=10)
        assert _spooled_rows(first.data) == 12_000

        standin.start()
        again = ServerCollector(tmp_path, port, standin.port, name="again")
        collectors.append(again)
        again.wait_listening()
        again.wait_for(lambda: _spooled_rows(again.data) == 0, 30, "the spool replayed")
        send(port, build_packets("ipfix", 3000, seed=23)[1:], sockets=4)
        again.wait_for(lambda: _server_count(standin) >= 36_000, 30, "36,000 flows on the server")
        time.sleep(1)  # a duplicate would show up after the count was first reached
        assert _server_count(standin) == 36_000
        assert again.stop() == 0


def test_exporter_clock_spread_over_150_days_is_stored_whole(tmp_path: Path, collectors: list[Collector]) -> None:
    """With the skew check off (max_clock_skew: 0) one datagram carries flows of 150
    different days (a replayed archive, a clock that jumps): the service stores each of
    them, more days than the store's 100 partitions per insert."""
    port = free_port()
    service = Collector(tmp_path, port, workers=1, extra="  max_clock_skew: 0\n")
    collectors.append(service)
    service.wait_listening()
    now = int(time.time())
    fields = [(8, 4, 0), (12, 4, 0), (2, 4, 0), (1, 4, 0), (150, 4, 0), (151, 4, 0)]
    records = b"".join(uint(0x0A000001, 4) + uint(0x0A000002, 4) + uint(1, 4) + uint(100, 4)
                       + uint(now - day * 86400, 4) * 2 for day in range(150))
    send(port, [ipfix_message([ipfix_set(2, ipfix_template(256, fields)), ipfix_set(256, records)], now)])
    service.wait_stored(150)
    days = query_running(str(service.data), "SELECT uniqExact(toDate(timestamp_start)) FROM flowenricher.flows",
                         "TSV", timeout=30)
    assert days is not None and int(days) == 150


_SFLOW_VALUES = st.one_of(st.sampled_from([0, 1, 2**24, 2**24 + 1, 2**30, 2**31, 2**32 - 1]),
                          st.integers(0, 2**32 - 1))


@st.composite
def _sflow_records(draw: st.DrawFn) -> bytes:
    """One flow record of a format the decoder reads, with absurd values, or another one."""
    fmt = draw(st.sampled_from([1, 2, 3, 4, 1001, 1002, 1003, 0x10001]))
    words = draw(st.lists(_SFLOW_VALUES, min_size=0, max_size=14))
    body = b"".join(struct.pack("!I", w) for w in words)
    if fmt == 1:  # raw header: protocol, frame length, stripped, header bytes
        header = draw(st.binary(max_size=128))
        body = struct.pack("!IIII", draw(st.sampled_from([1, 11, 12, 99])), draw(_SFLOW_VALUES), 0,
                           len(header)) + header + bytes(-len(header) & 3)
    elif fmt == 1002:  # extended router: address type, next hop, masks
        body = struct.pack("!I", draw(st.sampled_from([0, 1, 2, 3]))) + body
    return struct.pack("!II", fmt, len(body)) + body


@st.composite
def _sflow_exports(draw: st.DrawFn) -> Composed:
    """sFlow v5 datagrams of flow samples (compact and expanded), counter and unknown
    samples, whose every word may be absurd: the fuzzer of netflow_strategies builds none."""
    datagrams = []
    for seq in range(draw(st.integers(1, 4))):
        samples = []
        for _ in range(draw(st.integers(0, 4))):
            fmt = draw(st.sampled_from([1, 3, 2, 4, 7]))
            records = draw(st.lists(_sflow_records(), max_size=4))
            n = len(records)
            if fmt == 1:
                head = struct.pack("!IIIIIII", seq, 7, draw(_SFLOW_VALUES), 0, 0, draw(_SFLOW_VALUES),
                                   draw(_SFLOW_VALUES))
            elif fmt == 3:
                head = struct.pack("!IIIIIIIIII", seq, 0, 7, draw(_SFLOW_VALUES), 0, 0, draw(st.integers(0, 3)),
                                   draw(_SFLOW_VALUES), draw(st.integers(0, 3)), draw(_SFLOW_VALUES))
            else:
                head = b""
            body = head + (struct.pack("!I", n) + b"".join(records) if head else bytes(draw(st.integers(0, 16))))
            samples.append((fmt, body))
        datagrams.append(sflow_datagram(seq, samples, sub_agent=draw(_SFLOW_VALUES)))
    return Composed(datagrams, "sflow5")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_sflow_exports())
def test_composed_sflow_decodes_within_its_columns(composed: Composed) -> None:
    """The checks of the NetFlow/IPFIX fuzzing (no exception, every datagram counted,
    columns of their type, times near reception, 1 <= sampling_rate <= the bound) on
    composed sFlow."""
    check_composed(composed)


def test_two_instances_started_together_on_one_port_one_is_refused(
        tmp_path: Path, collectors: list[Collector]) -> None:
    """Both found the port free (the check sees only sockets already bound), then both
    bound it with SO_REUSEPORT: each silently received part of the exporters (3 of 3
    tries here).  Now exactly one serves, the other exits 1 naming the port."""
    port = free_port()
    pair = [Collector(tmp_path / "a", port), Collector(tmp_path / "b", port)]
    collectors.extend(pair)
    deadline = time.monotonic() + 60
    while not all(c.proc.poll() is not None or "listening:" in c.output() for c in pair):
        assert time.monotonic() < deadline, [c.output()[-2000:] for c in pair]
        time.sleep(0.1)
    serving = [c for c in pair if c.proc.poll() is None]
    refused = [c for c in pair if c.proc.poll() is not None]
    assert len(serving) == 1 and len(refused) == 1, [c.output()[-2000:] for c in pair]
    assert refused[0].proc.returncode == 1
    assert f"UDP port {port}" in refused[0].output() and "refusing to share it" in refused[0].output()
    send(port, build_packets("ipfix", 3000, seed=31), sockets=8)
    serving[0].wait_stored(24_000)  # every exporter reached the one that serves


def test_exporter_override_keyed_by_an_ipv4_mapped_address_applies(tmp_path: Path) -> None:
    """`collectors.exporters` keyed '::ffff:192.0.2.10' validated, then never matched
    the exporter (sources are normalised to '192.0.2.10'): its forced sampling rate was
    silently not applied, the traffic under-counted 1,024 times."""
    config = tmp_path / "config.yaml"
    config.write_text("collectors:\n  exporters:\n    '::ffff:192.0.2.10': {sampling_rate: 1024}\n")
    exporters = load_config(config).collectors.exporters
    assert list(exporters) == ["192.0.2.10"]
    assert exporters["192.0.2.10"].sampling_rate == 1024
    both = tmp_path / "both.yaml"
    both.write_text("collectors:\n  exporters:\n    '192.0.2.10': {sampling_rate: 1}\n"
                    "    '::ffff:192.0.2.10': {sampling_rate: 1024}\n")
    with pytest.raises(ConfigError, match=re.escape("same exporter as '192.0.2.10'")):
        load_config(both)
