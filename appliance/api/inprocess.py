"""The control plane inside `flowenricher run`: uvicorn in a thread of the collector.

The collector's core knows nothing of the API (docs/architecture.md: the API imports the
core, never the reverse); `flowenricher run` hands :func:`serve_in_collector` to the
core's wiring as a runtime extension (appliance/cli.py), which calls it once the
collector's parts are built.  The API then reaches the collector through the same
operations as `flowenricher api` does over the control socket
(collector_local.LocalCollector here), and the blackhole manager, lookup and anomaly
scoring as the objects themselves.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from appliance.flowenricher.blackhole.manager import BlackholeManager
from appliance.flowenricher.collector_local import LocalCollector
from appliance.flowenricher.config import Settings
from appliance.flowenricher.service import QueryFn, Runtime

from .app import create_app
from .deps import ApiDeps, applied_by
from .server import ApiServer


def serve_in_collector(runtime: Runtime, cfg: Settings, registry: CollectorRegistry, query: QueryFn) -> None:
    """Serve the API on api.listen (`run` calls this when ``api.enabled``); stopped with
    the runtime's closers."""
    if not isinstance(runtime.blackholes, BlackholeManager):
        raise TypeError("the API inside the collector needs its blackhole manager")
    collector = LocalCollector(runtime, registry)
    apply_config, apply_rules = applied_by(collector, runtime.config_path, runtime.rules_path)
    app = create_app(ApiDeps(
        settings=cfg, blackholes=runtime.blackholes, registry=registry, query=query,
        config_path=runtime.config_path, rules_path=runtime.rules_path, lookup=runtime.lookup,
        collector=collector, apply_config=apply_config, apply_rules=apply_rules, anomaly=runtime.anomaly,
        dev_mode=cfg.api.dev_mode, max_body_bytes=cfg.api.max_body_bytes,
    ))
    server = ApiServer(app, cfg.api.host, cfg.api.port, cfg.api.tls)
    server.start()
    runtime.closers.append(server.stop)
