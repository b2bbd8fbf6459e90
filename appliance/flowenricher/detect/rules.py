"""Detection rules as typed values, built from rules the schema and config.py validated.

config.py owns the file format (schema, defaults, contradictions, error lines); this
module turns one validated rule into a :class:`Rule` the engine reads without parsing:
durations in seconds, protocol and directions as the numbers of the flow columns,
prefixes as networks.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from ..columns import DIRECTION_NAMES
from ..common.settings_base import parse_duration
from .rules_file import load_rules, parse_actions, parse_rules

__all__ = ["PROTOCOLS", "Rule", "load_rule_set", "parse_rule_set"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
KeyKind = Literal["src", "dst"]

PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
"""IP protocol numbers of the names a rule's `proto` accepts (``any`` is None)."""

_DIRECTION_CODES = {name: code for code, name in enumerate(DIRECTION_NAMES)}


@dataclass(frozen=True)
class Rule:
    """One detection rule.  Thresholds at 0 (or None) are not checked.

    `directions` holds flow_direction codes (None: any direction); `proto` None is any
    protocol; `dst_ports` empty is any port.
    """

    name: str
    key: KeyKind
    window_s: float
    actions: tuple[str, ...]
    description: str = ""
    enabled: bool = True
    proto: int | None = None
    directions: frozenset[int] | None = frozenset({1, 3})
    dst_ports: tuple[int, ...] = ()
    syn_only: bool = False
    include_prefixes: tuple[IPNetwork, ...] = ()
    exclude_prefixes: tuple[IPNetwork, ...] = ()
    same_dst_ip: bool = False
    same_dst_port: bool = False
    min_flows: int = 0
    min_packets: int = 0
    min_bytes: int = 0
    min_pps: float = 0.0
    min_bps: float = 0.0
    min_syn_ratio: float = 0.0
    unique_dst_ips: int = 0
    unique_dst_ports: int = 0
    unique_src_ips: int = 0
    min_ml_score: float | None = None
    cooldown_s: float | None = None
    blackhole_count: int = 0
    blackhole_next_hop: str | None = None
    blackhole_communities: tuple[str, ...] = ()
    blackhole_time_s: float = 0.0

    @classmethod
    def from_validated(cls, raw: Mapping[str, Any]) -> Rule:
        """The rule of one entry returned by config.load_rules/parse_rules (valid, with
        every default filled in); a KeyError or ValueError here means it was not."""
        proto = raw["proto"]
        if isinstance(proto, str):
            proto_number = None if proto.lower() == "any" else PROTOCOLS[proto.lower()]
        else:
            proto_number = int(proto)
        direction = raw["direction"]
        names = [direction] if isinstance(direction, str) else list(direction)
        directions = None if "any" in names else frozenset(_DIRECTION_CODES[name] for name in names)
        cooldown = raw["cooldown"]
        return cls(
            name=str(raw["name"]),
            key="dst" if raw["key"] == "dst" else "src",
            window_s=parse_duration(raw["time_window"]),
            actions=parse_actions(raw["action"]),
            description=str(raw["description"]),
            enabled=bool(raw["enabled"]),
            proto=proto_number,
            directions=directions,
            dst_ports=tuple(sorted(int(port) for port in raw["dst_ports"] or ())),
            syn_only=raw["tcp_flags"] == "syn_only",
            include_prefixes=tuple(ipaddress.ip_network(text) for text in raw["include_prefixes"]),
            exclude_prefixes=tuple(ipaddress.ip_network(text) for text in raw["exclude_prefixes"]),
            same_dst_ip=bool(raw["same_dst_ip"]),
            same_dst_port=bool(raw["same_dst_port"]),
            min_flows=int(raw["min_flows"]),
            min_packets=int(raw["min_packets"]),
            min_bytes=int(raw["min_bytes"]),
            min_pps=float(raw["min_pps"]),
            min_bps=float(raw["min_bps"]),
            min_syn_ratio=float(raw["min_syn_ratio"]),
            unique_dst_ips=int(raw["unique_dst_ips"]),
            unique_dst_ports=int(raw["unique_dst_ports"]),
            unique_src_ips=int(raw["unique_src_ips"]),
            min_ml_score=_ml_score(raw),
            cooldown_s=None if cooldown is None else parse_duration(cooldown),
            blackhole_count=int(raw["blackhole_count"]),
            blackhole_next_hop=raw["blackhole_next_hop"],
            blackhole_communities=tuple(raw["blackhole_communities"]),
            blackhole_time_s=parse_duration(raw["blackhole_time"]),
        )

    @property
    def min_anomaly_score(self) -> float | None:
        """The former name of `min_ml_score` (rules files may still use it)."""
        return self.min_ml_score

    @property
    def cooldown(self) -> float:
        """Seconds the rule stays quiet for a key after detecting it (its window by default)."""
        return self.window_s if self.cooldown_s is None else self.cooldown_s

    @property
    def least_flows(self) -> int:
        """Flows a key needs before it can match: each distinct value takes at least one flow."""
        return max(1, self.min_flows, self.unique_dst_ips, self.unique_dst_ports, self.unique_src_ips)

    @property
    def distinct(self) -> dict[str, int]:
        """The distinct counts the rule checks, with their thresholds."""
        wanted = {"dst_ip": self.unique_dst_ips, "dst_port": self.unique_dst_ports, "src_ip": self.unique_src_ips}
        return {kind: threshold for kind, threshold in wanted.items() if threshold > 0}

    def state_signature(self) -> tuple[object, ...]:
        """What the rule's window state depends on: a reload that keeps it keeps the state.

        Thresholds other than the distinct counts (each bounds what is stored), actions,
        blackhole settings and the cooldown only matter when a key is evaluated.
        """
        stateless = {"description", "enabled", "actions", "min_flows", "min_packets", "min_bytes", "min_pps",
                     "min_bps", "min_syn_ratio", "min_ml_score", "cooldown_s", "blackhole_count",
                     "blackhole_next_hop", "blackhole_communities", "blackhole_time_s"}
        return tuple(getattr(self, f.name) for f in fields(self) if f.name not in stateless)


def _ml_score(raw: Mapping[str, Any]) -> float | None:
    """min_ml_score, or its former name min_anomaly_score (config.py refuses both at once)."""
    value = raw.get("min_ml_score")
    if value is None:
        value = raw.get("min_anomaly_score")
    return None if value is None else float(value)


def parse_rule_set(document: object, source: str = "rules", *, max_window_s: float | None = None) -> list[Rule]:
    """Rules of a parsed document (the API); raises ConfigError as config.parse_rules does."""
    return [Rule.from_validated(raw) for raw in parse_rules(document, source, max_window_s=max_window_s)]


def load_rule_set(path: str | os.PathLike[str], *, max_window_s: float | None = None) -> list[Rule]:
    """Rules of a detection.yml file; raises ConfigError listing every problem."""
    return [Rule.from_validated(raw) for raw in load_rules(path, max_window_s=max_window_s)]


def enabled(rules: Sequence[Rule]) -> list[Rule]:
    """The rules the engine evaluates."""
    return [rule for rule in rules if rule.enabled]
