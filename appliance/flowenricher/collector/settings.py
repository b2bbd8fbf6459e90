"""Settings of flow reception (``collectors.*`` and the original's ``kafka.*``): the one
place their keys, defaults, bounds and cross-field checks are written.

The original's ``collectors.netflow.config`` block stays as it was (bindaddr, bindport,
debug); ``listeners`` is derived from it when absent, and each listener without an
address takes ``bindaddr``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, WithJsonSchema, field_validator, model_serializer, model_validator

from ..common.settings_base import (
    Duration,
    HostPort,
    IpAddress,
    IPNetwork,
    Port,
    Section,
    field_default,
)
from ..decode.netflow import HOLD_MAX_AGE_S, HOLD_MAX_SETS, MAX_CLOCK_SKEW_S
from ..decode.stats import MAX_EXPORTERS
from ..decode.templates import MAX_TEMPLATES
from .receiver import exporter_key

ListenerProtocol = Literal["netflow", "sflow"]
ByteOrder = Literal["big", "little"]
Problems = list[tuple[tuple[str | int, ...], str]]

# The IANA ports of IPFIX (RFC 7011) and sFlow: listened on, besides bindport, when
# `collectors.listeners` is absent.
IPFIX_PORT = 4739
SFLOW_PORT = 6343


class ListenerSettings(Section):
    """One UDP listener. `netflow` takes v5, v9 and IPFIX (told apart per datagram)."""

    address: IpAddress = Field("0.0.0.0", description="Bind address; absent: collectors.netflow.config.bindaddr "
                                                      "(0.0.0.0).")
    port: Port = Field(description="UDP port.")
    protocol: ListenerProtocol = Field("netflow", description="netflow: NetFlow v5, v9 and IPFIX, told apart by each "
                                                              "datagram's version field; sflow: sFlow v5.")


class ExporterSettings(Section):
    """Overrides for one exporter (router), keyed by its normalised address."""

    name: str | None = Field(None, min_length=1, description="Display name of the exporter in logs, metrics and the "
                                                             "API.")
    sampling_rate: int | None = Field(None, ge=1, description="Sampling rate (1 in N) applied to this exporter's flows "
                                      "instead of the one it reports; for exporters that report none or a wrong one.")
    sampling_byte_order: ByteOrder = Field("big", description="Byte order of the sampling interval the exporter "
                                           "reports. RouterOS v6 sends it little-endian, which reads as a huge rate "
                                           "when taken as big-endian.")

    @property
    def little_endian_sampling(self) -> bool:
        """RouterOS v6 sends the sampling interval little-endian."""
        return self.sampling_byte_order == "little"


class TemplateHoldSettings(Section):
    """NetFlow v9/IPFIX data sets that arrive before their template are held and decoded
    once the template comes (routers send templates only every few minutes, e.g. after a
    collector restart)."""

    max_sets: int = Field(HOLD_MAX_SETS, ge=0, description="Most data sets held at once over all exporters; the oldest is "
                          "dropped beyond it (counted as hold_overflow). 0 disables holding.")
    max_age_s: float = Field(HOLD_MAX_AGE_S, ge=0, description="Seconds a held data set waits for its template before it is "
                             "dropped (counted as template_missing).")


class NetflowConfig(Section):
    """Settings of the original NetFlow collector."""

    bindaddr: IpAddress = Field("0.0.0.0", description="Address the listeners bind to unless they name their own; "
                                "0.0.0.0 is every IPv4 address, :: every IPv6 (and IPv4 on dual-stack hosts).")
    bindport: Annotated[int, WithJsonSchema({"type": ["integer", "string"], "minimum": 0, "maximum": 65535,
                                             "pattern": "^[0-9]{1,5}$",
                                             "title": "a UDP port number"})] = Field(
        2055, description="UDP port of the NetFlow v5/v9/IPFIX listener when `listeners` is absent. A quoted number is "
                          "accepted, as in the original (whose collector settings were strings).")
    debug: bool = Field(False, description="Troubleshooting: every dropped datagram, set or record is logged with its "
                        "detail (not rate-limited), and each decoded batch is summarised (datagrams per exporter, flows, "
                        "drops by reason) at debug level; the workers log at debug level for this whatever log_level "
                        "says. Verbose: for troubleshooting only.")

    @field_validator("bindport", mode="before")
    @classmethod
    def _quoted_port(cls, value: object) -> object:
        return int(value) if isinstance(value, str) and value.isdigit() else value


class NetflowBlock(Section):
    """The original collector block. Its bind address and port make the first listener when
    `listeners` is absent, and the bind address is the default address of every listener."""

    config: NetflowConfig = Field(default_factory=NetflowConfig, description="Settings of the original NetFlow "
                                                                             "collector.")


def _default_listeners(config: NetflowConfig) -> tuple[ListenerSettings, ...]:
    """The listeners of a config without `listeners`: bindport, IPFIX's and sFlow's ports."""
    listeners: list[ListenerSettings] = []
    for port, protocol in ((config.bindport, "netflow"), (IPFIX_PORT, "netflow"), (SFLOW_PORT, "sflow")):
        if all(item.port != port for item in listeners):
            listeners.append(ListenerSettings(address=config.bindaddr, port=port, protocol=protocol))
    return tuple(listeners)


AllowedExporter = Annotated[IPNetwork, WithJsonSchema({"type": "string", "format": "ip-prefix",
                                                       "title": "an IP address or network such as 192.0.2.0/24"})]


class CollectorSettings(Section):
    """Flow reception: UDP listeners, receive workers, template handling and per-exporter
    overrides."""

    netflow: NetflowBlock = Field(default_factory=NetflowBlock)
    listeners: tuple[ListenerSettings, ...] = Field((), description=(
        "UDP sockets that receive flows. Absent: NetFlow on bindaddr:bindport (2055), NetFlow/IPFIX on bindaddr:4739 "
        "and sFlow on bindaddr:6343 (a port already taken by bindport is not repeated). A netflow listener decodes v5, "
        "v9 and IPFIX by the version field of each datagram, so one port serves all three."),
        json_schema_extra={"minItems": 1,
                           "default": [item.model_dump(mode="json") for item in _default_listeners(NetflowConfig())]})
    workers: int = Field(0, ge=0, le=256, description="Receive/decode worker processes; 0 starts one per CPU. More "
                         "workers than CPUs only adds context switches.")
    receive_buffer_bytes: int = Field(33554432, ge=0, description="SO_RCVBUF requested for each listener socket (bytes). "
                                      "Bursts from routers exceed the kernel default and are lost silently; the kernel "
                                      "caps the value at net.core.rmem_max, which the deployment raises. 0 keeps the "
                                      "kernel default.")
    template_hold: TemplateHoldSettings = Field(default_factory=TemplateHoldSettings)
    exporters: Mapping[str, ExporterSettings] = Field(
        default={}, description="Per-exporter overrides, keyed by the exporter's source IP address as the "
                                          "collector sees it.",
        json_schema_extra={"propertyNames": {"x-flowenricher-def": "ipAddress"}})
    allowed_exporters: tuple[AllowedExporter, ...] = Field((), description=(
        "Exporters whose datagrams are decoded: IPv4/IPv6 addresses or networks (192.0.2.10, 192.0.2.0/28, "
        "2001:db8::/64). Datagrams from any other source are dropped before decoding and counted under the exporter "
        "label \"unlisted\", reason exporter_not_allowed (the source is named in a rate-limited log line). Empty: "
        "every source is accepted, and the service warns at start when it listens on a wildcard address."))
    max_templates: int = Field(MAX_TEMPLATES, ge=1, description=(
        "NetFlow v9/IPFIX templates kept per worker over all exporters; beyond it the least recently used is evicted "
        "(counted as templates_evicted). Bounds the memory a flood of template definitions can take."))
    max_exporters: int = Field(MAX_EXPORTERS, ge=1, description="Exporters counted under their own address in the decoder "
                               "metrics (and the API's exporter counters); the counts of any further exporter are summed "
                               "under the label \"other\", so sources spoofed by the thousand cannot grow /metrics "
                               "without bound.")
    max_clock_skew_s: Duration = Field(float(MAX_CLOCK_SKEW_S), alias="max_clock_skew", description=(
        "How far a flow's start or end time may lie from the time it was received before it is considered implausible "
        "(a router clock in 1970, a broken uptime): such flows get the reception time and are counted as "
        "time_implausible. Go duration syntax (2h, 30m) or whole seconds; 0 disables the check."))
    template_state: bool = Field(True, description=(
        "Keep NetFlow v9/IPFIX templates, sampling rates and interface names across restarts, in "
        "<storage.path>/decoder-state/worker-N.json (saved every few seconds when they changed, and at stop; every "
        "worker loads all the files at start). Data sent right after a restart is then decoded at once instead of "
        "waiting for the routers' next template refresh."))

    @field_validator("allowed_exporters", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return tuple(ipaddress.ip_network(item) if isinstance(item, str) else item for item in value)
        return value

    @field_validator("exporters", mode="before")
    @classmethod
    def _keyed_by_address(cls, value: object) -> object:
        if not isinstance(value, Mapping):
            return value
        out: dict[str, Any] = {}
        for key, item in value.items():
            out[exporter_key(key)] = item
        return out

    @model_validator(mode="before")
    @classmethod
    def _listener_addresses(cls, data: object) -> object:
        """A listener without an address binds to the original block's bindaddr."""
        if not isinstance(data, Mapping) or not isinstance(data.get("listeners"), list | tuple):
            return data
        netflow = data.get("netflow")
        config = netflow.get("config") if isinstance(netflow, Mapping) else None
        bindaddr = config.get("bindaddr") if isinstance(config, Mapping) else None
        if bindaddr is None:
            return data
        return {**data, "listeners": [{"address": bindaddr, **item} if isinstance(item, Mapping) else item
                                      for item in data["listeners"]]}

    @model_validator(mode="after")
    def _derived(self) -> CollectorSettings:
        if "listeners" not in self.model_fields_set:
            self.derive(listeners=_default_listeners(self.netflow.config))
        return self

    @property
    def debug(self) -> bool:
        """The original's ``collectors.netflow.config.debug``."""
        return self.netflow.config.debug

    def worker_count(self) -> int:
        """Workers to start: the configured number, or one per usable CPU for 0."""
        if self.workers:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)


class KafkaSettings(Section):
    """Flows through Kafka (the original's ``kafka`` block, extended).

    With ``enabled: true``, `flowenricher run` takes one of two roles.  ``store`` (the
    default): it consumes ``topic`` as a member of ``group_id`` instead of listening for
    UDP export, and stores every record exactly once (offsets are committed only after the
    store acknowledged the rows; see kafka/input.py); several storers with the same group
    share the topic's partitions.  The records are goflow2's protobuf FlowMessages
    (``format: goflow2``, as goflow2 publishes them with ``-transport=kafka -format=bin``)
    or the blocks a flowenricher collector produces (``format: flowenricher``).
    ``collect``: it receives UDP export as without Kafka, decodes it, and produces the
    decoded flows to ``topic`` (kafka/output.py), partitioned by destination address; no
    store, no enrichment.  While no broker takes them, the blocks wait in a spool on disk
    (``storage.path``/kafka-spool, at most ``spool_max_bytes``)."""

    enabled: bool = Field(False, description="Send flows through Kafka (role collect) or take them from it (role "
                                             "store) instead of one process receiving and storing.")
    role: Literal["store", "collect"] = Field(
        "store", description="store: consume the topic, enrich and store (no UDP). collect: receive and decode UDP "
                             "export and produce it to the topic (no store).")
    brokers: tuple[HostPort, ...] = Field((), description="Kafka brokers as host:port (bootstrap servers).")
    topic: str = Field("netflow", min_length=1, description="Topic to consume (store) or produce to (collect).")
    group_id: str = Field("flowenricher-group", min_length=1, description="Consumer group (role store).")
    format: Literal["goflow2", "flowenricher"] = Field(
        "goflow2", description="What the records hold (role store): goflow2's protobuf FlowMessage behind its varint "
                               "length (goflow2 -format=bin), or flowenricher, the flow columns a collector of role "
                               "collect produces. A collector always produces flowenricher records.")
    block_records: int | None = Field(
        None, ge=1, le=1_000_000,
        description="Records taken per poll (role store); each partition's share is stored as one block, under one "
                    "deduplication token. Default: 50000 for goflow2 (one flow per record), 100 for flowenricher (up "
                    "to a few thousand flows per record).")
    start_from: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new consumer group starts: the oldest record kept (no flow missed) or "
                                "the next one written.")
    detection_topic: str | None = Field(
        None, min_length=1,
        description="Role store: a topic through which the storers exchange the columns detection reads, so that "
                    "every flow of a rule's key reaches one detection engine whichever storer read it (rules keyed "
                    "by source, and any rule over goflow2's round-robin topic). Each storer produces its enriched "
                    "flows to it partitioned by source and by destination address and consumes it in the group "
                    "group_id + '-detection'. It must exist (the storer refuses to start otherwise). Unset: each "
                    "storer detects on the flows it reads.")
    dedup_window_records: int = Field(
        10_000, ge=0, le=10_000_000,
        description="Role store, format flowenricher: a record whose origin (collector and batch) is among the "
                    "previous this many records of its partition is dropped as a copy a collector sent twice (a "
                    "spooled block sent again after a crash). Read back from the topic on each partition's "
                    "assignment. 0: no deduplication.")
    buffer_max_bytes: int = Field(
        64 * 1024 * 1024, ge=64 * 1024, le=2 * 1024 ** 3,
        description="Role collect: bytes of records the producer holds in memory while the brokers do not take "
                    "them; beyond this the collector writes blocks to its spool.")
    spool_max_bytes: int = Field(
        1024 ** 3, ge=0,
        description="Role collect: size of the spool on disk (storage.path/kafka-spool, compressed) kept while the "
                    "brokers are away; beyond it the oldest blocks are dropped, counted and logged. 0: no spool.")

    @model_serializer(mode="wrap")
    def _for_role(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A collector's settings leave out what only a storer reads, so that its effective
        config (`GET config`, the role's rendered file) passes the check that refuses
        consumer settings on a collector."""
        data: dict[str, Any] = handler(self)
        if self.role == "collect":
            for key in CONSUMER_KEYS:
                data.pop(key, None)
        return data

    def records_per_poll(self) -> int:
        """``block_records``, or its default for the format."""
        if self.block_records is not None:
            return self.block_records
        return 100 if self.format == "flowenricher" else 50_000


def collector_problems(collectors: Mapping[str, Any]) -> Problems:
    """What the schema cannot say of ``collectors``: a listener, an exporter or an allowed
    network given twice.  Defensive about types, which the schema reports on its own."""
    problems: Problems = []
    netflow = collectors.get("netflow")
    config = netflow.get("config") if isinstance(netflow, Mapping) else None
    bindaddr = config.get("bindaddr", field_default(NetflowConfig, "bindaddr")) if isinstance(config, Mapping) \
        else field_default(NetflowConfig, "bindaddr")
    listeners = collectors.get("listeners")
    if isinstance(listeners, list):
        seen: dict[tuple[str, int], int] = {}
        for index, item in enumerate(listeners):
            if not isinstance(item, dict) or not isinstance(item.get("port"), int) or item["port"] == 0:
                continue
            try:
                normalised = str(ipaddress.ip_address(str(item.get("address", bindaddr))))
            except ValueError:
                continue
            where = seen.setdefault((normalised, item["port"]), index)
            if where != index:
                problems.append((("listeners", index), f"same address and port as listeners[{where}]"))

    exporters = collectors.get("exporters")
    if isinstance(exporters, dict):
        known: dict[str, str] = {}
        for key in exporters:
            try:
                normalised = exporter_key(key)
            except ValueError:
                continue
            first = known.setdefault(normalised, key)
            if first != key:
                problems.append((("exporters", key), f"same exporter as {first!r}"))

    allowed = collectors.get("allowed_exporters")
    if isinstance(allowed, list):
        first_index: dict[str, int] = {}
        for index, item in enumerate(allowed):
            try:
                network = str(ipaddress.ip_network(item))
            except (TypeError, ValueError):
                continue  # the schema reports it
            earlier = first_index.setdefault(network, index)
            if earlier != index:
                problems.append((("allowed_exporters", index), f"same network as allowed_exporters[{earlier}]"))
    return problems


CONSUMER_KEYS = ("group_id", "format", "block_records", "start_from", "dedup_window_records", "detection_topic")
"""The keys of ``kafka`` only a storer (role store) reads: a collector refuses them (a
collector's ``format`` is always flowenricher, so it may say so) and its effective config
leaves them out."""


def kafka_problems(kafka: Mapping[str, Any]) -> Problems:
    """What the schema cannot say of ``kafka``: enabled needs brokers; a collector
    produces flowenricher records only, and takes no consumer settings."""
    problems: Problems = []
    if kafka.get("enabled") is True and not kafka.get("brokers"):
        problems.append((("brokers",), "kafka.enabled needs at least one broker (host:port)"))
    if kafka.get("role") == "collect":
        if kafka.get("format") == "goflow2":
            problems.append((("format",), "role collect produces flowenricher records; goflow2 is a format a "
                                          "storer (role store) reads"))
        for key in CONSUMER_KEYS:
            if key in kafka and key != "format":
                problems.append(((key,), f"{key} is a consumer setting (role store); role collect produces"))
    return problems
