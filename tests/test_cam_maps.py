"""benchmarks/cam_maps.py: the fused CAM of each attention map alone, scored per class."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CAM

from weaktr.models.cam import CAMConfig, build_cam_model

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def maps(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # benchmarks/ is not a package
    return importlib.import_module("cam_maps")


def test_one_fused_cam_per_map_plus_aaf_mean_and_none(maps: ModuleType):
    torch.manual_seed(0)
    model = build_cam_model(CAMConfig(backbone="vit_small_patch16_224", **TINY_CAM)).eval()
    images = torch.randn(2, 3, 32, 32)
    cams = maps.map_cams(model, images)
    assert sorted(cams) == sorted([f"b{b}h{h}" for b in (1, 2) for h in range(4)] + ["aaf", "mean", "none"])
    with torch.no_grad():
        out = model(images)
    coarse = F.relu(out.coarse_cam)
    torch.testing.assert_close(cams["none"], coarse)
    torch.testing.assert_close(cams["aaf"], out.fused_cam)
    singles = torch.stack([cams[f"b{b}h{h}"] for b in (1, 2) for h in range(4)])
    torch.testing.assert_close(cams["mean"], singles.mean(0))


def test_a_cam_on_the_object_scores_one_and_a_flat_cam_does_not(maps: ModuleType):
    gts = np.zeros((1, 16, 16), np.uint8)
    gts[0, :8, :8] = 1  # class 1 in the top-left quarter; class 2 absent
    labels = torch.tensor([[1.0, 0.0]])
    exact = torch.zeros(1, 2, 16, 16)
    exact[0, 0, :8, :8] = 1.0
    t, iou = maps.best_threshold_ious(exact, labels, gts)
    assert iou[:2].tolist() == [1.0, 1.0] and 0.1 <= t < 0.9
    assert np.isnan(iou[2])  # absent and never predicted: NaN, as the pipeline scores it
    flat = torch.ones(1, 2, 16, 16)
    _, iou_flat = maps.best_threshold_ious(flat, labels, gts)
    assert iou_flat[1] < 1.0
