"""What `pip install .` installs is enough for every configured feature.

Two traps: a module the package imports that only the test extras (or another tool in the
same environment) brought in, and a library's *optional* import that one of our features
needs (pysnmp's SNMPv3 privacy imports `cryptography` inside a try/except and fails only
at the first authPriv walk).  Both are read from the installed package's metadata.
The authPriv (AES) walk against a real snmpd is in tests/test_enrich_snmp.py.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as metadata
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PACKAGE = Path(__file__).resolve().parents[1] / "appliance"

# Optional imports of the libraries we use that a configured feature needs: distribution -> why.
OPTIONAL_NEEDED = {
    "cryptography": "SNMPv3 privacy in pysnmp (snmp.targets[].priv_protocol des/3des/aes*)",
}


def _unconditional(dist: str) -> set[str]:
    """Names a distribution requires on this platform, outside any extra."""
    out: set[str] = set()
    for text in metadata.requires(dist) or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.add(canonicalize_name(req.name))
    return out


def _closure(dist: str) -> set[str]:
    """Every distribution `pip install dist` brings in (without extras)."""
    seen: set[str] = set()
    todo = [dist]
    while todo:
        for name in _unconditional(todo.pop()):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def _imported_top_level_modules() -> set[str]:
    """Top-level modules appliance/ imports on this Python (a `sys.version_info` branch
    that does not apply here, such as 3.14's stdlib `compression`, is left out)."""
    modules: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "sys.version_info" in ast.unparse(node.test):
            taken = eval(compile(ast.Expression(node.test), "<version test>", "eval"), {"sys": sys})
            for branch in node.body if taken else node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    for path in PACKAGE.rglob("*.py"):
        visit(ast.parse(path.read_text(), str(path)))
    return modules - set(sys.stdlib_module_names) - {"appliance", "__future__"}


def test_every_import_comes_with_the_package() -> None:
    installed = _closure("flowenricher")
    providers = metadata.packages_distributions()
    missing = {}
    for module in sorted(_imported_top_level_modules()):
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if not dists & installed:
            missing[module] = sorted(dists) or "not installed at all"
    assert not missing, f"imported by appliance/ but not installed by `pip install .`: {missing}"


def test_optional_imports_our_features_need_are_direct_dependencies() -> None:
    direct = _unconditional("flowenricher")
    assert {dist for dist in OPTIONAL_NEEDED if dist not in direct} == set(), OPTIONAL_NEEDED


@pytest.mark.parametrize("module", [
    "pysnmp.proto.secmod.rfc3414.priv.des",
    "pysnmp.proto.secmod.eso.priv.des3",
    "pysnmp.proto.secmod.rfc3826.priv.aes",  # also the cipher of aes192/aes256 (eso.priv.aesbase)
])
def test_pysnmp_privacy_found_its_cipher_library(module: str) -> None:
    """pysnmp sets PysnmpCryptoError when its import of `cryptography` failed (missing,
    or too old for hazmat.decrepit); an authPriv walk would then fail at run time."""
    assert importlib.import_module(module).PysnmpCryptoError is False
