"""`satfind-index`: build or extend an index from GeoTIFF archives."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

PROG = "satfind-index"


def add_version(p: argparse.ArgumentParser) -> None:
    """`--version`: `<prog> <version>` of the installed satfind package (no torch import);
    every satfind command's top-level parser has it (ui.cli keeps its own copy)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = f"{p.prog} {version('satfind')}"
    except PackageNotFoundError:
        text = f"{p.prog} unknown"
    p.add_argument("--version", action="version", version=text)


def add_encoder_option(p: argparse.ArgumentParser, repeat: bool = False) -> None:
    """`--encoder NAME` (or NAME=FILE): a named encoder preset instead of the config's
    [encoder] model; `repeat` for commands that compare several."""
    from encoder.presets import PRESETS

    p.add_argument("--encoder", metavar="NAME[=FILE]", action="append" if repeat else "store",
                   default=[] if repeat else None,
                   help="a published encoder by name" + ("; repeat to compare" if repeat else "")
                   + f" ({', '.join(PRESETS)}); =FILE gives its weights file (default: the "
                   "weights folder, downloaded when online)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Tile GeoTIFF archives into web-mercator tiles, embed them and store them "
        "in a searchable index. Re-running adds only what is new.",
    )
    p.add_argument("archives", nargs="*", metavar="ARCHIVE",
                   help="a folder (searched recursively), a raster, a .txt list of rasters, "
                   "a STAC item or ItemCollection JSON, or a URL (https://, s3://, gs://, "
                   "az://) of a COG or of STAC JSON")
    p.add_argument("--index", required=True, metavar="DIR", help="index directory")
    p.add_argument("--config", metavar="FILE", help="index_config.toml (default: built-in "
                   "defaults, or ./index_config.toml when present)")
    add_encoder_option(p)
    p.add_argument("--strict", action="store_true",
                   help="any bad input is fatal (default: report it and index the rest)")
    p.add_argument("--remove", action="append", default=[], metavar="SOURCE",
                   help="remove a source's tiles (a raster path or a source key); repeatable")
    stac = p.add_argument_group("STAC API search (pystac-client)")
    stac.add_argument("--stac-api", metavar="URL", help="index the items a STAC API search "
                      "returns (the API's landing page URL)")
    stac.add_argument("--collection", action="append", default=[], metavar="ID",
                      help="search these collections; repeatable")
    stac.add_argument("--bbox", metavar="W,S,E,N", help="items intersecting this box (degrees)")
    stac.add_argument("--datetime", metavar="RANGE",
                      help="an RFC 3339 instant or interval, e.g. 2023-06-01/2023-08-31")
    stac.add_argument("--query", action="append", default=[], metavar="EXPR",
                      help="query-extension filter, e.g. 'eo:cloud_cover<20'; repeatable")
    stac.add_argument("--filter", metavar="CQL2", help="a CQL2 filter (text, or JSON)")
    stac.add_argument("--max-items", type=_positive, metavar="N",
                      help="index at most N items")
    stac.add_argument("--page-size", type=_positive, metavar="N",
                      help="items per page of the search (default: the API's)")
    p.add_argument("--asset", metavar="KEY", help="the STAC asset to index (default: "
                   "discovery.stac_asset, else the first GeoTIFF asset with role visual, "
                   "then data)")
    ray = p.add_argument_group("Ray cluster (the `cluster` extra)")
    ray.add_argument("--runner", choices=("local", "ray"),
                     help="where tiles are read and embedded (default: job.runner, local)")
    ray.add_argument("--ray-address", metavar="ADDR", help="auto, ray://host:10001, or "
                     "host:port (default: job.ray_address, else RAY_ADDRESS or a new local Ray)")
    ray.add_argument("--actors", type=_positive, metavar="N",
                     help="encoder actors (default: one per GPU, else half the CPUs)")
    ray.add_argument("--gpus-per-actor", type=_positive_float, metavar="G",
                     help="GPUs per encoder actor (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print GDAL/FAISS warnings (default: counted in one summary line)")
    add_version(p)
    return p


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = float("nan")
    if not 0 < x <= 64:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 64], got {text!r}")
    return x


def _search(args: argparse.Namespace):
    """The STAC API search the arguments ask for (None without --stac-api)."""
    from indexer.rasters.stac_api import StacSearch, parse_bbox

    asked = [n for n in ("collection", "bbox", "datetime", "query", "filter", "max_items",
                         "page_size") if getattr(args, n)]
    if not args.stac_api:
        if asked:
            _parser().error(f"--{asked[0].replace('_', '-')} needs --stac-api URL")
        return None
    try:
        bbox = parse_bbox(args.bbox) if args.bbox else None
    except ValueError as e:
        _parser().error(str(e))
    return StacSearch(args.stac_api, tuple(args.collection), bbox, args.datetime,
                      tuple(args.query), args.filter, args.max_items, args.page_size)


def _remove(index_dir: str, targets: list[str], identity, store) -> int:
    from indexer.rasters.remote import public
    from indexer.store.writer import IndexWriter

    status = 0
    with IndexWriter(index_dir, identity, store, create=False) as w:
        print(f"removing {len(targets)} source(s) from {index_dir}", file=sys.stderr)
        for t in targets:
            keys = w.find_sources(public(t))
            if not keys:
                print(f"{PROG}: {t}: not a source of {index_dir}", file=sys.stderr)
                status = 1
            for k in keys:
                source = w.sources[k].path
                n = w.remove(k)
                print(f"removed {source}: {n} tiles")
        w.commit()
    return status


def _intact(index_dir: str) -> str:
    """What a user needs to know after a failure: where the index stands."""
    from indexer.errors import IndexError_
    from indexer.store.snapshot import committed

    try:
        state = committed(index_dir)
    except (IndexError_, OSError):
        return "the index directory could not be read back"
    if state is None:
        return "no index was committed"
    return f"the index is intact at commit {state[0]} ({state[1]} tiles)"


def _os_error(e: OSError) -> str:
    what = e.strerror or str(e).splitlines()[0] or type(e).__name__
    return f"{e.filename}: {what}" if e.filename else what


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt  # a polite kill stops like Ctrl-C: commit what was read


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def glue_bbox(argv: list[str]) -> list[str]:
    """`--bbox -99.2,46.9,-99.0,47.1` as `--bbox=-99.2,...`: argparse would take a value
    starting with '-' for an option."""
    out = []
    it = iter(argv)
    for a in it:
        if a == "--bbox":
            value = next(it, None)
            out.append(a if value is None else f"--bbox={value}")
        else:
            out.append(a)
    return out


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(glue_bbox(sys.argv[1:] if argv is None else list(argv)))
    search = _search(args)
    if not args.archives and not args.remove and not args.stac_api:
        _parser().error("give at least one ARCHIVE (or --stac-api URL, or --remove SOURCE)")
    if not args.index.strip():
        _parser().error("--index: give a directory path (an empty path is refused)")
    from encoder.identity import EncoderError
    from encoder.model import SatelliteEncoder
    from indexer.config import load_settings
    from indexer.configfile import ConfigError
    from indexer.errors import IndexError_, JobError
    from indexer.job.pipeline import IndexJob
    from indexer.logs import quiet_native_warnings

    config = args.config
    if config is None and Path("index_config.toml").is_file():
        config = "index_config.toml"
    try:
        settings = load_settings(config, encoder=args.encoder)
        if args.asset:
            settings = dataclasses.replace(settings, discovery=dataclasses.replace(
                settings.discovery, stac_asset=args.asset))
        ray = {k: v for k, v in (("runner", args.runner), ("ray_address", args.ray_address),
                                 ("actors", args.actors),
                                 ("gpus_per_actor", args.gpus_per_actor)) if v is not None}
        if ray:
            settings = dataclasses.replace(settings, job=dataclasses.replace(settings.job,
                                                                             **ray))
        if settings.job.runner == "ray":
            from indexer.job.ray_runner import import_ray

            import_ray()  # without Ray: how to install it, in one line, before the model
        encoder = SatelliteEncoder(settings.encoder)
        settings.check_encoder(encoder.identity.embed_dim)
        with quiet_native_warnings(args.verbose) as warnings_seen:
            if args.remove:
                status = _remove(args.index, args.remove, encoder.identity, settings.store)
                if not args.archives and search is None:
                    return status
            job = IndexJob(args.index, settings, encoder, strict=args.strict,
                           progress=not args.quiet)
            report = job.run(args.archives, search)
    except (ConfigError, EncoderError, IndexError_) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except (OSError, JobError) as e:
        msg = _os_error(e) if isinstance(e, OSError) else str(e)
        print(f"{PROG}: error: {msg}; {_intact(args.index)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; {_intact(args.index)}", file=sys.stderr)
        return 130
    if warnings_seen.count:
        print(f"{PROG}: {warnings_seen.summary()}", file=sys.stderr)
    print(report.summary())
    if getattr(job.runner, "nodes", None):
        print(job.runner.node_line())  # the Ray runner: tiles per cluster node
    if args.verbose and report.stages:
        print(f"{PROG}: {report.stage_line()}", file=sys.stderr)
    if report.interrupted:
        return 130
    if args.strict and report.problems:
        print(f"{PROG}: --strict: stopped at the first bad input", file=sys.stderr)
        return 1
    nothing = report.rasters_indexed + report.rasters_unchanged == 0
    return 1 if nothing else 0


if __name__ == "__main__":
    sys.exit(main())
