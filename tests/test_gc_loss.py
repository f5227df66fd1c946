"""Behaviour of the gradient-clipping loss on toy maps (spec §2.3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from weaktr.losses import cell_means, expand_cells, gradient_clipping_loss


def _toy(b: int = 2, c: int = 4, h: int = 8, w: int = 8, seed: int = 0, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, c, h, w, generator=g) * scale).requires_grad_(True)
    target = torch.randint(0, c, (b, h, w), generator=g)
    target[:, :2, :3] = 255
    return logits, target


def _pixel(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.detach(), target, ignore_index=255, reduction="none")


def test_gate_above_tau_returns_plain_mean() -> None:
    logits, target = _toy()
    pixel = _pixel(logits, target)
    tau = pixel.mean().item() - 1e-3
    loss, stats = gradient_clipping_loss(logits, target, tau=tau, cell=4)
    assert not stats.clip_applied and stats.cell_mean is None
    torch.testing.assert_close(loss.detach(), pixel.mean())
    assert torch.equal(stats.keep, target != 255)


def test_thresholds_are_max_of_batch_cell_mean_and_global_mean() -> None:
    logits, target = _toy()
    pixel = _pixel(logits, target)
    loss, stats = gradient_clipping_loss(logits, target, tau=1e9, cell=4)
    avg = pixel.mean(0)
    cells = avg.reshape(2, 4, 2, 4).mean(dim=(1, 3))
    torch.testing.assert_close(stats.cell_mean, cells)
    torch.testing.assert_close(stats.thresholds, torch.maximum(cells, pixel.mean()))
    thr = expand_cells(stats.thresholds, 4, (8, 8))
    expected = torch.minimum(pixel, thr).sum() / pixel.numel()  # ignored pixels stay in the denominator
    torch.testing.assert_close(loss.detach(), expected)
    assert not torch.allclose(loss.detach(), torch.minimum(pixel, thr)[target != 255].mean())


def test_gradient_zero_on_clipped_pixels_and_kept_on_kept_ones() -> None:
    logits, target = _toy(seed=1)
    loss, stats = gradient_clipping_loss(logits, target, tau=1e9, cell=4)
    loss.backward()
    per_pixel = logits.grad.abs().sum(1)
    assert stats.clip_applied and 0 < int(stats.keep.sum()) < int(stats.valid.sum())
    assert torch.all(per_pixel[~stats.keep] == 0)
    assert torch.all(per_pixel[stats.keep] > 0)
    pixel = _pixel(logits, target)
    thr = expand_cells(stats.thresholds, 4, (8, 8))
    assert torch.equal(stats.keep, (pixel <= thr) & (target != 255))


def test_equality_with_threshold_keeps_gradient() -> None:
    """With 1×1 cells every pixel above g has thr == its own loss: Eq. 14's <= keeps all of them."""
    logits, target = _toy(seed=2)
    loss, stats = gradient_clipping_loss(logits, target, tau=1e9, cell=1, mode="per_image")
    loss.backward()
    valid = target != 255
    assert torch.equal(stats.keep, valid)
    assert torch.all(logits.grad.abs().sum(1)[valid] > 0)


def test_odd_sizes_use_partial_cell_means() -> None:
    torch.manual_seed(0)
    m = torch.rand(7, 11)
    cells = cell_means(m, 3)
    assert cells.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            torch.testing.assert_close(cells[i, j], m[3 * i : 3 * i + 3, 3 * j : 3 * j + 3].mean())
    torch.testing.assert_close(cell_means(m[:6, :9], 3), F.avg_pool2d(m[None, None, :6, :9], 3)[0, 0])
    logits, target = _toy(h=7, w=11, seed=3)
    loss, stats = gradient_clipping_loss(logits, target, tau=1e9, cell=3)
    loss.backward()
    assert stats.thresholds.shape == (3, 4)
    assert torch.all(logits.grad.abs().sum(1)[~stats.keep] == 0)


def test_per_image_mode_equals_batch_mode_on_each_image() -> None:
    logits, target = _toy(b=2, h=9, w=6, seed=4)
    loss, stats = gradient_clipping_loss(logits, target, tau=1e9, cell=4, mode="per_image")
    assert stats.thresholds.shape == (2, 3, 2)
    parts = [gradient_clipping_loss(logits[b : b + 1], target[b : b + 1], tau=1e9, cell=4) for b in range(2)]
    torch.testing.assert_close(loss, (parts[0][0] + parts[1][0]) / 2)
    for b in range(2):
        torch.testing.assert_close(stats.thresholds[b], parts[b][1].thresholds)
        assert torch.equal(stats.keep[b], parts[b][1].keep[0])
    batch_loss, _ = gradient_clipping_loss(logits, target, tau=1e9, cell=4)
    assert not torch.allclose(batch_loss, loss)


def test_naive_mode_is_plain_ce_over_all_pixels() -> None:
    logits, target = _toy(seed=5)
    loss, stats = gradient_clipping_loss(logits, target, tau=1e9, cell=4, mode="naive")
    torch.testing.assert_close(loss.detach(), _pixel(logits, target).mean())
    assert not stats.clip_applied
    with pytest.raises(ValueError, match="mode"):
        gradient_clipping_loss(logits, target, mode="paper")  # type: ignore[arg-type]


def test_kept_precision_against_gt() -> None:
    logits, target = _toy(seed=6)
    _, stats = gradient_clipping_loss(logits, target, tau=1e9, cell=4)
    assert stats.kept_precision(target, target) == 1.0
    gt = target.clone()
    gt[stats.keep] = (gt[stats.keep] + 1) % 4
    assert stats.kept_precision(target, gt) == 0.0
