"""GoBGP's BGP sessions as metrics: which routers peer with the appliance now.

The blackhole routes and the RIB the enrichment reads both travel over these sessions,
so "is the router's session up" is a line of the status page and an alert an operator
wants from Prometheus.  A thread of its own asks GoBGP (ListPeer) every `interval_s`,
never the service's ticker: a GoBGP that does not answer must not hold up the detection
windows for the call's timeout.

Metrics (labelled by neighbour address, so an alert names the router):

* ``flowenricher_bgp_session_established{neighbor}``: 1 while Established, else 0;
* ``flowenricher_bgp_session_accepted_prefixes{neighbor}``: prefixes GoBGP accepted
  from it;
* ``flowenricher_bgp_sessions_answered``: 1 when GoBGP answered the last poll, 0 when it
  could not be asked (then the per-neighbour values are those of the last answer).

A neighbour removed from GoBGP's config disappears from the metrics at the next poll.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import CollectorRegistry, Gauge

from ..common.ratelimit import RateLimitedLog
from .client import GoBgpClient, GoBgpError, Session

log = logging.getLogger(__name__)

SESSION_METRIC = "flowenricher_bgp_session_established"
ACCEPTED_METRIC = "flowenricher_bgp_session_accepted_prefixes"
ANSWERED_METRIC = "flowenricher_bgp_sessions_answered"

POLL_INTERVAL_S = 10.0
"""How often GoBGP is asked: a session that drops shows on the page within this."""


class SessionWatch:
    """Polls GoBGP's neighbours in a daemon thread and keeps the gauges above."""

    def __init__(self, target: str, registry: CollectorRegistry | None, interval_s: float = POLL_INTERVAL_S,
                 timeout_s: float = 3.0) -> None:
        self.target = target
        self.interval_s = interval_s
        self._client = GoBgpClient(target, timeout=timeout_s)
        self._established = Gauge(SESSION_METRIC,
                                  "1 while GoBGP's BGP session with this neighbour is Established", ["neighbor"],
                                  registry=registry)
        self._accepted = Gauge(ACCEPTED_METRIC,
                               "Prefixes GoBGP accepted from this neighbour", ["neighbor"], registry=registry)
        self._answered = Gauge(ANSWERED_METRIC,
                               "1 when GoBGP answered the last poll of its neighbours, 0 when it could not be asked",
                               registry=registry)
        self._known: set[str] = set()
        self._was_down = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = RateLimitedLog(log, every_s=300.0)

    def poll(self) -> list[Session] | None:
        """Ask GoBGP once and update the gauges; None when it could not be asked."""
        try:
            sessions = self._client.sessions()
        except GoBgpError as err:
            self._answered.set(0)
            self._was_down = True
            self._failures.warning("BGP sessions: GoBGP at %s does not answer: %s", self.target, err)
            return None
        seen = set()
        for session in sessions:
            seen.add(session.neighbor)
            self._established.labels(session.neighbor).set(1 if session.state == "established" else 0)
            self._accepted.labels(session.neighbor).set(session.accepted)
        for gone in self._known - seen:
            self._established.remove(gone)
            self._accepted.remove(gone)
        self._known = seen
        self._answered.set(1)
        if self._was_down:
            self._failures.throttle.reset()
            self._was_down = False
        return sessions

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="flowenricher-bgp-sessions", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval_s)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._client.timeout + 1.0)
        self._client.close()
