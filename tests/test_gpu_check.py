"""benchmarks/gpu_check.sh: its CPU dry run, and how it finds the GPU tests and reads pytest's XML."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu_check(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # gpu_check imports its sibling `common`
    import gpu_check

    return gpu_check


def test_the_gpu_tests_are_found_by_what_they_mention(gpu_check: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "test_a.py").write_text(
        textwrap.dedent(
            """
            import pytest, torch

            @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
            def test_skipped_without_gpu(): ...

            def test_device_in_body():
                assert torch.device("cuda").type

            def test_plain(): ...

            class TestGroup:
                def test_method(self):
                    torch.cuda.synchronize()
            """
        )
    )
    (tmp_path / "test_b.py").write_text(
        "import pytest, torch\n\npytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='x')\n"
        "def test_one(): ...\n"
    )
    (tmp_path / "test_gpu_check.py").write_text("def test_cuda(): ...\n")  # the check's own: left out
    assert gpu_check.cuda_test_ids(tmp_path) == [
        "test_a.py::test_skipped_without_gpu",
        "test_a.py::test_device_in_body",
        "test_a.py::TestGroup::test_method",
        "test_b.py",
    ]


def test_junit_counts_tell_gpu_skips_from_other_skips(gpu_check: ModuleType, tmp_path: Path) -> None:
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite><testcase name="a"/><testcase name="b"><failure message="x"/></testcase>'
        '<testcase name="c"><skipped message="needs a CUDA GPU"/></testcase>'
        '<testcase name="d"><skipped message="golden case not found"/></testcase>'
        '<testcase name="e"><error message="fixture"/></testcase></testsuite></testsuites>'
    )
    assert gpu_check.junit_counts(xml) == {"passed": 1, "failed": 2, "skipped": 2, "skipped_for_no_gpu": 1}


@pytest.mark.slow
def test_cpu_dry_run_runs_every_step_and_writes_the_figures(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "WEAKTR_GPU_CHECK_DEVICE": "cpu", "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["mode"] == "cpu-dry-run" and result["ok"]
    steps = result["steps"]
    assert list(steps) == ["cuda_tests", "torchrun", "bench_seg", "demo"]
    assert all(s["status"] == "ok" and s["wall_s"] > 0 for s in steps.values())
    tests = steps["cuda_tests"]
    assert "test_api.py::test_gpu_agrees_with_cpu" in tests["tests"]
    assert tests["passed"] > 0 and tests["failed"] == 0 and tests["skipped_for_no_gpu"] >= 1
    assert steps["torchrun"]["backend"] == "gloo" and set(steps["torchrun"]["stage_seconds"]) >= {
        "train_cam",
        "train_seg",
    }
    bench = steps["bench_seg"]
    assert bench["train_step_bf16_s"] > 0 and bench["train_step_authors_way_s"] > 0
    assert bench["target_met"] is None  # a dry run claims no speed-up
    assert json.loads((out / "gpu_check_bench_seg.json").read_text())["settings"]["train_tiny"]
    assert 0.0 <= steps["demo"]["miou"]["segmenter"] <= 1.0
    assert "| bench_seg | ok |" in proc.stdout and "passed" in proc.stdout.splitlines()[-2]
    assert steps["torchrun"]["all_reduce_ok"] and "=== torchrun" in (out / "gpu_check.log").read_text()
    assert not list(tmp_path.glob("weaktr-gpu-check.*"))  # the scratch folder is removed
