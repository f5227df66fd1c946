"""Phase-1 training of the CAM network (spec §1.5), resumable epoch by epoch and DDP-ready.

Every epoch ends with ``cam/state.safetensors`` (weights, AdamW state, epoch) and the checkpoint
``cam/model.safetensors``. The global RNGs are reseeded from (seed, rank, epoch) at the start of
every epoch and the sampler shuffles from (seed, epoch), so a rerun after a kill continues from the
last finished epoch bit-identically, on every rank, without per-rank RNG files.

Checkpoint selection: ``last`` keeps the last epoch and uses no pixel GT; ``gt_miou`` is the
authors' practice, keeping the epoch whose scale-1.0+flip CAMs score best on ``data.cam_eval_split``
over the ``seeds.sweep`` thresholds. The choice is written to ``cam/selection.json`` and the log.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from weaktr.data.torch_datasets import ClassificationDataset
from weaktr.data.transforms import cam_train_transform
from weaktr.engine.optim import build_adamw, cosine_lr, scaled_lr, set_lr
from weaktr.engine.state import load_training_state, read_state_extra, save_training_state
from weaktr.errors import InputError
from weaktr.evaluation.metrics import sweep_thresholds
from weaktr.io import write_json
from weaktr.models.cam import CAMConfig, CAMNet, CAMOutput, build_cam_model, cam_loss, save_cam_model
from weaktr.models.timm_factory import normalisation
from weaktr.runtime.context import RunContext
from weaktr.runtime.distributed import (
    all_reduce_sum,
    barrier,
    per_rank_batch,
    seed_everything,
    wrap_ddp,
)
from weaktr.runtime.logging import JsonlLogger, format_seconds, progress
from weaktr.stages.gen_cam import write_split_cams
from weaktr.stages.scoring import gt_dir, sweep_range

log = logging.getLogger("weaktr")
LOSS_KEYS = ("cls", "coarse", "fine", "total")
EPOCH_SEED_STRIDE = 1000  # epoch e of rank r seeds with seed + 1000·e + r (epoch 0: the authors' seed + r)


def _check_classes(ctx: RunContext, model_cfg: CAMConfig) -> None:
    if ctx.dataset.num_fg != model_cfg.num_classes:
        raise InputError(
            f"data set {ctx.dataset.name!r} has {ctx.dataset.num_fg} foreground classes but "
            f"cam_model.num_classes is {model_cfg.num_classes} (set it to {ctx.dataset.num_fg})"
        )


def _dataset(ctx: RunContext, model_cfg: CAMConfig) -> ClassificationDataset:
    tc = ctx.cfg.cam_train
    mean, std = normalisation(model_cfg.backbone)
    transform = cam_train_transform(
        tc.img_size, mean, std, tuple(tc.crop_scale), auto_augment=tc.randaug, re_prob=tc.reprob
    )
    return ClassificationDataset(ctx.dataset, ctx.cfg.data.train_split, transform)


def _loader(ctx: RunContext, dataset: ClassificationDataset, epoch: int) -> DataLoader:
    """This rank's shuffled, drop-last shard for ``epoch``; worker seeds follow (seed, rank, epoch)."""
    tc, rank, world = ctx.cfg.cam_train, ctx.dist.rank, ctx.dist.world
    sampler = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=tc.seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    loader = DataLoader(
        dataset,
        batch_size=per_rank_batch(tc.batch_size, world),
        sampler=sampler,
        num_workers=tc.num_workers,
        drop_last=True,
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(tc.seed + EPOCH_SEED_STRIDE * epoch + rank),
    )
    if len(loader) == 0:
        raise InputError(
            f"split {ctx.cfg.data.train_split!r} has {len(dataset)} images, fewer than one batch of "
            f"{loader.batch_size} per process; lower cam_train.batch_size"
        )
    return loader


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
    amp: bool = False,
) -> dict[str, torch.Tensor]:
    """One AdamW step (forward in bf16 when ``amp``, losses in float32); returns the detached losses.

    Public so that benchmarks time exactly the training code path.
    """
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(images)
    losses = cam_loss(_float_logits(out), targets)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    optimizer.step()
    return {k: v.detach() for k, v in losses.items()}


def _train_epoch(
    ctx: RunContext,
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    lr: float,
    jlog: JsonlLogger,
) -> dict[str, float]:
    """One pass over ``loader``; returns the epoch's mean losses (averaged over ranks)."""
    tc, device = ctx.cfg.cam_train, ctx.device
    model.train()
    totals = torch.zeros(len(LOSS_KEYS), device=device)
    window = torch.zeros(len(LOSS_KEYS), device=device)
    bar = progress(loader, desc=f"train-cam {epoch + 1}/{tc.epochs}", enabled=ctx.dist.is_main)
    for it, (images, targets) in enumerate(bar):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        losses = train_step(model, images, targets, optimizer, ctx.amp(tc.amp))
        step_losses = torch.stack([losses[k] for k in LOSS_KEYS])
        totals += step_losses
        window += step_losses
        if (it + 1) % tc.log_every == 0 or it + 1 == len(loader):
            n = (it % tc.log_every) + 1
            means = dict(zip(LOSS_KEYS, (window / n).tolist(), strict=True))
            if not math.isfinite(means["total"]):
                raise FloatingPointError(
                    f"train-cam: the loss is {means['total']} at epoch {epoch + 1}, iteration {it + 1}; "
                    "lower cam_train.lr or turn off cam_train.amp"
                )
            jlog.log(
                event="iter", epoch=epoch + 1, iter=it + 1, step=epoch * len(loader) + it + 1, lr=lr, **means
            )
            bar.set_postfix(loss=f"{means['total']:.4f}", lr=f"{lr:.2e}")
            window.zero_()
    all_reduce_sum(totals)
    return dict(zip(LOSS_KEYS, (totals / (len(loader) * ctx.dist.world)).tolist(), strict=True))


def _score_epoch(ctx: RunContext, model: CAMNet) -> tuple[float, float]:
    """(mIoU, threshold) of scale-1.0+flip CAMs on data.cam_eval_split (rank 0; others get NaNs)."""
    split = ctx.cfg.data.cam_eval_split or ctx.cfg.data.train_split
    work = ctx.layout.cam_select_work
    if ctx.dist.is_main:
        shutil.rmtree(work, ignore_errors=True)
    barrier()
    write_split_cams(ctx, model, split, work, [1.0], progress=False)
    miou = threshold = float("nan")
    if ctx.dist.is_main:
        ids = ctx.dataset.ids(split)
        threshold, results = sweep_thresholds(
            work, gt_dir(ctx.dataset), ids, sweep_range(ctx.cfg.seeds.sweep), ctx.dataset.num_classes
        )
        miou = results[threshold]
        shutil.rmtree(work, ignore_errors=True)
    barrier()
    return miou, threshold


def _select(ctx: RunContext, model: CAMNet, epoch: int, selection: dict[str, Any]) -> dict[str, Any]:
    """Save model.safetensors if this epoch is the one to keep; returns the updated selection record."""
    out = ctx.layout.cam_model
    if selection["mode"] == "last":
        if ctx.dist.is_main:
            save_cam_model(out, model)
        return {**selection, "epoch": epoch + 1}
    miou, threshold = _score_epoch(ctx, model)
    history = [*selection["history"], {"epoch": epoch + 1, "miou": miou, "threshold": threshold}]
    best = selection.get("miou")
    if ctx.dist.is_main and (best is None or miou > best):
        save_cam_model(out, model)
        selection = {**selection, "epoch": epoch + 1, "miou": miou, "threshold": threshold}
    return {**selection, "history": history}


def train_cam(ctx: RunContext) -> Path:
    """Train (or resume training) the CAM network of ``ctx.cfg``; returns the selected checkpoint."""
    cfg, tc = ctx.cfg, ctx.cfg.cam_train
    lay = ctx.layout
    model_cfg = CAMConfig.from_dict(cfg.cam_model)
    _check_classes(ctx, model_cfg)
    split = cfg.data.cam_eval_split or cfg.data.train_split
    if tc.select_checkpoint == "gt_miou":
        gt_dir(ctx.dataset)
    seed_everything(tc.seed, ctx.dist.rank)
    model = build_cam_model(model_cfg, tc.pretrained).to(ctx.device)
    lr0 = scaled_lr(tc.lr, tc.batch_size)
    optimizer = build_adamw(model.parameters(), lr0, tc.weight_decay)
    dataset = _dataset(ctx, model_cfg)
    selection: dict[str, Any] = {"mode": tc.select_checkpoint, "split": split, "epoch": 0, "history": []}
    start = 0
    state_path = lay.cam_state
    # What a resumed run must share with the saved one (epochs may grow: a killed run is rerun).
    setup = json.loads(
        json.dumps(
            {
                "model": model_cfg.to_dict(),
                "batch_size": tc.batch_size,
                "lr": tc.lr,
                "weight_decay": tc.weight_decay,
                "world": ctx.dist.world,
            }
        )
    )
    if state_path.is_file():
        saved_setup = read_state_extra(state_path).get("setup", setup)
        if saved_setup != setup:
            changed = sorted(k for k in setup if saved_setup.get(k) != setup[k])
            raise InputError(
                f"training state was made with other settings (changed: {', '.join(changed)}); "
                "use another run_dir or delete the state to start over",
                state_path,
            )
        saved = load_training_state(state_path, model, optimizer, restore_rng=False)
        start, selection = saved["epoch"], saved["extra"]["selection"]
        log.info("train-cam: resuming after epoch %d of %d from %s", start, tc.epochs, state_path)
    # The backbone's final norm is loaded but never applied (golden O1): DDP must allow unused params.
    ddp = wrap_ddp(model, find_unused_parameters=True)
    with JsonlLogger(lay.cam_log, enabled=ctx.dist.is_main) as jlog:
        jlog.log(
            event="resume" if start else "start",
            epoch=start,
            epochs=tc.epochs,
            batch_size=tc.batch_size,
            world=ctx.dist.world,
            lr=lr0,
            select_checkpoint=tc.select_checkpoint,
        )
        for epoch in range(start, tc.epochs):
            tic = time.perf_counter()
            seed_everything(tc.seed + EPOCH_SEED_STRIDE * epoch, ctx.dist.rank)
            lr = cosine_lr(epoch, tc.epochs, lr0, tc.warmup_epochs, tc.warmup_lr, tc.min_lr)
            set_lr(optimizer, lr)
            loader = _loader(ctx, dataset, epoch)
            means = _train_epoch(ctx, ddp, loader, optimizer, epoch, lr, jlog)
            selection = _select(ctx, model, epoch, selection)
            if ctx.dist.is_main:
                save_training_state(
                    state_path,
                    model,
                    optimizer,
                    epoch + 1,
                    (epoch + 1) * len(loader),
                    extra={"selection": selection, "setup": setup},
                )
                write_json(lay.cam_selection, selection)
            seconds = time.perf_counter() - tic
            jlog.log(event="epoch", epoch=epoch + 1, lr=lr, seconds=seconds, iters=len(loader), **means)
            if selection["history"]:
                jlog.log(event="select", **selection["history"][-1], kept_epoch=selection["epoch"])
            log.info(
                "train-cam epoch %d/%d: loss %.4f (cls %.4f, coarse %.4f, fine %.4f), lr %.2e, %s",
                epoch + 1,
                tc.epochs,
                means["total"],
                means["cls"],
                means["coarse"],
                means["fine"],
                lr,
                format_seconds(seconds),
            )
            barrier()
        jlog.log(event="done", select_checkpoint=tc.select_checkpoint, kept_epoch=selection["epoch"])
    return lay.cam_model
