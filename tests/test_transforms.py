"""Phase-1 timm transforms and the phase-2 mmseg-style SegTrainTransform."""

from __future__ import annotations

import numpy as np
import PIL
import pytest
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors

from weaktr.data.transforms import (
    PhotoMetricDistortion,
    SegTrainTransform,
    _hsv_to_rgb,
    _rgb_to_hsv,
    cam_train_transform,
    posterize_authors,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _coded_pair(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A mask with many regions and an image whose grey value encodes the mask id (id * 10)."""
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 20, (h // 8 + 1, w // 8 + 1)).astype(np.uint8).repeat(8, 0).repeat(8, 1)[:h, :w]
    return np.repeat((mask * 10)[..., None], 3, axis=2), mask


def test_cam_transform_shape():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    torch.manual_seed(0)
    x = cam_train_transform(32, MEAN, STD)(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32


def test_seg_output_shapes_and_dtypes():
    img, mask = _coded_pair(90, 120)
    x, y = SegTrainTransform(base_size=80, crop=64, mean=MEAN, std=STD, generator=_gen(0))(img, mask)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert y.shape == (64, 64) and y.dtype == torch.long


def test_small_images_are_padded_with_ignore_and_zero():
    img, mask = _coded_pair(40, 50)
    t = SegTrainTransform(
        base_size=40,
        ratio_range=(1.0, 1.0),
        crop=64,
        mean=MEAN,
        std=STD,
        photometric=False,
        flip_prob=0.0,
        generator=_gen(1),
    )
    x, y = t(img, mask)
    assert (y[40:] == 255).all() and (y[:, 50:] == 255).all()
    assert (x[:, 40:] == 0).all() and (x[:, :, 50:] == 0).all()
    np.testing.assert_array_equal(y[:40, :50].numpy(), mask)


def test_resize_sets_short_side_to_base_times_ratio():
    img, mask = _coded_pair(50, 100)
    t = SegTrainTransform(
        base_size=60, ratio_range=(0.5, 0.5), crop=200, photometric=False, generator=_gen(0)
    )
    _, y = t(img, mask)
    valid = y != 255
    assert valid.any(1).sum() == 30 and valid.any(0).sum() == 60


def test_flip_moves_image_and_mask_together():
    img, mask = _coded_pair(80, 100)
    outs = []
    for flip in (0.0, 1.0):
        t = SegTrainTransform(
            base_size=80,
            ratio_range=(1.0, 1.0),
            crop=64,
            mean=(0, 0, 0),
            std=(1, 1, 1),
            photometric=False,
            flip_prob=flip,
            generator=_gen(5),
        )
        x, y = t(img, mask)
        grey = torch.round(x[0] * 255 / 10).long()
        assert torch.equal(grey, y), "image and mask disagree after crop/flip"
        outs.append((x, y))
    assert torch.equal(outs[1][1], outs[0][1].flip(-1))
    assert torch.equal(outs[1][0], outs[0][0].flip(-1))


def _dominant_fraction(y: torch.Tensor) -> tuple[int, float]:
    labels, counts = torch.unique(y[y != 255], return_counts=True)
    return len(labels), counts.max().item() / counts.sum().item()


def _crop_only(base_size: int, crop: int, cat_max_ratio: float, seed: int) -> SegTrainTransform:
    """No rescale, flip or photometric change: only the crop (and its cat_max_ratio check) varies."""
    return SegTrainTransform(
        base_size=base_size,
        ratio_range=(1.0, 1.0),
        crop=crop,
        cat_max_ratio=cat_max_ratio,
        photometric=False,
        flip_prob=0.0,
        generator=_gen(seed),
    )


def test_cat_max_ratio_is_respected_when_possible():
    # 200x200 with class 1 in the left 150 columns, class 2 in the right 50: a 100-px crop satisfies
    # "no class > 75 %" only when its left edge is > 75, i.e. in about a quarter of the draws.
    mask = np.ones((200, 200), np.uint8)
    mask[:, 150:] = 2
    img = np.zeros((200, 200, 3), np.uint8)

    def fractions(cat_max_ratio: float) -> list[float]:
        out = []
        for seed in range(30):
            n, frac = _dominant_fraction(_crop_only(200, 100, cat_max_ratio, seed)(img, mask)[1])
            out.append(frac if n > 1 else 1.0)
        return out

    ok_with = np.mean([f < 0.75 for f in fractions(0.75)])
    ok_without = np.mean([f < 0.75 for f in fractions(1.0)])
    assert ok_with >= 0.85 and ok_without <= 0.5, (ok_with, ok_without)


def test_single_class_image_still_returns_a_crop():
    img, mask = np.zeros((100, 100, 3), np.uint8), np.full((100, 100), 3, np.uint8)
    _, y = SegTrainTransform(base_size=100, ratio_range=(1.0, 1.0), crop=50, generator=_gen(0))(img, mask)
    assert (y == 3).all()


def test_generator_makes_it_reproducible():
    img, mask = _coded_pair(90, 120)
    a = SegTrainTransform(base_size=80, crop=64, generator=_gen(9))(img, mask)
    b = SegTrainTransform(base_size=80, crop=64, generator=_gen(9))(img, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_photometric_distortion_changes_only_the_image():
    rng = np.random.default_rng(0)
    img = tv_tensors.Image(torch.from_numpy(rng.integers(0, 256, (3, 16, 16), dtype=np.uint8)))
    mask = tv_tensors.Mask(torch.from_numpy(rng.integers(0, 5, (1, 16, 16), dtype=np.uint8)))
    changed = 0
    for seed in range(8):
        out_img, out_mask = PhotoMetricDistortion(generator=_gen(seed))(img, mask)
        assert out_img.dtype == torch.uint8 and out_img.shape == img.shape
        assert torch.equal(out_mask, mask)
        changed += int(not torch.equal(out_img, img))
    assert changed >= 6  # each of 4 steps fires with p 0.5: all skipped has p 1/16


def test_hsv_round_trip_and_opencv_units():
    x = torch.randint(0, 256, (3, 20, 20)).float()
    assert (_hsv_to_rgb(_rgb_to_hsv(x)) - x).abs().max() < 1e-3
    pure = torch.eye(3).mul(255.0)[:, :, None, None]  # red, green, blue
    hues = [_rgb_to_hsv(c)[:, 0, 0].tolist() for c in pure]
    assert hues == [[0.0, 255.0, 255.0], [60.0, 255.0, 255.0], [120.0, 255.0, 255.0]]  # OpenCV: H in 0..180


def test_cat_max_ratio_does_not_count_ignored_pixels():
    # mostly ignore (255) with two equal classes that every 100-px crop holds whole: the first crop
    # drawn already satisfies the ratio, so the crop equals the unchecked one of the same generator
    mask = np.full((100, 120), 255, np.uint8)
    mask[0:5, 40:60], mask[5:10, 40:60] = 1, 2
    img = np.repeat(np.arange(120, dtype=np.uint8)[None, :, None], 100, 0).repeat(3, 2)

    for seed in range(8):
        checked = _crop_only(100, 100, 0.75, seed)(img, mask)[0]
        torch.testing.assert_close(checked, _crop_only(100, 100, 1.0, seed)(img, mask)[0])


def _posterize_ops(transform) -> list:
    """The PosterizeIncreasing ops of a timm train transform's RandAugment."""
    ra = next(t for t in transform.transforms if hasattr(t, "ops"))
    return [op for op in ra.ops if op.name == "PosterizeIncreasing"]


def test_randaugment_posterize_at_full_magnitude_gives_a_black_image():
    """The authors' policy asks for 0 bits at magnitude 10, which Pillow 13 refuses; their Pillow gave
    a black image, and so does ours (the exact op and level that crashed CAM training)."""
    from timm.data import auto_augment

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    op = auto_augment.AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    assert op.level_fn(10, op.hparams) == (0,)
    if int(PIL.__version__.split(".")[0]) >= 13:  # older Pillow made the black image itself
        with pytest.raises(ValueError, match="bits"):
            op(img)
    (ours,) = _posterize_ops(cam_train_transform(32, MEAN, STD, auto_augment="rand-m9-mstd0.5-inc1"))
    ours.prob, ours.magnitude, ours.magnitude_std = 1.0, 10, 0
    out = ours(img)
    assert out.size == img.size and out.mode == img.mode
    assert not np.asarray(out).any()


@pytest.mark.parametrize("bits", range(1, 9))
def test_posterize_authors_equals_pillow_for_valid_bits(bits):
    img = Image.fromarray(np.random.default_rng(bits).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    expected = img if bits == 8 else ImageOps.posterize(img, bits)
    assert np.array_equal(np.asarray(posterize_authors(img, bits)), np.asarray(expected))


def test_randaugment_transform_survives_thousands_of_draws():
    """2 000 draws of the authors' setting on one image failed twice before the fix."""
    import random

    random.seed(0)
    np.random.seed(0)
    t = cam_train_transform(16, MEAN, STD, auto_augment="rand-m9-mstd0.5-inc1")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    for _ in range(3000):
        t(img)
