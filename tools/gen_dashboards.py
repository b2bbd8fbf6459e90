"""Write the Grafana dashboards' range variables from their one definition here.

Every dashboard in roles/grafana/files/dashboards/ that reads the rollups has the hidden
variables `rollup` and `step` (the aggregate rollup for the time range and its seconds)
and, where it has "who" panels, `who_rollup` (the step of the top-N rollups).  Each is a
query Grafana runs on every time-range change.  They are the same in every dashboard,
so they are made here, from the storage's own steps (storage/schema.py: ROLLUPS,
WHO_STEPS) and the longest range each step serves (ROLLUP_RANGES, WHO_RANGES), and
written into the files; tests/test_dashboards.py fails while a file differs.

    python tools/gen_dashboards.py          # rewrite the variables in every dashboard
    python tools/gen_dashboards.py --check  # exit 1 if a dashboard differs
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from appliance.flowenricher.storage.schema import ROLLUPS, WHO_STEPS, Rollup  # noqa: E402
from appliance.flowenricher.storage.settings import StoreSettings  # noqa: E402

DASHBOARDS = REPO / "roles" / "grafana" / "files" / "dashboards"
HOUR, DAY = 3600, 86400

ROLLUP_RANGES: tuple[int | None, ...] = (3 * HOUR, 7 * DAY, None)
"""The longest range (seconds) each of ROLLUPS answers, finest first; None: any longer.

1m up to 3 hours (at most 180 points a series), 5m up to 7 days, 1h beyond.  The
dashboards open on 6 hours, which the 5m rollup answers with 72 points: on 100M flows
(6 hours at about 4.6k flows/s) the 1m rollup held 22M rows against 10.4M, and the
panels reading it took 0.6-1.5 s against 0.07-0.67 s from the 5m one (docs/performance.md,
2026-12-07, fifth session).  Three hours or less still shows every minute."""

WHO_RANGES: tuple[int | None, ...] = (DAY, None)
"""The longest range each of WHO_STEPS answers: a top-N is one number per value, not a
series, so its 1m rows serve up to a day (a few hundred ms on 100M flows)."""

TABLE = StoreSettings().table
"""The flows table the dashboards read (``${database}.<table>``)."""


def range_choice(steps: Sequence[Rollup], ranges: Sequence[int | None], value: str) -> str:
    """A ClickHouse expression of the time range that picks `value` (``"table"``: the
    rollup's table name, ``"step"``: its seconds) of the finest step whose range allows."""
    if len(steps) != len(ranges) or ranges[-1] is not None or any(r is None for r in ranges[:-1]):
        raise ValueError("every step but the last needs the longest range it answers")

    def of(r: Rollup) -> str:
        return f"'{TABLE}_{r.suffix}'" if value == "table" else f"'{r.step_s}'"

    span = "$__toTime - $__fromTime"
    arms = [f"{span} <= {limit}, {of(r)}" for r, limit in zip(steps, ranges, strict=True) if limit is not None]
    return f"multiIf({', '.join(arms)}, {of(steps[-1])})"


VARIABLES: dict[str, str] = {
    "rollup": f"SELECT {range_choice(ROLLUPS, ROLLUP_RANGES, 'table')}",
    "step": f"SELECT {range_choice(ROLLUPS, ROLLUP_RANGES, 'step')}",
    "who_rollup": f"SELECT {range_choice(WHO_STEPS, WHO_RANGES, 'table')}",
}
"""Each range variable's query, by the variable's name."""


def with_variables(dashboard: dict[str, Any]) -> dict[str, Any]:
    """`dashboard` with the query of each of its VARIABLES made here (others untouched)."""
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("name") in VARIABLES:
            var["query"] = var["definition"] = VARIABLES[var["name"]]
    return dashboard


def rendered() -> dict[Path, str]:
    """Dashboard file -> the text it should hold."""
    out = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = with_variables(json.loads(path.read_text()))
        out[path] = json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when a dashboard's variables differ")
    args = parser.parse_args()
    stale = [path for path, text in rendered().items() if path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(REPO)}: range variables differ from tools/gen_dashboards.py's", file=sys.stderr)
        return 1 if stale else 0
    for path, text in rendered().items():
        if path in stale:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
