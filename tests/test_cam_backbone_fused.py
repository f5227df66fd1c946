"""The CAM network's fused float32 CPU path: prepared once under a policy, the same captures as the
plain blocks, and it steps aside whenever it must (policy off, self-check failed, autocast, gradients,
changed weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CAM

from weaktr.cam.generate import CamGenSettings, generate_cams
from weaktr.config import load_config
from weaktr.data.demo import generate_demo
from weaktr.models import cpu_blocks
from weaktr.models.cam import CAMConfig, CAMNet, build_cam_model
from weaktr.models.encoder import BackboneOutput
from weaktr.models.execution import ExecutionPolicy
from weaktr.runtime.context import open_run

CPU = torch.device("cpu")
needs_fused = pytest.mark.skipif(
    cpu_blocks.fused_problem(torch.float32) is not None,
    reason=f"no fused float32 forward here: {cpu_blocks.fused_problem(torch.float32)}",
)


def _model() -> CAMNet:
    torch.manual_seed(0)
    model = build_cam_model(CAMConfig(**{**TINY_CAM, "num_heads": 1})).eval()  # head size 64, as DeiT's
    with torch.no_grad():  # non-zero biases and LayerNorm affines, so every fused epilogue matters
        for p in model.backbone.vit.blocks.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _policy(fused: bool = True, bf16: bool = False) -> ExecutionPolicy:
    return ExecutionPolicy.cam_inference(CPU, bf16, fused)


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The blocks whose fused maps forward runs from now on."""
    calls: list[object] = []
    real = cpu_blocks.FusedBlock.forward_with_maps

    def counting(self: cpu_blocks.FusedBlock, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self._fast(args[0]):
            calls.append(self.plain)
        return real(self, *args)

    monkeypatch.setattr(cpu_blocks.FusedBlock, "forward_with_maps", counting)
    return calls


def _captures(out: BackboneOutput) -> list[torch.Tensor]:
    return [out.tokens, *out.attn, *out.attn_out, *out.head_out]


def _assert_close(a: BackboneOutput, b: BackboneOutput) -> None:
    for x, y in zip(_captures(a), _captures(b), strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def _clone(out: BackboneOutput) -> BackboneOutput:
    """The captures copied out of the kept attention buffer, which the next call overwrites."""
    lists = ([t.clone() for t in ts] for ts in (out.attn, out.attn_out, out.head_out))
    return BackboneOutput(out.tokens.clone(), *lists, out.grid)


@needs_fused
def test_fused_captures_equal_the_plain_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _model(), torch.randn(2, 3, 48, 64)
    plain_blocks = list(model.backbone.vit.blocks)
    calls = _spy(monkeypatch)
    with torch.inference_mode():
        plain = model.backbone(x)
    model.prepare_inference(_policy())
    assert all(isinstance(b, cpu_blocks.FusedBlock) for b in model.backbone.vit.blocks)
    with torch.inference_mode():
        fused = model.backbone(x)
    assert calls == plain_blocks
    _assert_close(fused, plain)


def test_preparing_keeps_the_state_keys_and_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-ins hold the blocks' own parameters under their names: a prepared network saves,
    loads and trains exactly as before."""
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    model.prepare_inference(_policy())
    assert list(model.state_dict()) == list(before) and list(model.parameters()) == params
    model.load_state_dict(before)
    model.prepare_inference(_policy(fused=False))  # switched off: the blocks themselves again
    assert not any(isinstance(b, cpu_blocks.StandIn) for b in model.backbone.vit.blocks)


@needs_fused
def test_changed_weights_are_packed_again() -> None:
    model, x = _model().prepare_inference(_policy()), torch.randn(1, 3, 32, 32)
    block = model.backbone.vit.blocks[1]
    with torch.inference_mode():
        model.backbone(x)
    first = block._packed
    with torch.no_grad():
        block.mlp.fc2.bias.add_(1.0)  # an optimiser step does this, in place
    with torch.inference_mode():
        fused = _clone(model.backbone(x))
    again = block._packed
    plain = _model()
    with torch.no_grad():
        plain.backbone.vit.blocks[1].mlp.fc2.bias.add_(1.0)
    with torch.inference_mode():
        want = plain.backbone(x)
    assert first is not None and again is not None and again[1] is not first[1]
    _assert_close(fused, want)


def test_the_plain_blocks_run_when_switched_off_or_not_float32_inference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, x = _model(), torch.randn(1, 3, 32, 32)
    cpu_blocks.fused_problem(torch.float32)  # the self-check (if any) before counting
    calls = _spy(monkeypatch)
    model.prepare_inference(_policy())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.backbone(x)
    model.backbone(x)  # gradients on: training
    with torch.inference_mode():
        model.prepare_inference(_policy(bf16=True))(torch.randn(1, 3, 32, 32))  # bf16 backbone: autocast
    assert calls == []
    monkeypatch.setenv("WEAKTR_FUSED_CPU", "0")
    model.prepare_inference(_policy())  # the environment switch is read into the policy
    with torch.inference_mode():
        model.backbone(x)
    assert calls == [] and not any(isinstance(b, cpu_blocks.StandIn) for b in model.backbone.vit.blocks)


def test_a_failed_self_check_falls_back_to_the_plain_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _model(), torch.randn(1, 3, 32, 32)
    monkeypatch.setattr(cpu_blocks, "_verdicts", {torch.float32: "TypeError: simulated changed op"})
    with torch.inference_mode():
        plain = _clone(model.backbone(x))
        model.prepare_inference(_policy())
        fused = model.backbone(x)
    assert not any(isinstance(b, cpu_blocks.StandIn) for b in model.backbone.vit.blocks)
    for a, b in zip(_captures(fused), _captures(plain), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@needs_fused
def test_generated_cams_agree_with_the_plain_path(tmp_path: Path) -> None:
    model = _model()
    rng = np.random.default_rng(0)
    items = [(f"im{i}", rng.integers(0, 255, (40, 56, 3), dtype=np.uint8), [1, 3]) for i in range(2)]
    cams = {}
    for fused in (False, True):
        out = tmp_path / str(fused)
        model.prepare_inference(_policy(fused))
        generate_cams(model, items, out, CamGenSettings((1.0, 1.2)), CPU, progress=False)
        cams[fused] = [np.load(out / f"im{i}.npz")["cams"] for i in range(2)]
    for a, b in zip(cams[False], cams[True], strict=True):
        np.testing.assert_allclose(a, b, atol=2e-3)  # stored as float16


@pytest.mark.parametrize("on", [True, False])
def test_the_config_switches_become_the_run_policies(on: bool, tmp_path: Path) -> None:
    """``cam_gen.fused_cpu`` and ``predict.fused_cpu`` are read once, into the run's policies, and the
    CAM generation stage prepares its network under its policy."""
    import weaktr.stages.gen_cam as gen_cam_stage

    generate_demo(tmp_path / "data", n_train=2, n_val=1, size=32, num_classes=3, seed=0)
    flag = str(on).lower()
    cfg = load_config(
        "demo",
        [
            f"data.dataset={tmp_path / 'data' / 'dataset.yaml'}",
            f"run_dir={tmp_path / 'run'}",
            "device=cpu",
            f"cam_gen.fused_cpu={flag}",
            f"predict.fused_cpu={flag}",
        ],
    )
    ctx = open_run(cfg)
    ex = ctx.execution
    assert ex.cam_gen.fused_cpu is on and ex.predict.fused_cpu is on and ex.seg_eval.fused_cpu is on
    model = build_cam_model(CAMConfig(**{**TINY_CAM, "num_classes": 3}))
    gen_cam_stage.write_split_cams(ctx, model, "train", tmp_path / "cams", [1.0], progress=False)
    assert model.execution == ex.cam_gen
    fusable = on and cpu_blocks.fused_problem(torch.float32) is None
    assert all(isinstance(b, cpu_blocks.FusedBlock) is fusable for b in model.backbone.vit.blocks)
