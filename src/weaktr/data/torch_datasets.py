"""The torch datasets over a data set: classification (phase 1) and segmentation (phase 2)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from weaktr.data.images import load_image, load_label_map
from weaktr.data.info import DatasetInfo, short_list
from weaktr.errors import InputError


class ClassificationDataset(Dataset):
    """Phase 1: (transformed image tensor, multi-hot float (num_classes,)).

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

    def item_name(self, index: int) -> str:
        """How an error met on item ``index`` names it (:class:`weaktr.data.loader.ItemLoader`)."""
        return f"image {self.ids[index]}"

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

    def item_name(self, index: int) -> str:
        return f"image {self.ids[index]}"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_id = self.ids[index]
        img = load_image(self.info.image_path(image_id))
        mask = load_label_map(self.label_dir / f"{image_id}.png", img.shape[:2], self.info.n_cls)
        if self.transform is not None:
            return self.transform(img, mask)
        return torch.from_numpy(img).permute(2, 0, 1).float().div(255.0), torch.from_numpy(mask).long()
