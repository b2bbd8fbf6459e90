"""A local control socket of the running service, so `flowenricher sql` reaches it.

The embedded engine (chDB) admits one process per data directory: while the service
runs, a second process cannot open the store.  The service therefore answers queries on
a Unix socket inside the data directory (reachable only by users who can reach the data),
and `flowenricher sql` uses it when it is there.  One request per connection: a JSON line
``{"sql": ..., "format": ...}`` or ``{"lookup": ip}``; the answer is one status byte (0
ok, 1 error) and the result bytes (a lookup's as JSON), or the error text.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import FlowEnricherError, StoreError

log = logging.getLogger(__name__)

SOCKET_NAME = "flowenricher.sock"
MAX_REQUEST = 1 << 20

QueryFn = Callable[[str, str], bytes]
LookupFn = Callable[[str], dict[str, Any]]


def socket_path(data_dir: str) -> Path:
    return Path(data_dir) / SOCKET_NAME


class _Handler(socketserver.StreamRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST)
        try:
            request = json.loads(line)
            if "lookup" in request:
                if self.server.lookup_fn is None:
                    raise ValueError("this service does no lookups")
                answer = self.server.lookup_fn(str(request["lookup"]))
                self.wfile.write(b"\x00" + json.dumps(answer, default=str).encode())
                return
            result = self.server.query_fn(str(request["sql"]), str(request.get("format", "TSVWithNames")))
            self.wfile.write(b"\x00" + result)
        except (ValueError, KeyError, TypeError) as err:
            self.wfile.write(b"\x01" + f"bad request: {err}".encode())
        except FlowEnricherError as err:
            self.wfile.write(b"\x01" + str(err).encode())


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves queries on `<data dir>/flowenricher.sock` in a background thread."""

    daemon_threads = True

    def __init__(self, data_dir: str, query_fn: QueryFn, lookup_fn: LookupFn | None = None) -> None:
        path = socket_path(data_dir)
        if path.exists():
            path.unlink()  # left by a process that died; the store lock proved we own the dir
        super().__init__(str(path), _Handler)
        os.chmod(path, 0o600)
        self.query_fn = query_fn
        self.lookup_fn = lookup_fn
        self._thread = threading.Thread(target=self.serve_forever, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        path = Path(str(self.server_address))
        if path.exists():
            path.unlink()


def lookup_running(data_dir: str, ip: str, timeout: float = 30.0) -> dict[str, Any] | None:
    """Ask the running service what it knows of `ip`; None when no service listens."""
    answer = _ask(data_dir, {"lookup": ip}, timeout)
    if answer is None:
        return None
    result: dict[str, Any] = json.loads(answer)
    return result


def query_running(data_dir: str, sql: str, fmt: str, timeout: float = 300.0) -> bytes | None:
    """Ask the running service; None when no service listens in `data_dir`."""
    return _ask(data_dir, {"sql": sql, "format": fmt}, timeout)


def _ask(data_dir: str, request: dict[str, str], timeout: float) -> bytes | None:
    path = socket_path(data_dir)
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        return None
    with sock:
        sock.sendall(json.dumps(request).encode() + b"\n")
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    answer = b"".join(chunks)
    if not answer or answer[0] != 0:
        raise StoreError(answer[1:].decode(errors="replace") or "the service closed the connection")
    return answer[1:]
