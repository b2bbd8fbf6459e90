"""The `flowenricher` console script: the core's commands (appliance/flowenricher/cli.py)
with the control plane's added, `api` and `token`, and the API served inside `run`.

The core never imports the API (docs/architecture.md); this module, above both, is
where they meet.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.flowenricher import cli as core
from appliance.flowenricher.cli import EXIT_BAD_INPUT, EXIT_OK, Extension, add_option, load_settings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from appliance.api.tokens import TokenInfo
    from appliance.flowenricher.cli import Subcommands
    from appliance.flowenricher.config import Settings
    from appliance.flowenricher.service import QueryFn, Runtime


def _add_commands(sub: Subcommands) -> None:
    api = sub.add_parser("api", help="serve the control plane (API) on api.listen beside a running `run`")
    add_option(api, "config", default=None, help="config.yaml: the collector's (default: built-in embedded defaults)")
    add_option(api, "rules", default=None, help="detection.yml: the collector's (default: detection.rules_config)")
    api.set_defaults(handler=_cmd_api)

    tok = sub.add_parser("token", help="API tokens: create (printed once), revoke, list")
    tok.set_defaults(handler=_cmd_token)
    tok_sub = tok.add_subparsers(dest="token_command", required=True)
    tok_create = tok_sub.add_parser("create", help="print a new API token")
    tok_create.add_argument("--scope", choices=("admin", "read"), required=True)
    tok_create.add_argument("--name", default=None, help="a label for the audit log (default: generated)")
    add_option(tok_create, "config", default=None)
    tok_revoke = tok_sub.add_parser("revoke", help="revoke tokens by id or name")
    tok_revoke.add_argument("token", help="id or name")
    add_option(tok_revoke, "config", default=None)
    tok_list = tok_sub.add_parser("list", help="list tokens (never their secrets): a table, or JSON with --json")
    add_option(tok_list, "config", default=None)
    tok_list.add_argument("--json", action="store_true", help="a JSON array of {id, name, scope, created_at, "
                          "revoked_at, active}, times as ISO 8601 UTC")


def _cmd_api(args: argparse.Namespace) -> int:
    """The API as its own process: it reaches the collector through its control socket
    and starts even when none runs yet (what needs the collector answers 503 meanwhile)."""
    from appliance.api.remote import serve_api

    cfg = load_settings(args.config)
    if args.log_level is None:
        logging.getLogger().setLevel(cfg.log_level.upper())
    if cfg.api.enabled:  # else the collector would find api.listen taken and fail to start
        print(f"{args.config or 'the default config'}: $.api.enabled: true, so `flowenricher run` serves the API "
              "itself on api.listen; set api.enabled: false to run the API as its own service", file=sys.stderr)
        return EXIT_BAD_INPUT
    rules_path = core.rules_path_of(args, cfg)
    if rules_path is not None and not rules_path.exists():
        print(f"rules file {rules_path} does not exist", file=sys.stderr)
        return EXIT_BAD_INPUT
    return serve_api(cfg, Path(args.config) if args.config else None, rules_path)


def _cmd_token(args: argparse.Namespace) -> int:
    from appliance.api.tokens import TokenError, create_token, list_tokens, revoke_token
    from appliance.flowenricher.blackhole.state import StateDB
    from appliance.flowenricher.common.private import private_dir

    cfg = load_settings(args.config)
    private_dir(cfg.storage.path)
    state = StateDB(cfg.storage.state_db)
    try:
        if args.token_command == "create":
            issued = create_token(state.engine, args.scope, args.name)
            print(issued.token)
            print(f"token {issued.id} ({issued.name}, scope {issued.scope}) created; it is shown only now",
                  file=sys.stderr)
        elif args.token_command == "revoke":
            revoked = revoke_token(state.engine, args.token)
            print(f"revoked: {', '.join(str(i) for i in revoked)}")
        else:
            _print_tokens(list_tokens(state.engine), args.json)
    except TokenError as err:
        print(err, file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        state.close()
    return EXIT_OK


def _print_tokens(tokens: Sequence[TokenInfo], as_json: bool) -> None:
    """The tokens as a table for people or JSON for scripts (the api role reads it):
    ids, names, scopes and times only; no secret is stored to print."""
    import json
    import time

    def when(at: float | None) -> str | None:
        return None if at is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))

    if as_json:
        print(json.dumps([{"id": t.id, "name": t.name, "scope": t.scope, "created_at": when(t.created_at),
                           "revoked_at": when(t.revoked_at), "active": t.revoked_at is None} for t in tokens],
                         indent=2))
        return
    # A name is any 1 to 64 characters: escaped in the table so it cannot break a row.
    names = [t.name if t.name.isprintable() else t.name.encode("unicode_escape").decode("ascii") for t in tokens]
    width = max([len(name) for name in names] + [4])
    print(f"{'ID':>5}  {'NAME':{width}}  {'SCOPE':5}  {'CREATED (UTC)':20}  REVOKED (UTC)")
    for t, name in zip(tokens, names, strict=True):
        print(f"{t.id:>5}  {name:{width}}  {t.scope:5}  {when(t.created_at):20}  {when(t.revoked_at) or '-'}")


def _serve_api_in_collector(runtime: Runtime, cfg: Settings, registry: CollectorRegistry, query: QueryFn) -> None:
    """The API inside `run` when ``api.enabled`` (else `flowenricher api` may serve it as
    its own process); imported only then, so the other commands do not load FastAPI."""
    if cfg.api.enabled:
        from appliance.api.inprocess import serve_in_collector

        serve_in_collector(runtime, cfg, registry, query)


EXTENSION = Extension(_add_commands, runtime=(_serve_api_in_collector,))
"""The control plane's part of the command line."""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line's parser (its help is the user's)."""
    return core.build_parser(EXTENSION)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script."""
    return core.main(argv, EXTENSION)


if __name__ == "__main__":
    raise SystemExit(main())
