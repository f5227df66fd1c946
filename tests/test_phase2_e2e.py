"""Phase 2 end to end on real photographs (coco-mini in VOC layout): seeds from a tiny CAM network →
a few segmenter steps → two-scale prediction with CRF → evaluation against the masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CAM, TINY_SEG, add_splits, model_override

from weaktr.cam.generate import CamGenSettings, generate_cams
from weaktr.cam.seeds import make_seeds
from weaktr.config import load_config
from weaktr.data.info import DatasetInfo
from weaktr.data.palette import voc_palette
from weaktr.data.voc import prepare_voc
from weaktr.models.cam import CAMConfig, build_cam_model
from weaktr.runtime.context import open_run
from weaktr.stages.predict import predict_split
from weaktr.stages.scoring import evaluate_stage
from weaktr.stages.train_seg import train_seg

pytestmark = pytest.mark.slow

# The shared tiny segmenter with VOC's 21 label ids at 64 px
VOC_SEG = {**TINY_SEG, "backbone": "deit_small_patch16_224", "n_cls": 21, "image_size": 64, "drop_path": 0.1}


def _phase1_seeds(info: DatasetInfo, split: str, out: Path) -> Path:
    """Seeds of a tiny random-weight CAM network (the phase-1 functions, without its training)."""
    torch.manual_seed(0)
    cfg = CAMConfig(
        **{**TINY_CAM, "num_classes": 20, "img_size": 64, "embed_dim": 32, "depth": 1, "num_heads": 2}
    )
    model = build_cam_model(cfg).eval()
    labels = info.labels()
    ids = info.ids(split)
    items = [(i, info.image_path(i), labels[i]) for i in ids]
    generate_cams(model, items, out / "cams", CamGenSettings((1.0,)), torch.device("cpu"), progress=False)
    make_seeds(out / "cams", ids, out / "seeds", 0.4, palette=voc_palette(), workers=1, progress=False)
    return out / "seeds"


def test_phase2_on_coco_mini(coco_mini: Path, tmp_path: Path) -> None:
    info = prepare_voc(coco_mini, out=tmp_path / "data")  # 12 training and 4 validation images: seconds
    splits = {"e2e_train": info.ids("train")[:12], "e2e_val": info.ids("val")[:4]}
    dataset = add_splits(info, tmp_path / "data", **splits)
    cfg = load_config(
        "voc",
        [
            f"data.dataset={dataset}",
            f"run_dir={tmp_path / 'run'}",
            "device=cpu",
            "data.train_split=e2e_train",
            "data.val_split=e2e_val",
            model_override("seg_model", VOC_SEG),
            "seg_train.epochs=1",
            "seg_train.batch_size=4",
            "seg_train.lr=0.01",
            "seg_train.crop=64",
            "seg_train.base_size=72",
            "seg_train.ratio_range=[0.75, 1.25]",
            "seg_train.gc={mode: code, tau: 999.0, cell: 32}",
            "seg_train.num_workers=0",
            "seg_train.pretrained=null",
            "seg_train.log_every=1",
            "predict.scales=[0.75, 1.0]",
            "predict.window=64",
            "predict.stride=48",
            "predict.base_size=72",
            "predict.window_batch=8",
            "predict.workers=2",
        ],
    )
    ctx = open_run(cfg)
    info = ctx.dataset
    seeds = _phase1_seeds(info, "e2e_train", tmp_path / "phase1")
    assert len(list(seeds.glob("*.png"))) == 12

    model = train_seg(ctx, seeds, gt_dir=info.path(info.masks))
    records = [json.loads(line) for line in (tmp_path / "run/seg/log.jsonl").read_text().splitlines()]
    iters = [r for r in records if r["event"] == "iter"]
    assert len(iters) == 3 and all("kept_precision" in r and "clipped_fraction" in r for r in iters)
    epoch = next(r for r in records if r["event"] == "epoch")
    assert 0.0 <= epoch["val_miou"] <= 1.0

    pred = predict_split(ctx, model, "e2e_val", tmp_path / "run/pred/e2e_val", crf=True)
    for folder in (pred, tmp_path / "run/pred/e2e_val_nocrf"):
        scores = evaluate_stage(ctx, folder, "e2e_val", folder.name)
        assert 0.0 <= scores["miou"] <= 1.0
        assert sum(scores["count_pred"]) == sum(scores["count_gt"]) > 0
        assert np.isfinite(scores["iou"][0])
