"""The collector's operations (collector_api.Collector) performed on its own parts.

The API inside `flowenricher run` calls this object directly; the control socket serves
the same object to `flowenricher api` (control.ControlServer), so an operation behaves
the same whichever way it is reached.  A request for a part this collector does not run
(no blackhole manager, no detection, no anomaly scoring) raises a FlowEnricherError
that says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .blackhole.state import Blackhole, BlackholeRow
from .collector_api import Announced, AnomalyScores
from .errors import FlowEnricherError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .blackhole.manager import BlackholeManager


class CollectorParts(Protocol):
    """What the operations act on (service.Runtime has these); None: not running here."""

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


class LocalCollector:
    """collector_api.Collector over `parts`, in the collector's process; `registry` is
    the collector's Prometheus registry (for :meth:`metrics`)."""

    def __init__(self, parts: CollectorParts, registry: CollectorRegistry | None = None) -> None:
        self.parts = parts
        self.registry = registry

    def _manager(self) -> BlackholeManager:
        from .blackhole.manager import BlackholeManager

        if not isinstance(self.parts.blackholes, BlackholeManager):
            raise FlowEnricherError("this collector runs no blackhole manager")
        return self.parts.blackholes

    def blackhole_announce(self, prefix: str, next_hop: str | None = None, communities: list[str] | None = None,
                           duration_s: float | None = None, source: str = "api", rule: str = "",
                           evidence: dict[str, Any] | None = None, role: str = "manual") -> Announced:
        manager = self._manager()
        row = manager.announce(prefix, next_hop, communities, duration_s, source=source, rule=rule,
                               evidence=evidence, role=role)
        return Announced(row, manager.policy.settings.dry_run)

    def blackhole_withdraw(self, prefix: str, reason: str = "api") -> Blackhole | None:
        manager = self._manager()
        row = manager.withdraw(prefix, reason=reason[:64])
        if row is not None:  # the row as withdrawn, with its withdrawal time
            with manager.state.session() as session:
                stored = session.get(BlackholeRow, row.id)
                row = Blackhole.of(stored) if stored is not None else row
        return row

    def blackhole_active(self) -> list[Blackhole]:
        return self._manager().active()

    def blackhole_history(self, limit: int = 100) -> list[Blackhole]:
        if limit < 1:
            raise ValueError(f"limit {limit}: must be at least 1")
        return self._manager().state.history(limit)

    def exporter_counters(self) -> dict[str, dict[str, int]]:
        read = self.parts.exporter_counters
        return {k: dict(v) for k, v in read().items()} if read is not None else {}

    def interface_names(self) -> dict[str, dict[int, str]] | None:
        read = self.parts.interfaces
        return {k: dict(v) for k, v in read().items()} if read is not None else None

    def apply_config(self, path: str | None = None) -> list[str]:
        _same_file(self.parts.config_path, path, "config", "--config")
        if self.parts.reload_config is None:
            raise FlowEnricherError("this collector cannot apply a config live")
        return self.parts.reload_config()

    def reload_rules(self, path: str | None = None) -> int:
        _same_file(self.parts.rules_path, path, "rules", "--rules")
        if self.parts.reload_rules is None:
            raise FlowEnricherError("this collector runs no detection engine")
        return self.parts.reload_rules()

    def metrics(self) -> str:
        from prometheus_client import generate_latest

        if self.registry is None:
            raise FlowEnricherError("this collector keeps no metrics registry")
        return generate_latest(self.registry).decode()

    def status(self) -> dict[str, Any]:
        config, rules = self.parts.config_path, self.parts.rules_path
        return {"pid": os.getpid(), "config": str(config) if config else None, "rules": str(rules) if rules else None}

    def _scoring(self) -> Any:
        if self.parts.anomaly is None:
            raise FlowEnricherError("anomaly scoring is not enabled")
        return self.parts.anomaly

    def anomaly_score(self, vectors: list[list[float]]) -> AnomalyScores:
        model = self._scoring().model
        if model is None:
            raise FlowEnricherError("no anomaly model is loaded yet (the baseline has not trained one)")
        scores = [float(s) for s in model.score(vectors)] if vectors else []
        return AnomalyScores(scores, float(model.threshold), float(model.trained_at))

    def anomaly_status(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._scoring().status()
        return answer


def _same_file(mine: Path | None, theirs: str | None, what: str, flag: str) -> None:
    """Refuse to reload when the caller wrote another file than the one this collector
    reads: the change would be saved where nothing reads it."""
    if mine is None:
        raise FlowEnricherError(f"this collector runs without a {what} file ({flag}); nothing to reload")
    if theirs is None:
        return
    try:
        same = os.path.samefile(mine, theirs)
    except OSError:
        same = os.path.abspath(mine) == os.path.abspath(theirs)
    if not same:
        raise FlowEnricherError(f"this collector reads its {what} from {mine}, not {theirs}")
