"""Ablations of the paper's claims and of the authors' variants on the demo data (``weaktr ablate``).

Each variant is the base config plus overrides. Variants that change only phase 2 reuse the base
run's phase-1 outputs (linked, not recomputed), so the comparison isolates the decoder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weaktr.config import load_config
from weaktr.errors import InputError
from weaktr.io import atomic_write, write_json
from weaktr.pipeline import PHASE1_STAGES, STAGES, require_extras, run_pipeline
from weaktr.runtime.context import open_run
from weaktr.runtime.layout import RunLayout


@dataclass(frozen=True)
class Variant:
    """One ablation: a name, the paper table it checks, its overrides, and whether phase 1 changes.

    Phase-1 variants stop after the seeds; phase-2 variants reuse the base run's seeds.
    """

    name: str
    claim: str
    overrides: tuple[str, ...]
    phase1: bool = False


def variants(tau: float, cell: int) -> tuple[Variant, ...]:
    """The ablations, relative to the base config's τ and cell size S."""
    return (
        Variant("base", "the demo config", ()),
        Variant(
            "fusion_mean",
            "Table IV: plain mean of the attention maps instead of AAF",
            ("cam_model.fusion=mean",),
            phase1=True,
        ),
        Variant(
            "fusion_randweight",
            "the authors' AAF_RandWeight: a fixed random vector instead of the attention features",
            ("cam_model.fusion=randweight",),
            phase1=True,
        ),
        Variant(
            "aaf_reduction_8",
            "AAF at the documented reduction 8 (on the demo's 8 maps: one hidden unit, not 4)",
            ("cam_model.aaf_reduction=8",),
            phase1=True,
        ),
        Variant(
            "cam_no_detach",
            "spec §6.5: the paper's end-to-end training (the fine-CAM loss reaches the backbone)",
            ("cam_model.detach=false",),
            phase1=True,
        ),
        Variant(
            "gc_naive",
            "Table VII: naive decoder (plain CE, no gradient clipping)",
            ("seg_train.gc.mode=none",),
        ),
        Variant("tau_0", "Table XIV: τ = 0 (clipping never starts)", ("seg_train.gc.tau=0.0",)),
        Variant(
            "tau_999", "Table XIV: τ = 999.9 (clipping from the first step)", ("seg_train.gc.tau=999.9",)
        ),
        Variant(f"cell_{cell // 2}", f"Table VIII: S = {cell // 2}", (f"seg_train.gc.cell={cell // 2}",)),
        Variant(f"cell_{cell * 2}", f"Table VIII: S = {cell * 2}", (f"seg_train.gc.cell={cell * 2}",)),
    )


def _link_phase1(base_dir: Path, run_dir: Path) -> None:
    """Reuse the base run's phase-1 outputs and stage markers in a phase-2-only variant."""
    base, run = RunLayout(base_dir), RunLayout(run_dir)
    run.stages.mkdir(parents=True, exist_ok=True)
    for stage in (s for s in STAGES if s.name in PHASE1_STAGES):
        for src in stage.outputs(base):
            dst = run.root / src.relative_to(base.root)
            if src.exists() and not dst.exists():
                os.symlink(src.resolve(), dst, target_is_directory=True)
        marker = base.stage_marker(stage.name)
        if not marker.is_file():
            raise InputError(f"the base run has not finished stage {stage.name}", base_dir)
        run.stage_marker(stage.name).write_text(marker.read_text())


def run_ablations(
    config: str, out_dir: Path, overrides: list[str], only: list[str] | None = None
) -> list[dict]:
    """Run the base and every variant (or ``only`` those), then write ablation.json and ablation.md."""
    base_cfg = load_config(config, overrides)
    table = variants(base_cfg.seg_train.gc.tau, base_cfg.seg_train.gc.cell)
    names = [v.name for v in table]
    if only and (unknown := [n for n in only if n not in names]):
        raise InputError(f"unknown ablation(s) {unknown}; choose from {', '.join(names)}")
    require_extras(load_config(config, [*overrides, "report.enabled=false"]))  # before the first run
    rows = []
    for v in table:
        if only and v.name not in only and v.name != "base":
            continue
        run_dir = out_dir / v.name
        extra = [f"run_dir={run_dir}", "report.enabled=false"]
        if v.name != "base":
            extra.append(f"predict.splits=[{base_cfg.data.val_split}]")
        cfg = load_config(config, [*overrides, *v.overrides, *extra])
        if not v.phase1 and v.name != "base":
            _link_phase1(out_dir / "base", run_dir)
        # a phase-1 variant is compared on its CAMs and seeds (the paper's Table IV measure)
        summary = run_pipeline(open_run(cfg), until="seeds" if v.phase1 else None)
        rows.append(
            {
                "variant": v.name,
                "claim": v.claim,
                "overrides": list(v.overrides),
                **{
                    k: summary[k]["miou"]
                    for k in ("cam_fine", "seeds_crf", "segmenter_nocrf", "segmenter")
                    if k in summary
                },
                "seconds": summary.get("seconds"),
            }
        )
    write_json(out_dir / "ablation.json", rows)
    with atomic_write(out_dir / "ablation.md") as tmp:
        tmp.write_text(format_table(rows))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the ablation results (mIoU on the demo data)."""
    cols = ("cam_fine", "seeds_crf", "segmenter_nocrf", "segmenter")
    lines = [
        "| variant | what it checks | overrides | fine CAM | seeds+CRF | segmenter | segmenter+CRF |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vals = " | ".join(f"{r[c]:.3f}" if c in r else "–" for c in cols)
        lines.append(f"| {r['variant']} | {r['claim']} | {' '.join(r['overrides']) or '–'} | {vals} |")
    return "\n".join(lines) + "\n"
