"""The writer thread: inserts overlap with the service loop, a slow store holds the loop
back instead of growing memory, and nothing handed over is lost, even when the thread
fails."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support import sample_batch

from appliance.flowenricher.batch import FlowBatch
from appliance.flowenricher.storage.embedded import EmbeddedStore
from appliance.flowenricher.storage.settings import StoreSettings
from appliance.flowenricher.storage.spool import Spool
from appliance.flowenricher.storage.writer import BatchWriter
from appliance.flowenricher.storage.writer_thread import WriterStopped, WriterThread


def _numbered(first: int, n: int) -> FlowBatch:
    batch = sample_batch(n, seed=first)
    batch["observation_domain"] = np.arange(first, first + n, dtype=np.uint32)
    return batch


def _stored_ids(store: EmbeddedStore) -> list[int]:
    out = store.query("SELECT observation_domain FROM flowenricher.flows ORDER BY observation_domain", "TSV")
    return [int(x) for x in out.split()]


class _Gate:
    """Wraps a store's insert so the test decides when each insert may finish."""

    def __init__(self, store: EmbeddedStore) -> None:
        self.store = store
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_next: BaseException | None = None
        self._insert = store.insert_native

    def insert_native(self, block: bytes, rows: int, token: str | None = None) -> None:
        self.entered.set()
        assert self.release.wait(20), "the test never released the insert"
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err
        self._insert(block, rows, token)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    settings = StoreSettings(path=str(tmp_path / "data"), batch_size=1000, flush_interval_ms=60_000)
    opened = EmbeddedStore.open(settings)
    opened.migrate()
    try:
        yield opened
    finally:
        opened.close()


def _writer(store: EmbeddedStore, registry: CollectorRegistry) -> BatchWriter:
    return BatchWriter(store, store.settings, Spool.from_settings(store.settings), registry=registry)


def test_everything_handed_over_is_stored_in_order_at_close(store: EmbeddedStore) -> None:
    registry = CollectorRegistry()
    writer = WriterThread(_writer(store, registry), threading.Lock(), max_pending_rows=5000, registry=registry).start()
    for first in range(0, 4500, 300):
        writer.put(_numbered(first, 300))
    writer.close(timeout=30)
    assert _stored_ids(store) == list(range(4500))
    assert registry.get_sample_value("flowenricher_writer_queued_rows") == 0


def test_a_slow_store_holds_the_loop_back(store: EmbeddedStore) -> None:
    """put() waits once max_pending_rows are handed over and not yet taken: the loop
    slows down with the store (and the workers' queue, then the kernel, take the excess),
    memory does not grow."""
    registry = CollectorRegistry()
    gate = _Gate(store)
    writer_obj = _writer(store, registry)
    writer_obj.store = gate  # type: ignore[assignment]
    writer = WriterThread(writer_obj, threading.Lock(), max_pending_rows=2000, registry=registry).start()
    writer.put(_numbered(0, 1000))  # taken and sent: the insert blocks in the gate
    assert gate.entered.wait(10)
    writer.put(_numbered(1000, 1000))  # waits in the hand-over: 2000 rows pending now
    blocked = threading.Event()

    def third() -> None:
        writer.put(_numbered(2000, 1000))
        blocked.set()

    thread = threading.Thread(target=third)
    thread.start()
    time.sleep(0.5)
    assert not blocked.is_set(), "put() returned although 2000 rows were already pending"
    assert registry.get_sample_value("flowenricher_writer_queued_rows") == 2000
    gate.release.set()
    thread.join(10)
    assert blocked.is_set()
    writer.close(timeout=30)
    assert _stored_ids(store) == list(range(3000))


def test_a_failed_writer_stops_put_and_close_stores_what_it_held(store: EmbeddedStore,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    gate = _Gate(store)
    writer_obj = _writer(store, registry)
    writer_obj.store = gate  # type: ignore[assignment]
    gate.fail_next = MemoryError("simulated bug in the writer")
    writer = WriterThread(writer_obj, threading.Lock(), max_pending_rows=10_000, registry=registry).start()
    writer.put(_numbered(0, 1000))
    assert gate.entered.wait(10)
    writer.put(_numbered(1000, 500))
    gate.release.set()
    deadline = time.monotonic() + 10
    with pytest.raises(WriterStopped, match="simulated bug"):
        while time.monotonic() < deadline:
            writer.put(_numbered(5000, 10))
            time.sleep(0.05)
    writer.close(timeout=30)
    assert "writer thread failed" in caplog.text
    stored = _stored_ids(store)
    # The batch whose insert failed stays queued (it is added again at close: at least
    # once, like the spool), and so does everything behind it.
    assert set(range(1500)) <= set(stored)
