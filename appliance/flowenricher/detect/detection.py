"""A detection: which rule matched which key, with the window's evidence.

The one record every action writes (detections.log line, ClickHouse row, webhook body,
blackhole evidence), so they cannot disagree about what was seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def iso_time(unix_s: float) -> str:
    """UTC ISO 8601 with milliseconds, as operators paste it into queries."""
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Detection:
    """One rule matching one key over its window.

    `address` is the key's address (the source for key src, the destination for key
    dst); `dst_addr`/`dst_port` are set when the rule also groups by them.  Distinct
    counts are those the rule checks (None otherwise): exact up to the rule's threshold,
    a lower bound above it.  `pps`/`bps` are over the time the key's flows span in the
    window.  `blackhole` is True when the rule's blackhole action applies to this
    detection (flows reached blackhole_count).
    """

    rule: str
    key: str
    address: str
    detected_at: float
    window_s: float
    flows: int
    packets: int
    bytes: int
    pps: float
    bps: float
    syn_ratio: float
    first_seen: float
    last_seen: float
    actions: tuple[str, ...]
    blackhole: bool
    dst_addr: str | None = None
    dst_port: int | None = None
    unique_dst_ips: int | None = None
    unique_dst_ports: int | None = None
    unique_src_ips: int | None = None
    anomaly_score: float | None = None
    samples: tuple[dict[str, Any], ...] = field(default=(), compare=False)

    @property
    def prefix(self) -> str:
        """The host route of the key's address (what a blackhole announces)."""
        return f"{self.address}/{128 if ':' in self.address else 32}"

    def to_dict(self, samples: int | None = None) -> dict[str, Any]:
        """A JSON-ready dict: the detections.log line and the webhook body.

        `samples` limits how many sample flows are included (None: all kept).
        """
        out: dict[str, Any] = {
            "time": iso_time(self.detected_at),
            "rule": self.rule,
            "key": self.key,
            "address": self.address,
        }
        if self.dst_addr is not None:
            out["dst_addr"] = self.dst_addr
        if self.dst_port is not None:
            out["dst_port"] = self.dst_port
        out.update({
            "window_s": self.window_s,
            "flows": self.flows,
            "packets": self.packets,
            "bytes": self.bytes,
            "pps": round(self.pps, 3),
            "bps": round(self.bps, 3),
            "syn_ratio": round(self.syn_ratio, 4),
        })
        for name in ("unique_dst_ips", "unique_dst_ports", "unique_src_ips"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update({
            "first_seen": iso_time(self.first_seen),
            "last_seen": iso_time(self.last_seen),
            "anomaly_score": self.anomaly_score,
            "actions": list(self.actions),
            "blackhole": self.blackhole,
            "samples": list(self.samples if samples is None else self.samples[:samples]),
        })
        return out

    def summary(self) -> str:
        """One line for humans (Slack, logs)."""
        where = self.address
        if self.dst_addr is not None:
            where += f" -> {self.dst_addr}"
        if self.dst_port is not None:
            where += f" port {self.dst_port}"
        counts = [f"{self.flows} flows", f"{self.packets} packets"]
        for name, label in (("unique_dst_ips", "destinations"), ("unique_dst_ports", "ports"),
                            ("unique_src_ips", "sources")):
            value = getattr(self, name)
            if value is not None:
                counts.append(f"{value} {label}")
        counts.append(f"{self.pps:.0f} pps")
        text = f"rule {self.rule}: {self.key} {where}: {', '.join(counts)} in {self.window_s:g}s"
        return text + ("; blackhole requested" if self.blackhole else "")
