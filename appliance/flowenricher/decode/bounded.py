"""A dict with a size bound, for decoder state keyed by what senders choose.

Exporter addresses, observation domains, sampler ids and ifIndexes all come from the
wire: a sender spoofing sources or cycling ids must not grow the collector's memory.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(OrderedDict[K, V]):
    """At most `max_size` entries; setting one more forgets the least recently set.

    Reads do not refresh an entry (they are on the hot path); writes do.  `evicted`
    counts the entries forgotten.
    """

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, not {max_size}")
        super().__init__()
        self.max_size = max_size
        self.evicted = 0

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.max_size:
            self.popitem(last=False)
            self.evicted += 1
