"""Worker counts fit the cores the process may use: the cap itself, and the loaders built with it."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from test_cam_generate import FakeCAM
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import weaktr.cores as cores
from weaktr.cam.generate import CamGenSettings, generate_cams
from weaktr.config import load_config
from weaktr.config.loading import packaged_configs
from weaktr.engine.selection import CamSelection, Score
from weaktr.engine.trainer import EpochTrainer, PhaseFiles
from weaktr.runtime.distributed import DistInfo
from weaktr.runtime.layout import RunLayout

CPU = torch.device("cpu")
WORKER_WARNING = r"worker processes in total"  # torch's "This DataLoader will create N worker processes ..."


@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process may use two cores (the affinity torch's own check reads too); nothing logged yet."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(cores, "_said", set())


def test_the_cap_follows_the_affinity_and_the_share(two_cores: None) -> None:
    assert cores.usable_cores() == 2
    assert [cores.cap_workers(n) for n in (0, 1, 2, 4, 8)] == [0, 1, 2, 2, 2]
    assert cores.usable_cores(share=2) == 1 and cores.cap_workers(4, share=2) == 1
    assert cores.usable_cores(share=4) == 1  # never below one


def test_without_affinity_the_core_count_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert cores.usable_cores() == 3 and cores.cap_workers(4) == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one core
    assert cores.usable_cores() == 1


def test_a_lowered_count_is_logged_once(two_cores: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="weaktr"):
        for _ in range(3):
            cores.cap_workers(4, "cam_train.num_workers")
        cores.cap_workers(2, "cam_train.num_workers")  # fits: nothing to say
    assert [r.getMessage() for r in caplog.records] == [
        "cam_train.num_workers: 4 asked for, 2 used (2 core(s) usable)"
    ]


def test_the_patched_affinity_reaches_torchs_own_check(two_cores: None) -> None:
    """Without the cap, four workers on two cores warn: the tests below would catch a missing cap."""
    with pytest.warns(UserWarning, match=WORKER_WARNING):
        DataLoader(TensorDataset(torch.zeros(4)), num_workers=4)


class _Phase(EpochTrainer):
    """Only what :meth:`EpochTrainer.loader` needs of a phase."""

    def train_epoch(self, epoch: int, loader: DataLoader, ddp: nn.Module) -> dict[str, Any]:
        return {}

    def evaluate(self, epoch: int, record: dict[str, Any]) -> Score | None:
        return None

    def save_model(self, path: Path) -> None:
        pass

    def summary(self, record: dict[str, Any]) -> str:
        return ""


def _trainer_loader(section: str, overrides: list[str], name: str, tmp_path: Path) -> DataLoader:
    """The epoch loader of phase ``section`` as the trainers build it, for config ``name``."""
    cfg = load_config(name, overrides)
    dist = DistInfo(rank=0, world=1, local_rank=0, device=CPU, is_main=True)
    ctx: Any = SimpleNamespace(cfg=cfg, dist=dist, device=CPU, layout=RunLayout(tmp_path))
    phase = type(f"Phase_{section}", (_Phase,), {"name": section, "section": section})
    files = PhaseFiles(*(tmp_path / n for n in ("model", "state", "log", "selection")))
    trainer = phase(ctx, files, CamSelection("last", None))
    trainer.dataset = TensorDataset(torch.zeros(8, 1))
    return trainer.loader(0)


@pytest.mark.parametrize("section", ["cam_train", "seg_train"])
@pytest.mark.parametrize("name", packaged_configs())
def test_the_trainers_loaders_never_ask_for_more_workers_than_cores(
    section: str, name: str, two_cores: None, tmp_path: Path
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's worker warning would fail the test
        loader = _trainer_loader(section, [f"{section}.num_workers=4"], name, tmp_path)
        packaged = _trainer_loader(section, [], name, tmp_path)
    assert loader.num_workers == 2 and packaged.num_workers <= 2


def test_gen_cam_reads_images_in_no_more_workers_than_cores(two_cores: None, tmp_path: Path) -> None:
    cfg = load_config("voc")  # cam_gen.num_workers = 4
    assert cfg.cam_gen.num_workers == 4
    rng = np.random.default_rng(0)
    items = [(f"im{i}", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), [1]) for i in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        settings = CamGenSettings((1.0,), num_workers=cfg.cam_gen.num_workers)
        n = generate_cams(FakeCAM(), items, tmp_path, settings, CPU, progress=False)
    assert n == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["im0.npz", "im1.npz", "im2.npz"]
