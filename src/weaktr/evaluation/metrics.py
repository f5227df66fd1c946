"""Segmentation metrics as the authors compute them (spec §1.6, golden O11), plus the CAM threshold sweep.

Counts are totals over the data set; valid pixels are those whose GT is a class (< n_cls, so
255 is ignored). Per class k with P predicted, T GT and TP true-positive pixels:
IoU = TP/(T+P−TP), precision = TP/P, recall = TP/T, FP = (P−TP)/(T+P−TP), FN = (T−TP)/(T+P−TP).
A zero denominator gives NaN, and means are nanmeans over all classes, background included — this is
how COCO's unused category ids drop out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from weaktr.errors import InputError
from weaktr.io import load_cams, write_json

PER_CLASS = ("iou", "precision", "recall", "fp", "fn")


class ConfusionMatrix:
    """GT × prediction pixel counts; predictions outside 0..C−1 land in an extra 'invalid' column."""

    def __init__(self, n_cls: int) -> None:
        if n_cls < 1:
            raise ValueError("n_cls must be ≥ 1")
        self.n_cls = n_cls
        self.counts = np.zeros((n_cls, n_cls + 1), dtype=np.int64)

    def update(self, pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> None:
        """Add one prediction / GT pair of equal shape (any integer dtype)."""
        pred = np.asarray(pred.cpu() if isinstance(pred, torch.Tensor) else pred).astype(np.int64)
        gt = np.asarray(gt.cpu() if isinstance(gt, torch.Tensor) else gt).astype(np.int64)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and GT {gt.shape} differ in shape")
        self.counts += confusion_counts(pred, gt, self.n_cls)

    def all_reduce(self) -> None:
        """Sum the counts over all ranks when torch.distributed is initialised (a no-op otherwise)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        t = torch.from_numpy(self.counts).to(device or "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        self.counts = t.cpu().numpy()

    def scores(self) -> dict[str, Any]:
        """Per-class and mean scores as fractions (0..1); JSON-ready plain Python values."""
        return scores_from_counts(
            self.counts[:, : self.n_cls].sum(0), self.counts.sum(1), np.diagonal(self.counts).copy()
        )


def confusion_counts(pred: np.ndarray, gt: np.ndarray, n_cls: int) -> np.ndarray:
    """(C, C+1) counts of valid pixels; one bincount, no per-pixel Python loop."""
    valid = (gt >= 0) & (gt < n_cls)
    p = pred[valid]
    p = np.where((p < 0) | (p >= n_cls), n_cls, p)
    idx = gt[valid] * (n_cls + 1) + p
    return np.bincount(idx, minlength=n_cls * (n_cls + 1)).reshape(n_cls, n_cls + 1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den in float64 with NaN where den is 0."""
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(x: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN (without a warning) when there are none."""
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else math.nan


def scores_from_counts(pred: np.ndarray, gt: np.ndarray, tp: np.ndarray) -> dict[str, Any]:
    """Scores from per-class P, T and TP counts (see the module docstring for formulas and NaN rules)."""
    pred, gt, tp = (np.asarray(a, dtype=np.float64) for a in (pred, gt, tp))
    union = gt + pred - tp
    per = {
        "iou": _ratio(tp, union),
        "precision": _ratio(tp, pred),
        "recall": _ratio(tp, gt),
        "fp": _ratio(pred - tp, union),
        "fn": _ratio(gt - tp, union),
    }
    out: dict[str, Any] = {k: v.tolist() for k, v in per.items()}
    out.update(
        {
            "count_pred": pred.astype(np.int64).tolist(),
            "count_gt": gt.astype(np.int64).tolist(),
            "count_tp": tp.astype(np.int64).tolist(),
        }
    )
    out.update(
        {
            "miou": _nanmean(per["iou"]),
            "mean_precision": _nanmean(per["precision"]),
            "mean_recall": _nanmean(per["recall"]),
            "mean_fp": _nanmean(per["fp"]),
            "mean_fn": _nanmean(per["fn"]),
        }
    )
    return out


def official_percent(scores: dict[str, Any], class_names: Sequence[str]) -> dict[str, float]:
    """The authors' ``loglist``: per-class IoU ×100 by name, then mIoU, FP, FN, Prediction, Recall ×100."""
    if len(class_names) != len(scores["iou"]):
        raise ValueError(f"{len(class_names)} class names for {len(scores['iou'])} classes")
    out = {name: 100 * v for name, v in zip(class_names, scores["iou"], strict=True)}
    out.update(
        {
            "mIoU": 100 * scores["miou"],
            "FP": 100 * scores["mean_fp"],
            "FN": 100 * scores["mean_fn"],
            "Prediction": 100 * scores["mean_precision"],
            "Recall": 100 * scores["mean_recall"],
        }
    )
    return out


def format_table(scores: dict[str, Any], class_names: Sequence[str]) -> str:
    """A fixed-width text table of per-class scores (in %) and the means; NaN prints as '-'."""

    def pct(v: float) -> str:
        return f"{100 * v:7.2f}" if not math.isnan(v) else f"{'-':>7}"

    width = max([len("class"), *(len(n) for n in class_names)])
    lines = [f"{'class':<{width}}  {'IoU':>7} {'prec':>7} {'recall':>7} {'FP':>7} {'FN':>7}"]
    for i, name in enumerate(class_names):
        lines.append(f"{name:<{width}}  " + " ".join(pct(scores[k][i]) for k in PER_CLASS))
    means = ("miou", "mean_precision", "mean_recall", "mean_fp", "mean_fn")
    lines.append(f"{'mean':<{width}}  " + " ".join(pct(scores[k]) for k in means))
    return "\n".join(lines)


def save_json(
    path: str | Path, scores: dict[str, Any], class_names: Sequence[str], extra: dict[str, Any] | None = None
) -> None:
    """Write the scores, the class names, the authors' ×100 dict and ``extra`` to one JSON file."""
    write_json(
        path,
        {
            **(extra or {}),
            "class_names": list(class_names),
            **scores,
            "official_percent": official_percent(scores, class_names),
        },
    )


def read_label_png(path: Path) -> np.ndarray:
    """A single-channel (L or P) PNG as uint8 indices, naming the file on any problem."""
    if not path.is_file():
        raise InputError("label map not found", path)
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise InputError(
                    f"label map must be a single-channel (L or P) PNG, got mode {img.mode}", path
                )
            return np.asarray(img, dtype=np.uint8)
    except OSError as exc:
        raise InputError(f"unreadable label map ({exc})", path) from exc


def sweep_thresholds(
    cam_dir: str | Path,
    gt_dir: str | Path,
    ids: Sequence[str],
    thresholds: Sequence[float],
    n_cls: int,
    early_stop: bool = True,
) -> tuple[float, dict[float, float]]:
    """Background-threshold sweep of CAM seeds (no CRF), reading each CAM file once.

    A pixel with top CAM value m and top class c is c for every t < m and background otherwise, so
    one pass bins pixels by (GT, c, number of thresholds below m) and cumulative sums give every
    threshold's confusion. With ``early_stop`` the authors' rule applies: thresholds are tried in
    the given order and the sweep stops at the first one that does not improve the mIoU (the
    returned dict then ends with it). Returns ``(best_t, {t: miou})``.
    """
    if not thresholds:
        raise ValueError("no thresholds to sweep")
    ts = np.asarray(thresholds, dtype=np.float32)
    order = np.argsort(ts, kind="stable")
    sorted_ts, n_t, n = ts[order], len(ts), n_cls
    # hist[b, g, c]: pixels with GT g, top label c and b thresholds strictly below their top value.
    hist = np.zeros((n_t + 1) * n * n, dtype=np.int64)
    gt_dir = Path(gt_dir)
    for i in ids:
        cams, classes = load_cams(Path(cam_dir) / f"{i}.npz")
        gt = read_label_png(gt_dir / f"{i}.png").astype(np.int64)
        if gt.shape != cams.shape[1:]:
            raise InputError(f"GT is {gt.shape} but the CAMs are {cams.shape[1:]}", gt_dir / f"{i}.png")
        if cams.shape[0] == 0:
            top = np.zeros(gt.shape, dtype=np.float32)
            label = np.zeros(gt.shape, dtype=np.int64)
        else:
            top, label = cams.max(axis=0), classes[cams.argmax(axis=0)]
        bucket = np.searchsorted(sorted_ts, top, side="left")
        if classes.size and classes.max() >= n:
            raise InputError(
                f"CAM class id {classes.max()} is outside 0..{n - 1}", Path(cam_dir) / f"{i}.npz"
            )
        valid = gt < n
        idx = (bucket[valid] * n + gt[valid]) * n + label[valid]
        hist += np.bincount(idx, minlength=hist.size)
    hist = hist.reshape(n_t + 1, n, n)
    # For sorted threshold j: buckets > j predict the top class; buckets ≤ j predict background.
    above = np.cumsum(hist[::-1], axis=0)[::-1]  # above[b] = sum of buckets ≥ b
    below = np.cumsum(hist, axis=0)  # below[b] = sum of buckets ≤ b
    miou_sorted = []
    for j in range(n_t):
        cm = above[j + 1].copy()
        cm[:, 0] += below[j].sum(axis=1)
        miou_sorted.append(scores_from_counts(cm.sum(0), cm.sum(1), np.diagonal(cm))["miou"])
    miou = np.empty(n_t)
    miou[order] = miou_sorted
    results: dict[float, float] = {}
    best_t, best = float(thresholds[0]), -math.inf
    for t, m in zip(thresholds, miou, strict=True):
        results[float(t)] = float(m)
        if m > best:
            best_t, best = float(t), float(m)
        elif early_stop:
            break
    return best_t, results
