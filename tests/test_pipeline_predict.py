"""The predict stage's naming of its splits: train-side splits give pseudo masks, others the segmenter."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from weaktr import pipeline
from weaktr.config import load_config


def _fake_ctx(tmp_path: Path, splits: dict[str, list[str]]) -> Any:
    cfg = load_config("voc", ["predict.crf=false"])
    dataset = SimpleNamespace(
        masks="masks",
        splits=splits,
        class_names=["background", "a"],
        ids=lambda split: splits[split],
    )
    layout = SimpleNamespace(
        seg_model=tmp_path / "model",
        pred=lambda split: tmp_path / split,
        seeds=lambda crf: tmp_path / "seeds",
    )
    return SimpleNamespace(cfg=cfg, dataset=dataset, layout=layout, dist=SimpleNamespace(is_main=True))


def test_voc_train_inside_train_aug_scores_as_pseudo_masks(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """voc predicts val and train (Table I's train column) while it trains on train_aug: train's score
    is the pseudo masks', not a second "segmenter" that overwrote val's."""
    scored: list[tuple[str, str]] = []
    checked: list[list[str]] = []
    monkeypatch.setattr(pipeline, "predict_split", lambda ctx, model, split, out, crf: out)
    monkeypatch.setattr(
        pipeline,
        "evaluate_stage",
        lambda ctx, pred, split, name, **kw: scored.append((name, split)) or {"miou": len(scored)},
    )
    monkeypatch.setattr(
        pipeline, "check_lost_classes", lambda seeds, pred, ids, names: checked.append(ids) or []
    )
    splits = {"train_aug": ["a", "b", "c"], "train": ["a", "b"], "val": ["v"]}
    out = pipeline._predict(_fake_ctx(tmp_path, splits))
    assert scored == [("segmenter", "val"), ("pseudo_masks", "train")]
    assert out["segmenter"] == {"miou": 1} and out["pseudo_masks"] == {"miou": 2}
    assert checked == [["a", "b"]]
