"""Sliding-window, multi-scale/flip inference and the two-layer ensemble, with stub and tiny models."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TINY_SEG
from torch import nn

from weaktr.config import PredictConfig
from weaktr.evaluation.inference import (
    InferenceSettings,
    multiscale_probs,
    predict_logits,
    predict_probs,
    resize_matrix,
    scaled_size,
    sliding_window_logits,
    to_input,
    upscaled_size,
    window_anchors,
)
from weaktr.models.segmenter import SegConfig, SegOutput, build_segmenter


class Stub(nn.Module):
    """Per-pixel 1×1 conv (+ optional ramp over the window's columns, to make position matter).

    Records every input batch shape; ``return_layer1`` gives a second, different head.
    """

    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def __init__(self, n_cls: int = 4, ramp: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Conv2d(3, n_cls, 1)
        self.head1 = nn.Conv2d(3, n_cls, 1)
        self.ramp = ramp
        self.seen: list[tuple[int, ...]] = []

    def _out(self, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
        y = head(x)
        cols = torch.arange(x.shape[-1], dtype=x.dtype) / x.shape[-1]
        return y + self.ramp * cols * torch.arange(y.shape[1], dtype=x.dtype).view(1, -1, 1, 1)

    patch_size = 1  # outputs at full resolution: the window maps' upsampling is the identity

    def forward(self, x: torch.Tensor, return_layer1: bool = False) -> torch.Tensor | SegOutput:
        y = self.forward_masks(x, return_layer1)
        return SegOutput(*y) if return_layer1 else y[0]

    def precision(self) -> AbstractContextManager[None]:
        return nullcontext()

    def forward_masks(self, x: torch.Tensor, return_layer1: bool = False) -> list[torch.Tensor]:
        self.seen.append(tuple(x.shape))
        y = self._out(self.head, x)
        return [y, self._out(self.head1, x)] if return_layer1 else [y]


def test_the_default_settings_are_the_predict_sections():
    """One set of defaults: the API without a run config batches and scales as ``weaktr run`` does."""
    assert InferenceSettings() == InferenceSettings.from_config(PredictConfig())
    assert InferenceSettings().window_batch == PredictConfig.window_batch == 4


@pytest.mark.parametrize(
    ("size", "expected"),
    [(480, [0]), (300, [0]), (500, [0, 20]), (800, [0, 320]), (960, [0, 320, 480]), (1000, [0, 320, 520])],
)
def test_window_anchor_rule(size: int, expected: list[int]) -> None:
    assert window_anchors(size, 480, 320) == expected


def test_window_average_of_translation_equivariant_model_is_its_full_output() -> None:
    """A per-pixel model gives the same logits in every window, so the count-map average is exact."""
    model = Stub()
    x = torch.randn(2, 3, 70, 90)
    (avg,) = sliding_window_logits(model, x, InferenceSettings(window=32, stride=20, window_batch=5))
    torch.testing.assert_close(avg, model.head(x))
    n_windows = len(window_anchors(70, 32, 20)) * len(window_anchors(90, 32, 20))
    assert sum(s[0] for s in model.seen) == 2 * n_windows and max(s[0] for s in model.seen) <= 5


def test_window_average_counts_overlaps() -> None:
    """With a position-dependent model, each pixel is the mean over exactly the windows covering it."""
    model = Stub(ramp=1.0)
    x = torch.randn(1, 3, 8, 12)
    (avg,) = sliding_window_logits(model, x, InferenceSettings(window=8, stride=3))
    ref = torch.zeros(1, 4, 8, 12)
    cnt = torch.zeros(1, 1, 8, 12)
    for b in window_anchors(12, 8, 3):  # [0, 3, 4]
        ref[..., b : b + 8] += model._out(model.head, x[..., b : b + 8])
        cnt[..., b : b + 8] += 1
    torch.testing.assert_close(avg, ref / cnt)


def test_images_smaller_than_window_are_padded() -> None:
    model = Stub()
    x = torch.randn(1, 3, 20, 25)
    (avg,) = sliding_window_logits(model, x, InferenceSettings(window=32, stride=20))
    assert model.seen == [(1, 3, 32, 32)]
    torch.testing.assert_close(avg, model.head(x))


def test_one_window_equals_full_image_forward_of_segmenter() -> None:
    torch.manual_seed(0)
    model = build_segmenter(SegConfig(**{**TINY_SEG, "n_cls": 3})).eval()
    x = torch.randn(3, 32, 32)
    logits = predict_logits(model, x, InferenceSettings(window=32, stride=20, base_size=None))
    with torch.no_grad():
        ref = model(x[None])[0]
    torch.testing.assert_close(logits, ref)
    one = InferenceSettings(
        scales=(1.0,), flip=False, window=32, stride=20, base_size=None, ensemble_weight=None
    )
    probs = predict_probs(model, x, one)
    torch.testing.assert_close(probs, ref.softmax(0))


def test_flip_variant_is_flipped_back_before_averaging() -> None:
    model = Stub(ramp=2.0)
    x = torch.randn(1, 3, 24, 24)
    p = predict_probs(
        model,
        x,
        InferenceSettings(
            scales=(1.0,), flip=True, window=24, stride=16, base_size=None, ensemble_weight=None
        ),
    )
    a = model._out(model.head, x).softmax(1)
    b = model._out(model.head, x.flip(-1)).flip(-1).softmax(1)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(p, ((a + b) / 2)[0])
    assert model.seen == [(2, 3, 24, 24)]  # the flip is batched with its original


def test_ensemble_math_and_softmax_after_window_average() -> None:
    model = Stub()
    x = torch.randn(3, 40, 40)
    settings = InferenceSettings(scales=(1.0,), flip=False, window=40, stride=20, base_size=None)
    p2, p1 = multiscale_probs(model, x, settings)
    torch.testing.assert_close(p2, model.head(x[None])[0].softmax(0))
    torch.testing.assert_close(p1, model.head1(x[None])[0].softmax(0))
    score = predict_probs(model, x, replace(settings, ensemble_weight=0.8))
    torch.testing.assert_close(score, 0.8 * p1 + p2)
    only = predict_probs(model, x, replace(settings, ensemble_weight=0))
    torch.testing.assert_close(only, p2)


def test_small_scales_are_upscaled_to_the_window() -> None:
    assert scaled_size(500, 375, 1.0, 520) == (693, 520)
    assert scaled_size(500, 375, 0.5, 520) == (347, 260)
    assert scaled_size(100, 2000, 1.0, 520) == (208, 4160)  # long side capped at 8·520·r
    assert upscaled_size(347, 260, 480) == (640, 480)
    assert upscaled_size(260, 347, 480) == (480, 640)
    assert upscaled_size(500, 480, 480) == (500, 480)
    model = Stub()
    img = np.random.default_rng(0).integers(0, 256, (50, 75, 3), dtype=np.uint8)
    out = predict_probs(
        model, img, InferenceSettings(scales=(0.5, 1.0), flip=True, window=48, stride=32, base_size=52)
    )
    assert out.shape == (4, 50, 75)
    # ratio 0.5 -> short side 26 < 48 -> 48×72, one 48×48 row of windows (anchors 0, 24), flip batched
    assert model.seen[0] == (4, 3, 48, 48)
    torch.testing.assert_close(out.sum(0), torch.full((50, 75), 1.8))


def test_uint8_input_is_normalised_and_mode_restored() -> None:
    img = np.full((4, 5, 3), 255, dtype=np.uint8)
    x = to_input(img, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.device("cpu"))
    torch.testing.assert_close(x, torch.full((1, 3, 4, 5), 2.0))
    model = Stub().train()
    predict_logits(model, img, InferenceSettings(window=8, stride=4, base_size=None))
    assert model.training
    with pytest.raises(ValueError):
        to_input(np.zeros((4, 5), dtype=np.uint8), (0.5,) * 3, (0.25,) * 3, torch.device("cpu"))


def test_window_maps_equal_upsample_average_crop_resize_of_the_segmenter() -> None:
    """The folded matrices reproduce the authors' pixel path: upsample each window, average by count,
    crop the padding, resize to the output size (patch 8, window not a multiple of the stride)."""
    torch.manual_seed(0)
    model = build_segmenter(SegConfig(**{**TINY_SEG, "n_cls": 3})).eval()
    x = torch.randn(2, 3, 45, 70)
    window, stride, out_size = 40, 24, (37, 51)
    with torch.no_grad():
        (avg,) = sliding_window_logits(
            model, x, InferenceSettings(window=window, stride=stride), out_size=out_size
        )
        hp, wp = max(45, window), max(70, window)
        xp = torch.nn.functional.pad(x, (0, wp - 70, 0, hp - 45))
        acc, cnt = torch.zeros(2, 3, hp, wp), torch.zeros(1, 1, hp, wp)
        for a in window_anchors(hp, window, stride):
            for b in window_anchors(wp, window, stride):
                acc[..., a : a + window, b : b + window] += model(xp[..., a : a + window, b : b + window])
                cnt[..., a : a + window, b : b + window] += 1
        ref = torch.nn.functional.interpolate(
            (acc / cnt)[..., :45, :70], size=out_size, mode="bilinear", align_corners=False
        )
    torch.testing.assert_close(avg, ref, atol=1e-5, rtol=1e-5)


def test_resize_matrix_matches_interpolate() -> None:
    v = torch.randn(2, 3, 7, 11)
    m_h, m_w = resize_matrix(19, 7), resize_matrix(5, 11)
    ref = torch.nn.functional.interpolate(v, size=(19, 5), mode="bilinear", align_corners=False)
    torch.testing.assert_close(m_h @ v @ m_w.T, ref)
    torch.testing.assert_close(resize_matrix(6, 6), torch.eye(6))
