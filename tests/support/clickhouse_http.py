"""A ClickHouse HTTP interface in front of chDB, for tests.

It is a protocol-level stand-in for a ClickHouse server, which cannot be installed on
this machine (the official repository is unreachable and Debian's 18.16 is too old for
clickhouse-connect).  The real clickhouse-connect client talks to it over a real socket,
so the client's request shaping and Native (de)serialization run against the real
ClickHouse engine; only the thin HTTP layer here is ours.

What it speaks (what clickhouse-connect 1.12 uses):

* ``GET /ping`` -> ``Ok.``.
* ``POST /?query=...&database=...&default_format=...`` with the statement in the
  ``query`` parameter and/or the body (the body continues the parameter, as in
  ClickHouse); ``query_id`` is echoed back; on an INSERT, every other parameter that
  names a setting of the engine applies to it (as a server applies URL settings, so
  ``async_insert`` or ``insert_deduplication_token`` take effect); the rest is ignored.
* ``INSERT ... FORMAT <fmt>`` followed by the data in the same body (plain or chunked;
  ``Content-Encoding`` gzip/deflate only: clients must not use lz4/zstd here).
* Results in the SQL's FORMAT clause, else ``default_format``, else TabSeparated, with
  the headers the client reads: X-ClickHouse-Format (result-producing statements only),
  X-ClickHouse-Summary, X-ClickHouse-Timezone, X-ClickHouse-Server-Display-Name,
  X-ClickHouse-Query-Id; errors as HTTP 500 with X-ClickHouse-Exception-Code.

For outage tests: :meth:`stop` closes the listening socket and every open connection
(clients then get "connection refused"), :meth:`start` listens again on the same port,
and :meth:`fail_with` makes every request answer an HTTP error.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import chdb

from appliance.flowenricher.storage.embedded import insert_bytes

# "INSERT INTO t (a, b) FORMAT Native" then one newline, then the data (binary for Native).
_chdb_connect: Callable[[str], Any] = chdb.connect  # untyped in chDB

_INSERT_WITH_DATA = re.compile(rb"^\s*(INSERT\s+INTO\s+[^\n]+?)\s+FORMAT\s+(\w+)[ \t]*(?:\r?\n|$)", re.I)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.I)
_RESULT_STATEMENT = re.compile(r"^\s*(?:\(\s*)*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXPLAIN|EXISTS)\b", re.I)
_ERROR_CODE = re.compile(r"Code: (\d+)")


class ClickHouseHTTPStandIn:
    """Serve chDB on 127.0.0.1:<port> over ClickHouse's HTTP protocol.

    ``path`` is the chDB data directory (the engine's: chDB allows one per process, so
    a test must not open an embedded store on another directory at the same time).
    """

    def __init__(self, path: str, display_name: str = "flowenricher-standin") -> None:
        self.path = path
        self.display_name = display_name
        self.port = 0
        self.requests: list[str] = []  # statements seen, for assertions
        self._conn: Any = None
        self._engine_lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.failure: int | None = None  # see fail_with()
        self.timezone = "UTC"
        self._setting_names: frozenset[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ClickHouseHTTPStandIn:
        """Listen (again, on the same port after a stop) and serve in a thread."""
        if self._conn is None:
            self._conn = _chdb_connect(self.path)
            self.timezone = bytes(self._conn.query("SELECT timezone()", "TSV").bytes()).decode().strip()
        httpd = _Server(("127.0.0.1", self.port), _Handler)
        httpd.standin = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, name=f"ch-standin-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open keep-alive connections; the engine stays open."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def close(self) -> None:
        """Stop and close the engine (frees the data directory)."""
        self.stop()
        with self._engine_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def fail_with(self, status: int | None) -> None:
        """Answer every request with HTTP `status` (None: serve normally again)."""
        self.failure = status

    def __enter__(self) -> ClickHouseHTTPStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Called by the handler threads.
    def execute(self, payload: bytes, params: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        """Run one request (statement, then any data); returns body and headers.

        Raises the engine's exception, whose message carries the ClickHouse error code.
        """
        with self._engine_lock:
            conn = self._conn
            if conn is None:
                raise RuntimeError("Code: 210. DB::Exception: stand-in engine is closed")
            # Each request starts in its own database, as on a server.
            conn.query(f"USE {params.get('database') or 'default'}")
            insert = _INSERT_WITH_DATA.match(payload)
            if insert:
                return self._insert(conn, insert, payload, params)
            sql = payload.decode()
            self.requests.append(sql)
            trailing = _TRAILING_FORMAT.search(sql)
            fmt = trailing.group(1) if trailing else params.get("default_format") or "TabSeparated"
            result = conn.query(sql, fmt)
            headers = {
                "X-ClickHouse-Summary": _summary(
                    result.rows_read(), result.bytes_read(), 0, 0, result.elapsed()
                )
            }
            if _RESULT_STATEMENT.match(sql):
                headers["X-ClickHouse-Format"] = fmt
            return bytes(result.bytes()), headers

    def _insert(
        self, conn: Any, match: re.Match[bytes], payload: bytes, params: dict[str, str]
    ) -> tuple[bytes, dict[str, str]]:
        statement = match.group(1).decode()
        fmt = match.group(2).decode()
        self.requests.append(f"{statement} FORMAT {fmt}")
        if self._setting_names is None:
            names = bytes(conn.query("SELECT name FROM system.settings", "TSV").bytes()).decode()
            self._setting_names = frozenset(names.split())
        settings: dict[str, int | str] = {
            k: int(v) if v.isdigit() else v for k, v in params.items() if k in self._setting_names
        }
        started = time.perf_counter()
        # The embedded store's insert path: chDB's streaming insert answers OK for a block
        # its sink failed to store, where a server answers the error.
        result = insert_bytes(conn, statement, payload[match.end() :], fmt, settings)
        summary = _summary(0, 0, result.rows_written(), result.bytes_written(), time.perf_counter() - started)
        return b"", {"X-ClickHouse-Summary": summary}


def _summary(read_rows: int, read_bytes: int, written_rows: int, written_bytes: int, elapsed_s: float) -> str:
    # ClickHouse sends every figure as a string.
    return json.dumps(
        {
            "read_rows": str(read_rows),
            "read_bytes": str(read_bytes),
            "written_rows": str(written_rows),
            "written_bytes": str(written_bytes),
            "total_rows_to_read": str(read_rows),
            "result_rows": "0",
            "result_bytes": "0",
            "elapsed_ns": str(int(elapsed_s * 1e9)),
        }
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    standin: ClickHouseHTTPStandIn

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def track(self, sock: socket.socket, alive: bool) -> None:
        with self._open_lock:
            (self._open.add if alive else self._open.discard)(sock)

    def close_connections(self) -> None:
        with self._open_lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._open.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clickhouse-connect's pool expects
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path.rstrip("/") == "/ping" or (url.path == "/" and not url.query):
            self._reply(200, b"Ok.\n", {})
            return
        self._handle(has_body=False)

    def do_POST(self) -> None:
        self._handle(has_body=True)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(chunks)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        encoding = self.headers.get("Content-Encoding", "").lower()
        if encoding in ("gzip", "deflate"):
            body = zlib.decompress(body, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        elif encoding:
            raise _Unsupported(f"Content-Encoding {encoding} (create the client with compress=False)")
        return body

    def _handle(self, has_body: bool) -> None:
        standin = self.server.standin
        params = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query, keep_blank_values=True).items()}
        base = {
            "X-ClickHouse-Query-Id": params.get("query_id") or str(uuid.uuid4()),
            "X-ClickHouse-Timezone": standin.timezone,
            "X-ClickHouse-Server-Display-Name": standin.display_name,
        }
        try:
            body = self._body() if has_body else b""
            if standin.failure is not None:
                raise _Refused(standin.failure)
            statement = params.get("query", "").encode()
            # The body continues the query parameter, as in ClickHouse.
            payload = statement + b"\n" + body if statement and body else statement or body
            out, headers = standin.execute(payload, params)
        except _Refused as err:
            self._reply(
                err.status, b"Code: 999. DB::Exception: stand-in told to fail\n", base, error_code="999"
            )
        except _Unsupported as err:
            self._reply(415, f"Code: 1. DB::Exception: unsupported {err}\n".encode(), base, error_code="1")
        except Exception as err:  # the engine's error goes back to the client, as a server's would
            text = str(err)
            code = _ERROR_CODE.search(text)
            self._reply(500, (text + "\n").encode(), base, error_code=code.group(1) if code else "1000")
        else:
            self._reply(200, out, {**base, **headers})

    def _reply(
        self, status: int, body: bytes, headers: dict[str, str], error_code: str | None = None
    ) -> None:
        self.send_response(status)
        self.send_header(
            "Content-Type", "text/plain; charset=UTF-8" if status != 200 else "application/octet-stream"
        )
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        if error_code is not None:
            self.send_header("X-ClickHouse-Exception-Code", error_code)
        self.end_headers()
        self.wfile.write(body)


class _Unsupported(Exception):
    pass


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status
