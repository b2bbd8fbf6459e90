"""The storing process's memory, part by part: each gauge says what its part holds, checked
against what tracemalloc sees allocated for it (numpy and Python objects are traced), and
the queue gauges return to zero whatever happened to the batches meanwhile.

These are the figures an operator reads to see where the memory goes (issue 17, point 2):
a gauge that drifts or counts a tenth of its part would send them the wrong way."""

from __future__ import annotations

import gc
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support import sample_batch

from appliance.flowenricher.batch import FlowBatch
from appliance.flowenricher.bgp.rib import RibState, rib_bytes_gauge
from appliance.flowenricher.bgp.route import RouteAttributes, RouteParts, address_bytes, prefix_key, route_parts
from appliance.flowenricher.enrich.geo import _AnswerCache
from appliance.flowenricher.handoff import HandOff
from appliance.flowenricher.storage.embedded import EmbeddedStore
from appliance.flowenricher.storage.native import encode_block
from appliance.flowenricher.storage.settings import StoreSettings
from appliance.flowenricher.storage.spool import Spool
from appliance.flowenricher.storage.writer import BatchWriter


def _traced(build: Callable[[], object]) -> tuple[object, int]:
    """What `build` returns and the bytes still allocated for it afterwards."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        built = build()
        gc.collect()
        return built, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def _routes(n: int, seed: int) -> list[tuple[bytes, RouteParts]]:
    rng = np.random.default_rng(seed)
    nets = np.unique(rng.integers(0x01000000, 0xDF000000, n * 2, dtype=np.uint32) & 0xFFFFFF00)[:n]
    hops = [address_bytes(f"192.0.2.{i}") for i in range(1, 5)]
    out = []
    for i, net in enumerate(nets.tolist()):
        route = RouteAttributes((64500, 64500 + i % 1000, 1000 + i % 5000), 1000 + i % 5000, 64500, hops[i % 4],
                                100, (64500 << 16 | i % 7,))
        out.append((prefix_key(int(net).to_bytes(4, "big"), 24), route_parts(route)))
    return out


def test_rib_bytes_are_what_the_table_holds() -> None:
    routes = _routes(60_000, seed=1)

    def build() -> RibState:
        state = RibState()
        builder = state.new_builder()
        builder.extend(routes)
        state.replace(builder)
        state.view()
        return state

    state, traced = _traced(build)
    assert isinstance(state, RibState)
    counted = state.nbytes()
    assert len(state.view()) == 60_000
    # The arrays are the table; what tracemalloc sees beyond them is the state's few objects.
    assert 0.85 * traced <= counted <= 1.15 * traced, (counted, traced)


def test_rib_gauge_counts_changes_and_a_load_in_progress() -> None:
    registry = CollectorRegistry()
    state = RibState(merge_rows=1_000_000)
    loading: list[object] = [None]
    rib_bytes_gauge(registry, state, lambda: loading[0])  # type: ignore[arg-type, return-value]
    builder = state.new_builder()
    builder.extend(_routes(20_000, seed=2))
    state.replace(builder)
    base = registry.get_sample_value("flowenricher_rib_bytes")
    assert base == state.nbytes() > 20_000 * 18

    changes = _routes(5_000, seed=3)
    state.apply((key, RouteAttributes(*parts)) for key, parts in changes)
    with_changes = registry.get_sample_value("flowenricher_rib_bytes")
    assert with_changes is not None and with_changes - base >= 5_000 * 135  # the pending index, at least

    listing = state.new_builder()
    listing.extend(_routes(10_000, seed=4))
    loading[0] = listing
    during = registry.get_sample_value("flowenricher_rib_bytes")
    assert during is not None and during - with_changes == listing.nbytes >= 10_000 * (18 + 4 * 4)


@pytest.mark.parametrize("distinct", [3000, 40_000])
def test_geoip_cache_estimate_is_near_what_it_holds(distinct: int) -> None:
    raw = np.random.default_rng(5).integers(0, 256, (40_000, 16), dtype=np.uint8).tobytes()

    def build() -> _AnswerCache:
        """As enrichment fills it: a key object per address, an answer tuple per lookup."""
        cache = _AnswerCache(200_000)
        for i in range(40_000):
            j = i % distinct
            answer = (64500 + j, f"Org {j:05d} Networks", "FR", f"City {j % 500}")
            cache.add(raw[16 * i:16 * i + 16], answer)
        return cache

    cache, traced = _traced(build)
    assert isinstance(cache, _AnswerCache)
    assert cache.entries == 40_000
    assert 0.7 * traced <= cache.nbytes <= 1.3 * traced, (cache.nbytes, traced)


def test_queued_bytes_follow_the_batches_and_return_to_zero() -> None:
    """The bytes are taken when a batch is handed over: the stage reading a default column
    (which adds it to the batch) must not leave the gauge off when the batch is done."""
    registry = CollectorRegistry()
    release = threading.Event()
    taken = threading.Event()

    def process(item: object) -> None:
        assert isinstance(item, FlowBatch)
        taken.set()
        assert release.wait(20)
        for name in ("observation_domain", "src_mac", "post_nat_src_addr"):
            item[name]  # materialises a default column: the batch grows

    stage = HandOff("consumers", process, max_pending_rows=100_000, registry=registry).start()
    first, second = sample_batch(1000, seed=1), sample_batch(3000, seed=2)
    sizes = first.nbytes + second.nbytes
    stage.put(first)
    assert taken.wait(10)
    stage.put(second)
    assert registry.get_sample_value("flowenricher_consumers_queued_bytes") == sizes
    assert registry.get_sample_value("flowenricher_consumers_queued_rows") == 4000
    release.set()
    stage.close(timeout=20)
    assert first.nbytes > sizes - second.nbytes  # the batches did grow
    assert registry.get_sample_value("flowenricher_consumers_queued_bytes") == 0
    assert registry.get_sample_value("flowenricher_consumers_queued_rows") == 0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedStore]:
    opened = EmbeddedStore.open(StoreSettings(path=str(tmp_path / "data"), batch_size=10_000,
                                              flush_interval_ms=60_000))
    opened.migrate()
    yield opened
    opened.close()


def test_writer_pending_bytes_are_the_encoded_blocks(store: EmbeddedStore) -> None:
    registry = CollectorRegistry()
    writer = BatchWriter(store, store.settings, Spool.from_settings(store.settings), registry=registry)
    batches = [sample_batch(1500, seed=i) for i in range(2)]
    writer.add(batches[0])
    writer.add(batches[1])
    expected = sum(len(encode_block(b)) for b in batches)
    assert registry.get_sample_value("flowenricher_store_pending_bytes") == expected
    writer.flush()
    assert registry.get_sample_value("flowenricher_store_pending_bytes") == 0
    assert registry.get_sample_value("flowenricher_store_pending_rows") == 0
    writer.close()


def test_engine_bytes_read_from_chdb_and_never_wait_for_a_query(store: EmbeddedStore) -> None:
    idle = store.engine_memory_bytes()
    assert idle is not None and idle > 0
    store.insert(sample_batch(20_000, seed=9))
    assert (store.engine_memory_bytes() or 0) > 0
    with store._read_lock:  # a long query holds the reader: the last figure, at once
        done = threading.Event()
        got: list[int | None] = []

        def read() -> None:
            got.append(store.engine_memory_bytes())
            done.set()

        threading.Thread(target=read, daemon=True).start()
        assert done.wait(2), "engine_memory_bytes waited for the reader"
    assert got[0] is not None and got[0] > 0
