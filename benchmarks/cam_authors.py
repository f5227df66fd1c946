"""The authors' CAM generation loop re-enacted on our model, and the arithmetic it costs.

Their generator (spec §1.6) runs one forward per input — for each scale, the image then its flip,
batch 1 — under autocast; their model computes the scores as ``(q @ kᵀ) · scale``, keeps every
layer's softmax map, stacks the 72 maps, multiplies each by its AAF weight and averages them, then
refines S = CA ⊙ ReLU(coarse) with PA. The maps are upsampled, masked by the labels, flipped back,
summed and min–max normalised. Here the same steps run with our model's parameters, so the
benchmark can set both loops side by side on one machine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from weaktr.cam.generate import fuse_cams, label_vector
from weaktr.models.cam import CAMNet
from weaktr.models.encoder import resample_pos_embed


def _their_forward(model: CAMNet, x: torch.Tensor) -> torch.Tensor:
    """Fine CAM (1, C, h, w) of one input, step by step as the authors' model computes it."""
    vit, C = model.backbone.vit, model.config.num_classes
    H, W = x.shape[-2:]
    ph, pw = vit.patch_embed.patch_size
    patches = vit.patch_embed(x[..., : H // ph * ph, : W // pw * pw])
    _, h, w, D = patches.shape
    tokens = torch.cat((vit.cls_token, patches.reshape(1, h * w, D)), dim=1)
    tokens = tokens + resample_pos_embed(vit.pos_embed, C, (h, w), "dino", (H, W))
    maps, feats = [], []
    for block in vit.blocks:
        a = block.attn
        y = block.norm1(tokens)
        T = y.shape[1]
        q, k, v = a.qkv(y).reshape(1, T, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * a.scale).softmax(dim=-1)
        out = a.proj((attn @ v).transpose(1, 2).reshape(1, T, D))
        tokens = tokens + out
        tokens = tokens + block.mlp(block.norm2(tokens))
        maps.append(attn)
        feats.append(out)
    stacked = torch.stack(maps, dim=2).flatten(1, 2)  # (1, 72, T, T), head-major
    weights = model.aaf.attn_head_ffn(model.aaf.head_scores(model.aaf.pooled_features(feats, feats)))
    fused = (stacked * weights[:, :, None, None]).mean(dim=1)
    coarse = model.head(tokens[:, C:].reshape(1, h, w, D).permute(0, 3, 1, 2))
    cam = fused[:, :C, C:].reshape(1, C, h, w) * F.relu(coarse)
    return (cam.flatten(2) @ fused[:, C:, C:].transpose(1, 2)).reshape(1, C, h, w)


def their_cams(
    model: CAMNet, inputs: Sequence[torch.Tensor], label_ids: Sequence[int], amp: bool
) -> torch.Tensor:
    """Normalised maps of the present classes from per-scale inputs (3, h_s, w_s), one pass each."""
    maps, flips = [], []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        for x in inputs:
            for flip in (False, True):
                maps.append(_their_forward(model, (x.flip(-1) if flip else x)[None])[0].float())
                flips.append(flip)
    labels = label_vector(label_ids, model.config.num_classes)
    return fuse_cams(maps, flips, labels, tuple(inputs[0].shape[-2:]))[0]


def cam_gflop(model: CAMNet, inputs: Sequence[torch.Tensor], flip: bool = True) -> float:
    """Multiply-adds ×2 of the backbone and AAF for these inputs (the matmuls; all else is small)."""
    b, C = model.backbone, model.config.num_classes
    D, K = b.embed_dim, b.depth
    total = 0.0
    for x in inputs:
        ph, pw = b.vit.patch_embed.patch_size
        T = C + (x.shape[-2] // ph) * (x.shape[-1] // pw)
        linear = 2 * T * (3 * D * D + D * D + 2 * D * 4 * D)  # qkv, proj, MLP
        attention = 2 * 2 * T * T * D  # q·kᵀ and A·v over all heads
        total += (K * (linear + attention) + 2 * K * b.num_heads * T * T) * (2 if flip else 1)
    return total / 1e9


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of an n×n matmul on this machine, the best of ``reps`` (the ceiling to compare with)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9
