"""End to end in a real headless browser: API + explorer on 127.0.0.1, type a query, see
k result images; a screenshot is saved to test-artifacts/explorer.png."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests import chaos
from tests.conftest import OFFLINE_CONFIG, ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip("Debian chromium + chromium-driver are not installed (apt-get install chromium "
                "chromium-driver)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

from ui.cli import streamlit_command, upload_limit_mb  # noqa: E402

ARTIFACTS = ROOT / "test-artifacts"
K = 12  # the explorer's default k


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # bounded
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def servers(real_index):
    api_port, ui_port = chaos.free_port(), chaos.free_port()
    api = chaos.start_server(real_index[0], OFFLINE_CONFIG, api_port)
    api_url = f"http://127.0.0.1:{api_port}"
    ui = subprocess.Popen(streamlit_command(api_url, "127.0.0.1", ui_port,
                                            upload_limit_mb(api_url)), cwd=ROOT,
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{ui_port}"
    finally:
        for p in (ui, api):
            p.terminate()
        for p in (ui, api):
            p.wait(timeout=30)


def test_type_a_query_and_see_k_results(servers, tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1800", f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.set_page_load_timeout(60)
        _wait(lambda: _loads(driver, servers), 60, "the explorer page")
        box = _wait(lambda: _find(driver, "input[aria-label='Describe what you are looking for']"),
                    60, "the query box")
        box.send_keys("farmland", Keys.ENTER)  # Enter searches: no button click
        imgs = _wait(lambda: _result_images(driver, K), 90, f"{K} result images")
        assert len(imgs) == K
        page = driver.find_element(By.TAG_NAME, "body").text
        assert "10MB per file" in page and "200MB" not in page  # the API's upload limit
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "explorer.png"))
        assert (ARTIFACTS / "explorer.png").stat().st_size > 10_000
    finally:
        driver.quit()


def _loads(driver, url: str) -> bool:
    try:
        driver.get(url)
        return True
    except Exception:  # the server may still be starting
        return False


def _find(driver, css: str):
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0] if found else None


def _result_images(driver, k: int):
    imgs = [i for i in driver.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img")
            if i.get_attribute("naturalWidth") not in (None, "0")]
    return imgs if len(imgs) == k else None
