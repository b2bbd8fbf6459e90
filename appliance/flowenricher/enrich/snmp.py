"""Interface names from SNMP: each exporter's IF-MIB, polled in the background, names the
``input_interface``/``output_interface`` of its flows where the exporter's own options
data did not.

Polling runs in one thread with its own asyncio loop (pysnmp's asyncio API), one task
and one SNMP engine per target, so a slow or dead agent delays nobody: not the other
targets, and never ingest, which only reads the last complete table of each exporter.
Tables are replaced whole (one reference swap), so a reader sees the previous walk or
the new one, never half of each.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import logging
import math
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge
from pysnmp.carrier.error import CarrierError  # type: ignore[import-untyped]  # pysnmp has no py.typed
from pysnmp.hlapi.v3arch.asyncio import (  # type: ignore[import-untyped]
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    Udp6TransportTarget,
    UdpTransportTarget,
    UsmUserData,
    bulk_walk_cmd,
    usm3DESEDEPrivProtocol,
    usmAesBlumenthalCfb192Protocol,
    usmAesBlumenthalCfb256Protocol,
    usmAesCfb128Protocol,
    usmDESPrivProtocol,
    usmHMAC128SHA224AuthProtocol,
    usmHMAC192SHA256AuthProtocol,
    usmHMAC256SHA384AuthProtocol,
    usmHMAC384SHA512AuthProtocol,
    usmHMACMD5AuthProtocol,
    usmHMACSHAAuthProtocol,
    usmNoAuthProtocol,
    usmNoPrivProtocol,
)
from pysnmp.proto.errind import RequestTimedOut  # type: ignore[import-untyped]

from ..batch import DictColumn, FlowBatch, str_to_addr
from ..common.ratelimit import Throttle
from ..errors import ConfigError, FlowEnricherError
from .base import AddressSet
from .settings import SnmpSettings
from .snmp_credentials import credential_problems

log = logging.getLogger(__name__)

# IF-MIB (RFC 2863) columns, indexed by ifIndex.
IF_DESCR = (1, 3, 6, 1, 2, 1, 2, 2, 1, 2)
IF_NAME = (1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 1)
IF_HIGH_SPEED = (1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 15)
IF_ALIAS = (1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 18)
_WALKED = {"name": IF_NAME, "descr": IF_DESCR, "alias": IF_ALIAS, "speed": IF_HIGH_SPEED}

# More rows than any router has: an agent that keeps answering past it is broken or
# hostile, and the walk is abandoned rather than filling memory.
MAX_INTERFACES = 65536
_MAX_IFINDEX = 2**31 - 1

# Names as in the config schema.  RouterOS offers MD5/SHA1 (SHA-2 in v7) with DES or
# AES-128 (RFC 3826).  AES-192/256 have no RFC; they follow the Blumenthal draft's key
# extension, which Net-SNMP uses (a Debian snmpd user made with AES256 answers only to
# pysnmp's Blumenthal variant, not to the Reeder/Cisco one).
AUTH_PROTOCOLS: dict[str, Any] = {
    "none": usmNoAuthProtocol, "md5": usmHMACMD5AuthProtocol, "sha": usmHMACSHAAuthProtocol,
    "sha224": usmHMAC128SHA224AuthProtocol, "sha256": usmHMAC192SHA256AuthProtocol,
    "sha384": usmHMAC256SHA384AuthProtocol, "sha512": usmHMAC384SHA512AuthProtocol,
}
PRIV_PROTOCOLS: dict[str, Any] = {
    "none": usmNoPrivProtocol, "des": usmDESPrivProtocol, "3des": usm3DESEDEPrivProtocol,
    "aes": usmAesCfb128Protocol, "aes192": usmAesBlumenthalCfb192Protocol,
    "aes256": usmAesBlumenthalCfb256Protocol,
}

_DIRECTIONS = (("input_interface", "input_interface_name"), ("output_interface", "output_interface_name"))
_LOG_EVERY_S = 300.0


@dataclass(frozen=True)
class InterfaceInfo:
    """One row of an exporter's IF-MIB."""

    name: str  # ifName: what the router's own CLI calls it (ether1, sfp-sfpplus1)
    descr: str = ""  # ifDescr: on some agents the only name there is
    alias: str = ""  # ifAlias: the operator's comment on the interface
    speed_mbps: int = 0  # ifHighSpeed

    @property
    def label(self) -> str:
        """The name flows get: ifName, else ifDescr (agents without IF-MIB's ifXTable)."""
        return self.name or self.descr


@dataclass(frozen=True)
class SnmpTarget:
    """Where to read the interface table of the flow exporter `exporter` (its address as
    it appears in ``exporter_address``), and how to authenticate."""

    exporter: str
    host: str
    port: int = 161
    version: str = "2c"  # "2c" or "3"
    community: str = field(default="public", repr=False)
    user: str = ""
    auth_protocol: str = "sha"
    auth_key: str = field(default="", repr=False)
    priv_protocol: str = "aes"
    priv_key: str = field(default="", repr=False)
    timeout_s: float = 2.0
    retries: int = 1

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError([f"snmp target for exporter {self.exporter!r}: {p}" for p in problems])

    def problems(self) -> list[str]:
        """What is wrong with this target, one line per field (empty when valid)."""
        out: list[str] = []
        try:
            ipaddress.ip_address(self.exporter)
        except ValueError:
            out.append(f"exporter: {self.exporter!r} is not an IPv4 or IPv6 address")
        if not self.host:
            out.append("host: empty")
        if not 1 <= self.port <= 65535:
            out.append(f"port: {self.port} is not in 1..65535")
        if not self.timeout_s > 0:
            out.append(f"timeout_s: {self.timeout_s} must be > 0")
        if self.retries < 0:
            out.append(f"retries: {self.retries} must be >= 0")
        out += [f"{key}: {reason}" for key, reason in credential_problems(
            self.version, self.community, self.user, self.auth_protocol, self.auth_key, self.priv_protocol,
            self.priv_key, auth_protocols=AUTH_PROTOCOLS, priv_protocols=PRIV_PROTOCOLS)]
        return out

    def auth_data(self) -> CommunityData | UsmUserData:
        if self.version == "2c":
            return CommunityData(self.community, mpModel=1)
        auth, priv = AUTH_PROTOCOLS[self.auth_protocol.lower()], PRIV_PROTOCOLS[self.priv_protocol.lower()]
        return UsmUserData(self.user, self.auth_key or None, self.priv_key or None, authProtocol=auth,
                           privProtocol=priv)

    async def transport(self) -> UdpTransportTarget | Udp6TransportTarget:
        """The pysnmp transport; an IPv6 literal host goes over UDP/IPv6, a name over IPv4."""
        try:
            v6 = ipaddress.ip_address(self.host).version == 6
        except ValueError:
            v6 = False
        kind = Udp6TransportTarget if v6 else UdpTransportTarget
        return await kind.create((self.host, self.port), timeout=self.timeout_s, retries=self.retries)


def targets_from_settings(settings: SnmpSettings) -> list[SnmpTarget]:
    """The configured agents (``snmp.target`` first, then ``snmp.targets``), with the
    block's timeout and retries.

    The original config's ``snmp.target`` names the router, which is also the exporter;
    when it is a host name it is resolved once, here, to the address flows carry.
    """
    return [
        SnmpTarget(
            exporter=_exporter_address(t.exporter), host=t.host, port=t.port,
            version=t.version, community=t.community, user=t.user or "",
            auth_protocol=t.auth_protocol, auth_key=t.auth_key or "", priv_protocol=t.priv_protocol,
            priv_key=t.priv_key or "", timeout_s=settings.timeout_s, retries=settings.retries,
        )
        for t in settings.targets
    ]


def _exporter_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(text, None, type=socket.SOCK_DGRAM)[0][4][0])
    except OSError as err:
        raise ConfigError([f"snmp.target: cannot resolve {text!r} to the exporter's address: {err}"]) from err


def exporter_key(text: str) -> bytes:
    """An exporter address as the 16 bytes of the ``exporter_address`` column."""
    try:
        return str_to_addr(text)
    except ValueError as err:
        raise ValueError(f"exporter {text!r} is not an IPv4 or IPv6 address") from err


@dataclass(frozen=True)
class InterfaceTable:
    """One exporter's interfaces from one complete walk, plus the sorted arrays that
    name a whole batch's ifIndexes with one ``np.searchsorted``."""

    interfaces: Mapping[int, InterfaceInfo]
    ifindexes: npt.NDArray[np.uint32]  # sorted; only interfaces that have a label
    labels: tuple[str, ...]  # labels[i] names ifindexes[i]
    walked_at: float  # time.monotonic()

    @classmethod
    def of(cls, interfaces: Mapping[int, InterfaceInfo], walked_at: float) -> InterfaceTable:
        named = sorted(i for i, info in interfaces.items() if info.label)
        return cls(MappingProxyType(dict(interfaces)), np.array(named, dtype=np.uint32),
                   tuple(interfaces[i].label for i in named), walked_at)


@dataclass(frozen=True)
class TargetStatus:
    """What the poller knows about one target, for the API and for tests."""

    exporter: str
    interfaces: int
    walks_ok: int
    consecutive_failures: int
    retry_in_s: float  # delay before the next attempt after a failure; 0 when healthy
    last_success_age_s: float | None
    last_error: str  # the latest failure, kept after recovery for the record ("" if none yet)


class WalkError(FlowEnricherError):
    """One walk of one target failed; `timeout` tells an unanswering agent from a refusal."""

    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


@dataclass(frozen=True)
class _Health:
    """A target's walk record, replaced whole so other threads never read half an update."""

    walks_ok: int = 0
    failures: int = 0  # consecutive
    retry_in: float = 0.0
    last_ok: float | None = None  # time.monotonic()
    last_error: str = ""


@dataclass
class _TargetState:
    target: SnmpTarget
    label: str
    health: _Health = field(default_factory=_Health)


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.walks = Counter("flowenricher_snmp_walks", "IF-MIB walks per exporter, by result (ok, timeout, error)",
                             ["exporter", "result"], registry=registry)
        self.interfaces = Gauge("flowenricher_snmp_interfaces", "Interfaces known from the last good walk",
                                ["exporter"], registry=registry)
        self.age = Gauge("flowenricher_snmp_last_walk_age_seconds",
                         "Seconds since the last good walk (+Inf before the first)", ["exporter"], registry=registry)
        self.retry = Gauge("flowenricher_snmp_retry_delay_seconds",
                           "Back-off before the next walk of a failing agent (0 when healthy)", ["exporter"],
                           registry=registry)


class SnmpPoller:
    """Walks the IF-MIB of every target at start and every `interval_s`.

    A failed walk keeps the previous table (stale names beat none) and retries after
    `backoff_initial_s`, doubling per consecutive failure up to `backoff_max_s`, so a
    dead agent costs one small timeout now and then.  The constructor does no work;
    :meth:`start` starts the thread, :meth:`stop` ends it.
    """

    def __init__(self, targets: Sequence[SnmpTarget], registry: CollectorRegistry | None = None,
                 interval_s: float = 300.0, backoff_initial_s: float = 5.0, backoff_max_s: float = 600.0,
                 max_repetitions: int = 25) -> None:
        problems = []
        if not interval_s > 0:
            problems.append(f"snmp interval: {interval_s} must be > 0")
        if not 0 < backoff_initial_s <= backoff_max_s:
            problems.append(f"snmp backoff: need 0 < initial ({backoff_initial_s}) <= max ({backoff_max_s})")
        if not 1 <= max_repetitions <= 1000:
            problems.append(f"snmp max_repetitions: {max_repetitions} is not in 1..1000")
        self._states: dict[bytes, _TargetState] = {}
        self._failure_log = Throttle(_LOG_EVERY_S)  # per exporter label, counting the walks not told
        for target in targets:
            key = exporter_key(target.exporter)
            if key in self._states:
                problems.append(f"snmp targets: exporter {target.exporter} is listed twice")
            self._states[key] = _TargetState(target, str(ipaddress.ip_address(target.exporter)))
        if problems:
            raise ConfigError(problems)
        self._interval_s = interval_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._max_repetitions = max_repetitions
        self._tables: Mapping[bytes, InterfaceTable] = MappingProxyType({})
        self._metrics = _Metrics(registry)
        for key, state in self._states.items():
            for result in ("ok", "timeout", "error"):
                self._metrics.walks.labels(state.label, result)
            self._metrics.interfaces.labels(state.label).set(0)
            self._metrics.age.labels(state.label).set_function(functools.partial(self._age, key))
            self._metrics.retry.labels(state.label).set(0)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    @classmethod
    def from_settings(cls, settings: SnmpSettings, registry: CollectorRegistry | None = None) -> SnmpPoller:
        return cls(targets_from_settings(settings), registry, interval_s=settings.interval_s)

    # ------------------------------------------------------------------ reading side

    @property
    def tables(self) -> Mapping[bytes, InterfaceTable]:
        """Exporter address (16 bytes, as in batches) -> its last complete table."""
        return self._tables

    def interfaces(self, exporter: str) -> dict[int, InterfaceInfo]:
        """ifIndex -> interface of `exporter` (empty if not polled or never walked)."""
        table = self._tables.get(exporter_key(exporter))
        return dict(table.interfaces) if table else {}

    def status(self, exporter: str) -> TargetStatus:
        key = exporter_key(exporter)
        state = self._states.get(key)
        if state is None:
            raise KeyError(f"exporter {exporter} has no SNMP target")
        table, health = self._tables.get(key), state.health
        age = None if health.last_ok is None else time.monotonic() - health.last_ok
        return TargetStatus(state.label, len(table.interfaces) if table else 0, health.walks_ok, health.failures,
                            health.retry_in, age, health.last_error)

    @property
    def running(self) -> bool:
        """True while the polling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _age(self, key: bytes) -> float:
        last = self._states[key].health.last_ok
        return math.inf if last is None else time.monotonic() - last

    # ------------------------------------------------------------------ polling thread

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("SnmpPoller already started")
        if not self._states:
            return
        self._thread = threading.Thread(target=self._run, name="snmp-poller", daemon=True)
        self._thread.start()
        self._ready.wait()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Cancel the walks in flight and end the thread (idempotent)."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("SNMP poller thread did not stop within %.1f s", timeout_s)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:  # the thread must not die silently: names would freeze unnoticed
            log.exception("SNMP poller stopped on an unexpected error")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_exception)
        self._stop = asyncio.Event()
        self._ready.set()
        tasks = [asyncio.create_task(self._poll(key, state), name=f"snmp {state.label}")
                 for key, state in self._states.items()]
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # An answer already queued when stop() closed its engine finds its transport gone:
        # expected at shutdown, not worth an ERROR with a traceback.
        stopping = self._stop is not None and self._stop.is_set()
        if stopping and isinstance(context.get("exception"), CarrierError):
            return
        loop.default_exception_handler(context)

    async def _poll(self, key: bytes, state: _TargetState) -> None:
        # One engine per target: pysnmp keys v3 credentials by user name per engine, so two
        # routers with the same user and different keys must not share one.
        engine = SnmpEngine()
        try:
            while True:
                await self._walk_once(engine, key, state)
                health = state.health
                await asyncio.sleep(self._interval_s if health.failures == 0 else health.retry_in)
        finally:
            engine.close_dispatcher()

    async def _walk_once(self, engine: SnmpEngine, key: bytes, state: _TargetState) -> None:
        try:
            interfaces = await walk_interfaces(engine, state.target, self._max_repetitions)
            now = time.monotonic()
            table = InterfaceTable.of(interfaces, now)
        except asyncio.CancelledError:
            raise
        except WalkError as err:
            self._failed(state, str(err), "timeout" if err.timeout else "error")
            return
        except Exception as err:  # pysnmp raises its own errors for bad addresses and names
            self._failed(state, f"{type(err).__name__}: {err}", "error")
            return
        before = state.health
        if before.failures:
            log.info("SNMP agent for exporter %s answers again after %d failed walks", state.label, before.failures)
        elif not before.walks_ok:
            log.info("SNMP: %d interfaces of exporter %s from %s:%d", len(interfaces), state.label,
                     state.target.host, state.target.port)
        state.health = _Health(walks_ok=before.walks_ok + 1, last_ok=now, last_error=before.last_error)
        self._failure_log.reset(state.label)
        self._metrics.walks.labels(state.label, "ok").inc()
        self._metrics.interfaces.labels(state.label).set(len(interfaces))
        self._metrics.retry.labels(state.label).set(0)
        # Published last: whoever sees the new interfaces sees the health and metrics of
        # the walk that found them (a reader saw the table with the failures before it).
        tables = dict(self._tables)
        tables[key] = table
        self._tables = MappingProxyType(tables)

    def _failed(self, state: _TargetState, message: str, result: str) -> None:
        failures = state.health.failures + 1
        retry_in = min(self._backoff_max_s, self._backoff_initial_s * 2 ** (failures - 1))
        state.health = dataclasses.replace(state.health, failures=failures, retry_in=retry_in, last_error=message)
        self._metrics.walks.labels(state.label, result).inc()
        self._metrics.retry.labels(state.label).set(retry_in)
        held_back = self._failure_log.allow(state.label)
        if held_back is not None:
            log.warning("SNMP walk of %s:%d for exporter %s failed (%s; %d failures since last report), "
                        "next try in %.1f s", state.target.host, state.target.port, state.label, message,
                        held_back + 1, retry_in)


async def walk_interfaces(engine: SnmpEngine, target: SnmpTarget, max_repetitions: int = 25) -> dict[int, InterfaceInfo]:
    """One complete walk of the IF-MIB columns flows need; raises :class:`WalkError`."""
    transport = await target.transport()
    auth = target.auth_data()
    columns: dict[str, dict[int, Any]] = {}
    for column, oid in _WALKED.items():
        columns[column] = await _walk_column(engine, auth, transport, oid, max_repetitions, target)
    names, descrs, aliases, speeds = columns["name"], columns["descr"], columns["alias"], columns["speed"]
    return {
        index: InterfaceInfo(_text(names.get(index)), _text(descrs.get(index)), _text(aliases.get(index)),
                             _number(speeds.get(index, 0)))
        for index in sorted(names.keys() | descrs.keys())
    }


async def _walk_column(engine: SnmpEngine, auth: CommunityData | UsmUserData,
                       transport: UdpTransportTarget | Udp6TransportTarget, oid: tuple[int, ...],
                       max_repetitions: int, target: SnmpTarget) -> dict[int, Any]:
    values: dict[int, Any] = {}
    where = f"{target.host}:{target.port} {'.'.join(map(str, oid))}"
    walk = bulk_walk_cmd(engine, auth, transport, ContextData(), 0, max_repetitions,
                         ObjectType(ObjectIdentity(oid)), lexicographicMode=False, lookupMib=False)
    async with contextlib.aclosing(walk) as responses:
        async for error_indication, error_status, error_index, var_binds in responses:
            if error_indication:
                # bulk_walk_cmd retries a timed-out page forever: one timeout ends this walk.
                raise WalkError(f"{where}: {error_indication}", isinstance(error_indication, RequestTimedOut))
            if error_status:
                raise WalkError(f"{where}: agent error {error_status.prettyPrint()} at varbind {error_index}")
            for name, value in var_binds:
                sub = tuple(name)
                # Skip what is not a row of this column (an agent padding its answer) or has
                # an index outside InterfaceIndex (RFC 2863: 1..2147483647).
                if len(sub) == len(oid) + 1 and sub[:len(oid)] == oid and 0 < int(sub[-1]) <= _MAX_IFINDEX:
                    values[int(sub[-1])] = value
            if len(values) > MAX_INTERFACES:
                raise WalkError(f"{where}: more than {MAX_INTERFACES} rows, walk abandoned")
    return values


def _text(value: Any) -> str:
    """An SNMP OCTET STRING as text: UTF-8 (RouterOS names may be), undecodable bytes replaced.

    A value of another type (a broken agent) is rendered rather than failing the walk."""
    if value is None:
        return ""
    if hasattr(value, "asOctets"):
        return bytes(value.asOctets()).decode("utf-8", "replace")
    return str(value.prettyPrint()) if hasattr(value, "prettyPrint") else str(value)


def _number(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class SnmpStage:
    """The ``snmp`` enrichment: names flows' interfaces from their exporter's table.

    Names from the exporter's options data (already in the batch) win: only empty names
    are filled.  It owns the poller it is given and stops it on :meth:`close`.
    """

    name = "snmp"

    def __init__(self, poller: SnmpPoller, registry: CollectorRegistry | None = None) -> None:
        self.poller = poller
        self._filled = Counter("flowenricher_snmp_names_filled", "Flow interface names filled from SNMP",
                               ["direction"], registry=registry)

    def interfaces(self, exporter: str) -> dict[int, InterfaceInfo]:
        return self.poller.interfaces(exporter)

    def enrich(self, batch: FlowBatch, addrs: AddressSet) -> None:
        tables = self.poller.tables
        if not tables or not batch.n:
            return
        exporters = np.ascontiguousarray(batch["exporter_address"]).view(np.uint64).reshape(-1, 2)
        present: list[tuple[InterfaceTable, npt.NDArray[np.bool_]]] = []
        for key, table in tables.items():
            if not len(table.ifindexes):
                continue
            want = np.frombuffer(key, dtype=np.uint64)
            rows = (exporters[:, 0] == want[0]) & (exporters[:, 1] == want[1])
            if rows.any():
                present.append((table, rows))
        if not present:
            return
        for index_column, name_column in _DIRECTIONS:
            column, filled = fill_names(batch[name_column], batch[index_column], present)
            if filled:
                batch[name_column] = column
                self._filled.labels(index_column.split("_")[0]).inc(filled)

    def close(self) -> None:
        self.poller.stop()


def fill_names(names: DictColumn, ifindexes: npt.NDArray[np.uint32],
               tables: Sequence[tuple[InterfaceTable, npt.NDArray[np.bool_]]]) -> tuple[DictColumn, int]:
    """`names` with its empty rows named from `tables` (each with the rows of its exporter).

    Returns the new column (the same object when nothing was filled) and the count filled.
    The dictionary keeps every existing value at its code, so untouched rows keep their
    codes; new names are appended once.
    """
    values = list(names.values)
    empty = np.fromiter((v == "" for v in values), bool, len(values))[names.codes]
    if not empty.any():
        return names, 0
    code_of: dict[str, int] = {}
    for code, value in enumerate(values):
        code_of.setdefault(value, code)
    codes = names.codes
    filled = 0
    for table, rows in tables:
        target_rows = np.flatnonzero(rows & empty)
        if not len(target_rows):
            continue
        wanted = ifindexes[target_rows]
        pos = np.searchsorted(table.ifindexes, wanted)
        pos[pos == len(table.ifindexes)] = 0
        hit = table.ifindexes[pos] == wanted
        if not hit.any():
            continue
        # Only the labels this batch uses join the dictionary (it is stored as LowCardinality).
        label_codes = np.zeros(len(table.labels), dtype=np.uint32)
        for used in np.unique(pos[hit]).tolist():
            label_codes[used] = _code(code_of, values, table.labels[used])
        if codes is names.codes:
            codes = codes.copy()
        codes[target_rows[hit]] = label_codes[pos[hit]]
        filled += int(np.count_nonzero(hit))
    if not filled:
        return names, 0
    return DictColumn(codes, values), filled


def _code(code_of: dict[str, int], values: list[str], label: str) -> int:
    code = code_of.get(label)
    if code is None:
        code = code_of[label] = len(values)
        values.append(label)
    return code
