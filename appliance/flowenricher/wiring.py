"""Maps the validated config (config.Settings) onto the settings each part takes.

Kept apart from config.py so the config stays free of imports of the parts it configures.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from .bgp.rib import RibView
from .blackhole.manager import BlackholeManager, Defaults
from .blackhole.safety import SafetyPolicy, SafetySettings
from .blackhole.state import StateDB
from .collector.receiver import Listener
from .collector.worker import DECODER_STATE_DIR, WorkerSettings
from .common.addresses import row_text
from .common.bgp_values import community_text
from .config import Settings
from .decode.netflow import ExporterQuirks
from .enrich.base import Stage
from .enrich.bgp import BgpStage
from .enrich.networks import NetworkInfo, NetworksStage
from .enrich.pipeline import Enricher
from .enrich.ptr import PtrResult, PtrSink
from .errors import ConfigError
from .kafka.input import KafkaInputSettings
from .kafka.output import SPOOL_DIR, KafkaOutputSettings
from .lookup import Lookup
from .service import QueryFn, Runtime, RuntimeFactory, ServiceSettings
from .storage.settings import StoreSettings

if TYPE_CHECKING:
    from .detect.anomaly import AnomalyScoring
    from .detect.engine import DetectionEngine
    from .kafka.detection import DetectionExchange

log = logging.getLogger(__name__)


def store_settings(cfg: Settings) -> StoreSettings:
    return StoreSettings.from_config(cfg.clickhouse, cfg.storage, cfg.insert)


def service_settings(cfg: Settings) -> ServiceSettings:
    col = cfg.collectors
    quirks = {addr: ExporterQuirks(sampling_rate=e.sampling_rate, little_endian_sampling=e.little_endian_sampling)
              for addr, e in col.exporters.items()}
    worker = WorkerSettings(
        listeners=tuple(Listener(x.address, x.port, x.protocol) for x in col.listeners),
        receive_buffer_bytes=col.receive_buffer_bytes, quirks=quirks,
        hold_max_sets=col.template_hold.max_sets, hold_max_age_s=col.template_hold.max_age_s,
        max_templates=col.max_templates, max_exporters=col.max_exporters, max_clock_skew_s=col.max_clock_skew_s,
        allowed_exporters=tuple(str(network) for network in col.allowed_exporters),
        state_dir=str(cfg.storage.path / DECODER_STATE_DIR) if col.template_state else None,
        debug=col.debug,
    )
    kafka = output = None
    brokers = tuple(str(b) for b in cfg.kafka.brokers)
    if cfg.kafka.enabled and cfg.kafka.role == "collect":
        output = KafkaOutputSettings(brokers=brokers, topic=cfg.kafka.topic,
                                     spool_dir=str(cfg.storage.path / SPOOL_DIR),
                                     spool_max_bytes=cfg.kafka.spool_max_bytes,
                                     buffer_max_bytes=cfg.kafka.buffer_max_bytes)
    elif cfg.kafka.enabled:
        kafka = KafkaInputSettings(brokers=brokers, topic=cfg.kafka.topic, group_id=cfg.kafka.group_id,
                                   block_records=cfg.kafka.records_per_poll(), start_from=cfg.kafka.start_from,
                                   format=cfg.kafka.format, dedup_window_records=cfg.kafka.dedup_window_records)
    return ServiceSettings(worker=worker, store=store_settings(cfg), workers=col.worker_count(),
                           metrics_listen=cfg.metrics.listen, kafka=kafka, kafka_output=output)


RuntimeExtension = Callable[[Runtime, Settings, CollectorRegistry, QueryFn], None]
"""A part that a package above the core adds to the running collector once the core's
parts are built (the API inside `flowenricher run`: appliance/api/inprocess.py); it
appends what it must close to ``runtime.closers``."""


def runtime_factory(cfg: Settings, rules_path: Path | None = None, config_path: Path | None = None,
                    extensions: Sequence[RuntimeExtension] = ()) -> RuntimeFactory:
    """The enrichment pipeline the config asks for (``enrich:`` and the blocks it names),
    the collector's other parts, then `extensions`.

    Direction and networks need no outside source and always run; the others follow
    the ``enrich`` switch, in the order enrich/pipeline.py explains.
    """

    def build(registry: CollectorRegistry, query: QueryFn) -> Runtime:
        networks = NetworksStage(cfg.my_prefixes, {n.prefix: NetworkInfo(n.name, n.customer) for n in cfg.networks})
        stages: list[Stage] = [networks]
        lookup = Lookup(networks)
        as_name = None
        poller: Any = None  # the SNMP poller, when SNMP enrichment is on (interface names for the recorder)
        try:
            if "geoip" in cfg.enrich and (cfg.geoip.asn_db or cfg.geoip.city_db):
                from .enrich.geo import GeoStage

                geo = GeoStage.from_settings(cfg.geoip, registry)
                stages.append(geo)
                as_name, lookup.geo = geo.as_name, geo.lookup
            if "bgp" in cfg.enrich:
                bgp = _bgp_stage(cfg, registry)
                stages.append(bgp)
                lookup.bgp = bgp_lookup(bgp.source.view)
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
        runtime = Runtime(enricher=Enricher(stages, registry, as_name=as_name), lookup=lookup,
                          config_path=config_path, rules_path=rules_path)
        try:
            _add_stats_recorder(runtime, cfg, registry, query, poller)
            _add_blackholes(runtime, cfg, registry, query)
            if cfg.blackhole.owner is None:  # else the owner holds the router's session
                _add_bgp_sessions(runtime, cfg, registry)
            anomaly = _add_anomaly(runtime, cfg, registry, query) if cfg.anomaly.enabled else None
            if rules_path is not None:
                _add_detection(runtime, cfg, rules_path, registry, query, anomaly)
            if cfg.metrics.traffic_labels:
                from .traffic_metrics import TrafficMetrics

                runtime.consumers.append(TrafficMetrics(list(cfg.metrics.traffic_labels),
                                                        cfg.metrics.traffic_max_series, registry))
            _add_control(runtime, cfg, registry, poller)
            for extend in extensions:
                extend(runtime, cfg, registry, query)
        except BaseException:
            runtime.close()
            raise
        return runtime

    return build


def _bgp_stage(cfg: Settings, registry: CollectorRegistry | None) -> BgpStage:
    """BGP columns from the JSON prefix table when one is configured, else from the
    mirror of GoBGP's RIB (started now; it loads in the background and reconnects)."""
    from .bgp.mirror import RibMirror
    from .bgp.prefix_file import PrefixFileRib
    from .enrich.bgp import BgpStage

    source: PrefixFileRib | RibMirror
    if cfg.bgp.prefix_file is not None:
        source = PrefixFileRib(cfg.bgp.prefix_file, registry)
    else:
        source = RibMirror(cfg.bgp.gobgp.api, registry, stale_after_s=cfg.bgp.gobgp.stale_after_s,
                           dump_limit=cfg.bgp.gobgp.dump_limit)
    source.start()
    return BgpStage(source, registry, local_asn=cfg.my_asn)


def bgp_lookup(view: Callable[[], RibView]) -> Callable[[str], dict[str, Any] | None]:
    """`lookup`'s BGP part: the route of one address in the current RIB view."""

    def lookup(ip: str) -> dict[str, Any] | None:
        route = view().route(ip)
        if route is None:
            return None
        a = route.attributes
        return {
            "prefix": str(route.prefix), "as_path": list(a.as_path), "origin_as": a.origin_as,
            "neighbor_as": a.neighbor_as, "next_hop": row_text(a.next_hop),
            "local_pref": a.local_pref, "communities": [community_text(c) for c in a.communities],
        }

    return lookup


def safety_settings(cfg: Settings) -> SafetySettings:
    """DESIGN §5's limits from the config, with the never-blackhole list completed by the
    addresses the appliance knows are infrastructure: the router and BGP session
    addresses, the resolver, SNMP agents, configured exporters, the API and metrics."""
    bh = cfg.blackhole
    infra: list[str] = list(bh.never)
    session = cfg.bgp.listener
    infra += [a for a in (session.peer_ip, session.listen_ip, session.router_id, cfg.dns.nameserver) if a]
    infra += [t.host for t in cfg.snmp.targets] + [t.exporter for t in cfg.snmp.targets]
    infra += list(cfg.collectors.exporters)
    infra += [h for h in (cfg.api.host, cfg.metrics.host) if h not in ("0.0.0.0", "::", "")]
    never = []
    for item in infra:
        try:
            never.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            log.warning("blackhole: %r is not an address; not added to the never-blackhole list", item)
    lapsing = tuple((ipaddress.ip_network(prefix, strict=False), until) for prefix, until in bh.never_until)
    return SafetySettings(min_v4_len=bh.min_prefix_length_v4, min_v6_len=bh.min_prefix_length_v6,
                          never=tuple(dict.fromkeys(never)), own=tuple(cfg.my_prefixes), max_active=bh.max_active,
                          max_per_minute=bh.max_per_minute, dry_run=bh.dry_run,
                          max_active_sources=bh.max_active_sources, max_active_victims=bh.max_active_victims,
                          never_until=lapsing, max_duration_s=bh.max_duration_s, repeat_factor=bh.repeat_factor,
                          repeat_window_s=bh.repeat_window_s)


def blackhole_defaults(cfg: Settings) -> Defaults:
    """What a blackhole request that does not say gets, from ``blackhole:``."""
    bh = cfg.blackhole
    return Defaults(bh.next_hop_v4, bh.next_hop_v6, bh.communities, bh.manual_duration_s or None, bh.no_export)


def blackhole_manager(cfg: Settings, state: StateDB, announcer: Any, registry: CollectorRegistry | None,
                      events: Any = None, verifier: Any = None) -> BlackholeManager:
    """The blackhole manager as configured: the collector's, and the one `flowenricher
    blackhole expire` runs while the collector is down (same policy, defaults, audit
    trail and notifications)."""
    from .detect.actions import BlackholeNotifier

    bh, det = cfg.blackhole, cfg.detection
    notifier = BlackholeNotifier(alerts_log=det.alerts_log, slack_webhook=det.slack_webhook, webhooks=det.webhooks)
    return BlackholeManager(state, announcer, SafetyPolicy(safety_settings(cfg)), bh.log_file, blackhole_defaults(cfg),
                            registry, reconcile_interval_s=bh.reconcile_interval_s, events=events, notifier=notifier,
                            verifier=verifier, confirm_timeout_s=bh.confirm_timeout_s,
                            verify_interval_s=bh.router_api.interval_s if bh.router_api else 30.0)


def _add_stats_recorder(runtime: Runtime, cfg: Settings, registry: CollectorRegistry, query: QueryFn,
                        poller: Any) -> None:
    """The collector's counters (and SNMP interface names and speeds) into ClickHouse for
    the appliance-health and interface dashboards, which read only the store."""
    from .stats_recorder import StatsRecorder, snmp_interfaces

    recorder = StatsRecorder(registry, lambda sql: query(sql, "TSV"), cfg.clickhouse.database,
                             interfaces=snmp_interfaces(poller) if poller is not None else None)
    runtime.tickers.append(recorder.tick)
    runtime.closers.append(recorder.close)


def _add_blackholes(runtime: Runtime, cfg: Settings, registry: CollectorRegistry, query: QueryFn) -> None:
    """The blackhole manager (the one owner of announcements) on GoBGP, ticked once a
    second for expiry, retries and reconciliation, with its check thread proving each
    announcement (GoBGP's adj-RIB-out, and the router's table when ``router_api`` is
    set); every action also goes to the blackhole_events table (the security
    dashboard's source).  With ``blackhole.owner`` (a storer in a scale-out) no manager:
    the rules' requests go to the owner (blackhole/owner.py)."""
    from .blackhole.announcer import GoBgpAnnouncer
    from .blackhole.events import BlackholeEvents

    bh = cfg.blackhole
    if bh.owner is not None:  # a storer: the owner's manager decides and announces
        from .blackhole.owner import OwnerSink

        runtime.blackholes = OwnerSink(bh.owner, registry)
        log.info("blackholes: the rules' requests go to the owner at %s", bh.owner.url)
        return
    state = StateDB(cfg.storage.state_db)
    announcer = GoBgpAnnouncer(cfg.bgp.gobgp.api)
    events = BlackholeEvents(lambda sql: query(sql, "TSV"), cfg.clickhouse.database)
    verifier = None
    if bh.router_api is not None:
        from .blackhole.router import RouterOsVerifier

        verifier = RouterOsVerifier(bh.router_api)
        runtime.closers.append(verifier.close)
    manager = blackhole_manager(cfg, state, announcer, registry, events, verifier)
    runtime.closers.extend([state.close, announcer.close, events.close, manager.close])
    runtime.blackholes = manager
    runtime.tickers.append(manager.tick)
    manager.start()
    active = manager.active()
    log.info("blackholes: %d active (state %s, GoBGP %s)%s", len(active), cfg.storage.state_db, cfg.bgp.gobgp.api,
             ", dry run" if bh.dry_run else "")


def _add_bgp_sessions(runtime: Runtime, cfg: Settings, registry: CollectorRegistry) -> None:
    """GoBGP's neighbours and whether each session is up, as metrics the status page and
    Prometheus read (bgp/sessions.py: polled in a thread of its own)."""
    from .bgp.sessions import SessionWatch

    watch = SessionWatch(cfg.bgp.gobgp.api, registry)
    runtime.closers.append(watch.close)
    watch.start()


def apply_live_config(runtime: Runtime, cfg: Settings, new: Settings) -> list[str]:
    """Apply what of `new` can change live: networks and direction, and the blackhole
    limits; the rest is saved and takes effect at the next start (logged, so it is not a
    surprise, and returned)."""
    networks = NetworksStage(new.my_prefixes, {n.prefix: NetworkInfo(n.name, n.customer) for n in new.networks})
    stages = runtime.enricher.stages
    for i, stage in enumerate(stages):
        if isinstance(stage, NetworksStage):
            stages[i] = networks
    if isinstance(runtime.blackholes, BlackholeManager):
        runtime.blackholes.policy = SafetyPolicy(safety_settings(new))
        runtime.blackholes.defaults = blackhole_defaults(new)
    live = {"my_prefixes", "networks", "blackhole"}
    changed = sorted(k for k in set(new.effective) | set(cfg.effective)
                     if new.effective.get(k) != cfg.effective.get(k) and k not in live)
    if changed:
        log.warning("config saved; %s take effect at the next start", ", ".join(changed))
    return changed


def _add_control(runtime: Runtime, cfg: Settings, registry: CollectorRegistry, poller: Any) -> None:
    """What the collector's operations (collector_local.LocalCollector) read besides its
    parts: decoder counters, interface names, and re-reading the config file."""
    from .config import load_config
    from .stats_recorder import exporter_counters, interface_names, snmp_interfaces

    runtime.exporter_counters = exporter_counters(registry)
    if poller is not None:
        runtime.interfaces = interface_names(snmp_interfaces(poller))
    config_path = runtime.config_path
    if config_path is not None:
        def reload_config() -> list[str]:
            try:
                new = load_config(config_path)
            except ConfigError as err:  # named as the API names the document
                raise ConfigError([_renamed(line, config_path, "config") for line in err.problems]) from err
            return apply_live_config(runtime, cfg, new)

        runtime.reload_config = reload_config


def _renamed(problem: str, path: Path, source: str) -> str:
    prefix = f"{path}: "
    return f"{source}: {problem[len(prefix):]}" if problem.startswith(prefix) else problem


def _add_anomaly(runtime: Runtime, cfg: Settings, registry: CollectorRegistry, query: QueryFn) -> AnomalyScoring:
    """Anomaly scoring on every enriched batch (features per source and window), windows
    closed and the model retrained from the tick; scores stored in anomaly_scores."""
    from .detect.anomaly import AnomalyScoring

    scoring = AnomalyScoring(cfg.anomaly, registry, execute=lambda sql: query(sql, "TSV"),
                             database=cfg.clickhouse.database)
    runtime.consumers.append(scoring)
    runtime.tickers.append(scoring.tick)
    runtime.closers.append(scoring.close)
    runtime.anomaly = scoring
    return scoring


def _add_detection(runtime: Runtime, cfg: Settings, rules_path: Path, registry: CollectorRegistry,
                   query: QueryFn, anomaly: AnomalyScoring | None = None) -> DetectionEngine:
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
        blackhole_attempts=cfg.blackhole.owner.attempts if cfg.blackhole.owner is not None else 1,
    )
    engine = DetectionEngine(rules, actions, registry, max_keys_per_rule=det.max_keys_per_rule,
                             samples_per_detection=det.samples_per_detection,
                             scorer=anomaly.score_addresses if anomaly is not None else None,
                             listeners=[anomaly.note_detection] if anomaly is not None else ())
    watcher = RulesWatcher(rules_path, engine.reload, max_window_s=det.flow_cache_max_window_s, registry=registry)
    watcher.install_sighup()
    exchange = _detection_exchange(cfg, engine, registry, anomaly)
    if exchange is not None and anomaly is not None:
        runtime.consumers.remove(anomaly)  # fed every flow of its sources by the exchange
    runtime.consumers.append(engine if exchange is None else exchange)
    runtime.tickers.extend([engine.tick, watcher.tick])

    def reload_rules() -> int:  # the control socket's "reload-rules": the API process wrote the file
        try:
            new = load_rule_set(rules_path, max_window_s=det.flow_cache_max_window_s)
        except ConfigError as err:
            raise ConfigError([_renamed(line, rules_path, "rules") for line in err.problems]) from err
        engine.reload(new)
        log.info("detection: reloaded %d rule(s) from %s on request", len(new), rules_path)
        return len(new)

    runtime.reload_rules = reload_rules
    runtime.closers.append(engine.close)
    if exchange is not None:  # closed first (closers run in reverse): it stops feeding the engine
        runtime.closers.append(exchange.close)
        exchange.start()
    log.info("detection: %d rules from %s; actions %s", len(rules), rules_path, ", ".join(a.name for a in actions))
    return engine


def _detection_exchange(cfg: Settings, engine: DetectionEngine, registry: CollectorRegistry,
                        anomaly: AnomalyScoring | None = None) -> DetectionExchange | None:
    """With ``kafka.detection_topic`` on a storer, the exchange that feeds `engine` every
    flow of its keys, and `anomaly` every flow of its sources, whichever storer read them
    (kafka/detection.py); else None."""
    kafka = cfg.kafka
    if not (kafka.enabled and kafka.role == "store" and kafka.detection_topic):
        return None
    from .kafka.detection import DetectionExchange, DetectionExchangeSettings

    settings = DetectionExchangeSettings(brokers=tuple(str(b) for b in kafka.brokers), topic=kafka.detection_topic,
                                         group_id=kafka.group_id, start_from=kafka.start_from)
    return DetectionExchange(settings, engine, registry, sources=anomaly)


def ptr_cache_sink(store: StoreSettings, query: QueryFn) -> PtrSink:
    """Writes names the resolver found into ``ptr_cache`` (the original's table, which
    dashboards and the API join on).  A failure raises into the resolver, which counts it."""
    from .storage.tables import PTR_CACHE

    def sink(results: list[PtrResult]) -> None:
        if not results:
            return
        query(PTR_CACHE.insert_sql(store.database, [r.row() for r in results]), "TSV")

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
        if "bgp" in cfg.enrich:
            # Without the service, the RIB is loaded here: quick from a prefix file or a
            # small GoBGP table; a full table takes a while (the service keeps it loaded).
            bgp = _bgp_stage(cfg, None)
            closers.append(bgp.close)
            wait = getattr(bgp.source, "wait_synchronized", None)
            if wait is not None:
                wait(30.0)
            lookup.bgp = bgp_lookup(bgp.source.view)
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
