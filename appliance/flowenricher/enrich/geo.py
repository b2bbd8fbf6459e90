"""ASN/organisation and GeoIP enrichment from MaxMind-format databases (GeoLite2-ASN and
GeoLite2-City, or DB-IP's lite ASN and City files, which use the same record keys).

Each database file is copied into a private in-memory file (memfd) before it is opened,
so the memory-mapped reader never sees the file change under it: an operator's ``cp``
over the live file would otherwise truncate the mapping and kill the process with
SIGBUS.  What was checked at open is therefore exactly what is used until the next
reload.  Lookups go through a bounded cache keyed by the 16-byte address, since the
same few thousand addresses come back batch after batch; answers are kept as small
integers (AS number and interned strings), so a batch's columns are built with numpy
indexing and only the addresses new to the cache cost a Python step (see _AnswerCache).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import shutil
import stat
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import maxminddb
import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..batch import FlowBatch
from ..common.addresses import plain_address, stored_bytes
from ..common.ratelimit import RateLimitedLog
from ..errors import ConfigError
from .base import AddressSet, Index, StringTable, public_mask, spread_strings
from .settings import GeoIpSettings

if TYPE_CHECKING:
    from maxminddb.types import Record


try:
    from maxminddb.extension import Reader as _CReader
except ImportError:  # pragma: no cover - the wheel ships the extension; a source build may not
    _CReader = None  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)
_GEOIP = GeoIpSettings()  # the geoip block's defaults, for a stage built without a config

Role = Literal["asn", "city"]
# (asn, organisation, ISO country code, English city name) of one address.
Answer = tuple[int, str, str, str]
# What identifies one version of a file on disk: a replacement changes at least one.
Signature = tuple[int, int, int, int]

_EMPTY: Answer = (0, "", "", "")
_UNREADABLE: Signature = (-1, -1, -1, -1)  # the file is gone or cannot be stat'ed
_SETTING: dict[Role, str] = {"asn": "geoip.asn_db", "city": "geoip.city_db"}
# database_type words of each role (GeoLite2-ASN, GeoIP2-City, DBIP-ASN-Lite, DBIP-City-Lite,
# GeoLite2-Country...): a file naming only the other role's words was given in the wrong key.
_KIND_WORDS: dict[Role, tuple[str, ...]] = {"asn": ("asn",), "city": ("city", "country")}
# Record keys that make a database useful in its role (a City record may hold only a city).
_KEYS: dict[Role, tuple[str, ...]] = {"asn": ("autonomous_system_number",), "city": ("country", "city")}
_METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
_METADATA_MAX = 128 * 1024  # the format puts the metadata in the file's last 128 KiB
_LOG_EVERY_S = 60.0


def _signature(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _describe_refusal(fd: int, size: int) -> str:
    """Why libmaxminddb refused a file: its own message says only "is this a valid file?"."""
    if size == 0:
        return "empty file"
    tail = os.pread(fd, min(size, _METADATA_MAX), max(0, size - _METADATA_MAX))
    if _METADATA_MARKER not in tail:
        return "no MaxMind DB metadata marker in the last 128 KiB (truncated, or not an .mmdb file)"
    return "metadata or search tree rejected by libmaxminddb (corrupt node count, record size or tree)"


@dataclass(frozen=True)
class GeoDatabase:
    """One opened database file, the version of the file it was read from, and its role."""

    role: Role
    path: Path
    reader: maxminddb.Reader
    signature: Signature

    @property
    def setting(self) -> str:
        return _SETTING[self.role]

    @property
    def build_epoch(self) -> int:
        return int(self.reader.metadata().build_epoch)

    @functools.cached_property
    def ipv4_only(self) -> bool:
        # cached: the reader builds a new metadata object on every call, which cost as
        # much as the lookup itself when asked once per address
        return int(self.reader.metadata().ip_version) == 4

    @property
    def uses_c_extension(self) -> bool:
        return _CReader is not None and isinstance(self.reader, _CReader)

    def describe(self) -> str:
        meta = self.reader.metadata()
        built = time.strftime("%Y-%m-%d", time.gmtime(meta.build_epoch))
        return f"{self.setting} {self.path} ({meta.database_type}, built {built}, IPv{meta.ip_version})"

    def stat_signature(self) -> Signature:
        """The file's current signature (a fixed one when it is gone or unreadable)."""
        try:
            return _signature(os.stat(self.path))
        except OSError:
            return _UNREADABLE

    @classmethod
    def open(cls, role: Role, path: Path, check_records: int) -> GeoDatabase:
        """Read `path` into a private snapshot, open it and check it; ConfigError names what is wrong."""
        where = f"{_SETTING[role]} {path}"
        try:
            src = open(path, "rb")  # noqa: SIM115 - closed below; the fd is fstat'ed while open
        except OSError as err:
            raise ConfigError([f"{where}: cannot open: {err.strerror or err}"]) from err
        with src:
            before = os.fstat(src.fileno())
            if not stat.S_ISREG(before.st_mode):
                raise ConfigError([f"{where}: not a regular file"])
            fd = os.memfd_create(f"geoip-{role}", os.MFD_CLOEXEC)
            try:
                with os.fdopen(fd, "wb", closefd=False) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                if _signature(os.fstat(src.fileno())) != _signature(before):
                    raise ConfigError([f"{where}: changed while being read (still being written?)"])
                try:
                    reader = maxminddb.open_database(f"/proc/self/fd/{fd}", maxminddb.MODE_AUTO)
                except (maxminddb.InvalidDatabaseError, ValueError) as err:
                    reason = _describe_refusal(fd, before.st_size)
                    raise ConfigError([f"{where}: invalid MaxMind DB file: {reason}"]) from err
            finally:
                os.close(fd)  # the reader's mapping keeps the snapshot alive
        db = cls(role, path, reader, _signature(before))
        db._check(check_records)
        return db

    def _check(self, check_records: int) -> None:
        """Decode the first `check_records` records: some corruptions (bad data pointers,
        unknown data types) only show when a record is read, and the wrong file in the
        wrong key only shows in the records it holds."""
        where = f"{self.setting} {self.path}"
        meta = self.reader.metadata()
        kind = str(meta.database_type)
        words = kind.lower()
        mine = any(w in words for w in _KIND_WORDS[self.role])
        other: Role = "city" if self.role == "asn" else "asn"
        if not mine and any(w in words for w in _KIND_WORDS[other]):
            raise ConfigError([f"{where}: a {kind} database, expected {'an ASN' if self.role == 'asn' else 'a City'} "
                               f"database here (swapped with {_SETTING[other]}?)"])
        if int(meta.ip_version) not in (4, 6):
            raise ConfigError([f"{where}: invalid MaxMind DB file: ip_version {meta.ip_version}"])
        if check_records <= 0:
            return
        seen = useful = 0
        last = "the first record"
        records: Iterator[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Record]] = iter(self.reader)
        try:
            for network, record in records:
                seen += 1
                last = str(network)
                useful += isinstance(record, dict) and any(k in record for k in _KEYS[self.role])
                if seen >= check_records:
                    break
        except (maxminddb.InvalidDatabaseError, ValueError) as err:
            raise ConfigError([f"{where}: invalid MaxMind DB file: corrupt data section after {last} "
                               f"({seen} records read): {err}"]) from err
        if seen and not useful:
            raise ConfigError([f"{where}: none of the first {seen} records has {' or '.join(_KEYS[self.role])} "
                               f"(a {kind} database, not a MaxMind/DB-IP {self.role.upper()} database?)"])


class _Metrics:
    """The stage's counters, on the registry passed in (one per service)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.lookups = Counter("flowenricher_geoip_lookups", "Database lookups (cache misses), per database",
                               ["db"], registry=registry)
        self.cache_hits = Counter("flowenricher_geoip_cache_hits", "Addresses answered from the lookup cache",
                                  registry=registry)
        self.errors = Counter("flowenricher_geoip_lookup_errors",
                              "Lookups or record reads that failed on corrupt data, per database", ["db"],
                              registry=registry)
        self.reloads = Counter("flowenricher_geoip_reloads", "Database reloads after the file changed, by result",
                               ["db", "result"], registry=registry)
        self.build_epoch = Gauge("flowenricher_geoip_build_epoch_seconds",
                                 "Build time of the database in use (from its metadata)", ["db"], registry=registry)
        for role in ("asn", "city"):
            self.lookups.labels(role)
            self.errors.labels(role)
            for result in ("ok", "failed"):
                self.reloads.labels(role, result)


class _AnswerCache:
    """What the databases answered for recently seen addresses, bounded to ``size``.

    Addresses map to answer ids; each distinct answer (AS number, organisation, country,
    city) is interned once, its parts held in numpy arrays (strings as StringTable
    codes), so a batch turns its answer ids into columns by indexing.  Eviction is by
    generation rather than exact LRU: when the current dict holds half of ``size``, it
    becomes the previous one and the older is dropped; an address found in the previous
    generation moves to the current.  That keeps what is in use, costs one dict lookup
    per address on a hit, and needs no per-hit bookkeeping (an OrderedDict's move_to_end
    per address was most of this stage's time at 300k flows/s).  Interned answers are
    dropped with the addresses once they outnumber ``size`` (a reset, as after a reload).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._current: dict[bytes, int] = {}
        self._previous: dict[bytes, int] = {}
        self._reset_answers()

    def _reset_answers(self) -> None:
        self._answers: dict[Answer, int] = {}
        self.orgs, self.countries, self.cities = StringTable(), StringTable(), StringTable()
        self.asn = np.zeros(64, np.uint32)
        self.org = np.zeros(64, np.uint32)
        self.country = np.zeros(64, np.uint32)
        self.city = np.zeros(64, np.uint32)
        self._intern(_EMPTY)  # id 0: nothing known

    @property
    def entries(self) -> int:
        return len(self._current) + len(self._previous)

    @property
    def nbytes(self) -> int:
        """Estimated from sizes measured with tracemalloc (CPython 3.11, caches of 40k and
        100k addresses): 82-101 bytes an address (its 16-byte key object and dict slot),
        375-403 more a distinct answer (its tuple, strings, their interning and dict slots);
        counted as 95 and 390."""
        return self.entries * 95 + len(self._answers) * 390

    def find(self, keys: list[bytes]) -> list[int]:
        """Answer id of each key of a batch, -1 where the cache does not hold it.

        Ids stay valid until the next find (the one place interned answers are reset)."""
        if len(self._answers) > max(self.size, 1024):
            self._current, self._previous = {}, {}
            self._reset_answers()
        get = self._current.get
        found = [get(key, -1) for key in keys]
        if self._previous:
            previous = self._previous
            for j, answer in enumerate(found):
                if answer < 0:
                    moved = previous.pop(keys[j], None)
                    if moved is not None:
                        found[j] = self._store(keys[j], moved)
        return found

    def add(self, key: bytes, answer: Answer) -> int:
        """Intern `answer`, remember it for `key` (when caching), return its id."""
        return self._store(key, self._intern(answer))

    def _store(self, key: bytes, answer_id: int) -> int:
        if self.size:
            if len(self._current) >= max(self.size // 2, 1):
                self._previous, self._current = self._current, {}
            self._current[key] = answer_id
        return answer_id

    def _intern(self, answer: Answer) -> int:
        found = self._answers.get(answer)
        if found is not None:
            return found
        i = len(self._answers)
        if i == len(self.asn):
            self.asn, self.org, self.country, self.city = (
                np.concatenate((a, np.zeros(len(a), np.uint32))) for a in (self.asn, self.org, self.country, self.city))
        self.asn[i] = answer[0]
        self.org[i] = self.orgs.code(answer[1])
        self.country[i] = self.countries.code(answer[2])
        self.city[i] = self.cities.code(answer[3])
        self._answers[answer] = i
        return i


class GeoStage:
    """Fills ``src_as``/``dst_as`` and their organisations, and the ISO country and English
    city name of each public address, from the ASN and City databases.

    Private and special-purpose addresses are never looked up: no database has a
    meaningful answer for them, and a scan of the operator's own space would otherwise
    fill the cache with them.  An AS number the exporter already put in a flow is kept, since it comes from the
    router's own BGP table.  ``asn_names`` maps every AS number of the ASN database to
    its organisation; it is filled by a background walk of the database after each
    load, so peer ASes are named even when none of their addresses appear in flows.
    """

    name = "geoip"
    writes_as_numbers = True  # the pipeline names src_as/dst_as after this stage (see enrich/pipeline.py)

    def __init__(self, asn_db: Path | None, city_db: Path | None, *, cache_size: int = _GEOIP.cache_size,
                 reload_interval_s: float = 60.0, registry: CollectorRegistry | None = None,
                 check_records: int = 1000) -> None:
        if cache_size < 0:
            raise ConfigError([f"geoip.cache_size: {cache_size} is negative"])
        self._metrics = _Metrics(registry)
        self._cache = _AnswerCache(cache_size)
        held = Gauge("flowenricher_geoip_bytes", "Estimated bytes of the GeoIP stage's lookup cache and AS names",
                     ["part"], registry=registry)
        held.labels("cache").set_function(lambda: self._cache.nbytes)
        # 143 bytes a name: tracemalloc, 80k names of about 26 characters in a dict by AS number.
        held.labels("as_names").set_function(lambda: len(self.asn_names) * 143)
        self._cache_size = cache_size
        self._reload_interval = reload_interval_s
        self._check_records = check_records
        self._last_check = time.monotonic()
        self._reload_lock = threading.Lock()
        self._failed: dict[Role, Signature] = {}
        self._log = RateLimitedLog(log, _LOG_EVERY_S)  # by what failed: walk or lookup, per database
        self.asn_names: dict[int, str] = {}
        self._closing = threading.Event()
        self._names_walk: threading.Thread | None = None
        self._generation = 0
        self._dbs: dict[Role, GeoDatabase] = {}
        # Open both before installing either, so a bad second file leaves no walk running.
        wanted: tuple[tuple[Role, Path | None], ...] = (("asn", asn_db), ("city", city_db))
        opened = [GeoDatabase.open(role, Path(path), check_records) for role, path in wanted if path is not None]
        for db in opened:
            self._install(db)
            log.info("geoip: %s", db.describe())
        if not self.uses_c_extension:
            log.warning("geoip: maxminddb C extension unavailable, lookups run in pure Python (several times slower)")

    @classmethod
    def from_settings(cls, settings: GeoIpSettings, registry: CollectorRegistry | None = None) -> GeoStage:
        return cls(settings.asn_db, settings.city_db, cache_size=settings.cache_size,
                   reload_interval_s=settings.reload_interval_s, registry=registry)

    @property
    def uses_c_extension(self) -> bool:
        """True when every open database is read by libmaxminddb (the C extension)."""
        return all(db.uses_c_extension for db in self._dbs.values())

    @property
    def databases(self) -> dict[Role, GeoDatabase]:
        return dict(self._dbs)

    def as_name(self, asn: int) -> str:
        return self.asn_names.get(asn, "")

    def cache_len(self) -> int:
        return self._cache.entries

    # -- loading and reloading ---------------------------------------------------------

    def _install(self, db: GeoDatabase) -> None:
        """Make `db` the database of its role; the cache held answers of the old one.

        The cache is replaced, not cleared, so a batch being enriched in another thread
        finishes on the cache it started with.
        """
        self._dbs[db.role] = db
        self._cache = _AnswerCache(self._cache_size)
        self._failed.pop(db.role, None)
        self._metrics.build_epoch.labels(db.role).set(db.build_epoch)
        if db.role == "asn":
            self._start_names_walk(db)

    def maybe_reload(self, now: float | None = None) -> bool:
        """Reopen any database whose file changed, at most once per reload interval.

        A file that fails to open or check keeps the previous database in use; the
        failure is counted and logged once per version of the file, so a broken
        download is not retried (and re-logged) at every interval.  Returns True when
        a database was replaced.
        """
        now = time.monotonic() if now is None else now
        if now - self._last_check < self._reload_interval or not self._reload_lock.acquire(blocking=False):
            return False
        try:
            self._last_check = now
            replaced = False
            for role, db in list(self._dbs.items()):
                current = db.stat_signature()
                if current in (db.signature, self._failed.get(role)):
                    continue
                try:
                    new = GeoDatabase.open(role, db.path, self._check_records)
                except ConfigError as err:
                    self._failed[role] = current
                    self._metrics.reloads.labels(role, "failed").inc()
                    log.error("geoip: reload failed, keeping the database loaded before: %s", err)
                    continue
                self._install(new)
                self._metrics.reloads.labels(role, "ok").inc()
                log.info("geoip: reloaded %s", new.describe())
                replaced = True
            return replaced
        finally:
            self._reload_lock.release()

    def _start_names_walk(self, db: GeoDatabase) -> None:
        self._generation += 1
        generation = self._generation
        self._names_walk = threading.Thread(target=self._walk_names, args=(db, generation),
                                            name="geoip-asn-names", daemon=True)
        self._names_walk.start()

    def _walk_names(self, db: GeoDatabase, generation: int) -> None:
        """Fill asn_names from every record of the ASN database (about 1 s for GeoLite2-ASN).

        Runs beside ingest rather than in the reload, which must not stall a batch; a
        newer load or close() stops it.
        """
        seen = 0
        try:
            for _network, record in db.reader:
                if isinstance(record, dict):
                    asn, org = _asn_of(record)
                    if asn and org:
                        self.asn_names[asn] = org
                seen += 1
                if not seen % 4096 and (self._closing.is_set() or generation != self._generation):
                    return
        except (maxminddb.InvalidDatabaseError, ValueError) as err:
            self._metrics.errors.labels(db.role).inc()
            self._log.error("geoip: %s: corrupt record after %d records while naming ASes: %s",
                            db.setting, seen, err, key=f"walk:{db.role}")

    def wait_for_names(self, timeout: float | None = None) -> bool:
        """Wait until asn_names holds the whole ASN database; False on timeout."""
        walk = self._names_walk
        if walk is not None:
            walk.join(timeout)
            return not walk.is_alive()
        return True

    # -- lookups -----------------------------------------------------------------------

    def _resolve(self, raw: bytes, is_v4: bool, lookups: dict[Role, int]) -> Answer:
        """Both databases' answer for one address (16 bytes, IPv4 mapped); each database
        asked is counted in `lookups`, which the caller adds to the counter once per batch."""
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = (
            ipaddress.IPv4Address(raw[12:]) if is_v4 else ipaddress.IPv6Address(raw))
        asn, org, country, city = _EMPTY
        asn_db = self._dbs.get("asn")
        if asn_db is not None:
            record = self._get(asn_db, ip, lookups)
            if isinstance(record, dict):
                asn, org = _asn_of(record)
                if asn and org:
                    self.asn_names[asn] = org
                elif asn:
                    org = self.asn_names.get(asn, "")
        city_db = self._dbs.get("city")
        if city_db is not None:
            record = self._get(city_db, ip, lookups)
            if isinstance(record, dict):
                country, city = _place_of(record)
        return (asn, sys.intern(org), sys.intern(country), sys.intern(city))

    def _get(self, db: GeoDatabase, ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
             lookups: dict[Role, int]) -> Record | None:
        if ip.version == 6 and db.ipv4_only:
            return None
        lookups[db.role] = lookups.get(db.role, 0) + 1  # a reload may bring a role in mid-batch
        try:
            return db.reader.get(ip)
        except (maxminddb.InvalidDatabaseError, ValueError) as err:
            self._metrics.errors.labels(db.role).inc()
            self._log.error("geoip: %s: lookup of %s failed: %s", db.setting, ip, err, key=f"lookup:{db.role}")
            return None

    def _answer_ids(self, addrs: AddressSet, cache: _AnswerCache) -> npt.NDArray[np.intp]:
        """The cache's answer id of each unique address of the batch; 0 (nothing known)
        for non-public ones.  Only addresses the cache does not hold are looked up."""
        ids = np.zeros(len(addrs), np.intp)
        public = np.flatnonzero(public_mask(addrs.addrs))
        if not len(public):
            return ids
        keys: list[bytes] = np.ascontiguousarray(addrs.addrs[public]).view("V16").ravel().tolist()
        found = cache.find(keys)
        misses = [j for j, answer in enumerate(found) if answer < 0]
        if misses:
            v4 = addrs.is_v4[public].tolist()
            lookups: dict[Role, int] = {}
            for j in misses:
                found[j] = cache.add(keys[j], self._resolve(keys[j], v4[j], lookups))
            for role, asked in lookups.items():
                if asked:
                    self._metrics.lookups.labels(role).inc(asked)
        self._metrics.cache_hits.inc(len(keys) - len(misses))
        ids[public] = found
        return ids

    def enrich(self, batch: FlowBatch, addrs: AddressSet) -> None:
        self.maybe_reload()
        if not self._dbs or not len(addrs):
            return
        cache = self._cache  # a reload replaces it: this batch keeps the one it started with
        ids = self._answer_ids(addrs, cache)
        if "asn" in self._dbs:
            asn = cache.asn[ids]
            orgs = cache.org[ids]
            for side, index in (("src", addrs.src), ("dst", addrs.dst)):
                self._fill_as(batch, side, asn, orgs, cache, index)
        if "city" in self._dbs:
            countries = cache.country[ids]
            cities = cache.city[ids]
            batch["src_host_country"] = cache.countries.column(countries, addrs.src)
            batch["dst_host_country"] = cache.countries.column(countries, addrs.dst)
            batch["src_host_city"] = cache.cities.column(cities, addrs.src)
            batch["dst_host_city"] = cache.cities.column(cities, addrs.dst)

    def _fill_as(self, batch: FlowBatch, side: str, asn: npt.NDArray[np.uint32], orgs: npt.NDArray[np.uint32],
                 cache: _AnswerCache, index: Index) -> None:
        column = f"{side}_as"
        if column not in batch or not batch[column].any():
            batch[column] = asn[index]
            batch[f"{side}_as_name"] = cache.orgs.column(orgs, index)
            return
        from_exporter = batch[column]
        merged = np.where(from_exporter != 0, from_exporter, asn[index]).astype(np.uint32)
        uniq, inverse = np.unique(merged, return_inverse=True)
        batch[column] = merged
        batch[f"{side}_as_name"] = spread_strings([self.as_name(a) for a in uniq.tolist()],
                                                  inverse.ravel().astype(np.intp))

    def lookup(self, ip: str) -> dict[str, object]:
        """What the databases say about one address, for ``flowenricher lookup IP``.

        Bypasses the cache (an operator asking wants the database in use now) and
        includes the network each answer covers.  Raises ValueError for a bad address.
        """
        try:
            addr = ipaddress.ip_address(ip.strip())
        except ValueError as err:
            raise ValueError(f"lookup: {ip!r} is not an IPv4 or IPv6 address") from err
        addr = plain_address(addr)
        public = bool(public_mask(np.frombuffer(stored_bytes(addr), np.uint8).reshape(1, 16))[0])
        out: dict[str, object] = {"ip": str(addr), "public": public, "asn": 0, "as_name": "", "asn_network": "",
                                  "country": "", "city": "", "geo_network": ""}
        if not public:
            return out
        errors: list[str] = []
        for role, db in self._dbs.items():
            if addr.version == 6 and db.ipv4_only:
                continue
            self._metrics.lookups.labels(role).inc()
            try:
                record, prefix_len = db.reader.get_with_prefix_len(addr)
            except (maxminddb.InvalidDatabaseError, ValueError) as err:
                self._metrics.errors.labels(role).inc()
                errors.append(f"{db.setting} {db.path}: {err}")
                continue
            if not isinstance(record, dict):
                continue
            network = str(ipaddress.ip_network(f"{addr}/{prefix_len}", strict=False))
            if role == "asn":
                asn, org = _asn_of(record)
                out.update(asn=asn, as_name=org or self.asn_names.get(asn, ""), asn_network=network)
            else:
                country, city = _place_of(record)
                out.update(country=country, city=city, geo_network=network)
        if errors:
            out["errors"] = errors
        return out

    def close(self) -> None:
        self._closing.set()
        if self._names_walk is not None:
            self._names_walk.join()
        for db in self._dbs.values():
            db.reader.close()
        self._dbs.clear()
        self._cache = _AnswerCache(self._cache_size)


def _asn_of(record: dict[str, Record]) -> tuple[int, str]:
    """(AS number, organisation) of an ASN record; 0 and "" where missing or malformed."""
    number = record.get("autonomous_system_number")
    org = record.get("autonomous_system_organization")
    asn = number if isinstance(number, int) and 0 < number < 2**32 else 0
    return asn, org if isinstance(org, str) else ""


def _place_of(record: dict[str, Record]) -> tuple[str, str]:
    """(ISO country code, English city name) of a City record; "" where missing."""
    country = record.get("country")
    iso = country.get("iso_code") if isinstance(country, dict) else None
    city = record.get("city")
    names = city.get("names") if isinstance(city, dict) else None
    english = names.get("en") if isinstance(names, dict) else None
    return (iso if isinstance(iso, str) else ""), (english if isinstance(english, str) else "")
