"""The CAM backbone's fused float32 CPU path: same captures as the plain blocks, and it steps aside
whenever it must (switched off, self-check failed, autocast, gradients, changed weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CAM

import weaktr.stages.gen_cam as gen_cam_stage
from weaktr.cam.generate import generate_cams
from weaktr.config import load_config
from weaktr.data.demo import generate_demo
from weaktr.evaluation.inference import InferenceSettings
from weaktr.models import cpu_blocks
from weaktr.models.backbone import BackboneOutput
from weaktr.models.cam import CAMConfig, CAMNet, build_cam_model
from weaktr.runtime.context import open_run

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


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    calls: list[object] = []
    real = cpu_blocks.FusedBlock.with_maps

    def counting(self: cpu_blocks.FusedBlock, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        calls.append(self.block)
        return real(self, *args)

    monkeypatch.setattr(cpu_blocks.FusedBlock, "with_maps", counting)
    return calls


def _captures(out: BackboneOutput) -> list[torch.Tensor]:
    return [out.tokens, *out.attn, *out.attn_out, *out.head_out]


def _assert_close(a: BackboneOutput, b: BackboneOutput) -> None:
    for x, y in zip(_captures(a), _captures(b), strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


@needs_fused
def test_fused_captures_equal_the_plain_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _model(), torch.randn(2, 3, 48, 64)
    calls = _spy(monkeypatch)
    with torch.inference_mode():
        plain = model.backbone(x)  # fresh maps: the fused call below writes into the kept buffer
        assert calls == []
        fused = model.backbone(x, reuse_buffers=True, fused_cpu=True)
    assert calls == list(model.backbone.vit.blocks)
    _assert_close(fused, plain)


@needs_fused
def test_changed_weights_are_packed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _model(), torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        model.backbone(x, fused_cpu=True)
    first = model.backbone._fused
    with torch.no_grad():
        model.backbone.vit.blocks[1].mlp.fc2.bias.add_(1.0)  # an optimiser step does this, in place
    with torch.inference_mode():
        fused = model.backbone(x, fused_cpu=True)
        again = model.backbone._fused
        plain = model.backbone(x)
    assert first is not None and again is not None and again[1] is not first[1]
    _assert_close(fused, plain)


def test_the_plain_blocks_run_when_switched_off_or_not_float32_inference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, x = _model(), torch.randn(1, 3, 32, 32)
    cpu_blocks.fused_problem(torch.float32)  # the self-check (if any) before counting
    calls = _spy(monkeypatch)
    with torch.inference_mode():
        model.backbone(x, fused_cpu=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model.backbone(x, fused_cpu=True)
    model.backbone(x, fused_cpu=True)  # gradients on: training
    monkeypatch.setenv("WEAKTR_FUSED_CPU", "0")
    with torch.inference_mode():
        model.backbone(x, fused_cpu=True)
    assert calls == []


def test_a_failed_self_check_falls_back_to_the_plain_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _model(), torch.randn(1, 3, 32, 32)
    monkeypatch.setattr(cpu_blocks, "_verdicts", {torch.float32: "TypeError: simulated changed op"})
    calls = _spy(monkeypatch)
    with torch.inference_mode():
        fused = model.backbone(x, fused_cpu=True)
        plain = model.backbone(x)
    assert calls == []
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
        half = (0.5, 0.5, 0.5)
        generate_cams(model, items, out, [1.0, 1.2], half, half, torch.device("cpu"), fused_cpu=fused)
        cams[fused] = [np.load(out / f"im{i}.npz")["cams"] for i in range(2)]
    for a, b in zip(cams[False], cams[True], strict=True):
        np.testing.assert_allclose(a, b, atol=2e-3)  # stored as float16


@pytest.mark.parametrize("on", [True, False])
def test_the_config_switches_reach_both_inference_paths(
    on: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cam_gen.fused_cpu`` reaches the stages' CAM generator, ``predict.fused_cpu`` the segmenter's."""
    generate_demo(tmp_path / "data", n_train=2, n_val=1, size=32, n_classes=3, seed=0)
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
    assert InferenceSettings.from_config(cfg.predict).fused_cpu is on
    seen: list[bool] = []

    def fake_generate(*args: object, fused_cpu: bool, **kwargs: object) -> int:
        seen.append(fused_cpu)
        return 0

    monkeypatch.setattr(gen_cam_stage, "generate_cams", fake_generate)
    gen_cam_stage.write_split_cams(open_run(cfg), _model(), "train", tmp_path / "cams", [1.0])
    assert seen == [on]
