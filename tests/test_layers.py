"""The layers of docs/architecture.md, checked on the source: every module's imports are
read with `ast` (those inside functions and under TYPE_CHECKING too: a late import is
still a dependency), and the rules below fail with the offending imports named.

Also the collector interface (collector_api.py): both implementations have every
operation, and each operation gives the same answer over a real control socket as called
in the collector's process.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import shutil
import tempfile
from collections.abc import Iterator, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter
from support.api import SAFETY
from support.recording_gobgp import RecordingGoBGP

from appliance.flowenricher.blackhole.manager import BlackholeManager, Defaults
from appliance.flowenricher.blackhole.safety import SafetyPolicy
from appliance.flowenricher.blackhole.state import StateDB
from appliance.flowenricher.collector_api import OPERATIONS, REQUIRED, Collector
from appliance.flowenricher.collector_local import LocalCollector
from appliance.flowenricher.control import ControlServer, SocketCollector, call
from appliance.flowenricher.errors import FlowEnricherError
from appliance.flowenricher.service import Runtime

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "appliance" / "flowenricher"
CORE_NAME = "appliance.flowenricher"

@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module (or module.name for `from package import name`)
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[Import]:
    """Every import in `path`, relative ones resolved to absolute names."""
    module = _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            # `from package import name` may name a module of the package: keep both levels.
            found += [Import(module, f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return found


def core_imports() -> list[Import]:
    return [imp for path in sorted(CORE.rglob("*.py")) if "_api" not in path.parts for imp in imports_of(path)]


def unit(name: str) -> str | None:
    """The top-level part of appliance/flowenricher a dotted name belongs to (a
    subpackage or a module), or None outside the core."""
    parts = name.split(".")
    if parts[:2] != ["appliance", "flowenricher"] or len(parts) < 3:
        return None
    return parts[2]


def is_subpackage(name: str) -> bool:
    return (CORE / name / "__init__.py").exists()


def exists(name: str) -> bool:
    """Whether a top-level name of the core is a module or subpackage (not a name
    imported from the package's __init__)."""
    return is_subpackage(name) or (CORE / f"{name}.py").exists()


def graph(imports: list[Import], skip: Set[tuple[str, str]] = frozenset()) -> dict[str, dict[str, list[Import]]]:
    """unit -> unit it imports -> the imports that make the edge."""
    edges: dict[str, dict[str, list[Import]]] = {}
    for imp in imports:
        src, dst = unit(imp.source), unit(imp.target)
        if src is None or dst is None or src == dst or not exists(dst) or (src, dst) in skip:
            continue
        edges.setdefault(src, {}).setdefault(dst, []).append(imp)
    return edges


def find_cycle(edges: dict[str, dict[str, list[Import]]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, {})):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def describe(cycle: list[str], edges: dict[str, dict[str, list[Import]]]) -> str:
    steps = [f"{a} -> {b} ({edges[a][b][0]})" for a, b in itertools.pairwise(cycle)]
    return "import cycle: " + " -> ".join(cycle) + "\n  " + "\n  ".join(steps)


# --------------------------------------------------------------------------- the checker itself


def test_the_checker_reads_relative_late_and_type_only_imports(tmp_path: Path) -> None:
    """The parser resolves what the rules below rely on, so they cannot pass by not seeing."""
    imports = {str(i.target) for i in imports_of(CORE / "wiring.py")}
    assert "appliance.flowenricher.bgp.rib.RibView" in imports  # relative, top of the module
    assert "appliance.flowenricher.detect.engine.DetectionEngine" in imports  # under TYPE_CHECKING
    assert "appliance.flowenricher.bgp.mirror.RibMirror" in imports  # inside a function
    looped: dict[str, dict[str, list[Import]]] = {"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": []}}
    assert find_cycle(looped) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": []}, "b": {}}) is None


# --------------------------------------------------------------------------- the layers


def test_core_does_not_import_the_api() -> None:
    """appliance.api builds on the core (and appliance/cli.py joins them); never the reverse."""
    offending = [str(i) for i in core_imports() if i.target.split(".")[:2] == ["appliance", "api"]
                 or i.target == "appliance.api"]
    assert offending == []


def test_bgp_does_not_import_enrich() -> None:
    """The RIB and its sources are bgp/'s; enrichment reads them, not the reverse."""
    offending = [str(i) for i in core_imports() if unit(i.source) == "bgp" and unit(i.target) == "enrich"]
    assert offending == []


def test_common_imports_only_common() -> None:
    """common/ is what every part uses, so it can use none of them."""
    offending = [str(i) for i in core_imports()
                 if unit(i.source) == "common" and unit(i.target) not in (None, "common")]
    assert offending == []


def test_subpackages_are_acyclic() -> None:
    edges = graph(core_imports())
    packages = {a: {b: why for b, why in targets.items() if is_subpackage(b)}
                for a, targets in edges.items() if is_subpackage(a)}
    cycle = find_cycle(packages)
    assert cycle is None, describe(cycle, packages)


def test_top_level_parts_are_acyclic() -> None:
    """Every subpackage and top-level module of the core, as one graph, has no cycle:
    config.py composes the parts' settings models and no part imports config.py back."""
    edges = graph(core_imports())
    cycle = find_cycle(edges)
    assert cycle is None, describe(cycle, edges)


# --------------------------------------------------------------------------- the collector interface


def _protocol_methods() -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in vars(Collector).items()
            if callable(member) and not name.startswith("_")}


def _parameters(signature: inspect.Signature) -> list[tuple[str, Any]]:
    return [(p.name, p.default) for p in signature.parameters.values() if p.name != "self"]


def test_operations_table_is_the_protocol() -> None:
    """One entry per protocol method, with the method's parameters in order and the same
    defaults: the server fills omitted fields from the table, the client sends by name."""
    methods = _protocol_methods()
    assert sorted(op.method for op in OPERATIONS.values()) == sorted(methods)
    for op in OPERATIONS.values():
        table = [(p.name, p.default) for p in op.params]
        declared = [(name, REQUIRED if default is inspect.Parameter.empty else default)
                    for name, default in _parameters(methods[op.method])]
        assert table == declared, op.name


@pytest.mark.parametrize("implementation", [LocalCollector, SocketCollector])
def test_both_implementations_have_every_operation(implementation: type) -> None:
    for name, signature in _protocol_methods().items():
        method = getattr(implementation, name, None)
        assert callable(method), f"{implementation.__name__} lacks {name}"
        if implementation is LocalCollector:  # the socket's methods take what the table says (above)
            assert _parameters(inspect.signature(method)) == _parameters(signature), name


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A data directory with a short path: a Unix socket's path is limited to 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="fe-layers-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Scoring:
    """The anomaly scoring's surface the operations use, with a model that scores by sum."""

    threshold: float = 0.5
    trained_at: float = 1_700_000_000.0

    @property
    def model(self) -> Scoring:
        return self

    def score(self, vectors: list[list[float]]) -> list[float]:
        return [sum(v) for v in vectors]

    def status(self) -> dict[str, Any]:
        return {"enabled": True, "model": "sum", "threshold": self.threshold}


@pytest.fixture
def both(short_dir: Path) -> Iterator[tuple[Collector, Collector, RecordingGoBGP]]:
    """A real collector's parts behind LocalCollector, served on a real control socket."""
    state = StateDB(f"sqlite:///{short_dir}/state.db")
    registry = CollectorRegistry()
    Counter("flowenricher_layers_test", "A metric both sides must show", registry=registry).inc(3)
    gobgp = RecordingGoBGP()
    manager = BlackholeManager(state, gobgp, SafetyPolicy(SAFETY), short_dir / "blackholes.txt", Defaults(), registry)
    config_path, rules_path = short_dir / "config.yaml", short_dir / "detection.yml"
    config_path.write_text("{}\n")
    rules_path.write_text("[]\n")
    runtime = Runtime(blackholes=manager, config_path=config_path, rules_path=rules_path, anomaly=Scoring(),
                      exporter_counters=lambda: {"10.0.0.1": {"datagrams": 7, "templates": 2}},
                      interfaces=lambda: {"10.0.0.1": {3: "ether1"}},
                      reload_config=lambda: ["collectors"], reload_rules=lambda: 4)
    local = LocalCollector(runtime, registry)
    server = ControlServer(str(short_dir), lambda _sql, _fmt: b"", None, local)
    server.start()
    try:
        yield local, SocketCollector(str(short_dir), 10.0).operations(), gobgp
    finally:
        server.stop()
        manager.close()
        state.close()


VOLATILE = {"id", "prefix", "created_at", "expires_at", "withdrawn_at", "confirmed_at", "verified_at", "waiting_since",
            "unconfirmed_at", "pid"}
"""Fields that differ between the two sides by design: each side blackholes its own
prefix (so both can be withdrawn), at its own time, in its own row."""


def _comparable(result: Any) -> Any:
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        result = dataclasses.asdict(result)
    if isinstance(result, list):
        return [_comparable(r) for r in result]
    if isinstance(result, dict):
        return {k: _comparable(v) for k, v in result.items() if k not in VOLATILE}
    return result


HERE, THERE = "149.202.68.236", "149.202.68.237"


def test_every_operation_answers_the_same_over_the_socket(
        both: tuple[Collector, Collector, RecordingGoBGP]) -> None:
    """Each operation in the collector's process and over its control socket, in an order
    that makes each answer non-trivial: equal answers, of the same types (the socket's
    are read back into the method's result)."""
    local, remote, gobgp = both
    announce = {"next_hop": "192.0.2.1", "communities": ["65535:666"], "evidence": {"requested_by": "ops"}}
    calls: list[tuple[str, tuple[Any, ...], tuple[Any, ...], dict[str, Any]]] = [
        ("blackhole_announce", (HERE,), (THERE,), announce),
        ("blackhole_active", (), (), {}),
        ("blackhole_withdraw", (f"{HERE}/32",), (f"{THERE}/32",), {"reason": "layers"}),
        ("blackhole_history", (), (), {"limit": 5}),
        ("exporter_counters", (), (), {}),
        ("interface_names", (), (), {}),
        ("apply_config", (), (), {}),
        ("reload_rules", (), (), {}),
        ("metrics", (), (), {}),
        ("status", (), (), {}),
        ("anomaly_score", ([[0.25, 0.5], [1.0, 2.0]],), ([[0.25, 0.5], [1.0, 2.0]],), {}),
        ("anomaly_status", (), (), {}),
    ]
    assert {name for name, *_ in calls} == set(_protocol_methods())
    answers = {}
    for name, args_here, args_there, kwargs in calls:
        here = getattr(local, name)(*args_here, **kwargs)
        there = getattr(remote, name)(*args_there, **kwargs)
        assert type(there) is type(here), name
        assert _comparable(there) == _comparable(here), name
        answers[name] = here, there
    announced = answers["blackhole_announce"]
    assert [a.blackhole.prefix for a in announced] == [f"{HERE}/32", f"{THERE}/32"]
    assert [a.blackhole.announced for a in announced] == [True, True]
    assert len(answers["blackhole_active"][0]) == 2  # both sides see both blackholes
    assert all(b is not None and b.withdrawn_at is not None for b in answers["blackhole_withdraw"])
    assert gobgp.held == {}
    assert answers["exporter_counters"][1] == {"10.0.0.1": {"datagrams": 7, "templates": 2}}
    assert answers["interface_names"][1] == {"10.0.0.1": {3: "ether1"}}  # ifindex back to an int
    assert answers["apply_config"][1] == ["collectors"] and answers["reload_rules"][1] == 4
    assert "flowenricher_layers_test_total 3.0" in answers["metrics"][1]
    assert answers["anomaly_score"][1].scores == [0.75, 3.0]
    assert answers["status"][1]["rules"].endswith("detection.yml")


def test_errors_cross_the_socket_as_raised(both: tuple[Collector, Collector, RecordingGoBGP]) -> None:
    """The collector's refusals raise the same error class (a failure: a FlowEnricherError)
    with the same words, whichever way it is asked."""
    for collector in both[:2]:
        with pytest.raises(ValueError, match="limit 0: must be at least 1"):
            collector.blackhole_history(0)
        with pytest.raises(FlowEnricherError, match=r"reads its rules from .*, not /elsewhere/detection\.yml"):
            collector.reload_rules("/elsewhere/detection.yml")


def test_a_request_without_a_required_field_is_a_bad_request(
        both: tuple[Collector, Collector, RecordingGoBGP], short_dir: Path) -> None:
    """On the wire (where a client other than SocketCollector may leave a field out)."""
    with pytest.raises(ValueError, match="blackhole-announce: prefix is required"):
        call(str(short_dir), "blackhole-announce", 10.0, next_hop="192.0.2.1")
    with pytest.raises(ValueError, match="anomaly-score: vectors is required"):
        call(str(short_dir), "anomaly-score", 10.0)
    assert both[2].ever == []
