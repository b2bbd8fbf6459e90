"""Detection quality with real tools: nmap and hping3 in network namespaces, softflowd
exporting what the border router sees, `flowenricher run` with the shipped rules, a rule
using the score, and anomaly scoring trained by the service itself (docs/detection-quality.md).

    python bench/eval_real_tools.py [--window 10] [--background-fps 300] [--json out.json]

Needs root (network namespaces), nmap, hping3, softflowd, dnsmasq, curl: the attack lab of
tests/support/attack_lab.py.  About four minutes.

The run: `flowenricher generate --scenario normal` sends a small AS's background from a
second exporter for the whole run; a real client fetches web pages and asks DNS through
the router between the attacks.  Warm-up: the service trains its first model as soon as
its baseline holds `--min-baseline` source-windows, and retrains every minute; once a
model exists the rules file gets the `ml_scan` rule at the model's suggested threshold
(the rules watcher reloads it).  Then, each from a source address of its own: nmap
horizontal scan (port 22 of 100 hosts, -T5), nmap vertical scan (1,000 ports of one
host), a slow nmap scan (one probe a second to 60 hosts), a slower one (one probe every
4 s to 25 hosts), a hping3 SYN flood from random sources, a hping3 UDP flood from one
source.  The exporter is flushed every 3 s (the lab's quiet link holds packets otherwise).

Units as in bench/eval_detection.py: source-windows of `--window` seconds (every scored
source is stored: store_min_score 0), rules covering a source-window from a detection's
first flow to its detection plus cooldown; the spoofed SYN flood per victim-window.
Benign: every other source (the generated background, the client, the servers and the
scanned hosts answering).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support import flowenricher_argv  # noqa: E402
from support.attack_lab import (  # noqa: E402
    FLOODER,
    NMAP,
    SCANNER_H,
    SCANNER_V,
    UPLINK_IF,
    AttackLab,
    Collector,
    collector_config,
)
from support.attack_lab import unavailable_reason as lab_unavailable  # noqa: E402
from support.netns import TestNetwork, sweep_stale  # noqa: E402
from support.netns import unavailable_reason as netns_unavailable  # noqa: E402

from appliance.flowenricher.detect import load_rule_set  # noqa: E402
from appliance.flowenricher.detect.anomaly import AnomalyModel, ModelError  # noqa: E402

SHIPPED = REPO / "appliance" / "flowenricher" / "examples" / "detection.yml"
SLOW, SLOWER = "198.51.100.13", "198.51.100.14"
SYN_VICTIM = "84.54.49.30"
KIND_OF = {SCANNER_H: "horizontal_scan", SCANNER_V: "vertical_scan", SLOW: "slow_scan_1s",
           SLOWER: "slow_scan_4s", FLOODER: "udp_flood_one_source"}
UNDER_RULES = ("slow_scan_1s", "slow_scan_4s")


def ml_rule(threshold: float) -> str:
    return ("\n- name: ml_scan\n  proto: tcp\n  min_flows: 3\n  min_syn_ratio: 0.8\n"
            f"  min_ml_score: {threshold:.4f}\n  time_window: 60s\n  action: alert\n")


def nmap(lab: AttackLab, source: str, targets: list[str], ports: str, rate: float | None, scan: str = "sS") -> None:
    """nmap from `source`, flushing the exporter every 3 s while it runs."""
    pacing = ["--max-rate", f"{rate:g}"] if rate else ["-T5"]
    argv = [NMAP, f"-{scan}", "-Pn", "-n", *pacing, "--max-retries", "0", "-S", source, "-e", UPLINK_IF,
            "-p", ports, *targets]
    proc = lab.net.spawn(lab.attacker, argv, f"nmap-{source}-{int(time.time())}")
    while proc.alive():
        time.sleep(3)
        lab.flush()
    if proc.wait(10) != 0:
        raise RuntimeError(proc.describe())
    lab.flush()


def hosts(first: int, count: int) -> list[str]:
    return [f"84.54.49.{first + i}" for i in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=int, default=10, help="anomaly window, seconds")
    parser.add_argument("--background-fps", type=int, default=300)
    parser.add_argument("--min-baseline", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=90, help="seconds of background before the attacks")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/flowenricher-eval-real"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    for reason in (netns_unavailable(), lab_unavailable()):
        if reason:
            print(f"cannot run: {reason}", file=sys.stderr)
            return 2
    sweep_stale()
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ("data", "detections.log", "anomaly-model.joblib"):
        path = workdir / stale
        if path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
    rules_path = workdir / "detection.yml"
    rules_path.write_text(SHIPPED.read_text())
    model_path = workdir / "anomaly-model.joblib"
    total = args.warmup + 420
    with TestNetwork(workdir / "net") as net:
        lab = AttackLab(net, workdir / "lab").start()
        for address in (SLOW, SLOWER):
            lab.attacker.ip("addr", "add", f"{address}/24", "dev", UPLINK_IF)
        config = collector_config(workdir, port=lab.collector_port, rules=rules_path) + (
            f"anomaly:\n  enabled: true\n  window: {args.window}s\n  model_path: {json.dumps(str(model_path))}\n"
            f"  train_interval: 1m\n  min_baseline: {args.min_baseline}\n  store_min_score: 0\n")
        collector = Collector(lab, config, workdir)
        background = net.spawn(lab.coll, [*flowenricher_argv(), "generate", "--to", lab.collector_target, "--fps",
                                          str(args.background_fps), "--duration", str(total), "--protocol", "ipfix",
                                          "--scenario", "normal", "--seed", "5"], "background")
        began = time.time()
        lab.benign(duration=20, web_interval=0.5, dns_interval=0.5)
        model: AnomalyModel | None = None
        while model is None:
            if time.time() - began > args.warmup + 120:
                raise RuntimeError(f"no model after the warm-up:\n{collector.proc.describe(4000)}")
            time.sleep(2)
            try:
                model = AnomalyModel.load(model_path)
            except ModelError:
                model = None
        time.sleep(max(0.0, began + args.warmup - time.time()))
        model = AnomalyModel.load(model_path)  # the latest retraining
        threshold = model.threshold
        rules_path.write_text(SHIPPED.read_text() + ml_rule(threshold))
        time.sleep(3)  # the watcher reloads on its next tick
        measured_from = time.time()
        print(f"model trained on {model.samples} source-windows; threshold {threshold:.4f}", file=sys.stderr)
        truths = []
        nmap(lab, SCANNER_H, hosts(1, 100), "22", None)
        lab.benign(duration=10, web_interval=0.5, dns_interval=0.5)
        nmap(lab, SCANNER_V, ["84.54.49.7"], "1-1000", None, scan="sT")
        nmap(lab, SLOW, hosts(101, 60), "3389", 1.0)
        lab.benign(duration=10, web_interval=0.5, dns_interval=0.5)
        nmap(lab, SLOWER, hosts(161, 25), "445", 0.25)
        truths.append(lab.hping_flood(SYN_VICTIM, 80, proto="syn", count=3000, interval_us=200))
        lab.flush()
        truths.append(lab.hping_flood("84.54.49.31", 5353, proto="udp", count=3000, interval_us=200, source=FLOODER))
        lab.flush()
        lab.benign(duration=10, web_interval=0.5, dns_interval=0.5)
        lab.flush()
        time.sleep(args.window + 4)
        measured_to = time.time()
        rows = collector.sql(
            "SELECT toUnixTimestamp(ts) AS ts, toString(src_addr) AS src, score FROM flowenricher.anomaly_scores "
            f"WHERE ts >= toDateTime({int(measured_from)}) AND ts < toDateTime({int(measured_to)})")
        # hping3's random sources: every source that sent to the SYN victim's port 80.
        spoofed = {str(r["src"]) for r in collector.sql(
            "SELECT DISTINCT src_host AS src FROM flowenricher.flows "
            f"WHERE dst_host = '{SYN_VICTIM}' AND dst_port = 80")}
        background.stop()
        code = collector.stop()
        if code != 0:
            print(collector.proc.describe(4000), file=sys.stderr)

    rules = {r.name: r for r in load_rule_set(workdir / "detection.yml", max_window_s=600)}
    detections = [json.loads(line) for line in (workdir / "detections.log").read_text().splitlines() if line.strip()]

    def unix(text: str) -> float:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    spans: dict[str, dict[str, list[tuple[float, float]]]] = {"rules": defaultdict(list), "ml": defaultdict(list),
                                                               "dst": defaultdict(list)}
    for d in detections:
        rule = rules.get(d["rule"])
        cooldown = rule.cooldown if rule else 60.0
        span = (unix(d["first_seen"]), unix(d["time"]) + cooldown)
        which = "dst" if d["key"] == "dst" else ("ml" if d["rule"] == "ml_scan" else "rules")
        spans[which][d["address"]].append(span)

    def covered(which: str, address: str, start: int) -> bool:
        return any(lo < start + args.window and hi >= start for lo, hi in spans[which].get(address, ()))

    methods = ("rules", "score", "rules + score", "either")
    counts: dict[str, dict[str, list[int]]] = {m: defaultdict(lambda: [0, 0]) for m in methods}  # kind -> [tp, fn]
    benign = dict.fromkeys(methods, 0)
    benign_total = 0
    scanner_scores: dict[str, list[float]] = defaultdict(list)
    flood_sources = [0, 0]  # spoofed SYN flood source-windows: [flagged by the score, all]
    for row in rows:
        src = str(row["src"]).removeprefix("::ffff:")
        start, score = int(row["ts"]), float(row["score"])
        marks = {"rules": covered("rules", src, start), "score": score >= threshold}
        marks["rules + score"] = marks["rules"] or covered("ml", src, start)
        marks["either"] = marks["rules"] or marks["score"]
        kind = KIND_OF.get(src)
        if src in spoofed:
            flood_sources[0] += marks["score"]
            flood_sources[1] += 1
            continue
        if kind is None:
            benign_total += 1
            for m in methods:
                benign[m] += marks[m]
            continue
        scanner_scores[kind].append(round(score, 3))
        for m in methods:
            counts[m][kind][0 if marks[m] else 1] += 1
    victim_windows = sorted({int(r["ts"]) for r in rows})
    flood_from, flood_to = float(truths[0].params["started"]), float(truths[0].params["ended"])
    syn_cover = [covered("dst", SYN_VICTIM, start) for start in victim_windows
                 if flood_from - args.window <= start <= flood_to]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for m in methods:
        table[m] = {}
        for kind, (tp, fn) in sorted(counts[m].items()):
            precision = tp / (tp + benign[m]) if tp + benign[m] else 0.0
            recall = tp / (tp + fn) if tp + fn else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            table[m][kind] = {"precision": precision, "recall": recall, "f1": f1, "positives": tp + fn}
    under = [counts["score"][k] for k in UNDER_RULES if k in counts["score"]]
    result = {"threshold": threshold, "window_s": args.window, "benign_source_windows": benign_total,
              "benign_flagged": benign, "table": table, "scores": scanner_scores,
              "syn_flood_victim_windows_covered": f"{sum(syn_cover)}/{len(syn_cover)}",
              "syn_flood_source_windows_flagged_by_score": f"{flood_sources[0]}/{flood_sources[1]}",
              "slow_scans_flagged_by_score": f"{sum(c[0] for c in under)}/{sum(c[0] + c[1] for c in under)}"}
    print(f"threshold {threshold:.4f}; {benign_total} benign source-windows; flagged: "
          + ", ".join(f"{m} {benign[m]} ({100 * benign[m] / max(benign_total, 1):.2f}%)" for m in methods))
    print("| attack | positives | " + " | ".join(f"{m} P / R / F1" for m in methods) + " |")
    print("|---|---:|" + "---:|" * len(methods))
    for kind in sorted(counts["rules"]):
        cells = [f"{table[m][kind]['precision']:.2f} / {table[m][kind]['recall']:.2f} / {table[m][kind]['f1']:.2f}"
                 for m in methods]
        print(f"| {kind} | {int(table['rules'][kind]['positives'])} | " + " | ".join(cells) + " |")
    print(f"scores by attacker: {dict(scanner_scores)}")
    print(f"SYN flood victim-windows covered by the rules: {result['syn_flood_victim_windows_covered']}; "
          f"its random sources' source-windows flagged by the score: {flood_sources[0]}/{flood_sources[1]}")
    print(f"slow scans (no rule fired) flagged by the score: {result['slow_scans_flagged_by_score']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
