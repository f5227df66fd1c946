"""Preparing a custom folder of images with image-level labels (CSV or JSON) into a ``dataset.yaml``.

Labels file formats:

- CSV with a header ``image,labels`` (optional third column ``split``); labels are class names separated
  by ``;`` or ``|`` (empty = background only); ``image`` is a file name or a stem.
- JSON ``{image: [class names]}``.

Without a split column, a seeded random ``val_fraction`` of the images becomes ``val``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from weaktr.data.check import check_dataset
from weaktr.data.info import DatasetInfo, output_folder, relative_to_root, short_list, write_id_list
from weaktr.errors import InputError
from weaktr.io import read_json, sweep_temporaries, write_json

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _read_rows(labels_file: Path) -> list[tuple[str, list[str], str | None, str]]:
    """(image, class names, split or None, where) per entry; ``where`` names the line for errors."""
    if labels_file.suffix.lower() == ".json":
        data = read_json(labels_file)
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise InputError("JSON labels must be an object {image: [class names]}", labels_file)
        return [(str(k), [str(c) for c in v], None, f"entry {k!r}") for k, v in data.items()]
    if not labels_file.is_file():
        raise InputError("file not found", labels_file)
    with labels_file.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        if "image" not in fields or "labels" not in fields:
            raise InputError(f"CSV header must have 'image' and 'labels' columns, got {fields}", labels_file)
        rows = []
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            if not row.get("image"):
                raise InputError(f"line {line}: empty image name", labels_file)
            names = [n.strip() for n in re.split(r"[;|]", row["labels"]) if n.strip()]
            rows.append((row["image"], names, row.get("split") or None, f"line {line}"))
    return rows


def _find_image(images_dir: Path, name: str) -> Path | None:
    direct = images_dir / name
    if direct.is_file():
        return direct
    return next(
        (images_dir / f"{name}{e}" for e in IMAGE_EXTS if (images_dir / f"{name}{e}").is_file()), None
    )


def prepare_folder(
    images_dir: str | Path,
    labels_file: str | Path,
    out_dir: str | Path,
    masks_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    name: str = "custom",
    workers: int | None = None,
) -> DatasetInfo:
    """Write image labels, split lists and ``dataset.yaml`` for a custom data set (images stay in place).

    ``class_names`` fixes the label ids (first name = id 1; a leading ``background`` is accepted); by
    default the sorted names found in the labels file. ``masks_dir`` holds optional ``<stem>.png`` masks
    using the same ids. Every image and mask is checked first (``workers`` processes, default all
    cores); nothing is written unless all pass.
    """
    images_dir, labels_file, out_dir = Path(images_dir).resolve(), Path(labels_file), Path(out_dir).resolve()
    if not images_dir.is_dir():
        raise InputError("images folder not found", images_dir)
    rows = _read_rows(labels_file)
    if not rows:
        raise InputError("no images listed", labels_file)
    if class_names is None:
        fg = sorted({n for _, names, _, _ in rows for n in names})
    else:
        fg = [n for n in class_names if n != "background"]
        if len(set(fg)) != len(fg):
            raise InputError(f"class names repeat: {list(class_names)}")
    index = {n: i + 1 for i, n in enumerate(fg)}

    labels: dict[str, list[int]] = {}
    split_of: dict[str, str | None] = {}
    exts: list[str] = []
    for image, names, split, where in rows:
        unknown = [n for n in names if n not in index]
        if unknown:
            raise InputError(f"{where}: unknown class name(s) {unknown} (known: {fg})", labels_file)
        path = _find_image(images_dir, image)
        if path is None:
            raise InputError(f"{where}: image {image!r} not found in {images_dir}", labels_file)
        if path.stem in labels:
            raise InputError(f"{where}: image id {path.stem!r} appears twice", labels_file)
        if path.suffix not in exts:
            exts.append(path.suffix)
        labels[path.stem] = sorted({index[n] for n in names})
        split_of[path.stem] = split

    ids = list(labels)
    if any(s is not None for s in split_of.values()):
        blank = [i for i, s in split_of.items() if s is None]
        if blank:
            raise InputError(f"split column is empty for {short_list(blank)}", labels_file)
        splits = {s: [i for i in ids if split_of[i] == s] for s in dict.fromkeys(split_of.values())}
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
        order = np.random.default_rng(seed).permutation(len(ids))
        n_val = round(len(ids) * val_fraction)
        val = {ids[k] for k in order[:n_val]}
        splits = {"train": [i for i in ids if i not in val]}
        if val:
            splits["val"] = [i for i in ids if i in val]

    masks = None
    if masks_dir is not None:
        masks_path = Path(masks_dir).resolve()
        missing = [i for i in ids if not (masks_path / f"{i}.png").is_file()]
        if missing:
            raise InputError(f"{len(missing)} mask(s) missing: {short_list(missing)}", masks_path)
        masks = str(masks_path)

    list_dir = out_dir / "ImageSets" / "Segmentation"
    labels_path = out_dir / "image_labels.json"
    info = DatasetInfo(
        name=name,
        root=out_dir,
        images=str(images_dir),
        image_ext=exts[0] if len(exts) == 1 else exts,
        masks=masks,
        splits={s: relative_to_root(list_dir / f"{s}.txt", out_dir) for s in splits},
        image_labels=relative_to_root(labels_path, out_dir),
        class_names=["background", *fg],
        palette="voc",
    )
    info.checked = check_dataset(info, ids, workers)
    with output_folder(out_dir):
        sweep_temporaries(out_dir)  # left by a prepare that was killed
        for split, members in splits.items():
            write_id_list(list_dir / f"{split}.txt", members)
        write_json(labels_path, labels)
        info.save(out_dir / "dataset.yaml")
    return info
