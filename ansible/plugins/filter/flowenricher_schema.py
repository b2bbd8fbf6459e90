"""Ansible filters that check inventory values against the project's JSON Schemas (and addresses).

`schemas/` is the one contract for the service, the API and the roles (DESIGN §2), so the
preflight play validates the config and rules it is about to render, on the controller,
before any host is touched; each problem names the inventory variable and the JSON path.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def schema_problems(data: Any, schema_file: str, variable: str = "value") -> list[str]:
    """One line per schema violation of `data`: ``variable: $.json.path: message``; [] when valid."""
    try:
        from jsonschema import Draft202012Validator
    except ImportError as err:  # the controller lacks ansible/requirements.txt
        raise RuntimeError("the jsonschema package is missing on the controller: "
                           "pip install -r ansible/requirements.txt") from err
    path = Path(schema_file)
    try:
        schema = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RuntimeError(f"cannot read the schema {path}: {err}") from err
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(_plain(data)), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{variable}: {e.json_path}: {e.message}" for e in errors]


def invalid_networks(values: Any, strict: bool = False) -> list[str]:
    """The entries of `values` that are not an IP address or prefix (``strict``: host bits
    must be zero), as strings; a non-list counts as one invalid entry."""
    if not isinstance(values, list | tuple):
        return [repr(values)]
    bad = []
    for value in values:
        try:
            ipaddress.ip_network(str(value), strict=strict)
        except ValueError:
            bad.append(str(value))
    return bad


def _plain(value: Any) -> Any:
    """Ansible's tagged strings and mappings as plain JSON types (what the service parses)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool | int | float) or value is None:
        return value
    return str(value)


class FilterModule:
    """Registers the filters under the names the roles use."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"flowenricher_schema_problems": schema_problems, "flowenricher_invalid_networks": invalid_networks}
