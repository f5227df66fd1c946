"""What the benchmark scripts need: a description of the machine, a wall + CPU timer, the precisions."""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from targets import SIMD_FLAGS

from weaktr.runtime.context import cpu_bf16_native

# why a result file has no bf16 entries (its top-level "bf16_skipped"; tables: targets.BF16_SKIPPED_CELL)
BF16_SKIPPED = (
    "no native bf16 on this CPU (no AVX512-BF16 or AMX): oneDNN would emulate it, ~100x slower than float32"
)


def precisions(device: torch.device | str, force: bool = False) -> tuple[str, ...]:
    """The precisions worth timing on ``device``: float32, and bf16 on CUDA or on a CPU that has it.

    Emulated bf16 (a CPU without AVX512-BF16 or AMX) runs ~100x slower than float32, so timing it
    would take hours and measure oneDNN's emulation; ``force`` times it anyway (dry runs of the
    bf16 code path). The first skip in a process prints one line saying why.
    """
    if force or torch.device(device).type == "cuda" or cpu_bf16_native():
        return ("float32", "bf16")
    _say_bf16_skipped()
    return ("float32",)


@functools.cache
def _say_bf16_skipped() -> None:
    """Said once per process, however many sections skip bf16."""
    print(f"bf16 skipped: {BF16_SKIPPED}", flush=True)


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU model and its SIMD flags (of ``targets.SIMD_FLAGS``; None where
    /proc/cpuinfo has none), cores usable by this process, torch threads, versions, GPU."""
    model, flags = platform.processor() or "unknown", None
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        fields = [ln.split(":", 1) for ln in cpuinfo.read_text().splitlines() if ":" in ln]
        names = [v.strip() for k, v in fields if k.strip() == "model name"]
        model = names[0] if names else model
        found = [set(v.split()) for k, v in fields if k.strip() == "flags"]
        flags = sorted(found[0] & set(SIMD_FLAGS)) if found else None
    return {
        "cpu": model,
        "cpu_simd_flags": flags,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its finished child processes (pool workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _timed(fn: Callable[[], Any], sync: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds of one call; ``sync`` waits for the GPU around it, so queued work counts."""
    if sync:
        torch.cuda.synchronize()
    w, c = time.perf_counter(), cpu_seconds()
    fn()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - w, cpu_seconds() - c


def _summary(runs: list[tuple[float, float]]) -> dict[str, Any]:
    """Median wall and CPU seconds of (wall, cpu) pairs, with every wall kept."""
    walls, cpus = zip(*runs, strict=True)
    return {
        "wall_s": statistics.median(walls),
        "cpu_s": statistics.median(cpus),
        "walls": [round(w, 3) for w in walls],
    }


def measure(fn: Callable[[], Any], repeats: int, warmup: int = 1, sync: bool = False) -> dict[str, Any]:
    """Median wall and CPU seconds of ``fn`` over ``repeats`` runs after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        fn()
    return _summary([_timed(fn, sync) for _ in range(repeats)])


def measure_rounds(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, dict[str, Any]]:
    """``measure`` for several functions run in turn, once each per round (no warm-up).

    Interleaving makes a change of the machine's load hit every function alike, so the ratio of two
    functions' walls in the same round is steadier than the ratio of medians taken minutes apart.
    """
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            runs[name].append(_timed(fn))
    return {name: _summary(r) for name, r in runs.items()}


def paired_ratios(base: dict[str, Any], other: dict[str, Any]) -> list[float]:
    """Per-round ``base / other`` wall ratios of two :func:`measure_rounds` entries."""
    return [round(b / o, 3) for b, o in zip(base["walls"], other["walls"], strict=True)]
