"""A storer's blackhole requests, sent to the host that owns announcements.

In a scale-out several storers run the rules, each on its share of the flows, but one
blackhole manager must own the announcements: one safety policy (caps, rate, allow
list) over every request, one state, one BGP session to the router.  A storer with
``blackhole.owner`` therefore builds no manager: its blackhole action hands each request
to `OwnerSink`, which POSTs it to the owner's ``/api/v1/blackholes/requests`` with an
admin token.  The owner's manager decides, exactly as for its own rules.

What can go wrong, and what happens:
- the owner cannot be reached, or answers 5xx, 408 or 429: `request` raises, and the
  blackhole action's outbox retries (``owner.attempts`` tries with growing waits), then
  drops and counts the request (flowenricher_detection_deliveries_dropped{reason="retries"});
- the owner's safety policy refuses (409): logged and counted as refused
  (flowenricher_blackhole_owner_requests_total{result="refused"}), never retried: asking
  again would be refused again;
- the owner refuses the token (401, 403) or the request (422): a PermanentError, logged
  with the owner's reason and counted, not retried.
A request for a prefix the owner already blackholes is not a second blackhole: the
manager extends the active one's expiry, so a retry after a lost answer does no harm.
"""

from __future__ import annotations

import json
import logging
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from ..common.ratelimit import RateLimitedLog
from ..detect.outbox import PermanentError
from ..errors import ConfigError
from .settings import OwnerSettings

log = logging.getLogger(__name__)

REQUESTS_PATH = "/api/v1/blackholes/requests"
"""Where the owner's API takes a rule's blackhole request (appliance/api/routes/blackholes.py)."""

USER_AGENT = "flowenricher-storer"


def read_token(path: Path) -> str:
    """The admin token in `path` (its first line); ConfigError naming the file when it
    cannot be read or is empty, so `run` stops at start rather than at the first attack."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([f"blackhole.owner.token_file: {path}: cannot be read: {err}"]) from err
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise ConfigError([f"blackhole.owner.token_file: {path}: holds no token"])
    return token


class OwnerSink:
    """The blackhole sink (detect/actions.BlackholeSink) of a storer: each request POSTed
    to the owner.  Called from the blackhole action's background thread only."""

    def __init__(self, settings: OwnerSettings, registry: CollectorRegistry | None = None) -> None:
        self.url = settings.url.rstrip("/") + REQUESTS_PATH
        self._token = read_token(settings.token_file)
        self._timeout_s = settings.timeout_s
        self.attempts = settings.attempts
        self._context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
        self._warn = RateLimitedLog(log, 60.0)
        self.results = Counter("flowenricher_blackhole_owner_requests", "Blackhole requests sent to the owner, by "
                               "its answer: announced, dry_run, refused (its safety policy), rejected (token or "
                               "request refused), failed (not reached: retried)", ["result"], registry=registry)

    def request(self, prefix: str, next_hop: str | None, communities: list[str], duration_s: float, rule: str,
                evidence: dict[str, Any]) -> None:
        body = {"prefix": prefix, "next_hop": next_hop, "communities": communities, "duration_s": duration_s,
                "rule": rule, "evidence": evidence}
        request = urllib.request.Request(self.url, data=json.dumps(body, separators=(",", ":")).encode(),
                                         method="POST", headers={"Content-Type": "application/json",
                                                                 "Authorization": f"Bearer {self._token}",
                                                                 "User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s, context=self._context) as answer:
                reply = json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as err:
            detail = _detail(err)
            if err.code == 409:
                self.results.labels("refused").inc()
                log.warning("blackhole for rule %s refused by the owner: %s", rule, detail)
                return
            if 400 <= err.code < 500 and err.code not in (408, 429):
                self.results.labels("rejected").inc()
                log.error("blackhole for rule %s rejected by the owner %s: HTTP %d: %s", rule, self.url, err.code,
                          detail)
                raise PermanentError(f"HTTP {err.code}: {detail}") from err
            self.results.labels("failed").inc()
            self._warn.warning("blackhole owner %s answered HTTP %d (%s); retrying", self.url, err.code, detail)
            raise
        except (OSError, ValueError) as err:  # URLError, timeouts, refused connections, a reply not JSON
            self.results.labels("failed").inc()
            self._warn.warning("blackhole owner %s not reached: %s; retrying", self.url, err)
            raise
        self.results.labels("dry_run" if reply.get("dry_run") else "announced").inc()
        log.info("blackhole %s for rule %s: the owner answered %s", prefix, rule, reply.get("state", "?"))


def _detail(err: urllib.error.HTTPError) -> str:
    """The owner's reason (the API's error body names it), or the HTTP reason."""
    try:
        body = json.loads(err.read() or b"{}")
    except (OSError, ValueError):
        return str(err.reason)
    detail = body.get("detail") if isinstance(body, dict) else None
    return str(detail) if detail else str(err.reason)
