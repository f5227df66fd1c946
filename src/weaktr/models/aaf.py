"""Adaptive attention fusion (AAF): weight the K·H self-attention maps per image, then average them.

Follows the authors' code (spec §1.3): map index = head·K + layer; in ``features='code'`` mode the
attention features are each layer's post-projection output, split so that head h gets channels
h, h+H, h+2H, …; ``features='paper'`` uses the true per-head A·V instead. ``fusion='mean'`` is the
paper's Table IV ablation (plain mean, no learned weights); ``fusion='randweight'`` is the authors'
``AAF_RandWeight`` ablation: a fixed N(0, 1) vector (the ``query`` buffer, their ``query.npy``)
replaces the pooled features and the head-wise FFN, so the map weights do not depend on the image.
Submodule names map 1:1 onto the authors' ``adaptive_attention_fusion.attn_feat_ffn`` /
``attn_head_ffn`` keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from weaktr.errors import InputError

FEATURES = ("code", "paper")
POOLS = ("max", "avg")
FUSIONS = ("aaf", "mean", "randweight")
# float32 values converted per step of the bf16 map fusion: 1 MB, within a core's L2 cache
FUSE_CHUNK = 1 << 18


@dataclass
class AAFOutput:
    """Fused attention Â (B, T, T) and the per-map weights (B, K·H) that produced it."""

    fused: torch.Tensor
    weights: torch.Tensor


class AAF(nn.Module):
    """Per-image weights for the K·H attention maps from their pooled attention features."""

    def __init__(
        self,
        depth: int,
        num_heads: int,
        head_dim: int,
        features: str = "code",
        pool: str = "max",
        reduction: float = 8.0,
        feat_reduction: int = 8,
        fusion: str = "aaf",
    ) -> None:
        super().__init__()
        for value, allowed, what in (
            (features, FEATURES, "features"),
            (pool, POOLS, "pool"),
            (fusion, FUSIONS, "fusion"),
        ):
            if value not in allowed:
                raise InputError(f"AAF {what} must be one of {allowed}, got {value!r}")
        self.depth, self.num_heads, self.features, self.pool_type, self.fusion = (
            depth,
            num_heads,
            features,
            pool,
            fusion,
        )
        maps = depth * num_heads
        if fusion == "mean":
            return
        feat_hidden, hidden = int(head_dim / feat_reduction), int(maps / reduction)
        if hidden < 1 or (fusion == "aaf" and feat_hidden < 1):
            raise InputError(
                f"AAF reductions leave no hidden units ({head_dim}->{feat_hidden}, {maps}->{hidden})"
            )
        if fusion == "aaf":
            self.attn_feat_ffn = nn.Sequential(nn.Linear(head_dim, feat_hidden), nn.Linear(feat_hidden, 1))
        else:  # drawn once from the global RNG, saved with the weights, never trained
            self.register_buffer("query", torch.randn(maps))
        self.attn_head_ffn = nn.Sequential(
            nn.Linear(maps, hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, maps, bias=False),
            nn.Sigmoid(),
        )

    def stack_maps(self, attn: Sequence[torch.Tensor]) -> torch.Tensor:
        """K tensors (B, H, T, T) -> (B, H·K, T, T), head-major."""
        return torch.stack(list(attn), dim=2).flatten(1, 2)

    def pooled_features(
        self, attn_out: Sequence[torch.Tensor], head_out: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Token-pooled attention features (B, H·K, d), head-major like :meth:`stack_maps`.

        ``code``: block k's post-projection output (T, D) split by channel index mod H, so map
        (head h, layer k) holds channels h, h+H, …; ``paper``: the per-head A·V outputs. Pooling
        over all T tokens (class tokens included) runs first, on the unpermuted features: max and
        mean commute with the channel split, and the (B, H·K, T, d) copy is never made.
        """
        reduce = (lambda t: t.amax(dim=-2)) if self.pool_type == "max" else (lambda t: t.mean(dim=-2))
        if self.features == "paper":
            return torch.stack([reduce(h) for h in head_out], dim=2).flatten(1, 2)  # (B, H, K, d)
        x = torch.stack([reduce(a) for a in attn_out], dim=1)  # (B, K, D)
        B, K, D = x.shape
        return (
            x.reshape(B, K, D // self.num_heads, self.num_heads)
            .permute(0, 3, 1, 2)
            .reshape(B, -1, D // self.num_heads)
        )

    def head_scores(self, pooled: torch.Tensor) -> torch.Tensor:
        """Shared head-wise FFN (no activation between its layers): (B, M, d) -> (B, M)."""
        return self.attn_feat_ffn(pooled).squeeze(-1)

    def forward(
        self, attn: Sequence[torch.Tensor], attn_out: Sequence[torch.Tensor], head_out: Sequence[torch.Tensor]
    ) -> AAFOutput:
        """Fuse the per-block attention maps; the rows of Â are not renormalised (spec §1.3).

        Â = (1/M) Σ_i w_i A_i is a matrix product of the weights with the maps rather than a
        broadcast product and a mean over a second (B, M, T, T) tensor.
        """
        B, H, T, _ = attn[0].shape
        M = H * len(attn)
        if self.fusion == "mean":
            weights = attn[0].new_ones(B, M, dtype=torch.float32)
        elif self.fusion == "randweight":
            weights = self.attn_head_ffn(self.query.expand(B, M))
        else:
            weights = self.attn_head_ffn(self.head_scores(self.pooled_features(attn_out, head_out)))
        if not torch.is_grad_enabled():
            return AAFOutput(self._fuse_by_layer(attn, weights), weights)
        maps = self.stack_maps(attn)
        if self.fusion == "mean":
            return AAFOutput(maps.mean(dim=1, dtype=torch.float32), weights)
        # one (B, 1, M) x (B, M, T·T) product; the training path keeps this summation order
        fused = torch.bmm(weights[:, None] / M, maps.reshape(B, M, T * T).to(weights.dtype))
        return AAFOutput(fused.reshape(B, T, T), weights)

    def _fuse_by_layer(self, attn: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        """Â without stacking the K·H maps: one (B, 1, H) x (B, H, n) product per layer and column chunk.

        Inference only (its summation order differs from the training path's in the last bits). The
        stacked copy and, under AMP, its float32 conversion were two thirds of CAM generation time;
        here each chunk of each layer's bf16 maps passes through one reused float32 buffer small
        enough to stay in cache (:data:`FUSE_CHUNK` columns), so the conversion is never written to
        memory and read back. Every output element sums the same terms in the same order whatever
        the chunk size.
        """
        B, H, T, _ = attn[0].shape
        per_layer = (weights / (H * len(attn))).reshape(B, H, len(attn))  # map index = head·K + layer
        fused = weights.new_zeros(B, 1, T * T)
        if attn[0].dtype == weights.dtype:
            for k, a in enumerate(attn):
                fused.baddbmm_(per_layer[:, None, :, k], a.reshape(B, H, T * T))
            return fused.reshape(B, T, T)
        step = max(1, FUSE_CHUNK // (B * H))
        buffer = weights.new_empty(B, H, min(step, T * T))
        for start in range(0, T * T, step):
            n = min(step, T * T - start)
            out, buf = fused[..., start : start + n], buffer[..., :n]
            for k, a in enumerate(attn):
                out.baddbmm_(
                    per_layer[:, None, :, k], buf.copy_(a.reshape(B, H, T * T)[..., start : start + n])
                )
        return fused.reshape(B, T, T)
