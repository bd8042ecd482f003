"""`satfind-serve`: the search API over one index directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from indexer.cli import add_encoder_option, add_version

PROG = "satfind-serve"
# uvicorn's log levels; anything else is a usage error here, not a traceback from uvicorn.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="Serve the satfind search API.")
    p.add_argument("--index", required=True, metavar="DIR", help="index directory")
    p.add_argument("--config", metavar="FILE", help="index_config.toml (default: built-in "
                   "defaults, or ./index_config.toml when present)")
    add_encoder_option(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS,
                   help="server log level (default: info)")
    add_version(p)
    args = p.parse_args(argv)

    import uvicorn

    from encoder.identity import EncoderError
    from indexer.configfile import ConfigError
    from indexer.errors import IndexError_
    from search.engine import SearchEngine
    from search.http.app import create_app
    from search.settings import load_serve_config

    config = args.config
    if config is None and Path("index_config.toml").is_file():
        config = "index_config.toml"
    try:
        engine = SearchEngine(args.index, load_serve_config(config, encoder=args.encoder))
    except (ConfigError, EncoderError, IndexError_) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(engine), host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
