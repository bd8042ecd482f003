"""The encoder layer's commands: `satfind-train` (GRAFT) and `satfind-eval` (measure)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from encoder.prompts import PROMPT_SETS
from indexer.cli import add_encoder_option, add_version


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


OUT_HELP = ("write the results (JSON{}, and comparison.json / comparison.md) into this "
            "folder, created if needed (default: nothing is written; the results are printed "
            "only)")


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
    add_encoder_option(z, repeat=True)
    z.add_argument("--prompts", action="append", default=[], metavar="SET",
                   help="a prompt template set (default: the encoder's); repeat to compare "
                   f"({', '.join(PROMPT_SETS)})")
    z.add_argument("--sensor", default="", help="the sensor that resolution/sensor-aware "
                   "prompt sets name, e.g. Sentinel-2 (default: encoder.prompt_sensor)")
    z.add_argument("--gsd", type=float, metavar="M", help="the ground pixel size (m) that "
                   "aware prompt sets name (default: tiling.target_gsd_m)")
    z.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r = sub.add_parser("retrieval", help="text <-> image recall@1/5/10 from a captions file")
    r.add_argument("image_dir")
    r.add_argument("--captions", required=True,
                   help="one 'filename<TAB>caption' per line (filename relative to IMAGE_DIR)")
    r.add_argument("--config", help="index_config.toml with the [encoder] to evaluate "
                   "(default: the built-in encoder)")
    r.add_argument("--out", metavar="DIR", help=OUT_HELP.format(""))
    add_encoder_option(r, repeat=True)
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
    from indexer.configfile import ConfigError
    from training.evaluate import EvalError

    try:
        comparison, results = _evaluate(args)
    except (ConfigError, EncoderError, EvalError) as e:
        return _error(str(e))
    if len(results) == 1:
        _print_results(args.what, results[0][1], comparison.rows[0].identity)
    else:
        print(comparison.markdown(), end="")
    if args.out is None:
        return 0
    out = Path(args.out)
    try:
        for label, res in results:
            res.write(out if len(results) == 1 else out / label)
        comparison.write(out)
    except OSError as e:
        return _error(f"--out {args.out}: cannot write the results "
                      f"({e.strerror or type(e).__name__})")
    print(f"results in {args.out}/")
    return 0


def _evaluate(args: argparse.Namespace):
    """Every --encoder (else the config's) on the same images, and for zero-shot every
    --prompts set: (Comparison, [(label, result)])."""
    from encoder.download import locate
    from encoder.model import SatelliteEncoder
    from encoder.presets import get_preset
    from encoder.prompts import get_prompt_set
    from indexer.config import load_settings
    from training.compare import Comparison, row
    from training.evaluate import retrieval, zero_shot

    all_settings = [load_settings(args.config, encoder=e) for e in (args.encoder or [None])]
    for s in all_settings:  # every weights file found (or fetched) before any work
        spec = s.encoder.resolved()
        if spec.preset and not spec.checkpoint and not spec.random_weights:
            locate(get_preset(spec.preset), progress=not args.quiet)
    prompt_sets = [get_prompt_set(p) for p in args.prompts] if args.what == "zeroshot" else []
    rows, results = [], []
    for s in all_settings:
        spec = s.encoder.resolved()
        name = spec.preset or Path(spec.model).stem
        enc = SatelliteEncoder(s.encoder)
        ident = enc.identity.short()
        if args.what == "retrieval":
            res = retrieval(enc, Path(args.image_dir), Path(args.captions),
                            progress=not args.quiet)
            rows.append(row(name, ident, "", "recall@1 text->image", res.text_to_image[1],
                            res.chance(1), res.n_captions,
                            **{f"t2i@{k}": v for k, v in res.text_to_image.items() if k != 1},
                            **{f"i2t@{k}": v for k, v in res.image_to_text.items()}))
            results.append((name, res))
            continue
        for pset in prompt_sets or [enc.prompts]:
            res = zero_shot(enc, Path(args.image_dir), args.limit_per_class,
                            progress=not args.quiet, prompts=pset,
                            gsd_m=args.gsd or s.tiling.target_gsd_m,
                            sensor=args.sensor or spec.prompt_sensor)
            rows.append(row(name, ident, pset.name, "accuracy", res.accuracy, res.chance,
                            int(res.confusion.sum())))
            results.append((name if len(prompt_sets) < 2 else f"{name}-{pset.name}", res))
        del enc
    return Comparison(args.what, str(args.image_dir), rows), results


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
          f"{len(res.classes)} classes (chance {res.chance:.3f}); encoder {encoder}; "
          f"prompts {res.prompt_set}")


def train_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="satfind-train",
        description="Train a satellite encoder with GRAFT: align it to a frozen CLIP through "
                    "geotagged ground photos ([train] section of the config).")
    p.add_argument("--config", required=True,
                   help="TOML with [encoder] (the teacher CLIP), [train], [tiling], [discovery]")
    add_encoder_option(p)
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
        settings, train = load_train_config(args.config, encoder=args.encoder)
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
