"""Explorer click-to-results: the time from a user's action until the new results are fully
shown, in a real headless browser, for the explorer before the map-first rewrite (89fb32f)
and the current one (HEAD), against the same API and index, in the same browser, one run.

    python bench/ui_click.py                          # 5 of each interaction, k = 12
    python bench/ui_click.py --repeats 3 --out /tmp/ui_click.json
    python bench/ui_click.py --profile 3              # and then JS time by script file

Interactions (each a new query: text queries cycle through different words, 'more like
this' takes a card whose tile was not queried yet, feedback starts from a fresh untimed
text query with the label set emptied):

- text: type a word in the query box and press Enter ("farmland" first);
- similar: click a card's 'more like this' (the first card the first time);
- feedback: click the 3rd card's Relevant.

"Results shown" = the heading names the new query (old: an h3 subheader, new: bold
markdown), k result thumbnails are loaded (`[data-testid='stImage'] img`, naturalWidth > 0)
and Streamlit's run has finished: no `[data-testid='stStatusWidget']` (or it is fading out:
its 200 ms exit transition is not counted) and no element marked `data-stale='true'`.
(Streamlit 1.67 shows the status widget only once a run has lasted 500 ms, so the widget
alone would call most of these runs finished while their first elements arrive; from the
click until a run finishes the elements it has not redrawn yet are marked stale.) For the
new explorer, also the time until its map (a Leaflet iframe) has the new results' k
numbered markers in its DOM. All timestamps are taken inside the page (`performance.now()`
at the Enter keydown / the click event, then in a MutationObserver and a 10 ms timer), not
by polling from Python; the checks' own cost in the page is recorded (`check_ms`). Per
action, also: the page's main-thread busy time (CDP Performance metrics) and the CPU time
of the Streamlit server and of the API. An action after which no Streamlit run begins
within 10 s is done once more, and listed.

Needs Debian's chromium and chromium-driver, selenium, git, and ../shared/data/geotiff
(the shared rasters, indexed with the small random test model). Everything binds to
127.0.0.1; every wait is bounded; every process is stopped at the end, and the worktree of
the old explorer removed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import chaos  # noqa: E402
from tests.helpers import OFFLINE_CONFIG, wait_until  # noqa: E402

BEFORE = "89fb32f"  # the last explorer before the map-first rewrite (07d9f8d)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
MAP = "iframe[title='ui.mapview.satfind_map']"
QUERY_BOX = "input[aria-label='Describe what you are looking for']"
LABEL_SET = "my-labels"  # the new explorer's default label set (ui/labelling.py)
TEXT_WORDS = ["farmland", "forest", "harbour", "river", "desert", "highway", "lake",
              "vineyard", "quarry", "airport"]
RESET_WORDS = ["wetland", "orchard", "glacier", "suburb", "beach", "canyon", "meadow",
               "marina", "stadium", "railway"]
INTERACTIONS = ("text", "similar", "feedback")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}

# Installed in the page before each action. Records t0 at the action's own event and the
# first moment each condition holds; `done` when all hold at once.
INSTALL = r"""
const [expected, k, mapSel, trigger] = arguments;
if (window.__sf) window.__sf.stop();
const norm = s => s.replace(/\s+/g, ' ').trim();
const sf = {t0: null, done: null, heading: null, runEnd: null, imgs: null, map: [],
            checks: 0, checkMs: 0, sawRun: false, expected: expected, k: k};
window.__sf = sf;
function headingOk() {
  for (const el of document.querySelectorAll('h3, strong'))
    if (norm(el.textContent) === expected) return true;
  return false;
}
function idle() {
  const w = document.querySelector("[data-testid='stStatusWidget']");
  return (!w || w.classList.contains('StatusWidget-exit'))
    && !document.querySelector("[data-stale='true']");
}
function imgsOk() {
  const imgs = document.querySelectorAll("[data-testid='stImage'] img");
  if (imgs.length !== k) return false;
  for (const i of imgs) if (!(i.complete && i.naturalWidth > 0)) return false;
  return true;
}
function mapState() {
  const f = mapSel && document.querySelector(mapSel);
  if (!f) return null;
  try {
    const ids = f.contentWindow.eval(
      "state.args && state.args.results ? state.args.results.map(r => r.id).join(',') : ''");
    return ids + '|' + f.contentDocument.querySelectorAll('.satfind-rank').length;
  } catch (e) { return 'error: ' + e; }
}
sf.describe = () => ({
  headings: [...document.querySelectorAll('h3, strong')].map(e => norm(e.textContent))
    .filter(t => t.startsWith('Results')),
  status: document.querySelector("[data-testid='stStatusWidget']") ? 'present' : 'absent',
  stale: document.querySelectorAll("[data-stale='true']").length,
  images: [...document.querySelectorAll("[data-testid='stImage'] img")]
    .map(i => i.complete && i.naturalWidth > 0),
  map: mapState(),
});
function check() {
  const now = performance.now();
  sf.checks += 1;
  try { checkAt(now); } finally { sf.checkMs += performance.now() - now; }
}
function checkAt(now) {
  if (mapSel) {
    const m = mapState();
    const last = sf.map.length ? sf.map[sf.map.length - 1][1] : undefined;
    if (m !== last) sf.map.push([now, m]);
  }
  if (sf.t0 === null || sf.done !== null) return;
  const h = headingOk(), r = idle(), i = imgsOk();
  if (!r) sf.sawRun = true;  // a rerun began (Streamlit marks the old elements stale)
  if (h && sf.heading === null) sf.heading = now;
  if (h && r && sf.runEnd === null) sf.runEnd = now;
  if (i && sf.imgs === null && sf.heading !== null) sf.imgs = now;
  if (h && r && i) sf.done = now;
}
sf.ready = headingOk() && imgsOk();  // must be false: the action's results are new
const onEvent = ev => {
  if (sf.t0 !== null) return;
  if (trigger.type === 'key' ? (ev.type === 'keydown' && ev.key === 'Enter')
      : (ev.type === 'click' && ev.target.closest && ev.target.closest(trigger.selector))) {
    sf.t0 = ev.timeStamp || performance.now();
    queueMicrotask(check);
  }
};
window.addEventListener('keydown', onEvent, true);
window.addEventListener('click', onEvent, true);
const obs = new MutationObserver(check);
obs.observe(document.body, {subtree: true, childList: true, attributes: true,
                            characterData: true});
const onLoad = () => check();
document.addEventListener('load', onLoad, true);
const timer = setInterval(check, 10);
sf.stop = () => {
  obs.disconnect(); clearInterval(timer);
  document.removeEventListener('load', onLoad, true);
  window.removeEventListener('keydown', onEvent, true);
  window.removeEventListener('click', onEvent, true);
};
check();
return sf.ready;
"""

# Resolves when `done` (or the deadline): bounded by time and by count. `lost`: the action
# was seen but no Streamlit run began within lostMs.
WAIT_DONE = r"""
const [timeoutMs, lostMs, cb] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
const start = performance.now();
let n = 0;
(function poll() {
  const sf = window.__sf;
  n += 1;
  if (sf.done !== null) return cb({ok: true, t0: sf.t0, done: sf.done, heading: sf.heading,
                                   runEnd: sf.runEnd, imgs: sf.imgs, checks: sf.checks,
                                   checkMs: sf.checkMs});
  const lost = sf.t0 !== null && !sf.sawRun && performance.now() - sf.t0 > lostMs;
  if (lost || performance.now() - start > timeoutMs || n > timeoutMs / 20 + 100)
    return cb({ok: false, lost: lost, t0: sf.t0, state: sf.describe()});
  setTimeout(poll, 20);
})();
"""

# The map: the first moment its results were the cards' results with k markers drawn.
WAIT_MAP = r"""
const [timeoutMs, want, cb] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
const start = performance.now();
let n = 0;
(function poll() {
  const sf = window.__sf;
  n += 1;
  const hit = sf.map.find(([t, m]) => t >= sf.t0 && m === want);
  if (hit) return cb({ok: true, t: hit[0]});
  if (performance.now() - start > timeoutMs || n > timeoutMs / 20 + 100)
    return cb({ok: false, log: sf.map.slice(-5)});
  setTimeout(poll, 20);
})();
"""

CARD_IDS = r"""
return [...document.querySelectorAll("[class*='st-key-similar_']")].map(e => {
  const m = e.className.match(/st-key-similar_(\d+)/); return m ? Number(m[1]) : null; });
"""

PAGE_METRICS = {"TaskDuration": "browser_busy_ms", "ScriptDuration": "browser_js_ms",
                "LayoutDuration": "browser_layout_ms", "RecalcStyleDuration": "browser_style_ms"}
LOST_S = 10  # an action after which no Streamlit run begins within this: done again, once


class LostAction(RuntimeError):
    """The browser delivered the event, but the explorer started no run."""


IDLE = r"""
const w = document.querySelector("[data-testid='stStatusWidget']");
return (!w || w.classList.contains('StatusWidget-exit'))
  && !document.querySelector("[data-stale='true']");
"""


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True, timeout=120).stdout.strip()


def checkout() -> str:
    """What the 'after' explorer runs: HEAD, and any uncommitted change to the code it
    imports (it runs from this working tree)."""
    head = git("rev-parse", "--short", "HEAD")
    dirty = [line.split(maxsplit=1)[-1] for line in
             git("status", "--porcelain", "--", "ui", "search").splitlines()]
    return head + (f" + uncommitted changes ({', '.join(dirty)})" if dirty else "")


def build_index(data: Path, index: Path) -> None:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "indexer.cli", str(data), "--index",
                           str(index), "--config", str(OFFLINE_CONFIG)], cwd=ROOT, env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=900)
    if done.returncode:
        raise RuntimeError(f"satfind-index exited with {done.returncode}: {done.stderr[-2000:]}")
    print(f"indexed {data} in {time.perf_counter() - t0:.1f} s", flush=True)


def wait_streamlit(port: int, proc: subprocess.Popen, log: Path) -> None:
    def healthy():
        if proc.poll() is not None:
            raise SystemExit(f"streamlit exited with {proc.returncode}: "
                             f"{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                        timeout=2) as r:
                return r.status == 200
        except OSError:
            return False
    try:
        wait_until(healthy, 90, f"streamlit on port {port}", 0.3)
    except TimeoutError as e:
        raise RuntimeError(f"{e}: {log.read_text()[-2000:]}") from None


def start_explorers(api_url: str, before: Path, work: Path, procs: list) -> dict:
    """{'before': url, 'after': url} (the processes go into `procs` as they start); the
    old explorer imports its own ui/ and search/ from the worktree."""
    from ui.cli import streamlit_command, upload_limit_mb

    env_before = {**ENV, "PYTHONPATH": str(before)}
    where = subprocess.run([sys.executable, "-c", "import ui, search; print(ui.__file__); "
                            "print(search.__file__)"], cwd=before, env=env_before,
                           capture_output=True, text=True, check=True, timeout=120).stdout
    if (before / "ui" / "mapview.py").exists() or any(
            not Path(p).resolve().is_relative_to(before.resolve()) for p in where.split()):
        raise RuntimeError(f"the old explorer would not import its own packages: {where}")
    out = {}
    for name in ("before", "after"):
        port = chaos.free_port()
        if name == "before":
            cmd = [sys.executable, "-m", "streamlit", "run", str(before / "ui" / "app.py"),
                   "--server.address", "127.0.0.1", "--server.port", str(port),
                   "--server.headless", "true", "--browser.gatherUsageStats", "false",
                   "--", "--api", api_url]
            cwd, env = before, env_before
        else:
            cmd = streamlit_command(api_url, "127.0.0.1", port, upload_limit_mb(api_url))
            cwd, env = ROOT, ENV
        log = work / f"streamlit-{name}.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        procs.append(proc)
        out[name] = f"http://127.0.0.1:{port}"
        wait_streamlit(port, proc, log)
    return out


def browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run", "--window-size=1500,1000", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(90)
    return driver


class App:
    """One explorer in its own browser: its actions, and the timing of each."""

    def __init__(self, name: str, url: str, driver, k: int, timeout_s: float,
                 servers: dict[str, int]):
        self.name, self.url, self.driver, self.k = name, url, driver, k
        self.timeout_s = timeout_s
        self.servers = servers  # {"streamlit": pid, "api": pid}: CPU used per action
        self.new = name == "after"
        self.queried: set[int] = set()
        self.lost: list[str] = []  # actions done twice because the first started no run
        self.settle_after = True

    def open(self) -> None:
        from selenium.webdriver.common.by import By

        self.driver.execute_cdp_cmd("Performance.enable", {})
        self.driver.get(self.url)
        wait_until(lambda: self.driver.find_element(By.CSS_SELECTOR, QUERY_BOX),
                 60, f"the {self.name} explorer's query box")
        if self.new:  # the map-first explorer draws its map before any query
            wait_until(lambda: self.driver.find_elements(By.CSS_SELECTOR, MAP), 60,
                     "the new explorer's map")
        self.settle()
        if not self.new and self.driver.find_elements(By.CSS_SELECTOR, MAP):
            raise RuntimeError("the old explorer has the new map: it runs the new ui/")

    def heading(self, kind: str, word: str = "", tile: int = 0) -> str:
        if kind == "similar":
            return f"Results for more like tile {tile}"
        base = f"Results for “{word}”"
        if kind == "feedback":  # the new app's icons are Material ligatures (their names)
            return base + (" · thumb_up 1 · thumb_down 0" if self.new else " · 👍 1 · 👎 0")
        return base

    def cards(self) -> list[int]:
        return self.driver.execute_script(CARD_IDS)

    def settle(self, quiet_s: float = 1.5) -> None:
        """Until Streamlit has been idle for `quiet_s` (the new map reports its view after
        a fit, which reruns its fragment): the next action starts from a quiet page."""
        since = [None]

        def quiet():
            if not self.driver.execute_script(IDLE):
                since[0] = None
                return False
            since[0] = since[0] or time.monotonic()
            return time.monotonic() - since[0] >= quiet_s
        wait_until(quiet, 30, f"the {self.name} explorer to be idle", 0.1)

    def _busy_s(self) -> dict[str, float]:
        """The page's renderer main thread so far (CDP): seconds of tasks, of JavaScript, of
        layout and of style recalculation."""
        got = self.driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]
        return {m["name"]: m["value"] for m in got if m["name"] in PAGE_METRICS}

    def _timed(self, action, expected: str, trigger: dict) -> dict:
        self.driver.switch_to.default_content()
        if self.driver.execute_script(INSTALL, expected, self.k, MAP if self.new else None,
                                      trigger):
            raise RuntimeError(f"{self.name}: '{expected}' is already shown (not a new query)")
        busy0 = self._busy_s()
        cpu0 = {n: cpu_s(pid) for n, pid in self.servers.items()}
        action()
        got = self.driver.execute_async_script(WAIT_DONE, self.timeout_s * 1000,
                                               LOST_S * 1000)
        cpu1 = {n: cpu_s(pid) for n, pid in self.servers.items()}
        busy1 = self._busy_s()
        if not got["ok"]:
            self.driver.execute_script("window.__sf.stop()")
            page = json.dumps(got["state"], ensure_ascii=False)
            if got["lost"]:
                self.lost.append(f"{expected}: {page}")
                raise LostAction(f"{self.name}: the action for '{expected}' started no run "
                                 f"in {LOST_S} s")
            shot = ROOT / "test-artifacts" / f"ui_click-{self.name}-failure.png"
            shot.parent.mkdir(exist_ok=True)
            self.driver.save_screenshot(str(shot))
            raise RuntimeError(f"{self.name}: no results for '{expected}' within "
                               f"{self.timeout_s:g} s (action seen: {got['t0'] is not None}); "
                               f"page: {page}; screenshot: {shot}")
        t0 = got["t0"]
        out = {"expected": expected, "results_ms": got["done"] - t0,
               "heading_ms": got["heading"] - t0, "run_end_ms": got["runEnd"] - t0,
               "images_ms": got["imgs"] - t0, "checks": got["checks"],
               "check_ms": got["checkMs"],  # this instrumentation's own cost in the page
               # from just before the action to just after the results (a little wider)
               **{key: (busy1[m] - busy0[m]) * 1000 for m, key in PAGE_METRICS.items()},
               **{f"{n}_cpu_ms": (cpu1[n] - cpu0[n]) * 1000 for n in self.servers}}
        cards = self.cards()
        if len(cards) != self.k:
            raise RuntimeError(f"{self.name}: {len(cards)} cards, not {self.k}")
        out["cards"] = cards
        if self.new:
            want = ",".join(str(i) for i in cards) + f"|{self.k}"
            m = self.driver.execute_async_script(WAIT_MAP, self.timeout_s * 1000, want)
            if not m["ok"]:
                self.driver.execute_script("window.__sf.stop()")
                raise RuntimeError(f"{self.name}: the map did not draw the {self.k} results "
                                   f"within {self.timeout_s:g} s; its last states: {m['log']}")
            out["map_ms"] = m["t"] - t0
        self.driver.execute_script("window.__sf.stop()")
        if self.settle_after:
            self.settle()
        return out

    def _twice(self, attempt) -> dict:
        """The action; once more if the explorer started no run after it (counted)."""
        try:
            return attempt()
        except LostAction as e:
            print(f"  {e}; again", flush=True)
            self.settle()
            return attempt()

    def text(self, word: str) -> dict:
        return self._twice(lambda: self._text(word))

    def _text(self, word: str) -> dict:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        box = wait_until(lambda: self.driver.find_element(By.CSS_SELECTOR, QUERY_BOX), 30,
                       "the query box")
        box.send_keys(Keys.CONTROL, "a")  # typing replaces the previous query
        return self._timed(lambda: box.send_keys(word, Keys.ENTER), self.heading("text", word),
                           {"type": "key"})

    def _click(self, key: str, expected: str) -> dict:
        return self._twice(lambda: self._click_once(key, expected))

    def _click_once(self, key: str, expected: str) -> dict:
        from selenium.webdriver.common.by import By

        sel = f".st-key-{key}"
        b = wait_until(lambda: self.driver.find_element(By.CSS_SELECTOR, f"{sel} button"), 30,
                     f"the {key} button")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", b)
        return self._timed(b.click, expected, {"type": "click", "selector": sel})

    def similar(self) -> dict:
        """'More like this' on the first card whose tile was not queried yet."""
        tile = next((i for i in self.cards() if i not in self.queried), None)
        if tile is None:
            raise RuntimeError(f"{self.name}: every card's tile was queried already")
        self.queried.add(tile)
        return self._click(f"similar_{tile}", self.heading("similar", tile=tile))

    def feedback(self, word: str, api_url: str) -> dict:
        """A fresh text query (untimed), then Relevant on its 3rd card (timed)."""
        reset_labels(api_url)
        self.text(word)
        tile = self.cards()[2]
        return self._click(f"up_{tile}", self.heading("feedback", word))


def reset_labels(api_url: str) -> None:
    """Empty the new explorer's label set (the API keeps it; the old explorer has none)."""
    from search.client import SatfindClient, SatfindError

    try:
        SatfindClient(api_url).delete_labels(LABEL_SET)
    except SatfindError as e:
        if e.status != 404:
            raise


def word(words: list[str], i: int) -> str:
    return words[i % len(words)] + ("" if i < len(words) else f" {i // len(words) + 1}")


def profile_text(app: App, words: list[str]) -> dict:
    """JavaScript self time per text query in the page, by script file, from Chrome's
    sampling profiler (separate from the timed runs: the profiler slows the page). Each
    profile spans the action until the results are shown, not the quiet time after."""
    by_file: dict[str, float] = {}
    d = app.driver
    d.execute_cdp_cmd("Profiler.enable", {})
    d.execute_cdp_cmd("Profiler.setSamplingInterval", {"interval": 250})  # us
    app.settle_after = False
    try:
        for w in words:
            d.execute_cdp_cmd("Profiler.start", {})
            try:
                app.text(w)
            finally:
                prof = d.execute_cdp_cmd("Profiler.stop", {})["profile"]
            nodes = {n["id"]: n["callFrame"] for n in prof["nodes"]}
            for sid, delta in zip(prof["samples"], prof["timeDeltas"], strict=True):
                cf = nodes[sid]
                name = cf["url"].rsplit("/", 1)[-1] or f"({cf['functionName']})"
                by_file[name] = by_file.get(name, 0.0) + delta / 1000 / len(words)
            app.settle()
    finally:
        app.settle_after = True
        d.execute_cdp_cmd("Profiler.disable", {})
    return dict(sorted(by_file.items(), key=lambda kv: -kv[1]))


def print_profile(profiles: dict) -> None:
    skip = {"((idle))", "((program))", "((garbage collector))", "((root))"}
    print("\nJavaScript self time per text query, by script (ms; Chrome's sampling profiler, "
          "separate runs; (program) = the browser's own native work)")
    for name, by_file in profiles.items():
        js = sum(v for k, v in by_file.items() if k not in skip)
        top = [f"{k} {v:.0f}" for k, v in by_file.items() if k not in skip][:8]
        print(f"  {name}: JS {js:.0f}, (program) {by_file.get('((program))', 0):.0f}, "
              f"GC {by_file.get('((garbage collector))', 0):.0f}; " + ", ".join(top))


def summary(samples: dict) -> dict:
    out = {}
    for inter in INTERACTIONS:
        row = {}
        for app in ("before", "after"):
            for key in ("results_ms", "map_ms", "heading_ms", "run_end_ms",
                        *PAGE_METRICS.values(), "streamlit_cpu_ms", "api_cpu_ms", "check_ms"):
                vals = [s[key] for s in samples[app][inter] if key in s]
                if vals:
                    row[f"{app}_{key}"] = {"median": statistics.median(vals), "max": max(vals)}
        row["ratio_median"] = (row["before_results_ms"]["median"]
                               / row["after_results_ms"]["median"])
        row["ratio_max"] = row["before_results_ms"]["max"] / row["after_results_ms"]["max"]
        out[inter] = row
    return out


def print_table(summ: dict, meta: dict) -> None:
    print(f"\n{meta['cpu']}, {meta['cpus']} CPUs; {meta['chromium']}; streamlit "
          f"{meta['streamlit']}; before {meta['before']}, after {meta['after']}; "
          f"k = {meta['k']}, {meta['repeats']} of each (after 1 warm-up); ms")
    print("| interaction | before median | before max | after median | after max | "
          "before / after (median) | before / after (max) | after: map markers median | "
          "max |")
    print("|---|---|---|---|---|---|---|---|---|")
    for inter, r in summ.items():
        b, a, m = r["before_results_ms"], r["after_results_ms"], r.get("after_map_ms")
        print(f"| {inter} | {b['median']:.0f} | {b['max']:.0f} | {a['median']:.0f} | "
              f"{a['max']:.0f} | {r['ratio_median']:.2f}x | {r['ratio_max']:.2f}x | "
              f"{m['median']:.0f} | {m['max']:.0f} |")
    print("\nwhere the time goes (medians, ms): from the action to the heading shown / "
          "Streamlit's run finished / results shown; meanwhile the page's main thread busy "
          "(of it: JavaScript, layout + style), CPU of the Streamlit server and of the API")
    print("| interaction | explorer | heading | run finished | results | page main thread | "
          "page JS | page layout + style | Streamlit CPU | API CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for inter, r in summ.items():
        for app in ("before", "after"):
            med = {key.removeprefix(f"{app}_"): v["median"] for key, v in r.items()
                   if key.startswith(f"{app}_")}
            med["layout_style"] = med["browser_layout_ms"] + med["browser_style_ms"]
            cells = [med[key] for key in (
                "heading_ms", "run_end_ms", "results_ms", "browser_busy_ms", "browser_js_ms",
                "layout_style", "streamlit_cpu_ms", "api_cpu_ms")]
            print(f"| {inter} | {app} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each interaction")
    p.add_argument("--k", type=int, default=12, help="results per query (the explorer's "
                   "default; other values are set through the URL)")
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for results")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "geotiff")
    p.add_argument("--out", type=Path, help="write every sample and the summary as JSON")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after the timed runs, N more text queries per explorer under "
                        "Chrome's JavaScript profiler: JS time by script")
    args = p.parse_args()
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        raise SystemExit("needs Debian's chromium and chromium-driver")
    if not args.data.is_dir():
        raise SystemExit(f"no rasters at {args.data}")
    import selenium
    import streamlit

    work = Path(tempfile.mkdtemp(prefix="satfind-bench-ui-"))
    before = work / "before"
    procs: list[subprocess.Popen] = []
    drivers = []
    worktree = False
    try:
        after_at_start = checkout()
        build_index(args.data, work / "idx")
        git("worktree", "add", "--detach", str(before), BEFORE)
        worktree = True
        api_port = chaos.free_port()
        api_url = f"http://127.0.0.1:{api_port}"
        procs.append(chaos.start_server(work / "idx", OFFLINE_CONFIG, api_port))
        explorers = start_explorers(api_url, before, work, procs)
        apps = {}
        for (name, url), proc in zip(explorers.items(), procs[1:], strict=True):
            d = browser(work / f"chrome-{name}")
            drivers.append(d)
            suffix = "" if args.k == 12 else f"/?k={args.k}"
            apps[name] = App(name, url + suffix, d, args.k, args.timeout,
                             {"streamlit": proc.pid, "api": procs[0].pid})
        chromium = drivers[0].capabilities.get("browserVersion", "?")
        for app in apps.values():  # warm-up, untimed: first runs import and cache
            app.open()
            app.text("warm up")
            app.similar()
            app.feedback("warm up feedback", api_url)
            reset_labels(api_url)
        samples = {name: {i: [] for i in INTERACTIONS} for name in apps}
        for rep in range(args.repeats):
            order = ["before", "after"] if rep % 2 == 0 else ["after", "before"]
            for inter in INTERACTIONS:
                for name in order:
                    app = apps[name]
                    if inter == "text":
                        got = app.text(word(TEXT_WORDS, rep))
                    elif inter == "similar":
                        got = app.similar()
                    else:
                        got = app.feedback(word(RESET_WORDS, rep), api_url)
                        reset_labels(api_url)
                    samples[name][inter].append(got)
                    extra = f", map {got['map_ms']:.0f}" if "map_ms" in got else ""
                    print(f"rep {rep + 1} {name:<6} {inter:<8} {got['results_ms']:7.0f} ms"
                          f"{extra}  ({got['expected']})", flush=True)
        meta = {"cpu": cpu_model(), "cpus": os.cpu_count(), "chromium": f"Chromium {chromium}",
                "selenium": selenium.__version__, "streamlit": streamlit.__version__,
                "before": BEFORE, "after": checkout(),
                "k": args.k, "repeats": args.repeats, "python": platform.python_version()}
        if meta["after"] != after_at_start:
            meta["after"] = f"{after_at_start} at the start, {meta['after']} at the end"
            print(f"warning: the working tree changed during the run: {meta['after']}")
        summ = summary(samples)
        meta["lost_actions"] = {name: app.lost for name, app in apps.items()}
        print_table(summ, meta)
        for name, app in apps.items():
            if app.lost:
                print(f"{name}: {len(app.lost)} action(s) started no Streamlit run within "
                      f"{LOST_S} s and were done again (the timing is the second's): "
                      + "; ".join(app.lost))
        profiles = {}
        if args.profile:
            words = [f"profile {w}" for w in TEXT_WORDS[:args.profile]]
            profiles = {name: profile_text(app, words) for name, app in apps.items()}
            print_profile(profiles)
        if args.out:
            args.out.write_text(json.dumps({"meta": meta, "summary": summ,
                                            "samples": samples, "profiles": profiles},
                                           indent=1, ensure_ascii=False))
            print(f"wrote {args.out}")
    finally:
        for d in drivers:
            try:
                d.quit()
            except Exception as e:  # noqa: BLE001 - keep stopping the rest
                print(f"chromedriver quit: {e}", file=sys.stderr)
        for proc in procs:
            chaos.stop(proc)
        if worktree:
            try:
                git("worktree", "remove", "--force", str(before))
            except subprocess.CalledProcessError as e:
                print(f"git worktree remove failed: {e.stderr}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
