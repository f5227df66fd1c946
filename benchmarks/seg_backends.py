"""The CPU inference backends of a DeiT-S segmenter side by side, through the public inference API.

Variants (each its own copy of one random-init model, so their CPU contexts do not share blocks):

- ``torch_plain``: PyTorch under a policy with ``fused_cpu=False`` (timm's own block forward);
- ``torch_fused``: PyTorch with the self-checked private oneDNN block forward (models/cpu_blocks);
- ``torch_bf16``: a bf16 policy (bf16 encoder; fused only where the bf16 self-check passes); left out
  (``bf16=False``) where the CPU has no native bf16, as bench_seg.py decides;
- ``torch_compile``: the plain model's ``forward_masks`` under ``torch.compile`` with frozen weights;
- ``ort_fp32``: the ``weaktr export-model`` file in onnxruntime;
- ``ort_int8``: that file with dynamically quantised int8 MatMul weights (onnxruntime.quantization);
- ``ort_fp16``: that file converted to fp16 (fp32 inputs/outputs; onnxruntime's x86 CPU EP has no
  bf16 kernels, so fp16 is its low-precision float).

Each variant's load (checkpoint or session, plus the fused weight packing or the bf16 copy) and its
one-off preparation (export, quantisation) are timed once; the predictions go in interleaved rounds
(``measure_rounds``), so per-round ratios against ``torch_fused`` share the load of the machine.
Pixel agreement is against ``torch_plain`` fp32; a variant below 99.5 % at one scale is not run at six.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import cpu_seconds, measure_rounds, paired_ratios
from targets import AGREEMENT_MIN

from weaktr.evaluation.inference import InferenceSettings, SegNet, predict_probs
from weaktr.evaluation.onnx_backend import OrtSegmenter, export_segmenter
from weaktr.models.cpu_blocks import fused_problem
from weaktr.models.execution import ExecutionPolicy
from weaktr.models.segmenter import SegConfig, build_segmenter, load_segmenter, save_segmenter

REFERENCE, BASELINE = "torch_plain", "torch_fused"


@dataclass
class Variant:
    net: SegNet
    fields: dict[str, Any]  # InferenceSettings fields of this variant
    load: dict[str, float]  # wall/CPU seconds to get it ready to predict
    note: str = ""
    warm_up_each: bool = False  # warm up before each test (torch.compile: one compile per shape)


def _seconds(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """``fn()`` and its wall and CPU seconds (one-off steps: loading, exporting)."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    value = fn()
    return value, {"wall_s": round(time.perf_counter() - wall, 3), "cpu_s": round(cpu_seconds() - cpu, 3)}


def build_variants(work: Path, bf16: bool = True) -> dict[str, Variant]:
    """Save a random DeiT-S segmenter, export and convert it, and load every variant (timed);
    ``torch_bf16`` only with ``bf16`` (emulated bf16 would take hours and measure the emulation)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.float16 import convert_float_to_float16

    torch.manual_seed(0)
    ckpt = work / "seg.safetensors"
    save_segmenter(ckpt, build_segmenter(SegConfig()).eval())
    cpu = torch.device("cpu")
    out: dict[str, Variant] = {}
    torch_variants = [
        ("torch_plain", ExecutionPolicy.seg_inference(cpu, False, fused_cpu=False)),
        ("torch_fused", ExecutionPolicy.seg_inference(cpu, False)),
    ]
    if bf16:
        torch_variants.append(("torch_bf16", ExecutionPolicy.seg_inference(cpu, True)))
    for name, policy in torch_variants:

        def ready(p: ExecutionPolicy = policy) -> torch.nn.Module:
            model = load_segmenter(ckpt, cpu).prepare_inference(p)
            if p.fused:  # packing / bf16 copy: once, as a loaded model's first call does it
                with torch.no_grad():
                    model.forward_masks(torch.zeros(1, 3, model.patch_size, model.patch_size))
            return model

        model, load = _seconds(ready)
        problem = fused_problem(policy.backbone_dtype)
        note = "" if not policy.fused_cpu else ("fused" if problem is None else f"plain ({problem})")
        out[name] = Variant(model, {}, load, note)
    out["torch_compile"] = _compiled(ckpt)
    onnx_fp32 = work / "seg.onnx"
    _, export = _seconds(lambda: export_segmenter(ckpt, onnx_fp32))
    prepared = {"ort_fp32": (onnx_fp32, export)}
    _, quant = _seconds(lambda: quantize_dynamic(onnx_fp32, work / "int8.onnx", weight_type=QuantType.QInt8))
    prepared["ort_int8"] = (work / "int8.onnx", quant)

    def to_fp16() -> None:
        onnx.save(
            convert_float_to_float16(onnx.load(str(onnx_fp32)), keep_io_types=True), str(work / "fp16.onnx")
        )

    _, half = _seconds(to_fp16)
    prepared["ort_fp16"] = (work / "fp16.onnx", half)
    for name, (path, prep) in prepared.items():
        net, load = _seconds(lambda p=path: OrtSegmenter(p))
        out[name] = Variant(
            net, {}, load, f"prepared in {prep['wall_s']:.1f} s wall ({prep['cpu_s']:.1f} s CPU)"
        )
    return out


def _compiled(ckpt: Path) -> Variant:
    """The plain model with ``forward_masks`` under ``torch.compile`` (inductor, weights frozen).

    Freezing lets inductor pack the weights for oneDNN and fuse bias, GELU and residual adds into
    the GEMMs: the public counterpart of the private-op path. Compiling happens on the first call of
    each input shape, so the warm-up calls of :func:`bench_backends` take it and the note gives it.
    """
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # read when a graph is compiled; only this variant compiles
    model, load = _seconds(lambda: load_segmenter(ckpt, torch.device("cpu")))
    model.forward_masks = torch.compile(model.forward_masks)  # type: ignore[method-assign]
    return Variant(model, {}, load, "", warm_up_each=True)


def bench_backends(
    image: np.ndarray, rounds_1: int, rounds_6: int, window_batch: int, bf16: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(timings, loads): 1-scale and 6-scale × flip (ensemble) rounds with agreements; load times.

    ``bf16=False`` leaves ``torch_bf16`` out (a CPU without native bf16)."""
    one = InferenceSettings(scales=(1.0,), flip=False, ensemble_weight=None, window_batch=window_batch)
    six = InferenceSettings(window_batch=window_batch)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        variants = build_variants(Path(tmp), bf16)
        names = list(variants)
        for label, base, rounds in (("1scale", one, rounds_1), ("6scale_flip_ens", six, rounds_6)):
            preds: dict[str, torch.Tensor] = {}

            def run(name: str, base: InferenceSettings = base, preds: dict = preds) -> Callable[[], None]:
                v = variants[name]
                settings = replace(base, **v.fields)
                return lambda: preds.__setitem__(name, predict_probs(v.net, image, settings).argmax(0))

            for name in names:  # warm-up (allocator, oneDNN primitives, onnxruntime arenas, compiling)
                v = variants[name]
                if label == "1scale" or v.warm_up_each:
                    _, warm = _seconds(run(name))
                    if v.warm_up_each:
                        v.note += f"{label} first call {warm['wall_s']:.1f} s wall (compiling); "
            timings = measure_rounds({n: run(n) for n in names}, rounds)
            for name, t in timings.items():
                t["agreement"] = (preds[name] == preds[REFERENCE]).float().mean().item()
                t["counts"] = t["agreement"] >= AGREEMENT_MIN
                t["fused_ratios"] = paired_ratios(timings[BASELINE], t)  # > 1: faster than torch_fused
                result[f"{label}_{name}"] = t
            names = [n for n in names if timings[n]["counts"]]  # six scales only for what counts
        loads = {k: {**v.load, "note": v.note.rstrip("; ")} for k, v in variants.items()}
    return result, loads
