"""Phase-2 online retraining (spec §2.3–2.4): the Segmenter on CAM seeds with the gradient-clipping loss.

SGD (Nesterov, momentum 0.9, wd 0), the encoder at ``encoder_lr_scale`` of the lr, poly decay per
iteration to ``min_lr`` without warm-up, the mmseg-style augmentation, batch ``batch_size`` over all
ranks. The clipping statistics stay per rank, as in the authors' code.

Every epoch ends with ``seg/state.safetensors`` (weights, SGD momentum, epoch) and, depending on
``select_checkpoint``, ``seg/model.safetensors``. The global RNGs are reseeded from (seed, epoch,
rank) at the start of every epoch and the sampler shuffles from (seed, epoch), so a rerun after a
kill continues from the last finished epoch bit-identically.

``gt_dir`` (pixel ground truth of the training images) only adds measurements: the precision of
the pseudo-label pixels the loss keeps against GT (the paper's Table XIII / Fig. 5). The GT goes
through exactly the seeds' geometric augmentation and never influences training.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import tv_tensors

from weaktr.data.dataset import DatasetInfo, SegmentationDataset, short_list
from weaktr.data.images import load_image, load_label_map
from weaktr.data.transforms import SegTrainTransform
from weaktr.engine.optim import build_sgd, poly_lr, set_lr
from weaktr.engine.state import load_training_state, save_training_state
from weaktr.errors import InputError
from weaktr.evaluation.inference import InferenceSettings, inference_precision, predict_logits
from weaktr.evaluation.metrics import ConfusionMatrix
from weaktr.io import write_json
from weaktr.losses import IGNORE_INDEX, GCMode, GCStats, gradient_clipping_loss
from weaktr.models.segmenter import SegConfig, Segmenter, build_segmenter, param_groups, save_segmenter
from weaktr.models.timm_factory import normalisation
from weaktr.runtime.context import RunContext
from weaktr.runtime.distributed import (
    barrier,
    per_rank_batch,
    seed_everything,
    shard,
    wrap_ddp,
)
from weaktr.runtime.logging import JsonlLogger, format_seconds, progress

log = logging.getLogger("weaktr")
GC_MODES: dict[str, GCMode] = {"code": "batch", "per_image": "per_image", "none": "naive"}
EPOCH_SEED_STRIDE = 1000  # epoch e of rank r seeds with seed + 1000·e + r


class _SeedAndGTTransform(SegTrainTransform):
    """The train transform on a (2, H, W) seed+GT stack: only the seed decides the crop, both get it.

    The random draws are exactly those of the plain transform on the seed alone, so measuring against
    GT changes nothing in training.
    """

    _box: tuple[int, int] = (0, 0)

    def _crop_box(self, h: int, w: int) -> tuple[int, int]:
        self._box = super()._crop_box(h, w)
        return self._box

    def _random_crop(
        self, img: tv_tensors.Image, mask: tv_tensors.Mask
    ) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        img, seed = super()._random_crop(img, mask[:, :1])
        top, left = self._box  # the last box drawn is the one the parent cropped with
        gt = TF.crop(mask[:, 1:], top, left, seed.shape[-2], seed.shape[-1])
        return img, tv_tensors.wrap(torch.cat([seed, gt], dim=1), like=seed)


class _SeedGTDataset(Dataset):
    """(image, (2, crop, crop) seed+GT) pairs; images without a GT file get an all-ignore GT."""

    def __init__(self, base: SegmentationDataset, gt_dir: Path, transform: _SeedAndGTTransform) -> None:
        self.base, self.gt_dir, self.transform = base, gt_dir, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        info, image_id = self.base.info, self.base.ids[index]
        img = load_image(info.image_path(image_id))
        seed = load_label_map(self.base.label_dir / f"{image_id}.png", img.shape[:2], info.num_classes)
        gt_path = self.gt_dir / f"{image_id}.png"
        gt = (
            load_label_map(gt_path, img.shape[:2])
            if gt_path.is_file()
            else np.full(seed.shape, IGNORE_INDEX, np.uint8)
        )
        return self.transform(img, np.stack([seed, gt]))


def _check_label_maps(info: DatasetInfo, ids: list[str], label_dir: Path, n_cls: int) -> None:
    """Every seed PNG exists, matches its image's size and holds ids < n_cls (or 255), before training.

    A bad file found inside a DataLoader worker would surface as a traceback hours into a run.
    """
    if not label_dir.is_dir():
        raise InputError("seed folder not found (run make-seeds first, or pass --seeds)", label_dir)
    missing = [i for i in ids if not (label_dir / f"{i}.png").is_file()]
    if missing:
        raise InputError(f"{len(missing)} seed PNG(s) missing: {short_list(missing)}", label_dir)

    def check(image_id: str) -> None:
        path = info.image_path(image_id)
        try:
            with Image.open(path) as im:  # header only: no decode
                w, h = im.size
        except OSError as exc:
            raise InputError(f"unreadable image ({exc})", path) from exc
        load_label_map(label_dir / f"{image_id}.png", (h, w), n_cls)

    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in progress(pool.map(check, ids), desc="check seeds", total=len(ids)):
            pass


def _datasets(
    ctx: RunContext, seg_cfg: SegConfig, label_dir: Path, gt_dir: Path | None
) -> tuple[Dataset, bool]:
    """The training set (with GT stacked under the seeds when ``gt_dir`` has any); returns it and the flag."""
    st, info = ctx.cfg.seg_train, ctx.dataset
    split = ctx.cfg.data.train_split
    ids = info.ids(split)
    _check_label_maps(info, ids, label_dir, seg_cfg.n_cls)
    mean, std = normalisation(seg_cfg.backbone)
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
    if not gt_dir.is_dir():
        raise InputError("ground-truth folder not found", gt_dir)
    n_gt = sum((gt_dir / f"{i}.png").is_file() for i in ids)
    if n_gt == 0:
        raise InputError(f"no ground-truth PNG for any image of split {split!r}", gt_dir)
    if n_gt < len(ids):
        log.warning("train-seg: ground truth for %d of %d training images only (%s)", n_gt, len(ids), gt_dir)
    return _SeedGTDataset(base, gt_dir, _SeedAndGTTransform(**kw)), True


def _loader(ctx: RunContext, dataset: Dataset, epoch: int) -> DataLoader:
    """This rank's shuffled shard for ``epoch`` (last batch kept, as the authors' loader)."""
    st, rank, world = ctx.cfg.seg_train, ctx.dist.rank, ctx.dist.world
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=st.seed)
    sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=per_rank_batch(st.batch_size, world),
        sampler=sampler,
        num_workers=st.num_workers,
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(st.seed + EPOCH_SEED_STRIDE * epoch + rank),
    )


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


def evaluate_segmenter(ctx: RunContext, model: Segmenter, split: str) -> dict[str, Any]:
    """Single-scale sliding-window scores on ``split`` (ids sharded over ranks, counts all-reduced)."""
    info, p, st = ctx.dataset, ctx.cfg.predict, ctx.cfg.seg_train
    settings = InferenceSettings.from_config(p, amp=ctx.amp(st.amp))
    cm = ConfusionMatrix(info.num_classes)
    ids = shard(info.ids(split), ctx.dist.rank, ctx.dist.world)
    with inference_precision(model, settings, ctx.device):  # one bf16 copy for the split
        for image_id in progress(ids, desc=f"eval {split}", enabled=ctx.dist.is_main):
            image = load_image(info.image_path(image_id))
            logits = predict_logits(model, image, settings, ctx.device)
            cm.update(logits.argmax(0), load_label_map(info.mask_path(image_id), image.shape[:2]))
    cm.all_reduce()
    return cm.scores()


def _check_setup(ctx: RunContext, seg_cfg: SegConfig) -> str | None:
    """Validate the class count and the checkpoint choice; returns the evaluation split (None = none)."""
    st, info = ctx.cfg.seg_train, ctx.dataset
    if info.num_classes != seg_cfg.n_cls:
        raise InputError(
            f"data set {info.name!r} has {info.num_classes} label ids (background included) but "
            f"seg_model.n_cls is {seg_cfg.n_cls} (set it to {info.num_classes})"
        )
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


def train_seg(ctx: RunContext, label_dir: Path, gt_dir: Path | None = None) -> Path:
    """Train (or resume training) the segmenter on the label PNGs in ``label_dir``; returns its checkpoint.

    ``gt_dir`` holds ground truth for the training images (e.g. the data set's masks); it is used only
    to log the precision of the pixels the gradient-clipping loss keeps.
    """
    cfg, st = ctx.cfg, ctx.cfg.seg_train
    model_path, state_path = ctx.layout.seg_model, ctx.layout.seg_state
    seg_cfg = SegConfig.from_dict(cfg.seg_model)
    eval_split = _check_setup(ctx, seg_cfg)
    dataset, with_gt = _datasets(ctx, seg_cfg, Path(label_dir), None if gt_dir is None else Path(gt_dir))
    iters = len(_loader(ctx, dataset, 0))
    total = iters * st.epochs
    setup = {
        "epochs": st.epochs,
        "iters_per_epoch": iters,
        "batch_size": st.batch_size,
        "world": ctx.dist.world,
    }

    resume = state_path.is_file()
    seed_everything(st.seed, ctx.dist.rank)
    model = build_segmenter(seg_cfg, None if resume else st.pretrained).to(ctx.device)
    optimizer = build_sgd(
        param_groups(model, st.lr, st.encoder_lr_scale), st.lr, st.momentum, st.nesterov, st.weight_decay
    )
    selection: dict[str, Any] = {
        "select_checkpoint": st.select_checkpoint,
        "eval_split": eval_split,
        "epoch": 0,
        "val_miou": None,
        "history": [],
    }
    start = 0
    if resume:
        saved = load_training_state(state_path, model, optimizer, restore_rng=False)
        if saved["extra"].get("setup") != setup:
            raise InputError(
                f"training state was made with {saved['extra'].get('setup')}, this run has {setup}; "
                "use another run_dir or delete the state to start over",
                state_path,
            )
        start, selection = saved["epoch"], saved["extra"]["selection"]
        log.info("train-seg: resuming after epoch %d of %d from %s", start, st.epochs, state_path)
        if start >= st.epochs and model_path.is_file():
            return model_path
    ddp = wrap_ddp(model)
    gc_mode = GC_MODES[st.gc.mode]
    with JsonlLogger(ctx.layout.seg_log, enabled=ctx.dist.is_main) as jlog:
        jlog.log(
            event="resume" if start else "start",
            epoch=start,
            **setup,
            total_iters=total,
            lr=st.lr,
            gc=dataclasses.asdict(st.gc),
            seeds=str(label_dir),
            gt=None if gt_dir is None else str(gt_dir),
        )
        for epoch in range(start, st.epochs):
            tic = time.perf_counter()
            seed_everything(st.seed + EPOCH_SEED_STRIDE * epoch, ctx.dist.rank)
            epoch_meter = _train_epoch(
                ctx, ddp, optimizer, _loader(ctx, dataset, epoch), epoch, gc_mode, with_gt, jlog
            )
            record: dict[str, Any] = {"event": "epoch", "epoch": epoch + 1, **epoch_meter.record(with_gt)}
            last = epoch + 1 == st.epochs
            if eval_split is not None and ((epoch + 1) % st.eval_every == 0 or last):
                scores = evaluate_segmenter(ctx, model, eval_split)
                record["val_miou"] = scores["miou"]
                selection["history"].append({"epoch": epoch + 1, "val_miou": scores["miou"]})
            keep = st.select_checkpoint == "last" or (
                "val_miou" in record
                and (selection["val_miou"] is None or record["val_miou"] > selection["val_miou"])
            )
            if keep:
                selection.update(epoch=epoch + 1, val_miou=record.get("val_miou"))
            if ctx.dist.is_main:
                if keep:
                    save_segmenter(model_path, model)
                save_training_state(
                    state_path,
                    model,
                    optimizer,
                    epoch + 1,
                    (epoch + 1) * iters,
                    extra={"setup": setup, "selection": selection},
                )
                write_json(ctx.layout.seg_selection, selection)
            record["seconds"] = time.perf_counter() - tic
            jlog.log(record)
            log.info(
                "train-seg epoch %d/%d: loss %.4f, clipped %.1f%%%s, %s",
                epoch + 1,
                st.epochs,
                record["loss"],
                100 * record["clipped_fraction"],
                f", val mIoU {100 * record['val_miou']:.2f}" if "val_miou" in record else "",
                format_seconds(record["seconds"]),
            )
            barrier()
        jlog.log(event="done", kept_epoch=selection["epoch"], val_miou=selection["val_miou"])
    return model_path


def _train_epoch(
    ctx: RunContext,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    epoch: int,
    gc_mode: GCMode,
    with_gt: bool,
    jlog: JsonlLogger,
) -> _Meter:
    """One pass over ``loader`` with the per-iteration poly lr; logs every ``log_every`` iterations."""
    st, device = ctx.cfg.seg_train, ctx.device
    total = len(loader) * st.epochs
    model.train()
    epoch_meter, span = _Meter(), _Meter()
    bar = progress(loader, desc=f"train-seg {epoch + 1}/{st.epochs}", enabled=ctx.dist.is_main)
    for it, (images, masks) in enumerate(bar):
        step = epoch * len(loader) + it
        lr = poly_lr(step, total, st.lr, st.min_lr, st.power)
        set_lr(optimizer, lr)
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        target, gt = (masks[:, 0], masks[:, 1]) if with_gt else (masks, None)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx.amp(st.amp)):
            logits = model(images)
        loss, stats = gradient_clipping_loss(logits.float(), target, st.gc.tau, st.gc.cell, gc_mode)
        value = float(loss.detach())
        if not np.isfinite(value):
            raise InputError(
                f"training diverged: the loss is {value} at iteration {step + 1}; lower seg_train.lr"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for meter in (epoch_meter, span):
            meter.update(value, stats, target, gt)
        live = epoch_meter.record(False)
        bar.set_postfix(
            loss=f"{live['loss']:.4f}", clipped=f"{100 * live['clipped_fraction']:.1f}%", refresh=False
        )
        if (it + 1) % st.log_every == 0 or it + 1 == len(loader):
            jlog.log(event="iter", epoch=epoch + 1, iter=step + 1, lr=lr, **span.record(with_gt))
            span = _Meter()
    return epoch_meter
