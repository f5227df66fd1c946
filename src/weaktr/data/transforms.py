"""Training / evaluation transforms of both phases (spec §1.5 and §2.4).

Phase 1 uses timm's ImageNet recipe (PIL in, normalised tensor out). Phase 2 re-implements the mmseg
pipeline of the authors' segmenter on ``tv_tensors`` with ``torchvision.transforms.v2`` functionals:
Resize (keep ratio, short side base·U(0.5, 2)) → RandomCrop with cat_max_ratio → RandomFlip →
PhotoMetricDistortion → Normalize → Pad (image 0, mask 255).

Randomness of phase 2 comes from the ``torch.Generator`` passed in, or from the global torch RNG when
none is (which DataLoader worker seeding already makes distinct and reproducible per worker).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as F
from PIL import Image, ImageOps
from timm.data import auto_augment, create_transform
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def cam_train_transform(
    img_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale: tuple[float, float] = (0.08, 1.0),
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    re_prob: float = 0.25,
    hflip: float = 0.5,
) -> Any:
    """Phase-1 train transform: RandomResizedCrop (bicubic), flip, RandAugment, normalise, RandomErasing.

    ColorJitter is not applied because an auto-augment policy is set (as in the authors' timm 0.5.4).
    """
    transform = create_transform(
        input_size=img_size,
        is_training=True,
        scale=scale,
        ratio=(3 / 4, 4 / 3),
        hflip=hflip,
        color_jitter=0.4,
        auto_augment=auto_augment,
        interpolation="bicubic",
        mean=tuple(mean),
        std=tuple(std),
        re_prob=re_prob,
        re_mode="pixel",
        re_count=1,
    )
    _keep_zero_bit_posterize(transform)
    return transform


def posterize_authors(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize with the Pillow of the authors' runs, where keeping 0 bits gives a black image.

    ``PosterizeIncreasing`` (the ``inc1`` policies) asks for 0 bits at magnitude 10, which Pillow 13
    refuses ("bits must be between or equal to 1 and 8"): a crash every few thousand images.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # every band's value & ~0xFF: all zeros
    return ImageOps.posterize(img, bits_to_keep)


def _keep_zero_bit_posterize(transform: Any) -> None:
    """Point the auto-augment ops of a timm train transform at :func:`posterize_authors`.

    timm builds each op as an ``AugmentOp`` holding its function, so swapping that function fixes the
    one op without forking or patching timm itself (RandAugment and AugMix keep ``ops``, AutoAugment
    a ``policy`` of sub-policies).
    """
    for t in getattr(transform, "transforms", []):
        ops = list(getattr(t, "ops", []))
        for sub in getattr(t, "policy", []):
            ops.extend(sub)
        for op in ops:
            if isinstance(op, auto_augment.AugmentOp) and op.aug_fn is auto_augment.posterize:
                op.aug_fn = posterize_authors


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * torch.rand((), generator=generator).item()


def _randint(lo: int, hi: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [lo, hi) (numpy ``randint`` semantics)."""
    return int(torch.randint(lo, hi, (), generator=generator).item())


def _rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB in [0, 255] → H in [0, 180) (OpenCV uint8 units), S and V in [0, 255]."""
    r, g, b = img.unbind(0)
    maxc, _ = img.max(0)
    minc, _ = img.min(0)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(
        maxc == r, (g - b) / safe, torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)
    )
    h = torch.where(delta > 0, (h * 30.0) % 180.0, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)) * 255.0, 0.0)
    return torch.stack([h, s, maxc])


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(0)
    h6 = (h / 30.0) % 6.0
    i = torch.floor(h6)
    f = h6 - i
    s = s / 255.0
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long().unsqueeze(0)
    r = torch.stack([v, q, p, p, t, v]).gather(0, i)[0]
    g = torch.stack([t, v, v, q, p, p]).gather(0, i)[0]
    b = torch.stack([p, p, t, v, v, q]).gather(0, i)[0]
    return torch.stack([r, g, b])


class PhotoMetricDistortion(v2.Transform):
    """mmseg's PhotoMetricDistortion on a uint8 RGB image; masks pass through untouched.

    Brightness ±32, contrast 0.5–1.5 (before or after the colour steps, at random), saturation 0.5–1.5
    and hue ±18 (OpenCV's 0..180 hue units) in HSV; each applied with p 0.5 and each step rounded down
    to uint8 as mmseg does.
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta
        self.generator = generator

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        g = self.generator
        params: dict[str, Any] = {}
        if _randint(0, 2, g):
            params["brightness"] = _uniform(-self.brightness_delta, self.brightness_delta, g)
        params["contrast_first"] = bool(_randint(0, 2, g))
        if params["contrast_first"] and _randint(0, 2, g):
            params["contrast"] = _uniform(*self.contrast_range, g)
        if _randint(0, 2, g):
            params["saturation"] = _uniform(*self.saturation_range, g)
        if _randint(0, 2, g):
            params["hue"] = _randint(-self.hue_delta, self.hue_delta, g)
        if not params["contrast_first"] and _randint(0, 2, g):
            params["contrast"] = _uniform(*self.contrast_range, g)
        return params

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        x = inpt.as_subclass(torch.Tensor).float()

        def q(t: torch.Tensor) -> torch.Tensor:  # mmseg: clip to 0..255 then astype(uint8)
            return t.clamp(0, 255).floor()

        if "brightness" in params:
            x = q(x + params["brightness"])
        if params["contrast_first"] and "contrast" in params:
            x = q(x * params["contrast"])
        if "saturation" in params or "hue" in params:
            hsv = _rgb_to_hsv(x)
            if "saturation" in params:
                hsv[1] = q(hsv[1] * params["saturation"])
            if "hue" in params:
                hsv[0] = (torch.floor(hsv[0]) + params["hue"]) % 180
            x = q(_hsv_to_rgb(hsv))
        if not params["contrast_first"] and "contrast" in params:
            x = q(x * params["contrast"])
        return tv_tensors.wrap(x.to(torch.uint8), like=inpt)


class SegTrainTransform:
    """Phase-2 train transform: (uint8 (H, W, 3), uint8 (H, W)) → (float (3, crop, crop), long (crop, crop)).

    Resize keeps the ratio with mmseg's img_scale (8·base, base) × r, r ~ U(ratio_range): the short side
    becomes base·r unless the long side would exceed 8·base·r. Image bilinear without antialias (as
    OpenCV), mask nearest. The crop is re-drawn up to 10 times while one class (255 ignored) covers
    ``cat_max_ratio`` or more of it or only one class is present (mmseg semantics: the 11th draw is kept
    unchecked). Randomness: ``generator`` if given, else the global torch RNG.
    """

    def __init__(
        self,
        base_size: int = 520,
        ratio_range: tuple[float, float] = (0.5, 2.0),
        crop: int = 480,
        cat_max_ratio: float = 0.75,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore: int = 255,
        flip_prob: float = 0.5,
        photometric: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        self.base_size, self.ratio_range, self.crop = base_size, ratio_range, crop
        self.cat_max_ratio, self.ignore, self.flip_prob = cat_max_ratio, ignore, flip_prob
        self.mean, self.std = list(mean), list(std)
        self.generator = generator
        self.photometric = PhotoMetricDistortion(generator=generator) if photometric else None

    def _resize(
        self, img: tv_tensors.Image, mask: tv_tensors.Mask
    ) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        r = _uniform(*self.ratio_range, self.generator)
        long_max, short_max = int(8 * self.base_size * r), int(self.base_size * r)
        h, w = img.shape[-2:]
        factor = min(long_max / max(h, w), short_max / min(h, w))
        size = [int(h * factor + 0.5), int(w * factor + 0.5)]
        img = F.resize(img, size, interpolation=InterpolationMode.BILINEAR, antialias=False)
        mask = F.resize(mask, size, interpolation=InterpolationMode.NEAREST)
        return img, mask

    def _crop_box(self, h: int, w: int) -> tuple[int, int]:
        top = _randint(0, max(h - self.crop, 0) + 1, self.generator)
        left = _randint(0, max(w - self.crop, 0) + 1, self.generator)
        return top, left

    def _random_crop(
        self, img: tv_tensors.Image, mask: tv_tensors.Mask
    ) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        h, w = img.shape[-2:]
        top, left = self._crop_box(h, w)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                window = mask[..., top : top + self.crop, left : left + self.crop]
                # a histogram, not torch.unique (a sort): the same counts in one linear pass
                counts = torch.bincount(window.reshape(-1).long(), minlength=self.ignore + 1)
                counts[self.ignore] = 0
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio:
                    break
                top, left = self._crop_box(h, w)
        ch, cw = min(self.crop, h), min(self.crop, w)
        return F.crop(img, top, left, ch, cw), F.crop(mask, top, left, ch, cw)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        seg = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask))[None])
        img, seg = self._resize(img, seg)
        img, seg = self._random_crop(img, seg)
        if torch.rand((), generator=self.generator).item() < self.flip_prob:
            img, seg = F.horizontal_flip(img), F.horizontal_flip(seg)
        if self.photometric is not None:
            img, seg = self.photometric(img, seg)
        x = F.normalize(F.to_dtype(img, torch.float32, scale=True), self.mean, self.std)
        pad_h, pad_w = self.crop - x.shape[-2], self.crop - x.shape[-1]
        if pad_h > 0 or pad_w > 0:  # bottom / right, as mmseg's Pad
            x = F.pad(x, [0, 0, pad_w, pad_h], fill=0)
            seg = F.pad(seg, [0, 0, pad_w, pad_h], fill=self.ignore)
        return x.as_subclass(torch.Tensor).contiguous(), seg.as_subclass(torch.Tensor)[0].long().contiguous()
