"""The local control socket of the running collector: how `flowenricher sql`, `lookup`
and the API in its own process (`flowenricher api`) reach it.

The embedded engine (chDB) admits one process per data directory, and the blackhole
manager is the one owner of announcements (DESIGN §1), so both stay in the collector;
other processes ask it here.  The socket is a Unix socket inside the data directory
(reachable only by users who can reach the data).  One request per connection: a JSON
line, ``{"sql": ..., "format": ...}``, ``{"lookup": ip}`` or ``{"op": NAME, ...}`` for
the requests in :func:`collector_requests`.  The answer is one status byte and a
payload: 0 ok (the query's bytes; JSON otherwise), 1 failure (text), 2 refused by the
blackhole safety policy (text, the policy's sentence), 3 an invalid config or rules
file (JSON list of problem lines), 4 a bad request (text).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .blackhole.safety import Refused
from .errors import ConfigError, FlowEnricherError, StoreError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .blackhole.state import Blackhole

log = logging.getLogger(__name__)

SOCKET_NAME = "flowenricher.sock"
MAX_REQUEST = 1 << 20

OK, FAILED, REFUSED, INVALID, BAD_REQUEST = 0, 1, 2, 3, 4
"""The status byte of an answer."""

QueryFn = Callable[[str, str], bytes]
LookupFn = Callable[[str], dict[str, Any]]
RequestHandler = Callable[[dict[str, Any]], Any]
"""One ``op``: the request's fields -> a JSON-serialisable answer.  Raises Refused,
ConfigError, ValueError (bad request) or FlowEnricherError; the client raises the same."""


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
            op = str(request["op"])
            handler = self.server.requests.get(op)
            if handler is None:
                known = ", ".join(sorted(self.server.requests)) or "none"
                raise ValueError(f"this collector does not answer {op!r} (it answers: {known})")
            return json.dumps(handler(request), default=str).encode()
        if "lookup" in request:
            if self.server.lookup_fn is None:
                raise ValueError("this service does no lookups")
            return json.dumps(self.server.lookup_fn(str(request["lookup"])), default=str).encode()
        return self.server.query_fn(str(request["sql"]), str(request.get("format", "TSVWithNames")))


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves queries on `<data dir>/flowenricher.sock` in a background thread;
    `requests` are the ``op`` requests it answers besides ``sql`` and ``lookup``."""

    daemon_threads = True

    def __init__(self, data_dir: str, query_fn: QueryFn, lookup_fn: LookupFn | None = None,
                 requests: Mapping[str, RequestHandler] | None = None) -> None:
        path = socket_path(data_dir)
        if path.exists():
            path.unlink()  # left by a process that died; the store lock proved we own the dir
        super().__init__(str(path), _Handler)
        os.chmod(path, 0o600)
        self.query_fn = query_fn
        self.lookup_fn = lookup_fn
        self.requests: Mapping[str, RequestHandler] = dict(requests or {})
        self._thread = threading.Thread(target=self.serve_forever, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        path = Path(str(self.server_address))
        if path.exists():
            path.unlink()


# --------------------------------------------------------------------------- the collector's side


class CollectorParts(Protocol):
    """What the requests act on (service.Runtime has these); None: not running here."""

    @property
    def blackholes(self) -> object | None: ...

    @property
    def exporter_counters(self) -> Callable[[], Mapping[str, Mapping[str, int]]] | None: ...

    @property
    def interfaces(self) -> Callable[[], Mapping[str, Mapping[int, str]]] | None: ...

    @property
    def anomaly(self) -> Any:
        """The anomaly scoring (detect/anomaly.AnomalyScoring) when ``anomaly.enabled``."""

    @property
    def reload_config(self) -> Callable[[], list[str]] | None:
        """Re-read the config file and apply what can change live; the keys that wait
        for a restart.  Raises ConfigError (nothing applied) when the file is invalid."""

    @property
    def reload_rules(self) -> Callable[[], int] | None:
        """Re-read the rules file into the detection engine; the number of rules.
        Raises ConfigError (the running rules stay) when the file is invalid."""

    @property
    def config_path(self) -> Path | None:
        """The config file the collector started with (None: built-in defaults)."""

    @property
    def rules_path(self) -> Path | None:
        """The rules file the detection engine reads (None: no detection)."""


def blackhole_dict(bh: Blackhole) -> dict[str, Any]:
    """A blackhole as it crosses the socket (JSON); :func:`blackhole_from` reads it back."""
    return dataclasses.asdict(bh)


def blackhole_from(data: Mapping[str, Any]) -> Blackhole:
    """The Blackhole of :func:`blackhole_dict`'s JSON (communities back to a tuple)."""
    from .blackhole.state import Blackhole

    fields = {f.name for f in dataclasses.fields(Blackhole)}
    values = {k: v for k, v in data.items() if k in fields}
    values["communities"] = tuple(values.get("communities") or ())
    return Blackhole(**values)


def collector_requests(parts: CollectorParts, registry: CollectorRegistry | None = None) -> dict[str, RequestHandler]:
    """The ``op`` requests of a collector: its blackhole manager, decoder counters,
    interface names, live reloads of its config and rules files, and its Prometheus
    metrics (`registry`).  A request for a part this collector does not run answers a
    failure that says so."""
    from prometheus_client import generate_latest

    from .blackhole.manager import BlackholeManager
    from .blackhole.state import Blackhole, BlackholeRow

    def manager() -> BlackholeManager:
        if not isinstance(parts.blackholes, BlackholeManager):
            raise FlowEnricherError("this collector runs no blackhole manager")
        return parts.blackholes

    def announce(req: dict[str, Any]) -> dict[str, Any]:
        bh = manager()
        duration = req.get("duration_s")
        row = bh.announce(str(req["prefix"]), _text(req.get("next_hop")), _texts(req.get("communities")),
                          float(duration) if duration is not None else None, source=str(req.get("source", "api")),
                          rule=str(req.get("rule", "")), evidence=_object(req.get("evidence")),
                          role=str(req.get("role", "manual")))
        return {"blackhole": blackhole_dict(row), "dry_run": bh.policy.settings.dry_run}

    def withdraw(req: dict[str, Any]) -> dict[str, Any]:
        bh = manager()
        row = bh.withdraw(str(req["prefix"]), reason=str(req.get("reason", "api"))[:64])
        if row is not None:  # the row as withdrawn, with its withdrawal time
            with bh.state.session() as session:
                stored = session.get(BlackholeRow, row.id)
                row = Blackhole.of(stored) if stored is not None else row
        return {"blackhole": blackhole_dict(row) if row is not None else None}

    def active(_: dict[str, Any]) -> dict[str, Any]:
        return {"blackholes": [blackhole_dict(b) for b in manager().active()]}

    def history(req: dict[str, Any]) -> dict[str, Any]:
        limit = int(req.get("limit", 100))
        if limit < 1:
            raise ValueError(f"limit {limit}: must be at least 1")
        return {"blackholes": [blackhole_dict(b) for b in manager().state.history(limit)]}

    def counters(_: dict[str, Any]) -> dict[str, dict[str, int]]:
        read = parts.exporter_counters
        return {k: dict(v) for k, v in read().items()} if read is not None else {}

    def interfaces(_: dict[str, Any]) -> dict[str, Any]:
        read = parts.interfaces
        names = {k: {str(i): n for i, n in v.items()} for k, v in read().items()} if read is not None else None
        return {"interfaces": names}

    def apply_config(req: dict[str, Any]) -> dict[str, Any]:
        _same_file(parts.config_path, req.get("path"), "config", "--config")
        if parts.reload_config is None:
            raise FlowEnricherError("this collector cannot apply a config live")
        return {"applied": True, "at_next_start": parts.reload_config()}

    def reload_rules(req: dict[str, Any]) -> dict[str, Any]:
        _same_file(parts.rules_path, req.get("path"), "rules", "--rules")
        if parts.reload_rules is None:
            raise FlowEnricherError("this collector runs no detection engine")
        return {"accepted": True, "rules": parts.reload_rules()}

    def metrics(_: dict[str, Any]) -> dict[str, str]:
        if registry is None:
            raise FlowEnricherError("this collector keeps no metrics registry")
        return {"text": generate_latest(registry).decode()}

    def scoring() -> Any:
        if parts.anomaly is None:
            raise FlowEnricherError("anomaly scoring is not enabled")
        return parts.anomaly

    def anomaly_score(req: dict[str, Any]) -> dict[str, Any]:
        model = scoring().model
        if model is None:
            raise FlowEnricherError("no anomaly model is loaded yet (the baseline has not trained one)")
        vectors = req.get("vectors")
        if not isinstance(vectors, list):
            raise ValueError("vectors: expected a list of vectors")
        scores = model.score(vectors).tolist() if vectors else []
        return {"scores": scores, "threshold": model.threshold, "trained_at": model.trained_at}

    def anomaly_status(_: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = scoring().status()
        return answer

    def status(_: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "config": str(parts.config_path) if parts.config_path else None,
                "rules": str(parts.rules_path) if parts.rules_path else None}

    return {
        "blackhole-announce": announce, "blackhole-withdraw": withdraw, "blackhole-active": active,
        "blackhole-history": history, "exporter-counters": counters, "interface-names": interfaces,
        "apply-config": apply_config, "reload-rules": reload_rules, "metrics": metrics, "status": status,
        "anomaly-score": anomaly_score, "anomaly-status": anomaly_status,
    }


def _same_file(mine: Path | None, theirs: object, what: str, flag: str) -> None:
    """Refuse to reload when the caller wrote another file than the one this collector
    reads: the change would be saved where nothing reads it."""
    if mine is None:
        raise FlowEnricherError(f"this collector runs without a {what} file ({flag}); nothing to reload")
    if theirs is None:
        return
    try:
        same = os.path.samefile(mine, str(theirs))
    except OSError:
        same = os.path.abspath(mine) == os.path.abspath(str(theirs))
    if not same:
        raise FlowEnricherError(f"this collector reads its {what} from {mine}, not {theirs}")


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _texts(value: object) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError(f"communities: expected a list, got {type(value).__name__}")
    return [str(v) for v in value]


def _object(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"evidence: expected an object, got {type(value).__name__}")
    return value


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
