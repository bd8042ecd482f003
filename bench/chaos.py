"""Reliability runs, longer than CI's (tests/test_reliability.py), for RELIABILITY.md.

    python bench/chaos.py kills [--kills 60] [--zygote] [--rerun-each]
    python bench/chaos.py bombs [--rounds 10] [--concurrency 8] [--limit-mb 2500]
                                [--server-root OTHER_CHECKOUT]
    python bench/chaos.py schemathesis [--max-examples 1000]

kills: SIGKILL / SIGINT at random points of real satfind-index processes (fresh interpreters
unless --zygote), indexing and --remove; after every kill the index must open at its last
commit with unique ids and no surviving process; re-runs (after each kill with --rerun-each,
else every 5) must reach exactly the uninterrupted tile set. Prints the table of every trial.
bombs: the decompression-bomb corpus against satfind-serve in a memory cgroup (another
checkout's server with --server-root, e.g. the commit before the fix, for comparison).
schemathesis: every phase and every check against a live server.
Everything runs on 127.0.0.1 with the offline test model and bounded loops.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import chaos  # noqa: E402
from tests.bombs import allowed_heavy_png, bomb_corpus  # noqa: E402
from tests.helpers import OFFLINE_CONFIG, SHARED_GEOTIFF  # noqa: E402


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def _settings():
    from indexer.config import load_settings

    s = load_settings(OFFLINE_CONFIG)
    return dataclasses.replace(s, job=dataclasses.replace(s.job, workers=0))


def kills(args, work: Path) -> int:
    from encoder.model import SatelliteEncoder
    from indexer.job.pipeline import IndexJob

    s = _settings()
    archive = chaos.make_archive(work / "archive")
    cfg = chaos.chaos_config(work)
    IndexJob(work / "ref", s, SatelliteEncoder(s.encoder), progress=False).run([str(archive)])
    expected = chaos.tile_set(work / "ref")
    print(f"machine: {_machine()}; archive: 3 rasters, {len(expected)} tiles; runs: "
          f"{'forks of a fork server' if args.zygote else 'fresh interpreters'}")
    zygote = None
    if args.zygote:
        (work / "runs").mkdir()
        zygote = chaos.Zygote(work / "runs")
    t0 = time.perf_counter()
    try:
        report = chaos.run_kill_trials(
            archive, work / "idx", cfg, expected, kills=args.kills, seed=args.seed,
            finish_every=1 if args.rerun_each else 5, deadline_s=args.deadline, zygote=zygote,
            log=lambda t: print(f"  trial {t.n}: {t.stage} {t.signal} after {t.delay_s:.2f} s "
                                f"-> exit {t.returncode}, commit {t.generation}, {t.tiles} "
                                f"tiles: {t.outcome}", flush=True))
    finally:
        if zygote:
            zygote.close()
    k = report.kills
    by = {(t.stage, t.signal): 0 for t in k}
    for t in k:
        by[(t.stage, t.signal)] += 1
    print(f"\n{report.table()}\n")
    print(f"kills: {len(k)} ({', '.join(f'{a} {b}: {n}' for (a, b), n in sorted(by.items()))}); "
          f"completed re-runs identical to the uninterrupted index: "
          f"{sum(t.stage == 're-run' for t in report.trials)}; every invariant held; "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


def bombs(args, work: Path) -> int:
    from encoder.model import SatelliteEncoder
    from indexer.job.pipeline import IndexJob

    s = _settings()
    idx = work / "idx"
    IndexJob(idx, s, SatelliteEncoder(s.encoder), progress=False).run([str(SHARED_GEOTIFF)])
    limit = chaos.MemoryLimit(args.limit_mb * 2**20)
    port = chaos.free_port()
    root = Path(args.server_root or ROOT)
    proc = chaos.start_server(idx, OFFLINE_CONFIG, port, preexec=limit.preexec(), cwd=root)
    corpus = {**bomb_corpus(), "png-7000 (49 MP, allowed)": allowed_heavy_png(7000)}
    t0 = time.perf_counter()
    counts = chaos.bomb_run(f"http://127.0.0.1:{port}", corpus, rounds=args.rounds,
                            concurrency=args.concurrency, deadline_s=600)
    alive = proc.poll() is None
    peak = limit.peak(proc.pid)
    chaos.stop(proc)
    ooms = limit.oom_kills()
    limit.close()
    print(f"machine: {_machine()}; server: {root}; memory limit {args.limit_mb} MB "
          f"({limit.kind}); {args.rounds} rounds x {len(corpus)} files, {args.concurrency} at "
          f"once, {time.perf_counter() - t0:.1f} s")
    print("\n| file | bytes | statuses (-1 = no response) |\n|---|---|---|")
    for name, st in counts.items():
        print(f"| {name} | {len(corpus[name]):,} | {dict(sorted(st.items()))} |")
    fivexx = sum(n for st in counts.values() for code, n in st.items() if code >= 500 or
                 code < 0)
    print(f"\nserver alive at the end: {alive}; OOM kills: {ooms}; peak memory: "
          f"{(peak or 0) / 2**20:.0f} MB; 5xx or no response: {fivexx}")
    return 0 if alive and not ooms and not fivexx else 1


def schemathesis(args, work: Path) -> int:
    from encoder.model import SatelliteEncoder
    from indexer.job.pipeline import IndexJob

    s = _settings()
    idx = work / "idx"
    IndexJob(idx, s, SatelliteEncoder(s.encoder), progress=False).run([str(SHARED_GEOTIFF)])
    port = chaos.free_port()
    proc = chaos.start_server(idx, OFFLINE_CONFIG, port)
    try:
        r = chaos.schemathesis_run(f"http://127.0.0.1:{port}", args.max_examples,
                                   timeout_s=3600, seed=args.seed)
    finally:
        chaos.stop(proc)
    out = r.stdout + r.stderr
    print(f"machine: {_machine()}")
    if "FAILURES" in out:
        print(out[out.index("FAILURES"):out.index("SUMMARY")])
    print(out.split("SUMMARY")[-1])
    return r.returncode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kills")
    k.add_argument("--kills", type=int, default=60)
    k.add_argument("--seed", type=int, default=1)
    k.add_argument("--zygote", action="store_true", help="fork runs from a fork server")
    k.add_argument("--rerun-each", action="store_true", help="a full re-run after every kill")
    k.add_argument("--deadline", type=float, default=3600)
    b = sub.add_parser("bombs")
    b.add_argument("--rounds", type=int, default=10)
    b.add_argument("--concurrency", type=int, default=8)
    b.add_argument("--limit-mb", type=int, default=2500)
    b.add_argument("--server-root", help="run the server of another checkout")
    st = sub.add_parser("schemathesis")
    st.add_argument("--max-examples", type=int, default=1000)
    st.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        return {"kills": kills, "bombs": bombs, "schemathesis": schemathesis}[args.what](
            args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
