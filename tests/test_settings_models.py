"""The settings models are the one definition of config.yaml: the committed schema is what
they generate, and the schema (which words the operator's errors) and the models (which
type what runs) agree on every value, so no file is accepted by one and refused by the
other."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from appliance.flowenricher.config import (
    CONFIG_SCHEMA,
    RULES_SCHEMA,
    Settings,
    config_problems,
    config_schema,
    load_config,
    parse_config,
)
from appliance.flowenricher.detect.rule_model import RuleModel, rules_schema
from appliance.flowenricher.documents import FORMATS, load_schema, schema_problems
from appliance.flowenricher.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = [REPO / "appliance" / "flowenricher" / "examples" / "config.yaml",
            *sorted((REPO / "tests" / "data" / "config_corpus").glob("valid-config-*.yaml"))]


def test_committed_schemas_are_generated_from_the_models() -> None:
    for name, generated in ((CONFIG_SCHEMA, config_schema()), (RULES_SCHEMA, rules_schema())):
        committed = json.loads((REPO / "schemas" / name).read_text(encoding="utf-8"))
        assert committed == generated, f"schemas/{name} is stale: run python tools/gen_schemas.py"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "gen_schemas.py"), "--check"], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr


def test_a_stale_schema_is_told(tmp_path: Path) -> None:
    """The check itself can fail: a schema edited by hand is reported, not accepted."""
    copy_repo = tmp_path / "repo"
    (copy_repo / "schemas").mkdir(parents=True)
    (copy_repo / "tools").mkdir()
    (copy_repo / "tools" / "gen_schemas.py").write_text((REPO / "tools" / "gen_schemas.py").read_text())
    schema = json.loads((REPO / "schemas" / CONFIG_SCHEMA).read_text())
    schema["description"] = "edited by hand"
    (copy_repo / "schemas" / CONFIG_SCHEMA).write_text(json.dumps(schema))
    done = subprocess.run([sys.executable, str(copy_repo / "tools" / "gen_schemas.py"), "--check"],
                          capture_output=True, text=True, timeout=120, cwd=copy_repo,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1 and "stale" in done.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_effective_config_reads_back_as_the_same_settings(path: Path) -> None:
    """What GET config shows as effective is a config file meaning exactly what runs."""
    settings_ = load_config(path)
    effective = settings_.effective
    Draft202012Validator(load_schema(CONFIG_SCHEMA), format_checker=FORMATS).validate(effective)
    assert parse_config(copy.deepcopy(effective)) == settings_


def test_the_default_is_an_empty_file() -> None:
    default = Settings.default()
    assert default == parse_config(None) == parse_config({})
    assert default.effective == parse_config(default.effective).effective
    assert default.collectors.listeners[0].port == 2055 and default.detection.flow_cache_max_window_s == 600


# ------------------------------------------------------------------ schema vs models


def _leaves(schema: dict[str, Any]) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """(path of YAML keys, property schema) of every scalar setting reachable from the root."""
    defs = schema["$defs"]

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    def walk(node: dict[str, Any], path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
        node = resolve(node)
        properties = node.get("properties")
        if properties and node.get("type") == "object":
            for key, sub in properties.items():
                yield from walk(sub, (*path, key))
        else:
            yield path, node

    yield from walk(schema, ())


LEAVES = [(path, leaf) for path, leaf in _leaves(config_schema()) if path]
CANDIDATES = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 70000), st.sampled_from([0, 1, 2, 65535, 65536, 2**32, -1, 0.5, 1e9]),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=1e6),
    st.sampled_from(["", "x", "60s", "1m30s", "0", "5", "-1s", "10.0.0.1", "::1", "10.0.0.0/8", "10.0.0.1/8",
                     "127.0.0.1:9600", "[::1]:9600", "unix:///run/gobgpd.sock", "65535:666", "1:2:3", "auto",
                     "big", "little", "netflow", "sflow", "2c", "3", "sha", "aes", "debug", "UTC", "Europe/Athens",
                     "geoip, bgp", "none", "toYYYYMM(timestamp_start)", "https://example.net/hook", "flows", "1x"]),
    st.lists(st.sampled_from(["10.0.0.1", "10.0.0.0/8", "proto", "65535:666", "127.0.0.1:9092", ""]), max_size=3),
    st.text(max_size=8),
)


def _values_for(leaf: dict[str, Any]) -> st.SearchStrategy[object]:
    """Values aimed at one setting: its bounds and either side of them, its enum, its
    default, and anything at all."""
    aimed: list[object] = [leaf.get("default")]
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if isinstance(leaf.get(key), int | float):
            bound = leaf[key]
            aimed += [bound - 1, bound, bound + 1, bound - 0.5, bound + 0.5]
    aimed += [*leaf.get("enum", []), 2**31, 2**32, 2**63, -(2**31)]
    return st.one_of(st.sampled_from(aimed), st.integers(), CANDIDATES)


def _document(path: tuple[str, ...], value: object) -> dict[str, Any]:
    document: dict[str, Any] = {}
    node = document
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return document


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(LEAVES).flatmap(lambda leaf: st.tuples(st.just(leaf), _values_for(leaf[1]))))
def test_schema_and_models_agree_on_every_value(case: tuple[tuple[tuple[str, ...], dict[str, Any]], object]) -> None:
    """Whatever one value a document gives a setting, the checks the operator reads and
    the models that type the settings give one verdict: refused with a path, or built."""
    (path, _), value = case
    document = _document(path, value)
    if schema_problems(CONFIG_SCHEMA, document) + config_problems(document):
        with pytest.raises(ConfigError):
            parse_config(document)
        return
    built = Settings.model_validate(document)  # a pydantic ValidationError here is the disagreement
    Draft202012Validator(load_schema(CONFIG_SCHEMA), format_checker=FORMATS).validate(built.effective)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_survive_a_round_trip_through_yaml(path: Path, tmp_path: Path) -> None:
    effective = load_config(path).effective
    out = tmp_path / "effective.yaml"
    out.write_text(yaml.safe_dump(effective, sort_keys=False), encoding="utf-8")
    assert load_config(out) == load_config(path)


RULE_LEAVES = [(path, leaf) for path, leaf in _leaves(rules_schema()["$defs"]["rule"] | {"$defs": rules_schema()["$defs"]})
               if path]
BASE_RULE = {"name": "r", "time_window": "60s", "action": "alert"}


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(RULE_LEAVES).flatmap(lambda leaf: st.tuples(st.just(leaf), _values_for(leaf[1]))))
def test_rules_schema_and_model_agree_on_every_value(case: tuple[tuple[tuple[str, ...], dict[str, Any]], object]) -> None:
    """A rule the generated schema accepts is one the rule model types."""
    (path, _), value = case
    rule = {**BASE_RULE, path[0]: value}
    if not schema_problems(RULES_SCHEMA, [rule]):
        RuleModel.model_validate(rule)
