"""``weaktr prepare voc|coco|folder``: describe a data set in a ``dataset.yaml`` that every stage reads.

Thin wrappers over :mod:`weaktr.data.voc`, :mod:`weaktr.data.coco` and :mod:`weaktr.data.folder`;
each prints the path of the ``dataset.yaml`` it wrote and a one-line summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from weaktr.data.info import DatasetInfo


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="prepare VOC, COCO or a custom folder into a dataset.yaml",
        description="Write a dataset.yaml (plus image labels, split lists and, for COCO, masks) that "
        "'weaktr run' reads through the config key data.dataset.",
    )
    sub = p.add_subparsers(dest="source", metavar="SOURCE", required=True)

    voc = sub.add_parser(
        "voc",
        help="PASCAL VOC 2012 (+ SBD's SegmentationClassAug and train_aug list when present)",
        description="Describe a VOC 2012 folder. Image labels come from Annotations/*.xml (else the masks).",
    )
    voc.add_argument("--root", type=Path, required=True, help="VOC2012 folder (with JPEGImages/)")
    voc.add_argument("--out", type=Path, help="where dataset.yaml and image_labels.json go (default: --root)")
    voc.add_argument("--name", default="voc", help="data set name (default: voc)")
    voc.set_defaults(func=run_voc)

    coco = sub.add_parser(
        "coco",
        help="COCO instances JSON -> category-id masks (crowd = 255), image labels and split lists",
        description="Paint OUT/SegmentationClass/<image stem>.png from instances JSON files, one split per "
        "file (instances_train2014.json -> train), with pycocotools.",
    )
    coco.add_argument("--annotations", type=Path, nargs="+", required=True, metavar="FILE.json")
    coco.add_argument("--images", type=Path, required=True, help="folder holding the images")
    coco.add_argument("--out", type=Path, required=True, help="output folder")
    coco.add_argument("--split-names", nargs="+", metavar="NAME", help="one split name per annotations file")
    coco.add_argument("--workers", type=int, default=1, help="processes painting masks (default 1)")
    coco.add_argument("--name", default="coco", help="data set name (default: coco)")
    coco.set_defaults(func=run_coco)

    folder = sub.add_parser(
        "folder",
        help="your own images with a CSV or JSON of image-level labels (see docs/custom-data.md)",
        description="A folder of images plus labels: CSV 'image,labels[,split]' with class names separated "
        "by ';' or '|', or JSON {image: [class names]}. Optional <stem>.png masks for evaluation.",
    )
    folder.add_argument("--images", type=Path, required=True, help="folder of images")
    folder.add_argument("--labels", type=Path, required=True, metavar="FILE.csv|json")
    folder.add_argument("--out", type=Path, required=True, help="output folder")
    folder.add_argument("--masks", type=Path, help="optional folder of <stem>.png ground-truth masks")
    folder.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of images held out as val (no split column)"
    )
    folder.add_argument(
        "--classes",
        help="comma-separated class names fixing the label ids (first = 1); default: sorted names found",
    )
    folder.add_argument("--seed", type=int, default=0, help="seed of the train/val draw")
    folder.add_argument("--name", default="custom", help="data set name (default: custom)")
    folder.set_defaults(func=run_folder)


def summary_line(info: DatasetInfo) -> str:
    """'NAME: train 270, val 167 images; 20 classes' (background and COCO's unused ids not counted)."""
    counts = ", ".join(f"{s} {len(info.ids(s, check_images=False))}" for s in info.splits)
    n_fg = sum(1 for c in info.class_names[1:] if not c.startswith("unused"))
    masks = "with" if info.masks is not None else "without"
    return f"{info.name}: {counts} images; {n_fg} classes; {masks} ground-truth masks"


def _report(info: DatasetInfo) -> int:
    print(Path(info.root) / "dataset.yaml")
    print(summary_line(info))
    return 0


def run_voc(args: argparse.Namespace) -> int:
    from weaktr.data.voc import prepare_voc

    return _report(prepare_voc(args.root, args.out, args.name))


def run_coco(args: argparse.Namespace) -> int:
    from weaktr.data.coco import prepare_coco

    return _report(
        prepare_coco(args.annotations, args.images, args.out, args.split_names, args.workers, args.name)
    )


def run_folder(args: argparse.Namespace) -> int:
    from weaktr.data.folder import prepare_folder

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    info = prepare_folder(
        args.images, args.labels, args.out, args.masks, args.val_fraction, classes, args.seed, args.name
    )
    return _report(info)
