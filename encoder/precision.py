"""The number type an encoder's weights run in on a device (`encoder.precision`).

On CUDA the towers run with bf16 weights (fp16 on GPUs without bf16), not float32 weights
under autocast: no per-layer casts, half the weight traffic (bench/encoder.py measures each
path side by side; BENCHMARKS.md). On the CPU float32 stays the default. The vectors of
every path agree with float32's within the guard tests/test_precision.py checks.
"""

from __future__ import annotations

import numpy as np
import torch

from encoder.identity import EncoderError, check_precision

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def weight_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of `precision` ("auto", "fp32", "bf16", "fp16") on `device`."""
    check_precision(precision)
    cuda = device.type == "cuda"
    native_bf16 = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    if precision == "auto":
        if not cuda:
            return torch.float32
        return torch.bfloat16 if native_bf16 else torch.float16
    if precision == "bf16" and cuda and not native_bf16:
        raise EncoderError("encoder.precision: this GPU has no bf16 arithmetic; use fp16 or "
                           "auto")
    return _DTYPES[precision]


def dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in _DTYPES.items() if v == dtype)


def agreement(ref: np.ndarray, fast: np.ndarray, k: int = 10) -> dict[str, float]:
    """How closely `fast` (e.g. bf16) vectors of the same items agree with `ref` (float32):
    mean and min cosine of each item's pair, and the share of each item's top-k neighbours
    (itself left out) that both indexes return for the float32 query, as when the index was
    built on a GPU and queries come from a float32 tower."""
    ref = np.asarray(ref, np.float32)
    fast = np.asarray(fast, np.float32)
    cos = (ref * fast).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(fast, axis=1))
    k = min(k, len(ref) - 1)

    def top(index: np.ndarray) -> np.ndarray:
        s = ref @ index.T
        np.fill_diagonal(s, -np.inf)
        return np.argpartition(-s, k - 1, axis=1)[:, :k]

    a, b = top(ref), top(fast)
    same = np.mean([len(np.intersect1d(x, y)) / k for x, y in zip(a, b, strict=True)])
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            f"top{k}": float(same)}
