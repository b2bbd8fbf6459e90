"""Reverse DNS (PTR) names of flow addresses, resolved in the background, never in ingest.

The original flowenricher resolved PTRs inline and "hammered the system".  Here ingest
only *reads* a cache and hands the addresses it lacks to a resolver thread running its
own asyncio loop (dnspython's asyncio resolver), which sends queries under a concurrency
cap and a rate limit.  A name therefore reaches the flows of a *later* batch, and the
``ptr_cache`` table through the sink.  Nothing on the ingest side waits for DNS: when the
resolver is down, the backlog fills, further addresses are dropped (counted) and offered
again when they show up in a later batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.rdtypes.ANY.PTR
import dns.resolver
import dns.reversename
import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..batch import U8, DictColumn, FlowBatch, addr_is_v4, addr_to_str, str_to_addr
from ..common.ratelimit import RateLimitedLog
from ..errors import ConfigError
from .base import AddressSet, public_mask, spread_strings
from .settings import DnsSettings

log = logging.getLogger(__name__)
_DNS = DnsSettings()  # the dns block's defaults, for a resolver built without a config

_LOG_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class AddressInfo:
    """What the pipeline already knew about an address when it was queued for a PTR query.

    The stages before ``ptr`` (geoip, bgp) have found the origin AS and country; carrying
    them with the query lets the ``ptr_cache`` row be written whole when the name arrives,
    without a second lookup in the resolver thread.
    """

    asn: int = 0
    asn_name: str = ""
    country: str = ""


@dataclass(frozen=True, slots=True)
class PtrResult:
    """One newly resolved name: a row of the ClickHouse ``ptr_cache`` table (storage/tables.py)."""

    ip: str  # IPv4 dotted or IPv6 text, as ``src_host``/``dst_host`` render it
    ptr: str  # the name, without the final dot
    updated_at: int  # unix seconds (UTC) when the answer arrived
    asn: int = 0
    asn_name: str = ""
    country: str = ""

    def row(self) -> dict[str, object]:
        """The name as a row of ``ptr_cache``: column name -> value."""
        return {"ip": self.ip, "ptr": self.ptr, "updated_at": int(self.updated_at), "asn": int(self.asn),
                "asn_name": self.asn_name, "country": self.country}


PtrSink = Callable[[list[PtrResult]], None]


def parse_nameserver(text: str, default_port: int = 53) -> tuple[str, int]:
    """``host``, ``host:port``, a bare IPv6 address or ``[v6]:port`` -> (address, port).

    The host must be an IP address: the resolver that would find it by name is the one
    being configured.  Raises ValueError naming what is wrong.
    """
    text = text.strip()
    port_text = ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not [IPv6]:port")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host = text
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address (a resolver cannot be found by name)") from None
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: port {port_text!r} is not in 1..65535")
    return host, int(port_text)


def address_keys(addrs: U8) -> list[bytes]:
    """(m, 16) addresses as 16-byte keys, the form the cache is indexed by."""
    rows = np.ascontiguousarray(addrs).view(np.dtype((np.void, 16))).ravel()
    return cast("list[bytes]", rows.tolist())  # a void scalar converts to its bytes


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        def counter(name: str, doc: str) -> Counter:
            return Counter(f"flowenricher_ptr_{name}", doc, registry=registry)

        self.queries = counter("queries", "PTR queries sent")
        self.answers = counter("answers", "PTR queries answered with a name")
        self.nxdomain = counter("nxdomain", "PTR queries answered NXDOMAIN (no such name)")
        self.noanswer = counter("noanswer", "PTR queries answered NOERROR without a PTR record")
        self.servfail = counter("servfail", "PTR queries answered SERVFAIL")
        self.timeouts = counter("timeouts", "PTR queries without an answer within the timeout")
        self.errors = counter("errors", "PTR queries failed otherwise (REFUSED, unreachable, malformed)")
        self.dropped = counter("dropped", "Addresses not queued because the backlog was full (offered again later)")
        self.sink_errors = counter("sink_errors", "Batches of resolved names the sink raised on (names lost)")
        self.cache_entries = Gauge("flowenricher_ptr_cache_entries", "Addresses in the PTR cache (names and negatives)",
                                   registry=registry)
        self.inflight = Gauge("flowenricher_ptr_inflight", "PTR queries waiting for an answer", registry=registry)
        self.backlog = Gauge("flowenricher_ptr_backlog", "Addresses waiting for a PTR query", registry=registry)


class _TokenBucket:
    """At most `burst` queries at once, then `rate` per second.

    Each caller reserves its token at once (the count may go negative) and sleeps until
    it is due, so waiting callers are served in order and never all wake together.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = time.monotonic()

    async def take(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        self._tokens -= 1.0
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self._rate)


_Entry = tuple[str, float]  # (name, "" when negative; monotonic expiry)

# Each failure's counter, and whether it says only that the resolver is unwell (True: a
# name known before is kept until it answers again) or is the answer itself ("no name").
_TRANSIENT = {"nxdomain": False, "noanswer": False, "servfail": True, "timeouts": True, "errors": True}


class PtrResolver:
    """The PTR cache and the background resolver feeding it.

    Reading side (any thread): :meth:`names` and :meth:`submit`, used once per batch by
    :class:`PtrStage`; :meth:`lookup` for the ``flowenricher lookup`` command.
    Resolving side: one thread running an asyncio loop with `max_inflight` workers; each
    takes the next queued address, waits for a token of the rate limiter (`rate_per_s`,
    bursts of `burst`), and sends one query.

    Cache: a name is kept for its answer's TTL clamped to [`min_ttl_s`, `max_ttl_s`];
    NXDOMAIN, an answer without PTR, SERVFAIL, a timeout or another failure are kept as
    "no name" for `negative_ttl_s`, so an address that has none costs one query per
    `negative_ttl_s`, not one per batch.  An expired name keeps filling flows until its
    refresh arrives, and a refresh that fails for the resolver's sake (SERVFAIL,
    timeout) keeps the old name for another `negative_ttl_s`.  At most `cache_size`
    entries; the oldest written go first.

    `private`: whether addresses outside public unicast space (RFC 1918, ULA, link-local,
    documentation ranges...) are looked up too.  Default yes: operators' own resolvers
    usually hold their internal reverse zones.  Set it False when `nameserver` is a public
    resolver that must not see internal addresses.  The unspecified address (what an
    absent address column holds) is never looked up.

    `sink`, when given, receives the newly resolved names in batches, at most every
    `sink_interval_s`, one call at a time, from a helper thread of the resolver loop (a
    slow sink delays the next batch, never queries).  A sink that raises loses that batch
    (counted, logged): ``ptr_cache`` is a cache, refilled on the next refresh.

    The constructor only validates; :meth:`start` starts the thread, :meth:`close` ends it.
    """

    def __init__(self, nameserver: str | None = None, *, port: int = _DNS.port, timeout_s: float = _DNS.timeout_s,
                 max_inflight: int = _DNS.max_inflight, rate_per_s: float = _DNS.rate_per_s, burst: int | None = None,
                 queue_max: int = _DNS.backlog, cache_size: int = _DNS.cache_size, min_ttl_s: float = _DNS.min_ttl_s,
                 max_ttl_s: float = _DNS.max_ttl_s, negative_ttl_s: float = _DNS.negative_ttl_s,
                 private: bool = _DNS.private,
                 sink: PtrSink | None = None, sink_interval_s: float = 1.0,
                 registry: CollectorRegistry | None = None) -> None:
        problems = []
        self._server: tuple[str, int] | None = None
        if not 1 <= port <= 65535:
            problems.append(f"dns port: {port} is not in 1..65535")
        elif nameserver is not None:
            try:
                self._server = parse_nameserver(nameserver, port)
            except ValueError as err:
                problems.append(f"dns nameserver: {err}")
        checks = (
            (timeout_s > 0, f"dns timeout: {timeout_s} s must be > 0"),
            (max_inflight >= 1, f"dns max_inflight: {max_inflight} must be >= 1"),
            (rate_per_s > 0, f"dns rate_per_s: {rate_per_s} must be > 0"),
            (burst is None or burst >= 1, f"dns burst: {burst} must be >= 1"),
            (queue_max >= 1, f"dns backlog: {queue_max} must be >= 1"),
            (cache_size >= 1, f"dns cache_size: {cache_size} must be >= 1"),
            (0 <= min_ttl_s <= max_ttl_s, f"dns ttl: need 0 <= min_ttl ({min_ttl_s}) <= max_ttl ({max_ttl_s})"),
            (negative_ttl_s >= 0, f"dns negative_ttl: {negative_ttl_s} s must be >= 0"),
            (sink_interval_s > 0, f"dns sink interval: {sink_interval_s} s must be > 0"),
        )
        problems += [message for ok, message in checks if not ok]
        if problems:
            raise ConfigError(problems)
        self._timeout_s = timeout_s
        self._max_inflight = max_inflight
        self._rate_per_s = rate_per_s
        self._burst = burst if burst is not None else max(1, math.floor(rate_per_s / 10))
        self._queue_max = queue_max
        self._cache_size = cache_size
        self._min_ttl_s = min_ttl_s
        self._max_ttl_s = max_ttl_s
        self._negative_ttl_s = negative_ttl_s
        self.private = private
        self._sink = sink
        self._sink_interval_s = sink_interval_s

        # Shared between the ingest side and the loop thread, under _lock.
        self._lock = threading.Lock()
        self._cache: dict[bytes, _Entry] = {}
        self._pending: set[bytes] = set()  # queued or in flight: never queued twice
        self._backlog: deque[tuple[bytes, AddressInfo]] = deque()
        self._waiters: dict[bytes, list[concurrent.futures.Future[str | None]]] = {}
        self._closed = False

        # Loop thread only.
        self._inflight = 0
        self._peak_inflight = 0
        self._results: list[PtrResult] = []
        self._failure_log = RateLimitedLog(log, _LOG_EVERY_S)
        self._sink_log = RateLimitedLog(log, _LOG_EVERY_S)

        self._metrics = _Metrics(registry)
        self._metrics.cache_entries.set_function(lambda: len(self._cache))
        self._metrics.backlog.set_function(lambda: len(self._backlog))
        self._metrics.inflight.set_function(lambda: self._inflight)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    @classmethod
    def from_settings(cls, settings: DnsSettings, registry: CollectorRegistry | None = None,
                      sink: PtrSink | None = None) -> PtrResolver:
        return cls(settings.nameserver, port=settings.port, timeout_s=settings.timeout_s,
                   max_inflight=settings.max_inflight, rate_per_s=settings.rate_per_s, queue_max=settings.backlog,
                   cache_size=settings.cache_size, min_ttl_s=settings.min_ttl_s, max_ttl_s=settings.max_ttl_s,
                   negative_ttl_s=settings.negative_ttl_s, private=settings.private, sink=sink, registry=registry)

    # ------------------------------------------------------------------ reading side

    @property
    def peak_inflight(self) -> int:
        """The most queries that were ever in flight at once (never above `max_inflight`)."""
        return self._peak_inflight

    @property
    def pending(self) -> int:
        """Addresses queued or being resolved (0: every address offered has its answer)."""
        return len(self._pending)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def eligible(self, addrs: U8) -> npt.NDArray[np.bool_]:
        """Which of the (m, 16) addresses may be looked up (see `private`)."""
        v4 = addr_is_v4(addrs)
        unspecified = np.where(v4, ~addrs[:, 12:].any(axis=1), ~addrs.any(axis=1))
        mask: npt.NDArray[np.bool_] = ~unspecified
        if not self.private:
            mask &= public_mask(addrs)
        return mask

    def names(self, keys: Sequence[bytes], eligible: Sequence[bool]) -> tuple[list[str], list[int]]:
        """The cached name of each key ("" if none), and the positions of the keys that
        need a query: eligible, not cached or expired, and not already queued."""
        now = time.monotonic()
        names = [""] * len(keys)
        need: list[int] = []
        with self._lock:
            get = self._cache.get
            pending = self._pending
            for j, key in enumerate(keys):
                entry = get(key)
                if entry is not None:
                    names[j] = entry[0]
                    if entry[1] > now:
                        continue
                if eligible[j] and key not in pending:
                    need.append(j)
        return names, need

    def room(self) -> int:
        """Free places in the backlog now."""
        return max(0, self._queue_max - len(self._backlog))

    def submit(self, keys: Sequence[bytes], infos: Sequence[AddressInfo] = ()) -> int:
        """Queue addresses (16-byte keys) for a query; never blocks.  `infos[i]` is what is
        known of ``keys[i]``; keys past the end of `infos` are queued with nothing known
        (a caller may read infos only for the first :meth:`room` keys).

        Addresses already queued are skipped; beyond the backlog's room the rest are
        dropped and counted, and come back when a later batch holds them.  Returns how
        many were queued.
        """
        accepted = dropped = 0
        unknown = AddressInfo()
        known = len(infos)
        with self._lock:
            if self._closed:
                return 0
            room = self._queue_max - len(self._backlog)
            for i, key in enumerate(keys):
                if key in self._pending:
                    continue
                if room <= 0:
                    dropped += 1
                    continue
                self._backlog.append((key, infos[i] if i < known else unknown))
                self._pending.add(key)
                room -= 1
                accepted += 1
        if dropped:
            self._metrics.dropped.inc(dropped)
        if accepted:
            self._wakeup()
        return accepted

    def lookup(self, ip: str, timeout_s: float | None = None) -> str | None:
        """The PTR name of `ip`, from the cache or, failing that, from one query ahead of
        the backlog (still under the rate limit); None when there is none or no answer
        came within `timeout_s` (default: the query timeout plus a second)."""
        try:
            key = str_to_addr(ip)
        except ValueError:
            raise ValueError(f"PTR lookup: {ip!r} is not an IPv4 or IPv6 address") from None
        if not self.running:
            raise RuntimeError("PtrResolver.lookup: the resolver is not running (call start() first)")
        if not bool(self.eligible(np.frombuffer(key, np.uint8).reshape(1, 16))[0]):
            return None
        waiter: concurrent.futures.Future[str | None] = concurrent.futures.Future()
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None and entry[1] > time.monotonic():
                return entry[0] or None
            self._waiters.setdefault(key, []).append(waiter)
            if key not in self._pending:
                self._backlog.appendleft((key, AddressInfo()))
                self._pending.add(key)
        self._wakeup()
        try:
            return waiter.result(self._timeout_s + 1.0 if timeout_s is None else timeout_s)
        except concurrent.futures.TimeoutError:
            with self._lock:
                waiters = self._waiters.get(key, [])
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)
            return (entry[0] or None) if entry is not None else None

    def _wakeup(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has just closed
                loop.call_soon_threadsafe(wake.set)

    # ------------------------------------------------------------------ loop thread

    def start(self) -> None:
        """Start the resolver thread; raises ConfigError when the system has no resolver."""
        if self._thread is not None:
            raise RuntimeError("PtrResolver already started")
        resolver = self._make_resolver()
        self._thread = threading.Thread(target=self._run, args=(resolver,), name="ptr-resolver", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _make_resolver(self) -> dns.asyncresolver.Resolver:
        if self._server is None:
            try:
                resolver = dns.asyncresolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration as err:
                raise ConfigError([f"dns nameserver: not set, and the system has no resolver ({err})"]) from err
        else:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [self._server[0]]
            resolver.port = self._server[1]
        resolver.timeout = self._timeout_s
        resolver.lifetime = self._timeout_s
        resolver.cache = None  # ours honours min/max TTL and negatives; two caches would disagree
        return resolver

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop queuing, cancel the queries in flight, hand the sink what was resolved,
        and end the thread (idempotent)."""
        with self._lock:
            self._closed = True
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("PTR resolver thread did not stop within %.1f s", timeout_s)
        with self._lock:
            self._backlog.clear()
            self._pending.clear()
            waiters = [w for ws in self._waiters.values() for w in ws]
            self._waiters.clear()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _run(self, resolver: dns.asyncresolver.Resolver) -> None:
        try:
            asyncio.run(self._main(resolver))
        except Exception:  # the thread must not die silently: names would stop coming unnoticed
            log.exception("PTR resolver stopped on an unexpected error")
        finally:
            self._ready.set()

    async def _main(self, resolver: dns.asyncresolver.Resolver) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        bucket = _TokenBucket(self._rate_per_s, self._burst)
        workers = [asyncio.create_task(self._work(resolver, bucket), name=f"ptr worker {i}")
                   for i in range(self._max_inflight)]
        flusher = asyncio.create_task(self._flush_every(), name="ptr sink")
        self._ready.set()
        self._wake.set()  # addresses submitted before start
        try:
            await self._stop.wait()
        finally:
            self._stop.set()  # also when leaving on an error: the flusher ends on it
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            # Not cancelled: a sink call under way finishes before the last one starts.
            await asyncio.gather(flusher, return_exceptions=True)
            await self._flush()

    async def _work(self, resolver: dns.asyncresolver.Resolver, bucket: _TokenBucket) -> None:
        assert self._wake is not None
        while True:
            with self._lock:
                item = self._backlog.popleft() if self._backlog else None
            if item is None:
                # Safe without a lock: the loop runs one task at a time, and a submit
                # schedules its wake.set() only after appending.
                self._wake.clear()
                await self._wake.wait()
                continue
            await bucket.take()
            await self._query(resolver, *item)

    async def _query(self, resolver: dns.asyncresolver.Resolver, key: bytes, info: AddressInfo) -> None:
        ip = addr_to_str(np.frombuffer(key, np.uint8))
        self._metrics.queries.inc()
        self._inflight += 1
        self._peak_inflight = max(self._peak_inflight, self._inflight)
        try:
            answer = await resolver.resolve(dns.reversename.from_address(ip), dns.rdatatype.PTR,
                                            lifetime=self._timeout_s)
        except dns.resolver.NXDOMAIN:
            self._failed(key, ip, "nxdomain")
        except dns.resolver.NoAnswer:
            self._failed(key, ip, "noanswer")
        except dns.exception.Timeout:
            self._failed(key, ip, "timeouts")
        except dns.resolver.NoNameservers as err:
            self._failed(key, ip, _no_nameservers_kind(err), str(err))
        except (dns.exception.DNSException, OSError) as err:
            self._failed(key, ip, "errors", f"{type(err).__name__}: {err}")
        else:
            self._answered(key, ip, info, answer)
        finally:
            self._inflight -= 1

    def _answered(self, key: bytes, ip: str, info: AddressInfo, answer: dns.resolver.Answer) -> None:
        rrset = answer.rrset
        # Several PTRs for one address are allowed; the sorted first keeps the column stable.
        targets = sorted(rr.target.to_text(omit_final_dot=True) for rr in rrset or ()
                         if isinstance(rr, dns.rdtypes.ANY.PTR.PTR))
        if not targets:
            self._failed(key, ip, "noanswer")
            return
        # The chain's lowest TTL: classless delegations (RFC 2317) reach the PTR through a CNAME.
        ttl = min(self._max_ttl_s, max(self._min_ttl_s, float(answer.chaining_result.minimum_ttl)))
        self._metrics.answers.inc()
        self._store(key, targets[0], ttl)
        self._results.append(PtrResult(ip, targets[0], int(time.time()), info.asn, info.asn_name, info.country))

    def _failed(self, key: bytes, ip: str, kind: str, detail: str = "") -> None:
        getattr(self._metrics, kind).inc()
        transient = _TRANSIENT[kind]
        name = ""
        if transient:
            with self._lock:
                entry = self._cache.get(key)
            name = entry[0] if entry is not None else ""
            server = f"{self._server[0]}#{self._server[1]}" if self._server else "the system's resolvers"
            self._failure_log.warning("PTR query for %s to %s failed (%s): %s", ip, server, kind, detail or "-")
        self._store(key, name, self._negative_ttl_s)

    def _store(self, key: bytes, name: str, ttl_s: float) -> None:
        with self._lock:
            cache = self._cache
            cache.pop(key, None)  # re-inserted last: eviction takes the oldest written first
            cache[key] = (name, time.monotonic() + ttl_s)
            while len(cache) > self._cache_size:
                del cache[next(iter(cache))]
            self._pending.discard(key)
            waiters = self._waiters.pop(key, [])
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(name or None)

    async def _flush_every(self) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._sink_interval_s)
            await self._flush()

    async def _flush(self) -> None:
        if self._sink is None or not self._results:
            self._results.clear()
            return
        results, self._results = self._results, []
        # In a helper thread: the sink writes to ClickHouse, and the loop must keep
        # reading answers meanwhile, or queries in flight would time out for nothing.
        await asyncio.to_thread(self._call_sink, results)

    def _call_sink(self, results: list[PtrResult]) -> None:
        assert self._sink is not None
        try:
            self._sink(results)
        except Exception as err:  # a broken sink must not stop resolution
            self._metrics.sink_errors.inc()
            self._sink_log.warning("PTR sink failed on %d names: %s: %s", len(results), type(err).__name__, err)


def _no_nameservers_kind(err: dns.resolver.NoNameservers) -> str:
    """SERVFAIL when a server said so; REFUSED and unreachable servers count as errors."""
    for entry in err.kwargs.get("errors") or ():
        if len(entry) >= 4 and entry[3] == "SERVFAIL":
            return "servfail"
    return "errors"


class PtrStage:
    """The enrichment stage: ``src_host_ptr``/``dst_host_ptr`` from the PTR cache.

    Returns at once: names already resolved are spread over the flows, and the
    addresses without a fresh entry are queued for the resolver with the origin AS,
    its name and the country the earlier stages found (``src_as``... of a flow holding
    the address), so the ``ptr_cache`` row is complete when the name arrives.
    """

    name = "ptr"

    def __init__(self, resolver: PtrResolver) -> None:
        self.resolver = resolver

    def enrich(self, batch: FlowBatch, addrs: AddressSet) -> None:
        if not len(addrs):
            return
        keys = address_keys(addrs.addrs)
        names, need = self.resolver.names(keys, self.resolver.eligible(addrs.addrs).tolist())
        if need:
            # Under overload (a scan brings 100k new sources) most would be dropped: read
            # the AS and country only of those the backlog has room for.
            infos = _address_infos(batch, addrs, np.asarray(need[: self.resolver.room()], dtype=np.intp))
            self.resolver.submit([keys[j] for j in need], infos)
        if any(names):
            batch["src_host_ptr"] = spread_strings(names, addrs.src)
            batch["dst_host_ptr"] = spread_strings(names, addrs.dst)

    def close(self) -> None:
        self.resolver.close()


def _address_infos(batch: FlowBatch, addrs: AddressSet, need: npt.NDArray[np.intp]) -> list[AddressInfo]:
    """AddressInfo of each unique address in `need`, read from one flow holding it.

    Any flow will do: a stage sets an address's AS and country the same in every flow
    of the batch.  A flow holding it as source is preferred, else as destination.
    """
    if not len(need):
        return []
    flows = np.arange(batch.n, dtype=np.intp)
    as_src = np.full(len(addrs), -1, dtype=np.intp)
    as_src[addrs.src] = flows  # among repeats, whichever write lands is a valid holder
    as_dst = np.full(len(addrs), -1, dtype=np.intp)
    as_dst[addrs.dst] = flows
    from_src = as_src[need]
    use_src = from_src >= 0
    flow = np.where(use_src, from_src, as_dst[need])

    def pick(name: str, default: int | str) -> list[Any]:
        """`src_<name>` or `dst_<name>` of each holder flow (defaults for absent columns)."""
        sides = []
        for side in ("src", "dst"):
            column = f"{side}_{name}"
            if column not in batch:
                sides.append(np.full(len(need), default, dtype=object))
                continue
            data = batch[column]
            if isinstance(data, DictColumn):
                sides.append(np.array(data.values, dtype=object)[data.codes[flow]])
            else:
                sides.append(data[flow])
        values: list[Any] = np.where(use_src, sides[0], sides[1]).tolist()
        return values

    return list(map(AddressInfo, pick("as", 0), pick("as_name", ""), pick("host_country", "")))
