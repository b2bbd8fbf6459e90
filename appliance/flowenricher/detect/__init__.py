"""The detection engine: rules over sliding windows of the enriched flows, and the
actions of their detections (detections.log, ClickHouse, Slack, webhooks, blackholes).

`rules` types the validated rules (`rule_checks` refuses rules that contradict
themselves), `window` holds one rule's sliding-window state,
`engine` runs the rules over batches, `actions` and `outbox` deliver detections,
`watcher` reloads the rules file.  The names below are loaded on first use, so that reading
the package's settings (settings.py, which config.py composes) does not import the
engine and its actions.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .actions import (
        AlertLog,
        BlackholeAction,
        BlackholeSink,
        ClickHouseDetections,
        SlackNotifier,
        WebhookNotifier,
        build_actions,
        insert_detections_sql,
    )
    from .detection import Detection
    from .engine import Action, AnomalyScorer, DetectionEngine
    from .outbox import DeliveryMetrics
    from .rules import Rule, load_rule_set, parse_rule_set
    from .watcher import RulesWatcher

_MODULE_OF = {
    "AlertLog": "actions",
    "BlackholeAction": "actions",
    "BlackholeSink": "actions",
    "ClickHouseDetections": "actions",
    "SlackNotifier": "actions",
    "WebhookNotifier": "actions",
    "build_actions": "actions",
    "insert_detections_sql": "actions",
    "Detection": "detection",
    "Action": "engine",
    "AnomalyScorer": "engine",
    "DetectionEngine": "engine",
    "DeliveryMetrics": "outbox",
    "Rule": "rules",
    "load_rule_set": "rules",
    "parse_rule_set": "rules",
    "RulesWatcher": "watcher",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "Action",
    "AlertLog",
    "AnomalyScorer",
    "BlackholeAction",
    "BlackholeSink",
    "ClickHouseDetections",
    "DeliveryMetrics",
    "Detection",
    "DetectionEngine",
    "Rule",
    "RulesWatcher",
    "SlackNotifier",
    "WebhookNotifier",
    "build_actions",
    "insert_detections_sql",
    "load_rule_set",
    "parse_rule_set",
]
