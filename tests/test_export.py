"""COCO JSON export, read back with pycocotools and compared pixel for pixel with the label PNGs."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from weaktr.cli import main
from weaktr.config import load_config, save_config
from weaktr.data.coco import prepare_coco
from weaktr.data.demo import generate_demo
from weaktr.data.images import load_label_map
from weaktr.data.info import DatasetInfo
from weaktr.data.palette import voc_palette
from weaktr.io import save_label_png


def _read_back(path: Path) -> tuple[COCO, dict[str, np.ndarray]]:
    """The exported file through pycocotools, and each image's label map rebuilt from its annotations."""
    with warnings.catch_warnings():  # pycocotools 2.0 trips numpy 2's __array__(copy=) deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        coco = COCO(str(path))
        rebuilt = {}
        for img in coco.dataset["images"]:
            labels = np.zeros((img["height"], img["width"]), np.uint8)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
                binary = coco.annToMask(ann).astype(bool)
                assert not labels[binary].any(), "one class per pixel: masks must not overlap"
                assert binary.sum() == ann["area"]
                labels[binary] = ann["category_id"]
            rebuilt[img["file_name"]] = labels
    return coco, rebuilt


def _assert_same(rebuilt: dict[str, np.ndarray], info: DatasetInfo, ids: list[str], label_dir: Path) -> None:
    assert sorted(rebuilt) == sorted(info.image_path(i).name for i in ids)
    for i in ids:
        expected = load_label_map(label_dir / f"{i}.png").copy()
        expected[expected == 255] = 0  # ignore regions are not annotations
        np.testing.assert_array_equal(rebuilt[info.image_path(i).name], expected, err_msg=i)


@pytest.fixture
def demo(tmp_path: Path) -> DatasetInfo:
    return generate_demo(tmp_path / "data", 6, 4, 48, 4, 1)


def test_export_labels_round_trips_through_pycocotools(demo, tmp_path, capsys) -> None:
    label_dir = tmp_path / "labels"
    for k, i in enumerate(demo.ids("val")):  # GT masks with an ignore band in one of them
        mask = load_label_map(demo.mask_path(i)).copy()
        if k == 0:
            mask[:5] = 255
        save_label_png(label_dir / f"{i}.png", mask, voc_palette())
    out = tmp_path / "out" / "val.json"
    args = [
        "export",
        "--labels",
        str(label_dir),
        "--dataset",
        str(demo.root),
        "--split",
        "val",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert str(out) in capsys.readouterr().out
    coco, rebuilt = _read_back(out)
    _assert_same(rebuilt, demo, demo.ids("val"), label_dir)
    cats = coco.loadCats(coco.getCatIds())
    assert [c["name"] for c in cats] == demo.class_names[1:]
    n_present = sum(len(demo.labels()[i]) for i in demo.ids("val"))
    assert len(coco.getAnnIds()) == n_present
    assert all(
        a["iscrowd"] == 0 and isinstance(a["segmentation"]["counts"], str)
        for a in coco.loadAnns(coco.getAnnIds())
    )


def test_export_from_a_run_directory(demo, tmp_path) -> None:
    run = tmp_path / "run"
    save_config(load_config("demo", [f"run_dir={run}"]), run / "config.yaml")
    shutil.copytree(demo.root, run / "data")
    for split, shift in (("train", 3), ("val", 0)):
        for i in demo.ids(split):
            save_label_png(
                run / "pred" / split / f"{i}.png", np.roll(load_label_map(demo.mask_path(i)), shift, 1)
            )
    for what, split in (("pseudo_masks", "train"), ("predictions", "val")):
        out = tmp_path / f"{what}.json"
        assert main(["export", "--run", str(run), "--what", what, "--out", str(out)]) == 0
        _, rebuilt = _read_back(out)
        _assert_same(rebuilt, demo, demo.ids(split), run / "pred" / split)


def test_export_coco_category_ids_with_gaps(coco_mini, tmp_path) -> None:
    data = json.loads((coco_mini / "annotations/instances_val2017.json").read_text())
    crowd = {a["image_id"] for a in data["annotations"] if a["iscrowd"]}
    keep = set(sorted(crowd)[:2]) | {im["id"] for im in data["images"][:4]}
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    (tmp_path / "instances_val2017.json").write_text(json.dumps(data))
    info = prepare_coco(tmp_path / "instances_val2017.json", coco_mini / "JPEGImages", tmp_path / "coco")
    out = tmp_path / "gt.json"
    label_dir = info.path(info.masks)
    assert (
        main(
            [
                "export",
                "--labels",
                str(label_dir),
                "--dataset",
                str(info.root),
                "--split",
                "val",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    coco, rebuilt = _read_back(out)
    _assert_same(rebuilt, info, info.ids("val"), label_dir)
    assert len(coco.getCatIds()) == 80 and 12 not in coco.getCatIds()  # unused ids are not categories
    assert {c["name"] for c in coco.loadCats([1, 90])} == {"person", "toothbrush"}


def test_export_bad_input_is_one_line_naming_the_file(demo, tmp_path, capsys) -> None:
    def error(*argv: str) -> str:
        assert main(["export", *argv, "--out", str(tmp_path / "x.json")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1
        return lines[0]

    labels = tmp_path / "labels"
    ids = demo.ids("val")
    for i in ids[1:]:
        save_label_png(labels / f"{i}.png", load_label_map(demo.mask_path(i)))
    base = ["--labels", str(labels), "--dataset", str(demo.root), "--split", "val"]
    assert f"{ids[0]}.png: file not found" in error(*base)
    save_label_png(labels / f"{ids[0]}.png", np.full((48, 48), 9, np.uint8))
    assert f"{ids[0]}.png: label ids [9] have no class name" in error(*base)
    assert "has no split 'test'" in error(*base[:-1], "test")
    assert "nope: label folder not found" in error("--labels", str(tmp_path / "nope"), *base[2:])
    assert "--labels needs --dataset" in error("--labels", str(labels))
    assert "either --labels" in error(*base, "--run", str(tmp_path))
    assert "config.yaml: config file not found" in error("--run", str(tmp_path / "norun"))
    run = tmp_path / "run"
    save_config(load_config("demo", [f"run_dir={run}"]), run / "config.yaml")
    shutil.copytree(demo.root, run / "data")
    assert "run the predict stage first" in error("--run", str(run))
    assert not (tmp_path / "x.json").exists()
