"""A ClickHouse cluster of one node inside chDB, for running the cluster layout's DDL,
inserts and queries (storage/tables.py's Layout) on the real engine.

No ClickHouse server or Keeper can be installed on this machine, so this is a stand-in
for a cluster, and it is less than one in two ways, both said where they apply:

* chDB reads a server config file (the connection parameter ``config-file``): here a
  ``remote_servers`` cluster of one shard whose one replica is this process (its host
  and ``tcp_port`` match, so the engine marks it local and never opens a connection),
  and the ``shard``/``replica`` macros.  Distributed tables over it are real: inserts
  and queries go through the Distributed engine to the local tables.
* chDB runs no distributed DDL queue: any ON CLUSTER statement is refused ("Replicated
  DDL queries are disabled"), so :func:`local_statement` removes the clause and runs the
  statement on this node alone, which is what the queue would run on each node.
* With ``keeper=True`` the config names ClickHouse's in-process test Keeper
  (``<implementation>testkeeper</implementation>``): CREATE of a Replicated table runs,
  its Keeper path and replica name expanded from the macros, but the replicas stay
  read-only (chDB starts no replication threads), so nothing can be inserted or
  altered and closing the engine hangs: use it in a child process ended with
  ``os._exit``.  Without Keeper, :func:`local_statement` gives each Replicated engine's
  plain variant (``ReplicatedSummingMergeTree('path', 'replica', (a))`` ->
  ``SummingMergeTree((a))``), so rows can be written and read.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import chdb

from appliance.flowenricher.storage import StoreSettings
from appliance.flowenricher.storage.embedded import EmbeddedStore

from . import free_port

chdb_connect: Callable[[str], Any] = chdb.connect  # untyped in chDB

CLUSTER = "fe_test"
SHARD, REPLICA = "01", "r1"

_ON_CLUSTER = re.compile(r" ON CLUSTER '[^']*'")
_REPLICATED = re.compile(r"\bReplicated(\w*MergeTree)\('[^']*', '[^']*'(?:, )?")


def config_xml(keeper: bool) -> str:
    """The server config of the one-node cluster: its tcp_port is a port nothing listens
    on (the node never connects to itself; if it tried, it would fail, not reach
    something else)."""
    port = free_port(socket.SOCK_STREAM)
    zookeeper = "<zookeeper><implementation>testkeeper</implementation></zookeeper>" if keeper else ""
    return (f"<clickhouse><tcp_port>{port}</tcp_port>"
            f"<remote_servers><{CLUSTER}><shard><internal_replication>true</internal_replication>"
            f"<replica><host>127.0.0.1</host><port>{port}</port></replica></shard></{CLUSTER}></remote_servers>"
            f"{zookeeper}<macros><shard>{SHARD}</shard><replica>{REPLICA}</replica></macros></clickhouse>")


def connect(path: Path, keeper: bool = False) -> Any:
    """A chDB connection on data directory `path` with the cluster config (written next to it)."""
    config = path.parent / f"{path.name}-cluster.xml"
    config.write_text(config_xml(keeper))
    return chdb_connect(f"{path}?config-file={config}")


def local_statement(sql: str, replicated: bool = True) -> str:
    """`sql` as the DDL queue would run it on this node: without ON CLUSTER, and unless
    `replicated`, with the plain variant of a Replicated engine (see the module doc)."""
    sql = _ON_CLUSTER.sub("", sql)
    return sql if replicated else _REPLICATED.sub(r"\1(", sql)


class ClusterStore(EmbeddedStore):
    """The embedded store on the one-node cluster, with ``settings.cluster`` set: the
    appliance's own migrations, inserts (insert_settings) and queries, each DDL statement
    run through :func:`local_statement` with plain engines."""

    def _execute(self, sql: str) -> None:
        super()._execute(local_statement(sql, replicated=False))


def open_cluster_store(path: Path, **settings: Any) -> ClusterStore:
    """A ClusterStore on data directory `path`; `settings` go to StoreSettings (the host is
    a placeholder: a cluster needs one, and this store never connects to it)."""
    store_settings = StoreSettings(host="cluster-node.invalid", cluster=CLUSTER, path=str(path), **settings)
    path.mkdir(parents=True, exist_ok=True)
    writer = connect(path)
    reader = chdb_connect(f"{path}?config-file={path.parent / f'{path.name}-cluster.xml'}")
    return ClusterStore(store_settings, str(path), writer, reader)
