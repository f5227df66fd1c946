"""Phase-2 online retraining (spec §2.3–2.4): the Segmenter on CAM seeds with the gradient-clipping loss.

SGD (Nesterov, momentum 0.9, wd 0), the encoder at ``encoder_lr_scale`` of the lr, poly decay per
iteration to ``min_lr`` without warm-up, the mmseg-style augmentation, batch ``batch_size`` over all
ranks. The clipping statistics stay per rank, as in the authors' code.

Every epoch ends with ``seg/state.safetensors`` (weights, SGD momentum, epoch) and, depending on
``select_checkpoint``, ``seg/model.safetensors``; seeding, resume and saving follow
:mod:`weaktr.engine.trainer`.

``gt_dir`` (pixel ground truth of the training images) only adds measurements: the precision of
the pseudo-label pixels the loss keeps against GT (the paper's Table XIII / Fig. 5), through
:class:`weaktr.data.seed_labels.SeedGTDataset`; it never influences training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from weaktr.config import GCConfig
from weaktr.data.images import load_image, load_label_map
from weaktr.data.seed_labels import SeedAndGTTransform, SeedGTDataset, check_label_maps
from weaktr.data.torch_datasets import SegmentationDataset
from weaktr.data.transforms import SegTrainTransform
from weaktr.engine.optim import build_sgd, poly_lr, set_lr
from weaktr.engine.selection import Score, SegSelection
from weaktr.engine.trainer import GRID_IMAGES, EpochTrainer, PhaseFiles, RunSettings
from weaktr.errors import InputError
from weaktr.evaluation.inference import InferenceSettings, predict_logits
from weaktr.evaluation.metrics import ConfusionMatrix
from weaktr.losses import IGNORE_INDEX, GCMode, GCStats, gradient_clipping_loss
from weaktr.models.segmenter import SegConfig, Segmenter, build_segmenter, param_groups, save_segmenter
from weaktr.runtime.context import RunContext
from weaktr.runtime.distributed import shard
from weaktr.runtime.logging import progress
from weaktr.runtime.tensorboard import grid, label_panel

log = logging.getLogger("weaktr")
GC_MODES: dict[str, GCMode] = {"code": "batch", "per_image": "per_image", "none": "naive"}


@dataclass(frozen=True)
class SegRunSettings(RunSettings):
    """Phase 2's ``start`` record: the poly schedule's length, the loss and the label folders."""

    iters_per_epoch: int
    total_iters: int
    gc: GCConfig
    seeds: str
    gt: str | None


def _datasets(
    ctx: RunContext, seg_cfg: SegConfig, label_dir: Path, gt_dir: Path | None
) -> tuple[Dataset, bool]:
    """The training set (with GT stacked under the seeds when ``gt_dir`` has any); returns it and the flag."""
    st, info = ctx.cfg.seg_train, ctx.dataset
    split = ctx.cfg.data.train_split
    ids = info.ids(split)
    checks = check_label_maps(info, ids, label_dir, seg_cfg.n_cls)
    for _ in progress(checks, desc="check seeds", total=len(ids)):
        pass
    mean, std = seg_cfg.normalisation
    kw: dict[str, Any] = dict(
        base_size=st.base_size,
        ratio_range=tuple(st.ratio_range),
        crop=st.crop,
        cat_max_ratio=st.cat_max_ratio,
        mean=mean,
        std=std,
    )
    base = SegmentationDataset(info, split, label_dir, SegTrainTransform(**kw))
    if gt_dir is None:
        return base, False
    return SeedGTDataset.checked(base, split, gt_dir, SeedAndGTTransform(**kw)), True


class _Meter:
    """Sums over a span of iterations: loss, gate, clipped pixels and (with GT) kept-pixel precision."""

    def __init__(self) -> None:
        self.n = 0
        self.loss = self.global_mean = 0.0
        self.clip_steps = self.valid = self.kept = 0
        self.kept_gt = self.kept_correct = self.seed_gt = self.seed_correct = 0.0

    def update(self, loss: float, stats: GCStats, target: torch.Tensor, gt: torch.Tensor | None) -> None:
        self.n += 1
        self.loss += loss
        self.global_mean += float(stats.global_mean)
        self.clip_steps += int(stats.clip_applied)
        self.valid += int(stats.valid.sum())
        self.kept += int(stats.keep.sum())
        if gt is not None:
            n_kept = int((stats.keep & (gt != IGNORE_INDEX)).sum())
            if n_kept:
                self.kept_gt += n_kept
                self.kept_correct += stats.kept_precision(target, gt) * n_kept
            seed_m = stats.valid & (gt != IGNORE_INDEX)
            self.seed_gt += int(seed_m.sum())
            self.seed_correct += int((target[seed_m] == gt[seed_m]).sum())

    def record(self, with_gt: bool) -> dict[str, float]:
        """Means over the span; the clipped fraction is over valid pixels, precisions over GT pixels."""
        n = max(self.n, 1)
        out = {
            "loss": self.loss / n,
            "global_mean": self.global_mean / n,
            "clip_active": self.clip_steps / n,  # share of iterations whose gate let clipping run
            "clipped_fraction": 1.0 - self.kept / self.valid if self.valid else 0.0,
        }
        if with_gt:
            nan = float("nan")
            out["kept_precision"] = self.kept_correct / self.kept_gt if self.kept_gt else nan
            out["seed_precision"] = self.seed_correct / self.seed_gt if self.seed_gt else nan
        return out


def _settings(ctx: RunContext) -> InferenceSettings:
    """The predict section's window settings (used at a single scale, without flips)."""
    return InferenceSettings.from_config(ctx.cfg.predict)


def _predict(ctx: RunContext, model: Segmenter, image: np.ndarray) -> torch.Tensor:
    """Single-scale sliding-window labels (H, W) of one image, as the per-epoch evaluation scores them."""
    return predict_logits(model, image, _settings(ctx), ctx.device).argmax(0)


def evaluate_segmenter(ctx: RunContext, model: Segmenter, split: str) -> dict[str, Any]:
    """Single-scale sliding-window scores on ``split`` (ids sharded over ranks, counts all-reduced), at
    the training precision with the prediction's fast path (the run's ``seg_eval`` policy)."""
    info = ctx.dataset
    cm = ConfusionMatrix(info.n_cls)
    ids = shard(info.ids(split), ctx.dist.rank, ctx.dist.world)
    model.prepare_inference(ctx.execution.seg_eval)
    for image_id in progress(ids, desc=f"eval {split}", enabled=ctx.dist.is_main):
        image = load_image(info.image_path(image_id))
        cm.update(_predict(ctx, model, image), load_label_map(info.mask_path(image_id), image.shape[:2]))
    cm.all_reduce()
    return cm.scores()


def _eval_split(ctx: RunContext, seg_cfg: SegConfig) -> str | None:
    """Validate the class count and the checkpoint choice; returns the evaluation split (None = none)."""
    st, info = ctx.cfg.seg_train, ctx.dataset
    info.check_model_classes(seg_cfg.n_cls, cam=False, key="seg_model.n_cls")
    split = st.eval_split or ctx.cfg.data.val_split
    if st.select_checkpoint == "gt_val" and (st.eval_every <= 0 or info.masks is None):
        raise InputError(
            "seg_train.select_checkpoint=gt_val needs seg_train.eval_every > 0 and a data set with "
            "ground-truth masks"
        )
    if st.eval_every <= 0:
        return None
    if info.masks is None:
        log.warning("train-seg: data set %r has no masks; the per-epoch evaluation is skipped", info.name)
        return None
    info.ids(split)  # fail now, not after the first epoch, if the split is missing
    return split


class SegTrainer(EpochTrainer[Segmenter]):
    """SGD with per-iteration poly lr on the gradient-clipping loss; keeps the last or the best-val epoch."""

    name, section = "train-seg", "seg_train"

    def __init__(self, ctx: RunContext, seg_cfg: SegConfig, label_dir: Path, gt_dir: Path | None) -> None:
        st, lay = ctx.cfg.seg_train, ctx.layout
        self.eval_split = _eval_split(ctx, seg_cfg)
        selection = SegSelection(st.select_checkpoint, self.eval_split)
        super().__init__(
            ctx, PhaseFiles(lay.seg_model, lay.seg_state, lay.seg_log, lay.seg_selection), selection
        )
        self.st, self.label_dir = st, label_dir
        self.dataset, self.with_gt = _datasets(ctx, seg_cfg, label_dir, gt_dir)
        self.iters = len(self.loader(0))
        # What a resumed run must share with the saved one (the poly schedule spans all epochs).
        self.check_setup(
            {
                "epochs": st.epochs,
                "iters_per_epoch": self.iters,
                "batch_size": st.batch_size,
                "world": ctx.dist.world,
            }
        )
        self.seed_epoch(0)
        pretrained = None if self.files.state.is_file() else st.pretrained
        self.model = build_segmenter(seg_cfg, pretrained, f"{self.section}.pretrained").to(ctx.device)
        self.optimizer = build_sgd(
            param_groups(self.model, st.lr, st.encoder_lr_scale),
            st.lr,
            st.momentum,
            st.nesterov,
            st.weight_decay,
        )
        self.gc_mode = GC_MODES[st.gc.mode]
        self.policy = ctx.execution.seg_train

    def train_epoch(self, epoch: int, loader: DataLoader, ddp: torch.nn.Module) -> dict[str, Any]:
        """One pass with the per-iteration poly lr; logs every ``log_every`` iterations, returns the means."""
        st, device, with_gt = self.st, self.ctx.device, self.with_gt
        total = len(loader) * st.epochs
        ddp.train()
        epoch_meter, span = _Meter(), _Meter()
        bar = progress(loader, desc=f"train-seg {epoch + 1}/{st.epochs}", enabled=self.ctx.dist.is_main)
        for it, (images, masks) in enumerate(bar):
            step = epoch * len(loader) + it
            lr = poly_lr(step, total, st.lr, st.min_lr, st.power)
            set_lr(self.optimizer, lr)
            images = images.to(device, non_blocking=True)
            masks = masks.to(device, non_blocking=True)
            target, gt = (masks[:, 0], masks[:, 1]) if with_gt else (masks, None)
            with self.policy.autocast(self.policy.backbone_dtype):
                logits = ddp(images)
            loss, stats = gradient_clipping_loss(logits.float(), target, st.gc.tau, st.gc.cell, self.gc_mode)
            value = float(loss.detach())
            self.check_losses([value], epoch, it + 1)  # before the step: a NaN must not reach the weights
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            for meter in (epoch_meter, span):
                meter.update(value, stats, target, gt)
            live = epoch_meter.record(False)
            bar.set_postfix(
                loss=f"{live['loss']:.4f}", clipped=f"{100 * live['clipped_fraction']:.1f}%", refresh=False
            )
            if (it + 1) % st.log_every == 0 or it + 1 == len(loader):
                self.log_iter(
                    {"epoch": epoch + 1, "iter": step + 1, "lr": lr, **span.record(with_gt)}, step + 1
                )
                span = _Meter()
        return epoch_meter.record(with_gt)

    def evaluate(self, epoch: int, record: dict[str, Any]) -> Score | None:
        """The val mIoU every ``eval_every`` epochs and at the last (when there is an evaluation split)."""
        st = self.st
        if self.eval_split is None or ((epoch + 1) % st.eval_every and epoch + 1 != st.epochs):
            return None
        record["val_miou"] = evaluate_segmenter(self.ctx, self.model, self.eval_split)["miou"]
        return Score(epoch + 1, record["val_miou"])

    def save_model(self, path: Path) -> None:
        save_segmenter(path, self.model)

    def summary(self, record: dict[str, Any]) -> str:
        val = f", val mIoU {100 * record['val_miou']:.2f}" if "val_miou" in record else ""
        return f"loss {record['loss']:.4f}, clipped {100 * record['clipped_fraction']:.1f}%{val}"

    def images(self, epoch: int, record: dict[str, Any]) -> dict[str, np.ndarray]:
        """At evaluations: fixed train images with seed and prediction, val images with GT and prediction."""
        if self.eval_split is None or "val_miou" not in record:
            return {}
        info, grids = self.ctx.dataset, {}
        for tag, split, labels in (
            ("seeds", self.ctx.cfg.data.train_split, lambda i: self.label_dir / f"{i}.png"),
            ("val", self.eval_split, info.mask_path),
        ):
            rows = []
            for image_id in info.ids(split)[:GRID_IMAGES]:
                image = load_image(info.image_path(image_id))
                shown = load_label_map(labels(image_id), image.shape[:2])
                predicted = _predict(self.ctx, self.model, image).cpu().numpy().astype(np.uint8)
                rows.append([image, label_panel(shown), label_panel(predicted)])
            grids[tag] = grid(rows)
        return grids


def train_seg(ctx: RunContext, label_dir: Path, gt_dir: Path | None = None) -> Path:
    """Train (or resume training) the segmenter on the label PNGs in ``label_dir``; returns its checkpoint.

    ``gt_dir`` holds ground truth for the training images (e.g. the data set's masks); it is used only
    to log the precision of the pixels the gradient-clipping loss keeps.
    """
    st = ctx.cfg.seg_train
    seg_cfg = SegConfig.from_dict(ctx.cfg.seg_model)
    trainer = SegTrainer(ctx, seg_cfg, Path(label_dir), None if gt_dir is None else Path(gt_dir))
    if trainer.resume():
        return trainer.files.model
    settings = SegRunSettings(
        epochs=st.epochs,
        batch_size=st.batch_size,
        world=ctx.dist.world,
        lr=st.lr,
        iters_per_epoch=trainer.iters,
        total_iters=trainer.iters * st.epochs,
        gc=st.gc,
        seeds=str(label_dir),
        gt=None if gt_dir is None else str(gt_dir),
    )
    return trainer.fit(settings)
