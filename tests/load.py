"""A bounded HTTP load generator against a satfind API on 127.0.0.1: a fixed mix of cached
and uncached text queries, "similar" and filtered searches (used by tests and bench/)."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict

import httpx

WORDS = ["river", "forest", "farmland", "harbour", "airport", "quarry", "solar farm",
         "center-pivot irrigation", "suburb", "highway", "lake", "beach", "desert", "snow"]


def request_mix(ids: list[int], rng: random.Random, n: int):
    kind = rng.choice(["text_cached", "text_uncached", "similar", "text_filtered"])
    if kind == "text_cached":
        return kind, "/search", {"q": "farmland", "k": 10}
    if kind == "text_uncached":  # a query string nobody asked before: the text tower runs
        return kind, "/search", {"q": f"{rng.choice(WORDS)} {n} {rng.random():.6f}", "k": 10}
    if kind == "similar":
        return kind, f"/tiles/{rng.choice(ids)}/similar", {"k": 10}
    return kind, "/search", {"q": "farmland", "k": 10, "start": "2014-01-01",
                             "end": "2019-12-31"}


def run_load(url: str, clients: int, duration: float, max_requests: int, seed: int = 0):
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.get("/search", params={"q": "x", "k": 50})
        ids = [x["id"] for x in r.json()["results"]] or [0]
    lat: dict[str, list[float]] = defaultdict(list)
    embed: dict[str, list[float]] = defaultdict(list)  # server-side model time, seconds
    errors: dict[str, int] = defaultdict(int)
    lock = threading.Lock()
    counter = iter(range(max_requests))
    stop_at = time.monotonic() + duration

    def client(i: int):
        rng = random.Random(seed * 1000 + i)
        with httpx.Client(base_url=url, timeout=30) as c:
            while time.monotonic() < stop_at:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                kind, path, params = request_mix(ids, rng, n)
                t0 = time.perf_counter()
                model_s = 0.0
                try:
                    r = c.get(path, params=params)
                    ok = r.status_code == 200
                    if ok:
                        model_s = r.json().get("embed_ms", 0.0) / 1000
                except (httpx.HTTPError, ValueError):
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    lat[kind].append(dt)
                    embed[kind].append(model_s)
                    if not ok:
                        errors[kind] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 60)
    wall = time.perf_counter() - t0
    run_load.embed = embed  # per request: the server's own embedding time
    return lat, errors, wall
