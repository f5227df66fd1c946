"""Export label maps as a COCO instances JSON with RLE masks, for correction in CVAT or Label Studio.

WeakTr is also a labelling tool: its pseudo masks are a first draft that people fix by hand. Both
annotation tools import COCO JSON, so each (image, class) region becomes one annotation whose
segmentation is the class's whole mask in compressed RLE.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from weaktr.data.images import load_label_map
from weaktr.errors import InputError
from weaktr.io import write_json


def label_map_annotations(labels: np.ndarray, image_id: int, first_ann_id: int) -> list[dict]:
    """One COCO annotation per foreground class present in ``labels`` (0 and 255 are skipped)."""
    anns = []
    for cls in np.unique(labels):
        if cls in (0, 255):
            continue
        binary = np.asfortranarray((labels == cls).astype(np.uint8))
        rle = mask_utils.encode(binary)
        area = float(mask_utils.area(rle))
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append(
            {
                "id": first_ann_id + len(anns),
                "image_id": image_id,
                "category_id": int(cls),
                "segmentation": rle,
                "area": area,
                "bbox": bbox,
                "iscrowd": 0,
            }
        )
    return anns


def export_coco(
    label_dir: str | Path,
    ids: Sequence[str],
    class_names: Sequence[str],
    out_json: str | Path,
    file_names: Mapping[str, str] | None = None,
) -> dict:
    """Write ``out_json`` for the label PNGs ``label_dir/<id>.png``; category id = label id.

    ``file_names`` maps an id to its image file name (default ``<id>.jpg``), which the annotation
    tools match against the images they were given. Class names whose label id is unused (COCO's
    gaps, named ``unused_*``) and the background are left out of the categories.
    """
    label_dir = Path(label_dir)
    if not ids:
        raise InputError("no images to export (empty id list)", label_dir)
    if not label_dir.is_dir():
        raise InputError("label folder not found", label_dir)
    categories = [
        {"id": i, "name": name, "supercategory": "object"}
        for i, name in enumerate(class_names)
        if i > 0 and not name.startswith("unused")
    ]
    known = {c["id"] for c in categories}
    images, annotations = [], []
    for image_id, stem in enumerate(ids, start=1):
        labels = load_label_map(label_dir / f"{stem}.png")
        bad = sorted(set(np.unique(labels).tolist()) - known - {0, 255})
        if bad:
            raise InputError(f"label ids {bad} have no class name", label_dir / f"{stem}.png")
        h, w = labels.shape
        name = file_names[stem] if file_names is not None else f"{stem}.jpg"
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        annotations += label_map_annotations(labels, image_id, len(annotations) + 1)
    coco = {
        "info": {"description": f"weaktr export of {label_dir}", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    write_json(out_json, coco)
    return coco
