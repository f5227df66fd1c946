"""The gradient-clipping loss of online retraining (spec §2.3), in the authors' and the paper's forms.

The per-pixel cross-entropy is the "gradient" of the paper. Pixels whose loss exceeds the larger of
their S×S cell mean and the global mean contribute a constant (zero gradient), so the segmenter learns
from the confident part of the noisy CAM seeds. The authors' code computes cells on the batch-averaged
map and shares the thresholds across the batch; the paper describes per-image cells. Both reduce by the
mean over *all* B·H·W pixels (ignored pixels stay in the denominator), as the authors' code does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
GCMode = Literal["batch", "per_image", "naive"]


@dataclass
class GCStats:
    """What training logs: the gate input, whether clipping ran, and which pixels kept their gradient."""

    global_mean: torch.Tensor  # scalar g over all B·H·W pixels (ignored ones count as 0)
    clip_applied: bool  # whether any clipping ran (batch gate: g <= tau)
    keep: torch.Tensor  # (B, H, W) bool: valid pixels whose loss <= threshold (all valid when unclipped)
    valid: torch.Tensor  # (B, H, W) bool: pixels whose label is not ignored
    cell_mean: torch.Tensor | None  # (nh, nw) batch mode, (B, nh, nw) per-image mode; None if unclipped
    thresholds: torch.Tensor | None  # same shape as cell_mean: max(cell mean, global mean)

    def kept_precision(
        self, target: torch.Tensor, gt: torch.Tensor, ignore_index: int = IGNORE_INDEX
    ) -> float:
        """Precision of the kept pseudo-label pixels against ground truth (pixels with GT ignore excluded)."""
        m = self.keep & (gt != ignore_index)
        n = int(m.sum())
        return float("nan") if n == 0 else float((target[m] == gt[m]).sum()) / n


def cell_means(loss_map: torch.Tensor, cell: int) -> torch.Tensor:
    """Mean of (..., H, W) over non-overlapping cell×cell tiles anchored top-left.

    Partial edge tiles (when ``cell`` does not divide H or W) get the mean over the real pixels they
    hold, the project's any-size rule; with full tiles this is exactly avg_pool2d(kernel=stride=cell).
    """
    H, W = loss_map.shape[-2:]
    lead = loss_map.shape[:-2]
    x = loss_map.reshape(-1, 1, H, W)
    ph, pw = (-H) % cell, (-W) % cell
    pooled = F.avg_pool2d(F.pad(x, (0, pw, 0, ph)), cell, cell)
    if ph or pw:
        ones = F.pad(torch.ones(1, 1, H, W, dtype=x.dtype, device=x.device), (0, pw, 0, ph))
        frac = F.avg_pool2d(ones, cell, cell)  # real-pixel fraction of each tile
        pooled = pooled / frac
    return pooled.reshape(*lead, *pooled.shape[-2:])


def expand_cells(cells: torch.Tensor, cell: int, size: tuple[int, int]) -> torch.Tensor:
    """Broadcast per-tile values back to pixels, cropping the partial edge tiles."""
    full = cells.repeat_interleave(cell, dim=-2).repeat_interleave(cell, dim=-1)
    return full[..., : size[0], : size[1]]


def gradient_clipping_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    tau: float = 1.2,
    cell: int = 120,
    mode: GCMode = "batch",
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, GCStats]:
    """Gradient-clipping loss of (B, C, H, W) logits against (B, H, W) seeds; returns (loss, stats).

    ``mode='batch'`` is the authors' code (cells on the batch-averaged map, thresholds shared),
    ``'per_image'`` the paper's wording (cells and global mean per image; the gate stays batch-wide, as
    Eq. 15 says "of the current batch"), ``'naive'`` plain CE reduced the same way (no clipping).
    """
    if mode not in ("batch", "per_image", "naive"):
        raise ValueError(f"unknown gradient-clipping mode {mode!r} (expected batch, per_image or naive)")
    target = target.long()
    pixel = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    valid = target != ignore_index
    with torch.no_grad():
        g = pixel.detach().mean()
    if mode == "naive" or bool(g > tau):
        stats = GCStats(g, False, valid, valid, None, None)
        return pixel.mean(), stats
    H, W = pixel.shape[-2:]
    with torch.no_grad():
        d = pixel.detach()
        if mode == "batch":
            cells = cell_means(d.mean(0), cell)
            thr_cells = torch.maximum(cells, g)
        else:
            cells = cell_means(d, cell)
            thr_cells = torch.maximum(cells, d.mean(dim=(1, 2)).view(-1, 1, 1))
        thr = expand_cells(thr_cells, cell, (H, W))
    # the authors' clamp(ℓ - thr, max=0) + thr, value for value; torch.where instead of clamp because
    # clamp's gradient is 0 at ℓ == thr, and Eq. 14 (ℓ <= thr) keeps that pixel's gradient
    diff = pixel - thr
    clipped = torch.where(diff <= 0, diff, torch.zeros_like(diff)) + thr
    keep = (pixel.detach() <= thr) & valid
    return clipped.mean(), GCStats(g, True, keep, valid, cells, thr_cells)
