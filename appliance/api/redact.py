"""Keeping secrets out of what the API shows and records.

The config holds the ClickHouse password and SNMP communities and keys.  ``GET config``
shows them as :data:`MARKER`, and a document sent back with the marker in place keeps
the current value (:func:`restore`), so an operator can read, edit and replace the
config without ever seeing or retyping a secret.  The audit log records request bodies
through :func:`summarize`, which masks the same keys in JSON and YAML text.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import Problem

MARKER = "********"
SECRET_KEYS = frozenset({"password", "community", "auth_key", "priv_key", "token", "secret"})
_YAML_SECRET = re.compile(
    r"(?im)^(\s*-?\s*[\"']?(?:" + "|".join(sorted(SECRET_KEYS)) + r")[\"']?\s*:\s*)(?!\s*$)(\S.*?)\s*$"
)
_JSON_SECRET = re.compile(r"(?i)(\"(?:" + "|".join(sorted(SECRET_KEYS)) + r")\"\s*:\s*)\"(?:[^\"\\]|\\.)*\"")


def _is_secret(key: object) -> bool:
    return isinstance(key, str) and key.lower() in SECRET_KEYS


def redact(document: Any) -> Any:
    """A copy of `document` with every non-empty secret value replaced by MARKER."""
    if isinstance(document, dict):
        return {k: MARKER if _is_secret(k) and v not in (None, "") else redact(v) for k, v in document.items()}
    if isinstance(document, list):
        return [redact(item) for item in document]
    return document


def restore(document: Any, current: Any, path: str = "$") -> tuple[Any, list[Problem]]:
    """`document` with each MARKER under a secret key replaced by the value at the same
    place in `current`; a marker with nothing to keep is a problem at its path."""
    problems: list[Problem] = []
    if isinstance(document, dict):
        out: dict[str, Any] = {}
        for key, value in document.items():
            here = f"{path}.{key}"
            old = current.get(key) if isinstance(current, dict) else None
            if _is_secret(key) and value == MARKER:
                if old in (None, "", MARKER):
                    problems.append(Problem(path=here, reason=f"{MARKER!r} keeps the current secret, but there is none"))
                out[key] = old
            else:
                out[key], more = restore(value, old, here)
                problems += more
        return out, problems
    if isinstance(document, list):
        items = []
        for index, value in enumerate(document):
            old = current[index] if isinstance(current, list) and index < len(current) else None
            item, more = restore(value, old, f"{path}[{index}]")
            items.append(item)
            problems += more
        return items, problems
    return document, problems


def summarize(body: bytes, limit: int = 1000) -> str:
    """A request body as the audit log keeps it: secrets masked, at most `limit` characters."""
    if not body:
        return ""
    text = body.decode("utf-8", errors="replace")
    try:
        text = json.dumps(redact(json.loads(text)), separators=(",", ":"), ensure_ascii=False)
    except (ValueError, RecursionError):  # not JSON, or nested too deeply to decode: kept as text
        text = _JSON_SECRET.sub(lambda m: f'{m[1]}"{MARKER}"', text)
        text = _YAML_SECRET.sub(lambda m: f"{m[1]}{MARKER}", text)
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(body)} bytes)"
    return text
