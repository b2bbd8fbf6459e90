"""Config and rules documents: reading them safely (YAML and JSON, bounded), checking them
against the JSON Schemas, and wording every problem for the operator.

Every entry point (``flowenricher validate`` and ``run``, the API's validate and PUT, the
Ansible role's gate) reads documents through this module, so a file gets one verdict and
the same lines everywhere: ``FILE: $.json.path: what is wrong``, every problem at once, top
to bottom, so an operator fixes a file in one pass.

Decisions an operator can notice:

- Unknown keys are errors: a typo such as ``bindprt`` would otherwise be ignored silently
  and the default used.  Only top-level keys starting with ``x-`` are free (notes, YAML
  anchors).
- YAML numbers are read as YAML 1.2 reads them: ``65001:59`` stays a string (YAML 1.1
  makes it a base-60 integer, which would turn a BGP community into a number), dates stay
  strings, and a key given twice in one mapping is an error (the original's Go YAML library
  rejected it too, and the second value silently winning hides mistakes).
- Documents are bounded (size, values with aliases expanded, depth): a read-only API
  token may send them to the validate calls.
"""

from __future__ import annotations

import copy
import difflib
import functools
import ipaddress
import json
import os
import re
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import yaml
from jsonschema import Draft202012Validator, FormatChecker, ValidationError
from yaml.constructor import ConstructorError
from yaml.error import Mark
from yaml.events import AliasEvent, CollectionStartEvent, NodeEvent
from yaml.nodes import MappingNode, Node, ScalarNode

from .common import bgp_values
from .common.settings_base import split_host_port
from .errors import ConfigError

CONFIG_SCHEMA = "flowenricher.config.schema.json"
RULES_SCHEMA = "detection.rules.schema.json"

JsonPathElement = str | int

# --------------------------------------------------------------------------- schemas


def schema_path(name: str) -> Path:
    """Where the schema file `name` is: a copy inside the package (built distributions) or
    the repository's ``schemas/`` folder (a checkout, an editable install)."""
    here = Path(__file__).resolve().parent
    for folder in (here / "schemas", here.parents[1] / "schemas"):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"schema {name} not found next to {here}")


@functools.cache
def load_schema(name: str) -> Mapping[str, Any]:
    """The parsed schema `name`, read once per process (treat it as read-only)."""
    with schema_path(name).open(encoding="utf-8") as handle:
        schema: dict[str, Any] = json.load(handle)
    return schema


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(name), format_checker=FORMATS)


# --------------------------------------------------------------------------- formats
# JSON Schema has no type for CIDR networks, host:port or time zones; these checks run as
# formats, so their errors come out of the schema validation with the right JSON path.

FORMATS = FormatChecker(formats=())


@FORMATS.checks("ip-address", raises=ValueError)
def _check_ip_address(value: object) -> bool:
    if isinstance(value, str):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("") from None
    return True


@FORMATS.checks("ip-network", raises=ValueError)
def _check_ip_network(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if "/" not in value:
        raise ValueError("the /prefix-length is missing")
    try:
        ipaddress.ip_network(value)
    except ValueError:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError("") from None
        # The original masked such values silently; for the prefixes that decide what is
        # "ours" (and never blackholed) a typo must not widen or move the network.
        raise ValueError(f"host bits are set (did you mean {network}?)") from None
    return True


@FORMATS.checks("ip-prefix", raises=ValueError)
def _check_ip_prefix(value: object) -> bool:
    """An address (one host) or a network with its /length, host bits clear."""
    if isinstance(value, str) and "/" not in value:
        return _check_ip_address(value)
    return _check_ip_network(value)


@FORMATS.checks("host-port", raises=ValueError)
def _check_host_port(value: object) -> bool:
    if isinstance(value, str):
        split_host_port(value)
    return True


@FORMATS.checks("router-id", raises=ValueError)
def _check_router_id(value: object) -> bool:
    if isinstance(value, str) and value:
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError("") from None
    return True


@FORMATS.checks("timezone", raises=ValueError)
def _check_timezone(value: object) -> bool:
    if isinstance(value, str):
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            if not available_timezones():
                return True  # no time zone database on this machine: nothing to check against
            raise ValueError("unknown time zone") from None
    return True


@FORMATS.checks("bgp-community", raises=ValueError)
def _check_community(value: object) -> bool:
    """The one community syntax of common/bgp_values.py (the API's and the announcer's)."""
    if isinstance(value, str):
        try:
            bgp_values.parse_community(value)
        except bgp_values.BgpValueError as err:
            raise ValueError(err.reason) from None
    return True


def _next_hop_check(family: int | None) -> Any:
    """A blackhole next hop (common/bgp_values.py) of `family`, when given."""
    def check(value: object) -> bool:
        if isinstance(value, str):
            try:
                bgp_values.parse_next_hop(value, family)
            except bgp_values.BgpValueError as err:
                raise ValueError(err.reason) from None
        return True
    return check


FORMATS.checks("bgp-next-hop", raises=ValueError)(_next_hop_check(None))
FORMATS.checks("bgp-next-hop-v4", raises=ValueError)(_next_hop_check(4))
FORMATS.checks("bgp-next-hop-v6", raises=ValueError)(_next_hop_check(6))



# --------------------------------------------------------------------------- YAML

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


# Limits of a config or rules document, from a file or an API body.  A real one has tens
# of kilobytes, a few thousand values and a handful of levels; a read-only API token may
# send documents to the validate calls, so what the loader and the checks after it spend
# on one document must be bounded by these, not by what the document expands to.
MAX_DOCUMENT_BYTES = 256 * 1024
MAX_DOCUMENT_VALUES = 50_000
"""Keys, items and scalars, an alias counted as the whole of what it stands for."""
MAX_DOCUMENT_DEPTH = 32
"""Mappings and sequences nested in one another, aliases expanded."""


class _OverLimit(Exception):
    """A document passed one of the MAX_DOCUMENT limits at `mark` (the loader's own
    error, so that it is not reported as a YAML syntax error)."""

    def __init__(self, mark: object, reason: str) -> None:
        super().__init__(reason)
        self.mark = mark
        self.reason = reason


class _Loader(yaml.SafeLoader):
    """A safe loader with YAML 1.2 numbers, string keys, duplicate-key detection and
    bounded aliases.

    Aliases are kept, bounded rather than refused: the schema gives top-level ``x-`` keys
    to operators for anchors, and configs use them.  PyYAML builds an aliased value once
    and shares it, but every later step (``<<`` merges, which copy the merged pairs, the
    schema checks, defaults, error messages) walks the value as often as it is aliased,
    so nine aliases in each of seven levels cost 9**7 of everything.  The composer
    therefore counts each node's size with its aliases expanded (an alias adds the size
    of its anchor) and stops at MAX_DOCUMENT_VALUES or MAX_DOCUMENT_DEPTH while reading,
    before anything is expanded; an alias inside its own anchor (a cycle) is refused.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, int, int]] = []  # key, line, first line
        self._values = 0  # composed so far, aliases expanded
        self._depth = 0  # collections open around the node being composed
        self._sizes: dict[Node, tuple[int, int]] = {}  # complete node -> (values, height)

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self._next_event()
        if isinstance(event, AliasEvent):
            anchor = event.anchor
            target = self.anchors.get(anchor)
            if target is not None:  # else PyYAML's own "undefined alias" error
                if target not in self._sizes:
                    raise _OverLimit(event.start_mark, f"alias *{anchor} is inside its own anchor &{anchor} "
                                                       "(a document without end)")
                values, height = self._sizes[target]
                self._count(values, self._depth + height, event.start_mark,
                            f"alias *{anchor} (of {values} values)")
            return super().compose_node(parent, index)
        collection = isinstance(event, CollectionStartEvent)
        self._count(1, self._depth + collection, event.start_mark, "this value")
        before = self._values
        self._depth += collection
        node = super().compose_node(parent, index)
        self._depth -= collection
        if node is not None:
            height = collection + max((self._sizes[child][1] for child in _children(node)), default=0)
            self._sizes[node] = (self._values - before + 1, height)
        return node

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # The scanner looks ahead up to 1024 characters for a key at every open `[` or `{`,
        # one search per open level: a thousand `[` cost a fifth of a second before the
        # composer sees the first one.  So flow nesting is stopped where it is read.
        if self.flow_level >= MAX_DOCUMENT_DEPTH:
            raise _OverLimit(self.get_mark(), f"this value nests the document more than {MAX_DOCUMENT_DEPTH} levels deep")
        super().fetch_flow_collection_start(TokenClass)

    def _next_event(self) -> NodeEvent:
        """The event of the node about to be composed (the stubs leave peek_event untyped)."""
        event: NodeEvent = self.peek_event()  # type: ignore[no-untyped-call]
        return event

    def _count(self, values: int, depth: int, mark: object, what: str) -> None:
        self._values += values
        if depth > MAX_DOCUMENT_DEPTH:
            raise _OverLimit(mark, f"{what} nests the document more than {MAX_DOCUMENT_DEPTH} levels deep"
                                   + (" with its aliases expanded" if what.startswith("alias") else ""))
        if self._values > MAX_DOCUMENT_VALUES:
            raise _OverLimit(mark, f"{what} makes the document larger than {MAX_DOCUMENT_VALUES} values "
                                   "(keys, items and scalars, each alias counted as a copy of its anchor)")

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                line = key_node.start_mark.line + 1
                if key_node.value in first_line:
                    self.duplicates.append((key_node.value, line, first_line[key_node.value]))
                else:
                    first_line[key_node.value] = line
        self.flatten_mapping(node)  # `<<` merges: later keys legitimately override merged ones
        mapping: dict[Hashable, Any] = {}
        for key_node, value_node in node.value:
            # Keys are the text written (`on:` stays "on", `2055:` stays "2055"): a JSON
            # document has string keys, and exporter addresses are keys.
            if isinstance(key_node, ScalarNode):
                key: object = key_node.value
            else:
                key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                raise ConstructorError("while constructing a mapping", node.start_mark,
                                       "found a key that is not a scalar", key_node.start_mark)
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def _children(node: Node) -> Iterable[Node]:
    """The nodes directly inside a composed `node` (keys and values of a mapping)."""
    if isinstance(node, MappingNode):
        for key, value in node.value:
            yield key
            yield value
    elif not isinstance(node, ScalarNode):
        yield from node.value


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT_TAG, _FLOAT_TAG, _TIMESTAMP_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT_TAG,
    re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+|0o[0-7_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str) -> object:
    """The YAML document in `text`; a syntax error, a duplicate key or a document past the
    MAX_DOCUMENT limits raises ConfigError naming `source` and the line.

    Every entry point reads YAML here (files through read_yaml_file, API bodies), so a
    document is refused, and worded, the same way by all of them."""
    _check_size(len(text.encode("utf-8")), source)
    loader = _Loader(text)
    try:
        document = loader.get_single_data()
    except _OverLimit as err:
        raise ConfigError([f"{source}: {_where(err.mark)}: {err.reason}"]) from None
    except RecursionError:  # not reached within MAX_DOCUMENT_DEPTH; kept as a clear error regardless
        raise ConfigError([f"{source}: $: the document nests more than {MAX_DOCUMENT_DEPTH} levels deep"]) from None
    except yaml.MarkedYAMLError as err:
        raise ConfigError([_yaml_problem(source, err)]) from err
    except yaml.YAMLError as err:
        raise ConfigError([f"{source}: YAML error: {err}"]) from err
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError([
            f"{source}: line {line}: duplicate key {key!r} (first on line {first})"
            for key, line, first in loader.duplicates
        ])
    return document


def parse_json(text: str, source: str) -> object:
    """The JSON document in `text`, held to the same MAX_DOCUMENT limits as YAML (JSON has
    no aliases, but its size and depth still bound what the checks after it spend).
    ConfigError names `source` and, for a limit, the JSON path where it was passed."""
    _check_size(len(text.encode("utf-8")), source)
    try:
        document: object = json.loads(text)
    except RecursionError:
        raise ConfigError([f"{source}: $: the document nests more than {MAX_DOCUMENT_DEPTH} levels deep"]) from None
    except ValueError as err:
        raise ConfigError([f"{source}: $: not JSON: {err}"]) from err
    values = 1
    # A loop, not recursion: the depth is what is being checked.  Only containers are
    # walked (with their path); the scalars in one are counted at once, so a document of
    # 50,000 numbers costs one len() rather than 50,000 steps.
    stack: list[tuple[dict[Any, Any] | list[Any], tuple[JsonPathElement, ...], int]] = []
    if isinstance(document, dict | list):
        stack.append((document, (), 1))
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DOCUMENT_DEPTH:
            raise ConfigError([f"{source}: {json_path(path)}: this value nests the document more than "
                               f"{MAX_DOCUMENT_DEPTH} levels deep"])
        values += 2 * len(value) if isinstance(value, dict) else len(value)  # keys too
        if values > MAX_DOCUMENT_VALUES:
            raise ConfigError([f"{source}: {json_path(path)}: this value makes the document larger than "
                               f"{MAX_DOCUMENT_VALUES} values (keys, items and scalars)"])
        items = value.items() if isinstance(value, dict) else enumerate(value)
        stack.extend((item, (*path, key), depth + 1) for key, item in items if isinstance(item, dict | list))
    return document


def _check_size(size: int, source: str) -> None:
    if size > MAX_DOCUMENT_BYTES:
        raise ConfigError([f"{source}: $: {size} bytes, more than the {MAX_DOCUMENT_BYTES} bytes a config or "
                           "rules document may have"])


def _where(mark: object) -> str:
    """``line L, column C`` of a mark of the (pure-Python) loader, 1-based."""
    if isinstance(mark, Mark):
        return f"line {mark.line + 1}, column {mark.column + 1}"
    return "somewhere"


def _yaml_problem(source: str, err: yaml.MarkedYAMLError) -> str:
    mark = err.problem_mark or err.context_mark
    text = f"{source}: {_where(mark)}: YAML syntax error: {err.problem or err.context}"
    if err.problem and err.context and err.context_mark is not None:
        text += f" ({err.context} started on line {err.context_mark.line + 1})"
    return text


def read_yaml_file(path: str | os.PathLike[str]) -> object:
    name = os.fspath(path)
    try:
        with open(path, "rb") as handle:  # no more than the limit is read, whatever the file's size
            data = handle.read(MAX_DOCUMENT_BYTES + 1)
            size = os.fstat(handle.fileno()).st_size if len(data) > MAX_DOCUMENT_BYTES else len(data)
    except FileNotFoundError:
        raise ConfigError([f"{name}: file not found"]) from None
    except OSError as err:
        raise ConfigError([f"{name}: cannot be read: {err.strerror or err}"]) from err
    _check_size(max(size, len(data)), name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError([f"{name}: $: not UTF-8 text (byte {err.start})"]) from err
    return parse_yaml(text, name)


# --------------------------------------------------------------------------- problems

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def json_path(path: Iterable[JsonPathElement]) -> str:
    """``$.a.b[0]['10.0.0.1']``: dots for plain keys, brackets for indexes and other keys."""
    text = "$"
    for element in path:
        if isinstance(element, int):
            text += f"[{element}]"
        elif _IDENTIFIER.match(element):
            text += f".{element}"
        else:
            text += f"[{element!r}]"
    return text


@dataclass(frozen=True)
class Problem:
    path: tuple[JsonPathElement, ...]
    message: str


def schema_problems(schema_name: str, document: object) -> list[Problem]:
    problems: list[Problem] = []
    for error in _validator(schema_name).iter_errors(document):
        problems.extend(_describe(error))
    return problems


def _describe(error: ValidationError) -> list[Problem]:
    """Turn a jsonschema error into problems worded for an operator."""
    path = tuple(cast("Iterable[JsonPathElement]", error.absolute_path))
    schema = error.schema if isinstance(error.schema, dict) else {}
    instance = error.instance
    keyword = error.validator
    title = schema.get("title")
    if keyword in ("anyOf", "oneOf") and error.context:
        # An optional block (a model or null) or a union: when the value's type fits one
        # alternative only, what is wrong inside it is the answer, not "not valid under
        # any of the given schemas".
        branches: dict[object, list[ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0] if sub.relative_schema_path else None, []).append(sub)
        fitting = [errors for errors in branches.values()
                   if not any(e.validator == "type" and tuple(e.absolute_path) == path for e in errors)]
        if len(fitting) == 1:
            return [problem for sub in fitting[0] for problem in _describe(sub)]
    if keyword == "additionalProperties" and isinstance(instance, dict):
        # jsonschema names the parent object; name each unknown key instead.
        known = list(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        problems = []
        for key in instance:
            if key in known or any(re.search(pattern, str(key)) for pattern in patterns):
                continue
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6) or [
                name for name in known if name.startswith(str(key)) or str(key).startswith(name)]
            hint = f"did you mean {close[0]!r}?" if close else "expected one of: " + ", ".join(known)
            problems.append(Problem((*path, key), f"unknown key ({hint})"))
        return problems
    if keyword in ("pattern", "format"):
        what = title or f"a valid {error.validator_value}"
        message = f"{instance!r} is not {what}"
        if keyword == "format" and error.cause is not None and str(error.cause):
            message += f": {error.cause}"
        if "propertyNames" in error.schema_path:
            return [Problem((*path, str(instance)), "key " + message)]
        return [Problem(path, message)]
    if keyword == "required" and title:
        return [Problem(path, f"{error.message} ({title})")]
    if instance is None and keyword in ("type", "enum"):
        # YAML's empty value reads as None; say it in the file's words.
        return [Problem(path, "null (empty value)" + error.message.removeprefix("None"))]
    return [Problem(path, error.message)]


def _position(document: object, path: tuple[JsonPathElement, ...]) -> tuple[int, ...]:
    """Where `path` sits in the document, so problems are listed top to bottom."""
    position: list[int] = []
    node: object = document
    for element in path:
        if isinstance(node, dict) and element in node:
            position.append(list(node).index(element))
            node = node[element]
        elif isinstance(node, list) and isinstance(element, int) and 0 <= element < len(node):
            position.append(element)
            node = node[element]
        else:
            position.append(1 << 30)
            node = None
    return tuple(position)


def raise_if_problems(source: str, document: object, problems: list[Problem]) -> None:
    if problems:
        ordered = sorted(problems, key=lambda p: (_position(document, p.path), p.message))
        unique = dict.fromkeys(f"{source}: {json_path(p.path)}: {p.message}" for p in ordered)
        raise ConfigError(list(unique))


# --------------------------------------------------------------------------- defaults


def _resolved(root: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """`schema` merged with the local definition its ``$ref`` names (siblings win)."""
    while "$ref" in schema:
        reference = str(schema["$ref"])
        target: Any = root
        for part in reference.removeprefix("#/").split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def with_defaults(root: Mapping[str, Any], schema: Mapping[str, Any], value: object) -> Any:
    """A copy of a valid `value` with every absent key given its schema default.

    The schema is the one place defaults are written, so the documentation, the API's
    view of the config and the running service cannot disagree.
    """
    schema = _resolved(root, schema)
    if isinstance(value, dict):
        filled: dict[str, Any] = {}
        properties: Mapping[str, Any] = schema.get("properties", {})
        for key, item in value.items():
            sub = properties.get(key, schema.get("additionalProperties"))
            filled[key] = with_defaults(root, sub, item) if isinstance(sub, dict) else copy.deepcopy(item)
        for key, sub in properties.items():
            if key not in filled and "default" in sub:
                filled[key] = with_defaults(root, sub, copy.deepcopy(sub["default"]))
        return filled
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            return [with_defaults(root, items, item) for item in value]
        return copy.deepcopy(value)
    return value


