"""Rules reload: when detection.yml changes on disk, or on SIGHUP.

An invalid file never replaces the running rules: the problems are logged (one line
each, as `flowenricher validate` prints them) and the engine keeps what it runs, until
the file changes again.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry, Counter

from ..errors import ConfigError
from .rules import Rule, load_rule_set

log = logging.getLogger(__name__)

_Stamp = tuple[int, int, int, int] | None  # device, inode, size, mtime_ns; None: unreadable


def _stamp(path: Path) -> _Stamp:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class RulesWatcher:
    """Reloads `path` into `apply` (the engine's reload) when the file changes or a
    reload is requested; `tick(now)` checks at most every `interval_s`.

    A file replaced by an editor or by Ansible (new inode) counts as a change as much as
    one written in place.
    """

    def __init__(self, path: str | os.PathLike[str], apply: Callable[[list[Rule]], None], *,
                 max_window_s: float | None = None, registry: CollectorRegistry | None = None,
                 interval_s: float = 2.0) -> None:
        self.path = Path(path)
        self._apply = apply
        self._max_window_s = max_window_s
        self._interval_s = interval_s
        self._next_check = 0.0
        self._requested = threading.Event()
        self._seen = _stamp(self.path)
        self._reloads = Counter("flowenricher_detection_rules_reloads",
                                "Rules file reloads, by result (ok, invalid)", ["result"], registry=registry)

    def request_reload(self) -> None:
        """Reload at the next check whatever the file's stamp (safe in a signal handler)."""
        self._requested.set()
        self._next_check = 0.0

    def install_sighup(self) -> None:
        """Make SIGHUP request a reload (call from the main thread)."""
        previous = signal.getsignal(signal.SIGHUP)

        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_reload()
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGHUP, handler)

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now < self._next_check and not self._requested.is_set():
            return
        self._next_check = now + self._interval_s
        self.check()

    def check(self) -> bool:
        """Reload if the file changed or a reload was requested; True when new rules run."""
        stamp = _stamp(self.path)
        requested = self._requested.is_set()
        if stamp == self._seen and not requested:
            return False
        self._requested.clear()
        self._seen = stamp
        try:
            rules = load_rule_set(self.path, max_window_s=self._max_window_s)
        except ConfigError as err:
            self._reloads.labels("invalid").inc()
            log.error("detection: %s is invalid, the running rules stay:\n  %s", self.path,
                      "\n  ".join(err.problems))
            return False
        self._apply(rules)
        self._reloads.labels("ok").inc()
        log.info("detection: reloaded %d rule(s) from %s", len(rules), self.path)
        return True
