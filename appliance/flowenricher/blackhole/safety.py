"""The safety rules of DESIGN §5: what the appliance must never announce.

Every announcement, automatic or manual, passes :meth:`SafetyPolicy.check` inside the
blackhole manager, the only component that announces; there is no path around it.
Operators learned these rules from incidents: a /0 announced once by a tool, a router's
own loopback blackholed, a resolver cut off, hundreds of bans from one noisy rule.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from ..common.bgp_values import BgpValueError, IPNetwork
from ..common.bgp_values import parse_prefix as parse_bgp_prefix
from .settings import BlackholeSettings


class Refused(Exception):
    """A blackhole the policy forbids; the message says which rule and why."""


class CapReached(Refused):
    """Refused because a cap (active blackholes of a pool, or new ones per minute) is
    full: worth an alert, since a real attack may go unmitigated."""


Pool = Literal["source", "victim"]


_BLACKHOLE = BlackholeSettings()


@dataclass(frozen=True)
class SafetySettings:
    """Limits on what may be announced.

    `min_v4_len`/`min_v6_len` are the shortest prefixes allowed (32 and 128 unless the
    operator explicitly allows shorter); `never` are networks never blackholed (router,
    BGP peers, the appliance, resolvers and configured entries); `own` are the
    operator's prefixes, which are never blackholed as the *source* of an attack (that
    would cut off the operator's own hosts); as a victim (destination) they may be,
    which is what remotely triggered blackholing is for.
    """

    # The defaults are the blackhole block's: a policy built by code without a config
    # enforces what an empty config file does.
    min_v4_len: int = _BLACKHOLE.min_prefix_length_v4
    min_v6_len: int = _BLACKHOLE.min_prefix_length_v6
    never: tuple[IPNetwork, ...] = ()
    own: tuple[IPNetwork, ...] = ()
    max_active: int = _BLACKHOLE.max_active
    max_per_minute: int = _BLACKHOLE.max_per_minute
    dry_run: bool = _BLACKHOLE.dry_run
    extra: dict[str, str] = field(default_factory=dict)
    max_active_sources: int | None = _BLACKHOLE.max_active_sources
    """Cap of source bans (attackers, outside `own`); None: `max_active`, the old single cap."""
    max_active_victims: int | None = _BLACKHOLE.max_active_victims
    """Cap of victim blackholes (inside `own`), a pool of its own so that bans never
    starve a victim's RTBH; None: `max_active`."""
    never_until: tuple[tuple[IPNetwork, float], ...] = ()
    """Never-blackhole entries that lapse at a time (epoch seconds)."""
    max_duration_s: float | None = _BLACKHOLE.max_duration_s
    """Longest blackhole a request may ask for; source bans without an expiry get it."""
    repeat_factor: float = _BLACKHOLE.repeat_factor
    """A source banned again within `repeat_window_s` gets its ban times this, per earlier ban."""
    repeat_window_s: float = _BLACKHOLE.repeat_window_s

    def cap(self, pool: Pool) -> int:
        limit = self.max_active_victims if pool == "victim" else self.max_active_sources
        return self.max_active if limit is None else limit


def parse_prefix(text: str) -> IPNetwork:
    """A prefix from text (common/bgp_values.py: a bare address is its host route, host
    bits must be clear); Refused says why not, in the words of every other edge."""
    try:
        return parse_bgp_prefix(text)
    except BgpValueError as err:
        raise Refused(str(err)) from None


class SafetyPolicy:
    """Checks one announcement against the limits; keeps the per-minute window."""

    def __init__(self, settings: SafetySettings) -> None:
        self.settings = settings
        self._recent: deque[float] = deque()

    def pool_of(self, prefix: IPNetwork) -> Pool:
        """Which cap a blackhole counts against: a victim's inside `own` (my_prefixes),
        a source ban's outside; the role rules of :meth:`check` make the prefix decide."""
        own = any(net.version == prefix.version and net.overlaps(prefix) for net in self.settings.own)
        return "victim" if own else "source"

    def check(self, prefix: IPNetwork, role: str, occupied: Mapping[str, int], now: float,
              already_active: bool = False, recent: int | None = None) -> None:
        """Raise Refused when `prefix` must not be announced now.

        `role` is "source" (an attacker's address), "destination" (a victim) or "manual".
        `occupied` counts what holds a slot now, per pool ("source", "victim"); `recent`
        is the number of new blackholes in the last minute (from the state DB, so it
        survives restarts), or None to count in memory (dry run).  Re-announcing one
        that is already active (a refresh, or a restart) is not a new announcement.
        """
        s = self.settings
        min_len = s.min_v4_len if prefix.version == 4 else s.min_v6_len
        if prefix.prefixlen < min_len:
            raise Refused(f"{prefix}: shorter than /{min_len}, the shortest IPv{prefix.version} blackhole allowed")
        for net in s.never:
            if net.version == prefix.version and net.overlaps(prefix):
                raise Refused(f"{prefix}: overlaps {net} in the never-blackhole list")
        for net, until in s.never_until:
            if now < until and net.version == prefix.version and net.overlaps(prefix):
                raise Refused(f"{prefix}: overlaps {net} in the never-blackhole list (until "
                              f"{datetime.fromtimestamp(until, UTC).isoformat()})")
        inside = self.pool_of(prefix) == "victim"
        if role == "source" and inside:
            raise Refused(f"{prefix}: inside the operator's own my_prefixes, never blocked as a source")
        if role == "destination" and not inside:
            raise Refused(f"{prefix}: a victim blackhole must be inside my_prefixes (the operator's own networks); "
                          "blackholing someone else's destination is not RTBH")
        if already_active:
            return
        pool = self.pool_of(prefix)
        cap = s.cap(pool)
        if occupied.get(pool, 0) >= cap:
            raise CapReached(f"{prefix}: {occupied.get(pool, 0)} {pool} blackholes active, the configured maximum "
                             f"is {cap} (blackhole.max_active_{pool}s)")
        while self._recent and now - self._recent[0] >= 60:
            self._recent.popleft()
        count = len(self._recent) if recent is None else recent
        if count >= s.max_per_minute:
            raise CapReached(f"{prefix}: {s.max_per_minute} new blackholes in the last minute, the configured maximum")

    def duration(self, pool: Pool, asked: float | None, earlier_bans: int) -> float | None:
        """The expiry a request gets: a repeat offender's ban grows by `repeat_factor`
        per earlier ban within the window, and nothing exceeds `max_duration_s`."""
        s = self.settings
        if asked is None:
            return s.max_duration_s if pool == "source" else None
        if pool == "source" and earlier_bans > 0 and s.repeat_factor > 1:
            asked = asked * s.repeat_factor ** min(earlier_bans, 64)
        return asked if s.max_duration_s is None else min(asked, s.max_duration_s)

    def admitted(self, now: float) -> None:
        """Record one new announcement for the per-minute limit."""
        self._recent.append(now)


def networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Entries of a never list: addresses become host routes; host bits are forgiven."""
    out = []
    for item in items:
        out.append(ipaddress.ip_network(item, strict=False))
    return tuple(out)
