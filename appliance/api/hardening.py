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
- ``api.listen`` is not a loopback address and the API serves plain HTTP (no
  ``api.tls_cert``/``api.tls_key``) without ``api.allow_plain_http``: tokens would
  cross the network in clear.

In dev mode the same findings are logged as warnings and the API starts.  The ClickHouse,
SNMP and plain-HTTP findings depend on the config alone: config validation refuses them
outside dev mode (default_secrets.py), so ``validate``, the API's validate and ``run``
(with or without the API) give the same verdict; only the token rule, which reads the
token store, is left to the API's start.
"""

from __future__ import annotations

import logging

from appliance.flowenricher.config import Settings, insecure_settings
from appliance.flowenricher.default_secrets import DEFAULT_COMMUNITY, is_loopback
from appliance.flowenricher.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_COMMUNITY", "check_startup", "insecure_defaults", "is_loopback"]


def insecure_defaults(settings: Settings, active_tokens: int, source: str = "config") -> list[str]:
    """What in `settings` is open beyond this machine with a default or missing secret.

    Config validation refuses the ClickHouse, SNMP and plain-HTTP findings outside dev mode
    (default_secrets.py); the token rule needs the token store, so it is made here."""
    problems = []
    if not is_loopback(settings.api.host) and active_tokens == 0:
        problems.append(
            f"{source}: $.api.listen: the API listens on {settings.api.listen}, beyond this machine, and no API "
            "token exists; create one with `flowenricher token create --scope admin` or listen on 127.0.0.1")
    return problems + [f"{source}: {line}" for line in insecure_settings(settings)]


def check_startup(settings: Settings, active_tokens: int, dev_mode: bool) -> None:
    """Raise ConfigError listing the insecure defaults, or only warn in dev mode."""
    problems = insecure_defaults(settings, active_tokens)
    if problems and not dev_mode:
        raise ConfigError([*problems, "(dev mode allows these with a warning; never use it in production)"])
    for line in problems:
        log.warning("dev mode, would refuse to start: %s", line)
