"""Parity of CAM fusion, preprocessing, seeds and seed CRF with the authors' code (golden cam_inference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_close, assert_labels_agree, golden_crf_params, load_golden

from weaktr.cam.generate import fuse_cams, preprocess_scales, resize_bicubic
from weaktr.cam.seeds import seed_from_cams
from weaktr.crf import CRFParams

pytestmark = pytest.mark.golden


@pytest.fixture(scope="module")
def golden() -> tuple[dict[str, torch.Tensor], dict]:
    return load_golden("cam_inference")


def _image(t: dict[str, torch.Tensor]) -> np.ndarray:
    return t["image"].permute(1, 2, 0).contiguous().numpy()


def _fine_cam(fused: torch.Tensor, patch_attn: torch.Tensor) -> torch.Tensor:
    """PA (summed over its leading singleton) times the fused CAM, per class: (C, h, w)."""
    pa = patch_attn.sum(0)  # (B, N, N)
    b, c, h, w = fused.shape
    return torch.matmul(pa.unsqueeze(1), fused.reshape(b, c, -1, 1)).reshape(b, c, h, w)[0]


def _fused(golden) -> tuple[torch.Tensor, torch.Tensor]:
    t, js = golden
    maps = [
        _fine_cam(t[f"model_cams_fused.{name}"], t[f"model_patch_attn.{name}"])
        for name in js["per_input_order"]
    ]
    flips = [name.endswith("_flip") for name in js["per_input_order"]]
    return fuse_cams(maps, flips, t["labels"], tuple(js["scaled_sizes_hw"][0]))


def test_fusion_matches_official_sum_and_maps(golden) -> None:
    t, _ = golden
    cams, sums = _fused(golden)
    assert_close(sums, t["cam_sum_unnormalized"], tol=1e-4, name="cam_sum_unnormalized")
    torch.testing.assert_close(cams, t["cam_maps"], atol=1e-3, rtol=0)


def test_preprocess_matches_pil_resize(golden) -> None:
    t, js = golden
    image = _image(t)
    scales, mean, std = js["scales"], js["normalize"]["mean"], js["normalize"]["std"]
    expected_hwc = t["image_s1.2_uint8"].permute(1, 2, 0).contiguous().numpy()
    s = scales[js["per_input_order"].index("s1.2") // 2]
    np.testing.assert_array_equal(resize_bicubic(image, s), expected_hwc)
    inputs = preprocess_scales(image, scales, mean, std)
    assert [tuple(x.shape[-2:]) for x in inputs] == [tuple(hw) for hw in js["scaled_sizes_hw"][::2]]
    # torchvision's ToTensor then Normalize, written out: the operation order the golden vectors used
    chw = torch.tensor(expected_hwc).permute(2, 0, 1).float().div(255)
    reference = (chw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert torch.equal(inputs[scales.index(s)], reference)


def test_seed_and_crf_seed_match(golden) -> None:
    t, js = golden
    cams = t["cam_maps"].numpy()
    classes = t["present_classes"].numpy() + 1
    seed = seed_from_cams(cams, classes, js["threshold"])
    assert seed.dtype == np.uint8
    assert_labels_agree(seed, t["seed_label_t043"], name="seed")
    params = golden_crf_params(js["crf"])
    assert params == CRFParams.voc_label()
    seed_crf = seed_from_cams(cams, classes, js["threshold"], _image(t), params)
    assert_labels_agree(seed_crf, t["seed_label_t043_crf"], name="seed_crf")
    assert sorted(np.unique(seed_crf).tolist()) == js["seed_crf_label_values"]


def test_seed_from_our_fusion_matches(golden) -> None:
    t, js = golden
    cams, _ = _fused(golden)
    seed = seed_from_cams(cams.numpy(), t["present_classes"].numpy() + 1, js["threshold"])
    assert_labels_agree(seed, t["seed_label_t043"], name="seed from recomputed CAMs")
