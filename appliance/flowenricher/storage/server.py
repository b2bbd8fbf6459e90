"""The server flow store: a ClickHouse server over HTTP(S), through clickhouse-connect.

Batches are sent as the Native blocks :mod:`.native` builds (``raw_insert``), so
clickhouse-connect never converts rows; queries use ``raw_query`` and return the
server's bytes.  The connection is made lazily and remade after a failure, so the
collector starts, and spools, while the server is down.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import clickhouse_connect

from ..errors import StoreError
from .base import NativeBackend, insert_settings
from .settings import StoreSettings

log = logging.getLogger(__name__)


class ServerStore(NativeBackend):
    """A :class:`~.base.FlowStore` on a ClickHouse server; no I/O until first used."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        scheme = "https" if self.settings.secure else "http"
        return f"{scheme}://{self.settings.host}:{self.settings.port}"

    def insert_native(self, block: bytes, rows: int, token: str | None = None) -> None:
        # No column list: the server matches a Native block's columns by name and
        # fills the ones a batch left unset with their defaults.  The insert is
        # synchronous (INSERT_SETTINGS): HTTP 200 means the rows are in the tables.
        table = self.settings.qualified_table
        self._call(
            f"insert of {rows} rows into {table}", "raw_insert", table, insert_block=block, fmt="Native",
            settings=insert_settings(self.settings, token),
        )

    def query(self, sql: str, fmt: str = "TSVWithNames") -> bytes:
        # default_format rather than an appended FORMAT clause: a FORMAT the caller
        # wrote in the SQL still wins, and DDL or INSERT ... VALUES stay valid.
        result = self._call("query", "raw_query", sql, settings={"default_format": fmt})
        return bytes(result)

    def ping(self) -> bool:
        try:
            return bool(self._call("ping", "ping"))
        except StoreError:
            return False

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _execute(self, sql: str) -> None:
        self._call(f"statement\n  {sql}\n ", "command", sql)

    def _rows(self, sql: str) -> list[list[str]]:
        text = self.query(sql, "TabSeparated").decode()
        return [line.split("\t") for line in text.splitlines()]

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run one client method; any failure becomes a StoreError and drops the client,
        so the next call reconnects (the server may have restarted).

        Calls run concurrently (the writer inserting while the API queries): the client
        has no server session (see :meth:`_connect`), which is what makes that safe.
        """
        client = self._client_or_connect(what)
        try:
            return getattr(client, method)(*args, **kwargs)
        except Exception as err:  # clickhouse-connect, urllib3 and socket errors alike
            with self._lock:
                if self._client is client:
                    self._client = None
            client.close()
            raise StoreError(f"ClickHouse at {self.address}: {what} failed: {err}") from err

    def _client_or_connect(self, what: str) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._connect()
                except Exception as err:
                    raise StoreError(f"ClickHouse at {self.address}: {what} failed: {err}") from err
            return self._client

    def _connect(self) -> Any:
        s = self.settings
        client = clickhouse_connect.get_client(
            host=s.host,
            port=s.port,
            username=s.user,
            password=s.password,
            secure=s.secure,
            # Inserts are sent as built; responses stay uncompressed (small: queries
            # from the collector return little, bulk reads are Grafana's, not ours).
            compress=False,
            connect_timeout=5,
            send_receive_timeout=60,
            # A server session serialises a client's requests (and refuses concurrent
            # ones); nothing here needs session state such as temporary tables.
            autogenerate_session_id=False,
        )
        log.info("server store: connected to ClickHouse %s at %s", client.server_version, self.address)
        return client
