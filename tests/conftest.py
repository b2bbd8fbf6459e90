"""Fixtures more than one test module uses, and the one list of slow tests."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import FlowenricherProcess

REPO = Path(__file__).resolve().parent.parent

# Every process a test starts (`python -m appliance.cli`, a bench, a worker) imports the
# service from this checkout: without it a subprocess run from a temporary directory
# imports whatever the editable install points at, which in a second worktree is another
# checkout's code, and its test passes or fails on code it never saw.
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])


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


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs a command in-process (cli.main) points the root logger at the
    stream pytest captured for that test, which is closed after it: every later log line
    of the session would then be a "Logging error" traceback.  The root logger's handlers
    and level are put back after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# Slow tests are marked here and nowhere else, so `make test-fast` (pytest -m "not slow")
# leaves out exactly these and a new slow test needs one line here, not a decorator.
# A key is a test module, or one test of it as "module::test".
SLOW: dict[str, str] = {
    "test_molecule": "ansible-lint, ansible-playbook on the example inventory, and the Molecule VM "
                     "(systemd-nspawn) converged twice",
    "test_routeros_sim::test_community_routeros_converges_idempotently_and_respects_restrict":
        "ansible's community.routeros modules converging the RouterOS simulator twice",
    "test_e2e_service": "the whole service end to end: collector, store, detection and lookup",
    "test_e2e_attacks": "network namespaces with softflowd, GoBGP, BIRD, nmap and hping3",
    "test_anomaly_e2e": "network namespaces with softflowd and a minute-long nmap scan",
    "test_e2e_softflowd": "network namespaces with softflowd exporting real traffic",
    "test_enrich_ptr": "dnsmasq as the resolver, and waits for TTLs",
    "test_api_browser": "chromium loading the API's pages",
    "test_api_schemathesis::test_api_conforms_to_its_schema": "schemathesis requests against every route",
    "test_decode_hostile::test_composed_exports_decode_within_their_columns": "400 composed hypothesis exports",
    "test_decode_state::test_100k_exporters_keep_state_and_labels_bounded": "100k exporters through one decoder",
    "test_kafka_collect::test_three_brokers_one_killed_mid_stream_nothing_lost":
        "a three-node Kafka cluster started for the test, one node killed",
    "test_backtest::test_tuning_puts_the_threshold_between_benign_keys_and_the_attack":
        "four stores of generated traffic per store kind, each detected live and the first two replayed (2 min each)",
}
SLOW_FIXTURES: dict[str, str] = {
    "bgp_lab": "gobgpd and BIRD started for the test",
}


def _missing_slow_entries(here: Path) -> list[str]:
    """SLOW keys whose module file or test function no longer exists: renamed, the test
    would run in the fast loop unnoticed."""
    missing = []
    for key in SLOW:
        module, _, test = key.partition("::")
        path = here / f"{module}.py"
        if not path.is_file() or (test and f"def {test}(" not in path.read_text()):
            missing.append(key)
    return missing


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests SLOW names, and those using a SLOW_FIXTURES fixture, as slow."""
    here = Path(__file__).parent
    missing = _missing_slow_entries(here)
    if missing:
        raise pytest.UsageError(f"{here / 'conftest.py'}: SLOW names tests that do not exist: {', '.join(missing)}")
    for item in items:
        name = getattr(item, "originalname", item.name)
        reason = SLOW.get(f"{item.path.stem}::{name}") or SLOW.get(item.path.stem) or next(
            (SLOW_FIXTURES[f] for f in getattr(item, "fixturenames", ()) if f in SLOW_FIXTURES), None)
        if reason is not None:
            item.add_marker(pytest.mark.slow(reason=reason))
