"""Safe input: config and rules documents past the loader's limits, and replacements on disk.

Billion-laughs documents (nested lists, nested maps, `<<` merges, one wide alias list),
documents nested too deeply or too large, sent to the API's validate calls (with a
read-only token) and PUT calls, are answered 422 within 100 ms while this process's
memory stays put, and `flowenricher validate` (a subprocess) reports each with the same
words and exit code 2.  A replacement through the API follows the deployed symlink into
the directory the service may write, keeps the file it replaced as ``<name>.previous``,
and a write that fails half-way (a real file-size limit, RLIMIT_FSIZE) or a refusal by
the service leaves both files as they were.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from support import flowenricher_argv
from support.api import CONFIG_TEXT, RULES_TEXT, ApiEnv, make_env

from appliance.flowenricher.config import MAX_DOCUMENT_BYTES, MAX_DOCUMENT_DEPTH, MAX_DOCUMENT_VALUES
from appliance.flowenricher.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
YAML = {"Content-Type": "application/yaml"}
JSON = {"Content-Type": "application/json"}
EXIT_BAD_INPUT = 2
MAX_SECONDS = 0.1  # per refused request
# Of VmRSS and VmHWM over all the refused documents.  Unbounded, one 481-byte merge bomb
# alone raised VmHWM by 74 MB; inside the whole suite's pytest process (about 800 MB, its
# allocator's arenas and the captured logs of 96 requests) the bounded run grew 5.6 MB
# once (CI, 2026-12-04) and under 2 MB alone: 16 MB tells the two apart with room.
MAX_GROWTH_KB = 16 * 1024


def _aliases(level: int, width: int) -> str:
    return ", ".join([f"*a{level}"] * width)


def _laughs(shape: str, levels: int = 9, width: int = 9) -> str:
    """A billion-laughs document: each level names the one below `width` times."""
    keys = ", ".join(f"k{j}: lol" for j in range(width))
    first = {"lists": '["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
             "maps": f"{{{keys}}}", "merges": f"{{{keys}}}"}[shape]
    lines = [f"x-a0: &a0 {first}"]
    for level in range(1, levels):
        if shape == "lists":
            body = f"[{_aliases(level - 1, width)}]"
        elif shape == "maps":
            body = "{" + ", ".join(f"k{j}: *a{level - 1}" for j in range(width)) + "}"
        else:
            body = f"{{<<: [{_aliases(level - 1, width)}]}}"
        lines.append(f"x-a{level}: &a{level} {body}")
    lines.append(f"my_prefixes: *a{levels - 1}")
    return "\n".join(lines) + "\n"


# name: (YAML text, the reason's words, its line and column)
BOMBS: dict[str, tuple[str, str, str]] = {
    "nested lists": (_laughs("lists"), f"makes the document larger than {MAX_DOCUMENT_VALUES} values",
                     "line 5, column 37"),
    "nested maps": (_laughs("maps"), f"makes the document larger than {MAX_DOCUMENT_VALUES} values",
                    "line 5, column 34"),
    "merge keys": (_laughs("merges"), f"makes the document larger than {MAX_DOCUMENT_VALUES} values",
                   "line 5, column 27"),
    "one wide list": ("x-a: &a [" + ", ".join(["lol"] * 250) + "]\nx-b: [" + _aliases(0, 250).replace("a0", "a")
                      + "]\n", f"makes the document larger than {MAX_DOCUMENT_VALUES} values", "line 2, column 799"),
    "deep aliases": ("x-a: &a " + "[" * 20 + "1" + "]" * 20 + "\nx-b: " + "[" * 20 + "*a" + "]" * 20 + "\n",
                     f"nests the document more than {MAX_DOCUMENT_DEPTH} levels deep with its aliases expanded",
                     "line 2, column 26"),
    "deep nesting": ("x-a: " + "[" * 100_000 + "\n", f"nests the document more than {MAX_DOCUMENT_DEPTH} levels deep",
                     "line 1, column 38"),
    "an alias inside its anchor": ("x-a: &a [1, [2, *a]]\n", "alias *a is inside its own anchor &a", "line 1, column 17"),
    "too many bytes": ("# " + "x" * MAX_DOCUMENT_BYTES + "\ntimezone: UTC\n",
                       f"{MAX_DOCUMENT_BYTES + 17} bytes, more than the {MAX_DOCUMENT_BYTES} bytes", "$"),
}


def _memory_kb() -> tuple[int, int]:
    """This process's VmRSS and VmHWM (peak) in kB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


@pytest.fixture
def env(tmp_path: Path) -> ApiEnv:
    return make_env(tmp_path)


def _refused(env: ApiEnv, method: str, url: str, body: bytes, headers: dict[str, str],
             tries: int = 1) -> tuple[float, list[Any]]:
    """The seconds a 422 took (the best of `tries`: the machine is shared, and a document
    that costs what it expands to is slow every time), and its problems."""
    best = float("inf")
    for _ in range(tries):
        started = time.perf_counter()
        response = env.client.request(method, url, content=body, headers=headers)
        best = min(best, time.perf_counter() - started)
        assert response.status_code == 422, (url, response.status_code, response.text[:500])
    return best, response.json()["problems"]


def test_bombs_are_refused_fast_without_memory_growth_and_as_validate_words_them(env: ApiEnv, tmp_path: Path) -> None:
    reader, admin = env.headers(env.reader), env.headers()
    # Warm up every route once, so that what is measured is the documents.
    anchors = "x-net: &net 84.54.49.0/24\nmy_prefixes: [*net, 2a14:4280::/29]\n"
    assert env.client.post("/api/v1/config/validate", content=anchors, headers={**reader, **YAML}).status_code == 200
    assert env.client.post("/api/v1/rules/validate", content=RULES_TEXT, headers={**reader, **YAML}).status_code == 200
    for url in ("/api/v1/config", "/api/v1/rules"):
        _refused(env, "PUT", url, b"[", {**admin, **YAML})
    config_before, rules_before = env.config_path.read_text(), env.rules_path.read_text()
    rss_before, hwm_before = _memory_kb()

    seen: dict[str, list[str]] = {}
    slowest = 0.0
    for name, (text, words, where) in BOMBS.items():
        body = text.encode()
        for method, url, headers in [("POST", "/api/v1/config/validate", reader),
                                             ("POST", "/api/v1/rules/validate", reader),
                                             ("PUT", "/api/v1/config", admin),
                                             ("PUT", "/api/v1/rules", admin)]:
            elapsed, problems = _refused(env, method, url, body, {**headers, **YAML}, tries=3)
            slowest = max(slowest, elapsed)
            assert elapsed < MAX_SECONDS, (name, url, elapsed)
            assert len(problems) == 1 and problems[0]["path"] == where and words in problems[0]["reason"], \
                (name, problems)
            seen.setdefault(name, []).append(f"{problems[0]['path']}: {problems[0]['reason']}")
    rss_after, hwm_after = _memory_kb()
    print(f"\nslowest refusal (best of 3) {slowest * 1000:.1f} ms; VmRSS {rss_before} -> {rss_after} kB, "
          f"VmHWM {hwm_before} -> {hwm_after} kB")
    assert rss_after - rss_before < MAX_GROWTH_KB and hwm_after - hwm_before < MAX_GROWTH_KB
    assert env.config_path.read_text() == config_before and env.rules_path.read_text() == rules_before
    assert env.applied_config == [] and env.applied_rules == []
    assert list(tmp_path.glob("*.previous")) == []

    # The same documents through `flowenricher validate`: the same line, file name first, exit code 2.
    for index, (name, (text, _, _)) in enumerate(BOMBS.items()):
        config, rules = tmp_path / f"bomb{index}.yaml", tmp_path / f"bomb{index}.yml"
        config.write_text(text)
        rules.write_text(text)
        done = subprocess.run([*flowenricher_argv(), "validate", "--config", str(config), "--rules", str(rules)],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == EXIT_BAD_INPUT, (name, done.stderr)
        assert done.stderr.splitlines() == [f"{config}: {seen[name][0]}", f"{rules}: {seen[name][1]}"], name


def test_json_bodies_have_the_same_limits(env: ApiEnv) -> None:
    reader = {**env.headers(env.reader), **JSON}
    deep: Any = "x"
    for _ in range(MAX_DOCUMENT_DEPTH):
        deep = [deep]
    _, problems = _refused(env, "POST", "/api/v1/config/validate", json.dumps({"x-deep": deep}).encode(), reader)
    assert problems == [{"path": "$['x-deep']" + "[0]" * (MAX_DOCUMENT_DEPTH - 1),
                         "reason": f"this value nests the document more than {MAX_DOCUMENT_DEPTH} levels deep"}]
    elapsed, problems = _refused(env, "POST", "/api/v1/config/validate", b"[" * 200_000 + b"]" * 200_000, reader)
    assert problems == [{"path": "$", "reason": f"{400_000} bytes, more than the {MAX_DOCUMENT_BYTES} bytes a config "
                                                "or rules document may have"}]
    elapsed, problems = _refused(env, "POST", "/api/v1/rules/validate", b"[" * 50_000 + b"]" * 50_000, reader)
    assert problems == [{"path": "$", "reason": f"the document nests more than {MAX_DOCUMENT_DEPTH} levels deep"}]
    assert elapsed < MAX_SECONDS
    wide = json.dumps({"x-wide": [0] * MAX_DOCUMENT_VALUES}).encode()
    elapsed, problems = _refused(env, "POST", "/api/v1/config/validate", wide, reader)
    assert problems[0]["reason"].startswith(f"this value makes the document larger than {MAX_DOCUMENT_VALUES} values")
    assert elapsed < MAX_SECONDS
    bad = env.client.post("/api/v1/config/validate", content=b"\xff\xfe", headers=reader)
    assert bad.json()["problems"] == [{"path": "$", "reason": "not UTF-8 text (byte 0)"}]


def test_a_file_over_the_limit_is_not_read_past_it(tmp_path: Path) -> None:
    from appliance.flowenricher.config import load_config

    big = tmp_path / "config.yaml"
    with big.open("wb") as handle:  # sparse: 1 GiB that costs nothing unless read whole
        handle.truncate(1 << 30)
    started = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        load_config(big)
    assert caught.value.problems == [f"{big}: $: {1 << 30} bytes, more than the {MAX_DOCUMENT_BYTES} bytes a config "
                                     "or rules document may have"]
    assert time.perf_counter() - started < MAX_SECONDS


# ----------------------------------------------------------------- replacing the files


def _deployed(env: ApiEnv) -> tuple[Path, Path]:
    """The role's layout: config.yaml and detection.yml link into live/, where the files are."""
    live = env.config_path.parent / "live"
    live.mkdir()
    files = []
    for link in (env.config_path, env.rules_path):
        target = live / link.name
        link.rename(target)
        target.chmod(0o640)
        link.symlink_to(target)
        files.append(target)
    return files[0], files[1]


def test_replacement_follows_the_link_and_keeps_the_previous_file(env: ApiEnv) -> None:
    config, rules = _deployed(env)
    first = CONFIG_TEXT.replace("timezone: Europe/Athens", "timezone: UTC")
    second = CONFIG_TEXT.replace("timezone: Europe/Athens", "timezone: Asia/Tokyo")
    for text, previous in ((first, CONFIG_TEXT), (second, first)):
        response = env.client.put("/api/v1/config", content=text, headers={**env.headers(), **YAML})
        assert response.status_code == 200, response.text
        assert env.config_path.is_symlink() and env.config_path.resolve() == config
        assert config.read_text() == text
        backup = config.with_name("config.yaml.previous")
        assert backup.read_text() == previous and backup.stat().st_mode & 0o777 == 0o640
    assert [s.timezone for s in env.applied_config] == ["UTC", "Asia/Tokyo"]

    new_rules = RULES_TEXT.replace("min_flows: 70", "min_flows: 90")
    response = env.client.put("/api/v1/rules", content=new_rules, headers={**env.headers(), **YAML})
    assert response.status_code == 200, response.text
    assert rules.read_text() == new_rules and rules.with_name("detection.yml.previous").read_text() == RULES_TEXT
    assert sorted(p.name for p in config.parent.iterdir()) == [
        "config.yaml", "config.yaml.previous", "detection.yml", "detection.yml.previous"]
    assert sorted(p.name for p in env.config_path.parent.glob("*.previous")) == []  # none beside the links


def test_a_refusal_by_the_service_puts_both_files_back(tmp_path: Path) -> None:
    refusals: list[str] = []

    def refuse_tokyo(settings: Any) -> None:
        if settings.timezone == "Asia/Tokyo":
            refusals.append(settings.timezone)
            raise ConfigError(["config: $.timezone: not while the collector runs"])

    env = make_env(tmp_path, apply_config=refuse_tokyo)
    config, _ = _deployed(env)
    first = CONFIG_TEXT.replace("timezone: Europe/Athens", "timezone: UTC")
    assert env.client.put("/api/v1/config", content=first, headers={**env.headers(), **YAML}).status_code == 200
    refused = env.client.put("/api/v1/config", content=first.replace("UTC", "Asia/Tokyo"),
                             headers={**env.headers(), **YAML})
    assert refused.status_code == 422 and refusals == ["Asia/Tokyo"]
    assert refused.json()["problems"] == [{"path": "$.timezone", "reason": "not while the collector runs"}]
    assert config.read_text() == first and config.with_name("config.yaml.previous").read_text() == CONFIG_TEXT


FAILING_WRITE = textwrap.dedent("""\
    import resource, signal, sys
    from pathlib import Path
    from appliance.api.configfiles import Parsed, SettingsFiles
    from appliance.flowenricher.config import load_config, parse_yaml

    path, text = Path(sys.argv[1]), Path(sys.argv[2]).read_text()
    files = SettingsFiles(load_config(path), path, None, [], None, None)
    parsed = Parsed(parse_yaml(text, "config"), text)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    limit = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        files.replace_config(parsed)
    except Exception as err:
        print(type(err).__name__, err)
""")


def test_a_write_that_fails_half_way_leaves_the_old_file(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    config, _ = _deployed(env)
    limit = 4096
    big = tmp_path / "big.yaml"  # valid, and larger than the process may write
    big.write_text(CONFIG_TEXT + "".join(f"# note {i:05d} " + "x" * 60 + "\n" for i in range(200)))
    assert big.stat().st_size > 3 * limit
    done = subprocess.run([sys.executable, "-c", FAILING_WRITE, str(env.config_path), str(big), str(limit)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"NotApplied config: cannot write {config}: File too large; nothing changed\n"
    assert config.read_text() == CONFIG_TEXT and config.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in config.parent.iterdir()) == ["config.yaml", "detection.yml"]  # no half file, no copy
