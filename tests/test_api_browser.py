"""The pages a person opens, in a real headless Chromium (Debian's, driven by Playwright):
Swagger UI at /docs, ReDoc at /redoc and the status page at /, served by uvicorn on a
loopback port.  Every request the browser makes is intercepted: any that would leave
127.0.0.1 fails the test (the appliance has no internet, so a CDN link is a broken page)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright
from support.api import HOUR, ApiEnv, flow_store, make_env

from appliance.api.server import ApiServer

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


def _open(browser: Browser, base: str, path: str, **context: object) -> tuple[Page, Guard, list[str]]:
    page = browser.new_context(**context).new_page()  # type: ignore[arg-type]
    guard = Guard(base)
    page.route("**/*", guard)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
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
    page, guard, errors = _open(browser, base, "/", http_credentials={"username": "ops", "password": env.reader})
    assert page.title() == "flowenricher status"
    assert page.locator("td", has_text="198.51.100.77/32").count() == 1
    assert page.locator("h2", has_text="Top talkers, last hour").count() == 1
    assert page.locator("section table tbody tr").count() == 20  # ten sources, ten destinations
    page.screenshot(path=str(tmp_path / "status.png"), full_page=True)
    assert guard.outside == [] and guard.local == [f"{base}/"]
    assert errors == []


def test_pages_name_no_other_host_and_forbid_fetching_from_one(served: tuple[ApiEnv, str]) -> None:
    env, _ = served
    for path in ("/docs", "/redoc", "/"):
        response = env.client.get(path, headers=env.headers(env.reader))
        assert "http://" not in response.text and "https://" not in response.text and "//cdn" not in response.text
        policy = response.headers["content-security-policy"]
        assert policy.startswith("default-src 'self';" if path != "/" else "default-src 'none';"), path
        assert "http" not in policy and "*" not in policy
