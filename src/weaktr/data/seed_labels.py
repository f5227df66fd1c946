"""Phase-2 training data from seed label maps: the check before training and the seed+GT dataset.

The GT variant only adds measurements (the precision of the pixels the gradient-clipping loss keeps):
the GT goes through exactly the seeds' geometric augmentation and never influences training.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from weaktr.cores import cap_workers
from weaktr.data.images import load_image, load_label_map
from weaktr.data.info import DatasetInfo, short_list
from weaktr.data.torch_datasets import SegmentationDataset
from weaktr.data.transforms import SegTrainTransform
from weaktr.errors import InputError
from weaktr.losses import IGNORE_INDEX
from weaktr.pools import PerItem

log = logging.getLogger("weaktr")


def check_label_maps(info: DatasetInfo, ids: list[str], label_dir: Path, n_cls: int) -> Iterator[str]:
    """Every seed PNG exists, matches its image's size and holds ids < n_cls (or 255), before training.

    A bad file found inside a DataLoader worker would surface as a traceback hours into a run. The
    folder is checked at once; each file as the returned iterator (of image ids) is consumed, so that
    a progress bar can wrap it.
    """
    if not label_dir.is_dir():
        raise InputError("seed folder not found (run make-seeds first, or pass --seeds)", label_dir)
    missing = [i for i in ids if not (label_dir / f"{i}.png").is_file()]
    if missing:
        raise InputError(f"{len(missing)} seed PNG(s) missing: {short_list(missing)}", label_dir)
    return _check_each(info, ids, label_dir, n_cls)


def _image_item(image_id: str) -> str:
    return f"image {image_id}"


def _check_each(info: DatasetInfo, ids: list[str], label_dir: Path, n_cls: int) -> Iterator[str]:
    def check(image_id: str) -> str:
        path = info.image_path(image_id)
        try:
            with Image.open(path) as im:  # header only: no decode
                w, h = im.size
        except OSError as exc:
            raise InputError(f"unreadable image ({exc})", path) from exc
        load_label_map(label_dir / f"{image_id}.png", (h, w), n_cls)
        return image_id

    with ThreadPoolExecutor(max_workers=cap_workers(8, "seed check threads", level=logging.DEBUG)) as pool:
        yield from pool.map(PerItem(check, _image_item), ids)


class SeedAndGTTransform(SegTrainTransform):
    """The train transform on a (2, H, W) seed+GT stack: only the seed decides the crop, both get it.

    The random draws are exactly those of the plain transform on the seed alone, so measuring against
    GT changes nothing in training.
    """

    _box: tuple[int, int] = (0, 0)

    def _crop_box(self, h: int, w: int) -> tuple[int, int]:
        self._box = super()._crop_box(h, w)
        return self._box

    def _random_crop(
        self, img: tv_tensors.Image, mask: tv_tensors.Mask
    ) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        img, seed = super()._random_crop(img, mask[:, :1])
        top, left = self._box  # the last box drawn is the one the parent cropped with
        gt = TF.crop(mask[:, 1:], top, left, seed.shape[-2], seed.shape[-1])
        return img, tv_tensors.wrap(torch.cat([seed, gt], dim=1), like=seed)


class SeedGTDataset(Dataset):
    """(image, (2, crop, crop) seed+GT) pairs; images without a GT file get an all-ignore GT."""

    def __init__(self, base: SegmentationDataset, gt_dir: Path, transform: SeedAndGTTransform) -> None:
        self.base, self.gt_dir, self.transform = base, gt_dir, transform

    def __len__(self) -> int:
        return len(self.base)

    def item_name(self, index: int) -> str:
        return self.base.item_name(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        info, image_id = self.base.info, self.base.ids[index]
        img = load_image(info.image_path(image_id))
        seed = load_label_map(self.base.label_dir / f"{image_id}.png", img.shape[:2], info.n_cls)
        gt_path = self.gt_dir / f"{image_id}.png"
        gt = (
            load_label_map(gt_path, img.shape[:2])
            if gt_path.is_file()
            else np.full(seed.shape, IGNORE_INDEX, np.uint8)
        )
        return self.transform(img, np.stack([seed, gt]))

    @classmethod
    def checked(
        cls, base: SegmentationDataset, split: str, gt_dir: Path, transform: SeedAndGTTransform
    ) -> SeedGTDataset:
        """The dataset, once ``gt_dir`` holds GT for at least one image of ``base`` (a warning if not all)."""
        if not gt_dir.is_dir():
            raise InputError("ground-truth folder not found", gt_dir)
        n_gt = sum((gt_dir / f"{i}.png").is_file() for i in base.ids)
        if n_gt == 0:
            raise InputError(f"no ground-truth PNG for any image of split {split!r}", gt_dir)
        if n_gt < len(base.ids):
            log.warning("ground truth for %d of %d training images only (%s)", n_gt, len(base.ids), gt_dir)
        return cls(base, gt_dir, transform)
