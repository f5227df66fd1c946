"""DatasetInfo (dataset.yaml), image labels from XML / masks / cls_labels.npy, and the torch datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from weaktr.data.info import DatasetInfo, write_id_list
from weaktr.data.labels import build_image_labels, labels_from_cls_npy, labels_from_masks
from weaktr.data.palette import voc_palette
from weaktr.data.torch_datasets import ClassificationDataset, SegmentationDataset
from weaktr.data.transforms import cam_train_transform
from weaktr.data.voc import VOC_CLASSES
from weaktr.errors import InputError
from weaktr.io import write_json


def _coco_mini_info(coco_mini: Path, tmp_path: Path, ids: list[str]) -> DatasetInfo:
    """A description of coco-mini with a small split 'few' (the data set itself is read-only)."""
    write_id_list(tmp_path / "few.txt", ids)
    labels = labels_from_masks(coco_mini / "SegmentationClass", ids)
    write_json(tmp_path / "labels.json", labels)
    return DatasetInfo(
        name="coco-mini",
        root=tmp_path,
        images=str(coco_mini / "JPEGImages"),
        masks=str(coco_mini / "SegmentationClass"),
        splits={"few": "few.txt"},
        image_labels="labels.json",
        class_names=list(VOC_CLASSES),
    )


def _first_ids(coco_mini: Path, n: int) -> list[str]:
    return (coco_mini / "ImageSets/Segmentation/val.txt").read_text().split()[:n]


def test_voc_palette_standard_entries():
    pal = voc_palette()
    assert len(pal) == 768
    assert pal[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]
    assert pal[15 * 3 : 16 * 3] == [192, 128, 128]  # person


def test_yaml_round_trip_and_relative_root(tmp_path):
    info = DatasetInfo(
        name="x",
        root=tmp_path,
        images="imgs",
        image_ext=[".jpg", ".png"],
        masks=None,
        splits={"train": "train.txt"},
        image_labels="labels.json",
        class_names=["background", "a", "b"],
        palette="none",
    )
    info.save(tmp_path / "dataset.yaml")
    assert DatasetInfo.load(tmp_path / "dataset.yaml") == info
    assert DatasetInfo.load(tmp_path) == info  # a folder means its dataset.yaml
    text = (tmp_path / "dataset.yaml").read_text().replace(f"root: {tmp_path}", "root: .")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/dataset.yaml").write_text(text)
    assert DatasetInfo.load(tmp_path / "sub/dataset.yaml").root == (tmp_path / "sub").resolve()
    assert (info.n_cls, info.num_classes) == (3, 2)


def test_the_class_count_check_of_both_networks() -> None:
    """A CAM network counts foreground classes, a segmenter label ids; the error names the config key
    and its fix, or the checkpoint."""
    info = DatasetInfo(name="d", root=Path("."), images="i", class_names=["background", "a", "b"])
    info.check_model_classes(2, cam=True, key="cam_model.num_classes")
    info.check_model_classes(3, cam=False, checkpoint="seg.safetensors")
    key = r"^data set 'd' has 2 foreground classes but cam_model\.num_classes is 3 \(set it to 2\)$"
    with pytest.raises(InputError, match=key):
        info.check_model_classes(3, cam=True, key="cam_model.num_classes")
    seg = r"label ids \(background included\) but seg_model\.n_cls is 21 \(set it to 3\)$"
    with pytest.raises(InputError, match=seg):
        info.check_model_classes(21, cam=False, key="seg_model.n_cls")
    with pytest.raises(InputError, match="the CAM model predicts 3 classes but data set 'd' has 2 f") as err:
        info.check_model_classes(3, cam=True, checkpoint="cam.safetensors")
    assert err.value.path == Path("cam.safetensors")
    with pytest.raises(InputError, match="the segmenter predicts 2 classes but data set 'd' has 3 label"):
        info.check_model_classes(2, cam=False)


def test_load_rejects_bad_yaml(tmp_path):
    (tmp_path / "d.yaml").write_text("name: x\nimages: i\nclass_names: [a]\nbogus: 1\n")
    with pytest.raises(InputError, match="bogus"):
        DatasetInfo.load(tmp_path / "d.yaml")
    with pytest.raises(InputError, match="not found"):
        DatasetInfo.load(tmp_path / "none.yaml")


def test_ids_errors_name_the_problem(coco_mini, tmp_path):
    info = _coco_mini_info(coco_mini, tmp_path, _first_ids(coco_mini, 3))
    assert info.ids("few") == _first_ids(coco_mini, 3)
    with pytest.raises(InputError, match="no split 'nope'"):
        info.ids("nope")
    info.splits["gone"] = "gone.txt"
    with pytest.raises(InputError, match=r"gone\.txt: list file of split 'gone' not found"):
        info.ids("gone")
    (tmp_path / "empty.txt").write_text("\n\n")
    info.splits["empty"] = "empty.txt"
    with pytest.raises(InputError, match="is empty"):
        info.ids("empty")
    write_id_list(tmp_path / "bad.txt", [_first_ids(coco_mini, 1)[0], "000000999999"])
    info.splits["bad"] = "bad.txt"
    with pytest.raises(InputError, match=r"1 image\(s\).*000000999999"):
        info.ids("bad")


def test_labels_from_masks_equal_mask_ids(coco_mini):
    ids = _first_ids(coco_mini, 15)
    labels = labels_from_masks(coco_mini / "SegmentationClass", ids, n_cls=21)
    assert list(labels) == ids
    for i in ids:
        arr = np.asarray(Image.open(coco_mini / "SegmentationClass" / f"{i}.png"))
        assert labels[i] == sorted(set(np.unique(arr).tolist()) - {0, 255})
        assert labels[i], "every listed coco-mini image has a VOC class"


def test_xml_takes_precedence_then_masks_then_cls_labels(tmp_path):
    ann, masks = tmp_path / "Annotations", tmp_path / "masks"
    ann.mkdir()
    masks.mkdir()
    (ann / "a.xml").write_text(
        "<annotation><object><name>dog</name><difficult>1</difficult></object>"
        "<object><name>person</name><truncated>1</truncated></object></annotation>"
    )
    Image.fromarray(np.array([[0, 3], [255, 3]], np.uint8), "L").save(masks / "a.png")
    Image.fromarray(np.array([[0, 7], [255, 9]], np.uint8), "L").save(masks / "b.png")
    table = {"c.jpg": np.eye(20, dtype=np.float32)[4], "b": np.eye(20, dtype=np.float32)[0]}
    np.save(tmp_path / "cls_labels.npy", table, allow_pickle=True)
    labels = build_image_labels(
        ["a", "b", "c"],
        VOC_CLASSES,
        annotations_dir=ann,
        masks_dir=masks,
        cls_labels=tmp_path / "cls_labels.npy",
    )
    assert labels == {"a": [12, 15], "b": [7, 9], "c": [5]}
    with pytest.raises(InputError, match=r"image\(s\): zz"):
        build_image_labels(["a", "zz"], VOC_CLASSES, annotations_dir=ann)
    (ann / "x.xml").write_text("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(InputError, match="unicorn"):
        build_image_labels(["x"], VOC_CLASSES, annotations_dir=ann)


def test_cls_labels_npy_reads_authors_format(tmp_path):
    vec = np.zeros(20, np.float32)
    vec[[0, 14]] = 1
    np.save(tmp_path / "cls.npy", {"2007_000032": vec})
    assert labels_from_cls_npy(tmp_path / "cls.npy") == {"2007_000032": [1, 15]}
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(InputError, match="pickled dict"):
        labels_from_cls_npy(tmp_path / "plain.npy")


def test_multi_hot_uses_label_id_minus_one(coco_mini, tmp_path):
    ids = _first_ids(coco_mini, 4)
    info = _coco_mini_info(coco_mini, tmp_path, ids)
    for i in ids:
        target = info.multi_hot(i)
        assert target.shape == (20,) and target.dtype == torch.float32
        assert (torch.nonzero(target)[:, 0] + 1).tolist() == info.labels()[i]


def test_datasets_return_right_shapes(coco_mini, tmp_path):
    ids = _first_ids(coco_mini, 3)
    info = _coco_mini_info(coco_mini, tmp_path, ids)
    cls = ClassificationDataset(info, "few", cam_train_transform(64))
    x, y = cls[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y.shape == (20,)
    raw, _ = ClassificationDataset(info, "few")[1]
    assert raw.shape[0] == 3 and raw.min() >= 0 and raw.max() <= 1

    seg = SegmentationDataset(info, "few")
    img, mask = seg[2]
    assert img.shape[1:] == mask.shape and mask.dtype == torch.long
    assert set(mask.unique().tolist()) - {0, 255} == set(info.labels()[ids[2]])


def test_segmentation_dataset_names_missing_seed(coco_mini, tmp_path):
    ids = _first_ids(coco_mini, 3)
    info = _coco_mini_info(coco_mini, tmp_path, ids)
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for i in ids[:2]:
        (seeds / f"{i}.png").write_bytes((coco_mini / "SegmentationClass" / f"{i}.png").read_bytes())
    with pytest.raises(InputError, match=ids[2]):
        SegmentationDataset(info, "few", seeds)
