"""No litter: the temporaries of a killed atomic write are swept when the run (or a stage's --out) resumes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_data_check import make_folder

from weaktr.cli import main
from weaktr.data.demo import generate_demo
from weaktr.data.folder import prepare_folder
from weaktr.io import atomic_write, is_temporary, save_cams, sweep_temporaries

REPO = Path(__file__).resolve().parents[1]

# Runs `weaktr ARGS` and kill -9s its process group just before the NTH rename onto a path containing
# TARGET, so the kill lands while a temporary exists, at a chosen moment instead of a timed one.
KILLER = """
import os, signal, sys
target, nth = sys.argv[1], int(sys.argv[2])
real, seen = os.replace, [0]
def replace(src, dst, *args, **kwargs):
    if target in str(dst):
        seen[0] += 1
        if seen[0] == nth:
            os.killpg(os.getpgid(0), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
from weaktr.cli import main
sys.exit(main(sys.argv[3:]))
"""


def stale(folder: Path, name: str) -> Path:
    """A temporary as a kill inside ``atomic_write(folder / name)`` leaves it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{name}.k3x_9qzw.tmp{Path(name).suffix}"
    path.write_bytes(b"half")
    return path


def outputs(folder: Path) -> list[str]:
    """The ids of the finished PNGs in ``folder`` (pathlib's glob also matches hidden names)."""
    return sorted(p.stem for p in folder.glob("*.png") if not p.name.startswith("."))


def temporaries(root: Path) -> list[Path]:
    """What ``find ROOT -name '.*tmp*'`` lists."""
    return sorted(root.rglob(".*tmp*"))


def test_atomic_write_names_its_temporaries_with_the_swept_pattern(tmp_path: Path) -> None:
    for name in ("000315.png", "train.txt", "model.safetensors", "README"):
        with atomic_write(tmp_path / name) as tmp:
            assert is_temporary(tmp.name), tmp.name
            tmp.write_text("x")
    assert not temporaries(tmp_path)
    for name in (".hidden", "a.tmp", ".a.png.tmp", ".000315.png.k3x_9qzw.tmp.jpg", "000315.png", ".tmp"):
        assert not is_temporary(name), name


def test_sweep_removes_only_temporaries_under_its_root(tmp_path: Path) -> None:
    run, other = tmp_path / "run", tmp_path / "base"
    planted = [stale(run / "cams", "0001.npz"), stale(run / "pred" / "val", "0001.png"), stale(run, "x.json")]
    keep = [run / "cams" / "0001.npz", run / ".hidden", run / "notes.tmp"]
    for path in keep:
        path.write_text("keep")
    linked = stale(other / "cam", "model.safetensors")
    (run / "cam").symlink_to(other / "cam", target_is_directory=True)  # as an ablation variant links
    assert sweep_temporaries(run) == 3
    assert not any(p.exists() for p in planted)
    assert all(p.exists() for p in keep) and linked.exists()
    assert sweep_temporaries(tmp_path / "missing") == 0


@pytest.fixture
def seeds_run(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    """A generated data set, a run folder with a CAM file per train image, and make-seeds' arguments."""
    info = generate_demo(tmp_path / "data", n_train=10, n_val=2, size=48, num_classes=3, seed=0)
    run = tmp_path / "run"
    ids = info.ids("train")
    rng = np.random.default_rng(0)
    for i in ids:
        classes = np.array(info.labels()[i])
        save_cams(run / "cams" / f"{i}.npz", rng.random((len(classes), 48, 48)), classes)
    args = [
        "make-seeds",
        "--no-crf",
        "--config",
        "demo",
        "--run-dir",
        str(run),
        f"data.dataset={info.root}",
        "device=cpu",
        "seeds.workers=1",
    ]
    return run, ids, args


def test_a_resume_sweeps_stale_temporaries_and_completes_the_outputs(seeds_run, tmp_path: Path) -> None:
    run, ids, args = seeds_run
    assert main(args) == 0
    for i in ids[3:]:  # as a kill in the middle of the seeds stage leaves it
        (run / "seeds" / f"{i}.png").unlink()
    stale(run / "seeds", f"{ids[3]}.png")
    stale(run / "cams", f"{ids[0]}.npz")
    stale(run / "cam", "model.safetensors")
    stale(run / "stages", "seeds.json")
    stale(run, "config.yaml")
    elsewhere = tmp_path / "elsewhere"
    stale(elsewhere, f"{ids[0]}.png")
    assert main(args) == 0
    assert not temporaries(run)
    assert outputs(run / "seeds") == sorted(ids)
    assert main([*args, "--out", str(elsewhere)]) == 0  # a stage's --out outside the run is swept too
    assert not temporaries(elsewhere) and outputs(elsewhere) == sorted(ids)


def test_kill_9_mid_stage_then_resume_leaves_no_temporary(seeds_run) -> None:
    run, ids, args = seeds_run
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, "/seeds/", "3", *args],
        env=env,
        start_new_session=True,  # its own process group, so the kill spares pytest
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -9
    assert [p.parent.name for p in temporaries(run)] == ["seeds"]  # killed with a temporary in flight
    assert outputs(run / "seeds") == sorted(ids)[:2]
    assert main(args) == 0
    assert not temporaries(run)
    assert outputs(run / "seeds") == sorted(ids)


def test_prepare_sweeps_what_a_killed_prepare_left(tmp_path: Path) -> None:
    make_folder(tmp_path)
    planted = [
        stale(tmp_path / "out", "image_labels.json"),
        stale(tmp_path / "out" / "ImageSets", "train.txt"),
    ]
    prepare_folder(tmp_path / "images", tmp_path / "labels.csv", tmp_path / "out")
    assert not any(p.exists() for p in planted) and not temporaries(tmp_path / "out")
