"""What a weights file is, told from its bytes before anything unpickles it: a PyTorch
state dict (zip or legacy pickle), safetensors, or one of the files people download by
mistake (a TorchScript archive, an HTML error page, a truncated download), each of those
refused in one line. And a strict-load failure said in one line."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from encoder.identity import EncoderError

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOLS = {b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"}


def check_weights_file(path: str | Path) -> str:
    """The file's format ("torch-zip", "torch-pickle", "safetensors"); EncoderError naming
    the file and what it is instead."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise EncoderError(f"{p}: cannot read ({e.strerror})") from None
    if size == 0:
        raise EncoderError(f"{p}: empty file (an interrupted download?)")
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        raise EncoderError(f"{p}: an HTML/XML page, not weights (an error or login page saved "
                           "in place of the file? download it again)")
    if head.startswith(ZIP_MAGIC):
        return _check_zip(p)
    if head[:2] in PICKLE_PROTOCOLS:
        return "torch-pickle"
    if p.suffix == ".safetensors" or (size > 8 and head[8:10] == b'{"'):
        return "safetensors"
    raise EncoderError(f"{p}: not a PyTorch or safetensors weights file (it starts with "
                       f"{head[:8]!r})")


def _check_zip(p: Path) -> str:
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        raise EncoderError(f"{p}: truncated or damaged (not a complete zip archive: download "
                           "it again)") from None
    if any(n.endswith(("/constants.pkl", "/code/__torch__.py")) or "/code/" in n
           for n in names):
        raise EncoderError(f"{p}: a TorchScript archive (torch.jit.save), not a state dict: "
                           "save it with torch.save(model.state_dict(), ...)")
    if not any(n.endswith("/data.pkl") for n in names):
        raise EncoderError(f"{p}: a zip archive but not a PyTorch file (no data.pkl in it)")
    return "torch-zip"


_MISSING = re.compile(r"Missing key\(s\) in state_dict: (.*?)(?:\.\s*\n|\.\s*Unexpected|$)", re.S)
_UNEXPECTED = re.compile(r"Unexpected key\(s\) in state_dict: (.*?)(?:\.\s*\n|$)", re.S)
_SHAPES = re.compile(r"size mismatch for ([^:]+): copying a param with shape (\S+ \S+) from "
                     r"checkpoint, the shape in current model is (\S+ \S+)")


def load_error(path: str | Path, model_name: str, error: BaseException) -> str:
    """One line for a weights file that does not fit `model_name` (PyTorch's strict-load
    message lists every key over many lines)."""
    msg = str(error)
    parts = []
    for label, rx in (("missing", _MISSING), ("unexpected", _UNEXPECTED)):
        m = rx.search(msg)
        if m:
            keys = [k.strip().strip('"') for k in m.group(1).split(",") if k.strip()]
            parts.append(f"{len(keys)} {label} key(s), e.g. {keys[0]}")
    shapes = _SHAPES.findall(msg)
    if shapes:
        name, got, want = shapes[0]
        parts.append(f"{len(shapes)} shape mismatch(es), e.g. {name} is {got.rstrip('.')} in "
                     f"the file, {want.rstrip('.')} in the model")
    if parts:
        return (f"{path}: not weights of {model_name} ({'; '.join(parts)}): another "
                "architecture, or a different checkpoint layout")
    first = msg.splitlines()[0] if msg.strip() else type(error).__name__
    if "Weights only load failed" in first:
        return (f"{path}: holds objects other than tensors, which satfind does not unpickle "
                "(save a plain state dict: torch.save(model.state_dict(), ...))")
    return f"{path}: cannot load weights for {model_name}: {first}"
