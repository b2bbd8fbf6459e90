"""The router's blackhole filter, derived from the appliance's own settings.

The appliance announces a blackhole with the next hop of its prefix's family
(``blackhole.next_hop_v4`` / ``next_hop_v6``, or a rule's ``blackhole_next_hop``) and a
set of communities (``blackhole.communities``, or a rule's ``blackhole_communities``).
A router filter written by hand drifts from those (issue 14: the filter accepted only
``65535:666`` while a rule announced ``65001:666``, and every such blackhole was dropped
silently).  So the mikrotik role computes its filter here, from the same inventory values
that render config.yaml and detection.yml, parsed by the appliance's own code
(``appliance/flowenricher/config.py`` and ``common/bgp_values.py``): one syntax, one set
of defaults, one error text.  A value the appliance would refuse stops the preflight with
that same error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]


def _appliance() -> tuple[Any, Any, Any, type[Exception], Callable[[Any], Any]]:
    """The appliance's parsers, from this checkout (the controller builds its wheel here),
    and the project's conversion of Ansible's tagged values to plain types (the schema
    filter's, ansible/plugins/filter/flowenricher_schema.py)."""
    for path in (REPO, REPO / "ansible" / "plugins" / "filter"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    from flowenricher_schema import _plain

    from appliance.flowenricher.common.bgp_values import parse_communities
    from appliance.flowenricher.config import parse_config
    from appliance.flowenricher.detect.rules import parse_rule_set
    from appliance.flowenricher.errors import ConfigError
    return parse_config, parse_rule_set, parse_communities, ConfigError, _plain


def blackhole_routes(config: Any, rules: Any) -> dict[str, Any]:
    """What the appliance will announce, by family: next hops, shortest prefix length and
    the community sets (each as announced: ``standard`` a:b, ``large`` a:b:c), each set
    with the settings that use it (``used_by``).

    A route carries one whole set (the config's or its rule's), so the router accepts a
    route that includes every community of one of the sets.  Raises ValueError with the
    appliance's own message for a value it would refuse, or for a set of nothing but
    NO_EXPORT/NO_ADVERTISE (those ride on every announcement and cannot mark a blackhole).
    """
    parse_config, parse_rule_set, parse_communities, config_error, _plain = _appliance()
    try:
        settings = parse_config(_plain(config or {}), "flowenricher_config (config.yaml)").blackhole
        rule_set = parse_rule_set(_plain(rules or []), "flowenricher_rules (detection.yml)")
    except config_error as err:  # every problem, with its path, as `flowenricher validate` says it
        raise ValueError(str(err)) from None
    hops: dict[int, list[str]] = {4: [settings.next_hop_v4], 6: [settings.next_hop_v6]}
    sets: dict[tuple[str, ...], dict[str, Any]] = {}

    def add(communities: Sequence[str], user: str) -> None:
        parsed = parse_communities(communities)
        key = tuple(sorted({str(c) for c in parsed}))
        marks = [c for c in parsed if str(c) not in ("65535:65281", "65535:65282")]
        if not marks:
            raise ValueError(f"{user}: {list(communities)} has no community but NO_EXPORT/NO_ADVERTISE, so the "
                             "router cannot tell a blackhole by it: add one (e.g. blackhole, 65535:666)")
        entry = sets.setdefault(key, {"standard": sorted({str(c) for c in parsed if not c.large}),
                                      "large": sorted({str(c) for c in parsed if c.large}), "used_by": []})
        entry["used_by"].append(user)

    add(settings.communities, "blackhole.communities")
    for rule in rule_set:
        if "blackhole" not in rule.actions:
            continue
        if rule.blackhole_communities:
            add(rule.blackhole_communities, f"rule {rule.name!r} blackhole_communities")
        if rule.blackhole_next_hop:
            family = 6 if ":" in rule.blackhole_next_hop else 4
            if rule.blackhole_next_hop not in hops[family]:
                hops[family].append(rule.blackhole_next_hop)
    return {
        "ipv4": {"next_hops": hops[4], "min_length": settings.min_prefix_length_v4, "max_length": 32},
        "ipv6": {"next_hops": hops[6], "min_length": settings.min_prefix_length_v6, "max_length": 128},
        "community_sets": list(sets.values()),
    }


def blackhole_problems(config: Any, rules: Any) -> list[str]:
    """Why the router's filter cannot be derived (the appliance's own words); [] when it can."""
    try:
        blackhole_routes(config, rules)
    except ValueError as err:
        return str(err).splitlines()
    return []


def filter_rules(routes: Mapping[str, Any]) -> list[str]:
    """The RouterOS 7 filter rules (``rule=`` text) of the input chain: per family and
    community set, accept and blackhole a route of a blackhole length whose next hop is
    one the appliance uses and that carries the whole set; then reject everything else."""
    out = []
    for afi, family in (("ipv4", routes["ipv4"]), ("ipv6", routes["ipv6"])):
        length = (f"dst-len == {family['max_length']}" if family["min_length"] == family["max_length"]
                  else f"dst-len >= {family['min_length']}")
        hops = " || ".join(f"gw == {hop}" for hop in family["next_hops"])
        hops = f"({hops})" if len(family["next_hops"]) > 1 else hops
        for community_set in routes["community_sets"]:
            match = [f"afi {afi}", length, hops]
            if community_set["standard"]:
                match.append("bgp-communities includes " + ",".join(community_set["standard"]))
            if community_set["large"]:
                match.append("bgp-large-communities includes " + ",".join(community_set["large"]))
            out.append(f"if ({' && '.join(match)}) {{ set blackhole yes; accept; }}")
    out.append("reject;")
    return out


class FilterModule:
    """Registers the filters under the names the mikrotik role uses."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"mikrotik_blackhole_routes": blackhole_routes, "mikrotik_blackhole_problems": blackhole_problems,
                "mikrotik_blackhole_filter_rules": filter_rules}
