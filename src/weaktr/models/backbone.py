"""The CAM network's backbone: the shared ViT encoder with C class tokens, returning every block's maps.

WeakTr's AAF fuses all K·H self-attention maps and pools the attention sub-layer outputs, so each
block is a :class:`~weaktr.models.encoder.MapsBlock` that computes attention explicitly once and
reuses the timm block's own parameters (no hooks, no second pass). The final ``norm`` is kept for
weight loading but never applied (golden O1).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.layers import trunc_normal_
from timm.layers.attention import Attention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from weaktr.models.encoder import BackboneOutput, MapsBlock, ViTEncoder, build_vit

# the authors' DeiT blocks: qkv bias, eps 1e-6 LayerNorm, exact GELU (also the demo backbone's pretraining)
VIT_BLOCK_OPTIONS: dict[str, Any] = {
    "qkv_bias": True,
    "norm_layer": partial(nn.LayerNorm, eps=1e-6),
    "act_layer": nn.GELU,
}


class ViTBackbone(nn.Module):
    """A timm VisionTransformer with ``num_classes`` class tokens (and position slots) before the patches."""

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
        vit = build_vit(
            name,
            pretrained,
            stem,
            setting,
            overrides,
            global_pool="",
            img_size=img_size,
            drop_path_rate=drop_path,
            block_fn=MapsBlock,
            **VIT_BLOCK_OPTIONS,
        )
        _check_supported(vit, name)
        with torch.no_grad():
            cls = vit.cls_token.expand(-1, num_classes, -1).clone()
            pos = torch.cat((vit.pos_embed[:, :1].expand(-1, num_classes, -1), vit.pos_embed[:, 1:]), dim=1)
        if pretrained is None:
            trunc_normal_(cls, std=0.02)
            trunc_normal_(pos, std=0.02)
        vit.cls_token = nn.Parameter(cls)
        vit.pos_embed = nn.Parameter(pos)
        vit.num_prefix_tokens = num_classes
        self.vit = ViTEncoder(vit, pos_rule="dino")

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    @property
    def depth(self) -> int:
        return self.vit.depth

    @property
    def num_heads(self) -> int:
        return self.vit.num_heads

    @property
    def head_dim(self) -> int:
        return self.vit.head_dim

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        """(B, 3, H, W) -> tokens after the last block (no final norm) and the per-block captures."""
        return self.vit.forward_with_maps(x)


def _check_supported(vit: nn.Module, name: str) -> None:
    """Fail early on timm models whose token layout or blocks :class:`MapsBlock` does not cover."""
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"{name!r} is not a timm VisionTransformer ({type(vit).__name__})")
    if not vit.has_class_token or vit.num_reg_tokens or vit.no_embed_class or vit.pos_embed is None:
        raise ValueError(f"{name!r} needs one class token with a position slot and no register tokens")
    for block in vit.blocks:
        if type(block) is not MapsBlock or type(block.attn) is not Attention or block.attn.gate is not None:
            raise ValueError(f"{name!r} uses blocks other than timm's pre-norm Block with plain Attention")
