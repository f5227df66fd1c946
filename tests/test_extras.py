"""Without an optional extra every module still imports, and what needs one stops before any work with
one line naming the pip command (exit 2)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_pipeline import TINY

from weaktr import extras
from weaktr.cli import main
from weaktr.config import load_config
from weaktr.errors import InputError
from weaktr.pipeline import require_extras

NO_CRF = ("pydensecrf", "pydensecrf.densecrf", "pydensecrf.utils")


def _block(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """As if ``modules`` were not installed: importing them raises ImportError."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _error_lines(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("weaktr ")]


def test_require_names_the_extra_and_its_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    extras.require("viz", "the report")  # installed here: nothing happens
    _block(monkeypatch, "matplotlib")
    with pytest.raises(InputError) as err:
        extras.require("viz", "the report")
    assert err.value.lines() == ["the report needs matplotlib: pip install 'weaktr[viz]'"]
    _block(monkeypatch, *NO_CRF)
    assert extras.missing("crf") == ["pydensecrf"]
    with pytest.raises(ValueError, match="unknown extra"):
        extras.require("gpu", "x")


def test_report_without_matplotlib_is_one_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _block(monkeypatch, "matplotlib", "matplotlib.pyplot")
    lines = _error_lines(capsys, ["report", str(run)])
    assert lines == ["weaktr report: error: the report needs matplotlib: pip install 'weaktr[viz]'"]
    assert list(run.iterdir()) == []


@pytest.mark.parametrize(
    ("blocked", "settings", "expected"),
    [
        (
            NO_CRF,
            [],
            "the seeds' label CRF (seeds.crf=false skips it) needs pydensecrf: pip install 'weaktr[crf]'",
        ),
        (NO_CRF, ["seeds.crf=false"], "the prediction CRF (predict.crf=false skips it) needs pydensecrf"),
        (
            ("matplotlib",),
            [],
            "the report (report.enabled=false skips it) needs matplotlib: pip install 'weaktr[viz]'",
        ),
    ],
    ids=["label-crf", "prediction-crf", "report"],
)
def test_a_run_needing_a_missing_extra_stops_before_its_first_stage(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    blocked: tuple[str, ...],
    settings: list[str],
    expected: str,
) -> None:
    _block(monkeypatch, *blocked)
    run = tmp_path / "run"
    lines = _error_lines(capsys, ["demo", "--run-dir", str(run), *TINY, *settings])
    assert len(lines) == 1 and lines[0].startswith(f"weaktr demo: error: {expected}")
    assert not run.exists()  # no folder, no demo data, no config, no log


def test_only_the_stages_a_run_reaches_need_their_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    _block(monkeypatch, "matplotlib", *NO_CRF)
    cfg = load_config("demo")
    require_extras(cfg, until="views")  # phase 1 up to the CRF needs no extra
    with pytest.raises(InputError, match=r"weaktr\[crf\]"):
        require_extras(cfg, until="seeds")
    off = load_config("demo", ["seeds.crf=false", "predict.crf=false", "report.enabled=false"])
    require_extras(off)  # the whole run without any extra


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            ["make-seeds"],
            "weaktr make-seeds: error: the seeds' label CRF (seeds.crf; --no-crf skips it) "
            "needs pydensecrf: pip install 'weaktr[crf]'",
        ),
        (
            ["predict"],
            "weaktr predict: error: the prediction CRF (predict.crf; --no-crf skips it) "
            "needs pydensecrf: pip install 'weaktr[crf]'",
        ),
        (
            ["predict", "--no-crf", "--backend", "onnxruntime"],
            "weaktr predict: error: --backend onnxruntime needs onnxruntime: pip install 'weaktr[onnx]'",
        ),
    ],
    ids=["make-seeds", "predict", "predict-onnxruntime"],
)
def test_stage_commands_needing_an_extra_stop_before_opening_the_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    expected: str,
) -> None:
    _block(monkeypatch, *NO_CRF, "onnxruntime")
    run = tmp_path / "run"
    assert _error_lines(capsys, [*command, "--config", "demo", "--run-dir", str(run)]) == [expected]
    assert not run.exists()


_BARE = """
import importlib, pkgutil, sys
BLOCKED = {"matplotlib", "pydensecrf", "tensorboard", "onnx", "onnxruntime", "onnxscript", "playwright"}
sys.modules.update(dict.fromkeys(BLOCKED))  # None: as if not installed (find_spec says None too)
import weaktr
for info in pkgutil.walk_packages(weaktr.__path__, "weaktr."):
    if info.name != "weaktr.__main__":
        importlib.import_module(info.name)
from weaktr.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_bare_install_imports_every_module_and_names_the_missing_extra(tmp_path: Path) -> None:
    """A real process without any extra: every module imports; ``weaktr report`` says what to install."""
    (tmp_path / "run").mkdir()
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_BARE), "report", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "weaktr report: error: the report needs matplotlib: pip install 'weaktr[viz]'"
    ]
