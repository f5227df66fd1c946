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
- a same-machine baseline for the training step: our model with the authors' unfused attention
  (``softmax(q·kᵀ·scale)·v``; ``train_step_authors_way``), not their code.

The two 6-scale runs (fp32, bf16) go in interleaved rounds, so the bf16 row's fp32 / bf16 ratio is the
median of same-round ratios. (The re-enactment of the authors' 6-scale inference loop on our model
went on 2026-12-08: it ran 10–13 % slower than their code's own time on the same kind of CPU, and a
same-sitting check against their code is impossible; docs/benchmarks.md.)

The authors' figures (``targets.AUTHORS``: their code, with the CPU it ran on) are divided into ours
only when this run's CPU is of the same kind (``AuthorsFigures.other_cpu``); elsewhere the table's
authors' column says there is no figure of theirs for this CPU.

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
from targets import AGREEMENT_MIN, AUTHORS, BF16_SKIPPED_CELL, NO_AUTHORS_CELL, cpu_label

from weaktr.crf import CRFParams, run_parallel, softmax_crf
from weaktr.engine.optim import build_sgd
from weaktr.evaluation.inference import InferenceSettings, predict_probs
from weaktr.losses import gradient_clipping_loss
from weaktr.models.execution import ExecutionPolicy
from weaktr.models.segmenter import SegConfig, build_segmenter, param_groups

# the authors' figures under this script's names, with their CPU (targets.py)
THEIRS = AUTHORS.renamed(
    {
        "train_step": "seg_train_step",
        "infer_1scale": "infer_1scale",
        "infer_6scale_flip_ens": "infer_6scale_flip_ens",
        "crf_1": "softmax_crf_21",
    }
)
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
# --tiny: a one-block segmenter on 32² crops (train and infer sections), for dry runs (timings mean nothing)
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
    """The step in float32, in bf16 autocast if asked (as train-seg on CUDA), and in float32 with the
    authors' unfused attention (``train_step_authors_way``: our model, their attention; not their code)."""
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
    # our model with the authors' attention (softmax(q·kᵀ·scale)·v, no fused kernel), float32: a baseline
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    out["train_step_authors_way"] = timed()
    return out


def bench_inference(
    repeats: int, ms_repeats: int, window_batch: int, bf16: bool = True, tiny: bool = False
) -> dict[str, Any]:
    """1-scale and 6-scale × flip + ensemble inference on the CPU, in float32 and (``bf16``) bf16, the
    6-scale runs in interleaved rounds (bf16: same-round fp32 / bf16 ratios); bf16 with its agreement."""
    torch.manual_seed(0)
    model = build_segmenter(TINY_SEG if tiny else SegConfig()).eval()
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
    fns = {"infer_6scale_flip_ens": run("6scale")}
    if bf16:
        fns["infer_6scale_flip_ens_bf16"] = run("6scale_bf16", amp=True)
    six = measure_rounds(fns, ms_repeats)
    if bf16:
        bf = six["infer_6scale_flip_ens_bf16"]
        bf["fp32_ratios"] = paired_ratios(six["infer_6scale_flip_ens"], bf)
    out.update(six)
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


def authors_cell(results: dict[str, Any], key: str) -> tuple[str, float | None]:
    """The authors' column for timing ``key`` and the figure to divide by (None: no ratio)."""
    base = THEIRS.seconds.get(key.removesuffix("_bf16"))
    settings = results.get("settings", {})
    if base is None:
        return "", None
    section = "train" if key.startswith("train_step") else "infer" if key.startswith("infer_") else None
    if section and settings.get(f"{section}_tiny"):
        return "none for the tiny model", None
    if key.startswith("train_step") and settings.get("train_device") == "cuda":
        return "none for CUDA", None
    if THEIRS.other_cpu(results.get("machine")) is not None:
        return NO_AUTHORS_CELL, None
    return f"{base:.2f}", base


def table(results: dict[str, Any]) -> str:
    """Markdown: the CPUs of the figures, then ours (wall, CPU), the authors' figure and their / our
    wall-time ratio where both come from the same kind of CPU, and the same-machine baselines.

    A bf16 twin that the run skipped (``"bf16_skipped"``: no native bf16 on its CPU) gets a row saying
    so, not a number.
    """
    timings = results["timings"]
    m = results.get("machine", {})
    rows = [
        f"- weaktr: {cpu_label(m.get('cpu'), m.get('cpu_simd_flags'))}, {m.get('torch_threads', '?')} "
        "torch threads",
        f"- authors (float32 s): {THEIRS.source}, {THEIRS.label}",
    ]
    if (reason := THEIRS.other_cpu(m)) is not None:
        rows.append(f"- no ratio against the authors: {reason}")
    rows += [
        "",
        "| measure | wall s | CPU s | authors s | authors / ours | same-machine baseline | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in timings.items():
        cell, base = authors_cell(results, key)
        ratio = f"{base / r['wall_s']:.2f}×" if base else ""
        same, note = "", ""
        if (
            key.startswith("train_step")
            and "train_step_authors_way" in timings
            and key != "train_step_authors_way"
        ):
            same = f"their attention / this {timings['train_step_authors_way']['wall_s'] / r['wall_s']:.2f}×"
        if key == "train_step_authors_way":
            note = "our model with the authors' unfused attention, not their code"
        # per-round ratios, median (range); plain: backends results of 2026-12-03, while cpu_blocks.py
        # was deleted
        for ref in ("fp32", "plain", "fused"):
            if f"{ref}_ratios" in r:
                pairs = r[f"{ref}_ratios"]
                same = f"{ref} / this {statistics.median(pairs):.2f}× ({min(pairs):.2f}–{max(pairs):.2f})"
        if "agreement" in r:
            note = f"agrees {100 * r['agreement']:.2f}% with fp32" + (
                "" if r["counts"] else " (< 99.5%: does not count)"
            )
        rows.append(f"| {key} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {cell} | {ratio} | {same} | {note} |")
        if (twin := skipped_twin(results, key)) is not None:
            rows.append(f"| {twin} | {BF16_SKIPPED_CELL} |  |  |  |  | not measured |")
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
        "--ms-repeats", type=int, default=5, help="interleaved rounds of the 6-scale inferences (fp32, bf16)"
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
    parser.add_argument(
        "--tiny", action="store_true", help="train and infer sections: a tiny model, for dry runs"
    )
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
            "infer_tiny": args.tiny,
            "train_bf16": args.train_bf16,
            "rounds_1": args.rounds_1,
            "rounds_6": args.rounds_6,
        },
        "authors": THEIRS.record(),
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
        "infer": lambda: bench_inference(
            args.repeats, args.ms_repeats, args.window_batch, bf16_on(CPU), args.tiny
        ),
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
