"""benchmarks/summary.py: the one table of speed ratios against the authors (synthetic and real results)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


@pytest.fixture
def summary(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # benchmarks/ is not a package
    return importlib.import_module("summary")


def timing(wall: float, walls: list[float] | None = None, **extra: Any) -> dict[str, Any]:
    return {"wall_s": wall, "cpu_s": 2 * wall, "walls": walls or [wall], **extra}


def machine(cpu: str) -> dict[str, Any]:
    return {"cpu": cpu, "cpu_capability": "AVX512", "torch_threads": 2}


def cam_results(agreement: float = 0.996) -> dict[str, Any]:
    return {
        "machine": machine("Test Xeon"),
        "load_before": [0.5, 0.4, 0.3],
        "load_after": [1.0, 0.9, 0.8],
        "train_step": {"float32": timing(1.23), "bf16": timing(0.5)},
        "cam_gen": {
            "ours_float32": timing(1.15, [1.1, 1.15, 1.2]),
            "ours_bf16": timing(0.5, [0.5, 0.5, 0.5]),
            "theirs_float32": timing(2.0, [2.2, 2.0, 1.8]),
            "theirs_bf16": timing(1.0),
        },
        "bf16_seed_agreement": agreement,
    }


def seg_results(cpu: str = "Test Xeon") -> dict[str, Any]:
    return {
        "machine": machine(cpu),
        "load_average_before": [0.1, 0.2, 0.3],
        "load_average_after": [0.4, 0.5, 0.6],
        "settings": {"train_device": "cpu", "train_tiny": False},
        "timings": {
            "train_step": timing(5.62),
            "train_step_authors_way": timing(8.43),
            "infer_1scale": timing(1.5),
            "infer_1scale_bf16": timing(1.1, agreement=0.994, counts=False),
            "infer_6scale_flip_ens": timing(18.5, authors_way_ratios=[1.2, 1.3, 1.25]),
            "infer_6scale_flip_ens_bf16": timing(12.0, authors_way_ratios=[1.9, 2.1, 2.0], agreement=0.997),
            "infer_6scale_flip_ens_authors_way": timing(24.0, agreement=1.0, counts=True),
            "crf_1": timing(1.2),
        },
    }


REASON = "no native bf16 on this CPU (no AVX512-BF16 or AMX)"
SKIPPED = "skipped (no native bf16)"


def without_bf16(cam: dict[str, Any], seg: dict[str, Any], train_bf16: bool) -> None:
    """The results as a run on a CPU without native bf16 writes them: no bf16 entry, the reason why."""
    del cam["train_step"]["bf16"], cam["cam_gen"]["ours_bf16"], cam["cam_gen"]["theirs_bf16"]
    del cam["bf16_seed_agreement"]
    del seg["timings"]["infer_1scale_bf16"], seg["timings"]["infer_6scale_flip_ens_bf16"]
    seg["settings"]["train_bf16"] = train_bf16  # asked for the step's bf16 twin too
    cam["bf16_skipped"] = seg["bf16_skipped"] = REASON


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def rows(text: str) -> dict[tuple[str, str], list[str]]:
    """The table's rows as cells, keyed by (measure, precision)."""
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in text.splitlines() if ln.startswith("| ")]
    return {(c[0], c[1]): c for c in cells[1:]}


CAM_GEN = "multi-scale CAM generation 1.0/1.2 + flips"
SIX = "6 scales × flip + ensemble"


def test_ratios_verdicts_and_sources(summary: ModuleType, tmp_path: Path) -> None:
    cam = write(tmp_path / "bench_cam_20260101-000000.json", cam_results())
    seg = write(tmp_path / "bench_seg.json", seg_results())
    text = summary.summary(cam, seg)
    table = rows(text)
    # CAM generation fp32: 4.60 / 1.15 = 4.00×; re-enactment 2.0 / 1.15 = 1.74× < 2×; rounds 1.50–2.00
    assert table[(CAM_GEN, "fp32")][2:] == [
        "1.15 (2.30)",
        "4.60",
        "4.00×",
        "1.74× (1.50–2.00)",
        "≥ 2× against the re-enactment: missed",
    ]
    # bf16: 4.60 / 0.5 = 9.20×; 2.0 / 0.5 = 4.00× ≥ 3× with 99.60 % of seeds agreeing
    assert table[(CAM_GEN, "bf16")][4:] == [
        "9.20×",
        "4.00× (3.60–4.40)",
        "≥ 3× against the re-enactment: met; seeds agree 99.60 % with fp32",
    ]
    assert table[("CAM training step, b8 224²", "fp32")][3:5] == ["2.46", "2.00×"]
    step = table[("segmenter training step, b4 480² + GC loss", "fp32")]
    assert step[3:6] == ["11.24", "2.00×", "1.50×"]  # 11.24 / 5.62, the authors' way 8.43 / 5.62
    assert ("segmenter training step, b4 480² + GC loss", "bf16") not in table  # not in the results
    assert table[("1-scale inference, 500×375", "fp32")][3:7] == ["", "", "", ""]  # no figure of theirs
    assert table[("1-scale inference, 500×375", "bf16")][6] == (
        "does not count: pixels agree 99.40 % with fp32 (< 99.5 %)"
    )
    assert table[(SIX, "fp32")][3:6] == ["37.00", "2.00×", "1.25× (1.20–1.30)"]  # 37.0 / 18.5
    assert table[(SIX, "bf16")][4:] == ["3.08×", "2.00× (1.90–2.10)", "pixels agree 99.70 % with fp32"]
    assert "`bench_cam_20260101-000000.json`, Test Xeon (AVX512), 2 torch threads" in text
    assert "load 0.50/0.40/0.30 → 1.00/0.90/0.80" in text
    assert "load 0.10/0.20/0.30 → 0.40/0.50/0.60" in text
    assert "different CPUs" not in text
    assert SKIPPED not in text and "not timed" not in text  # files with bf16 entries read as ever


@pytest.mark.parametrize("train_bf16", [True, False])
def test_a_run_without_native_bf16_shows_its_bf16_rows_as_skipped_and_not_measured(
    summary: ModuleType, tmp_path: Path, train_bf16: bool
) -> None:
    cam_res, seg_res = cam_results(), seg_results()
    without_bf16(cam_res, seg_res, train_bf16)
    text = summary.summary(write(tmp_path / "cam.json", cam_res), write(tmp_path / "seg.json", seg_res))
    table = rows(text)
    verdict = "≥ 3× against the re-enactment: not measured"
    assert table[(CAM_GEN, "bf16")][2:] == [SKIPPED, "", "", "", verdict]
    assert table[(CAM_GEN, "fp32")][2:5] == ["1.15 (2.30)", "4.60", "4.00×"]  # float32 as before
    step = "segmenter training step, b4 480² + GC loss"
    skipped = ["CAM training step, b8 224²", "1-scale inference, 500×375", SIX]
    for measure in [*skipped, step] if train_bf16 else skipped:
        assert table[(measure, "bf16")][2:] == [SKIPPED, "", "", "", "not measured"]
    assert ((step, "bf16") in table) == train_bf16  # a skip row only for what the run was asked for
    assert not any("met" in cells[6] for (_, prec), cells in table.items() if prec == "bf16")
    assert f"- phase 1: bf16 not timed, {REASON}" in text
    assert f"- phase 2: bf16 not timed, {REASON}" in text


def test_bf16_cam_generation_under_the_agreement_bar_does_not_count(
    summary: ModuleType, tmp_path: Path
) -> None:
    cam = write(tmp_path / "cam.json", cam_results(agreement=0.994))
    seg = write(tmp_path / "seg.json", seg_results(cpu="Test EPYC"))
    text = summary.summary(cam, seg)
    bf16 = rows(text)[(CAM_GEN, "bf16")]
    assert bf16[5] == "4.00× (3.60–4.40)"  # the ratio is shown, but it is not a verdict
    assert bf16[6] == "does not count: seeds agree 99.40 % with fp32 (< 99.5 %)"
    assert "- the two files come from different CPUs (Test Xeon / Test EPYC)" in text


def test_authors_file_overrides_and_extends(summary: ModuleType, tmp_path: Path) -> None:
    cam = write(tmp_path / "cam.json", cam_results())
    seg = write(tmp_path / "seg.json", seg_results())
    authors = write(tmp_path / "authors.json", {"cam_gen": 2.3, "infer_1scale": 3.0})
    out = tmp_path / "table.md"
    summary.main(["--cam", str(cam), "--seg", str(seg), "--authors", str(authors), "--out", str(out)])
    table = rows(out.read_text())
    assert table[(CAM_GEN, "fp32")][3:5] == ["2.30", "2.00×"]  # 2.3 / 1.15
    assert table[("1-scale inference, 500×375", "fp32")][3:5] == ["3.00", "2.00×"]  # 3.0 / 1.5
    assert table[(SIX, "fp32")][3] == "37.00"  # the default stays
    assert f"overridden by `{authors}`" in out.read_text()


def test_unknown_authors_key_exits_2_naming_the_file(
    summary: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cam = write(tmp_path / "cam.json", cam_results())
    seg = write(tmp_path / "seg.json", seg_results())
    authors = write(tmp_path / "authors.json", {"cam_gen": 4.0, "label_crf": 0.39})
    with pytest.raises(SystemExit) as exit_:
        summary.main(["--cam", str(cam), "--seg", str(seg), "--authors", str(authors)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert str(authors) in err and "'label_crf'" in err
    known = ["cam_gen", "cam_train_step", "infer_1scale", "infer_6scale_flip_ens", "seg_train_step"]
    assert f"known: {known}" in err


@pytest.mark.parametrize("broken", ["missing", "not json"])
def test_unreadable_results_file_exits_2_naming_it(
    summary: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], broken: str
) -> None:
    cam = write(tmp_path / "cam.json", cam_results())
    seg = tmp_path / "seg.json"
    if broken == "not json":
        seg.write_text("{ half a file")
    with pytest.raises(SystemExit) as exit_:
        summary.main(["--cam", str(cam), "--seg", str(seg)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"summary.py: {seg}: cannot read it") and "\n" not in err


def test_the_real_results_files_give_a_cam_generation_and_a_six_scale_row() -> None:
    """As a user runs it, over what is in benchmarks/results/ now; torch is never imported."""
    code = (
        f"import runpy, sys; sys.argv = ['summary.py']; sys.path.insert(0, {str(BENCH)!r}); "
        f"runpy.run_path({str(BENCH / 'summary.py')!r}, run_name='__main__'); "
        "assert 'torch' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)
    newest = sorted(BENCH.glob("results/bench_cam_*.json"))[-1].name
    assert f"`{newest}`" in done.stdout and "`bench_seg.json`" in done.stdout
    assert (CAM_GEN, "fp32") in table and table[(CAM_GEN, "fp32")][4].endswith("×")
    assert (SIX, "fp32") in table and table[(SIX, "fp32")][3] == "37.00"
