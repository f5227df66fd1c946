"""Resuming from a saved training state continues bit-identically."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from weaktr.engine.optim import build_adamw, build_sgd
from weaktr.engine.state import load_training_state, save_training_state
from weaktr.errors import InputError


def _model() -> nn.Module:
    torch.manual_seed(0)
    # dropout makes the steps consume the torch RNG, so a resume must restore it too
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(0.3), nn.LayerNorm(16), nn.Linear(16, 3))


def _optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    if kind == "adamw":
        return build_adamw(model.parameters(), lr=1e-2, weight_decay=0.03)
    groups = [{"params": model[0].parameters(), "lr_scale": 0.1}, {"params": model[3:].parameters()}]
    return build_sgd(groups, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-4)


def _steps(model: nn.Module, opt: torch.optim.Optimizer, n: int) -> None:
    for _ in range(n):
        # inputs drawn from torch, numpy and python RNGs: all three must be restored
        x = torch.randn(4, 6) + float(np.random.rand()) + random.random()
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_resume_is_bit_identical(kind, tmp_path):
    for seed_fn in (random.seed, np.random.seed, torch.manual_seed):
        seed_fn(1)
    model = _model()
    opt = _optimizer(kind, model)
    _steps(model, opt, 2)
    save_training_state(tmp_path / "state.safetensors", model, opt, epoch=1, step=2, extra={"best": 0.5})
    _steps(model, opt, 2)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    for seed_fn in (random.seed, np.random.seed, torch.manual_seed):
        seed_fn(99)  # scramble: the load must bring the RNGs back
    fresh = _model()
    fresh_opt = _optimizer(kind, fresh)
    info = load_training_state(tmp_path / "state.safetensors", fresh, fresh_opt)
    assert (info["epoch"], info["step"], info["extra"]) == (1, 2, {"best": 0.5})
    _steps(fresh, fresh_opt, 2)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, straight[key]), key
    if kind == "adamw":
        assert fresh_opt.param_groups[0]["betas"] == (0.9, 0.999)
    else:
        assert fresh_opt.param_groups[0]["lr_scale"] == 0.1


def test_generator_state_round_trips(tmp_path):
    model = _model()
    opt = build_adamw(model.parameters(), lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(3)
    from weaktr.engine.state import capture_rng_states

    save_training_state(tmp_path / "s.safetensors", model, opt, 0, 0, capture_rng_states({"loader": gen}))
    expected = torch.randperm(10, generator=gen)
    other = torch.Generator().manual_seed(5)
    load_training_state(tmp_path / "s.safetensors", model, opt, generators={"loader": other})
    assert torch.equal(torch.randperm(10, generator=other), expected)


def test_bad_files_are_input_errors(tmp_path):
    model = _model()
    with pytest.raises(InputError, match="not found"):
        load_training_state(tmp_path / "missing.safetensors", model)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError):
        load_training_state(tmp_path / "junk.safetensors", model)
