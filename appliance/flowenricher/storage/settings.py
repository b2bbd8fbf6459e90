"""Settings of the flow store: where flows go, how they are batched and spooled.

The config module builds a :class:`StoreSettings` from the YAML (``clickhouse.*``,
``storage.*``, ``insert.*``); everything in this package reads only this object.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from ..common.settings_base import FilePath, Identifier, Port, Section
from ..errors import ConfigError
from .tables import Layout

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CLUSTER_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$"
"""A cluster name as ``remote_servers`` spells it (an XML element name, no macros)."""

DEFAULT_PARTITION_BY = "toYYYYMMDD(timestamp_start)"


# --------------------------------------------------------------------------- config blocks
# The blocks of config.yaml the store is built from (``clickhouse``, ``storage``,
# ``insert``); wiring.store_settings() combines them into StoreSettings.


class ClickHouseSettings(Section):
    """Flow store. Without `host` the store is embedded (chDB in `storage.path`); with a
    host, flowenricher talks to that ClickHouse server over HTTP. Database and table name
    the store in both modes."""

    host: str | None = Field(None, description="ClickHouse server host name or address. Absent, null or empty: the "
                             "embedded store. The original's \"localhost\" means a server on this machine, as it did "
                             "there.")
    port: Port = Field(8123, description="ClickHouse HTTP(S) port of the server.")
    user: str = Field("default", description="ClickHouse user on the server.")
    password: str = Field("", repr=False, description="Password of `user` on the server; never logged.")
    database: Identifier = Field("flowenricher", description="Database holding the flow table and ptr_cache (the "
                                 "original used pmacct).")
    table: Identifier = Field("flows", description="Flow table name.")
    secure: bool = Field(False, description="Use HTTPS to the server.")
    cluster: str | None = Field(None, pattern=CLUSTER_NAME, json_schema_extra={
        "title": "a cluster name as remote_servers spells it (letters, digits, _, . and -)"}, description=(
        "A ClickHouse cluster (its name in the servers' remote_servers): the migrations create every table ON CLUSTER "
        "as a Replicated table named <table>_local on each node and a Distributed table under the table's own name, "
        "which flowenricher, the API and the dashboards read and write. Needs `host` (a node of the cluster), Keeper, "
        "internal_replication true and the shard and replica macros on every node; for a new database only. Null: "
        "one server."))

    @field_validator("host")
    @classmethod
    def _empty_is_embedded(cls, value: str | None) -> str | None:
        return value or None

    @property
    def embedded(self) -> bool:
        """True when no server is configured: chDB in `storage.path`."""
        return self.host is None


class StorageSettings(Section):
    """Local data: the embedded store, its retention and partitioning (also used for the
    server's tables), and the spool that keeps batches the store could not take."""

    path: FilePath = Field(Path("./data"), description="Data directory of the embedded store (chDB); one process owns "
                           "it at a time.")
    ttl_days: int = Field(90, ge=0, description="Days flows are kept (TTL on timestamp_start); the original kept three "
                          "months. 0 keeps them forever.")
    partition_by: str = Field(DEFAULT_PARTITION_BY, min_length=1, description=(
        "PARTITION BY expression of the flow table: f(column), f a day-or-coarser date function such as toYYYYMMDD or "
        "toYYYYMM of a DateTime flow column (inserts are split by day to stay within the store's partitions per "
        "insert; validation names the functions accepted). Daily partitions make TTL drops cheap."))
    spool_dir: FilePath | None = Field(None, description="Where batches wait while the store is unavailable; null: "
                                       "<path>/spool.")
    spool_max_bytes: int = Field(1 << 30, ge=0, description="Spool size limit in bytes; the oldest batches are dropped "
                                 "(and counted) beyond it so the disk never fills.")
    spool_max_age_s: int = Field(24 * 3600, ge=0, description="Seconds a spooled batch is kept before it is dropped "
                                 "(and counted).")
    state_db_url: str | None = Field(None, min_length=1, alias="state_db", description=(
        "SQLAlchemy URL of the state database (active blackholes, API tokens, audit). Null: SQLite file state.db in "
        "storage.path."))

    @model_validator(mode="after")
    def _derived(self) -> StorageSettings:
        if self.spool_dir is None:
            self.derive(spool_dir=self.path / "spool")
        return self

    @property
    def state_db(self) -> str:
        """The state database's SQLAlchemy URL: as given, else SQLite in `path`."""
        return self.state_db_url or f"sqlite:///{os.path.abspath(os.path.join(self.path, 'state.db'))}"


class InsertSettings(Section):
    """Batching of inserts into the store. Large batches are what ClickHouse is fast at;
    the flush interval bounds the delay when traffic is low."""

    batch_size: int = Field(250_000, ge=1, description="Flows per insert (a batch is written when it is full or the "
                            "interval passes). The original's 200 is honoured as given, though far below what the "
                            "store handles well.")
    flush_interval_ms: int = Field(1000, ge=1, description="Most milliseconds a flow waits in a batch before it is "
                                   "written.")

    @property
    def flush_interval_s(self) -> float:
        return self.flush_interval_ms / 1000.0


_CLICKHOUSE, _STORAGE, _INSERT = ClickHouseSettings(), StorageSettings(), InsertSettings()


@dataclass(frozen=True)
class StoreSettings:
    """Where and how flows are stored.

    ``host`` None selects the embedded chDB engine in ``path``; otherwise a ClickHouse
    server is reached over HTTP(S).  Database and table names are spliced into SQL, so
    they must be plain identifiers (checked here, once).

    ``ttl_days`` 0 keeps flows forever.  The spool holds blocks the store refused, up to
    ``spool_max_bytes`` (0: no spooling, failed batches are dropped and counted) and
    ``spool_max_age_s`` (0: no age limit); ``spool_fsync`` makes each spooled block
    durable across a power cut, at the cost of a disk flush per failed batch.
    """

    # The defaults are the config blocks' (clickhouse, storage, insert): a store built by
    # code without a config behaves as an empty config file.
    host: str | None = _CLICKHOUSE.host
    port: int = _CLICKHOUSE.port
    user: str = _CLICKHOUSE.user
    password: str = _CLICKHOUSE.password
    secure: bool = _CLICKHOUSE.secure
    cluster: str | None = _CLICKHOUSE.cluster
    database: str = _CLICKHOUSE.database
    table: str = _CLICKHOUSE.table
    path: str = str(_STORAGE.path)
    ttl_days: int = _STORAGE.ttl_days
    partition_by: str = _STORAGE.partition_by
    batch_size: int = _INSERT.batch_size
    flush_interval_ms: int = _INSERT.flush_interval_ms
    spool_dir: str | None = None
    spool_max_bytes: int = _STORAGE.spool_max_bytes
    spool_max_age_s: int = _STORAGE.spool_max_age_s
    spool_fsync: bool = False

    @classmethod
    def from_config(cls, clickhouse: ClickHouseSettings, storage: StorageSettings,
                    insert: InsertSettings) -> StoreSettings:
        """The store the three config blocks describe."""
        return cls(host=clickhouse.host, port=clickhouse.port, user=clickhouse.user, password=clickhouse.password,
                   secure=clickhouse.secure, cluster=clickhouse.cluster, database=clickhouse.database,
                   table=clickhouse.table,
                   path=str(storage.path), ttl_days=storage.ttl_days, partition_by=storage.partition_by,
                   batch_size=insert.batch_size, flush_interval_ms=insert.flush_interval_ms,
                   spool_dir=str(storage.spool_dir), spool_max_bytes=storage.spool_max_bytes,
                   spool_max_age_s=storage.spool_max_age_s)

    def __post_init__(self) -> None:
        problems = []
        for key in ("database", "table"):
            value = getattr(self, key)
            if not _IDENTIFIER.match(value):
                problems.append(
                    f"storage: {key} {value!r} must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*)"
                )
        if self.cluster is not None:
            if not re.match(CLUSTER_NAME, self.cluster):
                problems.append(f"storage: cluster {self.cluster!r} is not a cluster name ({CLUSTER_NAME})")
            if self.host is None:
                problems.append("storage: a cluster needs a ClickHouse server (host); the embedded store is one node")
        for key in ("ttl_days", "spool_max_bytes", "spool_max_age_s"):
            if getattr(self, key) < 0:
                problems.append(f"storage: {key} must be >= 0, got {getattr(self, key)}")
        for key in ("batch_size", "flush_interval_ms", "port"):
            if getattr(self, key) <= 0:
                problems.append(f"storage: {key} must be > 0, got {getattr(self, key)}")
        from .schema import partition_columns  # schema reads these settings: imported late

        try:
            partition_columns(self)
        except ConfigError as err:
            problems.extend(err.problems)
        if problems:
            raise ConfigError(problems)

    @property
    def embedded(self) -> bool:
        return self.host is None

    @property
    def layout(self) -> Layout:
        """Where the tables live: one server, or ``cluster`` (storage/tables.py)."""
        return Layout(self.cluster)

    @property
    def qualified_table(self) -> str:
        """``database.table`` as used in every statement."""
        return f"{self.database}.{self.table}"

    @property
    def spool_path(self) -> str:
        """The spool directory: ``spool_dir``, else ``<path>/spool``."""
        return self.spool_dir if self.spool_dir is not None else os.path.join(self.path, "spool")


def storage_problems(storage: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """The partition expression the store can bound (the same check it makes when it starts)."""
    partition_by = storage.get("partition_by")
    if isinstance(partition_by, str):
        from .schema import flow_partition_column  # schema reads StoreSettings: imported late

        try:
            flow_partition_column(partition_by)
        except ValueError as err:
            return [(("partition_by",), str(err))]
    return []


def clickhouse_problems(clickhouse: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """A cluster needs a server: the embedded store is one process on one machine."""
    if clickhouse.get("cluster") is not None and not clickhouse.get("host"):
        return [(("cluster",), "a cluster needs clickhouse.host, a node of the cluster (the embedded store is one "
                               "node)")]
    return []
