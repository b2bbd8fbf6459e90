"""At most one message per interval for a failure that repeats, with the count of the rest.

A collector under a flood, a store that is away or a resolver timing out fails the same
way thousands of times a second; logging each would bury the log and cost more than the
failure itself.  Every part of flowenricher that reports such failures does it the same
way, through this module:

* :class:`Throttle` answers "may this key speak now?" and counts the times it said no.
  Callers that tell something other than a log line (a notification) or that write the
  count into their own message use it directly;
* :class:`RateLimitedLog` is a Throttle in front of a logger: the first message of a key
  is logged, the repeats within ``every_s`` are counted, and the next message logged
  for that key ends in ``(N similar messages suppressed)``.

Both are thread-safe (workers, delivery threads and the event loop share them) and take
a clock, so tests drive time instead of sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable

SUPPRESSED = " (%d similar messages suppressed)"
"""What a logged message ends with when repeats of its key were held back before it."""


class Throttle:
    """Per key, a yes at most once per `every_s` of `clock`, and the count of the noes.

    Keys are bounded by `max_keys`: when that many are held, keys whose interval is over
    are forgotten (their next message passes anyway; only its count of suppressed repeats
    is lost), and if none is, all are.  So a caller keying by something a sender controls
    (a source address) cannot grow it without end.
    """

    def __init__(self, every_s: float, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 4096) -> None:
        if every_s < 0:
            raise ValueError(f"throttle: every_s must be >= 0, got {every_s}")
        if max_keys < 1:
            raise ValueError(f"throttle: max_keys must be >= 1, got {max_keys}")
        self.every_s = every_s
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._next_at: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def allow(self, key: Hashable = None, now: float | None = None) -> int | None:
        """None when `key` spoke less than `every_s` ago (this call is counted), else the
        number of calls held back since it last spoke (0 for its first).

        `now` is a time of the Throttle's clock, for callers that already read it.
        """
        with self._lock:
            if now is None:
                now = self._clock()
            next_at = self._next_at.get(key)
            if next_at is not None and now < next_at:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            if next_at is None and len(self._next_at) >= self._max_keys:
                self._forget(now)
            self._next_at[key] = now + self.every_s
            return self._suppressed.pop(key, 0)

    def reset(self, key: Hashable = None) -> None:
        """Forget `key`: its next call is allowed and counts from zero (the failure it
        was about is over, so the next one is news)."""
        with self._lock:
            self._next_at.pop(key, None)
            self._suppressed.pop(key, None)

    def _forget(self, now: float) -> None:
        """Make room for a new key (under the lock)."""
        over = [key for key, at in self._next_at.items() if at <= now]
        for key in over or list(self._next_at):
            del self._next_at[key]
            self._suppressed.pop(key, None)


class RateLimitedLog:
    """A logger that says a message of a key at most once per `every_s` (see the module)."""

    def __init__(self, logger: logging.Logger, every_s: float, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 4096) -> None:
        self.logger = logger
        self.throttle = Throttle(every_s, clock=clock, max_keys=max_keys)

    def log(self, level: int, message: str, *args: object, key: Hashable = None, exc_info: bool = False) -> bool:
        """Log `message % args` at `level` unless `key` was logged within the interval;
        True when it was logged.  `exc_info` adds the exception being handled."""
        suppressed = self.throttle.allow(key)
        if suppressed is None:
            return False
        if suppressed:
            self.logger.log(level, message + SUPPRESSED, *args, suppressed, exc_info=exc_info)
        else:
            self.logger.log(level, message, *args, exc_info=exc_info)
        return True

    def warning(self, message: str, *args: object, key: Hashable = None) -> bool:
        """:meth:`log` at WARNING."""
        return self.log(logging.WARNING, message, *args, key=key)

    def error(self, message: str, *args: object, key: Hashable = None) -> bool:
        """:meth:`log` at ERROR."""
        return self.log(logging.ERROR, message, *args, key=key)

    def exception(self, message: str, *args: object, key: Hashable = None) -> bool:
        """:meth:`log` at ERROR with the exception being handled (in an ``except`` block)."""
        return self.log(logging.ERROR, message, *args, key=key, exc_info=True)
