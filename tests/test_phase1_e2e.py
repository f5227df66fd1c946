"""Phase 1 end to end on real photographs (coco-mini in VOC layout): train → CAMs → seeds (+CRF) → scores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CAM, add_splits, model_override
from PIL import Image

from weaktr.config import load_config
from weaktr.data.voc import prepare_voc
from weaktr.io import load_cams
from weaktr.runtime.context import open_run
from weaktr.stages.gen_cam import gen_cam_stage
from weaktr.stages.scoring import evaluate_stage
from weaktr.stages.seeds import seeds_stage
from weaktr.stages.train_cam import train_cam

pytestmark = pytest.mark.slow

# The shared tiny CAM network with VOC's 20 classes at 64 px, one block of width 32
VOC_CAM = {
    **TINY_CAM,
    "backbone": "deit_small_patch16_224",
    "num_classes": 20,
    "img_size": 64,
    "embed_dim": 32,
    "depth": 1,
    "num_heads": 2,
    "drop_path": 0.1,
}


def test_phase1_on_coco_mini(coco_mini: Path, tmp_path: Path) -> None:
    info = prepare_voc(coco_mini, out=tmp_path / "data")  # 24 training and 8 scoring images: seconds
    splits = {"mini_train": info.ids("train")[:24], "mini_eval": info.ids("train")[:8]}
    dataset = add_splits(info, tmp_path / "data", **splits)
    cfg = load_config(
        "voc",
        [
            f"data.dataset={dataset}",
            f"run_dir={tmp_path / 'run'}",
            "device=cpu",
            "data.train_split=mini_train",
            "data.cam_eval_split=mini_eval",
            model_override("cam_model", VOC_CAM),
            "cam_train.epochs=1",
            "cam_train.batch_size=8",
            "cam_train.img_size=64",
            "cam_train.num_workers=0",
            "cam_train.pretrained=null",
            "cam_train.log_every=1",
            "cam_gen.scales=[1.0, 0.5]",
            "cam_gen.num_workers=0",
            "seeds.workers=2",
        ],
    )
    ctx = open_run(cfg)
    model = train_cam(ctx)  # voc.yaml selects by GT mIoU, the authors' way
    selection = json.loads((ctx.run_dir / "cam" / "selection.json").read_text())
    assert selection["mode"] == "gt_miou" and selection["epoch"] == 1

    cams = gen_cam_stage(ctx, model)
    assert cams == ctx.run_dir / "cams"
    labels = ctx.dataset.labels()
    for image_id in ctx.dataset.ids("mini_train")[:5]:
        with np.load(cams / f"{image_id}.npz") as data:
            assert data["cams"].dtype == np.float16 and data["classes"].dtype == np.int64
        maps, classes = load_cams(cams / f"{image_id}.npz")
        with Image.open(ctx.dataset.image_path(image_id)) as img:
            assert maps.shape == (len(labels[image_id]), img.height, img.width)
        assert classes.tolist() == labels[image_id]
        assert maps.min() >= 0 and maps.max() <= 1

    seeds = seeds_stage(ctx, cams, crf=False, out_dir=ctx.run_dir / "seeds")
    few = ctx.run_dir / "cams_few"
    few.mkdir()
    for image_id in ctx.dataset.ids("mini_eval")[:3]:
        shutil.copy(cams / f"{image_id}.npz", few / f"{image_id}.npz")
    seeds_crf = seeds_stage(ctx, few, crf=True, out_dir=ctx.run_dir / "seeds_crf")
    assert len(list(seeds.glob("*.png"))) == 24 and len(list(seeds_crf.glob("*.png"))) == 3
    for png in [*sorted(seeds.glob("*.png"))[:5], *seeds_crf.glob("*.png")]:
        values = set(np.unique(np.asarray(Image.open(png))).tolist())
        assert values <= {0, *labels[png.stem]}  # background or one of the image's own classes

    cam_scores = evaluate_stage(ctx, cams, "mini_eval", "cam_fine", sweep=True)
    seed_scores = evaluate_stage(ctx, seeds, "mini_eval", "seeds")
    for name, scores in (("cam_fine", cam_scores), ("seeds", seed_scores)):
        saved = json.loads((ctx.run_dir / "metrics" / f"{name}.json").read_text())
        assert {"miou", "iou", "precision", "recall", "class_names", "official_percent"} <= set(saved)
        assert len(saved["iou"]) == 21 and 0 <= saved["miou"] <= 1
        assert saved["miou"] == pytest.approx(scores["miou"])
    assert 0.40 <= cam_scores["threshold"] <= 0.59  # voc.yaml's sweep
