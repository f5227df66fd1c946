"""The GT-free check for classes that the seeds label and the segmenter's pseudo masks lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from weaktr.errors import InputError
from weaktr.evaluation.lost_classes import LOST_SHARE, check_lost_classes, class_pixels, lost_classes
from weaktr.io import save_label_png
from weaktr.pipeline import format_summary


def write_maps(folder: Path, maps: dict[str, np.ndarray]) -> None:
    for name, labels in maps.items():
        save_label_png(folder / f"{name}.png", labels.astype(np.uint8), None)


def test_class_pixels_counts_ids_and_skips_ignore(tmp_path: Path):
    a = np.array([[0, 1], [2, 255]])
    b = np.array([[1, 1], [3, 7]])  # 7 lies outside n_cls = 4
    write_maps(tmp_path, {"a": a, "b": b})
    assert class_pixels(tmp_path, ["a", "b"], 4).tolist() == [1, 3, 1, 1]
    assert class_pixels(tmp_path, ["a"], 4).tolist() == [1, 1, 1, 0]


def test_class_pixels_names_a_missing_map(tmp_path: Path):
    with pytest.raises(InputError, match="label map not found") as err:
        class_pixels(tmp_path, ["nothing"], 3)
    assert "nothing.png" in str(err.value)


def test_a_class_is_lost_below_the_share_of_its_seed_pixels():
    seeds = np.array([500, 100, 100, 0, 40])
    pred = np.array([560, 90, 4, 0, 2])
    # class 2 keeps 4 % of its seed pixels, class 4 5 % (not under), class 3 has no seeds at all
    assert LOST_SHARE == 0.05
    assert lost_classes(seeds, pred) == [2]
    assert lost_classes(seeds, pred, share=0.06) == [2, 4]
    assert lost_classes(seeds, seeds) == []


def test_check_names_and_warns_about_a_class_the_pseudo_masks_lost(tmp_path: Path, caplog):
    seeds, pred = tmp_path / "seeds", tmp_path / "pred"
    seed_map = np.array([[0, 1, 1], [2, 2, 0]])
    write_maps(seeds, {"x": seed_map, "y": seed_map})
    # ring (2) is gone from both pseudo masks, disc (1) keeps half of its seed pixels
    write_maps(pred, {"x": np.where(seed_map == 2, 0, seed_map), "y": seed_map * 0})
    with caplog.at_level("WARNING", logger="weaktr"):
        assert check_lost_classes(seeds, pred, ["x", "y"], ["background", "disc", "ring"]) == ["ring"]
    text = caplog.text
    assert "lost class 'ring'" in text and "'disc'" not in text and "seg_train.gc.tau" in text
    caplog.clear()
    with caplog.at_level("WARNING", logger="weaktr"):
        assert check_lost_classes(seeds, seeds, ["x", "y"], ["background", "disc", "ring"]) == []
    assert "lost class" not in caplog.text


def test_the_printed_summary_names_lost_classes_only_when_there_are_some():
    summary = {"segmenter": {"miou": 0.5}, "seconds": 3.0}
    assert "lost" not in format_summary({**summary, "lost_classes": []})
    assert "classes the segmenter lost (no GT needed)" in format_summary(
        {**summary, "lost_classes": ["cross"]}
    )
    assert "cross" in format_summary({**summary, "lost_classes": ["cross"]})
