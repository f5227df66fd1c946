"""benchmarks/crop_label_noise.py: counts the crops that lose a labelled object, as timm draws them."""

from __future__ import annotations

import importlib
import random
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def noise(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # benchmarks/ is not a package
    return importlib.import_module("crop_label_noise")


def corner_object() -> np.ndarray:
    mask = np.zeros((100, 100), np.uint8)
    mask[:10, :10] = 3  # a small object in a corner, easy to crop away
    mask[40:60, 40:60] = 255  # ignore pixels are no class
    return mask


def test_whole_image_crops_never_lose_the_object(noise: ModuleType) -> None:
    random.seed(0)
    out = noise.crop_losses([corner_object()], (1.0, 1.0), draws=20)
    assert out == {"pairs": 20, "cut_out": 0.0, "under_10_percent": 0.0}


def test_small_crops_often_cut_a_corner_object_out(noise: ModuleType) -> None:
    random.seed(0)
    out = noise.crop_losses([corner_object()], (0.04, 0.04), draws=200)
    # a 20 px crop holds any of the corner's pixels only when it starts in the first 10 rows and columns
    assert out["pairs"] == 200
    assert 0.9 < out["cut_out"] <= out["under_10_percent"] < 1.0
