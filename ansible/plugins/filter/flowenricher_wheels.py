"""Ansible filters over the wheelhouse the flowenricher role installs from.

* ``flowenricher_pick_wheel``: the wheel to install, chosen by PEP 440 version (so 0.10.0
  wins over 0.9.0, a final release over its pre-releases, 0.1.0+local over 0.1.0), never
  by a text sort of the file names;
* ``flowenricher_wheel_version``: the version in a wheel's file name (what ``pip install
  flowenricher==...`` is given);
* ``flowenricher_wheel_tag_problems``: the projects in the wheelhouse none of whose wheels
  fits the target's Python and platform (the file name's python/abi/platform tags), so
  the play stops before the appliance is changed instead of failing in ``pip install``.

``packaging`` ships with ansible-core, so the controller needs nothing more.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import PurePath
from typing import Any

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, NormalizedName, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

# ansible_architecture / platform.machine() -> the architecture part of platform tags
_ARCHES = {"amd64": "x86_64", "arm64": "aarch64", "i386": "i686", "i586": "i686"}
# The legacy manylinux names and the glibc they stand for (PEP 600).
_LEGACY_MANYLINUX = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}


def _parse(name: str) -> tuple[NormalizedName, Version, frozenset[Tag]]:
    base = PurePath(str(name)).name
    try:
        project, version, _build, tags = parse_wheel_filename(base)
    except (InvalidWheelFilename, InvalidVersion) as err:
        raise ValueError(f"{base} is not a valid wheel file name: {err}") from err
    return project, version, tags


def pick_wheel(names: Iterable[str], version: str = "", project: str = "flowenricher") -> str:
    """The file name (basename) of `project`'s wheel to install from `names`; "" when none fits.

    ``version`` empty: the highest final release by PEP 440, or the highest pre-release when
    the wheelhouse holds no final release (as pip chooses). ``version`` given: the wheel whose
    version equals it by PEP 440 (``0.10`` matches ``0.10.0``); pre-releases and local versions
    are matched only when named. File names of other projects are ignored; a file name of
    `project` that is not a valid wheel name is an error.
    """
    wanted = canonicalize_name(project)
    candidates: list[tuple[Version, str]] = []
    for name in names:
        base = PurePath(str(name)).name
        if not base.endswith(".whl") or canonicalize_name(base.split("-", 1)[0]) != wanted:
            continue
        _project, found, _tags = _parse(base)
        candidates.append((found, base))
    if version:
        try:
            pinned = Version(str(version))
        except InvalidVersion as err:
            raise ValueError(f"flowenricher_version {version!r} is not a PEP 440 version") from err
        matching = sorted(base for found, base in candidates if found == pinned)
        return matching[0] if matching else ""
    finals = [c for c in candidates if not c[0].is_prerelease]
    pool = finals or candidates
    if not pool:
        return ""
    # the highest version; among wheels of one version, the first file name (stable choice)
    best = max(found for found, _base in pool)
    return sorted(base for found, base in pool if found == best)[0]


def wheel_version(name: str) -> str:
    """The version in a wheel file name, normalised (``flowenricher-0.10.0-py3-none-any.whl`` -> 0.10.0)."""
    return str(_parse(name)[1])


def _platforms(arch: str, glibc: str) -> list[str]:
    arch = _ARCHES.get(arch, arch)
    if glibc:
        match = re.fullmatch(r"(\d+)\.(\d+)(?:\.\d+)*", glibc.strip())
        if not match:
            raise ValueError(f"glibc version {glibc!r} is not MAJOR.MINOR")
        major, minor = int(match[1]), int(match[2])
    else:  # unknown glibc: every manylinux level counts
        major, minor = 2, 99
    platforms = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, -1, -1)]
    platforms += [f"{legacy}_{arch}" for legacy, level in _LEGACY_MANYLINUX.items() if level <= (major, minor)]
    return [*platforms, f"linux_{arch}"]


def supported_tags(python_version: str, arch: str, glibc: str = "") -> set[Tag]:
    """The tags CPython `python_version` (``3.11``) on Linux `arch` with `glibc` installs."""
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.\S*)?", str(python_version).strip())
    if not match:
        raise ValueError(f"Python version {python_version!r} is not MAJOR.MINOR")
    version = (int(match[1]), int(match[2]))
    platforms = _platforms(str(arch).strip(), str(glibc or ""))
    interpreter = f"cp{version[0]}{version[1]}"
    return set(cpython_tags(python_version=version, platforms=platforms)) | set(
        compatible_tags(python_version=version, interpreter=interpreter, platforms=platforms))


def wheel_tag_problems(names: Iterable[str], python_version: str, arch: str, glibc: str = "") -> list[str]:
    """One line per project of `names` (wheel file names) none of whose wheels installs on
    CPython `python_version` on Linux `arch` with `glibc`; [] when every project has one."""
    supported = supported_tags(python_version, arch, glibc)
    by_project: dict[NormalizedName, list[tuple[str, frozenset[Tag]]]] = {}
    for name in names:
        base = PurePath(str(name)).name
        if not base.endswith(".whl"):
            continue
        project, _version, tags = _parse(base)
        by_project.setdefault(project, []).append((base, tags))
    target = f"CPython {python_version} on linux {arch}" + (f" (glibc {glibc})" if glibc else "")
    problems = []
    for project, wheels in sorted(by_project.items()):
        if not any(tags & supported for _base, tags in wheels):
            files = ", ".join(sorted(base for base, _tags in wheels))
            problems.append(f"{project}: no wheel fits {target}: {files}")
    return problems


class FilterModule:
    """Registers the filters under the names the roles use."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "flowenricher_pick_wheel": pick_wheel,
            "flowenricher_wheel_version": wheel_version,
            "flowenricher_wheel_tag_problems": wheel_tag_problems,
        }
