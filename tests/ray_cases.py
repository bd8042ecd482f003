"""The Ray runner's cases on a real multi-node Ray cluster, run by tests/test_ray_runner.py
inside a network namespace of its own (`unshare --net`: only a loopback interface exists
there, so every server Ray starts listens on 127.0.0.1 and nothing else can reach it).

    python -m tests.ray_cases WORKDIR     # writes WORKDIR/results.json

One cluster (`ray.cluster_utils.Cluster`: a head without CPUs and three worker nodes of two
CPUs each, each node its own raylet and object store) indexes one archive (the shared
rasters, two COGs of them over HTTP from nginx, and a raster that fails while its tiles are
read) that the local runner indexed first, twice:
  node      in this process, a worker node removed mid-job;
  driver    satfind-index --runner ray SIGKILLed mid-job, then run again.
Each records the tile keys and vectors against the local runner's for the test to judge.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

DEADLINE_S = 60  # each wait below is bounded by this
REMOTE = ("naip_2009_cog.tif", "bahamas_cog.tif")  # served by nginx (tests/servers.py)


def lo_up() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def tile_keys(index: Path) -> tuple[list, np.ndarray]:
    """Sorted (file name, z, x, y) of every tile, their ids, and their vectors."""
    from indexer.store.snapshot import IndexSnapshot

    snap = IndexSnapshot.open(index)
    t = snap.tiles(["id", "source", "z", "x", "y"]).to_pylist()
    rows = sorted((Path(r["source"]).name, r["z"], r["x"], r["y"], r["id"]) for r in t)
    vecs = snap.get_vectors(np.array([r[4] for r in rows], dtype=np.int64))
    return [list(r) for r in rows], vecs


def compare(a: Path, b: Path) -> dict:
    ka, va = tile_keys(a)
    kb, vb = tile_keys(b)
    ids_b = [r[4] for r in kb]
    return {"tiles_a": len(ka), "tiles_b": len(kb),
            "remote_tiles_b": sum(r[0] in REMOTE for r in kb),
            "same_keys": [r[:4] for r in ka] == [r[:4] for r in kb],
            "duplicate_ids_b": len(ids_b) - len(set(ids_b)),
            "max_vector_diff": float(np.abs(va - vb).max()) if len(ka) == len(kb) and len(ka)
            else None}


def main(work: Path) -> int:
    lo_up()
    import ray
    from ray.cluster_utils import Cluster

    from encoder.model import SatelliteEncoder
    from indexer.config import load_settings
    from indexer.job.pipeline import IndexJob
    from indexer.store.snapshot import committed
    from tests.helpers import OFFLINE_CONFIG, SHARED_GEOTIFF, make_raster
    from tests.servers import Nginx, make_cogs, nginx_binary

    results: dict = {"times": {}}
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=2) for _ in range(3)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    results["times"]["cluster start"] = time.perf_counter() - t0
    results["nodes"] = len([n for n in ray.nodes() if n["Alive"]])

    base = load_settings(OFFLINE_CONFIG)
    spec = dataclasses.replace(base.encoder, device="cpu")
    enc = SatelliteEncoder(spec)

    def settings(runner: str, **job):
        j = dataclasses.replace(base.job, runner=runner, workers=1, actors=2, **job)
        return dataclasses.replace(base, encoder=spec, job=j)

    def run(index: Path, archives: list[str], runner: str, **job):
        t = time.perf_counter()
        job = IndexJob(index, settings(runner, **job), enc, progress=False)
        rep = job.run(archives)
        results["times"][f"{index.name}"] = time.perf_counter() - t
        return rep, job

    # The archive: the shared rasters (synthetic ones where ../shared is absent), and a
    # raster with one row per strip and its last row cut off: it passes the plan's checks
    # (their decimated read skips that row) and fails while its tiles are read.
    bad_dir = work / "bad"
    bad = make_raster(bad_dir / "c.tif", size=2048, res=5.0, seed=6, lon=12.05, blockysize=1)
    with open(bad, "r+b") as f:
        f.truncate(bad.stat().st_size - 3000)
    results["shared"] = SHARED_GEOTIFF.is_dir()
    server = None
    if results["shared"]:
        archives = [str(SHARED_GEOTIFF), str(bad_dir)]
        if nginx_binary():  # and two COGs over HTTP (nginx in this namespace: 127.0.0.1)
            server = Nginx(make_cogs(work / "www"), work / "nginx").__enter__()
            archives += [f"{server.url}/{n}" for n in REMOTE]
    else:
        make_raster(work / "synthetic" / "a.tif", size=1400, res=5.0, seed=4)
        make_raster(work / "synthetic" / "b.tif", size=1400, res=5.0, seed=5, lon=11.95)
        archives = [str(work / "synthetic"), str(bad_dir)]
    rep, _ = run(work / "ref", archives, "local")  # the reference: the local runner
    results["ref_problems"] = [str(p) for p in rep.problems]

    # node: a worker node removed once the job has committed something.
    idx = work / "node"
    state: dict = {}

    def index_it():
        try:
            state["report"], state["job"] = run(idx, archives, "ray", commit_every=256,
                                                read_batch=64)
        except BaseException as e:  # noqa: BLE001  (recorded for the test)
            state["error"] = f"{type(e).__name__}: {e}"

    th = threading.Thread(target=index_it)
    th.start()
    deadline = time.monotonic() + 3 * DEADLINE_S  # (a hang guard: 256 tiles take seconds)
    while time.monotonic() < deadline and th.is_alive():
        c = committed(idx)
        if c and c[1] >= 256:
            break
        time.sleep(0.05)
    removed_at = committed(idx)
    cluster.remove_node(workers[0])
    th.join(timeout=3 * DEADLINE_S)
    results["node"] = {**compare(work / "ref", idx), "removed_at_tiles": removed_at[1]
                       if removed_at else 0, "finished": not th.is_alive(),
                       "error": state.get("error"),
                       "written": getattr(state.get("report"), "tiles_written", None),
                       "nodes_used": len(state["job"].runner.nodes) if "job" in state else 0,
                       "problems": [str(p) for p in getattr(state.get("report"), "problems",
                                                            [])]}
    workers.append(cluster.add_node(num_cpus=2))  # back to three for the driver case
    cluster.wait_for_nodes()

    # driver: satfind-index --runner ray SIGKILLed mid-job, then run again.
    idx = work / "driver"
    cfg = work / "driver.toml"
    cfg.write_text(OFFLINE_CONFIG.read_text().replace("[job]", "[job]\nread_batch = 64\n"
                                                      "actors = 2", 1))
    cmd = [sys.executable, "-m", "indexer.cli", *archives, "--index", str(idx), "--config",
           str(cfg), "--runner", "ray", "--ray-address", cluster.address, "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 3 * DEADLINE_S  # (a hang guard: 256 tiles take seconds)
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        c = committed(idx)
        if c and c[1] >= 256:
            proc.send_signal(signal.SIGKILL)
            killed_at = c[1]
            break
        time.sleep(0.02)
    first_err = proc.communicate(timeout=DEADLINE_S)[1]
    t = time.perf_counter()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3 * DEADLINE_S)
    results["times"]["driver rerun"] = time.perf_counter() - t
    results["driver"] = {"killed_at_tiles": killed_at, "first_err": first_err[-600:]}
    (work / "results.json").write_text(json.dumps(results, indent=1))
    results["driver"] = {**compare(work / "ref", idx), "killed_at_tiles": killed_at,
                         "rerun_rc": again.returncode, "rerun_out": again.stdout[-600:],
                         "rerun_err": again.stderr[-600:]}
    ray.shutdown()
    cluster.shutdown()
    if server is not None:
        server.__exit__(None, None, None)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
