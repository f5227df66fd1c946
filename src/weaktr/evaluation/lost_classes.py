"""A check without ground truth: classes the seeds label that the trained segmenter no longer predicts.

The gradient-clipping decoder stops the gradient of pixels whose loss is above their cell's mean once
the batch loss falls below τ. A class the segmenter has not learned yet by then (weak or partial seeds)
has large losses everywhere, so all its pixels are clipped and it can vanish from the predictions for
good: on the demo a class with seeds of 0.27–0.40 IoU ended at 0.0 while every other class passed 0.84.
Comparing the pixel share of each class in the seeds with the pseudo masks of the same images reads
that failure without any mask.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from weaktr.evaluation.metrics import read_label_png

log = logging.getLogger("weaktr")
# A class is lost when its pseudo masks keep less than this share of the pixels its seeds label.
LOST_SHARE = 0.05


def class_pixels(label_dir: Path, ids: Sequence[str], n_cls: int) -> np.ndarray:
    """Pixels of each class id 0..n_cls-1 over ``label_dir/<id>.png`` (255 and larger ids ignored)."""
    counts = np.zeros(n_cls, dtype=np.int64)
    for i in ids:
        labels = read_label_png(Path(label_dir) / f"{i}.png")
        counts += np.bincount(labels.ravel(), minlength=256)[:n_cls]
    return counts


def lost_classes(seed_pixels: np.ndarray, pred_pixels: np.ndarray, share: float = LOST_SHARE) -> list[int]:
    """Foreground class ids whose predicted pixels are under ``share`` of their seed pixels."""
    return [
        c
        for c in range(1, len(seed_pixels))
        if seed_pixels[c] > 0 and pred_pixels[c] < share * seed_pixels[c]
    ]


def check_lost_classes(
    seed_dir: Path, pred_dir: Path, ids: Sequence[str], class_names: Sequence[str]
) -> list[str]:
    """Names of the classes the seeds in ``seed_dir`` label but the masks in ``pred_dir`` lost, each
    also logged as a warning that says what to try."""
    seeds = class_pixels(seed_dir, ids, len(class_names))
    lost = lost_classes(seeds, class_pixels(pred_dir, ids, len(class_names)))
    for c in lost:
        log.warning(
            "predict: the segmenter lost class %r: its seeds label %.2f %% of the train pixels, the "
            "pseudo masks under %g %% of that. Gradient clipping may have frozen it out before it was "
            "learned: a lower seg_train.gc.tau starts clipping later",
            class_names[c],
            100 * seeds[c] / seeds.sum(),
            100 * LOST_SHARE,
        )
    return [class_names[c] for c in lost]
