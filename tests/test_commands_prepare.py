"""``weaktr prepare voc|coco|folder`` on coco-mini and tiny generated folders, through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weaktr.cli import main
from weaktr.data.images import load_label_map
from weaktr.data.info import DatasetInfo


def _ok(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    assert main(["prepare", *argv]) == 0
    return capsys.readouterr().out.strip().splitlines()


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["prepare", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _coco_cut(coco_mini: Path, out: Path, split: str, n: int) -> Path:
    """The first ``n`` images of a coco-mini instances file, saved under its original name."""
    data = json.loads((coco_mini / f"annotations/instances_{split}2017.json").read_text())
    data["images"] = data["images"][:n]
    keep = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    out.mkdir(exist_ok=True)
    path = out / f"instances_{split}2017.json"
    path.write_text(json.dumps(data))
    return path


def test_prepare_voc_on_coco_mini(coco_mini, tmp_path, capsys) -> None:
    out = _ok(capsys, "voc", "--root", str(coco_mini), "--out", str(tmp_path / "voc"))
    assert out == [
        str(tmp_path / "voc" / "dataset.yaml"),
        "voc: train 270, val 167 images; 20 classes; with ground-truth masks",
    ]
    assert DatasetInfo.load(tmp_path / "voc").n_cls == 21


def test_prepare_coco_names_splits_from_the_files(coco_mini, tmp_path, capsys) -> None:
    train = _coco_cut(coco_mini, tmp_path / "ann", "train", 12)
    val = _coco_cut(coco_mini, tmp_path / "ann", "val", 8)
    args = ["coco", "--annotations", str(train), str(val), "--images", str(coco_mini / "JPEGImages")]
    path, line = _ok(capsys, *args, "--out", str(tmp_path / "coco"))
    info = DatasetInfo.load(path)
    n_train, n_val = len(info.ids("train")), len(info.ids("val"))
    assert 0 < n_train <= 12 and 0 < n_val <= 8
    assert line == f"coco: train {n_train}, val {n_val} images; 80 classes; with ground-truth masks"
    stem = info.ids("val")[0]
    assert set(np.unique(load_label_map(info.mask_path(stem)))) - {0, 255} == set(info.labels()[stem])

    _, line = _ok(capsys, *args, "--out", str(tmp_path / "c2"), "--split-names", "a", "b", "--name", "mini")
    assert line.startswith(f"mini: a {n_train}, b {n_val} images")


def _folder(tmp_path: Path, n: int = 5) -> tuple[Path, Path]:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for k in range(n):
        Image.fromarray(np.full((8, 10, 3), 40 * k, np.uint8)).save(images / f"im{k}.jpg")
        Image.fromarray(np.full((8, 10), 1 + k % 2, np.uint8), "L").save(masks / f"im{k}.png")
    return images, masks


def test_prepare_folder_csv_with_masks_and_json(tmp_path, capsys) -> None:
    images, masks = _folder(tmp_path)
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "image,labels\n" + "".join(f"im{k}.jpg,{'cat' if k % 2 == 0 else 'dog'}\n" for k in range(5))
    )
    args = ["folder", "--images", str(images), "--labels", str(csv), "--out", str(tmp_path / "ds")]
    path, line = _ok(capsys, *args, "--masks", str(masks), "--val-fraction", "0.4", "--classes", "cat,dog")
    assert line == "custom: train 3, val 2 images; 2 classes; with ground-truth masks"
    info = DatasetInfo.load(path)
    assert info.class_names == ["background", "cat", "dog"] and info.labels()["im1"] == [2]
    assert load_label_map(info.mask_path("im3")).max() == 2

    js = tmp_path / "labels.json"
    js.write_text(json.dumps({f"im{k}": ["zebra", "ant"] if k else [] for k in range(5)}))
    path, line = _ok(
        capsys,
        "folder",
        "--images",
        str(images),
        "--labels",
        str(js),
        "--out",
        str(tmp_path / "j"),
        "--val-fraction",
        "0.2",
    )
    assert line == "custom: train 4, val 1 images; 2 classes; without ground-truth masks"
    assert DatasetInfo.load(path).labels()["im1"] == [1, 2]  # sorted names: ant = 1, zebra = 2


def test_prepare_bad_input_is_one_line_naming_the_file(coco_mini, tmp_path, capsys) -> None:
    assert "JPEGImages/ is missing" in _error(capsys, "voc", "--root", str(tmp_path))
    bad = tmp_path / "instances_val2017.json"
    bad.write_text("{oops")
    err = _error(
        capsys, "coco", "--annotations", str(bad), "--images", str(coco_mini), "--out", str(tmp_path / "o")
    )
    assert f"{bad}: not valid JSON" in err
    val = _coco_cut(coco_mini, tmp_path / "ann", "val", 2)
    args = [
        "coco",
        "--annotations",
        str(val),
        "--images",
        str(coco_mini / "JPEGImages"),
        "--out",
        str(tmp_path),
    ]
    assert "one distinct split name per annotation file" in _error(capsys, *args, "--split-names", "a", "b")
    images, _ = _folder(tmp_path)
    csv = tmp_path / "l.csv"
    csv.write_text("image,labels\nim0.jpg,cat\nim9.jpg,cat\n")
    folder = ["folder", "--images", str(images), "--out", str(tmp_path / "f")]
    assert f"{csv}: line 3: image 'im9.jpg' not found" in _error(capsys, *folder, "--labels", str(csv))
    assert "nope.csv: file not found" in _error(capsys, *folder, "--labels", str(tmp_path / "nope.csv"))
    csv.write_text("image,labels\nim0.jpg,cat\n")
    assert "mask(s) missing: im0" in _error(
        capsys, *folder, "--labels", str(csv), "--masks", str(tmp_path / "ann")
    )
    assert "val_fraction must be in [0, 1)" in _error(
        capsys, *folder, "--labels", str(csv), "--val-fraction", "1.5"
    )
