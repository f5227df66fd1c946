"""Parity of the gradient-clipping loss with the authors' GradientClipping (golden case ``gc_loss``)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, load_golden

from weaktr.losses import cell_means, gradient_clipping_loss
from weaktr.stages.train_seg import _Meter

pytestmark = pytest.mark.golden


def _crop_logits(t: dict, sub: dict) -> torch.Tensor:
    """Rebuild a sub-case's logits from the shared int8 codes (exact), as its JSON expression says."""
    _, _, h, w = sub["shape"]
    exp = int(sub["logits"].split("2**(")[1].split(")")[0])
    return (t["logits_codes"][:, :, :h, :w].float() * 2.0**exp).requires_grad_(True)


@pytest.fixture(scope="module")
def golden() -> tuple[dict, dict]:
    return load_golden("gc_loss")


def _run(golden: tuple[dict, dict], name: str):
    t, js = golden
    sub = js["subcases"][name]
    logits = _crop_logits(t, sub)
    labels = t[sub["labels"]]
    loss, stats = gradient_clipping_loss(
        logits, labels, tau=js["tau_start_value"], cell=js["S_patch_size"], ignore_index=js["ignore_index"]
    )
    loss.backward()
    return t, sub, logits, labels, loss, stats


@pytest.mark.parametrize("name", ["clip_active", "clip_inactive", "odd_noclip"])
def test_official_outputs(golden: tuple[dict, dict], name: str) -> None:
    t, sub, logits, labels, loss, stats = _run(golden, name)
    assert_close(loss.detach().reshape(1), t[f"{name}.loss"], name="loss")
    assert_close(stats.global_mean.reshape(1), t[f"{name}.mean_loss"], name="mean_loss")
    assert stats.clip_applied == bool(t[f"{name}.clip_applied"].item()) == sub["clip_applied"]
    rows, cols = t[f"{name}.grad_rows"], t[f"{name}.grad_cols"]
    assert_close(logits.grad[:, :, rows][:, :, :, cols], t[f"{name}.grad_sub"], name="grad_sub")
    if not stats.clip_applied:
        assert torch.equal(stats.keep, labels != 255)


def test_clip_active_cells_and_keep_mask(golden: tuple[dict, dict]) -> None:
    t, sub, logits, labels, loss, stats = _run(golden, "clip_active")
    assert_close(stats.cell_mean, t["clip_active.cell_mean"], name="cell_mean")
    assert_close(stats.thresholds, t["clip_active.thr_cells"], name="thr_cells")
    # discrete at near-ties: allow a handful of flips
    agree = (stats.keep == t["clip_active.grad_keep_mask"].bool()).float().mean().item()
    assert agree >= 0.9999
    g = logits.grad.gather(1, labels.long().clamp(max=logits.shape[1] - 1).unsqueeze(1))[:, 0]
    g = torch.where(labels == 255, torch.zeros_like(g), g)
    assert_close(g, t["clip_active.grad_at_label"], name="grad_at_label")
    n_eq_cell = int((stats.thresholds == stats.cell_mean).sum())
    assert n_eq_cell == sub["cells_with_thr_equal_cell_mean"]
    meter = _Meter()  # the clipped fraction as training logs it
    meter.update(loss.item(), stats, labels, None)
    assert abs(meter.record(False)["clipped_fraction"] - sub["fraction_valid_pixels_clipped"]) < 1e-3


def test_clipped_loss_map_matches(golden: tuple[dict, dict]) -> None:
    """Rebuild the per-pixel clipped map from our thresholds and compare with the official map."""
    t, _, logits, labels, _, stats = _run(golden, "clip_active")
    pixel = torch.nn.functional.cross_entropy(
        logits.detach(), labels.long(), ignore_index=255, reduction="none"
    )
    thr = stats.thresholds.repeat_interleave(120, 0).repeat_interleave(120, 1)
    assert_close(torch.clamp(pixel - thr, max=0) + thr, t["clip_active.loss_map"], name="loss_map")


def test_odd_size_clipping_runs_with_any_size_rule(golden: tuple[dict, dict]) -> None:
    """The official code raises here (O8); ours must run and use partial-cell means over real pixels."""
    t, js = golden
    sub = js["subcases"]["odd_clip_attempt"]
    assert sub["official_result"] == "exception"
    logits = _crop_logits(t, sub)
    labels = t[sub["labels"]]
    S, tau = js["S_patch_size"], js["tau_start_value"]
    loss, stats = gradient_clipping_loss(logits, labels, tau=tau, cell=S)
    loss.backward()
    assert stats.clip_applied
    pixel = torch.nn.functional.cross_entropy(
        logits.detach(), labels.long(), ignore_index=255, reduction="none"
    )
    avg = pixel.mean(0)
    H, W = avg.shape
    nh, nw = -(-H // S), -(-W // S)
    assert stats.cell_mean.shape == (nh, nw)
    for i in range(nh):
        for j in range(nw):
            ref = avg[i * S : (i + 1) * S, j * S : (j + 1) * S].mean()
            assert_close(stats.cell_mean[i, j], ref, tol=1e-5, name=f"cell {i},{j}")
    thr = torch.maximum(stats.cell_mean, pixel.mean())
    full = thr.repeat_interleave(S, 0).repeat_interleave(S, 1)[:H, :W]
    expected = (torch.clamp(pixel - full, max=0) + full).mean()
    assert_close(loss.detach(), expected, name="odd loss")
    assert torch.equal(stats.keep, (pixel <= full) & (labels != 255))
    assert torch.all(logits.grad.abs().sum(1)[~stats.keep] == 0)
    assert torch.equal(cell_means(avg, S), stats.cell_mean)
