"""Segmenter construction, shapes, position-embedding resize, layer-1 output, configs and checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from weaktr.errors import InputError
from weaktr.models.encoder import resample_pos_embed
from weaktr.models.segmenter import (
    SegConfig,
    SegOutput,
    build_segmenter,
    convert_official_segmenter_state,
    load_segmenter,
    param_groups,
    save_segmenter,
)

TINY = dict(n_cls=5, image_size=32, embed_dim=64, depth=2, num_heads=2)


def _tiny(**kw) -> nn.Module:
    torch.manual_seed(0)
    return build_segmenter(SegConfig(**{**TINY, **kw})).eval()


@pytest.mark.parametrize("size", [(32, 32), (37, 45), (17, 64)])
@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_shapes_any_input_size(size: tuple[int, int], stem: str) -> None:
    model = _tiny(stem=stem, patch_size=8 if stem == "conv" else None)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = model(x)
        both = model(x, return_layer1=True)
    assert out.shape == (2, 5, *size)
    assert isinstance(both, SegOutput) and both.logits_layer1.shape == (2, 5, *size)
    torch.testing.assert_close(both.logits, out)


def test_padding_then_unpadding_equals_padded_forward() -> None:
    model = _tiny()
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        odd = model(x)
        padded = model(F.pad(x, (0, 48 - 45, 0, 48 - 37)))
    torch.testing.assert_close(odd, padded[..., :37, :45])


def test_pos_embed_resize_rule() -> None:
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 4 * 4, 8)
    out = resample_pos_embed(pos, 1, (3, 6))
    assert out.shape == (1, 1 + 18, 8)
    assert torch.equal(out[:, :1], pos[:, :1])
    grid = pos[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    ref = (
        F.interpolate(grid, size=(3, 6), mode="bilinear", align_corners=False)
        .permute(0, 2, 3, 1)
        .reshape(1, 18, 8)
    )
    torch.testing.assert_close(out[:, 1:], ref)
    assert resample_pos_embed(pos, 1, (4, 4)) is pos


def test_encoder_uses_resized_pos_embed_at_other_sizes() -> None:
    model = _tiny()
    enc = model.encoder
    x = torch.randn(1, 3, 48, 64)  # grid 3x4, trained grid 2x2
    with torch.no_grad():
        tokens = model.encoder(x)
        t = enc.patch_embed(x).reshape(1, 12, -1)
        t = torch.cat([enc.cls_token, t], dim=1) + resample_pos_embed(enc.pos_embed, 1, (3, 4))
        for blk in enc.blocks:
            t = blk(t)
        ref = enc.norm(t)
    torch.testing.assert_close(tokens, ref)


def test_layer_norm_eps_and_exact_gelu() -> None:
    model = _tiny()
    lns = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert lns and all(m.eps == 1e-5 for m in lns)
    gelus = [m for m in model.modules() if isinstance(m, nn.GELU)]
    assert gelus and all(m.approximate == "none" for m in gelus)


def test_layer1_output_is_the_decoder_after_block_one() -> None:
    model = _tiny()
    one = _tiny(decoder_layers=1)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("decoder.blocks.1.")}
    one.load_state_dict(sd)
    x = torch.randn(1, 3, 40, 32)
    with torch.no_grad():
        out = model(x, return_layer1=True)
        ref = one(x)
    torch.testing.assert_close(out.logits_layer1, ref)
    assert not torch.allclose(out.logits, out.logits_layer1)


def test_scale_by_sqrt_d_changes_output() -> None:
    a, b = _tiny(), _tiny(scale_by_sqrt_d=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))


def test_config_round_trip_and_unknown_keys() -> None:
    cfg = SegConfig(**TINY, stem="conv", patch_size=8, scale_by_sqrt_d=True)
    assert SegConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="unknown"):
        SegConfig.from_dict({**cfg.to_dict(), "n_class": 3})


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = _tiny(stem="conv", patch_size=8)
    path = tmp_path / "seg.safetensors"
    save_segmenter(path, model)
    loaded = load_segmenter(path, "cpu")
    assert loaded.cfg == model.cfg and not loaded.training
    x = torch.randn(1, 3, 24, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def _official_like(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our keys are the authors' names; their encoder also carries an unused 1000-way head."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    d = sd["encoder.norm.weight"].shape[0]
    sd["encoder.head.weight"], sd["encoder.head.bias"] = torch.zeros(1000, d), torch.zeros(1000)
    return sd


def test_convert_official_state(tmp_path: Path) -> None:
    model = _tiny(num_heads=1)  # the authors use d_model // 64 heads; 64 // 64 = 1
    state, cfg = convert_official_segmenter_state(_official_like(model))
    assert (cfg.n_cls, cfg.image_size, cfg.embed_dim, cfg.depth, cfg.decoder_layers) == (5, 32, 64, 2, 2)
    rebuilt = build_segmenter(cfg).eval()
    rebuilt.load_state_dict(state)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": _official_like(model), "epoch": 3}, path)
    state2, cfg2 = convert_official_segmenter_state(path)
    assert cfg2 == cfg and state2.keys() == state.keys()


def test_convert_rejects_unknown_keys_and_bad_files(tmp_path: Path) -> None:
    sd = _official_like(_tiny(num_heads=1))
    sd["decoder.extra.weight"] = torch.zeros(3)
    with pytest.raises(InputError, match=r"decoder\.extra\.weight"):
        convert_official_segmenter_state(sd)
    with pytest.raises(InputError, match="not an official Segmenter"):
        convert_official_segmenter_state({"weight": torch.zeros(1)})
    with pytest.raises(InputError, match="not found"):
        convert_official_segmenter_state(tmp_path / "missing.pth")


def test_param_groups_scale_encoder_lr() -> None:
    model = _tiny()
    groups = param_groups(model, lr=1e-4, encoder_lr_scale=0.1)
    enc, dec = groups
    assert enc["lr"] == pytest.approx(1e-5) and dec["lr"] == pytest.approx(1e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


@pytest.mark.parametrize(
    "backbone",
    [
        "vit_small_patch16_384.augreg_in21k_ft_in1k",
        "vit_small_patch14_dinov2.lvd142m",
        "eva02_small_patch14_224.mim_in22k",
    ],
)
def test_other_backbones_at_patch16(backbone: str) -> None:
    model = _tiny(backbone=backbone, patch_size=16, depth=1, num_heads=None, embed_dim=None)
    assert model.patch_size == 16
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        out = model(x, return_layer1=True)
    assert out.logits.shape == (1, 5, 40, 56)
    assert torch.isfinite(out.logits).all()


def test_patch14_weights_resampled_to_patch16(tmp_path: Path) -> None:
    """A local patch-14 checkpoint loads at patch 16 (kernel resampled by timm) and crop-grid pos-embed."""
    torch.manual_seed(0)
    src = timm.create_model("vit_small_patch14_dinov2", depth=1, num_classes=0, img_size=56)
    path = tmp_path / "dinov2_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    cfg = SegConfig(
        backbone="vit_small_patch14_dinov2.lvd142m", n_cls=3, image_size=64, patch_size=16, depth=1
    )
    model = build_segmenter(cfg, pretrained=str(path))
    assert model.encoder.patch_embed.proj.weight.shape[-2:] == (16, 16)
    assert model.encoder.pos_embed.shape[1] == 1 + 4 * 4
    torch.testing.assert_close(model.encoder.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
