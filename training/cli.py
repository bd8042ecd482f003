"""The encoder layer's commands: `satfind-train` (GRAFT) and `satfind-eval` (measure)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from indexer.cli import add_version


def _count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 (0 = all images), "
                                         f"got {text!r}")
    return n


OUT_HELP = ("write the results (JSON{}) into this folder, created if needed "
            "(default: nothing is written; the results are printed only)")


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="satfind-eval", description="Evaluate a satellite encoder.")
    add_version(p)
    sub = p.add_subparsers(dest="what", required=True)
    z = sub.add_parser("zeroshot", help="zero-shot classification of a class-per-folder set")
    z.add_argument("image_dir")
    z.add_argument("--config", help="index_config.toml with the [encoder] to evaluate "
                   "(default: the built-in encoder)")
    z.add_argument("--out", metavar="DIR", help=OUT_HELP.format(" and a confusion CSV"))
    z.add_argument("--limit-per-class", type=_count, default=0, metavar="N",
                   help="at most N images per class (default 0 = all images)")
    z.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r = sub.add_parser("retrieval", help="text <-> image recall@1/5/10 from a captions file")
    r.add_argument("image_dir")
    r.add_argument("--captions", required=True,
                   help="one 'filename<TAB>caption' per line (filename relative to IMAGE_DIR)")
    r.add_argument("--config", help="index_config.toml with the [encoder] to evaluate "
                   "(default: the built-in encoder)")
    r.add_argument("--out", metavar="DIR", help=OUT_HELP.format(""))
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def _out_problem(out: str) -> str | None:
    """Why `--out` cannot become a results folder (checked before any work), or None."""
    if not out.strip():
        return "--out: give a folder path (an empty path is refused)"
    path = Path(out)
    try:
        for q in (path, *path.parents):  # the nearest existing one must be a folder
            if q.is_dir():
                return None
            if q.exists() or q.is_symlink():
                what = "it exists and" if q == path else f"{q}"
                return f"--out {out}: {what} is not a folder"
    except OSError as e:
        return f"--out {out}: {e.strerror or type(e).__name__}"
    return None


def _error(message: str) -> int:
    print(f"satfind-eval: error: {message}", file=sys.stderr)
    return 2


def eval_main(argv: list[str] | None = None) -> int:
    args = _eval_parser().parse_args(argv)
    problem = None if args.out is None else _out_problem(args.out)
    if problem:
        return _error(problem)

    from encoder.identity import EncoderError
    from encoder.model import SatelliteEncoder
    from indexer.config import load_settings
    from indexer.configfile import ConfigError
    from training.evaluate import EvalError, retrieval, zero_shot

    try:
        enc = SatelliteEncoder(load_settings(args.config).encoder)
        if args.what == "retrieval":
            res = retrieval(enc, Path(args.image_dir), Path(args.captions),
                            progress=not args.quiet)
        else:
            res = zero_shot(enc, Path(args.image_dir), args.limit_per_class,
                            progress=not args.quiet)
    except (ConfigError, EncoderError, EvalError) as e:
        return _error(str(e))
    _print_results(args.what, res, enc.identity.short())
    if args.out is None:
        return 0
    try:
        res.write(Path(args.out))
    except OSError as e:
        return _error(f"--out {args.out}: cannot write the results "
                      f"({e.strerror or type(e).__name__})")
    print(f"results in {args.out}/")
    return 0


def _print_results(what: str, res, encoder: str) -> None:
    if what == "retrieval":
        for k in res.text_to_image:
            print(f"recall@{k:<3} text->image {res.text_to_image[k]:.3f}  image->text "
                  f"{res.image_to_text[k]:.3f}  (text->image chance {res.chance(k):.3f})")
        print(f"retrieval over {res.n_images} images, {res.n_captions} captions; "
              f"encoder {encoder}")
        return
    for c, acc in res.per_class().items():
        print(f"{c:<24} {acc:6.3f}")
    print(f"zero-shot accuracy {res.accuracy:.3f} over {int(res.confusion.sum())} images, "
          f"{len(res.classes)} classes (chance {res.chance:.3f}); encoder {encoder}")


def train_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="satfind-train",
        description="Train a satellite encoder with GRAFT: align it to a frozen CLIP through "
                    "geotagged ground photos ([train] section of the config).")
    p.add_argument("--config", required=True,
                   help="TOML with [encoder] (the teacher CLIP), [train], [tiling], [discovery]")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in train.out")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_version(p)
    args = p.parse_args(argv)

    from encoder.identity import EncoderError
    from indexer.configfile import ConfigError
    from training.photos import PairError
    from training.settings import load_train_config
    from training.teacher import PhotoError
    from training.trainer import Trainer, TrainError, TrainInterrupted

    try:
        settings, train = load_train_config(args.config)
        report = Trainer(settings, train, progress=not args.quiet).run(resume=args.resume)
    except (ConfigError, EncoderError, PairError, PhotoError, TrainError) as e:
        print(f"satfind-train: error: {e}", file=sys.stderr)
        return 2
    except TrainInterrupted as e:
        then = (f"checkpoint {e.checkpoint}; continue with --resume" if e.checkpoint
                else "no checkpoint yet; run it again")
        print(f"satfind-train: interrupted at step {e.step}; {then}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before training started: pairs and teacher cache are kept
        print("satfind-train: interrupted before training; run it again to go on",
              file=sys.stderr)
        return 130
    c = report.pairs
    print(f"pairs: {c['samples']} patches from {c['photos']} photos ({c['train']} train, "
          f"{c['val']} val; no raster {c['no_raster']}, none in time window "
          f"{c['no_raster_in_time']}, nodata {c['nodata']}, read errors {c['read_error']})"
          f" | teacher: {report.teacher_computed}"
          f" photos embedded, {report.teacher_cached} cached")
    print(f"trained steps {report.resumed_from}..{report.steps} in {report.seconds:.0f} s | "
          f"val recall@1 sat->ground: untrained {report.val_recall_before:.3f}, trained "
          f"{report.val_recall_after:.3f} (chance {report.val_chance:.3f})")
    print(f"encoder: {report.export} (index with --config "
          f"{report.export.parent / 'index_config.toml'})")
    return 0


if __name__ == "__main__":
    sys.exit(eval_main())
