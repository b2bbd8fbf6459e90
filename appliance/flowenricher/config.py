"""Read config.yaml and detection.yml, check them against the JSON Schemas, build typed settings.

The schemas in ``schemas/`` are the one contract shared by the service, the API and the
Ansible role; this module adds what JSON Schema cannot say (address parsing, cross-field
checks) and reports every problem of a file at once, one line each, as
``FILE: $.json.path: what is wrong``, so an operator fixes a file in one pass.

Decisions an operator can notice:

- Unknown keys are errors: a typo such as ``bindprt`` would otherwise be ignored silently
  and the default used.  Only top-level keys starting with ``x-`` are free (notes, YAML
  anchors).
- YAML numbers are read as YAML 1.2 reads them: ``65001:59`` stays a string (YAML 1.1
  makes it a base-60 integer, which would turn a BGP community into a number), dates stay
  strings, and a key given twice in one mapping is an error (the original's Go YAML library
  rejected it too, and the second value silently winning hides mistakes).
- Relative paths (``storage.path``, the GeoIP databases, ``detection.rules_config``) stay
  relative to the working directory of the process, as in the original; the deployment
  sets the service's working directory.  Settings keep them as written so that logs show
  what the operator wrote.
- Without ``clickhouse.host`` (or with an empty one) the store is embedded; the original's
  ``host: localhost`` keeps meaning a ClickHouse server on this machine.
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
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import yaml
from jsonschema import Draft202012Validator, FormatChecker, ValidationError
from yaml.constructor import ConstructorError
from yaml.error import Mark
from yaml.events import AliasEvent, CollectionStartEvent, NodeEvent
from yaml.nodes import MappingNode, Node, ScalarNode

from .collector.receiver import exporter_key
from .common import bgp_values
from .default_secrets import clickhouse_password_problem, is_loopback, snmp_community_problem
from .enrich.snmp_credentials import credential_problems
from .errors import ConfigError
from .storage.schema import flow_partition_column
from .traffic_labels import label_problems

__all__ = [
    "CONFIG_SCHEMA",
    "RULES_SCHEMA",
    "ApiSettings",
    "BgpListenerSettings",
    "BgpSettings",
    "ClickHouseSettings",
    "CollectorSettings",
    "DetectionSettings",
    "DnsSettings",
    "ExporterSettings",
    "GeoIpSettings",
    "GoBgpSettings",
    "InsertSettings",
    "KafkaSettings",
    "ListenerSettings",
    "MetricsSettings",
    "Settings",
    "SnmpSettings",
    "StorageSettings",
    "TemplateHoldSettings",
    "load_config",
    "load_rules",
    "load_schema",
    "parse_actions",
    "parse_config",
    "parse_duration",
    "parse_json",
    "parse_rules",
    "parse_yaml",
    "schema_path",
    "split_host_port",
]

CONFIG_SCHEMA = "flowenricher.config.schema.json"
RULES_SCHEMA = "detection.rules.schema.json"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ListenerProtocol = Literal["netflow", "sflow"]
ByteOrder = Literal["big", "little"]
JsonPathElement = str | int

# Ports the appliance listens on when `collectors.listeners` is absent, besides bindport:
# the IANA ports of IPFIX (RFC 7011) and sFlow.
IPFIX_PORT = 4739
SFLOW_PORT = 6343


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
    return Draft202012Validator(load_schema(name), format_checker=_FORMATS)


# --------------------------------------------------------------------------- formats
# JSON Schema has no type for CIDR networks, host:port or time zones; these checks run as
# formats, so their errors come out of the schema validation with the right JSON path.

_FORMATS = FormatChecker(formats=())
_HOSTNAME = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


@_FORMATS.checks("ip-address", raises=ValueError)
def _check_ip_address(value: object) -> bool:
    if isinstance(value, str):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("") from None
    return True


@_FORMATS.checks("ip-network", raises=ValueError)
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


@_FORMATS.checks("ip-prefix", raises=ValueError)
def _check_ip_prefix(value: object) -> bool:
    """An address (one host) or a network with its /length, host bits clear."""
    if isinstance(value, str) and "/" not in value:
        return _check_ip_address(value)
    return _check_ip_network(value)


@_FORMATS.checks("host-port", raises=ValueError)
def _check_host_port(value: object) -> bool:
    if isinstance(value, str):
        split_host_port(value)
    return True


@_FORMATS.checks("router-id", raises=ValueError)
def _check_router_id(value: object) -> bool:
    if isinstance(value, str) and value:
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError("") from None
    return True


@_FORMATS.checks("timezone", raises=ValueError)
def _check_timezone(value: object) -> bool:
    if isinstance(value, str):
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            if not available_timezones():
                return True  # no time zone database on this machine: nothing to check against
            raise ValueError("unknown time zone") from None
    return True


@_FORMATS.checks("bgp-community", raises=ValueError)
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


_FORMATS.checks("bgp-next-hop", raises=ValueError)(_next_hop_check(None))
_FORMATS.checks("bgp-next-hop-v4", raises=ValueError)(_next_hop_check(4))
_FORMATS.checks("bgp-next-hop-v6", raises=ValueError)(_next_hop_check(6))


def split_host_port(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6addr]:port`` for IPv6) into host and port.

    Raises ValueError naming what is wrong, so the same words reach the operator whether
    the value came from a file or from the API.
    """
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError("expected [IPv6 address]:port")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
        port_text = rest[1:]
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon or not host:
            raise ValueError("the host or the :port is missing")
        if ":" in host:
            raise ValueError("an IPv6 address goes in brackets, as in [::1]:9600")
        if not _HOSTNAME.match(host):
            raise ValueError(f"{host!r} is not a host name or IPv4 address")
        if host.replace(".", "").isdigit():
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv4 address") from None
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"port {port_text!r} is not a number from 0 to 65535")
    return host, int(port_text)


# --------------------------------------------------------------------------- values

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNIT = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}


def parse_duration(value: str | int | float) -> float:
    """Seconds in a duration: Go's syntax as the original used (``60s``, ``1m30s``,
    ``500ms``, ``0``) or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return float(value)
    if value == "0":
        return 0.0
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        total += float(match[1]) * _DURATION_UNIT[match[2]]
        position = match.end()
    if position == 0 or position != len(value):
        raise ValueError(f"{value!r} is not a duration such as 60s, 1m30s or 500ms")
    return total


def seconds_or_none(value: object) -> float | None:
    """`value` as seconds, or None when it is not a duration (the schema reports that)."""
    try:
        return parse_duration(value) if isinstance(value, str | int | float) else None
    except ValueError:
        return None


def _split_list(value: str | Iterable[str]) -> tuple[str, ...]:
    """Items of a comma-separated string (the original's format) or of a list."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(item.strip() for item in items if item.strip())


def parse_actions(value: str | Iterable[str]) -> tuple[str, ...]:
    """A rule's actions, from ``"alert,blackhole"`` or ``["alert", "blackhole"]``, in order."""
    return tuple(dict.fromkeys(_split_list(value)))


def _parse_enrich(value: str | Iterable[str]) -> frozenset[str]:
    items = set(_split_list(value)) - {"none"}
    # The original's own comment lists "smtp" among the values; it means snmp.
    return frozenset("snmp" if item == "smtp" else item for item in items)


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

    Every entry point reads YAML here (files through _read_yaml_file, API bodies), so a
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
    values = 0
    stack: list[tuple[object, tuple[JsonPathElement, ...], int]] = [(document, (), 0)]
    while stack:  # a loop, not recursion: the depth is what is being checked
        value, path, depth = stack.pop()
        values += 1
        if isinstance(value, dict | list):
            depth += 1
            if depth > MAX_DOCUMENT_DEPTH:
                raise ConfigError([f"{source}: {json_path(path)}: this value nests the document more than "
                                   f"{MAX_DOCUMENT_DEPTH} levels deep"])
            items = value.items() if isinstance(value, dict) else enumerate(value)
            values += len(value) if isinstance(value, dict) else 0  # the keys
            stack.extend((item, (*path, key), depth) for key, item in items)
        if values > MAX_DOCUMENT_VALUES:
            raise ConfigError([f"{source}: {json_path(path)}: this value makes the document larger than "
                               f"{MAX_DOCUMENT_VALUES} values (keys, items and scalars)"])
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


def _read_yaml_file(path: str | os.PathLike[str]) -> object:
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
class _Problem:
    path: tuple[JsonPathElement, ...]
    message: str


def _schema_problems(schema_name: str, document: object) -> list[_Problem]:
    problems: list[_Problem] = []
    for error in _validator(schema_name).iter_errors(document):
        problems.extend(_describe(error))
    return problems


def _describe(error: ValidationError) -> list[_Problem]:
    """Turn a jsonschema error into problems worded for an operator."""
    path = tuple(cast("Iterable[JsonPathElement]", error.absolute_path))
    schema = error.schema if isinstance(error.schema, dict) else {}
    instance = error.instance
    keyword = error.validator
    title = schema.get("title")
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
            problems.append(_Problem((*path, key), f"unknown key ({hint})"))
        return problems
    if keyword in ("pattern", "format"):
        what = title or f"a valid {error.validator_value}"
        message = f"{instance!r} is not {what}"
        if keyword == "format" and error.cause is not None and str(error.cause):
            message += f": {error.cause}"
        if "propertyNames" in error.schema_path:
            return [_Problem((*path, str(instance)), "key " + message)]
        return [_Problem(path, message)]
    if keyword == "required" and title:
        return [_Problem(path, f"{error.message} ({title})")]
    if instance is None and keyword in ("type", "enum"):
        # YAML's empty value reads as None; say it in the file's words.
        return [_Problem(path, "null (empty value)" + error.message.removeprefix("None"))]
    return [_Problem(path, error.message)]


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


def _raise_if_problems(source: str, document: object, problems: list[_Problem]) -> None:
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


def _with_defaults(root: Mapping[str, Any], schema: Mapping[str, Any], value: object) -> Any:
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
            filled[key] = _with_defaults(root, sub, item) if isinstance(sub, dict) else copy.deepcopy(item)
        for key, sub in properties.items():
            if key not in filled and "default" in sub:
                filled[key] = _with_defaults(root, sub, copy.deepcopy(sub["default"]))
        return filled
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            return [_with_defaults(root, items, item) for item in value]
        return copy.deepcopy(value)
    return value


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """One UDP listener. `netflow` takes v5, v9 and IPFIX (told apart per datagram)."""

    address: str
    port: int
    protocol: ListenerProtocol


@dataclass(frozen=True, slots=True)
class ExporterSettings:
    """Overrides for one exporter, keyed by its normalised address (``str(ip_address)``)."""

    address: str
    name: str | None
    sampling_rate: int | None
    sampling_byte_order: ByteOrder

    @property
    def little_endian_sampling(self) -> bool:
        """RouterOS v6 sends the sampling interval little-endian."""
        return self.sampling_byte_order == "little"


@dataclass(frozen=True, slots=True)
class TemplateHoldSettings:
    """How many data sets wait for a late template, and for how long."""

    max_sets: int
    max_age_s: float


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    """Flow reception. `workers` is as configured: 0 means one per CPU (`worker_count()`).
    An empty `allowed_exporters` admits every source; `debug` is the original's
    ``collectors.netflow.config.debug``."""

    listeners: tuple[ListenerSettings, ...]
    workers: int
    receive_buffer_bytes: int
    template_hold: TemplateHoldSettings
    exporters: Mapping[str, ExporterSettings]
    debug: bool
    allowed_exporters: tuple[IPNetwork, ...]
    max_templates: int
    max_exporters: int
    max_clock_skew_s: float
    template_state: bool

    def worker_count(self) -> int:
        """Workers to start: the configured number, or one per usable CPU for 0."""
        if self.workers:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Local data: embedded store directory, retention, partitioning and spool."""

    path: Path
    ttl_days: int
    partition_by: str
    spool_dir: Path  # storage.spool_dir, or <path>/spool
    spool_max_bytes: int
    spool_max_age_s: float
    state_db: str = ""  # SQLAlchemy URL; storage.state_db or SQLite in `path`


@dataclass(frozen=True, slots=True)
class ClickHouseSettings:
    """Where flows are stored: a ClickHouse server (`host` set) or the embedded chDB."""

    host: str | None
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    table: str
    secure: bool

    @property
    def embedded(self) -> bool:
        """True when no server is configured: chDB in `storage.path`."""
        return self.host is None


@dataclass(frozen=True, slots=True)
class InsertSettings:
    """Batching of inserts into the store."""

    batch_size: int
    flush_interval_ms: int

    @property
    def flush_interval_s(self) -> float:
        return self.flush_interval_ms / 1000.0


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The Prometheus endpoint; `listen` as written, `host`/`port` split from it."""

    listen: str
    host: str
    port: int
    traffic_labels: tuple[str, ...] = ()
    traffic_max_series: int = 1000


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """The control plane's HTTP API; `listen` as written, `host`/`port` split from it."""

    listen: str
    host: str
    port: int
    enabled: bool = True
    dev_mode: bool = False
    max_body_bytes: int = 1 << 20


@dataclass(frozen=True, slots=True)
class GoBgpSettings:
    """GoBGP's gRPC API address, and how the RIB mirror reads it."""

    api: str
    host: str
    port: int
    stale_after_s: float = 3600.0
    dump_limit: int = 100000


@dataclass(frozen=True, slots=True)
class BgpListenerSettings:
    """The router session GoBGP holds (the original ``bgp.bgp_listener``).

    `router_id` falls back to `listen_ip` and `local_asn` to `asn`, as the original
    documented.
    """

    enabled: bool
    listen_ip: str | None
    router_id: str | None
    peer_ip: str | None
    local_asn: int | None
    remote_asn: int | None
    max_peers: int


@dataclass(frozen=True, slots=True)
class BgpSettings:
    listener: BgpListenerSettings
    gobgp: GoBgpSettings
    prefix_file: Path | None = None  # a JSON prefix table instead of GoBGP's RIB


@dataclass(frozen=True, slots=True)
class GeoIpSettings:
    """MaxMind-format databases; None disables that lookup."""

    asn_db: Path | None
    city_db: Path | None
    reload_interval_s: float = 60.0
    cache_size: int = 262144


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    enabled: bool
    brokers: tuple[str, ...]
    topic: str
    group_id: str


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """PTR lookups; `nameserver` None means the system's resolvers.  Durations in seconds."""

    nameserver: str | None
    port: int = 53
    timeout_s: float = 2.0
    max_inflight: int = 64
    rate_per_s: float = 200.0
    backlog: int = 10000
    cache_size: int = 262144
    min_ttl_s: float = 300.0
    max_ttl_s: float = 86400.0
    negative_ttl_s: float = 3600.0
    private: bool = True


@dataclass(frozen=True, slots=True)
class SnmpTargetSettings:
    """One SNMP agent naming the interfaces of one flow exporter."""

    exporter: str
    host: str
    port: int
    version: str
    community: str = field(repr=False)
    user: str | None
    auth_protocol: str
    auth_key: str | None = field(repr=False)
    priv_protocol: str
    priv_key: str | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class SnmpSettings:
    enabled: bool
    target: str | None
    community: str = field(repr=False)
    port: int
    timeout_s: float
    retries: int
    interval_s: float = 300.0
    targets: tuple[SnmpTargetSettings, ...] = ()


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    """One entry of the operator's network classification (``networks``)."""

    prefix: IPNetwork
    name: str
    customer: str


@dataclass(frozen=True, slots=True)
class DetectionSettings:
    """The detection engine (``detection.*``); durations in seconds."""

    enabled: bool
    rules_path: Path | None
    flow_cache_max_window_s: float
    debug: bool
    alerts_log: Path = Path("detections.log")
    slack_webhook: str | None = None
    webhooks: tuple[str, ...] = ()
    max_keys_per_rule: int = 100000
    samples_per_detection: int = 5


@dataclass(frozen=True, slots=True)
class AnomalySettings:
    """Anomaly scoring (``anomaly.*``, detect/anomaly.py); durations in seconds."""

    enabled: bool = False
    window_s: float = 60.0
    train_interval_s: float = 600.0
    model_path: Path | None = None
    contamination: float | str = 0.005
    min_baseline: int = 1000
    baseline_size: int = 100000
    trees: int = 100
    tree_samples: int = 1024
    min_flows: int = 1
    store_scores: bool = True
    store_min_score: float = 0.6


@dataclass(frozen=True, slots=True)
class RouterApiSettings:
    """The router's RouterOS API (``blackhole.router_api``), read to verify blackholes;
    durations in seconds."""

    host: str
    port: int
    username: str
    password: str = field(repr=False)
    tls: bool = False
    ca_file: Path | None = None
    timeout_s: float = 3.0
    interval_s: float = 30.0


@dataclass(frozen=True, slots=True)
class BlackholeSettings:
    """Blackholing limits and defaults (``blackhole.*``); durations in seconds."""

    dry_run: bool
    max_active: int
    max_per_minute: int
    min_prefix_length_v4: int
    min_prefix_length_v6: int
    never: tuple[str, ...]
    next_hop_v4: str
    next_hop_v6: str
    communities: tuple[str, ...]
    manual_duration_s: float
    log_file: Path
    reconcile_interval_s: float
    max_active_sources: int | None = None  # None: max_active
    max_active_victims: int | None = None  # None: max_active
    no_export: bool = False
    max_duration_s: float | None = None  # None: no maximum
    repeat_factor: float = 1.0
    repeat_window_s: float = 0.0
    never_until: tuple[tuple[str, float], ...] = ()  # allow-list entries that lapse: (prefix, epoch seconds)
    confirm_timeout_s: float = 10.0
    router_api: RouterApiSettings | None = None  # None: not verified on the router


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service runs on, validated and typed.

    `raw` is the document as written (validated, no defaults); `effective` is the same with
    every default and derived value filled in (what `GET config` shows).  Neither takes
    part in comparisons, so two files meaning the same thing give equal settings.
    """

    collectors: CollectorSettings
    storage: StorageSettings
    clickhouse: ClickHouseSettings
    insert: InsertSettings
    metrics: MetricsSettings
    api: ApiSettings
    bgp: BgpSettings
    geoip: GeoIpSettings
    kafka: KafkaSettings
    dns: DnsSettings
    snmp: SnmpSettings
    detection: DetectionSettings
    blackhole: BlackholeSettings
    enrich: frozenset[str]
    anomaly: AnomalySettings
    my_asn: int | None
    my_prefixes: tuple[IPNetwork, ...]
    networks: tuple[NetworkSettings, ...]
    timezone: str
    debug: bool
    log_level: str
    source: Path | None = field(default=None, compare=False)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    effective: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def default(cls) -> Settings:
        """The embedded default: what an empty config file means."""
        return parse_config({})


# --------------------------------------------------------------------------- config


def load_config(path: str | os.PathLike[str]) -> Settings:
    """Read, validate and type the config file at `path`.

    Raises ConfigError listing every problem, one line each (``FILE: $.path: reason``).
    An empty file is the embedded default.
    """
    document = _read_yaml_file(path)
    return _parse_config(document, os.fspath(path), Path(path))


def parse_config(document: object, source: str = "config") -> Settings:
    """Validate and type a config document already parsed (the API, tests); `source`
    names it in the problems."""
    return _parse_config(document, source, None)


def checked_at_start(settings: Settings) -> list[str]:
    """What `settings` asks of this machine, which only `run` can check when it starts
    (``flowenricher validate`` says so rather than pretend it checked them)."""
    notes = []
    if "geoip" in settings.enrich:
        for key in ("asn_db", "city_db"):
            db = getattr(settings.geoip, key)
            if db is not None:
                notes.append(f"$.geoip.{key}: {str(db)!r} is opened and checked as a MaxMind database")
    if "snmp" in settings.enrich:
        for target in settings.snmp.targets:
            try:
                ipaddress.ip_address(target.exporter)
            except ValueError:
                notes.append(f"$.snmp.target: the host name {target.exporter!r} is resolved to the exporter's "
                             "address")
    if "ptr" in settings.enrich and settings.dns.nameserver is None:
        notes.append("$.dns.nameserver: not set: the system's resolver (/etc/resolv.conf) must be configured")
    if settings.api.enabled and not is_loopback(settings.api.host) and not settings.api.dev_mode:
        notes.append(f"$.api.listen: {settings.api.listen} is beyond this machine: the API refuses to start "
                     "until an API token exists (`flowenricher token create`)")
    return notes


def _parse_config(document: object, source: str, path: Path | None) -> Settings:
    raw = {} if document is None else document
    problems = _schema_problems(CONFIG_SCHEMA, raw)
    if isinstance(raw, dict):
        problems += _config_checks(raw)
    _raise_if_problems(source, raw, problems)
    assert isinstance(raw, dict)  # the schema requires an object
    return _build_settings(cast("dict[str, Any]", raw), path)


def _mapping(document: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    """The nested mapping at `keys`, or an empty one where the document has none."""
    node: object = document
    for key in keys:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def _config_checks(raw: Mapping[str, Any]) -> list[_Problem]:
    """Cross-field rules JSON Schema cannot express; defensive about types, which the
    schema reports on its own."""
    problems: list[_Problem] = []
    collectors = _mapping(raw, "collectors")

    bindaddr = _mapping(collectors, "netflow", "config").get("bindaddr", "0.0.0.0")
    listeners = collectors.get("listeners")
    if isinstance(listeners, list):
        seen: dict[tuple[str, int], int] = {}
        for index, item in enumerate(listeners):
            if not isinstance(item, dict) or not isinstance(item.get("port"), int) or item["port"] == 0:
                continue
            address = item.get("address", bindaddr)
            try:
                normalised = str(ipaddress.ip_address(address))
            except ValueError:
                continue
            where = seen.setdefault((normalised, item["port"]), index)
            if where != index:
                problems.append(_Problem(("collectors", "listeners", index),
                                         f"same address and port as listeners[{where}]"))

    exporters = collectors.get("exporters")
    if isinstance(exporters, dict):
        known: dict[str, str] = {}
        for key in exporters:
            try:
                normalised = exporter_key(key)
            except ValueError:
                continue
            first = known.setdefault(normalised, key)
            if first != key:
                problems.append(_Problem(("collectors", "exporters", key), f"same exporter as {first!r}"))

    allowed = collectors.get("allowed_exporters")
    if isinstance(allowed, list):
        first_index: dict[str, int] = {}
        for index, item in enumerate(allowed):
            try:
                network = str(ipaddress.ip_network(item))
            except (TypeError, ValueError):
                continue  # the schema reports it
            earlier = first_index.setdefault(network, index)
            if earlier != index:
                problems.append(_Problem(("collectors", "allowed_exporters", index),
                                         f"same network as allowed_exporters[{earlier}]"))

    partition_by = _mapping(raw, "storage").get("partition_by")
    if isinstance(partition_by, str):  # the same check the store makes when it starts
        try:
            flow_partition_column(partition_by)
        except ValueError as err:
            problems.append(_Problem(("storage", "partition_by"), str(err)))

    # Keys of the original that the appliance cannot honour yet are refused, never ignored.
    if _mapping(raw, "kafka").get("enabled") is True:
        problems.append(_Problem(("kafka", "enabled"), "the Kafka input is not supported yet: set enabled: false "
                                                      "(flows are received over UDP on collectors.listeners)"))

    anomaly = _mapping(raw, "anomaly")
    window = seconds_or_none(anomaly.get("window", 60))
    if window is not None and (window < 1 or window != int(window)):
        problems.append(_Problem(("anomaly", "window"), "must be whole seconds, at least 1s"))
    interval = seconds_or_none(anomaly.get("train_interval", 600))
    if interval is not None and interval < 60:
        problems.append(_Problem(("anomaly", "train_interval"), "must be at least 1m (each training reads the "
                                                                "whole baseline)"))

    session = _mapping(raw, "bgp", "bgp_listener")
    if session.get("enabled") is True:
        router_id = session.get("router_id")
        listen_ip = session.get("listen_ip")
        if not router_id:
            try:
                usable = isinstance(listen_ip, str) and ipaddress.ip_address(listen_ip).version == 4
            except ValueError:
                usable = True  # the schema reports the bad address
            if not usable:
                problems.append(_Problem(("bgp", "bgp_listener", "router_id"),
                                         "required when listen_ip is not an IPv4 address "
                                         "(the BGP identifier is an IPv4 address)"))
        if session.get("asn") is None and session.get("local_asn") is None:
            problems.append(_Problem(("bgp", "bgp_listener"),
                                     "'asn' or 'local_asn' is required (this side's AS number)"))
    problems += _traffic_label_checks(_mapping(raw, "metrics", "traffic"))
    problems += _webhook_checks(_mapping(raw, "detection"))
    problems += _dns_checks(_mapping(raw, "dns"))
    dev_mode = _mapping(raw, "api").get("dev_mode") is True
    problems += _snmp_checks(_mapping(raw, "snmp"), dev_mode)
    clickhouse = _mapping(raw, "clickhouse")
    host, password = clickhouse.get("host"), clickhouse.get("password", "")
    problem = (clickhouse_password_problem(host, password)
               if not dev_mode and isinstance(host, str | None) and isinstance(password, str) else None)
    if problem is not None:
        problems.append(_Problem(("clickhouse", "password"), f"{problem}{_DEV_MODE}"))
    problems += _blackhole_checks(_mapping(raw, "blackhole"))
    return problems


def _default(*keys: str) -> Any:
    """The schema's default of the setting at `keys` (``"dns", "max_ttl"``)."""
    node: Mapping[str, Any] = load_schema(CONFIG_SCHEMA)
    for key in keys:
        node = node["properties"][key]
    return node.get("default")


def _traffic_label_checks(traffic: Mapping[str, Any]) -> list[_Problem]:
    """The labels of the Prometheus traffic counters (traffic_labels.py holds the rule)."""
    labels = traffic.get("labels", [])
    max_series = traffic.get("max_series", _default("metrics", "traffic", "max_series"))
    if not isinstance(labels, list):
        return []  # the schema reports it
    valid_cap = isinstance(max_series, int) and not isinstance(max_series, bool) and max_series >= 1
    return [_Problem(("metrics", "traffic", *path), message)
            for path, message in label_problems(labels, max_series if valid_cap else None)]


def _webhook_checks(detection: Mapping[str, Any]) -> list[_Problem]:
    """Where detections are POSTed: a URL the notifier can send to (detect/actions.py's rule)."""
    from .detect.actions import url_problem  # detect/ imports this module: imported late

    urls: list[tuple[tuple[JsonPathElement, ...], object]] = [(("detection", "slack_webhook"),
                                                              detection.get("slack_webhook"))]
    hooks = detection.get("webhooks")
    urls += [(("detection", "webhooks", index), url) for index, url in enumerate(hooks if isinstance(hooks, list) else [])]
    problems = []
    for path, url in urls:
        # A URL without http(s):// is the schema's to report; this is the rest of the rule.
        problem = url_problem(url) if isinstance(url, str) and url.startswith(("http://", "https://")) else None
        if problem is not None:
            problems.append(_Problem(path, problem))
    return problems


def _dns_checks(dns: Mapping[str, Any]) -> list[_Problem]:
    """The answer cache's TTL bounds must leave room between them."""
    low = seconds_or_none(dns.get("min_ttl", _default("dns", "min_ttl")))
    high = seconds_or_none(dns.get("max_ttl", _default("dns", "max_ttl")))
    if low is not None and high is not None and low > high:
        key = "min_ttl" if "min_ttl" in dns else "max_ttl"
        return [_Problem(("dns", key), f"min_ttl ({low:g}s) is longer than max_ttl ({high:g}s)")]
    return []


_SNMP_CREDENTIALS = ("version", "community", "user", "auth_protocol", "auth_key", "priv_protocol", "priv_key")


_DEV_MODE = " (api.dev_mode: true allows it with a warning; never in production)"


def _snmp_checks(snmp: Mapping[str, Any], dev_mode: bool) -> list[_Problem]:
    """Each agent's credentials (snmp.target with the block's, each of snmp.targets with
    its own over the block's) by the rule enrich/snmp.py polls with, and outside dev mode
    no default community for an agent on the network (default_secrets.py); an exporter
    listed twice; a poll interval of 0.  A snmp.target that is a host name is resolved
    at start."""
    problems: list[_Problem] = []
    block = {key: snmp.get(key, _default("snmp", key)) for key in _SNMP_CREDENTIALS}
    agents: list[tuple[tuple[JsonPathElement, ...], object, object, dict[str, Any]]] = []
    if snmp.get("enabled") is True and snmp.get("target"):
        agents.append((("snmp",), snmp.get("target"), snmp.get("target"), {}))
    targets = snmp.get("targets")
    for index, entry in enumerate(targets if isinstance(targets, list) else []):
        if isinstance(entry, Mapping):
            own = {key: value for key, value in entry.items() if key in _SNMP_CREDENTIALS and value is not None}
            exporter = entry.get("exporter")
            agents.append((("snmp", "targets", index), exporter, entry.get("host") or exporter, own))
    seen: dict[str, tuple[JsonPathElement, ...]] = {}
    for where, exporter, host, own in agents:
        merged = {**block, **own}
        if not all(isinstance(merged[key], str | None) for key in _SNMP_CREDENTIALS):
            continue  # the schema reports the type
        texts = {key: str(merged[key] or "") for key in _SNMP_CREDENTIALS}
        found = credential_problems(**texts)
        open_community = snmp_community_problem(str(host), texts["version"], texts["community"])
        if open_community is not None and not dev_mode:
            found.append(("community", f"{open_community}{_DEV_MODE}"))
        for key, reason in found:
            if where == ("snmp",) or key in own:
                problems.append(_Problem((*where, key), reason))
            else:
                problems.append(_Problem(where, f"{key} (from snmp.{key}): {reason}"))
        try:
            address = str(ipaddress.ip_address(str(exporter)))
        except ValueError:
            continue  # a host name (resolved at start) or a bad address (the schema reports it)
        first = seen.setdefault(address, where)
        if first != where:
            problems.append(_Problem((*where, "exporter") if where != ("snmp",) else (*where, "target"),
                                     f"exporter {address} is already polled by {json_path(first)}"))
    if seconds_or_none(snmp.get("interval", _default("snmp", "interval"))) == 0:
        problems.append(_Problem(("snmp", "interval"), "must be longer than 0"))
    return problems


def _blackhole_checks(bh: Mapping[str, Any]) -> list[_Problem]:
    """The allow list's lapsing entries must say when in a form that cannot be misread; a
    router API certificate only with TLS."""
    problems: list[_Problem] = []
    never = bh.get("never")
    for index, item in enumerate(never if isinstance(never, list) else []):
        if isinstance(item, Mapping) and item.get("until") is not None:
            try:
                _until(item["until"])
            except ValueError as err:
                problems.append(_Problem(("blackhole", "never", index, "until"), str(err)))
    api = bh.get("router_api")
    if isinstance(api, Mapping) and api.get("ca_file") and not api.get("tls"):
        problems.append(_Problem(("blackhole", "router_api", "ca_file"),
                                 "is set, but tls is not: the plain API (port 8728) uses no certificate"))
    return problems


def _default_listeners(bindaddr: str, bindport: int) -> list[dict[str, Any]]:
    listeners: list[dict[str, Any]] = []
    for port, protocol in ((bindport, "netflow"), (IPFIX_PORT, "netflow"), (SFLOW_PORT, "sflow")):
        if all(item["port"] != port for item in listeners):
            listeners.append({"address": bindaddr, "port": port, "protocol": protocol})
    return listeners


def _build_settings(raw: dict[str, Any], path: Path | None) -> Settings:
    root = load_schema(CONFIG_SCHEMA)
    eff: dict[str, Any] = _with_defaults(root, root, raw)

    # Derived defaults, written back into `effective` so it shows what runs.
    col = eff["collectors"]
    netflow = col["netflow"]["config"]
    bindaddr, bindport = str(netflow["bindaddr"]), int(netflow["bindport"])
    raw_listeners = _mapping(raw, "collectors").get("listeners")
    if isinstance(raw_listeners, list):
        col["listeners"] = [
            {"address": item.get("address", bindaddr), "port": item["port"],
             "protocol": item.get("protocol", "netflow")}
            for item in raw_listeners
        ]
    else:
        col["listeners"] = _default_listeners(bindaddr, bindport)
    storage = eff["storage"]
    if storage["spool_dir"] is None:
        storage["spool_dir"] = os.path.join(storage["path"], "spool")
    if eff["anomaly"]["model_path"] is None:
        eff["anomaly"]["model_path"] = os.path.join(storage["path"], "anomaly-model.joblib")
    if "log_level" not in raw and eff["debug"]:
        eff["log_level"] = "debug"

    exporters = {
        exporter_key(key): ExporterSettings(
            address=exporter_key(key),
            name=value["name"],
            sampling_rate=None if value["sampling_rate"] is None else int(value["sampling_rate"]),
            sampling_byte_order=value["sampling_byte_order"],
        )
        for key, value in col["exporters"].items()
    }
    collectors = CollectorSettings(
        listeners=tuple(ListenerSettings(str(item["address"]), int(item["port"]), item["protocol"])
                        for item in col["listeners"]),
        workers=int(col["workers"]),
        receive_buffer_bytes=int(col["receive_buffer_bytes"]),
        template_hold=TemplateHoldSettings(int(col["template_hold"]["max_sets"]),
                                           float(col["template_hold"]["max_age_s"])),
        exporters=MappingProxyType(exporters),
        debug=bool(netflow["debug"]),
        allowed_exporters=tuple(ipaddress.ip_network(item) for item in col["allowed_exporters"]),
        max_templates=int(col["max_templates"]),
        max_exporters=int(col["max_exporters"]),
        max_clock_skew_s=parse_duration(col["max_clock_skew"]),
        template_state=bool(col["template_state"]),
    )

    ch = eff["clickhouse"]
    clickhouse = ClickHouseSettings(
        host=ch["host"] or None, port=int(ch["port"]), user=ch["user"], password=ch["password"],
        database=ch["database"], table=ch["table"], secure=bool(ch["secure"]),
    )
    session = eff["bgp"]["bgp_listener"]
    listener = BgpListenerSettings(
        enabled=bool(session["enabled"]),
        listen_ip=session["listen_ip"],
        router_id=session["router_id"] or session["listen_ip"],
        peer_ip=session["peer_ip"],
        local_asn=_optional_int(session["local_asn"] if session["local_asn"] is not None else session["asn"]),
        remote_asn=_optional_int(session["remote_asn"]),
        max_peers=int(session["max_peers"]),
    )
    gobgp_api = eff["bgp"]["gobgp"]["api"]
    gobgp_host, gobgp_port = ("", 0) if gobgp_api.startswith("unix://") else split_host_port(gobgp_api)
    metrics_host, metrics_port = split_host_port(eff["metrics"]["listen"])
    api_host, api_port = split_host_port(eff["api"]["listen"])
    snmp = eff["snmp"]
    detection = eff["detection"]
    geoip = eff["geoip"]
    kafka = eff["kafka"]

    return Settings(
        collectors=collectors,
        storage=StorageSettings(
            path=Path(storage["path"]), ttl_days=int(storage["ttl_days"]),
            partition_by=storage["partition_by"],
            spool_dir=Path(storage["spool_dir"]), spool_max_bytes=int(storage["spool_max_bytes"]),
            spool_max_age_s=float(storage["spool_max_age_s"]),
            state_db=storage["state_db"] or f"sqlite:///{os.path.abspath(os.path.join(storage['path'], 'state.db'))}",
        ),
        clickhouse=clickhouse,
        insert=InsertSettings(int(eff["insert"]["batch_size"]), int(eff["insert"]["flush_interval_ms"])),
        metrics=MetricsSettings(eff["metrics"]["listen"], metrics_host, metrics_port,
                                tuple(eff["metrics"]["traffic"]["labels"]), int(eff["metrics"]["traffic"]["max_series"])),
        api=ApiSettings(eff["api"]["listen"], api_host, api_port, bool(eff["api"]["enabled"]),
                        bool(eff["api"]["dev_mode"]), int(eff["api"]["max_body_bytes"])),
        bgp=BgpSettings(listener, GoBgpSettings(eff["bgp"]["gobgp"]["api"], gobgp_host, gobgp_port,
                                                parse_duration(eff["bgp"]["gobgp"]["stale_after"]),
                                                int(eff["bgp"]["gobgp"]["dump_limit"])),
                        _optional_path(eff["bgp"]["prefix_file"])),
        geoip=GeoIpSettings(_optional_path(geoip["asn_db"]), _optional_path(geoip["city_db"]),
                            parse_duration(geoip["reload_interval"]), int(geoip["cache_size"])),
        kafka=KafkaSettings(
            bool(kafka["enabled"]), tuple(kafka["brokers"]), kafka["topic"], kafka["group_id"],
        ),
        dns=_dns_settings(eff["dns"]),
        snmp=SnmpSettings(
            enabled=bool(snmp["enabled"]), target=snmp["target"], community=snmp["community"],
            port=int(snmp["port"]), timeout_s=float(snmp["timeout"]), retries=int(snmp["retries"]),
            interval_s=parse_duration(snmp["interval"]), targets=_snmp_targets(snmp),
        ),
        detection=DetectionSettings(
            enabled=bool(detection["enable_detection_engine"]),
            rules_path=_optional_path(detection["rules_config"]),
            flow_cache_max_window_s=parse_duration(detection["flow_cache_max_window"]),
            debug=bool(detection["debug_detection"]),
            alerts_log=Path(detection["alerts_log"]), slack_webhook=detection["slack_webhook"],
            webhooks=tuple(detection["webhooks"]), max_keys_per_rule=int(detection["max_keys_per_rule"]),
            samples_per_detection=int(detection["samples_per_detection"]),
        ),
        blackhole=_blackhole_settings(eff["blackhole"]),
        enrich=_parse_enrich(eff["enrich"]),
        anomaly=_anomaly_settings(eff["anomaly"]),
        my_asn=_optional_int(eff["my_asn"]),
        my_prefixes=tuple(ipaddress.ip_network(prefix) for prefix in eff["my_prefixes"]),
        networks=tuple(
            NetworkSettings(ipaddress.ip_network(prefix), *((value, "") if isinstance(value, str)
                                                              else (value["name"], value.get("customer", ""))))
            for prefix, value in eff["networks"].items()
        ),
        timezone=eff["timezone"],
        debug=bool(eff["debug"]),
        log_level=eff["log_level"],
        source=path,
        raw=copy.deepcopy(raw),
        effective=eff,
    )


def _blackhole_settings(bh: Mapping[str, Any]) -> BlackholeSettings:
    # The defaults are the schema's (filled into `bh`); the dataclass defaults above only
    # serve code that builds BlackholeSettings by hand.
    never = [item if isinstance(item, str) else item["prefix"] for item in bh["never"]
             if isinstance(item, str) or not item.get("until")]
    lapsing = tuple((str(item["prefix"]), _until(item["until"])) for item in bh["never"]
                    if not isinstance(item, str) and item.get("until"))
    max_duration = parse_duration(bh["max_duration"])
    return BlackholeSettings(
        max_active_sources=None if bh.get("max_active_sources") is None else int(bh["max_active_sources"]),
        max_active_victims=int(bh["max_active_victims"]), no_export=bool(bh["no_export"]),
        max_duration_s=max_duration or None, repeat_factor=float(bh["repeat_factor"]),
        repeat_window_s=parse_duration(bh["repeat_window"]), never_until=lapsing,
        dry_run=bool(bh["dry_run"]), max_active=int(bh["max_active"]), max_per_minute=int(bh["max_per_minute"]),
        min_prefix_length_v4=int(bh["min_prefix_length_v4"]), min_prefix_length_v6=int(bh["min_prefix_length_v6"]),
        never=tuple(never), next_hop_v4=str(bh["next_hop_v4"]), next_hop_v6=str(bh["next_hop_v6"]),
        communities=tuple(bh["communities"]), manual_duration_s=parse_duration(bh["manual_duration"]),
        log_file=Path(bh["log_file"]), reconcile_interval_s=parse_duration(bh["reconcile_interval"]),
        confirm_timeout_s=parse_duration(bh["confirm_timeout"]), router_api=_router_api(bh["router_api"]),
    )


def _router_api(api: Mapping[str, Any] | None) -> RouterApiSettings | None:
    if api is None:
        return None
    tls = bool(api["tls"])
    return RouterApiSettings(
        host=str(api["host"]), port=int(api["port"] or (8729 if tls else 8728)), username=str(api["username"]),
        password=str(api["password"]), tls=tls, ca_file=Path(api["ca_file"]) if api["ca_file"] else None,
        timeout_s=parse_duration(api["timeout"]), interval_s=parse_duration(api["interval"]))


def _until(value: object) -> float:
    """Epoch seconds of an allow-list entry's `until` (ISO 8601 with a time zone)."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 time such as 2026-12-31T00:00:00Z") from None
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone (write Z or +01:00): the appliance runs in UTC")
    return moment.timestamp()


def _anomaly_settings(an: Mapping[str, Any]) -> AnomalySettings:
    return AnomalySettings(
        enabled=bool(an["enabled"]), window_s=parse_duration(an["window"]),
        train_interval_s=parse_duration(an["train_interval"]), model_path=Path(an["model_path"]),
        contamination=an["contamination"] if an["contamination"] == "auto" else float(an["contamination"]),
        min_baseline=int(an["min_baseline"]), baseline_size=int(an["baseline_size"]), trees=int(an["trees"]),
        tree_samples=int(an["tree_samples"]),
        min_flows=int(an["min_flows"]), store_scores=bool(an["store_scores"]),
        store_min_score=float(an["store_min_score"]),
    )


def _dns_settings(dns: Mapping[str, Any]) -> DnsSettings:
    return DnsSettings(
        nameserver=dns["nameserver"], port=int(dns["port"]), timeout_s=float(dns["timeout"]),
        max_inflight=int(dns["max_inflight"]), rate_per_s=float(dns["rate_per_s"]), backlog=int(dns["backlog"]),
        cache_size=int(dns["cache_size"]), min_ttl_s=parse_duration(dns["min_ttl"]),
        max_ttl_s=parse_duration(dns["max_ttl"]), negative_ttl_s=parse_duration(dns["negative_ttl"]),
        private=bool(dns["private"]),
    )


def _snmp_targets(snmp: Mapping[str, Any]) -> tuple[SnmpTargetSettings, ...]:
    """`snmp.target` (when enabled) first, then `snmp.targets`, each completed from the block."""
    keys = ("port", "version", "community", "user", "auth_protocol", "auth_key", "priv_protocol", "priv_key")
    items: list[dict[str, Any]] = []
    if snmp["enabled"] and snmp["target"]:
        items.append({"exporter": snmp["target"], "host": snmp["target"], **{k: snmp[k] for k in keys}})
    for entry in snmp["targets"]:
        items.append({**{k: snmp[k] for k in keys}, **{k: v for k, v in entry.items() if v is not None},
                      "host": entry.get("host") or entry["exporter"]})
    return tuple(
        SnmpTargetSettings(
            exporter=str(item["exporter"]), host=str(item["host"]), port=int(item["port"]),
            version=str(item["version"]), community=str(item["community"]), user=item["user"],
            auth_protocol=str(item["auth_protocol"]), auth_key=item["auth_key"],
            priv_protocol=str(item["priv_protocol"]), priv_key=item["priv_key"],
        )
        for item in items
    )


def _optional_int(value: object) -> int | None:
    return None if value is None else int(cast("int", value))


def _optional_path(value: object) -> Path | None:
    return None if value is None else Path(cast("str", value))


# --------------------------------------------------------------------------- rules


def load_rules(path: str | os.PathLike[str], *, max_window_s: float | None = None) -> list[dict[str, Any]]:
    """Read and validate a detection rules file; the rules come back with every default
    filled in (keys and values as in the file, e.g. ``time_window: "60s"``; use
    parse_duration and parse_actions on them, or ``detect.rules.Rule.from_validated``).
    An empty file has no rules.  `max_window_s` is ``detection.flow_cache_max_window``:
    a rule looking further back than the engine keeps state for is refused.

    Raises ConfigError listing every problem, one line each.
    """
    return parse_rules(_read_yaml_file(path), os.fspath(path), max_window_s=max_window_s)


def parse_rules(document: object, source: str = "rules", *, max_window_s: float | None = None) -> list[dict[str, Any]]:
    """Validate a rules document already parsed: a list of rules or ``{rules: [...]}``.

    Each problem inside a rule names the rule as well as its path
    (``FILE: $[1].unique_dst_ip: rule 'scan': unknown key ...``): in a file of twenty
    rules an index alone is hard to find.
    """
    raw = [] if document is None else document
    problems = _schema_problems(RULES_SCHEMA, raw)
    rules, prefix = (raw, ()) if isinstance(raw, list) else (_mapping_list(raw, "rules"), ("rules",))
    from .detect.rule_checks import rules_problems  # detect/ imports this module: imported late

    problems += [_Problem(path, message) for path, message in rules_problems(rules, prefix, max_window_s)]
    _raise_if_problems(source, raw, [_name_the_rule(problem, rules, prefix) for problem in problems])
    root = load_schema(RULES_SCHEMA)
    rule_schema = root["$defs"]["rule"]
    return [_with_defaults(root, rule_schema, rule) for rule in rules]


def _mapping_list(document: object, key: str) -> list[Any]:
    value = document.get(key) if isinstance(document, dict) else None
    return value if isinstance(value, list) else []


def _name_the_rule(problem: _Problem, rules: list[Any], prefix: tuple[JsonPathElement, ...]) -> _Problem:
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
    return _Problem(path, f"rule {name!r}: {problem.message}")
