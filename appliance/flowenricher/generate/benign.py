"""Labelled benign traffic mixes, and a scan slow enough to stay under every shipped rule.

The normal model (traffic.py) is the background; these add ordinary activities that
look unusual to a detector (the evaluation of the anomaly score measures its false
positives on each): a resolver talking to hundreds of authoritative servers, clients
browsing dozens of CDNs, NTP polls, a backup at line rate, video streams, speed-test
bursts of parallel connections, game sessions of small UDP packets.  The hard cases
(HARD_CASES) are the clients that fool scan detectors in real networks: SYN-only
clients retrying servers a firewall drops, NAT and CGNAT addresses carrying many users,
monitoring probes polling the own hosts, and crawlers fetching the own web servers.
Each mix is an
:class:`~.scenarios.Attack` of the scenario machinery with ``truth.benign`` set, so its
rows carry a label and its sources are known, like an attack's.

Each source uses a fixed set of destinations (a client has its servers), drawn once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .flows import INBOUND, OUTBOUND, Flows, v4_rows
from .scenarios import (
    SYN,
    Attack,
    AttackTruth,
    SlowScan,
    _finish_ports,
    _inside_v4_values,
    _v4_text,
    register_scenario,
)

if TYPE_CHECKING:
    from .traffic import TrafficModel

__all__ = ["HARD_CASES", "MIXES", "BenignMix", "LowAndSlowScan", "MixSpec"]


@dataclass(frozen=True)
class MixSpec:
    """One benign activity.  Rows go from `sources` hosts (inside the operator's prefixes
    when `src_inside`) to `dsts_per_source` fixed destinations each, drawn from a pool of
    `dst_pool` hosts on the other side.  Ports: a tuple to draw from, or () for an
    ephemeral port.  `burst` = (on_s, period_s) emits flows only during the first on_s
    seconds of every period (speed tests).  `dst_inside`: destinations among the own
    hosts (None: on the other side from the sources).  `syn_only_share` of the TCP flows
    are unanswered connection attempts (SYN alone, 1-3 packets of 44-60 bytes), all to
    the same few of each source's destinations (the hosts that are down or filtered:
    that share of them, at least one)."""

    kind: str
    proto: int
    src_inside: bool
    sources: int
    dsts_per_source: int
    dst_pool: int
    src_ports: tuple[int, ...]
    dst_ports: tuple[int, ...]
    rate_per_s: float
    packets: tuple[int, int]
    size: tuple[int, int]
    duration_ms: tuple[int, int]
    flags: int = 0x1B
    burst: tuple[float, float] | None = None
    dst_inside: bool | None = None
    syn_only_share: float = 0.0

    @property
    def unanswered(self) -> int:
        """How many of each source's destinations its connection attempts go to."""
        return max(1, round(self.syn_only_share * self.dsts_per_source)) if self.syn_only_share else 0


MIXES: dict[str, MixSpec] = {spec.kind: spec for spec in (
    # Office clients browsing: each reaches a few dozen web servers a minute.
    MixSpec("benign_web", 6, True, 20, 25, 3000, (), (443, 443, 443, 80), 30.0, (8, 60), (90, 300),
            (200, 20000)),
    # Two inside resolvers asking authoritative servers: one UDP packet per flow, hundreds
    # of destinations on port 53 (a scan-lookalike).
    MixSpec("benign_dns", 17, True, 2, 300, 8000, (), (53,), 10.0, (1, 1), (60, 110), (0, 0), flags=0),
    # Hosts polling NTP servers (port 123 both sides), one packet per flow.
    MixSpec("benign_ntp", 17, True, 60, 4, 24, (123,), (123,), 4.0, (1, 1), (76, 76), (0, 0), flags=0),
    # Nightly backups over SSH/rsync at line rate: long flows of full-size packets.
    MixSpec("benign_backup", 6, True, 2, 1, 2, (), (22, 873), 0.2, (50_000, 200_000), (1400, 1500),
            (30_000, 60_000), flags=0x18),
    # Video from CDN servers to inside viewers (QUIC): big UDP flows from port 443.
    MixSpec("benign_video", 17, False, 6, 8, 150, (443,), (), 2.0, (1000, 6000), (1200, 1350), (10_000, 60_000),
            flags=0),
    # A speed test: 16 parallel connections for 15 s every 5 minutes, to two servers.
    MixSpec("benign_speedtest", 6, True, 1, 2, 4, (), (8080,), 16.0, (5_000, 20_000), (1400, 1500),
            (5_000, 15_000), burst=(15.0, 300.0)),
    # Game sessions: one steady UDP flow per player and minute, small packets.
    MixSpec("benign_gaming", 17, True, 12, 1, 6, (), (27015, 3074, 3659), 0.2, (1500, 3600), (60, 140),
            (55_000, 60_000), flags=0),
)}

HARD_CASES: dict[str, MixSpec] = {spec.kind: spec for spec in (
    # Clients behind a firewall that drops them, retrying for ever: software (updates,
    # MQTT, XMPP, VPN) trying six fixed servers, one attempt every ten seconds or so;
    # every attempt is a SYN alone, a few destinations a minute, like a slow scanner's
    # minute.
    MixSpec("benign_syn_retry", 6, True, 8, 6, 40, (), (443, 8883, 5222, 1194), 0.8, (1, 3), (44, 60),
            (0, 3000), syn_only_share=1.0),
    # An office or customer NAT: one inside address carries dozens of users' connections
    # to hundreds of servers, a few of which do not answer.
    MixSpec("benign_nat", 6, True, 3, 400, 20_000, (), (443, 443, 443, 80, 993, 8080, 5228), 15.0, (5, 80),
            (90, 900), (200, 30_000), syn_only_share=0.03),
    # CGNAT: own public addresses each shared by hundreds of subscribers: more servers,
    # more ports, more unanswered attempts, all day.
    MixSpec("benign_cgnat", 6, True, 16, 1500, 30_000, (),
            (443, 443, 443, 443, 80, 80, 993, 5228, 8443, 1935, 5222, 3478), 32.0, (3, 60), (80, 1000),
            (100, 30_000), syn_only_share=0.04),
    # Monitoring servers checking 120 own hosts a minute each on SSH, HTTP and HTTPS
    # (complete connections), some of the hosts down or filtered.
    MixSpec("benign_monitoring", 6, True, 2, 120, 400, (), (22, 80, 443), 4.0, (6, 12), (60, 200), (5, 300),
            dst_inside=True, syn_only_share=0.05),
    # Search-engine crawlers fetching the own web servers, following names of sites that
    # moved away (a few unanswered attempts).
    MixSpec("benign_crawler", 6, False, 4, 60, 300, (), (443, 443, 80), 2.0, (8, 40), (80, 1400),
            (200, 5000), syn_only_share=0.08),
)}


class BenignMix(Attack):
    """Flows of one MixSpec (an Attack only in the machinery's sense: labelled rows)."""

    def __init__(self, model: TrafficModel, rng: np.random.Generator, spec: MixSpec) -> None:
        self.spec = spec
        self.kind = spec.kind  # type: ignore[misc]  # per instance: one class serves every mix
        self.share, self.rate_per_s = 0.0, spec.rate_per_s
        inside = _inside_v4_values(model)
        if spec.src_inside:
            self.sources = inside[rng.permutation(len(inside))[:spec.sources]]
        else:
            self.sources = model.public_v4(rng, spec.sources)
        dst_inside = not spec.src_inside if spec.dst_inside is None else spec.dst_inside
        pool = inside[rng.integers(0, len(inside), spec.dst_pool)] if dst_inside else model.public_v4(rng, spec.dst_pool)
        self.dsts = pool[rng.integers(0, len(pool), (len(self.sources), spec.dsts_per_source))]
        pick = rng.integers(0, len(spec.dst_ports), (len(self.sources), spec.dsts_per_source)) \
            if spec.dst_ports else None
        self.server_port = np.asarray(spec.dst_ports, dtype=np.uint16)[pick] if pick is not None else None

    @property
    def truth(self) -> AttackTruth:
        spec = self.spec
        return AttackTruth(spec.kind, self.label, spec.proto, _v4_text(self.sources),
                           _v4_text(np.unique(self.dsts))[:16], spec.dst_ports, {"rate_per_s": spec.rate_per_s},
                           benign=True)

    def flows(self, model: TrafficModel, rng: np.random.Generator, n: int, t0_ms: int, span_ms: int) -> Flows:
        burst = self.spec.burst
        if burst is not None and (t0_ms / 1000.0) % burst[1] >= burst[0]:
            return Flows.empty(0)
        return super().flows(model, rng, n, t0_ms, span_ms)

    def build(self, model: TrafficModel, rng: np.random.Generator, k: int, t0_ms: int, span_ms: int) -> Flows:
        spec = self.spec
        who = rng.integers(0, len(self.sources), k)
        which = rng.integers(0, spec.dsts_per_source, k)
        attempt = (rng.random(k) < spec.syn_only_share) if spec.proto == 6 else np.zeros(k, dtype=bool)
        which = np.where(attempt, which % max(spec.unanswered, 1), which)  # the down hosts come first
        src, dst = self.sources[who], self.dsts[who, which]
        f = Flows.empty(k)
        f.src_addr, f.dst_addr = v4_rows(src), v4_rows(dst)
        f.proto[:] = spec.proto
        f.src_mask[:] = 24
        f.dst_mask[:] = 24
        if spec.src_inside and spec.dst_inside:  # between own hosts, through the router
            f.flow_direction[:] = OUTBOUND
            f.src_mask, f.dst_mask = model.mask_of_v4(src), model.mask_of_v4(dst)
            f.input_interface, f.output_interface = model.downlink_of_v4(src), model.downlink_of_v4(dst)
        elif spec.src_inside:
            f.flow_direction[:] = OUTBOUND
            f.src_mask = model.mask_of_v4(src)
            f.input_interface, f.output_interface = model.downlink_of_v4(src), model.uplink_ifindex(rng, k)
        else:
            f.flow_direction[:] = INBOUND
            f.dst_mask = model.mask_of_v4(dst)
            f.input_interface, f.output_interface = model.uplink_ifindex(rng, k), model.downlink_of_v4(dst)
        ephemeral = rng.integers(32768, 61000, k).astype(np.uint16)
        f.src_port = (np.asarray(spec.src_ports, dtype=np.uint16)[rng.integers(0, len(spec.src_ports), k)]
                      if spec.src_ports else ephemeral)
        f.dst_port = self.server_port[who, which] if self.server_port is not None else ephemeral
        f.tcpflags[:] = spec.flags if spec.proto == 6 else 0
        f.packets = rng.integers(spec.packets[0], spec.packets[1] + 1, k).astype(np.uint32)
        size = rng.integers(spec.size[0], spec.size[1] + 1, k)
        f.bytes = np.minimum(f.packets.astype(np.uint64) * size.astype(np.uint64), 0xFFFFFFFF).astype(np.uint32)
        end = (t0_ms + rng.integers(0, max(span_ms, 1), k)).astype(np.uint64)
        duration = rng.integers(spec.duration_ms[0], spec.duration_ms[1] + 1, k).astype(np.uint64)
        if attempt.any():
            # Unanswered attempts: the SYN and its retransmissions (a second apart), nothing back.
            tries = rng.integers(1, 4, int(attempt.sum())).astype(np.uint32)
            f.tcpflags[attempt] = SYN
            f.packets[attempt] = tries
            f.bytes[attempt] = tries * rng.integers(44, 61, len(tries)).astype(np.uint32)
            duration[attempt] = 1000 * (tries.astype(np.uint64) - 1)
        f.end_ms, f.start_ms = end, end - np.minimum(duration, end)
        f.post_nat_src_addr, f.post_nat_dst_addr = f.src_addr.copy(), f.dst_addr.copy()
        return _finish_ports(f)


class LowAndSlowScan(SlowScan):
    """A horizontal scan at 0.1 probes/s (6 hosts a minute, 60 in ten): under the shipped
    scan rules (50 hosts a minute; 100 in ten minutes), which only the score can catch."""

    kind = "low_and_slow_scan"

    def __init__(self, model: TrafficModel, rng: np.random.Generator, port: int = 5900,
                 rate_per_s: float = 0.1) -> None:
        super().__init__(model, rng, port=port, rate_per_s=rate_per_s)


def _one_mix(spec: MixSpec) -> Callable[[TrafficModel, np.random.Generator], list[Attack]]:
    def factory(model: TrafficModel, rng: np.random.Generator) -> list[Attack]:
        return [BenignMix(model, rng, spec)]
    return factory


for _kind, _spec in {**MIXES, **HARD_CASES}.items():
    register_scenario(_kind)(_one_mix(_spec))
register_scenario("benign")(lambda model, rng: [BenignMix(model, rng, spec) for spec in MIXES.values()])
register_scenario("hard_benign")(lambda model, rng: [BenignMix(model, rng, spec) for spec in HARD_CASES.values()])
register_scenario("low_and_slow_scan")(lambda model, rng: [LowAndSlowScan(model, rng)])


# Low-and-slow scanners of the evaluation: rates and ports of their own (3 to 12 hosts a minute).
_LOW_AND_SLOW = ((0.05, 23), (0.08, 445), (0.1, 5900), (0.15, 8080), (0.2, 1433))


@register_scenario("evaluation")
def _evaluation(model: TrafficModel, rng: np.random.Generator) -> list[Attack]:
    """What bench/eval_detection.py measures on: every benign mix and hard case, every
    attack of the `attacks` scenario, and five low-and-slow scanners under every shipped
    rule."""
    from .scenarios import SCENARIOS

    return ([BenignMix(model, rng, spec) for spec in MIXES.values()] + SCENARIOS["attacks"](model, rng)
            + [LowAndSlowScan(model, rng, port=port, rate_per_s=rate) for rate, port in _LOW_AND_SLOW]
            + [BenignMix(model, rng, spec) for spec in HARD_CASES.values()])
