"""`flowenricher ... | head` ends quietly: exit 0 and nothing on stderr, whichever command
printed, when the reader of its output goes away (the console script in a subprocess, as
a user runs it).  A broken pipe that is not stdout's still fails loudly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import flowenricher_argv

from appliance.flowenricher.generate.encode import build_packets
from appliance.flowenricher.generate.pcapwriter import write_pcap

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "appliance" / "flowenricher" / "examples"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A config whose store, spool and state DB live in `tmp_path`, and a small capture
    of this moment's flows (older ones would be logged as implausible times)."""
    (tmp_path / "config.yaml").write_text(f"storage:\n  path: {tmp_path / 'data'}\n")
    write_pcap(tmp_path / "capture.pcap", build_packets("ipfix", 3000, records_per_packet=30, seed=2),
               start=time.time())
    return tmp_path


@pytest.fixture
def udp_receiver() -> Iterator[str]:
    """HOST:PORT of a UDP socket on loopback that takes what `replay` sends."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def run_into_closed_pipe(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`args` with stdout a pipe whose reader has already gone: every write to it fails,
    however little the command prints."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([*flowenricher_argv(), "--log-level", "warning", *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, cwd=cwd, timeout=120)
    finally:
        os.close(write_end)


COMMANDS = {
    "help": ["--help"],
    "decode help": ["decode", "--help"],
    "decode jsonl": ["decode", "capture.pcap"],
    "decode table": ["decode", "capture.pcap", "--format", "table"],
    "decode summary": ["decode", "capture.pcap", "--format", "summary"],
    "validate": ["validate", "--config", str(EXAMPLES / "config.yaml"), "--rules", str(EXAMPLES / "detection.yml")],
    "sql": ["sql", "SELECT number FROM system.numbers LIMIT 10", "--config", "config.yaml"],
    "spool list": ["spool", "list", "--config", "config.yaml"],
    "blackhole list": ["blackhole", "list", "--config", "config.yaml"],
    "blackhole list json": ["blackhole", "list", "--format", "json", "--config", "config.yaml"],
}


@pytest.mark.parametrize("args", COMMANDS.values(), ids=COMMANDS.keys())
def test_a_command_whose_reader_is_gone_ends_quietly(args: list[str], workdir: Path) -> None:
    result = run_into_closed_pipe(args, workdir)
    assert (result.returncode, result.stderr) == (0, "")


def test_replay_whose_reader_is_gone_ends_quietly(workdir: Path, udp_receiver: str) -> None:
    result = run_into_closed_pipe(["replay", "capture.pcap", "--to", udp_receiver], workdir)
    assert (result.returncode, result.stderr) == (0, "")


def shell(pipeline: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`pipeline` in bash with pipefail, so flowenricher's own exit status is the pipeline's."""
    return subprocess.run(["bash", "-c", f"set -o pipefail; {pipeline}"], capture_output=True, text=True, cwd=cwd,
                          timeout=120, env={**os.environ, "FLOWENRICHER": " ".join(flowenricher_argv())})


def test_decode_into_head_under_pipefail(workdir: Path) -> None:
    """Megabytes of jsonl, `head -1` reads one line and leaves while decode still writes."""
    capture = workdir / "big.pcap"
    write_pcap(capture, build_packets("v9", 60_000, records_per_packet=30, seed=4), start=time.time())
    result = shell(f"$FLOWENRICHER decode {capture} | head -1", workdir)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith('{"timestamp_start":') and result.stdout.count("\n") == 1


def test_sql_into_head_under_pipefail(workdir: Path) -> None:
    """A result far larger than a pipe holds, from the embedded store (chDB)."""
    result = shell('$FLOWENRICHER --log-level warning sql "SELECT number FROM system.numbers LIMIT 2000000" '
                   "--config config.yaml | head -2", workdir)
    assert (result.returncode, result.stdout, result.stderr) == (0, "number\n0\n", "")


def test_a_broken_pipe_that_is_not_stdout_still_fails(workdir: Path) -> None:
    """A command that meets a broken pipe elsewhere (a socket to a peer that left) while
    its own reader is still there exits 1 with the traceback: not a quiet success."""
    script = ("import sys\n"
              "from appliance.flowenricher import cli\n"
              "def broken(args):\n"
              "    print('started', flush=True)\n"
              "    raise BrokenPipeError(32, 'Broken pipe (a socket)')\n"
              "cli._cmd_spool = broken\n"
              "sys.exit(cli.main(['spool', 'list', '--config', 'config.yaml']))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=workdir, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1 and result.stdout == "started\n"
    assert result.stderr.rstrip().endswith("BrokenPipeError: [Errno 32] Broken pipe (a socket)")
