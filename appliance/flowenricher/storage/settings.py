"""Settings of the flow store: where flows go, how they are batched and spooled.

The config module builds a :class:`StoreSettings` from the YAML (``clickhouse.*``,
``storage.*``, ``insert.*``); everything in this package reads only this object.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import ConfigError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

DEFAULT_PARTITION_BY = "toYYYYMMDD(timestamp_start)"


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

    host: str | None = None
    port: int = 8123
    user: str = "default"
    password: str = ""
    secure: bool = False
    database: str = "flowenricher"
    table: str = "flows"
    path: str = "./data"
    ttl_days: int = 90
    partition_by: str = DEFAULT_PARTITION_BY
    batch_size: int = 250_000
    flush_interval_ms: int = 1000
    spool_dir: str | None = None
    spool_max_bytes: int = 1 << 30
    spool_max_age_s: int = 24 * 3600
    spool_fsync: bool = False

    def __post_init__(self) -> None:
        problems = []
        for key in ("database", "table"):
            value = getattr(self, key)
            if not _IDENTIFIER.match(value):
                problems.append(
                    f"storage: {key} {value!r} must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*)"
                )
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
    def qualified_table(self) -> str:
        """``database.table`` as used in every statement."""
        return f"{self.database}.{self.table}"

    @property
    def spool_path(self) -> str:
        """The spool directory: ``spool_dir``, else ``<path>/spool``."""
        return self.spool_dir if self.spool_dir is not None else os.path.join(self.path, "spool")
