"""The local control socket of the running collector: how `flowenricher sql`, `lookup`
and the API in its own process (`flowenricher api`) reach it.

The embedded engine (chDB) admits one process per data directory, and the blackhole
manager is the one owner of announcements (DESIGN §1), so both stay in the collector;
other processes ask it here.  The socket is a Unix socket inside the data directory
(reachable only by users who can reach the data).  One request per connection: a JSON
line, ``{"sql": ..., "format": ...}``, ``{"lookup": ip}`` or ``{"op": NAME, ...}`` for
the operations of collector_api.OPERATIONS, which the server dispatches to its
collector_api.Collector and :class:`SocketCollector` is generated from.  The answer is
one status byte and a payload: 0 ok (the query's bytes; JSON otherwise), 1 failure
(text), 2 refused by the blackhole safety policy (text, the policy's sentence), 3 an
invalid config or rules file (JSON list of problem lines), 4 a bad request (text).
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
from typing import Any, cast

from .blackhole.safety import Refused
from .collector_api import OPERATIONS, Collector, Operation, arguments
from .errors import ConfigError, FlowEnricherError, StoreError

log = logging.getLogger(__name__)

SOCKET_NAME = "flowenricher.sock"
MAX_REQUEST = 1 << 20

OK, FAILED, REFUSED, INVALID, BAD_REQUEST = 0, 1, 2, 3, 4
"""The status byte of an answer."""

QueryFn = Callable[[str, str], bytes]
LookupFn = Callable[[str], dict[str, Any]]


class CollectorUnavailable(FlowEnricherError):
    """No collector answers on the control socket (not started, stopped, or hung)."""


def socket_path(data_dir: str) -> Path:
    return Path(data_dir) / SOCKET_NAME


class _Handler(socketserver.StreamRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST)
        try:
            status, payload = OK, self._answer(line)
        except Refused as err:
            status, payload = REFUSED, str(err).encode()
        except ConfigError as err:
            status, payload = INVALID, json.dumps(err.problems).encode()
        except (ValueError, KeyError, TypeError) as err:
            status, payload = BAD_REQUEST, f"bad request: {err}".encode()
        except FlowEnricherError as err:
            status, payload = FAILED, str(err).encode()
        except Exception as err:  # a bug must not cost the client its answer, nor go unseen
            log.exception("control socket: request failed: %.200r", line)
            status, payload = FAILED, f"the collector failed: {type(err).__name__}: {err}".encode()
        try:
            self.wfile.write(bytes([status]) + payload)
        except OSError as err:  # the client gave up waiting
            log.debug("control socket: could not answer: %s", err)

    def _answer(self, line: bytes) -> bytes:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ValueError("a request is a JSON object")
        if "op" in request:
            name = str(request["op"])
            collector = self.server.collector
            op = OPERATIONS.get(name)
            if op is None or collector is None:
                known = ", ".join(sorted(OPERATIONS)) if collector is not None else "none"
                raise ValueError(f"this collector does not answer {name!r} (it answers: {known})")
            result = getattr(collector, op.method)(**arguments(op, request))
            return json.dumps(op.dump(result), default=str).encode()
        if "lookup" in request:
            if self.server.lookup_fn is None:
                raise ValueError("this service does no lookups")
            return json.dumps(self.server.lookup_fn(str(request["lookup"])), default=str).encode()
        return self.server.query_fn(str(request["sql"]), str(request.get("format", "TSVWithNames")))


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves queries on `<data dir>/flowenricher.sock` in a background thread; the
    ``op`` requests are `collector`'s operations (none without one)."""

    daemon_threads = True

    def __init__(self, data_dir: str, query_fn: QueryFn, lookup_fn: LookupFn | None = None,
                 collector: Collector | None = None) -> None:
        path = socket_path(data_dir)
        if path.exists():
            path.unlink()  # left by a process that died; the store lock proved we own the dir
        super().__init__(str(path), _Handler)
        os.chmod(path, 0o600)
        self.query_fn = query_fn
        self.lookup_fn = lookup_fn
        self.collector = collector
        self._thread = threading.Thread(target=self.serve_forever, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        path = Path(str(self.server_address))
        if path.exists():
            path.unlink()


# --------------------------------------------------------------------------- clients


def lookup_running(data_dir: str, ip: str, timeout: float = 30.0) -> dict[str, Any] | None:
    """Ask the running service what it knows of `ip`; None when no service listens.
    Raises ValueError when the service refuses the address."""
    answer = _ask(data_dir, {"lookup": ip}, timeout)
    if answer is None:
        return None
    result: dict[str, Any] = json.loads(answer)
    return result


def query_running(data_dir: str, sql: str, fmt: str, timeout: float = 300.0) -> bytes | None:
    """Ask the running service; None when no service listens in `data_dir`."""
    return _ask(data_dir, {"sql": sql, "format": fmt}, timeout)


class SocketCollector:
    """collector_api.Collector over the control socket of the collector in `data_dir`:
    one request per call, each operation's method generated from its OPERATIONS entry
    (so use it through :meth:`operations`, typed as the protocol).

    Raises CollectorUnavailable when no collector answers, as :meth:`unavailable` makes
    it; a subclass turns it into its own error (the API's 503) and hears of answers
    through :meth:`answered`.
    """

    def __init__(self, data_dir: str, timeout_s: float = 30.0) -> None:
        self.data_dir = data_dir
        self.timeout_s = timeout_s

    @property
    def where(self) -> str:
        return str(socket_path(self.data_dir))

    def operations(self) -> Collector:
        """This client as the protocol it implements (its methods are set from OPERATIONS,
        which a type checker cannot see)."""
        return cast(Collector, self)

    def perform(self, op: Operation, fields: dict[str, Any]) -> Any:
        """`op` with its arguments by parameter name; the answer as the method returns it."""
        try:
            answer = call(self.data_dir, op.name, self.timeout_s, **fields)
        except CollectorUnavailable as err:
            raise self.unavailable(err) from err
        except Exception:
            self.answered()
            raise
        self.answered()
        return op.load(answer)

    def unavailable(self, err: CollectorUnavailable) -> Exception:
        """What a call raises when no collector answers."""
        return err

    def answered(self) -> None:
        """Called after each answer (an error the collector raised is an answer too)."""


def _client_method(op: Operation) -> Callable[..., Any]:
    names = [p.name for p in op.params]

    def method(self: SocketCollector, *args: Any, **kwargs: Any) -> Any:
        if len(args) > len(names) or set(kwargs) - set(names):
            raise TypeError(f"{op.method}() takes {', '.join(names) or 'no arguments'}")
        fields = dict(zip(names, args, strict=False)) | kwargs
        return self.perform(op, fields)

    method.__name__ = method.__qualname__ = op.method
    method.__doc__ = f"The collector's {op.name!r} over the control socket."
    return method


for _op in OPERATIONS.values():
    setattr(SocketCollector, _op.method, _client_method(_op))


def call(data_dir: str, op: str, timeout: float = 30.0, **fields: Any) -> Any:
    """One ``op`` request to the collector in `data_dir`, its JSON answer decoded.

    Raises CollectorUnavailable when none answers (no socket, refused, dropped, or no
    answer within `timeout`), and what the collector's handler raised: Refused, ConfigError,
    ValueError (bad request) or StoreError (any other failure).
    """
    answer = _ask(data_dir, {"op": op, **fields}, timeout)
    if answer is None:
        raise CollectorUnavailable(f"no collector answers on {socket_path(data_dir)}")
    return json.loads(answer)


def _ask(data_dir: str, request: dict[str, Any], timeout: float) -> bytes | None:
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
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            chunks = []
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
        except TimeoutError as err:
            raise CollectorUnavailable(f"the service did not answer within {timeout:g} s on {path}") from err
        except OSError as err:  # reset or broken pipe: the service stopped while answering
            raise CollectorUnavailable(f"the service on {path} dropped the connection: {err}") from err
    answer = b"".join(chunks)
    if not answer:
        raise CollectorUnavailable(f"the service on {path} closed the connection without answering")
    status, payload = answer[0], answer[1:]
    if status == OK:
        return payload
    text = payload.decode(errors="replace")
    if status == REFUSED:
        raise Refused(text)
    if status == INVALID:
        raise ConfigError([str(line) for line in json.loads(payload)])
    if status == BAD_REQUEST:
        raise ValueError(text)
    raise StoreError(text or "the service failed without saying why")
