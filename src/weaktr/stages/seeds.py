"""The seeds stage: background threshold (fixed, or swept on pixel GT) and the optional label CRF."""

from __future__ import annotations

import logging
from pathlib import Path

from weaktr.cam.seeds import make_seeds
from weaktr.cores import cap_workers, usable_cores
from weaktr.crf import CRFParams
from weaktr.data.palette import voc_palette
from weaktr.errors import InputError
from weaktr.evaluation.metrics import sweep_thresholds
from weaktr.io import write_json
from weaktr.runtime.context import RunContext
from weaktr.runtime.distributed import barrier, broadcast_value, shard
from weaktr.stages.scoring import gt_dir, sweep_range

log = logging.getLogger("weaktr")


def cam_ids(cam_dir: Path) -> list[str]:
    """Ids of the finished CAM files in ``cam_dir`` (hidden temporary files excluded)."""
    if not cam_dir.is_dir():
        raise InputError("CAM folder not found (run gen-cam first)", cam_dir)
    ids = sorted(p.stem for p in cam_dir.glob("*.npz") if not p.name.startswith("."))
    if not ids:
        raise InputError("no CAM files (*.npz) in this folder (run gen-cam first)", cam_dir)
    return ids


def choose_threshold(ctx: RunContext, cam_dir: Path) -> float:
    """seeds.threshold, or with threshold_from 'gt_sweep' the best of seeds.sweep on data.cam_eval_split."""
    seeds = ctx.cfg.seeds
    if seeds.threshold_from == "config":
        return seeds.threshold
    split = ctx.cfg.data.cam_eval_split_or_train
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
            cam_dir, gt_dir(ctx.dataset), ids, sweep_range(seeds.sweep), ctx.dataset.n_cls
        )
        write_json(
            ctx.layout.seed_threshold,
            {"threshold": best, "from": "gt_sweep", "split": split, "miou_by_threshold": results},
        )
        log.info("seeds: threshold %.2f chosen on split %r (mIoU %.4f)", best, split, results[best])
    return broadcast_value(best)


def seeds_stage(ctx: RunContext, cam_dir: str | Path, crf: bool, out_dir: str | Path) -> Path:
    """Seed label PNGs (palette of the data set) from every CAM file in ``cam_dir``; CRF optional."""
    cam_dir, out = Path(cam_dir), Path(out_dir)
    ctx.clear_temporaries(out)
    threshold = choose_threshold(ctx, cam_dir)
    sc = ctx.cfg.seeds
    params = CRFParams.build("label", sc.crf_preset, sc.crf_params.set_values()) if crf else None
    ids = shard(cam_ids(cam_dir), ctx.dist.rank, ctx.dist.world)
    workers = cap_workers(sc.workers or usable_cores(), "seeds.workers")  # 0 = every usable core
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
