"""Adaptive attention fusion (AAF): weight the K·H self-attention maps per image, then average them.

Follows the authors' code (spec §1.3): map index = head·K + layer; in ``features='code'`` mode the
attention features are each layer's post-projection output, split so that head h gets channels
h, h+H, h+2H, …; ``features='paper'`` uses the true per-head A·V instead. ``fusion='mean'`` is the
paper's Table IV ablation (plain mean, no learned weights). Submodule names map 1:1 onto the
authors' ``adaptive_attention_fusion.attn_feat_ffn`` / ``attn_head_ffn`` keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from weaktr.errors import InputError

FEATURES = ("code", "paper")
POOLS = ("max", "avg")
FUSIONS = ("aaf", "mean")


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
        if fusion == "aaf":
            feat_hidden, hidden = int(head_dim / feat_reduction), int(maps / reduction)
            if feat_hidden < 1 or hidden < 1:
                raise InputError(
                    f"AAF reductions leave no hidden units ({head_dim}->{feat_hidden}, {maps}->{hidden})"
                )
            self.attn_feat_ffn = nn.Sequential(nn.Linear(head_dim, feat_hidden), nn.Linear(feat_hidden, 1))
            self.attn_head_ffn = nn.Sequential(
                nn.Linear(maps, hidden, bias=False),
                nn.ReLU(),
                nn.Linear(hidden, maps, bias=False),
                nn.Sigmoid(),
            )

    def stack_maps(self, attn: Sequence[torch.Tensor]) -> torch.Tensor:
        """K tensors (B, H, T, T) -> (B, H·K, T, T), head-major."""
        return torch.stack(list(attn), dim=2).flatten(1, 2)

    def stack_features(
        self, attn_out: Sequence[torch.Tensor], head_out: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Per-map attention features (B, H·K, T, d), head-major like :meth:`stack_maps`."""
        if self.features == "paper":
            return torch.stack(list(head_out), dim=2).flatten(1, 2)
        x = torch.stack(list(attn_out), dim=1)  # (B, K, T, D)
        B, K, T, D = x.shape
        return (
            x.reshape(B, K, T, D // self.num_heads, self.num_heads)
            .permute(0, 4, 1, 2, 3)
            .reshape(B, -1, T, D // self.num_heads)
        )

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        """Token pooling over all T tokens (class tokens included): (B, M, T, d) -> (B, M, d)."""
        return feats.amax(dim=2) if self.pool_type == "max" else feats.mean(dim=2)

    def head_scores(self, pooled: torch.Tensor) -> torch.Tensor:
        """Shared head-wise FFN (no activation between its layers): (B, M, d) -> (B, M)."""
        return self.attn_feat_ffn(pooled).squeeze(-1)

    def forward(
        self, attn: Sequence[torch.Tensor], attn_out: Sequence[torch.Tensor], head_out: Sequence[torch.Tensor]
    ) -> AAFOutput:
        """Fuse the per-block attention maps; the rows of Â are not renormalised (spec §1.3)."""
        maps = self.stack_maps(attn)
        if self.fusion == "mean":
            return AAFOutput(maps.mean(dim=1), maps.new_ones(maps.shape[:2]))
        weights = self.attn_head_ffn(self.head_scores(self.pool(self.stack_features(attn_out, head_out))))
        return AAFOutput((maps * weights[..., None, None]).mean(dim=1), weights)
