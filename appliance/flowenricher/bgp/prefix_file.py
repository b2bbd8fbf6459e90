"""A JSON prefix table that stands in for GoBGP's RIB (``bgp.prefix_file``), as the
original flowenricher allowed: for a network without a BGP feed, or a lab.

The file is a JSON list of routes::

    [
      {"prefix": "203.0.113.0/24", "as_path": [64500, 15169], "next_hop": "192.0.2.1",
       "local_pref": 100, "communities": ["65001:100"]},
      {"prefix": "2001:db8::/32", "as_path": [64500]}
    ]

``prefix`` (an IPv4 or IPv6 network, no host bits) is required and appears once; the
rest is optional: ``as_path`` (AS numbers, nearest first; origin AS last, neighbour AS
first, as in :mod:`..bgp.route`), ``next_hop`` (an address), ``local_pref`` (0 to
4294967295), ``communities`` (standard ``"ASN:VALUE"`` texts or 32-bit numbers).
Unknown keys are errors, so typos are caught.  Errors name the file, the entry's index
and prefix, and what is wrong.

The table is loaded into the same structure as the mirrored RIB (:mod:`.rib`), so the
BGP stage cannot tell them apart.  The file is polled every ``check_interval_s`` and
reloaded when it changes; a changed file that is invalid is logged, counted
(``flowenricher_prefix_file_errors_total``) and ignored: the previous table stays.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..errors import FlowEnricherError
from .rib import RibState, RibView, RouteBuilder, rib_bytes_gauge
from .route import RouteAttributes, address_bytes, flatten_as_path, key_to_network, parse_community, prefix_key

log = logging.getLogger(__name__)

_KEYS = {"prefix", "as_path", "next_hop", "local_pref", "communities"}
_U32 = 0xFFFFFFFF
Signature = tuple[int, int, int, int]


class PrefixFileError(FlowEnricherError):
    """The prefix file cannot be read or is not a valid prefix table."""


def _entry_error(path: Path, index: int, entry: object, what: str) -> PrefixFileError:
    prefix = entry.get("prefix") if isinstance(entry, dict) else None
    where = f"entry {index}" + (f" ({prefix})" if isinstance(prefix, str) else "")
    return PrefixFileError(f"{path}: {where}: {what}")


def _uint(value: object, name: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _U32:
        raise ValueError(f"{name} must be an integer {low}-{_U32}, not {value!r}")
    return value


_V4_PREFIX = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3})/(\d{1,2})\Z")
_V6_PREFIX = re.compile(r"([0-9A-Fa-f:.]+)/(\d{1,3})\Z")


def _prefix(text: str) -> bytes:
    """The key of prefix `text`, as ``ipaddress.ip_network(text, strict=True)`` reads it;
    ValueError with its words otherwise.  The plain forms are read by ``inet_pton``
    first: a fifth of the load's time went to ipaddress (a profile of 120k routes), and a
    text either way gives the same key or the same refusal (tests/test_enrich_bgp.py)."""
    for pattern, family, bits in ((_V4_PREFIX, socket.AF_INET, 32), (_V6_PREFIX, socket.AF_INET6, 128)):
        m = pattern.match(text)
        if m is None:
            continue
        try:
            packed = socket.inet_pton(family, m.group(1))
        except OSError:
            break
        length = int(m.group(2))
        if length <= bits and not int.from_bytes(packed, "big") & ((1 << (bits - length)) - 1):
            return prefix_key(packed, length)
        break
    net = ipaddress.ip_network(text, strict=True)
    return prefix_key(net.network_address.packed, net.prefixlen)


class _Parsed:
    """What one load has parsed already: next hops and communities repeat across a
    table's routes (a few next hops, a few hundred communities), so each text is parsed
    once; at most ``limit`` of each are kept."""

    def __init__(self, limit: int = 65_536) -> None:
        self.hops: dict[str, bytes] = {}
        self.communities: dict[str, int] = {}
        self.limit = limit

    def hop(self, text: str) -> bytes:
        hop = self.hops.get(text)
        if hop is None:
            hop = address_bytes(str(ipaddress.ip_address(text))) if text else bytes(16)
            if len(self.hops) < self.limit:
                self.hops[text] = hop
        return hop

    def community(self, text: str) -> int:
        value = self.communities.get(text)
        if value is None:
            value = parse_community(text)
            if len(self.communities) < self.limit:
                self.communities[text] = value
        return value


def _as_numbers(as_path: list[Any]) -> list[int]:
    if all(type(asn) is int and 1 <= asn <= _U32 for asn in as_path):
        return as_path
    return [_uint(asn, f"as_path[{i}]", low=1) for i, asn in enumerate(as_path)]  # AS 0: RFC 7607


def _route(entry: dict[str, Any], parsed: _Parsed | None = None) -> tuple[bytes, RouteAttributes]:
    """One validated entry; ValueError says what is wrong with it."""
    parsed = parsed or _Parsed(limit=0)
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_KEYS))})")
    text = entry.get("prefix")
    if not isinstance(text, str):
        raise ValueError("missing \"prefix\" (a network such as \"203.0.113.0/24\")")
    try:
        key = _prefix(text)
    except ValueError as err:
        raise ValueError(f"prefix: {err}") from None
    as_path = entry.get("as_path", [])
    if not isinstance(as_path, list):
        raise ValueError(f"as_path must be a list of AS numbers, not {as_path!r}")
    numbers = _as_numbers(as_path)
    hop_text = entry.get("next_hop", "")
    if not isinstance(hop_text, str):
        raise ValueError(f"next_hop must be an address as text, not {hop_text!r}")
    try:
        hop = parsed.hop(hop_text)
    except ValueError as err:
        raise ValueError(f"next_hop: {err}") from None
    local_pref = _uint(entry.get("local_pref", 0), "local_pref")
    raw_communities = entry.get("communities", [])
    if not isinstance(raw_communities, list):
        raise ValueError(f"communities must be a list, not {raw_communities!r}")
    communities = []
    for i, community in enumerate(raw_communities):
        if isinstance(community, str):
            communities.append(parsed.community(community))
        else:
            communities.append(_uint(community, f"communities[{i}]"))
    path, origin, neighbor = flatten_as_path([(2, numbers)])
    attrs = RouteAttributes(path, origin, neighbor, hop, local_pref, tuple(communities))
    return key, attrs


_CHUNK = 1 << 20
"""Characters of the file read at a time (load_prefix_file streams the list)."""
_LONGEST_ROUTE = 16 * _CHUNK
"""Text an item that does not decode may span before it is called invalid: a route is a
few hundred characters, and reading on to the end of a large file for one bad item
would hold the rest of the file."""
_SPACE = frozenset(" \t\n\r")


def _json_error(path: Path, what: str, text: str, at: int, lines_before: int, column_before: int) -> PrefixFileError:
    """The invalid-JSON error at offset `at` of `text`, a piece of the file that starts
    `lines_before` lines and `column_before` characters into it, with json's own line and
    column numbering."""
    line = lines_before + text.count("\n", 0, at) + 1
    line_start = text.rfind("\n", 0, at) + 1
    column = at - line_start + 1 + (column_before if line_start == 0 else 0)
    return PrefixFileError(f"{path}: line {line} column {column}: invalid JSON: {what}")


def _whole(path: Path) -> object:
    """The file parsed whole: for a file that is not a list, to say what it is instead."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise PrefixFileError(f"{path}: line {err.lineno} column {err.colno}: invalid JSON: {err.msg}") from err


def _routes_of(path: Path) -> Iterator[object]:
    """The items of the JSON list in `path`, one at a time, in file order.

    The text is read in chunks and each item decoded on its own (``raw_decode``), so a
    full table's file never becomes one list of 1.2M dicts: ``json.loads`` of the
    benchmark's table took the process to 1.35 GB (docs/performance.md, 2026-11-24).
    Raises PrefixFileError for invalid JSON with json's own message, line and column.
    """
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as file:
        text, at, lines_before, column_before, ended = "", 0, 0, 0, False

        def more() -> bool:
            """Read the next chunk, dropping the text already decoded; False at the end,
            where the text and offsets stay as they were."""
            nonlocal text, at, lines_before, column_before, ended
            chunk = file.read(_CHUNK)
            if not chunk:
                ended = True
                return False
            newlines = text.count("\n", 0, at)
            if newlines:
                lines_before += newlines
                column_before = at - (text.rfind("\n", 0, at) + 1)
            else:
                column_before += at
            text, at = text[at:] + chunk, 0
            return True

        def next_char() -> str:
            """The next character that is not white space, "" at the end of the file."""
            nonlocal at
            while True:
                while at < len(text) and text[at] in _SPACE:
                    at += 1
                if at < len(text) or not more():
                    return text[at] if at < len(text) else ""

        if next_char() != "[":
            raise PrefixFileError(f"{path}: the prefix table is a JSON list of routes, not "
                                  f"{type(_whole(path)).__name__}")
        at += 1
        if next_char() == "]":
            at += 1
        else:
            while True:
                next_char()
                try:
                    item, end = decoder.raw_decode(text, at)
                    complete = end < len(text) or ended
                except json.JSONDecodeError as err:
                    if len(text) - at < _LONGEST_ROUTE and more():
                        continue
                    raise _json_error(path, err.msg, text, err.pos, lines_before, column_before) from None
                if not complete and more():
                    continue  # an item that ends with the chunk may go on in the next one
                at = end
                delimiter = next_char()  # checked before the item is given: it may not be an item at all
                if delimiter not in ("]", ","):
                    raise _json_error(path, "Expecting ',' delimiter", text, at, lines_before, column_before)
                at += 1
                yield item
                if delimiter == "]":
                    break
        if next_char():
            raise _json_error(path, "Extra data", text, at, lines_before, column_before)


def load_prefix_file(path: Path, builder: RouteBuilder) -> int:
    """Validate `path` and add its routes to `builder`; the number of routes.

    Raises PrefixFileError naming the file, the entry and the problem.  Routes are read
    one at a time (_routes_of); a prefix given twice is found once all are in, from the
    builder's keys, so a file with an invalid entry after a repeated prefix names the
    invalid entry.
    """
    first = len(builder)
    count = 0
    parsed = _Parsed()
    try:
        for index, entry in enumerate(_routes_of(path)):
            if not isinstance(entry, dict):
                raise _entry_error(path, index, entry, f"a route is a JSON object, not {type(entry).__name__}")
            try:
                key, attrs = _route(entry, parsed)
            except ValueError as err:
                raise _entry_error(path, index, entry, str(err)) from None
            builder.add(key, attrs)
            count += 1
    except OSError as err:
        raise PrefixFileError(f"{path}: cannot read: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise PrefixFileError(f"{path}: not UTF-8 text: {err}") from err
    _refuse_repeats(path, builder.keys(first))
    return count


def _refuse_repeats(path: Path, keys: npt.NDArray[np.void]) -> None:
    """PrefixFileError for the first entry, in file order, whose prefix an earlier entry
    gave (`keys`: the file's prefix keys in file order)."""
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    repeated = np.flatnonzero(ranked[1:] == ranked[:-1])
    if repeated.size:
        pair = repeated[np.argmin(order[repeated + 1])]
        earlier, later = int(order[pair]), int(order[pair + 1])
        prefix = str(key_to_network(bytes(keys[later])))
        raise _entry_error(path, later, {"prefix": prefix}, f"prefix already given in entry {earlier}")


def _signature(path: Path) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class PrefixFileRib:
    """The routes of a prefix file, reloaded when the file changes.

    :meth:`start` loads the file (raising PrefixFileError if it is invalid, so a bad
    file stops the service at start with a clear message) and starts polling it.
    """

    def __init__(self, path: Path, registry: CollectorRegistry | None = None, check_interval_s: float = 5.0) -> None:
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self.state = RibState()
        self._signature: Signature | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors = Counter("flowenricher_prefix_file_errors",
                               "Changed prefix files that were invalid (the previous table stays)", registry=registry)
        self._loads = Counter("flowenricher_prefix_file_loads", "Prefix file (re)loads", registry=registry)
        self._routes = Gauge("flowenricher_prefix_file_routes", "Routes in the loaded prefix file", registry=registry)
        self._loading: RouteBuilder | None = None  # a file being read, for the bytes gauge
        rib_bytes_gauge(registry, self.state, lambda: self._loading)

    def start(self) -> None:
        self.reload()
        if self._thread is None and self.check_interval_s > 0:
            self._thread = threading.Thread(target=self._poll, name="prefix-file", daemon=True)
            self._thread.start()

    def reload(self) -> bool:
        """Load the file if it changed since the last load; True if a new table is in use.
        Raises PrefixFileError when the file is invalid."""
        signature = _signature(self.path)
        if signature is not None and signature == self._signature:
            return False
        builder = self._loading = self.state.new_builder()
        try:
            count = load_prefix_file(self.path, builder)
            self.state.replace(builder)
        finally:
            self._loading = None
        self._signature = signature
        self._loads.inc()
        self._routes.set(count)
        log.info("prefix file %s: %d routes loaded", self.path, count)
        return True

    def _poll(self) -> None:
        bad: Signature | bool | None = False  # the version of the file last refused (None: missing)
        while not self._stop.wait(self.check_interval_s):
            signature = _signature(self.path)
            if signature == bad:
                continue  # refused already: counted and logged once
            try:
                self.reload()
            except PrefixFileError as err:
                bad = signature
                self._errors.inc()
                log.error("prefix file not reloaded, keeping the previous table: %s", err)

    def view(self) -> RibView:
        return self.state.view()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
