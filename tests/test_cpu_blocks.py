"""The fused CPU inference forward of plain ViT blocks equals the blocks' own forward, and checks itself.

Tests that need the fused forward of a dtype skip with the reason its self-check gave on this machine
(bf16 packing needs AVX-512 or AVX-NE-CONVERT); the fallback tests run everywhere.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from timm.models.vision_transformer import Block
from torch import nn

import weaktr.evaluation.inference as inf
from weaktr.models import cpu_blocks
from weaktr.models.cpu_blocks import FusedBlock, StandIn, fused_problem, is_plain_block
from weaktr.models.execution import ExecutionPolicy
from weaktr.models.segmenter import SegConfig, Segmenter, build_segmenter

CPU = torch.device("cpu")


def needs_fused(dtype: torch.dtype) -> pytest.MarkDecorator:
    problem = fused_problem(dtype)
    return pytest.mark.skipif(problem is not None, reason=f"no fused {dtype} forward here: {problem}")


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


@needs_fused(torch.float32)
@pytest.mark.parametrize("n", [1, 3])
def test_fp32_equals_the_block(n: int) -> None:
    blk = _block()
    x = torch.randn(n, 37, 64)
    with torch.no_grad():
        torch.testing.assert_close(FusedBlock(blk)(x), blk(x), atol=1e-5, rtol=1e-5)
        # the packed weights are a snapshot, taken for any row count (the hint only picks a layout)
        torch.testing.assert_close(FusedBlock(blk, rows_hint=7)(x), blk(x), atol=1e-5, rtol=1e-5)


@needs_fused(torch.bfloat16)
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


@needs_fused(torch.float32)
def test_training_or_grad_falls_back_to_the_block() -> None:
    blk = _block(drop_path=0.5, proj_drop=0.5).train()
    x = torch.randn(2, 10, 64, requires_grad=True)
    torch.manual_seed(1)
    out = FusedBlock(blk)(x)
    torch.manual_seed(1)
    torch.testing.assert_close(out, blk(x))  # same dropout draws: the block's own forward ran
    out.sum().backward()
    assert x.grad is not None


def _model() -> Segmenter:
    torch.manual_seed(0)
    return build_segmenter(SegConfig(n_cls=5, image_size=32, embed_dim=64, depth=2, num_heads=2)).eval()


def _policy(fused: bool = True, bf16: bool = False) -> ExecutionPolicy:
    return ExecutionPolicy.seg_inference(CPU, bf16, fused)


def _plain_blocks(model: Segmenter) -> list[nn.Module]:
    return [getattr(b, "plain", b) for b in [*model.encoder.blocks, *model.decoder.blocks]]


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[nn.Module]:
    """The blocks whose fused forward runs from now on (the self-check's own block included)."""
    calls: list[nn.Module] = []
    real = FusedBlock.forward

    def counting(self: FusedBlock, t: torch.Tensor) -> torch.Tensor:
        if self._fast(t):
            calls.append(self.plain)
        return real(self, t)

    monkeypatch.setattr(FusedBlock, "forward", counting)
    return calls


@needs_fused(torch.float32)
def test_preparing_for_inference_fuses_fp32_blocks_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    x = torch.randn(2, 3, 40, 56)
    keys = list(model.state_dict())
    with torch.no_grad():
        ref = model.forward_masks(x[:, :, :32, :32])
    blocks = _plain_blocks(model)
    calls = _spy(monkeypatch)
    model.prepare_inference(_policy())
    settings = inf.InferenceSettings(window=32, stride=16, window_batch=16)
    with torch.no_grad():
        (fused,) = inf.sliding_window_logits(model, x, settings)
    assert calls == blocks  # one batch of windows through every block
    assert list(model.state_dict()) == keys  # the stand-ins keep the blocks' state keys
    with torch.no_grad():
        torch.testing.assert_close(model.forward_masks(x[:, :, :32, :32]), ref, atol=1e-5, rtol=1e-5)
    assert fused.shape == (2, 5, 40, 56)


class _FakeOp:
    """Stands in for ``torch.ops.mkldnn._linear_pointwise`` (and its ``binary`` overload)."""

    def __init__(self, op: object) -> None:
        self.op = op


class _WrongShape(_FakeOp):
    """``_linear_pointwise`` as if its outputs changed: the input comes back instead of x·Wᵀ + b."""

    def __call__(self, x: torch.Tensor, *args: object) -> torch.Tensor:
        return x

    def binary(self, x: torch.Tensor, other: torch.Tensor, *args: object) -> torch.Tensor:
        return other


class _ChangedSignature(_FakeOp):
    """``_linear_pointwise`` as if a release renamed its arguments."""

    def __call__(self, *args: object) -> torch.Tensor:
        raise TypeError("_linear_pointwise() missing 1 required positional argument: 'scalars'")

    binary = __call__


class _Drifts(_FakeOp):
    """The real op, off by 1 %: runs, right shapes, wrong numbers."""

    def __call__(self, *args: object) -> torch.Tensor:
        return self.op(*args) * 1.01

    def binary(self, *args: object) -> torch.Tensor:
        return self.op.binary(*args) * 1.01


@pytest.mark.parametrize(
    ("fake", "reason"),
    [(_ChangedSignature, "TypeError"), (_WrongShape, "RuntimeError"), (_Drifts, "differs from the plain")],
)
def test_a_changed_op_falls_back_with_one_warning(
    fake: type, reason: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = _model()
    x = torch.randn(2, 3, 40, 56)
    settings = inf.InferenceSettings(window=32, stride=16, window_batch=16)
    with torch.no_grad():
        ref = model.forward_masks(x[:, :, :32, :32])
    monkeypatch.setattr(cpu_blocks, "_verdicts", {})  # a fresh process's self-checks
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", fake(torch.ops.mkldnn._linear_pointwise))
    calls = _spy(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="weaktr"):
        model.prepare_inference(_policy())
        (first,) = inf.sliding_window_logits(model, x, settings)
        (again,) = inf.sliding_window_logits(model, x, settings)
        model.prepare_inference(_policy())
        with torch.no_grad():
            out = model.forward_masks(x[:, :, :32, :32])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "float32" in warnings[0] and reason in warnings[0]
    assert fused_problem(torch.float32) is not None
    assert not [b for b in calls if b in _plain_blocks(model)]  # the self-check's block may be there
    assert not any(isinstance(b, StandIn) for b in [*model.encoder.blocks, *model.decoder.blocks])
    torch.testing.assert_close(out, ref)  # the plain forward, exactly
    torch.testing.assert_close(first, again)


def test_policy_switch_and_environment_turn_the_fused_forward_off(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    x = torch.randn(1, 3, 32, 32)
    on = inf.InferenceSettings(window=32, stride=16)
    fused_problem(torch.float32)  # the self-check (if any) before counting
    calls = _spy(monkeypatch)
    blocks = _plain_blocks(model)
    inf.sliding_window_logits(model.prepare_inference(_policy(fused=False)), x, on)
    assert calls == []
    monkeypatch.setenv("WEAKTR_FUSED_CPU", "0")
    assert not _policy().fused_cpu  # read once, into the policy
    inf.sliding_window_logits(model.prepare_inference(_policy()), x, on)
    assert calls == []
    monkeypatch.setenv("WEAKTR_FUSED_CPU", "1")
    with torch.no_grad():
        inf.sliding_window_logits(model.prepare_inference(_policy()), x, on)
    assert calls == (blocks if fused_problem(torch.float32) is None else [])


@needs_fused(torch.float32)
def test_a_bf16_only_failure_keeps_the_fp32_decoder_fused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What an AVX2-only CPU does (simulated, so every machine runs it): bf16 packing fails, the bf16
    encoder runs its plain forward, the fp32 decoder stays fused, one warning names bfloat16."""
    real = torch.ops.mkldnn._reorder_linear_weight

    def no_bf16(weight: torch.Tensor, *args: object) -> torch.Tensor:
        if weight.dtype == torch.bfloat16:
            raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx512bw")
        return real(weight, *args)

    model = _model()
    x = torch.randn(2, 3, 40, 56)
    settings = inf.InferenceSettings(window=32, stride=16, window_batch=16)
    with torch.no_grad():
        (plain,) = inf.sliding_window_logits(model.prepare_inference(_policy(False, True)), x, settings)
    decoder = _plain_blocks(model)[len(model.encoder.blocks) :]
    monkeypatch.setattr(cpu_blocks, "_verdicts", {})
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", no_bf16)
    calls = _spy(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="weaktr"):
        fused_problem(torch.float32)
        calls.clear()  # the fp32 self-check's block
        with torch.no_grad():
            (out,) = inf.sliding_window_logits(model.prepare_inference(_policy(bf16=True)), x, settings)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "bfloat16" in warnings[0] and "avx512bw" in warnings[0]
    assert [b for b in calls if b in _plain_blocks(model)] == decoder  # not the self-check's block
    torch.testing.assert_close(out, plain, atol=1e-4, rtol=1e-4)


def test_bf16_blocks_hand_each_other_bf16_with_the_same_bits() -> None:
    blocks = nn.ModuleList(_block() for _ in range(3))
    with torch.no_grad():
        for i, blk in enumerate(blocks):  # three different blocks
            blk.mlp.fc2.bias.add_(0.1 * i)
    cpu_blocks.prepare_blocks(blocks, fused=False, bf16=True)
    assert [blk.feeds_bf16 for blk in blocks] == [True, True, False]
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        h, dtypes = x, []
        for blk in blocks:
            h = blk(h)
            dtypes.append(h.dtype)
        chained = h
        for blk in blocks:  # every block casting back to float32, as before the chain existed
            blk.feeds_bf16 = False
        h = x
        for blk in blocks:
            h = blk(h)
    assert dtypes == [torch.bfloat16, torch.bfloat16, torch.float32]
    assert torch.equal(chained, h)  # bf16 -> float32 -> bf16 is exact
