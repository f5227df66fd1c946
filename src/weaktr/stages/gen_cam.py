"""The gen-cam stage: multi-scale + flip CAMs of a split, sharded over torchrun ranks, resumable.

Images whose CAM file exists are skipped, so a killed stage resumes where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from weaktr.cam.generate import CAM_KINDS, DEFAULT_MAX_PIXELS, CamGenSettings, generate_cams
from weaktr.data.info import DatasetInfo
from weaktr.errors import InputError
from weaktr.models.cam import CAMNet, load_cam_model
from weaktr.runtime.context import RunContext
from weaktr.runtime.distributed import barrier, shard

log = logging.getLogger("weaktr")


def cam_items(
    info: DatasetInfo, split: str, ids: Sequence[str] | None = None
) -> list[tuple[str, Path, list[int]]]:
    """(id, image path, foreground label ids) of every image of ``split``, or of ``ids`` among them."""
    labels = info.labels()
    ids = info.ids(split) if ids is None else list(ids)
    missing = [i for i in ids if i not in labels]
    if missing:
        raise InputError(
            f"no image-level labels for {len(missing)} image(s) of split {split!r} (first: {missing[0]!r})",
            info.path(info.image_labels),
        )
    return [(i, info.image_path(i), labels[i]) for i in ids]


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
    model: CAMNet,
    split: str,
    out_dir: Path,
    scales: Sequence[float],
    kind: str = "default",
    progress: bool = True,
    also: Mapping[str, Path] | None = None,
    ids: Sequence[str] | None = None,
) -> Path:
    """CAMs of ``split`` (or of its images ``ids``) with an already loaded model, prepared here for the
    run's CAM generation policy and sharded over ranks; all ranks return together. ``also`` maps further
    CAM kinds to folders, written from the same forwards."""
    g = ctx.cfg.cam_gen
    settings = CamGenSettings(
        tuple(scales),
        resolve_kind(ctx, kind),
        g.flip,
        DEFAULT_MAX_PIXELS * (4 if ctx.device.type == "cuda" else 1),
        g.num_workers,
    )
    generate_cams(
        model.prepare_inference(ctx.execution.cam_gen),
        shard(cam_items(ctx.dataset, split, ids), ctx.dist.rank, ctx.dist.world),
        out_dir,
        settings,
        ctx.device,
        progress=progress and ctx.dist.is_main,
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
    ids: Sequence[str] | None = None,
) -> Path:
    """Multi-scale CAMs of ``split`` (default data.train_split; only ``ids`` when given) into ``out_dir``
    (default the run's ``cams``); ``also`` maps further kinds to folders, written from the same forwards."""
    split = split or ctx.cfg.data.train_split
    out = Path(out_dir) if out_dir is not None else ctx.layout.cams
    model = load_cam_model(model_path, ctx.device)
    ctx.dataset.check_model_classes(model.config.num_classes, cam=True, checkpoint=model_path)
    ctx.clear_temporaries(out, *(also or {}).values())
    of = "" if ids is None else f"{len(ids)} images of "
    log.info("gen-cam: %s CAMs of %ssplit %r → %s", kind, of, split, out)
    for k, d in (also or {}).items():
        log.info("gen-cam: and %s CAMs → %s", k, d)
    return write_split_cams(ctx, model, split, out, ctx.cfg.cam_gen.scales, kind, also=also, ids=ids)
