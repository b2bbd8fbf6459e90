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
import threading
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..errors import FlowEnricherError
from .rib import RibState, RibView, RouteBuilder, rib_bytes_gauge
from .route import RouteAttributes, address_bytes, flatten_as_path, parse_community, prefix_key

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


def _route(entry: dict[str, Any]) -> tuple[bytes, RouteAttributes]:
    """One validated entry; ValueError says what is wrong with it."""
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_KEYS))})")
    text = entry.get("prefix")
    if not isinstance(text, str):
        raise ValueError("missing \"prefix\" (a network such as \"203.0.113.0/24\")")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as err:
        raise ValueError(f"prefix: {err}") from None
    as_path = entry.get("as_path", [])
    if not isinstance(as_path, list):
        raise ValueError(f"as_path must be a list of AS numbers, not {as_path!r}")
    numbers = [_uint(asn, f"as_path[{i}]", low=1) for i, asn in enumerate(as_path)]  # AS 0: RFC 7607
    hop_text = entry.get("next_hop", "")
    if not isinstance(hop_text, str):
        raise ValueError(f"next_hop must be an address as text, not {hop_text!r}")
    try:
        hop = address_bytes(str(ipaddress.ip_address(hop_text))) if hop_text else bytes(16)
    except ValueError as err:
        raise ValueError(f"next_hop: {err}") from None
    local_pref = _uint(entry.get("local_pref", 0), "local_pref")
    raw_communities = entry.get("communities", [])
    if not isinstance(raw_communities, list):
        raise ValueError(f"communities must be a list, not {raw_communities!r}")
    communities = []
    for i, community in enumerate(raw_communities):
        if isinstance(community, str):
            communities.append(parse_community(community))
        else:
            communities.append(_uint(community, f"communities[{i}]"))
    path, origin, neighbor = flatten_as_path([(2, numbers)])
    attrs = RouteAttributes(path, origin, neighbor, hop, local_pref, tuple(communities))
    return prefix_key(net.network_address.packed, net.prefixlen), attrs


def load_prefix_file(path: Path, builder: RouteBuilder) -> int:
    """Validate `path` and add its routes to `builder`; the number of routes.

    Raises PrefixFileError naming the file, the entry and the problem.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise PrefixFileError(f"{path}: cannot read: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise PrefixFileError(f"{path}: not UTF-8 text: {err}") from err
    except json.JSONDecodeError as err:
        raise PrefixFileError(f"{path}: line {err.lineno} column {err.colno}: invalid JSON: {err.msg}") from err
    if not isinstance(data, list):
        raise PrefixFileError(f"{path}: the prefix table is a JSON list of routes, not {type(data).__name__}")
    seen: dict[bytes, int] = {}
    for index, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise _entry_error(path, index, entry, f"a route is a JSON object, not {type(entry).__name__}")
        try:
            key, attrs = _route(entry)
        except ValueError as err:
            raise _entry_error(path, index, entry, str(err)) from None
        if key in seen:
            raise _entry_error(path, index, entry, f"prefix already given in entry {seen[key]}")
        seen[key] = index
        builder.add(key, attrs)
    return len(data)


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
