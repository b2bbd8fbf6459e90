"""Anomaly scores of sources: an Isolation Forest over per-source window features.

:class:`AnomalyModel` is one trained forest with its metadata (feature names, format
version, scikit-learn version, baseline size, suggested threshold), saved atomically
with joblib and refused on load when it does not fit this code.  Scores are the
Isolation Forest paper's ``s(x, n) = 2 ** (-E(h(x)) / c(n))`` in 0..1 (about 0.5 and
below: ordinary; towards 1: isolated in few splits), computed by a packed copy of the
trees that walks every tree at once with numpy (sklearn's own scorer loops over trees in
Python, about 6 ms for 1,000 vectors here; this one is under 4 ms and gives the same
numbers).

:class:`AnomalyScoring` is the running part: it reduces every enriched batch into
per-source windows (features.py), scores each window as it closes, stores the scores
(``anomaly_scores`` table), answers the engine's scorer hook for rules with
``min_ml_score``, and retrains on a rolling baseline of source-windows that had no
detection, every ``train_interval``, in a background thread.  The baseline period is the
ring itself: a source named by a detection loses every one of its windows still in the
ring (also those added before the detection arrived), and its windows open around the
detection never enter it, so a scanner detected once trains none of its windows.  A new model (trained
here, or a file replaced by the operator) is swapped in without a restart; a missing or
corrupt model file turns scoring off with one log line, and rules keep running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt
import sklearn
from prometheus_client import CollectorRegistry, Counter, Gauge
from sklearn.ensemble import IsolationForest

from ..batch import FlowBatch, str_to_addr
from ..common.private import private_dir
from ..enrich.base import addr_halves
from ..errors import FlowEnricherError
from ..storage.tables import ANOMALY_SCORES
from .detection import Detection
from .features import FEATURE_NAMES, FeatureWindows, WindowFeatures
from .settings import AnomalySettings

__all__ = ["MODEL_FORMAT", "AnomalyModel", "AnomalyScoring", "ModelError",
           "ScoringUnavailable", "insert_scores_sql", "transform"]

log = logging.getLogger(__name__)

MODEL_FORMAT = 1
"""Version of the saved model's layout; a file of another version is refused."""

_INSERT_ROWS = 20_000  # rows per INSERT statement

F64 = npt.NDArray[np.float64]
U64 = npt.NDArray[np.uint64]
_MIX = np.uint64(0x9E3779B97F4A7C15)
_FIRST_TRAIN_RETRY_S = 60.0
_GRACE_S = 2.0  # how long after its end the service closes a window
_CHUNK = 4096  # vectors scored at once (4096 x 100 trees x 8 bytes: 3 MB per working array)


class ModelError(FlowEnricherError):
    """A model file that cannot be used: missing, unreadable, or made for other features."""


class ScoringUnavailable(FlowEnricherError):
    """No model is loaded (scoring is off, or the baseline has not trained one yet)."""


def transform(vectors: npt.ArrayLike) -> F64:
    """What the forest sees: log(1 + x) of every feature.  Rates and counts span orders of
    magnitude (one DNS query a minute to a backup at line rate); on a log scale the
    forest's uniform split points fall where sources actually differ."""
    array = np.asarray(vectors, dtype=np.float64)
    out: F64 = np.log1p(np.maximum(array, 0.0))
    return out


def _average_path(n: npt.NDArray[Any]) -> F64:
    """c(n): the average path length of an unsuccessful search in a binary tree of n
    points (the paper's normaliser; 1 for n = 2, 0 below)."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    out[n == 2] = 1.0
    return out


class _PackedForest:
    """Every tree's nodes in flat arrays, walked level by level for all trees and vectors
    at once.  Leaves loop onto themselves, so a fixed number of steps (the deepest tree)
    lands every walk on its leaf, whose value is its depth plus c(points left there)."""

    def __init__(self, forest: IsolationForest) -> None:
        children, features, thresholds, values, roots = [], [], [], [], []
        offset, depth = 0, 0
        for tree_est, used in zip(forest.estimators_, forest.estimators_features_, strict=True):
            tree = tree_est.tree_
            count = int(tree.node_count)
            left, right = tree.children_left.astype(np.int64), tree.children_right.astype(np.int64)
            leaf = left < 0
            level = np.zeros(count, dtype=np.float64)
            frontier = np.array([0])
            step = 0
            while len(frontier):
                level[frontier] = step
                inner = frontier[~leaf[frontier]]
                frontier = np.concatenate([left[inner], right[inner]])
                step += 1
            depth = max(depth, step - 1)
            own = np.arange(count, dtype=np.int64)
            # children[2 * node + went_left]: the right child first, the left one second.
            pair = np.stack([np.where(leaf, own, right), np.where(leaf, own, left)], axis=1) + offset
            children.append(pair.ravel())
            features.append(np.where(leaf, 0, np.asarray(used)[np.maximum(tree.feature, 0)]))
            thresholds.append(np.where(leaf, np.inf, tree.threshold))
            values.append(np.where(leaf, level + _average_path(tree.n_node_samples), 0.0))
            roots.append(offset)
            offset += count
        self.children = np.concatenate(children).astype(np.intp)
        self.features = np.concatenate(features).astype(np.intp)
        self.thresholds = np.concatenate(thresholds).astype(np.float64)
        self.values = np.concatenate(values)
        self.roots = np.array(roots, dtype=np.intp)
        self.depth = depth
        self.norm = float(_average_path(np.array([forest.max_samples_]))[0])

    def score(self, x: F64) -> F64:
        """Scores of the rows of `x` (transformed features), a chunk at a time: the walk
        holds (rows x trees) node numbers, which must stay small for a window of 50,000
        sources."""
        if len(x) <= _CHUNK:
            return self._score(x)
        return np.concatenate([self._score(x[at:at + _CHUNK]) for at in range(0, len(x), _CHUNK)])

    def _score(self, x: F64) -> F64:
        # sklearn compares float32 features with float64 thresholds: so do we.
        x = np.ascontiguousarray(x, dtype=np.float32).astype(np.float64)
        n, width = x.shape
        trees = len(self.roots)
        if not n:
            return np.zeros(0)
        node = np.repeat(self.roots, n)
        base = np.tile(np.arange(n, dtype=np.intp) * width, trees)
        flat = x.ravel()
        for _ in range(self.depth):
            went_left = np.take(flat, base + np.take(self.features, node)) <= np.take(self.thresholds, node)
            node = np.take(self.children, 2 * node + went_left)
        mean_path = np.take(self.values, node).reshape(trees, n).mean(axis=0)
        scores: F64 = 2.0 ** (-mean_path / self.norm)
        return scores


@dataclass
class AnomalyModel:
    """A trained forest and what it was trained on."""

    forest: IsolationForest
    feature_names: tuple[str, ...]
    trained_at: float
    samples: int
    sklearn_version: str = sklearn.__version__
    threshold: float = 0.5
    _packed: _PackedForest | None = field(default=None, repr=False)

    @classmethod
    def train(cls, vectors: npt.ArrayLike, *, contamination: float | str = "auto", trees: int = 100,
              max_samples: int = 256, seed: int | None = None, now: float | None = None,
              feature_names: tuple[str, ...] = FEATURE_NAMES) -> AnomalyModel:
        """A forest of `trees` trees on `vectors` (rows in `feature_names` order: the
        service's FEATURE_NAMES; the evaluation trains on fewer to compare)."""
        x = transform(vectors)
        if x.ndim != 2 or x.shape[1] != len(feature_names):
            raise ValueError(f"vectors must have {len(feature_names)} columns, not shape {x.shape}")
        if len(x) < 2:
            raise ValueError("at least 2 vectors are needed to train")
        forest = IsolationForest(n_estimators=trees, max_samples=min(max_samples, len(x)),
                                 contamination=contamination, random_state=seed).fit(x)
        return cls(forest, feature_names, time.time() if now is None else now, len(x),
                   threshold=float(-forest.offset_))

    def score(self, vectors: npt.ArrayLike) -> F64:
        """Scores in 0..1 of `vectors` (raw features, FEATURE_NAMES order)."""
        if self._packed is None:
            self._packed = _PackedForest(self.forest)
        x = transform(vectors)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"vectors must have {len(self.feature_names)} columns, not shape {x.shape}")
        return self._packed.score(x)

    def metadata(self) -> dict[str, Any]:
        return {"format": MODEL_FORMAT, "feature_names": list(self.feature_names), "trained_at": self.trained_at,
                "samples": self.samples, "sklearn_version": self.sklearn_version, "threshold": self.threshold,
                "trees": len(self.forest.estimators_)}

    def save(self, path: Path) -> None:
        """Write the model to `path` atomically (a temporary file in the same directory,
        then rename): a reader sees the old file or the new one, never half of one."""
        private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                joblib.dump({**self.metadata(), "model": self.forest}, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: Path) -> AnomalyModel:
        """The model saved at `path`; ModelError says why it cannot be used."""
        if not path.exists():
            raise ModelError(f"{path}: no model file")
        try:
            data = joblib.load(path)
        except Exception as err:  # pickle raises anything on a damaged file
            raise ModelError(f"{path}: not a readable model file ({type(err).__name__}: {err})") from err
        if not isinstance(data, dict) or not isinstance(data.get("model"), IsolationForest):
            raise ModelError(f"{path}: not a flowenricher anomaly model (no IsolationForest inside)")
        if data.get("format") != MODEL_FORMAT:
            raise ModelError(f"{path}: model format {data.get('format')!r}, this version reads {MODEL_FORMAT}")
        names = tuple(data.get("feature_names") or ())
        if names != FEATURE_NAMES:
            raise ModelError(f"{path}: trained on features {list(names)}, this version computes {list(FEATURE_NAMES)}")
        forest: IsolationForest = data["model"]
        if getattr(forest, "n_features_in_", None) != len(FEATURE_NAMES):
            raise ModelError(f"{path}: the forest takes {getattr(forest, 'n_features_in_', '?')} features, "
                             f"not {len(FEATURE_NAMES)}")
        version = str(data.get("sklearn_version", "?"))
        if version != sklearn.__version__:
            log.warning("anomaly: %s was trained with scikit-learn %s, running %s", path, version, sklearn.__version__)
        model = cls(forest, names, float(data.get("trained_at", 0.0)), int(data.get("samples", 0)), version,
                    float(data.get("threshold", 0.5)))
        try:
            model._packed = _PackedForest(forest)
        except Exception as err:
            raise ModelError(f"{path}: the forest inside is damaged ({type(err).__name__}: {err})") from err
        return model


# --------------------------------------------------------------------------- storage


def insert_scores_sql(database: str, window: WindowFeatures, scores: F64, rows: npt.NDArray[np.intp]) -> str:
    """One INSERT of the scores of `rows` of `window` (addresses as their 16 stored bytes)."""
    names = window.names
    return ANOMALY_SCORES.insert_sql(database, [
        {"ts": int(window.start), "window_s": int(window.window_s), "src_addr": window.sources[i].tobytes(),
         "score": float(scores[i]), "exporter_address": window.exporters[i].tobytes(),
         "features": dict(zip(names, window.vectors[i].tolist(), strict=True))}
        for i in rows.tolist()
    ])


# --------------------------------------------------------------------------- the running part


def _address_keys(hi: U64, lo: U64) -> U64:
    keys: U64 = (hi * _MIX) ^ lo
    return keys


class AnomalyScoring:
    """Scores sources per window with the current model and keeps the model trained.

    Used by the service as a batch consumer (`process`), a ticker (`tick`), the engine's
    scorer (`score_addresses`) and a detection listener (`note_detection`); the API
    scores vectors through `score_vectors`.  `execute` runs SQL on the store (None: scores
    are not stored).  Thread-safe.
    """

    def __init__(self, settings: AnomalySettings, registry: CollectorRegistry | None = None, *,
                 execute: Callable[[str], object] | None = None, database: str = "flowenricher",
                 clock: Callable[[], float] = time.time, seed: int | None = None) -> None:
        if settings.model_path is None:
            raise ValueError("anomaly: model_path is required")
        self.settings = settings
        self.model_path = Path(settings.model_path)
        self._lock = threading.RLock()
        self._windows = FeatureWindows(int(settings.window_s), int(settings.history_windows))
        self._clock = clock
        self._seed = seed
        self.model: AnomalyModel | None = None
        self._file_state: tuple[int, int] | None = None  # (mtime_ns, size) of the file read or written
        self._next_file_check = 0.0
        # Latest scores by source: sorted address keys, and their scores.
        self._score_keys: U64 = np.zeros(0, dtype=np.uint64)
        self._score_values: F64 = np.zeros(0)
        # Rolling baseline: a ring of vectors of windows without detections.  Each row keeps
        # its source's key so that a detection arriving after the row was added can still
        # take it out (`_clean` False): the detection is usually made on the same window.
        size = int(settings.baseline_size)
        self._baseline = np.zeros((size, len(FEATURE_NAMES)), dtype=np.float64)
        self._baseline_keys: U64 = np.zeros(size, dtype=np.uint64)
        self._clean = np.zeros(size, dtype=bool)
        self._baseline_count = 0  # rows written so far (the ring wraps)
        self._detected: dict[int, float] = {}  # address key -> last time it was in a detection
        self._newly_detected: set[int] = set()  # keys whose rows already in the ring are still to drop
        self._last_train = float("-inf")
        self._training: threading.Thread | None = None
        self._execute = execute
        self._database = database
        self._outbox: queue.Queue[tuple[WindowFeatures, F64, npt.NDArray[np.intp]] | None] = queue.Queue(maxsize=16)
        self._writer: threading.Thread | None = None
        self._scored = Counter("flowenricher_anomaly_scored", "Source-windows scored", registry=registry)
        self._trained = Counter("flowenricher_anomaly_trainings", "Models trained from the baseline",
                                registry=registry)
        self._store_dropped = Counter("flowenricher_anomaly_store_dropped",
                                      "Scored source-windows not stored (store queue full or insert failed)",
                                      registry=registry)
        self._late = Counter("flowenricher_anomaly_late_flows", "Flows of a window already closed (not counted)",
                             registry=registry)
        self._baseline_gauge = Gauge("flowenricher_anomaly_baseline", "Source-windows in the training baseline",
                                     registry=registry)
        self._loaded_gauge = Gauge("flowenricher_anomaly_model_loaded", "1 while a model scores sources",
                                   registry=registry)
        self._seconds = Counter("flowenricher_anomaly_seconds", "Time spent on features and scoring",
                                registry=registry)
        self._load_model(initial=True)
        if self.model is not None:
            self._last_train = clock()  # the next training in train_interval; without a model, at once
        if execute is not None and settings.store_scores:
            self._writer = threading.Thread(target=self._write_loop, name="anomaly-store", daemon=True)
            self._writer.start()

    # ------------------------------------------------------------------ model

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.model_path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _load_model(self, initial: bool = False) -> None:
        """Read the model file; on any problem scoring goes off with one log line."""
        state = self._stat()
        if state is None and initial:
            log.info("anomaly: no model at %s yet; scoring starts once the baseline holds %d source-windows "
                     "(trained every %gs)", self.model_path, self.settings.min_baseline,
                     self.settings.train_interval_s)
            self._file_state = None
            return
        try:
            model = AnomalyModel.load(self.model_path)
        except ModelError as err:
            with self._lock:
                self.model = None
                self._file_state = state
                self._loaded_gauge.set(0)
            log.error("anomaly: %s; anomaly scoring is off until a valid model is trained or installed "
                      "(rules keep running)", err)
            return
        with self._lock:
            self.model, self._file_state = model, state
            self._loaded_gauge.set(1)
        log.info("anomaly: model loaded from %s (%d trees, %d baseline vectors, trained %s)", self.model_path,
                 len(model.forest.estimators_), model.samples,
                 time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(model.trained_at)))

    def check_model_file(self) -> None:
        """Load the model file again if it changed on disk since it was last read or written."""
        with self._lock:  # install() writes the file and its state under the lock
            state = self._stat()
            if state == self._file_state:
                return
            if state is None:
                self._file_state = None
                log.warning("anomaly: model file %s was removed; the loaded model keeps scoring", self.model_path)
                return
        self._load_model()

    def install(self, model: AnomalyModel) -> None:
        """Save `model` to the model path and score with it from now on (under the lock, so
        the file check of a tick never takes our own new file for someone else's)."""
        with self._lock:
            model.save(self.model_path)
            self.model, self._file_state = model, self._stat()
            self._loaded_gauge.set(1)

    # ------------------------------------------------------------------ input

    def process(self, batch: FlowBatch) -> None:
        """Count a batch into its windows (the service's batch consumer)."""
        began = time.perf_counter()
        with self._lock:
            late = self._windows.late
            self._windows.add(batch)
            if self._windows.late != late:
                self._late.inc(self._windows.late - late)
        self._seconds.inc(time.perf_counter() - began)

    def note_detection(self, detection: Detection) -> None:
        """A detection's source stays out of the baseline: its windows already in the ring
        are dropped (at the next `advance` or training, in one pass for all detections since)
        and its windows open around the detection never enter it."""
        if detection.key != "src":
            return
        hi, lo = addr_halves(np.frombuffer(str_to_addr(detection.address), dtype=np.uint8).reshape(1, 16))
        key = int(_address_keys(hi, lo)[0])
        with self._lock:
            self._detected[key] = max(self._detected.get(key, 0.0), detection.detected_at)
            self._newly_detected.add(key)

    def _drop_detected(self) -> None:
        """Take the rows of the sources detected since the last call out of the baseline
        (under the lock)."""
        if not self._newly_detected:
            return
        filled = self._filled
        keys = np.fromiter(self._newly_detected, dtype=np.uint64, count=len(self._newly_detected))
        self._newly_detected.clear()
        self._clean[:filled] &= ~np.isin(self._baseline_keys[:filled], keys)
        self._baseline_gauge.set(self.baseline_size)

    def tick(self, now: float | None = None) -> None:
        """The service's once-a-second call: `advance` to a little before `now`, so that
        flows received just before a window ended (still in a worker's batch or the
        queue) count in it instead of arriving late."""
        self.advance((self._clock() if now is None else now) - _GRACE_S)

    def advance(self, now: float) -> list[tuple[WindowFeatures, F64]]:
        """Close the windows that ended by `now`, score and store them, grow the baseline,
        and start a training when one is due.  Returns what was scored (NaN: below
        min_flows, or no model)."""
        began = time.perf_counter()
        if now >= self._next_file_check:
            self._next_file_check = now + 5.0
            self.check_model_file()
        out: list[tuple[WindowFeatures, F64]] = []
        with self._lock:
            self._drop_detected()
            for window in self._windows.close(now):
                scored = self._close_window(window)
                if scored is not None:
                    out.append(scored)
            # The first model is trained as soon as the baseline is large enough (retried
            # every minute if that fails); later ones every train_interval.
            interval = self.settings.train_interval_s if self.model is not None else min(
                self.settings.train_interval_s, _FIRST_TRAIN_RETRY_S)
            due = now - self._last_train >= interval
            if due and self._training is None and self.baseline_size >= self.settings.min_baseline:
                self._last_train = now
                self._training = threading.Thread(target=self._train, args=(self.baseline(), now),
                                                  name="anomaly-train", daemon=True)
                self._training.start()
            horizon = now - 2 * self.settings.window_s
            self._detected = {k: t for k, t in self._detected.items() if t >= horizon}
        self._seconds.inc(time.perf_counter() - began)
        return out

    def _close_window(self, window: WindowFeatures) -> tuple[WindowFeatures, F64] | None:
        keep = np.flatnonzero(window.flows >= self.settings.min_flows)
        if not len(keep):
            return None
        hi, lo = addr_halves(np.ascontiguousarray(window.sources[keep]))
        keys = _address_keys(hi, lo)
        # Baseline: sources that no detection named while this window was open (or just after).
        end = window.start + window.window_s
        flagged = np.array([k for k, t in self._detected.items() if window.start <= t <= end + window.window_s],
                           dtype=np.uint64)
        clean = ~np.isin(keys, flagged) if len(flagged) else np.ones(len(keep), dtype=bool)
        self._add_baseline(window.vectors[keep[clean]], keys[clean])
        scores = np.full(len(window), np.nan)
        if self.model is not None:
            scores[keep] = self.model.score(window.vectors[keep])
            self._scored.inc(len(keep))
            order = np.argsort(keys)
            self._score_keys, self._score_values = keys[order], scores[keep][order]
            stored = keep[scores[keep] >= self.settings.store_min_score]
            if self._writer is not None and len(stored):
                self._store(window, scores, stored)
        return window, scores

    def _add_baseline(self, vectors: F64, keys: U64) -> None:
        size = len(self._baseline)
        if not size or not len(vectors):
            return
        vectors, keys = vectors[-size:], keys[-size:]
        at = (self._baseline_count + np.arange(len(vectors))) % size
        self._baseline[at] = vectors
        self._baseline_keys[at] = keys
        self._clean[at] = True
        self._baseline_count += len(vectors)
        self._baseline_gauge.set(self.baseline_size)

    @property
    def _filled(self) -> int:
        return min(self._baseline_count, len(self._baseline))

    @property
    def baseline_size(self) -> int:
        """Source-windows a training would use (rows of detected sources not counted)."""
        with self._lock:
            return int(np.count_nonzero(self._clean[:self._filled]))

    def baseline(self) -> F64:
        """A copy of the baseline vectors: the ring's rows of sources no detection named."""
        with self._lock:
            self._drop_detected()
            filled = self._filled
            return self._baseline[:filled][self._clean[:filled]]

    def _train(self, vectors: F64, now: float) -> None:
        try:
            began = time.perf_counter()
            model = AnomalyModel.train(vectors, contamination=self.settings.contamination, trees=self.settings.trees,
                                       max_samples=self.settings.tree_samples, seed=self._seed, now=now)
            self.install(model)
            self._trained.inc()
            log.info("anomaly: trained on %d source-windows in %.2fs; saved to %s (suggested min_ml_score %.3f)",
                     len(vectors), time.perf_counter() - began, self.model_path, model.threshold)
        except Exception:
            log.exception("anomaly: training failed; the previous model (if any) keeps scoring")
        finally:
            with self._lock:
                self._training = None

    def train_now(self) -> AnomalyModel:
        """Train on the baseline at once, in this thread (the API, tests)."""
        vectors = self.baseline()
        if len(vectors) < 2:
            raise ScoringUnavailable(f"the baseline holds {len(vectors)} source-window(s); at least 2 are needed")
        model = AnomalyModel.train(vectors, contamination=self.settings.contamination, trees=self.settings.trees,
                                   max_samples=self.settings.tree_samples, seed=self._seed, now=self._clock())
        self.install(model)
        self._trained.inc()
        return model

    def wait_training(self, timeout_s: float = 30.0) -> bool:
        """Wait for a background training to finish; False if it is still running."""
        thread = self._training
        if thread is not None:
            thread.join(timeout_s)
            return not thread.is_alive()
        return True

    # ------------------------------------------------------------------ output

    def score_addresses(self, key: str, addresses: Sequence[str]) -> list[float | None]:
        """The engine's scorer hook: each source's score in its latest scored window, None
        when it has none (no model yet, or not seen in that window).  Scores are per
        source: key "dst" gets None throughout (the rules schema says so of min_ml_score)."""
        if key != "src":
            return [None] * len(addresses)
        if not addresses:
            return []
        rows = np.frombuffer(b"".join(str_to_addr(a) for a in addresses), dtype=np.uint8).reshape(-1, 16)
        keys = _address_keys(*addr_halves(rows))
        with self._lock:
            known, values = self._score_keys, self._score_values
        if not len(known):
            return [None] * len(addresses)
        at = np.minimum(np.searchsorted(known, keys), len(known) - 1)
        found = known[at] == keys
        return [float(values[i]) if ok else None for i, ok in zip(at.tolist(), found.tolist(), strict=True)]

    def score_vectors(self, vectors: npt.ArrayLike) -> F64:
        """Scores of raw feature vectors with the current model; ScoringUnavailable without one."""
        model = self.model
        if model is None:
            raise ScoringUnavailable("no anomaly model is loaded")
        return model.score(vectors)

    def status(self) -> dict[str, Any]:
        """What the API shows: the model's metadata (or null), baseline size, settings."""
        model = self.model
        return {"model": model.metadata() if model is not None else None, "model_path": str(self.model_path),
                "baseline": self.baseline_size, "min_baseline": self.settings.min_baseline,
                "window_s": self.settings.window_s, "train_interval_s": self.settings.train_interval_s,
                "feature_names": list(FEATURE_NAMES)}

    # ------------------------------------------------------------------ storage

    def _store(self, window: WindowFeatures, scores: F64, rows: npt.NDArray[np.intp]) -> None:
        """Queue the rows for the writer thread (which also builds the SQL: a busy window
        has tens of thousands of sources, and the tick must stay short)."""
        try:
            self._outbox.put_nowait((window, scores, rows))
        except queue.Full:
            self._store_dropped.inc(len(rows))

    def _write_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                self._outbox.task_done()
                return
            window, scores, rows = item
            try:
                assert self._execute is not None
                for at in range(0, len(rows), _INSERT_ROWS):
                    self._execute(insert_scores_sql(self._database, window, scores, rows[at:at + _INSERT_ROWS]))
            except Exception as err:
                self._store_dropped.inc(len(rows))
                log.warning("anomaly: storing scores failed: %s", err)
            finally:
                self._outbox.task_done()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until queued score inserts are written."""
        deadline = time.monotonic() + timeout_s
        while self._outbox.unfinished_tasks > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        if self._writer is not None:
            self._outbox.put(None)
            self._writer.join(10.0)
            self._writer = None
        self.wait_training(30.0)
