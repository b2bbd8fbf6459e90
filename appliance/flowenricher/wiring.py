"""Maps the validated config (config.Settings) onto the settings each part takes.

Kept apart from config.py so the config stays free of imports of the parts it configures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry

from .collector.receiver import Listener
from .collector.worker import WorkerSettings
from .config import Settings
from .decode.netflow import ExporterQuirks
from .enrich.base import Stage
from .enrich.networks import NetworkInfo, NetworksStage
from .enrich.pipeline import Enricher
from .enrich.ptr import PtrResult, PtrSink
from .lookup import Lookup
from .service import QueryFn, Runtime, RuntimeFactory, ServiceSettings
from .storage.settings import StoreSettings

log = logging.getLogger(__name__)


def store_settings(cfg: Settings) -> StoreSettings:
    ch, st = cfg.clickhouse, cfg.storage
    return StoreSettings(
        host=ch.host, port=ch.port, user=ch.user, password=ch.password, secure=ch.secure,
        database=ch.database, table=ch.table, path=str(st.path), ttl_days=st.ttl_days,
        partition_by=st.partition_by, batch_size=cfg.insert.batch_size,
        flush_interval_ms=cfg.insert.flush_interval_ms, spool_dir=str(st.spool_dir),
        spool_max_bytes=st.spool_max_bytes, spool_max_age_s=int(st.spool_max_age_s),
    )


def service_settings(cfg: Settings) -> ServiceSettings:
    col = cfg.collectors
    quirks = {addr: ExporterQuirks(sampling_rate=e.sampling_rate, little_endian_sampling=e.little_endian_sampling)
              for addr, e in col.exporters.items()}
    worker = WorkerSettings(
        listeners=tuple(Listener(x.address, x.port, x.protocol) for x in col.listeners),
        receive_buffer_bytes=col.receive_buffer_bytes, quirks=quirks,
        hold_max_sets=col.template_hold.max_sets, hold_max_age_s=col.template_hold.max_age_s,
    )
    return ServiceSettings(worker=worker, store=store_settings(cfg), workers=col.worker_count(),
                           metrics_listen=cfg.metrics.listen)


def runtime_factory(cfg: Settings, rules_path: Path | None = None) -> RuntimeFactory:
    """The enrichment pipeline the config asks for (``enrich:`` and the blocks it names).

    Direction and networks need no outside source and always run; the others follow
    the ``enrich`` switch, in the order enrich/pipeline.py explains.
    """

    def build(registry: CollectorRegistry, query: QueryFn) -> Runtime:
        networks = NetworksStage(cfg.my_prefixes, {n.prefix: NetworkInfo(n.name, n.customer) for n in cfg.networks})
        stages: list[Stage] = [networks]
        lookup = Lookup(networks)
        as_name = None
        try:
            if "geoip" in cfg.enrich and (cfg.geoip.asn_db or cfg.geoip.city_db):
                from .enrich.geo import GeoStage

                geo = GeoStage.from_settings(cfg.geoip, registry)
                stages.append(geo)
                as_name, lookup.geo = geo.as_name, geo.lookup
            if "snmp" in cfg.enrich and cfg.snmp.targets:
                from .enrich.snmp import SnmpPoller, SnmpStage

                poller = SnmpPoller.from_settings(cfg.snmp, registry)
                stages.append(SnmpStage(poller, registry))
                poller.start()
            if "ptr" in cfg.enrich:
                from .enrich.ptr import PtrResolver, PtrStage

                resolver = PtrResolver.from_settings(cfg.dns, registry,
                                                     sink=ptr_cache_sink(store_settings(cfg), query))
                stages.append(PtrStage(resolver))
                resolver.start()
                lookup.ptr = resolver.lookup
        except BaseException:
            Enricher(stages).close()  # stop the threads of the stages already started
            raise
        runtime = Runtime(enricher=Enricher(stages, registry, as_name=as_name), lookup=lookup)
        try:
            if rules_path is not None:
                _add_detection(runtime, cfg, rules_path, registry, query)
        except BaseException:
            runtime.close()
            raise
        return runtime

    return build


def _add_detection(runtime: Runtime, cfg: Settings, rules_path: Path, registry: CollectorRegistry,
                   query: QueryFn) -> None:
    """The detection engine on every enriched batch, its windows ticked once a second,
    its rules reloaded when the file changes or on SIGHUP."""
    from .detect.actions import build_actions
    from .detect.engine import DetectionEngine
    from .detect.rules import load_rule_set
    from .detect.watcher import RulesWatcher

    det = cfg.detection
    rules = load_rule_set(rules_path, max_window_s=det.flow_cache_max_window_s)
    actions = build_actions(
        registry, alerts_log=det.alerts_log, clickhouse=(lambda sql: query(sql, "TSV"), cfg.clickhouse.database),
        slack_webhook=det.slack_webhook, webhooks=det.webhooks, blackhole_sink=runtime.blackholes,
    )
    engine = DetectionEngine(rules, actions, registry, max_keys_per_rule=det.max_keys_per_rule,
                             samples_per_detection=det.samples_per_detection)
    watcher = RulesWatcher(rules_path, engine.reload, max_window_s=det.flow_cache_max_window_s, registry=registry)
    watcher.install_sighup()
    runtime.consumers.append(engine)
    runtime.tickers.extend([engine.tick, watcher.tick])
    runtime.closers.append(engine.close)
    log.info("detection: %d rules from %s; actions %s", len(rules), rules_path, ", ".join(a.name for a in actions))


def ptr_cache_sink(store: StoreSettings, query: QueryFn) -> PtrSink:
    """Writes names the resolver found into ``ptr_cache`` (the original's table, which
    dashboards and the API join on).  A failure raises into the resolver, which counts it."""
    from .storage.schema import PTR_CACHE_TABLE, sql_string

    table = f"{store.database}.{PTR_CACHE_TABLE}"

    def sink(results: list[PtrResult]) -> None:
        if not results:
            return
        rows = ",".join(
            f"({sql_string(r.ip)},{sql_string(r.ptr)},toDateTime({int(r.updated_at)}),{int(r.asn)},"
            f"{sql_string(r.asn_name)},{sql_string(r.country)})"
            for r in results
        )
        query(f"INSERT INTO {table} (ip, ptr, updated_at, asn, asn_name, country) VALUES {rows}", "TSV")

    return sink


@contextmanager
def standalone_lookup(cfg: Settings) -> Iterator[Lookup]:
    """The lookup sources built from the config, for `flowenricher lookup` when no
    service runs; closed (resolver thread stopped) on exit."""
    networks = NetworksStage(cfg.my_prefixes, {n.prefix: NetworkInfo(n.name, n.customer) for n in cfg.networks})
    lookup = Lookup(networks)
    closers: list[Callable[[], None]] = []
    try:
        if "geoip" in cfg.enrich and (cfg.geoip.asn_db or cfg.geoip.city_db):
            from .enrich.geo import GeoStage

            geo = GeoStage.from_settings(cfg.geoip)
            closers.append(geo.close)
            lookup.geo = geo.lookup
        if "ptr" in cfg.enrich:
            from .enrich.ptr import PtrResolver

            resolver = PtrResolver.from_settings(cfg.dns)
            resolver.start()
            closers.append(resolver.close)
            lookup.ptr = resolver.lookup
        yield lookup
    finally:
        for close in reversed(closers):
            close()
