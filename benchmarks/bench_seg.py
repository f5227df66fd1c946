"""Phase-2 speed on the machine at hand: retraining step, multi-scale inference, softmax CRF (DeiT-S).

Random-init DeiT-S segmenter (21 classes), as in the authors' measurement (float32, median of 5,
idle 2-core machine of the kind this runs on):

- retraining step: batch 4, 480² crops, the gradient-clipping loss (clipping active), SGD step;
- sliding-window inference of one 500×375 image: one scale; 6 scales × flip with the two-layer
  ensemble, in float32 and with bf16 on the CPU (counted only when ≥ 99.5 % of its pixels agree with
  float32);
- the CPU backends (``backends``, see seg_backends.py): plain PyTorch, the fused private-op path,
  bf16, onnxruntime fp32 / int8 / fp16, 1 and 6 scales, in interleaved rounds with their load times;
- softmax CRF of one image (21 labels, one core), and of 8 images with 1 and 2 worker processes;
- same-machine baselines ("authors' way"): the training step with the authors' unfused attention, and
  their inference loop re-enacted on our model (flips and windows run separately in batches of 4,
  full-size window logits merged on a canvas). The authors' absolute figures came from another
  machine; these ratios do not depend on which machine runs the script. The three 6-scale runs
  (fp32, bf16, authors' way) go in interleaved rounds, and the table gives the median of the
  same-round ratios with their range, so a load change between runs does not skew the ratio.

bf16 (the train step's ``--train-bf16``, the bf16 inferences, the ``torch_bf16`` backend) is timed on
CUDA and on a CPU with AVX512-BF16 or AMX only (``common.precisions``; ``--force-bf16`` times it
anyway): elsewhere oneDNN emulates it ~100× slower. Then the results lack those timings and carry a
top-level ``"bf16_skipped"`` (the reason); the table lists each as "skipped (no native bf16)".

Wall and CPU time are both recorded, with the load average before and after: on a shared machine
the wall time of a step grows with the load, so compare ratios. Writes benchmarks/results/bench_seg.json.

    python benchmarks/bench_seg.py [--repeats 5] [--ms-repeats 5] [--window-batch 8] [--sections ...]
    python benchmarks/bench_seg.py --quick --sections backends   # ~5 min on an idle 2-core machine
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import BF16_SKIPPED, machine, measure, measure_rounds, paired_ratios, precisions
from seg_backends import bench_backends
from targets import AGREEMENT_MIN, BF16_SKIPPED_CELL

from weaktr.crf import CRFParams, run_parallel, softmax_crf
from weaktr.engine.optim import build_sgd
from weaktr.evaluation.inference import (
    MS_RATIOS,
    InferenceSettings,
    predict_probs,
    scaled_size,
    to_input,
    upscaled_size,
    window_anchors,
)
from weaktr.losses import gradient_clipping_loss
from weaktr.models.execution import ExecutionPolicy
from weaktr.models.segmenter import SegConfig, build_segmenter, param_groups

AUTHORS = {"train_step": 7.3, "infer_1scale": 1.8, "infer_6scale_flip_ens": 32.0, "crf_1": 0.84}
RESULTS = Path(__file__).resolve().parent / "results" / "bench_seg.json"
CPU = torch.device("cpu")
# a float32 timing and its bf16 twin, which a run on a CPU without native bf16 skips (table: skipped rows)
BF16_TWINS = {
    "train_step": "train_step_bf16",
    "infer_1scale": "infer_1scale_bf16",
    "infer_6scale_flip_ens": "infer_6scale_flip_ens_bf16",
    "backend_1scale_torch_fused": "backend_1scale_torch_bf16",
    "backend_6scale_flip_ens_torch_fused": "backend_6scale_flip_ens_torch_bf16",
}
# --tiny: a one-block segmenter on 32² crops, for dry runs of the script (its timings mean nothing)
TINY_SEG = SegConfig(image_size=32, embed_dim=32, depth=1, num_heads=2)


def blob_image(h: int = 375, w: int = 500, seed: int = 0) -> np.ndarray:
    """A smooth random-colour image (uint8 H×W×3), like the golden cases' inputs."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.random((1, 3, 12, 16)).astype(np.float32))
    img = F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    return (img[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def bench_train(
    repeats: int, device: torch.device = CPU, bf16: bool = False, tiny: bool = False
) -> dict[str, dict[str, Any]]:
    """The step in float32, in bf16 autocast if asked (as train-seg on CUDA), and the authors' way."""
    torch.manual_seed(0)
    config = TINY_SEG if tiny else SegConfig()
    crop = config.image_size
    model = build_segmenter(config).train().to(device)
    opt = build_sgd(param_groups(model, 1e-4, 0.1), 1e-4, 0.9, True, 0.0)
    x = torch.randn(4, 3, crop, crop, device=device)
    target = F.interpolate(torch.randint(0, 21, (4, 1, 6, 6)).float(), size=(crop, crop), mode="nearest")
    target = target[:, 0].long().to(device)
    target[:, crop * 11 // 12 :] = 255  # the Pad-to-480 border of a short crop
    sync = device.type == "cuda"

    def step(amp: bool) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        # clipping on every step
        loss, _ = gradient_clipping_loss(logits.float(), target, tau=1e9, cell=crop // 4)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(amp: bool = False) -> dict[str, Any]:
        if sync:
            torch.cuda.reset_peak_memory_stats(device)
        result = measure(lambda: step(amp), repeats, sync=sync)
        if sync:
            result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        return result

    out = {"train_step": timed()}
    if bf16:
        out["train_step_bf16"] = timed(amp=True)
    # the authors' attention (softmax(q·kᵀ·scale)·v, no fused kernel) in float32: a same-machine baseline
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    out["train_step_authors_way"] = timed()
    return out


def authors_way_probs(
    model: torch.nn.Module, image: np.ndarray, window: int = 480, stride: int = 320
) -> torch.Tensor:
    """The authors' inference loop re-enacted on our model, as a same-machine baseline (not their code).

    As their Segmenter ``inference``: each scale and its flip run separately, windows in batches of 4,
    attention as ``softmax(q·kᵀ·scale)·v`` (no fused kernel), every window's logits upsampled to the
    window and summed into a full-size canvas with a count map, the average resized to the image,
    then softmax; the two decoder outputs share one encoder pass (favourable to them).
    """
    fused = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    for m, _ in fused:
        m.fused_attn = False
    x0 = to_input(image, model.mean, model.std, torch.device("cpu"))
    H, W = x0.shape[-2:]
    sums = [torch.zeros(model.n_cls, H, W), torch.zeros(model.n_cls, H, W)]
    try:
        with torch.no_grad():
            for ratio in MS_RATIOS:
                x = F.interpolate(
                    x0, size=scaled_size(H, W, ratio, 520), mode="bilinear", align_corners=False
                )
                x = F.interpolate(
                    x, size=upscaled_size(*x.shape[-2:], window), mode="bilinear", align_corners=False
                )
                for flip in (False, True):
                    xi = x.flip(-1) if flip else x
                    h, w = xi.shape[-2:]
                    xp = F.pad(xi, (0, max(0, window - w), 0, max(0, window - h)))
                    boxes = [
                        (a, b)
                        for a in window_anchors(xp.shape[-2], window, stride)
                        for b in window_anchors(xp.shape[-1], window, stride)
                    ]
                    canvas = [torch.zeros(model.n_cls, *xp.shape[-2:]) for _ in range(2)]
                    count = torch.zeros(1, *xp.shape[-2:])
                    for i in range(0, len(boxes), 4):
                        crops = torch.cat(
                            [xp[..., a : a + window, b : b + window] for a, b in boxes[i : i + 4]]
                        )
                        out = model(crops, return_layer1=True)
                        for k, (a, b) in enumerate(boxes[i : i + 4]):
                            for c, o in zip(canvas, out, strict=True):
                                c[:, a : a + window, b : b + window] += o[k]
                            count[:, a : a + window, b : b + window] += 1
                    for acc, c in zip(sums, canvas, strict=True):
                        logits = F.interpolate((c / count)[None, :, :h, :w], size=(H, W), mode="bilinear")
                        acc += (logits.flip(-1) if flip else logits)[0].softmax(0)
    finally:
        for m, flag in fused:
            m.fused_attn = flag
    n = 2 * len(MS_RATIOS)
    return sums[0] / n + 0.8 * sums[1] / n


def bench_inference(repeats: int, ms_repeats: int, window_batch: int, bf16: bool = True) -> dict[str, Any]:
    """1-scale and 6-scale × flip + ensemble inference on the CPU, in float32 and (``bf16``) bf16,
    the 6-scale runs in interleaved rounds with the authors' way; bf16 with its pixel agreement."""
    torch.manual_seed(0)
    model = build_segmenter(SegConfig()).eval()  # never prepared: the authors' way runs plain blocks
    prepared = {amp: copy.deepcopy(model) for amp in (False, True)}  # one model per policy, as a run
    for amp, net in prepared.items():  # prepares once: interleaved rounds must not rebuild caches
        net.prepare_inference(ExecutionPolicy.seg_inference(torch.device("cpu"), amp))
    image = blob_image()
    out: dict[str, Any] = {}
    preds: dict[str, torch.Tensor] = {}

    def run(name: str, amp: bool = False, **kw: Any) -> Callable[[], None]:
        def fn() -> None:
            preds[name] = predict_probs(
                prepared[amp], image, InferenceSettings(window_batch=window_batch, **kw)
            ).argmax(0)

        return fn

    one = dict(scales=(1.0,), flip=False, ensemble_weight=None)
    out["infer_1scale"] = measure(run("1scale", **one), repeats)
    if bf16:
        out["infer_1scale_bf16"] = measure(run("1scale_bf16", amp=True, **one), repeats)

    def authors_way() -> None:
        preds["authors_way"] = authors_way_probs(model, image).argmax(0)

    # interleaved rounds: each round's authors' way / ours is a same-load ratio
    fns = {
        "infer_6scale_flip_ens": run("6scale", amp=False),
        "infer_6scale_flip_ens_bf16": run("6scale_bf16", amp=True),
        "infer_6scale_flip_ens_authors_way": authors_way,
    }
    if not bf16:
        del fns["infer_6scale_flip_ens_bf16"]
    six = measure_rounds(fns, ms_repeats)
    here = six["infer_6scale_flip_ens_authors_way"]
    for key in ("infer_6scale_flip_ens", "infer_6scale_flip_ens_bf16"):
        if key in six:
            six[key]["authors_way_ratios"] = paired_ratios(here, six[key])
    out.update(six)
    same = (preds["authors_way"] == preds["6scale"]).float().mean().item()
    out["infer_6scale_flip_ens_authors_way"]["agreement"] = same
    out["infer_6scale_flip_ens_authors_way"]["counts"] = same >= AGREEMENT_MIN
    for name in ("1scale", "6scale") if bf16 else ():
        agree = (preds[name] == preds[f"{name}_bf16"]).float().mean().item()
        key = "infer_1scale_bf16" if name == "1scale" else "infer_6scale_flip_ens_bf16"
        out[key].update(agreement=agree, counts=agree >= AGREEMENT_MIN)
    return out


def crf_inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 500×375 image and smooth 21-class probabilities for it."""
    image = blob_image(seed=seed)
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.normal(size=(1, 21, 24, 32)).astype(np.float32) * 3)
    probs = F.interpolate(logits, size=image.shape[:2], mode="bilinear").softmax(1)[0].numpy()
    return image, probs


def _crf_job(job: tuple[np.ndarray, np.ndarray]) -> int:
    """One softmax CRF; numpy only, since torch must not run in forked pool workers (OpenMP)."""
    return int(softmax_crf(job[0], job[1], CRFParams.voc_softmax()).max())


def bench_crf(repeats: int) -> dict[str, Any]:
    jobs = [crf_inputs(seed) for seed in range(8)]
    out = {"crf_1": measure(lambda: _crf_job(jobs[0]), repeats)}
    for workers in (1, 2):
        out[f"crf_8_images_{workers}_workers"] = measure(
            lambda w=workers: run_parallel(_crf_job, jobs, w, progress=False), 1
        )
    return out


def skipped_twin(results: dict[str, Any], key: str) -> str | None:
    """The bf16 twin of timing ``key`` when this run skipped it for want of native bf16, else None.

    The train step's twin counts only when ``--train-bf16`` asked for it (``settings.train_bf16``).
    """
    twin = BF16_TWINS.get(key)
    if not results.get("bf16_skipped") or twin is None or twin in results["timings"]:
        return None
    if key == "train_step" and not results.get("settings", {}).get("train_bf16"):
        return None
    return twin


def table(results: dict[str, Any]) -> str:
    """Markdown: ours (wall, CPU), the authors' figure, and their/our wall-time ratio, raw and CRF-scaled.

    The softmax CRF is the same pydensecrf code in both implementations, so ours / theirs for it
    measures the machine (and its load); the scaled ratio divides that out. A bf16 twin that the
    run skipped (``"bf16_skipped"``: no native bf16 on its CPU) gets a row saying so, not a number.
    """
    timings = results["timings"]
    machine_factor = timings["crf_1"]["wall_s"] / AUTHORS["crf_1"] if "crf_1" in timings else None
    here = timings.get("infer_6scale_flip_ens_authors_way", {}).get("wall_s")
    rows = [
        "| measure | wall s | CPU s | authors s | authors / ours | CRF-scaled | authors' way here / ours "
        "| note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in timings.items():
        base = AUTHORS.get(key.removesuffix("_bf16"))
        ratio = f"{base / r['wall_s']:.2f}×" if base else ""
        scaled = f"{base * machine_factor / r['wall_s']:.2f}×" if base and machine_factor else ""
        same = f"{here / r['wall_s']:.2f}×" if here and key.startswith("infer_6scale") else ""
        if "authors_way_ratios" in r:  # median of same-round ratios, their range in brackets
            pairs = r["authors_way_ratios"]
            same = f"{statistics.median(pairs):.2f}× ({min(pairs):.2f}–{max(pairs):.2f})"
        if key.startswith("train_step") and "train_step_authors_way" in timings:
            same = f"{timings['train_step_authors_way']['wall_s'] / r['wall_s']:.2f}×"
        note = ""
        for ref in ("plain", "fused"):  # backends: per-round torch_<ref> / this, median (range)
            if f"{ref}_ratios" in r:  # (plain: results of 2026-12-03, while cpu_blocks.py was deleted)
                pairs = r[f"{ref}_ratios"]
                same = f"{ref} / this {statistics.median(pairs):.2f}× ({min(pairs):.2f}–{max(pairs):.2f})"
        if "agreement" in r:
            what = "ours fp32" if key.endswith("authors_way") else "fp32"
            note = f"agrees {100 * r['agreement']:.2f}% with {what}" + (
                "" if r["counts"] else " (< 99.5%: does not count)"
            )
        rows.append(
            f"| {key} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {base or ''} | {ratio} | {scaled} | {same} "
            f"| {note} |"
        )
        if (twin := skipped_twin(results, key)) is not None:
            rows.append(f"| {twin} | {BF16_SKIPPED_CELL} |  |  |  |  |  | not measured |")
    if results.get("bf16_skipped"):
        rows += ["", f"bf16 skipped: {results['bf16_skipped']}"]
    loads = results.get("backend_loads", {})
    if loads:
        rows += ["", "| backend | load wall s | load CPU s | note |", "|---|---|---|---|"]
        rows += [f"| {k} | {v['wall_s']:.2f} | {v['cpu_s']:.2f} | {v['note']} |" for k, v in loads.items()]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="measured runs per item (median)")
    parser.add_argument(
        "--ms-repeats", type=int, default=5, help="interleaved rounds of the three 6-scale inferences"
    )
    parser.add_argument("--window-batch", type=int, default=8, help="windows per forward pass")
    parser.add_argument("--rounds-1", type=int, default=5, help="backends: interleaved 1-scale rounds")
    parser.add_argument("--rounds-6", type=int, default=3, help="backends: interleaved 6-scale rounds")
    parser.add_argument(
        "--quick", action="store_true", help="2 repeats / rounds (3 at one scale): a short, rougher run"
    )
    parser.add_argument(
        "--sections", default="train,infer,backends,crf", help="comma-separated: train, infer, backends, crf"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where the train section runs (others: CPU)"
    )
    parser.add_argument("--train-bf16", action="store_true", help="also time the step in bf16 autocast")
    parser.add_argument(
        "--force-bf16",
        action="store_true",
        help="time bf16 even on a CPU that only emulates it (no AVX512-BF16 or AMX): ~100x slower",
    )
    parser.add_argument("--tiny", action="store_true", help="train section: a tiny model, for dry runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--show", type=Path, metavar="JSON", help="only print the table of a results file")
    args = parser.parse_args()
    if args.show:
        print(table(json.loads(args.show.read_text())))
        return
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.ms_repeats, args.rounds_1, args.rounds_6 = 2, 2, 3, 2

    timings: dict[str, Any] = {}
    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_before": os.getloadavg(),
        "settings": {
            "repeats": args.repeats,
            "ms_repeats": args.ms_repeats,
            "window_batch": args.window_batch,
            "train_device": args.device,
            "train_tiny": args.tiny,
            "train_bf16": args.train_bf16,
            "rounds_1": args.rounds_1,
            "rounds_6": args.rounds_6,
        },
        "authors_s": AUTHORS,
        "timings": timings,
    }

    def bf16_on(device: torch.device) -> bool:
        """Whether to time bf16 on ``device``; a skip is recorded in the results (and said once)."""
        if "bf16" in precisions(device, args.force_bf16):
            return True
        results["bf16_skipped"] = BF16_SKIPPED
        return False

    def train() -> dict[str, Any]:
        device = torch.device(args.device)
        return bench_train(args.repeats, device, args.train_bf16 and bf16_on(device), args.tiny)

    def backends() -> dict[str, Any]:
        found, loads = bench_backends(
            blob_image(), args.rounds_1, args.rounds_6, args.window_batch, bf16=bf16_on(CPU)
        )
        results["backend_loads"] = loads
        return {f"backend_{k}": v for k, v in found.items()}

    sections = {
        "train": train,
        "infer": lambda: bench_inference(args.repeats, args.ms_repeats, args.window_batch, bf16_on(CPU)),
        "backends": backends,
        "crf": lambda: bench_crf(args.repeats),
    }

    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.sections.split(","):
        print(f"{name} ...", flush=True)
        timings.update(sections[name]())
        results["load_average_after"] = os.getloadavg()
        args.out.write_text(json.dumps(results, indent=2) + "\n")  # partial results survive a kill
    print(
        json.dumps(results["machine"]),
        f"load {results['load_average_before']} -> {results['load_average_after']}",
    )
    print(table(results))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
