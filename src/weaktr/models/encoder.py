"""One ViT encoder for the CAM network's backbone and the segmenter, on timm's public API.

:class:`ViTEncoder` takes over the parts of a timm ``VisionTransformer`` (or ``Eva``) under their own
names, so its state keys are timm's, and gives both networks one embedding (patches, prefix tokens,
position grid) and two forwards: :meth:`~ViTEncoder.forward`, the tokens after the final norm (the
segmenter), and :meth:`~ViTEncoder.forward_with_maps`, the last block's tokens with every block's
attention and attention output and no final norm (the CAM network, golden O1). The two networks'
authors resample the position grid differently, and parity keeps both rules in one resampler,
:func:`resample_pos_embed`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from weaktr.models.timm_factory import create_backbone

ARCH_FIELDS = ("patch_size", "embed_dim", "depth", "num_heads")  # overrides both model configs carry
POS_RULES = ("bilinear", "dino")


def arch_overrides(cfg: Any) -> dict[str, int]:
    """The architecture overrides a model config sets (its ``ARCH_FIELDS`` that are not None)."""
    return {n: getattr(cfg, n) for n in ARCH_FIELDS if getattr(cfg, n) is not None}


def build_vit(
    name: str,
    pretrained: str | None,
    stem: str,
    setting: str | None,
    arch: Mapping[str, int],
    **timm_kwargs: Any,
) -> nn.Module:
    """A headless timm ViT / EVA that keeps the patch grid (``dynamic_img_size``), with ``arch`` overrides."""
    return create_backbone(
        name, pretrained, stem, setting, num_classes=0, dynamic_img_size=True, **arch, **timm_kwargs
    )


def resample_pos_embed(
    pos: torch.Tensor,
    num_prefix: int,
    grid: tuple[int, int],
    rule: str = "bilinear",
    image_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The stored (1, num_prefix + g·g, D) position embedding for an (h, w) patch grid; the prefix
    slots are never touched.

    ``bilinear`` (the Segmenter's, golden O7): timm's ``resample_abs_pos_embed`` to (h, w), bilinear
    without antialiasing, in float32; skipped when (h, w) is the stored grid.
    ``dino`` (WeakTr's CAM network, the authors' DINO rule, golden O4): skipped only when h·w = g·g
    for a square ``image_size``; otherwise bicubic by the scale factor ((h+0.1)/g, (w+0.1)/g), not to
    a target size, which samples at different positions.
    """
    n = pos.shape[1] - num_prefix
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"position embedding has {n} patch slots, not a square grid")
    h, w = grid
    if rule == "bilinear":
        return resample_abs_pos_embed(
            pos, [h, w], [g, g], num_prefix, interpolation="bilinear", antialias=False
        )
    if rule != "dino":
        raise ValueError(f"unknown position-grid rule {rule!r}; choose one of {POS_RULES}")
    if h * w == n and image_size is not None and image_size[0] == image_size[1]:
        return pos
    dim = pos.shape[-1]
    patch = pos[:, num_prefix:].reshape(1, g, g, dim).permute(0, 3, 1, 2)
    patch = F.interpolate(
        patch, scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic", align_corners=False
    )
    if patch.shape[-2:] != (h, w):
        raise RuntimeError(f"position grid resized to {tuple(patch.shape[-2:])}, expected {(h, w)}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, dim)
    return torch.cat((pos[:, :num_prefix], patch), dim=1)


class MapsBlock(Block):
    """timm's pre-norm ``Block`` that can also return what the CAM network keeps of it (built in
    through timm's ``block_fn``; same parameters, same forward)."""

    def forward_with_maps(
        self, x: torch.Tensor, scores_out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(new tokens, attention, post-projection output, per-head A·V), attention computed once.

        ``scores_out`` (B, heads, T, T), inference only, receives the attention in place of a new tensor.
        """
        attn_mod = self.attn
        y = self.norm1(x)
        B, T, _ = y.shape
        heads, hd = attn_mod.num_heads, attn_mod.head_dim
        q, k, v = attn_mod.qkv(y).reshape(B, T, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn_mod.q_norm(q), attn_mod.k_norm(k)
        # scaling q (T·d values) rather than the scores (T² values) is exact for a power-of-two scale
        # (d = 64: 1/8), so the result is bit-identical; without autograd the softmax runs in place
        scores = torch.matmul(q * attn_mod.scale, k.transpose(-2, -1), out=scores_out)
        attn = scores.softmax(dim=-1) if torch.is_grad_enabled() else torch.softmax(scores, -1, out=scores)
        head_out = attn_mod.attn_drop(attn) @ v
        merged = head_out.transpose(1, 2).reshape(B, T, heads * hd)
        out = attn_mod.proj_drop(attn_mod.proj(attn_mod.norm(merged)))
        x = x + self.drop_path1(self.ls1(out))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, attn, out, head_out


@dataclass
class BackboneOutput:
    """Block-K tokens (B, T, D) with T = prefix + h·w, plus per-block captures (one list entry per block).

    ``attn``: softmax attention (B, heads, T, T) before attention dropout.
    ``attn_out``: attention sub-layer output after the output projection (B, T, D), before the residual.
    ``head_out``: per-head A·V (B, heads, T, d), the paper's attention features.
    """

    tokens: torch.Tensor
    attn: list[torch.Tensor]
    attn_out: list[torch.Tensor]
    head_out: list[torch.Tensor]
    grid: tuple[int, int]

    def float(self) -> BackboneOutput:
        """Tokens and attention features in float32; the attention maps stay as computed.

        Heads that multiply the maps by float32 weights then sum in float32 without a float32 copy
        of all K·H (T, T) maps.
        """
        return BackboneOutput(
            self.tokens.float(),
            self.attn,
            [t.float() for t in self.attn_out],
            [t.float() for t in self.head_out],
            self.grid,
        )


class ViTEncoder(nn.Module):
    """A timm ViT / EVA's parts under their own names, with one embedding and the two forwards.

    ``pos_rule`` picks the position-grid rule (:func:`resample_pos_embed`). With ``keep_maps`` (set
    by a model prepared for inference) :meth:`forward_with_maps` writes the attention maps of
    inference calls into a buffer it keeps, one per dtype, valid until its next such call: fresh
    (K, B, heads, T, T) maps would be page-faulted in on every call, which slows the matmuls that write
    them (docs/benchmarks.md, CAM generation).
    """

    def __init__(self, vit: nn.Module, pos_rule: str) -> None:
        super().__init__()
        if pos_rule not in POS_RULES:
            raise ValueError(f"unknown position-grid rule {pos_rule!r}; choose one of {POS_RULES}")
        if any(True for _ in vit.named_buffers(recurse=False)):
            raise ValueError(f"{type(vit).__name__} keeps buffers of its own, which the encoder cannot take")
        for name, p in vit.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, child in vit.named_children():
            self.add_module(name, child)
        for name in ("cls_token", "reg_token", "pos_embed", "rope"):
            if not hasattr(self, name):
                setattr(self, name, None)
        self.embed_dim = int(vit.embed_dim)
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.no_embed_class = bool(getattr(vit, "no_embed_class", False))
        self.pos_rule = pos_rule
        self.keep_maps = False
        self._maps: dict[torch.dtype, torch.Tensor] = {}  # not state

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def num_heads(self) -> int:
        return self.blocks[0].attn.num_heads

    @property
    def head_dim(self) -> int:
        return self.blocks[0].attn.head_dim

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> (B, prefix + h·w, D) tokens with their positions, and the (h, w) grid."""
        H, W = x.shape[-2:]
        if isinstance(self.patch_embed, PatchEmbed):  # a strided patch conv floors the grid: crop like it
            ph, pw = self.patch_embed.patch_size
            x = x[..., : H // ph * ph, : W // pw * pw]
        t = self.patch_embed(x)  # (B, h, w, D): dynamic_img_size keeps the grid
        B, h, w, D = t.shape
        t = t.reshape(B, h * w, D)
        prefix = [tok.expand(B, -1, -1) for tok in (self.cls_token, self.reg_token) if tok is not None]
        if self.pos_embed is None:
            t = torch.cat([*prefix, t], dim=1)
        else:
            n_pre = 0 if self.no_embed_class else self.num_prefix_tokens
            pos = resample_pos_embed(self.pos_embed, n_pre, (h, w), self.pos_rule, (H, W))
            t = torch.cat([*prefix, t + pos], dim=1) if n_pre == 0 else torch.cat([*prefix, t], dim=1) + pos
        return self.norm_pre(self.pos_drop(t)), (h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, prefix + h·w, D) tokens after the final norm."""
        t, grid = self.embed(x)
        rope = self.rope.get_embed(shape=grid) if self.rope is not None else None
        for blk in self.blocks:
            t = blk(t) if rope is None else blk(t, rope=rope)
        final = self.norm if not isinstance(self.norm, nn.Identity) else getattr(self, "fc_norm", self.norm)
        return final(t)

    def forward_with_maps(self, x: torch.Tensor) -> BackboneOutput:
        """(B, 3, H, W) -> the last block's tokens (no final norm) and every block's captures; the
        blocks must have ``forward_with_maps`` (:class:`MapsBlock`, or its fused stand-in)."""
        t, grid = self.embed(x)
        maps = self._maps_buffer(t) if self.keep_maps and not torch.is_grad_enabled() else None
        attn, attn_out, head_out = [], [], []
        for i, blk in enumerate(self.blocks):
            t, a, o, ho = blk.forward_with_maps(t, None if maps is None else maps[i])
            attn.append(a)
            attn_out.append(o)
            head_out.append(ho)
        return BackboneOutput(t, attn, attn_out, head_out, grid)

    def _maps_buffer(self, tokens: torch.Tensor) -> torch.Tensor:
        """A (K, B, heads, T, T) view of the kept buffer of this dtype, grown when the maps do not fit.

        One buffer per dtype, so a model that alternates float32 and bf16 passes (the report's CAM
        variants, a benchmark) does not allocate, and page-fault, a fresh one at every switch.
        """
        B, T, _ = tokens.shape
        dtype = tokens.dtype
        if torch.is_autocast_enabled(tokens.device.type):
            dtype = torch.get_autocast_dtype(tokens.device.type)
        shape = (self.depth, B, self.num_heads, T, T)
        need = math.prod(shape)
        buf = self._maps.get(dtype)
        if buf is None or buf.numel() < need or buf.device != tokens.device:
            buf = self._maps[dtype] = torch.empty(need, dtype=dtype, device=tokens.device)
        return buf[:need].view(shape)
