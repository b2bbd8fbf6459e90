"""The process a backtest started through the API runs in (api/backtests.py starts it
with multiprocessing's spawn and reads what it says over a pipe).

It reads the flows as ``flowenricher backtest`` does (backtest.store_query: through the
running collector's control socket with the embedded store, directly with a ClickHouse
server) and says, in this order: ``("running",)`` once the store answers, ``("progress",
seconds replayed, seconds in the range, flows replayed)`` at most every
PROGRESS_INTERVAL_S, then ``("done", lines)`` with the report's JSON lines (the CLI's
``--format jsonl``, as JSON values) or ``("failed", text)``.  It lives in the core so
that the spawned interpreter imports the replay and nothing of the API.
"""

from __future__ import annotations

import json
import logging
import time
from multiprocessing.connection import Connection
from typing import Any

from .backtest import ReplayWindow, run_backtest, store_query
from .config import Settings
from .detect.rules import Rule
from .errors import FlowEnricherError
from .wiring import store_settings

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.2
"""Least time between two progress messages (the replay reports every 10 s of the range)."""

RuleSets = list[tuple[str, list[dict[str, Any]]]]
"""(name, validated rule documents) per rules set: A first, then the one compared with it."""


def report_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's lines as the CLI prints them (values JSON has no type for, as text)."""
    result: list[dict[str, Any]] = json.loads(json.dumps(lines, default=str))
    return result


def run(conn: Connection, cfg: Settings, rule_sets: RuleSets, start: int, end: int, tune: int | None) -> None:
    """The child's whole life: replay [start, end) and send the report or why it failed."""
    # The report says what the rules did; the log (the service's journal) only why a backtest failed.
    logging.basicConfig(level=logging.ERROR, format="backtest %(process)d: %(levelname)s %(name)s: %(message)s")
    try:
        rules = [(name, [Rule.from_validated(raw) for raw in raws]) for name, raws in rule_sets]
        window = ReplayWindow(start, end)
        with store_query(cfg) as query:
            query("SELECT 1", "TSV")
            conn.send(("running",))
            last = 0.0

            def progress(done: int, total: int, flows: int) -> None:
                nonlocal last
                now = time.monotonic()
                if done >= total or now - last >= PROGRESS_INTERVAL_S:
                    last = now
                    conn.send(("progress", done, total, flows))

            report = run_backtest(query, store_settings(cfg).qualified_table, cfg, rules, window,
                                  tune_per_day=tune, progress=progress)
        conn.send(("done", report_lines(report.to_lines())))
    except FlowEnricherError as err:
        conn.send(("failed", str(err)))
    except Exception as err:  # whatever failed, the API hears why; the traceback goes to the log
        log.exception("backtest %s..%s failed", start, end)
        conn.send(("failed", f"{type(err).__name__}: {err}"))
    finally:
        conn.close()
