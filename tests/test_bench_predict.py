"""benchmarks/bench_predict.py: the voc config's ``weaktr predict`` of 640×480 photos against the benchmark.

The real-size run takes minutes; here the window arithmetic that makes the 500×375 benchmark figure
the one "scaled to 640×480", and the ``--tiny`` dry run end to end (two ``weaktr predict`` processes).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import pytest

from weaktr.config import load_config
from weaktr.evaluation.inference import InferenceSettings

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench_predict(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # benchmarks/ is not a package
    return importlib.import_module("bench_predict")


def test_voc_gives_a_500x375_and_a_640x480_photo_the_same_64_windows(bench_predict: ModuleType) -> None:
    settings = InferenceSettings.from_config(load_config("voc").predict)
    assert bench_predict.windows((375, 500), settings) == bench_predict.windows((480, 640), settings) == 64
    one = InferenceSettings(scales=(1.0,), flip=False)
    assert bench_predict.windows((375, 500), one) == 4  # 520×693 (base 520): 2 × 2 windows of 480²


@pytest.mark.slow
def test_tiny_dry_run_times_both_predict_commands_and_names_the_cpu(
    bench_predict: ModuleType, coco_mini: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench_predict.json"
    bench_predict.main(["--tiny", "--images", "2", "--rounds", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["settings"]["tiny"] and res["settings"]["predict"]["scales"] == [1.0]
    bench, photo = res["in_process"]["bench"], res["in_process"]["photo"]
    assert (bench["hw"], photo["hw"]) == ([30, 40], [48, 64]) and bench["windows"] == photo["windows"] > 0
    assert res["scaled_bench_s"] == pytest.approx(bench["wall_s"])
    for key in ("no_crf", "crf"):
        run = res["pipeline"][key]
        assert run["images"] == 2 and len(run["intervals_s"]) == 1 and run["cpu_s"] > 0
        assert ("--no-crf" in run["command"]) == (key == "no_crf")
        assert "--config" in run["command"] and "voc" in run["command"]
        assert res["ratios"][key] == pytest.approx(run["per_image_s"] / res["scaled_bench_s"])
    assert "cpu_simd_flags" in res["machine"] and len(res["load_average_after"]) == 3
    printed = capsys.readouterr().out
    assert f"- CPU: {res['machine']['cpu']} [" in printed
    assert "| weaktr predict --no-crf, per image (median of 1 intervals) |" in printed
    assert "| weaktr predict, CRF, per image" in printed and "≤ 1.3×: " in printed
