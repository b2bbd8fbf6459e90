"""The detection engine: rules over sliding windows of the enriched flows, and the
actions of their detections (detections.log, ClickHouse, Slack, webhooks, blackholes).

`rules` types the validated rules (`rule_checks` refuses rules that contradict
themselves), `window` holds one rule's sliding-window state,
`engine` runs the rules over batches, `actions` and `outbox` deliver detections,
`watcher` reloads the rules file.
"""

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
