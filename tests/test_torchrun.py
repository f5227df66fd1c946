"""The trainers under a real ``torchrun`` with two CPU processes (gloo): one writer, synchronised weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_seg import demo, tiny_overrides  # noqa: F401  (the module-scoped demo fixture)

from weaktr.data.info import DatasetInfo
from weaktr.engine.state import read_state_extra
from weaktr.models.segmenter import load_segmenter


def _weaktr(*args: str, processes: int = 2) -> subprocess.CompletedProcess[str]:
    """``weaktr ARGS`` under torchrun with ``processes`` CPU processes, or plainly with 1."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    cmd = [sys.executable, *(launcher if processes > 1 else []), "-m", "weaktr", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def torchrun_seg(demo: DatasetInfo, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:  # noqa: F811
    """One 2-process train-seg run (2 epochs): its run folder and the arguments that made it."""
    run = tmp_path_factory.mktemp("torchrun") / "run"
    args = ["train-seg", "--seeds", str(demo.path(demo.masks))]
    args += [*tiny_overrides(demo.root / "dataset.yaml", run), "seg_train.epochs=2"]
    proc = _weaktr(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, args


def test_train_seg_under_torchrun_with_two_processes(torchrun_seg: tuple[Path, list[str]]) -> None:
    run, _ = torchrun_seg
    model = load_segmenter(run / "seg" / "model.safetensors")
    assert model.n_cls == 4
    setup = read_state_extra(run / "seg" / "state.safetensors")["setup"]
    assert setup["world"] == 2 and setup["batch_size"] == 4
    # 16 images, global batch 4 = 2 processes × 2: four iterations per epoch, logged once (rank 0)
    records = [json.loads(x) for x in (run / "seg" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["event"] == "iter"] == [2, 4, 6, 8]
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [1, 2]
    assert [r["event"] for r in records].count("done") == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # the per-epoch evaluation shards the val images over the ranks and all-reduces the confusion
    assert all(0.0 <= r["val_miou"] <= 1.0 for r in records if r["event"] == "epoch")


def test_resuming_a_torchrun_state_in_one_process_is_refused(torchrun_seg: tuple[Path, list[str]]) -> None:
    """A state made by 2 processes does not resume in 1 (other batch per rank, other data order)."""
    run, args = torchrun_seg
    state = run / "seg" / "state.safetensors"
    before = state.read_bytes()
    proc = _weaktr(*args, processes=1)
    assert proc.returncode == 2 and "training state was made with" in proc.stderr
    assert state.read_bytes() == before  # refused before anything is written
