"""The grafana role's dashboard filter: the flow database set at provisioning.

Every dashboard in files/dashboards/ reads its tables as ``${database}.<table>``, where
``database`` is a hidden constant variable of the dashboard. The role sets that constant
to ``grafana_clickhouse_database`` (the clickhouse role's ``clickhouse_database``) when it
copies the dashboard, so an installation with another database name needs no edited
files; tests/test_dashboards.py provisions the shipped files with the same function.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

VARIABLE = "database"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def dashboard_database(dashboard: Any, database: str) -> dict[str, Any]:
    """A copy of `dashboard` (parsed JSON) whose ``database`` constant is `database`."""
    database = str(database)
    if not _IDENTIFIER.match(database):
        raise ValueError(f"grafana_clickhouse_database {database!r} is not a ClickHouse identifier")
    if not isinstance(dashboard, dict):
        raise ValueError("a dashboard is a JSON object")
    out = copy.deepcopy(dashboard)
    found = [v for v in out.get("templating", {}).get("list", []) if v.get("name") == VARIABLE]
    if len(found) != 1 or found[0].get("type") != "constant":
        raise ValueError(f"dashboard {out.get('uid')!r} has no (single) constant variable {VARIABLE!r}")
    var = found[0]
    var["query"] = database
    var["current"] = {"selected": False, "text": database, "value": database}
    var["options"] = [{"selected": True, "text": database, "value": database}]
    return out


class FilterModule:
    """Registers the filters under the names the role uses."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"grafana_dashboard_database": dashboard_database}
