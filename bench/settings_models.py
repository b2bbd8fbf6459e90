"""Settings models: pydantic v2 against msgspec, measured on what the config needs.

The issue behind the per-package settings asked for the library to be chosen by
measurement.  This prints, for each library:

- the cost of importing it in a fresh interpreter (wall time and the RSS it adds), which
  every ``flowenricher`` command pays;
- the time to type one block of config.yaml (``dns`` and ``blackhole``: durations,
  aliases, nested optional blocks) from a dict, the work parse_config adds per document;
- whether it generates the JSON Schema the operator's errors come from.

pydantic's side uses the real models (enrich/settings.py, blackhole/settings.py); the
msgspec side is the same two blocks written as msgspec Structs here, with the same
aliases and the duration parsing as a post-init step.  msgspec is not a dependency of
flowenricher: install it to run this (``pip install msgspec``), or point
``--msgspec-path`` at a directory holding it.

    python bench/settings_models.py [--rounds 20000] [--msgspec-path DIR]
"""


import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DOCUMENT: dict[str, Any] = {
    "dns": {"nameserver": "192.0.2.53", "timeout": 1.5, "min_ttl": "10m", "max_ttl": "12h", "negative_ttl": "30m"},
    "blackhole": {"max_active": 50, "max_duration": "72h", "repeat_window": "12h", "communities": ["65535:666"],
                  "router_api": {"host": "192.0.2.1", "username": "reader", "password": "x", "timeout": "2s"},
                  "never": ["192.0.2.0/24", {"prefix": "198.51.100.7", "until": "2030-01-01T00:00:00Z"}]},
}

IMPORT_PROBE = """
import sys, time
def rss_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
sys.path[:0] = {paths!r}
before = rss_kb()
start = time.perf_counter()
import {module}
elapsed = time.perf_counter() - start
print(elapsed, rss_kb() - before)
"""


def import_cost(module: str, paths: list[str], runs: int = 5) -> tuple[float, float]:
    """Best wall time (ms) and RSS added (MB) of importing `module` in a fresh interpreter."""
    best_ms, rss_mb = float("inf"), 0.0
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", IMPORT_PROBE.format(paths=paths, module=module)],
                             capture_output=True, text=True, check=True).stdout.split()
        best_ms = min(best_ms, float(out[0]) * 1000)
        rss_mb = int(out[1]) / 1024
    return best_ms, rss_mb


def pydantic_models() -> Any:
    from appliance.flowenricher.blackhole.settings import BlackholeSettings
    from appliance.flowenricher.enrich.settings import DnsSettings

    def build(document: dict[str, Any]) -> tuple[Any, Any]:
        return DnsSettings.model_validate(document["dns"]), BlackholeSettings.model_validate(document["blackhole"])

    return build


def msgspec_models() -> Any:
    import msgspec

    from appliance.flowenricher.common.settings_base import parse_duration

    def seconds(value: str | float) -> float:
        return parse_duration(value)

    class Dns(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
        nameserver: str | None = None
        port: int = 53
        timeout: float = 2.0
        max_inflight: int = 64
        rate_per_s: float = 200.0
        backlog: int = 10000
        cache_size: int = 262144
        min_ttl: str | float = "5m"
        max_ttl: str | float = "24h"
        negative_ttl: str | float = "1h"
        private: bool = True

        def __post_init__(self) -> None:
            for name in ("min_ttl", "max_ttl", "negative_ttl"):
                msgspec.structs.force_setattr(self, name, seconds(getattr(self, name)))

    class RouterApi(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
        host: str
        username: str
        port: int | None = None
        password: str = ""
        tls: bool = False
        ca_file: str | None = None
        timeout: str | float = "3s"
        interval: str | float = "30s"

        def __post_init__(self) -> None:
            for name in ("timeout", "interval"):
                msgspec.structs.force_setattr(self, name, seconds(getattr(self, name)))

    class Blackhole(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
        dry_run: bool = False
        max_active: int = 100
        max_active_sources: int | None = None
        max_active_victims: int = 20
        no_export: bool = True
        max_duration: str | float = "168h"
        repeat_factor: float = 2.0
        repeat_window: str | float = "24h"
        max_per_minute: int = 10
        min_prefix_length_v4: int = 32
        min_prefix_length_v6: int = 128
        never: list[str | dict[str, Any]] = msgspec.field(default_factory=list)
        next_hop_v4: str = "192.0.2.1"
        next_hop_v6: str = "100::1"
        communities: list[str] = msgspec.field(default_factory=lambda: ["65535:666"])
        manual_duration: str | float = 0.0
        log_file: str = "blackholes.txt"
        reconcile_interval: str | float = "5s"
        confirm_timeout: str | float = "10s"
        router_api: RouterApi | None = None

        def __post_init__(self) -> None:
            for name in ("max_duration", "repeat_window", "manual_duration", "reconcile_interval", "confirm_timeout"):
                msgspec.structs.force_setattr(self, name, seconds(getattr(self, name)))

    def build(document: dict[str, Any]) -> tuple[Any, Any]:
        return msgspec.convert(document["dns"], Dns), msgspec.convert(document["blackhole"], Blackhole)

    build.schema = lambda: msgspec.json.schema(Blackhole)  # type: ignore[attr-defined]
    return build


def per_document_us(build: Any, rounds: int) -> float:
    build(DOCUMENT)
    start = time.perf_counter()
    for _ in range(rounds):
        build(DOCUMENT)
    return (time.perf_counter() - start) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--msgspec-path", default="", help="a directory holding msgspec, if it is not installed")
    args = parser.parse_args()
    paths = [args.msgspec_path] if args.msgspec_path else []
    sys.path[:0] = paths

    rows = []
    for name, module, factory in (("pydantic", "pydantic", pydantic_models), ("msgspec", "msgspec", msgspec_models)):
        try:
            build = factory()
        except ImportError as err:
            print(f"{name}: not available ({err}); skipped")
            continue
        ms, mb = import_cost(module, paths)
        us = per_document_us(build, args.rounds)
        schema = "yes (model_json_schema, custom generator)" if name == "pydantic" else (
            "yes (msgspec.json.schema)" if getattr(build, "schema", None) and json.dumps(build.schema()) else "no")
        rows.append((name, ms, mb, us, schema))
    print(f"{'library':10} {'import ms':>10} {'import RSS MB':>14} {'dns+blackhole us':>17}  schema generation")
    for name, ms, mb, us, schema in rows:
        print(f"{name:10} {ms:10.1f} {mb:14.1f} {us:17.1f}  {schema}")


if __name__ == "__main__":
    main()
