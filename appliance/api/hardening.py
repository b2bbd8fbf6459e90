"""The rule that keeps default secrets out of production: what makes the API refuse to start.

Outside dev mode, :func:`check_startup` raises ConfigError (the service exits 2 and
prints the lines, as ``flowenricher validate`` does) when a setting leaves something
open beyond this machine with a default or no secret:

- ``api.listen`` is not a loopback address and no API token exists: the API would be
  reachable and unusable, and the quick fix people reach for is to open it further.
  On loopback with no token it starts, answers 401, and a token created later with
  ``flowenricher token create`` works at once.
- ``clickhouse.host`` is another machine and ``clickhouse.password`` is empty: the
  flows would go over the network to an account anyone there can use.  The original
  ``host: localhost`` with an empty password stays valid.
- An SNMP target that is not on this machine uses the community ``public`` (the
  default): routers answering it tell anyone their interfaces and more.

In dev mode the same findings are logged as warnings and the API starts.
"""

from __future__ import annotations

import ipaddress
import logging

from appliance.flowenricher.config import Settings
from appliance.flowenricher.errors import ConfigError

log = logging.getLogger(__name__)

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


def insecure_defaults(settings: Settings, active_tokens: int, source: str = "config") -> list[str]:
    """What in `settings` is open beyond this machine with a default or missing secret."""
    problems = []
    if not is_loopback(settings.api.host) and active_tokens == 0:
        problems.append(
            f"{source}: $.api.listen: the API listens on {settings.api.listen}, beyond this machine, and no API "
            "token exists; create one with `flowenricher token create --scope admin` or listen on 127.0.0.1")
    ch = settings.clickhouse
    if ch.host is not None and not is_loopback(ch.host) and not ch.password:
        problems.append(
            f"{source}: $.clickhouse.password: empty while clickhouse.host {ch.host!r} is another machine; "
            "give the ClickHouse user a password")
    for index, target in enumerate(settings.snmp.targets):
        if target.version != "3" and target.community == DEFAULT_COMMUNITY and not is_loopback(target.host):
            problems.append(
                f"{source}: $.snmp (target {index}, {target.host}): the default community {DEFAULT_COMMUNITY!r} "
                "for a router on the network; set the router's own read-only community")
    return problems


def check_startup(settings: Settings, active_tokens: int, dev_mode: bool) -> None:
    """Raise ConfigError listing the insecure defaults, or only warn in dev mode."""
    problems = insecure_defaults(settings, active_tokens)
    if problems and not dev_mode:
        raise ConfigError([*problems, "(dev mode allows these with a warning; never use it in production)"])
    for line in problems:
        log.warning("dev mode, would refuse to start: %s", line)
