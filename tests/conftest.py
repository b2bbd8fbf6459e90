"""Fixtures more than one test module uses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import FlowenricherProcess


@pytest.fixture
def collectors() -> Iterator[list[FlowenricherProcess]]:
    """Processes a test started (`flowenricher run` and the like), stopped by their PID at
    the end whatever the outcome."""
    started: list[FlowenricherProcess] = []
    try:
        yield started
    finally:
        for process in started:
            process.stop()
