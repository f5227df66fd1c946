"""The GPU check's steps (run through ``benchmarks/gpu_check.sh``): one table, one JSON of figures.

On a CUDA machine, in this order and each within its own time limit (the whole under 8 minutes on
one H200):

1. ``cuda_tests``: the suite's tests that mention CUDA (a skip on ``torch.cuda.is_available()`` or
   a device check in their body), found by reading ``tests/``; passing needs > 0 tests, no failure
   and no test skipped for want of a GPU;
2. ``torchrun``: under ``torchrun --nproc_per_node=1`` one process joins an NCCL process group,
   all-reduces a CUDA tensor, leaves the group and runs the tiny pipeline (the wheel check's
   overrides) up to and including train-seg on the GPU. With one process weaktr opens no group of
   its own: its DDP over NCCL needs two GPUs or more;
3. ``bench_seg``: the retraining step (DeiT-S, batch 4, 480², GC loss) in bf16 against the
   authors' unfused float32 way on the same GPU; the figure is their ratio, target >= 1.5;
4. ``demo``: the demo config on the GPU with fewer images (its CRF stages run on the CPU).

``--device cpu`` runs the same steps on the CPU with tiny sizes (gloo instead of NCCL, a tiny
segmenter in bench_seg, the tiny pipeline as the demo): a dry run of this script, whose timings
mean nothing. Exit status 0 when every step ran and passed its checks; a missed speed target is a
figure, not a failure.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from common import machine

from weaktr.engine.state import read_state_extra
from weaktr.runtime.layout import RunLayout

REPO = Path(__file__).resolve().parents[1]
TINY_OVERRIDES = REPO / ".ci" / "wheel_demo_overrides.txt"
TARGET_SPEEDUP = 1.5
LIMITS_S = {"cuda_tests": 100, "torchrun": 80, "bench_seg": 120, "demo": 150}  # 450 s in all on the GPU
DRY_RUN_SLACK = 5  # the dry run's limits: a shared 2-core CPU is far slower than an H200 machine
DEMO_GPU = ["data.demo.n_train=400", "data.demo.n_val=100"]  # the demo's models and epochs


def tiny_overrides() -> list[str]:
    """The tiny pipeline of the wheel check: 24 + 8 images of 48 px, one-block models, one epoch."""
    lines = TINY_OVERRIDES.read_text().splitlines()
    return [ln for ln in lines if ln.strip() and not ln.startswith("#")]


def cuda_test_ids(tests: Path) -> list[str]:
    """Node ids of the tests whose decorators or body mention ``cuda`` (whole files for a pytestmark).

    This check's own test runs this script, so it is left out.
    """
    ids: list[str] = []
    for path in sorted(tests.glob("test_*.py")):
        if path.name == "test_gpu_check.py":
            continue
        source = path.read_text()
        tree = ast.parse(source)

        def mentions_cuda(*nodes: ast.AST, source: str = source) -> bool:
            return any("cuda" in (ast.get_source_segment(source, n) or "") for n in nodes)

        marks = [
            n
            for n in tree.body
            if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in n.targets)
        ]
        if mentions_cuda(*marks):
            ids.append(path.name)
            continue
        for node in tree.body:
            funcs = node.body if isinstance(node, ast.ClassDef) else [node]
            for func in funcs:
                is_test = isinstance(func, ast.FunctionDef) and func.name.startswith("test")
                if is_test and mentions_cuda(*func.decorator_list, func):
                    prefix = f"{node.name}::" if isinstance(node, ast.ClassDef) else ""
                    ids.append(f"{path.name}::{prefix}{func.name}")
    return ids


def junit_counts(xml_path: Path) -> dict[str, int]:
    """Passed, failed, skipped, and skipped for want of a GPU, from pytest's JUnit XML."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "skipped_for_no_gpu": 0}
    for case in ET.parse(xml_path).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
        elif (skip := case.find("skipped")) is not None:
            counts["skipped"] += 1
            reason = (skip.get("message") or "").lower()
            counts["skipped_for_no_gpu"] += "cuda" in reason or "gpu" in reason
        else:
            counts["passed"] += 1
    return counts


class Check:
    """Runs the steps, each with its limit, and keeps their figures and the tail of their output."""

    def __init__(self, device: str, out: Path, work: Path) -> None:
        self.device, self.out, self.work = device, out, work
        self.dry = device == "cpu"
        self.limits = {k: v * (DRY_RUN_SLACK if self.dry else 1) for k, v in LIMITS_S.items()}
        self.steps: dict[str, dict[str, Any]] = {}
        self.log: list[str] = []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def run(self, step: str, cmd: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
        """One command of ``step`` within what is left of its limit; its output goes to the log."""
        spent = self.steps.setdefault(step, {}).get("wall_s", 0.0)
        started = time.perf_counter()
        # a session of its own, so a timeout ends torchrun's workers too
        with subprocess.Popen(
            cmd,
            cwd=cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        ) as child:
            try:
                output, _ = child.communicate(timeout=max(1.0, self.limits[step] - spent))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                output, _ = child.communicate()
                output += f"\ntimed out: the step's limit is {self.limits[step]} s"
        self.steps[step]["wall_s"] = round(spent + time.perf_counter() - started, 1)
        self.log += [f"=== {step}: {' '.join(cmd)} (exit {child.returncode})", *output.splitlines()[-60:]]
        return subprocess.CompletedProcess(cmd, child.returncode, output)

    def step(self, name: str, body: Callable[[], dict[str, Any]]) -> None:
        """Run one step's body; an exception or a failed check marks the step failed, never the rest."""
        self.steps.setdefault(name, {})
        try:
            figures = body()
            self.steps[name].update(figures)
            self.steps[name].setdefault("status", "ok")
        except Exception as exc:  # the check reports every step, so one failure must not stop it
            self.steps[name].update(status="failed", error=f"{type(exc).__name__}: {exc}")
        print(f"gpu check: {name}: {self.steps[name]['status']} ({self.steps[name].get('wall_s', 0)} s)")

    def cuda_tests(self) -> dict[str, Any]:
        ids = cuda_test_ids(REPO / "tests")
        if not ids:
            raise RuntimeError("no test in tests/ mentions cuda")
        xml = self.work / "cuda_tests.xml"
        proc = self.run(
            "cuda_tests",
            [sys.executable, "-m", "pytest", "-q", f"--junitxml={xml}"] + [f"tests/{i}" for i in ids],
        )
        if proc.returncode == 5:
            raise RuntimeError("pytest collected no test (exit 5)")
        counts = junit_counts(xml) if xml.is_file() else {}
        if proc.returncode or counts.get("failed") or not counts.get("passed"):
            raise RuntimeError(f"pytest exit {proc.returncode}: {counts}")
        if counts["skipped_for_no_gpu"] and not self.dry:
            raise RuntimeError(f"{counts['skipped_for_no_gpu']} CUDA tests skipped on a GPU machine")
        return {"tests": ids, **counts}

    def torchrun(self) -> dict[str, Any]:
        backend = "gloo" if self.dry else "nccl"
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
        run_dir = self.work / "torchrun"
        args = ["demo", "--run-dir", str(run_dir), "--until", "train_seg", f"device={self.device}"]
        proc = self.run("torchrun", [*launch, __file__, "--probe", backend, *args, *tiny_overrides()])
        if proc.returncode or f"{backend} all_reduce ok" not in proc.stdout:
            raise RuntimeError(
                f"the all-reduce or the tiny pipeline under torchrun failed (exit {proc.returncode})"
            )
        layout = RunLayout(run_dir)
        setup = read_state_extra(layout.seg_state)["setup"]
        if setup["world"] != 1 or not layout.seg_model.is_file():
            raise RuntimeError(f"train-seg under torchrun left {setup} and no model")
        stages = json.loads(layout.summary.read_text())["stage_seconds"]
        return {"backend": backend, "all_reduce_ok": True, "world": 1, "stage_seconds": stages}

    def bench_seg(self) -> dict[str, Any]:
        bench_json = self.out / "gpu_check_bench_seg.json"
        # a dry run exercises the bf16 path even where the CPU only emulates it: the tiny model costs little
        size = ["--tiny", "--repeats", "1", "--force-bf16"] if self.dry else ["--repeats", "10"]
        cmd = [sys.executable, str(REPO / "benchmarks" / "bench_seg.py"), "--sections", "train"]
        proc = self.run(
            "bench_seg", [*cmd, "--device", self.device, "--train-bf16", *size, "--out", str(bench_json)]
        )
        if proc.returncode:
            raise RuntimeError(f"bench_seg.py failed (exit {proc.returncode})")
        timings = json.loads(bench_json.read_text())["timings"]
        walls = {k: timings[k]["wall_s"] for k in ("train_step", "train_step_bf16", "train_step_authors_way")}
        speedup = walls["train_step_authors_way"] / walls["train_step_bf16"]
        figures: dict[str, Any] = {f"{k}_s": round(v, 4) for k, v in walls.items()}
        figures.update(
            bf16_speedup_vs_authors_way=round(speedup, 2),
            target=TARGET_SPEEDUP,
            target_met=None if self.dry else speedup >= TARGET_SPEEDUP,  # a dry run measures nothing
            peak_memory_gib={k: timings[k].get("peak_memory_gib") for k in walls},
        )
        return figures

    def demo(self) -> dict[str, Any]:
        run_dir = self.work / "demo"
        crf = importlib.util.find_spec("pydensecrf") is not None
        sizes = tiny_overrides() if self.dry else DEMO_GPU
        extra = [] if crf else ["seeds.crf=false", "predict.crf=false"]
        cmd = [sys.executable, "-m", "weaktr", "demo", "--run-dir", str(run_dir), f"device={self.device}"]
        proc = self.run("demo", [*cmd, *sizes, *extra])
        if proc.returncode:
            raise RuntimeError(f"weaktr demo failed (exit {proc.returncode})")
        layout = RunLayout(run_dir)
        if not layout.report.is_file():
            raise RuntimeError(f"weaktr demo left no {layout.report}")
        summary = json.loads(layout.summary.read_text())
        miou = {k: round(v["miou"], 3) for k, v in summary.items() if isinstance(v, dict) and "miou" in v}
        return {
            "overrides": sizes + extra,
            "crf": crf,
            "miou": miou,
            "stage_seconds": summary["stage_seconds"],
        }


def table(steps: dict[str, dict[str, Any]]) -> str:
    """The summary: one row per step with its status, time and headline figure."""
    rows = ["| step | status | wall s | figure |", "|---|---|---|---|"]
    for name, s in steps.items():
        if s.get("status") != "ok":
            figure = s.get("error", "")
        elif name == "cuda_tests":
            figure = f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped"
        elif name == "torchrun":
            figure = f"{s['backend']} all-reduce ok; tiny pipeline to train-seg, world {s['world']}"
        elif name == "bench_seg":
            met = {True: "met", False: "not met", None: "dry run"}[s["target_met"]]
            figure = (
                f"train step bf16 {s['train_step_bf16_s']:.3f} s vs our model with the authors' attention "
                f"{s['train_step_authors_way_s']:.3f} s: {s['bf16_speedup_vs_authors_way']:.2f}× "
                f"(target ≥ {s['target']}×: {met})"
            )
        else:
            figure = f"segmenter (val) mIoU {s['miou'].get('segmenter', float('nan')):.3f}, crf {s['crf']}"
        rows.append(f"| {name} | {s.get('status')} | {s.get('wall_s', 0)} | {figure} |")
    return "\n".join(rows)


def probe_then_weaktr(backend: str, weaktr_args: list[str]) -> int:
    """Under torchrun: check one all-reduce in a ``backend`` process group, then run ``weaktr ARGS``.

    One process for both, so the check pays for one launch; the group is left before weaktr starts,
    which opens none for a single process.
    """
    import torch.distributed as dist

    from weaktr.cli import main as weaktr

    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    value = torch.ones(4, device=device) * (dist.get_rank() + 1)
    dist.all_reduce(value)
    expected = dist.get_world_size() * (dist.get_world_size() + 1) / 2
    dist.destroy_process_group()
    if not torch.allclose(value.cpu(), torch.full((4,), expected)):
        raise SystemExit(f"{backend} all_reduce gave {value.tolist()}, expected {expected}")
    print(f"{backend} all_reduce ok on {device}", flush=True)
    return weaktr(weaktr_args)


def main() -> int:
    if sys.argv[1:2] == ["--probe"]:  # the torchrun worker: --probe BACKEND WEAKTR_ARGS...
        return probe_then_weaktr(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", type=Path, required=True, help="for gpu_check.json, .log, _bench_seg.json")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the run directories")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu check: no CUDA GPU here; WEAKTR_GPU_CHECK_DEVICE=cpu runs the CPU dry run", file=sys.stderr
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.device, args.out, args.work)
    started = time.perf_counter()
    result = {
        "mode": "cpu-dry-run" if check.dry else "cuda",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "limits_s": check.limits,
        "steps": check.steps,
    }
    for name in LIMITS_S:
        check.step(name, getattr(check, name))
        result["total_s"] = round(time.perf_counter() - started, 1)
        result["ok"] = len(check.steps) == len(LIMITS_S) and all(
            s.get("status") == "ok" for s in check.steps.values()
        )
        # after every step, so what ran survives a kill of the whole check
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "gpu_check.log").write_text("\n".join(check.log) + "\n")
    print(table(check.steps))
    print(f"gpu check ({result['mode']}): {'passed' if result['ok'] else 'FAILED'} in {result['total_s']} s")
    print(f"written: {args.out / 'gpu_check.json'}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
