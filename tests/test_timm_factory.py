"""The timm factory: pretrained sources fail fast and clearly; the conv stem fits timm's ViT."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_SEG

from weaktr.errors import InputError
from weaktr.models.cam import CAMConfig
from weaktr.models.segmenter import SegConfig, build_segmenter
from weaktr.models.stem import ConvStem
from weaktr.models.timm_factory import create_backbone, normalisation, resolve_pretrained

TINY = dict(embed_dim=64, depth=1, num_heads=2, img_size=64, num_classes=0)


def test_resolve_pretrained_choices(tmp_path):
    assert resolve_pretrained(None) is None
    assert resolve_pretrained("none") is None
    assert resolve_pretrained("hub") == "hub"
    with pytest.raises(InputError, match="not found"):
        resolve_pretrained(str(tmp_path / "missing.pth"))


def test_offline_hub_names_both_ways(monkeypatch):
    """Both ways as the run-config override of the network's own key (tests/test_advice.py follows them)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match=r"override seg_train\.pretrained=PATH ") as err:
        create_backbone("deit_small_patch16_224", pretrained="hub", setting="seg_train.pretrained", **TINY)
    text = str(err.value)
    assert "HF_HUB_OFFLINE" in text and "from scratch with seg_train.pretrained=null" in text
    assert "cam_train" not in text
    with pytest.raises(InputError, match=r"cam_train\.pretrained=PATH or seg_train\.pretrained=PATH"):
        create_backbone("deit_small_patch16_224", pretrained="hub", **TINY)  # a caller that did not say


def test_local_file_loads_through_timm_filter(tmp_path):
    src = create_backbone("deit_small_patch16_224", **TINY)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    dst = create_backbone("deit_small_patch16_224", pretrained=str(path), **TINY)
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_conv_stem_in_timm_vit():
    model = create_backbone("deit_small_patch16_224", stem="conv", patch_size=8, **TINY)
    assert isinstance(model.patch_embed, ConvStem)
    assert model.patch_embed.grid_size == (8, 8)
    tokens = model.forward_features(torch.randn(2, 3, 64, 64))
    assert tokens.shape == (2, 1 + 64, 64)


def test_conv_stem_crops_like_a_strided_conv():
    stem = ConvStem(img_size=64, patch_size=8, embed_dim=32)
    assert stem(torch.randn(1, 3, 70, 90)).shape == (1, (70 // 8) * (90 // 8), 32)
    with pytest.raises(ValueError, match="power-of-two"):
        ConvStem(patch_size=6)


def test_normalisation_comes_from_timm_configs():
    assert normalisation("deit_small_patch16_224")[0] == pytest.approx((0.485, 0.456, 0.406))
    assert normalisation("vit_small_patch16_384.augreg_in21k_ft_in1k") == ((0.5,) * 3, (0.5,) * 3)


def test_each_model_config_owns_its_input_normalisation():
    """The networks' configs give the backbone's (mean, std), which the segmenter hands to inference."""
    name = "vit_small_patch16_384.augreg_in21k_ft_in1k"
    assert CAMConfig(backbone=name).normalisation == normalisation(name) == ((0.5,) * 3, (0.5,) * 3)
    cfg = SegConfig(**{**TINY_SEG, "backbone": name})
    assert cfg.normalisation == normalisation(name)
    model = build_segmenter(cfg)
    assert (model.mean, model.std) == cfg.normalisation
