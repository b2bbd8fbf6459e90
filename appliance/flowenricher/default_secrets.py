"""Settings that leave something beyond this machine open with a default or no secret.

Config validation refuses them outside dev mode (``api.dev_mode``), so ``validate``, the
API and ``run`` give one verdict whatever ``api.enabled`` says; in dev mode ``run`` logs
them as warnings when it starts (:func:`warn_in_dev_mode`), and so does the API
(appliance/api/hardening.py, which adds the rule that needs the token store).
"""

from __future__ import annotations

import ipaddress

DEFAULT_COMMUNITY = "public"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; names other than localhost are
    assumed to be other machines."""
    text = host.strip().strip("[]").lower()
    if text == "localhost":
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def clickhouse_password_problem(host: str | None, password: str) -> str | None:
    """Flows would go over the network to an account anyone there can use.  The original
    ``host: localhost`` with an empty password stays valid, and no host (or an empty one,
    as the original writes it) is the embedded store."""
    if host and not is_loopback(host) and not password:
        return f"empty while clickhouse.host {host!r} is another machine; give the ClickHouse user a password"
    return None


def plain_http_problem(listen: str, host: str, tls: bool, allow_plain_http: bool) -> str | None:
    """Tokens would cross the network in clear: the API listens beyond this machine on
    plain HTTP and the operator has not said a reverse proxy takes care of TLS."""
    if not tls and not allow_plain_http and not is_loopback(host):
        return (f"the API listens on {listen}, beyond this machine, on plain HTTP, so API tokens would cross the "
                "network in clear; set api.tls_cert and api.tls_key, or listen on 127.0.0.1 behind a TLS reverse "
                "proxy (api.allow_plain_http: true only if the proxy reaches another address over a trusted link)")
    return None


def snmp_community_problem(host: str, version: str, community: str) -> str | None:
    """Routers answering the default community tell anyone their interfaces and more."""
    if version != "3" and community == DEFAULT_COMMUNITY and not is_loopback(host):
        return (f"the default community {DEFAULT_COMMUNITY!r} for a router on the network ({host}); "
                "set the router's own read-only community")
    return None
