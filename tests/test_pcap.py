"""The capture reader: pcapng beside classic pcap, streamed reading, damaged files.

Oracles: Wireshark's `editcap` converts the real captures of tests/data/pcaps to pcapng
and `tshark` reads the hand-built pcapng files (both byte orders, several sections and
timestamp resolutions), so the reader is checked against an independent implementation.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.flowenricher.errors import CaptureError
from appliance.flowenricher.generate.encode import build_packets
from appliance.flowenricher.generate.pcapwriter import udp_frame, write_pcap
from appliance.flowenricher.pcap import UdpDatagram, read_udp, read_udp_batches

PCAPS = Path(__file__).parent / "data" / "pcaps"
# The console script `pip install .` puts on PATH, run as a user would.
FLOWENRICHER = [shutil.which("flowenricher") or "flowenricher"]

needs_wireshark = pytest.mark.skipif(shutil.which("editcap") is None or shutil.which("tshark") is None,
                                     reason="editcap/tshark (Debian tshark) not installed")


def editcap(src: Path, dst: Path, *args: str) -> Path:
    subprocess.run(["editcap", *args, str(src), str(dst)], check=True, capture_output=True, timeout=60)
    return dst


def decode(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLOWENRICHER, "decode", *map(str, args)], capture_output=True, text=True, timeout=120)


# -- pcapng blocks, written by hand so that every variant the format allows can be built ------


def block(endian: str, kind: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack(endian + "II", kind, length) + body + struct.pack(endian + "I", length)


def option(endian: str, code: int, value: bytes) -> bytes:
    return struct.pack(endian + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def shb(endian: str) -> bytes:
    return block(endian, 0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(endian: str, linktype: int, *options: bytes) -> bytes:
    opts = b"".join(options) + (option(endian, 0, b"") if options else b"")
    return block(endian, 1, struct.pack(endian + "HHI", linktype, 0, 262144) + opts)


def epb(endian: str, ifid: int, units: int, frame: bytes) -> bytes:
    return block(endian, 6, struct.pack(endian + "IIIII", ifid, units >> 32, units & 0xFFFFFFFF, len(frame),
                                        len(frame)) + frame)


def spb(endian: str, frame: bytes) -> bytes:
    return block(endian, 3, struct.pack(endian + "I", len(frame)) + frame)


def raw_ip(frame: bytes) -> bytes:
    return frame[14:]  # an Ethernet frame from udp_frame without its Ethernet header


def classic(frames: list[bytes], linktype: int = 1, snaplen: int = 262144) -> bytes:
    """A little-endian microsecond pcap of `frames`, each cut to `snaplen` as libpcap does."""
    records = [struct.pack("<IIII", 1_700_000_000 + i, 250_000, min(len(f), snaplen), len(f)) + f[:snaplen]
               for i, f in enumerate(frames)]
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype) + b"".join(records)


def rows(datagrams: list[UdpDatagram]) -> list[tuple[object, ...]]:
    return [(d.timestamp, d.src, d.src_port, d.dst, d.dst_port, d.payload) for d in datagrams]


@pytest.mark.parametrize("chunk", [1, 17, 100, 1500, 4096, 1 << 20])
def test_records_across_chunk_boundaries_are_read_whole(tmp_path: Path, chunk: int) -> None:
    """Whatever the chunk size, every record comes out whole and once, in order: records
    cut by a chunk boundary (header or data) are carried into the next chunk."""
    payloads = [bytes([i % 251]) * (1 + i * 37 % 1400) for i in range(300)]
    path = tmp_path / "sizes.pcap"
    write_pcap(path, payloads, src="192.0.2.9", start=1_700_000_000.0)
    batches = list(read_udp_batches(path, chunk))
    assert [d.payload for b in batches for d in b.datagrams()] == payloads
    assert [d.src for b in batches for d in b.datagrams()] == ["192.0.2.9"] * 300
    if chunk < 4096:
        assert len(batches) > 10  # streamed: one chunk at a time


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
@pytest.mark.parametrize("cut", [10, 100])  # inside the last record's header, inside its data
def test_truncated_last_record_is_named_at_any_chunk_size(tmp_path: Path, chunk: int, cut: int) -> None:
    path = tmp_path / "cut.pcap"
    write_pcap(path, [bytes(100)] * 3)
    data = path.read_bytes()
    record = (len(data) - 24) // 3
    path.write_bytes(data[:24 + 2 * record + cut])
    got: list[UdpDatagram] = []
    what = "record header: 16 bytes needed, 10" if cut == 10 else f"record: {record - 16} bytes needed, 84"
    with pytest.raises(CaptureError, match=rf"^{path}: truncated {what} left at byte {24 + 2 * record}$"):
        for batch in read_udp_batches(path, chunk):
            got.extend(batch.datagrams())
    assert [d.payload for d in got] == [bytes(100)] * 2


def test_every_kind_of_frame_in_one_chunk_keeps_capture_order(tmp_path: Path) -> None:
    """Plain IPv4 frames are read in numpy, the others (VLAN, IPv6, short, not UDP,
    fragments, IP options) one by one: mixed in one chunk, they come out in order."""
    v4 = udp_frame(b"plain", "192.0.2.1", 1000, "198.51.100.1", 2055)
    vlan = v4[:12] + b"\x81\x00\x00\x07" + udp_frame(b"tagged", "192.0.2.2", 1001, "198.51.100.1", 2055)[12:]
    v6 = udp_frame(b"six", "2001:db8::1", 1002, "2001:db8::2", 6343)
    tcp = v4[:23] + b"\x06" + v4[24:]
    fragment = v4[:20] + b"\x20\x00" + v4[22:]  # more fragments follow
    ip = udp_frame(b"options", "192.0.2.3", 1003, "198.51.100.1", 2055)
    options = ip[:14] + b"\x46" + ip[15:16] + struct.pack("!H", 20 + 4 + 8 + 7) + ip[18:34] + b"\x01" * 4 + ip[34:]
    short = v4[:33]
    long_udp = v4[:38] + struct.pack("!H", 500) + v4[40:]  # UDP length past the frame: cut at the frame
    path = tmp_path / "mixed.pcap"
    path.write_bytes(classic([v4, vlan, tcp, v6, fragment, options, short, long_udp, v4]))
    got = rows(list(read_udp(path)))
    assert got == [
        (1_700_000_000.25, "192.0.2.1", 1000, "198.51.100.1", 2055, b"plain"),
        (1_700_000_001.25, "192.0.2.2", 1001, "198.51.100.1", 2055, b"tagged"),
        (1_700_000_003.25, "2001:db8::1", 1002, "2001:db8::2", 6343, b"six"),
        (1_700_000_005.25, "192.0.2.3", 1003, "198.51.100.1", 2055, b"options"),
        (1_700_000_007.25, "192.0.2.1", 1000, "198.51.100.1", 2055, b"plain"),
        (1_700_000_008.25, "192.0.2.1", 1000, "198.51.100.1", 2055, b"plain"),
    ]
    cooked = [b"\0\0\0\1\0\6" + bytes(8) + f[12:] for f in (v4, v6)]
    path.write_bytes(classic(cooked, linktype=113) + b"")
    assert [d.payload for d in read_udp(path)] == [b"plain", b"six"]
    path.write_bytes(classic([raw_ip(v4), raw_ip(v6), raw_ip(v4)], linktype=101))
    assert [d.payload for d in read_udp(path)] == [b"plain", b"six", b"plain"]


def test_snaplen_truncated_records_are_counted_not_crashing(tmp_path: Path) -> None:
    """A capture taken with a short snaplen holds the first bytes of each export: the
    reader hands them over cut, the decoder counts them dropped, and decode goes on."""
    packets = build_packets("v9", 600, records_per_packet=30, seed=1)
    frames = [udp_frame(p, "192.0.2.1", 50000, "198.51.100.1", 2055) for p in packets]
    path = tmp_path / "snaplen.pcap"
    path.write_bytes(classic(frames, snaplen=300))
    got = list(read_udp(path))
    assert [d.payload for d in got] == [p[:300 - 42] for p in packets]
    assert len(packets[0]) < 300 - 42 < min(len(p) for p in packets[1:])  # the template whole, the data cut
    result = decode(path, "--format", "summary")
    assert result.returncode == 0, result.stderr
    summary = dict(line.strip().split(": ", 1) for line in result.stdout.splitlines())
    assert summary["datagrams"] == str(len(packets))
    assert summary["templates"] == "2"
    assert summary["records"] == "0"
    assert summary["bad_set_length"] == str(len(packets) - 1)  # each cut data set, counted


def test_pcapng_across_chunk_boundaries_reads_like_the_pcap(tmp_path: Path) -> None:
    frames = [udp_frame(bytes([i]) * (10 + i * 13 % 900), "192.0.2.4", 4000, "198.51.100.1", 2055)
              for i in range(120)]
    path = tmp_path / "many.pcapng"
    path.write_bytes(shb("<") + idb("<", 1) + b"".join(epb("<", 0, i * 1_000_000, f) for i, f in enumerate(frames)))
    for chunk in (13, 1000, 1 << 20):
        batches = list(read_udp_batches(path, chunk))
        assert [d.payload for b in batches for d in b.datagrams()] == [f[42:] for f in frames]
        assert [d.timestamp for b in batches for d in b.datagrams()] == [float(i) for i in range(120)]


@needs_wireshark
def test_pcapng_of_every_capture_decodes_like_the_pcap(tmp_path: Path) -> None:
    """Golden: the captures as Wireshark writes them in pcapng give byte-identical jsonl."""
    pcaps = sorted(PCAPS.glob("*.pcap"))
    pcapngs = [editcap(p, tmp_path / f"{p.stem}.pcapng", "-F", "pcapng") for p in pcaps]
    assert all(p.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a" for p in pcapngs)
    classic, ng = decode(*pcaps, "--format", "jsonl"), decode(*pcapngs, "--format", "jsonl")
    assert classic.returncode == ng.returncode == 0, ng.stderr
    assert len(classic.stdout.splitlines()) > 100
    assert ng.stdout == classic.stdout


@needs_wireshark
def test_nanosecond_and_big_endian_captures_read_like_tshark(tmp_path: Path) -> None:
    """Two sections (little then big endian), per-interface link types and if_tsresol
    (10^-9 and 2^-10), an if_tsoffset, a Simple Packet Block and unknown blocks."""
    frames = [udp_frame(bytes([i]) * (20 + i), f"192.0.2.{i}", 4000 + i, "198.51.100.1", 2055) for i in range(5)]
    v6 = udp_frame(b"six", "2001:db8::1", 5000, "2001:db8::2", 6343)
    le, be = "<", ">"
    capture = b"".join([
        shb(le),
        idb(le, 1, option(le, 9, b"\x09")),  # Ethernet, nanoseconds
        block(le, 0x0BAD, b"some vendor block"),
        idb(le, 101, option(le, 9, b"\x8a")),  # raw IP, 1/1024 s
        epb(le, 0, 1_700_000_000_123_456_789, frames[0]),
        epb(le, 1, 1_700_000_001 * 1024 + 512, raw_ip(frames[1])),
        block(le, 5, struct.pack(le + "I", 0) + b"stats"),  # an Interface Statistics Block: skipped
        shb(be),
        idb(be, 113, option(be, 14, struct.pack(be + "q", 1_700_000_000))),  # Linux cooked, offset
        epb(be, 0, 2_500_000, b"\0\0\0\1\0\6" + bytes(8) + b"\x08\x00" + frames[2][14:]),
        epb(be, 0, 3_000_000, b"\0\0\0\1\0\6" + bytes(8) + b"\x86\xdd" + v6[14:]),
    ])
    path = tmp_path / "mixed.pcapng"
    path.write_bytes(capture)
    got = list(read_udp(path))
    assert [(d.src, d.src_port, d.dst_port, d.payload) for d in got] == [
        ("192.0.2.0", 4000, 2055, frames[0][42:]), ("192.0.2.1", 4001, 2055, frames[1][42:]),
        ("192.0.2.2", 4002, 2055, frames[2][42:]), ("2001:db8::1", 5000, 6343, b"six")]
    assert [d.timestamp for d in got] == pytest.approx([1_700_000_000.123456789, 1_700_000_001.5,
                                                        1_700_000_002.5, 1_700_000_003.0], abs=1e-6)
    tshark = ["tshark", "-r", str(path), "-Y", "udp", "-T", "fields", "-e", "frame.time_epoch", "-e", "udp.payload"]
    shark = subprocess.run(tshark, capture_output=True, text=True, check=True, timeout=60).stdout.split("\n")
    rows = [line.split("\t") for line in shark if line]
    assert [bytes.fromhex(p) for _, p in rows] == [d.payload for d in got]
    assert [float(t) for t, _ in rows] == pytest.approx([d.timestamp for d in got], abs=1e-6)


def test_simple_packet_blocks_take_interface_zero(tmp_path: Path) -> None:
    frame = udp_frame(b"simple", "192.0.2.7", 1, "192.0.2.8", 2)
    path = tmp_path / "simple.pcapng"
    path.write_bytes(shb("<") + idb("<", 1) + spb("<", frame))
    assert [(d.src, d.payload, d.timestamp) for d in read_udp(path)] == [("192.0.2.7", b"simple", 0.0)]


@pytest.mark.parametrize(("damage", "reason"), [
    ("truncated", "truncated block: "),
    ("length", "corrupt block: length 13 "),
    ("trailer", "corrupt block: trailing length differs"),
    ("interface", "packet of interface 3, but the section describes 1"),
])
def test_damaged_pcapng_fails_in_one_line_with_file_and_offset(tmp_path: Path, damage: str, reason: str) -> None:
    frames = [udp_frame(bytes(30), "192.0.2.1", 1, "192.0.2.2", 2055) for _ in range(3)]
    good = shb("<") + idb("<", 1) + b"".join(epb("<", 0, i, f) for i, f in enumerate(frames))
    last = len(good) - len(epb("<", 0, 2, frames[2]))  # where the last block starts
    if damage == "truncated":
        data = good[:-10]
    elif damage == "length":
        data = good[:last + 4] + struct.pack("<I", 13) + good[last + 8:]
    elif damage == "trailer":
        data = good[:-4] + struct.pack("<I", 12)
    else:
        data = good[:last] + epb("<", 3, 2, frames[2])
    path = tmp_path / "damaged.pcapng"
    path.write_bytes(data)
    with pytest.raises(CaptureError) as err:
        list(read_udp(path))
    assert str(err.value).startswith(f"{path}: {reason}") and str(err.value).endswith(f"at byte {last}")
    result = decode(path, "--format", "summary")
    assert result.returncode == 2
    # The packets before the damage were decoded (their zero payloads counted as bad_version).
    *before, final = result.stderr.splitlines()
    assert final == f"flowenricher decode: {err.value}"
    assert all("dropped (bad_version)" in line for line in before)


def test_truncated_classic_pcap_names_the_record(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    write_pcap(path, [bytes(100)] * 3)
    data = path.read_bytes()
    record = (len(data) - 24) // 3
    path.write_bytes(data[:-50])
    got: list[UdpDatagram] = []
    with pytest.raises(CaptureError, match=rf"^{path}: truncated record: \d+ bytes needed, \d+ left at byte "
                                           rf"{24 + 2 * record}$"):
        got.extend(read_udp(path))
    assert len(got) == 2  # what came before the damage was read


def test_reading_is_streamed_not_whole_file(tmp_path: Path) -> None:
    """Peak Python memory while reading a 20 MB capture stays a few MB: a capture larger
    than RAM can be decoded."""
    path = tmp_path / "big.pcap"
    write_pcap(path, (bytes([i % 251]) * 1400 for i in range(14_000)))
    assert path.stat().st_size > 20e6
    tracemalloc.start()
    try:
        n = sum(len(d.payload) for d in read_udp(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 14_000 * 1400
    assert peak < 6e6, f"peak {peak / 1e6:.1f} MB while reading"


def test_unsupported_link_type_is_named_with_its_interface(tmp_path: Path) -> None:
    frame = udp_frame(b"x", "192.0.2.1", 1, "192.0.2.2", 2)
    ok = shb("<") + idb("<", 1) + idb("<", 127) + epb("<", 0, 0, frame)
    path = tmp_path / "wifi.pcapng"
    path.write_bytes(ok + epb("<", 1, 0, frame))
    got: list[UdpDatagram] = []
    with pytest.raises(CaptureError, match=rf"^{path}: unsupported link type 127 of interface 1 \(supported: .*\) "
                                           rf"at byte {len(ok)}$"):
        got.extend(read_udp(path))
    assert [d.payload for d in got] == [b"x"]


@settings(max_examples=300, deadline=None)
@given(tail=st.binary(max_size=300), cut=st.integers(0, 400))
def test_any_damage_is_a_capture_error_never_a_crash(tail: bytes, cut: int) -> None:
    frame = udp_frame(b"payload", "192.0.2.1", 1, "192.0.2.2", 2)
    with tempfile.NamedTemporaryFile(suffix=".pcap") as f:
        write_pcap(f.name, [b"payload", b"more"])
        classic = Path(f.name).read_bytes()
    for good in (shb("<") + idb("<", 1) + epb("<", 0, 0, frame), shb(">") + idb(">", 101) + spb(">", raw_ip(frame)),
                 classic):
        data = good[:cut] + tail if cut < len(good) else good + tail
        with tempfile.NamedTemporaryFile(suffix=".cap") as f:
            f.write(data)
            f.flush()
            try:
                for d in read_udp(f.name):
                    assert isinstance(d.payload, bytes)
            except CaptureError as err:
                assert str(err).startswith(f"{f.name}: ") and "\n" not in str(err)
