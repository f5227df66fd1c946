"""Preparing COCO (instances JSON) into a ``dataset.yaml`` with category-id semantic masks.

Masks hold COCO category ids (0 background, 1..90, 255 ignore), as the authors' evaluation expects
(spec §3.2); class token i ↔ category id i + 1, so the 10 unused ids are simply never positive.

Painting rule (per image): crowd regions are painted 255 first; then the non-crowd instances are painted
from the largest to the smallest area, each over what is there. So a small object lying on a large one
stays visible, and a real instance inside a crowd region keeps its label instead of being ignored.
Image labels are the sorted category ids of the non-crowd instances. Images without any non-crowd
instance are left out of the lists (as in the authors' ``train_id.txt`` / ``val_id.txt``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from weaktr.cores import cap_workers
from weaktr.data.check import FileCheck, check_files, dataset_items, fingerprint
from weaktr.data.info import DatasetInfo, output_folder, relative_to_root, short_list, write_id_list
from weaktr.data.palette import voc_palette
from weaktr.errors import InputError
from weaktr.io import read_json, save_label_png, sweep_temporaries, write_json
from weaktr.pools import PerItem, fork_pool

IGNORE = 255


def _split_name(path: Path) -> str:
    """``instances_train2014.json`` → ``train``; otherwise the file stem."""
    m = re.match(r"instances_([a-z]+?)(\d{4})?$", path.stem)
    return m.group(1) if m else path.stem


def _read_instances(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations")
    ):
        raise InputError("not a COCO instances file: needs 'images' and 'annotations' lists", path)
    if not isinstance(data.get("categories"), list):
        raise InputError("not a COCO instances file: needs a 'categories' list", path)
    return data


def _decode(segm: Any, h: int, w: int) -> np.ndarray:
    """Binary (h, w) mask of a polygon list, uncompressed RLE or compressed RLE."""
    if isinstance(segm, list):
        polys = [p for p in segm if len(p) >= 6]
        if not polys:
            return np.zeros((h, w), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    elif isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, h, w)
    else:
        rle = segm
    with warnings.catch_warnings():  # pycocotools 2.0 trips numpy 2's __array__(copy=) deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def paint_mask(h: int, w: int, anns: Sequence[dict[str, Any]]) -> np.ndarray:
    """The category-id mask of one image under the module's painting rule."""
    out = np.zeros((h, w), dtype=np.uint8)
    for ann in anns:
        if ann.get("iscrowd", 0):
            out[_decode(ann["segmentation"], h, w)] = IGNORE
    solid = [a for a in anns if not a.get("iscrowd", 0)]
    for ann in sorted(solid, key=lambda a: -float(a.get("area", 0.0))):
        out[_decode(ann["segmentation"], h, w)] = int(ann["category_id"])
    return out


def _paint_job(job: tuple[str, int, int, list[dict[str, Any]]]) -> None:
    path, h, w, anns = job
    save_label_png(path, paint_mask(h, w, anns), voc_palette())


def _mask_item(job: tuple[str, int, int, list[dict[str, Any]]]) -> str:
    return f"mask {job[0]}"


_paint_item = PerItem(_paint_job, _mask_item)  # a failure names the mask being painted


def prepare_coco(
    annotations: str | Path | Sequence[str | Path] | Mapping[str, str | Path],
    images_dir: str | Path,
    out_dir: str | Path,
    splits: Sequence[str] | None = None,
    workers: int = 1,
    name: str = "coco",
) -> DatasetInfo:
    """Paint ``out_dir/SegmentationClass/<stem>.png`` and write labels, lists and ``dataset.yaml``.

    ``annotations`` is one or more instances JSON files (or a mapping split → file); ``splits`` names the
    splits of a sequence (default from the file names: ``instances_val2014.json`` → ``val``). Images are
    referenced in place: ``images_dir/<file_name>``, or ``<12-digit id>.jpg`` when the file names carry
    the ``COCO_train2014_`` prefix but the folder was flattened without it. Every image is decoded in
    full and its size compared with the annotations' first; nothing is written unless all pass.
    """
    if isinstance(annotations, Mapping):
        files = {str(k): Path(v) for k, v in annotations.items()}
    else:
        paths = [Path(annotations)] if isinstance(annotations, str | Path) else [Path(p) for p in annotations]
        names = list(splits) if splits is not None else [_split_name(p) for p in paths]
        if len(names) != len(paths) or len(set(names)) != len(names):
            raise InputError(
                f"need one distinct split name per annotation file, got {names} for {len(paths)}"
            )
        files = dict(zip(names, paths, strict=True))
    images_dir, out_dir = Path(images_dir).resolve(), Path(out_dir).resolve()
    if not images_dir.is_dir():
        raise InputError("images folder not found", images_dir)
    mask_dir = out_dir / "SegmentationClass"
    list_dir = out_dir / "ImageSets" / "Segmentation"

    categories: dict[int, str] = {}
    labels: dict[str, list[int]] = {}
    jobs: list[tuple[str, int, int, list[dict[str, Any]]]] = []
    checks: list[FileCheck] = []
    split_ids: dict[str, list[str]] = {}
    exts: list[str] = []
    for split, path in files.items():
        data = _read_instances(path)
        for cat in data["categories"]:
            categories[int(cat["id"])] = str(cat["name"])
        by_image: dict[int, list[dict[str, Any]]] = {}
        for ann in data["annotations"]:
            by_image.setdefault(int(ann["image_id"]), []).append(ann)
        unknown = sorted({int(a["category_id"]) for a in data["annotations"]} - set(categories))
        if unknown:
            raise InputError(f"annotations use category ids {unknown} that 'categories' does not list", path)
        ids, missing = [], []
        for img in data["images"]:
            anns = by_image.get(int(img["id"]), [])
            cats = sorted({int(a["category_id"]) for a in anns if not a.get("iscrowd", 0)})
            if not cats:
                continue
            file = images_dir / img["file_name"]
            if not file.is_file():
                file = images_dir / f"{int(img['id']):012d}{Path(img['file_name']).suffix}"
            if not file.is_file():
                missing.append(img["file_name"])
                continue
            if file.suffix not in exts:
                exts.append(file.suffix)
            labels[file.stem] = cats
            ids.append(file.stem)
            hw = (int(img["height"]), int(img["width"]))
            jobs.append((str(mask_dir / f"{file.stem}.png"), *hw, anns))
            checks.append(FileCheck(file, hw=hw))
        if missing:
            raise InputError(
                f"{len(missing)} image(s) of {path.name} not found: {short_list(missing)}", images_dir
            )
        split_ids[split] = ids

    labels_path = out_dir / "image_labels.json"
    top = max([90, *categories])
    class_names = ["background"] + [categories.get(i, f"unused_{i}") for i in range(1, top + 1)]
    info = DatasetInfo(
        name=name,
        root=out_dir,
        images=str(images_dir),
        image_ext=exts[0] if len(exts) == 1 else (exts or [".jpg"]),
        masks=relative_to_root(mask_dir, out_dir),
        splits={k: relative_to_root(list_dir / f"{k}.txt", out_dir) for k in split_ids},
        image_labels=relative_to_root(labels_path, out_dir),
        class_names=class_names,
        palette="voc",
    )
    check_files(checks, len(class_names))  # the images, and their sizes against the annotations
    with output_folder(out_dir):
        sweep_temporaries(out_dir)  # left by a prepare that was killed
        workers = cap_workers(workers, "prepare coco --workers")
        if workers > 1 and len(jobs) > 1:
            with fork_pool(workers) as pool:
                for _ in pool.imap_unordered(_paint_item, jobs, chunksize=16):
                    pass
        else:
            for job in jobs:
                _paint_item(job)
        for split, ids in split_ids.items():
            write_id_list(list_dir / f"{split}.txt", ids)
        write_json(labels_path, labels)
        info.checked = fingerprint(dataset_items(info, list(labels)), info.n_cls)
        info.save(out_dir / "dataset.yaml")
    return info
