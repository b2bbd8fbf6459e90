"""What the control plane asks of the running collector, defined once.

The API reaches the collector two ways: inside `flowenricher run` it holds the
collector's parts (collector_local.LocalCollector), and as `flowenricher api` it asks
over the control socket (control.SocketCollector, served by control.ControlServer).
Both implement :class:`Collector`, and the socket's side of every operation (its name on
the wire, how its arguments and answer cross as JSON) is one entry of
:data:`OPERATIONS`, which the server dispatches from and the client is generated from.
A new capability is therefore a method of LocalCollector, a method here plus its entry,
and the API route that calls it; nothing else carries it.

The socket's two older requests, ``sql`` and ``lookup`` (used by `flowenricher sql` and
`lookup` too), keep their own form on the wire and are not operations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .blackhole.state import Blackhole


@dataclass(frozen=True)
class Announced:
    """The answer to an announcement: the blackhole, and whether the policy is a dry run
    (the API's 200 says so, and the API process keeps its copy of the policy in step)."""

    blackhole: Blackhole
    dry_run: bool


@dataclass(frozen=True)
class AnomalyScores:
    """Scores of feature vectors by the collector's model, with the model's threshold
    and training time (the scoring endpoint returns them with the scores)."""

    scores: list[float]
    threshold: float
    trained_at: float


class Collector(Protocol):
    """The operations the API needs from the collector.  Each raises what the collector
    raised: Refused (the blackhole safety policy), ConfigError (an invalid file),
    ValueError (a bad argument) or FlowEnricherError (a failure, or a part this collector
    does not run)."""

    def blackhole_announce(self, prefix: str, next_hop: str | None = None, communities: list[str] | None = None,
                           duration_s: float | None = None, source: str = "api", rule: str = "",
                           evidence: dict[str, Any] | None = None, role: str = "manual") -> Announced: ...

    def blackhole_withdraw(self, prefix: str, reason: str = "api") -> Blackhole | None:
        """The row as withdrawn (with its withdrawal time); None when `prefix` was not blackholed."""

    def blackhole_active(self) -> list[Blackhole]: ...

    def blackhole_history(self, limit: int = 100) -> list[Blackhole]: ...

    def exporter_counters(self) -> dict[str, dict[str, int]]:
        """Decoder counters per exporter address (datagrams, templates seen, drops ...)."""

    def interface_names(self) -> dict[str, dict[int, str]] | None:
        """SNMP interface names per exporter (ifindex -> name); None without SNMP."""

    def apply_config(self, path: str | None = None) -> list[str]:
        """Re-read the config file (refused when `path` names another one) and apply what
        can change live; the keys that wait for the next start."""

    def reload_rules(self, path: str | None = None) -> int:
        """Re-read the rules file into the detection engine; the number of rules."""

    def metrics(self) -> str:
        """The collector's Prometheus metrics, in the text exposition format."""

    def status(self) -> dict[str, Any]:
        """The collector's pid and the config and rules files it runs with."""

    def anomaly_score(self, vectors: list[list[float]]) -> AnomalyScores: ...

    def anomaly_status(self) -> dict[str, Any]: ...


# --------------------------------------------------------------------------- the wire


def blackhole_dict(bh: Blackhole) -> dict[str, Any]:
    """A blackhole as it crosses the socket (JSON); :func:`blackhole_from` reads it back."""
    return dataclasses.asdict(bh)


def blackhole_from(data: Mapping[str, Any]) -> Blackhole:
    """The Blackhole of :func:`blackhole_dict`'s JSON (communities back to a tuple)."""
    fields = {f.name for f in dataclasses.fields(Blackhole)}
    values = {k: v for k, v in data.items() if k in fields}
    values["communities"] = tuple(values.get("communities") or ())
    return Blackhole(**values)


REQUIRED: Any = object()
"""A :class:`Param`'s default when the request must give it (the method has no default)."""


@dataclass(frozen=True)
class Param:
    """One argument of an operation: the JSON field it travels in (the method's parameter
    of the same name), how the server reads it, and its value when the request omits it
    or sends null."""

    name: str
    read: Callable[[Any], Any]
    default: Any = REQUIRED


@dataclass(frozen=True)
class Operation:
    """One operation on the wire: ``{"op": name, <params>}`` answered with ``dump(result)``.

    `method` is the :class:`Collector` method that performs it; `load` turns the JSON
    answer back into that method's result on the client's side."""

    name: str
    method: str
    params: tuple[Param, ...] = ()
    dump: Callable[[Any], Any] = lambda result: result
    load: Callable[[Any], Any] = lambda answer: answer


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


def _vectors(value: object) -> list[list[float]]:
    if not isinstance(value, list):
        raise ValueError("vectors: expected a list of vectors")
    return [[float(x) for x in vector] for vector in value]


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _blackholes(rows: list[Blackhole]) -> dict[str, Any]:
    return {"blackholes": [blackhole_dict(b) for b in rows]}


def _blackholes_from(answer: Mapping[str, Any]) -> list[Blackhole]:
    return [blackhole_from(row) for row in answer["blackholes"]]


def _interfaces(names: Mapping[str, Mapping[int, str]] | None) -> dict[str, Any]:
    return {"interfaces": None if names is None else {k: {str(i): n for i, n in v.items()} for k, v in names.items()}}


def _interfaces_from(answer: Mapping[str, Any]) -> dict[str, dict[int, str]] | None:
    names = answer["interfaces"]
    if names is None:
        return None
    return {exporter: {int(index): str(name) for index, name in table.items()} for exporter, table in names.items()}


OPERATIONS: dict[str, Operation] = {op.name: op for op in (
    Operation("blackhole-announce", "blackhole_announce",
              (Param("prefix", str), Param("next_hop", _text, None), Param("communities", _texts, None),
               Param("duration_s", _optional_float, None), Param("source", str, "api"), Param("rule", str, ""),
               Param("evidence", _object, None), Param("role", str, "manual")),
              dump=lambda a: {"blackhole": blackhole_dict(a.blackhole), "dry_run": a.dry_run},
              load=lambda j: Announced(blackhole_from(j["blackhole"]), bool(j.get("dry_run", False)))),
    Operation("blackhole-withdraw", "blackhole_withdraw", (Param("prefix", str), Param("reason", str, "api")),
              dump=lambda b: {"blackhole": blackhole_dict(b) if b is not None else None},
              load=lambda j: blackhole_from(j["blackhole"]) if j.get("blackhole") is not None else None),
    Operation("blackhole-active", "blackhole_active", dump=_blackholes, load=_blackholes_from),
    Operation("blackhole-history", "blackhole_history", (Param("limit", int, 100),),
              dump=_blackholes, load=_blackholes_from),
    Operation("exporter-counters", "exporter_counters",
              dump=lambda c: {k: dict(v) for k, v in c.items()},
              load=lambda j: {str(k): {str(n): int(x) for n, x in v.items()} for k, v in j.items()}),
    Operation("interface-names", "interface_names", dump=_interfaces, load=_interfaces_from),
    Operation("apply-config", "apply_config", (Param("path", _text, None),),
              dump=lambda later: {"applied": True, "at_next_start": list(later)},
              load=lambda j: [str(k) for k in j.get("at_next_start") or ()]),
    Operation("reload-rules", "reload_rules", (Param("path", _text, None),),
              dump=lambda n: {"accepted": True, "rules": n}, load=lambda j: int(j["rules"])),
    Operation("metrics", "metrics", dump=lambda text: {"text": text}, load=lambda j: str(j["text"])),
    Operation("status", "status"),
    Operation("anomaly-score", "anomaly_score", (Param("vectors", _vectors),),
              dump=dataclasses.asdict,
              load=lambda j: AnomalyScores([float(s) for s in j["scores"]], float(j["threshold"]),
                                           float(j["trained_at"]))),
    Operation("anomaly-status", "anomaly_status"),
)}
"""Every :class:`Collector` operation by its name on the wire (tests/test_layers.py checks
that the table and the protocol list the same methods with the same parameters)."""


def arguments(op: Operation, request: Mapping[str, Any]) -> dict[str, Any]:
    """The method's keyword arguments from a request's fields (the server's side);
    ValueError (a bad request) when one it needs is missing."""
    values = {}
    for p in op.params:
        if request.get(p.name) is not None:
            values[p.name] = p.read(request[p.name])
        elif p.default is REQUIRED:
            raise ValueError(f"{op.name}: {p.name} is required")
        else:
            values[p.name] = p.default
    return values
