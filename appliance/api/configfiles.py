"""Reading, validating and replacing config.yaml and detection.yml through the API.

A replacement is validated by the same code as ``flowenricher validate`` (the JSON
Schemas in ``schemas/`` plus config.py's checks), so a document the API accepts is one
the service would start with.  Then it is written next to the file and renamed over
it (readers never see half a file, a crash leaves the old or the new one), and the
running service is told.  If the service refuses it, the previous file is put back:
a failed replacement leaves both the running settings and the file as they were.

Bodies may be JSON (``application/json``) or YAML text (anything else).  YAML text is
saved as sent, comments included; a JSON document is saved as YAML.  Secrets are shown
masked and a masked value sent back keeps the current secret (redact.py).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from appliance.flowenricher.config import Settings, load_rules, parse_config, parse_rules, parse_yaml
from appliance.flowenricher.errors import ConfigError

from .errors import ApiError, Conflict, Invalid, Problem
from .redact import MARKER, redact, restore

log = logging.getLogger(__name__)

ApplyConfig = Callable[[Settings], None]
ApplyRules = Callable[[list[dict[str, Any]]], None]
Rules = list[dict[str, Any]]


class NotApplied(ApiError):
    """The document was valid but the running service failed to take it; nothing changed."""

    status = 500
    error = "not_applied"


@dataclass(frozen=True)
class Parsed:
    """A request body: the document, and the text to save when it came as YAML."""

    document: Any
    text: str | None


def parse_body(body: bytes, content_type: str, source: str) -> Parsed:
    """The document in a request body; Invalid (422) naming the line or position if it
    does not parse."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Invalid(f"{source}: the body is not UTF-8",
                      [Problem(path="$", reason=f"not UTF-8 (byte {err.start})")]) from err
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        try:
            return Parsed(json.loads(text), None)
        except ValueError as err:
            raise Invalid(f"{source}: the body is not JSON", [Problem(path="$", reason=str(err))]) from err
    try:
        return Parsed(parse_yaml(text, source), text)
    except ConfigError as err:
        raise Invalid(f"{source}: the body is not valid YAML", problems_of(err, source)) from err


def problems_of(err: ConfigError, source: str) -> list[Problem]:
    """ConfigError lines (``SOURCE: $.path: reason``, or ``SOURCE: line N, ...: reason``) as
    problems."""
    out = []
    for line in err.problems:
        rest = line.removeprefix(f"{source}: ")
        where, reason = _split_location(rest)
        out.append(Problem(path=where, reason=reason))
    return out


def _split_location(text: str) -> tuple[str, str]:
    """Split ``$.a['x: y'][0]: reason`` at the first ": " outside brackets and quotes."""
    depth, quote = 0, ""
    for index, char in enumerate(text):
        if quote:
            if char == quote and text[index - 1] != "\\":
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == ":" and depth == 0 and text[index + 1:index + 2] == " ":
            return text[:index], text[index + 2:]
    return "$", text


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename, keeping its permissions; durable on return."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class SettingsFiles:
    """The running config and rules, and the files they came from.  Thread-safe."""

    def __init__(self, settings: Settings, config_path: Path | None, rules_path: Path | None,
                 rules: Rules | None, apply_config: ApplyConfig | None, apply_rules: ApplyRules | None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.rules_path = rules_path
        if rules is None:
            rules = load_rules(rules_path) if rules_path is not None and rules_path.exists() else []
        self.rules: Rules = rules
        self._apply_config = apply_config
        self._apply_rules = apply_rules
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ config

    def config_view(self) -> dict[str, Any]:
        """The config as written and as it runs (every default filled in), secrets masked."""
        return {"path": str(self.config_path) if self.config_path else None,
                "config": redact(self.settings.raw), "effective": redact(self.settings.effective)}

    def validate_config(self, parsed: Parsed) -> Settings:
        document, problems = restore(parsed.document, self.settings.raw)
        if problems:
            raise Invalid("config: a masked secret has no current value", problems)
        try:
            return parse_config(document, "config")
        except ConfigError as err:
            raise Invalid("config: the document does not validate", problems_of(err, "config")) from err

    def replace_config(self, parsed: Parsed) -> Settings:
        """Validate, save and apply a new config; on any failure nothing changes."""
        path = self._target(self.config_path, "config", "--config")
        with self._lock:
            settings = self.validate_config(parsed)
            text = self._text(parsed, settings.raw)
            self._swap(path, text, lambda: self._apply_config(settings) if self._apply_config else None, "config")
            self.settings = settings
            log.info("config replaced through the API and saved to %s", path)
            return settings

    # ------------------------------------------------------------------ rules

    def rules_view(self) -> dict[str, Any]:
        return {"path": str(self.rules_path) if self.rules_path else None, "rules": self.rules}

    def validate_rules(self, parsed: Parsed) -> Rules:
        try:
            return parse_rules(parsed.document, "rules")
        except ConfigError as err:
            raise Invalid("rules: the document does not validate", problems_of(err, "rules")) from err

    def replace_rules(self, parsed: Parsed) -> Rules:
        path = self._target(self.rules_path, "rules", "--rules")
        with self._lock:
            rules = self.validate_rules(parsed)
            text = self._text(parsed, parsed.document)
            self._swap(path, text, lambda: self._apply_rules(rules) if self._apply_rules else None, "rules")
            self.rules = rules
            log.info("detection rules replaced through the API (%d rules) and saved to %s", len(rules), path)
            return rules

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _target(path: Path | None, what: str, flag: str) -> Path:
        if path is None:
            raise Conflict(f"the service runs without a {what} file ({flag}): there is no file to replace")
        return path

    @staticmethod
    def _text(parsed: Parsed, document: Any) -> str:
        """YAML text as sent (comments kept) unless secrets had to be filled in; else a dump."""
        if parsed.text is not None and MARKER not in parsed.text:
            return parsed.text
        dumped: str = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, default_flow_style=False)
        return dumped

    @staticmethod
    def _swap(path: Path, text: str, apply: Callable[[], None], what: str) -> None:
        """Write `text` to `path`, then apply; put the old file back if applying fails."""
        previous = path.read_text(encoding="utf-8") if path.exists() else None
        try:
            write_atomic(path, text)
        except OSError as err:
            raise NotApplied(f"{what}: cannot write {path}: {err.strerror or err}; nothing changed") from err
        try:
            apply()
        except Exception as err:
            if previous is None:
                path.unlink(missing_ok=True)
            else:
                write_atomic(path, previous)
            if isinstance(err, ConfigError):
                raise Invalid(f"{what}: the service refused it; nothing changed", problems_of(err, what)) from err
            if isinstance(err, ApiError):  # e.g. 503: the collector (`flowenricher api`) is not running
                raise
            log.exception("%s: applying the new %s failed; %s restored", what, what, path)
            raise NotApplied(f"{what}: the service could not apply it ({err}); nothing changed") from err
