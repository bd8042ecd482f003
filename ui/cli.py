"""`satfind-ui`: start the Streamlit explorer on loopback, pointed at a satfind API."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).with_name("app.py")


def streamlit_command(api: str, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", host,
            "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--", "--api", api]


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
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    add_version(p)
    args = p.parse_args(argv)
    print(f"satfind explorer: http://{args.host}:{args.port} (API {args.api})", flush=True)
    try:
        return subprocess.call(streamlit_command(args.api, args.host, args.port))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
