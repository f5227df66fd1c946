"""The GT-free check after CAM training: did the AAF learn to weigh its attention maps?

AAF (spec §1.3) gives every attention map a sigmoid weight per image. When the mean weight of even
the least-weighted map stays near 1, the sigmoids are saturated (their gradient vanishes) and the
fusion is close to a plain mean of the maps. On the demo's from-scratch 2-block ViT this marks a
backbone that trained badly: over 13 phase-1 runs, every run whose smallest mean weight stayed at
0.69 or above reached seeds + CRF ≤ 0.756 mIoU, every run that turned a map below 0.55 reached
≥ 0.787 (``docs/results.md``). The check reads images only, never masks.

``cam_train.restarts`` lets a saturated run train again from a new seed. The bookkeeping survives a
kill at any moment: a finished attempt's files move to ``cam/attempt-<n>/`` first, and only then is
its record (``restarted: true``) appended to ``cam/aaf_check.json``. A kill between the two retrains
the same attempt from its own seed, which gives the same network; a kill after them trains the next
attempt, whose state is the only one left in ``cam/``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weaktr.data.images import load_image
from weaktr.errors import InputError
from weaktr.io import read_json, write_json
from weaktr.models.cam import CAMNet
from weaktr.models.timm_factory import normalisation, normalise
from weaktr.runtime.context import RunContext
from weaktr.runtime.layout import RunLayout

log = logging.getLogger("weaktr")
# Attempt a trains from cam_train.seed + a·stride; epochs add 1000·e, so no two attempts share a seed.
RESTART_SEED_STRIDE = 1_000_000


@dataclass(frozen=True)
class AAFCheck:
    """One finished attempt's verdict: the mean weight of every map (head-major) over ``images``."""

    attempt: int
    seed: int
    images: int
    weights: list[float]
    threshold: float
    restarted: bool = False

    @property
    def smallest(self) -> float:
        return min(self.weights)

    @property
    def saturated(self) -> bool:
        return self.smallest >= self.threshold


def attempt_seed(seed: int, attempt: int) -> int:
    return seed + RESTART_SEED_STRIDE * attempt


def check_settings(tc: Any) -> None:
    """Refuse check settings that cannot mean anything, before any training starts."""
    if tc.aaf_check_images < 0 or tc.restarts < 0:
        raise InputError(
            f"cam_train.aaf_check_images ({tc.aaf_check_images}) and cam_train.restarts "
            f"({tc.restarts}) must be 0 or more"
        )
    if not 0.0 < tc.aaf_saturated <= 1.0:
        raise InputError(f"cam_train.aaf_saturated must lie in (0, 1], got {tc.aaf_saturated}")
    if tc.restarts and not tc.aaf_check_images:
        raise InputError("cam_train.restarts needs the AAF check: set cam_train.aaf_check_images above 0")


def read_checks(layout: RunLayout) -> list[AAFCheck]:
    """The verdicts of the attempts judged so far (none before the first attempt ends)."""
    path = layout.cam_aaf_check
    if not path.is_file():
        return []
    return [AAFCheck(**record) for record in read_json(path)["attempts"]]


def _write_checks(layout: RunLayout, checks: list[AAFCheck]) -> None:
    write_json(layout.cam_aaf_check, {"attempts": [asdict(c) for c in checks]})


@torch.no_grad()
def mean_map_weights(model: CAMNet, paths: list[Path], device: torch.device) -> np.ndarray | None:
    """Mean AAF weight per map over the images at their own size (None when the model has no AAF)."""
    if model.config.fusion != "aaf":
        return None
    mean, std = normalisation(model.config.backbone)
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros(model.config.depth * model.config.num_heads, dtype=torch.float64)
        for path in paths:
            x = normalise(load_image(path), mean, std, device)[None]
            total += model(x).aaf_weights[0].double().cpu()
    finally:
        model.train(was_training)
    return (total / len(paths)).numpy()


def judge_attempt(
    ctx: RunContext, model: CAMNet, attempt: int, seed: int, checks: list[AAFCheck]
) -> AAFCheck | None:
    """Check the attempt's network (main rank), log the verdict and record it; a restart retires the
    attempt's files first. Returns the record, or None when there is nothing to check."""
    tc, lay = ctx.cfg.cam_train, ctx.layout
    ids = ctx.dataset.ids(ctx.cfg.data.train_split)[: tc.aaf_check_images]
    weights = mean_map_weights(model, [ctx.dataset.image_path(i) for i in ids], ctx.device)
    if weights is None or not ids:
        return None
    check = AAFCheck(attempt, seed, len(ids), [round(float(w), 6) for w in weights], tc.aaf_saturated)
    what = (
        f"train-cam: smallest mean AAF map weight {check.smallest:.2f} over {check.images} train images "
        f"(attempt {attempt + 1}, seed {seed}"
    )
    if not check.saturated:
        log.info("%s): below %.2f, the AAF weighs its maps", what, check.threshold)
    elif attempt < tc.restarts:
        check = AAFCheck(**{**asdict(check), "restarted": True})
        log.warning(
            "%s) is at or above cam_train.aaf_saturated = %.2f: the fusion is close to a plain mean; "
            "training again from seed %d (restart %d of %d)",
            what,
            check.threshold,
            attempt_seed(tc.seed, attempt + 1),
            attempt + 1,
            tc.restarts,
        )
        _retire(lay, attempt)
    else:
        log.warning(
            "%s) is at or above cam_train.aaf_saturated = %.2f: the fusion is close to a plain mean "
            "and the CAMs may be weak%s",
            what,
            check.threshold,
            "" if tc.restarts else "; cam_train.restarts > 0 would train again from another seed",
        )
    _write_checks(lay, [*checks, check])
    return check


def _retire(layout: RunLayout, attempt: int) -> None:
    """Move a finished attempt's state, model, log and selection into ``cam/attempt-<n>/``.

    The state goes first: without it a resumed run trains the attempt again, whereas a state
    without its model would count as finished.
    """
    target = layout.cam_attempt(attempt)
    target.mkdir(parents=True, exist_ok=True)
    for path in (layout.cam_state, layout.cam_model, layout.cam_log, layout.cam_selection):
        if path.is_file():
            os.replace(path, target / path.name)
