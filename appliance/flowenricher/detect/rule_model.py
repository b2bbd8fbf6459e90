"""One detection rule of detection.yml: its keys, defaults and bounds, written once.

schemas/detection.rules.schema.json is generated from this model (tools/gen_schemas.py);
the rules file is checked against that schema and then by rule_checks.py (what one key
cannot say alone), and rules.py types a checked rule.  Values keep the file's syntax
here (``time_window: 60s``, ``action: "alert,blackhole"``): the original format is the
contract, and the checked rule is what the API shows back.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, WithJsonSchema

from ..common.settings_base import NETWORK_SCHEMA, DurationText, SchemaGenerator, Section, formatted

RULES_SCHEMA_ID = "urn:flowenricher:schema:detection-rules"
ACTIONS = ("alert", "blackhole", "clickhouse", "slack", "webhook")
DIRECTIONS = ("inbound", "outbound", "internal", "transit", "unknown", "any")
PROTOCOLS = ("any", "tcp", "udp", "icmp", "icmpv6")

Proto = Annotated[str | int, WithJsonSchema({
    "type": ["string", "integer"],
    "pattern": "^(" + "|".join(f"{p}|{p.upper()}|{p.capitalize()}" for p in PROTOCOLS) + ")$",
    "title": "any, tcp, udp, icmp, icmpv6 or a protocol number", "minimum": 0, "maximum": 255})]
Directions = Annotated[str | list[str], WithJsonSchema({
    "type": ["string", "array"], "pattern": f"^({'|'.join(DIRECTIONS)})$",
    "title": ", ".join(DIRECTIONS[:-1]) + " or any", "items": {"enum": list(DIRECTIONS)}, "minItems": 1,
    "uniqueItems": True})]
Actions = Annotated[str | list[str], WithJsonSchema({
    "type": ["string", "array"],
    "pattern": rf"^\s*({'|'.join(ACTIONS)})\s*(,\s*({'|'.join(ACTIONS)})\s*)*$",
    "title": "a comma-separated list of " + ", ".join(ACTIONS), "items": {"enum": list(ACTIONS)}, "minItems": 1,
    "uniqueItems": True})]
Ports = Annotated[list[int] | None, WithJsonSchema({
    "type": ["array", "null"], "items": {"type": "integer", "minimum": 0, "maximum": 65535}, "minItems": 1,
    "uniqueItems": True})]
Networks = Annotated[list[str], WithJsonSchema({"type": "array", "items": NETWORK_SCHEMA})]
Communities = Annotated[list[str], WithJsonSchema({"type": "array", "uniqueItems": True, "items": {
    "type": "string", "format": "bgp-community",
    "title": "a BGP community (ASN:VALUE, a:b:c, blackhole, no-export or no-advertise)"}})]
Score = Annotated[float | None, WithJsonSchema({"type": ["number", "null"], "minimum": 0, "maximum": 1})]


class RuleModel(Section):
    """One detection rule."""

    name: Annotated[str, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 128,
                                         "pattern": "^[^\\u0000-\\u001f]+$",
                                         "title": "a name without control characters"})] = Field(
        description="Unique name of the rule; it appears in detections.log, blackholes.txt, the state DB and the API.")
    description: str = Field("", description="Free text for the operator.")
    enabled: bool = Field(True, description="A disabled rule is kept in the file and the API but never evaluated.")
    key: Literal["src", "dst"] = Field("src", description=(
        "What the rule counts per: src, the source address (a scanner, a brute-forcer; the original's grouping), or "
        "dst, the destination address (the victim of a flood). The blackhole action announces this address."))
    proto: Proto = Field("any", description=(
        "IP protocol of the flows the rule looks at, by name (tcp, udp, icmp, icmpv6; the original compared names "
        "without case) or number; any: all protocols."))
    direction: Directions = Field(["inbound", "internal"], description=(
        "Which flows the rule looks at, by their flow_direction (classified from my_prefixes): inbound, outbound, "
        "internal, transit, unknown (what every flow is when my_prefixes is empty) or any; one value or a list. The "
        "default, flows towards my_prefixes (inbound and internal), is what the original rules looked at."))
    dst_ports: Ports = Field(None, description="Only flows to one of these destination ports (SSH brute force: [22]); "
                                               "null: any port.")
    tcp_flags: Literal["syn_only"] | None = Field(None, description=(
        "syn_only: only TCP flows whose cumulated flags have SYN and no ACK, that is connection attempts that never "
        "completed from this side (scan probes, SYN floods); null: any flags."))
    include_prefixes: Networks = Field([], description=(
        "Only keys (the rule's key address: the source for key: src, the destination for key: dst) inside one of "
        "these networks; empty: every address."))
    exclude_prefixes: Networks = Field([], description=(
        "Never keys inside these networks (your own scanner, a monitoring service, a busy resolver); checked after "
        "include_prefixes."))
    same_dst_ip: bool = Field(False, description=(
        "Count per source and destination address: one source hitting one host (vertical scan, brute force). Only "
        "with key: src."))
    same_dst_port: bool = Field(False, description=(
        "Count per key and destination port: one source probing one service across hosts (horizontal scan), or one "
        "victim port (flood)."))
    min_flows: int = Field(0, ge=0, description="Least flows of a key in the window.")
    min_packets: int = Field(0, ge=0, description="Least packets of a key in the window.")
    min_bytes: int = Field(0, ge=0, description="Least bytes of a key in the window.")
    min_pps: float = Field(0, ge=0, description=(
        "Least packets per second of a key: its packets in the window over the time its flows span (at least 1 s, at "
        "most the window); a flow longer than the window counts the window's share of its packets."))
    min_bps: float = Field(0, ge=0, description="Least bits per second of a key, measured as min_pps is.")
    min_syn_ratio: float = Field(0, ge=0, le=1, description=(
        "Least share (0 to 1) of a key's flows in the window that are TCP connection attempts (SYN without ACK); 0: "
        "not checked."))
    unique_dst_ips: int = Field(0, ge=0, description=(
        "Least distinct destination addresses of a key in the window (exact up to this threshold)."))
    unique_dst_ports: int = Field(0, ge=0, description=(
        "Least distinct destination ports of a key in the window (exact up to this threshold)."))
    unique_src_ips: int = Field(0, ge=0, description=(
        "Least distinct source addresses of a key in the window (exact up to this threshold): the sources of a flood, "
        "with key: dst."))
    min_ml_score: Score = Field(None, description=(
        "Least anomaly score (0 to 1) of the key's source address from the Isolation Forest (config `anomaly:`), "
        "checked alongside the rule's other thresholds: the score of the source's latest closed anomaly window "
        "(anomaly.window). Scores are per source: use it with key: src (with key: dst no key ever has a score). "
        "Ignored, with a warning, while anomaly scoring is not enabled; a key without a score (no model yet, or the "
        "source absent from the latest window) does not match. The model's suggested threshold "
        "(anomaly.contamination) is logged after each training and shown by GET /api/v1/anomaly/model (0.667-0.672 "
        "in docs/detection-quality.md, where a rule with it caught the slow scans no other rule saw). null: not "
        "checked."))
    min_anomaly_score: Score = Field(None, description=(
        "Former name of min_ml_score, still accepted; setting both is an error."))
    time_window: DurationText = Field(description=(
        "Sliding window the rule looks back over: Go duration syntax as in the original (60s, 5m, 1m30s) or whole "
        "seconds; at most detection.flow_cache_max_window. The window slides in steps of a twentieth of its length "
        "(at least 1 s)."))
    cooldown: DurationText | None = Field(None, description=(
        "After a detection, the same rule stays quiet for the same key this long (a duration); null: the rule's "
        "time_window."))
    action: Actions = Field(description=(
        "What a detection does, comma-separated as in the original (\"alert,blackhole\") or as a list: alert (a JSON "
        "line in detections.log), blackhole (announce the key's address over BGP, see blackhole_count), clickhouse "
        "(accepted as in the original and changes nothing: every detection is written to the detections table, "
        "whatever its actions), slack (a message to the Slack webhook), webhook (the detection as JSON to "
        "each configured webhook)."))
    blackhole_count: int = Field(0, ge=0, description=(
        "With the blackhole action: a detection blackholes the key's address only when the key holds at least this "
        "many flows in the window (a detection below it alerts only), so a rule can alert early and blackhole when "
        "the evidence is heavier. Required (at least 1) with the blackhole action, as the original never blackholed "
        "at 0; 0 otherwise."))
    blackhole_next_hop: Annotated[str, formatted(
        "bgp-next-hop", "an IPv4 or IPv6 next hop (not unspecified, loopback or multicast)")] | None = Field(
        None, description=(
            "BGP next hop of the blackhole routes of this rule's addresses of the same family (the router routes it "
            "to a blackhole); addresses of the other family, and null, get the configured next hop of their family "
            "(blackhole.next_hop_v4, blackhole.next_hop_v6), so a rule in the original format (one IPv4 next hop) "
            "blackholes IPv6 attackers with the IPv6 next hop."))
    blackhole_communities: Communities = Field([], description=(
        "Communities on the blackhole route: standard ASN:value (RFC 1997, both parts 0-65535, e.g. 65001:666), large "
        "a:b:c (RFC 8092, each part 0-4294967295) or the names blackhole, no-export, no-advertise; an ASN:value whose "
        "AS number needs 32 bits (216285:666) is announced as the large community 216285:666:0. Empty: the blackhole "
        "manager's default (blackhole.communities)."))
    blackhole_time: DurationText = Field(0, description=(
        "Seconds (or a duration) after which a blackhole made by this rule is withdrawn; required (more than 0) with "
        "the blackhole action, since an automatic blackhole that never expires outlives the attack."))


RULES_DESCRIPTION = (
    "Detection rules, in the original flowenricher format: a list of rules (or a mapping with a `rules` list, as the "
    "original's loader read it). A rule counts the flows of its sliding time window per key: the source address "
    "(key: src, the original's grouping) or the destination address (key: dst), refined by destination address "
    "(same_dst_ip) and destination port (same_dst_port); a key matches when it reaches every threshold the rule sets "
    "(thresholds left at 0 or null are not checked). By default a rule looks at flows towards my_prefixes "
    "(direction). Unknown keys and rules that contradict themselves are rejected, naming the rule and the path. "
    "Values with a 'format' (ip-address, ip-network, bgp-community, bgp-next-hop) are checked by flowenricher's own "
    "validator; other validators treat them as annotations.")


def rules_schema() -> dict[str, Any]:
    """The JSON Schema of detection.yml: a list of rules, or ``{rules: [...]}``."""
    rule = RuleModel.model_json_schema(schema_generator=SchemaGenerator)
    definitions = rule.pop("$defs", {})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": RULES_SCHEMA_ID,
        "title": "flowenricher detection.yml",
        "description": RULES_DESCRIPTION,
        "type": ["array", "object"],
        "items": {"$ref": "#/$defs/rule"},
        "additionalProperties": False,
        "properties": {"rules": {"description": "The rules, when the file is a mapping.", "type": "array",
                                 "items": {"$ref": "#/$defs/rule"}, "default": []}},
        "default": [],
        "$defs": {"rule": rule, **definitions},
    }
