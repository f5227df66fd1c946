"""Optimisers and learning-rate schedules of both phases, as pure functions of the epoch / iteration.

Schedules are plain functions rather than scheduler objects so that a resumed run needs no scheduler
state: the trainer calls :func:`set_lr` with the value for the current epoch or iteration.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


def scaled_lr(base_lr: float, total_batch: int) -> float:
    """The DeiT linear-scaling rule the authors use in phase 1: ``base_lr * total_batch / 512``."""
    return base_lr * total_batch / 512.0


def cosine_lr(
    epoch: int, epochs: int, base_lr: float, warmup_epochs: int, warmup_lr: float, min_lr: float
) -> float:
    """Learning rate used to *train* 0-based ``epoch`` under the authors' phase-1 schedule (spec §1.5).

    This is timm's ``CosineLRScheduler`` (t_initial=epochs, one cycle, ``warmup_prefix=False`` so the
    cosine runs on the raw t) stepped with ``step(epoch)`` *after* each epoch: epoch e trains with
    lr(t=e-1), so epochs 0 and 1 both train at ``warmup_lr``.
    """
    t = max(epoch - 1, 0)
    if t < warmup_epochs:
        return warmup_lr + t * (base_lr - warmup_lr) / warmup_epochs
    if t >= epochs:
        return min_lr
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t / epochs))


def poly_lr(it: int, total_its: int, base_lr: float, min_lr: float, power: float) -> float:
    """Phase-2 polynomial decay per iteration: ``(lr0 - min)(1 - t/T)^p + min`` (spec §2.4), no warmup."""
    frac = min(max(it, 0), total_its) / total_its
    return (base_lr - min_lr) * (1.0 - frac) ** power + min_lr


def build_adamw(
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]], lr: float, weight_decay: float
) -> torch.optim.AdamW:
    """AdamW with betas (0.9, 0.999), eps 1e-8 and weight decay on *all* parameters.

    The authors hand timm a plain parameter list, so bias, LayerNorm, position embedding and class
    tokens are decayed too; matching that matters for reproducing their CAMs.
    """
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)


def build_sgd(
    param_groups: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
) -> torch.optim.SGD:
    """Phase-2 SGD; give groups an ``lr_scale`` key (encoder 0.1, decoder 1.0) for :func:`set_lr`."""
    return torch.optim.SGD(
        param_groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr * group['lr_scale']`` (scale 1 when the group has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def warmup_cosine_lr(step: int, total: int, base_lr: float, warmup: int, min_lr: float) -> float:
    """Per-step linear warm-up from ``min_lr`` to ``base_lr``, then cosine decay to ``min_lr`` at ``total``.

    The plain DeiT-style schedule of supervised pretraining, per step because short runs have few epochs.
    """
    if step < warmup:
        return min_lr + (base_lr - min_lr) * (step + 1) / warmup
    frac = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * frac))
