"""Flow storage: the ClickHouse schema, the Native encoder, the two backends (embedded chDB
and a ClickHouse server over HTTP), the on-disk spool and the batching writer."""

from __future__ import annotations

from .base import FlowStore
from .settings import StoreSettings


def open_store(settings: StoreSettings) -> FlowStore:
    """The store `settings` describe: chDB in ``settings.path`` when no host is set.

    The embedded store opens its directory now (and raises StoreError if another process
    holds it); the server store connects on first use.
    """
    if settings.host is None:
        from .embedded import EmbeddedStore

        return EmbeddedStore.open(settings)
    from .server import ServerStore

    return ServerStore(settings)


__all__ = ["FlowStore", "StoreSettings", "open_store"]
