"""The ``voc`` config's prediction of 640×480 photos through the pipeline, against the benchmark figure.

Why: bench_seg.py times ``predict_probs`` on one 500×375 image in process, while a user runs ``weaktr
predict`` in a fresh process that also loads data and checkpoint, decodes photos, writes PNGs and runs
the CRF. Issue 32 asks for the pipeline's time per 640×480 photo within 1.3× of the benchmark's figure
scaled to that size. With the voc config's ``base_size`` 520 every 4:3 photo is resized alike at each
scale, so both sizes give the same 64 windows: the scaled figure is the 500×375 one times the ratio of
window counts (1). In one sitting, with a random-init DeiT-S segmenter saved as the checkpoint and N
coco-mini val photos resized to 640×480 (with label PNGs, VOC layout, in a temporary folder):

1. in process: ``predict_probs`` of the checkpoint prepared under the voc config's execution policy,
   with its ``InferenceSettings``, at 500×375 and 640×480 (a warm-up each, then interleaved rounds);
2. ``python -m weaktr predict --config voc --split val --checkpoint CKPT data.dataset=...``, with
   ``--no-crf`` and with the CRF: per image, the median interval between consecutive output PNGs
   (mtimes), which leaves out start-up and the first image's warm-up; the command's wall and CPU
   seconds (CRF workers included) and its first output are recorded too.

Writes benchmarks/results/bench_predict.json (machine, load averages, wall and CPU seconds) and prints
a markdown table naming the CPU. ``--tiny`` (one-block segmenter, 64×48 photos, one scale) is a dry
run whose timings mean nothing.

    python benchmarks/bench_predict.py [--images 3] [--rounds 3] [--tiny] [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import machine, measure_rounds
from PIL import Image
from targets import cpu_label

from weaktr.config import RunConfig, load_config
from weaktr.data.images import load_image
from weaktr.data.voc import prepare_voc
from weaktr.evaluation import inference as inf
from weaktr.evaluation.inference import InferenceSettings, predict_probs
from weaktr.models.segmenter import SegConfig, build_segmenter, load_segmenter, save_segmenter
from weaktr.runtime.context import RunExecution

HERE = Path(__file__).resolve().parent
COCO_MINI = Path(os.environ.get("WEAKTR_COCO_MINI", HERE.parents[1] / "shared" / "data" / "coco-mini"))
RESULTS = HERE / "results" / "bench_predict.json"
TARGET = 1.3  # pipeline per image / benchmark figure scaled to the photo's size
SIZES = {"bench": (375, 500), "photo": (480, 640)}  # (H, W): bench_seg's image, the photos here
# --tiny: bench_seg's one-block segmenter, small photos, one scale of small windows
TINY_SEG = SegConfig(image_size=32, embed_dim=32, depth=1, num_heads=2)
TINY_SIZES = {"bench": (30, 40), "photo": (48, 64)}
TINY_PREDICT = ["predict.scales=[1.0]", "predict.base_size=48", "predict.window=32", "predict.stride=24"]


def voc_folder(root: Path, n: int, hw: tuple[int, int]) -> list[str]:
    """A VOC 2012 folder of the first ``n`` coco-mini val photos resized to ``hw``, with label PNGs
    (nearest), listed as train, train_aug and val; returns their ids."""
    lines = (COCO_MINI / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    ids = sorted(lines)[:n]
    lists = root / "ImageSets" / "Segmentation"
    for sub in (root / "JPEGImages", root / "SegmentationClass", lists):
        sub.mkdir(parents=True)
    size = (hw[1], hw[0])
    for i in ids:
        photo = Image.open(COCO_MINI / "JPEGImages" / f"{i}.jpg").convert("RGB")
        photo.resize(size, Image.BILINEAR).save(root / "JPEGImages" / f"{i}.jpg", quality=95)
        mask = Image.open(COCO_MINI / "SegmentationClass" / f"{i}.png")  # palette PNG: stays one
        mask.resize(size, Image.NEAREST).save(root / "SegmentationClass" / f"{i}.png")
    for split in ("train", "train_aug", "val"):
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return ids


def windows(hw: tuple[int, int], s: InferenceSettings) -> int:
    """How many windows ``predict_probs`` runs for an image of ``hw`` (scales, flips)."""
    n = 0
    for ratio in s.scales:
        h, w = (
            len(inf.window_anchors(max(x, s.window), s.window, s.stride))
            for x in inf.upscaled_size(*inf.scaled_size(*hw, ratio, s.base_size), s.window)
        )
        n += h * w
    return n * (2 if s.flip else 1)


def in_process(ckpt: Path, cfg: RunConfig, photo: np.ndarray, sizes: dict, rounds: int) -> dict[str, Any]:
    """``predict_probs`` at each size, the model prepared as ``weaktr predict`` prepares it."""
    policy = RunExecution.resolve(cfg, torch.device("cpu")).predict
    model = load_segmenter(ckpt).prepare_inference(policy)
    settings = InferenceSettings.from_config(cfg.predict)
    fns = {}
    for name, (h, w) in sizes.items():
        image = np.asarray(Image.fromarray(photo).resize((w, h), Image.BILINEAR))
        fns[name] = lambda image=image: predict_probs(model, image, settings)
    for fn in fns.values():  # warm-up: oneDNN builds its kernels for the shapes
        fn()
    return {
        name: {**r, "hw": sizes[name], "windows": windows(sizes[name], settings)}
        for name, r in measure_rounds(fns, rounds).items()
    }


def predict_cli(work: Path, ckpt: Path, overrides: list[str], crf: bool) -> dict[str, Any]:
    """``weaktr predict --config voc`` of the val split in a subprocess: wall, CPU, per-image seconds."""
    out = work / ("pred_crf" if crf else "pred")
    cmd = [sys.executable, "-m", "weaktr", "predict", "--config", "voc", "--split", "val"]
    cmd += ["--checkpoint", str(ckpt), "--out", str(out), "--run-dir", str(work / "run"), *overrides]
    cmd += [] if crf else ["--no-crf"]
    load = os.getloadavg()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start, t0 = time.time(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(
            f"weaktr predict failed (exit {done.returncode}): {' '.join(cmd)}\n{done.stderr[-4000:]}"
        )
    stamps = sorted(p.stat().st_mtime for p in out.glob("*.png"))
    steps = [round(b - a, 3) for a, b in itertools.pairwise(stamps)]
    return {
        "command": cmd[1:],
        "wall_s": wall,
        "cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
        "images": len(stamps),
        "first_output_s": round(stamps[0] - start, 3),
        "per_image_s": statistics.median(steps),
        "intervals_s": steps,
        "load_average_before": load,
        "load_average_after": os.getloadavg(),
    }


def wxh(hw: list[int] | tuple[int, int]) -> str:
    return f"{hw[1]}×{hw[0]}"


def table(res: dict[str, Any]) -> str:
    """Markdown: the in-process figures, the pipeline's per image and their ratio to the scaled figure."""
    m, runs, (bench, photo) = res["machine"], res["pipeline"], res["in_process"].values()
    scaled, size = res["scaled_bench_s"], wxh(photo["hw"])
    tiny = " (tiny dry run: the timings mean nothing)" if res["settings"]["tiny"] else ""
    load = f"{res['load_average_before'][0]:.2f} → {res['load_average_after'][0]:.2f}"
    rows = [
        f"- CPU: {cpu_label(m.get('cpu'), m.get('cpu_simd_flags'))}, {m['torch_threads']} torch threads, "
        f"load {load}{tiny}",
        "",
        f"| measure | wall s | CPU s | / benchmark scaled to {size} | target |",
        "|---|---|---|---|---|",
        f"| predict_probs {wxh(bench['hw'])} in process (the benchmark, {bench['windows']} windows) "
        f"| {bench['wall_s']:.2f} | {bench['cpu_s']:.2f} |  |  |",
        f"| the benchmark scaled to {size} (× {photo['windows']}/{bench['windows']} windows) "
        f"| {scaled:.2f} |  |  |  |",
        f"| predict_probs {size} in process | {photo['wall_s']:.2f} | {photo['cpu_s']:.2f} "
        f"| {photo['wall_s'] / scaled:.2f}× |  |",
    ]
    for key, label in (("no_crf", "weaktr predict --no-crf"), ("crf", "weaktr predict, CRF")):
        r, ratio = runs[key], res["ratios"][key]
        verdict = f"≤ {TARGET}×: {'met' if ratio <= TARGET else 'missed'}"
        rows += [
            f"| {label}, per image (median of {len(r['intervals_s'])} intervals) | {r['per_image_s']:.2f} "
            f"| – | {ratio:.2f}× | {verdict} |",
            f"| {label}, whole command ({r['images']} photos; first output at {r['first_output_s']:.1f} s) "
            f"| {r['wall_s']:.2f} | {r['cpu_s']:.2f} |  |  |",
        ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=3, help="photos in the data set (at least 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the in-process figures")
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny model, small photos, one scale: a dry run"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.images < 2:
        parser.error("--images: at least 2 (the time per image is the interval between outputs)")
    sizes = TINY_SIZES if args.tiny else SIZES
    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_before": os.getloadavg(),
        "settings": {"images": args.images, "rounds": args.rounds, "tiny": args.tiny, "target": TARGET},
    }
    with tempfile.TemporaryDirectory(prefix="weaktr-bench-predict-") as tmp:
        work = Path(tmp)
        ids = voc_folder(work / "VOC2012", args.images, sizes["photo"])
        prepare_voc(work / "VOC2012", work / "data", workers=1)
        overrides = [f"data.dataset={work / 'data' / 'dataset.yaml'}", *(TINY_PREDICT if args.tiny else [])]
        cfg = load_config("voc", overrides)
        results["settings"]["predict"] = asdict(InferenceSettings.from_config(cfg.predict))
        torch.manual_seed(0)
        ckpt = work / "segmenter.safetensors"
        save_segmenter(ckpt, build_segmenter(TINY_SEG if args.tiny else SegConfig()))
        photo = load_image(work / "VOC2012" / "JPEGImages" / f"{ids[0]}.jpg")
        print("in process ...", flush=True)
        results["in_process"] = in_process(ckpt, cfg, photo, sizes, args.rounds)
        results["pipeline"] = {}
        for key, crf in (("no_crf", False), ("crf", True)):
            print(f"weaktr predict ({key}) ...", flush=True)
            results["pipeline"][key] = predict_cli(work, ckpt, overrides, crf)
    ip = results["in_process"]
    results["scaled_bench_s"] = ip["bench"]["wall_s"] * ip["photo"]["windows"] / ip["bench"]["windows"]
    results["ratios"] = {
        k: r["per_image_s"] / results["scaled_bench_s"] for k, r in results["pipeline"].items()
    }
    results["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
