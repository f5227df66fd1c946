"""Confusion matrix, scores and NaN rules, tables/JSON, PNG evaluation and the threshold sweep."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from weaktr.cam.seeds import seed_from_cams
from weaktr.config import RunConfig
from weaktr.data.info import DatasetInfo, write_id_list
from weaktr.errors import InputError
from weaktr.evaluation.metrics import (
    ConfusionMatrix,
    format_table,
    official_percent,
    save_json,
    sweep_thresholds,
)
from weaktr.io import save_cams, save_label_png
from weaktr.runtime.context import RunContext
from weaktr.runtime.distributed import DistInfo
from weaktr.stages.scoring import evaluate_stage

GT = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8)


def test_hand_computed_example() -> None:
    cm = ConfusionMatrix(3)
    cm.update(PRED, GT)
    s = cm.scores()
    assert (s["count_pred"], s["count_gt"], s["count_tp"]) == ([1, 3, 1], [2, 2, 1], [1, 2, 1])
    np.testing.assert_allclose(s["iou"], [0.5, 2 / 3, 1.0])
    np.testing.assert_allclose(s["precision"], [1.0, 2 / 3, 1.0])
    np.testing.assert_allclose(s["recall"], [0.5, 1.0, 1.0])
    np.testing.assert_allclose(s["fp"], [0.0, 1 / 3, 0.0])
    np.testing.assert_allclose(s["fn"], [0.5, 0.0, 0.0])
    assert s["miou"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert s["mean_fp"] == pytest.approx(1 / 9)
    for k in range(3):  # IoU + FP + FN = 1
        assert s["iou"][k] + s["fp"][k] + s["fn"][k] == pytest.approx(1.0)


def test_out_of_range_values_and_torch_inputs() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[7, 255, 1, 2]]), torch.tensor([[1, 1, 1, 5]]))  # GT 5 ≥ C is ignored
    s = cm.scores()
    assert s["count_gt"] == [0, 3, 0] and s["count_pred"] == [0, 1, 0] and s["count_tp"] == [0, 1, 0]
    with pytest.raises(ValueError, match="shape"):
        cm.update(PRED, GT[:1])


def test_nan_rules() -> None:
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 0, 2, 2]), np.array([0, 1, 0, 0]))  # 1 GT only, 2 prediction only, 3 absent
    s = cm.scores()
    assert s["iou"][1] == 0 and math.isnan(s["precision"][1]) and s["recall"][1] == 0
    assert s["iou"][2] == 0 and s["precision"][2] == 0 and math.isnan(s["recall"][2])
    assert all(math.isnan(s[k][3]) for k in ("iou", "precision", "recall", "fp", "fn"))
    assert s["iou"][0] == pytest.approx(1 / 4)  # P=2, T=3, TP=1
    assert s["miou"] == pytest.approx(np.mean([1 / 4, 0, 0]))
    assert s["mean_recall"] == pytest.approx(np.mean([1 / 3, 0.0]))
    empty = ConfusionMatrix(2).scores()
    assert math.isnan(empty["miou"]) and math.isnan(empty["mean_fn"])


def test_all_reduce(tmp_path: Path) -> None:
    a = ConfusionMatrix(3)
    a.update(PRED, GT)
    before = a.counts.copy()
    a.all_reduce()  # not initialised: a no-op
    assert np.array_equal(a.counts, before)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        a.all_reduce()
    finally:
        dist.destroy_process_group()
    assert np.array_equal(a.counts, before)


def test_official_percent_table_and_json(tmp_path: Path) -> None:
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 0, 2, 2]), np.array([0, 1, 0, 0]))
    s = cm.scores()
    names = ["background", "cat", "dog", "unused_3"]
    off = official_percent(s, names)
    assert list(off)[-5:] == ["mIoU", "FP", "FN", "Prediction", "Recall"]
    assert off["background"] == pytest.approx(25.0) and math.isnan(off["unused_3"])
    assert off["Prediction"] == pytest.approx(100 * s["mean_precision"])
    table = format_table(s, names)
    assert "unused_3" in table and "25.00" in table and " -" in table.splitlines()[4]
    save_json(tmp_path / "m.json", s, names, {"split": "val"})
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["split"] == "val" and data["class_names"] == names and math.isnan(data["iou"][3])
    assert data["official_percent"]["mIoU"] == pytest.approx(100 * s["miou"])
    with pytest.raises(ValueError, match="class names"):
        official_percent(s, names[:2])


def scoring_context(root: Path, class_names: list[str], ids: list[str]) -> RunContext:
    """A one-process run whose data set has GT masks in ``root/gt`` and one split ``s`` of ``ids``:
    what ``evaluate_stage``, the one scorer of label maps, reads (images only need to exist)."""
    write_id_list(root / "s.txt", ids)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in ids:
        (root / "images" / f"{i}.jpg").touch()
    info = DatasetInfo(
        name="t", root=root, images="images", masks="gt", splits={"s": "s.txt"}, class_names=class_names
    )
    return RunContext(RunConfig(), root / "run", info, DistInfo(0, 1, 0, torch.device("cpu"), True))


def test_label_maps_are_scored_and_bad_files_named(tmp_path: Path) -> None:
    ctx = scoring_context(tmp_path, ["bg", "x", "y"], ["a", "b", "c", "d"])
    save_label_png(tmp_path / "p" / "a.png", PRED, palette=[0] * 768)
    save_label_png(tmp_path / "gt" / "a.png", GT)
    s = evaluate_stage(ctx, tmp_path / "p", "s", "p", ids=["a"])
    assert s["count_tp"] == [1, 2, 1] and (s["images"], s["sampled_from"]) == (1, 4)
    assert json.loads(ctx.layout.metrics("p").read_text())["class_names"] == ["bg", "x", "y"]
    with pytest.raises(InputError, match=r"b\.png"):
        evaluate_stage(ctx, tmp_path / "p", "s", "p", ids=["b"])
    save_label_png(tmp_path / "p" / "c.png", PRED[:1])
    save_label_png(tmp_path / "gt" / "c.png", GT)
    with pytest.raises(InputError, match=r"c\.png"):
        evaluate_stage(ctx, tmp_path / "p", "s", "p", ids=["c"])
    Image.new("RGB", (3, 2)).save(tmp_path / "p" / "d.png")
    save_label_png(tmp_path / "gt" / "d.png", GT)
    with pytest.raises(InputError, match="mode RGB"):
        evaluate_stage(ctx, tmp_path / "p", "s", "p", ids=["d"])


def _cam_set(root: Path, n: int = 3) -> list[str]:
    """Objects whose CAM is ~0.6 inside and decays outside: the best threshold sits mid-range."""
    rng = np.random.default_rng(0)
    ids = []
    yy, xx = np.mgrid[0:20, 0:24]
    for i in range(n):
        gt = np.zeros((20, 24), np.uint8)
        gt[5:15, 6:18] = 1 + i % 2
        gt[0, :] = 255
        dist_in = np.minimum(np.minimum(yy - 4.5, 14.5 - yy), np.minimum(xx - 5.5, 17.5 - xx))
        cam = np.clip(0.5 + 0.05 * dist_in + rng.normal(0, 0.03, gt.shape), 0, 1)
        classes = np.array([1 + i % 2]) if i < n - 1 else np.zeros(0, np.int64)
        save_cams(root / "cams" / f"im{i}.npz", cam[None] if i < n - 1 else np.zeros((0, 20, 24)), classes)
        save_label_png(root / "gt" / f"im{i}.png", gt if i < n - 1 else np.zeros_like(gt))
        ids.append(f"im{i}")
    return ids


def _brute_force(root: Path, ids: list[str], t: float, n: int) -> float:
    cm = ConfusionMatrix(n)
    for i in ids:
        with np.load(root / "cams" / f"{i}.npz") as d:
            seed = seed_from_cams(d["cams"].astype(np.float32), d["classes"], t)
        cm.update(seed, np.asarray(Image.open(root / "gt" / f"{i}.png")))
    return cm.scores()["miou"]


def test_sweep_equals_brute_force_and_stops_early(tmp_path: Path) -> None:
    ids = _cam_set(tmp_path)
    ts = [i / 100 for i in range(30, 70, 2)]
    _, full = sweep_thresholds(tmp_path / "cams", tmp_path / "gt", ids, ts, 3, early_stop=False)
    assert list(full) == ts
    for t in ts:
        assert full[t] == pytest.approx(_brute_force(tmp_path, ids, t, 3), abs=1e-12)
    best_t = max(ts, key=lambda t: full[t])
    assert 0.36 < best_t < 0.6
    t_es, early = sweep_thresholds(tmp_path / "cams", tmp_path / "gt", ids, ts, 3)
    k = len(early)
    assert list(early) == ts[:k] and all(early[t] == full[t] for t in early)
    assert all(full[ts[j + 1]] > full[ts[j]] for j in range(k - 2)) and full[ts[k - 1]] <= full[ts[k - 2]]
    assert t_es == ts[k - 2]
    shuffled = ts[::-1]
    _, rev = sweep_thresholds(tmp_path / "cams", tmp_path / "gt", ids, shuffled, 3, early_stop=False)
    assert rev == full


def test_sweep_bad_inputs(tmp_path: Path) -> None:
    ids = _cam_set(tmp_path)
    with pytest.raises(ValueError, match="no thresholds"):
        sweep_thresholds(tmp_path / "cams", tmp_path / "gt", ids, [], 3)
    with pytest.raises(InputError, match="outside"):
        sweep_thresholds(tmp_path / "cams", tmp_path / "gt", ids, [0.5], 2)
    with pytest.raises(InputError, match=r"nope\.npz"):
        sweep_thresholds(tmp_path / "cams", tmp_path / "gt", ["nope"], [0.5], 3)
