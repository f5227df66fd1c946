"""Scoring label maps or CAMs against pixel GT: metrics/<name>.json and the printed table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from weaktr.cam.seeds import seed_from_cams
from weaktr.data.info import DatasetInfo
from weaktr.errors import InputError
from weaktr.evaluation.metrics import (
    ConfusionMatrix,
    format_table,
    read_label_png,
    save_json,
    sweep_thresholds,
)
from weaktr.io import load_cams
from weaktr.runtime.context import RunContext
from weaktr.runtime.distributed import barrier, broadcast_value, shard

SWEEP_STEP = 0.01


def sweep_range(bounds: Sequence[float]) -> list[float]:
    """The thresholds of a config ``sweep: [lo, hi]``: lo..hi inclusive in steps of 0.01."""
    if len(bounds) != 2 or bounds[0] > bounds[1]:
        raise InputError(f"a threshold sweep is [low, high] with low <= high, got {list(bounds)}")
    n = round((bounds[1] - bounds[0]) / SWEEP_STEP)
    return [round(bounds[0] + SWEEP_STEP * i, 4) for i in range(n + 1)]


def gt_dir(info: DatasetInfo) -> Path:
    """The ground-truth mask folder; GT-based steps fail clearly on a data set without one."""
    if info.masks is None:
        raise InputError(f"data set {info.name!r} has no ground-truth masks to evaluate against")
    return info.path(info.masks)


def _confusion(
    ctx: RunContext, source: Path, ids: Sequence[str], gt: Path, threshold: float | None
) -> ConfusionMatrix:
    """Counts of this rank's share of ``ids``, summed over ranks; CAMs when a threshold is given."""
    cm = ConfusionMatrix(ctx.dataset.n_cls)
    for i in shard(ids, ctx.dist.rank, ctx.dist.world):
        if threshold is None:
            pred_path = source / f"{i}.png"
            if not pred_path.is_file() and (source / f"{i}.npz").is_file():
                raise InputError("these are CAM files, not label maps: evaluate them with --cams", source)
            pred = read_label_png(pred_path)
        else:
            pred = seed_from_cams(*load_cams(source / f"{i}.npz"), threshold)
        target = read_label_png(gt / f"{i}.png")
        if pred.shape != target.shape:
            raise InputError(f"prediction is {pred.shape} but its GT is {target.shape}", source / f"{i}.png")
        cm.update(pred, target)
    cm.all_reduce()
    return cm


def evaluate_stage(
    ctx: RunContext,
    pred_dir_or_cam_dir: str | Path,
    split: str,
    name: str,
    sweep: bool = False,
    gt: str | Path | None = None,
    ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score label PNGs (or, with ``sweep``, CAM files over the seeds.sweep thresholds) against GT.

    ``ids`` scores a sample of the split instead of all of it. Writes run_dir/metrics/<name>.json
    (per-class IoU / precision / recall and the means, ``images`` scored and, for a sample,
    ``sampled_from``, the split's size) and prints the table on the main rank. Returns the scores,
    with ``threshold`` and ``sweep`` for CAMs.
    """
    source = Path(pred_dir_or_cam_dir)
    if not source.is_dir():
        raise InputError("folder to evaluate not found", source)
    gt_path = Path(gt) if gt is not None else gt_dir(ctx.dataset)
    split_ids = ctx.dataset.ids(split)
    ids = split_ids if ids is None else list(ids)
    extra: dict[str, Any] = {"name": name, "split": split, "source": str(source), "images": len(ids)}
    if len(ids) < len(split_ids):
        extra["sampled_from"] = len(split_ids)
    threshold = None
    if sweep:  # the sweep reads every CAM once on rank 0; the chosen t is then scored by all ranks
        best = 0.0
        if ctx.dist.is_main:
            best, results = sweep_thresholds(
                source, gt_path, ids, sweep_range(ctx.cfg.seeds.sweep), ctx.dataset.n_cls
            )
            extra["sweep"] = {f"{t:.2f}": m for t, m in results.items()}
        threshold = extra["threshold"] = broadcast_value(best)
    scores = _confusion(ctx, source, ids, gt_path, threshold).scores()
    if ctx.dist.is_main:
        names = ctx.dataset.class_names
        save_json(ctx.layout.metrics(name), scores, names, extra)
        at = "" if threshold is None else f", t={threshold:.2f}"
        of = f" of {len(split_ids)}" if len(ids) < len(split_ids) else ""
        print(f"{name} ({split}, {len(ids)}{of} images{at}):")
        print(format_table(scores, names))
    barrier()
    return {**extra, **scores}
