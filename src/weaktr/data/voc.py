"""Preparing PASCAL VOC 2012 (+ SBD ``SegmentationClassAug``) into a ``dataset.yaml``.

Images and masks stay where they are; only ``dataset.yaml`` and ``image_labels.json`` are written
(into ``out``, default the VOC root), so a read-only copy of VOC works with ``out`` elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from weaktr.data.check import check_dataset
from weaktr.data.info import DatasetInfo, output_folder, relative_to_root
from weaktr.data.labels import build_image_labels
from weaktr.errors import InputError
from weaktr.io import sweep_temporaries, write_json

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

_LISTS = (("train", "train.txt"), ("val", "val.txt"), ("test", "test.txt"))
_TRAIN_AUG = ("train_aug.txt", "trainaug.txt")


def prepare_voc(
    root: str | Path, out: str | Path | None = None, name: str = "voc", workers: int | None = None
) -> DatasetInfo:
    """Describe a VOC 2012 folder (``JPEGImages``, masks, ``ImageSets/Segmentation/*.txt``).

    Prefers ``SegmentationClassAug`` over ``SegmentationClass``; adds split ``train_aug`` when SBD's list
    (``train_aug.txt`` or ``trainaug.txt``) is present. Image labels come from ``Annotations/<id>.xml``
    when present, else from the masks; the test split needs none. Every listed image and mask is
    checked first (``workers`` processes, default all cores); nothing is written unless all pass.
    """
    root = Path(root).resolve()
    out_dir = Path(out).resolve() if out is not None else root
    images = root / "JPEGImages"
    if not images.is_dir():
        raise InputError("not a VOC 2012 folder: JPEGImages/ is missing", root)
    masks = next(
        (root / d for d in ("SegmentationClassAug", "SegmentationClass") if (root / d).is_dir()), None
    )
    list_dir = root / "ImageSets" / "Segmentation"
    splits = {split: list_dir / f for split, f in _LISTS if (list_dir / f).is_file()}
    aug = next((list_dir / f for f in _TRAIN_AUG if (list_dir / f).is_file()), None)
    if aug is not None:
        splits["train_aug"] = aug
    if not set(splits) - {"test"}:
        raise InputError("no train/val lists in ImageSets/Segmentation", root)

    labelled: list[str] = []
    for split, list_file in splits.items():
        if split != "test":
            labelled += [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    labels = build_image_labels(labelled, VOC_CLASSES, annotations_dir=root / "Annotations", masks_dir=masks)

    labels_path = out_dir / "image_labels.json"
    info = DatasetInfo(
        name=name,
        root=out_dir,
        images=relative_to_root(images, out_dir),
        image_ext=".jpg",
        masks=relative_to_root(masks, out_dir) if masks is not None else None,
        splits={k: relative_to_root(v, out_dir) for k, v in splits.items()},
        image_labels=relative_to_root(labels_path, out_dir),
        class_names=list(VOC_CLASSES),
        palette="voc",
    )
    info.checked = check_dataset(info, workers=workers)
    with output_folder(out_dir):
        sweep_temporaries(out_dir)  # left by a prepare that was killed
        write_json(labels_path, labels)
        info.save(out_dir / "dataset.yaml")
    return info
