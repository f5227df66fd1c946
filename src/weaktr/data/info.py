"""``DatasetInfo``: the one description (``dataset.yaml``) every stage reads, and its split-list helpers.

Every source (VOC, COCO, a custom folder, the generated demo) is prepared into this layout, so the
training and inference code never needs to know where the data came from.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from weaktr.errors import InputError
from weaktr.io import atomic_write, read_json

_MAX_NAMED = 5


def short_list(items: Sequence[str]) -> str:
    """A short listing of offending items: the first few and a count."""
    head = ", ".join(items[:_MAX_NAMED])
    return head + (f" (and {len(items) - _MAX_NAMED} more)" if len(items) > _MAX_NAMED else "")


def write_id_list(path: str | Path, ids: Sequence[str]) -> None:
    """Write a split list (one id per line) atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text("".join(f"{i}\n" for i in ids))


@contextmanager
def output_folder(out_dir: Path) -> Iterator[Path]:
    """Yield ``out_dir``; if it did not exist and the block fails, remove it, so no half folder stays."""
    existed = out_dir.exists()
    try:
        yield out_dir
    except BaseException:
        if not existed:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def relative_to_root(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it (portable yaml), else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(root.resolve()))
    except ValueError:
        return str(path)


@dataclass
class DatasetInfo:
    """A prepared data set; paths are relative to ``root`` unless absolute (see docs/architecture.md).

    ``checked`` is the fingerprint of the data check it passed (:mod:`weaktr.data.check`), if any.
    """

    name: str
    root: Path
    images: str
    image_ext: str | list[str] = ".jpg"
    masks: str | None = None
    splits: dict[str, str] = field(default_factory=dict)
    image_labels: str = "image_labels.json"
    class_names: list[str] = field(default_factory=list)
    palette: str = "voc"
    checked: str | None = None
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
        "checked",
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
            "checked": self.checked,
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
    def n_cls(self) -> int:
        """Number of label ids including background (COCO: 91, unused slots included)."""
        return len(self.class_names)

    @property
    def num_classes(self) -> int:
        """Number of foreground classes = CAM class tokens; fg index i is label id i + 1."""
        return self.n_cls - 1

    def check_model_classes(
        self, n: int, cam: bool, key: str | None = None, checkpoint: str | Path | None = None
    ) -> None:
        """Refuse a model made for another data set before any work: a CAM network (``cam``) has one
        class token per foreground class, a segmenter one output per label id. The error names the
        config ``key`` that set ``n`` (and what to set it to), else the ``checkpoint`` it came from."""
        fg = (self.num_classes, "foreground classes")
        want, unit = fg if cam else (self.n_cls, "label ids (background included)")
        if n == want:
            return
        if key is not None:
            raise InputError(f"data set {self.name!r} has {want} {unit} but {key} is {n} (set it to {want})")
        model = "CAM model" if cam else "segmenter"
        raise InputError(
            f"the {model} predicts {n} classes but data set {self.name!r} has {want} {unit}", checkpoint
        )

    def labels(self) -> dict[str, list[int]]:
        """Image-level labels {id: sorted fg label ids}, read once from the image_labels JSON."""
        if self._labels is None:
            path = self.path(self.image_labels)
            raw = read_json(path)
            if not isinstance(raw, dict):
                raise InputError("image labels must be a JSON object {id: [label ids]}", path)
            bad = [k for k, v in raw.items() if any(not 0 < int(c) < self.n_cls for c in v)]
            if bad:
                raise InputError(
                    f"label ids outside 1..{self.num_classes} for images {short_list(bad)}", path
                )
            self._labels = {str(k): sorted(int(c) for c in v) for k, v in raw.items()}
        return self._labels

    def multi_hot(self, image_id: str) -> torch.Tensor:
        """Float (num_classes,) target of ``image_id`` with fg index = label id − 1."""
        labels = self.labels()
        if image_id not in labels:
            raise InputError(f"no image-level labels for image {image_id!r}", self.path(self.image_labels))
        target = torch.zeros(self.num_classes, dtype=torch.float32)
        target[[c - 1 for c in labels[image_id]]] = 1.0
        return target
