"""Load test of the search API: N concurrent clients on 127.0.0.1 for a bounded time.

    python bench/api_load.py --index /tmp/idx --config tests/offline.toml --clients 32
    python bench/api_load.py --url http://127.0.0.1:8000 --clients 32   # a running server

With --index it starts `satfind-serve` itself on a free loopback port and stops it at the
end. Each client loops over one request mix until --duration seconds or --max-requests
(both bounds always apply). Prints requests/s, p50 / p99 latency and the error count per
request kind, side by side from one run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import chaos  # noqa: E402
from tests.chaos import free_port  # noqa: E402
from tests.load import WORDS, run_load  # noqa: E402


def start_server(index: str, config: str | None, port: int) -> subprocess.Popen:
    try:
        return chaos.start_server(Path(index), Path(config) if config else None, port)
    except RuntimeError as e:
        raise SystemExit(str(e)) from None


def report(lat, errors, wall, clients: int) -> int:
    total = sum(len(v) for v in lat.values())
    total_err = sum(errors.values())
    print(f"clients={clients} wall={wall:.1f}s requests={total} "
          f"throughput={total / wall:.1f} req/s errors={total_err}")
    print(f"{'kind':<15} {'n':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
          f"{'model p50':>9} {'rest p50':>9}")
    embed = getattr(run_load, "embed", {})
    for kind in sorted(lat):
        a = np.array(lat[kind]) * 1000
        m = np.array(embed.get(kind, [0.0] * len(a))) * 1000
        print(f"{kind:<15} {len(a):>6} {len(a) / wall:>8.1f} {np.percentile(a, 50):>8.1f} "
              f"{np.percentile(a, 99):>8.1f} {errors[kind]:>6} {np.percentile(m, 50):>9.1f} "
              f"{np.percentile(a - m, 50):>9.1f}")
    print("model = the server's own query-embedding time (text/image tower), from the "
          "response; rest = everything else: HTTP, JSON, filters, ANN, re-rank")
    return total_err


def text_forward_ms(config: str | None, n: int = 20) -> tuple[float, float]:
    """p50 / p99 of the prompt-ensembled text embedding alone (the text tower's forward
    passes), in this process, with the server's encoder config."""
    from encoder.model import SatelliteEncoder
    from encoder.prompts import ensemble_text_embedding
    from indexer.config import load_settings

    enc = SatelliteEncoder(load_settings(config).encoder)
    ensemble_text_embedding(enc, "warm up")
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        ensemble_text_embedding(enc, f"{WORDS[i % len(WORDS)]} {i}")
        lat.append(time.perf_counter() - t0)
    return float(np.percentile(lat, 50) * 1000), float(np.percentile(lat, 99) * 1000)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running satfind-serve")
    p.add_argument("--index", help="start satfind-serve on this index instead")
    p.add_argument("--config")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=20.0, help="seconds (upper bound)")
    p.add_argument("--max-requests", type=int, default=50_000, help="upper bound")
    p.add_argument("--text-forward", action="store_true",
                   help="also time the text encoder alone (needs --config), to separate the "
                   "model's forward pass from the rest of an uncached query")
    args = p.parse_args()
    if not (args.url or args.index):
        p.error("give --url or --index")
    proc = None
    url = args.url
    if args.index:
        port = free_port()
        proc = start_server(args.index, args.config, port)
        url = f"http://127.0.0.1:{port}"
    try:
        lat, errors, wall = run_load(url, args.clients, args.duration, args.max_requests)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    failed = report(lat, errors, wall, args.clients)
    if args.text_forward:
        p50, p99 = text_forward_ms(args.config)
        unc = np.percentile(np.array(lat["text_uncached"]) * 1000, 50)
        print(f"text encoder alone (prompt ensemble): p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
              f"uncached HTTP p50 minus that: {unc - p50:.1f} ms")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
