"""`satfind-ui`: start the Streamlit explorer on loopback, pointed at a satfind API."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).with_name("app.py")


def upload_limit_mb(api: str, timeout_s: float = 3.0) -> int | None:
    """The API's query-image limit in whole MiB (rounded up), or None when it cannot be
    asked (then Streamlit keeps its own limit and the app checks the size itself)."""
    import json
    import math
    import urllib.request

    try:
        with urllib.request.urlopen(f"{api.rstrip('/')}/stats", timeout=timeout_s) as r:
            limit = json.load(r).get("limits", {}).get("max_upload_bytes")
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(limit / 2**20)) if isinstance(limit, int) else None


def streamlit_command(api: str, host: str, port: int, upload_mb: int | None = None,
                      public_api: str | None = None) -> list[str]:
    """`upload_mb`: Streamlit's upload limit, so its uploader says the API's (not 200 MB).
    `public_api`: the API's address as the browser reaches it (map tiles), if not `api`."""
    limit = ["--server.maxUploadSize", str(upload_mb)] if upload_mb else []
    public = ["--public-api", public_api] if public_api else []
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", host,
            "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", *limit, "--", "--api", api, *public]


def add_version(p: argparse.ArgumentParser) -> None:
    """`--version`: `<prog> <version>` of the installed satfind package. (The ui imports no
    other satfind package, so this is its own copy of indexer.cli's.)"""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = f"{p.prog} {version('satfind')}"
    except PackageNotFoundError:
        text = f"{p.prog} unknown"
    p.add_argument("--version", action="version", version=text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="satfind-ui", description="The satfind web explorer.")
    p.add_argument("--api", default="http://127.0.0.1:8000", help="satfind API base URL")
    p.add_argument("--public-api", default=None,
                   help="the API's URL as users' browsers reach it, for the map's imagery and "
                        "heat-map tiles (default: --api)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    add_version(p)
    args = p.parse_args(argv)
    print(f"satfind explorer: http://{args.host}:{args.port} (API {args.api})", flush=True)
    try:
        return subprocess.call(streamlit_command(args.api, args.host, args.port,
                                                 upload_limit_mb(args.api), args.public_api))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
