"""A detection action for tests: keeps what the engine reports instead of alerting."""

from __future__ import annotations

from appliance.flowenricher.detect.detection import Detection
from appliance.flowenricher.detect.rules import Rule


class Collect:
    """The alert destination of tests: the engine's detections, in order."""

    name = "alert"

    def __init__(self) -> None:
        self.detections: list[Detection] = []

    def handle(self, rule: Rule, detection: Detection) -> None:
        self.detections.append(detection)

    def close(self) -> None:
        return None

    def keys(self) -> set[tuple[str, str, str]]:
        """(rule, key, address) of every detection."""
        return {(d.rule, d.key, d.address) for d in self.detections}

    def by_rule(self, rule: str) -> dict[str, Detection]:
        """The detections of `rule` by address (the latest of each)."""
        return {d.address: d for d in self.detections if d.rule == rule}
