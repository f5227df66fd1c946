"""The fused CPU inference forward of plain ViT blocks equals the blocks' own forward."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.models.vision_transformer import Block
from torch import nn

import weaktr.evaluation.inference as inf
from weaktr.models.cpu_blocks import FusedBlock, is_plain_block
from weaktr.models.segmenter import SegConfig, build_segmenter

pytestmark = pytest.mark.skipif(
    not is_plain_block(Block(64, 2, qkv_bias=True)), reason="torch without oneDNN"
)


def _block(**kw: object) -> Block:
    torch.manual_seed(0)
    blk = Block(64, 2, qkv_bias=True, norm_layer=nn.LayerNorm, **kw).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm affines, so every fused epilogue matters
        for p in blk.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return blk


def test_only_plain_blocks_are_fused() -> None:
    assert is_plain_block(_block())
    assert not is_plain_block(_block(init_values=1e-5))  # layer scale
    assert not is_plain_block(_block(qk_norm=True))
    assert not is_plain_block(_block(act_layer=nn.ReLU))
    assert not is_plain_block(Block(64, 2, qkv_bias=False))  # no bias to fuse
    model = build_segmenter(SegConfig(n_cls=5, image_size=32, embed_dim=64, depth=2, num_heads=2))
    assert all(is_plain_block(b) for b in [*model.encoder.blocks, *model.decoder.blocks])


@pytest.mark.parametrize("n", [1, 3])
def test_fp32_equals_the_block(n: int) -> None:
    blk = _block()
    x = torch.randn(n, 37, 64)
    with torch.no_grad():
        torch.testing.assert_close(FusedBlock(blk)(x), blk(x), atol=1e-5, rtol=1e-5)
        # the packed weights are a snapshot, taken for any row count (the hint only picks a layout)
        torch.testing.assert_close(FusedBlock(blk, rows_hint=7)(x), blk(x), atol=1e-5, rtol=1e-5)


def test_bf16_matches_the_bf16_block_within_its_rounding() -> None:
    blk = _block()
    low = copy.deepcopy(blk).to(torch.bfloat16)
    x = torch.randn(3, 37, 64)
    with torch.no_grad():
        ref = blk(x)
        fused = FusedBlock(low)(x.bfloat16()).float()
        eager = low(x.bfloat16()).float()
    assert fused.dtype == torch.float32
    # the fused bf16 path is as far from fp32 as timm's own bf16 block, not further
    assert (fused - ref).abs().max() <= 1.5 * (eager - ref).abs().max() + 1e-3
    torch.testing.assert_close(fused, eager, atol=0.05, rtol=0.02)


def test_training_or_grad_falls_back_to_the_block() -> None:
    blk = _block(drop_path=0.5, proj_drop=0.5).train()
    x = torch.randn(2, 10, 64, requires_grad=True)
    torch.manual_seed(1)
    out = FusedBlock(blk)(x)
    torch.manual_seed(1)
    torch.testing.assert_close(out, blk(x))  # same dropout draws: the block's own forward ran
    out.sum().backward()
    assert x.grad is not None


def test_cpu_inference_context_fuses_fp32_blocks_and_restores_them(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_segmenter(SegConfig(n_cls=5, image_size=32, embed_dim=64, depth=2, num_heads=2)).eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        ref = model.forward_masks(x[:, :, :32, :32])
    calls: list[int] = []

    class Spy(FusedBlock):
        def __call__(self, t: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            return super().__call__(t)

    monkeypatch.setattr(inf, "FusedBlock", Spy)
    settings = inf.InferenceSettings(window=32, stride=16, window_batch=16)
    (fused,) = inf.sliding_window_logits(model, x, settings)
    blocks = [*model.encoder.blocks, *model.decoder.blocks]
    assert len(calls) == len(blocks)  # one batch of windows through every block
    assert not any("forward" in vars(b) for b in blocks)
    with torch.no_grad(), inf.inference_precision(model, settings, torch.device("cpu")):
        torch.testing.assert_close(model.forward_masks(x[:, :, :32, :32]), ref, atol=1e-5, rtol=1e-5)
    assert fused.shape == (2, 5, 40, 56)
