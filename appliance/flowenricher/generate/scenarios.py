"""Attacks mixed into normal traffic, each with the ground truth a detector should find.

A scenario is a named factory returning a list of :class:`Attack` objects; the registry
`SCENARIOS` is what `generate --scenario` accepts (normal, scan, flood, one scenario per
attack kind, and `attacks` with all of them), and :func:`register_scenario` adds one
without touching the generator.  Attackers and victims are drawn when the scenario is
built and stay fixed for the run.

Volume knobs, per attack:
- `share`: the fraction of each batch's flows that belong to the attack (binomially
  drawn), for attacks whose volume scales with the traffic (fast scans, floods);
- `rate_per_s`: flows per second of the attack, independent of the batch size, for slow
  scans meant to stay under volume thresholds (`share` is 0 for those).
Only the inbound half of each attack is generated (probes, flood packets); answers of
the victims (RSTs, SYN-ACKs) are left out.
"""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import numpy.typing as npt

from .flows import INBOUND, U8, U32, Flows, v4_rows

if TYPE_CHECKING:
    from .traffic import TrafficModel

SYN = 0x02


@dataclass(frozen=True)
class AttackTruth:
    """Who attacks whom: what a detector is expected to report for one attack."""

    kind: str
    label: int  # the `label` value of this attack's flow rows
    proto: int
    attackers: tuple[str, ...]
    victims: tuple[str, ...]  # addresses, or prefixes for a horizontal scan's sweep
    dst_ports: tuple[int, ...]  # empty: any port
    params: dict[str, float | int | str] = field(default_factory=dict)
    benign: bool = False  # a labelled benign mix (generate/benign.py), not an attack

    def summary(self, sample: int = 5) -> dict[str, object]:
        """A JSON-ready digest: counts plus a few addresses (floods have thousands)."""
        ports = list(self.dst_ports)
        return {
            "kind": self.kind, "label": self.label, "proto": self.proto,
            "attackers": len(self.attackers), "attacker_sample": list(self.attackers[:sample]),
            "victims": list(self.victims[:sample]) if len(self.victims) > sample else list(self.victims),
            "dst_ports": ports if len(ports) <= 8 else f"{ports[0]}-{ports[-1]} ({len(ports)} ports)",
            **self.params,
            **({"benign": True} if self.benign else {}),
        }


class Attack(ABC):
    """One attack of a scenario: produces its flow rows for a batch, knows its truth."""

    kind: ClassVar[str]
    share: float = 0.0
    rate_per_s: float = 0.0
    label: int = 0  # set by the generator: this attack's index + 1

    @property
    @abstractmethod
    def truth(self) -> AttackTruth: ...

    @abstractmethod
    def build(self, model: TrafficModel, rng: np.random.Generator, k: int, t0_ms: int,
              span_ms: int) -> Flows:
        """Exactly `k` flow rows of the attack, ending within the span."""

    def count(self, rng: np.random.Generator, n: int, span_ms: int) -> int:
        """How many rows this attack adds to a batch of `n` flows covering `span_ms`."""
        if self.share > 0:
            return int(rng.binomial(n, self.share))
        return int(rng.poisson(self.rate_per_s * span_ms / 1000.0))

    def flows(self, model: TrafficModel, rng: np.random.Generator, n: int, t0_ms: int,
              span_ms: int) -> Flows:
        k = self.count(rng, n, span_ms)
        f = self.build(model, rng, k, t0_ms, span_ms)
        f.label[:] = self.label
        return f


def inbound_flows(model: TrafficModel, rng: np.random.Generator, src: U8, dst_v4: U32,
                  t0_ms: int, span_ms: int, proto: int) -> Flows:
    """Rows from external sources to own IPv4 addresses, with routing facts filled in.

    Callers set ports, flags, packets and bytes; times end uniformly in the span.
    """
    k = len(dst_v4)
    f = Flows.empty(k)
    f.src_addr, f.dst_addr = src, v4_rows(dst_v4)
    f.proto[:] = proto
    f.flow_direction[:] = INBOUND
    f.src_mask[:] = 24
    f.dst_mask = model.mask_of_v4(dst_v4)
    f.input_interface = model.uplink_ifindex(rng, k)
    f.output_interface = model.downlink_of_v4(dst_v4)
    end = (t0_ms + rng.integers(0, max(span_ms, 1), k)).astype(np.uint64)
    f.start_ms, f.end_ms = end, end
    f.post_nat_src_addr, f.post_nat_dst_addr = f.src_addr.copy(), f.dst_addr.copy()
    return f


def _finish_ports(f: Flows) -> Flows:
    f.post_nat_src_port, f.post_nat_dst_port = f.src_port.copy(), f.dst_port.copy()
    return f


def _sweep_targets(model: TrafficModel, rng: np.random.Generator) -> U32:
    """Every address of the own IPv4 prefixes (up to a /16 each), in a shuffled order as
    masscan-like scanners use, so each batch of probes hits new hosts."""
    parts = [np.arange(int(n.network_address), int(n.network_address) + min(n.num_addresses, 65536),
                       dtype=np.uint32) for n in model.my_v4]
    return rng.permutation(np.concatenate(parts))


def _inside_v4_values(model: TrafficModel) -> U32:
    """The own IPv4 hosts of the model (host-order integers): victims are drawn there."""
    raw: npt.NDArray[np.uint32] = model.inside_v4.addr[:, 12:].copy().view(">u4").ravel()
    return raw.astype(np.uint32)


def _v4_text(values: U32) -> tuple[str, ...]:
    return tuple(str(ipaddress.IPv4Address(int(v))) for v in values)


class HorizontalScan(Attack):
    """One source probes one TCP port on every address of the own prefixes (SYN, 1 packet)."""

    kind = "horizontal_scan"

    def __init__(self, model: TrafficModel, rng: np.random.Generator, port: int = 22,
                 share: float = 0.02, rate_per_s: float = 0.0) -> None:
        self.attacker = int(model.public_v4(rng, 1)[0])
        self.port, self.share, self.rate_per_s = port, share, rate_per_s
        self.sport = int(rng.integers(32768, 61000))
        self.targets = _sweep_targets(model, rng)
        self.swept = tuple(str(n) for n in model.my_v4)
        self.cursor = 0

    @property
    def truth(self) -> AttackTruth:
        return AttackTruth(self.kind, self.label, 6, _v4_text(np.array([self.attacker], np.uint32)),
                           self.swept, (self.port,),
                           {"targets": len(self.targets)})

    def build(self, model: TrafficModel, rng: np.random.Generator, k: int, t0_ms: int,
              span_ms: int) -> Flows:
        idx = (self.cursor + np.arange(k)) % len(self.targets)
        self.cursor = int((self.cursor + k) % len(self.targets))
        f = inbound_flows(model, rng, v4_rows(np.full(k, self.attacker, np.uint32)), self.targets[idx],
                          t0_ms, span_ms, 6)
        f.src_port[:] = self.sport
        f.dst_port[:] = self.port
        f.tcpflags[:] = SYN
        f.packets[:] = 1
        f.bytes[:] = 44  # IPv4 + TCP with the MSS option, as nmap/masscan probes are
        # Probes are emitted in sweep order.
        f.end_ms = np.sort(f.end_ms)
        f.start_ms = f.end_ms.copy()
        return _finish_ports(f)


class SlowScan(HorizontalScan):
    """A horizontal scan at a fixed low rate, to stay under per-second volume thresholds."""

    kind = "slow_horizontal_scan"

    def __init__(self, model: TrafficModel, rng: np.random.Generator, port: int = 3389,
                 rate_per_s: float = 1.5) -> None:
        super().__init__(model, rng, port=port, share=0.0, rate_per_s=rate_per_s)

    @property
    def truth(self) -> AttackTruth:
        base = super().truth
        return AttackTruth(self.kind, base.label, base.proto, base.attackers, base.victims, base.dst_ports,
                           {**base.params, "rate_per_s": self.rate_per_s})


class VerticalScan(Attack):
    """One source probes many TCP ports of one own host: 1-1024 first, then upwards."""

    kind = "vertical_scan"

    def __init__(self, model: TrafficModel, rng: np.random.Generator, share: float = 0.01,
                 max_port: int = 65535) -> None:
        self.attacker = int(model.public_v4(rng, 1)[0])
        hosts = _inside_v4_values(model)
        self.victim = int(hosts[rng.integers(0, len(hosts))])
        self.share = share
        self.ports = np.arange(1, max_port + 1, dtype=np.uint16)
        self.sport = int(rng.integers(32768, 61000))
        self.cursor = 0

    @property
    def truth(self) -> AttackTruth:
        return AttackTruth(self.kind, self.label, 6, _v4_text(np.array([self.attacker], np.uint32)),
                           _v4_text(np.array([self.victim], np.uint32)),
                           tuple(self.ports.tolist()), {"ports": len(self.ports)})

    def build(self, model: TrafficModel, rng: np.random.Generator, k: int, t0_ms: int,
              span_ms: int) -> Flows:
        idx = (self.cursor + np.arange(k)) % len(self.ports)
        self.cursor = int((self.cursor + k) % len(self.ports))
        f = inbound_flows(model, rng, v4_rows(np.full(k, self.attacker, np.uint32)),
                          np.full(k, self.victim, np.uint32), t0_ms, span_ms, 6)
        f.src_port[:] = self.sport
        f.dst_port = self.ports[idx]
        f.tcpflags[:] = SYN
        f.packets[:] = 1
        f.bytes[:] = 44
        f.end_ms = np.sort(f.end_ms)
        f.start_ms = f.end_ms.copy()
        return _finish_ports(f)


class SynFlood(Attack):
    """Many (spoofed) sources send SYNs to one port of one own address."""

    kind = "syn_flood"

    def __init__(self, model: TrafficModel, rng: np.random.Generator, victim: int, port: int = 443,
                 share: float = 0.3, sources: int = 20_000) -> None:
        self.victim, self.port, self.share = victim, port, share
        self.sources = model.public_v4(rng, sources)

    @property
    def truth(self) -> AttackTruth:
        return AttackTruth(self.kind, self.label, 6, _v4_text(self.sources),
                           _v4_text(np.array([self.victim], np.uint32)), (self.port,),
                           {"sources": len(self.sources)})

    def build(self, model: TrafficModel, rng: np.random.Generator, k: int, t0_ms: int,
              span_ms: int) -> Flows:
        src = self.sources[rng.integers(0, len(self.sources), k)]
        f = inbound_flows(model, rng, v4_rows(src), np.full(k, self.victim, np.uint32), t0_ms, span_ms, 6)
        f.src_port = rng.integers(1024, 65536, k).astype(np.uint16)
        f.dst_port[:] = self.port
        f.tcpflags[:] = SYN
        f.packets = rng.integers(1, 4, k).astype(np.uint32)
        f.bytes = (f.packets * rng.integers(40, 61, k)).astype(np.uint32)
        return _finish_ports(f)


class UdpFlood(Attack):
    """Reflection/amplification: many reflectors answer with large UDP packets from a
    service port (DNS, NTP, LDAP, SSDP, memcached) to random ports of one own address."""

    kind = "udp_flood"

    def __init__(self, model: TrafficModel, rng: np.random.Generator, victim: int, share: float = 0.2,
                 sources: int = 3000, src_ports: tuple[int, ...] = (53, 123, 389, 1900, 11211)) -> None:
        self.victim, self.share = victim, share
        self.sources = model.public_v4(rng, sources)
        self.src_ports = np.array(src_ports, dtype=np.uint16)
        self.port_of_source = self.src_ports[rng.integers(0, len(src_ports), sources)]

    @property
    def truth(self) -> AttackTruth:
        return AttackTruth(self.kind, self.label, 17, _v4_text(self.sources),
                           _v4_text(np.array([self.victim], np.uint32)), (),
                           {"sources": len(self.sources),
                            "src_ports": ",".join(str(p) for p in self.src_ports.tolist())})

    def build(self, model: TrafficModel, rng: np.random.Generator, k: int, t0_ms: int,
              span_ms: int) -> Flows:
        which = rng.integers(0, len(self.sources), k)
        f = inbound_flows(model, rng, v4_rows(self.sources[which]), np.full(k, self.victim, np.uint32),
                          t0_ms, span_ms, 17)
        f.src_port = self.port_of_source[which]
        f.dst_port = rng.integers(1024, 65536, k).astype(np.uint16)
        f.packets = rng.integers(5, 200, k).astype(np.uint32)
        f.bytes = (f.packets * rng.integers(1200, 1501, k)).astype(np.uint32)
        f.start_ms = f.end_ms - rng.integers(0, 2000, k).astype(np.uint64).clip(0, f.end_ms)
        return _finish_ports(f)


class BruteForce(Attack):
    """One source trying passwords on one service of one own host: many short, complete
    TCP connections (handshake, a few exchanges, FIN) at a steady rate, whatever the
    traffic volume, as brute-force tools pace themselves."""

    kind = "bruteforce"
    default_port = 0

    def __init__(self, model: TrafficModel, rng: np.random.Generator, port: int | None = None,
                 rate_per_s: float = 3.0) -> None:
        self.attacker = int(model.public_v4(rng, 1)[0])
        hosts = _inside_v4_values(model)
        self.victim = int(hosts[rng.integers(0, len(hosts))])
        self.port = self.default_port if port is None else port
        self.share, self.rate_per_s = 0.0, rate_per_s

    @property
    def truth(self) -> AttackTruth:
        return AttackTruth(self.kind, self.label, 6, _v4_text(np.array([self.attacker], np.uint32)),
                           _v4_text(np.array([self.victim], np.uint32)), (self.port,),
                           {"rate_per_s": self.rate_per_s})

    def build(self, model: TrafficModel, rng: np.random.Generator, k: int, t0_ms: int,
              span_ms: int) -> Flows:
        f = inbound_flows(model, rng, v4_rows(np.full(k, self.attacker, np.uint32)),
                          np.full(k, self.victim, np.uint32), t0_ms, span_ms, 6)
        f.src_port = rng.integers(32768, 61000, k).astype(np.uint16)
        f.dst_port[:] = self.port
        f.tcpflags[:] = 0x1B  # FIN, SYN, PSH, ACK: a whole short session
        f.packets = rng.integers(10, 31, k).astype(np.uint32)
        f.bytes = (f.packets * rng.integers(60, 141, k)).astype(np.uint32)
        f.start_ms = f.end_ms - rng.integers(300, 4000, k).astype(np.uint64).clip(0, f.end_ms)
        return _finish_ports(f)


class SshBruteForce(BruteForce):
    kind = "ssh_bruteforce"
    default_port = 22


class RdpBruteForce(BruteForce):
    kind = "rdp_bruteforce"
    default_port = 3389


ScenarioFactory = Callable[["TrafficModel", np.random.Generator], list[Attack]]
SCENARIOS: dict[str, ScenarioFactory] = {}


def register_scenario(name: str) -> Callable[[ScenarioFactory], ScenarioFactory]:
    """Decorator adding a scenario factory under `name` (what `--scenario` accepts)."""
    def add(factory: ScenarioFactory) -> ScenarioFactory:
        SCENARIOS[name] = factory
        return factory
    return add


@register_scenario("normal")
def _normal(model: TrafficModel, rng: np.random.Generator) -> list[Attack]:
    return []


@register_scenario("scan")
def _scan(model: TrafficModel, rng: np.random.Generator) -> list[Attack]:
    """A fast SSH sweep, a vertical scan of one host, and a slow RDP sweep."""
    return [HorizontalScan(model, rng, port=22), VerticalScan(model, rng), SlowScan(model, rng, port=3389)]


@register_scenario("flood")
def _flood(model: TrafficModel, rng: np.random.Generator) -> list[Attack]:
    """A SYN flood and a UDP reflection flood against the same own address."""
    hosts = _inside_v4_values(model)
    victim = int(hosts[rng.integers(0, len(hosts))])
    return [SynFlood(model, rng, victim), UdpFlood(model, rng, victim)]




def _victim(model: TrafficModel, rng: np.random.Generator) -> int:
    hosts = _inside_v4_values(model)
    return int(hosts[rng.integers(0, len(hosts))])


# One attack per scenario, for tests and demos of a single detection rule.
register_scenario("horizontal_scan")(lambda model, rng: [HorizontalScan(model, rng, port=22)])
register_scenario("vertical_scan")(lambda model, rng: [VerticalScan(model, rng)])
# 0.25 probes/s: 15 hosts a minute stays under a one-minute rule, 150 in ten minutes does not.
register_scenario("slow_scan")(lambda model, rng: [SlowScan(model, rng, port=3389, rate_per_s=0.25)])
register_scenario("ssh_bruteforce")(lambda model, rng: [SshBruteForce(model, rng)])
register_scenario("rdp_bruteforce")(lambda model, rng: [RdpBruteForce(model, rng)])
register_scenario("bruteforce")(lambda model, rng: [SshBruteForce(model, rng), RdpBruteForce(model, rng)])
register_scenario("syn_flood")(lambda model, rng: [SynFlood(model, rng, _victim(model, rng))])
register_scenario("udp_flood")(lambda model, rng: [UdpFlood(model, rng, _victim(model, rng))])


@register_scenario("attacks")
def _attacks(model: TrafficModel, rng: np.random.Generator) -> list[Attack]:
    """Every attack kind at once, each with its own attacker and victim."""
    return [HorizontalScan(model, rng, port=22), VerticalScan(model, rng),
            SlowScan(model, rng, port=3389, rate_per_s=0.25), SshBruteForce(model, rng), RdpBruteForce(model, rng),
            SynFlood(model, rng, _victim(model, rng)), UdpFlood(model, rng, _victim(model, rng))]
