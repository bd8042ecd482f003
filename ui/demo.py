"""`satfind-demo --index DIR`: the search API and the explorer together, on loopback."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from ui.cli import add_version, streamlit_command, upload_limit_mb


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="satfind-demo", description=__doc__)
    p.add_argument("--index", required=True, metavar="DIR")
    p.add_argument("--config", metavar="FILE")
    p.add_argument("--encoder", metavar="NAME[=FILE]",
                   help="a published encoder preset for the API (see satfind-serve --help)")
    p.add_argument("--port", type=int, default=8501, help="explorer port (API: a free one)")
    add_version(p)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)  # a polite kill stops the children too
    api_port = _free_port()
    api = f"http://127.0.0.1:{api_port}"
    serve = [sys.executable, "-m", "search.cli", "--index", args.index, "--port", str(api_port),
             "--log-level", "warning"]
    if args.config:
        serve += ["--config", args.config]
    if args.encoder:
        serve += ["--encoder", args.encoder]
    procs = [subprocess.Popen(serve, env=os.environ.copy())]
    try:
        if not _wait_healthy(api, procs[0]):
            print("satfind-demo: the API did not start (see its error above)", file=sys.stderr)
            return 1
        procs.append(subprocess.Popen(streamlit_command(api, "127.0.0.1", args.port,
                                                        upload_limit_mb(api))))
        print(f"satfind explorer: http://127.0.0.1:{args.port}  (API {api}; Ctrl-C stops both)",
              flush=True)
        while all(pr.poll() is None for pr in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.terminate()
        for pr in procs:
            try:
                pr.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pr.kill()


if __name__ == "__main__":
    sys.exit(main())
