"""/docs and /redoc work without internet: their scripts come from the API itself, and a real
headless browser renders every operation (the machine has no route to a CDN)."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from tests import chaos
from tests.conftest import OFFLINE_CONFIG, ROOT


def test_docs_pages_reference_only_local_assets(client):
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        srcs = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert srcs and all(s.startswith("/") for s in srcs), srcs
        for s in srcs:
            if s.startswith("/docs-assets/"):
                assert client.get(s).status_code == 200, s
    assert "fonts.googleapis" not in client.get("/redoc").text


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                    reason="Debian chromium + chromium-driver are not installed")
def test_docs_render_every_operation_in_a_browser(real_index, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    port = chaos.free_port()
    api = chaos.start_server(real_index[0], OFFLINE_CONFIG, port)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run", "--window-size=1400,2000",
                 f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.set_page_load_timeout(60)
        base = f"http://127.0.0.1:{port}"
        paths = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the server may still be starting
            try:
                driver.get(base + "/docs")
                ops = driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
                paths = {o.get_attribute("data-path") for o in ops}
                if len(paths) >= 15:
                    break
            except Exception:  # noqa: BLE001 - connection refused while starting
                pass
            time.sleep(0.5)
        assert {"/search/scores", "/map/{z}/{x}/{y}.{fmt}", "/labels"} <= paths, paths
        (ROOT / "test-artifacts").mkdir(exist_ok=True)
        driver.save_screenshot(str(ROOT / "test-artifacts" / "docs.png"))
        driver.get(base + "/redoc")
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline and "/search/scores" not in text:
            time.sleep(0.5)
            text = driver.find_element(By.TAG_NAME, "body").text
        assert "/search/scores" in text
    finally:
        driver.quit()
        api.terminate()
        api.wait(timeout=30)
