"""`flowenricher decode` and `replay` as a user runs them: the console script in a
subprocess, one line on stderr for a bad input, quiet when its reader goes away, and
pcapng read by both."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from appliance.flowenricher.generate.encode import build_packets
from appliance.flowenricher.generate.pcapwriter import write_pcap

PCAPS = Path(__file__).parent / "data" / "pcaps"
FLOWENRICHER = shutil.which("flowenricher") or "flowenricher"


def run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLOWENRICHER, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def big_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600k NetFlow v9 flows (40 MB): a pipe buffer many times over, and enough that
    holding the capture decoded at once shows in the process's memory."""
    path = tmp_path_factory.mktemp("decode") / "big.pcap"
    write_pcap(path, build_packets("v9", 600_000, records_per_packet=30, seed=3), start=time.time())
    return path


def test_bad_inputs_get_one_line_naming_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    text = tmp_path / "notes.pcap"
    text.write_text("hello, this is not a capture\n")
    short = tmp_path / "short.pcap"
    short.write_bytes(bytes.fromhex("d4c3b2a1020004000000"))
    cases = {
        tmp_path / "missing.pcap": "No such file or directory",
        tmp_path: "Is a directory",
        Path("/proc/self/mem"): "read failed at byte 0: Input/output error",  # opens, then every read fails
        empty: "empty file, not a capture",
        text: "not a pcap or pcapng capture (starts with 68656c6c)",
        short: "truncated pcap file header: 24 bytes needed, 10 left at byte 0",
    }
    for path, reason in cases.items():
        result = run("decode", path)
        assert (result.returncode, result.stdout, result.stderr) == (2, "", f"flowenricher decode: {path}: {reason}\n")
    replay = run("replay", text, "--to", "127.0.0.1:9")
    assert (replay.returncode, replay.stderr) == (2, f"flowenricher replay: {text}: {cases[text]}\n")


def test_a_bad_file_after_good_ones_keeps_their_output(tmp_path: Path) -> None:
    good = PCAPS / "mikrotik-netflow5.pcap"
    result = run("decode", good, tmp_path / "gone.pcap")
    alone = run("decode", good)
    assert result.returncode == 2 and result.stdout == alone.stdout and alone.stdout.count("\n") > 0
    assert result.stderr.splitlines()[-1] == f"flowenricher decode: {tmp_path / 'gone.pcap'}: No such file or directory"


def test_decode_into_a_closed_pipe_ends_quietly(big_capture: Path) -> None:
    """`flowenricher decode big.pcap | head -1`: no BrokenPipe traceback, exit 0."""
    pipeline = subprocess.run(f"'{FLOWENRICHER}' decode '{big_capture}' 2>'{big_capture}.err' | head -1",
                              shell=True, capture_output=True, text=True, timeout=120)
    assert pipeline.stdout.startswith('{"timestamp_start":') and pipeline.stdout.count("\n") == 1
    assert Path(f"{big_capture}.err").read_text() == ""
    proc = subprocess.Popen([FLOWENRICHER, "decode", str(big_capture)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=120) == 0
    assert proc.stderr.read() == b""


def test_decode_memory_stays_flat_on_a_large_capture(big_capture: Path) -> None:
    """Streamed reading and decoding a slice at a time: peak RSS of the whole process
    (mostly the interpreter and numpy) stays well under what reading the whole capture
    and decoding it in one batch took (measured here: about 45 MB against 300 MB)."""
    result = subprocess.run(["/usr/bin/time", "-f", "%M", FLOWENRICHER, "decode", str(big_capture), "--format", "summary"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "records: 600000" in result.stdout
    peak_kb = int(result.stderr.strip().splitlines()[-1])
    assert peak_kb < 150_000, f"peak RSS {peak_kb} KB"


@pytest.mark.skipif(shutil.which("editcap") is None, reason="editcap (Debian tshark) not installed")
def test_replay_sends_a_pcapng_capture(tmp_path: Path) -> None:
    packets = build_packets("ipfix", 600, records_per_packet=30, seed=5)
    classic = tmp_path / "capture.pcap"
    write_pcap(classic, packets)
    ng = tmp_path / "capture.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", str(classic), str(ng)], check=True, capture_output=True, timeout=60)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    got: list[bytes] = []

    def receive() -> None:
        while len(got) < len(packets):
            try:
                got.append(rx.recv(65535))
            except TimeoutError:
                return

    thread = threading.Thread(target=receive)
    thread.start()
    try:
        result = run("replay", ng, "--to", f"127.0.0.1:{rx.getsockname()[1]}", "--rate", "2000")
        thread.join(30)
    finally:
        rx.close()
    assert result.returncode == 0, result.stderr
    assert got == packets


def test_table_has_one_header_across_slices(tmp_path: Path) -> None:
    """More datagrams than one decode slice: still one header, every flow a line."""
    path = tmp_path / "many.pcap"
    assert write_pcap(path, build_packets("v5", 9000, records_per_packet=1, seed=4), start=time.time()) > 4096
    result = run("decode", path, "--format", "table")
    lines = result.stdout.splitlines()
    flows = run("decode", path).stdout.count("\n")
    assert result.returncode == 0 and len(lines) == flows + 1 and flows > 4096
    assert [i for i, line in enumerate(lines) if line.startswith("timestamp_start")] == [0]
