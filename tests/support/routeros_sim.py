"""A RouterOS 7 API server for tests: the router that the `mikrotik` role configures.

No real RouterOS can run on this machine (DESIGN §3), so this is a protocol-level
stand-in, written from MikroTik's API documentation and kept close to what RouterOS 7
does on the wire:

* words are length-prefixed (1 to 5 byte length, 0xF8 and above reserved); a sentence
  ends with an empty word; attribute words are ``=name=value``, API words ``.tag=x``,
  query words ``?...``;
* replies are ``!re`` (one per item), ``!done`` (with ``=ret=`` for add and get),
  ``!trap`` (``=message=``, ``=category=``; the command still ends with ``!done``),
  ``!fatal`` (then the connection closes) and, from 7.18 on, ``!empty`` before ``!done``
  when a print has nothing to show; every reply of a tagged command carries its ``.tag``;
* ``/login`` with ``=name=``/``=password=`` (the plain method, RouterOS >= 6.43); any
  other command first is answered with ``!fatal not logged in``; ``/quit`` ends the
  session with ``!fatal session terminated on request``;
* ``print`` (``.proplist``, ``?`` queries evaluated as RouterOS's stack machine with
  ``?#|&!.`` and stack-index operations, ``count-only``), ``add`` (ids ``*1``, ``*2`` ...
  in hex), ``set``, ``unset``, ``remove``, ``get``; single-value menus (``/snmp``,
  ``/ip/traffic-flow``) take ``set`` without an id;
* values are normalised as RouterOS prints them: booleans ``yes``/``no``/``true``/``false``
  become ``true``/``false``, durations ``60s`` or ``00:01:00`` become ``1m``, addresses and
  prefixes are canonical (``192.0.2.5/24`` becomes ``192.0.2.0/24``, a bare route
  destination gets ``/32`` or ``/128``); bad values and unknown parameters are trapped;
* fields exist by version (``afi`` from 7.19, ``address-families`` before; ``instance``
  from 7.20, ``router-id`` before), and ``/system/resource`` reports the version, which is
  what community.routeros reads to pick its field set.

The state lives in memory; :meth:`RouterOsSim.snapshot` returns it, and the command line
(``python tests/support/routeros_sim.py --help``) writes it to a JSON file after every
change, which the Molecule scenario compares with what the role declares.  API-SSL is the
same protocol inside TLS (give a certificate and key).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import re
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_VERSION = "7.19.4"


class ApiTrap(Exception):
    """A command failed: answered with ``!trap`` (and ``!done``), the session goes on."""

    def __init__(self, message: str, category: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.category = category


class ApiFatal(Exception):
    """The session ends: ``!fatal`` with this message, then the connection closes."""


# ---------------------------------------------------------------- wire format

def encode_length(n: int) -> bytes:
    """RouterOS's variable-length word length (1 to 5 bytes, big-endian, high bits mark the size)."""
    if n < 0x80:
        return bytes([n])
    if n < 0x4000:
        return (n | 0x8000).to_bytes(2, "big")
    if n < 0x200000:
        return (n | 0xC00000).to_bytes(3, "big")
    if n < 0x10000000:
        return (n | 0xE0000000).to_bytes(4, "big")
    return b"\xf0" + n.to_bytes(4, "big")


def encode_sentence(words: Iterable[str]) -> bytes:
    out = bytearray()
    for word in words:
        raw = word.encode("utf-8")
        out += encode_length(len(raw)) + raw
    out += b"\x00"
    return bytes(out)


class WireReader:
    """Reads words and sentences from a stream, rejecting the reserved control bytes."""

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self._recv = recv

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed")
            buf += chunk
        return bytes(buf)

    def read_length(self) -> int:
        first = self._exact(1)[0]
        if first < 0x80:
            return first
        if first < 0xC0:
            return int.from_bytes(bytes([first]) + self._exact(1), "big") & 0x3FFF
        if first < 0xE0:
            return int.from_bytes(bytes([first]) + self._exact(2), "big") & 0x1FFFFF
        if first < 0xF0:
            return int.from_bytes(bytes([first]) + self._exact(3), "big") & 0xFFFFFFF
        if first == 0xF0:
            return int.from_bytes(self._exact(4), "big")
        raise ApiFatal(f"reserved control byte 0x{first:02x} in word length")

    def read_sentence(self) -> list[str]:
        words: list[str] = []
        while True:
            n = self.read_length()
            if n == 0:
                return words
            words.append(self._exact(n).decode("utf-8", errors="replace"))


# ---------------------------------------------------------------- value types

_DURATION_UNITS = (("w", 604800_000), ("d", 86400_000), ("h", 3600_000), ("m", 60_000), ("s", 1000), ("ms", 1))
_DURATION_PART = re.compile(r"(\d+)(ms|w|d|h|m|s)")


def parse_duration(text: str) -> int:
    """Milliseconds from RouterOS duration input: ``1m``, ``1h30m``, ``90`` (seconds), ``00:01:00``."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return int(text) * 1000
    clock = re.fullmatch(r"(?:(\d+)d)?(\d{1,2}):(\d{2}):(\d{2})", text)
    if clock:
        days, h, m, s = (int(g) if g else 0 for g in clock.groups())
        return ((days * 24 + h) * 60 + m) * 60_000 + s * 1000
    if not text or _DURATION_PART.sub("", text):
        raise ValueError(text)
    unit_ms = dict(_DURATION_UNITS)
    return sum(int(n) * unit_ms[u] for n, u in _DURATION_PART.findall(text))


def format_duration(ms: int) -> str:
    """How RouterOS 7 prints a duration: largest units first, ``0s`` for zero."""
    if ms == 0:
        return "0s"
    parts = []
    for unit, size in _DURATION_UNITS:
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(parts)


Normalizer = Callable[[str], str]


def as_bool(text: str) -> str:
    low = text.lower()
    if low in ("yes", "true"):
        return "true"
    if low in ("no", "false"):
        return "false"
    raise ValueError(text)


def as_duration(text: str) -> str:
    return format_duration(parse_duration(text))


def as_int(lo: int, hi: int) -> Normalizer:
    def norm(text: str) -> str:
        value = int(text, 0) if text.lower().startswith("0x") else int(text)
        if not lo <= value <= hi:
            raise ValueError(f"out of range ({lo}..{hi})")
        return str(value)
    return norm


def as_enum(*choices: str) -> Normalizer:
    def norm(text: str) -> str:
        if text not in choices:
            raise ValueError(text)
        return text
    return norm


def as_address(text: str) -> str:
    return str(ipaddress.ip_address(text))


def as_address_list(text: str) -> str:
    """Comma-separated addresses or prefixes (snmp community ``addresses``)."""
    return ",".join(str(ipaddress.ip_network(p.strip(), strict=False)) for p in text.split(",") if p.strip())


def as_address_or_prefix(text: str) -> str:
    """An address stays an address, a prefix becomes its canonical network (BGP ``remote.address``)."""
    return as_prefix(text) if "/" in text else as_address(text)


def as_list_address_v4(text: str) -> str:
    """An ``/ip/firewall/address-list`` address: IPv4 only, a host prefix printed as the
    bare address (``192.0.2.10/32`` -> ``192.0.2.10``), a network canonical."""
    net = ipaddress.IPv4Network(text, strict=False)
    return str(net.network_address) if net.prefixlen == 32 else str(net)


def as_list_address_v6(text: str) -> str:
    """An ``/ipv6/firewall/address-list`` address: IPv6 only, always printed as a prefix
    (``2001:db8::10`` -> ``2001:db8::10/128``)."""
    return str(ipaddress.IPv6Network(text, strict=False))


def as_prefix(text: str) -> str:
    """A route destination: canonical network, bare addresses become host routes."""
    return str(ipaddress.ip_network(text, strict=False))


def as_text(text: str) -> str:
    return text


POLICIES = ("local", "telnet", "ssh", "ftp", "reboot", "read", "write", "policy", "test", "winbox", "password", "web",
            "sniff", "sensitive", "api", "romon", "rest-api")
"""RouterOS 7's user group policies, in the order it prints them."""


def as_policy(text: str) -> str:
    """A group's ``policy`` as RouterOS 7 prints it: the granted ones, then every other
    one negated (``read,api,!local,...``); an unknown name is refused."""
    granted = set()
    for word in (w.strip() for w in text.split(",") if w.strip()):
        name = word.removeprefix("!")
        if name not in POLICIES:
            raise ValueError(f"unknown policy {name}")
        if not word.startswith("!"):
            granted.add(name)
    return ",".join([p for p in POLICIES if p in granted] + [f"!{p}" for p in POLICIES if p not in granted])


# ---------------------------------------------------------------- routing filters

# The subset of RouterOS 7's routing filter language that the mikrotik role writes:
#   rule    := statement+ ;  statement := "if" "(" expr ")" block ["else" block] | action
#   block   := "{" action* "}" ;  action := ("accept" | "reject" | "set" PROP VALUE) [";"]
#   expr    := and ("||" and)* ;  and := not ("&&" not)* ;  not := ["!"] ("(" expr ")" | matcher)
#   matcher := "afi" FAMILY | "dst-len" OP N | "dst" ("==" | "in") PREFIX | "gw" "==" ADDRESS
#            | ("bgp-communities" | "bgp-large-communities") ("includes" | "any") LIST | "blackhole"
# Anything else is refused when the rule is written, as RouterOS marks it invalid: a
# filter the simulator cannot evaluate must never pass silently.

WELL_KNOWN_COMMUNITIES: dict[str, tuple[int, ...]] = {
                          "graceful-shutdown": (65535, 0), "accept-own": (65535, 1), "llgr-stale": (65535, 6),
                          "no-llgr": (65535, 7), "blackhole": (65535, 666), "no-export": (65535, 65281),
                          "no-advertise": (65535, 65282), "local-as": (65535, 65283), "no-peer": (65535, 65284)}
_TOKEN = re.compile(r"\s*(\|\||&&|==|!=|>=|<=|[(){};!<>]|[^\s(){};!<>=|&]+)")
_FAMILIES = {"ipv4": 4, "ip": 4, "ipv6": 6}


@dataclass(frozen=True)
class BgpRoute:
    """A route as a BGP session hands it to the input filter: prefix, next hop and
    communities (standard as (asn, value), large as (a, b, c))."""

    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    gw: ipaddress.IPv4Address | ipaddress.IPv6Address
    communities: frozenset[tuple[int, ...]] = frozenset()
    large_communities: frozenset[tuple[int, ...]] = frozenset()


def _community_list(text: str, large: bool) -> frozenset[tuple[int, ...]]:
    """RouterOS's comma-separated community list: a:b (16-bit parts) or names, or a:b:c (32-bit)."""
    out = set()
    for item in text.split(","):
        if not large and item in WELL_KNOWN_COMMUNITIES:
            out.add(WELL_KNOWN_COMMUNITIES[item])
            continue
        parts = item.split(":")
        limit = 0xFFFFFFFF if large else 0xFFFF
        if len(parts) != (3 if large else 2) or not all(p.isdigit() and int(p) <= limit for p in parts):
            kind = "a large community a:b:c (each 0-4294967295)" if large else "a community a:b (each 0-65535)"
            raise ValueError(f"{item!r} is not {kind}")
        out.add(tuple(int(p) for p in parts))
    return frozenset(out)


class _Parser:
    """A recursive-descent parser of one rule; `program()` returns a list of statements,
    each ("if", condition, then-actions, else-actions) or ("action", action)."""

    def __init__(self, text: str) -> None:
        self.tokens = _TOKEN.findall(text)
        if "".join(t.strip() for t in self.tokens) != "".join(text.split()):
            raise ValueError(f"syntax error in {text!r}")
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise ValueError(f"syntax error: expected {expected or 'more'}, got {token!r}")
        self.pos += 1
        return token

    def program(self) -> list[tuple[object, ...]]:
        out: list[tuple[object, ...]] = []
        while self.peek() is not None:
            if self.peek() == "if":
                self.take()
                self.take("(")
                cond = self.expr()
                self.take(")")
                then = self.block()
                other: list[tuple[str, ...]] = []
                if self.peek() == "else":
                    self.take()
                    other = self.block()
                out.append(("if", cond, then, other))
            else:
                out.append(("action", self.action()))
        if not out:
            raise ValueError("empty rule")
        return out

    def block(self) -> list[tuple[str, ...]]:
        self.take("{")
        actions = []
        while self.peek() != "}":
            actions.append(self.action())
        self.take("}")
        return actions

    def action(self) -> tuple[str, ...]:
        word = self.take()
        if word in ("accept", "reject"):
            result: tuple[str, ...] = (word,)
        elif word == "set":
            prop, value = self.take(), self.take()
            if prop != "blackhole" or value not in ("yes", "no"):
                raise ValueError(f"unsupported action: set {prop} {value}")
            result = ("set", prop, value)
        else:
            raise ValueError(f"syntax error: unknown action {word!r}")
        if self.peek() == ";":
            self.take()
        return result

    def expr(self) -> object:
        node = self.conjunction()
        while self.peek() == "||":
            self.take()
            node = ("or", node, self.conjunction())
        return node

    def conjunction(self) -> object:
        node = self.negation()
        while self.peek() == "&&":
            self.take()
            node = ("and", node, self.negation())
        return node

    def negation(self) -> object:
        if self.peek() == "!":
            self.take()
            return ("not", self.negation())
        if self.peek() == "(":
            self.take()
            node = self.expr()
            self.take(")")
            return node
        return self.matcher()

    def matcher(self) -> object:
        prop = self.take()
        if prop == "blackhole":
            return ("blackhole",)
        if prop == "afi":
            family = self.take()
            if family not in _FAMILIES:
                raise ValueError(f"unknown afi {family!r}")
            return ("afi", _FAMILIES[family])
        if prop == "dst-len":
            op, value = self.take(), self.take()
            if op not in ("==", "!=", "<", ">", "<=", ">=") or not value.isdigit():
                raise ValueError(f"syntax error: dst-len {op} {value}")
            return ("dst-len", op, int(value))
        if prop == "dst":
            op, value = self.take(), self.take()
            if op not in ("==", "in"):
                raise ValueError(f"syntax error: dst {op}")
            return ("dst", op, ipaddress.ip_network(value, strict=False))
        if prop == "gw":
            self.take("==")
            return ("gw", ipaddress.ip_address(self.take()))
        if prop in ("bgp-communities", "bgp-large-communities"):
            op = self.take()
            if op not in ("includes", "any"):
                raise ValueError(f"unsupported operator {prop} {op}")
            return (prop, op, _community_list(self.take(), prop == "bgp-large-communities"))
        raise ValueError(f"unsupported matcher {prop!r}")


def parse_filter_rule(text: str) -> list[tuple[object, ...]]:
    """The statements of one filter rule; ValueError says what is wrong."""
    return _Parser(text).program()


def as_filter_rule(text: str) -> str:
    parse_filter_rule(text)
    return text


_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b, ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b}


def _matches(node: object, route: BgpRoute, attrs: dict[str, bool]) -> bool:
    assert isinstance(node, tuple)
    kind = node[0]
    if kind == "or":
        return _matches(node[1], route, attrs) or _matches(node[2], route, attrs)
    if kind == "and":
        return _matches(node[1], route, attrs) and _matches(node[2], route, attrs)
    if kind == "not":
        return not _matches(node[1], route, attrs)
    if kind == "blackhole":
        return attrs["blackhole"]
    if kind == "afi":
        return bool(route.dst.version == node[1])
    if kind == "dst-len":
        return _COMPARE[node[1]](route.dst.prefixlen, node[2])
    if kind == "dst":
        net = node[2]
        return route.dst == net if node[1] == "==" else (
            route.dst.version == net.version and route.dst.subnet_of(net))
    if kind == "gw":
        return bool(route.gw == node[1])
    wanted: frozenset[tuple[int, ...]] = node[2]
    have = route.communities if kind == "bgp-communities" else route.large_communities
    return wanted <= have if node[1] == "includes" else bool(wanted & have)


def evaluate_chain(rules: Iterable[str], route: BgpRoute) -> tuple[bool, bool]:
    """Run `route` through a filter chain's rules in order: (accepted, blackhole).  A rule
    that neither accepts nor rejects falls through to the next; the chain's end rejects."""
    attrs = {"blackhole": False}

    def run(actions: Iterable[tuple[str, ...]]) -> bool | None:
        for action in actions:
            if action[0] == "set":
                attrs["blackhole"] = action[2] == "yes"
            else:
                return action[0] == "accept"
        return None

    for text in rules:
        for statement in parse_filter_rule(text):
            if statement[0] == "if":
                _, cond, then, other = statement
                decided = run(then if _matches(cond, route, attrs) else other)  # type: ignore[arg-type]
            else:
                decided = run([statement[1]])  # type: ignore[list-item]
            if decided is not None:
                return decided, attrs["blackhole"]
    return False, False


# ---------------------------------------------------------------- menus

@dataclass(frozen=True)
class Field:
    """One property of a menu: how input is normalised, its default, when it exists."""

    norm: Normalizer = as_text
    default: str | None = None
    read_only: bool = False
    since: str | None = None   # first version with this field
    until: str | None = None   # first version without it
    ref: str | None = None     # the value names an item of this menu (e.g. a BGP instance)


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split(" ")[0]))


@dataclass
class Menu:
    """A RouterOS menu: a list of items with ids, or one item (``single``)."""

    path: str
    fields: dict[str, Field]
    single: bool = False
    required: tuple[str, ...] = ()
    unique: tuple[str, ...] = ()
    items: list[dict[str, str]] = field(default_factory=list)
    required_since: dict[str, str] = field(default_factory=dict)  # field -> first version needing it
    write_only: tuple[str, ...] = ()  # taken by add/set, never printed (a user's password)
    unique_together: tuple[str, ...] = ()  # these fields together name one item (an address list's list+address)

    def fields_for(self, version: str) -> dict[str, Field]:
        key = version_key(version)
        return {name: f for name, f in self.fields.items()
                if (f.since is None or key >= version_key(f.since)) and (f.until is None or key < version_key(f.until))}


def _common_list_fields() -> dict[str, Field]:
    return {"comment": Field(), "disabled": Field(as_bool, "false")}


def _dynamic_route_fields() -> dict[str, Field]:
    """What RouterOS shows of a route a routing protocol installed (read-only)."""
    return {name: Field(read_only=True) for name in (
        "dynamic", "active", "bgp", "belongs-to", "immediate-gw", "bgp.communities", "bgp.large-communities")}


def build_menus(version: str, identity: str) -> dict[str, Menu]:
    """The menus the appliance's role touches, with RouterOS 7 defaults, plus system ones."""
    menus = [
        Menu("/system/resource", {
            "version": Field(read_only=True, default=f"{version} (stable)"),
            "board-name": Field(read_only=True, default="CHR"),
            "architecture-name": Field(read_only=True, default="x86_64"),
            "uptime": Field(read_only=True, default="1h"),
            "platform": Field(read_only=True, default="MikroTik"),
        }, single=True),
        Menu("/system/identity", {"name": Field(default=identity)}, single=True),
        Menu("/ip/traffic-flow", {
            "enabled": Field(as_bool, "false"),
            "interfaces": Field(default="all"),
            "cache-entries": Field(as_enum("128k", "16k", "1k", "256k", "2k", "32k", "4k", "512k", "64k", "8k"), "32k"),
            "active-flow-timeout": Field(as_duration, "30m"),
            "inactive-flow-timeout": Field(as_duration, "15s"),
            "packet-sampling": Field(as_bool, "false"),
            "sampling-interval": Field(as_int(0, 4294967295), "0"),
            "sampling-space": Field(as_int(0, 4294967295), "0"),
        }, single=True),
        Menu("/ip/traffic-flow/target", {
            "disabled": Field(as_bool, "false"),
            "dst-address": Field(as_address),
            "port": Field(as_int(0, 65535), "2055"),
            "src-address": Field(as_address, "0.0.0.0"),
            "version": Field(as_enum("1", "5", "9", "ipfix"), "9"),
            "v9-template-refresh": Field(as_int(0, 65535), "20"),
            "v9-template-timeout": Field(as_duration, "30m"),
        }, required=("dst-address",)),
        Menu("/snmp", {
            "enabled": Field(as_bool, "false"),
            "contact": Field(default=""),
            "location": Field(default=""),
            "engine-id": Field(read_only=True, default="80003a8c04"),
            "engine-id-suffix": Field(default=""),
            "src-address": Field(as_address, "::"),
            "trap-community": Field(default="public"),
            "trap-generators": Field(default="temp-exception"),
            "trap-target": Field(default=""),
            "trap-version": Field(as_enum("1", "2", "3"), "1"),
            "trap-interfaces": Field(default=""),
            "vrf": Field(default="main"),
        }, single=True),
        Menu("/snmp/community", {
            **_common_list_fields(),
            "name": Field(),
            "default": Field(read_only=True, default="false"),
            "addresses": Field(as_address_list, "::/0"),
            "security": Field(as_enum("authorized", "none", "private"), "none"),
            "read-access": Field(as_bool, "true"),
            "write-access": Field(as_bool, "false"),
            "authentication-protocol": Field(as_enum("MD5", "SHA1"), "MD5"),
            "encryption-protocol": Field(as_enum("AES", "DES"), "DES"),
            "authentication-password": Field(default=""),
            "encryption-password": Field(default=""),
        }, required=("name",), unique=("name",)),
        Menu("/routing/bgp/instance", {
            **_common_list_fields(),
            "name": Field(),
            "as": Field(as_int(1, 4294967295)),
            "router-id": Field(as_address),
            "routing-table": Field(default="main"),
            "vrf": Field(default="main"),
            "cluster-id": Field(as_address),
        }, required=("name", "as"), unique=("name",)),
        Menu("/routing/bgp/connection", {
            **_common_list_fields(),
            "name": Field(),
            "as": Field(as_int(1, 4294967295)),
            "address-families": Field(until="7.19"),
            "afi": Field(since="7.19"),
            "router-id": Field(until="7.20"),
            "instance": Field(since="7.20", ref="/routing/bgp/instance"),
            "local.role": Field(as_enum("ebgp", "ebgp-customer", "ebgp-peer", "ebgp-provider", "ebgp-rs",
                                        "ebgp-rs-client", "ibgp", "ibgp-rr", "ibgp-rr-client")),
            "local.address": Field(as_address),
            "remote.address": Field(as_address_or_prefix),
            "remote.as": Field(as_int(1, 4294967295)),
            "remote.port": Field(as_int(1, 65535)),
            "multihop": Field(as_bool),
            "hold-time": Field(as_duration),
            "keepalive-time": Field(as_duration),
            "connect": Field(as_bool, "true"),
            "listen": Field(as_bool, "true"),
            "input.filter": Field(),
            "output.filter-chain": Field(),
            "output.redistribute": Field(),
            "output.network": Field(),
            "routing-table": Field(default="main"),
            "templates": Field(),
        }, required=("name", "local.role", "remote.address"), unique=("name",), required_since={"instance": "7.20"}),
        # `disabled` is only shown once set here (community.routeros models it as unsettable)
        Menu("/routing/filter/rule", {"comment": Field(), "disabled": Field(as_bool), "chain": Field(),
                                      "rule": Field(as_filter_rule)},
             required=("chain",)),
        Menu("/ip/route", {
            **_common_list_fields(),
            **_dynamic_route_fields(),
            "dst-address": Field(as_prefix),
            "gateway": Field(),
            "blackhole": Field(as_bool),
            "distance": Field(as_int(1, 255), "1"),
            "routing-table": Field(default="main"),
            "scope": Field(as_int(0, 255), "30"),
            "target-scope": Field(as_int(0, 255), "10"),
            "suppress-hw-offload": Field(as_bool, "false"),
        }, required=("dst-address",)),
        Menu("/ipv6/route", {
            **_common_list_fields(),
            **_dynamic_route_fields(),
            "dst-address": Field(as_prefix),
            "gateway": Field(),
            "blackhole": Field(as_bool),
            "distance": Field(as_int(1, 255), "1"),
            "routing-table": Field(default="main"),
            "scope": Field(as_int(0, 255), "30"),
            "target-scope": Field(as_int(0, 255), "10"),
        }, required=("dst-address",)),
        # An address list entry: (list, address) names it; RouterOS refuses a second one.
        *(Menu(path, {
            **_common_list_fields(),
            "list": Field(),
            "address": Field(norm),
            "timeout": Field(as_duration),
            "dynamic": Field(read_only=True, default="false"),
            "creation-time": Field(read_only=True, default="2026-01-01 00:00:00"),
        }, required=("list", "address"), unique_together=("list", "address"))
          for path, norm in (("/ip/firewall/address-list", as_list_address_v4),
                             ("/ipv6/firewall/address-list", as_list_address_v6))),
        Menu("/user/group", {"comment": Field(), "name": Field(), "policy": Field(as_policy, as_policy("")),
                             "skin": Field(default="default")}, required=("name",), unique=("name",)),
        Menu("/user", {
            **_common_list_fields(),
            "name": Field(),
            "group": Field(ref="/user/group"),
            "password": Field(default=""),
            "address": Field(as_address_list, ""),
            "last-logged-in": Field(read_only=True),
        }, required=("name", "group"), unique=("name",), write_only=("password",)),
    ]
    if version_key(version) < (7, 20):
        menus = [m for m in menus if m.path != "/routing/bgp/instance"]
    by_path = {m.path: m for m in menus}
    for menu in menus:
        if menu.single:
            menu.items.append({name: f.default for name, f in menu.fields_for(version).items() if f.default is not None})
    # The factory groups (the user the simulator is started with is in "full").
    for gid, name, policy in (("*FFFFFFF1", "read", "local,telnet,ssh,reboot,read,test,winbox,password,web,sniff,"
                                                     "sensitive,api,romon,rest-api"),
                              ("*FFFFFFF2", "write", ",".join(p for p in POLICIES if p not in ("policy", "sensitive"))),
                              ("*FFFFFFF3", "full", ",".join(POLICIES))):
        by_path["/user/group"].items.append({".id": gid, "name": name, "policy": as_policy(policy), "skin": "default"})
    # The factory community: builtin, shown with default=true, not removable.
    by_path["/snmp/community"].items.append({
        ".id": "*0", "name": "public", "default": "true", "addresses": "::/0", "security": "none",
        "read-access": "true", "write-access": "false", "authentication-protocol": "MD5",
        "encryption-protocol": "DES", "authentication-password": "", "encryption-password": "", "disabled": "false"})
    return by_path


# ---------------------------------------------------------------- queries

def _compare(a: str, b: str) -> int:
    try:
        x, y = int(a), int(b)
    except ValueError:
        return (a > b) - (a < b)
    return (x > y) - (x < y)


def query_matches(item: dict[str, str], queries: list[str], normalize: Callable[[str, str], str]) -> bool:
    """RouterOS's query stack machine: each ``?`` word pushes or combines booleans; the
    item matches when every value left on the stack is true (an empty query matches all)."""
    stack: list[bool] = []
    for q in queries:
        if q.startswith("#"):
            for op in q[1:]:
                if op.isdigit():
                    stack.append(stack[int(op)] if int(op) < len(stack) else True)
                elif op == "!":
                    stack.append(not (stack.pop() if stack else True))
                elif op in "|&":
                    b = stack.pop() if stack else True
                    a = stack.pop() if stack else True
                    stack.append(a or b if op == "|" else a and b)
                elif op == ".":
                    stack.append(stack[-1] if stack else True)
                else:
                    raise ApiTrap(f"invalid query operation {op!r}")
            continue
        if q.startswith("-"):
            stack.append(q[1:] not in item)
            continue
        if q[:1] in "<>" and "=" in q:
            name, value = q[1:].split("=", 1)
            if name not in item:
                stack.append(False)
                continue
            sign = _compare(item[name], normalize(name, value))
            stack.append(sign < 0 if q[0] == "<" else sign > 0)
            continue
        if "=" in q:
            # `?name=x` and `?=name=x` (the spelling librouteros sends) are the same test
            name, value = q.removeprefix("=").split("=", 1)
            stack.append(item.get(name) == normalize(name, value))
            continue
        stack.append(q in item)
    return all(stack)


# ---------------------------------------------------------------- the router

class RouterOsState:
    """Menus, ids and the session-independent logic of the commands (thread-safe)."""

    def __init__(self, version: str = DEFAULT_VERSION, identity: str = "MikroTik",
                 on_change: Callable[[RouterOsState], None] | None = None) -> None:
        self.version = version
        self.menus = build_menus(version, identity)
        self.lock = threading.RLock()
        self._next_id = 1
        self._on_change = on_change
        # Adj-RIB-in: what each BGP peer (by address) announced, before the input filter.
        self.received: dict[str, dict[str, BgpRoute]] = {}
        self._route_ids: dict[tuple[str, str], int] = {}
        # Every sentence the sessions received, in order (a login's password blanked): tests
        # count what a client asks, e.g. that it never prints a whole route table.
        self.sentences: list[list[str]] = []

    # ------------------------------------------------------------ BGP routes

    def feed(self, peer: str, routes: Iterable[BgpRoute]) -> None:
        """The routes `peer` announces now (a full table: what is missing was withdrawn)."""
        with self.lock:
            table = {str(r.dst): r for r in routes}
            if self.received.get(peer) == table:
                return
            self.received[peer] = table
            self._changed()

    def _connection_for(self, peer: str) -> dict[str, str] | None:
        address = ipaddress.ip_address(peer)
        for conn in self.menus["/routing/bgp/connection"].items:
            remote = conn.get("remote.address", "")
            if conn.get("disabled") == "true" or not remote:
                continue
            if address in ipaddress.ip_network(remote, strict=False):
                return conn
        return None

    def _install(self) -> None:
        """Recompute the routes BGP installs: each received route through its connection's
        input filter chain (RouterOS re-filters when rules or connections change)."""
        tables = {4: self.menus["/ip/route"], 6: self.menus["/ipv6/route"]}
        for menu in tables.values():
            menu.items[:] = [i for i in menu.items if i.get("bgp") != "true"]
            for static in menu.items:
                # an enabled blackhole route is active; a gateway is never reachable here
                static["active"] = "true" if static.get("blackhole") == "true" and static.get("disabled") != "true" \
                    else "false"
        rules = self.menus["/routing/filter/rule"].items
        for peer, received in sorted(self.received.items()):
            conn = self._connection_for(peer)
            if conn is None:
                continue  # no session configured for this peer: RouterOS would not have one
            chain = conn.get("input.filter", "")
            texts = [r.get("rule", "") for r in rules if r.get("chain") == chain and r.get("disabled") != "true"]
            ibgp = conn.get("local.role", "").startswith("ibgp")
            for key, route in sorted(received.items()):
                accepted, blackhole = evaluate_chain(texts, route) if chain else (True, False)
                if not accepted:
                    continue
                menu = tables[route.dst.version]
                menu.items.append({
                    ".id": f"*{0x8000000 + self._stable_id(peer, key):X}", "dst-address": key, "gateway": str(route.gw),
                    "distance": "200" if ibgp else "20", "scope": "40", "target-scope": "30", "routing-table": "main",
                    "dynamic": "true", "bgp": "true", "active": "true" if blackhole else "false",
                    "blackhole": "true" if blackhole else "false", "belongs-to": f"bgp-IP-{peer}", "disabled": "false",
                    "bgp.communities": ",".join(f"{a}:{b}" for a, b in sorted(route.communities)),
                    "bgp.large-communities": ",".join(":".join(map(str, c)) for c in sorted(route.large_communities)),
                })

    def _stable_id(self, peer: str, key: str) -> int:
        """The same id for the same peer and prefix across recomputations."""
        return self._route_ids.setdefault((peer, key), len(self._route_ids) + 1)

    def _menu(self, path: str) -> Menu:
        menu = self.menus.get(path)
        if menu is None:
            raise ApiTrap("no such command prefix", category=0)
        return menu

    def _normalize(self, menu: Menu, name: str, value: str) -> str:
        fields = menu.fields_for(self.version)
        if name not in fields:
            raise ApiTrap(f"unknown parameter {name}", category=0)
        try:
            return fields[name].norm(value)
        except ValueError as err:
            detail = f" ({err})" if "range" in str(err) or name == "rule" else ""
            raise ApiTrap(f"invalid value for argument {name}{detail}", category=1) from err

    def _find(self, menu: Menu, ids: str) -> list[dict[str, str]]:
        found = []
        for one in ids.split(","):
            item = next((i for i in menu.items if i.get(".id") == one.strip()), None)
            if item is None:
                raise ApiTrap("no such item", category=0)
            found.append(item)
        return found

    def _changed(self) -> None:
        self._install()
        if self._on_change is not None:
            self._on_change(self)

    def execute(self, command: str, attrs: dict[str, str], queries: list[str],
                api: dict[str, str]) -> tuple[list[dict[str, str]], dict[str, str]]:
        """Run one command: the ``!re`` rows and the ``!done`` attributes."""
        path, _, verb = command.rpartition("/")
        with self.lock:
            menu = self._menu(path)
            if verb == "print":
                return self._print(menu, attrs, queries, api), {}
            if verb == "add" and not menu.single:
                return [], {"ret": self._add(menu, attrs)}
            if verb == "set":
                self._set(menu, attrs)
                return [], {}
            if verb == "unset":
                self._unset(menu, attrs)
                return [], {}
            if verb == "remove" and not menu.single:
                self._remove(menu, attrs)
                return [], {}
            if verb == "get":
                return [], {"ret": self._get(menu, attrs)}
            raise ApiTrap("no such command", category=0)

    def _print(self, menu: Menu, attrs: dict[str, str], queries: list[str], api: dict[str, str]) -> list[dict[str, str]]:
        rows = [dict(i) for i in menu.items
                if query_matches(i, queries, lambda n, v: self._query_value(menu, n, v))]
        if "count-only" in attrs:
            return [{"ret": str(len(rows))}]
        rows = [{k: v for k, v in r.items() if k not in menu.write_only} for r in rows]
        proplist = api.get("proplist") or attrs.get(".proplist")
        if proplist:
            wanted = proplist.split(",")
            rows = [{k: v for k, v in r.items() if k in wanted} for r in rows]
        return rows

    def _query_value(self, menu: Menu, name: str, value: str) -> str:
        if name == ".id" or name not in menu.fields_for(self.version):
            return value
        try:
            return menu.fields_for(self.version)[name].norm(value)
        except ValueError:
            return value

    def _checked(self, menu: Menu, attrs: dict[str, str]) -> dict[str, str]:
        out = {}
        for name, value in attrs.items():
            if name in (".id", "numbers"):
                continue
            out[name] = self._normalize(menu, name, value)
            if menu.fields[name].read_only:
                raise ApiTrap(f"failure: {name} is read-only", category=1)
            ref = menu.fields[name].ref
            if ref is not None and not any(i.get("name") == out[name] for i in self._menu(ref).items):
                # RouterOS 7.20 refuses a connection outside an existing instance ("" included)
                raise ApiTrap(f"input does not match any value of {name}", category=1)
        return out

    def _add(self, menu: Menu, attrs: dict[str, str]) -> str:
        values = self._checked(menu, attrs)
        for name in (*menu.required, *(n for n, v in menu.required_since.items()
                                        if version_key(self.version) >= version_key(v))):
            if name not in values:
                raise ApiTrap(f"failure: {name} not specified", category=1)
        for name in menu.unique:
            if any(i.get(name) == values[name] for i in menu.items):
                raise ApiTrap(f"failure: item with such {name} already exists", category=1)
        self._check_unique_together(menu, values, None)
        # read-only fields with a default are shown on a new item too (default=false, dynamic=false)
        item = {name: f.default for name, f in menu.fields_for(self.version).items() if f.default is not None}
        item.update(values)
        item_id = f"*{self._next_id:X}"
        self._next_id += 1
        menu.items.append({".id": item_id, **item})
        self._changed()
        return item_id

    def _targets(self, menu: Menu, attrs: dict[str, str]) -> list[dict[str, str]]:
        ids = attrs.get(".id") or attrs.get("numbers")
        if menu.single:
            return menu.items
        if not ids:
            raise ApiTrap("missing =.id= (no such item)", category=0)
        return self._find(menu, ids)

    def _set(self, menu: Menu, attrs: dict[str, str]) -> None:
        targets = self._targets(menu, attrs)
        if any(i.get("dynamic") == "true" for i in targets):
            raise ApiTrap("failure: cannot change dynamic entry", category=1)
        unset = [k[1:] for k in attrs if k.startswith("!")]
        values = self._checked(menu, {k: v for k, v in attrs.items() if not k.startswith("!")})
        for name in unset:
            if name not in menu.fields_for(self.version):
                raise ApiTrap(f"unknown parameter {name}", category=0)
        for item in targets:
            if item.get("default") == "true" and values.get("name", item["name"]) != item["name"]:
                raise ApiTrap("failure: default community cannot be renamed", category=1)
            for name in menu.unique:
                if name in values and any(i is not item and i.get(name) == values[name] for i in menu.items):
                    raise ApiTrap(f"failure: item with such {name} already exists", category=1)
            self._check_unique_together(menu, {**item, **values}, item)
            item.update(values)
            for name in unset:
                self._reset(menu, item, name)
        self._changed()

    @staticmethod
    def _check_unique_together(menu: Menu, values: dict[str, str], item: dict[str, str] | None) -> None:
        if menu.unique_together and any(
                i is not item and all(i.get(n) == values.get(n) for n in menu.unique_together) for i in menu.items):
            raise ApiTrap("failure: already have such entry", category=1)

    def _reset(self, menu: Menu, item: dict[str, str], name: str) -> None:
        default = menu.fields_for(self.version)[name].default
        if default is None:
            item.pop(name, None)
        else:
            item[name] = default

    def _unset(self, menu: Menu, attrs: dict[str, str]) -> None:
        name = attrs.get("value-name")
        if not name or name not in menu.fields_for(self.version):
            raise ApiTrap(f"unknown parameter {name}", category=0)
        for item in self._targets(menu, attrs):
            self._reset(menu, item, name)
        self._changed()

    def _remove(self, menu: Menu, attrs: dict[str, str]) -> None:
        ids = attrs.get(".id") or attrs.get("numbers") or ""
        targets = self._find(menu, ids)
        if any(i.get("dynamic") == "true" for i in targets):
            raise ApiTrap("failure: cannot remove dynamic entry", category=1)
        if any(i.get("default") == "true" for i in targets):
            raise ApiTrap("failure: can not remove default community", category=1)
        menu.items[:] = [i for i in menu.items if all(i is not t for t in targets)]
        self._changed()

    def _get(self, menu: Menu, attrs: dict[str, str]) -> str:
        name = attrs.get("value-name", "")
        item = self._targets(menu, attrs)[0]
        if name not in menu.fields_for(self.version) and name != ".id":
            raise ApiTrap(f"unknown parameter {name}", category=0)
        return item.get(name, "")

    def snapshot(self) -> dict[str, list[dict[str, str]]]:
        """Every menu's items, as print shows them (system menus left out)."""
        with self.lock:
            return {path: [{k: v for k, v in i.items() if k not in menu.write_only} for i in menu.items]
                    for path, menu in self.menus.items() if not path.startswith("/system/resource")}

    def policies(self, name: str, password: str) -> set[str] | None:
        """The policies of the /user `name` when `password` is its password, else None."""
        with self.lock:
            user = next((u for u in self.menus["/user"].items if u.get("name") == name and u.get("disabled") != "true"),
                        None)
            if user is None or user.get("password", "") != password:
                return None
            group = next((g for g in self.menus["/user/group"].items if g.get("name") == user.get("group")), None)
            return {p for p in (group or {}).get("policy", "").split(",") if p and not p.startswith("!")}


# ---------------------------------------------------------------- route feed from BIRD

_BIRD_ROUTE = re.compile(r"^(\S+/\d+)\s")
_PAIR = re.compile(r"\((\d+),\s*(\d+)\)")
_TRIPLE = re.compile(r"\((\d+),\s*(\d+),\s*(\d+)\)")


def parse_birdc_routes(text: str) -> list[BgpRoute]:
    """The routes of ``birdc show route all ...``: prefix, ``BGP.next_hop`` (its first
    address), ``BGP.community`` and ``BGP.large_community``.  A route without a BGP next
    hop is skipped (it did not come from a BGP session)."""
    routes: list[BgpRoute] = []
    current: dict[str, str] = {}
    communities: dict[str, set[tuple[int, ...]]] = {"std": set(), "large": set()}

    def flush() -> None:
        if current.get("gw"):
            routes.append(BgpRoute(ipaddress.ip_network(current["dst"]), ipaddress.ip_address(current["gw"]),
                                   frozenset(communities["std"]), frozenset(communities["large"])))
        current.clear()
        communities["std"], communities["large"] = set(), set()

    for line in text.splitlines():
        head = _BIRD_ROUTE.match(line)
        if head:
            flush()
            current["dst"] = head.group(1)
            continue
        field_name, _, value = line.strip().partition(": ")
        if field_name == "BGP.next_hop" and "dst" in current:
            current["gw"] = value.split()[0]
        elif field_name == "BGP.community":
            communities["std"] = {(int(a), int(b)) for a, b in _PAIR.findall(value)}
        elif field_name == "BGP.large_community":
            communities["large"] = {(int(a), int(b), int(c)) for a, b, c in _TRIPLE.findall(value)}
    flush()
    return routes


class BirdFeed:
    """Feeds the routes one BIRD protocol holds to the simulator as one BGP peer's
    announcements: the Molecule scenario's BIRD keeps the BGP session with the appliance,
    and the simulated router's route table follows what that session receives."""

    def __init__(self, state: RouterOsState, socket_path: Path, protocols: Iterable[str], peer: str,
                 interval: float = 0.2, birdc: str = "birdc") -> None:
        self.state, self.socket_path, self.protocols, self.peer = state, socket_path, list(protocols), peer
        self.interval, self.birdc = interval, birdc
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bird-feed", daemon=True)

    def poll(self) -> None:
        """One read of BIRD's routes into the simulator (a failed read changes nothing)."""
        routes: list[BgpRoute] = []
        for protocol in self.protocols:
            done = subprocess.run([self.birdc, "-s", str(self.socket_path), "show", "route", "all", "protocol", protocol],
                                  capture_output=True, text=True, timeout=10, check=False)
            if done.returncode != 0 or "BIRD" not in done.stdout or "error" in done.stdout.lower():
                return
            routes += parse_birdc_routes(done.stdout)
        self.state.feed(self.peer, routes)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.poll()

    def start(self) -> BirdFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# ---------------------------------------------------------------- sessions

class Session:
    """One API connection: parses sentences, handles login, tags and replies."""

    def __init__(self, state: RouterOsState, users: dict[str, str], sock: socket.socket) -> None:
        self.state = state
        self.users = users
        self.sock = sock
        self.reader = WireReader(sock.recv)
        self.user: str | None = None
        self.policies: set[str] = set()

    def send(self, *words: str) -> None:
        self.sock.sendall(encode_sentence(words))

    def serve(self) -> None:
        try:
            while True:
                sentence = self.reader.read_sentence()
                if not sentence:
                    continue  # an empty sentence is ignored
                self.handle(sentence)
        except ApiFatal as fatal:
            self.send("!fatal", str(fatal))
        except (EOFError, OSError):
            pass

    def handle(self, sentence: list[str]) -> None:
        with self.state.lock:
            self.state.sentences.append([w if not w.startswith("=password=") else "=password=" for w in sentence])
        command, rest = sentence[0], sentence[1:]
        attrs: dict[str, str] = {}
        api: dict[str, str] = {}
        queries: list[str] = []
        for word in rest:
            if word.startswith("="):
                name, _, value = word[1:].partition("=")
                attrs[name] = value
            elif word.startswith("."):
                name, _, value = word[1:].partition("=")
                api[name] = value
            elif word.startswith("?"):
                queries.append(word[1:])
            else:
                self.send("!trap", "=message=unknown word " + word[:40], *self._tag(api))
                self.send("!done", *self._tag(api))
                return
        tag = self._tag(api)
        if command == "/quit":
            raise ApiFatal("session terminated on request")
        if command == "/login":
            self._login(attrs, tag)
            return
        if self.user is None:
            raise ApiFatal("not logged in")
        if command == "/cancel":
            self.send("!done", *tag)
            return
        try:
            verb = command.rpartition("/")[2]
            if verb not in ("print", "get") and ("write" not in self.policies
                                                 or (command.startswith("/user/") and "policy" not in self.policies)):
                raise ApiTrap("not enough permissions (9)", category=5)
            rows, done = self.state.execute(command, attrs, queries, api)
        except ApiTrap as trap:
            category = [f"=category={trap.category}"] if trap.category is not None else []
            self.send("!trap", *category, f"=message={trap.message}", *tag)
            self.send("!done", *tag)
            return
        for row in rows:
            self.send("!re", *(f"={k}={v}" for k, v in row.items()), *tag)
        if not rows and command.endswith("/print") and version_key(self.state.version) >= (7, 18):
            self.send("!empty", *tag)
        self.send("!done", *(f"={k}={v}" for k, v in done.items()), *tag)

    @staticmethod
    def _tag(api: dict[str, str]) -> list[str]:
        return [f".tag={api['tag']}"] if "tag" in api else []

    def _login(self, attrs: dict[str, str], tag: list[str]) -> None:
        name, password = attrs.get("name"), attrs.get("password")
        # the users the simulator was started with are in the group "full"; others are /user items
        policies = (set(POLICIES) if name is not None and password is not None and self.users.get(name) == password
                    else self.state.policies(name or "", password or "") if password is not None else None)
        if policies is not None and "api" not in policies:
            self.send("!trap", "=message=not enough permissions (9)", *tag)
            self.send("!done", *tag)
            return
        if name is not None and policies is not None:
            self.user, self.policies = name, policies
            self.send("!done", *tag)
            return
        self.send("!trap", "=message=invalid user name or password (6)", *tag)
        self.send("!done", *tag)


class RouterOsSim:
    """The API server: plain (8728-style) or API-SSL when `tls` is given; one thread per session."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, users: dict[str, str] | None = None,
                 version: str = DEFAULT_VERSION, tls: tuple[Path, Path] | None = None,
                 state_file: Path | None = None, identity: str = "MikroTik") -> None:
        self.users = users if users is not None else {"admin": ""}
        self.state_file = state_file
        self.state = RouterOsState(version, identity, on_change=self._write_state if state_file else None)
        self._sessions: set[socket.socket] = set()  # closed by stop(), as a reboot drops them
        context: ssl.SSLContext | None = None
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
        sim = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                if context is not None:
                    try:
                        sock = context.wrap_socket(sock, server_side=True)
                    except (ssl.SSLError, OSError):
                        return
                sim._sessions.add(sock)
                try:
                    Session(sim.state, sim.users, sock).serve()
                finally:
                    sim._sessions.discard(sock)

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(socketserver.ThreadingTCPServer):
            address_family = family
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server((host, port), Handler)
        self.host, self.port = host, self.server.server_address[1]
        self._thread: threading.Thread | None = None
        if state_file:
            self._write_state(self.state)

    def _write_state(self, state: RouterOsState) -> None:
        assert self.state_file is not None
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": state.version, "menus": state.snapshot()}, indent=1, sort_keys=True))
        tmp.replace(self.state_file)

    def snapshot(self) -> dict[str, list[dict[str, str]]]:
        return self.state.snapshot()

    def start(self) -> RouterOsSim:
        self._thread = threading.Thread(target=self.server.serve_forever, name="routeros-sim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for sock in list(self._sessions):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> RouterOsSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="RouterOS 7 API simulator (tests only)")
    parser.add_argument("--listen", default="127.0.0.1:8729", help="HOST:PORT")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password-file", type=Path, help="file holding the API user's password")
    parser.add_argument("--cert", type=Path, help="API-SSL certificate (PEM); without it, plain API")
    parser.add_argument("--key", type=Path, help="API-SSL private key (PEM)")
    parser.add_argument("--version", default=DEFAULT_VERSION, help="RouterOS version to report and emulate")
    parser.add_argument("--state-file", type=Path, help="JSON state written after every change")
    parser.add_argument("--bird-socket", type=Path, help="BIRD control socket: its routes feed the route table")
    parser.add_argument("--bird-protocol", default="appliance", help="the BIRD protocols whose routes are fed (a,b)")
    parser.add_argument("--bird-peer", help="that session's peer address (matched to a BGP connection's remote.address)")
    args = parser.parse_args(argv)
    if bool(args.bird_socket) != bool(args.bird_peer):
        parser.error("--bird-socket and --bird-peer go together")
    host, _, port = args.listen.rpartition(":")
    password = args.password_file.read_text().strip() if args.password_file else ""
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    tls = (args.cert, args.key) if args.cert else None
    sim = RouterOsSim(host.strip("[]"), int(port), {args.user: password}, args.version, tls, args.state_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sim.start()
    feed = (BirdFeed(sim.state, args.bird_socket, args.bird_protocol.split(","), args.bird_peer).start()
            if args.bird_socket else None)
    print(f"routeros-sim: RouterOS {args.version} API{'-SSL' if tls else ''} on {host}:{sim.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    if feed is not None:
        feed.stop()
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
