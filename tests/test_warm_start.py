"""seg_train.pretrained=cam: the segmenter's encoder starts from the trained CAM network's ViT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_SEG
from test_train_seg import demo, tiny_ctx  # noqa: F401  (the module-scoped data set fixture)

import weaktr.stages.train_seg as ts
from weaktr.data.info import DatasetInfo
from weaktr.errors import InputError
from weaktr.models.cam import CAMConfig, CAMNet, build_cam_model, save_cam_model
from weaktr.models.segmenter import SegConfig, build_segmenter, resize_pos_grid, save_segmenter
from weaktr.models.warm_start import encoder_state_from_cam, init_encoder_from_cam

# the CAM network with TINY_SEG's ViT (3 foreground classes: 3 class tokens)
CAM_LIKE_SEG = dict(
    backbone=TINY_SEG["backbone"],
    num_classes=3,
    img_size=32,
    stem="conv",
    patch_size=8,
    embed_dim=32,
    depth=1,
    num_heads=2,
    drop_path=0.0,
    aaf_reduction=1.0,
)


def _trained_looking_cam(path: Path, **changes: object) -> CAMNet:
    """A CAM network with non-default weights everywhere (norms and BN statistics included), saved."""
    torch.manual_seed(0)
    cam = build_cam_model(CAMConfig(**{**CAM_LIKE_SEG, **changes}))
    with torch.no_grad():
        for t in [*cam.parameters(), *cam.buffers()]:
            if t.is_floating_point():
                t.add_(torch.rand_like(t))
    save_cam_model(path, cam)
    return cam


def test_every_encoder_weight_comes_from_the_cam_vit(tmp_path: Path) -> None:
    cam = _trained_looking_cam(tmp_path / "cam.safetensors")
    seg = init_encoder_from_cam(build_segmenter(SegConfig(**TINY_SEG)), tmp_path / "cam.safetensors")
    vit, enc = cam.backbone.vit.state_dict(), seg.encoder.state_dict()
    assert set(vit) == set(enc)
    for key in sorted(set(enc) - {"cls_token", "pos_embed"}):
        torch.testing.assert_close(enc[key], vit[key], rtol=0, atol=0, msg=key)
    torch.testing.assert_close(enc["cls_token"], vit["cls_token"].mean(1, keepdim=True))
    torch.testing.assert_close(enc["pos_embed"][:, 0], vit["pos_embed"][:, :3].mean(1))
    torch.testing.assert_close(enc["pos_embed"][:, 1:], vit["pos_embed"][:, 3:], rtol=0, atol=0)


def test_position_grid_follows_the_segmenter_crop(tmp_path: Path) -> None:
    cam = _trained_looking_cam(tmp_path / "cam.safetensors")
    seg = build_segmenter(SegConfig(**{**TINY_SEG, "image_size": 48}))
    state = encoder_state_from_cam(tmp_path / "cam.safetensors", seg)
    pos = cam.backbone.vit.pos_embed.detach()
    pos = torch.cat((pos[:, :3].mean(1, keepdim=True), pos[:, 3:]), dim=1)
    assert state["pos_embed"].shape == (1, 1 + 36, 32)
    torch.testing.assert_close(state["pos_embed"], resize_pos_grid(pos, (4, 4), (6, 6), 1))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"depth": 2}, "same embed_dim, depth"),
        ({"embed_dim": 64, "num_heads": 4}, "same embed_dim, depth"),
        ({"backbone": "deit_small_patch16_224"}, "is not the segmenter's"),
        ({"stem": "patch"}, "is not the segmenter's"),
    ],
)
def test_another_architecture_is_refused_naming_the_file(tmp_path: Path, change: dict, message: str) -> None:
    path = tmp_path / "cam.safetensors"
    _trained_looking_cam(path, **change)
    seg = build_segmenter(SegConfig(**TINY_SEG))
    with pytest.raises(InputError, match=message) as err:
        init_encoder_from_cam(seg, path)
    assert err.value.path == path


def test_other_files_are_refused(tmp_path: Path) -> None:
    seg = build_segmenter(SegConfig(**TINY_SEG))
    save_segmenter(tmp_path / "seg.safetensors", seg)
    with pytest.raises(InputError, match="not a WeakTr CAM checkpoint"):
        init_encoder_from_cam(seg, tmp_path / "seg.safetensors")
    with pytest.raises(InputError, match="checkpoint not found"):
        init_encoder_from_cam(seg, tmp_path / "none.safetensors")


def test_train_seg_starts_from_the_run_cam_model(demo: DatasetInfo, tmp_path: Path) -> None:  # noqa: F811
    ctx = tiny_ctx(demo, tmp_path / "run", "seg_train.pretrained=cam")
    with pytest.raises(InputError, match="checkpoint not found") as err:
        ts.SegTrainer(ctx, SegConfig.from_dict(ctx.cfg.seg_model), demo.path(demo.masks), None)
    assert err.value.path == ctx.layout.cam_model

    ctx.layout.cam_model.parent.mkdir(parents=True, exist_ok=True)
    cam = _trained_looking_cam(ctx.layout.cam_model)
    trainer = ts.SegTrainer(ctx, SegConfig.from_dict(ctx.cfg.seg_model), demo.path(demo.masks), None)
    block = trainer.seg_model.encoder.blocks[0].attn.qkv.weight
    torch.testing.assert_close(block, cam.backbone.vit.blocks[0].attn.qkv.weight, rtol=0, atol=0)
