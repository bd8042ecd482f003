"""GRAFT training: a student image tower, initialised from the teacher CLIP's, learns to put
each satellite patch (and each patch token under a photo) next to the frozen teacher
embeddings of the ground photos taken inside it.

Run layout (`train.out`): pairs.parquet + patches.npy (the data), teacher-cache/,
checkpoints/step-NNNNNNN.pt (resumable state), metrics.jsonl (one line per step, plus
validation lines), and the export: satfind-graft.pt (a full open_clip state dict, so
`SatelliteEncoder` loads it as a checkpoint), satfind-graft.json (the teacher's identity and
text-tower hash) and index_config.toml (an [encoder] section that points at it).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from encoder.checkpoints import sidecar_path, state_dict_sha256, text_tower_sha256
from encoder.model import SatelliteEncoder
from encoder.tokens import image_tokens, token_grid
from indexer.critical import stop_between_steps
from training.batches import make_batch, micro_batch_indices
from training.losses import image_level_loss, pixel_level_loss
from training.optim import lr_factor, param_groups
from training.pairs import build_pairs, raster_catalogue
from training.photos import load_photos
from training.settings import TrainSettings
from training.teacher import TeacherCache
from training.validation import retrieval_recall_at_1

EXPORT_NAME = "satfind-graft.pt"
EXPORT_FORMAT = "satfind-graft-v1"
# Settings that may change between a run and its --resume (they change no result).
RESUMABLE_CHANGES = {"checkpoint_every", "keep_checkpoints", "teacher_batch_size", "workers"}


class TrainError(ValueError):
    """The run cannot start or continue (one-line message)."""


class TrainInterrupted(Exception):
    def __init__(self, step: int, checkpoint: Path | None):
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint = step, checkpoint


@dataclass
class TrainReport:
    steps: int
    resumed_from: int
    pairs: dict
    teacher_cached: int
    teacher_computed: int
    val_recall_before: float
    val_recall_after: float
    val_chance: float
    export: Path
    seconds: float


# -- batches -------------------------------------------------------------------------------


# -- model pieces --------------------------------------------------------------------------


# -- the run -------------------------------------------------------------------------------

class Trainer:
    def __init__(self, settings, train: TrainSettings, progress: bool = True):
        self.settings, self.train, self.progress = settings, train, progress
        self.out = Path(train.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.metrics_path = self.out / "metrics.jsonl"

    def _log(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """On resume, drop log lines of steps after the checkpoint (they will be redone)."""
        if not self.metrics_path.exists():
            return
        keep = []
        for ln in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(ln)["step"] <= step:
                    keep.append(ln)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, self.metrics_path)

    def checkpoints(self) -> list[Path]:
        return sorted(self.ckpt_dir.glob("step-*.pt"))

    def _config_fingerprint(self) -> dict:
        d = dataclasses.asdict(self.train)
        for k in RESUMABLE_CHANGES:
            d.pop(k)
        d["teacher"] = self.teacher.identity.to_dict()
        if self.teacher.precision != "fp32":  # its photo vectors differ (slightly) by type
            d["teacher_precision"] = self.teacher.precision
        d["tiling"] = self.settings.tiling.key()
        return json.loads(json.dumps(d, default=str))

    def run(self, resume: bool = False) -> TrainReport:
        t0 = time.perf_counter()
        tr = self.train
        self.out.mkdir(parents=True, exist_ok=True)
        existing = self.checkpoints()
        if existing and not resume:
            raise TrainError(f"{self.out} already holds a run (checkpoint {existing[-1].name}): "
                             "pass --resume to continue it, or set another train.out")
        if resume and not existing:
            raise TrainError(f"--resume: no checkpoint in {self.ckpt_dir}")

        # Built in float32: the student starts from the float32 image tower and the export
        # keeps the float32 text tower; then the frozen teacher runs in encoder.precision
        # (bf16 weights on CUDA by default) for the photo embeddings.
        spec = self.settings.encoder
        self.teacher = teacher = SatelliteEncoder(dataclasses.replace(spec, precision="fp32"))
        initial = copy.deepcopy(teacher.model.visual)
        self._text_tower = {k: v for k, v in teacher.model.state_dict().items()
                            if not k.startswith("visual.")}
        self._text_sha = text_tower_sha256(teacher.model)
        teacher.set_precision(spec.precision)
        skipped: list[str] = []
        photos = load_photos(tr.photos, skipped)
        if skipped:
            print(f"satfind-train: {len(skipped)} photos left out (no usable position), e.g. "
                  f"{skipped[0]}")
        rasters, notes = raster_catalogue(list(tr.rasters), self.settings)
        for n in notes:
            print(f"satfind-train: skipped: {n}")
        pairs = build_pairs(photos, rasters, self.settings, tr, teacher.image_size,
                            self.out, self.progress, workers=tr.workers)
        cache = TeacherCache(tr.teacher_cache or self.out / "teacher-cache", teacher)
        used = sorted({j for s in pairs.samples for j in s.photos})  # photos with a patch
        ground_np = np.zeros((len(photos), teacher.dim), dtype=np.float32)
        ground_np[used] = cache.embed([photos[j].path for j in used], tr.teacher_batch_size,
                                      self.progress)
        device = teacher.device
        ground = torch.from_numpy(ground_np).to(device)  # constants: no grad, ever

        teacher.model.requires_grad_(False)
        student = initial.to(device)
        student.requires_grad_(True)
        student.train()
        grid = token_grid(student, teacher.image_size)
        logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / tr.temperature),
                                                      device=device),
                                         requires_grad=tr.learn_temperature)
        groups = param_groups(student, tr.weight_decay)
        if tr.learn_temperature:
            groups.append({"params": [logit_scale], "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups, lr=tr.lr, betas=(0.9, 0.98), eps=1e-6)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, tr.warmup_steps, tr.steps))
        use_amp = tr.amp and device.type == "cuda"
        amp_dtype = (torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported()
                     else torch.float16)
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

        step = 0
        if resume:
            state = torch.load(existing[-1], map_location=device, weights_only=False)
            fp = self._config_fingerprint()
            changed = sorted(k for k in set(fp) | set(state["config"])
                             if fp.get(k) != state["config"].get(k))
            if changed:
                hint = ""
                if ("tiling" in changed and "warp=" in fp["tiling"]
                        and "warp=" not in str(state["config"].get("tiling"))):
                    hint = (": its patches went through GDAL's warp, [tiling] warp = "
                            "\"gdal\" resumes it")
                raise TrainError(f"--resume: the config changed since {existing[-1].name} "
                                 f"({', '.join(changed)}{hint}); use another train.out")
            student.load_state_dict(state["student"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            with torch.no_grad():
                logit_scale.copy_(state["logit_scale"])
            step = state["step"]
            self._truncate_metrics(step)
        resumed_from = step

        val_index = pairs.val_index
        if step == 0:
            before, chance = retrieval_recall_at_1(student, teacher, pairs, ground, val_index)
            self._log({"step": 0, "val_recall_at_1": before, "val_chance": chance})
        else:
            before, chance = self._logged_val(0)

        def save(at: int) -> Path:
            return self._save_checkpoint(at, student, opt, sched, scaler, logit_scale)

        from tqdm import tqdm

        bar = tqdm(total=tr.steps, initial=step, disable=not self.progress, unit="step",
                   desc="GRAFT")
        try:
            with stop_between_steps() as stop:
                while step < tr.steps and not stop.requested:
                    metrics = self._step(step, pairs, grid, student, ground, logit_scale, opt,
                                         sched, scaler, use_amp, amp_dtype, teacher)
                    step += 1
                    self._log({"step": step, **metrics})
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['acc']:.2f}")
                    if step % tr.checkpoint_every == 0 or step == tr.steps:
                        save(step)
                        rec, ch = retrieval_recall_at_1(student, teacher, pairs, ground,
                                                        val_index)
                        self._log({"step": step, "val_recall_at_1": rec, "val_chance": ch})
                if stop.requested and step < tr.steps:
                    # Between steps: the state is consistent, save exactly this step.
                    bar.close()
                    raise TrainInterrupted(step, save(step) if step > resumed_from else
                                           (existing[-1] if resume else None))
        except KeyboardInterrupt:
            # A second Ctrl-C, mid-step: this step's state may be half-updated, so nothing
            # is saved; the last checkpoint stands.
            bar.close()
            raise TrainInterrupted(step, (self.checkpoints() or [None])[-1]) from None
        bar.close()
        after, chance = self._logged_val(step)
        export = self._export(student, logit_scale, step, pairs, before, after, chance)
        return TrainReport(step, resumed_from, pairs.counts, cache.hits, cache.computed,
                           before, after, chance, export, time.perf_counter() - t0)

    def _logged_val(self, step: int) -> tuple[float, float]:
        for ln in self.metrics_path.read_text().splitlines():
            try:
                rec = json.loads(ln)
            except ValueError:
                continue
            if rec["step"] == step and "val_recall_at_1" in rec:
                return rec["val_recall_at_1"], rec["val_chance"]
        return float("nan"), float("nan")

    def _step(self, step, pairs, grid, student, ground, logit_scale, opt, sched, scaler,
              use_amp, amp_dtype, teacher) -> dict:
        tr = self.train
        rng = np.random.default_rng([tr.seed, step, 7]) if tr.augment else None
        totals = {"loss": 0.0, "image_loss": 0.0, "pixel_loss": 0.0, "acc": 0.0}
        for a in range(tr.grad_accum):
            idx = micro_batch_indices(pairs.train_index, tr.batch_size, tr.seed,
                                      step * tr.grad_accum + a)
            batch = make_batch(pairs, idx, grid, rng)
            x = teacher.prepare(batch.images)
            g = ground[torch.from_numpy(batch.photos).to(ground.device)]
            positives = torch.from_numpy(batch.positives).to(x.device)
            temperature = 1.0 / logit_scale.exp().clamp(max=100.0)
            with torch.autocast(x.device.type, dtype=amp_dtype, enabled=use_amp):
                if tr.pixel_loss_weight > 0:
                    pooled, tokens = image_tokens(student, x)
                else:
                    pooled, tokens = student(x), None
            pooled = pooled.float()
            img = image_level_loss(pooled, g, positives, temperature)
            if tokens is None:
                pix = torch.zeros((), device=x.device)
            else:
                pix = pixel_level_loss(tokens.float(), g,
                                       torch.from_numpy(batch.pixel_pairs).to(x.device),
                                       temperature)
            loss = tr.image_loss_weight * img + tr.pixel_loss_weight * pix
            scaler.scale(loss / tr.grad_accum).backward()
            with torch.no_grad():
                top = (F.normalize(pooled, dim=-1) @ F.normalize(g, dim=-1).T).argmax(dim=1)
                acc = positives[torch.arange(len(top), device=top.device), top].float().mean()
            for k, v in (("loss", loss), ("image_loss", img), ("pixel_loss", pix),
                         ("acc", acc)):
                totals[k] += float(v.detach()) / tr.grad_accum
        if tr.max_grad_norm > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(student.parameters(), tr.max_grad_norm)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        totals["lr"] = sched.get_last_lr()[0]
        sched.step()
        totals["temperature"] = float(1.0 / logit_scale.exp().clamp(max=100.0))
        return totals

    def _save_checkpoint(self, step, student, opt, sched, scaler, logit_scale) -> Path:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = self.ckpt_dir / f"step-{step:07d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save({"step": step, "student": student.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                    "logit_scale": logit_scale.detach(), "config": self._config_fingerprint()},
                   tmp)
        _fsync_replace(tmp, path)
        for old in self.checkpoints()[:-self.train.keep_checkpoints]:
            old.unlink()
        return path

    def _export(self, student, logit_scale, step, pairs, before, after, chance) -> Path:
        """A full open_clip state dict: the teacher's text tower with the student's image
        tower, plus a sidecar naming the teacher (SatelliteEncoder checks it on load)."""
        teacher = self.teacher
        sd = {k: v.detach().cpu() for k, v in self._text_tower.items()}
        sd.update({f"visual.{k}": v.detach().cpu() for k, v in student.state_dict().items()})
        path = self.out / EXPORT_NAME
        tmp = path.with_suffix(".tmp")
        torch.save({"state_dict": sd}, tmp)
        _fsync_replace(tmp, path)
        spec = self.settings.encoder
        meta = {
            "format": EXPORT_FORMAT, "model": spec.model or teacher.model_name, "steps": step,
            "quick_gelu": teacher.quick_gelu,
            "teacher": teacher.identity.to_dict(),
            "text_tower_sha256": self._text_sha,
            "image_tower_sha256": state_dict_sha256(student),
            "temperature": float(1.0 / logit_scale.exp().clamp(max=100.0)),
            "val_recall_at_1": {"untrained": before, "trained": after, "chance": chance},
            "pairs": pairs.counts, "train": dataclasses.asdict(self.train),
            "target_gsd_m": self.settings.tiling.target_gsd_m,
        }
        sidecar_path(path).write_text(json.dumps(meta, indent=1, default=str))
        t = self.settings.tiling
        (self.out / "index_config.toml").write_text(
            "# Index with the GRAFT-trained encoder: satfind-index ARCHIVE --config this file\n"
            "[encoder]\n"
            f"model = {json.dumps(spec.model or teacher.model_name)}\n"
            f"checkpoint = {json.dumps(EXPORT_NAME)}\n"
            f"device = {json.dumps(spec.device)}\n\n"
            "[tiling]  # the resolution and bands the encoder was trained on\n"
            f"target_gsd_m = {t.target_gsd_m}\n"
            f"bands = {list(t.bands)}\n"
            f"scaling = {json.dumps(t.scaling)}\n")
        return path


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
