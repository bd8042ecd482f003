"""`satfind-search`: query a running satfind API from scripts (HTTP only: no model here).

    satfind-search --api http://127.0.0.1:8000 "center pivot irrigation" --format geojson
    satfind-search --tile 42 --k 50 --format csv
    satfind-search "a quarry" --all --format parquet > scores.parquet   # every tile in the area
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path

from indexer.cli import glue_bbox
from search.client import SatfindClient, SatfindError

PROG = "satfind-search"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Search a running satfind API; results "
                                "go to standard output.")
    p.add_argument("text", nargs="?", help="text query")
    p.add_argument("--api", default=os.environ.get("SATFIND_API", "http://127.0.0.1:8000"),
                   help="API base URL (default: $SATFIND_API or http://127.0.0.1:8000)")
    p.add_argument("--tile", type=int, metavar="ID", help="tiles like this tile")
    p.add_argument("--image", metavar="FILE", help="tiles like this image (PNG/JPEG/GeoTIFF)")
    p.add_argument("--labels", metavar="NAME", help="with --all: refine by this label set")
    p.add_argument("--k", type=int, help="results (default: the API's)")
    p.add_argument("--bbox", metavar="W,S,E,N")
    p.add_argument("--start", metavar="DATE")
    p.add_argument("--end", metavar="DATE")
    p.add_argument("--sensor", action="append", default=[])
    p.add_argument("--all", action="store_true", help="the score of every tile in the area "
                   "(not only the best k)")
    p.add_argument("--format", default="json",
                   choices=["json", "geojson", "csv", "arrow", "parquet"],
                   help="output format (arrow / parquet with --all only)")
    return p


def _bbox(text: str | None):
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != 4:
        raise SatfindError(f"--bbox: expected W,S,E,N in degrees, got {text!r}")
    return vals


def _csv(results: list[dict]) -> str:
    buf = io.StringIO()
    cols = ["id", "score", "z", "x", "y", "west", "south", "east", "north", "acquired",
            "source", "sensor", "gsd_m", "thumbnail_url"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in results:
        w.writerow({**r, **dict(zip(("west", "south", "east", "north"), r["bounds"],
                                    strict=True))})
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(glue_bbox(sys.argv[1:] if argv is None else list(argv)))
    given = [x is not None for x in (args.text, args.tile, args.image)]
    if sum(given) != 1 and not (args.all and args.labels and sum(given) == 0):
        _parser().error("give one of TEXT, --tile or --image")
    if args.format in ("arrow", "parquet") and not args.all:
        _parser().error(f"--format {args.format} needs --all")
    try:
        filters = {"bbox": _bbox(args.bbox), "start": args.start, "end": args.end,
                   "sensor": args.sensor}
        with SatfindClient(args.api, api_key=os.environ.get("SATFIND_API_KEY")) as c:
            if args.all:
                if args.image:
                    raise SatfindError("--all takes TEXT, --tile or --labels (not --image)")
                out = c.region_scores(args.text, args.tile, args.labels, format=args.format,
                                      **filters)
            else:
                fmt = "json" if args.format == "csv" else args.format
                if args.image:
                    data = Path(args.image).read_bytes()
                    out = c.search_image(data, Path(args.image).name, args.k, fmt, **filters)
                elif args.tile is not None:
                    out = c.similar(args.tile, args.k, fmt, **filters)
                else:
                    out = c.search_text(args.text, args.k, fmt, **filters)
                if args.format == "csv":
                    out = _csv(out["results"])
    except (SatfindError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if isinstance(out, bytes):
        sys.stdout.buffer.write(out)
    elif isinstance(out, str):
        sys.stdout.write(out)
    else:
        sys.stdout.write(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
