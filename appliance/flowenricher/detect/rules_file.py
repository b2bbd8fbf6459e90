"""The detection rules file (detection.yml): read, checked against its schema and the
rules' own semantics (rule_checks.py), every problem at once and naming the rule it sits in.
"""

from __future__ import annotations

import os
from typing import Any

from ..documents import (
    RULES_SCHEMA,
    JsonPathElement,
    Problem,
    load_schema,
    raise_if_problems,
    read_yaml_file,
    schema_problems,
    with_defaults,
)
from .rule_checks import parse_actions, rules_problems

__all__ = ["load_rules", "parse_actions", "parse_rules"]


def load_rules(path: str | os.PathLike[str], *, max_window_s: float | None = None) -> list[dict[str, Any]]:
    """Read and validate a detection rules file; the rules come back with every default
    filled in (keys and values as in the file, e.g. ``time_window: "60s"``; use
    parse_duration and parse_actions on them, or ``detect.rules.Rule.from_validated``).
    An empty file has no rules.  `max_window_s` is ``detection.flow_cache_max_window``:
    a rule looking further back than the engine keeps state for is refused.

    Raises ConfigError listing every problem, one line each.
    """
    return parse_rules(read_yaml_file(path), os.fspath(path), max_window_s=max_window_s)


def parse_rules(document: object, source: str = "rules", *, max_window_s: float | None = None) -> list[dict[str, Any]]:
    """Validate a rules document already parsed: a list of rules or ``{rules: [...]}``.

    Each problem inside a rule names the rule as well as its path
    (``FILE: $[1].unique_dst_ip: rule 'scan': unknown key ...``): in a file of twenty
    rules an index alone is hard to find.
    """
    raw = [] if document is None else document
    problems = schema_problems(RULES_SCHEMA, raw)
    rules, prefix = (raw, ()) if isinstance(raw, list) else (_mapping_list(raw, "rules"), ("rules",))
    problems += [Problem(path, message) for path, message in rules_problems(rules, prefix, max_window_s)]
    raise_if_problems(source, raw, [_name_the_rule(problem, rules, prefix) for problem in problems])
    root = load_schema(RULES_SCHEMA)
    rule_schema = root["$defs"]["rule"]
    return [with_defaults(root, rule_schema, rule) for rule in rules]


def _mapping_list(document: object, key: str) -> list[Any]:
    value = document.get(key) if isinstance(document, dict) else None
    return value if isinstance(value, list) else []


def _name_the_rule(problem: Problem, rules: list[Any], prefix: tuple[JsonPathElement, ...]) -> Problem:
    """`problem` with the name of the rule it sits in, when that rule has a usable name
    (a problem with the name itself says it already)."""
    path = problem.path
    if len(path) <= len(prefix) or path[:len(prefix)] != prefix or not isinstance(path[len(prefix)], int):
        return problem
    index = path[len(prefix)]
    assert isinstance(index, int)
    rule = rules[index] if 0 <= index < len(rules) else None
    name = rule.get("name") if isinstance(rule, dict) else None
    if not isinstance(name, str) or not name or path[len(prefix) + 1:] == ("name",):
        return problem
    return Problem(path, f"rule {name!r}: {problem.message}")
