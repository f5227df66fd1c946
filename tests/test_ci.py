"""CI's own scripts: .ci/run's exit status, the wheel file-list check, the wheel check's demo overrides
and installs, and the Makefile's install from requirements.lock."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from weaktr.config import load_config

REPO = Path(__file__).resolve().parents[1]
CI = REPO / ".ci"


def _wheel_contents() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wheel_contents", CI / "wheel_contents.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo_overrides() -> list[str]:
    lines = (CI / "wheel_demo_overrides.txt").read_text().splitlines()
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_the_wheel_checks_demo_overrides_are_valid_and_small() -> None:
    cfg = load_config("demo", _demo_overrides())
    assert cfg.data.demo.n_train <= 32 and cfg.data.demo.size <= 48
    assert cfg.cam_train.epochs == 1 and cfg.seg_train.epochs == 1
    assert cfg.cam_model["num_classes"] == cfg.data.demo.num_classes == cfg.seg_model["n_cls"] - 1
    assert cfg.report.enabled  # the check looks for report/index.html


def _fake_wheel(path: Path, names: set[str], license_expr: str = "MIT") -> Path:
    """A zip laid out as the weaktr wheel, with ``names`` as its package files."""
    info = "weaktr-0.1.0.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        for name in sorted(names):
            zf.writestr(name, "")
        zf.writestr(f"{info}/METADATA", f"Name: weaktr\nLicense-Expression: {license_expr}\n")
        zf.writestr(f"{info}/entry_points.txt", "[console_scripts]\nweaktr = weaktr.cli:main\n")
        zf.writestr(f"{info}/licenses/LICENSE", "MIT License\n")
    return path


def test_wheel_contents_expects_modules_configs_and_report_assets(tmp_path: Path) -> None:
    wc = _wheel_contents()
    repo = tmp_path / "repo"
    (repo / "src" / "weaktr").mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", repo / "pyproject.toml")
    for rel in ["__init__.py", "runtime/layout.py", "configs/demo.yaml", "report/templates/index.html.j2"]:
        (repo / "src" / "weaktr" / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / "src" / "weaktr" / rel).write_text("x")
    (repo / "src" / "weaktr" / "report" / "static").mkdir()
    (repo / "src" / "weaktr" / "report" / "static" / "report.css").write_text("body {}")
    (repo / "src" / "weaktr" / "notes.txt").write_text("not package data")
    expected = wc.expected_files(repo)
    assert expected == {
        "weaktr/__init__.py",
        "weaktr/runtime/layout.py",  # a folder without __init__.py still ships
        "weaktr/configs/demo.yaml",
        "weaktr/report/templates/index.html.j2",
        "weaktr/report/static/report.css",
    }
    assert wc.problems(_fake_wheel(tmp_path / "ok.whl", expected), repo) == []
    short = expected - {"weaktr/report/static/report.css", "weaktr/configs/demo.yaml"}
    bad = _fake_wheel(tmp_path / "bad.whl", short | {"tests/test_x.py"}, license_expr="GPL-3.0")
    assert wc.problems(bad, repo) == [
        "missing weaktr/configs/demo.yaml",
        "missing weaktr/report/static/report.css",
        "METADATA has no 'License-Expression: MIT'",
        "unexpected top-level file tests/test_x.py",
    ]


def test_the_real_tree_expects_every_packaged_config() -> None:
    expected = _wheel_contents().expected_files(REPO)
    configs = {f"weaktr/configs/{p.name}" for p in (REPO / "src" / "weaktr" / "configs").glob("*.yaml")}
    assert configs and configs <= expected
    assert "weaktr/cli.py" in expected and "weaktr/stages/train_seg.py" in expected


def _ci_tree(tmp_path: Path, make_rule: str, wheel_check: str) -> Path:
    """A copy of .ci/run in a tree whose ``make test`` and wheel check are stand-ins."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(CI / "run", repo / ".ci" / "run")
    (repo / ".ci" / "wheel_check.sh").write_text(f"#!/usr/bin/env bash\n{wheel_check}\n")
    (repo / "Makefile").write_text(f"test:\n\t{make_rule}\n")
    (repo / "tests").mkdir()
    return repo


def _run_ci(repo: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``bash .ci/run`` with an apt-get that fails as with an unreachable mirror."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "apt-get").write_text("#!/bin/sh\necho 'E: could not resolve the mirror' >&2\nexit 100\n")
    (stubs / "apt-get").chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", str(repo / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(
    ("tests_pass", "wheel_passes", "failures"),
    [
        (True, True, []),
        (False, True, ["make test"]),  # pytest collected no test: exit 5
        (True, False, ["the wheel check"]),
        (False, False, ["make test", "the wheel check"]),
    ],
)
def test_ci_run_fails_when_the_tests_or_the_wheel_check_fail(
    tmp_path: Path, tests_pass: bool, wheel_passes: bool, failures: list[str]
) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_one.py").write_text("def test_one():\n    pass\n")
    target = tmp_path / "tests" if tests_pass else tmp_path / "repo" / "tests"  # the latter holds none
    rule = f"{sys.executable} -m pytest -q -p no:cacheprovider --rootdir {target} {target}"
    repo = _ci_tree(tmp_path, rule, "echo wheel check ran" + ("" if wheel_passes else "; exit 1"))
    proc = _run_ci(repo, tmp_path)
    assert "wheel check ran" in proc.stdout  # it runs even when the tests failed
    if os.geteuid() == 0:  # the apt-get branch ran, and its failure did not stop the run
        assert "chromium could not be installed" in proc.stderr
    if not failures:
        assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stderr
    else:
        assert proc.returncode == 1
        assert all(f"FAILED: {what}" in proc.stderr for what in failures), proc.stderr
        assert len([ln for ln in proc.stderr.splitlines() if "ci: FAILED" in ln]) == len(failures)


def _make(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-C", str(tmp_path), *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_setup_installs_at_the_locks_versions_and_reruns_when_the_lock_changes(tmp_path: Path) -> None:
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    inputs = [tmp_path / "pyproject.toml", tmp_path / "requirements.lock"]
    stamp = tmp_path / ".venv" / ".setup-stamp"
    stamp.parent.mkdir()
    for path, mtime in [*((p, 1000) for p in inputs), (stamp, 2000)]:
        path.write_text("")
        os.utime(path, (mtime, mtime))
    assert _make(tmp_path, "-q", ".venv/.setup-stamp").returncode == 0  # set up, nothing newer
    os.utime(inputs[1], (3000, 3000))
    assert _make(tmp_path, "-q", ".venv/.setup-stamp").returncode == 1  # a new lock: install again
    installs = [ln for ln in _make(tmp_path, "-n", "setup").stdout.splitlines() if "pip install" in ln]
    assert installs and all("-c requirements.lock" in ln for ln in installs), installs


def test_the_wheel_check_installs_the_bare_wheel_then_its_extras_at_the_locks_versions() -> None:
    script = (CI / "wheel_check.sh").read_text().splitlines()
    installs = [ln.strip() for ln in script if "pip install" in ln and "WHEEL" in ln]
    assert [ln.split("pip install --quiet ")[-1] for ln in installs] == [
        '-c "$LOCK" "$WHEEL"',
        '-c "$LOCK" "${WHEEL}[crf,viz]"',
    ]
    assert all(ln.startswith('"$BIN/python"') for ln in installs)  # the same venv: one torch install
    assert "LOCK=$REPO/requirements.lock" in script
