"""Schedules match the authors' (timm cosine stepped after each epoch; per-iteration poly)."""

from __future__ import annotations

import math

import pytest
import torch
from timm.scheduler import CosineLRScheduler

from weaktr.engine.optim import build_adamw, build_sgd, cosine_lr, poly_lr, scaled_lr, set_lr


@pytest.mark.parametrize("base", [6e-4, 2e-4])
def test_cosine_matches_timm_stepped_after_each_epoch(base):
    lr = scaled_lr(base, 64)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = CosineLRScheduler(
        opt, t_initial=60, lr_min=1e-5, warmup_t=5, warmup_lr_init=1e-6, warmup_prefix=False, cycle_limit=1
    )
    for epoch in range(60):
        used = opt.param_groups[0]["lr"]  # what this epoch trains with
        assert cosine_lr(epoch, 60, lr, 5, 1e-6, 1e-5) == pytest.approx(used, rel=1e-12, abs=0)
        sched.step(epoch)  # the authors step with the finished epoch's index


def test_cosine_landmarks():
    lr = scaled_lr(6e-4, 64)
    assert lr == pytest.approx(7.5e-5)
    assert cosine_lr(0, 60, lr, 5, 1e-6, 1e-5) == cosine_lr(1, 60, lr, 5, 1e-6, 1e-5) == 1e-6
    assert cosine_lr(6, 60, lr, 5, 1e-6, 1e-5) == pytest.approx(
        1e-5 + 0.5 * (lr - 1e-5) * (1 + math.cos(math.pi * 5 / 60))
    )
    assert cosine_lr(100, 60, lr, 5, 1e-6, 1e-5) == 1e-5


def test_poly_endpoints_and_middle():
    assert poly_lr(0, 1000, 1e-4, 1e-5, 0.9) == pytest.approx(1e-4)
    assert poly_lr(1000, 1000, 1e-4, 1e-5, 0.9) == pytest.approx(1e-5)
    assert poly_lr(500, 1000, 1e-4, 1e-5, 0.9) == pytest.approx(9e-5 * 0.5**0.9 + 1e-5)
    assert poly_lr(2000, 1000, 1e-4, 1e-5, 0.9) == pytest.approx(1e-5)


def test_adamw_decays_every_parameter():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    opt = build_adamw(model.parameters(), lr=1e-3, weight_decay=0.03)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.03
    assert opt.param_groups[0]["betas"] == (0.9, 0.999) and opt.param_groups[0]["eps"] == 1e-8


def test_set_lr_applies_group_scales():
    enc, dec = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = build_sgd(
        [{"params": enc.parameters(), "lr_scale": 0.1}, {"params": dec.parameters()}],
        lr=1e-4,
        momentum=0.9,
        nesterov=True,
        weight_decay=0.0,
    )
    assert opt.param_groups[0]["nesterov"] is True
    set_lr(opt, poly_lr(0, 10, 1e-4, 1e-5, 0.9))
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5) and opt.param_groups[1]["lr"] == pytest.approx(
        1e-4
    )
