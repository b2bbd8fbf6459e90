"""Both flow stores for tests that must hold on each: chDB embedded, and the server
backend (clickhouse-connect) through the ClickHouse HTTP stand-in in front of chDB."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.flowenricher.storage import FlowStore, StoreSettings, open_store

from .clickhouse_http import ClickHouseHTTPStandIn

STORE_KINDS = ("embedded", "server")


@contextlib.contextmanager
def migrated_store(kind: str, tmp_path: Path, **settings: Any) -> Iterator[FlowStore]:
    """A migrated store of `kind` (one of STORE_KINDS) on fresh directories under
    `tmp_path`, closed (and the stand-in stopped) afterwards; `settings` go to StoreSettings."""
    if kind == "embedded":
        embedded = open_store(StoreSettings(path=str(tmp_path / "data"), **settings))
        try:
            embedded.migrate()
            yield embedded
        finally:
            embedded.close()
        return
    with ClickHouseHTTPStandIn(str(tmp_path / "server")) as ch:
        server = open_store(StoreSettings(host="127.0.0.1", port=ch.port, path=str(tmp_path / "data"), **settings))
        try:
            server.migrate()
            yield server
        finally:
            server.close()
