"""The paper's packaged configs at their real sizes, on a few coco-mini photos: seconds and peak memory.

Every run goes through the command line a user types (``weaktr prepare``, ``weaktr run``, ``weaktr
export``) in a subprocess, with random weights and one short epoch per phase, but every size as the
config has it: 224 CAM crops with the config's RandAugment, its CAM scales, 480 segmenter crops and
voc's 6 scales x flip with the two-layer ensemble and CRF.

- ``voc`` runs every stage, then ``weaktr export`` of its pseudo masks.
- ``voc_vit_small``, ``voc_dinov2_small``, ``voc_eva02_small`` change only the segmenter, so they start
  from a copy of voc's phase 1 and run ``train_seg`` and a one-scale ``predict`` of val.
- ``coco`` (90 class tokens, 91-way segmenter) runs its own phase 1 on a cut of the COCO JSON, then
  the same.

    python benchmarks/paper_configs.py [--configs voc coco ...] [--work DIR]

writes ``benchmarks/results/paper_configs_<time>.json`` and prints the table of docs/benchmarks.md.
``tests/test_paper_configs.py`` runs the same plan and checks what each run left.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
COCO_MINI = Path(os.environ.get("WEAKTR_COCO_MINI", HERE.parents[1] / "shared" / "data" / "coco-mini"))

# coco-mini photos of VOC's own size (~500 x 333) with VOC classes: a handful of training steps at
# batch 2, and 6-scale prediction of a VOC-sized photo
VOC_TRAIN = ("000000000536", "000000193271", "000000000359", "000000328757")
VOC_VAL = ("000000020992",)
# one short epoch per phase with random weights (no hub here); every size stays the config's own
SHORT = (
    "cam_train.pretrained=null",
    "seg_train.pretrained=null",
    "cam_train.epochs=1",
    "cam_train.batch_size=2",
    "seg_train.epochs=1",
    "seg_train.batch_size=2",
    "report.n_examples=2",
)
ONE_SCALE = ("predict.scales=[1.0]", "predict.splits=[val]")
PHASE1 = ("train_cam", "gen_cam", "eval_cams", "views", "seeds")
SEGMENTER_ONLY = ("voc_vit_small", "voc_dinov2_small", "voc_eva02_small")
CONFIGS = ("voc", *SEGMENTER_ONLY, "coco")

# runs the command and writes the peak resident memory of its largest process (itself or a worker)
# and the CPU seconds of all of them
_PEAK = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[2:]).returncode\n"
    "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "open(sys.argv[1], 'w').write(f'{r.ru_maxrss} {r.ru_utime + r.ru_stime}')\n"
    "sys.exit(code)\n"
)


def weaktr(args: list[str], work: Path, log: Path) -> dict[str, Any]:
    """Run ``python -m weaktr ARGS`` offline in ``work``: wall and CPU seconds, peak MB, exit code."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    peak = log.with_suffix(".peak")
    t0 = time.time()
    with log.open("w") as out:
        code = subprocess.run(
            [sys.executable, "-c", _PEAK, str(peak), sys.executable, "-m", "weaktr", *args],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        ).returncode
    maxrss, cpu = peak.read_text().split() if peak.is_file() else (None, None)
    return {
        "args": args,
        "seconds": round(time.time() - t0, 1),
        "cpu_seconds": None if cpu is None else round(float(cpu), 1),
        "peak_mb": None if maxrss is None else round(int(maxrss) / 1024),
        "exit_code": code,
        "log": str(log),
    }


def _link_voc(root: Path, ids: list[str]) -> None:
    for sub, ext in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in ids:
            (root / sub / f"{i}{ext}").symlink_to(COCO_MINI / sub / f"{i}{ext}")


def voc_folder(work: Path) -> Path:
    """A VOC 2012 folder of the chosen photos (links into coco-mini); train_aug lists the train ids."""
    root = work / "VOC2012"
    _link_voc(root, [*VOC_TRAIN, *VOC_VAL])
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for name, ids in (("train", VOC_TRAIN), ("train_aug", VOC_TRAIN), ("val", VOC_VAL)):
        (lists / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def coco_annotations(work: Path, n_train: int = 4, n_val: int = 1) -> list[Path]:
    """instances_{train,val}2017.json cut to the smallest photos with objects (few training steps)."""
    out = []
    for split, n in (("train", n_train), ("val", n_val)):
        data = json.loads((COCO_MINI / "annotations" / f"instances_{split}2017.json").read_text())
        with_objects = {a["image_id"] for a in data["annotations"] if not a.get("iscrowd")}
        images = sorted(
            (
                im
                for im in data["images"]
                if im["id"] in with_objects and min(im["width"], im["height"]) >= 300
            ),
            key=lambda im: (im["width"] * im["height"], im["id"]),
        )[:n]
        keep = {im["id"] for im in images}
        data["images"] = images
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
        path = work / "annotations" / f"instances_{split}2017.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        out.append(path)
    return out


def copy_phase1(src: Path, dst: Path) -> None:
    """voc's phase-1 outputs and stage markers into ``dst``, so a segmenter-only config resumes there."""
    dst.mkdir(parents=True)
    phase1 = (
        "cam",
        "cams",
        "cams_coarse",
        "cams_fused",
        "cams_refined",
        "views",
        "seeds",
        "seeds_crf",
        "metrics",
    )
    for sub in phase1:
        if (src / sub).exists():
            shutil.copytree(src / sub, dst / sub, symlinks=True)
    (dst / "stages").mkdir()
    for stage in PHASE1:
        shutil.copy2(src / "stages" / f"{stage}.json", dst / "stages" / f"{stage}.json")


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """What each stage took, from the markers the pipeline writes."""
    return {
        p.stem: round(json.loads(p.read_text())["seconds"], 1)
        for p in sorted((run_dir / "stages").glob("*.json"))
    }


def run_plan(work: Path, configs: tuple[str, ...] = CONFIGS) -> dict[str, Any]:
    """Prepare the data (once per work folder) and run each config as planned; one record per command."""
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    runs = work / "runs"
    results: dict[str, Any] = {}
    needs_voc = any(c != "coco" for c in configs)
    if needs_voc and not (work / "data" / "voc" / "dataset.yaml").is_file():
        root = voc_folder(work)
        results["prepare voc"] = weaktr(
            ["prepare", "voc", "--root", str(root), "--out", "data/voc"], work, logs / "prepare_voc.log"
        )
    if "coco" in configs and not (work / "data" / "coco" / "dataset.yaml").is_file():
        ann = coco_annotations(work)
        args = ["prepare", "coco", "--annotations", *map(str, ann), "--images", str(COCO_MINI / "JPEGImages")]
        results["prepare coco"] = weaktr([*args, "--out", "data/coco"], work, logs / "prepare_coco.log")
    for config in configs:
        run_dir = runs / config
        if config in SEGMENTER_ONLY:
            if not (runs / "voc" / "stages" / "seeds.json").is_file():
                raise SystemExit(
                    f"{config} starts from voc's phase 1: run voc first (--configs voc {config})"
                )
            copy_phase1(runs / "voc", run_dir)
        extra = () if config == "voc" else (*ONE_SCALE, "--until", "predict")
        if config == "coco":
            extra = (*extra, "data.dataset=data/coco/dataset.yaml")
        rec = weaktr(["run", config, "--run-dir", str(run_dir), *SHORT, *extra], work, logs / f"{config}.log")
        rec["stage_seconds"] = stage_seconds(run_dir) if (run_dir / "stages").is_dir() else {}
        results[config] = rec
        if config == "voc" and rec["exit_code"] == 0:
            out = work / "export" / "voc_pseudo_masks.json"
            results["voc export"] = weaktr(
                ["export", "--run", str(run_dir), "--out", str(out)], work, logs / "export.log"
            )
    return results


def table(results: dict[str, Any]) -> str:
    """The markdown table of docs/benchmarks.md: one row per command, stage seconds and peak memory."""
    stages = ("train_cam", "gen_cam", "eval_cams", "views", "seeds", "train_seg", "predict", "report")
    lines = [
        "| run | " + " | ".join(stages) + " | wall s | CPU s | peak MB | exit |",
        "|---|" + "---:|" * (len(stages) + 4),
    ]
    for name, rec in results.items():
        if not isinstance(rec, dict) or "exit_code" not in rec:
            continue
        secs = rec.get("stage_seconds", {})
        copied = name in SEGMENTER_ONLY
        cells = [
            "(voc's)" if copied and s in PHASE1 else (f"{secs[s]:.0f}" if s in secs else "–") for s in stages
        ]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {rec['seconds']:.0f} | {rec['cpu_seconds']:.0f} | {rec['peak_mb']} | {rec['exit_code']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--work", type=Path, help="working folder (default: a new temporary one, kept)")
    parser.add_argument(
        "--out", type=Path, help="result JSON (default benchmarks/results/paper_configs_<time>.json)"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from common import machine

    work = args.work or Path(f"/tmp/weaktr-paper-configs-{time.strftime('%Y%m%d-%H%M%S')}")
    t0, load_before = time.time(), os.getloadavg()
    results = run_plan(work, tuple(args.configs))
    record = {
        "machine": machine(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "seconds": round(time.time() - t0, 1),
        "work": str(work),
        "runs": results,
    }
    out = args.out or HERE / "results" / f"paper_configs_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(table(results))
    load = f"load {load_before[0]:.1f} before, {record['load_after'][0]:.1f} after"
    print(f"\n{record['machine']['cpu']}, {record['seconds']:.0f} s in all ({load}); results: {out}")
    return 0 if all(r.get("exit_code", 0) == 0 for r in results.values() if isinstance(r, dict)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
