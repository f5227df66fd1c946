"""Phase-1 training of the CAM network (spec §1.5), resumable epoch by epoch and DDP-ready.

Every epoch ends with ``cam/state.safetensors`` (weights, AdamW state, epoch) and the checkpoint
``cam/model.safetensors``; seeding, resume and saving follow :mod:`weaktr.engine.trainer`.

Checkpoint selection: ``last`` keeps the last epoch and uses no pixel GT; ``gt_miou`` is the
authors' practice, keeping the epoch whose scale-1.0+flip CAMs score best on ``data.cam_eval_split``
over the ``seeds.sweep`` thresholds. The choice is written to ``cam/selection.json`` and the log.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from weaktr.cam.generate import multiscale_cam
from weaktr.data.images import load_image
from weaktr.data.torch_datasets import ClassificationDataset
from weaktr.data.transforms import cam_train_transform
from weaktr.engine.optim import build_adamw, cosine_lr, scaled_lr, set_lr
from weaktr.engine.selection import CamSelection, Score
from weaktr.engine.trainer import GRID_IMAGES, EpochTrainer, PhaseFiles, RunSettings
from weaktr.evaluation.metrics import sweep_thresholds
from weaktr.models.cam import (
    CAMConfig,
    CAMNet,
    CAMOutput,
    build_cam_model,
    cam_loss,
    param_groups,
    save_cam_model,
)
from weaktr.models.execution import ExecutionPolicy
from weaktr.runtime.context import RunContext
from weaktr.runtime.distributed import all_reduce_sum, barrier, broadcast_value
from weaktr.runtime.logging import progress
from weaktr.runtime.tensorboard import grid, heat_panel
from weaktr.stages.gen_cam import cam_items, resolve_kind, write_split_cams
from weaktr.stages.scoring import gt_dir, sweep_range

log = logging.getLogger("weaktr")
LOSS_KEYS = ("cls", "coarse", "fine", "total")


def _dataset(ctx: RunContext, model_cfg: CAMConfig) -> ClassificationDataset:
    tc = ctx.cfg.cam_train
    mean, std = model_cfg.normalisation
    transform = cam_train_transform(
        tc.img_size, mean, std, tuple(tc.crop_scale), auto_augment=tc.randaug, re_prob=tc.reprob
    )
    return ClassificationDataset(ctx.dataset, ctx.cfg.data.train_split, transform)


def _float_logits(out: CAMOutput) -> CAMOutput:
    """The three logits in float32, so the losses are computed outside bf16 autocast."""
    return dataclasses.replace(
        out,
        cls_logits=out.cls_logits.float(),
        coarse_logits=out.coarse_logits.float(),
        fine_logits=out.fine_logits.float(),
    )


def train_step(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    policy: ExecutionPolicy,
) -> dict[str, torch.Tensor]:
    """One AdamW step (forward in the training ``policy``'s dtype, losses in float32); returns the
    detached losses. Public so that benchmarks time exactly the training code path.
    """
    with policy.autocast(policy.backbone_dtype):
        out = model(images)
    losses = cam_loss(_float_logits(out), targets)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    optimizer.step()
    return {k: v.detach() for k, v in losses.items()}


@dataclasses.dataclass(frozen=True)
class CamRunSettings(RunSettings):
    """Phase 1's ``start`` record: ``lr`` is scaled to the batch size."""

    select_checkpoint: str


def _score_epoch(ctx: RunContext, model: CAMNet) -> tuple[float, float]:
    """(mIoU, threshold) of scale-1.0+flip CAMs on data.cam_eval_split: scored on rank 0, sent to all."""
    split = ctx.cfg.data.cam_eval_split_or_train
    work = ctx.layout.cam_select_work
    if ctx.dist.is_main:
        shutil.rmtree(work, ignore_errors=True)
    barrier()
    write_split_cams(ctx, model, split, work, [1.0], progress=False)
    miou = threshold = float("nan")
    if ctx.dist.is_main:
        ids = ctx.dataset.ids(split)
        threshold, results = sweep_thresholds(
            work, gt_dir(ctx.dataset), ids, sweep_range(ctx.cfg.seeds.sweep), ctx.dataset.n_cls
        )
        miou = results[threshold]
        shutil.rmtree(work, ignore_errors=True)
    return broadcast_value((miou, threshold))  # every rank's selection keeps the same epoch


class CamTrainer(EpochTrainer[CAMNet]):
    """AdamW with per-epoch cosine lr on the three CAM losses; keeps the last or the best-GT epoch."""

    name, section = "train-cam", "cam_train"
    drop_last = True
    # The backbone's final norm is loaded but never applied (golden O1): DDP must allow unused params.
    find_unused_parameters = True

    def __init__(self, ctx: RunContext, model_cfg: CAMConfig) -> None:
        tc, lay = ctx.cfg.cam_train, ctx.layout
        split = ctx.cfg.data.cam_eval_split_or_train
        selection = CamSelection(tc.select_checkpoint, split)
        super().__init__(
            ctx, PhaseFiles(lay.cam_model, lay.cam_state, lay.cam_log, lay.cam_selection), selection
        )
        self.tc = tc
        # What a resumed run must share with the saved one (epochs may grow: a killed run is rerun).
        self.check_setup(
            {
                "model": model_cfg.to_dict(),
                "batch_size": tc.batch_size,
                "lr": tc.lr,
                "weight_decay": tc.weight_decay,
                "world": ctx.dist.world,
                # only when set, so states saved before the option existed still resume
                **({"backbone_lr_scale": tc.backbone_lr_scale} if tc.backbone_lr_scale != 1.0 else {}),
            }
        )
        self.seed_epoch(0)
        self.model = build_cam_model(model_cfg, tc.pretrained, f"{self.section}.pretrained").to(ctx.device)
        self.lr0 = scaled_lr(tc.lr, tc.batch_size)
        self.optimizer = build_adamw(
            param_groups(self.model, tc.backbone_lr_scale), self.lr0, tc.weight_decay
        )
        self.dataset = _dataset(ctx, model_cfg)

    def train_epoch(self, epoch: int, loader: DataLoader, ddp: torch.nn.Module) -> dict[str, Any]:
        """One pass at this epoch's lr; returns the lr, the iteration count and the rank-averaged losses.

        The losses stay on the device between log lines, where divergence is checked.
        """
        tc, device = self.tc, self.ctx.device
        lr = cosine_lr(epoch, tc.epochs, self.lr0, tc.warmup_epochs, tc.warmup_lr, tc.min_lr)
        set_lr(self.optimizer, lr)
        ddp.train()
        totals = torch.zeros(len(LOSS_KEYS), device=device)
        window = torch.zeros(len(LOSS_KEYS), device=device)
        recent: list[torch.Tensor] = []  # the window's total losses, each checked for divergence
        bar = progress(loader, desc=f"train-cam {epoch + 1}/{tc.epochs}", enabled=self.ctx.dist.is_main)
        for it, (images, targets) in enumerate(bar):
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            losses = train_step(ddp, images, targets, self.optimizer, self.ctx.execution.cam_train)
            step_losses = torch.stack([losses[k] for k in LOSS_KEYS])
            totals += step_losses
            window += step_losses
            recent.append(losses["total"])
            if (it + 1) % tc.log_every == 0 or it + 1 == len(loader):
                self.check_losses(torch.stack(recent).tolist(), epoch, it + 2 - len(recent))
                means = dict(zip(LOSS_KEYS, (window / len(recent)).tolist(), strict=True))
                step = epoch * len(loader) + it + 1
                self.log_iter({"epoch": epoch + 1, "iter": it + 1, "step": step, "lr": lr, **means}, step)
                bar.set_postfix(loss=f"{means['total']:.4f}", lr=f"{lr:.2e}")
                window.zero_()
                recent.clear()
        all_reduce_sum(totals)
        means = dict(zip(LOSS_KEYS, (totals / (len(loader) * self.ctx.dist.world)).tolist(), strict=True))
        return {"lr": lr, "iters": len(loader), **means}

    def evaluate(self, epoch: int, record: dict[str, Any]) -> Score | None:
        """``gt_miou`` scores every epoch's CAMs; ``last`` needs no score."""
        if self.tc.select_checkpoint == "last":
            return None
        miou, threshold = _score_epoch(self.ctx, self.model)
        return Score(epoch + 1, miou, threshold)

    def save_model(self, path: Path) -> None:
        save_cam_model(path, self.model)

    def summary(self, record: dict[str, Any]) -> str:
        r = record
        return (
            f"loss {r['total']:.4f} (cls {r['cls']:.4f}, coarse {r['coarse']:.4f}, fine {r['fine']:.4f}), "
            f"lr {r['lr']:.2e}"
        )

    def images(self, epoch: int, record: dict[str, Any]) -> dict[str, np.ndarray]:
        """Each fixed train image beside the scale-1.0+flip CAMs of its first three classes, made as
        the run's CAM generation makes them."""
        ctx, model = self.ctx, self.model.prepare_inference(self.ctx.execution.cam_gen)
        mean, std = model.config.normalisation
        kind = resolve_kind(ctx, "default")
        rows = []
        for _, path, labels in cam_items(ctx.dataset, ctx.cfg.data.train_split)[:GRID_IMAGES]:
            image = load_image(path)
            cams, _ = multiscale_cam(model, image, labels, [1.0], mean, std, ctx.device, kind=kind)
            rows.append([image, *(heat_panel(c.numpy()) for c in cams[:3])])
        return {"cams": grid(rows)}


def train_cam(ctx: RunContext) -> Path:
    """Train (or resume training) the CAM network of ``ctx.cfg``; returns the selected checkpoint."""
    tc = ctx.cfg.cam_train
    model_cfg = CAMConfig.from_dict(ctx.cfg.cam_model)
    ctx.dataset.check_model_classes(model_cfg.num_classes, cam=True, key="cam_model.num_classes")
    if tc.select_checkpoint == "gt_miou":
        gt_dir(ctx.dataset)
    trainer = CamTrainer(ctx, model_cfg)
    if trainer.resume():
        return trainer.files.model
    settings = CamRunSettings(tc.epochs, tc.batch_size, ctx.dist.world, trainer.lr0, tc.select_checkpoint)
    return trainer.fit(settings)
