"""The explorer in a real headless browser (Debian chromium + chromedriver), API and
Streamlit on 127.0.0.1, offline: the map draws the archive's imagery, a click searches,
a drawn area or the view filters, the heat map renders, labels survive a reload and export,
a shared link shows the same results in a fresh browser, an API outage shows a banner that
clears by itself. Screenshots go to test-artifacts/."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests import chaos
from tests.conftest import OFFLINE_CONFIG, ROOT
from tests.helpers import wait_until as _wait

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip("Debian chromium + chromium-driver are not installed (apt-get install chromium "
                "chromium-driver)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from PIL import Image  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

from search.client import SatfindClient  # noqa: E402
from ui.cli import streamlit_command, upload_limit_mb  # noqa: E402

ARTIFACTS = ROOT / "test-artifacts"
K = 12  # the explorer's default k
ND = "-99.19,47.0,-99.12,47.04"  # the North Dakota NAIP rasters (two dates)
MAP = "iframe[title='ui.mapview.satfind_map']"


class Servers:
    def __init__(self, index: Path):
        self.index = index
        self.api_port, ui_port = chaos.free_port(), chaos.free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.api = chaos.start_server(index, OFFLINE_CONFIG, self.api_port)
        self.ui = subprocess.Popen(streamlit_command(self.api_url, "127.0.0.1", ui_port,
                                                     upload_limit_mb(self.api_url)), cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{ui_port}"

    def stop_api(self) -> None:
        self.api.terminate()
        self.api.wait(timeout=30)

    def start_api(self) -> None:
        self.api = chaos.start_server(self.index, OFFLINE_CONFIG, self.api_port)

    def close(self) -> None:
        for p in (self.ui, self.api):
            p.terminate()
        for p in (self.ui, self.api):
            p.wait(timeout=30)


@pytest.fixture(scope="module")
def servers(real_index, tmp_path_factory):
    import shutil as sh

    index = tmp_path_factory.mktemp("ui") / "idx"  # label sets are written into the index
    sh.copytree(real_index[0], index)
    s = Servers(index)
    try:
        yield s
    finally:
        s.close()


def _browser(profile: Path, downloads: Path | None = None):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run", "--disable-component-update", "--disable-sync",
                 "--window-size=1500,1000", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    if downloads:
        opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                               "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture
def driver(tmp_path):
    d = _browser(tmp_path / "chrome", tmp_path / "downloads")
    d.downloads = tmp_path / "downloads"
    try:
        yield d
    finally:
        d.quit()


def _open(driver, url: str) -> None:
    _wait(lambda: driver.get(url) or True, 60, "the explorer page")
    driver.switch_to.default_content()


def _body(driver) -> str:
    driver.switch_to.default_content()
    return driver.find_element(By.TAG_NAME, "body").text


def _cards(driver) -> list[int]:
    """Tile ids of the result cards, in order (each card ends its place line with it)."""
    return [int(t) for t in re.findall(r"· tile (\d+)\b", _body(driver))]


def _idle(driver) -> bool:
    """Streamlit finished its run (no 'Running...' status widget)."""
    driver.switch_to.default_content()
    return not driver.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget']")


def _results(driver, heading: str, n: int | None = None, timeout_s: float = 60) -> list[int]:
    def ready():
        if heading not in _body(driver) or not _idle(driver):
            return None
        ids = _cards(driver)
        return ids if ids and (n is None or len(ids) == n) else None
    return _wait(ready, timeout_s, f"results for {heading}")


def _search(driver, text: str) -> list[int]:
    box = _wait(lambda: driver.find_element(
        By.CSS_SELECTOR, "input[aria-label='Describe what you are looking for']"), 60,
        "the query box")
    box.send_keys(text, Keys.ENTER)  # Enter searches: no button click
    return _results(driver, f"Results for “{text}”", K)


def _map(driver):
    """Switch into the map's iframe; its Leaflet container."""
    driver.switch_to.default_content()
    frame = _wait(lambda: driver.find_element(By.CSS_SELECTOR, MAP), 60, "the map iframe")
    driver.switch_to.frame(frame)
    return _wait(lambda: driver.find_element(By.CSS_SELECTOR, ".leaflet-container"), 30,
                 "the Leaflet map")


def _loaded_tiles(driver, layer: str) -> int:
    _map(driver)
    return len([i for i in driver.find_elements(
        By.CSS_SELECTOR, f".satfind-{layer} img.leaflet-tile-loaded")
        if (i.get_attribute("naturalWidth") or "0") != "0"])


def _button(driver, text: str):
    driver.switch_to.default_content()
    for b in driver.find_elements(By.CSS_SELECTOR, "button"):
        if b.text.strip().endswith(text) and b.is_enabled():
            return b
    return None


def _click(driver, text: str) -> None:
    b = _wait(lambda: _button(driver, text), 30, f"the '{text}' button")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", b)
    b.click()


def _click_key(driver, key: str) -> None:
    """Click the button with this Streamlit key (icon buttons have no text)."""
    b = _wait(lambda: driver.find_element(By.CSS_SELECTOR, f".st-key-{key} button"), 30,
              f"the {key} button")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", b)
    b.click()


def _key_primary(driver, key: str) -> bool:
    """The keyed button is drawn 'on' (a label set on that tile)."""
    found = driver.find_elements(By.CSS_SELECTOR, f".st-key-{key} button")
    return bool(found) and found[0].get_attribute("kind") == "primary"


def _footprints(api_url: str, ids: list[int]) -> list[list[float]]:
    c = SatfindClient(api_url)
    return [c.tile(i)["bounds"] for i in ids]


def _inside(bbox: str, footprints) -> bool:
    """Every footprint meets the area (the API's bbox filter: tiles intersecting it)."""
    w, s, e, n = (float(v) for v in bbox.split(","))
    return all(fw <= e and fe >= w and fs <= n and fn >= s for fw, fs, fe, fn in footprints)


def test_the_map_draws_the_archive_imagery_offline(servers, driver):
    _open(driver, servers.url + f"/?area={ND}")
    first = _search(driver, "farmland")
    assert len(first) == K
    _wait(lambda: _loaded_tiles(driver, "imagery") >= 2, 60, "imagery map tiles")
    leaflet = _map(driver)

    def colours() -> int:
        png = Image.open(io.BytesIO(leaflet.screenshot_as_png)).convert("RGB")
        return len(png.resize((64, 64)).getcolors(64 * 64) or [])

    # a blank canvas has one or two colours; the NAIP imagery has hundreds (tiles fade in
    # once loaded: screenshots until it is drawn)
    _wait(lambda: colours() > 200, 30, "the imagery drawn on the map")
    footprints = driver.find_elements(By.CSS_SELECTOR, ".satfind-rank")
    assert len(footprints) == K  # every result numbered on the map, none cut off
    size = leaflet.size
    for f in footprints:
        x, y = f.location["x"], f.location["y"]
        assert 0 <= x <= size["width"] and 0 <= y <= size["height"]
    ARTIFACTS.mkdir(exist_ok=True)
    driver.switch_to.default_content()
    driver.save_screenshot(str(ARTIFACTS / "explorer.png"))
    # the uploader says the API's limit (10 MB), not Streamlit's 200 MB
    _wait(lambda: driver.find_element(By.XPATH, "//*[contains(text(), 'search with an image')]"),
          30, "the image expander").click()
    _wait(lambda: "10MB per file" in _body(driver), 20, "the uploader's limit")
    assert "200MB" not in _body(driver)


def _click_at(driver, lat: float, lon: float) -> None:
    """Click the map at a place (Leaflet converts it to the iframe's pixels)."""
    leaflet = _map(driver)
    x, y = driver.execute_script("const p = state.map.latLngToContainerPoint("
                                 "[arguments[0], arguments[1]]); return [p.x, p.y];", lat, lon)
    size = leaflet.size
    ActionChains(driver).move_to_element_with_offset(
        leaflet, int(x - size["width"] / 2), int(y - size["height"] / 2)).click().perform()


def _drag(driver, leaflet, frm: tuple[int, int], to: tuple[int, int]) -> None:
    w, h = leaflet.size["width"], leaflet.size["height"]
    dx, dy = to[0] - frm[0], to[1] - frm[1]
    ActionChains(driver).move_to_element_with_offset(leaflet, frm[0] - w // 2, frm[1] - h // 2) \
        .click_and_hold().move_by_offset(dx // 2, dy // 2).move_by_offset(dx - dx // 2,
                                                                          dy - dy // 2) \
        .release().perform()


class _Basemap:
    """A stand-in external basemap on 127.0.0.1: every XYZ tile is a plain magenta PNG."""

    def __init__(self):
        import http.server
        import threading

        buf = io.BytesIO()
        Image.new("RGB", (256, 256), (255, 0, 255)).save(buf, "PNG")
        png, self.hits = buf.getvalue(), []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(h):  # noqa: N802
                self.hits.append(h.path)
                h.send_response(200)
                h.send_header("Content-Type", "image/png")
                h.send_header("Content-Length", str(len(png)))
                h.end_headers()
                h.wfile.write(png)

            def log_message(h, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/{{z}}/{{x}}/{{y}}.png"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_an_external_basemap_draws_under_the_imagery(servers, driver):
    basemap = _Basemap()
    try:
        _open(driver, servers.url + f"/?q=farmland&area={ND}")
        _results(driver, "Results for “farmland”", K)
        box = _wait(lambda: driver.find_element(By.CSS_SELECTOR, "input[aria-label*='basemap']"),
                    30, "the basemap box")
        box.send_keys(basemap.url, Keys.ENTER)
        _wait(lambda: _loaded_tiles(driver, "basemap") >= 4, 60, "basemap tiles")
        _wait(lambda: _loaded_tiles(driver, "imagery") >= 2, 60, "imagery over it")
        assert all(re.fullmatch(r"/\d+/\d+/\d+\.png", p) for p in basemap.hits)

        def magenta() -> float:
            png = Image.open(io.BytesIO(_map(driver).screenshot_as_png)).convert("RGB")
            px = np.asarray(png.resize((64, 64))).astype(int)
            return ((px[..., 0] > 200) & (px[..., 1] < 60) & (px[..., 2] > 200)).mean()

        # the basemap, and imagery over part of it (screenshots until both are drawn)
        _wait(lambda: 0.05 < magenta() < 0.95, 30, "the basemap under the imagery")
    finally:
        basemap.close()


def test_clicking_the_map_finds_places_like_the_tile_there(servers, driver):
    _open(driver, servers.url + f"/?q=farmland&area={ND}")
    first = _results(driver, "Results for “farmland”", K)
    _wait(lambda: _loaded_tiles(driver, "imagery") >= 2, 60, "imagery map tiles")
    c = SatfindClient(servers.api_url)
    w, s, e, n = (float(v) for v in ND.split(","))
    rows = c.search_text("farmland", k=100, bbox=(w, s, e, n))["results"]
    # imagery, not a numbered result: nor the same cell as one (the other date's tile
    # there), whose number on the map would take the click
    numbered = {(r["z"], r["x"], r["y"]) for r in rows if r["id"] in first}
    others = [r for r in rows if (r["z"], r["x"], r["y"]) not in numbered]
    lon, lat = others[len(others) // 2]["centre"]
    under = c.tiles_at(lon, lat, limit=1)["results"][0]["id"]
    _click_at(driver, lat, lon)
    ids = _results(driver, f"Results for more like tile {under}")
    assert ids[0] == under and ids != first
    assert f"tile={under}" in driver.current_url


def test_hovering_a_card_highlights_its_footprint_and_the_reverse(servers, driver):
    _open(driver, servers.url + f"/?q=farmland&area={ND}")
    ids = _results(driver, "Results for “farmland”", K)
    target = ids[2]
    _map(driver)  # the map is drawn (its script listens for hovers once it has rendered)
    _wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, ".satfind-rank")) == K, 30,
          "the numbered footprints")
    driver.switch_to.default_content()
    card = driver.find_element(By.CSS_SELECTOR, f".st-key-card_{target}")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", card)
    ActionChains(driver).move_to_element(card).perform()
    _map(driver)
    stroke = _wait(lambda: (lambda p: p if p == "#28d7ff" else None)(driver.find_element(
        By.CSS_SELECTOR, f"path.satfind-fp-{target}").get_attribute("stroke")), 10,
        "the hovered card's footprint highlighted")
    others = {p.get_attribute("stroke") for p in driver.find_elements(
        By.CSS_SELECTOR, "path[class*='satfind-fp-']")
        if f"satfind-fp-{target}" not in p.get_attribute("class")}
    assert stroke == "#28d7ff" and "#28d7ff" not in others  # only that one
    # the reverse: hovering a footprint's number on the map outlines its card
    other = ids[5]
    marker = next(m for m in driver.find_elements(By.CSS_SELECTOR, ".satfind-rank")
                  if m.text == "6")
    ActionChains(driver).move_to_element(marker).perform()
    driver.switch_to.default_content()
    _wait(lambda: "solid" in driver.find_element(
        By.CSS_SELECTOR, f".st-key-card_{other}").get_attribute("style"), 10,
        "the hovered footprint's card outlined")
    assert "solid" not in (driver.find_element(
        By.CSS_SELECTOR, f".st-key-card_{target}").get_attribute("style") or "")


def test_drawing_a_rectangle_or_searching_the_view_narrows_to_it(servers, driver):
    _open(driver, servers.url + "/?q=farmland&k=30")
    everywhere = _results(driver, "Results for “farmland”", 30)
    assert not _inside(ND, _footprints(servers.api_url, everywhere))  # every raster at first
    # draw a rectangle over the middle of the North Dakota imagery
    _open(driver, servers.url + "/?q=farmland&k=30&view=47.0125,-99.15,14")
    _results(driver, "Results for “farmland”", 30)
    leaflet = _map(driver)
    driver.find_element(By.CSS_SELECTOR, ".leaflet-draw-draw-rectangle").click()
    w, h = leaflet.size["width"], leaflet.size["height"]
    _drag(driver, leaflet, (w // 4, h // 4), (3 * w // 4, 3 * h // 4))
    driver.switch_to.default_content()
    area = _wait(lambda: driver.find_element(
        By.CSS_SELECTOR, "input[aria-label*='area']").get_attribute("value"), 30,
        "the drawn area in the area box")
    drawn = _wait(lambda: (lambda got: got if got and got != everywhere else None)(
        _results(driver, "Results for “farmland”")), 60, "results in the drawn area")
    assert _inside(area, _footprints(servers.api_url, drawn))
    assert "area=" + area.replace(",", "%2C") in driver.current_url
    # 'Search this view': zoom out one step, then the view becomes the area
    _map(driver).find_element(By.CSS_SELECTOR, ".leaflet-control-zoom-out").click()
    _wait(lambda: "%2C13" in driver.current_url, 30, "the zoomed-out view in the URL")
    _click(driver, "Search this view")
    view_area = _wait(lambda: (lambda v: v if v and v != area else None)(driver.find_element(
        By.CSS_SELECTOR, "input[aria-label*='area']").get_attribute("value")), 30,
        "the view as the area")
    ids = _wait(lambda: (lambda got: got if got and got != drawn else None)(
        _results(driver, "Results for “farmland”")), 60, "results in the view")
    assert _inside(view_area, _footprints(servers.api_url, ids))


def test_the_heat_map_renders_with_its_legend(servers, driver):
    _open(driver, servers.url + f"/?q=farmland&area={ND}")
    _results(driver, "Results for “farmland”", K)
    _wait(lambda: driver.find_element(By.XPATH, "//*[contains(text(), 'score heat map')]"),
          30, "the heat-map toggle").click()
    _wait(lambda: _loaded_tiles(driver, "heat") >= 1, 60, "heat-map tiles")
    _map(driver)
    legend = driver.find_element(By.CSS_SELECTOR, ".satfind-legend").text
    assert "score" in legend and re.search(r"-?\d\.\d{3}", legend)
    driver.switch_to.default_content()
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "explorer-heat.png"))


def test_labels_survive_a_reload_and_export(servers, driver):
    _open(driver, servers.url + f"/?q=farmland&area={ND}&labels=browser-test")
    ids = _results(driver, "Results for “farmland”", K)
    _click_key(driver, f"up_{ids[0]}")  # the first card's Relevant
    _wait(lambda: SatfindClient(servers.api_url).labels("browser-test")["positives"], 30,
          "the label in the API")
    now = _wait(lambda: (lambda got: got if got and f"up_{ids[0]}" and _key_primary(
        driver, f"up_{ids[0]}") else None)(_results(driver, "Results for “farmland”")), 30,
        "the re-ranked results, the first marked relevant")
    _click_key(driver, f"down_{now[-1]}")  # the last card's Irrelevant
    got = _wait(lambda: (lambda s: s if s["negatives"] else None)(
        SatfindClient(servers.api_url).labels("browser-test")), 30, "the negative label")
    assert got["positives"] == [ids[0]] and got["negatives"] == [now[-1]]
    driver.get(driver.current_url)  # reload: a new Streamlit session
    _results(driver, "Results for")
    _wait(lambda: "1 relevant · 1 irrelevant" in _body(driver), 30, "the label counts")
    body = _body(driver)
    assert "relevant" in body and "irrelevant" in body
    _map(driver)
    ARTIFACTS.mkdir(exist_ok=True)
    driver.switch_to.default_content()
    _click(driver, "Export GeoJSON")
    driver.save_screenshot(str(ARTIFACTS / "explorer-labels.png"))
    files = _wait(lambda: [p for p in driver.downloads.glob("*.geojson")], 30,
                  "the label set's GeoJSON")
    exported = json.loads(files[0].read_text())
    assert {f["properties"]["id"] if "id" in f["properties"] else f.get("id")
            for f in exported["features"]} >= {ids[0]}


def test_a_shared_link_shows_the_same_results_in_a_fresh_browser(servers, driver, tmp_path):
    _open(driver, servers.url + f"/?area={ND}")
    _search(driver, "farmland")
    first = _cards(driver)[0]
    _click_key(driver, f"similar_{first}")  # the first card's More like this
    ids = _results(driver, f"Results for more like tile {first}")
    _wait(lambda: "view=" in driver.current_url and "tile=" in driver.current_url, 30,
          "the link to update")
    link = driver.current_url
    fresh = _browser(tmp_path / "fresh")
    try:
        _open(fresh, link)
        assert _results(fresh, f"Results for more like tile {first}") == ids
    finally:
        fresh.quit()


def test_the_api_down_banner_appears_and_clears_by_itself(servers, driver):
    _open(driver, servers.url + "/?q=farmland")
    _results(driver, "Results for “farmland”", K)
    servers.stop_api()
    try:
        driver.get(servers.url + "/?q=farmland")
        _wait(lambda: "not reachable" in _body(driver), 60, "the outage banner")
        driver.switch_to.default_content()
        driver.save_screenshot(str(ARTIFACTS / "explorer-outage.png"))
    finally:
        servers.start_api()
    _results(driver, "Results for “farmland”", K, timeout_s=60)  # no reload, no click
    assert "not reachable" not in _body(driver)
