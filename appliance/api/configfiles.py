"""Reading, validating and replacing config.yaml and detection.yml through the API.

A replacement is read and validated by the same code as ``flowenricher validate`` (the
YAML loader with its size, depth and alias limits, the JSON Schemas in ``schemas/`` plus
config.py's checks), so a document the API accepts is one the service would start with,
and one it refuses is refused with the same words.  Then it is written next to the file
and renamed over it (readers never see half a file, a crash leaves the old or the new
one), the file it replaces is kept as ``<name>.previous``, and the running service is
told.  If the service refuses it, both files are put back: a failed replacement leaves
the running settings and the files as they were.

A symlink is followed: the deployed ``/etc/flowenricher/config.yaml`` links into a
directory the service may write (roles/flowenricher), and the file there is replaced.

Bodies may be JSON (``application/json``) or YAML text (anything else).  YAML text is
saved as sent, comments included; a JSON document is saved as YAML.  Secrets are shown
masked and a masked value sent back keeps the current secret (redact.py).
"""

from __future__ import annotations

import logging
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from appliance.flowenricher.common.private import write_atomic
from appliance.flowenricher.config import Settings, load_rules, parse_config, parse_json, parse_rules, parse_yaml
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
                      [Problem(path="$", reason=f"not UTF-8 text (byte {err.start})")]) from err
    media = content_type.split(";", 1)[0].strip().lower()
    is_json = media == "application/json" or media.endswith("+json")
    try:
        return Parsed(parse_json(text, source), None) if is_json else Parsed(parse_yaml(text, source), text)
    except ConfigError as err:
        raise Invalid(f"{source}: the {'JSON' if is_json else 'YAML'} body cannot be read",
                      problems_of(err, source)) from err


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


def previous_file(path: Path) -> Path:
    """Where the file a replacement through the API overwrote is kept (one generation)."""
    return path.with_name(f"{path.name}.previous")


class SettingsFiles:
    """The running config and rules, and the files they came from.  Thread-safe."""

    def __init__(self, settings: Settings, config_path: Path | None, rules_path: Path | None,
                 rules: Rules | None, apply_config: ApplyConfig | None, apply_rules: ApplyRules | None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.rules_path = rules_path
        if rules is None:
            rules = (load_rules(rules_path, max_window_s=settings.detection.flow_cache_max_window_s)
                     if rules_path is not None and rules_path.exists() else [])
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
            # Checked against the running config's window, as `run` and `validate --config` do.
            return parse_rules(parsed.document, "rules",
                               max_window_s=self.settings.detection.flow_cache_max_window_s)
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
        """Keep the current file as ``<name>.previous``, write `text` to `path`, then apply;
        put both files back if writing or applying fails.

        The copy is written before the replacement, so at every moment the former text
        is on disk under one of the two names.
        """
        path = path.resolve()  # a symlink's target is replaced, not the link (see the module docstring)
        backup = previous_file(path)
        written = False
        try:
            previous = path.read_text(encoding="utf-8") if path.exists() else None
            older = backup.read_text(encoding="utf-8") if backup.exists() else None
            mode = stat.S_IMODE(path.stat().st_mode) if previous is not None else None
        except OSError as err:
            raise NotApplied(f"{what}: cannot read {err.filename or path}: {err.strerror or err}; "
                             "nothing changed") from err
        try:
            if previous is not None:
                write_atomic(backup, previous, mode)
            write_atomic(path, text, mode)
            written = True
            apply()
        except Exception as err:
            _put_back(path, previous, backup, older)
            if not written and isinstance(err, OSError):
                raise NotApplied(f"{what}: cannot write {err.filename or path}: {err.strerror or err}; "
                                 "nothing changed") from err
            if isinstance(err, ConfigError):
                raise Invalid(f"{what}: the service refused it; nothing changed", problems_of(err, what)) from err
            if isinstance(err, ApiError):  # e.g. 503: the collector (`flowenricher api`) is not running
                raise
            log.exception("%s: applying the new %s failed; %s restored", what, what, path)
            raise NotApplied(f"{what}: the service could not apply it ({err}); nothing changed") from err


def _put_back(path: Path, previous: str | None, backup: Path, older: str | None) -> None:
    """Both files as they were before a replacement (None: there was no such file)."""
    for target, text in ((path, previous), (backup, older)):
        if text is None:
            target.unlink(missing_ok=True)
        elif not target.exists() or target.read_text(encoding="utf-8") != text:
            write_atomic(target, text)
