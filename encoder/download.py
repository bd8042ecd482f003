"""Where a preset's weights file is on this machine, downloading it on a connected one.

Looked for, in order: satfind's weights folder (`$SATFIND_WEIGHTS_DIR`, default
`~/.cache/satfind/weights`, a sub-folder per preset, where a person can also place a file by
hand: `<folder>/<preset>/<published file name>`), then the Hugging
Face cache (`huggingface_hub`, which honours `HF_HUB_OFFLINE`). A plain-URL file is
downloaded into the weights folder (a `.part` file renamed when complete and, when the
preset knows it, its SHA-256 checked). Offline or unreachable: one line naming the file and
where to put it.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from encoder.identity import EncoderError
from encoder.presets import Preset, Weights


def weights_dir() -> Path:
    env = os.environ.get("SATFIND_WEIGHTS_DIR", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "satfind" / "weights"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def local_path(preset: Preset) -> Path:
    """Where satfind looks for (and downloads) a preset's file: a folder per preset, since
    published file names are not unique (open_clip_pytorch_model.bin)."""
    assert preset.weights is not None
    return weights_dir() / preset.name / preset.weights.file_name


def place_hint(preset: Preset, w: Weights) -> str:
    return (f"download {w.address} and place it at {local_path(preset)} (or set "
            f"encoder.checkpoint to its path)")


def locate(preset: Preset, progress: bool = True) -> Path:
    """The local path of `preset`'s weights file; downloads it when allowed."""
    w = preset.weights
    if w is None:
        raise EncoderError(f"encoder preset {preset.name}: its authors publish no weights file "
                           "that satfind knows of; set encoder.checkpoint to a local "
                           f"checkpoint in its layout ({preset.layout})")
    local = local_path(preset)
    if local.is_file():
        return local
    if w.hf_repo:
        return _from_hub(preset, w)
    if offline():
        raise EncoderError(f"encoder preset {preset.name}: weights not on this machine and "
                           f"downloads are off (HF_HUB_OFFLINE=1): {place_hint(preset, w)}")
    return _download(preset, w, local, progress)


def _from_hub(preset: Preset, w: Weights) -> Path:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - a dependency of open_clip
        raise EncoderError("encoder: huggingface_hub is not installed") from None
    try:
        return Path(hf_hub_download(w.hf_repo, w.hf_file))
    except LocalEntryNotFoundError:
        why = ("downloads are off (HF_HUB_OFFLINE=1)" if offline()
               else "Hugging Face cannot be reached")
    except Exception as e:  # network, auth and 404 errors have many types
        why = f"the download failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    raise EncoderError(f"encoder preset {preset.name}: weights not on this machine and {why}: "
                       f"{place_hint(preset, w)}")


def _download(preset: Preset, w: Weights, dest: Path, progress: bool) -> Path:
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(w.url, timeout=60) as r, open(part, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, disable=not progress,
                      desc=f"downloading {w.file_name}") as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if total is not None and part.stat().st_size != total:
            raise OSError(f"got {part.stat().st_size} of {total} bytes")
    except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors
        part.unlink(missing_ok=True)
        raise EncoderError(f"encoder preset {preset.name}: the download failed ({e}): "
                           f"{place_hint(preset, w)}") from None
    if w.sha256 and digest.hexdigest() != w.sha256:
        part.unlink(missing_ok=True)
        raise EncoderError(f"encoder preset {preset.name}: {w.url} has SHA-256 "
                           f"{digest.hexdigest()[:16]}..., expected {w.sha256[:16]}... (not "
                           "the published file); nothing was kept")
    part.replace(dest)
    return dest
