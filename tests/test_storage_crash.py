"""kill -9 on the write path: a child process writing the spool or inserting is killed at a
chosen point; after a restart on the same directories nothing is lost beyond the block in
flight, and no block is half there or there twice (rows counted per block, in the flows
table and in the rollups)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from appliance.flowenricher.storage import open_store
from appliance.flowenricher.storage.schema import ROLLUPS
from appliance.flowenricher.storage.settings import StoreSettings
from appliance.flowenricher.storage.spool import Spool
from appliance.flowenricher.storage.writer import BatchWriter

TESTS = Path(__file__).resolve().parent
BIG = 300_000  # rows of the block killed mid-insert: about a second to insert here

CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    sys.path.insert(0, sys.argv[3])
    import numpy as np
    from support import sample_batch
    from appliance.flowenricher.errors import StoreError
    from appliance.flowenricher.storage import open_store
    from appliance.flowenricher.storage.native import encode_block
    from appliance.flowenricher.storage.settings import StoreSettings
    from appliance.flowenricher.storage.spool import Spool
    from appliance.flowenricher.storage.writer import BatchWriter

    path, mode = sys.argv[1], sys.argv[2]
    settings = StoreSettings(path=path, batch_size=10**9)
    store = open_store(settings)
    store.migrate()
    writer = BatchWriter(store, settings, Spool.from_settings(settings))

    def block(i, n):
        b = sample_batch(n, seed=i)
        b["observation_domain"] = np.full(n, i, np.uint32)  # the block's number, on each row
        return b

    for i in (1, 2):
        writer.add(block(i, 1000))
        writer.flush()
    if mode in ("before-rename", "after-rename"):
        def refuse(*args, **kwargs):
            raise StoreError("test: the store is away")
        store.insert_native = refuse  # block 3 goes to the spool
        real_rename = os.rename
        def rename(src, dst):
            if mode == "before-rename":
                os.kill(os.getpid(), signal.SIGKILL)
            real_rename(src, dst)
            os.kill(os.getpid(), signal.SIGKILL)
        os.rename = rename
        writer.add(block(3, 1000))
        writer.flush()
    else:  # mid-insert: block 3 waits in the spool, its replay is killed while inserting
        writer.spool.push(encode_block(block(3, int(sys.argv[4]))), int(sys.argv[4]), "crash-3")
        print("inserting", flush=True)
        writer.flush()
        print("done", flush=True)
    time.sleep(60)
    """
)


def _run_child(data: Path, mode: str, kill_after_s: float) -> str:
    argv = [sys.executable, "-c", CHILD, str(data), mode, str(TESTS), str(BIG)]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if mode == "mid-insert":
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.strip() == "inserting", child.stderr.read() if child.stderr else ""
            time.sleep(kill_after_s)
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
    return child.stdout.read() if child.stdout else ""  # "done": the insert ended before the kill


@pytest.mark.parametrize(
    ("mode", "kill_after_s", "expected"),
    [
        ("before-rename", 0, {1: 1000, 2: 1000}),  # block 3 was in flight: lost, nothing half-written
        ("after-rename", 0, {1: 1000, 2: 1000, 3: 1000}),  # spooled: replayed at restart
        # Still spooled: replayed, stored once.  Seen here (idle machine, the insert took
        # about 1.3 s) when killed after 0.3 s: nothing of block 3 stored yet; 0.6 s: the
        # flows table had it, the rollups not; 0.9 s: every table had it, the spool file
        # was still there.  The first case is after-rename's; the other two need the token.
        ("mid-insert", 0.6, {1: 1000, 2: 1000, 3: BIG}),
        ("mid-insert", 0.9, {1: 1000, 2: 1000, 3: BIG}),
    ],
)
def test_kill_9_on_the_write_path_loses_at_most_the_block_in_flight(
    tmp_path: Path, mode: str, kill_after_s: float, expected: dict[int, int]
) -> None:
    data = tmp_path / "data"
    _run_child(data, mode, kill_after_s)

    settings = StoreSettings(path=str(data))
    spool_dir = Path(settings.spool_path)
    store = open_store(settings)  # the restart
    try:
        store.migrate()
        writer = BatchWriter(store, settings, Spool.from_settings(settings))
        assert not [n for n in os.listdir(spool_dir) if n.startswith(".tmp-")]
        writer.close()
        assert len(writer.spool) == 0
        rows = store.query(
            "SELECT observation_domain, count() FROM flowenricher.flows GROUP BY 1 ORDER BY 1", "TSV"
        ).decode()
        assert {int(k): int(v) for k, v in (line.split("\t") for line in rows.splitlines())} == expected
        for r in ROLLUPS:
            total = store.query(f"SELECT sum(flows) FROM flowenricher.flows_{r.suffix}", "TSV")
            assert int(total) == sum(expected.values()), r.suffix
    finally:
        store.close()
