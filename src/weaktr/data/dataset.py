"""``DatasetInfo``: the one description (``dataset.yaml``) every stage reads, and the torch datasets.

Every source (VOC, COCO, a custom folder, the generated demo) is prepared into this layout, so the
training and inference code never needs to know where the data came from.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import Dataset

from weaktr.data.images import load_image, load_label_map
from weaktr.errors import InputError
from weaktr.io import atomic_write, read_json, write_json

_MAX_NAMED = 5


def voc_palette() -> list[int]:
    """The standard PASCAL VOC colour map (256 RGB entries, flattened), as PNG palettes expect."""
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def short_list(items: Sequence[str]) -> str:
    """A short listing of offending items: the first few and a count."""
    head = ", ".join(items[:_MAX_NAMED])
    return head + (f" (and {len(items) - _MAX_NAMED} more)" if len(items) > _MAX_NAMED else "")


def write_id_list(path: str | Path, ids: Sequence[str]) -> None:
    """Write a split list (one id per line) atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text("".join(f"{i}\n" for i in ids))


def relative_to_root(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it (portable yaml), else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(root.resolve()))
    except ValueError:
        return str(path)


@dataclass
class DatasetInfo:
    """A prepared data set; paths are relative to ``root`` unless absolute (see docs/architecture.md)."""

    name: str
    root: Path
    images: str
    image_ext: str | list[str] = ".jpg"
    masks: str | None = None
    splits: dict[str, str] = field(default_factory=dict)
    image_labels: str = "image_labels.json"
    class_names: list[str] = field(default_factory=list)
    palette: str = "voc"
    _labels: dict[str, list[int]] | None = field(default=None, init=False, repr=False, compare=False)

    _FIELDS = (
        "name",
        "root",
        "images",
        "image_ext",
        "masks",
        "splits",
        "image_labels",
        "class_names",
        "palette",
    )

    # ---- (de)serialisation -------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> DatasetInfo:
        """Read a ``dataset.yaml``; a relative ``root`` is taken relative to the yaml's folder."""
        path = Path(path)
        if path.is_dir():
            path = path / "dataset.yaml"
        if not path.is_file():
            raise InputError("dataset description not found", path)
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise InputError(f"not valid YAML ({exc})", path) from exc
        if not isinstance(raw, dict):
            raise InputError("dataset.yaml must hold a mapping", path)
        missing = [k for k in ("name", "images", "class_names") if k not in raw]
        unknown = sorted(set(raw) - set(cls._FIELDS))
        if missing or unknown:
            raise InputError(f"dataset.yaml: missing keys {missing}, unknown keys {unknown}", path)
        root = Path(raw.get("root") or ".")
        if not root.is_absolute():
            root = path.parent / root
        kwargs: dict[str, Any] = {k: raw[k] for k in cls._FIELDS if k in raw and k != "root"}
        kwargs["splits"] = dict(kwargs.get("splits") or {})
        kwargs["class_names"] = [str(c) for c in kwargs["class_names"]]
        return cls(root=root.resolve(), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The yaml mapping (root as an absolute string)."""
        return {
            "name": self.name,
            "root": str(Path(self.root).resolve()),
            "images": self.images,
            "image_ext": self.image_ext,
            "masks": self.masks,
            "splits": dict(self.splits),
            "image_labels": self.image_labels,
            "class_names": list(self.class_names),
            "palette": self.palette,
        }

    def save(self, path: str | Path) -> None:
        """Write ``dataset.yaml`` atomically."""
        with atomic_write(path) as tmp:
            tmp.write_text(
                yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=120)
            )

    # ---- paths ----------------------------------------------------------------------------------
    def path(self, rel: str | Path) -> Path:
        """Resolve a yaml path against ``root``."""
        rel = Path(rel)
        return rel if rel.is_absolute() else Path(self.root) / rel

    @property
    def extensions(self) -> list[str]:
        """The accepted image extensions, in lookup order."""
        return [self.image_ext] if isinstance(self.image_ext, str) else list(self.image_ext)

    def image_path(self, image_id: str) -> Path:
        """The image file of ``image_id`` (first existing extension; the first one if none exists)."""
        folder = self.path(self.images)
        exts = self.extensions
        if len(exts) > 1:
            for ext in exts:
                candidate = folder / f"{image_id}{ext}"
                if candidate.is_file():
                    return candidate
        return folder / f"{image_id}{exts[0]}"

    def mask_path(self, image_id: str) -> Path:
        """The ground-truth mask PNG of ``image_id``; the data set must have masks."""
        if self.masks is None:
            raise InputError(f"data set {self.name!r} has no ground-truth masks")
        return self.path(self.masks) / f"{image_id}.png"

    # ---- ids and labels ---------------------------------------------------------------------------
    def ids(self, split: str, check_images: bool = True) -> list[str]:
        """The image ids of ``split``: missing / empty lists and missing images are errors naming them."""
        if split not in self.splits:
            raise InputError(f"data set {self.name!r} has no split {split!r} (has: {sorted(self.splits)})")
        list_file = self.path(self.splits[split])
        if not list_file.is_file():
            raise InputError(f"list file of split {split!r} not found", list_file)
        ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise InputError(f"list file of split {split!r} is empty", list_file)
        if check_images:
            missing = [i for i in ids if not self.image_path(i).is_file()]
            if missing:
                raise InputError(
                    f"{len(missing)} image(s) of split {split!r} not found in {self.path(self.images)}: "
                    f"{short_list(missing)}",
                    list_file,
                )
        return ids

    @property
    def num_classes(self) -> int:
        """Number of label ids including background (COCO: 91, unused slots included)."""
        return len(self.class_names)

    @property
    def num_fg(self) -> int:
        """Number of foreground classes = CAM class tokens; fg index i is label id i + 1."""
        return self.num_classes - 1

    def labels(self) -> dict[str, list[int]]:
        """Image-level labels {id: sorted fg label ids}, read once from the image_labels JSON."""
        if self._labels is None:
            path = self.path(self.image_labels)
            raw = read_json(path)
            if not isinstance(raw, dict):
                raise InputError("image labels must be a JSON object {id: [label ids]}", path)
            bad = [k for k, v in raw.items() if any(not 0 < int(c) < self.num_classes for c in v)]
            if bad:
                raise InputError(f"label ids outside 1..{self.num_fg} for images {short_list(bad)}", path)
            self._labels = {str(k): sorted(int(c) for c in v) for k, v in raw.items()}
        return self._labels

    def multi_hot(self, image_id: str) -> torch.Tensor:
        """Float (num_fg,) target of ``image_id`` with fg index = label id − 1."""
        labels = self.labels()
        if image_id not in labels:
            raise InputError(f"no image-level labels for image {image_id!r}", self.path(self.image_labels))
        target = torch.zeros(self.num_fg, dtype=torch.float32)
        target[[c - 1 for c in labels[image_id]]] = 1.0
        return target


# ---- image-level labels from the sources the data sets come with -----------------------------------
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
    with Image.open(path) as img:
        arr = np.asarray(img)
    return sorted(int(v) for v in np.unique(arr) if v not in (0, 255))


def labels_from_masks(
    mask_dir: Path, ids: Iterable[str], num_classes: int | None = None, threads: int = 4
) -> dict[str, list[int]]:
    """Labels as the ids present in each ``<id>.png`` mask (except 0 and 255); missing masks are left out."""
    todo = [(i, Path(mask_dir) / f"{i}.png") for i in ids]
    todo = [(i, p) for i, p in todo if p.is_file()]
    with ThreadPoolExecutor(max(1, threads)) as pool:  # PNG decoding releases the GIL
        found = list(pool.map(lambda t: _mask_ids(t[1]), todo))
    out = dict(zip([i for i, _ in todo], found, strict=True))
    if num_classes is not None:
        bad = [i for i, v in out.items() if any(c >= num_classes for c in v)]
        if bad:
            raise InputError(f"masks with ids >= {num_classes}: {short_list(bad)}", mask_dir)
    return out


def labels_from_cls_npy(path: str | Path) -> dict[str, list[int]]:
    """Labels from the authors' ``cls_labels.npy`` (a pickled dict id → multi-hot over label id − 1).

    Pickle is allowed only for this explicitly named file. Keys like ``'<id>.jpg'`` lose the extension.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        obj = np.load(path, allow_pickle=True)
        table = obj.item() if isinstance(obj, np.ndarray) and obj.dtype == object else obj
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"not a readable cls_labels.npy ({exc})", path) from exc
    if not isinstance(table, dict):
        raise InputError(f"expected a pickled dict id -> multi-hot, got {type(table).__name__}", path)
    out = {}
    for key, vec in table.items():
        image_id = str(key)
        image_id = (
            image_id.rsplit(".", 1)[0] if image_id.lower().endswith((".jpg", ".png", ".jpeg")) else image_id
        )
        out[image_id] = [int(i) + 1 for i in np.flatnonzero(np.asarray(vec) > 0.5)]
    return out


def build_image_labels(
    ids: Sequence[str],
    out_path: Path,
    class_names: Sequence[str],
    annotations_dir: Path | None = None,
    masks_dir: Path | None = None,
    cls_labels: Path | None = None,
) -> dict[str, list[int]]:
    """Per image: labels from VOC XML if present, else from the mask, else from ``cls_labels.npy``.

    Ids with none of the three are an error naming them; the result is cached as JSON at ``out_path``.
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
    ordered = {i: labels[i] for i in todo}
    write_json(out_path, ordered)
    return ordered


# ---- torch datasets -----------------------------------------------------------------------------
class ClassificationDataset(Dataset):
    """Phase 1: (transformed image tensor, multi-hot float (num_fg,)).

    ``transform`` receives a PIL RGB image (timm transforms expect PIL); without one the image becomes
    a float (3, H, W) tensor in [0, 1].
    """

    def __init__(self, info: DatasetInfo, split: str, transform: Callable[[Image.Image], Any] | None = None):
        self.info, self.transform = info, transform
        self.ids = info.ids(split)
        labels = info.labels()
        missing = [i for i in self.ids if i not in labels]
        if missing:
            raise InputError(f"no image-level labels for {short_list(missing)}", info.path(info.image_labels))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_id = self.ids[index]
        img = load_image(self.info.image_path(image_id))
        if self.transform is None:
            x = torch.from_numpy(img).permute(2, 0, 1).float().div(255.0)
        else:
            x = self.transform(Image.fromarray(img))
        return x, self.info.multi_hot(image_id)


class SegmentationDataset(Dataset):
    """Phase 2: (image tensor, long mask tensor) from ``label_dir/<id>.png`` (seeds or ground truth).

    ``transform(img_uint8_hwc, mask_uint8_hw)`` returns the pair (e.g. ``SegTrainTransform``); without one
    the image is a float tensor in [0, 1]. ``label_dir`` None means the data set's ground-truth masks.
    """

    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        label_dir: str | Path | None = None,
        transform: Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ):
        self.info, self.transform = info, transform
        if label_dir is None and info.masks is None:
            raise InputError(f"data set {info.name!r} has no masks; pass a label folder")
        self.label_dir = Path(label_dir) if label_dir is not None else info.path(str(info.masks))
        self.ids = info.ids(split)
        missing = [i for i in self.ids if not (self.label_dir / f"{i}.png").is_file()]
        if missing:
            raise InputError(f"{len(missing)} label PNG(s) missing: {short_list(missing)}", self.label_dir)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_id = self.ids[index]
        img = load_image(self.info.image_path(image_id))
        mask = load_label_map(self.label_dir / f"{image_id}.png", img.shape[:2], self.info.num_classes)
        if self.transform is not None:
            return self.transform(img, mask)
        return torch.from_numpy(img).permute(2, 0, 1).float().div(255.0), torch.from_numpy(mask).long()


class ImageListDataset(Dataset):
    """Inference: (id, uint8 (H, W, 3) image); sizes differ: use ``batch_size=1`` or a list collate."""

    def __init__(self, info: DatasetInfo, split: str):
        self.info = info
        self.ids = info.ids(split)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[str, np.ndarray]:
        image_id = self.ids[index]
        return image_id, load_image(self.info.image_path(image_id))
