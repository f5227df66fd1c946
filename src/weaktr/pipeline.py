"""``weaktr run``: every stage of WeakTr in order, into one run directory, resumable.

Each stage writes its outputs (atomically, file by file) and then a marker ``stages/<name>.json``.
A stage whose marker exists is skipped, so a killed run resumes at the stage it was in, and the
stages themselves skip the per-image files they already wrote. ``force`` redoes named stages from
scratch (their outputs are removed first), and with them every stage that reads their outputs.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weaktr.choices import STAGE_NAMES
from weaktr.config import RunConfig
from weaktr.data.sampling import spread
from weaktr.errors import InputError
from weaktr.evaluation.lost_classes import check_lost_classes
from weaktr.extras import require
from weaktr.io import write_json
from weaktr.report.render import build_report
from weaktr.runtime.context import RunContext
from weaktr.runtime.distributed import barrier
from weaktr.runtime.layout import RunLayout, nocrf_dir
from weaktr.stages.gen_cam import gen_cam_stage
from weaktr.stages.predict import predict_split
from weaktr.stages.scoring import evaluate_stage
from weaktr.stages.seeds import seeds_stage
from weaktr.stages.train_cam import train_cam
from weaktr.stages.train_seg import train_seg
from weaktr.stages.views import views_stage

log = logging.getLogger(__name__)
CAM_VARIANTS = ("coarse", "fused", "refined")  # scored for the report besides the CAMs in use


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: its name, the folders it writes, how to run it, and the stages
    whose outputs it reads (so that redoing one of those redoes it too)."""

    name: str
    outputs: Callable[[RunLayout], tuple[Path, ...]]
    run: Callable[[RunContext], dict[str, Any] | None]
    reads: tuple[str, ...] = ()


def _has_gt(ctx: RunContext) -> bool:
    return ctx.dataset.masks is not None


def _train_cam(ctx: RunContext) -> dict[str, Any]:
    return {"model": str(train_cam(ctx))}


def _gen_cam(ctx: RunContext) -> dict[str, Any]:
    lay = ctx.layout
    out = gen_cam_stage(ctx, lay.cam_model, split=ctx.cfg.data.train_split, kind="default", out_dir=lay.cams)
    return {"cams": str(out)}


def _other_refine_kind(ctx: RunContext) -> str:
    """The CAM variant the pipeline does not use, evaluated for the report (with vs without PA)."""
    return "fused" if ctx.cfg.refine else "refined"


def _cam_variant_sample(ctx: RunContext, split: str) -> list[str]:
    """The images the report-only CAM variants are made and scored on (report.cam_variant_images)."""
    n = ctx.cfg.report.cam_variant_images
    if n is not None and n < 1:
        raise InputError(f"report.cam_variant_images must be a positive number of images or null, got {n}")
    return spread(ctx.dataset.ids(split), n)


def _eval_cams(ctx: RunContext) -> dict[str, Any]:
    """Score coarse, used and alternative CAMs on the GT split with a threshold sweep (for reporting).

    The used CAMs exist for every image already; coarse and the other refine variant only feed the
    report, so they are generated and scored on an evenly spread sample of report.cam_variant_images.
    """
    if not _has_gt(ctx):
        return {"skipped": "the data set has no ground-truth masks"}
    lay, split = ctx.layout, ctx.cfg.data.cam_eval_split_or_train
    results = {"cam_fine": evaluate_stage(ctx, lay.cams, split, "cam_fine", sweep=True)}
    other = _other_refine_kind(ctx)
    dirs = {kind: lay.cams_of(kind) for kind in ("coarse", other)}
    sample = _cam_variant_sample(ctx, split)
    gen_cam_stage(
        ctx,
        lay.cam_model,
        split=split,
        kind="coarse",
        out_dir=dirs["coarse"],
        also={other: dirs[other]},
        ids=sample,
    )
    for kind, cams in dirs.items():
        results[f"cam_{kind}"] = evaluate_stage(ctx, cams, split, f"cam_{kind}", sweep=True, ids=sample)
    return {k: _headline(v) for k, v in results.items()}


def _seeds(ctx: RunContext) -> dict[str, Any]:
    out: dict[str, Any] = {}
    split = ctx.cfg.data.cam_eval_split_or_train
    for crf in (False, True) if ctx.cfg.seeds.crf else (False,):
        seed_dir = ctx.layout.seeds(crf)
        seeds_stage(ctx, ctx.layout.cams, crf=crf, out_dir=seed_dir)
        if _has_gt(ctx):
            out[seed_dir.name] = _headline(evaluate_stage(ctx, seed_dir, split, seed_dir.name))
    return out


def _seed_labels(ctx: RunContext) -> Path:
    """The seeds the segmenter trains on: after the label CRF when seeds.crf is on."""
    return ctx.layout.seeds(ctx.cfg.seeds.crf)


def _train_seg(ctx: RunContext) -> dict[str, Any]:
    gt = ctx.dataset.path(ctx.dataset.masks) if _has_gt(ctx) else None
    return {"model": str(train_seg(ctx, _seed_labels(ctx), gt_dir=gt))}


def _predict(ctx: RunContext) -> dict[str, Any]:
    """Predict each of predict.splits: a train-side split (``RunConfig.train_side_splits``) gives pseudo
    masks, any other the segmenter's score."""
    out: dict[str, Any] = {}
    for split in ctx.cfg.predict.splits:
        pred_dir = predict_split(
            ctx, ctx.layout.seg_model, split, ctx.layout.pred(split), crf=ctx.cfg.predict.crf
        )
        is_train = split in ctx.cfg.train_side_splits
        if is_train and ctx.dist.is_main:
            seeded = set(ctx.dataset.ids(ctx.cfg.data.train_split))  # the images that have seeds
            ids = [i for i in ctx.dataset.ids(split) if i in seeded]
            out["lost_classes"] = check_lost_classes(
                _seed_labels(ctx), pred_dir, ids, ctx.dataset.class_names
            )
        if not _has_gt(ctx) or split not in ctx.dataset.splits:
            continue
        name = "pseudo_masks" if is_train else "segmenter"
        eval_split = ctx.cfg.data.cam_eval_split_or_train if is_train else split
        out[name] = _headline(evaluate_stage(ctx, pred_dir, eval_split, name))
        if ctx.cfg.predict.crf:
            nocrf = nocrf_dir(pred_dir)
            out[f"{name}_nocrf"] = _headline(evaluate_stage(ctx, nocrf, eval_split, f"{name}_nocrf"))
    return out


def _report(ctx: RunContext) -> dict[str, Any]:
    if not ctx.cfg.report.enabled:
        return {"skipped": "report.enabled is false"}
    return {"report": str(build_report(ctx.run_dir))}


STAGES: tuple[Stage, ...] = (
    Stage("train_cam", lambda lay: (lay.cam,), _train_cam),
    Stage("gen_cam", lambda lay: (lay.cams,), _gen_cam, ("train_cam",)),
    Stage(
        "eval_cams",
        lambda lay: tuple(lay.cams_of(k) for k in CAM_VARIANTS),
        _eval_cams,
        ("train_cam", "gen_cam"),
    ),
    Stage("views", lambda lay: (lay.views,), views_stage, ("train_cam",)),
    Stage("seeds", lambda lay: (lay.seeds(False), lay.seeds(True)), _seeds, ("gen_cam",)),
    Stage("train_seg", lambda lay: (lay.seg,), _train_seg, ("seeds",)),
    Stage("predict", lambda lay: (lay.pred_root,), _predict, ("train_seg",)),
    Stage("report", lambda lay: (lay.report_dir,), _report, tuple(STAGE_NAMES[:-1])),
)
PHASE1_STAGES = ("train_cam", "gen_cam", "eval_cams", "views", "seeds")


def _headline(scores: dict[str, Any]) -> dict[str, Any]:
    """The numbers a summary needs from a metrics dict: mIoU (+ the chosen threshold when swept)."""
    keep = ("miou", "mean_precision", "mean_recall", "threshold")
    return {k: scores[k] for k in keep if k in scores}


def stages_to_redo(force: Sequence[str]) -> list[str]:
    """The forced stages and every stage that reads their outputs, directly or not, in pipeline order:
    a segmenter trained on seeds that were redone is stale, and so are its predictions."""
    redo = set(force)
    for stage in STAGES:  # in order, so one pass closes the chain
        if redo.intersection(stage.reads):
            redo.add(stage.name)
    return [s.name for s in STAGES if s.name in redo]


def check_stage_names(names: Sequence[str]) -> None:
    """Reject unknown stage names, listing the valid ones."""
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown:
        raise InputError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGE_NAMES)}")


def require_extras(cfg: RunConfig, until: str | None = None) -> None:
    """Refuse, before the first stage, a run whose stages up to ``until`` need a missing extra.

    The label CRF (``seeds.crf``) and the prediction CRF (``predict.crf``) need ``crf``, the report
    (``report.enabled``) needs ``viz``; TensorBoard is optional (no event files without ``tb``).
    """
    reached = STAGE_NAMES[: STAGE_NAMES.index(until) + 1] if until in STAGE_NAMES else STAGE_NAMES
    needs = (
        ("seeds", cfg.seeds.crf, "crf", "the seeds' label CRF (seeds.crf=false skips it)"),
        ("predict", cfg.predict.crf, "crf", "the prediction CRF (predict.crf=false skips it)"),
        ("report", cfg.report.enabled, "viz", "the report (report.enabled=false skips it)"),
    )
    for stage, wanted, extra, why in needs:
        if wanted and stage in reached:
            require(extra, why)


def run_pipeline(ctx: RunContext, force: Sequence[str] = (), until: str | None = None) -> dict[str, Any]:
    """Run (or resume) every stage up to ``until``; returns and writes ``summary.json``."""
    check_stage_names([*force, *([until] if until else [])])
    require_extras(ctx.cfg, until)
    run_dir, t_start = ctx.run_dir, time.time()
    redo = stages_to_redo(force)
    if redo and ctx.dist.is_main:  # before any stage runs, also past --until: no stale result stays
        if later := [name for name in redo if name not in force]:
            log.info("--force also redoes the stages that read its outputs: %s", ", ".join(later))
        for stage in (s for s in STAGES if s.name in redo):
            RunLayout(run_dir).stage_marker(stage.name).unlink(missing_ok=True)
            for path in stage.outputs(RunLayout(run_dir)):
                shutil.rmtree(path, ignore_errors=True)
    barrier()
    for stage in STAGES:
        marker = RunLayout(run_dir).stage_marker(stage.name)
        if marker.is_file():
            log.info("stage %s: done before, skipped (--force %s redoes it)", stage.name, stage.name)
        else:
            log.info("stage %s: running", stage.name)
            t0 = time.time()
            result = stage.run(ctx) or {}
            if ctx.dist.is_main:
                write_json(marker, {"stage": stage.name, "seconds": time.time() - t0, "result": result})
            barrier()
        if stage.name == until:
            break
    summary = write_summary(run_dir, time.time() - t_start) if ctx.dist.is_main else {}
    return summary


def write_summary(run_dir: Path, seconds_this_call: float) -> dict[str, Any]:
    """``summary.json``: what the stages found and the seconds each took.

    A stage result holds paths and notes (strings) beside its findings (scores, the lost-class list);
    the summary keeps the findings.
    """
    summary: dict[str, Any] = {}
    stage_seconds: dict[str, float] = {}
    for name in STAGE_NAMES:
        marker = RunLayout(run_dir).stage_marker(name)
        if not marker.is_file():
            continue
        data = json.loads(marker.read_text())
        stage_seconds[name] = round(float(data["seconds"]), 1)
        for key, value in data.get("result", {}).items():
            if not isinstance(value, str):
                summary[key] = value
    summary["seconds"] = round(sum(stage_seconds.values()), 1)
    summary["stage_seconds"] = stage_seconds
    summary["seconds_this_call"] = round(seconds_this_call, 1)
    write_json(RunLayout(run_dir).summary, summary)
    return summary


SUMMARY_ROWS = (
    ("cam_coarse", "coarse CAM (train, best threshold)"),
    ("cam_fine", "fine CAM used for seeds (train, best threshold)"),
    ("cam_refined", "fine CAM with patch-attention refinement"),
    ("cam_fused", "fine CAM without patch-attention refinement"),
    ("seeds", "seeds (train)"),
    ("seeds_crf", "seeds + label CRF (train)"),
    ("pseudo_masks_nocrf", "pseudo masks before CRF (train)"),
    ("pseudo_masks", "pseudo masks (train)"),
    ("segmenter_nocrf", "segmenter before CRF (val)"),
    ("segmenter", "segmenter (val)"),
)


def format_summary(summary: dict[str, Any]) -> str:
    """The printed mIoU table of a run."""
    lines = [f"{'artefact':<52} {'mIoU':>6}", "-" * 59]
    for key, label in SUMMARY_ROWS:
        if key in summary:
            extra = f"  (t = {summary[key]['threshold']:.2f})" if "threshold" in summary[key] else ""
            lines.append(f"{label:<52} {summary[key]['miou']:>6.3f}{extra}")
    if summary.get("lost_classes"):
        lines.append(
            f"{'classes the segmenter lost (no GT needed)':<52} {', '.join(summary['lost_classes'])}"
        )
    lines.append(f"{'total seconds':<52} {summary.get('seconds', 0):>6.0f}")
    return "\n".join(lines)
