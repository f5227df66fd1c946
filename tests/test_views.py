"""The views stage: the CAM network's maps of the report's sample images, written as artefacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from weaktr.config import load_config
from weaktr.data.demo import generate_demo
from weaktr.data.sampling import spread, view_ids
from weaktr.errors import InputError
from weaktr.io import load_views
from weaktr.models.cam import CAMConfig, build_cam_model, save_cam_model
from weaktr.runtime.context import RunContext
from weaktr.runtime.distributed import DistInfo
from weaktr.runtime.layout import RunLayout
from weaktr.stages.views import views_stage

CPU = DistInfo(0, 1, 0, torch.device("cpu"), True)


def _context(run_dir: Path, num_classes: int = 3, *overrides: str) -> RunContext:
    cfg = load_config(
        "demo",
        [f"run_dir={run_dir}", f"cam_model.num_classes={num_classes}", "report.n_examples=3", *overrides],
    )
    info = generate_demo(run_dir / "data", 7, 2, 48, 3, 0)
    torch.manual_seed(0)
    model = build_cam_model(
        CAMConfig(
            backbone="vit_small_patch16_224",
            num_classes=num_classes,
            img_size=48,
            stem="conv",
            patch_size=8,
            embed_dim=32,
            depth=1,
            num_heads=2,
            aaf_reduction=1,
            refine=False,
        )
    )
    save_cam_model(RunLayout(run_dir).cam_model, model)
    return RunContext(cfg, run_dir, info, CPU)


def test_views_stage_writes_the_sample_the_report_shows(tmp_path: Path) -> None:
    ctx = _context(tmp_path / "run")
    assert views_stage(ctx) == {"images": 3}
    lay = ctx.layout
    ids = view_ids(ctx.dataset, "train", 3)
    assert len(ids) == 3 and ids[0] != ids[1]
    index = json.loads(lay.views_index.read_text())
    assert [e["id"] for e in index["images"]] == ids
    assert (index["depth"], index["num_heads"], index["refine"]) == (1, 2, False)
    assert sorted(p.name for p in lay.views.iterdir()) == sorted([f"{i}.npz" for i in ids] + ["index.json"])
    labels = ctx.dataset.labels()
    for entry in index["images"]:
        assert entry["class"] in labels[entry["id"]]
        maps, aaf = load_views(lay.view(entry["id"]))
        assert set(maps) == {"coarse", "cross", "patch", "fine", "fused"} and aaf.shape == (2,)
        for m in maps.values():
            assert m.shape == (48, 48) and m.min() >= 0.0 and m.max() <= 1.0 + 1e-3


def test_views_stage_is_skipped_without_a_report_and_refuses_a_mismatched_model(tmp_path: Path) -> None:
    ctx = _context(tmp_path / "off", 3, "report.enabled=false")
    assert "skipped" in views_stage(ctx)
    assert not ctx.layout.views.exists()
    ctx = _context(tmp_path / "wrong", 5)  # a model of 5 classes for the 3-class data
    with pytest.raises(InputError, match="5 classes"):
        views_stage(ctx)
    assert not ctx.layout.views_index.exists()


def test_spread_is_deterministic_and_even() -> None:
    ids = [str(i) for i in range(10)]
    assert spread(ids, 3) == ["0", "4", "9"] == spread(ids, 3)
    assert spread(ids, None) == ids == spread(ids, 50)
    assert spread(ids, 0) == []
    assert np.all(np.diff([int(i) for i in spread(ids, 5)]) > 0)
