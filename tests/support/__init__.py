"""Helpers shared by the tests: sample flow batches and protocol stand-ins for servers."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from appliance.flowenricher.batch import DictColumn, FlowBatch, ListColumn, ipv4_to_addr, str_to_addr


def sample_batch(n: int, seed: int = 0, start: int | None = None) -> FlowBatch:
    """`n` flows with every kind of column set: mixed IPv4/IPv6 addresses, countries,
    interface names, AS paths of varying length (some empty).  Deterministic per seed and
    `start` (default: the last full hour, so the rows are inside any TTL)."""
    if start is None:
        start = int(time.time()) // 3600 * 3600 - 3600
    rng = np.random.default_rng(seed)
    ts = start + np.sort(rng.integers(0, 3600, n)).astype(np.uint32)
    src = ipv4_to_addr(rng.integers(0x01000000, 0xDF000000, n, dtype=np.uint32))
    dst = ipv4_to_addr(rng.integers(0x01000000, 0xDF000000, n, dtype=np.uint32))
    v6 = rng.random(n) < 0.3
    v6_addr = np.frombuffer(str_to_addr("2001:db8::1") * int(v6.sum()), dtype=np.uint8).reshape(-1, 16).copy()
    v6_addr[:, 14:] = rng.integers(0, 256, (int(v6.sum()), 2), dtype=np.uint8)
    src[v6] = v6_addr
    lengths = rng.integers(0, 6, n)
    offsets = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(lengths, out=offsets[1:])
    path_values = rng.integers(1, 400_000, int(offsets[-1]), dtype=np.uint32)
    countries = ["", "FR", "DE", "US", "NL", "RU", "CN", "BR"]
    return FlowBatch(
        n,
        {
            "timestamp_start": ts,
            "timestamp_end": ts + rng.integers(0, 60, n).astype(np.uint32),
            "received_at": ts + np.uint32(61),
            "exporter_address": ipv4_to_addr(rng.choice(np.array([0x0A000001, 0x0A000002], np.uint32), n)),
            "flow_protocol": DictColumn(rng.integers(0, 2, n).astype(np.uint32), ["netflow9", "ipfix"]),
            "ip_version": np.where(v6, 6, 4).astype(np.uint8),
            "src_addr": src,
            "dst_addr": dst,
            "src_port": rng.integers(0, 65536, n).astype(np.uint16),
            "dst_port": rng.choice(np.array([22, 53, 80, 443, 8080, 51234], np.uint16), n),
            "proto": rng.choice(np.array([1, 6, 17], np.uint8), n),
            "packets": rng.integers(1, 1000, n).astype(np.uint64),
            "bytes": rng.integers(40, 1_500_000, n).astype(np.uint64),
            "input_interface": rng.integers(1, 5, n).astype(np.uint32),
            "output_interface": rng.integers(1, 5, n).astype(np.uint32),
            "input_interface_name": DictColumn(
                rng.integers(0, 3, n).astype(np.uint32), ["ether1", "ether2", "sfp1"]
            ),
            "src_as": rng.integers(0, 70_000, n).astype(np.uint32),
            "dst_as": rng.integers(0, 70_000, n).astype(np.uint32),
            "peer_dst_as_name": DictColumn(
                rng.integers(0, 3, n).astype(np.uint32), ["", "Cogent", "Hurricane É"]
            ),
            "dst_as_path": ListColumn(offsets, path_values),
            "src_host_country": DictColumn(rng.integers(0, len(countries), n).astype(np.uint32), countries),
            "flow_direction": rng.integers(0, 5, n).astype(np.uint8),
        },
    )


def flowenricher_argv() -> list[str]:
    """The `flowenricher` command as this checkout defines it (the console script's module,
    appliance/cli.py, run by this interpreter): an installed script may be of another
    checkout or of an older entry point."""
    return [sys.executable, "-m", "appliance.cli"]


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port on 127.0.0.1 free a moment ago (UDP by default)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_pids(procs: Sequence[subprocess.Popen[Any] | None], sig: int = signal.SIGTERM,
              timeout: float = 20.0) -> None:
    """Send `sig` to every process still running, by the PID the test started it with
    (never by name), then wait for each; one still running after `timeout` is sent
    SIGKILL.  Signalled all at once, so several processes stop in parallel."""
    running = [p for p in procs if p is not None and p.poll() is None]
    for proc in running:
        proc.send_signal(sig)
    for proc in running:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def stop_pid(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
    """:func:`stop_pids` of one process; its exit code (negative: the signal that ended it)."""
    stop_pids([proc], sig, timeout)
    return proc.wait()


class FlowenricherProcess:
    """One `flowenricher` command as a subprocess (by its PID), its output in
    ``<workdir>/<name>.log``."""

    def __init__(self, workdir: Path, name: str, *args: str) -> None:
        self.path = workdir / f"{name}.log"
        self.log = self.path.open("ab")
        self.proc = subprocess.Popen([*flowenricher_argv(), *args], cwd=workdir, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.path.read_text(errors="replace")

    def wait_for(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode} before {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.output()[-4000:]}")
            time.sleep(0.1)

    def stop(self) -> int:
        """SIGTERM to the PID (SIGKILL after 60 s); the exit code."""
        code = stop_pid(self.proc, signal.SIGTERM, 60)
        self.log.close()
        return code
