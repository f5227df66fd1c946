"""CAM seeds: thresholding, label ids, CRF option, files, resume and the process pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from weaktr.cam.seeds import compact_seed, make_seeds, seed_from_cams
from weaktr.config import load_config
from weaktr.crf import CRFParams
from weaktr.data.demo import generate_demo
from weaktr.data.images import load_label_map
from weaktr.data.palette import voc_palette
from weaktr.errors import InputError
from weaktr.io import load_cams, read_json, save_cams
from weaktr.runtime.context import RunContext
from weaktr.runtime.distributed import DistInfo
from weaktr.stages.seeds import choose_threshold


def test_seed_threshold_argmax_and_label_ids() -> None:
    cams = np.array([[[0.9, 0.2, 0.5, 0.0]], [[0.1, 0.8, 0.6, 0.0]]], dtype=np.float32)  # (2, 1, 4)
    seed = seed_from_cams(cams, np.array([3, 15]), 0.55)
    assert seed.dtype == np.uint8 and seed.tolist() == [[3, 15, 15, 0]]
    assert compact_seed(cams, 0.55).tolist() == [[1, 2, 2, 0]]


def test_threshold_edge_cases() -> None:
    cams = np.array([[[0.0, 0.3, 1.0]]], dtype=np.float32)
    assert seed_from_cams(cams, np.array([7]), 0.0).tolist() == [[0, 7, 7]]  # a tie goes to background
    assert seed_from_cams(cams, np.array([7]), 1.0).tolist() == [[0, 0, 0]]
    assert seed_from_cams(cams, np.array([7]), 0.3).tolist() == [[0, 0, 7]]
    # float16 CAMs are compared in float32: float16(0.43) < 0.43 stays background.
    assert seed_from_cams(np.full((1, 1, 1), 0.43, np.float16), np.array([1]), 0.43).tolist() == [[0]]


def test_no_classes_gives_background_and_bad_classes() -> None:
    seed = seed_from_cams(np.zeros((0, 3, 5), np.float32), np.zeros(0, np.int64), 0.43)
    assert seed.shape == (3, 5) and not seed.any()
    with pytest.raises(ValueError, match="classes"):
        seed_from_cams(np.zeros((2, 3, 5)), np.array([1]), 0.4)
    with pytest.raises(ValueError, match=r"1\.\.254"):
        seed_from_cams(np.zeros((1, 3, 5)), np.array([255]), 0.4)
    with pytest.raises(ValueError, match="needs the image"):
        seed_from_cams(np.zeros((1, 3, 5)), np.array([1]), 0.4, crf=CRFParams.voc_label())


def test_voc_palette() -> None:
    pal = voc_palette()
    assert len(pal) == 768 and pal[:6] == [0, 0, 0, 128, 0, 0]
    assert pal[15 * 3 : 15 * 3 + 3] == [192, 128, 128]  # person


def _toy_set(root: Path, n: int = 4) -> tuple[list[str], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    ids, images = [], {}
    for i in range(n):
        image = np.full((24, 32, 3), 30, np.uint8)
        image[:, 16:] = 220
        cams = np.clip(rng.normal(0.5, 0.3, (2, 24, 32)), 0, 1)
        cams[0, :, 16:] *= 0.2
        save_cams(root / "cams" / f"im{i}.npz", cams, np.array([2, 9]))
        ids.append(f"im{i}")
        images[f"im{i}"] = image
    return ids, images


def test_make_seeds_writes_pngs_and_resumes(tmp_path: Path) -> None:
    ids, _ = _toy_set(tmp_path)
    n = make_seeds(tmp_path / "cams", ids, tmp_path / "seeds", 0.43, progress=False)
    assert n == len(ids)
    png = Image.open(tmp_path / "seeds" / "im0.png")
    assert png.mode == "L"
    values = set(np.unique(np.asarray(png)).tolist())
    assert values <= {0, 2, 9}
    (tmp_path / "seeds" / "im1.png").unlink()
    assert make_seeds(tmp_path / "cams", ids, tmp_path / "seeds", 0.43, progress=False) == 1
    assert sorted(p.name for p in (tmp_path / "seeds").iterdir()) == [f"{i}.png" for i in ids]


def test_make_seeds_crf_parallel_equals_serial_with_palette(tmp_path: Path) -> None:
    ids, images = _toy_set(tmp_path)
    kwargs = dict(crf=CRFParams.voc_label(), image_paths=images, palette=voc_palette(), progress=False)
    make_seeds(tmp_path / "cams", ids, tmp_path / "serial", 0.43, workers=0, **kwargs)
    make_seeds(tmp_path / "cams", ids, tmp_path / "parallel", 0.43, workers=2, **kwargs)
    for i in ids:
        a, b = Image.open(tmp_path / "serial" / f"{i}.png"), Image.open(tmp_path / "parallel" / f"{i}.png")
        assert a.mode == "P"
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        plain = seed_from_cams(*load_cams(tmp_path / "cams" / f"{i}.npz"), 0.43)
        assert not np.array_equal(np.asarray(a), plain)  # the CRF smoothed the noisy seed


def test_make_seeds_bad_inputs(tmp_path: Path) -> None:
    ids, images = _toy_set(tmp_path, 2)
    with pytest.raises(InputError, match="needs images"):
        make_seeds(tmp_path / "cams", ids, tmp_path / "s", 0.43, crf=CRFParams.voc_label(), progress=False)
    with pytest.raises(InputError, match=r"missing\.npz"):
        make_seeds(tmp_path / "cams", ["missing"], tmp_path / "s", 0.43, progress=False)
    small = {k: v[:10] for k, v in images.items()}
    with pytest.raises(InputError, match="image is"):
        make_seeds(
            tmp_path / "cams",
            ids,
            tmp_path / "s",
            0.43,
            crf=CRFParams.voc_label(),
            image_paths=small,
            progress=False,
        )
    assert not list((tmp_path / "s").glob("*"))


def test_the_swept_threshold_is_written_where_the_layout_says(tmp_path: Path) -> None:
    """seeds.threshold_from=gt_sweep records its choice at RunLayout.seed_threshold (metrics/) alone."""
    run_dir = tmp_path / "run"
    sweep = ["seeds.threshold_from=gt_sweep", "seeds.sweep=[0.3,0.5]"]
    cfg = load_config("demo", [f"run_dir={run_dir}", *sweep])
    info = generate_demo(tmp_path / "data", 4, 0, 32, 2, 0)
    for i in info.ids("train"):  # each class's CAM is its GT region: every threshold in (0, 1) is exact
        gt = load_label_map(info.mask_path(i))
        classes = info.labels()[i]
        save_cams(tmp_path / "cams" / f"{i}.npz", np.stack([gt == c for c in classes]), classes)
    ctx = RunContext(cfg, run_dir, info, DistInfo(0, 1, 0, torch.device("cpu"), True))
    assert cfg.data.cam_eval_split_or_train == "train"  # the demo's cam_eval_split
    assert choose_threshold(ctx, tmp_path / "cams") == 0.3
    assert ctx.layout.seed_threshold == run_dir / "metrics" / "seed_threshold.json"
    assert [p.name for p in ctx.layout.metrics_dir.iterdir()] == ["seed_threshold.json"]
    record = read_json(ctx.layout.seed_threshold)
    assert (record["from"], record["split"], record["threshold"]) == ("gt_sweep", "train", 0.3)
