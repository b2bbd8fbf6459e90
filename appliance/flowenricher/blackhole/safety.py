"""The safety rules of DESIGN §5: what the appliance must never announce.

Every announcement, automatic or manual, passes :meth:`SafetyPolicy.check` inside the
blackhole manager, the only component that announces; there is no path around it.
Operators learned these rules from incidents: a /0 announced once by a tool, a router's
own loopback blackholed, a resolver cut off, hundreds of bans from one noisy rule.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..common.bgp_values import BgpValueError, IPNetwork
from ..common.bgp_values import parse_prefix as parse_bgp_prefix


class Refused(Exception):
    """A blackhole the policy forbids; the message says which rule and why."""


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

    min_v4_len: int = 32
    min_v6_len: int = 128
    never: tuple[IPNetwork, ...] = ()
    own: tuple[IPNetwork, ...] = ()
    max_active: int = 100
    max_per_minute: int = 10
    dry_run: bool = False
    extra: dict[str, str] = field(default_factory=dict)


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

    def check(self, prefix: IPNetwork, role: str, active: int, now: float, already_active: bool = False) -> None:
        """Raise Refused when `prefix` must not be announced now.

        `role` is "source" (an attacker's address), "destination" (a victim) or "manual".
        `active` is the number of blackholes active now; re-announcing one that is
        already active (a refresh, or a restart) is not a new announcement.
        """
        s = self.settings
        min_len = s.min_v4_len if prefix.version == 4 else s.min_v6_len
        if prefix.prefixlen < min_len:
            raise Refused(f"{prefix}: shorter than /{min_len}, the shortest IPv{prefix.version} blackhole allowed")
        for net in s.never:
            if net.version == prefix.version and net.overlaps(prefix):
                raise Refused(f"{prefix}: overlaps {net} in the never-blackhole list")
        if role == "source":
            for net in s.own:
                if net.version == prefix.version and net.overlaps(prefix):
                    raise Refused(f"{prefix}: inside the operator's own {net}, never blocked as a source")
        if already_active:
            return
        if active >= s.max_active:
            raise Refused(f"{prefix}: {active} blackholes active, the configured maximum is {s.max_active}")
        while self._recent and now - self._recent[0] >= 60:
            self._recent.popleft()
        if len(self._recent) >= s.max_per_minute:
            raise Refused(f"{prefix}: {s.max_per_minute} new blackholes in the last minute, the configured maximum")

    def admitted(self, now: float) -> None:
        """Record one new announcement for the per-minute limit."""
        self._recent.append(now)


def networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Entries of a never list: addresses become host routes; host bits are forgiven."""
    out = []
    for item in items:
        out.append(ipaddress.ip_network(item, strict=False))
    return tuple(out)
