"""benchmarks/: bf16 is timed only where it runs natively; a skipped bf16 shows as such, never as a number.

On a CPU without AVX512-BF16 or AMX oneDNN emulates bf16 ~100x slower than float32, so the scripts
skip it there (``common.precisions``) and the tables say "skipped (no native bf16)".
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SKIPPED = "skipped (no native bf16)"


def bench(monkeypatch: pytest.MonkeyPatch, name: str) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # benchmarks/ is not a package
    return importlib.import_module(name)


@pytest.fixture
def common(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    module = bench(monkeypatch, "common")
    module._say_bf16_skipped.cache_clear()  # the skip line is said once per process
    yield module
    module._say_bf16_skipped.cache_clear()


def timing(wall: float, **extra: Any) -> dict[str, Any]:
    return {"wall_s": wall, "cpu_s": 2 * wall, "walls": [wall], **extra}


@pytest.mark.parametrize("native", [False, True])
def test_cpu_times_bf16_only_where_it_is_native(
    common: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], native: bool
) -> None:
    monkeypatch.setattr(common, "cpu_bf16_native", lambda: native)
    assert common.precisions("cpu") == (("float32", "bf16") if native else ("float32",))
    assert common.precisions(common.torch.device("cpu")) == common.precisions("cpu")
    out = capsys.readouterr().out
    if native:
        assert out == ""
    else:  # one line, once, saying why
        assert out == f"bf16 skipped: {common.BF16_SKIPPED}\n"
        assert "no native bf16" in out and "100x slower" in out


def test_cuda_and_force_time_bf16_without_native_cpu_bf16(
    common: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(common, "cpu_bf16_native", lambda: False)
    assert common.precisions("cuda") == ("float32", "bf16")
    assert common.precisions("cpu", force=True) == ("float32", "bf16")
    assert capsys.readouterr().out == ""


def seg_skip_results(train_bf16: bool) -> dict[str, Any]:
    """bench_seg's results from a CPU of the kind the built-in authors' figures come from."""
    targets = importlib.import_module("targets")
    return {
        "machine": {
            "cpu": targets.AUTHORS.cpu,
            "cpu_simd_flags": list(targets.AUTHORS.simd),
            "torch_threads": 2,
        },
        "settings": {"train_device": "cpu", "train_tiny": False, "train_bf16": train_bf16},
        "bf16_skipped": "no native bf16 on this CPU",
        "timings": {
            "train_step": timing(5.0),
            "train_step_authors_way": timing(7.5),
            "infer_1scale": timing(1.5),
            "infer_6scale_flip_ens": timing(16.0),
            "backend_1scale_torch_fused": timing(1.2, agreement=1.0, counts=True, fused_ratios=[1.0]),
            "crf_1": timing(0.9),
        },
    }


def table_rows(text: str) -> dict[str, list[str]]:
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in text.splitlines() if ln.startswith("| ")]
    return {c[0]: c for c in cells}


@pytest.mark.parametrize("train_bf16", [False, True])
def test_bench_seg_table_lists_each_skipped_bf16_timing(
    monkeypatch: pytest.MonkeyPatch, train_bf16: bool
) -> None:
    bench_seg = bench(monkeypatch, "bench_seg")
    text = bench_seg.table(seg_skip_results(train_bf16))
    rows = table_rows(text)
    skipped = ["infer_1scale_bf16", "infer_6scale_flip_ens_bf16", "backend_1scale_torch_bf16"]
    skipped += ["train_step_bf16"] if train_bf16 else []
    for key in skipped:
        assert rows[key] == [key, SKIPPED, "", "", "", "", "not measured"]
    assert ("train_step_bf16" in rows) == train_bf16  # only what --train-bf16 asked for
    assert "backend_6scale_flip_ens_torch_bf16" not in rows  # no fp32 twin in these results
    assert rows["infer_6scale_flip_ens"][3:5] == ["27.15", "1.70×"]  # the float32 rows as ever: 27.15 / 16.0
    assert "bf16 skipped: no native bf16 on this CPU" in text


def test_bench_seg_table_of_a_file_with_bf16_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    bench_seg = bench(monkeypatch, "bench_seg")
    res = seg_skip_results(train_bf16=True)
    del res["bf16_skipped"]
    res["timings"]["infer_1scale_bf16"] = timing(1.0, agreement=0.999, counts=True)
    text = bench_seg.table(res)
    assert SKIPPED not in text and "bf16 skipped" not in text
    assert table_rows(text)["infer_1scale_bf16"][1:] == [
        "1.00",
        "2.00",
        "",
        "",
        "",
        "agrees 99.90% with fp32",
    ]


def cam_skip_results() -> dict[str, Any]:
    machine = {"cpu": "Test EPYC", "cores": 2, "cores_usable": 2, "torch": "2", "torch_threads": 2}
    return {
        "machine": {**machine, "cuda": None},
        "load_before": [1.0, 1.0, 1.0],
        "load_after": [1.0, 1.0, 1.0],
        "bf16_skipped": "no native bf16 on this CPU",
        "train_step": {"float32": timing(1.0)},
        "cam_gen": {
            "ours_float32": timing(1.0),
            "theirs_float32": timing(2.5),
            "gflop": 100.0,
            "peak_gflops": {"float32": 200.0},
        },
        "label_crf": timing(0.3),
        "seeds_crf_8": {"workers_1": timing(4.0), "workers_2": timing(2.5)},
    }


def test_bench_cam_table_shows_the_skip_and_no_bf16_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    bench_cam = bench(monkeypatch, "bench_cam")
    lines = bench_cam.table(cam_skip_results()).splitlines()
    bf16 = [ln for ln in lines if "bf16" in ln]
    assert len([ln for ln in bf16 if SKIPPED in ln]) == 5  # step, ours, theirs, GFLOP/s, seed agreement
    assert not any(" ok" in ln or "missed" in ln for ln in bf16)  # never a verdict without a figure
    assert any(ln.strip().startswith(f"bf16     {SKIPPED}") and "not measured" in ln for ln in lines)
    assert any(ln.startswith("bf16 vs float32 seeds") and "not measured" in ln for ln in lines)
    assert lines[-1] == "bf16 skipped: no native bf16 on this CPU"
    fp32 = next(ln for ln in lines if ln.strip().startswith("float32") and "GFLOP/s" in ln)
    assert "50.0 % of this machine's 200 GFLOP/s" in fp32 and "target ≥ 2.0×: ok" in fp32  # 100/1.0/200


def test_bench_seg_tiny_run_records_the_skip(
    common: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The script end to end (a one-block model on 32² crops): no bf16 timing, the reason in the JSON."""
    bench_seg = bench(monkeypatch, "bench_seg")
    monkeypatch.setattr(common, "cpu_bf16_native", lambda: False)
    out = tmp_path / "seg.json"
    argv = ["bench_seg.py", "--tiny", "--sections", "train", "--train-bf16", "--repeats", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    bench_seg.main()
    res = json.loads(out.read_text())
    assert res["bf16_skipped"] == common.BF16_SKIPPED and res["settings"]["train_bf16"]
    assert set(res["timings"]) == {"train_step", "train_step_authors_way"}
    printed = capsys.readouterr().out
    assert f"| train_step_bf16 | {SKIPPED} |" in printed
    # said once when skipped, once under the table
    assert printed.count(f"bf16 skipped: {common.BF16_SKIPPED}") == 2
