"""benchmarks/summary.py: the one table of speed ratios against the authors (synthetic and real results).

The authors' figures are divided into a file's only when its CPU is of the kind theirs were recorded
on (model name and SIMD flags); elsewhere the authors' column says there is none for that CPU.
"""

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


XEON = "Intel(R) Xeon(R) Processor"  # the built-in authors' figures' CPU, with every targets.SIMD_FLAGS
XEON_FLAGS = [
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "avx",
    "avx2",
    "avx512_bf16",
    "avx512_vnni",
    "avx512bw",
    "avx512f",
    "avx512vl",
    "fma",
]
EPYC_FLAGS = ["avx", "avx2", "fma"]


def machine(cpu: str, flags: list[str] | None = XEON_FLAGS) -> dict[str, Any]:
    found = {} if flags is None else {"cpu_simd_flags": flags}  # files before 2026-12-08 record none
    return {"cpu": cpu, "cpu_capability": "AVX512", "torch_threads": 2, **found}


def cam_results(agreement: float = 0.996) -> dict[str, Any]:
    return {
        "machine": machine(XEON),
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


def seg_results(cpu: str = XEON, flags: list[str] | None = XEON_FLAGS) -> dict[str, Any]:
    return {
        "machine": machine(cpu, flags),
        "load_average_before": [0.1, 0.2, 0.3],
        "load_average_after": [0.4, 0.5, 0.6],
        "settings": {"train_device": "cpu", "train_tiny": False},
        "timings": {
            "train_step": timing(5.62),
            "train_step_authors_way": timing(8.43),
            "infer_1scale": timing(1.5),
            "infer_1scale_bf16": timing(1.1, agreement=0.994, counts=False),
            "infer_6scale_flip_ens": timing(18.5),
            "infer_6scale_flip_ens_bf16": timing(12.0, fp32_ratios=[1.5, 1.6], agreement=0.997),
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
STEP = "segmenter training step, b4 480² + GC loss"


def test_ratios_verdicts_and_sources(summary: ModuleType, tmp_path: Path) -> None:
    cam = write(tmp_path / "bench_cam_20260101-000000.json", cam_results())
    seg = write(tmp_path / "bench_seg.json", seg_results())
    text = summary.summary(cam, seg)
    table = rows(text)
    # CAM generation fp32: 2.8284 / 1.15 = 2.46×; re-enactment 2.0 / 1.15 = 1.74× < 2×; rounds 1.50–2.00
    assert table[(CAM_GEN, "fp32")][2:] == [
        "1.15 (2.30)",
        "2.83",
        "2.46×",
        "1.74× (1.50–2.00)",
        "≥ 2× against the re-enactment: missed",
    ]
    # bf16: 2.8284 / 0.5 = 5.66×; 2.0 / 0.5 = 4.00× ≥ 3× with 99.60 % of seeds agreeing
    assert table[(CAM_GEN, "bf16")][4:] == [
        "5.66×",
        "4.00× (3.60–4.40)",
        "≥ 3× against the re-enactment: met; seeds agree 99.60 % with fp32",
    ]
    assert table[("CAM training step, b8 224²", "fp32")][3:5] == ["1.31", "1.06×"]  # 1.309 / 1.23
    step = table[(STEP, "fp32")]
    assert step[3:6] == ["5.34", "0.95×", "1.50×"]  # 5.3407 / 5.62; our model, their attention 8.43 / 5.62
    assert (STEP, "bf16") not in table  # not in the results
    assert table[("1-scale inference, 500×375", "fp32")][3:7] == ["", "", "", ""]  # no figure of theirs
    assert table[("1-scale inference, 500×375", "bf16")][6] == (
        "does not count: pixels agree 99.40 % with fp32 (< 99.5 %)"
    )
    assert table[(SIX, "fp32")][3:6] == ["27.15", "1.47×", ""]  # 27.1453 / 18.5; no re-enactment
    assert table[(SIX, "bf16")][4:] == ["2.26×", "", "pixels agree 99.70 % with fp32"]
    assert (
        f"`bench_cam_20260101-000000.json`, {XEON} [{' '.join(XEON_FLAGS)}] (AVX512), 2 torch threads" in text
    )
    assert "- authors' figures (their code, float32, s; their code on a 2-core Xeon, 2026-12-07" in text
    assert "load 0.50/0.40/0.30 → 1.00/0.90/0.80" in text
    assert "load 0.10/0.20/0.30 → 0.40/0.50/0.60" in text
    assert "different CPUs" not in text and "no ratio" not in text and "none for" not in text
    assert SKIPPED not in text and "not timed" not in text  # files with bf16 entries read as ever
    assert "re-enacted here" not in text and "not their code" in text  # the baselines named as they are


@pytest.mark.parametrize(
    ("cpu", "flags", "why"),
    [
        (
            "AMD EPYC 7B13",
            EPYC_FLAGS,
            "the results come from another kind of CPU, AMD EPYC 7B13 [avx avx2 fma]",
        ),
        (XEON, ["avx", "avx2", "avx512f", "fma"], "another kind of CPU"),  # same name, no AMX: another kind
        (XEON, None, f"the results record no SIMD flags of their CPU ({XEON})"),  # a file before 2026-12-08
    ],
)
def test_results_from_another_kind_of_cpu_get_no_ratio_and_say_so(
    summary: ModuleType, tmp_path: Path, cpu: str, flags: list[str] | None, why: str
) -> None:
    cam = write(tmp_path / "cam.json", cam_results())
    seg = write(tmp_path / "seg.json", seg_results(cpu, flags))
    text = summary.summary(cam, seg)
    table = rows(text)
    for measure in (STEP, SIX):
        for prec in ("fp32", "bf16") if measure == SIX else ("fp32",):
            assert table[(measure, prec)][3:5] == ["none for this CPU", ""]
    assert table[(STEP, "fp32")][5] == "1.50×"  # the same-run baseline stays
    assert table[(CAM_GEN, "fp32")][3:5] == ["2.83", "2.46×"]  # phase 1 is from the authors' kind
    line = next(ln for ln in text.splitlines() if ln.startswith("- phase 2: no ratio against the authors: "))
    assert why in line
    assert "- phase 1: no ratio" not in text
    assert "different CPUs" in text


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
    assert table[(CAM_GEN, "fp32")][2:5] == ["1.15 (2.30)", "2.83", "2.46×"]  # float32 as before
    step = STEP
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
    seg = write(tmp_path / "seg.json", seg_results(cpu="Test EPYC", flags=EPYC_FLAGS))
    text = summary.summary(cam, seg)
    bf16 = rows(text)[(CAM_GEN, "bf16")]
    assert bf16[5] == "4.00× (3.60–4.40)"  # the ratio is shown, but it is not a verdict
    assert bf16[6] == "does not count: seeds agree 99.40 % with fp32 (< 99.5 %)"
    flags = " ".join(XEON_FLAGS)
    assert f"- the two files come from different CPUs ({XEON} [{flags}] / Test EPYC [avx avx2 fma])" in text


def authors_file(cpu: str | None, flags: list[str] | None) -> dict[str, Any]:
    """The authors' own results file as shared/bench has it (meta with the CPU; for_summary)."""
    meta = {"cpu_model": cpu, "cpu_simd_flags": flags, "torch_threads": 2}
    return {
        "meta": {k: v for k, v in meta.items() if v is not None},
        "median_s": {"d2_seg_infer_ms6_flip": 37.0},
        "for_summary": {"cam_gen": 2.3, "infer_1scale": 3.0, "infer_6scale_flip_ens": 37.0},
    }


def test_an_authors_results_file_replaces_the_built_in_figures(summary: ModuleType, tmp_path: Path) -> None:
    cam = write(tmp_path / "cam.json", cam_results())
    seg = write(tmp_path / "seg.json", seg_results("AMD EPYC 7B13", EPYC_FLAGS))
    authors = write(tmp_path / "authors.json", authors_file("AMD EPYC 7B13", EPYC_FLAGS))
    out = tmp_path / "table.md"
    summary.main(["--cam", str(cam), "--seg", str(seg), "--authors", str(authors), "--out", str(out)])
    text = out.read_text()
    table = rows(text)
    assert table[("1-scale inference, 500×375", "fp32")][3:5] == ["3.00", "2.00×"]  # 3.0 / 1.5: same CPU
    assert table[(SIX, "fp32")][3:5] == ["37.00", "2.00×"]  # 37.0 / 18.5
    assert table[(STEP, "fp32")][3:5] == ["", ""]  # not in the file: no built-in figure mixed in
    assert table[(CAM_GEN, "fp32")][3:5] == ["none for this CPU", ""]  # phase 1 ran on the Xeon
    assert f"`{authors}`): AMD EPYC 7B13 [avx avx2 fma]: cam_gen 2.30" in text
    assert "- phase 1: no ratio against the authors: the results come from another kind of CPU" in text


def test_authors_figures_that_name_no_cpu_are_never_divided(summary: ModuleType, tmp_path: Path) -> None:
    cam = write(tmp_path / "cam.json", cam_results())
    seg = write(tmp_path / "seg.json", seg_results())
    authors = write(
        tmp_path / "authors.json", {"cam_gen": 2.3, "infer_6scale_flip_ens": 37.0}
    )  # flat, no CPU
    text = summary.summary(cam, seg, authors)
    table = rows(text)
    assert table[(CAM_GEN, "fp32")][3:5] == table[(SIX, "fp32")][3:5] == ["none for this CPU", ""]
    assert "- phase 2: no ratio against the authors: the authors' figures record no CPU" in text
    assert "CPU not recorded [SIMD flags not recorded]" in text


def test_unknown_authors_key_exits_2_naming_the_file(
    summary: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cam = write(tmp_path / "cam.json", cam_results())
    seg = write(tmp_path / "seg.json", seg_results())
    authors = write(tmp_path / "authors.json", authors_file(XEON, XEON_FLAGS))
    data = json.loads(authors.read_text())
    data["for_summary"]["label_crf"] = 0.39  # bench_cam's key, not the summary's
    authors.write_text(json.dumps(data))
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
    """As a user runs it, over what is in benchmarks/results/ now; torch is never imported. Those files
    predate the SIMD flags in the machine block, so no ratio against the authors is printed."""
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
    assert (CAM_GEN, "fp32") in table and table[(CAM_GEN, "fp32")][5].endswith(")")  # the re-enactment
    assert (SIX, "fp32") in table and table[(SIX, "fp32")][3:5] == ["none for this CPU", ""]
    assert "no ratio against the authors: the results record no SIMD flags" in done.stdout


def test_the_built_in_authors_figures_are_the_shared_xeon_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """targets.AUTHORS copies shared/bench's file (the package cannot read ../shared); this keeps the
    copy, and this module's XEON / XEON_FLAGS, equal to it."""
    path = REPO.parent / "shared" / "bench" / "authors-xeon-2026-12-07.json"
    if not path.is_file():
        pytest.skip(f"{path} is not beside the repository")
    monkeypatch.syspath_prepend(str(BENCH))
    authors = importlib.import_module("targets").AUTHORS
    data = json.loads(path.read_text())
    meta, median = data["meta"], data["median_s"]
    assert (authors.cpu, list(authors.simd)) == (meta["cpu_model"], sorted(meta["cpu_simd_flags"]))
    assert (meta["cpu_model"], sorted(meta["cpu_simd_flags"])) == (XEON, XEON_FLAGS)
    assert {k: v for k, v in authors.seconds.items() if k in data["for_summary"]} == data["for_summary"]
    assert authors.seconds["label_crf"] == data["for_bench_cam"]["label_crf"]
    assert authors.seconds["softmax_crf_21"] == median["e_crf_softmax_21"]
