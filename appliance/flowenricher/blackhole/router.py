"""The router's own route table, read over the RouterOS API: the last proof that a
blackhole is in force (*verified*, DESIGN §5), where GoBGP can only say it sent it.

Read only, and small: one ``print`` per prefix with a ``?dst-address=`` query and a
``.proplist`` of the few fields the check needs, because a router holding a full table
has a million routes and printing them all would take minutes and the router's CPU.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Sequence

import librouteros
from librouteros.exceptions import ConnectionClosed, FatalError, LibRouterosError, MultiTrapError, TrapError
from librouteros.protocol import encode_sentence
from librouteros.query import Key

from ..common.bgp_values import next_hop_for, parse_prefix
from .settings import RouterApiSettings

log = logging.getLogger(__name__)

ROUTE_MENUS = {4: ("ip", "route"), 6: ("ipv6", "route")}
"""Where RouterOS 7 lists the routes of each family (static, connected and protocol routes)."""

ROUTE_FIELDS = ("dst-address", "gateway", "active", "blackhole", "routing-table")
"""What a route answer carries (``.proplist``): enough to tell an active discarding route."""

MAIN_TABLE = "main"
"""The routing table traffic is forwarded by; a route in a VRF's table discards nothing there."""


class RouterUnreachable(Exception):
    """The router's API could not be read (connect, login, TLS, timeout); the manager
    keeps the last state and tries again."""


class RouterOsVerifier:
    """Answers "does the router drop traffic to these prefixes?" from its route table.

    One connection is kept between calls (a login per check would cost the router a
    session each time) and opened again after any error.  The password goes to the
    router in the login sentence only: it is written without librouteros's debug log of
    sent words, and no message of this class carries it.
    """

    def __init__(self, settings: RouterApiSettings) -> None:
        self.settings = settings
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        self.where = f"{host}:{settings.port}"
        self._api: librouteros.Api | None = None

    def holds(self, routes: Sequence[tuple[str, str]]) -> set[str]:
        """Of the (prefix, next_hop) pairs (prefix canonical, e.g. "203.0.113.5/32",
        "2001:db8::5/128"), the prefixes the router's route table holds as an active route
        to exactly that destination that discards traffic: ``dst-address`` == prefix, in
        the main table, ``active``, and ``blackhole`` or ``gateway`` == next_hop (the
        mikrotik role's filter makes them blackhole routes, and routes its next hops to
        nowhere).  IPv4 is read from /ip/route, IPv6 from /ipv6/route.

        ValueError names a pair that is not a canonical prefix with a next hop of its
        family; RouterUnreachable says why the router could not be read.
        """
        wanted = [self._parsed(prefix, next_hop) for prefix, next_hop in routes]
        if not wanted:
            return set()
        reused = self._api is not None
        try:
            return self._read(wanted)
        except RouterUnreachable:
            if not reused:
                raise
            # The kept connection may have died in between (router rebooted, a firewall
            # dropped the idle session): one more try on a fresh one tells which.
            log.debug("router API %s: the kept session failed, reconnecting", self.where)
            return self._read(wanted)

    def close(self) -> None:
        """Close the connection (the router ends the session); the next `holds` opens a new one."""
        api, self._api = self._api, None
        if api is not None:
            with contextlib.suppress(OSError):
                api.close()

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _parsed(prefix: str, next_hop: str) -> tuple[str, int, ipaddress.IPv4Address | ipaddress.IPv6Address]:
        net = parse_prefix(prefix)
        if str(net) != prefix:
            raise ValueError(f"router check of {prefix!r}: not a canonical prefix (RouterOS prints {net})")
        return prefix, net.version, next_hop_for(net, next_hop)

    def _read(self, wanted: Sequence[tuple[str, int, ipaddress.IPv4Address | ipaddress.IPv6Address]]) -> set[str]:
        api = self._connection()
        held: set[str] = set()
        try:
            for prefix, family, next_hop in wanted:
                rows = api.path(*ROUTE_MENUS[family]).select(*(Key(f) for f in ROUTE_FIELDS)).where(
                    Key("dst-address") == prefix)
                if any(_discards(row, prefix, next_hop) for row in rows):
                    held.add(prefix)
        except (OSError, LibRouterosError) as err:
            self.close()
            raise RouterUnreachable(f"router API {self.where}: reading the route table failed: {_cause(err, self)}"
                                    ) from err
        return held

    def _connection(self) -> librouteros.Api:
        if self._api is not None:
            return self._api
        settings = self.settings
        wrapper: Callable[[socket.socket], socket.socket] | None = None
        if settings.tls:
            context = self._tls_context()
            wrapper = lambda sock: context.wrap_socket(sock, server_hostname=settings.host)  # noqa: E731
        try:
            self._api = librouteros.connect(settings.host, settings.username, settings.password, port=settings.port,
                                            timeout=settings.timeout_s, ssl_wrapper=wrapper, login_method=_login)
        except _LoginRefused as err:
            raise RouterUnreachable(f"router API {self.where}: login as {settings.username!r} failed: {err}") from None
        except (OSError, LibRouterosError) as err:
            raise RouterUnreachable(f"router API {self.where}: {_cause(err, self)}") from err
        log.info("router API %s: logged in as %r%s", self.where, settings.username, " (API-SSL)" if settings.tls else "")
        return self._api

    def _tls_context(self) -> ssl.SSLContext:
        ca_file = self.settings.ca_file
        try:
            return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
        except (OSError, ssl.SSLError) as err:
            raise RouterUnreachable(f"router API {self.where}: TLS CA file {ca_file} cannot be used: {err}") from err


class _LoginRefused(Exception):
    """The router refused the login (its message, which never holds the password)."""


def _login(api: librouteros.Api, username: str, password: str) -> None:
    """RouterOS's plain login (6.43 and later), sent without librouteros's debug log of
    every word, which would put the password in the log."""
    try:
        sentence: bytes | None = encode_sentence("/login", f"=name={username}", f"=password={password}",
                                                 encoding=api.protocol.encoding)
    except UnicodeEncodeError:
        sentence = None  # raised below, outside this handler: the error holds the password as its context
    if sentence is None:
        raise _LoginRefused(f"the user name or password is not {api.protocol.encoding} text")
    api.protocol.transport.write(sentence)
    try:
        api.readResponse()
    except (TrapError, MultiTrapError) as err:
        raise _LoginRefused(str(err)) from None


def _discards(row: dict[str, object], prefix: str, next_hop: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether one route answer is an active route to `prefix` that drops its traffic."""
    if row.get("dst-address") != prefix or row.get("active") is not True:
        return False
    if row.get("routing-table", MAIN_TABLE) != MAIN_TABLE:
        return False
    return row.get("blackhole") is True or next_hop in _gateways(row.get("gateway"))


def _gateways(value: object) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses of a route's ``gateway`` (``a,b`` for ECMP; ``addr%iface`` kept to the
    address; interface names are no next hop and left out)."""
    out: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for part in str(value or "").split(","):
        try:
            out.add(ipaddress.ip_address(part.split("%", 1)[0].strip()))
        except ValueError:
            continue
    return out


def _cause(err: BaseException, verifier: RouterOsVerifier) -> str:
    """What went wrong, in the operator's words (never the password: none of these carry it)."""
    timeout = verifier.settings.timeout_s
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted ({err.verify_message}); check blackhole.router_api.ca_file"
    if isinstance(err, ssl.SSLError):
        return f"TLS failed ({err.reason or err}); is it the API-SSL port?"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (is the API service enabled on that port?)"
    if isinstance(err, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g} s (timeout)"
    if isinstance(err, socket.gaierror):
        return f"the name cannot be resolved ({err.strerror})"
    if isinstance(err, FatalError):
        return f"the router ended the session: {err}"
    if isinstance(err, ConnectionClosed):
        return "the router closed the connection"
    if isinstance(err, TrapError | MultiTrapError):
        return f"the router refused: {err}"
    if isinstance(err, OSError):
        return err.strerror or type(err).__name__
    return str(err) or type(err).__name__
