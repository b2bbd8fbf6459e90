"""The grafana role's check of a plugin archive on the controller, before any host changes.

A plugin zip as grafana.com serves it holds one top directory named by the plugin's id,
with ``plugin.json`` (``id``, ``info.version``) in it; the role unpacks it into Grafana's
plugin directory instead of letting ``grafana-cli`` fetch it from the internet.  So the
preflight reads the archive and refuses one that would not install the pinned version of
that plugin, or that would write outside the plugin's own directory.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any


def plugin_archive_problems(archive: str, plugin_id: str, version: str) -> list[str]:
    """What is wrong with `archive` as `plugin_id` at `version`; [] when it fits."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            names = zipped.namelist()
            outside = [n for n in names if PurePosixPath(n).parts[:1] != (plugin_id,) or ".." in PurePosixPath(n).parts]
            if outside:
                return [f"{archive}: {outside[0]!r} is outside the plugin's directory {plugin_id}/"]
            try:
                manifest = json.loads(zipped.read(f"{plugin_id}/plugin.json"))
            except KeyError:
                return [f"{archive}: no {plugin_id}/plugin.json"]
    except (OSError, zipfile.BadZipFile) as err:
        return [f"{archive}: not a readable zip archive ({err})"]
    except ValueError as err:
        return [f"{archive}: {plugin_id}/plugin.json is not JSON ({err})"]
    found_id = manifest.get("id")
    found_version = (manifest.get("info") or {}).get("version")
    problems = []
    if found_id != plugin_id:
        problems.append(f"{archive}: holds the plugin {found_id!r}, not {plugin_id!r}")
    if found_version != version:
        problems.append(f"{archive}: holds version {found_version!r}, the role pins {version!r}")
    return problems


class FilterModule:
    """Registers the filter under the name the role uses."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"grafana_plugin_archive_problems": plugin_archive_problems}
