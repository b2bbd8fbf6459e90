"""The files the service keeps (state DB and its WAL, spool, decoder state, anomaly model,
logs) are 0600 and their directories 0700 under the usual umask 022, including when made
through the real `flowenricher token create` command line; a state DB an older version
left world-readable is tightened when opened."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.flowenricher.blackhole.state import StateDB
from appliance.flowenricher.common.private import open_private, private_dir, private_file
from appliance.flowenricher.decode.dispatch import FlowDecoder, save_state
from appliance.flowenricher.detect.actions import BlackholeNotifier
from appliance.flowenricher.detect.anomaly import AnomalyModel
from appliance.flowenricher.detect.features import FEATURE_NAMES
from appliance.flowenricher.storage.spool import Spool

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_state_db_and_its_wal_are_private(tmp_path: Path, umask_022: None) -> None:
    db = tmp_path / "data" / "state.db"
    state = StateDB(f"sqlite:///{db}")
    try:
        from appliance.api.tokens import create_token

        create_token(state.engine, "read", "probe")  # a write: the WAL and its index exist while open
        assert Path(f"{db}-wal").exists() and Path(f"{db}-shm").exists()
        assert (mode(db.parent), mode(db), mode(f"{db}-wal"), mode(f"{db}-shm")) == (0o700, 0o600, 0o600, 0o600)
    finally:
        state.close()


def test_a_world_readable_state_db_is_tightened(tmp_path: Path, umask_022: None) -> None:
    db = tmp_path / "state.db"
    StateDB(f"sqlite:///{db}").close()
    db.chmod(0o644)  # as an older version left it
    StateDB(f"sqlite:///{db}").close()
    assert mode(db) == 0o600


def test_spool_decoder_state_model_and_logs_are_private(tmp_path: Path, umask_022: None) -> None:
    spool = Spool(str(tmp_path / "spool"), max_bytes=1 << 20, max_age_s=3600)
    spool.push(b"block", 1, "token")
    [entry] = spool.entries()
    spool.reject(entry, "refused by the server")
    rejected = tmp_path / "spool" / "rejected"
    assert mode(tmp_path / "spool") == 0o700 and mode(rejected) == 0o700
    assert sorted(mode(p) for p in rejected.iterdir()) == [0o600, 0o600]

    state = tmp_path / "decoder" / "worker-0.json"
    private_dir(state.parent)
    save_state(FlowDecoder(), state)
    assert (mode(state.parent), mode(state)) == (0o700, 0o600)

    model = tmp_path / "models" / "anomaly.joblib"
    AnomalyModel.train(np.random.default_rng(0).random((50, len(FEATURE_NAMES)))).save(model)
    assert (mode(model.parent), mode(model)) == (0o700, 0o600)

    log = tmp_path / "detections.log"
    BlackholeNotifier(alerts_log=log).blackhole_notice("announce", "203.0.113.7/32", "rule", "scan", "")
    assert mode(log) == 0o600 and '"event":"blackhole"' in log.read_text(encoding="utf-8")


def test_open_private_refuses_a_read_mode_and_keeps_a_missing_directory_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not write"):
        open_private(tmp_path / "x", "r")
    with pytest.raises(FileNotFoundError):
        open_private(tmp_path / "missing" / "x.log", "a")
    assert mode(private_file(tmp_path / "made" / "x.db")) == 0o600


def test_token_create_on_the_command_line_makes_a_private_state_db(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"storage:\n  path: {tmp_path / 'data'}\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        ["sh", "-c", 'umask 022 && exec "$0" -m appliance.cli token create --scope read '
         '--name probe --config "$1"', sys.executable, str(config)],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    db = tmp_path / "data" / "state.db"
    assert (mode(db.parent), mode(db)) == (0o700, 0o600)
