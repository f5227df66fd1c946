"""The paper's packaged configs at their real sizes, run as a user runs them, on real coco-mini photos.

One plan (benchmarks/paper_configs.py) prepares the photos with ``weaktr prepare``, runs ``weaktr run``
for each config with random weights and one short epoch per phase, and exports voc's pseudo masks;
these tests check what each run left and that nothing but the short-run overrides departed from the
packaged config.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from weaktr.config import load_config
from weaktr.data.info import DatasetInfo

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def plan() -> ModuleType:
    import sys

    sys.path.insert(0, str(BENCH))  # benchmarks/ is not a package
    try:
        return importlib.import_module("paper_configs")
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def runs(plan: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    if not plan.COCO_MINI.is_dir():
        pytest.skip(f"coco-mini not found at {plan.COCO_MINI}")
    work = tmp_path_factory.mktemp("paper_configs")
    return work, plan.run_plan(work)


def _ok(results: dict[str, Any], name: str) -> dict[str, Any]:
    rec = results[name]
    if rec["exit_code"] != 0:
        tail = Path(rec["log"]).read_text()[-3000:]
        pytest.fail(f"weaktr {' '.join(rec['args'][:2])} ({name}) exited {rec['exit_code']}:\n{tail}")
    return rec


def _saved(run_dir: Path) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))


def _differences(a: Any, b: Any, prefix: str = "") -> set[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {d for k in a.keys() | b.keys() for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")}
    return set() if a == b else {prefix.rstrip(".")}


def _label_maps(folder: Path, ids: list[str], images: Path, max_label: int) -> None:
    for i in ids:
        pred = np.asarray(Image.open(folder / f"{i}.png"))
        photo = Image.open(images / f"{i}.jpg")
        assert pred.shape == (photo.height, photo.width), i
        assert pred.max() <= max_label, i


@pytest.mark.parametrize("config", ["voc", "voc_vit_small", "voc_dinov2_small", "voc_eva02_small", "coco"])
def test_only_the_short_run_overrides_depart_from_the_packaged_config(plan, runs, config):
    work, results = runs
    _ok(results, config)
    saved = _saved(work / "runs" / config)
    packaged = load_config(config).to_dict()
    allowed = {o.split("=")[0] for o in plan.SHORT} | {"run_dir"}
    if config != "voc":
        allowed |= {o.split("=")[0] for o in plan.ONE_SCALE}
    if config == "coco":
        allowed.add("data.dataset")
    assert _differences(saved, packaged) <= allowed
    assert saved["cam_train"]["img_size"] == 224 and saved["seg_train"]["crop"] == 480
    assert saved["cam_train"]["randaug"] == "rand-m9-mstd0.5-inc1"


def test_voc_runs_every_stage_and_exports(plan, runs):
    work, results = runs
    _ok(results, "voc")
    run_dir = work / "runs" / "voc"
    assert set(plan.stage_seconds(run_dir)) == {*plan.PHASE1, "train_seg", "predict", "report"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"seeds_crf", "pseudo_masks", "segmenter"} <= summary.keys()
    images = plan.COCO_MINI / "JPEGImages"
    _label_maps(run_dir / "pred" / "val", list(plan.VOC_VAL), images, 20)
    _label_maps(run_dir / "pred" / "train", list(plan.VOC_TRAIN), images, 20)
    assert (run_dir / "report" / "index.html").is_file()
    _ok(results, "voc export")
    exported = json.loads((work / "export" / "voc_pseudo_masks.json").read_text())
    assert {im["file_name"] for im in exported["images"]} == {f"{i}.jpg" for i in plan.VOC_TRAIN}
    assert exported["annotations"] and all("counts" in a["segmentation"] for a in exported["annotations"])


@pytest.mark.parametrize("config", ["voc_vit_small", "voc_dinov2_small", "voc_eva02_small"])
def test_segmenter_configs_train_and_predict_one_scale(plan, runs, config):
    work, results = runs
    rec = _ok(results, config)
    run_dir = work / "runs" / config
    assert {"train_seg", "predict"} <= rec["stage_seconds"].keys()
    assert (run_dir / "seg" / "model.safetensors").is_file()
    _label_maps(run_dir / "pred" / "val", list(plan.VOC_VAL), plan.COCO_MINI / "JPEGImages", 20)


def test_coco_trains_both_phases_with_90_classes(plan, runs):
    work, results = runs
    _ok(results, "coco")
    run_dir = work / "runs" / "coco"
    assert {*plan.PHASE1, "train_seg", "predict"} <= plan.stage_seconds(run_dir).keys()
    assert load_config("coco").data.val_split == "val"
    val_ids = DatasetInfo.load(work / "data" / "coco").ids("val")
    assert val_ids
    _label_maps(run_dir / "pred" / "val", val_ids, plan.COCO_MINI / "JPEGImages", 90)
