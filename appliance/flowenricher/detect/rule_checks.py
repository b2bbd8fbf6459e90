"""The meaning of detection rules beyond their schema: what makes a rule contradict
itself or promise something it will not do, and names used twice.

Called by config.parse_rules, the one validation path of ``flowenricher validate``, the
API's rules routes and ``run`` (through detect.rules), so each reports the same lines.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from ..common.settings_base import IPNetwork, seconds_or_none, split_list
from ..documents import RULES_SCHEMA, JsonPathElement, json_path, load_schema


def parse_actions(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """A rule's actions, from ``"alert,blackhole"`` or ``["alert", "blackhole"]``, in order."""
    return tuple(dict.fromkeys(split_list(value)))


# A problem: its path (relative to what the function was given) and the reason.
Found = tuple[tuple[JsonPathElement, ...], str]

# The thresholds a rule can set; one of them must be, or every flow would match.
_THRESHOLDS = ("min_flows", "min_packets", "min_bytes", "min_pps", "min_bps", "min_syn_ratio",
               "unique_dst_ips", "unique_dst_ports", "unique_src_ips")
_BLACKHOLE_KEYS = ("blackhole_count", "blackhole_next_hop", "blackhole_communities", "blackhole_time")
_TCP_PROTOS = (6, "tcp", "any")


def rules_problems(rules: list[Any], prefix: tuple[JsonPathElement, ...], max_window_s: float | None,
                   ) -> list[Found]:
    """Every problem of `rules` (the document's list, at `prefix`) that the schema cannot
    express: duplicate names, and settings of a rule that contradict each other.
    `max_window_s` is ``detection.flow_cache_max_window`` (None: not checked)."""
    problems: list[Found] = []
    names: dict[str, int] = {}
    for index, rule in enumerate(rules):
        if not isinstance(rule, dict):
            continue
        name = rule.get("name")
        if isinstance(name, str):
            first = names.setdefault(name, index)
            if first != index:
                where = json_path((*prefix, first))
                problems.append(((*prefix, index, "name"), f"{name!r} is already the name of {where}"))
        problems += [((*prefix, index, *path), message) for path, message in _rule_contradictions(rule, max_window_s)]
    return problems


def _number(rule: Mapping[str, Any], key: str) -> float:
    """A numeric setting of `rule`, 0 when absent or of the wrong type (the schema reports that)."""
    value = rule.get(key, 0)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _rule_contradictions(rule: Mapping[str, Any], max_window_s: float | None,
                         ) -> list[Found]:
    """Settings of one rule that cannot all hold, or that say something the rule will not
    do; defensive about types, which the schema reports on its own."""
    found: list[Found] = []
    key = rule.get("key", "src")

    window = seconds_or_none(rule.get("time_window"))
    if window is not None and window <= 0:
        found.append((("time_window",), "must be longer than 0"))
    elif window is not None and max_window_s is not None and window > max_window_s:
        found.append((("time_window",), f"{rule['time_window']!r} is longer than detection.flow_cache_max_window "
                                        f"({max_window_s:g}s): the engine keeps no state that old"))

    ml_score = rule.get("min_ml_score")
    if ml_score is not None and rule.get("min_anomaly_score") is not None:
        found.append((("min_anomaly_score",), "is the former name of min_ml_score, which is set too: keep "
                                              "only min_ml_score"))
    ml_score = rule.get("min_anomaly_score") if ml_score is None else ml_score
    if not any(_number(rule, name) > 0 for name in _THRESHOLDS) and ml_score is None:
        found.append(((), "sets no threshold (a min_* or unique_* key): every key would match"))

    # Counts that a grouping pins to one.
    if key == "src" and _number(rule, "unique_src_ips") > 1:
        found.append((("unique_src_ips",), "with key: src each key is one source; use key: dst to count "
                                           "the sources of a flood"))
    if key == "dst" and _number(rule, "unique_dst_ips") > 1:
        found.append((("unique_dst_ips",), "with key: dst each key is one destination; use key: src to count "
                                           "the hosts a source reaches"))
    if key == "dst" and rule.get("same_dst_ip") is True:
        found.append((("same_dst_ip",), "key: dst already counts per destination address"))
    elif rule.get("same_dst_ip") is True and _number(rule, "unique_dst_ips") > 1:
        found.append((("unique_dst_ips",), "same_dst_ip counts one destination address per key, so more "
                                           "than 1 is never reached"))
    if rule.get("same_dst_port") is True and _number(rule, "unique_dst_ports") > 1:
        found.append((("unique_dst_ports",), "same_dst_port counts one destination port per key, so more "
                                             "than 1 is never reached"))
    ports = rule.get("dst_ports")
    if isinstance(ports, list) and ports and _number(rule, "unique_dst_ports") > len(ports):
        found.append((("unique_dst_ports",), f"dst_ports lists {len(ports)} port(s), so "
                                             f"{rule['unique_dst_ports']} distinct ports are never reached"))

    proto = rule.get("proto", "any")
    proto = proto.lower() if isinstance(proto, str) else proto
    for flag_key in ("tcp_flags", "min_syn_ratio"):
        if rule.get(flag_key) not in (None, 0) and proto not in _TCP_PROTOS:
            found.append(((flag_key,), f"only TCP flows carry flags, and proto is {rule.get('proto')!r}"))

    found += _prefix_contradictions(rule)

    actions = rule.get("action")
    named = parse_actions(actions) if isinstance(actions, str | list) and all(
        isinstance(item, str) for item in actions) else ()
    properties = load_schema(RULES_SCHEMA)["$defs"]["rule"]["properties"]
    if named and set(named) <= set(properties["action"]["items"]["enum"]):  # the schema reports others
        blackhole = "blackhole" in named
        defaults = properties
        if not blackhole:
            for name in _BLACKHOLE_KEYS:
                if name in rule and rule[name] != defaults[name]["default"]:
                    found.append(((name,), "is set, but action has no blackhole (add blackhole to action, "
                                           "or remove it)"))
        else:
            if _number(rule, "blackhole_count") < 1:
                found.append((("blackhole_count",), "the blackhole action needs blackhole_count of at least 1 "
                                                    "(the flows a key must hold to be blackholed)"))
            if seconds_or_none(rule.get("blackhole_time", 0)) == 0:
                found.append((("blackhole_time",), "the blackhole action needs blackhole_time (for instance "
                                                   "3600): an automatic blackhole must expire"))
    return found


def _prefix_contradictions(rule: Mapping[str, Any]) -> list[Found]:
    """Include prefixes that an exclude prefix swallows whole: the rule would see nothing there."""
    def networks(name: str) -> list[tuple[int, IPNetwork]]:
        items = rule.get(name)
        out = []
        for position, text in enumerate(items if isinstance(items, list) else []):
            try:
                out.append((position, ipaddress.ip_network(text)))
            except (TypeError, ValueError):
                continue  # the schema reports it
        return out

    found: list[Found] = []
    excludes = networks("exclude_prefixes")
    for position, net in networks("include_prefixes"):
        for other_position, other in excludes:
            if net.version == other.version and net.subnet_of(other):  # type: ignore[arg-type]
                found.append((("include_prefixes", position),
                              f"{net} lies inside exclude_prefixes[{other_position}] ({other}): never matched"))
                break
    return found
