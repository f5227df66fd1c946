"""The generated demo data set: deterministic, worker-count independent, labels exactly the mask ids."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weaktr.data.demo import MARKER, generate_demo, render_scene
from weaktr.data.images import load_image, load_label_map
from weaktr.errors import InputError

SMALL = {"n_train": 10, "n_val": 4, "size": 48, "num_classes": 6}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    generate_demo(tmp_path / "a", seed=3, workers=1, **SMALL)
    generate_demo(tmp_path / "b", seed=3, workers=2, **SMALL)
    generate_demo(tmp_path / "c", seed=4, workers=1, **SMALL)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 2 * 14 + 5  # images, masks, 2 lists, labels, yaml, marker
    a.pop("dataset.yaml"), b.pop("dataset.yaml")  # holds the absolute root
    assert a == b
    changed = [k for k in a if k.startswith("JPEGImages") and a[k] != c[k]]
    assert len(changed) == 14


def test_labels_equal_mask_ids_and_layout(tmp_path):
    info = generate_demo(tmp_path, seed=0, **SMALL)
    assert info.class_names == ["background", "disc", "square", "triangle", "ring", "cross", "star"]
    assert len(info.ids("train")) == 10 and len(info.ids("val")) == 4
    labels = info.labels()
    for i in info.ids("train") + info.ids("val"):
        img = load_image(info.image_path(i))
        mask = load_label_map(info.mask_path(i), img.shape[:2], info.n_cls)
        assert img.shape == (48, 48, 3)
        assert labels[i] == sorted(set(np.unique(mask).tolist()) - {0})
        assert 1 <= len(labels[i]) <= 3


def test_skips_complete_data_set_and_redoes_other_settings(tmp_path):
    generate_demo(tmp_path, seed=0, **SMALL)
    first = tmp_path / "JPEGImages" / "000000.jpg"
    first.write_bytes(b"sentinel")
    generate_demo(tmp_path, seed=0, **SMALL)
    assert first.read_bytes() == b"sentinel"  # complete: nothing rewritten
    generate_demo(tmp_path, seed=1, **SMALL)
    assert first.read_bytes() != b"sentinel" and (tmp_path / MARKER).is_file()


def test_scene_statistics():
    """Over many scenes: 1-3 objects, classes roughly balanced, no tiny remnants, sensible background."""
    num_classes, size = 6, 48
    counts: Counter[int] = Counter()
    bg = []
    for index in range(240):
        img, mask = render_scene(7, index, size, num_classes)
        assert img.dtype == np.uint8 and mask.dtype == np.uint8
        ids, pix = np.unique(mask, return_counts=True)
        fg = ids[ids > 0]
        assert 1 <= len(fg) <= 3 and fg.max() <= num_classes
        assert pix[ids > 0].min() >= 0.01 * size * size
        counts.update(fg.tolist())
        bg.append(pix[0] / mask.size if ids[0] == 0 else 0.0)
    per_class = np.array([counts[k] for k in range(1, num_classes + 1)])
    assert per_class.min() > 0.6 * per_class.mean() and per_class.max() < 1.4 * per_class.mean()
    assert 0.5 < np.mean(bg) < 0.9


def test_background_shares_the_object_colours():
    """Colour alone must not solve it: each class's hue band also holds a share of background pixels."""
    hues: dict[int, list[np.ndarray]] = {k: [] for k in range(1, 7)}
    background = []
    for index in range(40):
        img, mask = render_scene(0, index, 48, 6)
        hue = np.asarray(Image.fromarray(img).convert("HSV"))[..., 0].astype(int)
        for k in hues:
            hues[k].append(hue[mask == k])
        background.append(hue[mask == 0])
    bg = np.concatenate(background)
    for k, parts in hues.items():
        obj = np.concatenate(parts)
        shift = 128 if k == 1 else 0  # red wraps around 0
        lo, hi = np.percentile((obj + shift) % 256, [10, 90])
        share = (((bg + shift) % 256 >= lo) & ((bg + shift) % 256 <= hi)).mean()
        assert share > 0.03, (k, share)


def test_bad_settings_are_rejected(tmp_path):
    with pytest.raises(InputError, match=r"data\.demo\.num_classes must be in 1\.\.8, got 20"):
        generate_demo(tmp_path, num_classes=20)
