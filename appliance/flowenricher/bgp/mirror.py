"""A live copy of GoBGP's best paths (IPv4 and IPv6 unicast) for enrichment: one background
thread holds GoBGP's best-path watch, loads the whole table and applies every later
change to a :class:`~.rib.RibState`.

The whole table comes from the watch's init dump when GoBGP holds at most
``dump_limit`` prefixes (fast: one message), else from ListPath with the watch opened
first (gobgpd cannot send a full table in one message; see :mod:`.client`).  A dump
refused for its size switches this mirror to listing for good.

Failure behaviour, chosen so that enrichment never blocks on GoBGP:

* GoBGP unreachable, not started, or the stream broken: the thread retries with
  exponential backoff (0.5 s doubling up to ``max_backoff_s``), counting each loss of a
  synchronised stream in ``flowenricher_rib_disconnects_total`` and logging at most
  once a minute;
* after a reconnection the table is **resynchronised** by a new full load, which
  replaces the old table at once (readers see the old table or the new one, never a mix),
  so changes missed while disconnected, or a restarted GoBGP's different table, are
  picked up;
* while disconnected, lookups keep answering from the **last table**: a routing table
  changes little in minutes, so slightly stale AS paths beat none.  After
  ``stale_after_s`` without GoBGP the table is dropped and lookups find nothing, since
  by then GoBGP's own sessions (and the table) are most likely gone too.  GoBGP down at
  start means an empty table until it comes up: flows get no BGP columns, nothing fails.

A GoBGP that restarts comes back with an empty RIB that refills as its sessions come up;
the mirror follows it (the resync replaces the table with what GoBGP has, then the
changes fill it).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import closing
from itertools import islice

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..common.ratelimit import RateLimitedLog
from .client import GoBgpClient, GoBgpError, WatchStream
from .rib import RibState, RibView, RouteBuilder, rib_bytes_gauge
from .settings import GoBgpSettings

log = logging.getLogger(__name__)
_GOBGP = GoBgpSettings()  # the gobgp block's defaults, for a mirror built without a config

_LOG_EVERY_S = 60.0
_FIRST_BACKOFF_S = 0.5


class RibMirror:
    """Mirrors GoBGP's RIB at `target` (``host:port`` or ``unix:///path``).

    Nothing happens until :meth:`start`; :meth:`stop` ends the thread.  :meth:`view` is
    what enrichment reads (see :class:`~.rib.RibView`).
    """

    def __init__(self, target: str, registry: CollectorRegistry | None = None, *,
                 stale_after_s: float = _GOBGP.stale_after_s, max_backoff_s: float = 30.0, merge_rows: int = 50_000,
                 timeout_s: float = 5.0,
                 dump_limit: int = _GOBGP.dump_limit) -> None:
        self.target = target
        self.dump_limit = dump_limit
        self.stale_after_s = stale_after_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.state = RibState(merge_rows)
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream_lock = threading.Lock()
        self._stream: WatchStream | None = None
        self._down_since: float | None = time.monotonic()  # not synchronised yet
        self._had_table = False
        self._lost_log = RateLimitedLog(log, _LOG_EVERY_S)
        self.last_load_s = 0.0
        self.last_load_method = ""
        self._disconnects = Counter("flowenricher_rib_disconnects", "Losses of the GoBGP best-path stream",
                                    registry=registry)
        self._failures = Counter("flowenricher_rib_connect_failures",
                                 "Attempts to reach GoBGP that failed (down, not started, refused)", registry=registry)
        self._loads = Counter("flowenricher_rib_full_loads", "Full tables loaded from GoBGP (start and resyncs)",
                              registry=registry)
        self._updates = Counter("flowenricher_rib_updates", "Best-path changes applied after the full load",
                                ["kind"], registry=registry)
        self._prefixes = Gauge("flowenricher_rib_prefixes", "Prefixes in the mirrored RIB", ["family"],
                               registry=registry)
        self._prefixes.labels("ipv4").set_function(lambda: self.state.view().prefixes_v4)
        self._prefixes.labels("ipv6").set_function(lambda: self.state.view().prefixes_v6)
        self._sync_gauge = Gauge("flowenricher_rib_synchronized", "1 while the RIB follows GoBGP's stream",
                                 registry=registry)
        self._load_seconds = Gauge("flowenricher_rib_load_seconds", "Duration of the last full load from GoBGP",
                                   registry=registry)
        self._loading: RouteBuilder | None = None  # a full table being listed, for the bytes gauge
        rib_bytes_gauge(registry, self.state, lambda: self._loading)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="rib-mirror", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread; the last table stays readable (see :meth:`view`)."""
        self._stop.set()
        self._cancel_stream()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._synced.clear()
        self._sync_gauge.set(0)

    close = stop

    @property
    def synchronized(self) -> bool:
        return self._synced.is_set()

    def wait_synchronized(self, timeout: float) -> bool:
        """Wait until a full table is loaded and the stream is live (tests, CLI)."""
        return self._synced.wait(timeout)

    def view(self) -> RibView:
        """The mirrored RIB (the last table while GoBGP is away, see the module docstring)."""
        return self.state.view()

    def _run(self) -> None:
        backoff = _FIRST_BACKOFF_S
        while not self._stop.is_set():
            try:
                self._follow()
            except GoBgpError as err:
                self._lost(err)
            except Exception as err:  # a decoding bug must not end mirroring for good
                self._lost(err)
                log.exception("RIB mirror: unexpected error")
            if self._stop.is_set():
                break
            if self.synchronized:
                backoff = _FIRST_BACKOFF_S  # it worked for a while: retry soon
            self._set_down()
            self._drop_if_stale()
            self._stop.wait(min(backoff, self.stale_after_s))
            backoff = min(backoff * 2, self.max_backoff_s)

    def _follow(self) -> None:
        """One connection: full load, then changes until the stream breaks."""
        client = GoBgpClient(self.target, timeout=self.timeout_s)
        try:
            if not client.started_asn():
                raise GoBgpError(self.target, "GetBgp", "GoBGP's BGP server is not started yet (no global AS)")
            dump = sum(client.table_sizes().values()) <= self.dump_limit
            stream = client.watch_best_paths(init=dump)
            with self._stream_lock:
                if self._stop.is_set():
                    return
                self._stream = stream
            started = time.monotonic()
            if not dump:
                stream.wait_registered()
                builder = self._loading = self.state.new_builder()
                try:
                    with closing(client.list_best_routes()) as routes:
                        while builder.extend(islice(routes, 10_000)):
                            if self._stop.is_set():
                                return  # a full listing takes half a minute: stop() must not wait for it
                    self._loaded(builder, started, "ListPath")
                finally:
                    self._loading = None
                del builder
            try:
                for event in stream:
                    if event.init:
                        builder = self.state.new_builder()
                        for key, route in event:
                            if route is not None:
                                builder.add(key, route)
                        del event
                        self._loaded(builder, started, "WatchEvent dump")
                        del builder
                    else:
                        announced, withdrawn = self.state.apply(event)
                        self._updates.labels("announce").inc(announced)
                        self._updates.labels("withdraw").inc(withdrawn)
            except GoBgpError as err:
                if err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and not self.synchronized:
                    self.dump_limit = 0  # the dump is over gobgpd's message limit: list from now on
                    log.warning("RIB mirror: GoBGP's table is too large for one message; listing it instead")
                raise
        finally:
            with self._stream_lock:
                self._stream = None
            client.close()

    def _loaded(self, builder: RouteBuilder, started: float, method: str) -> None:
        self.state.replace(builder)
        self.last_load_s = time.monotonic() - started
        self.last_load_method = method
        self._load_seconds.set(self.last_load_s)
        self._loads.inc()
        self._set_up()
        view = self.state.view()
        log.info("RIB mirror: %d IPv4 and %d IPv6 prefixes loaded from GoBGP at %s by %s in %.1f s",
                 view.prefixes_v4, view.prefixes_v6, self.target, method, self.last_load_s)

    def _set_up(self) -> None:
        self._down_since = None
        self._had_table = True
        self._synced.set()
        self._sync_gauge.set(1)

    def _set_down(self) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
        self._synced.clear()
        self._sync_gauge.set(0)

    def _drop_if_stale(self) -> None:
        """Forget the table after stale_after_s without GoBGP (this thread is the only
        writer of the state, so the drop cannot race a new full load)."""
        down = self._down_since
        if self._had_table and down is not None and time.monotonic() - down >= self.stale_after_s:
            self._had_table = False
            self.state.clear()
            log.warning("RIB mirror: GoBGP at %s away for %.0f s: table dropped until it is back",
                        self.target, self.stale_after_s)

    def _lost(self, err: Exception) -> None:
        if self._stop.is_set():
            return
        if self.synchronized:
            self._disconnects.inc()
        else:
            self._failures.inc()
        state = "keeping the last table" if self._had_table else "no table yet"
        self._lost_log.warning("RIB mirror: %s (%s; retrying)", err, state)

    def _cancel_stream(self) -> None:
        with self._stream_lock:
            stream = self._stream
        if stream is not None:
            stream.cancel()
