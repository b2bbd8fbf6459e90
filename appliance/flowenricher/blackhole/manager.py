"""The blackhole manager: the one owner of BGP blackhole announcements (DESIGN §1).

Manual (API) and automatic (detection) requests both come here.  Each one is checked
against the safety policy, persisted in the state DB *before* GoBGP is asked (so a
crash in between re-announces it on restart instead of forgetting it), announced,
logged to ``blackholes.txt`` with its rule and evidence, and withdrawn exactly once
when it expires.  GoBGP being down delays announcements and withdrawals (they are
retried from the state DB on every tick), it never loses them.  A blackhole that can
never be announced fails loudly instead: its values are parsed here by the one
definition of BGP values (common/bgp_values.py; a bad one is Refused before anything is
stored), and one GoBGP refuses goes to the *failed* state at once, with GoBGP's reason,
its cap slot freed, never retried.  ``reconcile`` compares
what GoBGP holds with what should be active, so a restart of either side converges.

"GoBGP took it" is not "the router drops the traffic".  ``check`` proves the rest: a
route is *confirmed* once GoBGP's adj-RIB-out towards every Established router peer of
its family holds it (it was sent), and *verified* once the router's own table holds it
as active (read over the RouterOS API, when ``blackhole.router_api`` is set).  Both are
read again now and then and dropped when lost.  A route not confirmed within
``blackhole.confirm_timeout`` is told on the alert channels and counted.  A background
thread (``start``) runs the first checks right after an announcement, backing off from
a few milliseconds, so the proof follows the announcement within the second the
detection target allows; the service's tick (once a second) does the rest.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..common.bgp_values import (
    DISCARD_NEXT_HOP_V4,
    DISCARD_NEXT_HOP_V6,
    BgpValueError,
    next_hop_for,
    parse_communities,
    parse_next_hop,
)
from ..common.private import open_private
from ..common.ratelimit import Throttle
from .safety import CapReached, Pool, Refused, SafetyPolicy, parse_prefix
from .state import Blackhole, BlackholeRow, StateDB

ACTIVE_STATES = ("requested", "announced", "confirmed", "verified")
"""The states of an active blackhole, in the order it moves through them."""

log = logging.getLogger(__name__)


RECONCILE_HISTORY = 1000
"""The latest blackholes (active or not) whose prefixes a reconcile asks GoBGP about."""



def rule_next_hop(prefix: str, next_hop: str | None) -> str | None:
    """The next hop a rule's request gets: the rule's own when it is of the prefix's
    family, else None (the configured next hop of that family).  A rule in the original
    format (one IPv4 blackhole_next_hop) thus blackholes an IPv6 address correctly.  A
    next hop or prefix that does not parse is passed on: announce() refuses it."""
    if next_hop:
        try:
            if parse_next_hop(next_hop).version != parse_prefix(prefix).version:
                return None
        except (BgpValueError, Refused):
            pass
    return next_hop


def detection_role(evidence: dict[str, Any]) -> str:
    """The pool a detection's blackhole counts in: a victim (the rule keys on "dst") or a source."""
    return "destination" if evidence.get("key") == "dst" else "source"


class AnnounceError(Exception):
    """GoBGP could not be reached; the manager retries."""


class AnnounceRefused(AnnounceError):
    """The route can never be announced (GoBGP refused it, or a value is not announceable):
    the manager marks the blackhole failed instead of retrying."""


class Announcer(Protocol):
    """Where blackhole routes go (GoBGP's gRPC API in production; see blackhole/announcer.py)."""

    def announce(self, prefix: str, next_hop: str, communities: Sequence[str]) -> None: ...

    def withdraw(self, prefix: str, next_hop: str, communities: Sequence[str]) -> None: ...

    def announced(self, prefixes: Iterable[str]) -> set[str]:
        """Which of `prefixes` this appliance announces now (locally originated paths)."""
        ...

    def confirmed(self, prefixes: Iterable[str]) -> set[str]:
        """Which of `prefixes` GoBGP sends to every Established router peer of their
        family (its adj-RIB-out); AnnounceError when GoBGP cannot be asked."""
        ...


class RouteVerifier(Protocol):
    """The router's own view (blackhole/router.py reads it over the RouterOS API)."""

    def holds(self, routes: Sequence[tuple[str, str]]) -> set[str]:
        """Of the (prefix, next hop) pairs, the prefixes the router holds as active
        discarding routes; raises when the router cannot be read."""
        ...


class EventSink(Protocol):
    """Where every action also goes as a row (blackhole/events.py: the blackhole_events table)."""

    def manager_action(self, action: str, prefix: str, next_hop: str, communities: Sequence[str], source: str,
                       rule: str, expires_at: float | None, reason: str = "", evidence: object = None) -> None: ...


@dataclass(frozen=True)
class Defaults:
    """What a request that does not say gets: RFC 7999's BLACKHOLE community, the
    conventional discard next hops of each family (common/bgp_values.py), and no expiry
    for manual blackholes unless configured."""

    next_hop_v4: str = DISCARD_NEXT_HOP_V4
    next_hop_v6: str = DISCARD_NEXT_HOP_V6
    communities: tuple[str, ...] = ("65535:666",)
    duration_s: float | None = None
    no_export: bool = False
    """Add NO_EXPORT (RFC 1997) to every announcement, so a blackhole never leaves the
    router's AS (``blackhole.no_export``, on in the config by default)."""


NOTIFIED = frozenset({"announce", "withdraw", "failed", "cap", "unconfirmed", "lost"})
"""The actions an operator is told about through the alert channels."""


class Notifier(Protocol):
    """Where announce, withdraw, failure and cap-reached go (detect/actions.py: the
    alert log, Slack and webhooks).  Must not raise, must not block."""

    def blackhole_notice(self, action: str, prefix: str, source: str, rule: str, reason: str) -> None: ...


class BlackholeManager:
    """Thread-safe: the detection engine, the API and the service's tick all call it."""

    def __init__(self, state: StateDB, announcer: Announcer, policy: SafetyPolicy, log_path: Path | None,
                 defaults: Defaults = Defaults(), registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time, reconcile_interval_s: float = 5.0,
                 events: EventSink | None = None, notifier: Notifier | None = None,
                 verifier: RouteVerifier | None = None, confirm_timeout_s: float = 10.0,
                 verify_interval_s: float = 30.0) -> None:
        self.state = state
        self.verifier = verifier
        self.confirm_timeout_s = confirm_timeout_s
        self._verify_interval = verify_interval_s
        self._next_recheck = 0.0
        self._next_router_read = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._checker: threading.Thread | None = None
        self._verify_lock = threading.Lock()  # one router read at a time (one API connection)
        self.events = events
        self.notifier = notifier
        # Dry run stores nothing, yet must honour the caps: what it would hold, in memory.
        self._dry: dict[str, tuple[float | None, Pool]] = {}
        self._cap_notices = Throttle(60.0, clock=clock)  # per pool
        self.announcer = announcer
        self.policy = policy
        self.defaults = defaults
        self.log_path = log_path
        self._clock = clock
        self._lock = threading.RLock()
        self._reconcile_interval = reconcile_interval_s
        self._next_reconcile = 0.0
        # Withdrawals GoBGP did not take yet: prefix -> (next hop, communities).
        self._pending_withdrawals: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._actions = Counter("flowenricher_blackhole_actions", "Blackhole announcements and withdrawals",
                                ["action", "source"], registry=registry)
        self._refused = Counter("flowenricher_blackhole_refused", "Blackhole requests the safety policy refused",
                                ["source"], registry=registry)
        self._errors = Counter("flowenricher_blackhole_gobgp_errors", "GoBGP calls that failed (retried)",
                               registry=registry)
        self._failed = Counter("flowenricher_blackhole_failed", "Blackholes GoBGP refused for good (failed state)",
                               ["source"], registry=registry)
        self._cap_reached = Counter("flowenricher_blackhole_cap_reached", "Requests refused because a cap was full",
                                    ["cap"], registry=registry)
        self._active = Gauge("flowenricher_blackholes_active", "Blackholes active now", registry=registry)
        self._pending = Gauge("flowenricher_blackholes_pending", "Blackhole changes waiting for GoBGP",
                              registry=registry)
        self._by_state = Gauge("flowenricher_blackholes_state", "Active blackholes by state (requested: GoBGP has "
                               "not taken it; announced: GoBGP took it; confirmed: sent to every Established router "
                               "peer; verified: active on the router)", ["state"], registry=registry)
        self._unconfirmed = Counter("flowenricher_blackhole_unconfirmed", "Blackholes not confirmed within "
                                    "blackhole.confirm_timeout (told on the alert channels)", ["source"],
                                    registry=registry)
        self._lost = Counter("flowenricher_blackhole_lost", "Confirmations or verifications found lost "
                             "(the route left GoBGP's adj-RIB-out or the router's table)", ["proof"],
                             registry=registry)
        self._router_errors = Counter("flowenricher_blackhole_router_errors", "Router API reads that failed "
                                      "(verification retried)", registry=registry)
        self._to_confirm = Histogram("flowenricher_blackhole_confirm_seconds", "From request (or loss) to "
                                     "confirmed", buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                     registry=registry)

    # ----------------------------------------------------------------- requests

    def announce(self, prefix: str, next_hop: str | None = None, communities: Sequence[str] | None = None,
                 duration_s: float | None = None, source: str = "api", rule: str = "",
                 evidence: dict[str, Any] | None = None, role: str = "manual") -> Blackhole:
        """Blackhole `prefix` (a bare address means its host route); raises Refused.

        A next hop of the other address family than the prefix, or a community that
        cannot be announced, is Refused here (common/bgp_values.py says why).  Asking
        again for an active prefix extends its expiry (and updates next hop and
        communities if they differ) instead of stacking a second announcement.
        """
        net = parse_prefix(prefix)
        text = str(net)
        hop = next_hop or (self.defaults.next_hop_v4 if net.version == 4 else self.defaults.next_hop_v6)
        comms = tuple(communities) if communities else self.defaults.communities
        asked = duration_s if duration_s is not None else self.defaults.duration_s
        now = self._clock()
        pool = self.policy.pool_of(net)
        with self._lock:
            try:
                next_hop_for(net, hop)
                parse_communities(comms)
            except BgpValueError as err:
                self._refused.labels(source).inc()
                self._log("refused", text, hop, comms, source, rule, evidence, None, reason=str(err))
                raise Refused(str(err)) from err
            dry = self.policy.settings.dry_run
            current = self.state.find_active(text)
            try:
                self.policy.check(net, role, self._occupied(now), now,
                                  already_active=current is not None or (dry and text in self._dry),
                                  recent=None if dry else self.state.created_since(now - 60))
            except Refused as err:
                self._refused.labels(source).inc()
                self._log("refused", text, hop, comms, source, rule, evidence, None, reason=str(err))
                if isinstance(err, CapReached):
                    self._cap_reached.labels("per_minute" if "last minute" in str(err) else pool).inc()
                    self._cap_notice(pool, text, source, rule, str(err), now)
                raise
            window = self.policy.settings.repeat_window_s
            earlier = self.state.bans_since(text, now - window) if pool == "source" and window > 0 else 0
            duration = self.policy.duration(pool, asked or None, earlier)
            expires = now + duration if duration else None
            if dry:
                if text not in self._dry:
                    self.policy.admitted(now)
                self._dry[text] = (expires, pool)
                self._log("dry-run-announce", text, hop, comms, source, rule, evidence, expires)
                log.warning("dry run: would blackhole %s via %s %s (%s)", text, hop, ",".join(comms), rule or source)
                return Blackhole(0, text, hop, comms, source, rule, evidence or {}, now, expires, None, False)
            if current is not None:
                new_expiry = None if current.expires_at is None or expires is None else max(current.expires_at, expires)
                changed = current.next_hop != hop or current.communities != comms
                self.state.update(current.id, expires_at=new_expiry, next_hop=hop, communities=list(comms),
                                  announced=current.announced and not changed)
                self._log("extend", text, hop, comms, source, rule, evidence, new_expiry)
                if changed:
                    self._try_announce(self._row(current.id) or current)
                return self._row(current.id) or current
            self.policy.admitted(now)
            row = self.state.add(prefix=text, next_hop=hop, communities=list(comms), source=source, rule=rule,
                                 evidence=evidence or {}, created_at=now, expires_at=expires, announced=False,
                                 role=pool, waiting_since=now)
            self._pending_withdrawals.pop(text, None)
            self._log("announce", text, hop, comms, source, rule, evidence, expires)
            self._actions.labels("announce", source).inc()
            self._try_announce(row)
            self._update_gauges()
            return self._row(row.id) or row

    def withdraw(self, prefix: str, reason: str = "api") -> Blackhole | None:
        """Withdraw an active blackhole; None when `prefix` is not active."""
        text = str(parse_prefix(prefix))
        with self._lock:
            if self.policy.settings.dry_run and self._dry.pop(text, None) is not None:
                self._log("dry-run-withdraw", text, "", (), "api", "", None, None, reason=reason)
            current = self.state.find_active(text)
            if current is None:
                return None
            return current if self._withdraw(current, reason, self._clock()) else None

    def request(self, prefix: str, next_hop: str | None, communities: list[str], duration_s: float, rule: str,
                evidence: dict[str, Any]) -> None:
        """The detection engine's entry point: an attacker's (or victim's) address.

        `evidence["key"]` says which: "src" blackholes a source, "dst" a victim; refusals
        are logged and counted, never raised into the engine.  A rule's `next_hop`
        serves the addresses of its own family (`rule_next_hop`).
        """
        try:
            self.announce(prefix, rule_next_hop(prefix, next_hop), communities, duration_s, source="rule", rule=rule,
                          evidence=evidence, role=detection_role(evidence))
        except Refused as err:
            log.warning("blackhole for rule %s refused: %s", rule, err)

    def active(self) -> list[Blackhole]:
        return self.state.active()

    def start(self) -> None:
        """Run the first confirmation and verification checks of each announcement in a
        background thread, right after it (the service's tick alone would leave up to a
        second between announcement and proof)."""
        if self._checker is None:
            self._checker = threading.Thread(target=self._check_loop, name="blackhole-check", daemon=True)
            self._checker.start()

    def close(self) -> None:
        """Stop the check thread; let queued notifications go out (the notifier's
        background thread)."""
        self._stop.set()
        self._wake.set()
        if self._checker is not None:
            self._checker.join(timeout=5)
            self._checker = None
        close = getattr(self.notifier, "close", None)
        if callable(close):
            close()

    # ----------------------------------------------------------------- time

    def tick(self, now: float | None = None) -> None:
        """Expire what is due, retry what GoBGP missed, and reconcile now and then."""
        now = self._clock() if now is None else now
        with self._lock:
            # Withdrawals before announcements: after an outage GoBGP must never hold
            # more than max_active, even for a moment.
            self.expire(now)
            for prefix, (hop, comms) in list(self._pending_withdrawals.items()):
                self._try_withdraw(prefix, hop, comms)
            for bh in self.state.active():
                if not bh.announced:
                    self._try_announce(bh)
            if now >= self._next_reconcile:
                self._next_reconcile = now + self._reconcile_interval
                self.reconcile()
            self._update_gauges()
        self.check(now)  # outside the lock: it reads the router without holding announcements up

    def expire(self, now: float | None = None) -> list[Blackhole]:
        """Withdraw every blackhole whose expiry has passed; the ones this call withdrew.

        Runs on every tick of the collector and, without it, from `flowenricher
        blackhole expire` (a systemd timer): each row is claimed in the state DB before
        its route is withdrawn, so two processes expiring at once withdraw it once."""
        now = self._clock() if now is None else now
        done = []
        with self._lock:
            for prefix, (until, _pool) in list(self._dry.items()):
                if until is not None and until <= now:
                    del self._dry[prefix]
            for bh in self.state.active():
                if bh.expires_at is not None and bh.expires_at <= now and self._withdraw(bh, "expired", now):
                    done.append(bh)
        return done

    def pending_withdrawals(self) -> list[str]:
        """Prefixes withdrawn in the state DB that GoBGP has not taken the withdrawal of."""
        with self._lock:
            return sorted(self._pending_withdrawals)

    def reconcile(self) -> None:
        """Make GoBGP hold exactly the active blackholes (after either side restarted)."""
        with self._lock:
            active = {bh.prefix: bh for bh in self.state.active()}
            # What GoBGP may hold of ours: the active, those awaiting withdrawal, and what
            # the state DB says was announced lately (left by a previous run).
            candidates = set(active) | set(self._pending_withdrawals)
            candidates.update(bh.prefix for bh in self.state.history(RECONCILE_HISTORY))
            try:
                held = self.announcer.announced(candidates)
            except AnnounceError as err:
                self._errors.inc()
                log.debug("reconcile: GoBGP unreachable: %s", err)
                return
            for prefix, bh in active.items():
                if prefix not in held:
                    if bh.announced:
                        log.warning("reconcile: %s missing from GoBGP (restarted?); announcing again", prefix)
                    self._try_announce(bh)
            for prefix in held - set(active):
                hop, comms = self._pending_withdrawals.get(prefix, ("", ()))
                log.warning("reconcile: GoBGP holds %s, which is not active; withdrawing", prefix)
                self._try_withdraw(prefix, hop, comms)

    def check(self, now: float | None = None) -> None:
        """Prove what GoBGP took: confirm announced routes in its adj-RIB-out, verify
        confirmed ones on the router, and tell the ones still unconfirmed after
        ``confirm_timeout``.  Routes not yet proven are asked about on every call;
        proven ones again every ``reconcile_interval`` (adj-RIB-out) and
        ``router_api.interval`` (router), and a lost proof is dropped and told."""
        now = self._clock() if now is None else now
        with self._lock:
            recheck = now >= self._next_recheck
            if recheck:
                self._next_recheck = now + self._reconcile_interval
            self._confirm([b for b in self.state.active() if b.announced and (recheck or b.confirmed_at is None)],
                          now)
            self._tell_unconfirmed(now)
            self._update_gauges()
        if self.verifier is not None:
            reread = now >= self._next_router_read
            if self._verify(lambda b: reread or b.verified_at is None, now) and reread:
                self._next_router_read = now + self._verify_interval

    def _unproven(self) -> bool:
        """Some active route is not yet confirmed (or verified, with a router to ask)."""
        return any(b.confirmed_at is None or (self.verifier is not None and b.verified_at is None)
                   for b in self.state.active() if b.announced)

    def _check_loop(self) -> None:
        """Woken by each announcement: check at once, then after 5, 10, 20 ... ms (at most
        250 ms apart) until every active route is proven or the confirm timeout has
        passed; the tick takes over from there."""
        while not self._stop.is_set():
            self._wake.wait(timeout=60)
            if self._stop.is_set():
                return
            self._wake.clear()
            deadline = time.monotonic() + max(self.confirm_timeout_s, 1.0)
            delay = 0.005
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    with self._lock:
                        now = self._clock()
                        self._confirm([b for b in self.state.active() if b.announced and b.confirmed_at is None],
                                      now)
                        self._update_gauges()
                    if self.verifier is not None:
                        self._verify(lambda b: b.verified_at is None, now)
                    with self._lock:
                        if not self._unproven():
                            break
                except Exception:  # a bug here must not end the checks; the tick goes on anyway
                    log.exception("blackhole checks failed")
                if self._wake.wait(timeout=delay):
                    self._wake.clear()
                    delay = 0.005
                else:
                    delay = min(delay * 2, 0.25)

    def _confirm(self, rows: list[Blackhole], now: float) -> None:
        if not rows:
            return
        try:
            sent = self.announcer.confirmed([b.prefix for b in rows])
        except AnnounceError as err:
            # GoBGP cannot be asked, so nothing says the routes are still out (a dead
            # gobgpd took its sessions down with it): back to requested, retried each tick.
            self._errors.inc()
            log.warning("confirm: GoBGP cannot be asked (%s); %d blackholes back to requested", err, len(rows))
            for bh in rows:
                lost: dict[str, Any] = {"announced": False, "confirmed_at": None, "verified_at": None}
                if bh.confirmed_at is not None:
                    lost.update(waiting_since=now, unconfirmed_at=None)
                self.state.update(bh.id, **lost)
            return
        for bh in rows:
            if bh.prefix in sent and bh.confirmed_at is None:
                self.state.update(bh.id, confirmed_at=now, unconfirmed_at=None)
                waited = now - (bh.waiting_since if bh.waiting_since is not None else bh.created_at)
                self._to_confirm.observe(max(waited, 0.0))
                self._log("confirm", bh.prefix, bh.next_hop, bh.communities, bh.source, bh.rule, None, bh.expires_at,
                          reason=f"in GoBGP's adj-RIB-out towards every Established peer after {waited:.3f} s")
            elif bh.prefix not in sent and bh.confirmed_at is not None:
                self.state.update(bh.id, confirmed_at=None, verified_at=None, waiting_since=now, unconfirmed_at=None)
                self._lost.labels("confirmed").inc()
                self._log("lost", bh.prefix, bh.next_hop, bh.communities, bh.source, bh.rule, None, bh.expires_at,
                          reason="no longer in GoBGP's adj-RIB-out towards every Established router peer")

    def _tell_unconfirmed(self, now: float) -> None:
        """Active routes waiting longer than the timeout to be confirmed: told once per wait."""
        for bh in self.state.active():
            since = bh.waiting_since if bh.waiting_since is not None else bh.created_at
            if bh.confirmed_at is None and bh.unconfirmed_at is None and now - since >= self.confirm_timeout_s:
                self.state.update(bh.id, unconfirmed_at=now)
                self._unconfirmed.labels(bh.source).inc()
                why = ("GoBGP has not taken it (unreachable?)" if not bh.announced else
                       "GoBGP took it, but does not send it to every Established router peer of its family "
                       "(is the BGP session to the router up?)")
                self._log("unconfirmed", bh.prefix, bh.next_hop, bh.communities, bh.source, bh.rule, None,
                          bh.expires_at, reason=f"not confirmed after {now - since:.0f} s: {why}")

    def _verify(self, wanted: Callable[[Blackhole], bool], now: float) -> bool:
        """Read the router's table for the confirmed blackholes `wanted` selects; False
        when it could not be read.  The router is read without the manager's lock (a
        router that does not answer costs its timeout, and announcements must not wait
        for it); the answer is applied to the rows as they are then."""
        if self.verifier is None:
            return False
        with self._verify_lock:
            with self._lock:
                rows = [b for b in self.state.active() if b.announced and b.confirmed_at is not None and wanted(b)]
            if not rows:
                return True
            try:
                held = self.verifier.holds([(b.prefix, b.next_hop) for b in rows])
            except Exception as err:  # any failure of the router's API: keep the last word, try again later
                self._router_errors.inc()
                log.warning("verify on the router: %s", err)
                return False
            with self._lock:
                current = {b.id: b for b in self.state.active()}
                self._apply_verdicts([current[b.id] for b in rows if b.id in current
                                      and current[b.id].confirmed_at is not None
                                      and current[b.id].next_hop == b.next_hop], held, now)
                self._update_gauges()
        return True

    def _apply_verdicts(self, rows: list[Blackhole], held: set[str], now: float) -> None:
        for bh in rows:
            if bh.prefix in held and bh.verified_at is None:
                self.state.update(bh.id, verified_at=now)
                self._log("verify", bh.prefix, bh.next_hop, bh.communities, bh.source, bh.rule, None, bh.expires_at,
                          reason="active in the router's route table")
            elif bh.prefix not in held and bh.verified_at is not None:
                self.state.update(bh.id, verified_at=None)
                self._lost.labels("verified").inc()
                self._log("lost", bh.prefix, bh.next_hop, bh.communities, bh.source, bh.rule, None, bh.expires_at,
                          reason="no longer active in the router's route table")

    # ----------------------------------------------------------------- internals

    def _withdraw(self, bh: Blackhole, reason: str, now: float) -> bool:
        """Claim the row, then withdraw the route; False when another process (the
        collector, or `blackhole expire`) claimed it first and withdraws it itself."""
        if not self.state.claim_withdrawal(bh.id, now, reason):
            return False
        self._log("withdraw", bh.prefix, bh.next_hop, bh.communities, bh.source, bh.rule, None, bh.expires_at,
                  reason=reason)
        self._actions.labels("withdraw", reason).inc()
        self._pending_withdrawals[bh.prefix] = (bh.next_hop, bh.communities)
        self._try_withdraw(bh.prefix, bh.next_hop, bh.communities)
        self._update_gauges()
        return True

    def _occupied(self, now: float) -> dict[str, int]:
        """What holds a slot of each pool's cap: the active blackholes, and the withdrawn
        ones GoBGP has not confirmed withdrawing (it may still hold them).  Found by a
        property test: with a withdrawal stuck while GoBGP was down, new announcements
        filled the cap and GoBGP held one more than max_active once it came back.  In a
        dry run, what it would hold."""
        counts = {"source": 0, "victim": 0}
        if self.policy.settings.dry_run:
            for until, pool in self._dry.values():
                if until is None or until > now:
                    counts[pool] += 1
            return counts
        active = {bh.prefix for bh in self.state.active()}
        for prefix in active | set(self._pending_withdrawals):
            try:
                counts[self.policy.pool_of(parse_prefix(prefix))] += 1
            except Refused:
                counts["source"] += 1
        return counts

    def _cap_notice(self, pool: str, prefix: str, source: str, rule: str, reason: str, now: float) -> None:
        """Cap reached: told once a minute per pool, not once per refused request."""
        if self._cap_notices.allow(pool, now) is not None:
            self._notify("cap", prefix, source, rule, reason)

    def _notify(self, action: str, prefix: str, source: str, rule: str, reason: str) -> None:
        if self.notifier is None:
            return
        try:
            self.notifier.blackhole_notice(action, prefix, source, rule, reason)
        except Exception:  # a notification must never stop a blackhole
            log.exception("blackhole %s %s: could not queue the notification", action, prefix)

    def _row(self, row_id: int) -> Blackhole | None:
        with self.state.session() as session:
            row = session.get(BlackholeRow, row_id)
            return Blackhole.of(row) if row is not None else None

    def _try_announce(self, bh: Blackhole) -> None:
        """Hand the route to GoBGP.  Whatever was proven of an earlier announcement is
        dropped: the route is sent anew (GoBGP restarted, or its values changed), so it
        must be confirmed (and verified) again, and the wait for that starts now."""
        unproven: dict[str, Any] = {"confirmed_at": None, "verified_at": None}
        if bh.confirmed_at is not None or bh.waiting_since is None:
            unproven.update(waiting_since=self._clock(), unconfirmed_at=None)
        try:
            self.announcer.announce(bh.prefix, bh.next_hop, self._wire(bh.communities))
        except AnnounceRefused as err:
            self._fail(bh, str(err))
            return
        except AnnounceError as err:
            self._errors.inc()
            log.warning("blackhole %s: GoBGP did not take it (%s); retrying", bh.prefix, err)
            self.state.update(bh.id, announced=False, **unproven)
            return
        self.state.update(bh.id, announced=True, **unproven)
        self._wake.set()

    def _fail(self, bh: Blackhole, reason: str) -> None:
        """Refused for good: failed at once (no retry, out of the active cap), loudly.
        GoBGP may hold an earlier version of it (an extension changed its values): the
        prefix is withdrawn too, so nothing refused stays half-announced."""
        now = self._clock()
        self.state.update(bh.id, withdrawn_at=now, withdraw_reason="failed", failed_reason=reason[:512],
                          announced=False)
        self._failed.labels(bh.source).inc()
        log.error("blackhole %s via %s %s FAILED, not retried: %s", bh.prefix, bh.next_hop, ",".join(bh.communities),
                  reason)
        self._log("failed", bh.prefix, bh.next_hop, bh.communities, bh.source, bh.rule, None, bh.expires_at,
                  reason=reason)
        self._pending_withdrawals[bh.prefix] = (bh.next_hop, bh.communities)
        self._try_withdraw(bh.prefix, bh.next_hop, bh.communities)
        self._update_gauges()

    def _try_withdraw(self, prefix: str, hop: str, comms: Sequence[str]) -> None:
        try:
            self.announcer.withdraw(prefix, hop, self._wire(comms) if comms else comms)
        except AnnounceError as err:
            self._errors.inc()
            log.warning("withdraw %s: GoBGP did not take it (%s); retrying", prefix, err)
            return
        self._pending_withdrawals.pop(prefix, None)

    def _wire(self, comms: Sequence[str]) -> tuple[str, ...]:
        """The communities sent to GoBGP: the stored ones, plus NO_EXPORT when configured
        (the API keeps showing the communities as asked)."""
        if self.defaults.no_export and not any(c.strip().lower() in ("no-export", "65535:65281") for c in comms):
            return (*comms, "no-export")
        return tuple(comms)

    def _update_gauges(self) -> None:
        active = self.state.active()
        self._active.set(len(active))
        self._pending.set(len(self._pending_withdrawals) + sum(1 for b in active if not b.announced))
        for state in ACTIVE_STATES:
            self._by_state.labels(state).set(sum(1 for b in active if b.state == state))

    def _log(self, action: str, prefix: str, hop: str, comms: Sequence[str], source: str, rule: str,
             evidence: dict[str, Any] | None, expires: float | None, reason: str = "") -> None:
        """One JSON line per action in blackholes.txt: the operator's audit trail."""
        line: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "action": action, "prefix": prefix, "next_hop": hop, "communities": list(comms),
            "source": source, "rule": rule,
            "expires": datetime.fromtimestamp(expires, UTC).isoformat() if expires else None,
        }
        if reason:
            line["reason"] = reason
        if evidence:
            line["evidence"] = evidence
        log.info("blackhole %s %s via %s %s%s", action, prefix, hop, ",".join(comms), f" ({reason})" if reason else "")
        if self.log_path is not None:
            with open_private(self.log_path, "a", make_parent=True, encoding="utf-8") as fh:
                fh.write(json.dumps(line, default=str) + "\n")
        if action in NOTIFIED:
            self._notify(action, prefix, source, rule, reason)
        if self.events is not None:
            try:
                self.events.manager_action(action, prefix, hop, comms, source, rule, expires, reason, evidence)
            except Exception:  # the audit table must never stop an announcement
                log.exception("blackhole %s %s: could not queue the event row", action, prefix)

