"""A traffic model of a small AS: who talks to whom, on which service, through which link.

The model is drawn once from a seeded numpy Generator (address pools, popularity, which
uplink reaches which external network), then produces flow records in vectorised batches.
It is meant to look like a hosting AS behind one MikroTik router: a few own prefixes, many
external networks of skewed popularity (a few heavy hitters carry most flows), web/DNS/
mail/SSH/NTP/QUIC services in both directions, an IPv6 share, several uplinks.
Every flow is unidirectional, as NetFlow exports it: a request (client to server) or a
response (server to client), so a service on an own server yields inbound requests and
outbound responses.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ..common.addresses import stored_bytes
from .flows import INBOUND, OUTBOUND, U8, U32, Flows, random_in_prefix, v4_rows
from .scenarios import SCENARIOS, Attack, AttackTruth

DEFAULT_MY_PREFIXES = ("84.54.49.0/24", "194.153.116.0/24", "2a14:4280::/29")

# Where external IPv6 hosts live: large content/cloud/ISP allocations (public facts), so
# heavy hitters in IPv6 look like the real ones.  The model draws /48s inside them.
EXTERNAL_V6_ALLOCATIONS = (
    "2a00:1450::/32", "2606:4700::/32", "2a03:2880::/32", "2001:4860::/32", "2a02:26f0::/32",
    "2600:1f00::/24", "2a01:4f8::/32", "2001:67c::/32", "2a0a::/16", "2c0f::/16", "2400::/12",
)

# Never drawn as an external IPv4 network (RFC 6890 special-purpose ranges, multicast and up).
_V4_SPECIAL = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
               "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
               "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/3")


@dataclass(frozen=True)
class Uplink:
    """A transit or IX interface: its ifIndex, its share of external networks, its peer."""

    ifindex: int
    weight: float
    next_hop_v4: str
    next_hop_v6: str


@dataclass(frozen=True)
class Service:
    """A service as flows see it: protocol and server port, popularity, where servers are.

    `server_inside` is the probability that the server is in the operator's prefixes (a
    hosting AS serves web and mail; its users fetch DNS and NTP outside).  Packet counts
    are medians of a log-normal; sizes are mean IP packet sizes in each direction.
    """

    name: str
    proto: int
    port: int
    weight: float
    server_inside: float
    request_packets: float
    request_size: int
    response_packets: float
    response_size: int


SERVICES: tuple[Service, ...] = (
    Service("https", 6, 443, 40, 0.5, 12, 120, 20, 1200),
    Service("http", 6, 80, 8, 0.5, 8, 150, 12, 1100),
    Service("quic", 17, 443, 10, 0.2, 15, 300, 25, 1250),
    Service("dns", 17, 53, 15, 0.4, 1, 75, 1, 180),
    Service("dns-tcp", 6, 53, 1, 0.4, 5, 80, 5, 400),
    Service("ntp", 17, 123, 3, 0.3, 1, 76, 1, 76),
    Service("ssh", 6, 22, 3, 0.7, 30, 100, 30, 150),
    Service("smtp", 6, 25, 2, 0.6, 15, 200, 12, 400),
    Service("imaps", 6, 993, 2, 0.8, 12, 150, 15, 700),
    Service("ping", 1, 0, 2, 0.5, 4, 84, 4, 84),
)

# TCP flags ORed over a flow, and how often: complete short connections dominate; flows
# cut by the active timeout carry only ACK/PSH; a few are resets or unanswered SYNs.
_TCP_FLAGS = np.array([0x1B, 0x18, 0x10, 0x14, 0x02, 0x12, 0x19], dtype=np.uint8)
_TCP_FLAGS_P = np.array([0.55, 0.22, 0.10, 0.05, 0.03, 0.02, 0.03])
_TOS = np.array([0x00, 0x20, 0x28, 0x48, 0xB8], dtype=np.uint8)
_TOS_P = np.array([0.86, 0.04, 0.04, 0.04, 0.02])


@dataclass(frozen=True)
class TrafficProfile:
    """What the modelled AS looks like; every number here is a knob of the generator.

    `my_prefixes` is the operator's `my_prefixes` (config.yaml).  `ipv6_share` is the
    fraction of flows over IPv6.  `zipf_exponent` shapes host popularity: rank k gets
    weight 1/k**s, so with s about 1 the top 1% of hosts carry roughly half the flows.
    `nat_share` is the fraction of outbound IPv4 flows sourced from `nat_inside` and
    translated to the first address of the first IPv4 prefix (post-NAT fields); other rows
    carry post-NAT fields equal to the original ones, as RouterOS exports them.
    """

    my_prefixes: tuple[str, ...] = DEFAULT_MY_PREFIXES
    external_v4_networks: int = 4000
    external_v6_networks: int = 600
    external_hosts: int = 40_000
    internal_hosts_per_prefix: int = 254
    ipv6_share: float = 0.25
    zipf_exponent: float = 1.05
    uplinks: tuple[Uplink, ...] = (
        Uplink(1, 0.5, "185.1.10.1", "2001:7f8:10::1"),
        Uplink(2, 0.3, "185.1.20.1", "2001:7f8:20::1"),
        Uplink(3, 0.2, "185.1.30.1", "2001:7f8:30::1"),
    )
    downlinks: tuple[int, ...] = (10, 11, 12)
    services: tuple[Service, ...] = SERVICES
    median_duration_s: float = 2.0
    active_timeout_s: float = 1800.0  # RouterOS default active-flow-timeout=30m
    nat_inside: str = "192.168.88.0/24"
    nat_share: float = 0.02

    def validate(self) -> None:
        """Raise ValueError naming the knob that makes no sense."""
        if not self.my_prefixes:
            raise ValueError("traffic profile: my_prefixes is empty")
        nets = [ipaddress.ip_network(p, strict=False) for p in self.my_prefixes]
        if not any(n.version == 4 for n in nets):
            raise ValueError("traffic profile: my_prefixes needs at least one IPv4 prefix")
        if not 0.0 <= self.ipv6_share <= 1.0 or not 0.0 <= self.nat_share <= 1.0:
            raise ValueError("traffic profile: ipv6_share and nat_share are fractions in [0, 1]")
        if not self.uplinks or not self.downlinks or not self.services:
            raise ValueError("traffic profile: uplinks, downlinks and services must not be empty")


@dataclass
class _HostPool:
    """Addresses with popularity (a CDF to sample from) and per-host routing facts."""

    addr: U8
    mask: npt.NDArray[np.uint8]
    iface: U32  # downlink for inside hosts, uplink for outside hosts
    cdf: npt.NDArray[np.float64]
    next_hop: U8 = field(default_factory=lambda: np.zeros((0, 16), np.uint8))

    def sample(self, rng: np.random.Generator, n: int) -> npt.NDArray[np.intp]:
        idx = np.searchsorted(self.cdf, rng.random(n), side="right")
        return np.minimum(idx, len(self.cdf) - 1).astype(np.intp)


def _zipf_cdf(rng: np.random.Generator, n: int, s: float) -> npt.NDArray[np.float64]:
    """Popularity of `n` hosts: weight 1/rank**s with ranks shuffled over the pool."""
    ranks = rng.permutation(n) + 1
    w = 1.0 / ranks.astype(np.float64) ** s
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    return cdf


class TrafficModel:
    """The AS drawn from a profile: host pools of both families, inside and outside.

    Scenarios read `inside_v4_targets` (every address of the IPv4 prefixes, what a
    horizontal scanner walks) and `outside_v4_source` (random external addresses).
    """

    def __init__(self, profile: TrafficProfile, rng: np.random.Generator) -> None:
        profile.validate()
        self.profile = profile
        nets = [ipaddress.ip_network(p, strict=False) for p in profile.my_prefixes]
        self.my_v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
        self.my_v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
        # Each own prefix sits behind one downlink, in the order the prefixes are listed.
        self.downlink: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, int] = {
            n: profile.downlinks[i % len(profile.downlinks)] for i, n in enumerate(nets)}
        self.inside_v4 = self._inside_v4(rng)
        self.inside_v6 = self._inside_v6(rng) if self.my_v6 else self.inside_v4
        self.outside_v4 = self._outside_v4(rng)
        self.outside_v6 = self._outside_v6(rng)
        weights = np.array([s.weight for s in profile.services], dtype=np.float64)
        self._service_cdf = np.cumsum(weights) / weights.sum()
        self._svc = {k: np.array([getattr(s, k) for s in profile.services]) for k in (
            "proto", "port", "server_inside", "request_packets", "request_size",
            "response_packets", "response_size")}
        self._nat_net = ipaddress.IPv4Network(profile.nat_inside)
        self._nat_public = int(self.my_v4[0].network_address) + 1

    # ------------------------------------------------------------------ pools
    def _inside_v4(self, rng: np.random.Generator) -> _HostPool:
        parts, masks, ifaces = [], [], []
        for net in self.my_v4:
            count = min(self.profile.internal_hosts_per_prefix, max(net.num_addresses - 2, 1))
            first = int(net.network_address) + (1 if net.num_addresses > 2 else 0)
            parts.append(np.arange(first, first + count, dtype=np.uint32))
            masks.append(np.full(count, net.prefixlen, np.uint8))
            ifaces.append(np.full(count, self.downlink[net], np.uint32))
        values = np.concatenate(parts)
        return _HostPool(v4_rows(values), np.concatenate(masks), np.concatenate(ifaces),
                         _zipf_cdf(rng, len(values), self.profile.zipf_exponent))

    def _inside_v6(self, rng: np.random.Generator) -> _HostPool:
        parts, masks, ifaces = [], [], []
        n = self.profile.internal_hosts_per_prefix
        for net in self.my_v6:
            addr = random_in_prefix(rng, net, n)
            # Servers have short interface ids (::1 .. ::ff), as operators number them.
            addr[:, 8:15] = 0
            addr[:, 15] = rng.integers(1, 256, n, dtype=np.uint8)
            parts.append(addr)
            masks.append(np.full(n, net.prefixlen, np.uint8))
            ifaces.append(np.full(n, self.downlink[net], np.uint32))
        addr = np.concatenate(parts)
        return _HostPool(addr, np.concatenate(masks), np.concatenate(ifaces),
                         _zipf_cdf(rng, len(addr), self.profile.zipf_exponent))

    def uplink_choice(self, rng: np.random.Generator, n: int) -> npt.NDArray[np.intp]:
        """Indexes into `profile.uplinks` for `n` external networks, by uplink weight."""
        w = np.array([u.weight for u in self.profile.uplinks], dtype=np.float64)
        return rng.choice(len(w), size=n, p=w / w.sum()).astype(np.intp)

    def uplink_ifindex(self, rng: np.random.Generator, n: int) -> U32:
        """Input ifIndex for `n` flows from random external sources."""
        ifindex = np.array([u.ifindex for u in self.profile.uplinks], dtype=np.uint32)
        return ifindex[self.uplink_choice(rng, n)]

    def downlink_of_v4(self, values: U32) -> U32:
        """The downlink ifIndex behind each own IPv4 address (0 if not in my_prefixes)."""
        out = np.zeros(len(values), dtype=np.uint32)
        for net in self.my_v4:
            lo = int(net.network_address)
            inside = (values >= lo) & (values <= lo + net.num_addresses - 1)
            out[inside] = self.downlink[net]
        return out

    def mask_of_v4(self, values: U32) -> npt.NDArray[np.uint8]:
        """The prefix length of the own prefix holding each address (0 if none)."""
        out = np.zeros(len(values), dtype=np.uint8)
        for net in self.my_v4:
            lo = int(net.network_address)
            out[(values >= lo) & (values <= lo + net.num_addresses - 1)] = net.prefixlen
        return out

    def public_v4(self, rng: np.random.Generator, n: int) -> U32:
        """`n` random routable IPv4 addresses outside the operator's prefixes."""
        out = np.empty(0, dtype=np.uint32)
        excluded = [ipaddress.IPv4Network(p) for p in _V4_SPECIAL] + list(self.my_v4)
        while len(out) < n:
            cand = rng.integers(0x01000000, 0xE0000000, size=2 * (n - len(out)) + 16, dtype=np.uint32)
            keep = np.ones(len(cand), dtype=bool)
            for net in excluded:
                lo = int(net.network_address)
                keep &= ~((cand >= lo) & (cand <= lo + net.num_addresses - 1))
            out = np.concatenate([out, cand[keep]])
        return out[:n]

    def _outside_v4(self, rng: np.random.Generator) -> _HostPool:
        p = self.profile
        nets = np.unique(self.public_v4(rng, p.external_v4_networks) & np.uint32(0xFFFFFF00))
        which = rng.integers(0, len(nets), p.external_hosts)
        hosts = nets[which] | rng.integers(1, 255, p.external_hosts, dtype=np.uint32)
        uplink_of_net = self.uplink_choice(rng, len(nets))
        return self._outside_pool(rng, v4_rows(hosts), np.full(len(hosts), 24, np.uint8),
                                  uplink_of_net[which], 4)

    def _outside_v6(self, rng: np.random.Generator) -> _HostPool:
        p = self.profile
        allocs = [ipaddress.IPv6Network(a) for a in EXTERNAL_V6_ALLOCATIONS]
        alloc_of_net = rng.integers(0, len(allocs), p.external_v6_networks)
        nets = np.concatenate([random_in_prefix(rng, allocs[int(a)], 1) for a in alloc_of_net])
        nets[:, 6:] = 0  # /48s
        n_hosts = max(p.external_hosts // 4, 1)
        which = rng.integers(0, len(nets), n_hosts)
        hosts = nets[which].copy()
        hosts[:, 6:] = rng.integers(0, 256, (n_hosts, 10), dtype=np.uint8)
        uplink_of_net = self.uplink_choice(rng, len(nets))
        return self._outside_pool(rng, hosts, np.full(n_hosts, 48, np.uint8), uplink_of_net[which], 6)

    def _outside_pool(self, rng: np.random.Generator, addr: U8, mask: npt.NDArray[np.uint8],
                      uplink: npt.NDArray[np.intp], version: int) -> _HostPool:
        ups = self.profile.uplinks
        hops = [u.next_hop_v4 if version == 4 else u.next_hop_v6 for u in ups]
        hop_rows = np.stack([np.frombuffer(stored_bytes(h), np.uint8) for h in hops])
        ifindex = np.array([u.ifindex for u in ups], dtype=np.uint32)
        return _HostPool(addr, mask, ifindex[uplink],
                         _zipf_cdf(rng, len(addr), self.profile.zipf_exponent), hop_rows[uplink])

    # ------------------------------------------------------------------ flows
    def normal(self, rng: np.random.Generator, n: int, t0_ms: int, span_ms: int) -> Flows:
        """`n` flows of ordinary traffic ending in [t0_ms, t0_ms + span_ms)."""
        f = Flows.empty(n)
        if n == 0:
            return f
        p = self.profile
        svc = np.minimum(np.searchsorted(self._service_cdf, rng.random(n), side="right"),
                         len(self._service_cdf) - 1)
        proto = self._svc["proto"][svc].astype(np.uint8)
        port = self._svc["port"][svc].astype(np.uint16)
        v6 = rng.random(n) < p.ipv6_share
        server_inside = rng.random(n) < self._svc["server_inside"][svc]
        response = rng.random(n) < 0.5

        inside = np.empty((n, 16), np.uint8)
        outside = np.empty((n, 16), np.uint8)
        in_mask = np.empty(n, np.uint8)
        out_mask = np.empty(n, np.uint8)
        down_if = np.empty(n, np.uint32)
        up_if = np.empty(n, np.uint32)
        hop = np.empty((n, 16), np.uint8)
        for fam_mask, ins, outs in ((~v6, self.inside_v4, self.outside_v4),
                                    (v6, self.inside_v6, self.outside_v6)):
            k = int(fam_mask.sum())
            if not k:
                continue
            i_idx, o_idx = ins.sample(rng, k), outs.sample(rng, k)
            # Heavy hitters are the servers your clients reach (CDNs, clouds); the
            # clients reaching your servers are many and each uses a few of them, not a
            # random one per flow (that would make every busy client look like a
            # horizontal scan): such a client is drawn uniformly and picks one of three
            # servers fixed for it.
            to_server = server_inside[fam_mask]
            o_idx = np.where(to_server, rng.integers(0, len(outs.addr), k), o_idx)
            fixed = (o_idx.astype(np.int64) * 2654435761 + rng.integers(0, 3, k)) % len(ins.addr)
            i_idx = np.where(to_server, fixed, i_idx)
            inside[fam_mask], in_mask[fam_mask] = ins.addr[i_idx], ins.mask[i_idx]
            down_if[fam_mask] = ins.iface[i_idx]
            outside[fam_mask], out_mask[fam_mask] = outs.addr[o_idx], outs.mask[o_idx]
            up_if[fam_mask], hop[fam_mask] = outs.iface[o_idx], outs.next_hop[o_idx]

        # Source is inside when an inside server answers or an inside client asks.
        src_inside = server_inside == response
        sel = src_inside[:, None]
        f.src_addr = np.where(sel, inside, outside)
        f.dst_addr = np.where(sel, outside, inside)
        f.src_mask = np.where(src_inside, in_mask, out_mask)
        f.dst_mask = np.where(src_inside, out_mask, in_mask)
        f.flow_direction = np.where(src_inside, OUTBOUND, INBOUND).astype(np.uint8)
        f.input_interface = np.where(src_inside, down_if, up_if)
        f.output_interface = np.where(src_inside, up_if, down_if)
        # Outbound flows leave through the uplink's peer; inbound ones go to a connected net.
        f.next_hop = np.where(sel, hop, _zero_rows(n, v6))
        f.ip_version = np.where(v6, 6, 4).astype(np.uint8)

        ephemeral = rng.integers(32768, 61000, n).astype(np.uint16)
        f.src_port = np.where(response, port, ephemeral).astype(np.uint16)
        f.dst_port = np.where(response, ephemeral, port).astype(np.uint16)
        icmp = proto == 1
        f.proto = np.where(icmp & v6, 58, proto).astype(np.uint8)
        # NetFlow carries ICMP type and code in the destination port (type * 256 + code):
        # echo request 8 / reply 0, ICMPv6 128 / 129.
        icmp_type = np.where(v6, np.where(response, 129, 128), np.where(response, 0, 8))
        f.src_port[icmp] = 0
        f.dst_port[icmp] = (icmp_type[icmp] << 8).astype(np.uint16)

        median_pk = np.where(response, self._svc["response_packets"][svc], self._svc["request_packets"][svc])
        size = np.where(response, self._svc["response_size"][svc], self._svc["request_size"][svc])
        packets = np.maximum(1, np.rint(median_pk * rng.lognormal(0.0, 0.9, n))).astype(np.uint32)
        min_size = np.where(proto == 6, 40, 28) + np.where(v6, 20, 0)
        pkt_size = np.clip(size * rng.lognormal(0.0, 0.25, n), min_size, 1500)
        f.packets = packets
        f.bytes = np.minimum(packets * pkt_size, 0xFFFFFFFF).astype(np.uint32)
        tcp = proto == 6
        f.tcpflags = np.where(tcp, rng.choice(_TCP_FLAGS, n, p=_TCP_FLAGS_P), 0).astype(np.uint8)
        f.tos = rng.choice(_TOS, n, p=_TOS_P)

        end = t0_ms + rng.integers(0, max(span_ms, 1), n)
        dur = np.minimum(p.median_duration_s * 1000 * rng.lognormal(0.0, 1.5, n), p.active_timeout_s * 1000)
        dur = np.where(packets == 1, 0, dur).astype(np.int64)
        f.end_ms = end.astype(np.uint64)
        f.start_ms = np.maximum(end - dur, 0).astype(np.uint64)
        f.post_nat_src_addr, f.post_nat_dst_addr = f.src_addr.copy(), f.dst_addr.copy()
        f.post_nat_src_port, f.post_nat_dst_port = f.src_port.copy(), f.dst_port.copy()
        self._apply_nat(rng, f)
        return f

    def _apply_nat(self, rng: np.random.Generator, f: Flows) -> None:
        """Make `nat_share` of the outbound IPv4 client flows come from the NATed LAN."""
        if self.profile.nat_share <= 0:
            return
        cand = (f.ip_version == 4) & (f.flow_direction == OUTBOUND) & (f.dst_port != 0) & (
            f.src_port >= 32768)
        pick = np.flatnonzero(cand & (rng.random(len(f)) < self.profile.nat_share))
        if not len(pick):
            return
        lan = int(self._nat_net.network_address)
        lan_hosts = lan + rng.integers(2, max(self._nat_net.num_addresses - 1, 3), len(pick))
        f.post_nat_src_addr[pick] = v4_rows(np.full(len(pick), self._nat_public, np.uint32))
        f.post_nat_src_port[pick] = rng.integers(1024, 65535, len(pick)).astype(np.uint16)
        f.src_addr[pick] = v4_rows(lan_hosts.astype(np.uint32))
        f.src_mask[pick] = self._nat_net.prefixlen


def _zero_rows(n: int, v6: npt.NDArray[np.bool_]) -> U8:
    """Unspecified addresses of each row's family (0.0.0.0 or ::)."""
    rows = np.zeros((n, 16), np.uint8)
    rows[~v6, 10:12] = 0xFF
    return rows


class TrafficGenerator:
    """Normal traffic of a profile mixed with a scenario's attacks, batch after batch.

    Attackers and victims are drawn once, at construction, so they stay the same for a
    whole run; `truths` holds them (the ground truth a detector should find), and each
    flow row's `label` points into it.
    """

    def __init__(self, profile: TrafficProfile | None = None, scenario: str = "normal",
                 seed: int = 1) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(sorted(SCENARIOS))}")
        self.rng = np.random.default_rng(seed)
        self.model = TrafficModel(profile or TrafficProfile(), self.rng)
        self.scenario = scenario
        self.attacks: list[Attack] = SCENARIOS[scenario](self.model, self.rng)
        for label, attack in enumerate(self.attacks, start=1):
            attack.label = label
        share = sum(a.share for a in self.attacks)
        if share >= 1.0:
            raise ValueError(f"scenario {scenario!r}: attack shares add up to {share:.2f} (must be < 1)")

    @property
    def truths(self) -> list[AttackTruth]:
        return [a.truth for a in self.attacks]

    def batch(self, n: int, t0_ms: int | None = None, span_ms: int = 1000) -> Flows:
        """About `n` flows ending in [t0_ms, t0_ms + span_ms), sorted by end time.

        Share-based attacks take their fraction of `n`; rate-based ones (slow scans) add
        their flows for the span on top, so the batch can hold slightly more than `n`.
        """
        if t0_ms is None:
            t0_ms = int(time.time() * 1000) - span_ms
        parts = [a.flows(self.model, self.rng, n, t0_ms, span_ms) for a in self.attacks]
        taken = sum(len(pt) for pt, a in zip(parts, self.attacks, strict=True) if a.share > 0)
        parts.append(self.model.normal(self.rng, max(n - taken, 0), t0_ms, span_ms))
        flows = Flows.concat([pt for pt in parts if len(pt)])
        return flows.take(np.argsort(flows.end_ms, kind="stable"))


def generate_flows(n: int, scenario: str = "normal", seed: int = 1, t0_ms: int | None = None,
                   span_ms: int = 1000, profile: TrafficProfile | None = None,
                   ) -> tuple[Flows, list[AttackTruth]]:
    """One batch of `n` flows and the scenario's ground truth (the common one-shot use)."""
    gen = TrafficGenerator(profile, scenario, seed)
    return gen.batch(n, t0_ms, span_ms), gen.truths


def my_prefix_networks(profile: TrafficProfile) -> Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The profile's own prefixes as ipaddress networks (for tests and detectors)."""
    return [ipaddress.ip_network(p, strict=False) for p in profile.my_prefixes]
