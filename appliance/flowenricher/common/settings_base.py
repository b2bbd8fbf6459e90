"""What every package's settings model is made of: the base model, the value types of
config.yaml (durations, ports, addresses, host:port ...) and the JSON Schema generator.

Each package owns its settings (collector/settings.py, storage/settings.py, ...): one
pydantic model per block of config.yaml whose field aliases are the YAML keys, whose
defaults and bounds are written once, in the field.  schemas/flowenricher.config.schema.json
is generated from those models (tools/gen_schemas.py; a test fails when it is stale), and
the schema is what checks a document first, because its errors are what the operator reads
(``FILE: $.path: reason``, every problem at once); the models then type the checked
document.  A value type written here carries its parser and its schema together, so a
duration is parsed, shown and documented one way wherever it appears.

Pydantic v2 rather than msgspec: bench/settings_models.py measured both (docs/performance.md);
pydantic is already loaded by the API in the same process, and its field aliases, validators
and schema generation cover what the config needs without a second library.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, WithJsonSchema
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# --------------------------------------------------------------------------- host:port

_HOSTNAME = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


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


def is_hostname(text: str) -> bool:
    """A DNS host name (letters, digits, hyphens, dots) as host:port accepts it."""
    return bool(_HOSTNAME.match(text))


def split_list(value: str | Iterable[str]) -> tuple[str, ...]:
    """Items of a comma-separated string (the original's format) or of a list."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(item.strip() for item in items if item.strip())


# --------------------------------------------------------------------------- durations

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNIT = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
DURATION_PATTERN = r"^(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$"


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


def format_duration(value: float | str) -> str:
    """Seconds written back in the config's own syntax (``300`` -> ``5m``, ``0.5`` ->
    ``500ms``), so the effective config reads like the file and parses to the same value."""
    seconds = parse_duration(value)
    if seconds == 0:
        return "0"
    if seconds != int(seconds):
        return f"{seconds * 1000:g}ms"
    whole, text = int(seconds), ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            text += f"{whole // size}{unit}"
            whole %= size
    return text


# --------------------------------------------------------------------------- schema pieces

DEFS: dict[str, dict[str, Any]] = {
    "port": {"description": "A TCP/UDP port; 0 lets the system choose a free one (tests).",
             "type": "integer", "minimum": 0, "maximum": 65535},
    "ipAddress": {"type": "string", "format": "ip-address", "title": "an IPv4 or IPv6 address"},
    "ipAddressOrNull": {"type": ["string", "null"], "format": "ip-address", "title": "an IPv4 or IPv6 address"},
    "hostPort": {"type": "string", "format": "host-port", "title": "host:port"},
    "asnOrNull": {"type": ["integer", "null"], "minimum": 1, "maximum": 4294967295},
    "identifier": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,63}$",
                   "title": "a ClickHouse name (letters, digits and _, not starting with a digit)"},
    "path": {"type": "string", "minLength": 1},
    "pathOrNull": {"type": ["string", "null"], "minLength": 1},
    "duration": {"type": ["string", "integer"], "minimum": 0, "pattern": DURATION_PATTERN,
                 "title": "a duration such as 60s, 1m30s or 500ms, or whole seconds"},
    "durationOrNull": {"type": ["string", "integer", "null"], "minimum": 0, "pattern": DURATION_PATTERN,
                       "title": "a duration such as 60s, 1m30s or 500ms, whole seconds, or null"},
}
"""Shared definitions of the generated schema, named by the types below; ``xOrNull`` is
what ``x | None`` becomes."""


_DEF = "x-flowenricher-def"
"""Where a value type names its shared definition while pydantic generates (pydantic keeps
its own books of ``$ref``s); SchemaGenerator turns it into the ``$ref``."""


def _ref(name: str) -> WithJsonSchema:
    return WithJsonSchema({_DEF: name})


def _network(value: object) -> object:
    return ipaddress.ip_network(value) if isinstance(value, str) else value


Port = Annotated[int, _ref("port")]
IpAddress = Annotated[str, _ref("ipAddress")]
HostPort = Annotated[str, _ref("hostPort")]
Asn = Annotated[int, WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 4294967295})]
Identifier = Annotated[str, _ref("identifier")]
PathText = Annotated[str, _ref("path")]
FilePath = Annotated[Path, _ref("path")]
"""A file or directory, relative to the service's working directory as written."""
Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str),
                     _ref("duration")]
"""Seconds; written as ``60s``, ``1m30s``, ``500ms`` or whole seconds."""
DurationText = Annotated[str | int, _ref("duration")]
"""A duration kept as written (``60s``), for documents shown back as the operator wrote them."""
NETWORK_SCHEMA = {"type": "string", "format": "ip-network", "title": "an IPv4 or IPv6 network in CIDR notation"}
Network = Annotated[IPNetwork, BeforeValidator(_network), PlainSerializer(str, return_type=str),
                    WithJsonSchema(NETWORK_SCHEMA)]
"""A network in CIDR notation, host bits clear."""
Prefix = Annotated[str, WithJsonSchema({"type": "string", "format": "ip-prefix"})]
Url = Annotated[str, WithJsonSchema({"type": "string", "pattern": "^https?://", "title": "an http(s) URL"})]
"""An http(s) URL as the schema checks it; its host is checked by the owning block's problems."""
"""An address (one host) or a network with its /length, host bits clear."""


def formatted(format_name: str, title: str | None = None) -> WithJsonSchema:
    """The schema of a string checked by the format `format_name` (config formats)."""
    schema: dict[str, Any] = {"type": "string", "format": format_name}
    if title:
        schema["title"] = title
    return WithJsonSchema(schema)


def _strip_title(schema: dict[str, Any], cls: type[Any]) -> None:
    """Models are documented by their description; pydantic's class-name title would
    otherwise end up in operator messages ("required property (ListenerSettings)")."""
    schema.pop("title", None)
    if "description" in schema:  # a docstring's line breaks
        schema["description"] = " ".join(str(schema["description"]).split())
    extra = getattr(cls, "schema_extra", None)
    if extra:
        schema.update(extra)


class Section(BaseModel):
    """A block of config.yaml: frozen, unknown keys refused, fields filled by YAML key
    (alias) or by attribute name (code and tests), defaults checked like given values."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True,
                              validate_default=True, json_schema_extra=_strip_title)

    schema_extra: ClassVar[Mapping[str, Any]] = {}
    """Schema keywords a model adds that its fields cannot say (if/then)."""

    def derive(self, **values: Any) -> None:
        """Set derived fields from a validator (the model is frozen once built)."""
        for name, value in values.items():
            object.__setattr__(self, name, value)


def field_default(model: type[BaseModel], key: str) -> Any:
    """The default of the field whose YAML key (or name) is `key` (durations in seconds):
    what the checks of raw documents fall back on for a key the document leaves out."""
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info.get_default(call_default_factory=True)
    raise KeyError(f"{model.__name__} has no setting {key!r}")


class SchemaGenerator(GenerateJsonSchema):
    """pydantic's generator, writing what a hand-written schema would: ``type: [t, null]``
    rather than anyOf for optional scalars (their errors read better), no generated
    titles, the shared definitions of DEFS."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        inner = self.generate_inner(schema["schema"])
        if set(inner) == {_DEF} and f"{inner[_DEF]}OrNull" in DEFS:
            return {_DEF: f"{inner[_DEF]}OrNull"}
        if "const" in inner and not {"$ref", _DEF, "anyOf", "enum"} & set(inner):
            rest = {key: value for key, value in inner.items() if key not in ("type", "const")}
            return rest | {"enum": [inner["const"], None]}
        if "enum" in inner and not {"$ref", _DEF, "anyOf"} & set(inner):
            return {key: value for key, value in inner.items() if key != "type"} | {"enum": [*inner["enum"], None]}
        kind = inner.get("type")
        plain = not {"$ref", _DEF, "anyOf", "enum"} & set(inner)
        if isinstance(kind, str) and plain:
            return {**inner, "type": [kind, "null"]}
        if isinstance(kind, list) and plain:
            return {**inner, "type": [*kind, "null"]}
        return {"anyOf": [inner, {"type": "null"}]}

    def generate(self, schema: Any, mode: Any = "validation") -> JsonSchemaValue:
        used: set[str] = set()
        result: dict[str, Any] = _resolve_defs(super().generate(schema, mode=mode), used)
        definitions = result.setdefault("$defs", {})
        for name in sorted(used):
            definitions[name] = DEFS[name]
        _document_sections(result, definitions)
        if not definitions:
            del result["$defs"]
        return result


def _document_sections(node: Any, definitions: Mapping[str, Any]) -> None:
    """A property holding a block (a model) says what the block is and that it defaults to
    empty, as every other property says its description and default."""
    if isinstance(node, dict):
        for sub in node.get("properties", {}).values():
            refs = [sub] + [item for item in sub.get("anyOf", []) if isinstance(item, dict)]
            if sub.get("$ref") == "#/$defs/duration" and isinstance(sub.get("default"), int | float):
                sub["default"] = format_duration(sub["default"])  # the code writes seconds, the file text
            for ref in refs:
                target = definitions.get(str(ref.get("$ref", "")).rsplit("/", 1)[-1], {})
                if target.get("type") == "object" and "description" in target:
                    sub.setdefault("description", target["description"])
                    sub.setdefault("default", {})
        for value in node.values():
            if isinstance(value, dict | list):
                _document_sections(value, definitions)
    elif isinstance(node, list):
        for item in node:
            _document_sections(item, definitions)


def _resolve_defs(node: Any, used: set[str]) -> Any:
    """`node` with each shared-definition marker made a ``$ref`` (siblings kept)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == _DEF:
                used.add(value)
                out["$ref"] = f"#/$defs/{value}"
            else:
                out[key] = _resolve_defs(value, used)
        return out
    if isinstance(node, list):
        return [_resolve_defs(item, used) for item in node]
    return node


Check = Callable[[Mapping[str, Any]], list[tuple[tuple[str | int, ...], str]]]
"""A package's cross-field check of its raw block: problems as (path in the block, reason)."""
