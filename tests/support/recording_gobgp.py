"""An in-memory stand-in for GoBGP's global RIB, for tests of the blackhole manager's
rules that need thousands of sequences (hypothesis) or no daemons; the real gobgpd and
BIRD path is tested in test_blackhole_gobgp.py and test_api_gobgp.py.

It refuses what the production path (GoBgpAnnouncer to gobgpd) refuses, with the same
exception: a route whose values common/bgp_values.py does not accept.  gobgpd itself
takes every route of valid values (see that module), so that is the whole list;
test_blackhole_gobgp.py runs the same cases through both and compares the verdicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from appliance.flowenricher.blackhole.manager import AnnounceError, AnnounceRefused
from appliance.flowenricher.common.bgp_values import BgpValueError, BlackholeRoute


class RecordingGoBGP:
    """Holds announced prefixes like GoBGP's global RIB; `down` makes every call fail;
    `refusing` (a reason) makes it refuse every announcement as GoBGP would answer one
    (gobgpd 3.10 refuses no route of valid values, but the manager must handle it);
    `ever` lists every prefix announced, in order; `asked` the prefixes of each
    announced() call; `established` the address families (4, 6) that have an
    Established router peer: a held route of another family is not confirmed, as
    gobgpd's adj-RIB-out has no peer to hold it."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.established: set[int] = {4, 6}
        self.down = False
        self.refusing = ""
        self.ever: list[str] = []
        self.asked: list[set[str]] = []

    def announce(self, prefix: str, next_hop: str, communities: Sequence[str]) -> None:
        if self.down:
            raise AnnounceError("connection refused")
        try:
            route = BlackholeRoute.parse(prefix, next_hop, communities)
        except BgpValueError as err:
            raise AnnounceRefused(str(err)) from err
        if self.refusing:
            raise AnnounceRefused(f"GoBGP refused it: {self.refusing}")
        self.held[str(route.prefix)] = (next_hop, tuple(communities))
        self.ever.append(prefix)

    def withdraw(self, prefix: str, next_hop: str, communities: Sequence[str]) -> None:
        if self.down:
            raise AnnounceError("connection refused")
        self.held.pop(prefix, None)

    def announced(self, prefixes: Iterable[str]) -> set[str]:
        if self.down:
            raise AnnounceError("connection refused")
        asked = set(prefixes)
        self.asked.append(asked)
        return set(self.held) & asked

    def confirmed(self, prefixes: Iterable[str]) -> set[str]:
        if self.down:
            raise AnnounceError("connection refused")
        return {p for p in set(self.held) & set(prefixes) if (6 if ":" in p else 4) in self.established}
