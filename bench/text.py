"""Text tower speed for CPU serving: the cost of one text query (a prompt ensemble), measured
side by side in one run on the same random-weight model:

- torch, one forward per template (what a naive ensemble does),
- torch, the ensemble in one batched forward (what satfind does),
- torch with dynamic int8 quantisation of the Linear layers,
- ONNX Runtime on the exported text tower (fp32), when onnxruntime is installed,

and the agreement of each with the torch fp32 output (cosine of the ensembled, normalised
query vectors; satfind's bar for a faster path is >= 0.999).

    python bench/text.py                       # ViT-B-16 text tower, 6 templates
    python bench/text.py --model satfind-tiny --queries 50
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from encoder.identity import EncoderSpec  # noqa: E402
from encoder.model import SatelliteEncoder  # noqa: E402
from encoder.prompts import TEMPLATES, prompts_for  # noqa: E402

QUERIES = ["solar farm next to a river", "a quarry", "dense residential area", "a harbour",
           "an airport runway", "center pivot irrigation", "a forest clearing", "a highway "
           "interchange", "a golf course", "wind turbines"]


class TextTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens):
        return self.model.encode_text(tokens)


def _ensemble(feats: np.ndarray) -> np.ndarray:
    feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    v = feats.mean(axis=0)
    return v / np.linalg.norm(v)


def _time(fn, queries, repeat: int) -> tuple[float, list[np.ndarray]]:
    out = [fn(q) for q in queries[:2]]  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = [fn(q) for q in queries]
    return (time.perf_counter() - t0) / (repeat * len(queries)) * 1000, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch/ORT threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    enc = SatelliteEncoder(EncoderSpec(model=args.model, random_weights=True, device="cpu"))
    tower = TextTower(enc.model).eval()
    queries = (QUERIES * (args.queries // len(QUERIES) + 1))[:args.queries]
    tok = {q: enc.tokenizer(prompts_for(q, TEMPLATES)) for q in queries}

    @torch.inference_mode()
    def torch_batched(q, m=tower):
        return _ensemble(m(tok[q]).float().numpy())

    @torch.inference_mode()
    def torch_single(q):
        return _ensemble(np.concatenate([tower(t[None]).numpy() for t in tok[q]]))

    rows = []
    base_ms, base = _time(torch_batched, queries, args.repeat)
    rows.append(("torch fp32, ensemble batched (satfind)", base_ms, base))
    rows.append(("torch fp32, one forward per template", *_time(torch_single, queries,
                                                               args.repeat)))
    quant = torch.ao.quantization.quantize_dynamic(TextTower(enc.model), {torch.nn.Linear},
                                                   dtype=torch.qint8).eval()
    # open_clip reads the first MLP weight's dtype, which a quantised Linear has as a method
    quant.model.transformer.get_cast_dtype = lambda: torch.float32
    rows.append(("torch dynamic int8 (Linear)",
                 *_time(lambda q: torch_batched(q, quant), queries, args.repeat)))
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "text.onnx")
            sample = tok[queries[0]]
            torch.onnx.export(tower, (sample,), path, input_names=["tokens"],
                              output_names=["features"], dynamic_axes={"tokens": {0: "n"}},
                              opset_version=18, dynamo=False)
            opts = ort.SessionOptions()
            if args.threads:
                opts.intra_op_num_threads = args.threads
            sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            rows.append(("ONNX Runtime fp32", *_time(
                lambda q: _ensemble(sess.run(None, {"tokens": tok[q].numpy()})[0]), queries,
                args.repeat)))
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; {args.model} text tower, "
          f"{len(TEMPLATES)} templates per query, {len(queries)} queries x {args.repeat}")
    print(f"{'path':<42} {'ms/query':>9} {'vs satfind':>10} {'min cos':>8}")
    for name, ms, out in rows:
        cos = min(float(a @ b) for a, b in zip(out, base, strict=True))
        print(f"{name:<42} {ms:9.1f} {base_ms / ms:9.2f}x {cos:8.5f}")


if __name__ == "__main__":
    main()
