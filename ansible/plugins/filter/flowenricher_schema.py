"""Ansible filters that check inventory values with the service's own checks (and addresses).

The preflight play gives the config and rules it is about to render the verdict
`flowenricher validate` gives them on the host (DESIGN §2: schemas/ is the one contract;
the service's cross-field checks, such as the API beyond loopback without TLS, come with
it), on the controller, before any host is touched: the same function, imported from the
checkout that holds these roles. Each problem names the inventory variable and the JSON path.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parents[3]
"""The repository holding this plugin, site.yml and the roles (ansible/plugins/filter/..)."""

CONFIG_SOURCE = "flowenricher_config (config.yaml)"
RULES_SOURCE = "flowenricher_rules (detection.yml)"


def validation_problems(config: Any, rules: Any) -> list[str]:
    """`flowenricher validate --config --rules` on the rendered documents: one line per
    problem, ``variable: $.json.path: message``; [] when both are valid."""
    if str(CHECKOUT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT))  # the roles' own service code, not another install
    try:
        from appliance.flowenricher.config import parse_config, parse_rules
        from appliance.flowenricher.config import validation_problems as check
    except ImportError as err:  # the controller lacks ansible/requirements.txt
        raise RuntimeError(f"cannot import flowenricher's config checks from {CHECKOUT} ({err}): "
                           "pip install -r ansible/requirements.txt on the controller") from err
    return check(lambda: parse_config(_plain(config), CONFIG_SOURCE),
                 lambda window: parse_rules(_plain(rules), RULES_SOURCE, max_window_s=window))[1]


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
        return {"flowenricher_validation_problems": validation_problems,
                "flowenricher_invalid_networks": invalid_networks}
