"""Settings of detection (``detection.*``) and anomaly scoring (``anomaly.*``): keys,
defaults, bounds and cross-field checks, written once.  The rules file's own checks are
in rule_checks.py."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, WithJsonSchema

from ..common.settings_base import Duration, FilePath, Section, Url, field_default, parse_duration, seconds_or_none

Problems = list[tuple[tuple[str | int, ...], str]]

class DetectionSettings(Section):
    """The detection engine: rules over a sliding window of recent flows, with alert and
    blackhole actions."""

    enabled: bool = Field(False, alias="enable_detection_engine", description="Run the detection engine.")
    rules_path: FilePath | None = Field(None, alias="rules_config", description="Rules file (detection.yml); `run "
                                        "--rules` overrides it.")
    flow_cache_max_window_s: Duration = Field(parse_duration("10m"), alias="flow_cache_max_window", description=(
        "The longest time_window a rule may have (rules asking for more are refused at load). Go duration syntax as "
        "in the original (60s, 1m30s) or whole seconds. The original defaulted to 10s; windows here are bounded by a "
        "key cap, not by keeping raw flows, so the default allows slow scans over 10 minutes."))
    debug: bool = Field(False, alias="debug_detection", description="Log each rule evaluation (verbose).")
    alerts_log: FilePath = Field(Path("detections.log"), description="File the alert action appends detections to, one JSON "
                                 "line each.")
    slack_webhook: Url | None = Field(None, description="Slack incoming-webhook URL for the slack action; null: the "
                                      "action logs that it has nowhere to send.")
    webhooks: tuple[Url, ...] = Field((), description="URLs the webhook action POSTs each detection to as JSON "
                                      "(retried with backoff, never blocking the engine).")
    max_keys_per_rule: int = Field(100000, ge=1, description="Keys (addresses) tracked per rule; beyond it the least "
                                   "active are evicted and counted.")
    samples_per_detection: int = Field(5, ge=0, description="Sample flows recorded with each detection.")


Contamination = Annotated[Literal["auto"] | float, WithJsonSchema(
    {"anyOf": [{"const": "auto"}, {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5}]})]


class AnomalySettings(Section):
    """Anomaly scoring: per-source feature vectors over tumbling windows, scored by an
    Isolation Forest (0 to 1) trained on a rolling baseline of source-windows without
    detections. Rules use the score with min_ml_score; scores are stored in the
    anomaly_scores table and attached to detections. Off by default."""

    enabled: bool = Field(False, description="Compute features, score sources and train the model (needs "
                          "detection.enable_detection_engine for rules to use the score).")
    window_s: Duration = Field(parse_duration("60s"), alias="window", description=(
        "Length of the tumbling windows a source's features are computed over (packets/s, distinct destinations, "
        "entropies ...). Longer windows see slower scans."))
    history_windows: int = Field(10, ge=1, le=60, description=(
        "Windows (this one and the ones before it) over which the features syn_dst_ips_history and "
        "syn_dst_share_history count a source's distinct destinations of connection attempts, and those per flow: "
        "a scanner at a few hosts a minute reaches dozens in ten windows, nearly one per flow, where a client "
        "retrying servers a firewall drops keeps the same few. docs/detection-quality.md measured them against "
        "the 15 features without them. 1: the window alone."))
    train_interval_s: Duration = Field(parse_duration("10m"), alias="train_interval", description=(
        "How often the model is retrained from the baseline (5 to 15 minutes keeps it close to the traffic), in a "
        "background thread; the new model is saved and swapped in without a restart."))
    model_path: FilePath | None = Field(None, description=(
        "The model file (joblib: the forest plus its feature names, format and scikit-learn versions), written "
        "atomically after each training and read again when it changes on disk; null: "
        "<storage.path>/anomaly-model.joblib. A missing or corrupt file turns scoring off (one log line) until a model "
        "is trained; rules keep running."))
    contamination: Contamination = Field(0.005, description=(
        "Expected share of anomalies in the baseline: the model's suggested min_ml_score (shown with the model, GET "
        "/api/v1/anomaly/model, and logged after each training) is this quantile from the top of the baseline's "
        "scores, so about this share of ordinary source-windows score above it. \"auto\" is the Isolation Forest "
        "paper's fixed 0.5. docs/detection-quality.md measured 0.005 (0.57-0.70% of benign source-windows flagged on 20 "
        "test networks)."))
    min_baseline: int = Field(1000, ge=2, description="Source-windows the baseline must hold before the first "
                              "training.")
    baseline_size: int = Field(100000, ge=2, description="Source-windows kept for training (the newest; a ring "
                               "buffer). 100000 at 16 features is about 13 MB.")
    trees: int = Field(100, ge=1, le=1000, description="Trees of the forest.")
    tree_samples: int = Field(1024, ge=16, le=100000, description=(
        "Source-windows each tree is grown on (drawn from the baseline). 1024 rather than the usual 256: "
        "docs/detection-quality.md measured more slow scans caught at the same false-positive rate, at a cost of two "
        "more levels per tree when scoring."))
    min_flows: int = Field(1, ge=1, description="Sources with fewer flows in a window are neither scored nor used for "
                           "training.")
    store_scores: bool = Field(True, description="Insert scored source-windows into the anomaly_scores table (for "
                               "dashboards), those scoring at least store_min_score.")
    store_min_score: float = Field(0.6, ge=0, le=1, description=(
        "Least score of a source-window to be stored: 0 stores every scored source (tens of thousands a minute on a "
        "busy network); the default keeps about the top 3% of ordinary source-windows and every one a rule could act "
        "on."))


def detection_problems(detection: Mapping[str, Any]) -> Problems:
    """Where detections are POSTed: a URL the notifier can send to (actions.py's rule)."""
    from .actions import url_problem  # actions reads the settings: imported late

    urls: list[tuple[tuple[str | int, ...], object]] = [(("slack_webhook",), detection.get("slack_webhook"))]
    hooks = detection.get("webhooks")
    urls += [(("webhooks", index), url) for index, url in enumerate(hooks if isinstance(hooks, list) else [])]
    problems: Problems = []
    for path, url in urls:
        # A URL without http(s):// is the schema's to report; this is the rest of the rule.
        problem = url_problem(url) if isinstance(url, str) and url.startswith(("http://", "https://")) else None
        if problem is not None:
            problems.append((path, problem))
    return problems


def anomaly_problems(anomaly: Mapping[str, Any]) -> Problems:
    """Windows of whole seconds; training no more often than a minute."""
    problems: Problems = []
    window = seconds_or_none(anomaly.get("window", field_default(AnomalySettings, "window")))
    if window is not None and (window < 1 or window != int(window)):
        problems.append((("window",), "must be whole seconds, at least 1s"))
    interval = seconds_or_none(anomaly.get("train_interval", field_default(AnomalySettings, "train_interval")))
    if interval is not None and interval < 60:
        problems.append((("train_interval",), "must be at least 1m (each training reads the whole baseline)"))
    return problems
