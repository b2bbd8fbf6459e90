"""The flowenricher role's wheelhouse filters (ansible/plugins/filter/flowenricher_wheels.py).

* the wheel to install is chosen by PEP 440 version, not by a text sort of file names
  (0.10.0 over 0.9.0, a final release over its pre-releases, local versions ordered);
* a pinned flowenricher_version matches by PEP 440 equality;
* the wheelhouse check names every project none of whose wheels fits the target's
  CPython version, architecture and glibc (the file names' python/abi/platform tags).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

PLUGIN = Path(__file__).resolve().parent.parent / "ansible" / "plugins" / "filter" / "flowenricher_wheels.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flowenricher_wheels", PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wheels = _load()


def _whl(version: str, tags: str = "py3-none-any", project: str = "flowenricher") -> str:
    return f"{project}-{version}-{tags}.whl"


@pytest.mark.parametrize(("versions", "chosen"), [
    (["0.9.0", "0.10.0"], "0.10.0"),                # a text sort picks 0.9.0
    (["0.10.0", "0.9.0", "0.2.0"], "0.10.0"),
    (["1.0.0", "1.0.0rc1", "1.0.0.dev3"], "1.0.0"),  # pre-releases below their release
    (["1.0.0", "1.1.0rc1"], "1.0.0"),                # a newer pre-release is not installed unasked
    (["1.1.0rc1", "1.1.0b2"], "1.1.0rc1"),           # only pre-releases: the highest of them
    (["1.0.0a1", "1.0.0.dev9"], "1.0.0a1"),
    (["0.1.0", "0.1.0+build.7", "0.1.0+build.10"], "0.1.0+build.10"),  # local versions by PEP 440
    (["0.9.0+zzz", "0.10.0"], "0.10.0"),
    (["1.0.post1", "1.0.0"], "1.0.post1"),
])
def test_the_highest_version_by_pep_440(versions: list[str], chosen: str) -> None:
    names = [f"/wheelhouse/{_whl(v)}" for v in versions]
    picked = wheels.pick_wheel(names)
    assert picked == _whl(chosen)
    assert wheels.wheel_version(picked) == chosen


def test_other_projects_and_files_are_ignored() -> None:
    names = [_whl("9.9.9", project="flowenricher_extras"), _whl("5.0", project="requests"), "README.txt",
             _whl("0.1.0")]
    assert wheels.pick_wheel(names) == _whl("0.1.0")
    assert wheels.pick_wheel(["requests-5.0-py3-none-any.whl"]) == ""
    assert wheels.pick_wheel([]) == ""


def test_a_pinned_version_matches_by_pep_440_equality() -> None:
    names = [_whl(v) for v in ("0.9.0", "0.10.0", "0.10.1rc1", "0.10.0+local")]
    assert wheels.pick_wheel(names, "0.10") == _whl("0.10.0")
    assert wheels.pick_wheel(names, "0.9.0") == _whl("0.9.0")
    assert wheels.pick_wheel(names, "0.10.1rc1") == _whl("0.10.1rc1")     # asked for: a pre-release
    assert wheels.pick_wheel(names, "0.10.0+local") == _whl("0.10.0+local")
    assert wheels.pick_wheel(names, "0.11.0") == ""
    with pytest.raises(ValueError, match="not a PEP 440 version"):
        wheels.pick_wheel(names, "latest")


def test_a_broken_flowenricher_file_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a valid wheel file name"):
        wheels.pick_wheel(["flowenricher-notaversion-py3-none-any.whl"])


# ---------------------------------------------------------------- tags against the target

DEBIAN_12 = ("3.11", "x86_64", "2.36")


@pytest.mark.parametrize("name", [
    "flowenricher-0.1.0-py3-none-any.whl",
    "chdb-3.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "msgspec-0.18.6-cp311-cp311-manylinux_2_17_x86_64.whl",
    "pytricia-1.0.2-cp311-cp311-linux_x86_64.whl",          # built from source on a Linux controller
    "cryptography-43.0.0-cp39-abi3-manylinux_2_28_x86_64.whl",  # stable ABI from an older Python
    "grpcio-1.66.0-cp311-cp311-manylinux1_x86_64.whl",
    "orjson-3.10.0-cp311-cp311-manylinux_2_36_x86_64.whl",
])
def test_wheels_that_fit_debian_12(name: str) -> None:
    assert wheels.wheel_tag_problems([name], *DEBIAN_12) == []


@pytest.mark.parametrize(("name", "why"), [
    ("chdb-3.1.0-cp312-cp312-manylinux_2_17_x86_64.whl", "another CPython"),
    ("chdb-3.1.0-cp311-cp311-manylinux_2_17_aarch64.whl", "another architecture"),
    ("chdb-3.1.0-cp311-cp311-manylinux_2_39_x86_64.whl", "a newer glibc"),
    ("chdb-3.1.0-cp311-cp311-musllinux_1_2_x86_64.whl", "musl"),
    ("chdb-3.1.0-cp311-cp311-macosx_11_0_arm64.whl", "macOS"),
    ("chdb-3.1.0-cp311-cp311-win_amd64.whl", "Windows"),
    ("chdb-3.1.0-pp310-pypy310_pp73-manylinux_2_17_x86_64.whl", "PyPy"),
    ("chdb-3.1.0-cp312-abi3-manylinux_2_17_x86_64.whl", "a stable ABI newer than the target"),
])
def test_wheels_that_do_not_fit_debian_12_are_named(name: str, why: str) -> None:
    problems = wheels.wheel_tag_problems([name, "flowenricher-0.1.0-py3-none-any.whl"], *DEBIAN_12)
    assert problems == [f"chdb: no wheel fits CPython 3.11 on linux x86_64 (glibc 2.36): {name}"], why


def test_one_fitting_wheel_per_project_is_enough() -> None:
    """A wheelhouse built for two targets holds a wheel of a project for each."""
    names = ["chdb-3.1.0-cp312-cp312-manylinux_2_17_x86_64.whl", "chdb-3.1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
             "msgspec-0.18.6-cp312-cp312-manylinux_2_17_x86_64.whl"]
    assert wheels.wheel_tag_problems(names, *DEBIAN_12) == [
        "msgspec: no wheel fits CPython 3.11 on linux x86_64 (glibc 2.36): "
        "msgspec-0.18.6-cp312-cp312-manylinux_2_17_x86_64.whl"]
    assert wheels.wheel_tag_problems(names, "3.12", "x86_64", "2.36") == []


def test_architecture_names_and_unknown_glibc() -> None:
    arm = "chdb-3.1.0-cp311-cp311-manylinux_2_17_aarch64.whl"
    assert wheels.wheel_tag_problems([arm], "3.11.2", "aarch64", "2.36") == []
    assert wheels.wheel_tag_problems([arm], "3.11", "arm64", "2.36") == []   # dpkg's name for it
    # glibc unknown: any manylinux level is accepted, the Python and architecture still count
    assert wheels.wheel_tag_problems(["x-1-cp311-cp311-manylinux_2_39_x86_64.whl"], "3.11", "x86_64") == []
    assert wheels.wheel_tag_problems(["x-1-cp310-cp310-manylinux_2_17_x86_64.whl"], "3.11", "x86_64") != []
    with pytest.raises(ValueError, match=r"not MAJOR\.MINOR"):
        wheels.wheel_tag_problems([arm], "three", "x86_64")


def test_the_real_wheel_of_this_checkout_fits_this_python() -> None:
    """What `pip wheel .` names this project's wheel fits the interpreter running the tests."""
    import platform
    import sys
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert wheels.wheel_tag_problems(["flowenricher-0.1.0-py3-none-any.whl"], version, platform.machine(),
                                     platform.libc_ver()[1]) == []
