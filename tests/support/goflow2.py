"""goflow2, the real collector, built from its Go module for interoperability tests.

What runs: ``github.com/netsampler/goflow2/v2/cmd/goflow2`` at :data:`VERSION`, built with
``go install`` through the Go module proxy into ``.cache/goflow2-<version>/`` at the top of
the checkout (ignored by git; about a minute on a clean clone).  Its module sources stay
in that directory's module cache, so a test can read the ``pb/flow.proto`` the binary
was built from (:func:`flow_proto`) and hold flowenricher's reading of the FlowMessage
to it.

A :class:`GoFlow2` listens for NetFlow/IPFIX and sFlow on 127.0.0.1 and produces
``-format=bin`` records to a Kafka topic; it is stopped by the PID it was started with.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from . import free_port, stop_pid
from .kafka_lab import REPO, free_port_tcp

VERSION = "v2.2.6"
MODULE = "github.com/netsampler/goflow2/v2"
GO = shutil.which("go") or "/usr/local/go/bin/go"


def unavailable_reason() -> str | None:
    if not Path(GO).exists():
        return "Go is not installed (goflow2 is built from its Go module)"
    return None


def _root() -> Path:
    return REPO / ".cache" / f"goflow2-{VERSION}"


def _env(root: Path) -> dict[str, str]:
    return dict(os.environ, GOPATH=str(root / "gopath"), GOBIN=str(root / "bin"), GOFLAGS="-modcacherw",
                GOCACHE=str(root / "gocache"), CGO_ENABLED="0")


def binary() -> Path:
    """goflow2's binary, built on first use (a lock serialises concurrent test processes)."""
    root = _root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / "bin" / "goflow2"
    with (root / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            result = subprocess.run([GO, "install", f"{MODULE}/cmd/goflow2@{VERSION}"], env=_env(root),
                                    capture_output=True, text=True, timeout=900)
            if result.returncode != 0 or not target.exists():
                raise RuntimeError(f"building goflow2 {VERSION} failed:\n{result.stdout}\n{result.stderr}")
    return target


def flow_proto() -> Path:
    """The ``pb/flow.proto`` of the module the binary was built from."""
    binary()
    path = _root() / "gopath" / "pkg" / "mod" / "github.com" / "netsampler" / "goflow2" / f"v2@{VERSION}" / "pb" / \
        "flow.proto"
    if not path.exists():
        raise RuntimeError(f"goflow2's flow.proto is not in the module cache at {path}")
    return path


class GoFlow2:
    """One goflow2 process producing to `topic` on `brokers` (see the module docstring)."""

    def __init__(self, brokers: str, topic: str) -> None:
        self.netflow_port = free_port()
        self.sflow_port = free_port()
        self.http_port = free_port_tcp()
        self.dir = Path(tempfile.mkdtemp(prefix="goflow2-"))
        self.log_path = self.dir / "goflow2.log"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(binary()), "-listen", f"netflow://127.0.0.1:{self.netflow_port},sflow://127.0.0.1:{self.sflow_port}",
             "-transport", "kafka", "-transport.kafka.brokers", brokers, "-transport.kafka.topic", topic,
             "-transport.kafka.flushfreq", "100ms", "-format", "bin", "-addr", f"127.0.0.1:{self.http_port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self._wait_listening(30.0)

    def _wait_listening(self, timeout: float) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"goflow2 exited {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"goflow2 not up after {timeout:.0f} s:\n{self.output()}") from None
                time.sleep(0.2)

    def metrics_text(self) -> str:
        """goflow2's Prometheus metrics (its decode errors and drops), for failure messages."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as answer:
            return "\n".join(line for line in answer.read().decode().splitlines()
                             if line.startswith(("flow_", "goflow")) and not line.startswith("#"))

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def close(self) -> None:
        stop_pid(self.proc, signal.SIGTERM, 15)
        shutil.rmtree(self.dir, ignore_errors=True)
