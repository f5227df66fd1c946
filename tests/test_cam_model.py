"""Unit tests of the phase-1 CAM network on tiny configs (shapes, O4 rule, AAF layout, detach, I/O)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import TINY_CAM
from safetensors.torch import save_file

from weaktr.errors import InputError
from weaktr.io import save_checkpoint
from weaktr.models import aaf as aaf_module
from weaktr.models.aaf import AAF
from weaktr.models.backbone import ViTBackbone
from weaktr.models.cam import (
    CAMConfig,
    CAMNet,
    build_cam_model,
    cam_loss,
    convert_official_cam_state,
    load_cam_model,
    map_official_key,
    save_cam_model,
)
from weaktr.models.encoder import resample_pos_embed
from weaktr.models.execution import ExecutionPolicy


def tiny(**kw: object) -> CAMNet:
    torch.manual_seed(0)
    return build_cam_model(CAMConfig(**{**TINY_CAM, **kw})).eval()


def test_shapes_patch16_non_square_and_non_divisible() -> None:
    model = tiny()
    out = model(torch.randn(2, 3, 50, 90))  # floors to a 3x5 grid like the strided patch conv
    B, C, h, w, N, M = 2, 3, 3, 5, 15, 2 * 4
    for name, shape in [
        ("cls_logits", (B, C)),
        ("coarse_logits", (B, C)),
        ("fine_logits", (B, C)),
        ("coarse_cam", (B, C, h, w)),
        ("cross_attn", (B, C, h, w)),
        ("fused_cam", (B, C, h, w)),
        ("fine_cam", (B, C, h, w)),
        ("patch_attn", (B, N, N)),
        ("aaf_weights", (B, M)),
    ]:
        assert tuple(getattr(out, name).shape) == shape, name
    assert out.cam("default") is out.fine_cam  # the CAM used downstream
    plain = tiny(refine=False)(torch.randn(1, 3, 32, 48))
    assert plain.cam("default") is plain.fused_cam and plain.cam("refined") is plain.fine_cam
    with pytest.raises(InputError, match="unknown CAM kind"):
        plain.cam("best")
    assert plain.fused_cam.shape == (1, 3, 2, 3)


def test_shapes_conv_stem_patch8() -> None:
    model = tiny(stem="conv", patch_size=8)
    out = model(torch.randn(2, 3, 40, 64))
    assert out.fine_cam.shape == (2, 3, 5, 8) and out.patch_attn.shape == (2, 40, 40)
    assert torch.isfinite(out.fine_cam).all()


def test_backbone_structure() -> None:
    b = ViTBackbone("deit_small_patch16_224", 5, 32, None, "patch", 0.1, embed_dim=64, depth=3, num_heads=4)
    assert b.vit.cls_token.shape == (1, 5, 64) and b.vit.pos_embed.shape == (1, 5 + 4, 64)
    assert [
        blk.drop_path1.drop_prob if hasattr(blk.drop_path1, "drop_prob") else 0.0 for blk in b.vit.blocks
    ] == pytest.approx([0.0, 0.05, 0.1])
    blk = b.vit.blocks[0]
    assert blk.norm1.eps == 1e-6 and blk.mlp.act.approximate == "none" and blk.attn.qkv.bias is not None
    out = b(torch.randn(1, 3, 32, 32))
    assert len(out.attn) == 3 and out.attn[0].shape == (1, 4, 9, 9)
    torch.testing.assert_close(out.attn[0].sum(-1), torch.ones(1, 4, 9))  # softmax rows


def test_block_captures_match_timm_block() -> None:
    """The explicit block forward reproduces timm's own Block.forward (same parameters, one pass)."""
    b = ViTBackbone(
        "deit_small_patch16_224", 2, 32, None, "patch", 0.0, embed_dim=64, depth=1, num_heads=4
    ).eval()
    x = torch.randn(2, 6, 64)
    y, attn, out, head_out = b.vit.blocks[0].forward_with_maps(x)
    torch.testing.assert_close(y, b.vit.blocks[0](x))
    torch.testing.assert_close(out, b.vit.blocks[0].attn(b.vit.blocks[0].norm1(x)))
    assert head_out.shape == (2, 4, 6, 16) and attn.shape == (2, 4, 6, 6)


def test_pretrained_class_token_replicated(tmp_path) -> None:
    src = timm.create_model("deit_small_patch16_224", embed_dim=64, depth=1, num_heads=4, img_size=32)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    b = ViTBackbone(
        "deit_small_patch16_224",
        3,
        32,
        str(tmp_path / "w.safetensors"),
        "patch",
        0.0,
        embed_dim=64,
        depth=1,
        num_heads=4,
    )
    assert torch.equal(b.vit.cls_token[0], src.cls_token[0].expand(3, -1))
    assert torch.equal(b.vit.pos_embed[0, :3], src.pos_embed[0, :1].expand(3, -1))
    assert torch.equal(b.vit.pos_embed[0, 3:], src.pos_embed[0, 1:])


def test_pos_embed_o4_rule() -> None:
    torch.manual_seed(0)
    g, C, D = 14, 2, 8
    pos = torch.randn(1, C + g * g, D)
    assert resample_pos_embed(pos, C, (14, 14), "dino", (224, 224)) is pos  # square 14x14: skipped

    grid_img = pos[:, C:].reshape(1, g, g, D).permute(0, 3, 1, 2)
    for grid, size in [((14, 14), (224, 232)), ((10, 17), (160, 272))]:
        got = resample_pos_embed(pos, C, grid, "dino", size)
        assert got.shape == (1, C + grid[0] * grid[1], D)
        assert torch.equal(got[:, :C], pos[:, :C])  # class slots untouched
        want = F.interpolate(
            grid_img,
            scale_factor=((grid[0] + 0.1) / g, (grid[1] + 0.1) / g),
            mode="bicubic",
            align_corners=False,
        )
        torch.testing.assert_close(got[:, C:], want.permute(0, 2, 3, 1).reshape(1, -1, D))
        by_size = F.interpolate(grid_img, size=grid, mode="bicubic", align_corners=False)
        assert not torch.allclose(got[:, C:], by_size.permute(0, 2, 3, 1).reshape(1, -1, D), atol=1e-4)
    # a non-square 14x14 grid is still interpolated (14.1/14 is not the identity)
    assert not torch.allclose(resample_pos_embed(pos, C, (14, 14), "dino", (224, 232)), pos, atol=1e-4)


def test_aaf_index_layout_head_major_strided() -> None:
    K, H, d, T, B = 3, 2, 4, 5, 1
    aaf = AAF(K, H, d, reduction=2.0, feat_reduction=2)
    attn = [torch.zeros(B, H, T, T) + torch.arange(H).view(1, H, 1, 1) * 10 + layer for layer in range(K)]
    maps = aaf.stack_maps(attn)
    assert [maps[0, i, 0, 0].item() for i in range(K * H)] == [10 * (i // K) + i % K for i in range(K * H)]
    attn_out = [torch.zeros(B, T, H * d) + torch.arange(H * d) + 100 * layer for layer in range(K)]
    feats = aaf.pooled_features(attn_out, [])
    assert feats.shape == (B, K * H, d)
    for head in range(H):
        for layer in range(K):
            expect = torch.tensor([100.0 * layer + j * H + head for j in range(d)])
            assert torch.equal(feats[0, head * K + layer], expect)
    paper = AAF(K, H, d, features="paper", reduction=2.0, feat_reduction=2)
    head_out = [torch.randn(B, H, T, d) for _ in range(K)]
    assert torch.equal(paper.pooled_features([], head_out)[0, 1 * K + 2], head_out[2][0, 1].amax(0))


def test_aaf_forward_formula() -> None:
    torch.manual_seed(0)
    K, H, d, T, B = 2, 3, 8, 6, 2
    for pool in ("max", "avg"):
        aaf = AAF(K, H, d, pool=pool, reduction=3.0, feat_reduction=4)
        assert aaf.attn_head_ffn[0].weight.shape == (2, 6) and aaf.attn_feat_ffn[0].weight.shape == (2, 8)
        assert aaf.attn_head_ffn[0].bias is None and aaf.attn_head_ffn[2].bias is None
        attn = [torch.rand(B, H, T, T) for _ in range(K)]
        attn_out = [torch.randn(B, T, H * d) for _ in range(K)]
        res = aaf(attn, attn_out, [])
        # the definition: channel j*H + h of layer k is channel j of map h*K + k, pooled over tokens
        feats = torch.stack(attn_out, 1).reshape(B, K, T, d, H).permute(0, 4, 1, 2, 3).reshape(B, H * K, T, d)
        pooled = feats.amax(2) if pool == "max" else feats.mean(2)
        f0, f1 = aaf.attn_feat_ffn
        scores = (pooled @ f0.weight.T + f0.bias) @ f1.weight.T + f1.bias  # no activation in between
        w = torch.sigmoid(
            torch.relu(scores[..., 0] @ aaf.attn_head_ffn[0].weight.T) @ aaf.attn_head_ffn[2].weight.T
        )
        torch.testing.assert_close(res.weights, w)
        want = sum(w[:, i, None, None] * aaf.stack_maps(attn)[:, i] for i in range(K * H)) / (K * H)
        torch.testing.assert_close(res.fused, want)


def test_aaf_inference_fuses_bf16_maps_in_chunks_with_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    K, H, d, T, B = 3, 2, 8, 7, 2
    aaf = AAF(K, H, d, reduction=2.0, feat_reduction=2)
    attn = [torch.softmax(torch.randn(B, H, T, T), -1).bfloat16() for _ in range(K)]
    attn_out = [torch.randn(B, T, H * d) for _ in range(K)]
    training = aaf(attn, attn_out, []).fused.detach()  # the stacked product of the training path
    with torch.no_grad():
        whole = aaf(attn, attn_out, []).fused  # one chunk: FUSE_CHUNK far above B·H·T²
        monkeypatch.setattr(aaf_module, "FUSE_CHUNK", B * H * 5)  # 5 columns a chunk, the last one 4
        chunked = aaf(attn, attn_out, []).fused
    assert chunked.dtype == torch.float32 and torch.equal(chunked, whole)
    torch.testing.assert_close(chunked, training)


def test_fine_cam_is_patch_attention_times_fused_per_class() -> None:
    model = tiny()
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        out = model(x)
        feats = model.backbone(x)
        fused = model.aaf(feats.attn, feats.attn_out, feats.head_out).fused
    C = 3
    torch.testing.assert_close(out.cross_attn, fused[:, :C, C:].reshape(2, C, 3, 4))
    torch.testing.assert_close(out.patch_attn, fused[:, C:, C:])
    torch.testing.assert_close(out.fused_cam, out.cross_attn * out.coarse_cam.relu())
    for b in range(2):
        for c in range(C):
            want = out.patch_attn[b] @ out.fused_cam[b, c].flatten()
            torch.testing.assert_close(out.fine_cam[b, c].flatten(), want)
    torch.testing.assert_close(out.fine_logits, out.fine_cam.mean((2, 3)))
    torch.testing.assert_close(out.coarse_logits, out.coarse_cam.mean((2, 3)))
    # one patch attention per image: batched outputs equal per-image outputs
    with torch.no_grad():
        single = model(x[1:])
    torch.testing.assert_close(out.fine_cam[1:], single.fine_cam)
    torch.testing.assert_close(out.patch_attn[1:], single.patch_attn)


def _fine_grads(model: CAMNet) -> dict[str, torch.Tensor | None]:
    model.train()
    out = model(torch.randn(2, 3, 32, 48))
    loss = cam_loss(out, torch.tensor([[1.0, 0, 1], [0, 1, 0]]))["fine"]
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return {n: g for n, g in zip(names, grads, strict=True) if g is not None and g.abs().sum() > 0}


def test_detach_semantics() -> None:
    assert sorted(_fine_grads(tiny())) == sorted(n for n, _ in tiny().aaf.named_parameters(prefix="aaf"))
    reached = _fine_grads(tiny(detach=False))
    assert "backbone.vit.blocks.0.attn.qkv.weight" in reached and "head.weight" in reached
    assert "aaf.attn_head_ffn.0.weight" in reached


def test_paper_features_and_mean_fusion() -> None:
    x = torch.randn(1, 3, 32, 48)
    labels = torch.tensor([[1.0, 0, 0]])
    paper = tiny(aaf_features="paper", aaf_pool="avg")
    out = paper(x)
    assert torch.isfinite(out.fine_cam).all() and out.aaf_weights.shape == (1, 8)
    cam_loss(out, labels)["total"].backward()
    assert paper.aaf.attn_feat_ffn[0].weight.grad is not None

    mean = tiny(fusion="mean")
    assert not list(mean.aaf.parameters())
    out = mean(x)
    assert torch.equal(out.aaf_weights, torch.ones(1, 8))
    feats = mean.backbone(x)
    maps = torch.cat(feats.attn, dim=1)  # order is irrelevant for a plain mean
    torch.testing.assert_close(out.patch_attn, maps.mean(1)[:, 3:, 3:])
    cam_loss(out, labels)["total"].backward()


def test_cam_loss_terms() -> None:
    out = tiny()(torch.randn(2, 3, 32, 32))
    y = torch.tensor([[1.0, 0, 1], [0, 0, 1]])
    losses = cam_loss(out, y)
    assert set(losses) == {"cls", "coarse", "fine", "total"}
    torch.testing.assert_close(losses["coarse"], F.multilabel_soft_margin_loss(out.coarse_logits, y))
    torch.testing.assert_close(losses["total"], losses["cls"] + losses["coarse"] + losses["fine"])


def test_config_round_trip_and_errors() -> None:
    cfg = CAMConfig(**TINY_CAM, aaf_pool="avg", detach=False)
    assert CAMConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(InputError, match="bogus"):
        CAMConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(InputError, match="aaf_pool"):
        CAMConfig(aaf_pool="median")


def test_checkpoint_round_trip(tmp_path) -> None:
    model = tiny(stem="conv", patch_size=8, aaf_features="paper")
    x = torch.randn(1, 3, 40, 48)
    save_cam_model(tmp_path / "cam.safetensors", model)
    loaded = load_cam_model(tmp_path / "cam.safetensors", torch.device("cpu"))
    assert loaded.config == model.config and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).fine_cam, model(x).fine_cam, rtol=0, atol=0)
    save_checkpoint(tmp_path / "other.safetensors", model.state_dict(), {"type": "segmenter"})
    with pytest.raises(InputError, match="not a WeakTr CAM checkpoint"):
        load_cam_model(tmp_path / "other.safetensors")


def _official_state(model: CAMNet) -> dict[str, torch.Tensor]:
    """Our state under the authors' key names (the inverse of map_official_key)."""
    inverse = {}
    for key in model.state_dict():
        official = key.replace("backbone.vit.", "").replace("aaf.", "adaptive_attention_fusion.")
        assert map_official_key(official) == key
        inverse[official] = model.state_dict()[key].clone()
    return inverse


def test_convert_official_keys(tmp_path) -> None:
    model = tiny(num_classes=5, aaf_reduction=3.0)  # 8 maps -> int(8/3) = 2 hidden units
    official = _official_state(model)
    torch.save({"model": official}, tmp_path / "official.pth")
    save_file(official, str(tmp_path / "official.safetensors"))
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        expect = model(x)
    for source in (official, tmp_path / "official.pth", str(tmp_path / "official.safetensors")):
        state, cfg = convert_official_cam_state(source, drop_path=0.0)
        assert (cfg.num_classes, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.img_size) == (
            5,
            64,
            2,
            4,
            16,
            32,
        )
        assert int(8 / cfg.aaf_reduction) == 2 and cfg.aaf_feat_reduction == 4
        rebuilt = CAMNet(cfg)
        rebuilt.load_state_dict(state)
        with torch.no_grad():
            got = rebuilt.eval()(x)
        torch.testing.assert_close(got.fine_cam, expect.fine_cam, rtol=0, atol=0)
        torch.testing.assert_close(got.cls_logits, expect.cls_logits, rtol=0, atol=0)
    with pytest.raises(InputError, match="query"):
        convert_official_cam_state({**official, "query": torch.zeros(8)})
    with pytest.raises(InputError, match="missing"):
        convert_official_cam_state({k: v for k, v in official.items() if k != "blocks.1.mlp.fc2.bias"})
    with pytest.raises(InputError, match="non-float"):
        convert_official_cam_state({**official, "head.bias": torch.zeros(5, dtype=torch.int8)})


def test_fusion_sums_bf16_maps_in_float32() -> None:
    """Under CAM-generation AMP the maps arrive in bf16; both fusions return float32."""
    K, H, d, T, B = 2, 2, 8, 5, 1
    attn = [torch.rand(B, H, T, T).to(torch.bfloat16) for _ in range(K)]
    attn_out = [torch.randn(B, T, H * d) for _ in range(K)]
    for fusion in ("aaf", "mean"):
        out = AAF(K, H, d, fusion=fusion, reduction=2.0, feat_reduction=2)(attn, attn_out, [])
        assert out.fused.dtype == torch.float32 and out.weights.dtype == torch.float32, fusion
        want = torch.stack([a.float() for a in attn], 2).flatten(1, 2)
        if fusion == "mean":
            torch.testing.assert_close(out.fused, want.mean(1))


def test_randweight_fusion_is_fixed_and_saved(tmp_path) -> None:
    """AAF_RandWeight: a fixed N(0, 1) buffer through the interactive FFN, the same for every image."""
    model = tiny(fusion="randweight")
    aaf = model.aaf
    assert not hasattr(aaf, "attn_feat_ffn") and "aaf.query" in model.state_dict()
    assert "query" not in dict(aaf.named_parameters()) and aaf.query.shape == (8,)
    x = torch.randn(2, 3, 32, 48)
    out = model(x)
    want = aaf.attn_head_ffn(aaf.query)
    torch.testing.assert_close(out.aaf_weights, want.expand(2, -1))
    feats = model.backbone(x)
    maps = aaf.stack_maps(feats.attn)
    fused = (want[None, :, None, None] * maps).mean(1)
    torch.testing.assert_close(out.patch_attn, fused[:, 3:, 3:])
    cam_loss(out, torch.tensor([[1.0, 0, 0], [0, 1, 1]]))["total"].backward()
    assert aaf.attn_head_ffn[0].weight.grad is not None and aaf.query.grad is None
    save_cam_model(tmp_path / "rw.safetensors", model)
    loaded = load_cam_model(tmp_path / "rw.safetensors")
    assert torch.equal(loaded.aaf.query, aaf.query)  # not redrawn on load


def test_convert_official_randweight_with_query_npy(tmp_path) -> None:
    model = tiny(fusion="randweight")
    official = _official_state(model)
    query = official.pop("adaptive_attention_fusion.query")  # the authors keep it in query.npy
    np.save(tmp_path / "query.npy", query.numpy())
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        expect = model(x).fine_cam
    for q in (tmp_path / "query.npy", query.numpy()[None], query):
        state, cfg = convert_official_cam_state(official, q, drop_path=0.0)
        assert cfg.fusion == "randweight" and cfg.num_heads == 4
        rebuilt = CAMNet(cfg)
        rebuilt.load_state_dict(state)
        with torch.no_grad():
            torch.testing.assert_close(rebuilt.eval()(x).fine_cam, expect, rtol=0, atol=0)
    with pytest.raises(InputError, match=r"query\.npy"):
        convert_official_cam_state(official)
    with pytest.raises(InputError, match="not found"):
        convert_official_cam_state(official, tmp_path / "missing.npy")
    with pytest.raises(InputError, match=r"aaf\.query"):
        convert_official_cam_state(official, torch.zeros(5))


@pytest.mark.parametrize("fusion", ["aaf", "mean", "randweight"])
def test_inference_fusion_by_layer_matches_the_training_path(fusion: str) -> None:
    """Without autograd Â is summed layer by layer (no stacked copy); it must equal the stacked bmm."""
    model = tiny(fusion=fusion)
    x = torch.randn(2, 3, 48, 64)
    with torch.enable_grad():
        stacked = model(x)
    with torch.inference_mode():
        by_layer = model(x)
    for name in ("fine_cam", "fused_cam", "patch_attn", "aaf_weights"):
        expected = getattr(stacked, name).detach()
        torch.testing.assert_close(getattr(by_layer, name), expected, rtol=1e-5, atol=1e-6)


def _prepared(fused: bool = False) -> CAMNet:
    return tiny().prepare_inference(ExecutionPolicy.cam_inference(torch.device("cpu"), False, fused))


@pytest.mark.parametrize("amp", [False, True])
def test_reused_attention_buffer_gives_the_same_maps_and_follows_the_input_size(amp: bool) -> None:
    model, reusing = tiny(), _prepared()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        for shape in ((1, 3, 48, 64), (2, 3, 80, 32), (1, 3, 32, 32)):
            x = torch.randn(*shape)
            plain = model.backbone(x)
            reused = reusing.backbone(x)
            for a, b in zip(plain.attn, reused.attn, strict=True):
                assert torch.equal(a, b) and b.dtype == (torch.bfloat16 if amp else torch.float32)
            torch.testing.assert_close(reused.tokens, plain.tokens, rtol=0, atol=0)
    assert not model.backbone.vit._maps  # an unprepared network allocates fresh maps
    # the buffer is kept between calls, grown to the largest maps seen, and never saved as state
    kept = reusing.backbone.vit._maps
    assert list(kept) == [torch.bfloat16 if amp else torch.float32]
    assert kept[next(iter(kept))].numel() >= 2 * 2 * 4 * (3 + 10) ** 2
    assert list(reusing.state_dict()) == list(model.state_dict())


def test_alternating_precisions_keep_one_buffer_each() -> None:
    model, x = _prepared(), torch.randn(1, 3, 48, 64)
    with torch.inference_mode():
        model.backbone(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model.backbone(x)
        kept = {d: b.data_ptr() for d, b in model.backbone.vit._maps.items()}
        model.backbone(x)  # back to float32: its buffer is still there
    assert set(kept) == {torch.float32, torch.bfloat16}
    assert {d: b.data_ptr() for d, b in model.backbone.vit._maps.items()} == kept


def test_the_network_owns_its_inference_precision() -> None:
    """Under a bf16 CAM policy the backbone computes in bf16 and the heads in float32, whoever calls;
    without a policy, or with gradients on, the forward is the caller's (training's autocast)."""
    model, x = tiny(), torch.randn(2, 3, 48, 64)
    seen: dict[str, torch.dtype] = {}
    model.head.register_forward_pre_hook(lambda _, args: seen.update(head=args[0].dtype))
    model.backbone.vit.blocks[0].attn.qkv.register_forward_hook(
        lambda _m, _a, out: seen.update(qkv=out.dtype)
    )
    with torch.inference_mode():
        exact = model(x)
        assert seen == {"head": torch.float32, "qkv": torch.float32}
        model.prepare_inference(ExecutionPolicy.cam_inference(torch.device("cpu"), bf16=True))
        fast = model(x)
    assert seen == {"head": torch.float32, "qkv": torch.bfloat16}
    assert fast.fine_cam.dtype == torch.float32
    torch.testing.assert_close(fast.cls_logits, exact.cls_logits, atol=0.1, rtol=0.1)
    model(x)  # gradients on: the policy is not applied
    assert seen == {"head": torch.float32, "qkv": torch.float32}
