# The fast loop (README.md, "Working on it"): `make check` lints and type-checks in seconds,
# `make test-fast` runs every test but the slow ones (listed in tests/conftest.py) and
# stops at the first failure, `make test` is the full run CI makes (tests/run.sh: installs
# what the tests need, then lint, types and every test).  Extra pytest arguments go in
# PYTEST_ARGS, e.g. `make test-fast PYTEST_ARGS=tests/test_config.py`.

PYTHON ?= python3
PYTEST_ARGS ?=
# This checkout, not whatever an editable install elsewhere points at.
export PYTHONPATH := $(CURDIR)

# GoBGP's gRPC stubs are generated, not committed (tools/gen_gobgp_stubs.py says why).
STUBS := appliance/flowenricher/bgp/_api/__init__.py

.PHONY: check test-fast test

check: $(STUBS)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

test-fast: $(STUBS)
	$(PYTHON) -m pytest -q -p no:cacheprovider -m "not slow" -x $(PYTEST_ARGS)

test:
	bash tests/run.sh $(PYTEST_ARGS)

$(STUBS): tools/gen_gobgp_stubs.py
	$(PYTHON) tools/gen_gobgp_stubs.py
