"""Ansible filter: what is missing or wrong in `appliance_clickhouse_external`, the
operator's ClickHouse server or cluster that the appliance uses instead of installing its
own (site.yml then skips the clickhouse role; the flowenricher and grafana roles take their
ClickHouse settings from it). One line per problem, naming the key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

REQUIRED = {
    "host": "the server, or the node of the cluster the appliance talks to",
    "port": "its HTTP interface's port (8123, or 8443 with secure: true)",
    "user": "the writer user flowenricher inserts as",
    "password": "that user's password (from the vault)",
    "reader_user": "the read-only user Grafana's datasource reads as",
    "reader_password": "that user's password (from the vault)",
}
OPTIONAL = {
    "secure": "true for HTTPS (default false)",
    "cluster": "the cluster's name in the servers' remote_servers (default: one server)",
}


def external_clickhouse_problems(settings: Any, variable: str = "appliance_clickhouse_external") -> list[str]:
    """The problems of `settings` ({} or None: not used, no problem)."""
    if settings is None or settings == {} or settings == "":
        return []
    if not isinstance(settings, Mapping):
        return [f"{variable}: a mapping of {', '.join([*REQUIRED, *OPTIONAL])}, got {type(settings).__name__}"]
    problems = [f"{variable}.{key}: missing or empty: {why}" for key, why in REQUIRED.items()
                if settings.get(key) is None or str(settings.get(key)).strip() == ""]
    problems += [f"{variable}.{key}: unknown key (known: {', '.join([*REQUIRED, *OPTIONAL])})"
                 for key in settings if key not in REQUIRED and key not in OPTIONAL]
    port = settings.get("port")
    if port is not None and str(port).strip() != "":
        try:
            number = int(str(port))
        except ValueError:
            number = 0
        if isinstance(port, bool) or not 0 < number < 65536:
            problems.append(f"{variable}.port: {port!r} is not a TCP port (1-65535)")
    secure = settings.get("secure", False)
    if not isinstance(secure, bool):
        problems.append(f"{variable}.secure: {secure!r} is not true or false")
    cluster = settings.get("cluster", "")
    if cluster is not None and not isinstance(cluster, str):
        problems.append(f"{variable}.cluster: {cluster!r} is not a name")
    return problems


class FilterModule:
    """Registers the filter under the name the roles use."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"flowenricher_external_clickhouse_problems": external_clickhouse_problems}
