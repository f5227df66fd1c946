"""Supervised pretraining of the demo's backbone on the synthetic shapes set (``weaktr pretrain``).

WeakTr presumes an ImageNet-pretrained ViT; the demo's stands in for it: the demo's conv-stem ViT is
trained as DeiT trained its models (cross entropy with label smoothing 0.1, AdamW, per-step warm-up
and cosine decay, weight decay off for biases, norms, position embedding and class token), on
:mod:`weaktr.data.pretrain_shapes` with light augmentation (random zoom-in crop and flip). The result
is a timm state dict of that ViT (``cls_token``, ``pos_embed``, ``patch_embed.*``, ``blocks.N.*``,
``norm.*``, ``head.*``) in float16 safetensors, loaded like any local weights through
``cam_train.pretrained=PATH`` / ``seg_train.pretrained=PATH``.

With ``objects`` K > 1 the images hold 1..K objects of distinct classes and the labels are
multi-hot: the loss is then the multilabel soft margin loss (WeakTr's own classification loss), the
augmentation a horizontal flip only (a zoom-in crop could cut a labelled object out) and the score
the mean average precision over classes (mAP) instead of top-1 accuracy.

Deterministic: weights come from ``seed``, data from ``data_seed``, shuffling and augmentation from
generators seeded by (seed, epoch); with deterministic algorithms on, the same settings give the same
file bytes on the same machine and thread count.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay
from torch import nn

from weaktr import __version__
from weaktr.data import pretrain_shapes
from weaktr.engine.optim import set_lr, warmup_cosine_lr
from weaktr.errors import InputError
from weaktr.io import save_checkpoint
from weaktr.models.backbone import VIT_BLOCK_OPTIONS
from weaktr.models.execution import ExecutionPolicy
from weaktr.models.timm_factory import create_backbone, normalisation
from weaktr.pretrain_settings import PretrainSettings
from weaktr.runtime.logging import format_seconds, progress

log = logging.getLogger("weaktr")
CHECKPOINT_TYPE = "weaktr-pretrained-backbone"
_EVAL_BATCH = 256


@dataclass
class PretrainResult:
    """What a run produced: the file, its metrics and how long each part took.

    ``metric`` names the scores: "acc" (top-1 accuracy, one object per image) or "mAP" (mean average
    precision over classes, multi-object images).
    """

    path: Path
    steps: int
    metric: str
    train_score: float
    val_score: float
    params: int
    render_seconds: float
    train_seconds: float
    epoch_seconds: list[float]


def build_classifier(s: PretrainSettings, num_classes: int) -> nn.Module:
    """The timm ViT of the demo's layout with a classification head on its class token (DeiT's pooling)
    or on the mean of its patch tokens (``pool``).

    The same block options as the CAM network's backbone (qkv bias, eps 1e-6 LayerNorm, exact GELU).
    """
    return create_backbone(
        s.backbone,
        None,
        s.stem,
        num_classes=num_classes,
        global_pool=s.pool,
        fc_norm=False,  # the final norm stays ``norm.*`` for either pool, the key both networks load
        img_size=s.img_size,
        patch_size=s.patch_size,
        embed_dim=s.embed_dim,
        depth=s.depth,
        num_heads=s.num_heads,
        drop_path_rate=s.drop_path,
        **VIT_BLOCK_OPTIONS,
    )


def explicit_attention(model: nn.Module) -> None:
    """Train with timm's explicit softmax(QK^T)V instead of its fused SDPA kernel (same weights).

    On the CPU the fused kernel's backward about doubled the training step (the figures:
    docs/pretraining.md).
    """
    for block in model.blocks:
        block.attn.fused_attn = False


def augment(images: torch.Tensor, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """A random zoom-in crop (area fraction in ``scale``, aspect 3/4..4/3) and a horizontal flip per image.

    One batched ``affine_grid`` + bilinear ``grid_sample`` on float (B, 3, H, W) images: the crop
    stays inside the image, so nothing is padded. The generator mirrors half its objects, so flips are safe.
    """
    B = images.shape[0]
    area = torch.empty(B).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(B).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
    sx = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    sy = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    tx = (torch.rand(B, generator=generator) * 2 - 1) * (1 - sx)
    ty = (torch.rand(B, generator=generator) * 2 - 1) * (1 - sy)
    flip = torch.where(torch.rand(B, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A horizontal flip of each image with probability 1/2: the multi-object data's augmentation
    (exact pixels; no crop, so every labelled object stays in the picture)."""
    mirrored = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(mirrored.to(images.device)[:, None, None, None], images.flip(-1), images)


def mean_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the average precision of ranking the images by that class's score.

    ``scores`` (N, C) float, ``labels`` (N, C) multi-hot. Ties rank in image order; classes without
    a positive image are left out of the mean (nan when none has one).
    """
    order = scores.float().argsort(dim=0, descending=True, stable=True)
    hits = labels.float().gather(0, order)
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float32)[:, None]
    positives = hits.sum(0)
    present = positives > 0
    if not present.any():
        return float("nan")
    return float(((precision * hits).sum(0)[present] / positives[present]).mean())


def _to_input(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float32 (B, 3, H, W)."""
    return ((batch.float() / 255 - mean) / std).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    norm: tuple[torch.Tensor, torch.Tensor],
    policy: ExecutionPolicy,
) -> float:
    """On un-augmented images (eval mode): top-1 accuracy for class indices (N,), mAP for multi-hot
    labels (N, C)."""
    if len(labels) == 0:
        return float("nan")
    model.eval()
    correct = 0
    scores = []
    for i in range(0, len(labels), _EVAL_BATCH):
        x = _to_input(images[i : i + _EVAL_BATCH].to(policy.device), *norm)
        with policy.autocast(policy.backbone_dtype):
            logits = model(x)
        if labels.ndim == 2:
            scores.append(logits.float().cpu())
        else:
            correct += int((logits.argmax(1).cpu() == labels[i : i + _EVAL_BATCH]).sum())
    if labels.ndim == 2:
        return mean_average_precision(torch.cat(scores), labels)
    return correct / len(labels)


@contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seeded global RNG and deterministic algorithms for the block, both restored after it."""
    was = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was, warn_only=warn)


@dataclass
class _Data:
    """The rendered set in memory (uint8 NHWC images; int64 class indices, or uint8 (N, C) multi-hot
    labels of multi-object images) and the model's normalisation."""

    images: torch.Tensor
    labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    norm: tuple[torch.Tensor, torch.Tensor]


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: _Data,
    s: PretrainSettings,
    epoch: int,
    first_step: int,
    policy: ExecutionPolicy,
) -> tuple[int, float, float]:
    """One shuffled pass (or up to ``max_steps``); returns (steps so far, train score, mean loss): the
    score is top-1 accuracy, or for multi-hot labels the mAP of the epoch's (augmented) batches.

    Shuffling and augmentation come from a generator seeded by (seed, epoch), so an epoch is the same
    whatever ran before it.
    """
    device = policy.device
    steps_per_epoch = s.n_train // s.batch_size  # drop_last: every step the same batch size
    total = s.epochs * steps_per_epoch
    warmup = round(s.warmup_epochs * steps_per_epoch)
    last = total if s.max_steps is None else min(total, s.max_steps)
    gen = torch.Generator().manual_seed(s.seed * 1_000_003 + epoch)
    order = torch.randperm(s.n_train, generator=gen)
    model.train()
    multi = data.labels.ndim == 2
    scores: list[torch.Tensor] = []  # multi-label: every batch's logits and labels, for the epoch's mAP
    targets: list[torch.Tensor] = []
    step, correct, seen, loss_sum = first_step, 0, 0, 0.0
    bar = progress(range(steps_per_epoch), desc=f"pretrain {epoch + 1}/{s.epochs}", enabled=True)
    for it in bar:
        if step >= last:
            break
        idx = order[it * s.batch_size : (it + 1) * s.batch_size]
        y = data.labels[idx].to(device)
        x = _to_input(data.images[idx].to(device), *data.norm)
        x = flip(x, gen) if multi else augment(x, s.crop_scale, gen)
        set_lr(optimizer, warmup_cosine_lr(step, total, s.lr, warmup, s.min_lr))
        with policy.autocast(policy.backbone_dtype):
            logits = model(x)
        if multi:
            loss = F.multilabel_soft_margin_loss(logits.float(), y.float())
        else:
            loss = F.cross_entropy(logits.float(), y, label_smoothing=s.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()
        if not math.isfinite(value):
            turn_off = " or pass --no-amp" if policy.amp else ""
            raise InputError(f"pretraining diverged: loss {value} at step {step + 1}; lower --lr{turn_off}")
        loss_sum += value
        if multi:
            scores.append(logits.detach().float().cpu())
            targets.append(y.cpu())
        else:
            correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        step += 1
        if it % 20 == 0:
            bar.set_postfix(loss=f"{value:.3f}", **({} if multi else {"acc": f"{correct / seen:.3f}"}))
    if multi:
        score = mean_average_precision(torch.cat(scores), torch.cat(targets)) if scores else float("nan")
    else:
        score = correct / max(seen, 1)
    return step, score, loss_sum / max(step - first_step, 1)


def pretrain(
    s: PretrainSettings,
    out: str | Path,
    policy: ExecutionPolicy,
    workers: int = 1,
    command: str = "",
) -> PretrainResult:
    """Render the data, train the classifier under ``policy`` (a training policy: bf16 autocast or
    float32), write ``out`` (float16 timm state dict + metadata)."""
    device = policy.device
    t0 = time.perf_counter()
    K = len(pretrain_shapes.CLASSES)
    multi = s.objects > 1
    what = f"1..{s.objects} objects each" if multi else "one object each"
    log.info("pretrain: rendering %d train + %d val images (%d classes, %s)", s.n_train, s.n_val, K, what)
    train_x, train_y = pretrain_shapes.render_set(s.data_seed, 0, s.n_train, s.img_size, workers, s.objects)
    val_x, val_y = pretrain_shapes.render_set(s.data_seed, s.n_train, s.n_val, s.img_size, workers, s.objects)
    mean, std = normalisation(s.backbone)
    data = _Data(
        torch.from_numpy(train_x),
        torch.from_numpy(train_y),
        torch.from_numpy(val_x),
        torch.from_numpy(val_y),
        (torch.tensor(mean, device=device), torch.tensor(std, device=device)),
    )
    render_seconds = time.perf_counter() - t0
    log.info("pretrain: rendered in %s", format_seconds(render_seconds))

    metric = "mAP" if multi else "acc"
    step, train_score, val_score = 0, float("nan"), float("nan")
    epoch_seconds: list[float] = []
    with _deterministic(s.seed):
        model = build_classifier(s, K).to(device)
        if device.type == "cpu":
            explicit_attention(model)
        groups = param_groups_weight_decay(
            model, s.weight_decay, no_weight_decay_list=model.no_weight_decay()
        )
        optimizer = torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.999), eps=1e-8)
        for epoch in range(s.epochs):
            if s.max_steps is not None and step >= s.max_steps:
                break
            te = time.perf_counter()
            step, train_score, loss = _train_epoch(model, optimizer, data, s, epoch, step, policy)
            val_score = evaluate(model, data.val_images, data.val_labels, data.norm, policy)
            epoch_seconds.append(time.perf_counter() - te)
            log.info(
                "pretrain epoch %d/%d: loss %.4f, train %s %.4f, val %s %.4f, %s",
                *(epoch + 1, s.epochs, loss, metric, train_score, metric, val_score),
                format_seconds(epoch_seconds[-1]),
            )
    train_seconds = time.perf_counter() - t0 - render_seconds
    key = metric.lower()  # train_acc / val_acc, or train_map / val_map
    meta = {
        "command": command,
        "seed": str(s.seed),
        "data_generator": pretrain_shapes.MULTI_GENERATOR if multi else pretrain_shapes.GENERATOR,
        "data_seed": str(s.data_seed),
        "classes": json.dumps(list(pretrain_shapes.CLASSES)),
        "epochs": str(s.epochs),
        "steps": str(step),
        f"train_{key}": f"{train_score:.4f}",  # the last epoch's, on augmented images
        f"val_{key}": f"{val_score:.4f}",
        "weaktr_version": __version__,
        "settings": json.dumps(s.as_dict()),
    }
    if multi:
        meta["objects"] = str(s.objects)  # absent from one-object files: their bytes stay as they were
    save_pretrained(out, model, s, meta)
    params = sum(p.numel() for p in model.parameters())
    return PretrainResult(
        Path(out), step, metric, train_score, val_score, params, render_seconds, train_seconds, epoch_seconds
    )


def save_pretrained(path: str | Path, model: nn.Module, s: PretrainSettings, meta: dict[str, str]) -> None:
    """The timm state dict, floats stored as float16 (half the file; loading copies into float32 weights),
    with the architecture under ``weaktr_config`` (so :func:`weaktr.io.load_checkpoint` reads it too)."""
    state = {
        k: v.detach().cpu().contiguous().to(torch.float16) if v.is_floating_point() else v.detach().cpu()
        for k, v in model.state_dict().items()
    }
    config = {"type": CHECKPOINT_TYPE, "num_classes": len(pretrain_shapes.CLASSES), **s.architecture()}
    save_checkpoint(path, state, config, {"format": "pt", **meta})


def accuracy_summary(result: PretrainResult) -> str:
    """One line for the command's output."""
    m = result.metric
    return (
        f"{result.steps} steps, train {m} {result.train_score:.4f}, val {m} {result.val_score:.4f}; "
        f"render {format_seconds(result.render_seconds)}, train {format_seconds(result.train_seconds)}"
    )


def describe_size(path: str | Path) -> str:
    """'1.83 MB' of a file, for the command's output."""
    return f"{Path(path).stat().st_size / 1e6:.2f} MB"
