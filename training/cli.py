"""The encoder layer's commands: `satfind-train` (GRAFT) and `satfind-eval` (measure)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tomllib
from pathlib import Path


def encoder_spec_from_config(path: str | None):
    """The [encoder] section of an index_config.toml as an EncoderSpec (the encoder layer
    reads it itself: it imports nothing above it)."""
    from encoder.identity import EncoderError, EncoderSpec

    if path is None:
        return EncoderSpec()
    p = Path(path)
    try:
        table = tomllib.loads(p.read_text()).get("encoder", {})
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise EncoderError(f"{p}: cannot read config ({e})") from None
    fields = {f.name: f.type for f in dataclasses.fields(EncoderSpec)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise EncoderError(f"{p}: encoder: unknown key {unknown[0]!r}")
    spec = EncoderSpec(**table)
    if spec.checkpoint and not Path(spec.checkpoint).is_absolute():
        spec = dataclasses.replace(spec, checkpoint=str((p.parent / spec.checkpoint).resolve()))
    return spec


def eval_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="satfind-eval", description="Evaluate a satellite encoder.")
    sub = p.add_subparsers(dest="what", required=True)
    z = sub.add_parser("zeroshot", help="zero-shot classification of a class-per-folder set")
    z.add_argument("image_dir")
    z.add_argument("--config", help="index_config.toml with the [encoder] to evaluate")
    z.add_argument("--out", default="eval-zeroshot", help="folder for JSON / CSV results")
    z.add_argument("--limit-per-class", type=int, default=0, help="0 = all images")
    z.add_argument("-q", "--quiet", action="store_true")
    r = sub.add_parser("retrieval", help="text <-> image recall@1/5/10 from a captions file")
    r.add_argument("image_dir")
    r.add_argument("--captions", required=True,
                   help="one 'filename<TAB>caption' per line (filename relative to IMAGE_DIR)")
    r.add_argument("--config", help="index_config.toml with the [encoder] to evaluate")
    r.add_argument("--out", default="eval-retrieval", help="folder for the JSON results")
    r.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)

    from encoder.identity import EncoderError
    from encoder.model import SatelliteEncoder
    from training.evaluate import EvalError, retrieval, zero_shot

    try:
        enc = SatelliteEncoder(encoder_spec_from_config(args.config))
        if args.what == "retrieval":
            res = retrieval(enc, Path(args.image_dir), Path(args.captions),
                            progress=not args.quiet)
        else:
            res = zero_shot(enc, Path(args.image_dir), args.limit_per_class,
                            progress=not args.quiet)
    except (EncoderError, EvalError) as e:
        print(f"satfind-eval: error: {e}", file=sys.stderr)
        return 2
    res.write(Path(args.out))
    if args.what == "retrieval":
        for k in res.text_to_image:
            print(f"recall@{k:<3} text->image {res.text_to_image[k]:.3f}  image->text "
                  f"{res.image_to_text[k]:.3f}  (text->image chance {res.chance(k):.3f})")
        print(f"retrieval over {res.n_images} images, {res.n_captions} captions; encoder "
              f"{enc.identity.short()}; results in {args.out}/")
        return 0
    for c, acc in res.per_class().items():
        print(f"{c:<24} {acc:6.3f}")
    print(f"zero-shot accuracy {res.accuracy:.3f} over {int(res.confusion.sum())} images, "
          f"{len(res.classes)} classes (chance {res.chance:.3f}); encoder "
          f"{enc.identity.short()}; results in {args.out}/")
    return 0


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
