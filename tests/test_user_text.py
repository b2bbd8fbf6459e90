"""Text a user reads speaks for itself: `--help` of every subcommand, the JSON Schemas'
descriptions (which `validate` and editors show), the OpenAPI document behind /docs, the
example configs and inventory, the roles' defaults, and the messages the code prints or
logs never send the reader to the project's internal documents (its design brief, its
style notes, issue numbers, the developers' shared folder).  Comments and docstrings may
cite them: they are for developers, and are not scanned."""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.api import make_env

from appliance.cli import build_parser

REPO = Path(__file__).resolve().parent.parent

# What points a user at a document they do not have.  RFC sections ("RFC 7011 §8") are
# public and stay allowed.
FORBIDDEN: dict[str, re.Pattern[str]] = {
    "the design brief": re.compile(r"\bDESIGN\b|DESIGN\.md|\boriginal design\b|\bthe brief\b"),
    "the style notes": re.compile(r"STYLE\.md"),
    "an issue number": re.compile(r"\b[Ii]ssues? #?\d+"),
    "the shared folder": re.compile(r"\.\./shared\b|/work/shared\b"),
    "a section sign not of an RFC": re.compile(r"(?<!RFC \d{4} )(?<!RFC \d{3} )§"),
}


def problems_in(text: str, where: str) -> list[str]:
    """One line per forbidden reference in `text`: where, what kind, and the words around it."""
    found = []
    for kind, pattern in FORBIDDEN.items():
        for match in pattern.finditer(text):
            around = text[max(0, match.start() - 40):match.end() + 40].replace("\n", " ")
            found.append(f"{where}: {kind}: ...{around}...")
    return found


def test_the_patterns_catch_what_they_are_for() -> None:
    """The scan can fail: each kind of reference is caught, and an RFC section is not."""
    caught = {
        "limits of DESIGN §5": 2, "see ../shared/examples/README.md": 1, "Anomaly scoring (issue 6)": 1,
        "the original design: every 5 minutes": 1, "as STYLE.md says": 1, "per the brief": 1,
    }
    for text, count in caught.items():
        assert len(problems_in(text, "sample")) == count, text
    assert problems_in("templates are withdrawn (RFC 7011 §8.1); padding as RFC 791 §3.1", "sample") == []


def _parsers(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """The parser of `name` and of every subcommand below it, as `flowenricher X Y --help` reaches them."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_help_of_every_subcommand() -> None:
    parsers = dict(_parsers(build_parser(), "flowenricher"))
    # The walk reaches the nested commands too, so a silent empty scan cannot pass.
    assert {"flowenricher decode", "flowenricher token create", "flowenricher blackhole expire",
            "flowenricher spool requeue"} <= set(parsers)
    found = [line for name, parser in parsers.items() for line in problems_in(parser.format_help(), f"`{name} --help`")]
    assert found == []


def _strings(node: Any, path: str, keys: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """(JSON path, text) of every string under one of `keys`, anywhere in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys and isinstance(value, str):
                yield f"{path}.{key}", value
            yield from _strings(value, f"{path}.{key}", keys)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, f"{path}[{index}]", keys)


SCHEMA_TEXT_KEYS = ("title", "description", "$comment", "errorMessage")


def test_schema_descriptions() -> None:
    schemas = sorted((REPO / "schemas").glob("*.json"))
    assert len(schemas) >= 2
    found = [line for schema in schemas
             for path, text in _strings(json.loads(schema.read_text()), "$", SCHEMA_TEXT_KEYS)
             for line in problems_in(text, f"{schema.relative_to(REPO)}: {path}")]
    assert found == []


def test_openapi_document(tmp_path: Path) -> None:
    """What /docs and /redoc show: summaries and descriptions of every route and model."""
    document = make_env(tmp_path).app.openapi()
    texts = list(_strings(document, "$", ("title", "summary", "description")))
    assert any(path.startswith("$.paths./announce") for path, _ in texts)
    found = [line for path, text in texts for line in problems_in(text, f"openapi.json: {path}")]
    assert found == []


def example_files() -> list[Path]:
    """The files a user copies and edits: the service's example configs, the example
    inventory, and the roles' documented defaults."""
    files = [*(REPO / "appliance" / "flowenricher" / "examples").iterdir(),
             *(path for path in (REPO / "inventory.example").rglob("*") if path.is_file()),
             *(REPO / "roles").glob("*/defaults/*.yml")]
    return sorted(files)


def test_example_configs_and_defaults() -> None:
    files = example_files()
    assert REPO / "appliance" / "flowenricher" / "examples" / "config.yaml" in files
    assert REPO / "roles" / "flowenricher" / "defaults" / "main.yml" in files
    found = [line for path in files for number, text in enumerate(path.read_text().splitlines(), 1)
             for line in problems_in(text, f"{path.relative_to(REPO)}:{number}")]
    assert found == []


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants in `tree` (developers' text, left alone)."""
    owners = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, owners) and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)}


def test_messages_the_code_prints_or_logs() -> None:
    """Every string literal of the shipped code but its docstrings: error messages, log
    lines, help texts, HTTP error details."""
    sources = [path for path in sorted((REPO / "appliance").rglob("*.py")) if "_api" not in path.parts]
    assert len(sources) > 50
    found = []
    for path in sources:
        tree = ast.parse(path.read_text(), str(path))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found += problems_in(node.value, f"{path.relative_to(REPO)}:{node.lineno}")
    assert found == []


@pytest.mark.parametrize("path", example_files(), ids=lambda path: str(path.relative_to(REPO)))
def test_examples_name_no_source_file(path: Path) -> None:
    """An example config explains a key in its own words; "see bgp/prefix_file.py"
    sends a user who installed a package into its source."""
    lines = [f"{path.relative_to(REPO)}:{number}: {text.strip()}"
             for number, text in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"#.*\b[\w/]+\.py\b", text)]
    assert lines == []


def test_no_merge_conflict_markers_in_the_tree() -> None:
    """A merge left half-resolved ships both sides and the markers to every reader (the
    README once did).  Every tracked text file is read; the markers are whole lines."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    marker = re.compile(r"^(<{7} |>{7} |={7}$)", re.MULTILINE)
    found = []
    for name in tracked:
        try:
            text = (REPO / name).read_text()
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        found += [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}" for m in marker.finditer(text)]
    assert found == []
