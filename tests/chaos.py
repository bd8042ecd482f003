"""Reliability machinery shared by tests/test_reliability.py (short, in CI) and
bench/chaos.py (long, for RELIABILITY.md): signals at random points of real `satfind-index`
processes, a server under a memory limit, and schemathesis against a live server.

Everything binds to 127.0.0.1, and every loop is bounded in count and in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.conftest import OFFLINE_CONFIG, ROOT, make_raster

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


# --- an archive and its uninterrupted index ------------------------------------------------

def make_archive(d: Path) -> Path:
    """Three rasters (~700 tiles with the test model), with nodata corners."""
    for i, size in enumerate((1400, 900, 1100)):
        data = np.random.default_rng(i).integers(1, 255, (3, size, size)).astype(np.uint8)
        data[:, : size // 4, : size // 4] = 0
        make_raster(d / f"scene{i}.tif", size=size, lon=11.80 + 0.1 * i, data=data)
    return d


def chaos_config(d: Path) -> Path:
    """The offline config with small commits, so kills land between and inside many."""
    text = OFFLINE_CONFIG.read_text()
    for old, new in (("workers = 2", "workers = 1"), ("commit_every = 256", "commit_every = 64"),
                     ("batch_size = 64", "batch_size = 32")):
        assert old in text
        text = text.replace(old, new)
    cfg = d / "chaos.toml"
    cfg.write_text(text)
    return cfg


def tile_set(idx: Path) -> set[tuple[str, int, int, int]]:
    from indexer.store.snapshot import IndexSnapshot

    rows = IndexSnapshot.open(idx).tiles(["source", "z", "x", "y"]).to_pylist()
    return {(r["source"], r["z"], r["x"], r["y"]) for r in rows}


def check_index(idx: Path, expected: set, complete: bool = False) -> dict:
    """The invariants after any interruption; raises AssertionError naming the broken one."""
    from indexer.store.snapshot import IndexSnapshot

    if not (idx / "manifest.json").exists():
        assert not complete, "no index after a complete run"
        return {"generation": None, "tiles": 0}
    snap = IndexSnapshot.open(idx)  # opens at its last commit (checks sizes and ids)
    rows = snap.tiles(["id", "source", "z", "x", "y"]).to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == snap.ntotal, "duplicate ids or FAISS/Parquet mismatch"
    tiles = {(r["source"], r["z"], r["x"], r["y"]) for r in rows}
    assert len(tiles) == len(rows), "a tile was committed twice"
    assert tiles <= expected, "a tile that the uninterrupted run does not have"
    for src in snap.sources.values():
        if src.complete:
            mine = {t for t in expected if t[0] == src.path}
            assert mine <= tiles, f"{src.path} is marked complete with tiles missing"
    if complete:
        assert tiles == expected, "a finished run differs from the uninterrupted one"
        assert all(s.complete for s in snap.sources.values())
    return {"generation": snap.generation, "tiles": len(rows)}


def orphans(idx: Path, group: int | None = None) -> list[int]:
    """Pids of processes still running satfind-index on `idx` (DataLoader workers included),
    or still in process group `group` (a forked run and its workers)."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                stat = (p / "stat").read_text()
            except OSError:
                continue
            state, pgrp = stat.rsplit(")", 1)[1].split()[0], int(stat.rsplit(")", 1)[1].split()[2])
            if state == "Z":
                continue
            if ("indexer.cli" in cmd and str(idx) in cmd) or (group is not None and pgrp == group):
                found.append(int(p.name))
    return found


# --- signals at random points -------------------------------------------------------------

@dataclass
class Trial:
    n: int
    stage: str  # "index" or "remove"
    signal: str  # "SIGKILL", "SIGINT" or "none" (a run left to finish)
    delay_s: float  # after the stage began
    returncode: int | None = None
    generation: int | None = None
    tiles: int = 0
    outcome: str = ""


@dataclass
class ChaosReport:
    trials: list[Trial] = field(default_factory=list)

    @property
    def kills(self) -> list[Trial]:
        return [t for t in self.trials if t.signal != "none"]

    def table(self) -> str:
        lines = ["| # | stage | signal | after (s) | exit | commit | tiles | outcome |",
                 "|---|---|---|---|---|---|---|---|"]
        for t in self.trials:
            lines.append(f"| {t.n} | {t.stage} | {t.signal} | {t.delay_s:.2f} | "
                         f"{t.returncode} | {t.generation} | {t.tiles} | {t.outcome} |")
        return "\n".join(lines)


class _Run:
    """What the trials need of a satfind-index run: alive(), send(), finish(), stderr."""

    def wait_for(self, marker: str, timeout: float) -> bool:
        """Until a stderr line starts with `marker` (the stage began): False if the run
        ended or the time ran out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.startswith(marker) for line in self.stderr.splitlines()):
                return True
            if not self.alive():
                return False
            time.sleep(0.02)
        return False


class _Job(_Run):
    """A real satfind-index process (a fresh interpreter)."""

    def __init__(self, args: list[str], cfg: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "indexer.cli", *args, "--config", str(cfg), "-q"],
            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.stdout = ""
        self._err = threading.Thread(target=self._read, daemon=True)
        self._err.start()
        self._out = threading.Thread(target=self._read_out, daemon=True)
        self._out.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def _read_out(self) -> None:
        self.stdout = self.proc.stdout.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 300) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._err.join(10)
        self._out.join(10)
        return rc

    @property
    def stderr(self) -> str:
        return "".join(list(self.lines))


class Zygote:
    """`python -m tests.zygote`: forks each run from one interpreter that has already imported
    torch (see tests/zygote.py). Its runs are real processes; only the imports are shared."""

    def __init__(self, work: Path):
        self.work = work
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.zygote"], cwd=ROOT, env=ENV,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.exits: dict[int, int] = {}
        self._started: list[int] = []
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        with self._cv:
            assert self._cv.wait_for(lambda: self._ready, timeout=120), "zygote did not start"
        self._n = 0

    _ready = False

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            with self._cv:
                if msg.get("ready"):
                    self._ready = True
                elif "exit" in msg:
                    self.exits[msg["pid"]] = msg["exit"]
                else:
                    self._started.append(msg["pid"])
                self._cv.notify_all()

    def run(self, args: list[str], cfg: Path, killpoint: str = "") -> _ForkedJob:
        """satfind-index ARGS --config CFG -q in a forked child; `killpoint`: SIGKILLed at
        that tests/killpoint.py scenario's point."""
        self._n += 1
        out, err = self.work / f"run{self._n}.out", self.work / f"run{self._n}.err"
        req = {"args": [*args, "--config", str(cfg), "-q"], "stdout": str(out),
               "stderr": str(err), "killpoint": killpoint}
        with self._cv:
            before = len(self._started)
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            assert self._cv.wait_for(lambda: len(self._started) > before, timeout=30)
            pid = self._started[before]
        return _ForkedJob(self, pid, out, err)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class _ForkedJob(_Run):
    """A run forked by the Zygote (its output goes to files)."""

    def __init__(self, zygote: Zygote, pid: int, out: Path, err: Path):
        self.z, self.pid, self._out, self._err = zygote, pid, out, err

    def alive(self) -> bool:
        with self.z._cv:
            return self.pid not in self.z.exits

    def send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def finish(self, timeout: float = 300) -> int:
        with self.z._cv:
            done = self.z._cv.wait_for(lambda: self.pid in self.z.exits, timeout=timeout)
        if not done:
            self.send(signal.SIGKILL)
            with self.z._cv:
                self.z._cv.wait_for(lambda: self.pid in self.z.exits, timeout=30)
            raise AssertionError(f"run {self.pid} did not end within {timeout} s")
        return self.z.exits[self.pid]

    @property
    def stderr(self) -> str:
        try:
            return self._err.read_text()
        except FileNotFoundError:
            return ""

    @property
    def stdout(self) -> str:
        try:
            return self._out.read_text()
        except FileNotFoundError:
            return ""


def _no_orphans(idx: Path, group: int | None, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while orphans(idx, group) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not orphans(idx, group), "processes of a killed job outlived it"


def run_kill_trials(archive: Path, idx: Path, cfg: Path, expected: set, kills: int,
                    seed: int = 0, finish_every: int = 5, index_window_s: float = 1.2,
                    remove_window_s: float = 0.5, deadline_s: float = 600,
                    zygote: Zygote | None = None, log=lambda t: None) -> ChaosReport:
    """SIGKILL / SIGINT at random points of indexing and of --remove (then re-indexing),
    `kills` times; every `finish_every` kills, and at the end, a run is left to finish and
    must reach exactly the uninterrupted tile set. Checks every invariant after each. Runs
    are fresh interpreters, or forks of `zygote` (the same work, without ~5 s of imports)."""
    def launch(args):
        return zygote.run(args, cfg) if zygote else _Job(args, cfg)

    rng = random.Random(seed)
    report = ChaosReport()
    t_end = time.monotonic() + deadline_s
    sources = sorted(str(p) for p in archive.glob("*.tif"))
    n = completes = 0
    while len(report.kills) < kills and time.monotonic() < t_end:
        n += 1
        complete = False
        if (idx / "manifest.json").exists():  # every raster there, and complete
            entries = json.loads((idx / "manifest.json").read_text())["sources"].values()
            complete = len(entries) == len(sources) and all(
                e["status"] == "complete" for e in entries)
        stage = "index"
        if complete:  # nothing left to index: remove a source, or start a new index, in
            # turn (not drawn: which trials find the index complete depends on timing, and
            # every run must try both)
            stage = ("remove", "new index")[completes % 2]
            completes += 1
            if stage == "new index":
                shutil.rmtree(idx)
        sig = rng.choice(["SIGKILL", "SIGINT"])
        args = [str(archive), "--index", str(idx)]
        if stage == "remove":
            args = ["--remove", rng.choice(sources), *args]
        job = launch(args)
        marker = "removing" if stage == "remove" else "plan:"  # the stage has begun
        window = remove_window_s if stage == "remove" else index_window_s
        delay = rng.uniform(0, window)
        trial = Trial(n, stage, sig, delay)
        if job.wait_for(marker, timeout=120):
            time.sleep(delay)
        if job.alive():
            job.send(getattr(signal, sig))
        else:
            trial.signal = "none"  # it finished before the signal: a completed run
        trial.returncode = job.finish()
        _no_orphans(idx, getattr(job, "pid", None))
        if trial.signal == "SIGINT":
            assert trial.returncode in (0, 130), (trial, job.stderr, job.stdout)
        if trial.signal != "SIGKILL":
            assert "Traceback" not in job.stderr, job.stderr
        state = check_index(idx, expected, complete=trial.returncode == 0)
        trial.generation, trial.tiles = state["generation"], state["tiles"]
        trial.outcome = "finished" if trial.returncode == 0 else "opens at its last commit"
        report.trials.append(trial)
        log(trial)
        if trial.signal != "none" and len(report.kills) % finish_every == 0:
            report.trials.append(_finish(launch, archive, idx, expected, n, log))
    report.trials.append(_finish(launch, archive, idx, expected, n + 1, log))
    return report


def _finish(launch, archive, idx, expected, n, log) -> Trial:
    job = launch([str(archive), "--index", str(idx)])
    trial = Trial(n, "re-run", "none", 0.0, returncode=job.finish())
    assert trial.returncode == 0, job.stderr
    state = check_index(idx, expected, complete=True)
    trial.generation, trial.tiles = state["generation"], state["tiles"]
    trial.outcome = "identical to the uninterrupted run"
    log(trial)
    return trial


# --- a server under a memory limit ---------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MemoryLimit:
    """A memory cgroup for one child process (cgroup v2, else v1): the kernel enforces the
    limit and records the peak and OOM kills. Where no cgroup can be made, nothing is
    enforced (RLIMIT_AS would count torch's reserved address space, gigabytes more than it
    uses) and `peak(pid)` reads the process's own high-water mark (VmHWM) instead."""

    def __init__(self, limit_bytes: int, name: str = "satfind-chaos"):
        self.limit = limit_bytes
        self.kind, self.dir = "measured (VmHWM)", None
        for kind, base in (("v2", self._v2_base()), ("v1", self._v1_base())):
            if base is None:
                continue
            d = base / f"{name}-{os.getpid()}-{time.monotonic_ns()}"
            try:
                d.mkdir()
                if kind == "v2":
                    (d / "memory.max").write_text(str(limit_bytes))
                    if (d / "memory.swap.max").exists():
                        (d / "memory.swap.max").write_text("0")
                else:
                    (d / "memory.limit_in_bytes").write_text(str(limit_bytes))
                    with contextlib.suppress(OSError):
                        (d / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
            except OSError:
                with contextlib.suppress(OSError):
                    d.rmdir()
                continue
            self.kind, self.dir = kind, d
            break

    @staticmethod
    def _v2_base() -> Path | None:
        root = Path("/sys/fs/cgroup")
        if not (root / "cgroup.controllers").exists():
            return None
        rel = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[-1].lstrip("/")
        base = root / rel
        try:
            if "memory" not in (base / "cgroup.subtree_control").read_text():
                return None
        except OSError:
            return None
        return base

    @staticmethod
    def _v1_base() -> Path | None:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3 and "memory" in parts[1].split(","):
                base = Path("/sys/fs/cgroup/memory") / parts[2].lstrip("/")
                return base if base.is_dir() else None
        return None

    def preexec(self):
        d = self.dir

        def enter():
            if d is not None:
                (d / "cgroup.procs").write_text("0")
        return enter

    def peak(self, pid: int | None = None) -> int | None:
        """Peak memory in bytes: the cgroup's, or (no cgroup) the live process `pid`'s."""
        if self.dir is None:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
            except (OSError, ValueError, TypeError):
                return None
            return None
        f = "memory.peak" if self.kind == "v2" else "memory.max_usage_in_bytes"
        try:
            return int((self.dir / f).read_text().split()[0])
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int:
        if self.dir is None:
            return 0
        f = "memory.events" if self.kind == "v2" else "memory.oom_control"
        try:
            for line in (self.dir / f).read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    return int(v)
        except OSError:
            pass
        return 0

    def close(self) -> None:
        if self.dir is not None:
            with contextlib.suppress(OSError):
                self.dir.rmdir()


def start_server(index: Path, config: Path | None, port: int, preexec=None,
                 cwd: Path = ROOT) -> subprocess.Popen:
    """satfind-serve on 127.0.0.1:port (the checkout at `cwd`), once /health answers."""
    import httpx

    cmd = [sys.executable, "-m", "search.cli", "--index", str(index), "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning"]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, preexec_fn=preexec,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"satfind-serve exited with {proc.returncode}: "
                               f"{proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("satfind-serve did not become healthy within 120 s")


def stop(proc: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM, then SIGKILL after `grace_s` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace_s)


def bomb_run(url: str, corpus: dict[str, bytes], rounds: int, concurrency: int = 4,
             deadline_s: float = 300) -> dict[str, dict[int, int]]:
    """Send every file of the corpus `rounds` times, `concurrency` at once; returns per
    file the count of each status (-1 = no response: connection refused or reset)."""
    import httpx

    jobs = [name for _ in range(rounds) for name in corpus]
    counts: dict[str, dict[int, int]] = {name: {} for name in corpus}
    lock = threading.Lock()
    t_end = time.monotonic() + deadline_s

    def worker(mine: list[str]) -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            for name in mine:
                if time.monotonic() > t_end:
                    return
                try:
                    status = c.post("/search/image", files={"file": (name, corpus[name])},
                                    data={"k": "3"}).status_code
                except httpx.HTTPError:
                    status = -1
                with lock:
                    counts[name][status] = counts[name].get(status, 0) + 1

    threads = [threading.Thread(target=worker, args=(jobs[i::concurrency],))
               for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(deadline_s + 60)
    return counts


def schemathesis_run(url: str, max_examples: int, timeout_s: float = 600,
                     seed: int | None = 1) -> subprocess.CompletedProcess:
    """`st run` with every phase and every check against a live server."""
    cmd = [str(Path(sys.executable).with_name("st")), "--config-file",
           str(ROOT / "tests" / "schemathesis.toml"), "run", f"{url}/openapi.json",
           "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
           "--max-examples", str(max_examples), "--workers", "2", "--no-color",
           # ("all" checks response times too, 10 s by default: a loaded runner, not a bug)
           "--max-response-time", "120"]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    env = {**ENV, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                          cwd=ROOT)
