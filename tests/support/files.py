"""Test helpers over files: a throw-away TLS certificate made with openssl, and a Python
file loaded as a module (Ansible filter plugins are files, not an importable package)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import yaml


def self_signed(directory: Path, name: str, common_name: str, san: str | None = None) -> tuple[Path, Path]:
    """`directory`/`name`.pem and .key: a 2-day self-signed RSA certificate; skips the test
    when openssl is not installed."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    f"/CN={common_name}", *(["-addext", f"subjectAltName={san}"] if san else []),
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def load_module(path: Path) -> ModuleType:
    """The Python file at `path` as a module named after it."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def set_group_vars(inventory: Path, group: str, values: dict[str, object]) -> None:
    """Add `values` over what `inventory` sets for `group`: in group_vars/<group>.yml when
    that file exists, else in group_vars/<group>/zz-test.yml (loaded last). Ansible reads
    a group's directory or its .yml file, not both (the directory wins), so a test must
    not make the directory beside the file."""
    single = inventory / "group_vars" / f"{group}.yml"
    target = single if single.exists() else inventory / "group_vars" / group / "zz-test.yml"
    target.parent.mkdir(parents=True, exist_ok=True)
    current = yaml.safe_load(target.read_text()) if target.exists() else {}
    target.write_text(yaml.safe_dump({**(current or {}), **values}))
