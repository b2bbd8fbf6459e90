"""The pages a person opens, in a real headless Chromium (Debian's, driven by Playwright):
Swagger UI at /docs, ReDoc at /redoc and the status page at /, served by uvicorn on a
loopback port.  Every request the browser makes is intercepted: any that would leave
127.0.0.1 fails the test (the appliance has no internet, so a CDN link is a broken page).
The status page is loaded with traffic, without traffic, with the store down, in the
separate-API mode with the collector down and with backtests listed; each screenshot's
path is printed (pytest -s)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from playwright.sync_api import Browser, Page, Route, sync_playwright
from support.api import HOUR, ApiEnv, flow_store, make_env

from appliance.api.app import create_app
from appliance.api.remote import remote_deps
from appliance.api.server import ApiServer
from appliance.api.tokens import create_token
from appliance.flowenricher.config import load_config
from appliance.flowenricher.control import ControlServer
from appliance.flowenricher.errors import StoreError

START = int(time.time()) // HOUR * HOUR - HOUR
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if os.path.exists(p)), None)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiEnv, str]]:
    root = tmp_path_factory.mktemp("api-browser")
    with flow_store(root / "data", START, hours=1, per_hour=500) as store:
        env = make_env(root, store, clock=lambda: float(START + HOUR))
        server = ApiServer(env.app, "127.0.0.1", 0)
        server.start()
        try:
            yield env, f"http://127.0.0.1:{server.port}"
        finally:
            server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM, "Debian's chromium is not installed (apt-get install chromium)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


class Guard:
    """Lets requests to the test server through and refuses (and records) all others."""

    def __init__(self, base: str) -> None:
        self.origin = urlsplit(base).netloc
        self.local: list[str] = []
        self.outside: list[str] = []

    def __call__(self, route: Route) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob") or parts.netloc == self.origin:
            self.local.append(url)
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()


def _open(browser: Browser, base: str, path: str, console: bool = False,
          **context: object) -> tuple[Page, Guard, list[str]]:
    """`path` loaded; the errors list gets uncaught script errors, and with `console` every
    console error too (ReDoc logs one by design: the policy blocks its CDN logo)."""
    page = browser.new_context(**context).new_page()  # type: ignore[arg-type]
    guard = Guard(base)
    page.route("**/*", guard)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    if console:
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    response = page.goto(base + path, wait_until="networkidle")
    assert response is not None and response.status == 200, path
    return page, guard, errors


def test_swagger_ui_loads_everything_from_the_appliance(browser: Browser, served: tuple[ApiEnv, str],
                                                        tmp_path: Path) -> None:
    _, base = served
    page, guard, errors = _open(browser, base, "/docs")
    page.wait_for_selector('[data-path="/announce"]', timeout=15_000)
    page.wait_for_selector('[data-path="/api/v1/flows/top"]')
    assert page.locator(".opblock").count() >= 20
    assert page.locator("button.authorize").count() == 1  # the bearer token can be entered
    page.screenshot(path=str(tmp_path / "docs.png"))
    assert guard.outside == [], guard.outside
    assert f"{base}/static/swagger-ui-bundle.js" in guard.local and f"{base}/openapi.json" in guard.local
    assert errors == []


def test_redoc_loads_everything_from_the_appliance(browser: Browser, served: tuple[ApiEnv, str]) -> None:
    _, base = served
    page, guard, errors = _open(browser, base, "/redoc")
    page.wait_for_selector("text=Blackhole a prefix now", timeout=15_000)
    assert guard.outside == [], guard.outside
    assert f"{base}/static/redoc.standalone.js" in guard.local
    assert errors == []


def test_status_page_in_the_browser(browser: Browser, served: tuple[ApiEnv, str], tmp_path: Path) -> None:
    env, base = served
    env.manager.announce("198.51.100.77", communities=["65535:666"])
    page, guard, errors = _open(browser, base, "/", True, http_credentials={"username": "ops", "password": env.reader})
    assert page.title() == "flowenricher status"
    assert page.locator("td", has_text="198.51.100.77/32").count() == 1
    assert page.locator("h2", has_text="Top talkers, last hour").count() == 1
    assert page.locator("section table tbody tr").count() == 20  # ten sources, ten destinations
    assert page.locator('#health li.ok:has(b:text-is("store"))').count() == 1
    assert page.locator("figure.chart svg polyline").count() == 2  # flows/s and bits/s drawn
    _assert_visible_charts(page)
    _screenshot(page, tmp_path / "status-traffic.png")
    assert guard.outside == [] and guard.local == [f"{base}/"]
    assert errors == []


@contextlib.contextmanager
def _serving(app: FastAPI) -> Iterator[str]:
    server = ApiServer(app, "127.0.0.1", 0)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def _screenshot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    print(f"status page screenshot: {path}")


def _assert_visible_charts(page: Page) -> None:
    """Four charts, each laid out with a size (an SVG the browser did not draw has none)."""
    charts = page.locator("figure.chart svg")
    assert charts.count() == 4
    for i in range(4):
        box = charts.nth(i).bounding_box()
        assert box is not None and box["width"] >= 300 and box["height"] >= 80


def test_status_page_without_traffic(browser: Browser, served: tuple[ApiEnv, str], tmp_path: Path) -> None:
    env, _ = served
    quiet = make_env(tmp_path, None, clock=lambda: float(START + HOUR + 86400), query=env.app.state.ctx.deps.query)
    with _serving(quiet.app) as base:
        page, guard, errors = _open(browser, base, "/", True, http_credentials={"username": "ops", "password": quiet.reader})
        assert page.locator("#health li.bad", has_text="no data is flowing").count() == 1
        assert page.locator("figure.chart svg text", has_text="no data").count() == 4
        _assert_visible_charts(page)
        _screenshot(page, tmp_path / "status-no-traffic.png")
    assert guard.outside == [] and errors == []


def test_status_page_with_the_store_down(browser: Browser, tmp_path: Path) -> None:
    def down(_sql: str, _fmt: str) -> bytes:
        raise StoreError("embedded store: query failed: connection closed")

    env = make_env(tmp_path, query=down)
    env.manager.announce("198.51.100.78", communities=["65535:666"])
    with _serving(env.app) as base:
        page, guard, errors = _open(browser, base, "/", True, http_credentials={"username": "ops", "password": env.reader})
        assert page.locator("#health li.bad", has_text="DOWN").count() == 1
        assert page.locator("figure.chart svg text", has_text="unknown: the flow store does not answer").count() == 4
        assert page.locator("td", has_text="198.51.100.78/32").count() == 1  # blackholes need no store
        _assert_visible_charts(page)
        _screenshot(page, tmp_path / "status-store-down.png")
    assert guard.outside == [] and errors == []


def test_status_page_of_the_api_process_with_the_collector_down(browser: Browser, tmp_path: Path) -> None:
    """`flowenricher api` beside a collector that is not running: an HTML page saying so."""
    data = Path(tempfile.mkdtemp(prefix="fe-st-"))  # a Unix socket's path is limited to 108 bytes
    try:
        config = data / "config.yaml"
        config.write_text(f"storage: {{path: {json.dumps(str(data))}}}\nmy_prefixes: [84.54.49.0/24]\n")
        remote = remote_deps(load_config(config), config, None)
        try:
            token = create_token(remote.deps.blackholes.state.engine, "read", "ops").token
            with _serving(create_app(remote.deps)) as base:
                page, guard, errors = _open(browser, base, "/", True,
                                            http_credentials={"username": "ops", "password": token})
                health = page.locator("#health")
                assert health.locator("li.bad", has_text="flowenricher run does not answer").count() == 1
                assert health.locator("li.unknown", has_text="blackholes").count() == 1
                _assert_visible_charts(page)
                _screenshot(page, tmp_path / "status-collector-down.png")
        finally:
            remote.close()
    finally:
        shutil.rmtree(data, ignore_errors=True)
    assert guard.outside == [] and errors == []


def test_pages_name_no_other_host_and_forbid_fetching_from_one(served: tuple[ApiEnv, str]) -> None:
    env, _ = served
    for path in ("/docs", "/redoc", "/"):
        response = env.client.get(path, headers=env.headers(env.reader))
        assert "http://" not in response.text and "https://" not in response.text and "//cdn" not in response.text
        policy = response.headers["content-security-policy"]
        assert policy.startswith("default-src 'self';" if path != "/" else "default-src 'none';"), path
        assert "http" not in policy and "*" not in policy


def test_status_page_lists_backtests_and_links_their_reports(browser: Browser, served: tuple[ApiEnv, str],
                                                             tmp_path: Path) -> None:
    """A backtest done and one cancelled, started through the API over the served store
    (read through a control socket, as beside `flowenricher run`): the page lists both,
    and the done one's link opens its report with the page's credentials."""
    env, _ = served
    query = env.app.state.ctx.deps.query
    socket_dir = Path(tempfile.mkdtemp(prefix="fe-sb-"))  # a Unix socket's path is limited to 108 bytes
    control = ControlServer(str(socket_dir), query)
    control.start()
    try:
        config = f"timezone: UTC\nstorage: {{path: {json.dumps(str(socket_dir))}}}\nmy_prefixes: [84.54.49.0/24]\n"
        jobs = make_env(tmp_path, None, clock=lambda: float(START + HOUR), config_text=config, query=query)
        try:
            client, admin = jobs.client, jobs.headers()
            done = client.post("/api/v1/backtest", json={"from": START, "to": START + HOUR}, headers=admin).json()
            deadline = time.monotonic() + 120
            while client.get(done["url"], headers=admin).json()["state"] != "done":
                assert time.monotonic() < deadline, client.get(done["url"], headers=admin).json()
                time.sleep(0.1)
            cancelled = client.post("/api/v1/backtest", json={"from": START, "to": START + 600}, headers=admin).json()
            assert client.delete(cancelled["url"], headers=admin).json()["state"] == "cancelled"
            with _serving(jobs.app) as base:
                page, guard, errors = _open(browser, base, "/", True,
                                            http_credentials={"username": "ops", "password": jobs.reader})
                assert page.locator("h2", has_text="Backtests").count() == 1
                rows = page.locator("#backtests tbody tr")
                assert rows.count() == 2
                assert rows.nth(0).locator("td").nth(3).inner_text() == "cancelled"
                first = rows.nth(1)
                assert first.locator("td").nth(3).inner_text() == "done"
                assert first.locator("td").nth(2).inner_text() == str(jobs.rules_path)
                assert first.locator("td").nth(4).inner_text() == "slow_horizontal_scan: 0"
                _screenshot(page, tmp_path / "status-backtests.png")
                first.locator("a", has_text="JSON").click()
                page.wait_for_load_state("networkidle")
                report = json.loads(page.locator("body").inner_text())
                assert report["id"] == done["id"] and report["report"][0]["kind"] == "summary"
                assert guard.outside == [] and guard.local == [f"{base}/", f"{base}{done['url']}"]
                assert errors == []
        finally:
            jobs.app.state.ctx.backtests.close()
    finally:
        control.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)
