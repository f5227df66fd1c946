"""prepare_voc / prepare_coco / prepare_folder on coco-mini and small hand-made folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weaktr.data.coco import paint_mask, prepare_coco
from weaktr.data.folder import prepare_folder
from weaktr.data.images import load_label_map
from weaktr.data.info import DatasetInfo
from weaktr.data.voc import VOC_CLASSES, prepare_voc
from weaktr.errors import InputError

COCO_TO_VOC = {
    "airplane": "aeroplane", "bicycle": "bicycle", "bird": "bird", "boat": "boat", "bottle": "bottle",
    "bus": "bus", "car": "car", "cat": "cat", "chair": "chair", "cow": "cow", "dining table": "diningtable",
    "dog": "dog", "horse": "horse", "motorcycle": "motorbike", "person": "person",
    "potted plant": "pottedplant", "sheep": "sheep", "couch": "sofa", "train": "train", "tv": "tvmonitor",
}  # fmt: skip


def _mask_ids(path: Path) -> list[int]:
    return sorted(set(np.unique(load_label_map(path)).tolist()) - {0, 255})


# ---- VOC --------------------------------------------------------------------------------------------
def test_prepare_voc_on_coco_mini(coco_mini, tmp_path):
    info = prepare_voc(coco_mini, out=tmp_path, name="coco-mini")
    assert set(info.splits) == {"train", "val"}
    assert len(info.ids("train")) == 270 and len(info.ids("val")) == 167
    assert info.masks is not None and Path(info.masks).name == "SegmentationClass"
    assert info.class_names == list(VOC_CLASSES)
    reloaded = DatasetInfo.load(tmp_path / "dataset.yaml")
    assert reloaded == info
    labels = reloaded.labels()
    assert len(labels) == 270 + 167
    for i in info.ids("val")[:10]:
        assert labels[i] == _mask_ids(info.mask_path(i))


def _fake_voc(root: Path) -> None:
    for d in (
        "JPEGImages",
        "SegmentationClass",
        "SegmentationClassAug",
        "Annotations",
        "ImageSets/Segmentation",
    ):
        (root / d).mkdir(parents=True)
    for i, name in enumerate(["a", "b", "c"]):
        Image.fromarray(np.full((8, 8, 3), 50 * i, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        Image.fromarray(np.full((8, 8), 1, np.uint8), "L").save(root / "SegmentationClass" / f"{name}.png")
        Image.fromarray(np.full((8, 8), 2 + i, np.uint8), "L").save(
            root / "SegmentationClassAug" / f"{name}.png"
        )
    (root / "Annotations" / "a.xml").write_text("<annotation><object><name>cat</name></object></annotation>")
    (root / "ImageSets/Segmentation/train.txt").write_text("a\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("b")
    (root / "ImageSets/Segmentation/trainaug.txt").write_text("a\nc\n")
    (root / "ImageSets/Segmentation/test.txt").write_text("zz\n")  # test images have no masks or labels
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "JPEGImages" / "zz.jpg")


def test_prepare_voc_prefers_aug_masks_trainaug_and_xml(tmp_path):
    _fake_voc(tmp_path / "voc")
    info = prepare_voc(tmp_path / "voc")
    assert info.masks == "SegmentationClassAug"
    assert set(info.splits) == {"train", "val", "test", "train_aug"}
    assert info.ids("train_aug") == ["a", "c"]
    assert info.labels() == {"a": [8], "b": [3], "c": [4]}  # a from XML, b and c from the Aug masks
    assert (tmp_path / "voc" / "dataset.yaml").is_file()


def test_prepare_voc_rejects_non_voc_folder(tmp_path):
    with pytest.raises(InputError, match="JPEGImages"):
        prepare_voc(tmp_path)


# ---- COCO -------------------------------------------------------------------------------------------
def _coco_subset(coco_mini: Path, tmp_path: Path, n_plain: int = 8) -> tuple[Path, dict]:
    """The val JSON cut down to its images with crowd regions plus a few others (fast to paint)."""
    data = json.loads((coco_mini / "annotations/instances_val2017.json").read_text())
    crowd = {a["image_id"] for a in data["annotations"] if a["iscrowd"]}
    plain = [im["id"] for im in data["images"] if im["id"] not in crowd][:n_plain]
    keep = set(sorted(crowd)[:8]) | set(plain)
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(data))
    return path, data


def test_prepare_coco_masks_agree_with_annotations(coco_mini, tmp_path):
    path, data = _coco_subset(coco_mini, tmp_path)
    info = prepare_coco(path, coco_mini / "JPEGImages", tmp_path / "out")
    assert set(info.splits) == {"val"}  # split name from the file name
    assert info.n_cls == 91 and info.class_names[12] == "unused_12" and info.class_names[1] == "person"
    labels = info.labels()
    ids = info.ids("val")
    assert len(ids) == len(data["images"]) == len(labels)
    by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for im in data["images"]:
        stem = Path(im["file_name"]).stem
        anns = by_image[im["id"]]
        assert labels[stem] == sorted({a["category_id"] for a in anns if not a["iscrowd"]})
        mask = load_label_map(info.mask_path(stem), (im["height"], im["width"]), info.n_cls)
        assert _mask_ids(info.mask_path(stem)) == labels[stem]
        if any(a["iscrowd"] for a in anns):
            assert (mask == 255).any()
        else:
            assert not (mask == 255).any()


def test_prepare_coco_matches_coco_mini_voc_masks(coco_mini, tmp_path):
    path, data = _coco_subset(coco_mini, tmp_path)
    info = prepare_coco({"val": path}, coco_mini / "JPEGImages", tmp_path / "out")
    to_voc = np.zeros(256, np.int64)
    to_voc[255] = 255
    for c in data["categories"]:
        if c["name"] in COCO_TO_VOC:
            to_voc[c["id"]] = VOC_CLASSES.index(COCO_TO_VOC[c["name"]])
    agree = total = crowd_agree = crowd_total = 0
    for i in info.ids("val"):
        ours = to_voc[load_label_map(info.mask_path(i))]
        theirs = load_label_map(coco_mini / "SegmentationClass" / f"{i}.png")
        sel = (ours > 0) & (ours < 255)
        agree, total = agree + int((ours[sel] == theirs[sel]).sum()), total + int(sel.sum())
        crowd_agree += int((theirs[ours == 255] == 255).sum())
        crowd_total += int((ours == 255).sum())
    assert total > 0 and crowd_total > 0
    assert agree / total > 0.98, agree / total
    assert crowd_agree / crowd_total > 0.98, crowd_agree / crowd_total


def test_paint_mask_puts_small_instances_on_top_and_crowd_under():
    big = {"segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]], "area": 100, "category_id": 3, "iscrowd": 0}
    small = {"segmentation": [[2, 2, 5, 2, 5, 5, 2, 5]], "area": 9, "category_id": 7, "iscrowd": 0}
    crowd = {"segmentation": [[0, 0, 12, 0, 12, 12, 0, 12]], "area": 144, "category_id": 1, "iscrowd": 1}
    mask = paint_mask(12, 12, [small, crowd, big])
    assert mask[3, 3] == 7 and mask[8, 8] == 3 and mask[11, 11] == 255


def test_prepare_coco_errors(coco_mini, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match=r"bad\.json: not valid JSON"):
        prepare_coco(bad, coco_mini / "JPEGImages", tmp_path / "out")
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(InputError, match="not a COCO instances file"):
        prepare_coco(bad, coco_mini / "JPEGImages", tmp_path / "out")
    path, _ = _coco_subset(coco_mini, tmp_path, n_plain=2)
    with pytest.raises(InputError, match="not found"):
        prepare_coco(path, tmp_path, tmp_path / "out")


# ---- custom folder ----------------------------------------------------------------------------------
def _images(folder: Path, names: list[str]) -> None:
    folder.mkdir()
    for k, n in enumerate(names):
        Image.fromarray(np.full((6, 6, 3), k * 20, np.uint8)).save(folder / n)


def test_prepare_folder_from_csv_with_split_column(tmp_path):
    _images(tmp_path / "imgs", ["a.jpg", "b.png", "c.jpg"])
    (tmp_path / "labels.csv").write_text(
        "image,labels,split\na.jpg,cat;dog,train\nb,dog|bird,train\nc.jpg,,val\n"
    )
    names = ["cat", "dog", "bird"]
    info = prepare_folder(tmp_path / "imgs", tmp_path / "labels.csv", tmp_path / "out", class_names=names)
    assert info.class_names == ["background", "cat", "dog", "bird"]
    assert info.labels() == {"a": [1, 2], "b": [2, 3], "c": []}
    assert info.ids("train") == ["a", "b"] and info.ids("val") == ["c"]
    assert info.image_path("b").name == "b.png"
    assert DatasetInfo.load(tmp_path / "out") == info


def test_prepare_folder_from_json_with_val_fraction(tmp_path):
    names = [f"i{k}.jpg" for k in range(10)]
    _images(tmp_path / "imgs", names)
    (tmp_path / "labels.json").write_text(
        json.dumps({n: ["zebra"] if k % 2 else ["ant"] for k, n in enumerate(names)})
    )
    info = prepare_folder(tmp_path / "imgs", tmp_path / "labels.json", tmp_path / "out", val_fraction=0.3)
    assert info.class_names == ["background", "ant", "zebra"]
    train, val = info.ids("train"), info.ids("val")
    assert len(val) == 3 and sorted(train + val) == sorted(Path(n).stem for n in names)
    again = prepare_folder(tmp_path / "imgs", tmp_path / "labels.json", tmp_path / "out2", val_fraction=0.3)
    assert again.ids("val") == val


def test_prepare_folder_errors_name_line_and_file(tmp_path):
    _images(tmp_path / "imgs", ["a.jpg"])
    (tmp_path / "l.csv").write_text("image,labels\na.jpg,cat\na.jpg,horse\n")
    with pytest.raises(InputError, match=r"l\.csv: line 3: unknown class name\(s\) \['horse'\]"):
        prepare_folder(tmp_path / "imgs", tmp_path / "l.csv", tmp_path / "out", class_names=["cat"])
    (tmp_path / "l.csv").write_text("image,labels\nmissing.jpg,cat\n")
    with pytest.raises(InputError, match=r"line 2: image 'missing\.jpg' not found"):
        prepare_folder(tmp_path / "imgs", tmp_path / "l.csv", tmp_path / "out")
    (tmp_path / "l.csv").write_text("file,classes\na.jpg,cat\n")
    with pytest.raises(InputError, match="header"):
        prepare_folder(tmp_path / "imgs", tmp_path / "l.csv", tmp_path / "out")
    with pytest.raises(InputError, match="mask"):
        (tmp_path / "l.csv").write_text("image,labels\na.jpg,cat\n")
        prepare_folder(tmp_path / "imgs", tmp_path / "l.csv", tmp_path / "out", masks_dir=tmp_path)
