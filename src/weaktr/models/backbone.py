"""A timm ViT with C class tokens that also returns every block's attention and attention output.

WeakTr's AAF fuses all K·H self-attention maps and pools the attention sub-layer outputs, so each
block is run by :func:`block_forward`, which computes attention explicitly once and reuses the timm
block's own parameters (no hooks, no second pass). The final ``norm`` is kept for weight loading
but never applied (golden O1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from weaktr.models.cpu_blocks import FusedBlock, fuse, fused_problem
from weaktr.models.timm_factory import create_backbone

# the authors' DeiT blocks: qkv bias, eps 1e-6 LayerNorm, exact GELU (also the demo backbone's pretraining)
VIT_BLOCK_OPTIONS: dict[str, Any] = {
    "qkv_bias": True,
    "norm_layer": partial(nn.LayerNorm, eps=1e-6),
    "act_layer": nn.GELU,
}


@dataclass
class BackboneOutput:
    """Block-K tokens (B, T, D) with T = C + h·w, plus per-block captures (one list entry per block).

    ``attn``: softmax attention (B, heads, T, T) before attention dropout.
    ``attn_out``: attention sub-layer output after the output projection (B, T, D), before the residual.
    ``head_out``: per-head A·V (B, heads, T, d), the paper's attention features.
    """

    tokens: torch.Tensor
    attn: list[torch.Tensor]
    attn_out: list[torch.Tensor]
    head_out: list[torch.Tensor]
    grid: tuple[int, int]


def resize_pos_embed(
    pos_embed: torch.Tensor, num_prefix: int, grid: tuple[int, int], image_size: tuple[int, int]
) -> torch.Tensor:
    """Position embedding for a ``grid`` = (h, w) patch grid of an image of ``image_size`` = (H, W) pixels.

    The authors' (DINO) rule, golden O4: skipped only for a square image whose grid is the trained
    g×g grid; otherwise the patch slots are resampled bicubically with scale factor
    ((h+0.1)/g, (w+0.1)/g) — not to a target size, which samples at different positions.
    Class slots are never touched.
    """
    h, w = grid
    n = pos_embed.shape[1] - num_prefix
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"position embedding has {n} patch slots, not a square grid")
    if h * w == n and image_size[0] == image_size[1]:
        return pos_embed
    dim = pos_embed.shape[-1]
    patch = pos_embed[:, num_prefix:].reshape(1, g, g, dim).permute(0, 3, 1, 2)
    patch = F.interpolate(
        patch, scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic", align_corners=False
    )
    if patch.shape[-2:] != (h, w):
        raise RuntimeError(f"position grid resized to {tuple(patch.shape[-2:])}, expected {(h, w)}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, dim)
    return torch.cat((pos_embed[:, :num_prefix], patch), dim=1)


def block_forward(
    block: Block, x: torch.Tensor, scores_out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pre-norm timm block; returns (new tokens, attention, post-projection output, per-head A·V).

    ``scores_out`` (B, heads, T, T), inference only, receives the attention in place of a new tensor.
    """
    attn_mod: Attention = block.attn
    y = block.norm1(x)
    B, T, _ = y.shape
    heads, hd = attn_mod.num_heads, attn_mod.head_dim
    q, k, v = attn_mod.qkv(y).reshape(B, T, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn_mod.q_norm(q), attn_mod.k_norm(k)
    # scaling q (T·d values) rather than the scores (T² values) is exact for a power-of-two scale
    # (d = 64: 1/8), so the result is bit-identical; without autograd the softmax runs in place
    scores = torch.matmul(q * attn_mod.scale, k.transpose(-2, -1), out=scores_out)
    attn = scores.softmax(dim=-1) if torch.is_grad_enabled() else torch.softmax(scores, -1, out=scores)
    head_out = attn_mod.attn_drop(attn) @ v
    out = attn_mod.proj_drop(attn_mod.proj(attn_mod.norm(head_out.transpose(1, 2).reshape(B, T, heads * hd))))
    x = x + block.drop_path1(block.ls1(out))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, attn, out, head_out


class ViTBackbone(nn.Module):
    """timm VisionTransformer with ``num_classes`` class tokens (and position slots) before the patches."""

    def __init__(
        self,
        name: str = "deit_small_patch16_224",
        num_classes: int = 20,
        img_size: int = 224,
        pretrained: str | None = None,
        stem: str = "patch",
        drop_path: float = 0.1,
        setting: str | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        vit = create_backbone(
            name,
            pretrained,
            stem,
            setting,
            num_classes=0,
            global_pool="",
            img_size=img_size,
            drop_path_rate=drop_path,
            dynamic_img_size=True,
            **VIT_BLOCK_OPTIONS,
            **overrides,
        )
        _check_supported(vit, name)
        self.vit = vit
        self.num_tokens = num_classes
        with torch.no_grad():
            cls = vit.cls_token.expand(-1, num_classes, -1).clone()
            pos = torch.cat((vit.pos_embed[:, :1].expand(-1, num_classes, -1), vit.pos_embed[:, 1:]), dim=1)
        if pretrained is None:
            trunc_normal_(cls, std=0.02)
            trunc_normal_(pos, std=0.02)
        vit.cls_token = nn.Parameter(cls)
        vit.pos_embed = nn.Parameter(pos)
        vit.num_prefix_tokens = num_classes
        self._attn_buffers: dict[torch.dtype, torch.Tensor] = {}  # see forward(reuse_buffers=True); not state
        # (weight versions, fused blocks) of forward(fused_cpu=True); not state
        self._fused: tuple[tuple[tuple[int, int], ...], list[FusedBlock | None]] | None = None

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def num_heads(self) -> int:
        return self.vit.blocks[0].attn.num_heads

    @property
    def head_dim(self) -> int:
        return self.vit.blocks[0].attn.head_dim

    def forward(
        self, x: torch.Tensor, reuse_buffers: bool = False, fused_cpu: bool = False
    ) -> BackboneOutput:
        """(B, 3, H, W) -> tokens after the last block (no final norm) and the per-block captures.

        ``reuse_buffers`` (inference only): the attention maps are written into a buffer kept
        between calls (one per dtype), so they stay valid only until the next such call: fresh
        (K, B, heads, T, T) maps would be page-faulted in on every call, which slows the matmuls
        that write them (measured: docs/benchmarks.md, CAM generation).
        ``fused_cpu`` (inference only, float32 on the CPU): plain blocks run their self-checked fused
        oneDNN linears (:meth:`~weaktr.models.cpu_blocks.FusedBlock.with_maps`): without them the
        bias copies into fresh GEMM outputs and the separate GELU pass are extra passes over memory,
        the largest items of the CAM generation profile after the GEMMs (docs/benchmarks.md).
        """
        H, W = x.shape[-2:]
        embed = self.vit.patch_embed
        if isinstance(embed, PatchEmbed):  # a strided patch conv floors the grid: crop like it does
            ph, pw = embed.patch_size
            x = x[..., : H // ph * ph, : W // pw * pw]
        patches = embed(x)  # (B, h, w, D): dynamic_img_size makes timm keep the grid
        B, h, w, D = patches.shape
        tokens = torch.cat((self.vit.cls_token.expand(B, -1, -1), patches.reshape(B, h * w, D)), dim=1)
        tokens = tokens + resize_pos_embed(self.vit.pos_embed, self.num_tokens, (h, w), (H, W))
        tokens = self.vit.norm_pre(self.vit.pos_drop(tokens))
        attn, attn_out, head_out = [], [], []
        inference = not torch.is_grad_enabled()
        maps = self._attention_buffer(tokens) if reuse_buffers and inference else None
        fused = self._fused_blocks(tokens) if fused_cpu and inference else None
        for i, block in enumerate(self.vit.blocks):
            slot = None if maps is None else maps[i]
            fast = None if fused is None else fused[i]
            tokens, a, o, ho = fast.with_maps(tokens, slot) if fast else block_forward(block, tokens, slot)
            attn.append(a)
            attn_out.append(o)
            head_out.append(ho)
        return BackboneOutput(tokens, attn, attn_out, head_out, (h, w))

    def _fused_blocks(self, tokens: torch.Tensor) -> list[FusedBlock | None] | None:
        """Fused forwards of the blocks for float32 CPU inference (None: not here, or switched off).

        The packed weights are a snapshot: they are packed again whenever a block parameter changed
        in place (an optimiser step, a loaded state dict) since the last call.
        """
        weights = list(self.vit.blocks.parameters())
        if (
            tokens.device.type != "cpu"
            or torch.is_autocast_enabled("cpu")
            or any(p.dtype != torch.float32 for p in weights)
            or fused_problem(torch.float32) is not None
        ):
            return None
        key = tuple((p.data_ptr(), p._version) for p in weights)
        if self._fused is None or self._fused[0] != key:
            self._fused = (key, [fuse(block) for block in self.vit.blocks])
        return self._fused[1]

    def _attention_buffer(self, tokens: torch.Tensor) -> torch.Tensor:
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
        buf = self._attn_buffers.get(dtype)
        if buf is None or buf.numel() < need or buf.device != tokens.device:
            buf = self._attn_buffers[dtype] = torch.empty(need, dtype=dtype, device=tokens.device)
        return buf[:need].view(shape)


def _check_supported(vit: nn.Module, name: str) -> None:
    """Fail early on timm models whose token layout or blocks :func:`block_forward` does not cover."""
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"{name!r} is not a timm VisionTransformer ({type(vit).__name__})")
    if not vit.has_class_token or vit.num_reg_tokens or vit.no_embed_class or vit.pos_embed is None:
        raise ValueError(f"{name!r} needs one class token with a position slot and no register tokens")
    for block in vit.blocks:
        if type(block) is not Block or type(block.attn) is not Attention or block.attn.gate is not None:
            raise ValueError(f"{name!r} uses blocks other than timm's pre-norm Block with plain Attention")
