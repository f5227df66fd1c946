"""``weaktr export``: label maps (pseudo masks or predictions) as COCO JSON with RLE masks.

The file imports into CVAT and Label Studio, where people correct WeakTr's first draft by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from weaktr.errors import InputError

if TYPE_CHECKING:
    from weaktr.data.info import DatasetInfo

WHAT = ("pseudo_masks", "predictions")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write label maps as a COCO instances JSON (RLE) for CVAT / Label Studio",
        description="Export label PNGs as COCO JSON: one annotation per (image, class) with its mask in "
        "RLE, category id = label id. Give either --labels DIR --dataset YAML --split S, or --run RUN_DIR "
        "(--what pseudo_masks exports the train split that predict relabelled, --what predictions the val "
        "split).",
    )
    p.add_argument("--labels", type=Path, help="folder of <id>.png label maps")
    p.add_argument("--dataset", type=Path, help="the dataset.yaml (class names, split lists, image names)")
    p.add_argument("--split", help="split whose ids are exported (with --run: default from --what)")
    p.add_argument("--run", type=Path, metavar="RUN_DIR", help="a run directory made by 'weaktr run'")
    p.add_argument("--what", choices=sorted(WHAT), default="pseudo_masks", help="with --run: which labels")
    p.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    p.set_defaults(func=run)


def _sources(args: argparse.Namespace) -> tuple[Path, DatasetInfo, str]:
    """(label folder, data set, split) from either form of the command line."""
    from weaktr.config import load_config
    from weaktr.data.info import DatasetInfo
    from weaktr.runtime.context import run_dataset
    from weaktr.runtime.layout import RunLayout

    if (args.labels is None) == (args.run is None):
        raise InputError("give either --labels DIR (with --dataset and --split) or --run RUN_DIR")
    if args.labels is not None:
        if args.dataset is None or args.split is None:
            raise InputError("--labels needs --dataset YAML and --split NAME")
        return args.labels, DatasetInfo.load(args.dataset), args.split
    run = RunLayout(args.run)
    cfg = load_config(run.config)
    dataset = DatasetInfo.load(args.dataset) if args.dataset else run_dataset(args.run, cfg.data.dataset)
    split = args.split or (cfg.pseudo_mask_split if args.what == "pseudo_masks" else cfg.data.val_split)
    labels = run.pred(split)
    if not labels.is_dir():
        raise InputError(f"no label maps of split {split!r}: run the predict stage first", labels)
    return labels, dataset, split


def run(args: argparse.Namespace) -> int:
    from weaktr.export import export_coco

    labels, dataset, split = _sources(args)
    ids = dataset.ids(split, check_images=False)
    names = {i: dataset.image_path(i).name for i in ids}
    coco = export_coco(labels, ids, dataset.class_names, args.out, names)
    print(
        f"{args.out}: {len(coco['annotations'])} annotations on {len(coco['images'])} images "
        f"({len(coco['categories'])} categories) from {labels}"
    )
    return 0
