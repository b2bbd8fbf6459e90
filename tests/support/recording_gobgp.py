"""An in-memory stand-in for GoBGP's global RIB, for tests of the blackhole manager's
rules that need thousands of sequences (hypothesis) or no daemons; the real gobgpd and
BIRD path is tested in test_blackhole_gobgp.py and test_api_gobgp.py."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from appliance.flowenricher.blackhole.manager import AnnounceError


class RecordingGoBGP:
    """Holds announced prefixes like GoBGP's global RIB; `down` makes every call fail;
    `ever` lists every prefix announced, in order; `asked` the prefixes of each
    announced() call."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.down = False
        self.ever: list[str] = []
        self.asked: list[set[str]] = []

    def announce(self, prefix: str, next_hop: str, communities: Sequence[str]) -> None:
        if self.down:
            raise AnnounceError("connection refused")
        self.held[prefix] = (next_hop, tuple(communities))
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
