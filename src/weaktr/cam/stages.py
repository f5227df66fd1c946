"""Phase-1 stages shared by the stage commands and ``weaktr run``: CAMs, seeds and their evaluation.

Each stage takes a :class:`~weaktr.commands.common.RunContext`, shards its images over torchrun
ranks, skips outputs that already exist (so a killed stage resumes) and returns where it wrote.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from weaktr.cam.generate import CAM_KINDS, DEFAULT_MAX_PIXELS, generate_cams, load_cams
from weaktr.cam.seeds import make_seeds, seed_from_cams
from weaktr.commands.common import RunContext
from weaktr.crf import CRFParams
from weaktr.data.dataset import DatasetInfo, voc_palette
from weaktr.engine.distributed import barrier, is_distributed, shard
from weaktr.errors import InputError
from weaktr.evaluation.metrics import (
    ConfusionMatrix,
    format_table,
    read_label_png,
    save_json,
    sweep_thresholds,
)
from weaktr.io import write_json
from weaktr.models.cam import load_cam_model
from weaktr.models.timm_factory import normalisation

log = logging.getLogger("weaktr")
SWEEP_STEP = 0.01


def sweep_range(bounds: Sequence[float]) -> list[float]:
    """The thresholds of a config ``sweep: [lo, hi]``: lo..hi inclusive in steps of 0.01."""
    if len(bounds) != 2 or bounds[0] > bounds[1]:
        raise InputError(f"a threshold sweep is [low, high] with low <= high, got {list(bounds)}")
    n = round((bounds[1] - bounds[0]) / SWEEP_STEP)
    return [round(bounds[0] + SWEEP_STEP * i, 4) for i in range(n + 1)]


def cam_items(info: DatasetInfo, split: str) -> list[tuple[str, Path, list[int]]]:
    """(id, image path, foreground label ids) of every image of ``split``."""
    labels = info.labels()
    ids = info.ids(split)
    missing = [i for i in ids if i not in labels]
    if missing:
        raise InputError(
            f"no image-level labels for {len(missing)} image(s) of split {split!r} (first: {missing[0]!r})",
            info.path(info.image_labels),
        )
    return [(i, info.image_path(i), labels[i]) for i in ids]


def gt_dir(info: DatasetInfo) -> Path:
    """The ground-truth mask folder; GT-based steps fail clearly on a data set without one."""
    if info.masks is None:
        raise InputError(f"data set {info.name!r} has no ground-truth masks to evaluate against")
    return info.path(info.masks)


def cam_amp(ctx: RunContext) -> bool:
    """bf16 for CAM generation: on CUDA when cam_gen.amp, on the CPU only with amp_cpu as well."""
    return ctx.cfg.cam_gen.amp and (ctx.device.type == "cuda" or ctx.cfg.amp_cpu)


def resolve_kind(ctx: RunContext, kind: str) -> str:
    """'default' follows cam_gen.refine when it is set, else the model's own refine flag."""
    if kind not in CAM_KINDS:
        raise InputError(f"unknown CAM kind {kind!r}; choose one of {', '.join(CAM_KINDS)}")
    refine = ctx.cfg.cam_gen.refine
    if kind == "default" and refine is not None:
        return "refined" if refine else "fused"
    return kind


def write_split_cams(
    ctx: RunContext,
    model: Any,
    split: str,
    out_dir: Path,
    scales: Sequence[float],
    kind: str = "default",
    progress: bool = True,
    also: Mapping[str, Path] | None = None,
) -> Path:
    """CAMs of ``split`` with an already loaded model, sharded over ranks; all ranks return together.

    ``also`` maps further CAM kinds to folders, written from the same forwards."""
    mean, std = normalisation(model.config.backbone)
    generate_cams(
        model,
        cam_items(ctx.dataset, split),
        out_dir,
        scales,
        mean,
        std,
        ctx.device,
        amp=cam_amp(ctx),
        rank=ctx.dist.rank,
        world=ctx.dist.world,
        progress=progress,
        kind=resolve_kind(ctx, kind),
        flip=ctx.cfg.cam_gen.flip,
        max_pixels=DEFAULT_MAX_PIXELS * (4 if ctx.device.type == "cuda" else 1),
        num_workers=ctx.cfg.cam_gen.num_workers,
        also={resolve_kind(ctx, k): d for k, d in (also or {}).items()},
    )
    barrier()
    return out_dir


def gen_cam_stage(
    ctx: RunContext,
    model_path: str | Path,
    split: str | None = None,
    kind: str = "default",
    out_dir: str | Path | None = None,
    also: Mapping[str, Path] | None = None,
) -> Path:
    """Multi-scale CAMs of ``split`` (default data.train_split) into ``out_dir`` (default run_dir/cams);
    ``also`` maps further kinds to folders, written from the same forwards."""
    split = split or ctx.cfg.data.train_split
    out = Path(out_dir) if out_dir is not None else ctx.run_dir / "cams"
    model = load_cam_model(model_path, ctx.device)
    if model.config.num_classes != ctx.dataset.num_fg:
        raise InputError(
            f"the CAM model has {model.config.num_classes} classes but data set "
            f"{ctx.dataset.name!r} has {ctx.dataset.num_fg}",
            model_path,
        )
    log.info("gen-cam: %s CAMs of split %r → %s", kind, split, out)
    for k, d in (also or {}).items():
        log.info("gen-cam: and %s CAMs → %s", k, d)
    return write_split_cams(ctx, model, split, out, ctx.cfg.cam_gen.scales, kind, also=also)


def cam_ids(cam_dir: Path) -> list[str]:
    """Ids of the finished CAM files in ``cam_dir`` (hidden temporary files excluded)."""
    if not cam_dir.is_dir():
        raise InputError("CAM folder not found (run gen-cam first)", cam_dir)
    ids = sorted(p.stem for p in cam_dir.glob("*.npz") if not p.name.startswith("."))
    if not ids:
        raise InputError("no CAM files (*.npz) in this folder (run gen-cam first)", cam_dir)
    return ids


def _broadcast(value: float) -> float:
    """Rank 0's value on every rank (a no-op in one process)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def choose_threshold(ctx: RunContext, cam_dir: Path) -> float:
    """seeds.threshold, or with threshold_from 'gt_sweep' the best of seeds.sweep on data.cam_eval_split."""
    seeds = ctx.cfg.seeds
    if seeds.threshold_from == "config":
        return seeds.threshold
    split = ctx.cfg.data.cam_eval_split or ctx.cfg.data.train_split
    ids = ctx.dataset.ids(split)
    missing = sorted(set(ids) - set(cam_ids(cam_dir)))
    if missing:
        raise InputError(
            f"the threshold sweep needs CAMs of split {split!r}; {len(missing)} missing "
            f"(first: {missing[0]!r})",
            cam_dir,
        )
    best = 0.0
    if ctx.dist.is_main:  # one rank reads the CAMs; the others get its choice
        best, results = sweep_thresholds(
            cam_dir, gt_dir(ctx.dataset), ids, sweep_range(seeds.sweep), ctx.dataset.num_classes
        )
        write_json(
            ctx.run_dir / "metrics" / "seed_threshold.json",
            {"threshold": best, "from": "gt_sweep", "split": split, "miou_by_threshold": results},
        )
        log.info("seeds: threshold %.2f chosen on split %r (mIoU %.4f)", best, split, results[best])
    return _broadcast(best)


def seeds_stage(ctx: RunContext, cam_dir: str | Path, crf: bool, out_dir: str | Path) -> Path:
    """Seed label PNGs (palette of the data set) from every CAM file in ``cam_dir``; CRF optional."""
    cam_dir, out = Path(cam_dir), Path(out_dir)
    threshold = choose_threshold(ctx, cam_dir)
    sc = ctx.cfg.seeds
    params = CRFParams.preset(f"{sc.crf_preset}_label", **sc.crf_params.set_values()) if crf else None
    ids = shard(cam_ids(cam_dir), ctx.dist.rank, ctx.dist.world)
    workers = ctx.cfg.seeds.workers or len(os.sched_getaffinity(0))
    log.info("seeds: t=%.2f, CRF %s, %d workers → %s", threshold, "on" if crf else "off", workers, out)
    make_seeds(
        cam_dir,
        ids,
        out,
        threshold,
        params,
        image_paths={i: ctx.dataset.image_path(i) for i in ids} if crf else None,
        palette=voc_palette() if ctx.dataset.palette == "voc" else None,
        workers=workers,
        progress=ctx.dist.is_main,
    )
    barrier()
    return out


def _confusion(
    ctx: RunContext, source: Path, ids: Sequence[str], gt: Path, threshold: float | None
) -> ConfusionMatrix:
    """Counts of this rank's share of ``ids``, summed over ranks; CAMs when a threshold is given."""
    cm = ConfusionMatrix(ctx.dataset.num_classes)
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
) -> dict[str, Any]:
    """Score label PNGs (or, with ``sweep``, CAM files over the seeds.sweep thresholds) against GT.

    Writes run_dir/metrics/<name>.json (per-class IoU / precision / recall and the means) and prints
    the table on the main rank. Returns the scores, with ``threshold`` and ``sweep`` for CAMs.
    """
    source = Path(pred_dir_or_cam_dir)
    if not source.is_dir():
        raise InputError("folder to evaluate not found", source)
    gt_path = Path(gt) if gt is not None else gt_dir(ctx.dataset)
    ids = ctx.dataset.ids(split)
    extra: dict[str, Any] = {"name": name, "split": split, "source": str(source), "images": len(ids)}
    threshold = None
    if sweep:  # the sweep reads every CAM once on rank 0; the chosen t is then scored by all ranks
        best = 0.0
        if ctx.dist.is_main:
            best, results = sweep_thresholds(
                source, gt_path, ids, sweep_range(ctx.cfg.seeds.sweep), ctx.dataset.num_classes
            )
            extra["sweep"] = {f"{t:.2f}": m for t, m in results.items()}
        threshold = extra["threshold"] = _broadcast(best)
    scores = _confusion(ctx, source, ids, gt_path, threshold).scores()
    if ctx.dist.is_main:
        names = ctx.dataset.class_names
        save_json(ctx.run_dir / "metrics" / f"{name}.json", scores, names, extra)
        at = "" if threshold is None else f", t={threshold:.2f}"
        print(f"{name} ({split}, {len(ids)} images{at}):")
        print(format_table(scores, names))
    barrier()
    return {**extra, **scores}
