"""Parity of the confusion counts and scores with the authors' evaluation (golden metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import load_golden
from test_metrics import scoring_context

from weaktr.evaluation.metrics import ConfusionMatrix, official_percent
from weaktr.io import save_label_png
from weaktr.stages.scoring import evaluate_stage

pytestmark = pytest.mark.golden


@pytest.fixture(scope="module")
def golden() -> tuple[dict[str, torch.Tensor], dict]:
    return load_golden("metrics")


def _n_cls(t: dict[str, torch.Tensor]) -> int:
    return t["count.pred"].shape[0]


def _matrix(golden) -> ConfusionMatrix:
    t, js = golden
    cm = ConfusionMatrix(_n_cls(t))
    for i in range(js["num_images"]):
        cm.update(t[f"pred.{i}"].numpy(), t[f"gt.{i}"].numpy())
    return cm


def _assert_nan_close(actual, expected, tol: float) -> None:
    a, e = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e))
    np.testing.assert_allclose(a[~np.isnan(a)], e[~np.isnan(e)], atol=tol, rtol=tol)


def test_counts_and_per_class_scores(golden) -> None:
    t, js = golden
    s = _matrix(golden).scores()
    for key in ("pred", "gt", "tp"):
        assert s[f"count_{key}"] == t[f"count.{key}"].tolist(), key
    for key in ("iou", "precision", "recall"):
        _assert_nan_close(s[key], t[key].numpy(), 1e-4)
    nan_iou = [i for i, v in enumerate(s["iou"]) if math.isnan(v)]
    assert nan_iou == js["classes_absent_everywhere"]
    assert all(math.isnan(s["fp"][i]) and math.isnan(s["fn"][i]) for i in nan_iou)


def test_official_percent_dict(golden) -> None:
    t, js = golden
    official = js["official_loglist_percent"]
    names = list(official)[: _n_cls(t)]
    ours = official_percent(_matrix(golden).scores(), names)
    assert list(ours) == list(official)
    _assert_nan_close(list(ours.values()), list(official.values()), 1e-4)
    assert ours["mIoU"] == pytest.approx(100 * js["mIoU"], abs=1e-4)


def test_the_scoring_stage_reads_pngs(golden, tmp_path) -> None:
    t, js = golden
    ids = [f"img{i}" for i in range(js["num_images"])]
    ctx = scoring_context(tmp_path, [f"class{k}" for k in range(_n_cls(t))], ids)
    for i, name in enumerate(ids):
        save_label_png(tmp_path / "pred" / f"{name}.png", t[f"pred.{i}"].numpy())
        save_label_png(tmp_path / "gt" / f"{name}.png", t[f"gt.{i}"].numpy())
    s = evaluate_stage(ctx, tmp_path / "pred", "s", "pred")
    assert s["count_tp"] == t["count.tp"].tolist()
    assert s["miou"] == pytest.approx(js["mIoU"], abs=1e-6)
    assert s["mean_precision"] == pytest.approx(js["mean_precision"], abs=1e-6)
    assert s["mean_recall"] == pytest.approx(js["mean_recall"], abs=1e-6)
