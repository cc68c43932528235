"""The dashboard path in a real browser: headless Chromium (Debian's chromium and
chromium-driver, driven through Selenium) loads a page from a second loopback origin, calls the
API with a Bearer JWT, fetches the CSV from the signed URL and counts its rows. The same page
from an origin the API does not allow is blocked. Downloads are allowed by the bucket's B2 CORS
rule, which the emulator honours as B2 does (tested here over plain HTTP too)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from b2sdk.v2 import B2Api
from orbit_dev.b2_emulator import dashboard_cors_rule

from tests.support.app import bearer
from tests.support.constants import BUCKET
from tests.support.processes import server_process
from tests.support.world import Tenant, World, sample_csv

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Loopback addresses other than the API's 127.0.0.1: a page origin the API allows, one it does not.
ALLOWED_HOST, BLOCKED_HOST = "127.0.0.2", "127.0.0.3"

# What a dashboard does with the endpoint. Settings travel in the fragment, which the browser
# never sends to the page's server.
PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>dashboard</title></head>
<body><pre id="result">pending</pre>
<script>
(async () => {
  const settings = new URLSearchParams(location.hash.slice(1));
  const report = (value) => {
    document.getElementById("result").textContent = JSON.stringify(value);
  };
  let step = "api";
  try {
    const api = await fetch(settings.get("api"), {
      headers: {Authorization: "Bearer " + settings.get("token")},
    });
    const body = await api.json();
    step = "download";
    const file = await fetch(body.data.downloadUrl);
    const text = await file.text();
    report({
      status: api.status,
      requestId: api.headers.get("X-Request-ID"),
      rowCount: body.data.export.rowCount,
      downloadStatus: file.status,
      disposition: file.headers.get("Content-Disposition"),
      rows: text.split("\\n").filter((line) => line.length > 0).length - 1,
    });
  } catch (error) {
    report({step, error: String(error)});
  }
})();
</script></body></html>
"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_origins() -> Iterator[dict[str, str]]:
    servers = {name: ThreadingHTTPServer((host, 0), _Page) for name, host in
               (("allowed", ALLOWED_HOST), ("blocked", BLOCKED_HOST))}  # fmt: skip
    for server in servers.values():
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {
        name: f"http://{s.server_address[0]}:{s.server_address[1]}" for name, s in servers.items()
    }
    for server in servers.values():
        server.shutdown()


@pytest.fixture(scope="module")
def dashboard_api(
    cli_env: dict[str, str],
    page_origins: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """`orbit-exports serve` allowing the allowed page's origin only."""
    extra = {"CORS_ALLOW_ORIGINS": page_origins["allowed"]}
    with server_process(cli_env, tmp_path_factory.mktemp("browser"), extra) as url:
        yield url


@pytest.fixture
def bucket_cors(b2: B2Api, page_origins: dict[str, str]) -> Iterator[None]:
    """The bucket's CORS rule, set as an operator would on real B2 (the README's rule)."""
    bucket = b2.get_bucket_by_name(BUCKET)
    bucket.update(cors_rules=[dashboard_cors_rule([page_origins["allowed"]])])
    yield
    bucket.update(cors_rules=[])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        missing = "Debian's chromium and chromium-driver are not installed"
        if os.environ.get("BROWSER_TESTS") == "required":
            pytest.fail(f"{missing}, and BROWSER_TESTS=required (as in CI)")
        pytest.skip(
            f"browser test skipped: {missing}; run `make browser` as root (apt), then"
            " `make test` again, which then requires it (as CI does)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Selenium logs each command at DEBUG, page URLs included; the JWT rides in the fragment.
    logging.getLogger("selenium").setLevel(logging.WARNING)

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def run_dashboard(browser: Any, origin: str, api_url: str, token: str) -> dict[str, Any]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # From a blank page: the same page with only a new fragment would not be loaded again, and
    # the previous test's result would be read.
    browser.get("about:blank")
    browser.get(f"{origin}/#" + urlencode({"api": api_url, "token": token}))
    WebDriverWait(browser, 20).until(
        lambda driver: driver.find_element(By.ID, "result").text != "pending"
    )
    result: dict[str, Any] = json.loads(browser.find_element(By.ID, "result").text)
    return result


@pytest.mark.usefixtures("bucket_cors")
async def test_dashboard_origin_gets_the_export_and_downloads_the_csv(
    browser: Any, page_origins: dict[str, str], dashboard_api: str, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant, content=sample_csv(rows=37))
    token = world.jwt(tenant.org)
    result = run_dashboard(
        browser, page_origins["allowed"], dashboard_api + tenant.path(export["id"]), token
    )
    assert result.get("error") is None, result
    assert result["status"] == 200
    assert result["downloadStatus"] == 200
    assert result["rows"] == result["rowCount"] == export["row_count"] == 37
    # Exposed by the API's and the bucket's CORS rules respectively.
    assert result["requestId"]
    assert result["disposition"].startswith("attachment;")


@pytest.mark.usefixtures("bucket_cors")
async def test_other_origins_are_blocked_by_the_browser(
    browser: Any, page_origins: dict[str, str], dashboard_api: str, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant)
    token = world.jwt(tenant.org)
    result = run_dashboard(
        browser, page_origins["blocked"], dashboard_api + tenant.path(export["id"]), token
    )
    assert result["step"] == "api"
    assert "Failed to fetch" in result["error"]


async def test_without_the_bucket_rule_the_browser_cannot_read_the_download(
    browser: Any, page_origins: dict[str, str], dashboard_api: str, world: World, tenant: Tenant
) -> None:
    """The API answers, but a bucket without a CORS rule for the origin blocks the fetch: the
    rule in the README is needed on the real bucket too."""
    export = await world.export(tenant)
    result = run_dashboard(
        browser,
        page_origins["allowed"],
        dashboard_api + tenant.path(export["id"]),
        world.jwt(tenant.org),
    )
    assert result["step"] == "download"
    assert "Failed to fetch" in result["error"]


# --- the emulator's B2 CORS behaviour, over plain HTTP ---------------------------------------


@pytest.mark.usefixtures("bucket_cors")
async def test_emulator_answers_downloads_as_b2_does_for_a_cors_rule(
    page_origins: dict[str, str], dashboard_api: str, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant)
    async with httpx.AsyncClient() as http:
        body = (
            await http.get(
                dashboard_api + tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org))
            )
        ).json()
        url = body["data"]["downloadUrl"]
        allowed, blocked = page_origins["allowed"], page_origins["blocked"]

        preflight = await http.options(
            url, headers={"Origin": allowed, "Access-Control-Request-Method": "GET"}
        )
        assert preflight.status_code == 200
        assert preflight.headers["Access-Control-Allow-Origin"] == allowed
        assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
        assert preflight.headers["Access-Control-Max-Age"] == "3600"

        asks_header = await http.options(
            url,
            headers={
                "Origin": allowed,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "x-custom",
            },
        )
        assert asks_header.status_code == 403
        assert "Access-Control-Allow-Origin" not in asks_header.headers

        other = await http.options(
            url, headers={"Origin": blocked, "Access-Control-Request-Method": "GET"}
        )
        assert other.status_code == 403
        assert "Access-Control-Allow-Origin" not in other.headers

        download = await http.get(url, headers={"Origin": allowed})
        assert download.status_code == 200
        assert download.content == export["content"]
        assert download.headers["Access-Control-Allow-Origin"] == allowed
        assert download.headers["Access-Control-Expose-Headers"] == "content-disposition"

        not_allowed = await http.get(url, headers={"Origin": blocked})
        assert not_allowed.status_code == 200  # the server serves; the browser withholds it
        assert "Access-Control-Allow-Origin" not in not_allowed.headers

        bad_token = await http.get(
            url.replace("Authorization=", "Authorization=x"), headers={"Origin": allowed}
        )
        assert bad_token.status_code == 401
        assert bad_token.headers["Access-Control-Allow-Origin"] == allowed


def test_emulator_command_line_gives_buckets_the_dashboard_rule() -> None:
    from orbit_dev.b2_emulator import create_emulator

    app = create_emulator("id", "key", ["one"], cors_origins=["https://dash.example"])
    bucket = app.state.emulator.buckets["one"]
    assert bucket["corsRules"] == [dashboard_cors_rule(["https://dash.example"])]
