"""Image-level labels from the sources data sets come with: VOC XML, label masks, the authors' npy."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from weaktr.cores import cap_workers
from weaktr.data.info import short_list
from weaktr.errors import InputError
from weaktr.io import read_npy_dict
from weaktr.pools import PerItem


def labels_from_xml(ann_dir: Path, ids: Iterable[str], class_names: Sequence[str]) -> dict[str, list[int]]:
    """Labels from VOC ``Annotations/<id>.xml``: every ``<object><name>`` (truncated/difficult too).

    This is how the authors' ``cls_labels.npy`` was built. Ids without an XML file are left out.
    """
    index = {name: i for i, name in enumerate(class_names)}
    out: dict[str, list[int]] = {}
    for image_id in ids:
        path = Path(ann_dir) / f"{image_id}.xml"
        if not path.is_file():
            continue
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:
            raise InputError(f"not valid XML ({exc})", path) from exc
        found = set()
        for obj in root.iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in index or index[name] == 0:
                raise InputError(f"unknown object class {name!r}", path)
            found.add(index[name])
        out[image_id] = sorted(found)
    return out


def _mask_ids(path: Path) -> list[int]:
    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except OSError as exc:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise InputError(f"unreadable mask ({exc})", path) from exc
    return sorted(int(v) for v in np.unique(arr) if v not in (0, 255))


def labels_from_masks(
    mask_dir: Path, ids: Iterable[str], n_cls: int | None = None, threads: int = 4
) -> dict[str, list[int]]:
    """Labels as the ids present in each ``<id>.png`` mask (except 0 and 255); missing masks are left out."""
    todo = [(i, Path(mask_dir) / f"{i}.png") for i in ids]
    todo = [(i, p) for i, p in todo if p.is_file()]
    threads = max(1, cap_workers(threads, "mask label threads", level=logging.DEBUG))
    with ThreadPoolExecutor(threads) as pool:  # PNG decoding releases the GIL
        found = list(pool.map(PerItem(lambda t: _mask_ids(t[1]), lambda t: f"mask {t[1]}"), todo))
    out = dict(zip([i for i, _ in todo], found, strict=True))
    if n_cls is not None:
        bad = [i for i, v in out.items() if any(c >= n_cls for c in v)]
        if bad:
            raise InputError(f"masks with ids >= {n_cls}: {short_list(bad)}", mask_dir)
    return out


def labels_from_cls_npy(path: str | Path) -> dict[str, list[int]]:
    """Labels from the authors' ``cls_labels.npy`` (a pickled dict id → multi-hot over label id − 1).

    Read by :func:`weaktr.io.read_npy_dict`, which admits arrays only, never code. Keys like
    ``'<id>.jpg'`` lose the extension.
    """
    out = {}
    for key, vec in read_npy_dict(path).items():
        image_id = key.rsplit(".", 1)[0] if key.lower().endswith((".jpg", ".png", ".jpeg")) else key
        out[image_id] = [int(i) + 1 for i in np.flatnonzero(vec > 0.5)]
    return out


def build_image_labels(
    ids: Sequence[str],
    class_names: Sequence[str],
    annotations_dir: Path | None = None,
    masks_dir: Path | None = None,
    cls_labels: Path | None = None,
) -> dict[str, list[int]]:
    """Per image: labels from VOC XML if present, else from the mask, else from ``cls_labels.npy``.

    Ids with none of the three are an error naming them. Nothing is written: the caller saves the labels
    once the whole data set has passed its check.
    """
    todo = list(dict.fromkeys(ids))
    labels: dict[str, list[int]] = {}
    if annotations_dir is not None and Path(annotations_dir).is_dir():
        labels.update(labels_from_xml(Path(annotations_dir), todo, class_names))
    rest = [i for i in todo if i not in labels]
    if rest and masks_dir is not None and Path(masks_dir).is_dir():
        labels.update(labels_from_masks(Path(masks_dir), rest, len(class_names)))
    rest = [i for i in todo if i not in labels]
    if rest and cls_labels is not None:
        table = labels_from_cls_npy(cls_labels)
        labels.update({i: table[i] for i in rest if i in table})
    rest = [i for i in todo if i not in labels]
    if rest:
        raise InputError(
            f"no XML, mask or cls_labels entry gives the labels of {len(rest)} image(s): {short_list(rest)}"
        )
    return {i: labels[i] for i in todo}
