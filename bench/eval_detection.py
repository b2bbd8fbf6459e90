"""Detection quality on labelled generated traffic: the shipped rules alone, the anomaly
score alone, and both together, per attack type (docs/detection-quality.md).

    python bench/eval_detection.py [--seeds 101-120 | --tuning [1-10] | --seed 1] [--jobs N] [--json out.json]
                                   [--fps 500] [--warmup 900] [--minutes 20] [--contamination 0.005]
                                   [--tree-samples 1024] [--window 60] [--history-windows 10] [--threshold T]

With --seed, one network and its full tables; otherwise every seed of the test set
(bench/seed_stats.py: seeds 101-120, or --seeds) runs in --jobs worker processes and the
report gives, per attack kind and per benign population, the mean, 5th percentile and
95% confidence interval over seeds.  The tuning seeds (1-10), on which settings were
chosen, are left out of a test report; --tuning reports them alone.

Every seed also trains a reference model on the baseline with the 15 features of issue 6
(all but the history ones; --reference-features), with the same settings, and scores the
same windows with it: "reference" in the figures is the score as it was before issue 20.

The traffic is the generator's `evaluation` scenario: the normal model of a small AS,
every labelled benign mix (web, DNS, NTP, backup, video, speed test, gaming), the hard
benign cases (SYN-only clients behind firewalls, NAT and CGNAT addresses, monitoring
probes, crawlers), every attack of the `attacks` scenario (horizontal, vertical and slow scans, SSH and RDP brute
force, SYN and UDP floods) and five low-and-slow scanners under every shipped rule.  It
runs as the service runs it: each second's batch goes to the anomaly scoring and to the
detection engine (the shipped detection.yml), both ticked; detections keep their
sources out of the baseline.  After `--warmup` seconds the model is trained on that
baseline (attacks the rules missed included: nothing is cleaned by hand) with the
shipped settings (contamination 0.005: the threshold is the baseline's 99.5th
percentile; 1,024 source-windows per tree); then the rules get one more rule using the
score, and `--minutes` minutes are measured.

The unit is the source-window (one source in one anomaly window of 60 s).  A source-
window is positive when the source is an attacker of the kind named; a method flags it:
- rules: a detection keyed on that source covers the window (from its first flow to its
  detection plus the rule's cooldown, during which the rule stays quiet on purpose);
- score: its score is at least the threshold;
- rules + score: the rules, plus the rule ``ml_scan`` (tcp, at least 3 flows, SYN ratio
  0.8, min_ml_score at the threshold) - how an operator uses the score in a rule;
- either: rules or score.
Precision of a type counts the benign source-windows the method flags as its false
positives (the question an operator asks: of the alerts for this kind, how many are
real); floods are also reported per victim-window, since their rules key on the victim.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from seed_stats import TEST_SEEDS, TUNING_SEEDS, parse_seeds, reportable, summarise

from appliance.flowenricher.batch import addr_to_str
from appliance.flowenricher.config import AnomalySettings
from appliance.flowenricher.detect import Detection, DetectionEngine, Rule, load_rule_set, parse_rule_set
from appliance.flowenricher.detect.anomaly import AnomalyModel, AnomalyScoring
from appliance.flowenricher.detect.features import FEATURE_NAMES
from appliance.flowenricher.generate.traffic import TrafficGenerator

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "appliance" / "flowenricher" / "examples" / "detection.yml"
T0 = 1_800_000_000
WINDOW = 60
UNDER_RULES = ("low_and_slow_scan", "slow_horizontal_scan")
# Loud attacks come and go; during the warm-up they are silent, so the baseline is not a
# flood of spoofed sources.  The slow scanners (which no rule stops) run throughout and
# are in the baseline the model learns from, as they would be in a network.
FLOODS = ("syn_flood", "udp_flood")  # keyed on the victim: measured per victim-window
EPISODIC = ("horizontal_scan", "vertical_scan", "ssh_bruteforce", "rdp_bruteforce", "syn_flood", "udp_flood")


class Keep:
    name = "alert"

    def __init__(self) -> None:
        self.detections: list[tuple[Rule, Detection]] = []

    def handle(self, rule: Rule, detection: Detection) -> None:
        self.detections.append((rule, detection))

    def close(self) -> None:
        return None


@dataclass
class Counts:
    tp: int = 0
    fn: int = 0

    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")


def ml_rule(threshold: float) -> dict[str, Any]:
    return {"name": "ml_scan", "proto": "tcp", "min_flows": 3, "min_syn_ratio": 0.8, "min_ml_score": round(threshold, 4),
            "time_window": "60s", "action": "alert"}


Spans = dict[str, list[tuple[float, float]]]


def covered(detections: list[tuple[Rule, Detection]], key: str, names: set[str] | None = None) -> Spans:
    """Address -> the time spans its detections cover (first flow .. detection + cooldown)."""
    spans: Spans = defaultdict(list)
    for rule, d in detections:
        if d.key == key and (names is None or rule.name in names):
            spans[d.address].append((d.first_seen, d.detected_at + rule.cooldown))
    return spans


def flagged(spans: Spans, address: str, start: int, window: int) -> bool:
    return any(lo < start + window and hi >= start for lo, hi in spans.get(address, ()))


def f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The evaluation on the network of one seed: every figure of the report, as JSON."""
    began = time.perf_counter()
    gen = TrafficGenerator(scenario="evaluation", seed=seed)
    truths = gen.truths
    kind_of: dict[str, str] = {}
    for truth in truths:
        for address in truth.attackers:
            kind_of.setdefault(address, truth.kind if not truth.benign else f"benign:{truth.kind}")
    victims = {v: t.kind for t in truths if t.kind in ("syn_flood", "udp_flood") for v in t.victims}
    kinds = sorted({t.kind for t in truths if not t.benign and t.kind not in FLOODS})
    rate_of = {t.attackers[0]: float(t.params.get("rate_per_s", 0)) for t in truths if t.kind in UNDER_RULES}
    silenced = {id(a): (a.share, a.rate_per_s) for a in gen.attacks if a.kind in EPISODIC}
    for attack in gen.attacks:
        if id(attack) in silenced:
            attack.share = attack.rate_per_s = 0.0

    with tempfile.TemporaryDirectory() as tmp:
        settings = AnomalySettings(enabled=True, window_s=args.window, model_path=Path(tmp) / "model.joblib",
                                   contamination=args.contamination, tree_samples=args.tree_samples,
                                   history_windows=args.history_windows,
                                   train_interval_s=1e12, min_baseline=10**9, store_scores=False)
        scoring = AnomalyScoring(settings, seed=seed, clock=lambda: float(T0))
        shipped = load_rule_set(SHIPPED, max_window_s=600)
        sink = Keep()
        engine = DetectionEngine(shipped, [sink], CollectorRegistry(), scorer=scoring.score_addresses,
                                 listeners=[scoring.note_detection])
        scored: list[tuple[Any, Any]] = []
        end = T0 + args.warmup + 60 * args.minutes
        threshold = 0.0
        reference: AnomalyModel | None = None
        names = FEATURE_NAMES[:args.reference_features]
        for at in range(T0, end):
            batch = gen.batch(args.fps, at * 1000, 1000).to_flow_batch()
            batch["received_at"] = np.full(batch.n, at, dtype=np.uint32)
            scoring.process(batch)
            engine.process(batch)
            closed = scoring.advance(at + 1)
            engine.tick(at + 1)
            if at + 1 == T0 + args.warmup:
                model = scoring.train_now()
                threshold = model.threshold if args.threshold is None else args.threshold
                reference = AnomalyModel.train(scoring.baseline()[:, :len(names)], feature_names=names,
                                               contamination=args.contamination, trees=settings.trees,
                                               max_samples=args.tree_samples, seed=seed)
                for attack in gen.attacks:
                    if id(attack) in silenced:
                        attack.share, attack.rate_per_s = silenced[id(attack)]
                engine.reload(shipped + parse_rule_set([ml_rule(threshold)]))
                print(f"trained on {model.samples} source-windows; suggested {model.threshold:.4f}; "
                      f"threshold {threshold:.4f}", file=sys.stderr)
            elif at + 1 > T0 + args.warmup:
                scored += [item for item in closed if item[0].start >= T0 + args.warmup]
        scoring.close()
    simulated = time.perf_counter() - began
    assert reference is not None

    rules_only = [(r, d) for r, d in sink.detections if r.name != "ml_scan"]
    spans = {"rules": covered(rules_only, "src"), "ml_rule": covered(sink.detections, "src", {"ml_scan"})}
    dst_spans = covered(rules_only, "dst")
    methods = ("rules", "score", "rules + score", "either", "reference")
    positives: dict[str, dict[str, Counts]] = {m: defaultdict(Counts) for m in methods}
    benign_flags: dict[str, int] = dict.fromkeys(methods, 0)
    benign_by_kind: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(("windows", *methods), 0))
    benign_total = 0
    benign_scores: list[float] = []
    under_rules = Counts()
    under_reference = Counts()
    under_by_rate: dict[float, Counts] = defaultdict(Counts)
    flood_sources: dict[str, Counts] = defaultdict(Counts)
    scores_by_kind: dict[str, list[float]] = defaultdict(list)
    flood_windows: dict[str, Counts] = defaultdict(Counts)
    for window, scores in scored:
        start = int(window.start)
        reference_scores = reference.score(window.vectors[:, :len(names)])
        for i, row in enumerate(window.sources):
            address = addr_to_str(row)
            kind = kind_of.get(address, "normal")
            score = float(scores[i])
            by_score = score >= threshold
            by_rules = flagged(spans["rules"], address, start, args.window)
            by_ml_rule = flagged(spans["ml_rule"], address, start, args.window)
            marks = {"rules": by_rules, "score": by_score, "rules + score": by_rules or by_ml_rule,
                     "either": by_rules or by_score, "reference": bool(reference_scores[i] >= reference.threshold)}
            if kind == "normal" or kind.startswith("benign:"):
                benign_total += 1
                benign_scores.append(score)
                for method, mark in marks.items():
                    benign_flags[method] += mark
                entry = benign_by_kind[kind.removeprefix("benign:")]
                entry["windows"] += 1
                for method, mark in marks.items():
                    entry[method] += mark
                continue
            scores_by_kind[kind].append(score)
            if kind in FLOODS:
                flood_sources[kind].tp += by_score
                flood_sources[kind].fn += not by_score
                continue
            for method, mark in marks.items():
                counts = positives[method][kind]
                if mark:
                    counts.tp += 1
                else:
                    counts.fn += 1
            if kind in UNDER_RULES and not by_rules:
                under_rules.tp += by_score
                under_rules.fn += not by_score
                under_reference.tp += marks["reference"]
                under_reference.fn += not marks["reference"]
                rate = under_by_rate[rate_of[address]]
                rate.tp += by_score
                rate.fn += not by_score
        for victim, kind in victims.items():
            counts = flood_windows[kind]
            if flagged(dst_spans, victim, start, args.window):
                counts.tp += 1
            else:
                counts.fn += 1
    false_dst = sum(1 for address in dst_spans if address not in victims)

    table: dict[str, dict[str, dict[str, float]]] = {}
    for method in methods:
        table[method] = {}
        for kind in kinds:
            found = positives[method].get(kind)
            if found is None:
                continue
            precision = found.tp / (found.tp + benign_flags[method]) if found.tp + benign_flags[method] else 0.0
            recall = found.recall()
            table[method][kind] = {"precision": precision, "recall": recall, "f1": f1(precision, recall),
                                   "positives": found.tp + found.fn}
    macro = {m: float(np.mean([v["f1"] for v in table[m].values()])) for m in methods}
    ordered = np.sort(np.array(benign_scores))
    # ROC AUC of the score per kind: the chance that one of its source-windows outscores a
    # benign one (ties half), independent of how rare attackers are among sources.
    auc = {k: float(np.mean((np.searchsorted(ordered, v, "left") + np.searchsorted(ordered, v, "right")) / 2
                            / len(ordered))) for k, v in sorted(scores_by_kind.items())}
    return {
        "fps": args.fps, "warmup_s": args.warmup, "minutes": args.minutes, "seed": seed,
        "threshold": threshold, "reference_threshold": reference.threshold,
        "reference_features": len(names), "benign_source_windows": benign_total,
        "benign_flagged_share": {m: benign_flags[m] / benign_total for m in methods},
        "under_rules_recall_by_score": under_rules.recall(), "under_rules_windows": under_rules.tp + under_rules.fn,
        "under_rules_recall_by_reference": under_reference.recall(),
        "under_rules_by_rate": {str(r): {"flagged": c.tp, "windows": c.tp + c.fn} for r, c in sorted(under_by_rate.items())},
        "flood_source_windows_flagged_by_score": {k: {"flagged": c.tp, "windows": c.tp + c.fn}
                                                  for k, c in flood_sources.items()},
        "table": table, "macro_f1": macro,
        "benign_by_kind": {k: dict(v) for k, v in sorted(benign_by_kind.items())},
        "score_median_by_kind": {k: float(np.median(v)) for k, v in sorted(scores_by_kind.items())},
        "score_auc_by_kind": auc,
        "floods_per_victim_window_rules_recall": {k: c.recall() for k, c in flood_windows.items()},
        "false_dst_detections": false_dst, "seconds": simulated,
        "under_by_rate": {str(r): [c.tp, c.tp + c.fn] for r, c in sorted(under_by_rate.items())},
        "flood_sources": {k: [c.tp, c.tp + c.fn] for k, c in flood_sources.items()},
        "flood_windows": {k: c.recall() for k, c in flood_windows.items()},
    }


def print_seed(result: Mapping[str, Any]) -> None:
    """The tables of one seed (--seed)."""
    methods = [m for m in result["table"] if result["table"][m]]
    table, macro, auc = result["table"], result["macro_f1"], result["score_auc_by_kind"]
    kinds = sorted(table["rules"])
    under = result["under_rules_windows"]
    print(f"seed {result['seed']}: threshold {result['threshold']:.4f} (reference {result['reference_threshold']:.4f}); "
          f"{result['benign_source_windows']} benign source-windows; {result['minutes']} min measured at "
          f"{result['fps']} flows/s (run took {result['seconds']:.0f} s)")
    print("\nbenign source-windows flagged: " + ", ".join(
        f"{m} {100 * s:.2f}%" for m, s in result["benign_flagged_share"].items()))
    print(f"slow scans under the rules flagged by the score: {100 * result['under_rules_recall_by_score']:.1f}% "
          f"(reference {100 * result['under_rules_recall_by_reference']:.1f}%) of {under} source-windows; "
          "by probe rate: " + ", ".join(f"{r}/s {c[0]}/{c[1]}" for r, c in result["under_by_rate"].items()))
    print("\n| attack | positives | " + " | ".join(f"{m} P / R / F1" for m in methods) + " |")
    print("|---|---:|" + "---:|" * len(methods))
    for kind in kinds:
        cells = []
        for method in methods:
            v = table[method].get(kind)
            cells.append("n/a" if v is None else f"{v['precision']:.2f} / {v['recall']:.2f} / {v['f1']:.2f}")
        n = int(table["rules"][kind]["positives"]) if kind in table["rules"] else 0
        print(f"| {kind} | {n} | " + " | ".join(cells) + " |")
    print("| macro F1 (these kinds) | | " + " | ".join(f"{macro[m]:.2f}" for m in methods) + " |")
    print("\nbenign kinds, flagged by the score (reference; rules + score): " + ", ".join(
        f"{k} {v['score']}/{v['windows']} ({v['reference']}; {v['rules + score']})"
        for k, v in result["benign_by_kind"].items()))
    print("median score by attack: " + ", ".join(f"{k} {v:.3f}" for k, v in result["score_median_by_kind"].items()))
    print("score ROC AUC against benign source-windows: " + ", ".join(f"{k} {v:.3f}" for k, v in auc.items()))
    print("floods per victim-window, rules recall: " + ", ".join(
        f"{k} {r:.2f}" for k, r in result["flood_windows"].items())
        + f"; detections of non-victims (key dst): {result['false_dst_detections']}")
    print("flood source-windows (spoofed sources) flagged by the score: " + ", ".join(
        f"{k} {c[0]}/{c[1]}" for k, c in result["flood_sources"].items()))


def seed_figures(result: Mapping[str, Any]) -> dict[str, float]:
    """The per-seed figures summarised over seeds, by name."""
    nan = float("nan")
    out = {"under rules: score": result["under_rules_recall_by_score"],
           "under rules: reference": result["under_rules_recall_by_reference"]}
    for method in ("score", "reference", "rules + score"):
        for kind, cell in result["table"][method].items():
            out[f"recall {kind}: {method}"] = cell["recall"]
        out[f"benign flagged: {method}"] = result["benign_flagged_share"][method]
        for kind, counts in result["benign_by_kind"].items():
            out[f"benign {kind}: {method}"] = counts[method] / counts["windows"] if counts["windows"] else nan
    return out


def summary_report(results: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Each per-seed figure over the seeds of `results`: n, mean, p5, 95% CI, min, max."""
    names: list[str] = []
    for result in results:
        names += [n for n in seed_figures(result) if n not in names]
    figures = [seed_figures(r) for r in results]
    return {name: summarise(f.get(name, float("nan")) for f in figures).as_dict() for name in names}


def print_summary(results: Sequence[Mapping[str, Any]], summary: Mapping[str, Mapping[str, float]],
                  label: str) -> None:
    seeds = [int(r["seed"]) for r in results]
    windows = [int(r["under_rules_windows"]) for r in results]
    print(f"{label}: {len(seeds)} seeds ({', '.join(map(str, seeds))}); slow-scan source-windows under the rules "
          f"{min(windows)}-{max(windows)} a seed, {sum(windows)} in all")

    def pct(value: float) -> str:
        return "-" if value != value else f"{100 * value:.1f}%"

    def row(name: str, key: str) -> None:
        s = summary.get(key)
        if s is None or not s["n"]:
            return
        print(f"| {name} | {int(s['n'])} | {pct(s['mean'])} | {pct(s['p5'])} | {pct(s['ci_low'])} to {pct(s['ci_high'])}"
              f" | {pct(s['min'])} | {pct(s['max'])} |")

    print("\n| recall | seeds | mean | 5th pct | 95% CI of the mean | min | max |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    row("slow scans under the rules, score", "under rules: score")
    row(f"slow scans under the rules, reference ({results[0]['reference_features']} features)", "under rules: reference")
    kinds = sorted({k for r in results for k in r["table"]["score"]})
    for method in ("score", "reference", "rules + score"):
        for kind in kinds:
            row(f"{kind}, {method}", f"recall {kind}: {method}")
    print("\n| benign source-windows flagged | seeds | mean | 5th pct | 95% CI of the mean | min | max |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    benign = sorted({k for r in results for k in r["benign_by_kind"]}, key=lambda k: (k != "normal", k))
    for method in ("score", "reference", "rules + score"):
        row(f"all benign, {method}", f"benign flagged: {method}")
    for method in ("score", "reference", "rules + score"):
        for kind in benign:
            row(f"{kind}, {method}", f"benign {kind}: {method}")


def _run(job: tuple[argparse.Namespace, int]) -> dict[str, Any]:
    args, seed = job
    result = run_seed(args, seed)
    print(f"seed {seed}: under the rules {100 * result['under_rules_recall_by_score']:.1f}% "
          f"(reference {100 * result['under_rules_recall_by_reference']:.1f}%) of {result['under_rules_windows']}; "
          f"benign {100 * result['benign_flagged_share']['score']:.2f}% "
          f"(reference {100 * result['benign_flagged_share']['reference']:.2f}%); {result['seconds']:.0f} s",
          file=sys.stderr, flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fps", type=int, default=500, help="flows per second of generated traffic")
    parser.add_argument("--warmup", type=int, default=900, help="seconds of traffic before the model is trained")
    parser.add_argument("--minutes", type=int, default=20, help="minutes measured after training")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--seed", type=int, help="one seed, with its full tables")
    which.add_argument("--seeds", type=parse_seeds, default=list(TEST_SEEDS),
                       help="seeds of the test report, e.g. 101-120 (tuning seeds among them are left out)")
    which.add_argument("--tuning", type=parse_seeds, nargs="?", const=list(TUNING_SEEDS), metavar="SEEDS",
                       help="run and report tuning seeds alone: all of them (1-10), or those given")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPUs)")
    parser.add_argument("--contamination", type=float, default=0.005,
                        help="the model's contamination: its threshold is this quantile of the baseline's scores")
    parser.add_argument("--tree-samples", type=int, default=1024)
    parser.add_argument("--window", type=int, default=WINDOW, help="anomaly window, seconds")
    parser.add_argument("--history-windows", type=int, default=10, help="windows syn_dst_ips_history counts over")
    parser.add_argument("--reference-features", type=int, default=15,
                        help="the reference model's features: the first N (15: issue 6's, before the history ones)")
    parser.add_argument("--threshold", type=float, help="min_ml_score to use (default: the model's suggested one)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    if args.seed is not None:
        result = run_seed(args, args.seed)
        print_seed(result)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    tuning = args.tuning is not None
    if tuning and not set(args.tuning) <= set(TUNING_SEEDS):
        parser.error(f"--tuning: {sorted(set(args.tuning) - set(TUNING_SEEDS))} are not tuning seeds")
    seeds = args.tuning if tuning else [s for s in args.seeds if s not in TUNING_SEEDS]
    if len(seeds) < len(args.seeds) and not tuning:
        print(f"left out tuning seeds: {sorted(set(args.seeds) - set(seeds))}", file=sys.stderr)
    began = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(_run, [(args, seed) for seed in seeds]))
    shown = reportable(results, report_tuning=tuning)
    summary = summary_report(shown)
    print_summary(shown, summary, "tuning set" if tuning else "test set")
    print(f"\n{len(seeds)} seeds in {time.perf_counter() - began:.0f} s with {args.jobs} worker(s)")
    if args.json:
        args.json.write_text(json.dumps({"seeds": [r["seed"] for r in shown], "summary": summary,
                                         "per_seed": shown}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
